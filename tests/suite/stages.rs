//! The topic and dataset stages, one unit at a time, against the simulated teacher and the
//! embedded Hub mirror on loopback (the adapters a run uses), for the drop reasons a whole run
//! seldom reaches: `near_duplicate`, `no_verified_dataset`, `llm_unparseable`, and a task the
//! debug loop cannot repair.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gymforge::config::{Config, PYTHON_REQUIREMENTS};
use gymforge::export::OutputDir;
use gymforge::gateway::Source;
use gymforge::hub::mirror_client;
use gymforge::sandbox::{BwrapSandbox, PythonEnv};
use gymforge::store::SqliteStore;
use gymforge_actors::model::{Outcome, Stage, StageOutput, StageResult, TaskBundle, TopicIdea, Unit, UnitKind};
use gymforge_actors::{Pipeline, Progress};
use gymforge_sim::mirror::HubMirror;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A pipeline over the simulated teacher (with `config`'s faults), the mirror (rejecting
/// datasets over `max_bytes`) and a fresh store in `dir`.
async fn pipeline(config: &Config, max_bytes: u64, dir: &Path) -> Pipeline {
    let python = PythonEnv::ensure(&config.sandbox, PYTHON_REQUIREMENTS, &|_| {}).expect("the sandbox's Python environment");
    let root =
        HubMirror::ensure_built(&gymforge::run::mirror_cache_dir(config), &python.python(), &|_| {}).await.expect("the Hub mirror builds");
    let (addr, _server) = HubMirror::serve(root, loopback()).await.unwrap();
    let hub = mirror_client(&format!("http://{addr}"), max_bytes, Duration::from_secs(30)).unwrap();
    let (llm, _) = gymforge::run::gateway(config, Source::Live { record: None }, 0.0, loopback()).await.unwrap();
    let store = Arc::new(SqliteStore::open(&dir.join("state.db")).unwrap());
    Pipeline {
        llm: Arc::new(llm),
        hub: Arc::new(hub),
        sandbox: Arc::new(BwrapSandbox::new(&config.sandbox, python).unwrap()),
        store: store.clone(),
        outputs: Arc::new(OutputDir::new(dir.join("out"))),
        telemetry: Arc::new(gymforge::telemetry::units::UnitTraces::new("stages-test".into(), store)),
        logic: Arc::new(gymforge_actors::PipelineStages),
        settings: gymforge::run::settings(config, dir.join("work")),
        prompts: gymforge::run::prompts(),
        taxonomy: gymforge::run::taxonomy(),
        ideas: Default::default(),
        progress: tokio::sync::watch::channel(Progress::default()).0,
    }
}

/// The same pipeline over a fresh, empty store.
fn with_store(p: &Pipeline, dir: &Path) -> Pipeline {
    p.with_store(Arc::new(SqliteStore::open(&dir.join("state.db")).unwrap()))
}

fn task_unit(seq: u64, stage: Stage) -> Unit {
    Unit::pending(format!("t{seq:06}"), UnitKind::Task, seq, None, stage)
}

/// Stores `idea` as the topic result of an earlier unit.
async fn store_idea(p: &Pipeline, seq: u64, idea: &TopicIdea) {
    let unit = task_unit(seq, Stage::Topic);
    p.store.insert_unit(&unit).await.unwrap();
    p.store.complete_stage(&unit.id, &idea.clone().into(), Some(Stage::Dataset)).await.unwrap();
}

fn advanced(outcome: Outcome) -> StageResult {
    match outcome {
        Outcome::Advance(v) => v,
        other => panic!("expected the unit to advance: {other:?}"),
    }
}

fn dropped(outcome: Outcome) -> (String, String) {
    match outcome {
        Outcome::Drop { reason, detail } => (reason.to_string(), detail),
        other => panic!("expected the unit to be dropped: {other:?}"),
    }
}

/// The teacher's idea for unit 1 depends only on the titles taken before it. An earlier idea
/// with another title and other text lets it through; an earlier idea with another title but
/// the same text (a model repeating itself under a new name) is rejected as a near duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_idea_text_is_a_near_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::embedded();
    let p = pipeline(&config, config.hub.max_dataset_bytes, &tmp.path().join("a")).await;
    let earlier = |idea: &str| TopicIdea {
        sample: p.taxonomy.sample(p.settings.seed, 0),
        title: "Soil Moisture Estimation from Satellite Radar".into(),
        idea: idea.into(),
    };
    store_idea(&p, 0, &earlier("Estimate the moisture of agricultural soil from radar backscatter, scored by RMSE on held-out fields."))
        .await;
    let unit = task_unit(1, Stage::Topic);
    let fresh = TopicIdea::from_result(advanced(gymforge_actors::topic::run(&p, &unit).await.unwrap())).unwrap();
    assert_ne!(fresh.title, earlier("").title);

    let q = with_store(&p, &tmp.path().join("b"));
    store_idea(&q, 0, &earlier(&fresh.idea)).await;
    let (reason, detail) = dropped(gymforge_actors::topic::run(&q, &unit).await.unwrap());
    assert_eq!(reason, "near_duplicate", "{detail}");
    assert!(detail.contains(&fresh.title) && detail.contains("Soil Moisture"), "{detail}");
}

/// Every dataset the teacher knows is over the size limit, and its fresh guesses do not exist:
/// after the bounded proposal rounds the unit is dropped, naming each rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_verified_dataset_after_every_proposal_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::embedded();
    let p = pipeline(&config, 100, tmp.path()).await;
    let unit = task_unit(0, Stage::Topic);
    let idea = advanced(gymforge_actors::topic::run(&p, &unit).await.unwrap());
    p.store.insert_unit(&unit).await.unwrap();
    p.store.complete_stage(&unit.id, &idea, Some(Stage::Dataset)).await.unwrap();
    let (reason, detail) = dropped(gymforge_actors::dataset::run(&p, &task_unit(0, Stage::Dataset)).await.unwrap());
    assert_eq!(reason, "no_verified_dataset");
    assert!(detail.contains("(too_large)") && detail.contains("sklearn/"), "{detail}");
    assert!(detail.contains("(not_found)"), "the teacher's last guesses do not exist: {detail}");
}

/// A teacher that answers only prose is re-asked a bounded number of times, then the unit is
/// dropped as unparseable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prose_answers_are_unparseable() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::parse("[sim.faults]\nrate_malformed = 1.0\n", Path::new("malformed.toml")).unwrap();
    let p = pipeline(&config, config.hub.max_dataset_bytes, tmp.path()).await;
    let (reason, _) = dropped(gymforge_actors::topic::run(&p, &task_unit(0, Stage::Topic)).await.unwrap());
    assert_eq!(reason, "llm_unparseable");
}

/// Runs the topic or dataset stage for task unit 0 and commits its result, as the worker does.
async fn advance(p: &Pipeline, stage: Stage, next: Stage) {
    let unit = task_unit(0, stage);
    let outcome = match stage {
        Stage::Topic => gymforge_actors::topic::run(p, &unit).await,
        _ => gymforge_actors::dataset::run(p, &unit).await,
    };
    p.store.complete_stage(&unit.id, &advanced(outcome.unwrap()), Some(next)).await.unwrap();
}

/// A bundle whose baseline only copies the naive sample submission fails a check the teacher
/// cannot repair; after the configured debug rounds the unit is dropped with the reason of its
/// last failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrepaired_bundle_is_dropped_after_its_debug_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::parse("[pipeline]\ndebug_rounds = 2\n\n[sim]\nbuggy_draft_rate = 0.0\n", Path::new("rounds.toml")).unwrap();
    let p = pipeline(&config, config.hub.max_dataset_bytes, tmp.path()).await;
    p.store.insert_unit(&task_unit(0, Stage::Topic)).await.unwrap();
    advance(&p, Stage::Topic, Stage::Dataset).await;
    advance(&p, Stage::Dataset, Stage::Codegen).await;
    let drafted = gymforge_actors::codegen::run(&p, &task_unit(0, Stage::Codegen)).await.unwrap();
    let mut bundle = TaskBundle::from_result(advanced(drafted)).unwrap();
    let baseline = bundle.files.get_mut("baseline.py").unwrap();
    let writes = "submission.to_csv(\"submission.csv\", index=False)";
    assert!(baseline.contains(writes), "{baseline}");
    *baseline = baseline.replace(writes, "__import__(\"shutil\").copy(\"sample_submission.csv\", \"submission.csv\")");
    p.store.complete_stage("t000000", &bundle.into(), Some(Stage::Debug)).await.unwrap();

    let (reason, detail) = dropped(gymforge_actors::debug::run(&p, &task_unit(0, Stage::Debug)).await.unwrap());
    assert_eq!(reason, "baseline_not_better_than_trivial", "{detail}");
    assert!(detail.starts_with("after 2 rounds"), "{detail}");
    assert!(tmp.path().join("work/tasks/t000000/round-2").is_dir() && !tmp.path().join("work/tasks/t000000/round-3").exists());
}
