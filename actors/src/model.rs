//! The pipeline's domain types: what one unit of work is, and what each stage produces.
//!
//! Every stage result ([`StageResult`]) is serialised to JSON at the store's edge and stored
//! before the next stage sees it, so these types are also the store's payload format. Keep them
//! plain data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Identifier of a unit of work (`t0003` for a task unit, `t0003.r1` for one of its rollouts).
pub type UnitId = String;

/// The stages of the pipeline, in the order a task unit moves through them.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Topic,
    Dataset,
    Codegen,
    Debug,
    Export,
    Rollout,
}

impl Stage {
    pub const ALL: [Stage; 6] = [Stage::Topic, Stage::Dataset, Stage::Codegen, Stage::Debug, Stage::Export, Stage::Rollout];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Topic => "topic",
            Stage::Dataset => "dataset",
            Stage::Codegen => "codegen",
            Stage::Debug => "debug",
            Stage::Export => "export",
            Stage::Rollout => "rollout",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == s)
    }

    /// The stage a task unit enters after this one; `None` after export (the unit then fans out
    /// into rollout units) and after rollout.
    pub fn next(self) -> Option<Stage> {
        match self {
            Stage::Topic => Some(Stage::Dataset),
            Stage::Dataset => Some(Stage::Codegen),
            Stage::Codegen => Some(Stage::Debug),
            Stage::Debug => Some(Stage::Export),
            Stage::Export | Stage::Rollout => None,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a unit was dropped. Each has a stable name (`as_str`, the serde name): report.json's
/// funnel, metrics, traces and the store use it, so a name never changes once shipped.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    // The topic stage.
    /// The idea is too close to an earlier one.
    NearDuplicate,
    // The dataset stage.
    /// No proposal passed verification against the Hub.
    NoVerifiedDataset,
    // The debug stage: the task's check failed (see `validate.rs`).
    BundleInvalid,
    PrepareFailed,
    /// The agent-visible test file holds the target column.
    Leak,
    BaselineFailed,
    BaselineNotReproducible,
    BaselineNotBetterThanTrivial,
    BaselineSaturated,
    EvalFailed,
    EvalFormat,
    EvalAcceptsWrongShape,
    MetricMismatch,
    /// A step of the check did not finish within its timeout.
    Timeout,
    // The model's answer.
    LlmRefused,
    LlmContentFilter,
    LlmEmpty,
    LlmTruncated,
    LlmUnparseable,
    // The LLM endpoint refused the request.
    LlmAuth,
    LlmQuota,
    LlmContextLength,
    LlmBadRequest,
    /// The run's LLM budget is spent.
    BudgetExhausted,
    /// `--replay` has no recorded answer for the request.
    ReplayMissing,
    // The machinery.
    SandboxUnavailable,
    OutputUnwritable,
    /// A directory to share through the store is over `store.max_artefact_mb`.
    ArtefactTooLarge,
    /// Transient failures outlived the unit's attempts.
    TransientExhausted,
    /// The unit's worker crashed on every attempt.
    WorkerCrashed,
    // A permanent failure of a port, named after the stage (the detail says what failed).
    TopicFailed,
    DatasetFailed,
    CodegenFailed,
    DebugFailed,
    ExportFailed,
    RolloutFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 36] = [
        DropReason::NearDuplicate,
        DropReason::NoVerifiedDataset,
        DropReason::BundleInvalid,
        DropReason::PrepareFailed,
        DropReason::Leak,
        DropReason::BaselineFailed,
        DropReason::BaselineNotReproducible,
        DropReason::BaselineNotBetterThanTrivial,
        DropReason::BaselineSaturated,
        DropReason::EvalFailed,
        DropReason::EvalFormat,
        DropReason::EvalAcceptsWrongShape,
        DropReason::MetricMismatch,
        DropReason::Timeout,
        DropReason::LlmRefused,
        DropReason::LlmContentFilter,
        DropReason::LlmEmpty,
        DropReason::LlmTruncated,
        DropReason::LlmUnparseable,
        DropReason::LlmAuth,
        DropReason::LlmQuota,
        DropReason::LlmContextLength,
        DropReason::LlmBadRequest,
        DropReason::BudgetExhausted,
        DropReason::ReplayMissing,
        DropReason::SandboxUnavailable,
        DropReason::OutputUnwritable,
        DropReason::ArtefactTooLarge,
        DropReason::TransientExhausted,
        DropReason::WorkerCrashed,
        DropReason::TopicFailed,
        DropReason::DatasetFailed,
        DropReason::CodegenFailed,
        DropReason::DebugFailed,
        DropReason::ExportFailed,
        DropReason::RolloutFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NearDuplicate => "near_duplicate",
            DropReason::NoVerifiedDataset => "no_verified_dataset",
            DropReason::BundleInvalid => "bundle_invalid",
            DropReason::PrepareFailed => "prepare_failed",
            DropReason::Leak => "leak",
            DropReason::BaselineFailed => "baseline_failed",
            DropReason::BaselineNotReproducible => "baseline_not_reproducible",
            DropReason::BaselineNotBetterThanTrivial => "baseline_not_better_than_trivial",
            DropReason::BaselineSaturated => "baseline_saturated",
            DropReason::EvalFailed => "eval_failed",
            DropReason::EvalFormat => "eval_format",
            DropReason::EvalAcceptsWrongShape => "eval_accepts_wrong_shape",
            DropReason::MetricMismatch => "metric_mismatch",
            DropReason::Timeout => "timeout",
            DropReason::LlmRefused => "llm_refused",
            DropReason::LlmContentFilter => "llm_content_filter",
            DropReason::LlmEmpty => "llm_empty",
            DropReason::LlmTruncated => "llm_truncated",
            DropReason::LlmUnparseable => "llm_unparseable",
            DropReason::LlmAuth => "llm_auth",
            DropReason::LlmQuota => "llm_quota",
            DropReason::LlmContextLength => "llm_context_length",
            DropReason::LlmBadRequest => "llm_bad_request",
            DropReason::BudgetExhausted => "budget_exhausted",
            DropReason::ReplayMissing => "replay_missing",
            DropReason::SandboxUnavailable => "sandbox_unavailable",
            DropReason::OutputUnwritable => "output_unwritable",
            DropReason::ArtefactTooLarge => "artefact_too_large",
            DropReason::TransientExhausted => "transient_exhausted",
            DropReason::WorkerCrashed => "worker_crashed",
            DropReason::TopicFailed => "topic_failed",
            DropReason::DatasetFailed => "dataset_failed",
            DropReason::CodegenFailed => "codegen_failed",
            DropReason::DebugFailed => "debug_failed",
            DropReason::ExportFailed => "export_failed",
            DropReason::RolloutFailed => "rollout_failed",
        }
    }

    pub fn parse(s: &str) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// A port's permanent failure at `stage`.
    pub fn stage_failed(stage: Stage) -> DropReason {
        match stage {
            Stage::Topic => DropReason::TopicFailed,
            Stage::Dataset => DropReason::DatasetFailed,
            Stage::Codegen => DropReason::CodegenFailed,
            Stage::Debug => DropReason::DebugFailed,
            Stage::Export => DropReason::ExportFailed,
            Stage::Rollout => DropReason::RolloutFailed,
        }
    }

    /// Reasons that would end every later unit the same way: the first one stops the run
    /// instead of letting it burn its topic budget (the sandbox cannot start, an endpoint
    /// refuses the key or has no quota, the run's LLM budget is spent, the output directory is
    /// unwritable).
    pub fn stops_the_run(self) -> bool {
        matches!(
            self,
            DropReason::SandboxUnavailable
                | DropReason::LlmAuth
                | DropReason::LlmQuota
                | DropReason::BudgetExhausted
                | DropReason::OutputUnwritable
        )
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a unit is a task being synthesised or one teacher rollout on an accepted task.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    Task,
    Rollout,
}

impl UnitKind {
    /// The stable name the stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Task => "task",
            UnitKind::Rollout => "rollout",
        }
    }

    pub fn parse(s: &str) -> Option<UnitKind> {
        [UnitKind::Task, UnitKind::Rollout].into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a unit is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    /// Waiting for, or being worked on by, the stage in [`Unit::stage`].
    Pending,
    /// Finished every stage.
    Done,
    /// Dropped with a reason; never retried.
    Dropped,
}

impl UnitStatus {
    /// The stable name the stores keep.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitStatus::Pending => "pending",
            UnitStatus::Done => "done",
            UnitStatus::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Option<UnitStatus> {
        [UnitStatus::Pending, UnitStatus::Done, UnitStatus::Dropped].into_iter().find(|k| k.as_str() == s)
    }
}

/// One unit of work as the store keeps it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Unit {
    pub id: UnitId,
    pub kind: UnitKind,
    /// Creation order among units of the same kind; also the unit's seed offset.
    pub seq: u64,
    /// For rollouts: the task unit they belong to.
    pub parent: Option<UnitId>,
    pub stage: Stage,
    pub status: UnitStatus,
    /// Attempts made at the current stage (crashes and transient failures).
    pub attempts: u32,
    pub drop_reason: Option<DropReason>,
    /// What happened, in words, for a dropped unit.
    pub drop_detail: Option<String>,
}

impl Unit {
    /// A new unit, pending at `stage`.
    pub fn pending(id: UnitId, kind: UnitKind, seq: u64, parent: Option<UnitId>, stage: Stage) -> Unit {
        Unit { id, kind, seq, parent, stage, status: UnitStatus::Pending, attempts: 0, drop_reason: None, drop_detail: None }
    }
}

/// A point sampled from the topic taxonomy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TopicSample {
    pub domain: String,
    pub task_type: String,
    pub modality: String,
    pub twist: String,
}

/// Result of the topic stage: a concrete challenge idea.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TopicIdea {
    pub sample: TopicSample,
    pub title: String,
    pub idea: String,
}

/// One column of a dataset split, as the dataset viewer's `/info` describes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Feature {
    pub name: String,
    /// `Value` dtype (`float64`, `int64`, `string`, ...) or `int64` for class labels.
    pub dtype: String,
    /// Class names when the feature is a `ClassLabel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

/// A parquet file of the dataset as listed by the viewer's `/parquet` endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ParquetFile {
    pub split: String,
    pub url: String,
    pub filename: String,
    pub size: u64,
}

/// Verified facts about a Hub dataset; travels with the task as its provenance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DatasetMeta {
    pub id: String,
    /// Commit sha of the dataset repository at verification time.
    pub revision: String,
    pub config: String,
    pub splits: Vec<String>,
    pub features: Vec<Feature>,
    /// Rows per split.
    pub num_rows: BTreeMap<String, u64>,
    pub num_bytes_parquet: u64,
    pub description: String,
    pub parquet_files: Vec<ParquetFile>,
}

/// A file downloaded for a task, relative to the task's `raw/` directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StagedFile {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// Result of the dataset stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DatasetChoice {
    pub meta: DatasetMeta,
    /// Proposals that failed verification, with the reason code for each.
    pub rejected: Vec<(String, String)>,
    pub staged: Vec<StagedFile>,
}

/// Whether larger or smaller values of a metric are better.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Maximize,
    Minimize,
}

/// The task bundle the LLM writes: task text, metric spec and code.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskBundle {
    /// MLGym task id (camelCase, no spaces); gymforge appends the unit id to make it unique.
    pub name: String,
    /// Human-readable title (MLGym's task name), written for the verified dataset, so it names
    /// what the data is about. Bundles stored before it existed have none: the topic's title
    /// stands in.
    #[serde(default)]
    pub title: String,
    /// Task statement shown to the agent. Contains `{dataset_docs}` exactly where MLGym should
    /// insert the dataset description; gymforge escapes every other brace on export.
    pub description: String,
    pub dataset_description: String,
    pub priority_metric: String,
    pub direction: Direction,
    /// Every key evaluate.py prints.
    pub metrics: Vec<String>,
    /// Name of the target column (never present in the agent-visible test file).
    pub target_column: String,
    pub training_timeout: u64,
    /// `prepare.py`, `baseline.py`, `evaluate.py`.
    pub files: BTreeMap<String, String>,
}

/// Scores as evaluate.py prints them.
pub type Scores = BTreeMap<String, f64>;

/// Result of the debug stage for a task that passed every check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AcceptedTask {
    /// MLGym task id, unique in the run.
    pub task_id: String,
    pub unit: UnitId,
    pub topic: TopicIdea,
    pub dataset: DatasetMeta,
    pub bundle: TaskBundle,
    pub baseline_scores: Scores,
    /// Debug rounds used (1 = the first draft passed).
    pub rounds: u32,
}

/// One executed agent step, in MLGym's trajectory shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TrajectoryStep {
    pub action: String,
    pub observation: String,
    pub response: String,
    /// JSON string: `{"open_file": ..., "working_dir": ...}` before the action.
    pub state: String,
    pub thought: String,
    pub execution_time: f64,
}

/// One chat message in a trajectory's full history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HistoryItem {
    pub role: String,
    pub content: String,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// Token and cost accounting for one trajectory, as MLGym's `model_stats`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ModelStats {
    pub total_cost: f64,
    pub task_cost: f64,
    pub tokens_sent: u64,
    pub tokens_received: u64,
    pub api_calls: u64,
}

/// MLGym's `info` block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TrajectoryInfo {
    pub model_stats: ModelStats,
    pub exit_status: String,
    pub submission: Option<String>,
    pub score: Vec<Scores>,
    pub summarizer: serde_json::Value,
}

/// A complete MLGym `.traj` document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Trajectory {
    pub environment: String,
    pub trajectory: Vec<TrajectoryStep>,
    pub history: Vec<HistoryItem>,
    pub info: TrajectoryInfo,
}

/// Result of one rollout unit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RolloutRecord {
    /// The rollout unit this is the result of (`t000004.r0`). Records stored before the field
    /// existed read as empty; `export::final_inputs` sets it from the store's unit id.
    #[serde(default)]
    pub unit: UnitId,
    pub task_id: String,
    pub run_index: u32,
    /// MLGym run directory name (encodes model, task and sampling settings).
    pub run_name: String,
    pub model: String,
    pub baseline_scores: Scores,
    pub trajectory: Trajectory,
}

impl RolloutRecord {
    /// A rollout is worth training on when it produced at least one scored submission.
    pub fn has_scored_submission(&self) -> bool {
        !self.trajectory.info.score.is_empty()
    }
}

/// Result of the export stage: the task's files are in the output directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExportedTask {
    pub task_id: String,
}

/// A type that is one stage's result: `stored::<AcceptedTask>` knows to read the debug stage's.
pub trait StageOutput: Sized + Into<StageResult> {
    const STAGE: Stage;
    fn from_result(result: StageResult) -> Option<Self>;
}

/// Defines [`StageResult`], a variant per stage named after it, and the conversions.
macro_rules! stage_results {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// One stage's result, typed. The store keeps it as the JSON of the inner value, keyed
        /// by stage ([`StageResult::to_json`], [`StageResult::from_json`]).
        #[derive(Clone, Debug, PartialEq)]
        #[allow(clippy::large_enum_variant, reason = "one result per stage message; boxing the bundle saves nothing worth an allocation")]
        pub enum StageResult {
            $($variant($ty),)*
        }

        $(
            impl From<$ty> for StageResult {
                fn from(value: $ty) -> StageResult {
                    StageResult::$variant(value)
                }
            }
            impl StageOutput for $ty {
                const STAGE: Stage = Stage::$variant;
                fn from_result(result: StageResult) -> Option<Self> {
                    match result {
                        StageResult::$variant(value) => Some(value),
                        _ => None,
                    }
                }
            }
        )*

        impl StageResult {
            pub fn stage(&self) -> Stage {
                match self {
                    $(StageResult::$variant(_) => Stage::$variant,)*
                }
            }

            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $(StageResult::$variant(value) => serde_json::to_value(value),)*
                }
                .expect("stage results are plain data")
            }

            pub fn from_json(stage: Stage, value: serde_json::Value) -> Result<StageResult, serde_json::Error> {
                Ok(match stage {
                    $(Stage::$variant => StageResult::$variant(serde_json::from_value(value)?),)*
                })
            }
        }
    };
}

stage_results!(
    Topic(TopicIdea),
    Dataset(DatasetChoice),
    Codegen(TaskBundle),
    Debug(AcceptedTask),
    Export(ExportedTask),
    Rollout(RolloutRecord),
);

/// A stage's verdict on a unit.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one outcome per stage message; boxing the result saves nothing worth an allocation")]
pub enum Outcome {
    /// The stage finished; its result is stored and the unit moves on.
    Advance(StageResult),
    /// The unit is dropped for good, with a reason and a human-readable detail.
    Drop { reason: DropReason, detail: String },
}

/// What became of a unit, as a worker reports it to the supervisor. The store already holds it.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Moved to the next stage (`None`: the unit is done).
    Advanced { next: Option<Stage> },
    /// `fatal`: the reason dooms every unit ([`DropReason::stops_the_run`]); the run stops with
    /// this message.
    Dropped { reason: DropReason, fatal: Option<String> },
    /// A transient failure; the unit should be tried again after a pause.
    Retry { attempts: u32 },
    /// The unit was claimed already (it is being worked on elsewhere): nothing was done.
    NotClaimed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_has_one_stable_name_that_parses_back() {
        let names: std::collections::BTreeSet<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DropReason::ALL.len(), "two reasons share a name");
        for reason in DropReason::ALL {
            assert_eq!(DropReason::parse(reason.as_str()), Some(reason));
            assert_eq!(serde_json::to_value(reason).unwrap(), serde_json::json!(reason.as_str()));
        }
        assert_eq!(DropReason::parse("no_such_reason"), None);
    }

    #[test]
    fn a_stage_result_round_trips_through_its_stored_json() {
        let exported = StageResult::from(ExportedTask { task_id: "irisT000001".into() });
        assert_eq!(exported.stage(), Stage::Export);
        assert_eq!(exported.to_json(), serde_json::json!({ "task_id": "irisT000001" }));
        assert_eq!(StageResult::from_json(Stage::Export, exported.to_json()).unwrap(), exported);
        assert!(StageResult::from_json(Stage::Topic, exported.to_json()).is_err());
        assert_eq!(ExportedTask::from_result(exported.clone()), Some(ExportedTask { task_id: "irisT000001".into() }));
        assert_eq!(TopicIdea::from_result(exported), None);
    }
}
