//! The mirror's dataset viewer API: `/is-valid`, `/splits`, `/info`, `/first-rows`, `/size`
//! and `/parquet`, with the query parameters and the `{"error": ...}` responses of the real
//! service. Only datasets with data are viewable; the fixtures are not.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Value, json};

use super::build::ManifestFeature;
use super::hub_api::error_response;
use super::{MirrorState, Repo, Served};

type Params = Query<BTreeMap<String, String>>;

/// A dataset viewer error: `{"error": message}` with a status.
pub(super) struct ViewerError {
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
        None => Err(ViewerError { status: StatusCode::UNPROCESSABLE_ENTITY, message: format!("Parameter '{key}' is required") }),
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
fn viewer_dataset<'a>(s: &'a MirrorState, q: &BTreeMap<String, String>) -> Result<&'a Served, ViewerError> {
    let id = param(q, "dataset")?;
    match s.repo(id) {
        Some(Repo::Data(d)) => Ok(d),
        _ => Err(viewer_not_found()),
    }
}

/// Checks `?config=` (and `?split=` when `need_split`) against the dataset.
fn check_config_split(d: &Served, q: &BTreeMap<String, String>, need_split: bool) -> Result<(), ViewerError> {
    if param(q, "config")? != d.m.config {
        return Err(ViewerError { status: StatusCode::NOT_FOUND, message: "The config does not exist.".to_string() });
    }
    if need_split && param(q, "split")? != d.m.split {
        return Err(ViewerError { status: StatusCode::NOT_FOUND, message: "The split does not exist.".to_string() });
    }
    Ok(())
}

pub(super) async fn viewer_is_valid(State(s): State<Arc<MirrorState>>, Query(q): Params) -> Result<Response, ViewerError> {
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

pub(super) async fn viewer_splits(State(s): State<Arc<MirrorState>>, Query(q): Params) -> Result<Response, ViewerError> {
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
                Some(names) => map.serialize_entry(&f.name, &json!({"names": names, "_type": "ClassLabel"}))?,
                None => map.serialize_entry(&f.name, &json!({"dtype": f.dtype, "_type": "Value"}))?,
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

pub(super) async fn viewer_info(State(s): State<Arc<MirrorState>>, Query(q): Params) -> Result<Response, ViewerError> {
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
        let all = All { dataset_info: BTreeMap::from([(d.m.config.as_str(), dataset_info(d))]), pending: [], failed: [], partial: false };
        return Ok(Json(all).into_response());
    }
    check_config_split(d, &q, false)?;
    Ok(Json(One { dataset_info: dataset_info(d), partial: false }).into_response())
}

pub(super) async fn viewer_first_rows(State(s): State<Arc<MirrorState>>, Query(q): Params) -> Result<Response, ViewerError> {
    let d = viewer_dataset(&s, &q)?;
    check_config_split(d, &q, true)?;
    let mut response = (StatusCode::OK, d.first_rows.clone()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

pub(super) async fn viewer_size(State(s): State<Arc<MirrorState>>, Query(q): Params) -> Result<Response, ViewerError> {
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

pub(super) async fn viewer_parquet(
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
