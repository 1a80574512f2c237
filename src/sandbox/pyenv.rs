//! The Python environment used inside the sandbox: a venv built from the base interpreter with
//! the pinned requirements installed, provisioned once and shared by every job.
//!
//! Provisioning is guarded by an exclusive `flock` on a sibling `<dir>.lock` file, so concurrent
//! processes build the environment only once. A marker file, written last, records a hash of the
//! requirements and of the base interpreter's version: an interrupted or outdated environment is
//! rebuilt from scratch.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use anyhow::{anyhow, bail};
use sha2::{Digest, Sha256};

use crate::config::SandboxConfig;

/// Name of the marker file inside the environment directory.
const MARKER: &str = ".gymforge-env";
/// Lines of pip output quoted in an error.
const TAIL_LINES: usize = 20;

/// A provisioned Python environment (a venv directory).
#[derive(Clone, Debug)]
pub struct PythonEnv {
    pub dir: PathBuf,
}

impl PythonEnv {
    /// The environment's interpreter.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin/python")
    }

    /// Returns the environment at `cfg.python_env_dir()`, creating it first when it is missing or
    /// was built from other requirements or another base interpreter. Blocks (minutes on first
    /// use); every line pip prints is passed to `progress`.
    pub fn ensure(cfg: &SandboxConfig, requirements: &str, progress: &dyn Fn(&str)) -> anyhow::Result<PythonEnv> {
        let dir = absolute(&cfg.python_env_dir())?;
        let base = PathBuf::from(&cfg.base_python);
        let version = base_version(&base)?;
        let fingerprint = fingerprint(requirements, &version);
        let env = PythonEnv { dir: dir.clone() };

        let parent = dir.parent().ok_or_else(|| anyhow!("the Python environment directory {} has no parent", dir.display()))?;
        fs::create_dir_all(parent).map_err(|e| anyhow!("cannot create {} for the sandbox's Python environment: {e}", parent.display()))?;

        let _lock = EnvLock::acquire(&lock_path(&dir), progress)?;
        if env.is_current(&fingerprint) {
            return Ok(env);
        }

        progress(&format!("provisioning the sandbox's Python environment at {} (this takes a few minutes once)", dir.display()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| anyhow!("cannot remove the outdated Python environment {}: {e}", dir.display()))?;
        }
        create_venv(&base, &dir, progress)?;
        pip_install(&env, requirements, progress)?;
        make_world_readable(&dir)?;
        write_marker(&dir, &fingerprint)?;
        progress("the sandbox's Python environment is ready");
        Ok(env)
    }

    /// Whether the marker matches and the interpreter is present.
    fn is_current(&self, fingerprint: &str) -> bool {
        let marker = fs::read_to_string(self.dir.join(MARKER)).unwrap_or_default();
        marker.trim() == fingerprint && self.python().exists()
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| anyhow!("invalid Python environment directory {}: {e}", path.display()))
}

fn lock_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(OsString::from).unwrap_or_else(|| OsString::from("pyenv"));
    name.push(".lock");
    dir.with_file_name(name)
}

/// The base interpreter's full version string (`sys.version`).
fn base_version(base: &Path) -> anyhow::Result<String> {
    let missing = || anyhow!("Python 3 was not found at {}: install it with `apt-get install -y python3 python3-venv`", base.display());
    if !base.exists() {
        return Err(missing());
    }
    let out =
        python_command(base).args(["-c", "import sys; print(sys.version)"]).stdin(Stdio::null()).output().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(),
            _ => anyhow!("cannot run the base Python {}: {e}", base.display()),
        })?;
    if !out.status.success() {
        bail!("the base Python {} does not run ({}): {}", base.display(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !version.starts_with('3') {
        bail!(
            "{} is Python {version}, not Python 3: set `sandbox.base_python` to a Python 3 \
             interpreter (`apt-get install -y python3 python3-venv`)",
            base.display()
        );
    }
    Ok(version)
}

fn fingerprint(requirements: &str, version: &str) -> String {
    let mut h = Sha256::new();
    h.update(requirements.as_bytes());
    h.update(b"\0");
    h.update(version.as_bytes());
    format!("sha256:{}", gymforge_actors::digest::hex(&h.finalize()))
}

/// A command running a Python interpreter, isolated from the caller's Python settings.
fn python_command(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    for var in [
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONNOUSERSITE",
        "PYTHONDONTWRITEBYTECODE",
        "VIRTUAL_ENV",
        "PIP_TARGET",
        "PIP_PREFIX",
        "PIP_USER",
        "PIP_REQUIRE_VIRTUALENV",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// An exclusive lock on the lock file, released when the file is closed (dropped).
struct EnvLock {
    _file: File,
}

impl EnvLock {
    fn acquire(path: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<EnvLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            // A shared environment someone else provisioned: a read-only descriptor locks too.
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => File::open(path),
                _ => Err(e),
            })
            .map_err(|e| anyhow!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                progress("waiting for another process that is provisioning the Python environment");
                file.lock().map_err(|e| anyhow!("cannot lock {}: {e}", path.display()))?;
            }
            Err(fs::TryLockError::Error(e)) => bail!("cannot lock {}: {e}", path.display()),
        }
        Ok(EnvLock { _file: file })
    }
}

fn create_venv(base: &Path, dir: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
    progress(&format!("creating a venv at {} from {}", dir.display(), base.display()));
    let out = python_command(base)
        .args(["-m", "venv"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run {} -m venv: {e}", base.display()))?;
    if out.status.success() && dir.join("bin/python").exists() && dir.join("bin/pip").exists() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A half-made venv must not be mistaken for a usable one.
    let _ = fs::remove_dir_all(dir);
    if text.contains("ensurepip") || text.contains("No module named venv") {
        bail!(
            "{} cannot create virtual environments (the venv/ensurepip module is missing): \
             install it with `apt-get install -y python3-venv`",
            base.display()
        );
    }
    bail!("`{} -m venv {}` failed ({}): {}", base.display(), dir.display(), out.status, last_lines(&text, TAIL_LINES));
}

fn pip_install(env: &PythonEnv, requirements: &str, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
    let req = TempRequirements::write(requirements)?;
    progress("installing the Python requirements with pip");
    let mut child = python_command(&env.python())
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--compile", "-r"])
        .arg(&req.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("cannot run pip of {}: {e}", env.python().display()))?;

    // Both streams are read on their own threads; `progress` is called on this one.
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in
        [child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)]
            .into_iter()
            .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    drop(tx);

    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES + 1);
    for line in rx {
        if line.is_empty() {
            continue;
        }
        progress(&line);
        tail.push_back(line);
        if tail.len() > TAIL_LINES {
            tail.pop_front();
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().map_err(|e| anyhow!("cannot wait for pip: {e}"))?;
    if !status.success() {
        let tail: Vec<String> = tail.into_iter().collect();
        bail!(
            "pip could not install the sandbox's Python requirements ({status}); its last output \
             lines: {}",
            tail.join(" | ")
        );
    }
    Ok(())
}

/// The requirements text in a temporary file, removed when dropped.
struct TempRequirements {
    path: PathBuf,
}

impl TempRequirements {
    fn write(text: &str) -> anyhow::Result<TempRequirements> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("gymforge-requirements-{}-{nanos}.txt", std::process::id()));
        fs::write(&path, text).map_err(|e| anyhow!("cannot write the requirements file {}: {e}", path.display()))?;
        Ok(TempRequirements { path })
    }
}

impl Drop for TempRequirements {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `chmod -R a+rX`: every file readable by all, directories and executables searchable by all.
/// Symlinks are left alone (their targets are inside the tree or in /usr).
fn make_world_readable(dir: &Path) -> anyhow::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(|e| anyhow!("cannot stat {}: {e}", path.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.mode() & 0o7777;
        let mut wanted = mode | 0o444;
        if meta.is_dir() || mode & 0o111 != 0 {
            wanted |= 0o111;
        }
        if wanted != mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(wanted)).map_err(|e| anyhow!("cannot chmod {}: {e}", path.display()))?;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(|e| anyhow!("cannot list {}: {e}", path.display()))? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Writes the marker atomically (temporary file + rename), as the very last step.
fn write_marker(dir: &Path, fingerprint: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{MARKER}.tmp"));
    fs::write(&tmp, format!("{fingerprint}\n")).map_err(|e| anyhow!("cannot write {}: {e}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(|e| anyhow!("cannot chmod {}: {e}", tmp.display()))?;
    fs::rename(&tmp, dir.join(MARKER)).map_err(|e| anyhow!("cannot write the marker in {}: {e}", dir.display()))?;
    Ok(())
}

/// The last `n` non-empty lines of `text`, joined with ` | ` so the message stays on one line.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_requirements_and_version() {
        let a = fingerprint("numpy\n", "3.11.2");
        assert_eq!(a, fingerprint("numpy\n", "3.11.2"));
        assert_ne!(a, fingerprint("numpy\npandas\n", "3.11.2"));
        assert_ne!(a, fingerprint("numpy\n", "3.12.0"));
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64);
    }

    #[test]
    fn lock_file_is_a_sibling() {
        assert_eq!(lock_path(Path::new("/opt/gymforge/pyenv")), Path::new("/opt/gymforge/pyenv.lock"));
    }

    #[test]
    fn missing_base_python_names_the_fix() {
        let err = base_version(Path::new("/nonexistent/python3")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/python3"), "{err}");
        assert!(err.contains("apt-get install -y python3 python3-venv"), "{err}");
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(last_lines("", 3), "");
    }
}
