//! The mirror's Hub API: dataset info (`/api/datasets/{owner}/{name}`, optionally at a
//! revision), with the card data the Hub derives from the README; the files of a dataset (its
//! README and parquet file on `main` and on the parquet conversion branch); the gated and
//! disabled fixtures; and the Hub's error responses (`x-error-code`, `x-error-message`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Fixture, MirrorState, Repo, Served};

/// Branch of the parquet conversion, as on the real Hub.
const PARQUET_REF: &str = "refs/convert/parquet";

pub(super) fn error_response(status: StatusCode, code: Option<&'static str>, message: &str) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if let Some(code) = code {
        response.headers_mut().insert("x-error-code", HeaderValue::from_static(code));
        response.headers_mut().insert("x-error-message", header_text(message));
    }
    response
}

fn header_text(text: &str) -> HeaderValue {
    let clean: String = text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { ' ' }).collect();
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
    error_response(StatusCode::NOT_FOUND, Some("RepoNotFound"), "Repository not found")
}

/// A stable 24-hex-digit object id, like the Hub's `_id`.
fn object_id(id: &str) -> String {
    gymforge_actors::digest::sha256_hex(format!("gymforge-mirror:{id}").as_bytes())[..24].to_string()
}

fn fixture_sha(id: &str) -> String {
    gymforge_actors::digest::sha256_hex(format!("gymforge-fixture:{id}").as_bytes())[..40].to_string()
}

pub(super) async fn api_dataset(
    State(s): State<Arc<MirrorState>>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    api_info(&s, &owner, &name, None, &headers)
}

pub(super) async fn api_dataset_revision(
    State(s): State<Arc<MirrorState>>,
    UrlPath((owner, name, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    api_info(&s, &owner, &name, Some(&rev), &headers)
}

fn api_info(s: &MirrorState, owner: &str, name: &str, rev: Option<&str>, headers: &HeaderMap) -> Response {
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
        return error_response(StatusCode::NOT_FOUND, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"));
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
                let names: serde_json::Map<String, Value> =
                    names.iter().enumerate().map(|(i, n)| (i.to_string(), Value::String(n.clone()))).collect();
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
    format!("---\n{yaml}---\n\n# {}\n\n{}\n\n> {}\n\nSource: {}.\n", d.m.title, d.m.description, d.m.mirror_note, d.m.source)
}

pub(super) async fn resolve_file(
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
            return error_response(StatusCode::NOT_FOUND, Some("EntryNotFound"), &format!("{path} does not exist on \"{rev}\""));
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
        return error_response(StatusCode::NOT_FOUND, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"));
    };
    let Some((content_type, bytes)) = file else {
        return error_response(StatusCode::NOT_FOUND, Some("EntryNotFound"), &format!("{path} does not exist on \"{rev}\""));
    };
    let etag = format!("\"{}\"", gymforge_actors::digest::sha256_hex(&bytes));
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ETAG, header_text(&etag));
    h.insert("x-repo-commit", header_text(&d.m.revision));
    response
}
