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

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The script that builds the mirror's data (`python build_mirror.py OUT_DIR`).
pub const BUILD_SCRIPT: &str = include_str!("build_mirror.py");
/// Fixture: a gated dataset (manual approval) with no data.
pub const GATED_FIXTURE: &str = "gymforge-fixtures/gated-demo";
/// Fixture: a disabled dataset with no data.
pub const DISABLED_FIXTURE: &str = "gymforge-fixtures/disabled-demo";
/// Header set on every response of the mirror.
pub const MIRROR_HEADER: &str = "x-gymforge-mirror";

/// Name of the built mirror directory inside the cache directory.
const MIRROR_DIR: &str = "hub-mirror";
/// File inside the built directory holding the digest of the script that built it.
const MARKER: &str = ".gymforge-mirror-built";
const LOCK_FILE: &str = "hub-mirror.lock";
const BUILD_PREFIX: &str = ".hub-mirror-build-";
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Exit code of `build_mirror.py` when a Python module is missing.
const EXIT_MISSING_MODULE: i32 = 3;
/// Branch of the parquet conversion, as on the real Hub.
const PARQUET_REF: &str = "refs/convert/parquet";

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
    pub async fn ensure_built(
        cache_dir: &Path,
        python: &Path,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<PathBuf> {
        let digest = script_digest();
        let root = cache_dir.join(MIRROR_DIR);
        if is_current(&root, &digest) {
            return Ok(root);
        }
        tokio::fs::create_dir_all(cache_dir)
            .await
            .with_context(|| format!("cannot create cache directory {}", cache_dir.display()))?;
        let _lock = lock_exclusive(cache_dir.join(LOCK_FILE)).await?;
        if is_current(&root, &digest) {
            return Ok(root);
        }
        remove_stale_builds(cache_dir);

        let work = cache_dir.join(format!("{BUILD_PREFIX}{}", std::process::id()));
        let _cleanup = RemoveOnDrop(work.clone());
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create build directory {}", work.display()))?;
        let script = work.join("build_mirror.py");
        std::fs::write(&script, BUILD_SCRIPT)
            .with_context(|| format!("cannot write {}", script.display()))?;
        let out = work.join("out");

        progress("building the embedded Hub mirror from scikit-learn's bundled datasets");
        run_build(python, &script, &out, &work, progress).await?;
        if !out.join("catalog.json").is_file() {
            bail!(
                "building the Hub mirror: the build script finished without writing catalog.json"
            );
        }
        std::fs::write(out.join(MARKER), &digest).context("cannot write the mirror's marker")?;
        if root.exists() {
            std::fs::rename(&root, work.join("previous")).with_context(|| {
                format!("cannot move the outdated mirror {} aside", root.display())
            })?;
        }
        std::fs::rename(&out, &root)
            .with_context(|| format!("cannot move the built mirror to {}", root.display()))?;
        progress(&format!("Hub mirror ready in {}", root.display()));
        Ok(root)
    }

    /// Serves a built mirror directory on `addr` (use port 0 for any free port). Returns the
    /// address actually bound and the server task.
    pub async fn serve(
        root: PathBuf,
        addr: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let loaded = tokio::task::spawn_blocking(move || load_datasets(&root))
            .await
            .context("loading the Hub mirror panicked")??;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the Hub mirror to {addr}"))?;
        let local = listener
            .local_addr()
            .context("cannot read the Hub mirror's address")?;
        let state = Arc::new(MirrorState {
            datasets: loaded.0,
            built_at: loaded.1,
            local,
        });
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
    pub async fn start(
        cache_dir: &Path,
        python: &Path,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
        let root = HubMirror::ensure_built(cache_dir, python, progress).await?;
        let (addr, handle) = HubMirror::serve(root, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        Ok((format!("http://{addr}"), handle))
    }
}

// ---------------------------------------------------------------------------------------------
// Building

fn script_digest() -> String {
    crate::digest::sha256_hex(BUILD_SCRIPT.as_bytes())
}

fn is_current(root: &Path, digest: &str) -> bool {
    std::fs::read_to_string(root.join(MARKER)).is_ok_and(|m| m.trim() == digest)
        && root.join("catalog.json").is_file()
}

/// An exclusive `flock`, released when the file is closed.
struct FileLock(#[allow(dead_code)] std::fs::File);

async fn lock_exclusive(path: PathBuf) -> anyhow::Result<FileLock> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(FileLock(file))
    })
    .await
    .context("waiting for the Hub mirror lock panicked")?
}

/// Removes build directories left by processes that died mid-build (the caller holds the lock).
fn remove_stale_builds(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(BUILD_PREFIX)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run_build(
    python: &Path,
    script: &Path,
    out: &Path,
    work: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(out)
        .current_dir(work)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run Python at {} to build the Hub mirror",
                python.display()
            )
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let run = async {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            progress(&format!("building the embedded Hub mirror: {}", line.trim()));
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(BUILD_TIMEOUT, run).await {
        Ok(status) => status.context("waiting for the Hub mirror build")?,
        Err(_) => bail!(
            "building the Hub mirror took longer than {} s and was stopped",
            BUILD_TIMEOUT.as_secs()
        ),
    };
    let stderr = stderr_task.await.unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let tail = tail_lines(&stderr, 12);
    if status.code() == Some(EXIT_MISSING_MODULE) || stderr.contains("ModuleNotFoundError") {
        bail!(
            "the Python at {} cannot build the Hub mirror: it lacks numpy, pandas, scikit-learn \
             or pyarrow ({}). Use the sandbox's Python environment, which gymforge provisions \
             from config/python-requirements.txt",
            python.display(),
            tail.trim()
        );
    }
    bail!("building the Hub mirror failed ({status}):\n{tail}");
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Loading

#[derive(Deserialize)]
struct Catalog {
    built_at: String,
    datasets: Vec<CatalogEntry>,
}

#[derive(Deserialize)]
struct CatalogEntry {
    id: String,
    path: String,
}

#[derive(Deserialize, Clone, Debug)]
struct Manifest {
    id: String,
    owner: String,
    name: String,
    title: String,
    description: String,
    source: String,
    mirror_note: String,
    license: String,
    task_category: String,
    features: Vec<ManifestFeature>,
    config: String,
    split: String,
    num_rows: u64,
    num_columns: u64,
    num_bytes_memory: u64,
    size_category: String,
    parquet: ManifestParquet,
    sha256: String,
    revision: String,
}

#[derive(Deserialize, Clone, Debug)]
struct ManifestFeature {
    name: String,
    dtype: String,
    #[serde(default)]
    class_names: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Debug)]
struct ManifestParquet {
    path: String,
    filename: String,
    bytes: u64,
}

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
        if self.m.description.is_empty() {
            self.m.mirror_note.clone()
        } else {
            format!("{}\n\n{}", self.m.description, self.m.mirror_note)
        }
    }

    fn hub_task_category(&self) -> String {
        format!("tabular-{}", self.m.task_category)
    }
}

fn load_datasets(root: &Path) -> anyhow::Result<(BTreeMap<String, Served>, String)> {
    let read = |p: PathBuf| -> anyhow::Result<Vec<u8>> {
        std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let catalog: Catalog = serde_json::from_slice(&read(root.join("catalog.json"))?)
        .with_context(|| format!("{}/catalog.json is not a valid catalog", root.display()))?;
    let mut datasets = BTreeMap::new();
    for entry in catalog.datasets {
        let dir = root.join(&entry.path);
        let m: Manifest = serde_json::from_slice(&read(dir.join("manifest.json"))?)
            .with_context(|| format!("{}/manifest.json is not valid", dir.display()))?;
        if m.id != entry.id {
            bail!(
                "{}: manifest id {} does not match the catalog's {}",
                dir.display(),
                m.id,
                entry.id
            );
        }
        let parquet = read(dir.join(&m.parquet.path))?;
        if crate::digest::sha256_hex(&parquet) != m.sha256 {
            bail!(
                "{}: the parquet file does not match its manifest's sha256; delete {} to rebuild",
                dir.display(),
                root.display()
            );
        }
        let first_rows = read(dir.join("first_rows.json"))?;
        datasets.insert(
            m.id.clone(),
            Served {
                m,
                first_rows: Bytes::from(first_rows),
                parquet: Bytes::from(parquet),
            },
        );
    }
    Ok((datasets, catalog.built_at))
}

// ---------------------------------------------------------------------------------------------
// Serving

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
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
            });
        match host {
            Some(h) => format!("http://{h}"),
            None => format!("http://{}", self.local),
        }
    }
}

fn router(state: Arc<MirrorState>) -> Router {
    Router::new()
        .route("/api/datasets/{owner}/{name}", get(api_dataset))
        .route(
            "/api/datasets/{owner}/{name}/revision/{rev}",
            get(api_dataset_revision),
        )
        .route(
            "/datasets/{owner}/{name}/resolve/{rev}/{*path}",
            get(resolve_file),
        )
        .route("/is-valid", get(viewer_is_valid))
        .route("/splits", get(viewer_splits))
        .route("/info", get(viewer_info))
        .route("/first-rows", get(viewer_first_rows))
        .route("/size", get(viewer_size))
        .route("/parquet", get(viewer_parquet))
        .fallback(not_found_page)
        .with_state(state)
        .layer(axum::middleware::map_response(label_response))
}

async fn label_response(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(MIRROR_HEADER, HeaderValue::from_static("embedded"));
    response
}

async fn not_found_page() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        None,
        "Sorry, we can't find the page you are looking for.",
    )
}

fn error_response(status: StatusCode, code: Option<&'static str>, message: &str) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if let Some(code) = code {
        response
            .headers_mut()
            .insert("x-error-code", HeaderValue::from_static(code));
        response
            .headers_mut()
            .insert("x-error-message", header_text(message));
    }
    response
}

fn header_text(text: &str) -> HeaderValue {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty())
}

fn gated_response(id: &str) -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        Some("GatedRepo"),
        &format!(
            "Access to dataset {id} is restricted. You must have access to it and be \
             authenticated to access it. Please log in."
        ),
    )
}

fn repo_not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        Some("RepoNotFound"),
        "Repository not found",
    )
}

/// A stable 24-hex-digit object id, like the Hub's `_id`.
fn object_id(id: &str) -> String {
    crate::digest::sha256_hex(format!("gymforge-mirror:{id}").as_bytes())[..24].to_string()
}

fn fixture_sha(id: &str) -> String {
    crate::digest::sha256_hex(format!("gymforge-fixture:{id}").as_bytes())[..40].to_string()
}

// ----- Hub API

async fn api_dataset(
    State(s): State<Arc<MirrorState>>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    api_info(&s, &owner, &name, None, &headers)
}

async fn api_dataset_revision(
    State(s): State<Arc<MirrorState>>,
    UrlPath((owner, name, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    api_info(&s, &owner, &name, Some(&rev), &headers)
}

fn api_info(
    s: &MirrorState,
    owner: &str,
    name: &str,
    rev: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let id = format!("{owner}/{name}");
    let Some(repo) = s.repo(&id) else {
        return repo_not_found();
    };
    if matches!(repo, Repo::Fixture(Fixture::Gated)) && !has_bearer(headers) {
        return gated_response(&id);
    }
    let sha = match &repo {
        Repo::Data(d) => d.m.revision.clone(),
        Repo::Fixture(_) => fixture_sha(&id),
    };
    if let Some(rev) = rev
        && rev != "main"
        && rev != sha
    {
        return error_response(
            StatusCode::NOT_FOUND,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        );
    }
    let body = match repo {
        Repo::Data(d) => dataset_json(s, d),
        Repo::Fixture(f) => fixture_json(s, &id, f),
    };
    Json(body).into_response()
}

fn card_data(d: &Served) -> Value {
    let m = &d.m;
    let features: Vec<Value> = m
        .features
        .iter()
        .map(|f| match &f.class_names {
            Some(names) => {
                let names: serde_json::Map<String, Value> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (i.to_string(), Value::String(n.clone())))
                    .collect();
                json!({"name": f.name, "dtype": {"class_label": {"names": names}}})
            }
            None => json!({"name": f.name, "dtype": f.dtype}),
        })
        .collect();
    json!({
        "pretty_name": m.title,
        "license": m.license,
        "task_categories": [d.hub_task_category()],
        "size_categories": [m.size_category],
        "tags": ["tabular", "scikit-learn", "gymforge-embedded-mirror"],
        "source_datasets": ["scikit-learn bundled copy"],
        "configs": [{
            "config_name": m.config,
            "data_files": [{"split": m.split, "path": format!("data/{}-*", m.split)}],
        }],
        "dataset_info": {
            "features": features,
            "splits": [{"name": m.split, "num_bytes": m.num_bytes_memory, "num_examples": m.num_rows}],
            "download_size": m.parquet.bytes,
            "dataset_size": m.num_bytes_memory,
        },
        "gymforge_mirror": {
            "simulated": true,
            "served_by": "gymforge embedded Hub mirror",
            "source": m.source,
            "note": m.mirror_note,
        },
    })
}

fn dataset_json(s: &MirrorState, d: &Served) -> Value {
    let m = &d.m;
    json!({
        "_id": object_id(&m.id),
        "id": m.id,
        "author": m.owner,
        "sha": m.revision,
        "createdAt": s.built_at,
        "lastModified": s.built_at,
        "private": false,
        "gated": false,
        "disabled": false,
        "downloads": 0,
        "downloadsAllTime": 0,
        "likes": 0,
        "trendingScore": 0,
        "usedStorage": m.parquet.bytes,
        "tags": [
            format!("task_categories:{}", d.hub_task_category()),
            format!("size_categories:{}", m.size_category),
            "modality:tabular",
            "format:parquet",
            "library:datasets",
            "library:pandas",
            format!("license:{}", m.license),
            "tabular",
            "scikit-learn",
            "gymforge-embedded-mirror",
        ],
        "description": d.full_description(),
        "siblings": [{"rfilename": "README.md"}, {"rfilename": d.main_data_path()}],
        "cardData": card_data(d),
    })
}

fn fixture_json(s: &MirrorState, id: &str, f: Fixture) -> Value {
    let (gated, disabled, what) = match f {
        Fixture::Gated => (json!("manual"), false, "a gated dataset (manual approval)"),
        Fixture::Disabled => (json!(false), true, "a disabled dataset"),
    };
    let note = format!(
        "Fixture of gymforge's embedded Hub mirror: {what} with no data, served so that \
         rejection paths can be exercised."
    );
    json!({
        "_id": object_id(id),
        "id": id,
        "author": "gymforge-fixtures",
        "sha": fixture_sha(id),
        "createdAt": s.built_at,
        "lastModified": s.built_at,
        "private": false,
        "gated": gated,
        "disabled": disabled,
        "downloads": 0,
        "likes": 0,
        "tags": ["gymforge-fixture", "gymforge-embedded-mirror"],
        "description": note,
        "siblings": [{"rfilename": "README.md"}],
        "cardData": {
            "pretty_name": format!("gymforge fixture: {id}"),
            "license": "other",
            "gymforge_mirror": {"simulated": true, "fixture": true, "note": note},
        },
    })
}

fn readme(d: &Served) -> String {
    let yaml = serde_norway::to_string(&card_data(d)).unwrap_or_default();
    format!(
        "---\n{yaml}---\n\n# {}\n\n{}\n\n> {}\n\nSource: {}.\n",
        d.m.title, d.m.description, d.m.mirror_note, d.m.source
    )
}

async fn resolve_file(
    State(s): State<Arc<MirrorState>>,
    UrlPath((owner, name, rev, path)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = format!("{owner}/{name}");
    let d = match s.repo(&id) {
        None => return repo_not_found(),
        Some(Repo::Fixture(Fixture::Gated)) if !has_bearer(&headers) => {
            return gated_response(&id);
        }
        Some(Repo::Fixture(_)) => {
            return error_response(
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                &format!("{path} does not exist on \"{rev}\""),
            );
        }
        Some(Repo::Data(d)) => d,
    };
    let file = if rev == PARQUET_REF {
        let converted = format!("{}/{}/{}", d.m.config, d.m.split, d.m.parquet.filename);
        (path == converted).then(|| ("application/octet-stream", d.parquet.clone()))
    } else if rev == "main" || rev == d.m.revision {
        if path == "README.md" {
            Some(("text/markdown; charset=utf-8", Bytes::from(readme(d))))
        } else if path == d.main_data_path() {
            Some(("application/octet-stream", d.parquet.clone()))
        } else {
            None
        }
    } else {
        return error_response(
            StatusCode::NOT_FOUND,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        );
    };
    let Some((content_type, bytes)) = file else {
        return error_response(
            StatusCode::NOT_FOUND,
            Some("EntryNotFound"),
            &format!("{path} does not exist on \"{rev}\""),
        );
    };
    let etag = format!("\"{}\"", crate::digest::sha256_hex(&bytes));
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ETAG, header_text(&etag));
    h.insert("x-repo-commit", header_text(&d.m.revision));
    response
}

// ----- Dataset viewer

type Params = Query<BTreeMap<String, String>>;

/// A dataset viewer error: `{"error": message}` with a status.
struct ViewerError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ViewerError {
    fn into_response(self) -> Response {
        error_response(self.status, None, &self.message)
    }
}

fn param<'a>(q: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, ViewerError> {
    match q.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        Some(v) => Ok(v),
        None => Err(ViewerError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("Parameter '{key}' is required"),
        }),
    }
}

fn viewer_not_found() -> ViewerError {
    ViewerError {
        status: StatusCode::NOT_FOUND,
        message: "The dataset does not exist, or is not accessible without authentication \
                  (private or gated). Please check the spelling of the dataset name or retry \
                  with authentication."
            .to_string(),
    }
}

/// The served dataset named by `?dataset=`, or the error response to send.
fn viewer_dataset<'a>(
    s: &'a MirrorState,
    q: &BTreeMap<String, String>,
) -> Result<&'a Served, ViewerError> {
    let id = param(q, "dataset")?;
    match s.repo(id) {
        Some(Repo::Data(d)) => Ok(d),
        _ => Err(viewer_not_found()),
    }
}

/// Checks `?config=` (and `?split=` when `need_split`) against the dataset.
fn check_config_split(
    d: &Served,
    q: &BTreeMap<String, String>,
    need_split: bool,
) -> Result<(), ViewerError> {
    if param(q, "config")? != d.m.config {
        return Err(ViewerError {
            status: StatusCode::NOT_FOUND,
            message: "The config does not exist.".to_string(),
        });
    }
    if need_split && param(q, "split")? != d.m.split {
        return Err(ViewerError {
            status: StatusCode::NOT_FOUND,
            message: "The split does not exist.".to_string(),
        });
    }
    Ok(())
}

async fn viewer_is_valid(
    State(s): State<Arc<MirrorState>>,
    Query(q): Params,
) -> Result<Response, ViewerError> {
    let id = param(&q, "dataset")?;
    let ok = match s.repo(id) {
        None => return Err(viewer_not_found()),
        Some(Repo::Data(_)) => true,
        // The fixtures have no data: nothing is viewable, with or without a token.
        Some(Repo::Fixture(_)) => false,
    };
    Ok(Json(json!({
        "preview": ok,
        "viewer": ok,
        "search": false,
        "filter": false,
        "statistics": false,
    }))
    .into_response())
}

async fn viewer_splits(
    State(s): State<Arc<MirrorState>>,
    Query(q): Params,
) -> Result<Response, ViewerError> {
    let d = viewer_dataset(&s, &q)?;
    Ok(Json(json!({
        "splits": [{"dataset": d.m.id, "config": d.m.config, "split": d.m.split}],
        "pending": [],
        "failed": [],
    }))
    .into_response())
}

/// Features in the `datasets` library's JSON shape, in column order.
struct FeaturesJson<'a>(&'a [ManifestFeature]);

impl Serialize for FeaturesJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for f in self.0 {
            match &f.class_names {
                Some(names) => {
                    map.serialize_entry(&f.name, &json!({"names": names, "_type": "ClassLabel"}))?
                }
                None => {
                    map.serialize_entry(&f.name, &json!({"dtype": f.dtype, "_type": "Value"}))?
                }
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct DatasetInfoJson<'a> {
    description: String,
    citation: &'static str,
    homepage: &'static str,
    license: &'a str,
    features: FeaturesJson<'a>,
    builder_name: &'static str,
    dataset_name: &'a str,
    config_name: &'a str,
    version: Value,
    splits: Value,
    download_size: u64,
    dataset_size: u64,
}

fn dataset_info(d: &Served) -> DatasetInfoJson<'_> {
    let m = &d.m;
    DatasetInfoJson {
        description: d.full_description(),
        citation: "",
        homepage: "https://scikit-learn.org/stable/datasets/toy_dataset.html",
        license: &m.license,
        features: FeaturesJson(&m.features),
        builder_name: "parquet",
        dataset_name: &m.name,
        config_name: &m.config,
        version: json!({"version_str": "0.0.0", "major": 0, "minor": 0, "patch": 0}),
        splits: Value::Object(serde_json::Map::from_iter([(
            m.split.clone(),
            json!({
                "name": m.split,
                "num_bytes": m.num_bytes_memory,
                "num_examples": m.num_rows,
                "dataset_name": null,
            }),
        )])),
        download_size: m.parquet.bytes,
        dataset_size: m.num_bytes_memory,
    }
}

async fn viewer_info(
    State(s): State<Arc<MirrorState>>,
    Query(q): Params,
) -> Result<Response, ViewerError> {
    #[derive(Serialize)]
    struct One<'a> {
        dataset_info: DatasetInfoJson<'a>,
        partial: bool,
    }
    #[derive(Serialize)]
    struct All<'a> {
        dataset_info: BTreeMap<&'a str, DatasetInfoJson<'a>>,
        pending: [(); 0],
        failed: [(); 0],
        partial: bool,
    }
    let d = viewer_dataset(&s, &q)?;
    if !q.contains_key("config") {
        let all = All {
            dataset_info: BTreeMap::from([(d.m.config.as_str(), dataset_info(d))]),
            pending: [],
            failed: [],
            partial: false,
        };
        return Ok(Json(all).into_response());
    }
    check_config_split(d, &q, false)?;
    Ok(Json(One {
        dataset_info: dataset_info(d),
        partial: false,
    })
    .into_response())
}

async fn viewer_first_rows(
    State(s): State<Arc<MirrorState>>,
    Query(q): Params,
) -> Result<Response, ViewerError> {
    let d = viewer_dataset(&s, &q)?;
    check_config_split(d, &q, true)?;
    let mut response = (StatusCode::OK, d.first_rows.clone()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

async fn viewer_size(
    State(s): State<Arc<MirrorState>>,
    Query(q): Params,
) -> Result<Response, ViewerError> {
    let d = viewer_dataset(&s, &q)?;
    let m = &d.m;
    Ok(Json(json!({
        "size": {
            "dataset": {
                "dataset": m.id,
                "num_bytes_original_files": m.parquet.bytes,
                "num_bytes_parquet_files": m.parquet.bytes,
                "num_bytes_memory": m.num_bytes_memory,
                "num_rows": m.num_rows,
            },
            "configs": [{
                "dataset": m.id,
                "config": m.config,
                "num_bytes_original_files": m.parquet.bytes,
                "num_bytes_parquet_files": m.parquet.bytes,
                "num_bytes_memory": m.num_bytes_memory,
                "num_rows": m.num_rows,
                "num_columns": m.num_columns,
            }],
            "splits": [{
                "dataset": m.id,
                "config": m.config,
                "split": m.split,
                "num_bytes_parquet_files": m.parquet.bytes,
                "num_bytes_memory": m.num_bytes_memory,
                "num_rows": m.num_rows,
                "num_columns": m.num_columns,
            }],
        },
        "pending": [],
        "failed": [],
        "partial": false,
    }))
    .into_response())
}

async fn viewer_parquet(
    State(s): State<Arc<MirrorState>>,
    Query(q): Params,
    headers: HeaderMap,
) -> Result<Response, ViewerError> {
    let d = viewer_dataset(&s, &q)?;
    let m = &d.m;
    let url = format!(
        "{}/datasets/{}/resolve/refs%2Fconvert%2Fparquet/{}/{}/{}",
        s.base_url(&headers),
        m.id,
        m.config,
        m.split,
        m.parquet.filename
    );
    Ok(Json(json!({
        "parquet_files": [{
            "dataset": m.id,
            "config": m.config,
            "split": m.split,
            "url": url,
            "filename": m.parquet.filename,
            "size": m.parquet.bytes,
        }],
        "pending": [],
        "failed": [],
        "partial": false,
    }))
    .into_response())
}
