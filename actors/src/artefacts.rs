//! A unit's files that a later stage may need on another node: the staged raw data and the
//! accepted task's prepared directory. With a shared store the stage that makes them packs
//! them into the store ([`share`]) before it commits, and a stage on any node unpacks them into
//! its own work directory ([`fetch`]) before it reads them. With a store of one process both
//! are no-ops: the files are already where the next stage looks.
//!
//! A pack is a deterministic byte string (entries sorted by path; only directories and regular
//! files, with their executable bit), so the same files always have the same digest and a
//! directory already fetched is not fetched again. A symbolic link is refused rather than
//! followed: the prepared files are written by generated code.

use std::path::{Component, Path, PathBuf};

use crate::model::DropReason;
use crate::pipeline::Pipeline;
use crate::ports::{ArtefactKind, PortError, Store};

const MAGIC: &[u8] = b"gymforge-pack-1\n";
const DIR: u8 = 1;
const FILE: u8 = 2;
const EXECUTABLE: u8 = 3;

/// The directory of the unit's artefact of `kind` in this node's work directory.
pub fn local_dir(p: &Pipeline, unit: &str, kind: ArtefactKind) -> PathBuf {
    match kind {
        ArtefactKind::RawData => p.paths().raw_dir(unit),
        ArtefactKind::PreparedTask => p.paths().final_dir(unit),
    }
}

/// Packs the unit's directory of `kind` into a shared store. Called before the stage commits.
pub async fn share(p: &Pipeline, unit: &str, kind: ArtefactKind) -> Result<(), PortError> {
    if !p.store.is_shared() {
        return Ok(());
    }
    let dir = local_dir(p, unit, kind);
    let limit = p.settings.artefact_limit_bytes;
    let packed = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || pack(&dir, limit))
            .await
            .map_err(|e| PortError::Transient(format!("packing stopped: {e}")))??
    };
    p.store.put_artefact(unit, kind, &packed).await?;
    write_marker(&dir, &crate::digest::sha256_hex(&packed))
}

/// Makes the unit's directory of `kind` present and current in this node's work directory,
/// unpacking it from a shared store unless the copy here already has the stored digest.
pub async fn fetch(p: &Pipeline, unit: &str, kind: ArtefactKind) -> Result<PathBuf, PortError> {
    let dir = local_dir(p, unit, kind);
    fetch_into(p.store.as_ref(), unit, kind, &dir).await?;
    Ok(dir)
}

/// [`fetch`] into a given directory (an export from the store on any machine).
pub async fn fetch_into(store: &dyn Store, unit: &str, kind: ArtefactKind, dir: &Path) -> Result<(), PortError> {
    if !store.is_shared() {
        return Ok(());
    }
    // Two rollouts of one task on this node fetch the same directory: one unpacks, the other
    // then finds it current.
    let lock = {
        static LOCKS: std::sync::Mutex<Vec<(PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>)>> = std::sync::Mutex::new(Vec::new());
        let mut locks = LOCKS.lock().expect("not poisoned");
        locks.retain(|(_, l)| std::sync::Arc::strong_count(l) > 1);
        match locks.iter().find(|(d, _)| d == dir) {
            Some((_, l)) => l.clone(),
            None => {
                let l = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                locks.push((dir.to_path_buf(), l.clone()));
                l
            }
        }
    };
    let _held = lock.lock().await;
    let Some(digest) = store.artefact_digest(unit, kind).await? else {
        return Err(PortError::Permanent(format!("the store keeps no {} of {unit}", kind.as_str())));
    };
    if dir.is_dir() && std::fs::read_to_string(marker(dir)).is_ok_and(|m| m.trim() == digest) {
        return Ok(());
    }
    let bytes =
        store.artefact(unit, kind).await?.ok_or_else(|| PortError::Permanent(format!("the {} of {unit} is gone", kind.as_str())))?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        unpack(&bytes, &dir)?;
        write_marker(&dir, &digest)
    })
    .await
    .map_err(|e| PortError::Transient(format!("unpacking stopped: {e}")))?
}

/// `DIR.sha256` beside the directory: the digest of the pack it holds.
fn marker(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    dir.with_file_name(name)
}

fn write_marker(dir: &Path, digest: &str) -> Result<(), PortError> {
    std::fs::write(marker(dir), digest).map_err(|e| io(&format!("cannot write {}", marker(dir).display()), e))
}

fn io(what: &str, e: std::io::Error) -> PortError {
    PortError::Transient(format!("{what}: {e}"))
}

/// Packs `dir`'s directories and regular files, refusing one over `limit` bytes in all.
pub fn pack(dir: &Path, limit: u64) -> Result<Vec<u8>, PortError> {
    let mut out = MAGIC.to_vec();
    let mut entries = Vec::new();
    walk(dir, Path::new(""), &mut entries)?;
    for (relative, kind) in entries {
        let name = relative.to_str().ok_or_else(|| PortError::Permanent(format!("{} is not UTF-8", relative.display())))?;
        out.push(kind);
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        if kind != DIR {
            let path = dir.join(&relative);
            let data = std::fs::read(&path).map_err(|e| io(&format!("cannot read {}", path.display()), e))?;
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(&data);
        }
        if out.len() as u64 > limit {
            return Err(PortError::Refused {
                reason: DropReason::ArtefactTooLarge,
                detail: format!("{} holds more than the limit of {} MB (store.max_artefact_mb)", dir.display(), limit / 1_000_000),
            });
        }
    }
    Ok(out)
}

fn walk(root: &Path, relative: &Path, entries: &mut Vec<(PathBuf, u8)>) -> Result<(), PortError> {
    let dir = root.join(relative);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| io(&format!("cannot list {}", dir.display()), e))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| io(&format!("cannot list {}", dir.display()), e))?;
    names.sort();
    for name in names {
        let path = relative.join(&name);
        let meta = std::fs::symlink_metadata(root.join(&path)).map_err(|e| io(&format!("cannot stat {}", path.display()), e))?;
        if meta.is_dir() {
            entries.push((path.clone(), DIR));
            walk(root, &path, entries)?;
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            entries.push((path, if meta.permissions().mode() & 0o100 != 0 { EXECUTABLE } else { FILE }));
        } else {
            return Err(PortError::Permanent(format!(
                "{} is neither a directory nor a regular file; a shared task holds only those",
                root.join(&path).display()
            )));
        }
    }
    Ok(())
}

/// Unpacks a pack into `dest`, replacing what was there: into a sibling directory first, then
/// renamed over it, so `dest` is never half-written.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), PortError> {
    let corrupt = |what: &str| PortError::Permanent(format!("the pack for {} is corrupt: {what}", dest.display()));
    let body = bytes.strip_prefix(MAGIC).ok_or_else(|| corrupt("it does not start as a pack does"))?;
    let parent = dest.parent().ok_or_else(|| corrupt("no parent directory"))?;
    static UNPACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = UNPACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = parent.join(format!(".unpacking-{}-{n}", std::process::id()));
    crate::paths::fresh_dir(&staging).map_err(|e| io(&format!("cannot create {}", staging.display()), e))?;
    let written = unpack_entries(body, &staging, &corrupt);
    if let Err(e) = written {
        std::fs::remove_dir_all(&staging).ok();
        return Err(e);
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| io(&format!("cannot replace {}", dest.display()), e))?;
    }
    std::fs::rename(&staging, dest).map_err(|e| io(&format!("cannot move the unpacked files to {}", dest.display()), e))
}

fn unpack_entries(body: &[u8], staging: &Path, corrupt: &dyn Fn(&str) -> PortError) -> Result<(), PortError> {
    let mut rest = body;
    let mut take = |n: usize| -> Result<&[u8], PortError> {
        if rest.len() < n {
            return Err(corrupt("it ends early"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    while let Ok(kind) = take(1) {
        let kind = kind[0];
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let name = std::str::from_utf8(take(len)?).map_err(|_| corrupt("a name is not UTF-8"))?;
        let relative = Path::new(name);
        if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(corrupt(&format!("the entry {name:?} leaves its directory")));
        }
        let path = staging.join(relative);
        match kind {
            DIR => std::fs::create_dir_all(&path).map_err(|e| io(&format!("cannot create {}", path.display()), e))?,
            FILE | EXECUTABLE => {
                let size = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
                let data = take(usize::try_from(size).map_err(|_| corrupt("a size is too large"))?)?;
                std::fs::write(&path, data).map_err(|e| io(&format!("cannot write {}", path.display()), e))?;
                if kind == EXECUTABLE {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                        .map_err(|e| io(&format!("cannot set the mode of {}", path.display()), e))?;
                }
            }
            other => return Err(corrupt(&format!("unknown entry kind {other}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("starter/sub")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("starter/baseline.py"), "print(1)\n").unwrap();
        std::fs::write(root.join("starter/sub/data.csv"), "a,b\n1,2\n").unwrap();
        std::fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_pack_is_deterministic_and_unpacks_to_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        tree(&a);
        let packed = pack(&a, u64::MAX).unwrap();
        assert_eq!(pack(&a, u64::MAX).unwrap(), packed);
        std::fs::create_dir_all(b.join("stale")).unwrap();
        unpack(&packed, &b).unwrap();
        assert!(!b.join("stale").exists(), "unpacking replaces what was there");
        assert_eq!(pack(&b, u64::MAX).unwrap(), packed);
        assert_eq!(std::fs::read_to_string(b.join("starter/sub/data.csv")).unwrap(), "a,b\n1,2\n");
        assert!(b.join("empty").is_dir());
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(std::fs::metadata(b.join("run.sh")).unwrap().permissions().mode() & 0o100, 0);
    }

    #[test]
    fn packs_over_the_limit_links_and_escaping_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        tree(&a);
        let size = pack(&a, u64::MAX).unwrap().len() as u64;
        match pack(&a, size - 1) {
            Err(PortError::Refused { reason, .. }) => assert_eq!(reason, DropReason::ArtefactTooLarge),
            other => panic!("expected a refusal, got {other:?}"),
        }
        std::os::unix::fs::symlink("/etc/passwd", a.join("starter/link")).unwrap();
        let err = pack(&a, u64::MAX).unwrap_err().to_string();
        assert!(err.contains("neither a directory nor a regular file"), "{err}");

        let mut evil = MAGIC.to_vec();
        evil.push(FILE);
        evil.extend_from_slice(&5u32.to_le_bytes());
        evil.extend_from_slice(b"../x1");
        evil.extend_from_slice(&0u64.to_le_bytes());
        let err = unpack(&evil, &dir.path().join("b")).unwrap_err().to_string();
        assert!(err.contains("leaves its directory"), "{err}");
        assert!(!dir.path().join("x1").exists());
        let err = unpack(&evil[..evil.len() - 3], &dir.path().join("b")).unwrap_err().to_string();
        assert!(err.contains("ends early") || err.contains("leaves"), "{err}");
    }
}
