//! The store contract, checked against both implementations of the `Store` port: the embedded
//! SQLite file and a real PostgreSQL server this test starts ([`TestPostgres`]). Then what only
//! a shared database does: leases that outlive their length while renewed and pass to another
//! node once expired, commits fenced against a node that lost its lease, migrations run once by
//! nodes starting together, a newer schema refused, and a password that no error shows.

use std::sync::Arc;
use std::time::Duration;

use gymforge::store::{PG_SCHEMA_VERSION, PgSettings, PgStore, PgTarget, SqliteStore};
use gymforge_actors::model::{DropReason, ExportedTask, Stage, StageResult, TopicIdea, TopicSample, Unit, UnitKind, UnitStatus};
use gymforge_actors::ports::{Event, EventKind, Store, Usage};

use crate::common::postgres::{PASSWORD, TestPostgres};

fn unit(id: &str, kind: UnitKind, seq: u64, stage: Stage) -> Unit {
    Unit {
        id: id.to_string(),
        kind,
        seq,
        parent: (kind == UnitKind::Rollout).then(|| id.split('.').next().unwrap().to_string()),
        stage,
        status: UnitStatus::Pending,
        attempts: 0,
        drop_reason: None,
        drop_detail: None,
    }
}

fn topic(title: &str) -> StageResult {
    let sample = TopicSample { domain: "d".into(), task_type: "t".into(), modality: "m".into(), twist: "w".into() };
    TopicIdea { sample, title: title.into(), idea: "an idea".into() }.into()
}

fn exported(id: &str) -> StageResult {
    ExportedTask { task_id: id.into() }.into()
}

async fn find(store: &dyn Store, id: &str) -> Unit {
    store.units().await.unwrap().into_iter().find(|u| u.id == id).unwrap()
}

/// Every rule of the port, in one pass over a fresh store.
async fn keeps_the_contract(store: Arc<dyn Store>) {
    // Units come back tasks first, then by sequence; inserting again changes nothing.
    store.insert_unit(&unit("t2.r0", UnitKind::Rollout, 0, Stage::Rollout)).await.unwrap();
    store.insert_unit(&unit("t9", UnitKind::Task, 9, Stage::Topic)).await.unwrap();
    store.insert_unit(&unit("t2", UnitKind::Task, 2, Stage::Topic)).await.unwrap();
    let mut again = unit("t2", UnitKind::Task, 2, Stage::Export);
    again.attempts = 5;
    store.insert_unit(&again).await.unwrap();
    let ids: Vec<String> = store.units().await.unwrap().into_iter().map(|u| u.id).collect();
    assert_eq!(ids, ["t2", "t9", "t2.r0"]);
    assert_eq!(find(&*store, "t2").await.stage, Stage::Topic);

    // A claim is exclusive until released; every claim is kept.
    assert!(store.claim("t2", Stage::Topic).await.unwrap());
    assert!(!store.claim("t2", Stage::Topic).await.unwrap(), "a held claim is not granted twice");
    assert!(!store.claim("t9", Stage::Dataset).await.unwrap(), "a claim names the unit's stage");
    store.release("t2").await.unwrap();
    assert!(store.claim("t2", Stage::Topic).await.unwrap());

    // Attempts count per stage and release the claim.
    assert_eq!(store.record_attempt("t2").await.unwrap(), 1);
    assert!(store.claim("t2", Stage::Topic).await.unwrap());
    assert_eq!(store.record_attempt("t2").await.unwrap(), 2);
    assert!(store.record_attempt("nope").await.is_err());

    // Completing stores the result and moves the unit on, once.
    assert!(store.claim("t2", Stage::Topic).await.unwrap());
    store.complete_stage("t2", &topic("first"), Some(Stage::Dataset)).await.unwrap();
    let t2 = find(&*store, "t2").await;
    assert_eq!((t2.stage, t2.status, t2.attempts), (Stage::Dataset, UnitStatus::Pending, 0));
    let err = store.complete_stage("t2", &topic("second"), Some(Stage::Dataset)).await.unwrap_err();
    assert!(err.to_string().contains("not pending at topic"), "{err}");
    assert_eq!(store.result("t2", Stage::Topic).await.unwrap(), Some(topic("first")));
    assert!(store.complete_stage("t9", &exported("x"), None).await.is_err(), "a result of another stage is refused");
    assert!(store.complete_stage("nope", &topic("x"), None).await.is_err());
    assert_eq!(store.result("t9", Stage::Topic).await.unwrap(), None);

    // The last stage marks the unit done; results list in unit order.
    assert!(store.claim("t9", Stage::Topic).await.unwrap());
    store.complete_stage("t9", &topic("nine"), None).await.unwrap();
    assert_eq!(find(&*store, "t9").await.status, UnitStatus::Done);
    let results = store.results(Stage::Topic).await.unwrap();
    assert_eq!(results, vec![("t2".to_string(), topic("first")), ("t9".to_string(), topic("nine"))]);

    // Dropping keeps the first verdict and never undoes finished work.
    store.drop_unit("t2", DropReason::LlmRefused, "it said no").await.unwrap();
    store.drop_unit("t2", DropReason::BudgetExhausted, "later").await.unwrap();
    store.drop_unit("t9", DropReason::BudgetExhausted, "too late").await.unwrap();
    let t2 = find(&*store, "t2").await;
    assert_eq!(
        (t2.status, t2.drop_reason, t2.drop_detail.as_deref()),
        (UnitStatus::Dropped, Some(DropReason::LlmRefused), Some("it said no"))
    );
    assert_eq!(find(&*store, "t9").await.status, UnitStatus::Done);
    assert!(store.complete_stage("t2", &exported("x"), None).await.is_err(), "a dropped unit cannot advance");
    assert!(!store.claim("t2", Stage::Dataset).await.unwrap(), "a dropped unit cannot be claimed");

    // Usage sums per unit, stage, endpoint and model; events keep their order; meta overwrites.
    let usage = Usage { calls: 1, input_tokens: 100, output_tokens: 10, cost_usd: 0.5 };
    for _ in 0..3 {
        store.add_usage("t2", Stage::Topic, "sim", "m", &usage).await.unwrap();
    }
    store.add_usage("t2", Stage::Topic, "other", "m", &usage).await.unwrap();
    let rows = store.usage().await.unwrap();
    assert_eq!(rows.len(), 2);
    let sim = rows.iter().find(|r| r.endpoint == "sim").unwrap();
    assert_eq!((sim.usage.calls, sim.usage.input_tokens, sim.usage.output_tokens), (3, 300, 30));
    assert!((sim.usage.cost_usd - 1.5).abs() < 1e-9);
    for (i, kind) in [EventKind::Retry, EventKind::WorkerRestart, EventKind::Retry].into_iter().enumerate() {
        store.add_event(&Event { kind, unit: "t2".into(), stage: Stage::Topic, detail: format!("e{i}") }).await.unwrap();
    }
    let details: Vec<String> = store.events().await.unwrap().into_iter().map(|e| e.detail).collect();
    assert_eq!(details, ["e0", "e1", "e2"]);
    assert_eq!(store.meta("k").await.unwrap(), None);
    store.set_meta("k", "1").await.unwrap();
    store.set_meta("k", "2").await.unwrap();
    assert_eq!(store.meta("k").await.unwrap().as_deref(), Some("2"));

    // Concurrent completions of one stage: exactly one wins.
    store.insert_unit(&unit("t3", UnitKind::Task, 3, Stage::Topic)).await.unwrap();
    assert!(store.claim("t3", Stage::Topic).await.unwrap());
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.complete_stage("t3", &topic(&format!("racer {i}")), Some(Stage::Dataset)).await.is_ok() })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        won += usize::from(racer.await.unwrap());
    }
    assert_eq!(won, 1, "one completion of a stage wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    keeps_the_contract(Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap())).await;
}

fn settings(lease_secs: u64) -> PgSettings {
    PgSettings { lease: Duration::from_secs(lease_secs), slots: Some(2), ..PgSettings::default() }
}

async fn connect(server: &TestPostgres, database: &str, lease_secs: u64) -> PgStore {
    let target = PgTarget::parse(&server.url(database)).unwrap();
    PgStore::connect(&target, Some(PASSWORD), &settings(lease_secs)).await.unwrap()
}

/// One server for every PostgreSQL check, a database each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_contract_leases_fences_and_migrates() {
    let server = tokio::task::spawn_blocking(TestPostgres::start).await.unwrap();

    server.create_database("contract");
    keeps_the_contract(Arc::new(connect(&server, "contract", 30).await)).await;

    // Nodes starting together on an empty database migrate it once.
    server.create_database("shared");
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let target = PgTarget::parse(&server.url("shared")).unwrap();
            tokio::spawn(async move { PgStore::connect(&target, Some(PASSWORD), &settings(2)).await })
        })
        .collect();
    let mut stores = Vec::new();
    for node in nodes {
        stores.push(node.await.unwrap().unwrap());
    }
    assert_eq!(server.psql("shared", "SELECT version FROM gymforge_schema"), PG_SCHEMA_VERSION.to_string());
    let (a, b) = (&stores[0], &stores[1]);
    assert_ne!(a.session(), b.session());

    // A renewed lease outlives its length: another node cannot take the unit.
    a.insert_unit(&unit("t1", UnitKind::Task, 1, Stage::Topic)).await.unwrap();
    assert!(a.claim("t1", Stage::Topic).await.unwrap());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!b.claim("t1", Stage::Topic).await.unwrap(), "a lease its holder renews is not taken over");

    // An expired lease passes to another node, and the old holder's commits are fenced off.
    a.expire_own_leases().await.unwrap();
    assert!(b.claim("t1", Stage::Topic).await.unwrap(), "an expired lease is taken over");
    let view = b.cluster().await.unwrap();
    assert_eq!(view.nodes.len(), 4, "every node registered itself: {view:?}");
    assert!(view.nodes.iter().all(|n| n.alive && n.version == env!("CARGO_PKG_VERSION")), "{view:?}");
    let held: Vec<(bool, i64)> = view.nodes.iter().map(|n| (n.session == b.session(), n.units_in_flight)).filter(|h| h.1 > 0).collect();
    assert_eq!(held, [(true, 1)], "b holds the unit, no other node any: {view:?}");
    assert_eq!((view.in_flight.get("topic"), view.leases_taken_over), (Some(&1), 1), "{view:?}");
    for refused in [
        a.complete_stage("t1", &topic("late"), Some(Stage::Dataset)).await.unwrap_err(),
        a.drop_unit("t1", DropReason::LlmRefused, "late").await.unwrap_err(),
        a.record_attempt("t1").await.unwrap_err(),
    ] {
        assert!(refused.to_string().contains("lease was lost"), "{refused}");
    }
    a.release("t1").await.unwrap();
    b.complete_stage("t1", &topic("taken over"), Some(Stage::Dataset)).await.unwrap();
    assert_eq!(b.result("t1", Stage::Topic).await.unwrap(), Some(topic("taken over")));
    let history: Vec<String> = b.claim_history().await.unwrap().into_iter().map(|(_, _, session)| session).collect();
    assert_eq!(history, [a.session().to_string(), b.session().to_string()]);

    // A lease that lapsed is lost even when no one took the unit over: renewals (every third
    // of the 2 s lease) do not revive it, and its holder cannot commit.
    a.insert_unit(&unit("t5", UnitKind::Task, 5, Stage::Topic)).await.unwrap();
    assert!(a.claim("t5", Stage::Topic).await.unwrap());
    a.expire_own_leases().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = a.complete_stage("t5", &topic("after a pause"), Some(Stage::Dataset)).await.unwrap_err();
    assert!(refused.to_string().contains("the lease expired before the commit"), "{refused}");
    assert!(matches!(refused, gymforge_actors::ports::PortError::LeaseLost(_)), "{refused:?}");
    assert!(a.claim("t5", Stage::Topic).await.unwrap(), "the unit is claimable again");
    a.complete_stage("t5", &topic("claimed again"), Some(Stage::Dataset)).await.unwrap();

    // Three nodes admitting requests to one endpoint as fast as it lets them never pass its
    // requests per minute together (one second's burst aside); a cooldown one node shares
    // pauses the others; the batch's spending is every node's.
    use gymforge::gateway::shared::{Ask, Rates, SharedLimits};
    let rates = Rates { requests_per_minute: 6000, input_tokens_per_minute: 100_000_000, output_tokens_per_minute: 100_000_000 };
    let ask = Ask { input_tokens: 100, output_tokens: 10 };
    let started = std::time::Instant::now();
    let admitters: Vec<_> = stores[..3]
        .iter()
        .map(|store| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut admitted = 0u32;
                while started.elapsed() < Duration::from_secs(2) {
                    match store.admit("e", &rates, ask).await.unwrap() {
                        None => admitted += 1,
                        Some(wait) => tokio::time::sleep(wait).await,
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for admitter in admitters {
        admitted += admitter.await.unwrap();
    }
    let allowed = 100.0 * started.elapsed().as_secs_f64() + f64::from(rates.request_burst());
    assert!(f64::from(admitted) <= allowed + 1.0, "{admitted} requests admitted where the limit allows {allowed:.0}");
    assert!(admitted > 0);
    a.cool_down("e", Duration::from_secs(3)).await.unwrap();
    let wait = b.admit("e", &rates, ask).await.unwrap().expect("the endpoint is cooling down for every node");
    assert!(wait > Duration::from_secs(2), "{wait:?}");
    let usage = Usage { calls: 1, input_tokens: 1, output_tokens: 1, cost_usd: 0.25 };
    a.add_usage("t1", Stage::Topic, "e", "m", &usage).await.unwrap();
    b.add_usage("t5", Stage::Topic, "e", "m", &usage).await.unwrap();
    assert!((a.spent_usd().await.unwrap() - 0.5).abs() < 1e-9, "every node's spending counts");
    drop(stores);

    // A database migrated by a newer gymforge is refused, saying so.
    server.psql("shared", &format!("UPDATE gymforge_schema SET version = {}", PG_SCHEMA_VERSION + 1));
    let target = PgTarget::parse(&server.url("shared")).unwrap();
    let err = format!("{:#}", PgStore::connect(&target, Some(PASSWORD), &settings(2)).await.unwrap_err());
    assert!(err.contains("newer than this gymforge understands"), "{err}");

    // A wrong password is an error that names the server and shows no password.
    let wrong = "not-the-password-2718";
    let err = format!("{:#}", PgStore::connect(&target, Some(wrong), &settings(2)).await.unwrap_err());
    assert!(err.contains(&target.display()) && err.contains("password"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(PASSWORD), "{err}");
}

/// `gymforge run --store postgres://...` makes its batch in the database: the units, their
/// results and claims are there, not in a SQLite file; a second run on the same store finds
/// the batch complete; the password reaches neither the output nor any file written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_on_a_postgres_store_and_resumes_from_it() {
    let server = tokio::task::spawn_blocking(TestPostgres::start).await.unwrap();
    server.create_database("batch");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let url = server.url("batch");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gymforge"))
            .args(["run", "--tasks", "1", "--rollouts", "1", "--store", &url, "--out"])
            .arg(&out)
            .env("GYMFORGE_STORE_PASSWORD", PASSWORD)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let first = tokio::task::block_in_place(run);
    let said = format!("{}{}", String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&first.stderr));
    assert!(first.status.success(), "{said}");
    assert!(said.contains("the PostgreSQL database postgres@127.0.0.1"), "the run names its store: {said}");
    assert!(!said.contains(PASSWORD), "the password is not printed");
    assert!(!out.join(".gymforge/state.db").exists(), "no SQLite file beside a PostgreSQL store");
    assert_eq!(crate::common::accepted_tasks(&out).as_array().unwrap().len(), 1);
    assert_eq!(crate::common::traj_files(&out).len(), 1);

    assert_eq!(server.psql("batch", "SELECT count(*) FROM units WHERE status = 'done'"), "2", "the task and its rollout");
    let stages = server.psql("batch", "SELECT string_agg(stage, ',' ORDER BY stage) FROM stage_results WHERE unit NOT LIKE '%.r%'");
    assert_eq!(stages, "codegen,dataset,debug,export,topic");
    let claims: u32 = server.psql("batch", "SELECT count(*) FROM claims").parse().unwrap();
    assert!(claims >= 6, "each stage of each unit was claimed: {claims}");
    assert_eq!(server.psql("batch", "SELECT count(*) FROM units WHERE claim IS NOT NULL"), "0", "no claim outlives the batch");

    let second = tokio::task::block_in_place(run);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(server.psql("batch", "SELECT count(*) FROM claims"), claims.to_string(), "the complete batch ran nothing again");

    // The cluster's state, read from outside the batch.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_gymforge"))
        .args(["cluster", "status", "--json", "--store", &url])
        .env("GYMFORGE_STORE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let view: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((view["nodes"].as_array().unwrap().len(), view["done"].as_i64()), (2, Some(2)), "{view}");
    assert_eq!(view["nodes"][0]["slots"], 2, "{view}");
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_gymforge"))
        .args(["cluster", "status", "--store", &url])
        .env("GYMFORGE_STORE_PASSWORD", "wrong-password-1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&table.stderr);
    assert!(!table.status.success() && said.contains("password") && !said.contains("wrong-password-1"), "{said}");

    // The store bench refuses a database holding a batch, and leaves an empty one empty.
    let bench = |url: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gymforge"))
            .args(["bench", "store", "--claimers", "4", "--seconds", "1", "--json", "--store", url])
            .env("GYMFORGE_STORE_PASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let refused = bench(&url);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("holds a batch"));
    server.create_database("bench");
    let measured = bench(&server.url("bench"));
    let report: serde_json::Value = serde_json::from_slice(&measured.stdout).unwrap_or_else(|_| panic!("{measured:?}"));
    assert!(report["cycles_per_second"].as_f64().unwrap() > 0.0 && report["units_removed"].as_u64().unwrap() > 0, "{report}");
    assert!(report["ratio_to_bound"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(server.psql("bench", "SELECT count(*) FROM units"), "0", "the bench removed its units");

    for file in crate::common::files_under(&out) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(PASSWORD), "{} holds the password", file.display());
    }
}

/// A daemon on a PostgreSQL store shows the cluster in `/status`: itself among the registered
/// nodes, alive, with the slots it offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_shows_the_cluster_in_its_status() {
    let server = tokio::task::spawn_blocking(TestPostgres::start).await.unwrap();
    server.create_database("daemon");
    let dir = tempfile::tempdir().unwrap();
    let port = crate::daemon::free_port();
    let mut daemon = crate::common::Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_gymforge"))
            .args(["daemon", "--tasks", "1", "--rollouts", "1", "--listen", &format!("127.0.0.1:{port}"), "--store", &server.url("daemon")])
            .arg("--out")
            .arg(dir.path().join("out"))
            .env("GYMFORGE_STORE_PASSWORD", PASSWORD)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let status: serde_json::Value = loop {
        assert!(std::time::Instant::now() < deadline, "no cluster in /status");
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited early");
        if let Some((200, body)) = crate::daemon::get(port, "/status").await {
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            if status["cluster"].is_object() {
                break status;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let node = status["node"].as_str().unwrap();
    let nodes = status["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{status}");
    assert_eq!((nodes[0]["session"].as_str(), nodes[0]["alive"].as_bool(), nodes[0]["slots"].as_i64()), (Some(node), Some(true), Some(2)));
    assert!(!status.to_string().contains(PASSWORD));
    crate::daemon::sigterm(&daemon);
    assert!(tokio::task::block_in_place(|| daemon.wait()).unwrap().success());
}
