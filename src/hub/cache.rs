//! The run's on-disk cache of Hub answers, under `OUT/.gymforge/hub-cache/`.
//!
//! [`CachedHub`] wraps any [`Hub`] port. A dataset id verified (or rejected for good) once is
//! not asked about again for the rest of the run, resumed processes included, and a verified
//! revision's parquet files are downloaded once and copied from the cache afterwards. So a
//! resumed run, and later units proposing an id an earlier unit already checked, cost no Hub
//! requests, and every task of the run sees the same revision of a dataset.
//!
//! Only verdicts are cached: transient failures (timeouts, 5xx, 429) are not. Verdicts are
//! keyed by the Hub's origins and by whether a token was sent (a dataset gated without a token
//! may verify with one); the token itself never reaches the cache. Files are keyed by dataset
//! id and revision sha, and a revision that is not a commit sha (`main`) is never cached.
//! Every write is a temporary file renamed into place, so concurrent workers and a killed
//! process leave either a complete entry or none.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use gymforge_actors::model::{DatasetMeta, StagedFile};
use gymforge_actors::ports::{DatasetCheck, Hub, PortError, Rejection};
use serde::{Deserialize, Serialize};

/// Name of the cache directory inside the run's state directory.
pub const CACHE_DIR: &str = "hub-cache";

/// A [`Hub`] that remembers verdicts and downloads on disk.
pub struct CachedHub<H> {
    inner: H,
    dir: PathBuf,
    /// What the verdicts depend on besides the id: the Hub's origins and whether a token is sent.
    scope: String,
}

/// One cached verdict.
#[derive(Serialize, Deserialize)]
struct Entry {
    id: String,
    scope: String,
    verdict: Verdict,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Verified(DatasetMeta),
    Rejected { reason: Rejection, detail: String },
}

impl<H: Hub> CachedHub<H> {
    /// `dir` is the cache directory (created when first written); `scope` names what the
    /// verdicts depend on besides the dataset id (see [`scope`]).
    pub fn new(inner: H, dir: PathBuf, scope: String) -> CachedHub<H> {
        CachedHub { inner, dir, scope }
    }

    fn verdict_path(&self, id: &str) -> PathBuf {
        let key = gymforge_actors::digest::sha256_hex(format!("{}\n{id}", self.scope).as_bytes());
        self.dir.join("verdicts").join(format!("{}-{}.json", file_safe(id), &key[..16]))
    }

    fn files_dir(&self, meta: &DatasetMeta) -> PathBuf {
        self.dir.join("files").join(file_safe(&meta.id)).join(&meta.revision)
    }

    fn read_verdict(&self, id: &str) -> Option<DatasetCheck> {
        let text = std::fs::read_to_string(self.verdict_path(id)).ok()?;
        let entry: Entry = serde_json::from_str(&text).ok()?;
        if entry.id != id || entry.scope != self.scope {
            return None;
        }
        Some(match entry.verdict {
            Verdict::Verified(meta) => DatasetCheck::Verified(meta),
            Verdict::Rejected { reason, detail } => DatasetCheck::Rejected { reason, detail },
        })
    }

    fn write_verdict(&self, id: &str, check: &DatasetCheck) -> std::io::Result<()> {
        let verdict = match check {
            DatasetCheck::Verified(meta) => Verdict::Verified(meta.clone()),
            DatasetCheck::Rejected { reason, detail } => Verdict::Rejected { reason: *reason, detail: detail.clone() },
        };
        let entry = Entry { id: id.to_string(), scope: self.scope.clone(), verdict };
        crate::export::write_atomic(&self.verdict_path(id), serde_json::to_string_pretty(&entry).expect("serialisable").as_bytes())
    }

    /// Copies a fully cached revision into `dest`; `None` when any file is missing or damaged.
    fn staged_from_cache(&self, meta: &DatasetMeta, dest: &Path) -> Option<Vec<StagedFile>> {
        let cached = self.files_dir(meta);
        let listed: Vec<StagedFile> = serde_json::from_str(&std::fs::read_to_string(cached.join(MANIFEST)).ok()?).ok()?;
        let wanted: Vec<String> = meta.parquet_files.iter().map(|f| format!("{}/{}", f.split, f.filename)).collect();
        if listed.iter().map(|s| &s.path).ne(wanted.iter()) {
            return None;
        }
        for file in &listed {
            let bytes = std::fs::read(cached.join(&file.path)).ok()?;
            if gymforge_actors::digest::sha256_hex(&bytes) != file.sha256 {
                return None;
            }
            let target = dest.join(&file.path);
            std::fs::create_dir_all(target.parent()?).ok()?;
            crate::export::write_atomic(&target, &bytes).ok()?;
        }
        Some(listed)
    }

    fn keep_download(&self, meta: &DatasetMeta, dest: &Path, staged: &[StagedFile]) -> std::io::Result<()> {
        let cached = self.files_dir(meta);
        for file in staged {
            let target = cached.join(&file.path);
            std::fs::create_dir_all(target.parent().expect("a file path has a parent"))?;
            crate::export::write_atomic(&target, &std::fs::read(dest.join(&file.path))?)?;
        }
        // The manifest last: its presence says every file is there.
        crate::export::write_atomic(&cached.join(MANIFEST), serde_json::to_string_pretty(staged).expect("serialisable").as_bytes())
    }
}

/// The list of a cached revision's files, written after the files.
const MANIFEST: &str = "staged.json";

/// What cached verdicts depend on: the API and viewer origins, and whether a token is sent.
pub fn scope(api_base: &str, viewer_base: &str, authenticated: bool) -> String {
    format!("api={api_base} viewer={viewer_base} authenticated={authenticated}")
}

#[async_trait]
impl<H: Hub> Hub for CachedHub<H> {
    async fn verify(&self, dataset_id: &str) -> Result<DatasetCheck, PortError> {
        let id = dataset_id.trim();
        if let Some(check) = self.read_verdict(id) {
            tracing::debug!(dataset = id, "Hub verdict from the run's cache");
            return Ok(check);
        }
        let check = self.inner.verify(id).await?;
        if let Err(e) = self.write_verdict(id, &check) {
            // A cache that cannot be written costs requests, not correctness.
            tracing::warn!(dataset = id, error = %e, "cannot cache the Hub verdict");
        }
        Ok(check)
    }

    async fn download(&self, meta: &DatasetMeta, dest: &Path) -> Result<Vec<StagedFile>, PortError> {
        let cacheable = is_commit_sha(&meta.revision);
        if cacheable && let Some(staged) = self.staged_from_cache(meta, dest) {
            tracing::debug!(dataset = %meta.id, revision = %meta.revision, "parquet files from the run's cache");
            return Ok(staged);
        }
        let staged = self.inner.download(meta, dest).await?;
        if cacheable && let Err(e) = self.keep_download(meta, dest, &staged) {
            tracing::warn!(dataset = %meta.id, error = %e, "cannot cache the downloaded files");
        }
        Ok(staged)
    }
}

/// A Hub commit sha: 40 hex digits (anything else, such as `main`, can move).
fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `owner/name` -> `owner__name`, keeping only characters safe in a file name.
fn file_safe(id: &str) -> String {
    id.replace('/', "__").chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_safe_and_revisions_checked() {
        assert_eq!(file_safe("sklearn/iris"), "sklearn__iris");
        assert_eq!(file_safe("a/../b"), "a__..__b");
        assert!(is_commit_sha(&"ab12".repeat(10)));
        assert!(!is_commit_sha("main") && !is_commit_sha(&"zz".repeat(20)));
    }
}
