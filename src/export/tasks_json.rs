//! `mlgym/tasks.json`: per accepted task its metric spec, baseline scores, topic and dataset
//! provenance, each parquet file named by its place in the dataset repository.

use gymforge_actors::model::AcceptedTask;
use serde_json::{Value, json};

use super::mlgym::task_config;

/// Where a parquet file lives in its dataset repository, read from the URL the Hub or its
/// viewer gave for it: `(revision, path)`. Two shapes are known:
/// `{endpoint}/datasets/{id}/resolve/{revision}/{path}` (revision and path percent-encoded, as
/// the viewer lists the files of the `refs/convert/parquet` branch), and the viewer's
/// `{endpoint}/api/datasets/{id}/parquet/{config}/{split}/{n}.parquet` (a file of that branch).
pub fn repo_file(url: &str, id: &str) -> Option<(String, String)> {
    let url = reqwest::Url::parse(url).ok()?;
    let segments: Vec<String> = url.path_segments()?.map(percent_decode).collect();
    let id: Vec<&str> = id.split('/').collect();
    let after_id = |prefix: &[&str]| -> Option<&[String]> {
        let rest = segments.strip_prefix(prefix.iter().map(|s| s.to_string()).collect::<Vec<_>>().as_slice())?;
        (rest.len() > id.len() && rest.iter().zip(&id).all(|(a, b)| a == b)).then(|| &rest[id.len()..])
    };
    let (revision, path) = if let Some(rest) = after_id(&["datasets"]) {
        match rest {
            [resolve, revision, path @ ..] if resolve == "resolve" && !path.is_empty() => (revision.clone(), path.join("/")),
            _ => return None,
        }
    } else if let Some(rest) = after_id(&["api", "datasets"]) {
        match rest {
            [parquet, path @ ..] if parquet == "parquet" && !path.is_empty() => ("refs/convert/parquet".to_string(), path.join("/")),
            _ => return None,
        }
    } else {
        return None;
    };
    (!revision.is_empty() && path.split('/').all(|p| !p.is_empty() && p != "." && p != "..")).then_some((revision, path))
}

/// `%2F` -> `/` in one URL path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `url` points at this machine (`localhost`, `127.0.0.0/8`, `::1`): the embedded
/// mirror's ephemeral port, meaningless once the run has ended.
fn is_loopback_url(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase)) else {
        return false;
    };
    match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

/// A parquet file's provenance in tasks.json: its split and file name, the revision and path
/// of the file in the dataset repository, and its download URL unless that URL was a loopback
/// address (the embedded mirror's, which no longer answers once the run is over).
fn parquet_provenance(f: &gymforge_actors::model::ParquetFile, id: &str) -> Value {
    let mut entry = json!({"split": f.split, "filename": f.filename, "size": f.size});
    if let Some((revision, path)) = repo_file(&f.url, id) {
        entry["revision"] = json!(revision);
        entry["path"] = json!(path);
    }
    if !is_loopback_url(&f.url) {
        entry["url"] = json!(f.url);
    }
    entry
}

/// `mlgym/tasks.json`: one entry per accepted task.
pub fn tasks_index(tasks: &[AcceptedTask]) -> Value {
    Value::Array(
        tasks
            .iter()
            .map(|t| {
                let meta = &t.dataset;
                json!({
                    "task_id": t.task_id,
                    "unit": t.unit,
                    "name": task_config(t).name,
                    "config": format!("configs/tasks/{}.yaml", t.task_id),
                    "priority_metric": t.bundle.priority_metric,
                    "direction": t.bundle.direction,
                    "metrics": t.bundle.metrics,
                    "baseline_scores": t.baseline_scores,
                    "training_timeout": t.bundle.training_timeout,
                    "provenance": {
                        "hub_id": meta.id,
                        "revision": meta.revision,
                        "config": meta.config,
                        "splits": meta.splits,
                        "num_rows": meta.num_rows,
                        "parquet_files": meta.parquet_files.iter().map(|f| parquet_provenance(f, &meta.id)).collect::<Vec<_>>(),
                    },
                    "topic": {
                        "title": t.topic.title,
                        "sample": t.topic.sample,
                    },
                    "debug_rounds": t.rounds,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gymforge_actors::model::ParquetFile;

    #[test]
    fn parquet_files_are_named_by_their_place_in_the_dataset_repository() {
        let hf = "https://huggingface.co/datasets/stanfordnlp/imdb/resolve/refs%2Fconvert%2Fparquet/plain_text/train/0000.parquet";
        assert_eq!(repo_file(hf, "stanfordnlp/imdb"), Some(("refs/convert/parquet".into(), "plain_text/train/0000.parquet".into())));
        let at_sha =
            "https://huggingface.co/datasets/imdb/resolve/e6281661ce1c48d982bc483cf8a173c1bbeb5d31/data/train-00000-of-00001.parquet";
        assert_eq!(
            repo_file(at_sha, "imdb"),
            Some(("e6281661ce1c48d982bc483cf8a173c1bbeb5d31".into(), "data/train-00000-of-00001.parquet".into()))
        );
        let api = "https://huggingface.co/api/datasets/stanfordnlp/imdb/parquet/plain_text/test/0.parquet";
        assert_eq!(repo_file(api, "stanfordnlp/imdb"), Some(("refs/convert/parquet".into(), "plain_text/test/0.parquet".into())));
        let mirror = "http://127.0.0.1:39211/datasets/sklearn/iris/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet";
        assert_eq!(repo_file(mirror, "sklearn/iris"), Some(("refs/convert/parquet".into(), "default/train/0000.parquet".into())));
        // Another dataset's file, or a URL of another shape, names no place in this repository.
        assert_eq!(repo_file(hf, "stanfordnlp/sst2"), None);
        assert_eq!(repo_file("https://cdn.example.org/files/0000.parquet", "stanfordnlp/imdb"), None);
        assert_eq!(repo_file("https://huggingface.co/datasets/stanfordnlp/imdb/resolve/main/../../x", "stanfordnlp/imdb"), None);

        let file = |url: &str| ParquetFile { split: "train".into(), url: url.into(), filename: "0000.parquet".into(), size: 7 };
        let real = parquet_provenance(&file(hf), "stanfordnlp/imdb");
        assert_eq!(real["url"], hf);
        assert_eq!(real["path"], "plain_text/train/0000.parquet");
        for loopback in [
            mirror,
            "http://localhost:8080/datasets/sklearn/iris/resolve/main/x.parquet",
            "http://[::1]:9/datasets/sklearn/iris/resolve/main/x.parquet",
        ] {
            let v = parquet_provenance(&file(loopback), "sklearn/iris");
            assert!(v.get("url").is_none(), "{v}");
            assert!(v["path"].is_string(), "{v}");
        }
        let unknown = parquet_provenance(&file("https://cdn.example.org/files/0000.parquet"), "sklearn/iris");
        assert_eq!(
            unknown,
            json!({"split": "train", "filename": "0000.parquet", "size": 7, "url": "https://cdn.example.org/files/0000.parquet"})
        );
    }
}
