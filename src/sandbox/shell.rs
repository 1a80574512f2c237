//! A long-lived shell in the sandbox, one per rollout, so that `cd`, variables and background
//! processes persist between the agent's commands.
//!
//! The shell is bash inside the same bubblewrap sandbox a job gets (same mounts, limits and
//! unprivileged user), with stderr merged into stdout like a terminal. Each command is written
//! to a file in the session's control directory (mounted read-only inside) and sourced with
//! stdin from /dev/null, so neither a syntax error nor a command that reads stdin can swallow
//! the protocol; then the shell prints an end marker with the exit status.
//!
//! A command past its timeout has every process of the sandbox except the shell killed, and the
//! shell goes on. If the shell itself is stuck (a loop of builtins) or has exited, the session is
//! killed and reported dead; the caller starts a new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gymforge_actors::ports::{CONTROL_INSIDE, JobOutput, PortError, SandboxJob, Shell};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::bwrap::{BwrapSandbox, READY_MARKER, setup_failure, spawn_error};

/// How long a shell may take to come back after its command's processes were killed.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long the sandbox may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct BwrapShell {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    control: PathBuf,
    marker: String,
    max_output: usize,
    /// Bytes read past the last marker (the start of the next command's output, normally none).
    pending: Vec<u8>,
    dead: bool,
    /// The session's control groups, removed when the session ends.
    _group: Option<super::cgroup::JobCgroup>,
}

impl BwrapSandbox {
    /// Starts a shell in a sandbox set up like `job`. `job.command` is ignored; files in
    /// `control` (a host directory) are visible read-only at [`CONTROL_INSIDE`], and
    /// `control/init.sh`, if present, is sourced when the shell starts.
    pub async fn start_shell(&self, mut job: SandboxJob, control: &Path) -> Result<BwrapShell, PortError> {
        let marker = format!(
            "__gymforge_end_{:x}__",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        );
        job.mounts.push(gymforge_actors::ports::Mount { host: control.to_path_buf(), inside: CONTROL_INSIDE.into(), writable: false });
        job.command = vec!["bash".into(), "--noprofile".into(), "--norc".into()];
        let (mut cmd, group) = self.command(&job).await?;
        cmd.stdin(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            return Err(PortError::Transient("the sandbox's pipes are missing".into()));
        };
        // The wrapper announces on stderr that bwrap finished setting up.
        let mut err = Vec::new();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            let mut chunk = [0u8; 4096];
            loop {
                if err.windows(READY_MARKER.len()).any(|w| w == READY_MARKER) {
                    return true;
                }
                match stderr.read(&mut chunk).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => err.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .unwrap_or(false);
        if !ready {
            let _ = child.start_kill();
            return Err(setup_failure(&String::from_utf8_lossy(&err)));
        }
        let mut shell = BwrapShell {
            child,
            stdin,
            stdout,
            control: control.to_path_buf(),
            marker,
            max_output: self.max_output_bytes,
            pending: Vec::new(),
            dead: false,
            _group: group,
        };
        let init = if control.join("init.sh").is_file() { format!(". {CONTROL_INSIDE}/init.sh") } else { ":".into() };
        let out = shell.run(&format!("exec 2>&1\n{init}"), START_TIMEOUT).await?;
        if out.exit_code != Some(0) {
            return Err(PortError::Permanent(format!("the sandbox shell failed to start: {}", out.stdout.trim())));
        }
        Ok(shell)
    }
}

impl BwrapShell {
    /// Sends one command and collects its output up to the end marker.
    async fn exchange(&mut self, command: &str, timeout: Duration) -> Result<JobOutput, PortError> {
        let file = self.control.join("command.sh");
        std::fs::write(&file, command).map_err(|e| PortError::Transient(format!("cannot write the shell's command file: {e}")))?;
        let line = format!(". {CONTROL_INSIDE}/command.sh < /dev/null\nprintf '\\n%s %s\\n' '{}' \"$?\"\n", self.marker);
        if self.stdin.write_all(line.as_bytes()).await.is_err() {
            self.dead = true;
            return Ok(ended("the shell had exited; a new one starts with the next command", 0.0));
        }
        let start = Instant::now();
        let mut out = std::mem::take(&mut self.pending);
        let mut truncated = false;
        let mut timed_out = false;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((body, status, rest)) = split_marker(&out, &self.marker) {
                self.pending = rest;
                let mut text = String::from_utf8_lossy(&body).into_owned();
                if truncated {
                    text.push_str("\n[output truncated]");
                }
                return Ok(JobOutput {
                    exit_code: Some(status),
                    signal: None,
                    stdout: text,
                    stderr: String::new(),
                    timed_out,
                    output_truncated: truncated,
                    elapsed_secs: start.elapsed().as_secs_f64(),
                });
            }
            let wait_until = if timed_out { deadline + KILL_GRACE } else { deadline };
            match tokio::time::timeout_at(wait_until, self.stdout.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.dead = true;
                    let mut done = ended("the shell exited; a new one starts with the next command", start.elapsed().as_secs_f64());
                    done.stdout = format!("{}\n{}", String::from_utf8_lossy(&out).trim_end(), done.stdout);
                    return Ok(done);
                }
                Ok(Ok(n)) => {
                    out.extend_from_slice(&chunk[..n]);
                    // Keep the first `max_output` bytes, and a tail long enough to find the marker.
                    let keep = self.marker.len() + 32;
                    if out.len() > self.max_output + keep {
                        truncated = true;
                        out.drain(self.max_output..out.len() - keep);
                    }
                }
                Err(_) if !timed_out => {
                    timed_out = true;
                    self.kill_command();
                }
                Err(_) => {
                    // The shell did not come back: it is the stuck one.
                    self.kill();
                    let mut done = ended(
                        "the shell was stuck and has been restarted: its working directory and variables are reset",
                        start.elapsed().as_secs_f64(),
                    );
                    done.timed_out = true;
                    done.stdout = format!("{}\n{}", String::from_utf8_lossy(&out).trim_end(), done.stdout);
                    return Ok(done);
                }
            }
        }
    }

    /// Kills every process of the sandbox except its init and the shell.
    fn kill_command(&self) {
        let Some(root) = self.child.id() else { return };
        let tree = process_tree();
        // bwrap (root) -> bwrap, the namespace's init -> bash, the shell -> the command.
        let Some(init) = tree.get(&root).and_then(|c| c.first()).copied() else { return };
        let shell = tree.get(&init).and_then(|c| c.first()).copied();
        let mut stack: Vec<u32> = tree.get(&init).cloned().unwrap_or_default();
        while let Some(pid) = stack.pop() {
            if let Some(children) = tree.get(&pid) {
                stack.extend(children);
            }
            // A pid read from /proc; at worst it no longer exists.
            if let Some(target) = Pid::from_raw(pid as i32).filter(|_| Some(pid) != shell) {
                let _ = rustix::process::kill_process(target, Signal::KILL);
            }
        }
    }

    fn kill(&mut self) {
        self.dead = true;
        let _ = self.child.start_kill();
    }
}

#[async_trait]
impl Shell for BwrapShell {
    async fn run(&mut self, command: &str, timeout: Duration) -> Result<JobOutput, PortError> {
        if self.dead {
            return Ok(ended("the shell is not running", 0.0));
        }
        self.exchange(command, timeout).await
    }

    fn is_alive(&self) -> bool {
        !self.dead
    }
}

impl Drop for BwrapShell {
    fn drop(&mut self) {
        // bwrap's init dies with it (--die-with-parent), and with the init every process of the
        // sandbox's PID namespace.
        let _ = self.child.start_kill();
    }
}

/// The output of a command that ended the session.
fn ended(note: &str, elapsed: f64) -> JobOutput {
    let signal = Some(Signal::KILL.as_raw());
    JobOutput { exit_code: None, signal, stdout: note.to_string(), elapsed_secs: elapsed, ..JobOutput::default() }
}

/// Splits `out` at the end marker: the command's output (without the newline the marker line
/// adds), its exit status, and whatever followed.
fn split_marker(out: &[u8], marker: &str) -> Option<(Vec<u8>, i32, Vec<u8>)> {
    let at = out.windows(marker.len()).position(|w| w == marker.as_bytes())?;
    let line_end = out[at..].iter().position(|b| *b == b'\n')? + at;
    let status: i32 = std::str::from_utf8(&out[at + marker.len()..line_end]).ok()?.trim().parse().ok()?;
    // printf wrote "\n" before the marker: drop it.
    let body_end = if at > 0 && out[at - 1] == b'\n' { at - 1 } else { at };
    Some((out[..body_end].to_vec(), status, out[line_end + 1..].to_vec()))
}

/// Parent pid -> child pids, from /proc.
fn process_tree() -> HashMap<u32, Vec<u32>> {
    let mut tree: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return tree };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name may hold spaces and parentheses; the fields after the last ')' do not.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
            tree.entry(ppid).or_default().push(pid);
        }
    }
    for children in tree.values_mut() {
        children.sort_unstable();
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_splits_output_status_and_rest() {
        let m = "__end__";
        assert_eq!(split_marker(b"hello\n\n__end__ 0\n", m), Some((b"hello\n".to_vec(), 0, vec![])));
        assert_eq!(split_marker(b"no newline\n__end__ 3\nnext", m), Some((b"no newline".to_vec(), 3, b"next".to_vec())));
        assert_eq!(split_marker(b"partial __end", m), None);
        assert_eq!(split_marker(b"\n__end__ 1", m), None, "the status line is not complete yet");
    }

    #[test]
    fn the_process_tree_holds_this_process() {
        let tree = process_tree();
        let me = std::process::id();
        assert!(tree.values().any(|children| children.contains(&me)));
    }
}
