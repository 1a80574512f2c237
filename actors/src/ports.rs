//! The ports: the only ways the pipeline reaches the outside world.
//!
//! The application crate implements each trait with a real adapter (HTTP LLM client, Hub
//! client, bubblewrap sandbox, SQLite store, file exporter); tests may implement them with
//! in-memory fakes. Errors say whether trying again could help.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{AcceptedTask, DatasetMeta, DropReason, RolloutRecord, Stage, StageResult, StagedFile, Unit, UnitId, Verdict};

/// Whether a failed call to the outside world is worth repeating.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PortError {
    /// Might succeed later (timeouts, 5xx, rate limits that outlived the retry budget).
    #[error("{0}")]
    Transient(String),
    /// Will fail again (missing sandbox, unreadable stored state).
    #[error("{0}")]
    Permanent(String),
    /// Will fail again, for a reason the unit is dropped with (`budget_exhausted`, `llm_auth`,
    /// `llm_quota`, `llm_context_length`, `llm_bad_request`, `sandbox_unavailable`, ...).
    #[error("{reason}: {detail}")]
    Refused { reason: DropReason, detail: String },
    /// This process no longer holds the unit: its lease expired and another node took the unit
    /// over, or committed it. The unit is forgotten here, neither retried nor dropped.
    #[error("{0}")]
    LeaseLost(String),
}

impl PortError {
    pub fn is_transient(&self) -> bool {
        matches!(self, PortError::Transient(_))
    }
}

// ---------------------------------------------------------------------------------------------
// LLM

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage { role: role.to_string(), content: content.into() }
    }
}

#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// The unit of work the call is for (accounting, record and replay, logs).
    pub unit: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub response: ResponseFormat,
    /// Sampling seed, passed to endpoints that honour it.
    pub seed: Option<u64>,
}

/// The shape of answer a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// A JSON object following `schema` (a JSON Schema), sent as `response_format` to endpoints
    /// that support it.
    Json {
        name: &'static str,
        schema: serde_json::Value,
    },
}

/// Why the model stopped writing (`finish_reason`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Finish {
    /// A natural end (`stop`, or no reason given).
    #[default]
    Stop,
    /// The answer was cut off at `max_tokens` (`length`).
    Length,
    /// The provider's content filter stopped the answer (`content_filter`).
    ContentFilter,
    /// Anything else (`tool_calls`, a server's own word).
    Other,
}

impl Finish {
    pub fn from_reason(reason: Option<&str>) -> Finish {
        match reason {
            None | Some("stop" | "eos" | "end_turn" | "stop_sequence") => Finish::Stop,
            Some("length" | "max_tokens" | "model_length") => Finish::Length,
            Some("content_filter") => Finish::ContentFilter,
            Some(_) => Finish::Other,
        }
    }
}

/// One answered request. A refusal, an empty answer and a cut-off one are answers too: they
/// were billed, and the stage decides what they mean.
#[derive(Clone, Debug, Default)]
pub struct ChatReply {
    /// The answer's text; empty when the model gave none (`content: null`).
    pub content: String,
    /// The model's refusal message (OpenAI's `message.refusal`), when it refused.
    pub refusal: Option<String>,
    pub finish: Finish,
    pub model: String,
    /// Name of the configured endpoint that answered.
    pub endpoint: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// What the model behind a stage accepts, where its server or its configuration says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelLimits {
    /// Prompt plus answer, in tokens.
    pub context_tokens: Option<u64>,
    /// The largest `max_tokens` the server accepts.
    pub max_output_tokens: Option<u32>,
}

impl ModelLimits {
    /// The largest answer worth asking for instead of `asked` (for a re-ask after a cut-off).
    pub fn larger_answer(&self, asked: u32) -> u32 {
        let doubled = asked.saturating_mul(2);
        self.max_output_tokens.map_or(doubled, |cap| doubled.min(cap)).max(asked)
    }
}

/// An OpenAI-compatible chat endpoint, chosen per stage by the adapter's routing.
#[async_trait]
pub trait Llm: Send + Sync {
    async fn chat(&self, stage: Stage, request: ChatRequest) -> Result<ChatReply, PortError>;
    /// Model name used for a stage (recorded in trajectories and run names).
    fn model_for(&self, stage: Stage) -> String;
    /// The limits of the model a stage is routed to, as far as they are known.
    fn limits(&self, _stage: Stage) -> ModelLimits {
        ModelLimits::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Hub

/// Why a proposed dataset id was refused. Each has a stable name: drop details and the Hub
/// cache show it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// Not of the form `owner/name`.
    InvalidId,
    /// No such dataset on the Hub.
    NotFound,
    /// Access must be requested first.
    Gated,
    /// Disabled on the Hub.
    Disabled,
    /// The pinned revision does not exist.
    RevisionNotFound,
    /// The pinned revision is not the one the viewer serves.
    RevisionNotCurrent,
    /// The dataset viewer cannot load it.
    ViewerInvalid,
    /// No parquet files to download.
    NoParquet,
    /// Over the size limit.
    TooLarge,
    /// The Hub answered in a way that cannot be used.
    HubError,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::InvalidId => "invalid_id",
            Rejection::NotFound => "not_found",
            Rejection::Gated => "gated",
            Rejection::Disabled => "disabled",
            Rejection::RevisionNotFound => "revision_not_found",
            Rejection::RevisionNotCurrent => "revision_not_current",
            Rejection::ViewerInvalid => "viewer_invalid",
            Rejection::NoParquet => "no_parquet",
            Rejection::TooLarge => "too_large",
            Rejection::HubError => "hub_error",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one proposed dataset id.
#[derive(Clone, Debug)]
pub enum DatasetCheck {
    Verified(DatasetMeta),
    /// Not usable, and why.
    Rejected {
        reason: Rejection,
        detail: String,
    },
}

#[async_trait]
pub trait Hub: Send + Sync {
    /// Checks a dataset id against the Hub API and the dataset viewer.
    async fn verify(&self, dataset_id: &str) -> Result<DatasetCheck, PortError>;
    /// Downloads the dataset's parquet files into `dest`, checking sizes.
    async fn download(&self, meta: &DatasetMeta, dest: &Path) -> Result<Vec<StagedFile>, PortError>;
}

// ---------------------------------------------------------------------------------------------
// Sandbox

/// A host directory made visible inside the sandbox.
#[derive(Clone, Debug)]
pub struct Mount {
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub inside: String,
    pub writable: bool,
}

/// One execution of untrusted code.
#[derive(Clone, Debug)]
pub struct SandboxJob {
    /// Short description for logs and spans (`debug t0003 round 1 prepare`).
    pub label: String,
    /// Host directory that becomes the writable working directory.
    pub workdir: PathBuf,
    /// Where `workdir` appears inside the sandbox (also the process's cwd).
    pub workdir_inside: String,
    pub mounts: Vec<Mount>,
    /// argv, run with the sandbox's Python environment first on PATH.
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobOutput {
    pub exit_code: Option<i32>,
    /// Signal that ended the process, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Output beyond the cap was discarded.
    pub output_truncated: bool,
    pub elapsed_secs: f64,
}

impl JobOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// A short human description of how the job ended.
    pub fn status_line(&self) -> String {
        if self.timed_out {
            format!("timed out after {:.0} s", self.elapsed_secs)
        } else if let Some(code) = self.exit_code {
            format!("exit code {code}")
        } else if let Some(sig) = self.signal {
            format!("killed by signal {sig}")
        } else {
            "ended without status".to_string()
        }
    }
}

#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Runs a job to completion, timeout or kill. `Err` means the sandbox itself failed (not the
    /// job): the job's own failures are in [`JobOutput`].
    async fn run(&self, job: SandboxJob) -> Result<JobOutput, PortError>;

    /// Starts a long-lived shell in a sandbox set up like `job` (its `command` is ignored).
    /// The files of `control` (a host directory) are visible read-only inside at
    /// [`CONTROL_INSIDE`], and `control/init.sh` is sourced when the shell starts.
    async fn shell(&self, job: SandboxJob, control: &Path) -> Result<Box<dyn Shell>, PortError>;
}

/// Where a shell's control directory appears inside its sandbox.
pub const CONTROL_INSIDE: &str = "/home/agent/commands";

/// A shell running in a sandbox: `cd`, variables and background processes persist from one
/// command to the next.
#[async_trait]
pub trait Shell: Send {
    /// Runs one command. Its output (stderr merged into stdout) and exit status are in the
    /// result; a timeout kills the command, not the shell. When the shell itself had to be
    /// killed or exited, the output says so and [`Shell::is_alive`] turns false.
    async fn run(&mut self, command: &str, timeout: Duration) -> Result<JobOutput, PortError>;
    fn is_alive(&self) -> bool;
}

// ---------------------------------------------------------------------------------------------
// Store

/// Token and cost usage of LLM calls, summed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Usage summed per unit, stage, endpoint and model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UsageRow {
    pub unit: UnitId,
    pub stage: Stage,
    /// Name of the configured endpoint (`llm.endpoints.<name>`).
    pub endpoint: String,
    pub model: String,
    pub usage: Usage,
}

/// What happened to a unit that is counted in the report.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The unit's worker crashed and the unit went back to its stage's queue (or was dropped).
    WorkerRestart,
    /// A transient failure; the unit is tried again after a pause.
    Retry,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::WorkerRestart, EventKind::Retry];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::WorkerRestart => "worker_restart",
            EventKind::Retry => "retry",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to a unit and should be counted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub unit: UnitId,
    pub stage: Stage,
    pub detail: String,
}

/// Durable state. Every method commits before it returns. The methods are async so that a
/// store behind a network (or a blocking file database on a thread of its own) never holds up
/// the actor that calls it.
#[async_trait]
pub trait Store: Send + Sync {
    async fn units(&self) -> Result<Vec<Unit>, PortError>;
    /// Inserts a unit unless one with the same id exists (resumes are idempotent).
    async fn insert_unit(&self, unit: &Unit) -> Result<(), PortError>;
    async fn result(&self, unit: &str, stage: Stage) -> Result<Option<StageResult>, PortError>;
    /// All stored results of one stage, in unit creation order.
    async fn results(&self, stage: Stage) -> Result<Vec<(UnitId, StageResult)>, PortError>;
    /// In one transaction: stores the result of the stage it is of and moves the unit to `next`
    /// (or marks it done), resetting its attempt count. Refused unless the unit is pending at
    /// that stage.
    async fn complete_stage(&self, unit: &str, result: &StageResult, next: Option<Stage>) -> Result<(), PortError>;
    async fn drop_unit(&self, unit: &str, reason: DropReason, detail: &str) -> Result<(), PortError>;
    /// Counts one more attempt at the unit's current stage; returns the new count. Releases the
    /// unit's claim.
    async fn record_attempt(&self, unit: &str) -> Result<u32, PortError>;
    /// Claims a pending unit at `stage` for this process before any work starts on it; false
    /// when it is already claimed and not released (completing, dropping, counting an attempt
    /// or [`Store::release`] release a claim; a claim made by an earlier process is stale and
    /// taken over). Every claim is kept in the store's claim history.
    async fn claim(&self, unit: &str, stage: Stage) -> Result<bool, PortError>;
    /// Gives up a claim without a verdict (the worker holding the unit crashed).
    async fn release(&self, unit: &str) -> Result<(), PortError>;
    async fn add_usage(&self, unit: &str, stage: Stage, endpoint: &str, model: &str, usage: &Usage) -> Result<(), PortError>;
    async fn usage(&self) -> Result<Vec<UsageRow>, PortError>;
    async fn add_event(&self, event: &Event) -> Result<(), PortError>;
    async fn events(&self) -> Result<Vec<Event>, PortError>;
    async fn meta(&self, key: &str) -> Result<Option<String>, PortError>;
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), PortError>;
    /// Creates the batch's next task unit (in sequence order) when `plan` wants one, and returns
    /// it. The rule is the store's, so that every node sharing it creates by the same count.
    async fn create_task_unit(&self, plan: &TaskPlan) -> Result<Option<Unit>, PortError>;

    // What only a store that several processes share needs; a store of one process has none of it.

    /// Whether other processes work on this store's batch: units are then pulled from it with
    /// [`Store::claim_next`] rather than queued by the process that made them, and the files a
    /// later stage needs travel as artefacts.
    fn is_shared(&self) -> bool {
        false
    }
    /// Claims up to `limit` pending units at `stage` that no live lease holds, oldest first,
    /// but none of `held` (units this process has already). At the topic stage only the oldest
    /// pending unit is ever claimable: topics are settled in creation order, as one process
    /// settles them.
    async fn claim_next(&self, _stage: Stage, _limit: u32, _held: &[UnitId]) -> Result<Vec<Unit>, PortError> {
        Ok(Vec::new())
    }
    /// Pending units in the whole batch.
    async fn pending_count(&self) -> Result<u64, PortError> {
        Ok(0)
    }
    /// Keeps `bytes` (a packed directory, [`crate::artefacts`]) as the unit's artefact of
    /// `kind`, content-addressed by its SHA-256, fenced like a commit.
    async fn put_artefact(&self, _unit: &str, _kind: ArtefactKind, _bytes: &[u8]) -> Result<(), PortError> {
        Ok(())
    }
    /// The SHA-256 of the unit's artefact of `kind`, if one is kept.
    async fn artefact_digest(&self, _unit: &str, _kind: ArtefactKind) -> Result<Option<String>, PortError> {
        Ok(None)
    }
    /// The unit's artefact of `kind`, checked against its digest, if one is kept.
    async fn artefact(&self, _unit: &str, _kind: ArtefactKind) -> Result<Option<Vec<u8>>, PortError> {
        Ok(None)
    }
}

/// When the batch wants another task unit: while fewer than `window` task units are pending
/// (per live node of a shared store), and, with a target (`tasks > 0`), while the accepted and
/// pending task units fall short of it and fewer than `max_topics` were created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskPlan {
    pub tasks: u32,
    pub max_topics: u32,
    pub window: u32,
}

impl TaskPlan {
    /// The rule, given the batch's counts of task units: all created, accepted, and pending.
    pub fn wants(&self, created: u64, accepted: u64, pending: u64, nodes: u64) -> bool {
        if pending >= u64::from(self.window) * nodes.max(1) {
            return false;
        }
        self.tasks == 0 || (accepted + pending < u64::from(self.tasks) && created < u64::from(self.max_topics))
    }
}

/// The files of a unit that a later stage may run on another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArtefactKind {
    /// The staged parquet files (dataset stage; the debug stage reads them).
    RawData,
    /// The accepted task's prepared directory (debug stage; export and rollouts read it).
    PreparedTask,
}

impl ArtefactKind {
    /// The stage that makes it (and keeps it before it commits).
    pub fn made_by(self) -> Stage {
        match self {
            ArtefactKind::RawData => Stage::Dataset,
            ArtefactKind::PreparedTask => Stage::Debug,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ArtefactKind::RawData => "raw_data",
            ArtefactKind::PreparedTask => "prepared_task",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outputs

/// Everything the final export needs, read back from the store.
#[derive(Clone, Debug)]
pub struct FinalInputs {
    pub units: Vec<Unit>,
    pub tasks: Vec<AcceptedTask>,
    pub rollouts: Vec<RolloutRecord>,
    pub usage: Vec<UsageRow>,
    pub events: Vec<Event>,
    pub wall_time_secs: f64,
}

/// Writes the user-facing output directory. Every write is atomic (temporary file + rename).
pub trait Outputs: Send + Sync {
    /// Writes the MLGym task config, dataset config, starter code and data of an accepted task.
    /// `prepared` is the directory the debug stage left (see [`crate::paths::PreparedTask`]).
    fn write_task(&self, task: &AcceptedTask, prepared: &Path) -> Result<(), PortError>;
    /// Writes one rollout's `.traj` and `results.json`.
    fn write_rollout(&self, rollout: &RolloutRecord) -> Result<(), PortError>;
    /// Writes `tasks.json`, `sft/train.jsonl` and `report.json`.
    fn finalize(&self, inputs: &FinalInputs) -> Result<(), PortError>;
    /// Whether the task is written here already (another node of a shared store may have made
    /// it); false has it written again.
    fn has_task(&self, _task_id: &str) -> bool {
        false
    }
    /// Whether the rollout's trajectory is written here already.
    fn has_rollout(&self, _rollout: &RolloutRecord) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Telemetry

/// Where the pipeline reports the life of its units, for traces and metrics. The application
/// exports them over OpenTelemetry (`src/telemetry/units.rs`).
pub trait Telemetry: Send + Sync {
    /// The span one stage runs in for one unit; the application makes it part of the unit's trace.
    fn stage_span(&self, unit: &Unit, stage: Stage) -> tracing::Span;
    /// A stage ended for a unit, `elapsed` after it began; the store already holds the outcome.
    fn stage_ended(&self, unit: &Unit, stage: Stage, verdict: &Verdict, elapsed: Duration);
    /// A stage worker crashed and was replaced.
    fn worker_restarted(&self, stage: Stage);
}

/// The span a stage runs in: named after the stage, with the unit and the attempt.
pub fn stage_span(unit: &Unit, stage: Stage) -> tracing::Span {
    tracing::info_span!(
        "stage",
        otel.name = %format!("stage {stage}"),
        stage = %stage,
        unit = %unit.id,
        attempt = i64::from(unit.attempts) + 1
    )
}
