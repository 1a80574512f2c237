//! Building the embedded Hub mirror's data on disk and loading it back into memory.
//!
//! A build runs the embedded `build_mirror.py` once per cache directory: it is keyed by the
//! script's digest (a marker file in the built directory), guarded by a lock file, written to a
//! temporary directory (stale ones from dead processes are removed) and renamed into place.
//! Loading reads the catalog and each dataset's manifest, parquet file and first rows.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{BUILD_SCRIPT, Served};

/// Name of the built mirror directory inside the cache directory.
const MIRROR_DIR: &str = "hub-mirror";
/// File inside the built directory holding the digest of the script that built it.
const MARKER: &str = ".gymforge-mirror-built";
const LOCK_FILE: &str = "hub-mirror.lock";
const BUILD_PREFIX: &str = ".hub-mirror-build-";
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Exit code of `build_mirror.py` when a Python module is missing.
const EXIT_MISSING_MODULE: i32 = 3;

/// Builds the mirror's data into `cache_dir` unless an up-to-date build is already there (see
/// [`HubMirror::ensure_built`](super::HubMirror::ensure_built)), and returns the directory.
pub(super) async fn ensure_built(cache_dir: &Path, python: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<PathBuf> {
    let digest = script_digest();
    let root = cache_dir.join(MIRROR_DIR);
    if is_current(&root, &digest) {
        return Ok(root);
    }
    tokio::fs::create_dir_all(cache_dir).await.with_context(|| format!("cannot create cache directory {}", cache_dir.display()))?;
    let _lock = lock_exclusive(cache_dir.join(LOCK_FILE)).await?;
    if is_current(&root, &digest) {
        return Ok(root);
    }
    remove_stale_builds(cache_dir);

    let work = cache_dir.join(format!("{BUILD_PREFIX}{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create build directory {}", work.display()))?;
    let script = work.join("build_mirror.py");
    std::fs::write(&script, BUILD_SCRIPT).with_context(|| format!("cannot write {}", script.display()))?;
    let out = work.join("out");

    progress("building the embedded Hub mirror from scikit-learn's bundled datasets");
    run_build(python, &script, &out, &work, progress).await?;
    if !out.join("catalog.json").is_file() {
        bail!("building the Hub mirror: the build script finished without writing catalog.json");
    }
    std::fs::write(out.join(MARKER), &digest).context("cannot write the mirror's marker")?;
    if root.exists() {
        std::fs::rename(&root, work.join("previous"))
            .with_context(|| format!("cannot move the outdated mirror {} aside", root.display()))?;
    }
    std::fs::rename(&out, &root).with_context(|| format!("cannot move the built mirror to {}", root.display()))?;
    progress(&format!("Hub mirror ready in {}", root.display()));
    Ok(root)
}

fn script_digest() -> String {
    gymforge_actors::digest::sha256_hex(BUILD_SCRIPT.as_bytes())
}

fn is_current(root: &Path, digest: &str) -> bool {
    std::fs::read_to_string(root.join(MARKER)).is_ok_and(|m| m.trim() == digest) && root.join("catalog.json").is_file()
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
        if entry.file_name().to_string_lossy().starts_with(BUILD_PREFIX) {
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

async fn run_build(python: &Path, script: &Path, out: &Path, work: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
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
        .with_context(|| format!("cannot run Python at {} to build the Hub mirror", python.display()))?;
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
        Err(_) => bail!("building the Hub mirror took longer than {} s and was stopped", BUILD_TIMEOUT.as_secs()),
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
pub(super) struct Manifest {
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) name: String,
    pub(super) title: String,
    pub(super) description: String,
    pub(super) source: String,
    pub(super) mirror_note: String,
    pub(super) license: String,
    pub(super) task_category: String,
    pub(super) features: Vec<ManifestFeature>,
    pub(super) config: String,
    pub(super) split: String,
    pub(super) num_rows: u64,
    pub(super) num_columns: u64,
    pub(super) num_bytes_memory: u64,
    pub(super) size_category: String,
    pub(super) parquet: ManifestParquet,
    pub(super) sha256: String,
    pub(super) revision: String,
}

#[derive(Deserialize, Clone, Debug)]
pub(super) struct ManifestFeature {
    pub(super) name: String,
    pub(super) dtype: String,
    #[serde(default)]
    pub(super) class_names: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Debug)]
pub(super) struct ManifestParquet {
    pub(super) path: String,
    pub(super) filename: String,
    pub(super) bytes: u64,
}

pub(super) fn load_datasets(root: &Path) -> anyhow::Result<(BTreeMap<String, Served>, String)> {
    let read = |p: PathBuf| -> anyhow::Result<Vec<u8>> { std::fs::read(&p).with_context(|| format!("cannot read {}", p.display())) };
    let catalog: Catalog = serde_json::from_slice(&read(root.join("catalog.json"))?)
        .with_context(|| format!("{}/catalog.json is not a valid catalog", root.display()))?;
    let mut datasets = BTreeMap::new();
    for entry in catalog.datasets {
        let dir = root.join(&entry.path);
        let m: Manifest = serde_json::from_slice(&read(dir.join("manifest.json"))?)
            .with_context(|| format!("{}/manifest.json is not valid", dir.display()))?;
        if m.id != entry.id {
            bail!("{}: manifest id {} does not match the catalog's {}", dir.display(), m.id, entry.id);
        }
        let parquet = read(dir.join(&m.parquet.path))?;
        if gymforge_actors::digest::sha256_hex(&parquet) != m.sha256 {
            bail!("{}: the parquet file does not match its manifest's sha256; delete {} to rebuild", dir.display(), root.display());
        }
        let first_rows = read(dir.join("first_rows.json"))?;
        datasets.insert(m.id.clone(), Served { m, first_rows: Bytes::from(first_rows), parquet: Bytes::from(parquet) });
    }
    Ok((datasets, catalog.built_at))
}
