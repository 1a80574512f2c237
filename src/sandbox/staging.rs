//! Host paths a root-run sandbox can reach whatever the directories above them allow.
//!
//! As root, bubblewrap runs as the sandbox user (uid 65534), and bwrap resolves every bind
//! source itself, with that user's rights: a work directory under root's home (mode 700 on
//! Debian) or any `mktemp -d` directory (mode 700) is out of its reach. So the sandbox never
//! hands bwrap the host paths. The forked child, while still root, enters a private mount
//! namespace, mounts a small tmpfs over the staging directory (an empty directory that only
//! serves as a mountpoint, `/run/gymforge-sandbox`), and bind-mounts each host path the job
//! needs onto `STAGE/<n>` in it; bwrap, started as the sandbox user, binds `STAGE/<n>` into the
//! sandbox. Nothing of this is visible outside the child: the host's staging directory stays
//! empty, and the mounts die with the job.
//!
//! Where a private mount namespace cannot be made (a container without `CAP_SYS_ADMIN`),
//! [`Staging::detect`] says why and the sandbox falls back to handing bwrap the host paths,
//! which then must be reachable by the sandbox user.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::thread::UnshareFlags;

/// Where the staging tmpfs is mounted inside each job's private mount namespace.
const STAGE_DIRS: [&str; 2] = ["/run/gymforge-sandbox", "/tmp/.gymforge-sandbox-root"];

/// The staging directory, checked to be a root-owned directory nobody else can write.
#[derive(Clone, Debug)]
pub struct Staging {
    dir: PathBuf,
}

/// What one job's child mounts before it execs bwrap: prepared before the fork, so the child
/// only makes system calls.
#[derive(Debug, Default)]
pub struct StagePlan {
    tmpfs: Option<CString>,
    /// `(host path, staged path, is a directory)`.
    binds: Vec<(CString, CString, bool)>,
}

impl Staging {
    /// Makes the staging directory and checks, in a throwaway child, that a private mount
    /// namespace with a tmpfs on it can be made. `Err` says why not.
    pub fn detect() -> Result<Staging, String> {
        let mut why = Vec::new();
        for dir in STAGE_DIRS {
            let dir = Path::new(dir);
            match Staging::make(dir) {
                Ok(staging) => return staging.try_in_child().map(|()| staging),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    }

    fn make(dir: &Path) -> Result<Staging, String> {
        if !dir.parent().is_some_and(Path::is_dir) {
            return Err(format!("{} has no parent directory", dir.display()));
        }
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::create_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!("{} is not a directory owned by root and writable by root alone", dir.display()));
        }
        for ancestor in dir.ancestors().skip(1) {
            let m = std::fs::metadata(ancestor).map_err(|e| format!("cannot stat {}: {e}", ancestor.display()))?;
            if m.mode() & 0o001 == 0 {
                return Err(format!("{} is not searchable by others", ancestor.display()));
            }
        }
        Ok(Staging { dir: dir.to_path_buf() })
    }

    /// Runs `/bin/true` through [`enter`] with an empty plan.
    fn try_in_child(&self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let plan = self.plan(&[]).0;
        let mut cmd = std::process::Command::new("/bin/true");
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        // SAFETY: `enter` only makes system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || enter(&plan));
        }
        match cmd.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("a test child exited with {status}")),
            Err(e) => Err(format!("a private mount namespace cannot be made here ({e})")),
        }
    }

    /// The plan that stages `hosts` (`(path, is a directory)`), and the path bwrap is given for
    /// each, in the same order.
    pub fn plan(&self, hosts: &[(&Path, bool)]) -> (StagePlan, Vec<PathBuf>) {
        let mut plan = StagePlan { tmpfs: Some(c_path(&self.dir)), binds: Vec::new() };
        let mut staged = Vec::new();
        for (n, (host, is_dir)) in hosts.iter().enumerate() {
            let inside = self.dir.join(n.to_string());
            plan.binds.push((c_path(host), c_path(&inside), *is_dir));
            staged.push(inside);
        }
        (plan, staged)
    }
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_else(|_| CString::from(c"/nonexistent"))
}

/// Runs in the forked child, as root, before it drops to the sandbox user: a private mount
/// namespace, the staging tmpfs, and one bind mount per host path. Only async-signal-safe
/// system calls, no allocation.
pub fn enter(plan: &StagePlan) -> std::io::Result<()> {
    let Some(tmpfs) = &plan.tmpfs else { return Ok(()) };
    // SAFETY: a new mount namespace only; the descriptor table stays shared, so no thread can
    // lose a descriptor it holds (and after the fork this is the one thread).
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS)? };
    // Nothing mounted here propagates back to the host.
    rustix::mount::mount_change(c"/", MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)?;
    let tmpfs_flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    rustix::mount::mount(c"tmpfs", tmpfs.as_c_str(), c"tmpfs", tmpfs_flags, c"mode=0755,size=1m")?;
    for (host, staged, is_dir) in &plan.binds {
        if *is_dir {
            rustix::fs::mkdir(staged.as_c_str(), Mode::from_raw_mode(0o755))?;
        } else {
            // The empty file is only a mountpoint: its descriptor is closed when dropped.
            rustix::fs::open(staged.as_c_str(), OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC, Mode::from_raw_mode(0o644))?;
        }
        rustix::mount::mount_bind_recursive(host.as_c_str(), staged.as_c_str())?;
    }
    Ok(())
}
