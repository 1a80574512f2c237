//! Tests of the Hub client and the embedded Hub mirror.
//!
//! The first group builds the mirror from scikit-learn's bundled datasets (with the sandbox's
//! Python environment), serves it on loopback and checks the client against it end to end. The
//! second group runs the client against small fakes that answer with hand-written JSON in the
//! real Hub's and dataset viewer's shapes, to reach the paths the mirror never takes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gymforge::hub::{CachedHub, HubClient, HubSettings, cache, mirror_client};
use gymforge_actors::model::{DatasetMeta, ParquetFile};
use gymforge_actors::ports::{DatasetCheck, Hub, PortError, Rejection};
use gymforge_sim::mirror::HubMirror;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TIMEOUT: Duration = Duration::from_secs(20);
const SKLEARN: [&str; 5] = ["sklearn/iris", "sklearn/wine", "sklearn/breast_cancer", "sklearn/digits", "sklearn/diabetes"];

// ---------------------------------------------------------------------------------------------
// The mirror, built once per test binary and served from a runtime of its own.

struct Mirror {
    base: String,
    root: PathBuf,
    cache: PathBuf,
    python: PathBuf,
}

static MIRROR: OnceLock<Mirror> = OnceLock::new();

fn mirror() -> &'static Mirror {
    MIRROR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = (|| -> anyhow::Result<_> {
                let env = gymforge::sandbox::PythonEnv::ensure(
                    &gymforge::config::Config::embedded().sandbox,
                    gymforge::config::PYTHON_REQUIREMENTS,
                    &|_| {},
                )?;
                let python = env.python();
                let cache = tempfile::Builder::new().prefix("hub-mirror-test-").tempdir_in(env!("CARGO_TARGET_TMPDIR"))?.keep();
                let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
                let (root, base) = runtime.block_on(async {
                    // Two concurrent builds into one cache directory: one builds, one waits.
                    let (a, b) =
                        tokio::join!(HubMirror::ensure_built(&cache, &python, &|_| {}), HubMirror::ensure_built(&cache, &python, &|_| {}),);
                    let (a, b) = (a?, b?);
                    assert_eq!(a, b);
                    let (addr, _server) = HubMirror::serve(a.clone(), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
                    anyhow::Ok((a, format!("http://{addr}")))
                })?;
                Ok((runtime, Mirror { base, root, cache, python }))
            })();
            match started {
                Ok((runtime, mirror)) => {
                    tx.send(Ok(mirror)).unwrap();
                    // Keep the runtime, and with it the server, alive for the whole test run.
                    let _runtime = runtime;
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => tx.send(Err(format!("{e:#}"))).unwrap(),
            }
        });
        rx.recv().unwrap().unwrap_or_else(|e| panic!("cannot start the Hub mirror: {e}"))
    })
}

fn client(max_bytes: u64) -> HubClient {
    mirror_client(&mirror().base, max_bytes, TIMEOUT).unwrap()
}

async fn verified(hub: &HubClient, id: &str) -> DatasetMeta {
    match hub.verify(id).await {
        Ok(DatasetCheck::Verified(meta)) => meta,
        other => panic!("{id} did not verify: {other:?}"),
    }
}

async fn rejection(hub: &HubClient, id: &str) -> (String, String) {
    match hub.verify(id).await {
        Ok(DatasetCheck::Rejected { reason, detail }) => (reason.to_string(), detail),
        other => panic!("{id} was not rejected: {other:?}"),
    }
}

fn manifest(id: &str) -> Value {
    let text = std::fs::read_to_string(mirror().root.join(id).join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn wine_verifies_with_class_names_and_rows() {
    let meta = verified(&client(50_000_000), "sklearn/wine").await;
    assert_eq!(meta.id, "sklearn/wine");
    assert_eq!(meta.config, "default");
    assert_eq!(meta.splits, vec!["train".to_string()]);
    assert_eq!(meta.num_rows.get("train"), Some(&178));
    let target = meta.features.iter().find(|f| f.name == "target").unwrap();
    assert_eq!(target.dtype, "int64");
    assert_eq!(target.class_names.as_ref().unwrap().len(), 3);
    assert_eq!(meta.features.first().unwrap().name, "alcohol", "columns keep their order");
    assert_eq!(meta.features.len(), 14);
    assert!(meta.features.iter().any(|f| f.name == "od280_od315_of_diluted_wines"));
    let m = manifest("sklearn/wine");
    assert_eq!(meta.revision, m["revision"].as_str().unwrap());
    assert_eq!(meta.revision.len(), 40);
    assert_eq!(meta.num_bytes_parquet, m["parquet_bytes"].as_u64().unwrap());
    assert!(meta.description.contains("Wine"), "{}", meta.description);
    assert!(meta.description.contains("embedded Hub mirror"), "{}", meta.description);
    assert_eq!(meta.parquet_files.len(), 1);
    assert!(
        meta.parquet_files[0].url.ends_with("/datasets/sklearn/wine/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet"),
        "{}",
        meta.parquet_files[0].url
    );
}

#[tokio::test]
async fn every_sklearn_dataset_verifies() {
    let hub = client(50_000_000);
    let expected_rows = [150u64, 178, 569, 1797, 442];
    for (id, rows) in SKLEARN.iter().zip(expected_rows) {
        let meta = verified(&hub, id).await;
        assert_eq!(meta.num_rows.get("train"), Some(&rows), "{id}");
        let target = meta.features.last().unwrap();
        assert_eq!(target.name, "target", "{id}");
        if *id == "sklearn/diabetes" {
            assert_eq!(target.dtype, "float64");
            assert!(target.class_names.is_none());
        } else {
            assert!(target.class_names.as_ref().is_some_and(|n| n.len() >= 2), "{id}");
        }
    }
    let iris = verified(&hub, "sklearn/iris").await;
    let names: Vec<&str> = iris.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm", "target"]);
    let digits = verified(&hub, "sklearn/digits").await;
    assert_eq!(digits.features[0].name, "pixel_0_0");
    assert_eq!(digits.features.len(), 65);
}

#[tokio::test]
async fn unknown_dataset_is_not_found() {
    let (reason, _) = rejection(&client(50_000_000), "sklearn/no_such_dataset").await;
    assert_eq!(reason, "not_found");
    let (reason, _) = rejection(&client(50_000_000), "nobody/nothing").await;
    assert_eq!(reason, "not_found");
}

/// `owner/name@rev` pins the revision: `main` and the current commit verify (pinned to the
/// commit); an unknown revision and an older one are refused with their own reasons.
#[tokio::test]
async fn a_pinned_revision_verifies_only_when_the_viewer_serves_it() {
    let hub = client(50_000_000);
    let current = verified(&hub, "sklearn/iris").await.revision;
    for pinned in ["sklearn/iris@main".to_string(), format!("sklearn/iris@{current}")] {
        let meta = verified(&hub, &pinned).await;
        assert_eq!((meta.id.as_str(), meta.revision.as_str()), ("sklearn/iris", current.as_str()), "{pinned}");
    }
    let (reason, detail) = rejection(&hub, "sklearn/iris@0123456789abcdef0123456789abcdef01234567").await;
    assert_eq!(reason, "revision_not_found", "{detail}");
    let (reason, _) = rejection(&hub, "sklearn/iris@a/b").await;
    assert_eq!(reason, "revision_not_found");
}

#[tokio::test]
async fn malformed_ids_are_invalid() {
    let hub = client(50_000_000);
    for id in ["", "a/b/c", "has space/x", "../etc/passwd", "https://huggingface.co/datasets/x/y"] {
        let (reason, _) = rejection(&hub, id).await;
        assert_eq!(reason, "invalid_id", "{id:?}");
    }
}

#[tokio::test]
async fn gated_fixture_is_gated_without_a_token() {
    let (reason, detail) = rejection(&client(50_000_000), "gymforge-fixtures/gated-demo").await;
    assert_eq!(reason, "gated");
    assert!(detail.contains("token"), "{detail}");
    // With a token the Hub API answers, but the fixture has no data to view.
    let with_token =
        HubClient::new(mirror().base.clone(), mirror().base.clone(), Some("hf_fixture_token".into()), 50_000_000, TIMEOUT).unwrap();
    let (reason, detail) = rejection(&with_token, "gymforge-fixtures/gated-demo").await;
    assert_eq!(reason, "viewer_invalid");
    assert!(!detail.contains("hf_fixture_token"));
}

#[tokio::test]
async fn disabled_fixture_is_disabled() {
    let (reason, _) = rejection(&client(50_000_000), "gymforge-fixtures/disabled-demo").await;
    assert_eq!(reason, "disabled");
}

#[tokio::test]
async fn tiny_size_limit_is_too_large() {
    let (reason, detail) = rejection(&client(1_000), "sklearn/iris").await;
    assert_eq!(reason, "too_large");
    assert!(detail.contains("1000"), "{detail}");
}

#[tokio::test]
async fn download_matches_the_manifest() {
    let hub = client(50_000_000);
    let dest = tempfile::tempdir().unwrap();
    for id in SKLEARN {
        let meta = verified(&hub, id).await;
        let target = dest.path().join(id.replace('/', "_"));
        let staged = hub.download(&meta, &target).await.unwrap();
        assert_eq!(staged.len(), 1);
        let m = manifest(id);
        assert_eq!(staged[0].path, "train/0000.parquet");
        assert_eq!(staged[0].sha256, m["sha256"].as_str().unwrap(), "{id}");
        assert_eq!(staged[0].bytes, m["parquet_bytes"].as_u64().unwrap());
        let file = target.join("train/0000.parquet");
        assert_eq!(sha256_file(&file), staged[0].sha256);
        assert_eq!(meta.revision, staged[0].sha256[..40]);
        let leftovers: Vec<_> = std::fs::read_dir(target.join("train"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[tokio::test]
async fn download_over_the_cap_is_refused() {
    let meta = verified(&client(50_000_000), "sklearn/breast_cancer").await;
    let small = client(1_000);
    let dest = tempfile::tempdir().unwrap();
    let err = small.download(&meta, dest.path()).await.unwrap_err();
    assert!(matches!(&err, PortError::Permanent(m) if m.contains("too_large")), "{err:?}");
    // Listed size within the cap but the file larger: stopped while streaming.
    let mut lying = meta.clone();
    lying.parquet_files[0].size = 10;
    let err = small.download(&lying, dest.path()).await.unwrap_err();
    assert!(matches!(&err, PortError::Permanent(m) if m.contains("too_large")), "{err:?}");
    assert!(!dest.path().join("train/0000.parquet").exists());
}

#[tokio::test]
async fn mirror_speaks_the_hub_and_viewer_shapes() {
    let base = &mirror().base;
    let http = gymforge::http::client_builder().build().unwrap();

    let r = http.get(format!("{base}/api/datasets/sklearn/iris")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-gymforge-mirror"], "embedded");
    let api: Value = r.json().await.unwrap();
    assert_eq!(api["id"], "sklearn/iris");
    assert_eq!(api["author"], "sklearn");
    assert_eq!(api["_id"].as_str().unwrap().len(), 24);
    assert_eq!(api["gated"], false);
    assert_eq!(api["disabled"], false);
    let tags: Vec<&str> = api["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tags.contains(&"task_categories:tabular-classification"), "{tags:?}");
    assert!(tags.contains(&"size_categories:n<1K"), "{tags:?}");
    assert_eq!(api["cardData"]["task_categories"][0], "tabular-classification");
    assert_eq!(api["cardData"]["gymforge_mirror"]["simulated"], true);
    assert!(api["description"].as_str().unwrap().contains("scikit-learn's bundled copy"));
    assert!(api["siblings"].as_array().unwrap().iter().any(|s| s["rfilename"] == "README.md"));
    let sha = api["sha"].as_str().unwrap().to_string();

    let r = http.get(format!("{base}/api/datasets/sklearn/iris/revision/{sha}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{base}/api/datasets/sklearn/iris/revision/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-error-code"], "RevisionNotFound");

    let r = http.get(format!("{base}/api/datasets/sklearn/unknown")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-error-code"], "RepoNotFound");
    assert_eq!(r.headers()["x-gymforge-mirror"], "embedded");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].is_string());

    let gated = format!("{base}/api/datasets/gymforge-fixtures/gated-demo");
    let r = http.get(&gated).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-error-code"], "GatedRepo");
    let r = http.get(&gated).bearer_auth("hf_x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["gated"], "manual");
    let v: Value = http.get(format!("{base}/is-valid?dataset=gymforge-fixtures/gated-demo")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["preview"], false);
    assert_eq!(v["viewer"], false);
    let disabled: Value =
        http.get(format!("{base}/api/datasets/gymforge-fixtures/disabled-demo")).send().await.unwrap().json().await.unwrap();
    assert_eq!(disabled["disabled"], true);

    let q = [("dataset", "sklearn/wine")];
    let v: Value = get_json(&http, format!("{base}/is-valid"), &q).await;
    assert_eq!(v["viewer"], true);
    assert_eq!(v["preview"], true);
    let v: Value = get_json(&http, format!("{base}/splits"), &q).await;
    assert_eq!(v["splits"], json!([{"dataset": "sklearn/wine", "config": "default", "split": "train"}]));

    let text = http.get(format!("{base}/info?dataset=sklearn/wine&config=default")).send().await.unwrap().text().await.unwrap();
    assert!(text.find("\"alcohol\"").unwrap() < text.find("\"proline\"").unwrap(), "column order");
    let info: Value = serde_json::from_str(&text).unwrap();
    let di = &info["dataset_info"];
    assert_eq!(di["features"]["alcohol"], json!({"dtype": "float64", "_type": "Value"}));
    assert_eq!(di["features"]["target"], json!({"names": ["class_0", "class_1", "class_2"], "_type": "ClassLabel"}));
    assert_eq!(di["splits"]["train"]["num_examples"], 178);
    assert!(di["splits"]["train"]["num_bytes"].as_u64().unwrap() > 0);
    assert_eq!(info["partial"], false);
    let r = http.get(format!("{base}/info?dataset=sklearn/wine&config=nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let rows: Value = http
        .get(format!("{base}/first-rows?dataset=sklearn/digits&config=default&split=train"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows["rows"].as_array().unwrap().len(), 100);
    assert_eq!(rows["truncated"], true);
    assert_eq!(rows["features"][0]["feature_idx"], 0);
    assert_eq!(rows["features"][0]["name"], "pixel_0_0");
    assert_eq!(rows["rows"][0]["row_idx"], 0);
    assert!(rows["rows"][0]["row"]["target"].is_i64());

    let size: Value = get_json(&http, format!("{base}/size"), &q).await;
    assert_eq!(size["size"]["dataset"]["num_rows"], 178);
    assert_eq!(size["size"]["configs"][0]["num_columns"], 14);
    assert_eq!(size["partial"], false);

    let pq: Value = get_json(&http, format!("{base}/parquet"), &q).await;
    assert_eq!(pq["partial"], false);
    assert_eq!(pq["pending"], json!([]));
    let file = &pq["parquet_files"][0];
    assert_eq!(file["filename"], "0000.parquet");
    let r = http.get(file["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-gymforge-mirror"], "embedded");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, file["size"].as_u64().unwrap());
    assert_eq!(&bytes[..4], b"PAR1");

    let readme = http.get(format!("{base}/datasets/sklearn/wine/resolve/main/README.md")).send().await.unwrap().text().await.unwrap();
    assert!(readme.starts_with("---\n"));
    assert!(readme.contains("embedded Hub mirror"));

    let r = http.get(format!("{base}/splits?dataset=nobody/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = http.get(format!("{base}/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-gymforge-mirror"], "embedded");
}

#[tokio::test]
async fn built_mirror_is_reused_and_catalogued() {
    let m = mirror();
    let messages = Mutex::new(Vec::<String>::new());
    let started = Instant::now();
    let root = HubMirror::ensure_built(&m.cache, &m.python, &|line| messages.lock().unwrap().push(line.to_string())).await.unwrap();
    assert_eq!(root, m.root);
    assert!(messages.lock().unwrap().is_empty(), "rebuilt: {:?}", messages.lock().unwrap());
    assert!(started.elapsed() < Duration::from_secs(2));
    let catalog: Value = serde_json::from_str(&std::fs::read_to_string(m.root.join("catalog.json")).unwrap()).unwrap();
    let ids: Vec<&str> = catalog["datasets"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, SKLEARN);
    let wine = manifest("sklearn/wine");
    assert_eq!(wine["task_category"], "classification");
    assert_eq!(manifest("sklearn/diabetes")["task_category"], "regression");
    assert_eq!(wine["target"], "target");
    assert_eq!(wine["num_rows"], 178);
    assert_eq!(sha256_file(&m.root.join("sklearn/wine/default/train/0000.parquet")), wine["sha256"].as_str().unwrap());
    assert_eq!(wine["revision"].as_str().unwrap(), &wine["sha256"].as_str().unwrap()[..40]);
}

/// A run's Hub setup on a mirror that is already built starts it without saying it builds it.
#[tokio::test]
async fn a_run_starts_an_already_built_mirror_without_building_it() {
    let m = mirror();
    let mut config = gymforge::config::Config::embedded();
    // The mirror is built beside the Python environment: point that at the built cache.
    config.sandbox.python_env = m.cache.join("pyenv").to_string_lossy().into_owned();
    assert_eq!(gymforge::run::mirror_cache_dir(&config), m.cache);
    let python = gymforge::sandbox::PythonEnv { dir: m.python.parent().unwrap().parent().unwrap().to_path_buf() };
    let settings = HubSettings::resolve(&config.hub, &|_| None);
    let messages = Mutex::new(Vec::<String>::new());
    let (_client, label) = gymforge::run::hub(&config, &settings, &python, SocketAddr::from(([127, 0, 0, 1], 0)), &|line: &str| {
        messages.lock().unwrap().push(line.to_string())
    })
    .await
    .unwrap();
    assert!(label.simulated, "{label:?}");
    let messages = messages.into_inner().unwrap();
    assert_eq!(messages, ["starting the embedded Hub mirror"]);
}

#[tokio::test]
async fn python_without_the_libraries_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("python");
    std::fs::write(&fake, "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'sklearn'\" >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = HubMirror::ensure_built(&dir.path().join("cache"), &fake, &|_| {}).await.unwrap_err().to_string();
    assert!(err.contains("lacks") && err.contains("scikit-learn"), "{err}");
    assert!(!dir.path().join("cache/hub-mirror").exists());
    let missing = HubMirror::ensure_built(&dir.path().join("cache"), Path::new("/nonexistent/python"), &|_| {}).await.unwrap_err();
    assert!(format!("{missing:#}").contains("/nonexistent/python"), "{missing:#}");
}

// ---------------------------------------------------------------------------------------------
// A fake Hub + viewer with hand-written answers in the real services' shapes.

const FAKE_SHA: &str = "5f3c2a7d9e1b4c6a8f0e2d4b6a8c0e2f4a6b8c0d";

type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn spawn(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// Records the path and Authorization header of every request.
fn recording(app: Router, seen: Seen) -> Router {
    app.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let seen = seen.clone();
        async move {
            let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_string());
            seen.lock().unwrap().push((req.uri().path().to_string(), auth));
            next.run(req).await
        }
    }))
}

fn parquet_bytes(tag: &str) -> Vec<u8> {
    let mut bytes = b"PAR1".to_vec();
    bytes.extend(tag.as_bytes().iter().cycle().take(2048));
    bytes.extend(b"PAR1");
    bytes
}

/// A fake of `acme/reviews`: two configs (`plain_text`, `extra`), no `default`; its parquet
/// files live at `files_base`.
fn fake_hub(files_base: Option<String>) -> Router {
    let files_base = Arc::new(files_base);
    Router::new()
        .route(
            "/api/datasets/acme/reviews",
            get(|| async {
                axum::Json(json!({
                    "_id": "65a1b2c3d4e5f60718293a4b",
                    "id": "acme/reviews",
                    "author": "acme",
                    "sha": FAKE_SHA,
                    "lastModified": "2024-03-01T10:00:00.000Z",
                    "createdAt": "2023-11-20T08:00:00.000Z",
                    "private": false,
                    "gated": false,
                    "disabled": false,
                    "downloads": 1234,
                    "likes": 5,
                    "tags": ["task_categories:text-classification", "size_categories:1K<n<10K", "format:parquet"],
                    "siblings": [{"rfilename": "README.md"}, {"rfilename": "plain_text/train-00000-of-00001.parquet"}],
                    "cardData": {"license": "mit", "task_categories": ["text-classification"]},
                    "description": "Product reviews labelled by sentiment."
                }))
            }),
        )
        .route(
            "/is-valid",
            get(|| async { axum::Json(json!({"viewer": true, "preview": true, "search": true, "filter": true, "statistics": true})) }),
        )
        .route(
            "/splits",
            get(|| async {
                axum::Json(json!({
                    "splits": [
                        {"dataset": "acme/reviews", "config": "plain_text", "split": "train"},
                        {"dataset": "acme/reviews", "config": "plain_text", "split": "test"},
                        {"dataset": "acme/reviews", "config": "extra", "split": "train"}
                    ],
                    "pending": [],
                    "failed": []
                }))
            }),
        )
        .route(
            "/info",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                if q.get("config").map(String::as_str) != Some("plain_text") {
                    return (StatusCode::NOT_FOUND, axum::Json(json!({"error": "The config does not exist."}))).into_response();
                }
                // Hand-written text so the column order is the server's, not a sorted map's.
                let body = r#"{"dataset_info": {"description": "", "citation": "", "homepage": "",
                    "license": "mit",
                    "features": {"text": {"dtype": "string", "_type": "Value"},
                                 "label": {"names": ["negative", "positive"], "_type": "ClassLabel"},
                                 "stars": {"dtype": "int32", "_type": "Value"},
                                 "aspects": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"}},
                    "builder_name": "parquet", "dataset_name": "reviews", "config_name": "plain_text",
                    "version": {"version_str": "0.0.0", "major": 0, "minor": 0, "patch": 0},
                    "splits": {"train": {"name": "train", "num_bytes": 812345, "num_examples": 8000, "dataset_name": null},
                               "test": {"name": "test", "num_bytes": 203456, "num_examples": 2000, "dataset_name": null}},
                    "download_size": 4100, "dataset_size": 1015801}, "partial": false}"#;
                ([("content-type", "application/json")], body).into_response()
            }),
        )
        .route(
            "/size",
            get(|| async {
                axum::Json(json!({
                    "size": {
                        "dataset": {"dataset": "acme/reviews", "num_bytes_original_files": 9000,
                                    "num_bytes_parquet_files": 8300, "num_bytes_memory": 2000000, "num_rows": 12000},
                        "configs": [
                            {"dataset": "acme/reviews", "config": "plain_text", "num_bytes_original_files": 4500,
                             "num_bytes_parquet_files": 4200, "num_bytes_memory": 1015801, "num_rows": 10000, "num_columns": 4},
                            {"dataset": "acme/reviews", "config": "extra", "num_bytes_original_files": 4500,
                             "num_bytes_parquet_files": 4100, "num_bytes_memory": 984199, "num_rows": 2000, "num_columns": 4}
                        ],
                        "splits": [
                            {"dataset": "acme/reviews", "config": "plain_text", "split": "train",
                             "num_bytes_parquet_files": 2100, "num_bytes_memory": 812345, "num_rows": 8000, "num_columns": 4},
                            {"dataset": "acme/reviews", "config": "plain_text", "split": "test",
                             "num_bytes_parquet_files": 2100, "num_bytes_memory": 203456, "num_rows": 2000, "num_columns": 4}
                        ]
                    },
                    "pending": [],
                    "failed": [],
                    "partial": false
                }))
            }),
        )
        .route(
            "/parquet",
            get(move |headers: HeaderMap| {
                let files_base = files_base.clone();
                async move {
                    let host = headers["host"].to_str().unwrap().to_string();
                    let base = files_base.as_ref().clone().unwrap_or(format!("http://{host}"));
                    let url = |config: &str, split: &str| {
                        format!("{base}/datasets/acme/reviews/resolve/refs%2Fconvert%2Fparquet/{config}/{split}/0000.parquet")
                    };
                    axum::Json(json!({
                        "parquet_files": [
                            {"dataset": "acme/reviews", "config": "extra", "split": "train",
                             "url": url("extra", "train"), "filename": "0000.parquet", "size": 2056},
                            {"dataset": "acme/reviews", "config": "plain_text", "split": "test",
                             "url": url("plain_text", "test"), "filename": "0000.parquet", "size": 2056},
                            {"dataset": "acme/reviews", "config": "plain_text", "split": "train",
                             "url": url("plain_text", "train"), "filename": "0000.parquet", "size": 2056}
                        ],
                        "pending": [],
                        "failed": [],
                        "partial": false
                    }))
                }
            }),
        )
        .merge(fake_files())
}

fn fake_files() -> Router {
    Router::new().route(
        "/datasets/acme/reviews/resolve/{rev}/{config}/{split}/{file}",
        get(|axum::extract::Path((rev, config, split, _file)): axum::extract::Path<(String, String, String, String)>| async move {
            assert_eq!(rev, "refs/convert/parquet");
            parquet_bytes(&format!("{config}-{split}"))
        }),
    )
}

fn fake_client(base: &str, token: Option<&str>, timeout: Duration) -> HubClient {
    HubClient::new(base.into(), base.into(), token.map(str::to_string), 50_000_000, timeout).unwrap()
}

#[tokio::test]
async fn fake_hub_picks_first_config_and_keeps_feature_order() {
    let base = spawn(fake_hub(None)).await;
    let hub = fake_client(&base, None, TIMEOUT);
    let meta = verified(&hub, "acme/reviews").await;
    assert_eq!(meta.revision, FAKE_SHA);
    assert_eq!(meta.config, "plain_text");
    assert_eq!(meta.splits, ["train", "test"]);
    let names: Vec<&str> = meta.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["text", "label", "stars", "aspects"]);
    assert_eq!(meta.features[0].dtype, "string");
    assert_eq!(meta.features[1].dtype, "int64");
    assert_eq!(meta.features[1].class_names, Some(vec!["negative".to_string(), "positive".to_string()]));
    assert_eq!(meta.features[2].dtype, "int32");
    assert_eq!(meta.features[3].dtype, "list");
    assert_eq!(meta.num_rows.get("train"), Some(&8000));
    assert_eq!(meta.num_rows.get("test"), Some(&2000));
    assert_eq!(meta.num_bytes_parquet, 4200);
    assert_eq!(meta.description, "Product reviews labelled by sentiment.");
    assert_eq!(meta.parquet_files.len(), 2, "only the chosen config's files");
    assert!(meta.parquet_files.iter().all(|f| f.url.contains("/plain_text/")));

    let dest = tempfile::tempdir().unwrap();
    let staged = hub.download(&meta, dest.path()).await.unwrap();
    let paths: Vec<&str> = staged.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["test/0000.parquet", "train/0000.parquet"]);
    for s in &staged {
        let bytes = std::fs::read(dest.path().join(&s.path)).unwrap();
        assert_eq!(s.bytes, bytes.len() as u64);
        assert_eq!(s.sha256, sha256_file(&dest.path().join(&s.path)));
    }
    let expected = parquet_bytes("plain_text-train");
    assert_eq!(std::fs::read(dest.path().join("train/0000.parquet")).unwrap(), expected);
}

#[tokio::test]
async fn token_goes_only_to_the_configured_origin() {
    let file_seen: Seen = Arc::default();
    let files_base = spawn(recording(fake_files(), file_seen.clone())).await;
    let hub_seen: Seen = Arc::default();
    let base = spawn(recording(fake_hub(Some(files_base)), hub_seen.clone())).await;
    let hub = fake_client(&base, Some("hf_secret_value"), TIMEOUT);
    let meta = verified(&hub, "acme/reviews").await;
    let dest = tempfile::tempdir().unwrap();
    hub.download(&meta, dest.path()).await.unwrap();

    let hub_seen = hub_seen.lock().unwrap().clone();
    assert!(hub_seen.len() >= 6, "{hub_seen:?}");
    for (path, auth) in &hub_seen {
        assert_eq!(auth.as_deref(), Some("Bearer hf_secret_value"), "{path}");
    }
    let file_seen = file_seen.lock().unwrap().clone();
    assert_eq!(file_seen.len(), 2);
    for (path, auth) in &file_seen {
        assert_eq!(auth, &None, "token leaked to another origin at {path}");
    }
    assert!(!format!("{hub:?}").contains("hf_secret_value"));
}

/// A canned answer that replaces whatever the fake would say at one path. When the request
/// carries an Authorization header, the answer echoes it, to prove errors never pass it on.
#[derive(Clone)]
struct Canned {
    path: &'static str,
    status: StatusCode,
    headers: Vec<(&'static str, &'static str)>,
    body: Value,
}

fn canned(path: &'static str, status: u16, headers: &[(&'static str, &'static str)], body: Value) -> Canned {
    Canned { path, status: StatusCode::from_u16(status).unwrap(), headers: headers.to_vec(), body }
}

fn with_overrides(app: Router, overrides: Vec<Canned>) -> Router {
    let overrides = Arc::new(overrides);
    app.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let overrides = overrides.clone();
        async move {
            let Some(c) = overrides.iter().find(|c| c.path == req.uri().path()) else {
                return next.run(req).await;
            };
            let mut body = c.body.clone();
            if let Some(auth) = req.headers().get("authorization") {
                body["error"] = json!(format!("denied for {}", auth.to_str().unwrap()));
            }
            let mut response: Response = (c.status, axum::Json(body)).into_response();
            for (k, v) in &c.headers {
                response.headers_mut().insert(*k, v.parse().unwrap());
            }
            response
        }
    }))
}

async fn fake_with(overrides: Vec<Canned>) -> String {
    spawn(with_overrides(fake_hub(None), overrides)).await
}

const API: &str = "/api/datasets/acme/reviews";

/// GETs `url` with `query` and parses the JSON body.
async fn get_json<Q: serde::Serialize + ?Sized>(http: &reqwest::Client, url: String, query: &Q) -> Value {
    http.get(url).query(query).send().await.unwrap().json().await.unwrap()
}

/// Verifies `acme/reviews` against the fake Hub with `overrides` applied.
async fn fake_verify(overrides: Vec<Canned>, token: Option<&str>) -> Result<DatasetCheck, PortError> {
    let base = fake_with(overrides).await;
    fake_client(&base, token, TIMEOUT).verify("acme/reviews").await
}

/// The rejection of `acme/reviews` by the fake Hub with `overrides` applied.
async fn fake_rejection(overrides: Vec<Canned>, token: Option<&str>) -> (String, String) {
    let base = fake_with(overrides).await;
    rejection(&fake_client(&base, token, TIMEOUT), "acme/reviews").await
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_transient() {
    let cases = [
        (API, 503, None, "Service Unavailable", "503"),
        (API, 429, Some(("retry-after", "30")), "slow down", "(Retry-After: 30)"),
        ("/is-valid", 429, None, "Too many requests", "429"),
        ("/splits", 500, None, "ResponseNotReady", "500"),
    ];
    for (path, status, header, error, says) in cases {
        let headers: Vec<(&'static str, &'static str)> = header.into_iter().collect();
        let err = fake_verify(vec![canned(path, status, &headers, json!({ "error": error }))], Some("hf_rate_token")).await.unwrap_err();
        assert!(matches!(&err, PortError::Transient(m) if m.contains(says)), "{path} {status}: {err:?}");
        assert!(!err.to_string().contains("hf_rate_token"), "{err}");
    }
}

#[tokio::test]
async fn hub_status_codes_map_to_reasons() {
    let not_found = json!({"error": "Repository not found"});
    let cases = [
        // The real Hub answers 401 + RepoNotFound for a repository that does not exist.
        (API, 401, Some("RepoNotFound"), not_found.clone(), "not_found"),
        (API, 404, Some("RepoNotFound"), not_found, "not_found"),
        (API, 400, None, json!({"error": "bad request"}), "hub_error"),
        ("/info", 404, None, json!({"error": "The config does not exist."}), "viewer_invalid"),
        (API, 200, None, json!({"id": "acme/reviews", "sha": FAKE_SHA, "disabled": true}), "disabled"),
    ];
    for (path, status, error_code, body, expected) in cases {
        let headers: Vec<(&'static str, &'static str)> = error_code.map(|code| ("x-error-code", code)).into_iter().collect();
        let (reason, detail) = fake_rejection(vec![canned(path, status, &headers, body)], None).await;
        assert_eq!(reason, expected, "{path} {status}: {detail}");
    }

    // A gated repository's refusal says a token is needed, never the token sent.
    let (reason, detail) =
        fake_rejection(vec![canned(API, 403, &[("x-error-code", "GatedRepo")], json!({"error": "gated"}))], Some("hf_gate_token")).await;
    assert_eq!(reason, "gated");
    assert!(detail.contains("token"), "{detail}");
    assert!(!detail.contains("hf_gate_token"), "{detail}");
}

#[tokio::test]
async fn gated_dataset_needs_a_token() {
    let gated = json!({"id": "acme/reviews", "sha": FAKE_SHA, "private": false, "gated": "auto", "disabled": false});
    let base = fake_with(vec![canned(API, 200, &[], gated)]).await;
    let (reason, detail) = rejection(&fake_client(&base, None, TIMEOUT), "acme/reviews").await;
    assert_eq!(reason, "gated");
    assert!(detail.contains("auto") && detail.contains("token"), "{detail}");
    // With a token the rest of the checks run.
    verified(&fake_client(&base, Some("hf_ok"), TIMEOUT), "acme/reviews").await;
}

#[tokio::test]
async fn viewer_verdicts() {
    let none_valid = json!({"viewer": false, "preview": false, "search": false, "filter": false, "statistics": false});
    let (reason, _) = fake_rejection(vec![canned("/is-valid", 200, &[], none_valid)], None).await;
    assert_eq!(reason, "viewer_invalid");

    // Only a preview (very large datasets) is still usable.
    let preview = json!({"viewer": false, "preview": true, "search": false, "filter": false, "statistics": false});
    let base = fake_with(vec![canned("/is-valid", 200, &[], preview)]).await;
    verified(&fake_client(&base, None, TIMEOUT), "acme/reviews").await;

    let empty = json!({"parquet_files": [], "pending": [], "failed": [], "partial": false});
    let (reason, _) = fake_rejection(vec![canned("/parquet", 200, &[], empty)], None).await;
    assert_eq!(reason, "no_parquet");

    let pending =
        json!({"parquet_files": [], "pending": [{"kind": "config-parquet", "dataset": "acme/reviews"}], "failed": [], "partial": false});
    let base = fake_with(vec![canned("/parquet", 200, &[], pending)]).await;
    assert!(fake_client(&base, None, TIMEOUT).verify("acme/reviews").await.unwrap_err().is_transient());

    let base = spawn(fake_hub(None)).await;
    let small = HubClient::new(base.clone(), base, None, 4_000, TIMEOUT).unwrap();
    let (reason, detail) = rejection(&small, "acme/reviews").await;
    assert_eq!(reason, "too_large");
    assert!(detail.contains("4200"), "{detail}");
}

#[tokio::test]
async fn timeouts_are_transient() {
    let app = Router::new().route(
        "/api/datasets/acme/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({}))
        }),
    );
    let base = spawn(app).await;
    let hub = fake_client(&base, None, Duration::from_millis(300));
    let started = Instant::now();
    let err = hub.verify("acme/slow").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Nothing listening at all.
    let hub = fake_client("http://127.0.0.1:9", None, Duration::from_secs(2));
    assert!(hub.verify("acme/reviews").await.unwrap_err().is_transient());
}

#[tokio::test]
async fn download_refuses_unsafe_paths_and_maps_statuses() {
    let base = spawn(fake_files()).await;
    let hub = fake_client(&base, None, TIMEOUT);
    let meta = |split: &str, filename: &str, url: String| DatasetMeta {
        id: "acme/reviews".into(),
        revision: FAKE_SHA.into(),
        config: "plain_text".into(),
        splits: vec![split.into()],
        features: vec![],
        num_rows: Default::default(),
        num_bytes_parquet: 10,
        description: String::new(),
        parquet_files: vec![ParquetFile { split: split.into(), url, filename: filename.into(), size: 10 }],
    };
    let dest = tempfile::tempdir().unwrap();
    let url = format!("{base}/datasets/acme/reviews/resolve/refs%2Fconvert%2Fparquet/plain_text/train/0000.parquet");
    for (split, file) in [("train", "../../evil.parquet"), ("..", "0000.parquet"), ("train", ".hidden")] {
        let err = hub.download(&meta(split, file, url.clone()), dest.path()).await.unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)), "{split}/{file}: {err:?}");
    }
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);

    let err = hub.download(&meta("train", "0000.parquet", format!("{base}/missing")), dest.path()).await.unwrap_err();
    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");

    let flaky = spawn(Router::new().route("/file", get(|| async { (StatusCode::BAD_GATEWAY, "upstream failed") }))).await;
    let err = hub.download(&meta("train", "0000.parquet", format!("{flaky}/file")), dest.path()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(!dest.path().join("train/0000.parquet").exists());
}

// ---------------------------------------------------------------------------------------------
// The run's Hub cache and the Hugging Face environment variables

fn cached(base: &str, token: Option<&str>, dir: &Path) -> CachedHub<HubClient> {
    CachedHub::new(fake_client(base, token, TIMEOUT), dir.to_path_buf(), cache::scope(base, base, token.is_some()))
}

async fn verified_by<H: Hub>(hub: &H, id: &str) -> DatasetMeta {
    match hub.verify(id).await {
        Ok(DatasetCheck::Verified(meta)) => meta,
        other => panic!("{id} did not verify: {other:?}"),
    }
}

/// Every file below `dir`, as text where it is text.
fn texts_under(dir: &Path) -> String {
    let mut all = String::new();
    for entry in walk(dir) {
        all.push_str(&String::from_utf8_lossy(&std::fs::read(&entry).unwrap()));
    }
    all
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

/// A resumed run (a second cache over the same directory) gets the same verdicts and files
/// without a single request; a damaged cached file is fetched again; a token is another scope.
#[tokio::test]
async fn hub_cache_survives_a_resume_without_requests() {
    let seen: Seen = Default::default();
    let base = spawn(recording(fake_hub(None), seen.clone())).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state").join(cache::CACHE_DIR);
    let count = || seen.lock().unwrap().len();

    let first = cached(&base, None, &dir);
    let meta = verified_by(&first, "acme/reviews").await;
    let staged = first.download(&meta, &tmp.path().join("raw-1")).await.unwrap();
    let missing = first.verify("acme/missing").await.unwrap();
    assert!(matches!(&missing, DatasetCheck::Rejected { reason, .. } if *reason == Rejection::NotFound), "{missing:?}");
    // Asking again in the same process costs nothing either.
    verified_by(&first, "acme/reviews").await;
    let asked = count();
    assert!(asked >= 8, "the first verification asks the API, the viewer and the files ({asked} requests)");
    drop(first);

    let resumed = cached(&base, None, &dir);
    assert_eq!(verified_by(&resumed, "acme/reviews").await, meta);
    let again = resumed.download(&meta, &tmp.path().join("raw-2")).await.unwrap();
    assert_eq!(again, staged);
    for file in &staged {
        let (downloaded, copied) = (tmp.path().join("raw-1").join(&file.path), tmp.path().join("raw-2").join(&file.path));
        assert_eq!(std::fs::read(&copied).unwrap(), std::fs::read(&downloaded).unwrap());
        // The sandbox user must be able to read a copy as it reads a download.
        let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
        assert_eq!(mode(&copied), mode(&downloaded), "{}", file.path);
    }
    assert!(
        matches!(resumed.verify("acme/missing").await.unwrap(), DatasetCheck::Rejected { reason, .. } if reason == Rejection::NotFound)
    );
    assert_eq!(count(), asked, "the resumed run asked the Hub again: {:?}", &seen.lock().unwrap()[asked..]);

    // A cached file that no longer matches its checksum is downloaded again.
    let cached_file = walk(&dir.join("files")).into_iter().find(|p| p.extension().is_some_and(|e| e == "parquet")).unwrap();
    std::fs::write(&cached_file, b"damaged").unwrap();
    assert_eq!(resumed.download(&meta, &tmp.path().join("raw-3")).await.unwrap(), staged);
    assert_eq!(count(), asked + staged.len(), "a damaged cache entry is fetched again, every file of the revision");

    // With a token the verdicts may differ (gated data): asked again, and the token stays off disk.
    let with_token = cached(&base, Some("hf_cache_secret"), &dir);
    verified_by(&with_token, "acme/reviews").await;
    assert!(count() > asked + staged.len());
    assert!(!texts_under(&dir).contains("hf_cache_secret"));
}

/// Transient failures are not remembered: the next verification asks again.
#[tokio::test]
async fn hub_cache_keeps_no_transient_failure() {
    let base = fake_with(vec![canned(API, 503, &[], json!({"error": "busy"}))]).await;
    let tmp = tempfile::tempdir().unwrap();
    let hub = cached(&base, None, tmp.path());
    assert!(matches!(hub.verify("acme/reviews").await, Err(PortError::Transient(_))));
    assert!(walk(tmp.path()).is_empty(), "{:?}", walk(tmp.path()));
}

/// `HF_ENDPOINT` and `HF_TOKEN`, resolved as `gymforge run` resolves them, reach the client: the
/// endpoint replaces the embedded mirror, the token is sent as a bearer token and opens a gated
/// dataset, and without it the gated dataset is skipped with no Authorization header sent. The
/// token appears in no verdict, error or cache file.
#[tokio::test]
async fn hf_endpoint_and_token_come_from_the_environment() {
    let gated = json!({"id": "acme/reviews", "sha": FAKE_SHA, "private": false, "gated": "manual", "disabled": false});
    let seen: Seen = Default::default();
    let base = spawn(recording(with_overrides(fake_hub(None), vec![canned(API, 200, &[], gated)]), seen.clone())).await;
    // A user file that sets the viewer but not the endpoint: HF_ENDPOINT decides the endpoint.
    let config = gymforge::config::Config::parse(&format!("[hub]\nviewer_endpoint = \"{base}\"\n"), Path::new("test.toml")).unwrap();
    let env = |token: Option<&'static str>| {
        let base = base.clone();
        move |name: &str| match name {
            "HF_ENDPOINT" => Some(base.clone()),
            "HF_TOKEN" => token.map(str::to_string),
            _ => None,
        }
    };
    let tmp = tempfile::tempdir().unwrap();

    let anonymous = HubSettings::resolve(&config.hub, &env(None));
    assert_eq!(anonymous.endpoint.as_deref(), Some(base.as_str()));
    let client = anonymous.client(&config.hub).unwrap().expect("a real Hub, not the mirror");
    let hub = CachedHub::new(client, tmp.path().join("anonymous"), cache::scope(&base, &base, false));
    let (reason, detail) = match hub.verify("acme/reviews").await.unwrap() {
        DatasetCheck::Rejected { reason, detail } => (reason, detail),
        other => panic!("a gated dataset without a token: {other:?}"),
    };
    assert_eq!(reason, Rejection::Gated, "{detail}");
    assert!(seen.lock().unwrap().iter().all(|(_, auth)| auth.is_none()));

    let secret = "hf_env_secret_7f3a";
    let authorised = HubSettings::resolve(&config.hub, &env(Some(secret)));
    assert!(!format!("{authorised:?}").contains(secret));
    let client = authorised.client(&config.hub).unwrap().unwrap();
    assert!(!format!("{client:?}").contains(secret));
    let hub = CachedHub::new(client, tmp.path().join("authorised"), cache::scope(&base, &base, true));
    let meta = verified_by(&hub, "acme/reviews").await;
    hub.download(&meta, &tmp.path().join("raw")).await.unwrap();
    let bearer = format!("Bearer {secret}");
    let sent: Vec<(String, Option<String>)> = seen.lock().unwrap().clone();
    assert!(sent.iter().any(|(path, auth)| path == API && auth.as_deref() == Some(bearer.as_str())), "{sent:?}");
    assert!(!texts_under(tmp.path()).contains(secret));

    // A config file that names the endpoint wins over HF_ENDPOINT.
    let pinned = gymforge::config::Config::parse("[hub]\nendpoint = \"https://huggingface.co\"\n", Path::new("pinned.toml")).unwrap();
    assert_eq!(HubSettings::resolve(&pinned.hub, &env(Some(secret))).endpoint.as_deref(), Some("https://huggingface.co"));
}
