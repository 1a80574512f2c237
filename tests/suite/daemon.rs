//! `gymforge daemon` as a user runs it: every endpoint read over HTTP, `/metrics` checked
//! against the Prometheus text format, a second daemon on the same directory refused, SIGTERM
//! mid-work drains and exits 0, and a restart finishes the batch with nothing lost.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn gymforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gymforge"));
    cmd.env("RUST_LOG", "warn").env_remove("RUST_BACKTRACE").stdin(Stdio::null());
    cmd
}

/// Asks the daemon to drain and exit, as a service manager does.
pub(crate) fn sigterm(daemon: &std::process::Child) {
    let pid = rustix::process::Pid::from_child(daemon);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `(status code, body)` of a GET on loopback.
pub(crate) async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let resp = gymforge::http::client_builder().build().unwrap().get(format!("http://127.0.0.1:{port}{path}")).send().await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

/// Checks a Prometheus text exposition: every sample belongs to a declared family, names and
/// labels are well formed, values are numbers. Returns the number of samples.
fn check_prometheus_text(text: &str) -> usize {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
    };
    let mut declared = BTreeSet::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name_ok(name), "{line}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            assert!(declared.insert(name.to_string()), "family declared twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "{line}");
        assert!(declared.contains(name), "sample without a TYPE line: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).unwrap_or_else(|| panic!("bad labels: {line}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (key, val) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(name_ok(key), "{line}");
                assert!(!val.trim_end_matches('"').contains('\n'));
            }
        }
        value.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {line}"));
        samples += 1;
    }
    samples
}

fn units_by_status(out: &Path) -> Vec<(String, String)> {
    let store = gymforge::store::SqliteStore::open(&out.join(".gymforge/state.db")).unwrap();
    store.units().unwrap().into_iter().map(|u| (u.id, format!("{:?}", u.status))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_its_status_refuses_a_twin_drains_on_sigterm_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let port = free_port();
    // The daemon's own lines are info events; its log goes to a file (a pipe read only at the
    // end could fill up).
    let log = dir.path().join("daemon.log");
    let mut daemon = gymforge()
        .args(["daemon", "--tasks", "2", "--rollouts", "1", "--listen", &format!("127.0.0.1:{port}"), "--out"])
        .arg(&out)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(crate::common::Reaped)
        .unwrap();

    // Wait for real work: a topic passed and the daemon ready.
    let deadline = Instant::now() + Duration::from_secs(900);
    let status: Value = loop {
        assert!(Instant::now() < deadline, "the daemon made no progress");
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited early");
        if let Some((200, body)) = get(port, "/status").await {
            let status: Value = serde_json::from_str(&body).unwrap();
            if status["stages"]["topic"]["passed"].as_u64().unwrap_or(0) >= 1 {
                break status;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(status["phase"], "running");
    assert_eq!(status["target_tasks"], 2);
    assert!(status["llm"]["endpoints"]["sim"]["requests_sent"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(get(port, "/healthz").await.unwrap(), (200, "ok\n".to_string()));
    let (code, body) = get(port, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = get(port, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(check_prometheus_text(&metrics) > 20, "{metrics}");
    assert!(metrics.contains("gymforge_llm_requests_total{endpoint=\"sim\"}"), "{metrics}");

    // A second daemon on the same directory refuses to start and leaves the first alone.
    let twin =
        gymforge().args(["daemon", "--tasks", "2", "--rollouts", "1", "--listen", "127.0.0.1:0", "--out"]).arg(&out).output().unwrap();
    assert_eq!(twin.status.code(), Some(1));
    let said = String::from_utf8_lossy(&twin.stderr);
    assert!(said.contains("another gymforge process"), "{said}");
    assert!(daemon.try_wait().unwrap().is_none());

    // SIGTERM mid-work: drain, exit 0.
    sigterm(&daemon);
    let exited = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(exited.success(), "{exited:?}\n{stderr}");
    // One format: every line of the daemon's own is a log event with its level.
    let own = ["serving status on http://", "stopping; units in flight", "drained; pending work", "the drain deadline passed"];
    let lines: Vec<&str> = stderr.lines().filter(|l| own.iter().any(|o| l.contains(o))).collect();
    assert!(lines.iter().any(|l| l.contains(" INFO ") && l.contains("serving status on http://")), "{stderr}");
    assert!(lines.iter().any(|l| l.contains("drained") || l.contains("drain deadline")), "{stderr}");
    assert!(lines.iter().all(|l| l.contains(" INFO ") || l.contains(" WARN ")), "{lines:#?}");
    let before = units_by_status(&out);
    assert!(before.iter().any(|(_, s)| s == "Pending"), "stopped mid-work: {before:?}");

    // A restart finishes the batch: every unit from before is still there, nothing duplicated.
    let rerun = gymforge().args(["run", "--tasks", "2", "--rollouts", "1", "--out"]).arg(&out).output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    let after = units_by_status(&out);
    for (id, _) in &before {
        assert!(after.iter().any(|(a, _)| a == id), "{id} was lost");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["tasks"]["accepted"], 2, "{report}");
    assert_eq!(report["rollouts"]["total"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_target_the_daemon_keeps_a_bounded_window_rewrites_its_outputs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("forever.toml");
    std::fs::write(&config, "[daemon]\nexport_every_secs = 1\n").unwrap();
    let port = free_port();
    let mut daemon = gymforge()
        .args([
            "daemon",
            "--tasks",
            "0",
            "--rollouts",
            "1",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(crate::common::Reaped)
        .unwrap();

    // Task units in progress never exceed twice the task-stage workers (1+2+2+2+1 by default).
    let window = 2 * (1 + 2 + 2 + 2 + 1);
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        assert!(Instant::now() < deadline, "no task was accepted and exported");
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited on its own");
        let units = units_by_status(&out);
        let in_progress = units.iter().filter(|(id, s)| !id.contains(".r") && s == "Pending").count();
        assert!(in_progress <= window, "{in_progress} task units in progress: {units:?}");
        if let Some((200, body)) = get(port, "/status").await {
            let status: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(status["target_tasks"], 0);
            // The outputs are rewritten while the run goes on.
            let listed = std::fs::read_to_string(out.join("mlgym/tasks.json")).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
            // tasks.json is written before the SFT file and report.json: wait for all three.
            let written = out.join("report.json").is_file() && out.join("sft/train.jsonl").is_file();
            if status["accepted_tasks"].as_u64().unwrap_or(0) >= 1 && listed.is_some_and(|l| !l.as_array().unwrap().is_empty()) && written {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    sigterm(&daemon);
    let exited = daemon.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(exited.success(), "{exited:?}\n{stderr}");
}
