//! What every stage worker shares: the ports, the settings, the prompts and the taxonomy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Stage, TopicSample};
use crate::ports::{Hub, Llm, Outputs, Sandbox, Store};
use crate::seed::Rng;

/// Knobs of one run; built by the application from its configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// Accepted tasks to produce; 0: no target, the run goes on until it is stopped.
    pub tasks: u32,
    /// Rollouts per accepted task.
    pub rollouts: u32,
    /// Topic units the run may create before it gives up on its target. Without a target: task
    /// units dropped in a row before the run stops with an error (nothing is being produced).
    pub max_topics: u32,
    /// Attempts per unit and stage (crashes and transient failures).
    pub max_attempts: u32,
    /// Worker restarts tolerated over the whole run before the supervisor gives up.
    pub max_restarts: u32,
    pub workers: Vec<(Stage, u32)>,
    pub debug_rounds: u32,
    pub prepare_timeout: Duration,
    pub agent: AgentSettings,
    pub faults: Faults,
    /// How often a run without a target rewrites tasks.json, the SFT data and report.json.
    pub export_every: Duration,
    /// Scratch space for staged data, debug rounds and rollout workspaces.
    pub work_root: PathBuf,
}

#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub max_steps: u32,
    pub short_timeout: Duration,
    pub temperature: f32,
    pub top_p: f32,
    pub cost_limit: f64,
    pub max_tokens: u32,
    /// Observations kept verbatim in the model input (older ones are elided).
    pub keep_observations: usize,
    /// Tokens the model accepts; a step that would not fit ends the run (`exit_context`).
    pub context_window: u64,
    /// Wall-clock limit of one rollout (`exit_wall_clock`).
    pub wall_clock: Duration,
    /// `(file name, content)` of the agent's command scripts, put in the shell's control
    /// directory (`config/agent/`).
    pub command_files: Vec<(String, String)>,
}

/// Deliberate worker failures, to exercise supervision.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub panic_rate: f64,
    pub error_rate: f64,
    /// Stages the faults apply to; empty means all.
    pub stages: Vec<Stage>,
}

/// The prompt templates (see `config/prompts/`).
#[derive(Clone, Debug)]
pub struct Prompts {
    pub topic_system: String,
    pub topic_user: String,
    pub dataset_system: String,
    pub dataset_user: String,
    pub codegen_system: String,
    pub codegen_user: String,
    pub debug_user: String,
    pub agent_system: String,
    pub agent_task: String,
    pub agent_next: String,
}

/// One axis of the topic taxonomy: names with sampling weights.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Weighted {
    pub name: String,
    pub weight: f64,
}

/// The research space topics are sampled from.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Taxonomy {
    pub domain: Vec<Weighted>,
    pub task_type: Vec<Weighted>,
    pub modality: Vec<Weighted>,
    pub twist: Vec<Weighted>,
}

impl Taxonomy {
    /// Samples the topic of task unit `seq`; a pure function of the seed and `seq`.
    pub fn sample(&self, seed: u64, seq: u64) -> TopicSample {
        let mut rng = Rng::new(crate::seed::hash(&["topic", &seed.to_string(), &seq.to_string()]));
        let mut pick = |axis: &[Weighted]| {
            let weights: Vec<f64> = axis.iter().map(|w| w.weight).collect();
            axis[rng.weighted(&weights)].name.clone()
        };
        TopicSample {
            domain: pick(&self.domain),
            task_type: pick(&self.task_type),
            modality: pick(&self.modality),
            twist: pick(&self.twist),
        }
    }

    /// Checks that every axis has at least one entry with a positive weight.
    pub fn validate(&self) -> Result<(), String> {
        for (axis, entries) in [
            ("domain", &self.domain),
            ("task_type", &self.task_type),
            ("modality", &self.modality),
            ("twist", &self.twist),
        ] {
            if !entries.iter().any(|w| w.weight > 0.0) {
                return Err(format!("taxonomy axis `{axis}` needs an entry with a positive weight"));
            }
        }
        Ok(())
    }
}

/// Live counts for progress displays, published by the supervisor after every event.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Progress {
    /// Per stage: (queued, in flight, passed, dropped).
    pub stages: Vec<(Stage, StageCounts)>,
    pub target_tasks: u32,
    pub accepted_tasks: u32,
    pub rollouts_total: u32,
    pub rollouts_done: u32,
    pub worker_restarts: u32,
    pub finished: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StageCounts {
    pub queued: u32,
    pub in_flight: u32,
    pub passed: u32,
    pub dropped: u32,
}

/// Everything a stage worker needs.
pub struct Pipeline {
    pub llm: Arc<dyn Llm>,
    pub hub: Arc<dyn Hub>,
    pub sandbox: Arc<dyn Sandbox>,
    pub store: Arc<dyn Store>,
    pub outputs: Arc<dyn Outputs>,
    pub telemetry: Arc<dyn crate::ports::Telemetry>,
    pub settings: Settings,
    pub prompts: Prompts,
    pub taxonomy: Taxonomy,
    /// Receives a fresh snapshot after every pipeline event.
    pub progress: tokio::sync::watch::Sender<Progress>,
}

impl Settings {
    /// Whether the run has no target and goes on until stopped.
    pub fn forever(&self) -> bool {
        self.tasks == 0
    }
}

impl Pipeline {
    pub fn paths(&self) -> crate::paths::WorkPaths {
        crate::paths::WorkPaths::new(self.settings.work_root.clone())
    }

    pub fn workers_for(&self, stage: Stage) -> u32 {
        self.settings.workers.iter().find(|(s, _)| *s == stage).map(|(_, n)| *n).unwrap_or(1).max(1)
    }
}
