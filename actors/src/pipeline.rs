//! What every stage worker shares: the ports, the settings, the prompts and the taxonomy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Stage, TopicSample};
use crate::ports::{Hub, Llm, Outputs, Sandbox, Store};
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
    ///
    /// Each axis is stratified rather than drawn independently per unit (see
    /// [`stratified_pick`]): every block of [`STRATA_BLOCK`] consecutive units covers each axis
    /// in proportion to its weights, so a small batch spans domains and task types instead of
    /// leaving that to luck. Within a block each axis visits its picks in its own seeded order,
    /// so the axes do not move in lockstep (the same task type always with the same domain).
    pub fn sample(&self, seed: u64, seq: u64) -> TopicSample {
        let pick = |name: &str, axis: &[Weighted]| axis[stratified_pick(seed, name, axis, shuffled_position(seed, name, seq))].name.clone();
        TopicSample {
            domain: pick("domain", &self.domain),
            task_type: pick("task_type", &self.task_type),
            modality: pick("modality", &self.modality),
            twist: pick("twist", &self.twist),
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
    let weights: Vec<f64> = axis.iter().map(|w| if w.weight > 0.0 { w.weight } else { 0.0 }).collect();
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return 0;
    }
    let mut rng = Rng::new(hash(&["taxonomy", &seed.to_string(), axis_name]));
    let mut credit: Vec<f64> = weights.iter().map(|w| if *w > 0.0 { rng.next_f64() } else { f64::NEG_INFINITY }).collect();
    let mut chosen = 0;
    for _ in 0..=seq {
        for (c, w) in credit.iter_mut().zip(&weights) {
            *c += w / total;
        }
        chosen = (0..credit.len()).fold(0, |best, i| if credit[i] > credit[best] { i } else { best });
        credit[chosen] -= 1.0;
    }
    chosen
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
                    assert!((counts[i] - expected).abs() < 1.5, "seed {seed}, after {n}: entry {i} chosen {} times, expected {expected}", counts[i]);
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
            let pairs: std::collections::BTreeSet<(String, String)> = (0..16).map(|seq| t.sample(seed, seq)).map(|s| (s.domain, s.task_type)).collect();
            assert!(pairs.len() >= 7, "seed {seed}: {pairs:?}");
            total += pairs.len();
        }
        assert!(total >= 475, "{total} distinct pairs in 50 seeds");
        let orders: std::collections::BTreeSet<Vec<String>> = (0..10).map(|seed| (0..6).map(|seq| t.sample(seed, seq).domain).collect()).collect();
        assert!(orders.len() > 3, "seeds should change the order: {orders:?}");
    }
}
