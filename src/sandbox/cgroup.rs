//! Per-job control groups: a memory limit and a process limit for each sandbox job, where the
//! machine lets gymforge create them. Detected once at start: cgroup v1 (`memory` and `pids`
//! hierarchies) or cgroup v2 (a `gymforge` subtree with both controllers delegated). Without
//! them the rlimits alone apply, and the process limit then counts every job of the sandbox user
//! together, so one job's fork bomb can starve the others until its timeout.
//!
//! The job's process joins its groups in the forked child, before bwrap starts, so everything
//! it starts is inside them. The memory limit also counts the job's files in the sandbox's
//! in-memory /tmp.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};

/// The parent group of every job's group, in each hierarchy.
const PARENT: &str = "gymforge";

#[derive(Debug, Clone)]
pub struct Cgroups {
    /// `(hierarchy root, version)`: for v1 the memory and the pids hierarchies, for v2 one.
    roots: Vec<PathBuf>,
    v2: bool,
}

/// The groups of one job; removed on drop (after killing anything left in them).
#[derive(Debug)]
pub struct JobCgroup {
    dirs: Vec<PathBuf>,
    /// The `cgroup.procs` files the child writes its pid into.
    pub procs: Vec<CString>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Cgroups {
    /// The control groups this process may create below its own, or why there are none.
    pub fn detect(base: &Path) -> Result<Cgroups, String> {
        let membership = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        // `hierarchy-id:controllers:path` per line; v2 is `0::path`.
        let own = |controller: &str| {
            membership.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                (controllers.split(',').any(|c| c == controller)).then(|| path.trim_start_matches('/').to_string())
            })
        };
        let v1: Vec<PathBuf> = ["memory", "pids"]
            .iter()
            .filter_map(|c| own(c).map(|path| base.join(c).join(path)))
            .filter(|dir| dir.join("cgroup.procs").is_file())
            .collect();
        if v1.len() == 2 {
            let roots: Vec<PathBuf> = v1.iter().map(|own| own.join(PARENT)).collect();
            for r in &roots {
                create_dir(r)?;
            }
            let groups = Cgroups { roots, v2: false };
            groups.remove_stale();
            return Ok(groups);
        }
        let controllers = std::fs::read_to_string(base.join("cgroup.controllers"))
            .map_err(|_| "no cgroup v1 memory and pids hierarchies and no cgroup v2 mount".to_string())?;
        if !(controllers.contains("memory") && controllers.contains("pids")) {
            return Err("cgroup v2 lacks the memory or pids controller".into());
        }
        let own_dir = base.join(own("").unwrap_or_default());
        let root = own_dir.join(PARENT);
        // Fails when this process's own group holds processes and is not the root: the
        // controllers are then not delegated to gymforge.
        write(&own_dir.join("cgroup.subtree_control"), "+memory +pids")?;
        create_dir(&root)?;
        write(&root.join("cgroup.subtree_control"), "+memory +pids")?;
        let groups = Cgroups { roots: vec![root], v2: true };
        groups.remove_stale();
        Ok(groups)
    }

    /// What the sandbox's limits rest on, for the log.
    pub fn describe(&self) -> &'static str {
        if self.v2 { "cgroup v2 memory and pids limits per job" } else { "cgroup v1 memory and pids limits per job" }
    }

    /// Creates the groups of one job.
    pub fn job(&self, memory_bytes: u64, max_processes: u64) -> Result<JobCgroup, String> {
        let name = format!("job-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut group = JobCgroup { dirs: Vec::new(), procs: Vec::new() };
        for root in &self.roots {
            let dir = root.join(&name);
            create_dir(&dir)?;
            group.dirs.push(dir.clone());
            let is_memory = self.v2 || self.roots[0] == *root;
            let is_pids = self.v2 || self.roots[1] == *root;
            if is_memory {
                let file = if self.v2 { "memory.max" } else { "memory.limit_in_bytes" };
                write(&dir.join(file), &memory_bytes.to_string())?;
            }
            if is_pids {
                write(&dir.join("pids.max"), &max_processes.to_string())?;
            }
            let procs = dir.join("cgroup.procs");
            group.procs.push(CString::new(procs.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?);
        }
        Ok(group)
    }

    /// Removes the (empty) groups of gymforge processes that no longer run. A live process's
    /// groups are left alone: one may be created and not yet joined.
    fn remove_stale(&self) {
        for root in &self.roots {
            let Ok(entries) = std::fs::read_dir(root) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.strip_prefix("job-").and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
                let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if entry.path().is_dir() && !alive {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        // The sandbox's processes die with its PID namespace, a moment after bwrap exits; wait
        // for that off the async runtime.
        std::thread::spawn(move || {
            for _ in 0..100 {
                for dir in &dirs {
                    kill_members(dir);
                }
                if dirs.iter().all(|d| std::fs::remove_dir(d).is_ok() || !d.exists()) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::warn!(groups = ?dirs, "a job's control groups could not be removed");
        });
    }
}

fn kill_members(dir: &Path) {
    let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) else { return };
    // A pid read from the job's own group; at worst it has exited meanwhile.
    for pid in pids.lines().filter_map(|l| l.trim().parse().ok()).filter_map(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

fn create_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create the control group {}: {e}", dir.display())),
    }
}

fn write(file: &Path, value: &str) -> Result<(), String> {
    std::fs::write(file, value).map_err(|e| format!("cannot write {} to {}: {e}", value, file.display()))
}

/// Moves the calling process into the groups whose `cgroup.procs` files are given. Runs in the
/// forked child: only async-signal-safe calls, no allocation.
pub fn join(procs: &[CString]) -> std::io::Result<()> {
    let mut digits = [0u8; 20];
    let mut n = rustix::process::getpid().as_raw_pid() as u64;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for path in procs {
        // The descriptor is closed when dropped, after the write.
        let fd = rustix::fs::open(path.as_c_str(), OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
        rustix::io::write(&fd, &digits[at..])?;
    }
    Ok(())
}
