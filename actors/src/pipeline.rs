//! What every stage worker shares: the ports, the settings, the prompts and the taxonomy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Outcome, Stage, TopicSample, Unit};
use crate::ports::{Hub, Llm, Outputs, PortError, Sandbox, Store};
use crate::seed::{Rng, hash};

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
    /// How close to the best possible value of its priority metric an accepted task's baseline
    /// may come (`pipeline.baseline_headroom`; see `validate::saturation`).
    pub baseline_headroom: f64,
    pub agent: AgentSettings,
    pub faults: Faults,
    /// How often a run without a target rewrites tasks.json, the SFT data and report.json.
    pub export_every: Duration,
    /// Scratch space for staged data, debug rounds and rollout workspaces.
    pub work_root: PathBuf,
    /// The largest directory shared through the store (`store.max_artefact_mb`).
    pub artefact_limit_bytes: u64,
    /// How often a node of a shared store pulls work from it.
    pub pull_every: Duration,
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
    /// Where each axis's sequence stands every [`CHECKPOINT_EVERY`] positions.
    #[serde(skip)]
    pub checkpoints: Arc<Checkpoints>,
}

impl Taxonomy {
    /// Samples the topic of task unit `seq`; a pure function of the seed and `seq`.
    ///
    /// Each axis is stratified rather than drawn independently per unit (see
    /// [`stratified_pick`]): every block of [`STRATA_BLOCK`] consecutive units covers each axis
    /// in proportion to its weights, so a small batch spans domains and task types instead of
    /// leaving that to luck. Within a block each axis visits its picks in its own seeded order,
    /// so the axes do not move in lockstep (the same task type always with the same domain).
    pub fn sample(&self, seed: u64, seq: u64) -> TopicSample {
        let pick =
            |name: &str, axis: &[Weighted]| axis[self.checkpoints.pick(seed, name, axis, shuffled_position(seed, name, seq))].name.clone();
        TopicSample {
            domain: pick("domain", &self.domain),
            task_type: pick("task_type", &self.task_type),
            modality: pick("modality", &self.modality),
            twist: pick("twist", &self.twist),
        }
    }

    /// Checks that every axis has at least one entry with a positive weight.
    pub fn validate(&self) -> Result<(), String> {
        for (axis, entries) in
            [("domain", &self.domain), ("task_type", &self.task_type), ("modality", &self.modality), ("twist", &self.twist)]
        {
            if !entries.iter().any(|w| w.weight > 0.0) {
                return Err(format!("taxonomy axis `{axis}` needs an entry with a positive weight"));
            }
        }
        Ok(())
    }
}

/// Units per block within which each axis's stratified picks are shuffled.
pub const STRATA_BLOCK: u64 = 8;

/// Where unit `seq` reads an axis's stratified sequence: its own block, at a position given by
/// a seeded permutation of the block that is different for every axis.
fn shuffled_position(seed: u64, axis_name: &str, seq: u64) -> u64 {
    let block = seq / STRATA_BLOCK;
    let mut order: Vec<u64> = (0..STRATA_BLOCK).collect();
    let mut rng = Rng::new(hash(&["strata", &seed.to_string(), axis_name, &block.to_string()]));
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    block * STRATA_BLOCK + order[(seq % STRATA_BLOCK) as usize]
}

/// The entry of `axis` that position `seq` of its sequence gets: smooth weighted round-robin. Every unit, each
/// entry earns its share of the total weight as credit; the entry with the most credit is
/// chosen and pays one unit. After `n` units every entry has been chosen within about one of
/// `n` times its share. The seed sets each entry's starting credit, so seeds differ in order.
/// Entries without a positive weight are never chosen.
pub fn stratified_pick(seed: u64, axis_name: &str, axis: &[Weighted], seq: u64) -> usize {
    let Some(mut rr) = RoundRobin::new(seed, axis_name, axis) else { return 0 };
    let mut chosen = 0;
    for _ in 0..=seq {
        chosen = rr.step();
    }
    chosen
}

/// The state of [`stratified_pick`]'s round-robin: each entry's credit.
#[derive(Clone)]
struct RoundRobin {
    shares: Vec<f64>,
    credit: Vec<f64>,
}

impl RoundRobin {
    /// `None` when no entry has a positive weight.
    fn new(seed: u64, axis_name: &str, axis: &[Weighted]) -> Option<RoundRobin> {
        let weights: Vec<f64> = axis.iter().map(|w| if w.weight > 0.0 { w.weight } else { 0.0 }).collect();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut rng = Rng::new(hash(&["taxonomy", &seed.to_string(), axis_name]));
        let credit = weights.iter().map(|w| if *w > 0.0 { rng.next_f64() } else { f64::NEG_INFINITY }).collect();
        Some(RoundRobin { shares: weights.iter().map(|w| w / total).collect(), credit })
    }

    /// One unit: every entry earns its share, the richest is chosen and pays one.
    fn step(&mut self) -> usize {
        for (c, share) in self.credit.iter_mut().zip(&self.shares) {
            *c += share;
        }
        let chosen = (0..self.credit.len()).fold(0, |best, i| if self.credit[i] > self.credit[best] { i } else { best });
        self.credit[chosen] -= 1.0;
        chosen
    }
}

/// Positions between two checkpoints of an axis's round-robin.
pub const CHECKPOINT_EVERY: u64 = 256;

/// The round-robin of each seed and axis every [`CHECKPOINT_EVERY`] positions, so a pick costs
/// at most that many steps however far into the run it is (the same steps from the same state:
/// the picks are exactly [`stratified_pick`]'s).
#[derive(Default)]
pub struct Checkpoints(Mutex<HashMap<(u64, String), Vec<RoundRobin>>>);

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checkpoints")
    }
}

impl Checkpoints {
    fn pick(&self, seed: u64, axis_name: &str, axis: &[Weighted], seq: u64) -> usize {
        let Some(start) = RoundRobin::new(seed, axis_name, axis) else { return 0 };
        let at = (seq / CHECKPOINT_EVERY) as usize;
        let mut rr = {
            let mut all = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let marks = all.entry((seed, axis_name.to_string())).or_insert_with(|| vec![start]);
            while marks.len() <= at {
                let mut next = marks.last().expect("the start").clone();
                for _ in 0..CHECKPOINT_EVERY {
                    next.step();
                }
                marks.push(next);
            }
            marks[at].clone()
        };
        let mut chosen = 0;
        for _ in 0..=(seq % CHECKPOINT_EVERY) {
            chosen = rr.step();
        }
        chosen
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
    /// Units the supervisor holds in memory: the unfinished ones only.
    pub live_units: u32,
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
    /// What each stage does ([`PipelineStages`]).
    pub logic: Arc<dyn StageLogic>,
    pub settings: Settings,
    pub prompts: Prompts,
    pub taxonomy: Taxonomy,
    /// The topic stage's memory of the run's ideas.
    pub ideas: crate::topic::Ideas,
    /// Receives a fresh snapshot after every pipeline event.
    pub progress: tokio::sync::watch::Sender<Progress>,
}

/// What a stage of the LLM alone may take on one unit: every call is bounded by the gateway's
/// timeouts and retries, and a stage makes a bounded number of calls.
pub const LLM_STAGE_DEADLINE: Duration = Duration::from_secs(30 * 60);

impl Settings {
    /// Whether the run has no target and goes on until stopped.
    pub fn forever(&self) -> bool {
        self.tasks == 0
    }

    /// How long one unit may hold a worker of `stage` before the stage counts as stuck: past
    /// every timeout of its own (the supervisor then kills the worker and retries the unit).
    pub fn stage_deadline(&self, stage: Stage) -> Duration {
        let training = Duration::from_secs(crate::validate::MAX_TRAINING_TIMEOUT_SECS);
        match stage {
            Stage::Topic | Stage::Dataset | Stage::Codegen | Stage::Export => LLM_STAGE_DEADLINE,
            // Each round: a fix from the LLM, prepare, two baselines, their evaluations, two
            // evaluations of sample submissions.
            Stage::Debug => (self.prepare_timeout + training * 6 + LLM_STAGE_DEADLINE) * self.debug_rounds.max(1),
            // The rollout's own wall clock, then the final evaluation.
            Stage::Rollout => self.agent.wall_clock + training + LLM_STAGE_DEADLINE,
        }
    }
}

/// What a stage does to one unit. [`PipelineStages`] is the pipeline's own; a test of the
/// supervisor scripts its own in its place.
#[async_trait::async_trait]
pub trait StageLogic: Send + Sync {
    async fn run(&self, p: &Pipeline, stage: Stage, unit: &Unit) -> Result<Outcome, PortError>;
}

/// The stages of `topic.rs` ... `rollout.rs`.
pub struct PipelineStages;

#[async_trait::async_trait]
impl StageLogic for PipelineStages {
    async fn run(&self, p: &Pipeline, stage: Stage, unit: &Unit) -> Result<Outcome, PortError> {
        match stage {
            Stage::Topic => crate::topic::run(p, unit).await,
            Stage::Dataset => crate::dataset::run(p, unit).await,
            Stage::Codegen => crate::codegen::run(p, unit).await,
            Stage::Debug => crate::debug::run(p, unit).await,
            Stage::Export => crate::export::run(p, unit).await,
            Stage::Rollout => crate::rollout::run(p, unit).await,
        }
    }
}

impl Pipeline {
    /// The same pipeline over another store (with a memory of ideas of its own).
    pub fn with_store(&self, store: Arc<dyn Store>) -> Pipeline {
        Pipeline {
            llm: self.llm.clone(),
            hub: self.hub.clone(),
            sandbox: self.sandbox.clone(),
            store,
            outputs: self.outputs.clone(),
            telemetry: self.telemetry.clone(),
            logic: self.logic.clone(),
            settings: self.settings.clone(),
            prompts: self.prompts.clone(),
            taxonomy: self.taxonomy.clone(),
            ideas: Default::default(),
            progress: self.progress.clone(),
        }
    }

    pub fn paths(&self) -> crate::paths::WorkPaths {
        crate::paths::WorkPaths::new(self.settings.work_root.clone())
    }

    pub fn workers_for(&self, stage: Stage) -> u32 {
        self.settings.workers.iter().find(|(s, _)| *s == stage).map(|(_, n)| *n).unwrap_or(1).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(weights: &[f64]) -> Vec<Weighted> {
        weights.iter().enumerate().map(|(i, w)| Weighted { name: format!("e{i}"), weight: *w }).collect()
    }

    #[test]
    fn shuffled_positions_permute_each_block() {
        for seed in 0..5 {
            let mut positions: Vec<u64> = (0..3 * STRATA_BLOCK).map(|seq| shuffled_position(seed, "domain", seq)).collect();
            assert_ne!(positions, (0..3 * STRATA_BLOCK).collect::<Vec<_>>());
            assert!(positions.chunks(STRATA_BLOCK as usize).enumerate().all(|(b, c)| c.iter().all(|p| p / STRATA_BLOCK == b as u64)));
            positions.sort();
            assert_eq!(positions, (0..3 * STRATA_BLOCK).collect::<Vec<_>>());
        }
    }

    #[test]
    fn checkpointed_picks_are_the_round_robins_own() {
        let entries = axis(&[2.0, 1.0, 1.0, 0.5, 0.0]);
        let checkpoints = Checkpoints::default();
        // Out of order, across checkpoints, as concurrent topic workers ask.
        for seq in [700u64, 3, 255, 256, 257, 1000, 0, 511, 512, 999] {
            assert_eq!(checkpoints.pick(9, "domain", &entries, seq), stratified_pick(9, "domain", &entries, seq), "position {seq}");
        }
    }

    #[test]
    fn stratified_picks_follow_the_weights_in_every_prefix() {
        let weights = [2.0, 1.0, 1.0, 0.5, 0.0];
        let entries = axis(&weights);
        let total: f64 = weights.iter().sum();
        for seed in 0..20 {
            let mut counts = [0f64; 5];
            for seq in 0..60 {
                counts[stratified_pick(seed, "task_type", &entries, seq)] += 1.0;
                let n = (seq + 1) as f64;
                for (i, w) in weights.iter().enumerate() {
                    let expected = n * w / total;
                    assert!(
                        (counts[i] - expected).abs() < 1.5,
                        "seed {seed}, after {n}: entry {i} chosen {} times, expected {expected}",
                        counts[i]
                    );
                }
            }
            assert_eq!(counts[4], 0.0, "a zero weight is never chosen");
        }
    }

    #[test]
    fn ten_units_cover_every_domain_and_task_type() {
        let t = Taxonomy {
            domain: axis(&[1.0, 1.0, 1.0, 0.7, 0.8]),
            task_type: axis(&[2.0, 1.0, 1.0]),
            modality: axis(&[1.0]),
            twist: axis(&[2.0, 1.0, 1.0, 0.5, 0.5, 0.7]),
            checkpoints: Default::default(),
        };
        for seed in 0..50 {
            let samples: Vec<TopicSample> = (0..10).map(|seq| t.sample(seed, seq)).collect();
            let domains: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.domain.as_str()).collect();
            let types: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.task_type.as_str()).collect();
            assert_eq!((domains.len(), types.len()), (5, 3), "seed {seed}: {samples:?}");
            assert_eq!(samples, (0..10).map(|seq| t.sample(seed, seq)).collect::<Vec<_>>());
        }
        // The axes are not in lockstep (which would give four or five pairs): sixteen units pair
        // the 5 domains and 3 task types in about ten ways, as independent draws would.
        let mut total = 0;
        for seed in 0..50 {
            let pairs: std::collections::BTreeSet<(String, String)> =
                (0..16).map(|seq| t.sample(seed, seq)).map(|s| (s.domain, s.task_type)).collect();
            assert!(pairs.len() >= 7, "seed {seed}: {pairs:?}");
            total += pairs.len();
        }
        assert!(total >= 475, "{total} distinct pairs in 50 seeds");
        let orders: std::collections::BTreeSet<Vec<String>> =
            (0..10).map(|seed| (0..6).map(|seq| t.sample(seed, seq).domain).collect()).collect();
        assert!(orders.len() > 3, "seeds should change the order: {orders:?}");
    }
}
