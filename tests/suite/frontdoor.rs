//! The README's commands where users are: a fresh clone in a home directory of mode 700, as
//! root and as an ordinary user, with the default relative `--out`; relative paths; batches
//! doomed from the start stop at once with their reason and a non-zero exit; growing a batch
//! runs every new rollout exactly once; exit statuses.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use gymforge_actors::paths::copy_tree;
use serde_json::Value;

use crate::common;

/// The uid and gid of `nobody`, the ordinary user of these tests.
const USER: u32 = 65534;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn gymforge(bin: &Path, cwd: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd)
        .env("HOME", home)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("HF_ENDPOINT")
        .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn report(out_dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap()
}

/// A directory for one test, reachable by the ordinary user (mode 711) but listing nothing.
fn base_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// Clones this repository into `home/gymforge` (home is made with mode 700).
fn clone_into(home: &Path) -> PathBuf {
    std::fs::create_dir_all(home).unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let clone = home.join("gymforge");
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks", env!("CARGO_MANIFEST_DIR")])
        .arg(&clone)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git clone failed");
    clone
}

/// Checks a finished `run --tasks 1 --rollouts 1` in `out`.
fn assert_one_task_one_trajectory(out: &Output, out_dir: &Path) {
    assert!(out.status.success(), "{}", text(out));
    let r = report(out_dir);
    assert_eq!(r["tasks"]["accepted"], 1, "{}", text(out));
    assert_eq!(r["rollouts"]["kept"], 1, "{}", text(out));
    assert_eq!(common::traj_files(out_dir).len(), 1);
}

#[test]
fn the_readme_run_works_from_a_fresh_clone_in_a_private_home_as_root_and_as_an_ordinary_user() {
    let base = base_dir("gymforge-frontdoor-");
    // The binary is copied where every user may run it (the build tree may not be reachable).
    let bin = base.path().join("gymforge");
    std::fs::copy(env!("CARGO_BIN_EXE_gymforge"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let root_home = base.path().join("root-home");
    let clone = clone_into(&root_home);
    let out = gymforge(&bin, &clone, &root_home).args(["run", "--tasks", "1", "--rollouts", "1"]).output().unwrap();
    assert_one_task_one_trajectory(&out, &clone.join("gymforge-out"));
    let again = gymforge(&bin, &clone, &root_home).args(["run", "--tasks", "1", "--rollouts", "1"]).output().unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already complete"), "{}", text(&again));

    if !is_root() {
        return; // the ordinary user's run needs root to make that user's home
    }
    let user_home = base.path().join("user-home");
    let clone = clone_into(&user_home);
    let status = Command::new("chown").args(["-R", &format!("{USER}:{USER}")]).arg(&user_home).status().unwrap();
    assert!(status.success());
    let mut cmd = gymforge(&bin, &clone, &user_home);
    cmd.args(["run", "--tasks", "1", "--rollouts", "1"]).uid(USER).gid(USER).env("USER", "nobody");
    let out = cmd.output().unwrap();
    assert_one_task_one_trajectory(&out, &clone.join("gymforge-out"));
    // The ordinary user's Python environment and mirror live in that user's home.
    assert!(user_home.join(".local/share/gymforge/pyenv").is_dir());
}

#[test]
fn relative_out_and_relative_check_task_dir_work_from_a_private_directory() {
    let base = tempfile::tempdir().unwrap(); // mode 700, as mktemp -d makes it
    let cwd = base.path().join("work");
    common::fixture_bundle(&cwd.join("bundles"));
    let out =
        gymforge(Path::new(env!("CARGO_BIN_EXE_gymforge")), &cwd, base.path()).args(["check", "task", "bundles/bundle"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["valid"], true, "{}", text(&out));

    let out = gymforge(Path::new(env!("CARGO_BIN_EXE_gymforge")), &cwd, base.path())
        .args(["run", "--tasks", "1", "--rollouts", "1", "--out", "runs/first"])
        .output()
        .unwrap();
    assert_one_task_one_trajectory(&out, &cwd.join("runs/first"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("outputs in {}", cwd.join("runs/first").display())), "{}", text(&out));
}

/// Runs `run --tasks 2 --rollouts 1` (or `args` instead) with `config` (TOML merged over the
/// default) in a fresh directory; returns the output, the output directory and the directory.
fn run_with(config: &str, args: &[&str], envs: &[(&str, &str)]) -> (Output, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config).unwrap();
    let out_dir = dir.path().join("out");
    let out = gymforge(Path::new(env!("CARGO_BIN_EXE_gymforge")), dir.path(), dir.path())
        .envs(envs.iter().copied())
        .args(if args.is_empty() { &["run", "--tasks", "2", "--rollouts", "1"][..] } else { args })
        .arg("--config")
        .arg(&file)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    (out, out_dir, dir)
}

/// A batch doomed from the start: it must fail with status 1 before any unit is worked on.
fn doomed(config: &str) -> (Output, PathBuf, tempfile::TempDir) {
    run_with(config, &[], &[])
}

/// No task unit was claimed: the batch stopped before the pipeline started.
fn assert_nothing_claimed(out_dir: &Path) {
    let store = gymforge::store::SqliteStore::open(&out_dir.join(".gymforge/state.db")).unwrap();
    assert!(store.claim_history().unwrap().is_empty());
}

#[test]
fn a_batch_without_bubblewrap_stops_at_once_with_the_reason() {
    let (out, out_dir, _dir) = doomed("[sandbox]\nbwrap = \"/nonexistent/bwrap\"\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("bubblewrap is not at /nonexistent/bwrap"), "{}", text(&out));
    assert_nothing_claimed(&out_dir);
}

#[test]
fn a_batch_whose_hub_does_not_answer_stops_at_once_with_the_reason() {
    let port = closed_port();
    let (out, out_dir, _dir) =
        doomed(&format!("[hub]\nendpoint = \"http://127.0.0.1:{port}\"\nviewer_endpoint = \"http://127.0.0.1:{port}\"\n"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let last = String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string();
    assert!(last.contains("Hub API at http://127.0.0.1") && last.contains("unreachable"), "{}", text(&out));
    assert_nothing_claimed(&out_dir);
}

#[test]
fn a_batch_whose_endpoint_refuses_the_key_stops_at_once_with_the_reason() {
    let (port, server) = answer_401();
    let config = format!(
        "[llm.routes]\ntopic = \"locked\"\ndataset = \"locked\"\ncodegen = \"locked\"\ndebug = \"locked\"\nrollout = \"locked\"\n\n\
         [llm.endpoints.locked]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"m\"\n\
         api_key_env = \"GYMFORGE_TEST_KEY_THAT_IS_SET\"\nrequests_per_minute = 60\n\
         input_tokens_per_minute = 100000\noutput_tokens_per_minute = 100000\nmax_concurrency = 4\ntimeout_secs = 10\n\
         input_price_per_mtok = 0.0\noutput_price_per_mtok = 0.0\nstructured_output = \"none\"\n"
    );
    let (out, out_dir, _dir) = run_with(&config, &[], &[("GYMFORGE_TEST_KEY_THAT_IS_SET", "sk-wrong")]);
    drop(server);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().last().unwrap_or_default().contains("HTTP 401"), "{}", text(&out));
    assert!(!stderr.contains("sk-wrong"), "the key leaked: {}", text(&out));
    assert_nothing_claimed(&out_dir);
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A loopback server that answers every request with 401; it stops when the handle drops.
fn answer_401() -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::time::Instant::now() < until {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).ok();
                    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok();
                    let mut buf = [0u8; 8192];
                    let _ = conn.read(&mut buf);
                    let body = r#"{"error":{"message":"Incorrect API key provided"}}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    });
    (port, handle)
}

#[test]
fn growing_a_batch_from_two_to_three_rollouts_runs_each_new_rollout_exactly_once() {
    let bin = Path::new(env!("CARGO_BIN_EXE_gymforge"));
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let out = gymforge(bin, dir.path(), dir.path()).args(["run", "--tasks", "1", "--rollouts", "2", "--out"]).arg(&first).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for round in 0..10 {
        let grown = dir.path().join(format!("grown-{round}"));
        copy_tree(&first, &grown).unwrap();
        let out =
            gymforge(bin, dir.path(), dir.path()).args(["run", "--tasks", "1", "--rollouts", "3", "--out"]).arg(&grown).output().unwrap();
        assert!(out.status.success(), "round {round}: {}", text(&out));
        let store = gymforge::store::SqliteStore::open(&grown.join(".gymforge/state.db")).unwrap();
        let claims: Vec<_> = store.claim_history().unwrap().into_iter().filter(|(unit, _, _)| unit.ends_with(".r2")).collect();
        assert_eq!(claims.len(), 1, "round {round}: the new rollout was claimed {} times: {claims:?}", claims.len());
        let r = report(&grown);
        assert_eq!(r["rollouts"]["total"], 3, "round {round}");
        assert_eq!(r["rollouts"]["kept"], 3, "round {round}: {}", text(&out));
        assert_eq!(common::traj_files(&grown).len(), 3, "round {round}");
        let sft_lines = std::fs::read_to_string(grown.join("sft/train.jsonl")).unwrap().lines().count();
        assert_eq!(sft_lines, 3, "round {round}");
        std::fs::remove_dir_all(&grown).unwrap();
    }
    // Asking for fewer than the directory holds says so and removes nothing.
    let out = gymforge(bin, dir.path(), dir.path()).args(["run", "--tasks", "1", "--rollouts", "1", "--out"]).arg(&first).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than the 1 tasks x 1 rollouts asked for"), "{}", text(&out));
    assert_eq!(common::traj_files(&first).len(), 2);
}

#[test]
fn a_batch_that_ends_short_of_its_target_exits_3_and_says_why() {
    // Every generated bundle fails to validate: no task can be accepted.
    let config = "[run]\nmax_topics_per_task = 1\n\n[pipeline]\ndebug_rounds = 1\n\n[sim]\nbuggy_draft_rate = 1.0\n";
    let (out, _out_dir, _dir) = run_with(config, &["run", "--tasks", "1", "--rollouts", "1"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("the batch ended short of its target: 0 of 1 tasks accepted"), "{}", text(&out));
    assert!(last.contains("most frequent drop:"), "{}", text(&out));
    // The summary names the reason and says what happened.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("  debug ") && l.contains(": ")), "{}", text(&out));
}
