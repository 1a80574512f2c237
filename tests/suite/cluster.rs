//! Three daemons (separate processes and output directories) on one PostgreSQL database finish
//! one batch together, and it is the batch one process makes alone on SQLite with the same seed:
//! the same accepted tasks and the same trajectories, step by step. The claim history shows
//! every node working, no unit taken from a node that held it, and rollouts running on another
//! node than the one that checked their task; `gymforge export --store` writes the whole batch
//! on a machine that took no part in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::postgres::{PASSWORD, TestPostgres};
use crate::common::{Reaped, accepted_tasks, actions};

const BATCH: [&str; 4] = ["--tasks", "3", "--rollouts", "2"];
const NODES: usize = 3;

/// Short leases and quick pulls, so that the test waits little for either.
const CLUSTER_CONFIG: &str = "[store]\nlease_secs = 5\npull_every_ms = 100\n";

fn gymforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gymforge"));
    cmd.env("RUST_LOG", "warn").env("GYMFORGE_STORE_PASSWORD", PASSWORD).env_remove("RUST_BACKTRACE").stdin(Stdio::null());
    cmd
}

struct Node {
    out: PathBuf,
    port: u16,
    process: Reaped,
}

fn start_node(dir: &Path, index: usize, url: &str, config: &Path) -> Node {
    let out = dir.join(format!("node{index}"));
    let port = crate::daemon::free_port();
    let process = gymforge()
        .arg("daemon")
        .args(BATCH)
        .args(["--store", url, "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(config)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("node{index}.log"))).unwrap())
        .spawn()
        .map(Reaped)
        .unwrap();
    Node { out, port, process }
}

/// Waits until every node reports its batch finished.
async fn wait_finished(nodes: &mut [Node], dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let mut finished = 0;
        for (i, node) in nodes.iter_mut().enumerate() {
            if let Some(status) = node.process.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.join(format!("node{i}.log"))).unwrap_or_default();
                panic!("node {i} exited ({status}) before the batch finished:\n{log}");
            }
            if let Some((200, body)) = crate::daemon::get(node.port, "/status").await {
                let status: serde_json::Value = serde_json::from_str(&body).unwrap();
                finished += usize::from(status["phase"] == "finished");
            }
        }
        if finished == nodes.len() {
            return;
        }
        assert!(Instant::now() < deadline, "the cluster did not finish the batch in time");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `(unit, stage) -> [(session, took_over_from)]`, in claim order.
fn claims(server: &TestPostgres, db: &str) -> BTreeMap<(String, String), Vec<(String, String)>> {
    let text =
        server.psql(db, "SELECT unit || '|' || stage || '|' || session || '|' || COALESCE(took_over_from, '') FROM claims ORDER BY id");
    let mut claims: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let parts: Vec<&str> = line.split('|').collect();
        claims.entry((parts[0].into(), parts[1].into())).or_default().push((parts[2].into(), parts[3].into()));
    }
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_on_one_postgres_make_the_batch_one_process_makes() {
    let server = tokio::task::spawn_blocking(TestPostgres::start).await.unwrap();
    server.create_database("cluster");
    let url = server.url("cluster");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, CLUSTER_CONFIG).unwrap();

    let alone = dir.path().join("alone");
    let reference = {
        let alone = alone.clone();
        tokio::task::spawn_blocking(move || gymforge().arg("run").args(BATCH).arg("--out").arg(&alone).output().unwrap())
    };

    let mut nodes: Vec<Node> = (0..NODES).map(|i| start_node(dir.path(), i, &url, &config)).collect();
    wait_finished(&mut nodes, dir.path()).await;
    let reference = reference.await.unwrap();
    assert!(reference.status.success(), "{}", String::from_utf8_lossy(&reference.stderr));

    let want_tasks = accepted_tasks(&alone);
    let want = actions(&alone);
    assert_eq!(want.len(), 6, "three tasks with two trajectories each: {:?}", want.keys());
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(accepted_tasks(&node.out), want_tasks, "node {i} wrote the batch's accepted tasks");
        assert_eq!(actions(&node.out), want, "node {i} wrote every trajectory of the batch, as one process makes them");
    }

    // From the store alone, into a directory no node used.
    let exported = dir.path().join("exported");
    let export = gymforge().args(["export", "--store", &url, "--out"]).arg(&exported).output().unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(String::from_utf8_lossy(&export.stdout).contains("3 tasks and 6 trajectories"), "{export:?}");
    assert_eq!(accepted_tasks(&exported), want_tasks);
    assert_eq!(actions(&exported), want);
    let sft = |out: &Path| std::fs::read_to_string(out.join("sft/train.jsonl")).unwrap();
    assert_eq!(sft(&exported), sft(&alone), "the same SFT data");
    for name in ["mlgym/configs/tasks", "mlgym/configs/datasets"] {
        let list = |out: &Path| std::fs::read_dir(out.join(name)).unwrap().map(|e| e.unwrap().file_name()).collect::<BTreeSet<_>>();
        assert_eq!(list(&exported), list(&alone), "{name}");
    }

    // Each unit's stage was claimed once, by one node, and none was taken over; every node
    // worked; some rollout ran on another node than its task's debug stage.
    let claims = claims(&server, "cluster");
    for ((unit, stage), held) in &claims {
        assert_eq!(held.len(), 1, "{unit} was claimed {} times at {stage}: {held:?}", held.len());
        assert_eq!(held[0].1, "", "{unit} at {stage} was taken over from a live node");
    }
    let sessions: BTreeSet<&String> = claims.values().flatten().map(|(s, _)| s).collect();
    assert_eq!(sessions.len(), NODES, "every node claimed work: {sessions:?}");
    let session_of = |unit: &str, stage: &str| claims.get(&(unit.to_string(), stage.to_string())).map(|h| h[0].0.clone());
    let moved: Vec<&String> = claims
        .keys()
        .filter(|(unit, stage)| stage == "rollout" && session_of(unit, "rollout") != session_of(unit.split('.').next().unwrap(), "debug"))
        .map(|(unit, _)| unit)
        .collect();
    assert!(!moved.is_empty(), "every rollout ran on the node that checked its task: {claims:?}");
    println!("rollouts on another node than their task's debug stage: {moved:?}");
    assert_eq!(server.psql("cluster", "SELECT count(*) FROM artefacts WHERE kind = 'prepared_task'"), "3");

    for node in &mut nodes {
        crate::daemon::sigterm(&node.process);
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        let status = node.process.wait().unwrap();
        assert!(status.success(), "node {i} drained and exited 0: {status}");
    }
    let view = gymforge().args(["cluster", "status", "--json", "--store", &url]).output().unwrap();
    let view: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    let left: Vec<bool> = view["nodes"].as_array().unwrap().iter().map(|n| n["left"].as_bool().unwrap()).collect();
    assert_eq!(left, vec![true; NODES], "every node left the batch cleanly: {view}");
}
