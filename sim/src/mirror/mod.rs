//! The embedded Hub mirror: a loopback HTTP server that speaks the Hugging Face Hub API and the
//! dataset viewer API, serving real datasets that ship inside scikit-learn.
//!
//! The data is built once per cache directory by the embedded `build_mirror.py` (run with a
//! Python that has numpy, pandas, scikit-learn and pyarrow) and then served read-only from
//! memory. The mirror labels itself as simulated: every response carries the header
//! `x-gymforge-mirror: embedded`, and each dataset's description and card data say that the
//! data is scikit-learn's bundled copy served by gymforge.
//!
//! URL layout (one server answers both APIs):
//!
//! * Hub API: `GET /api/datasets/{owner}/{name}` and `.../revision/{rev}`;
//! * files: `GET /datasets/{owner}/{name}/resolve/{rev}/{path}` where `rev` is `main`, the
//!   dataset's sha, or `refs%2Fconvert%2Fparquet` (then `path` is `{config}/{split}/{file}`);
//! * dataset viewer: `/is-valid`, `/splits`, `/info`, `/first-rows`, `/size`, `/parquet`, all
//!   with the query parameters of the real service.
//!
//! Two fixtures with no data make the Hub client's rejection paths reachable:
//! [`GATED_FIXTURE`] (gated, manual approval; the API answers 401 without a bearer token) and
//! [`DISABLED_FIXTURE`] (disabled).
//!
//! `build` makes and loads the data on disk, `hub_api` answers the Hub API and serves the
//! files, `viewer` answers the dataset viewer API; this module holds the served state and
//! wires the routes.

mod build;
mod hub_api;
mod viewer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use build::Manifest;

/// The script that builds the mirror's data (`python build_mirror.py OUT_DIR`).
pub const BUILD_SCRIPT: &str = include_str!("build_mirror.py");
/// Fixture: a gated dataset (manual approval) with no data.
pub const GATED_FIXTURE: &str = "gymforge-fixtures/gated-demo";
/// Fixture: a disabled dataset with no data.
pub const DISABLED_FIXTURE: &str = "gymforge-fixtures/disabled-demo";
/// Header set on every response of the mirror.
pub const MIRROR_HEADER: &str = "x-gymforge-mirror";

/// The embedded Hub mirror: building its data and serving it.
pub struct HubMirror;

impl HubMirror {
    /// Builds the mirror's data into `cache_dir` unless an up-to-date build is already there,
    /// and returns the directory to serve.
    ///
    /// The build is keyed by a digest of the embedded script, guarded by an exclusive `flock`
    /// on `cache_dir/hub-mirror.lock` (so concurrent processes build it once), written to a
    /// temporary directory and moved into place with a rename. `python` must have numpy,
    /// pandas, scikit-learn and pyarrow; it runs our own script directly, not in the sandbox.
    pub async fn ensure_built(cache_dir: &Path, python: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<PathBuf> {
        build::ensure_built(cache_dir, python, progress).await
    }

    /// Serves a built mirror directory on `addr` (use port 0 for any free port). Returns the
    /// address actually bound and the server task.
    pub async fn serve(root: PathBuf, addr: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let loaded =
            tokio::task::spawn_blocking(move || build::load_datasets(&root)).await.context("loading the Hub mirror panicked")??;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind the Hub mirror to {addr}"))?;
        let local = listener.local_addr().context("cannot read the Hub mirror's address")?;
        let state = Arc::new(MirrorState { datasets: loaded.0, built_at: loaded.1, local });
        let app = router(state);
        let handle = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the Hub mirror stopped");
            }
        });
        tracing::debug!(%local, "Hub mirror listening");
        Ok((local, handle))
    }

    /// Builds (if needed) and serves the mirror on a free loopback port; returns its base URL,
    /// for both the Hub API and the dataset viewer, and the server task.
    pub async fn start(cache_dir: &Path, python: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
        let root = HubMirror::ensure_built(cache_dir, python, progress).await?;
        let (addr, handle) = HubMirror::serve(root, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        Ok((format!("http://{addr}"), handle))
    }
}

// ---------------------------------------------------------------------------------------------
// Serving

/// One dataset held in memory.
struct Served {
    m: Manifest,
    first_rows: Bytes,
    parquet: Bytes,
}

impl Served {
    /// Path of the data file on the `main` branch.
    fn main_data_path(&self) -> String {
        format!("data/{}-00000-of-00001.parquet", self.m.split)
    }

    fn full_description(&self) -> String {
        if self.m.description.is_empty() { self.m.mirror_note.clone() } else { format!("{}\n\n{}", self.m.description, self.m.mirror_note) }
    }

    fn hub_task_category(&self) -> String {
        format!("tabular-{}", self.m.task_category)
    }
}

struct MirrorState {
    datasets: BTreeMap<String, Served>,
    built_at: String,
    local: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fixture {
    Gated,
    Disabled,
}

enum Repo<'a> {
    Data(&'a Served),
    Fixture(Fixture),
}

impl MirrorState {
    fn repo(&self, id: &str) -> Option<Repo<'_>> {
        match id {
            GATED_FIXTURE => Some(Repo::Fixture(Fixture::Gated)),
            DISABLED_FIXTURE => Some(Repo::Fixture(Fixture::Disabled)),
            _ => self.datasets.get(id).map(Repo::Data),
        }
    }

    /// Base URL for links back to this server, as the client addressed it.
    fn base_url(&self, headers: &HeaderMap) -> String {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c)));
        match host {
            Some(h) => format!("http://{h}"),
            None => format!("http://{}", self.local),
        }
    }
}

fn router(state: Arc<MirrorState>) -> Router {
    Router::new()
        .route("/api/datasets/{owner}/{name}", get(hub_api::api_dataset))
        .route("/api/datasets/{owner}/{name}/revision/{rev}", get(hub_api::api_dataset_revision))
        .route("/datasets/{owner}/{name}/resolve/{rev}/{*path}", get(hub_api::resolve_file))
        .route("/is-valid", get(viewer::viewer_is_valid))
        .route("/splits", get(viewer::viewer_splits))
        .route("/info", get(viewer::viewer_info))
        .route("/first-rows", get(viewer::viewer_first_rows))
        .route("/size", get(viewer::viewer_size))
        .route("/parquet", get(viewer::viewer_parquet))
        .fallback(not_found_page)
        .with_state(state)
        .layer(axum::middleware::map_response(label_response))
}

async fn label_response(mut response: Response) -> Response {
    response.headers_mut().insert(MIRROR_HEADER, HeaderValue::from_static("embedded"));
    response
}

async fn not_found_page() -> Response {
    hub_api::error_response(StatusCode::NOT_FOUND, None, "Sorry, we can't find the page you are looking for.")
}
