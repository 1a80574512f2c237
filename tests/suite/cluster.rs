//! Three daemons (separate processes and output directories) on one PostgreSQL database finish
//! one batch together, and it is the batch one process makes alone on SQLite with the same seed:
//! the same accepted tasks and the same trajectories, step by step. The claim history shows
//! every node working, no unit taken from a node that held it, and rollouts running on another
//! node than the one that checked their task; `gymforge export --store` writes the whole batch
//! on a machine that took no part in it. Then the same batch again while nodes are SIGKILLed
//! and restarted and SIGSTOPped past their lease at random moments (the seed is printed): it
//! still ends as the batch one process makes, and a paused node, resumed, commits nothing over
//! the node that took its unit over.

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
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("node{index}.log"))).unwrap();
    let port = crate::daemon::free_port();
    let process = gymforge()
        .arg("daemon")
        .args(BATCH)
        .args(["--store", url, "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(config)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(log)
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

/// The same trajectories as one process makes, step by step, with the same scores; a
/// difference names the trajectory and the first step that differs.
fn same_trajectories(got: &Path, want: &Path, what: &str) {
    let (got, want) = (actions(got), actions(want));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "the same trajectories {what}");
    for (name, steps) in &want {
        let differs = steps.iter().zip(&got[name]).position(|(a, b)| a != b);
        assert!(got[name] == *steps, "{name} {what}: {} steps, expected {}; first difference at {differs:?}", got[name].len(), steps.len());
    }
}

/// Stage results stored so far in a database.
fn stored_results(server: &TestPostgres, db: &str) -> usize {
    let tables = server.psql(db, "SELECT count(*) FROM pg_tables WHERE tablename = 'gymforge_schema'");
    if tables == "0" {
        return 0;
    }
    server.psql(db, "SELECT count(*) FROM stage_results").parse().unwrap_or(0)
}

fn signal(node: &Node, signal: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(&node.process), signal).unwrap();
}

/// The batch's output, written from the store into a directory no node used.
fn export(url: &str, out: &Path) {
    let export = gymforge().args(["export", "--store", url, "--out"]).arg(out).output().unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(String::from_utf8_lossy(&export.stdout).contains("3 tasks and 6 trajectories"), "{export:?}");
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
        same_trajectories(&node.out, &alone, &format!("written by node {i}"));
    }

    // From the store alone, into a directory no node used.
    let exported = dir.path().join("exported");
    export(&url, &exported);
    assert_eq!(accepted_tasks(&exported), want_tasks);
    same_trajectories(&exported, &alone, "exported from the store");
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

    chaos(&server, dir.path(), &config, &alone).await;
}

/// The batch again on a fresh database, with nodes killed, restarted and paused.
async fn chaos(server: &TestPostgres, dir: &Path, config: &Path, alone: &Path) {
    const EVENTS: usize = 4;
    let lease = Duration::from_secs(5);
    server.create_database("chaos");
    let url = server.url("chaos");
    let dir = dir.join("chaos");
    std::fs::create_dir_all(&dir).unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("cluster chaos seed: {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut nodes: Vec<Node> = (0..NODES).map(|i| start_node(&dir, i, &url, config)).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while stored_results(server, "chaos") < 3 {
        assert!(Instant::now() < deadline, "the cluster made no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut paused = Vec::new();
    for event in 0..EVENTS {
        tokio::time::sleep(Duration::from_millis(500 + next() % 2500)).await;
        if server.psql("chaos", "SELECT count(*) FROM units WHERE status = 'pending'") == "0" {
            break;
        }
        // The first event pauses a node that holds work, so that fencing is shown; the others
        // are drawn from the seed.
        let holders =
            server.psql("chaos", "SELECT DISTINCT n.pid FROM units u JOIN nodes n ON n.session = u.claim WHERE u.status = 'pending'");
        let holding: Vec<usize> =
            (0..NODES).filter(|i| holders.lines().any(|pid| pid.trim() == nodes[*i].process.id().to_string())).collect();
        let (pause, index) = match (event, holding.first()) {
            (0, Some(&i)) => (true, i),
            _ => (next() % 2 == 0, (next() % NODES as u64) as usize),
        };
        if pause {
            let session = server.psql("chaos", &format!("SELECT session FROM nodes WHERE pid = {}", nodes[index].process.id()));
            println!("event {event}: SIGSTOP node {index} ({session}) for {} s", (lease * 2).as_secs());
            signal(&nodes[index], rustix::process::Signal::STOP);
            tokio::time::sleep(lease * 2).await;
            signal(&nodes[index], rustix::process::Signal::CONT);
            if paused.is_empty() {
                // Its work in flight ends and is refused: the lease lapsed during the pause.
                let log = dir.join(format!("node{index}.log"));
                let deadline = Instant::now() + Duration::from_secs(300);
                while !std::fs::read_to_string(&log).unwrap().contains("lease lost") {
                    assert!(Instant::now() < deadline, "the paused node never met its lost lease");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            paused.push(session);
        } else {
            println!("event {event}: SIGKILL node {index}, then restart it");
            nodes[index].process.kill().unwrap();
            nodes[index].process.wait().unwrap();
            tokio::time::sleep(Duration::from_millis(next() % 2000)).await;
            nodes[index] = start_node(&dir, index, &url, config);
        }
    }
    wait_finished(&mut nodes, &dir).await;

    let exported = dir.join("exported");
    export(&url, &exported);
    assert_eq!(accepted_tasks(&exported), accepted_tasks(alone), "the same accepted tasks despite the chaos");
    same_trajectories(&exported, alone, "despite the chaos");
    let sft = |out: &Path| std::fs::read_to_string(out.join("sft/train.jsonl")).unwrap();
    assert_eq!(sft(&exported), sft(alone), "the same SFT data despite the chaos");

    // A claim went to another session only once the one before it was given back or had
    // expired (then the history names whom it was taken from).
    let claims = claims(server, "chaos");
    for ((unit, stage), held) in &claims {
        for pair in held.windows(2) {
            let (before, after) = (&pair[0].0, &pair[1]);
            assert!(after.1.is_empty() || after.1 == *before, "{unit} at {stage}: {held:?}");
        }
    }
    let taken = server.psql("chaos", "SELECT count(*) FROM claims WHERE took_over_from IS NOT NULL");
    println!("leases taken over: {taken}");
    // The node paused first held work past its lease, and the others took it over.
    if let Some(session) = paused.first() {
        let taken_from: usize =
            server.psql("chaos", &format!("SELECT count(*) FROM claims WHERE took_over_from = '{session}'")).parse().unwrap();
        assert!(taken_from > 0, "nothing was taken over from the paused node {session}");
    }
    for node in &mut nodes {
        crate::daemon::sigterm(&node.process);
    }
    for node in &mut nodes {
        node.process.wait().unwrap();
    }
}
