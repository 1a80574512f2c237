//! What the supervisor's tests and bench share: a scripted stage logic, results of every
//! stage, the ports the scripted stages never reach, and a pipeline over the in-memory store.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gymforge_actors::memory::MemoryStore;
use gymforge_actors::model::{
    AcceptedTask, DatasetChoice, DatasetMeta, Direction, DropReason, ExportedTask, ModelStats, RolloutRecord, StageResult, StagedFile,
    TaskBundle, TopicIdea, TopicSample, Trajectory, TrajectoryInfo, Verdict,
};
use gymforge_actors::pipeline::{AgentSettings, Faults, StageLogic};
use gymforge_actors::ports::{
    ChatReply, ChatRequest, DatasetCheck, FinalInputs, Hub, JobOutput, Llm, Outputs, PortError, Sandbox, SandboxJob, Shell, Store,
    Telemetry,
};
use gymforge_actors::{Outcome, Pipeline, Progress, Prompts, Settings, Stage, Taxonomy, Unit, UnitKind, UnitStatus};

// ---------------------------------------------------------------------------------------------
// The script

/// What the scripted stage does with a unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Advance,
    Drop(DropReason),
    Transient,
    Panic,
    /// Never returns (until the supervisor kills the worker).
    Hang,
}

pub type Decide = dyn Fn(Stage, &Unit) -> Act + Send + Sync;

/// A stage logic that takes `latency` (virtual) per unit and does what `decide` says.
pub struct Script {
    decide: Box<Decide>,
    latency: Duration,
    /// Task units that entered the topic stage and have not ended yet, and the most at once.
    open: Mutex<HashSet<String>>,
    pub most_open: AtomicUsize,
}

impl Script {
    pub fn new(latency: Duration, decide: impl Fn(Stage, &Unit) -> Act + Send + Sync + 'static) -> Arc<Script> {
        Arc::new(Script { decide: Box::new(decide), latency, open: Mutex::new(HashSet::new()), most_open: AtomicUsize::new(0) })
    }

    fn ended(&self, unit: &Unit) {
        self.open.lock().unwrap().remove(&unit.id);
    }
}

#[async_trait]
impl StageLogic for Script {
    async fn run(&self, _: &Pipeline, stage: Stage, unit: &Unit) -> Result<Outcome, PortError> {
        if stage == Stage::Topic {
            let mut open = self.open.lock().unwrap();
            open.insert(unit.id.clone());
            self.most_open.fetch_max(open.len(), Ordering::Relaxed);
        }
        tokio::time::sleep(self.latency).await;
        match (self.decide)(stage, unit) {
            Act::Advance => {
                if stage == Stage::Export {
                    self.ended(unit);
                }
                Ok(Outcome::Advance(result_of(stage, unit)))
            }
            Act::Drop(reason) => {
                self.ended(unit);
                Ok(Outcome::Drop { reason, detail: format!("scripted drop at {stage}") })
            }
            Act::Transient => Err(PortError::Transient(format!("scripted transient failure at {stage}"))),
            Act::Panic => panic!("scripted panic at {stage} on {}", unit.id),
            Act::Hang => {
                tokio::time::sleep(Duration::from_secs(1_000_000)).await;
                unreachable!("the supervisor kills a stuck worker long before")
            }
        }
    }
}

pub fn meta() -> DatasetMeta {
    DatasetMeta {
        id: "sklearn/iris".into(),
        revision: "0".repeat(40),
        config: "default".into(),
        splits: vec!["train".into()],
        features: vec![],
        num_rows: BTreeMap::new(),
        num_bytes_parquet: 0,
        description: String::new(),
        parquet_files: vec![],
    }
}

pub fn idea(unit: &Unit) -> TopicIdea {
    let sample = TopicSample { domain: "d".into(), task_type: "t".into(), modality: "m".into(), twist: "w".into() };
    TopicIdea { sample, title: format!("idea of {}", unit.id), idea: String::new() }
}

pub fn bundle() -> TaskBundle {
    TaskBundle {
        name: "task".into(),
        title: String::new(),
        description: String::new(),
        dataset_description: String::new(),
        priority_metric: "accuracy".into(),
        direction: Direction::Maximize,
        metrics: vec!["accuracy".into()],
        target_column: "y".into(),
        training_timeout: 60,
        files: BTreeMap::new(),
    }
}

/// A result of `stage` for `unit` (the supervisor only carries it to the store).
pub fn result_of(stage: Stage, unit: &Unit) -> StageResult {
    let staged = vec![StagedFile { path: "train.parquet".into(), sha256: String::new(), bytes: 0 }];
    match stage {
        Stage::Topic => idea(unit).into(),
        Stage::Dataset => DatasetChoice { meta: meta(), rejected: vec![], staged }.into(),
        Stage::Codegen => bundle().into(),
        Stage::Debug => AcceptedTask {
            task_id: format!("task{}", unit.id),
            unit: unit.id.clone(),
            topic: idea(unit),
            dataset: meta(),
            bundle: bundle(),
            baseline_scores: BTreeMap::new(),
            rounds: 1,
        }
        .into(),
        Stage::Export => ExportedTask { task_id: format!("task{}", unit.id) }.into(),
        Stage::Rollout => RolloutRecord {
            unit: unit.id.clone(),
            task_id: format!("task{}", unit.parent.clone().unwrap_or_default()),
            run_index: 0,
            run_name: String::new(),
            model: "m".into(),
            baseline_scores: BTreeMap::new(),
            trajectory: Trajectory {
                environment: "mlgym_main".into(),
                trajectory: vec![],
                history: vec![],
                info: TrajectoryInfo {
                    model_stats: ModelStats::default(),
                    exit_status: "submitted".into(),
                    submission: None,
                    score: vec![],
                    summarizer: serde_json::json!({}),
                },
            },
        }
        .into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The other ports: never reached by the scripted stages

pub struct Unreachable;

pub fn unreachable_port<T>() -> Result<T, PortError> {
    Err(PortError::Permanent("not part of this test".into()))
}

#[async_trait]
impl Llm for Unreachable {
    async fn chat(&self, _: Stage, _: ChatRequest) -> Result<ChatReply, PortError> {
        unreachable_port()
    }
    fn model_for(&self, _: Stage) -> String {
        "none".into()
    }
}

#[async_trait]
impl Hub for Unreachable {
    async fn verify(&self, _: &str) -> Result<DatasetCheck, PortError> {
        unreachable_port()
    }
    async fn download(&self, _: &DatasetMeta, _: &Path) -> Result<Vec<StagedFile>, PortError> {
        unreachable_port()
    }
}

#[async_trait]
impl Sandbox for Unreachable {
    async fn run(&self, _: SandboxJob) -> Result<JobOutput, PortError> {
        unreachable_port()
    }
    async fn shell(&self, _: SandboxJob, _: &Path) -> Result<Box<dyn Shell>, PortError> {
        unreachable_port()
    }
}

/// Counts the final exports; writes nothing.
#[derive(Default)]
pub struct CountingOutputs {
    pub finalized: AtomicUsize,
}

impl Outputs for CountingOutputs {
    fn write_task(&self, _: &AcceptedTask, _: &Path) -> Result<(), PortError> {
        Ok(())
    }
    fn write_rollout(&self, _: &RolloutRecord) -> Result<(), PortError> {
        Ok(())
    }
    fn finalize(&self, _: &FinalInputs) -> Result<(), PortError> {
        self.finalized.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(Default)]
pub struct CountingTelemetry {
    pub restarts: AtomicUsize,
}

impl Telemetry for CountingTelemetry {
    fn stage_span(&self, _: &Unit, _: Stage) -> tracing::Span {
        tracing::Span::none()
    }
    fn stage_ended(&self, _: &Unit, _: Stage, _: &Verdict, _: Duration) {}
    fn worker_restarted(&self, _: Stage) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The harness

pub struct Run {
    pub store: Arc<MemoryStore>,
    pub outputs: Arc<CountingOutputs>,
    pub telemetry: Arc<CountingTelemetry>,
    pub progress: tokio::sync::watch::Receiver<Progress>,
    pub pipeline: Arc<Pipeline>,
}

pub fn settings(tasks: u32, rollouts: u32) -> Settings {
    Settings {
        seed: 7,
        tasks,
        rollouts,
        max_topics: 50,
        max_attempts: 3,
        max_restarts: 20,
        workers: vec![
            (Stage::Topic, 2),
            (Stage::Dataset, 1),
            (Stage::Codegen, 1),
            (Stage::Debug, 1),
            (Stage::Export, 1),
            (Stage::Rollout, 3),
        ],
        debug_rounds: 2,
        prepare_timeout: Duration::from_secs(60),
        baseline_headroom: 0.0,
        agent: AgentSettings {
            max_steps: 10,
            short_timeout: Duration::from_secs(10),
            temperature: 0.0,
            top_p: 1.0,
            cost_limit: 1.0,
            max_tokens: 100,
            keep_observations: 5,
            context_window: 8192,
            wall_clock: Duration::from_secs(600),
            command_files: vec![],
        },
        faults: Faults::default(),
        export_every: Duration::from_secs(60),
        work_root: PathBuf::from("/nonexistent/gymforge-supervisor-test"),
        artefact_limit_bytes: u64::MAX,
        pull_every: Duration::from_millis(500),
    }
}

pub fn pipeline(settings: Settings, logic: Arc<Script>) -> Run {
    let store = Arc::new(MemoryStore::new());
    let outputs = Arc::new(CountingOutputs::default());
    let telemetry = Arc::new(CountingTelemetry::default());
    let (tx, progress) = tokio::sync::watch::channel(Progress::default());
    let text = String::new;
    let pipeline = Arc::new(Pipeline {
        llm: Arc::new(Unreachable),
        hub: Arc::new(Unreachable),
        sandbox: Arc::new(Unreachable),
        store: store.clone(),
        outputs: outputs.clone(),
        telemetry: telemetry.clone(),
        logic,
        settings,
        prompts: Prompts {
            topic_system: text(),
            topic_user: text(),
            dataset_system: text(),
            dataset_user: text(),
            codegen_system: text(),
            codegen_user: text(),
            debug_user: text(),
            agent_system: text(),
            agent_task: text(),
            agent_next: text(),
        },
        taxonomy: Taxonomy { domain: vec![], task_type: vec![], modality: vec![], twist: vec![], checkpoints: Default::default() },
        ideas: Default::default(),
        progress: tx,
    });
    Run { store, outputs, telemetry, progress, pipeline }
}

impl Run {
    pub async fn units(&self) -> Vec<Unit> {
        self.store.units().await.unwrap()
    }

    pub async fn count(&self, kind: UnitKind, status: UnitStatus) -> usize {
        self.units().await.iter().filter(|u| u.kind == kind && u.status == status).count()
    }
}
