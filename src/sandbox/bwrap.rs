//! The bubblewrap sandbox: runs one untrusted command in fresh namespaces with no network, a
//! read-only view of /usr and of the Python environment, one writable work directory, resource
//! limits, a wall-clock timeout and capped output.
//!
//! bwrap itself always runs unprivileged: when gymforge runs as root, the child drops to
//! uid/gid 65534 before bwrap starts, so the sandbox holds no capability on the host and can only
//! reach what `nobody` could. The job is started through a tiny `sh` wrapper that writes a marker
//! to stderr once bwrap has finished setting up; a run without the marker is a sandbox failure,
//! not a failure of the job.
//!
//! A process killed by a signal inside the sandbox shows as exit code 128 + signal (bwrap's
//! convention, e.g. 152 for SIGXCPU); `signal` is set only when the sandbox itself was killed,
//! which is what the timeout does.

use std::ffi::{CString, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use async_trait::async_trait;
use gymforge_actors::DropReason;
use gymforge_actors::ports::{JobOutput, Mount, PortError, Sandbox, SandboxJob};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use rustix::process::{Pid, Resource, Rlimit, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::Instrument;

use super::cgroup::{Cgroups, JobCgroup};
use super::pyenv::PythonEnv;
use super::staging::{StagePlan, Staging};
use crate::config::SandboxConfig;
use crate::output::one_line;

/// The unprivileged uid and gid jobs run as when gymforge runs as root (`nobody`).
const SANDBOX_UID: u32 = 65534;

/// Written to stderr by the wrapper right before it execs the job; stripped from the output.
pub(super) const READY_MARKER: &[u8] = b"gymforge-sandbox-ready\n";
/// The wrapper: announce that setup is done, then become the job.
const WRAPPER: &str = "printf 'gymforge-sandbox-ready\\n' >&2; exec \"$@\"";
/// How long output is still read after the job ended (a leftover holder of the pipes).
const READ_GRACE: Duration = Duration::from_secs(5);
/// Where the probe's work directory appears inside the sandbox.
const PROBE_INSIDE: &str = "/home/agent/workspace";
const MIB: u64 = 1024 * 1024;

/// Host directories under /etc that are made visible (read-only) when they exist.
const ETC_BINDS: [&str; 4] = ["/etc/alternatives", "/etc/ssl", "/etc/ld.so.cache", "/etc/localtime"];
/// Top-level directories that are symlinks into /usr on merged-/usr systems.
const USR_LINKS: [&str; 4] = ["lib", "lib64", "bin", "sbin"];
/// Sandbox paths that a job's work directory or mounts may not cover.
/// (Paths under /tmp are fine: its tmpfs is mounted before any bind.)
const RESERVED: [&str; 8] = ["/usr", "/proc", "/dev", "/etc", "/bin", "/sbin", "/lib", "/lib64"];

/// Resource limits applied to every job (setrlimit in the child before bwrap starts).
#[derive(Clone, Copy, Debug)]
struct Limits {
    address_space: u64,
    cpu_secs: u64,
    /// Processes of one job (the job's `pids.max` when it has a control group).
    processes: u64,
    /// RLIMIT_NPROC, which counts every process of the sandbox user across all jobs: the job
    /// limit without control groups, a backstop many jobs wide with them.
    user_processes: u64,
    file_size: u64,
}

/// With per-job control groups, RLIMIT_NPROC allows this many jobs' worth of processes.
const USER_PROCESS_JOBS: u64 = 64;

/// Runs jobs under bubblewrap. See the module documentation.
pub struct BwrapSandbox {
    bwrap: PathBuf,
    env: PythonEnv,
    limits: Limits,
    tmp_size: u64,
    pub(super) max_output_bytes: usize,
    as_root: bool,
    /// Per-job memory and process limits, where the machine allows them.
    cgroups: Option<Cgroups>,
    /// As root: how the child makes host paths reachable for bwrap (see `staging.rs`).
    staging: Option<Staging>,
}

impl BwrapSandbox {
    /// Checks that bwrap exists and the environment is usable by the sandbox user.
    pub fn new(cfg: &SandboxConfig, env: PythonEnv) -> anyhow::Result<BwrapSandbox> {
        let bwrap = find_bwrap(&cfg.bwrap).ok_or_else(|| match cfg.bwrap.as_str() {
            "" => anyhow!(BWRAP_MISSING),
            path => {
                anyhow!("bubblewrap is not at {path} (`sandbox.bwrap`): point it at the bwrap program or leave it empty to search PATH")
            }
        })?;
        if !env.python().exists() {
            bail!("the sandbox's Python environment {} has no interpreter: provision it first", env.dir.display());
        }
        let as_root = rustix::process::geteuid().is_root();
        let staging = if as_root {
            match Staging::detect() {
                Ok(s) => Some(s),
                Err(why) => {
                    tracing::warn!(
                        %why,
                        "the sandbox cannot stage its files in a private mount namespace; \
                         every path it mounts must be reachable by uid 65534"
                    );
                    reachable_by_sandbox_user(&env.dir, false, true).map_err(|e| anyhow!(e))?;
                    None
                }
            }
        } else {
            None
        };
        let cgroups = if as_root {
            match Cgroups::detect(Path::new("/sys/fs/cgroup")) {
                Ok(c) => {
                    tracing::info!(limits = c.describe(), "sandbox resource limits");
                    Some(c)
                }
                Err(why) => {
                    tracing::warn!(%why, "no per-job control groups; the sandbox relies on rlimits alone");
                    None
                }
            }
        } else {
            None
        };
        Ok(BwrapSandbox {
            bwrap,
            env,
            limits: Limits {
                address_space: cfg.memory_mb.saturating_mul(MIB),
                cpu_secs: cfg.cpu_secs,
                processes: cfg.max_processes,
                user_processes: if cgroups.is_some() { cfg.max_processes.saturating_mul(USER_PROCESS_JOBS) } else { cfg.max_processes },
                file_size: cfg.max_file_mb.saturating_mul(MIB),
            },
            tmp_size: cfg.memory_mb.saturating_mul(MIB),
            max_output_bytes: cfg.max_output_bytes,
            as_root,
            cgroups,
            staging,
        })
    }

    /// What per-job control groups the sandbox uses, if any.
    pub fn cgroups(&self) -> Option<&'static str> {
        self.cgroups.as_ref().map(Cgroups::describe)
    }

    /// Runs a job the way the pipeline's jobs run, in a directory under `root` (a run's work
    /// directory, so that the paths the pipeline will use are the ones tried): the sandbox
    /// starts, drops every capability, reads a read-only mount, writes its work directory,
    /// imports numpy (a compiled extension) and finds the other packages tasks use (finding, not
    /// importing: scikit-learn alone takes seconds to import). Any failure becomes one sentence
    /// saying what to fix.
    pub async fn probe(&self, root: &Path) -> anyhow::Result<()> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = root.join(format!("sandbox-probe-{}-{nanos}", std::process::id()));
        let (work, data) = (dir.join("work"), dir.join("data"));
        std::fs::create_dir_all(&work)
            .and_then(|()| std::fs::create_dir_all(&data))
            .and_then(|()| std::fs::write(data.join("probe.txt"), "gymforge\n"))
            .map_err(|e| anyhow!("cannot create the sandbox probe's directory {}: {e}", dir.display()))?;
        let script = "print(open('data/probe.txt').read().strip())\n\
                      open('written.txt', 'w').write('ok')\n\
                      import importlib.util, numpy\n\
                      missing = [m for m in ('pandas', 'sklearn', 'pyarrow') if importlib.util.find_spec(m) is None]\n\
                      if missing: raise ModuleNotFoundError('missing packages: ' + ', '.join(missing))\n\
                      caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff:')]\n\
                      print('CapEff', caps[0] if caps else 'unknown')";
        let job = SandboxJob {
            label: "sandbox probe".to_string(),
            workdir: work.clone(),
            workdir_inside: PROBE_INSIDE.to_string(),
            mounts: vec![Mount { host: data, inside: format!("{PROBE_INSIDE}/data"), writable: false }],
            command: vec!["python".into(), "-c".into(), script.into()],
            timeout: Duration::from_secs(120),
        };
        let result = self.run(job).await;
        let written = work.join("written.txt").is_file();
        let _ = std::fs::remove_dir_all(&dir);
        let out = result.map_err(|e| match e {
            PortError::Refused { detail, .. } => anyhow!("{detail}"),
            e => anyhow!("{e}"),
        })?;
        if !out.success() || out.stdout.lines().next() != Some("gymforge") || !written {
            let said = one_line(&out.stderr, 600);
            let hint = if said.contains("ModuleNotFoundError") || said.contains("ImportError") {
                format!(" (the Python environment {} is incomplete: remove it and gymforge provisions it again)", self.env.dir.display())
            } else {
                String::new()
            };
            bail!("the sandbox started but the probe job failed ({}) in {}: {said}{hint}", out.status_line(), root.display());
        }
        let caps = out.stdout.lines().find_map(|l| l.strip_prefix("CapEff ")).unwrap_or("unknown").trim();
        if caps.is_empty() || caps.chars().any(|c| c != '0') {
            bail!(
                "the sandbox keeps capabilities (CapEff {caps}), so it is not safe to run \
                 generated code in it"
            );
        }
        Ok(())
    }

    /// The host paths bwrap binds for `job` (the Python environment, the work directory, then
    /// each mount) and the source path bwrap is given for each: staged as root, else the host
    /// path itself.
    fn bind_sources(&self, job: &SandboxJob) -> (StagePlan, Vec<PathBuf>) {
        let mut hosts: Vec<(&Path, bool)> = vec![(&self.env.dir, true), (&job.workdir, true)];
        hosts.extend(job.mounts.iter().map(|m| (m.host.as_path(), m.host.is_dir())));
        match &self.staging {
            Some(staging) => staging.plan(&hosts),
            None => (StagePlan::default(), hosts.iter().map(|(p, _)| p.to_path_buf()).collect()),
        }
    }

    /// bwrap's arguments for a job (everything after the program name); `sources` as
    /// [`Self::bind_sources`] gives them.
    fn args(&self, job: &SandboxJob, sources: &[PathBuf]) -> Vec<OsString> {
        let mut a = Args::default();
        a.push(&["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]);
        a.push(&["--new-session", "--hostname", "sandbox"]);
        // The tmpfs comes first: a later one would hide binds beneath it.
        a.push(&["--size", &self.tmp_size.to_string(), "--tmpfs", "/tmp"]);
        a.push(&["--ro-bind", "/usr", "/usr"]);
        for name in USR_LINKS {
            let host = Path::new("/").join(name);
            match std::fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target =
                        std::fs::read_link(&host).map(|t| t.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("usr/{name}"));
                    a.push(&["--symlink", &target, &path_str(&host)]);
                }
                Ok(_) => a.push(&["--ro-bind", &path_str(&host), &path_str(&host)]),
                Err(_) => {}
            }
        }
        for etc in ETC_BINDS {
            if Path::new(etc).exists() {
                a.push(&["--ro-bind", etc, etc]);
            }
        }
        let env_dir = path_str(&self.env.dir);
        a.push_os("--ro-bind", &sources[0], &env_dir);
        a.push(&["--proc", "/proc", "--dev", "/dev"]);
        for parent in parents(&job.workdir_inside) {
            a.push(&["--dir", &parent]);
        }
        a.push_os("--bind", &sources[1], &job.workdir_inside);

        let mut mounts: Vec<(&Mount, &PathBuf)> = job.mounts.iter().zip(&sources[2..]).collect();
        mounts.sort_by_key(|(m, _)| Path::new(&m.inside).components().count());
        for (m, source) in mounts {
            if !Path::new(&m.inside).starts_with(&job.workdir_inside) {
                for parent in parents(&m.inside) {
                    a.push(&["--dir", &parent]);
                }
            }
            a.push_os(if m.writable { "--bind" } else { "--ro-bind" }, source, &m.inside);
        }

        // The sandbox's own root (a tmpfs bwrap builds) is read-only: writes go only to the
        // work directory, writable mounts and the size-limited /tmp.
        a.push(&["--remount-ro", "/"]);
        a.push(&["--chdir", &job.workdir_inside, "--clearenv"]);
        let path = format!("{env_dir}/bin:/usr/bin:/bin");
        for (k, v) in [
            ("PATH", path.as_str()),
            ("HOME", job.workdir_inside.as_str()),
            ("OMP_NUM_THREADS", "1"),
            ("OPENBLAS_NUM_THREADS", "1"),
            ("MKL_NUM_THREADS", "1"),
            ("MPLCONFIGDIR", "/tmp"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("PYTHONUNBUFFERED", "1"),
            ("LANG", "C.UTF-8"),
        ] {
            a.push(&["--setenv", k, v]);
        }
        a.push(&["--", "/bin/sh", "-c", WRAPPER, "sh"]);
        a.0.extend(job.command.iter().map(OsString::from));
        a.0
    }

    /// Prepares the job's directories and builds the bwrap command for it (stdin null, stdout
    /// and stderr piped, its own process group, control groups, limits and the unprivileged
    /// user applied). Keep the returned groups until the job has ended.
    pub(super) async fn command(&self, job: &SandboxJob) -> Result<(tokio::process::Command, Option<JobCgroup>), PortError> {
        let prepared = {
            let (job, env_dir, as_root, staged) = (job.clone(), self.env.dir.clone(), self.as_root, self.staging.is_some());
            tokio::task::spawn_blocking(move || prepare(&job, &env_dir, as_root, staged)).await
        };
        match prepared {
            Ok(r) => r?,
            Err(e) => return Err(PortError::Transient(format!("sandbox preparation failed: {e}"))),
        }
        let (plan, sources) = self.bind_sources(job);
        let mut cmd = tokio::process::Command::new(&self.bwrap);
        cmd.args(self.args(job, &sources))
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let limits = self.limits;
        let drop_to_nobody = self.as_root;
        let group = match &self.cgroups {
            Some(c) => Some(
                c.job(limits.address_space, limits.processes)
                    .map_err(|e| PortError::Transient(format!("cannot create the job's control group: {e}")))?,
            ),
            None => None,
        };
        let procs: Vec<CString> = group.as_ref().map(|g| g.procs.clone()).unwrap_or_default();
        // SAFETY: the closure only makes async-signal-safe system calls and does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                super::cgroup::join(&procs)?;
                super::staging::enter(&plan)?;
                child_setup(limits, drop_to_nobody)
            });
        }
        Ok((cmd, group))
    }

    async fn run_job(&self, job: SandboxJob) -> Result<JobOutput, PortError> {
        let (mut cmd, _group) = self.command(&job).await?;
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let pid = child.id().and_then(|p| Pid::from_raw(p as i32));
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(PortError::Transient("the sandbox's output pipes are missing".into()));
        };

        let cap = self.max_output_bytes;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_cut, mut err_cut) = (false, false);
        let (status, timed_out) = {
            let mut reading = Box::pin(async {
                tokio::join!(
                    read_capped(stdout, cap, &mut out, &mut out_cut),
                    read_capped(stderr, cap + READY_MARKER.len(), &mut err, &mut err_cut),
                )
            });
            let mut waiting = Box::pin(async {
                match tokio::time::timeout(job.timeout, child.wait()).await {
                    Ok(status) => (status, false),
                    Err(_) => {
                        // The child is not reaped yet, so its group id is still ours.
                        if let Some(pid) = pid {
                            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                        }
                        (child.wait().await, true)
                    }
                }
            });
            let mut read_done = false;
            let ended = loop {
                tokio::select! {
                    r = &mut waiting => break r,
                    _ = &mut reading, if !read_done => read_done = true,
                }
            };
            // Normally the pipes close with the sandbox; whatever still holds them is cut off.
            if !read_done {
                let _ = tokio::time::timeout(READ_GRACE, &mut reading).await;
            }
            ended
        };
        let status = status.map_err(|e| PortError::Transient(format!("cannot wait for the sandbox: {e}")))?;
        let elapsed = start.elapsed().as_secs_f64();

        let ready = strip_marker(&mut err);
        if !ready && !timed_out {
            return Err(setup_failure(&String::from_utf8_lossy(&err)));
        }
        Ok(JobOutput {
            exit_code: status.code(),
            signal: status.signal(),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            timed_out,
            output_truncated: out_cut || err_cut,
            elapsed_secs: elapsed,
        })
    }
}

#[async_trait]
impl Sandbox for BwrapSandbox {
    async fn run(&self, job: SandboxJob) -> Result<JobOutput, PortError> {
        let span = tracing::info_span!("sandbox_job", label = %job.label);
        async move {
            let label = job.label.clone();
            let result = self.run_job(job).await;
            let metrics = crate::telemetry::metrics::metrics();
            match &result {
                Ok(out) => metrics.sandbox_job(
                    out.elapsed_secs,
                    if out.timed_out {
                        "timeout"
                    } else if out.exit_code == Some(0) {
                        "ok"
                    } else {
                        "failed"
                    },
                ),
                Err(_) => metrics.sandbox_job(0.0, "not_started"),
            }
            match &result {
                Ok(out) => tracing::debug!(
                    label = %label,
                    elapsed_secs = out.elapsed_secs,
                    status = %out.status_line(),
                    output_truncated = out.output_truncated,
                    "sandbox job finished"
                ),
                Err(e) => tracing::debug!(label = %label, error = %e, "sandbox job failed to run"),
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn shell(&self, job: SandboxJob, control: &Path) -> Result<Box<dyn gymforge_actors::ports::Shell>, PortError> {
        Ok(Box::new(self.start_shell(job, control).await?))
    }
}

/// Host-side preparation: validates paths, creates mountpoints inside the work directory and,
/// as root, hands the writable trees to the sandbox user. `staged`: the child stages the host
/// paths (see `staging.rs`), so the directories above them need not be reachable. Blocking.
fn prepare(job: &SandboxJob, env_dir: &Path, as_root: bool, staged: bool) -> Result<(), PortError> {
    let perm = |m: String| PortError::Permanent(m);
    if job.command.is_empty() {
        return Err(perm(format!("sandbox job `{}` has an empty command", job.label)));
    }
    // bwrap runs in `/`: a relative host path would name something else there.
    for host in std::iter::once(&job.workdir).chain(job.mounts.iter().map(|m| &m.host)) {
        if !host.is_absolute() {
            return Err(perm(format!(
                "sandbox job `{}`: host path {} is relative; paths are made absolute when gymforge starts",
                job.label,
                host.display()
            )));
        }
    }
    check_inside(&job.workdir_inside, env_dir).map_err(perm)?;
    for m in &job.mounts {
        check_inside(&m.inside, env_dir).map_err(perm)?;
        if Path::new(&m.inside) == Path::new(&job.workdir_inside) {
            return Err(perm(format!("mount {} would hide the work directory {}", m.host.display(), job.workdir_inside)));
        }
        if !m.host.exists() {
            return Err(perm(format!("cannot mount {} into the sandbox: it does not exist", m.host.display())));
        }
    }
    std::fs::create_dir_all(&job.workdir).map_err(|e| perm(format!("cannot create the work directory {}: {e}", job.workdir.display())))?;
    for m in &job.mounts {
        if let Ok(rel) = Path::new(&m.inside).strip_prefix(&job.workdir_inside) {
            make_mountpoint(&job.workdir, rel, m.host.is_dir()).map_err(perm)?;
        }
    }
    if as_root {
        reachable_by_sandbox_user(&job.workdir, true, !staged).map_err(perm)?;
        chown_tree(&job.workdir).map_err(perm)?;
        for m in &job.mounts {
            reachable_by_sandbox_user(&m.host, m.writable, !staged).map_err(perm)?;
            if m.writable {
                chown_tree(&m.host).map_err(perm)?;
            }
        }
    }
    Ok(())
}

const BWRAP_MISSING: &str = "bubblewrap (bwrap) is not installed: run `apt-get install -y bubblewrap`";

/// The configured `bwrap` (`sandbox.bwrap`), or else the first on PATH or in the usual places.
fn find_bwrap(configured: &str) -> Option<PathBuf> {
    let executable = |p: &PathBuf| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !configured.is_empty() {
        return Some(PathBuf::from(configured)).filter(executable);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/local/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("bwrap")).find(executable)
}

/// Runs in the forked child before exec: limits, then (as root) the switch to `nobody`, then
/// no_new_privs. Only async-signal-safe calls, no allocation.
fn child_setup(limits: Limits, drop_to_nobody: bool) -> std::io::Result<()> {
    limit(Resource::As, limits.address_space, limits.address_space)?;
    // SIGXCPU at the soft limit, SIGKILL a little later for jobs that ignore it.
    limit(Resource::Cpu, limits.cpu_secs, limits.cpu_secs.saturating_add(5))?;
    limit(Resource::Nproc, limits.user_processes, limits.user_processes)?;
    limit(Resource::Fsize, limits.file_size, limits.file_size)?;
    limit(Resource::Nofile, 1024, 1024)?;
    limit(Resource::Core, 0, 0)?;
    if drop_to_nobody {
        // These set the calling thread's credentials (the kernel's semantics); after the fork the
        // child's one thread is the whole process.
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_gid(Gid::from_raw(SANDBOX_UID))?;
        rustix::thread::set_thread_uid(Uid::from_raw(SANDBOX_UID))?;
    }
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}

/// Sets one resource limit, never above the current hard limit: an unprivileged caller may not
/// raise it. Async-signal-safe.
fn limit(resource: Resource, soft: u64, hard: u64) -> std::io::Result<()> {
    // `None` is RLIM_INFINITY.
    let max = rustix::process::getrlimit(resource).maximum.unwrap_or(u64::MAX);
    let new = Rlimit { current: Some(soft.min(max)), maximum: Some(hard.min(max)) };
    Ok(rustix::process::setrlimit(resource, new)?)
}

pub(super) fn spawn_error(e: std::io::Error) -> PortError {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => unavailable(BWRAP_MISSING.to_string()),
        WouldBlock | OutOfMemory | Interrupted => PortError::Transient(format!("cannot start the sandbox: {e}")),
        _ if matches!(Errno::from_io_error(&e), Some(Errno::AGAIN | Errno::NOMEM)) => {
            PortError::Transient(format!("cannot start the sandbox: {e}"))
        }
        _ => unavailable(format!("cannot start the sandbox (bwrap): {e}")),
    }
}

/// Turns bwrap's complaint (the job never started) into an error saying what to fix.
pub(super) fn setup_failure(stderr: &str) -> PortError {
    let said = one_line(stderr, 400);
    let said = if said.is_empty() { "no message".to_string() } else { said };
    if said.contains("Resource temporarily unavailable") || said.contains("Cannot allocate memory") {
        return PortError::Transient(format!("the sandbox could not start for lack of processes or memory (bwrap said: {said})"));
    }
    if said.contains("namespace") || said.contains("uid map") || said.contains("setting up uid") {
        return unavailable(format!(
            "bubblewrap may not create user namespaces on this machine, so the sandbox cannot \
             start (bwrap said: {said}); allow unprivileged user namespaces, e.g. \
             `sysctl -w user.max_user_namespaces=10000` (Debian: also \
             `sysctl -w kernel.unprivileged_userns_clone=1`; Ubuntu 24.04+: \
             `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`)"
        ));
    }
    unavailable(format!("the sandbox failed to start (bwrap said: {said})"))
}

/// The sandbox cannot start at all: every job would fail the same way, so the run stops.
fn unavailable(detail: String) -> PortError {
    PortError::Refused { reason: DropReason::SandboxUnavailable, detail }
}

/// Reads `r` to the end, keeping the first `cap` bytes in `buf` and discarding the rest.
async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize, buf: &mut Vec<u8>, truncated: &mut bool) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(buf.len());
                if n > room {
                    *truncated = true;
                }
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

/// Removes the wrapper's readiness marker from stderr; false when it is not there.
fn strip_marker(err: &mut Vec<u8>) -> bool {
    match err.windows(READY_MARKER.len()).position(|w| w == READY_MARKER) {
        Some(at) => {
            err.drain(at..at + READY_MARKER.len());
            true
        }
        None => false,
    }
}

/// Rejects sandbox paths that are relative, contain `..`, or would cover the system mounts.
fn check_inside(inside: &str, env_dir: &Path) -> Result<(), String> {
    let p = Path::new(inside);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("sandbox path `{inside}` must be absolute and without `..`"));
    }
    if p.components().count() < 2 {
        return Err("sandbox path `/` cannot be used as a work directory or mount".to_string());
    }
    if RESERVED.iter().any(|r| p.starts_with(r)) || p.starts_with(env_dir) || env_dir.starts_with(p) {
        return Err(format!("sandbox path `{inside}` overlaps a system directory or the Python environment"));
    }
    Ok(())
}

/// Creates the mountpoint `workdir/rel` on the host (a directory or an empty file), replacing
/// symlinks the previous job may have left so nothing outside the work directory is touched.
fn make_mountpoint(workdir: &Path, rel: &Path, dir: bool) -> Result<(), String> {
    let comps: Vec<Component<'_>> = rel.components().collect();
    let mut cur = workdir.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(name) = c else {
            return Err(format!("invalid mount path {}", rel.display()));
        };
        cur.push(name);
        let last = i + 1 == comps.len();
        let want_dir = !last || dir;
        let fail = |e: std::io::Error| format!("cannot create the mountpoint {}: {e}", cur.display());
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&cur).map_err(fail)?,
            Ok(m) if m.is_dir() == want_dir => continue,
            Ok(_) => {
                return Err(format!(
                    "cannot mount onto {}: it exists in the work directory as a {}",
                    cur.display(),
                    if want_dir { "file" } else { "directory" }
                ));
            }
            Err(_) => {}
        }
        if want_dir {
            std::fs::create_dir(&cur).map_err(fail)?;
        } else {
            std::fs::File::create(&cur).map_err(fail)?;
        }
    }
    Ok(())
}

/// `chown -R 65534:65534` without following symlinks. The tree may hold what an earlier job
/// left, so it is walked through directory descriptors (`openat` with `O_NOFOLLOW`): a
/// directory swapped for a symlink midway cannot redirect the walk outside the tree.
fn chown_tree(root: &Path) -> Result<(), String> {
    let fail = |path: &Path, e: std::io::Error| format!("cannot hand {} to the sandbox user: {e}", path.display());
    let meta = std::fs::symlink_metadata(root).map_err(|e| fail(root, e))?;
    if !meta.is_dir() {
        return std::os::unix::fs::lchown(root, Some(SANDBOX_UID), Some(SANDBOX_UID)).map_err(|e| fail(root, e));
    }
    let fail_errno = |path: &Path, e: Errno| fail(path, e.into());
    let sandbox_user = (Some(Uid::from_raw(SANDBOX_UID)), Some(Gid::from_raw(SANDBOX_UID)));
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root_fd = rustix::fs::open(root, dir_flags, Mode::empty()).map_err(|e| fail_errno(root, e))?;
    // Pending directories: (open parent, name, path for messages). Opening lazily keeps the
    // number of open descriptors at about the depth of the tree.
    let mut pending: Vec<(Rc<OwnedFd>, CString, PathBuf)> = Vec::new();
    let mut current = Some((Rc::new(root_fd), root.to_path_buf()));
    loop {
        let (dir, shown) = match current.take() {
            Some(d) => d,
            None => {
                let Some((parent, name, shown)) = pending.pop() else { break };
                let fd = rustix::fs::openat(&*parent, &name, dir_flags, Mode::empty()).map_err(|e| fail_errno(&shown, e))?;
                (Rc::new(fd), shown)
            }
        };
        rustix::fs::fchown(&*dir, sandbox_user.0, sandbox_user.1).map_err(|e| fail_errno(&shown, e))?;
        for name in list_dir(&dir).map_err(|e| fail_errno(&shown, e))? {
            let child = shown.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
            let st = match rustix::fs::statat(&*dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(fail_errno(&child, e)),
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                pending.push((Rc::clone(&dir), name, child));
            } else if st.st_uid != SANDBOX_UID || st.st_gid != SANDBOX_UID {
                // AT_SYMLINK_NOFOLLOW changes a symlink itself.
                rustix::fs::chownat(&*dir, &name, sandbox_user.0, sandbox_user.1, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| fail_errno(&child, e))?;
            }
        }
    }
    Ok(())
}

/// The entry names of an open directory, without `.` and `..`.
fn list_dir(dir: &OwnedFd) -> rustix::io::Result<Vec<CString>> {
    // The stream owns its descriptor, so it gets a duplicate.
    let stream = rustix::fs::Dir::new(rustix::io::fcntl_dupfd_cloexec(dir, 0)?)?;
    let mut names = Vec::new();
    for entry in stream {
        let entry = match entry {
            Ok(entry) => entry,
            // Removed while walked (a deleted directory lists as ENOENT): nothing left to hand over.
            Err(Errno::NOENT) => break,
            Err(e) => return Err(e),
        };
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// As root, bwrap runs as uid 65534: `path` itself must be readable by it (writable trees are
/// handed over by `chown_tree`) and, unless the child stages it (`ancestors` false), every
/// ancestor of `path` searchable by others.
fn reachable_by_sandbox_user(path: &Path, writable: bool, ancestors: bool) -> Result<(), String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    for ancestor in real.ancestors().skip(1).filter(|_| ancestors) {
        let meta = std::fs::metadata(ancestor).map_err(|e| format!("cannot stat {}: {e}", ancestor.display()))?;
        if meta.mode() & 0o001 == 0 && meta.uid() != SANDBOX_UID {
            return Err(format!(
                "the sandbox user (uid {SANDBOX_UID}) cannot reach {}: {} is not searchable by \
                 others (`chmod o+x {}`, or use a directory elsewhere)",
                path.display(),
                ancestor.display(),
                ancestor.display()
            ));
        }
    }
    if !writable {
        let meta = std::fs::metadata(&real).map_err(|e| format!("cannot stat {}: {e}", real.display()))?;
        let need = if meta.is_dir() { 0o005 } else { 0o004 };
        if meta.mode() & need != need && meta.uid() != SANDBOX_UID {
            return Err(format!(
                "the sandbox user (uid {SANDBOX_UID}) cannot read {} (`chmod -R a+rX {}`)",
                path.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

/// The proper ancestors of an absolute sandbox path, outermost first, without `/`.
fn parents(inside: &str) -> Vec<String> {
    let mut out: Vec<String> = Path::new(inside).ancestors().skip(1).filter(|p| p.components().count() > 1).map(path_str).collect();
    out.reverse();
    out
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// bwrap's argument vector under construction.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, items: &[&str]) {
        self.0.extend(items.iter().map(OsString::from));
    }

    fn push_os(&mut self, flag: &str, host: &Path, inside: &str) {
        self.0.push(flag.into());
        self.0.push(host.as_os_str().to_owned());
        self.0.push(inside.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_listed_outermost_first() {
        assert_eq!(parents("/home/agent/workspace"), vec!["/home", "/home/agent"]);
        assert!(parents("/data").is_empty());
    }

    #[test]
    fn inside_paths_are_checked() {
        let env = Path::new("/opt/gymforge/pyenv");
        assert!(check_inside("/home/agent/workspace", env).is_ok());
        assert!(check_inside("relative", env).is_err());
        assert!(check_inside("/home/../usr", env).is_err());
        assert!(check_inside("/usr/local", env).is_err());
        assert!(check_inside("/", env).is_err());
        assert!(check_inside("/opt/gymforge/pyenv/lib", env).is_err());
        assert!(check_inside("/opt", env).is_err());
    }

    #[test]
    fn marker_is_stripped_once() {
        let mut err = b"gymforge-sandbox-ready\nboom\ngymforge-sandbox-ready\n".to_vec();
        assert!(strip_marker(&mut err));
        assert_eq!(err, b"boom\ngymforge-sandbox-ready\n");
        let mut none = b"bwrap: Can't mount proc".to_vec();
        assert!(!strip_marker(&mut none));
    }

    #[test]
    fn namespace_refusal_is_explained() {
        let e = setup_failure("bwrap: No permissions to creating new namespace, likely because");
        assert!(
            matches!(&e, PortError::Refused { reason: DropReason::SandboxUnavailable, detail } if detail.contains("user namespaces")),
            "{e}"
        );
    }

    #[test]
    fn missing_bwrap_names_the_fix() {
        let e = spawn_error(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e, unavailable(BWRAP_MISSING.to_string()));
        let e = spawn_error(Errno::AGAIN.into());
        assert!(e.is_transient());
    }

    #[test]
    fn chown_tree_stays_inside_the_tree() {
        if !rustix::process::geteuid().is_root() {
            return; // only root can hand files to another user
        }
        let base = std::env::temp_dir().join(format!("gymforge-chown-{}", std::process::id()));
        let tree = base.join("tree");
        let outside = base.join("outside.txt");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f.txt"), "x").unwrap();
        std::fs::write(&outside, "host").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        std::os::unix::fs::symlink(&base, tree.join("dirlink")).unwrap();
        chown_tree(&tree).unwrap();
        let owner = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        for p in ["", "a", "a/b", "a/b/f.txt", "a/link", "dirlink"] {
            assert_eq!(owner(&tree.join(p)), SANDBOX_UID, "{p}");
        }
        assert_eq!(owner(&outside), 0);
        assert_eq!(owner(&base), 0);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
