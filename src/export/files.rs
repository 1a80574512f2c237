//! Files written atomically (a temporary file beside the target, synced and renamed over it),
//! directories mirrored from untrusted sources, and the port errors that I/O failures become.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gymforge_actors::model::DropReason;
use gymforge_actors::ports::PortError;
use serde::Serialize;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written next to its final path; renamed into place by [`AtomicFile::commit`],
/// removed if dropped uncommitted.
struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    fn create(target: &Path) -> io::Result<AtomicFile> {
        let dir = parent_dir(target);
        fs::create_dir_all(dir)?;
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let temp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&temp)?;
        Ok(AtomicFile { target: target.to_path_buf(), temp, writer: Some(BufWriter::new(file)) })
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer present until commit")
    }

    fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temp, &self.target)?;
        sync_dir(parent_dir(&self.target));
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename durable. Best effort: some filesystems do not support syncing directories.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// synced and renamed over `path`. Creates missing parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.writer().write_all(bytes)?;
    file.commit()
}

/// Copies a regular file atomically.
pub(super) fn copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = File::open(from)?;
    let mut file = AtomicFile::create(to)?;
    io::copy(&mut src, file.writer())?;
    file.commit()
}

/// Writes one JSON value per line, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), PortError> {
    let context = format!("writing {}", path.display());
    let mut file = AtomicFile::create(path).map_err(|e| io_err(&context, e))?;
    for line in lines {
        serde_json::to_writer(file.writer(), line).map_err(|e| permanent(format!("serialising a line of {}: {e}", path.display())))?;
        file.writer().write_all(b"\n").map_err(|e| io_err(&context, e))?;
    }
    file.commit().map_err(|e| io_err(&context, e))
}

pub(super) fn io_err(context: impl std::fmt::Display, err: io::Error) -> PortError {
    use io::ErrorKind::*;
    let msg = format!("output: {context}: {err}");
    match err.kind() {
        // Every later task and trajectory would fail to be written the same way.
        PermissionDenied | ReadOnlyFilesystem => PortError::Refused { reason: DropReason::OutputUnwritable, detail: msg },
        NotFound | InvalidInput | InvalidData | AlreadyExists | IsADirectory | NotADirectory => PortError::Permanent(msg),
        _ => PortError::Transient(msg),
    }
}

pub(super) fn permanent(msg: impl std::fmt::Display) -> PortError {
    PortError::Permanent(format!("output: {msg}"))
}

/// Copies the regular files of `from` (recursively) into `to`, then removes files under `to`
/// that `from` does not have. Symbolic links and other special files are skipped: the source
/// was written by untrusted code.
pub(super) fn mirror_dir(from: &Path, to: &Path) -> Result<(), PortError> {
    let mut kept = HashSet::new();
    copy_tree(from, to, Path::new(""), &mut kept)?;
    prune_tree(to, Path::new(""), &kept)
}

fn copy_tree(from: &Path, to: &Path, rel: &Path, kept: &mut HashSet<PathBuf>) -> Result<(), PortError> {
    let dir = from.join(rel);
    let entries = fs::read_dir(&dir).map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
    let mut names: Vec<_> =
        entries.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>().map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
    names.sort();
    for name in names {
        let rel_path = rel.join(&name);
        let src = from.join(&rel_path);
        let meta = fs::symlink_metadata(&src).map_err(|e| io_err(format!("reading {}", src.display()), e))?;
        if meta.is_dir() {
            copy_tree(from, to, &rel_path, kept)?;
        } else if meta.is_file() {
            let dst = to.join(&rel_path);
            copy_atomic(&src, &dst).map_err(|e| io_err(format!("copying {} to {}", src.display(), dst.display()), e))?;
            kept.insert(rel_path);
        } else {
            tracing::warn!(path = %src.display(), "skipping a file that is not a regular file");
        }
    }
    Ok(())
}

fn prune_tree(to: &Path, rel: &Path, kept: &HashSet<PathBuf>) -> Result<(), PortError> {
    let dir = to.join(rel);
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let rel_path = rel.join(entry.file_name());
        let path = to.join(&rel_path);
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            prune_tree(to, &rel_path, kept)?;
            let _ = fs::remove_dir(&path); // only succeeds when empty
        } else if !kept.contains(&rel_path) {
            fs::remove_file(&path).map_err(|e| io_err(format!("removing stale {}", path.display()), e))?;
        }
    }
    Ok(())
}

pub(super) fn regular_file(path: &Path) -> Result<(), PortError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_err(format!("reading {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(permanent(format!("{} is not a regular file", path.display())));
    }
    Ok(())
}

pub(super) fn to_pretty_json<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, PortError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| permanent(format!("serialising {what}: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> =
            fs::read_dir(dir.path().join("a/b")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["c.txt"]);
        // A failed write leaves the old content and no temporary file.
        let mut file = AtomicFile::create(&path).unwrap();
        file.writer().write_all(b"partial").unwrap();
        drop(file);
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path().join("a/b")).unwrap().count(), 1);
    }
}
