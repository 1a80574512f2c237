//! Wiring one batch: provision the sandbox, start the embedded stand-ins the config asks for,
//! open the store in the output directory, and run the pipeline to its end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gymforge_actors::pipeline::{AgentSettings, Faults};
use gymforge_actors::{Pipeline, Progress, Prompts, Settings, Stage, Taxonomy};

use crate::config::{Config, PYTHON_REQUIREMENTS, TAXONOMY_TOML};
use crate::export::{EndpointLabel, HubLabel, LlmLabel, OutputDir, Report, ServiceLabels, StageLabel};
use crate::gateway::{Gateway, Source};
use crate::hub::{CachedHub, HubClient, HubSettings};
use crate::sandbox::{BwrapSandbox, PythonEnv};
use gymforge_actors::ports::Store;
use gymforge_sim::mirror::HubMirror;

/// What `gymforge run` (or `gymforge daemon`) was asked to do.
pub struct RunRequest {
    pub config: Config,
    pub out: PathBuf,
    /// Answer LLM requests live (optionally recording them) or from a recording.
    pub llm_source: Source,
    /// Resolves when the batch should drain (a daemon's stop signal).
    pub drain: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The daemon's status, told about the gateway and the phase.
    pub daemon: Option<Arc<crate::daemon::DaemonState>>,
}

/// The services a run talks to, started or connected.
pub struct Services {
    pub sandbox: Arc<BwrapSandbox>,
    pub python: PythonEnv,
    pub hub: Arc<CachedHub<HubClient>>,
    pub llm: Arc<Gateway>,
    /// What each service is, for the summary and report.
    pub labels: ServiceLabels,
}

/// The prompt templates shipped in `config/prompts/`.
pub fn prompts() -> Prompts {
    Prompts {
        topic_system: include_str!("../config/prompts/topic_system.md").into(),
        topic_user: include_str!("../config/prompts/topic_user.md").into(),
        dataset_system: include_str!("../config/prompts/dataset_system.md").into(),
        dataset_user: include_str!("../config/prompts/dataset_user.md").into(),
        codegen_system: include_str!("../config/prompts/codegen_system.md").into(),
        codegen_user: include_str!("../config/prompts/codegen_user.md").into(),
        debug_user: include_str!("../config/prompts/debug_user.md").into(),
        agent_system: include_str!("../config/prompts/agent_system.md").into(),
        agent_task: include_str!("../config/prompts/agent_task.md").into(),
        agent_next: include_str!("../config/prompts/agent_next.md").into(),
    }
}

pub fn taxonomy() -> Taxonomy {
    let t: Taxonomy = toml::from_str(TAXONOMY_TOML).expect("the embedded taxonomy parses");
    t.validate().expect("the embedded taxonomy is valid");
    t
}

/// Provisions the Python environment and checks that the sandbox works with its files under
/// `probe_root` (where the run's jobs will have theirs).
pub async fn sandbox(config: &Config, probe_root: &Path, status: &(dyn Fn(&str) + Sync)) -> anyhow::Result<(PythonEnv, Arc<BwrapSandbox>)> {
    let cfg = config.sandbox.clone();
    status("checking the sandbox's Python environment");
    let python = {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let task = tokio::task::spawn_blocking(move || {
            PythonEnv::ensure(&cfg, PYTHON_REQUIREMENTS, &|line: &str| {
                tx.send(line.to_string()).ok();
            })
        });
        while let Some(line) = rx.recv().await {
            status(&format!("provisioning the sandbox's Python environment: {}", line.trim()));
        }
        task.await.context("the Python provisioning task failed")??
    };
    let sandbox = BwrapSandbox::new(&config.sandbox, python.clone())?;
    status("checking that the sandbox starts and reaches its files");
    sandbox.probe(probe_root).await?;
    Ok((python, Arc::new(sandbox)))
}

/// Starts or connects every service the config names. `spent_usd` is what earlier sessions of
/// the run spent on LLM calls (it counts against the run's budget); `state` is the run's state
/// directory, which holds the Hub cache.
pub async fn services(
    config: &Config,
    llm_source: Source,
    spent_usd: f64,
    state: &Path,
    status: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Services> {
    let (python, sandbox) = sandbox(config, &state.join("work"), status).await?;
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid address");

    let (hub, hub_label) = hub(config, &HubSettings::from_env(&config.hub), &python, loopback, status).await?;
    status("checking that the Hub answers");
    hub.check_reachable().await?;
    let scope = crate::hub::cache::scope(hub.api_base(), hub.viewer_base(), hub.has_token());
    let hub = CachedHub::new(hub, state.join(crate::hub::cache::CACHE_DIR), scope);

    let (llm, llm_label) = gateway(config, llm_source, spent_usd, loopback).await?;
    llm.check_reachable().await?;

    Ok(Services { sandbox, python, hub: Arc::new(hub), llm: Arc::new(llm), labels: ServiceLabels { llm: llm_label, hub: hub_label } })
}

/// The Hub client the settings ask for: the embedded mirror (built if needed and served on
/// loopback) or a real Hub. Also returns the Hub's service label.
pub async fn hub(
    config: &Config,
    settings: &HubSettings,
    python: &PythonEnv,
    loopback: SocketAddr,
    status: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<(HubClient, HubLabel)> {
    if let (Some(client), Some(endpoint)) = (settings.client(&config.hub)?, &settings.endpoint) {
        let label = HubLabel {
            kind: "Hugging Face Hub".into(),
            simulated: false,
            endpoint: endpoint.clone(),
            endpoint_from: Some(settings.source.as_str().into()),
            viewer: Some(settings.viewer.clone()),
            token: Some(settings.token.is_some()),
        };
        return Ok((client, label));
    }
    // ensure_built says "building" itself, and only when it builds (once; later runs reuse it).
    status("starting the embedded Hub mirror");
    let root = HubMirror::ensure_built(&mirror_cache_dir(config), &python.python(), &|line: &str| status(line)).await?;
    let (addr, _handle) = HubMirror::serve(root, loopback).await?;
    let base = format!("http://{addr}");
    let client =
        HubClient::new(base.clone(), base.clone(), None, config.hub.max_dataset_bytes, Duration::from_secs(config.hub.timeout_secs))?;
    let label = HubLabel {
        kind: "embedded mirror of datasets bundled with scikit-learn".into(),
        simulated: true,
        endpoint: base,
        endpoint_from: None,
        viewer: None,
        token: None,
    };
    Ok((client, label))
}

/// Starts the simulated teacher if a routed endpoint is `"sim"` (and answers are live), and
/// builds the gateway over the routed endpoints. Also returns the LLM's service label.
pub async fn gateway(config: &Config, source: Source, spent_usd: f64, loopback: SocketAddr) -> anyhow::Result<(Gateway, LlmLabel)> {
    let replaying = matches!(source, Source::Replay(_));
    let routed: std::collections::BTreeSet<&str> = config.llm.routes.all().iter().map(|(_, name)| *name).collect();
    let mut base_urls = std::collections::BTreeMap::new();
    let mut keys = std::collections::BTreeMap::new();
    let mut endpoints = std::collections::BTreeMap::new();
    let mut sim_base: Option<String> = None;
    for name in &routed {
        let e = &config.llm.endpoints[*name];
        let base = if e.is_sim() && !replaying {
            if sim_base.is_none() {
                let (addr, _handle) = gymforge_sim::teacher::serve(config.sim.clone(), loopback).await?;
                sim_base = Some(format!("http://{addr}/v1"));
            }
            sim_base.clone().expect("started above")
        } else {
            e.base_url.clone()
        };
        endpoints.insert(name.to_string(), EndpointLabel { base_url: base.clone(), model: e.model.clone(), simulated: e.is_sim() });
        base_urls.insert(name.to_string(), base);
        keys.insert(name.to_string(), Config::llm_api_key(e));
    }
    // Which endpoint answered each stage: a run may use the simulator for some stages only.
    let stages = config
        .llm
        .routes
        .all()
        .iter()
        .map(|(stage, name)| {
            let e = &config.llm.endpoints[*name];
            (*stage, StageLabel { endpoint: name.to_string(), model: e.model.clone(), simulated: e.is_sim() })
        })
        .collect();
    let simulated_endpoints = routed.iter().filter(|name| config.llm.endpoints[**name].is_sim()).count();
    let teacher = &config.llm.endpoints[&config.llm.routes.rollout];
    let kind = match (&source, simulated_endpoints) {
        (Source::Replay(path), _) => format!("replay of {}", path.display()),
        (_, 0) => "OpenAI-compatible endpoints".to_string(),
        (_, n) if n == routed.len() => "simulated teacher (a test and demo instrument, not a real model)".to_string(),
        _ => "OpenAI-compatible endpoints and, for some stages, the simulated teacher".to_string(),
    };
    // `simulated`: any stage's endpoint is; `stages` says which.
    let label = LlmLabel { kind, simulated: simulated_endpoints > 0, model: teacher.model.clone(), endpoints, stages };
    let gateway = Gateway::new(&config.llm, &base_urls, &keys, spent_usd, source)?;
    Ok((gateway, label))
}

/// The directory the embedded Hub mirror is built in (`hub-mirror/` beside the Python
/// environment).
pub fn mirror_cache_dir(config: &Config) -> PathBuf {
    let env = config.sandbox.python_env_dir();
    env.parent().map(Path::to_path_buf).unwrap_or(env)
}

/// The run's settings, from its configuration.
pub fn settings(config: &Config, work_root: PathBuf) -> Settings {
    let p = &config.pipeline;
    Settings {
        seed: config.seed,
        tasks: config.run.tasks,
        rollouts: config.run.rollouts,
        max_topics: match config.run.tasks {
            0 => 10 * config.run.max_topics_per_task,
            n => n * config.run.max_topics_per_task,
        },
        max_attempts: config.run.max_attempts,
        export_every: Duration::from_secs(config.daemon.export_every_secs),
        // Without a target, crashes are bounded per unit (max_attempts) rather than per run.
        max_restarts: match config.run.tasks {
            0 => u32::MAX,
            n => 20 + 4 * n * (1 + config.run.rollouts) * config.run.max_attempts,
        },
        workers: vec![
            (Stage::Topic, p.topic_workers),
            (Stage::Dataset, p.dataset_workers),
            (Stage::Codegen, p.codegen_workers),
            (Stage::Debug, p.debug_workers),
            (Stage::Export, p.export_workers),
            (Stage::Rollout, p.rollout_workers),
        ],
        debug_rounds: p.debug_rounds,
        prepare_timeout: Duration::from_secs(p.prepare_timeout_secs),
        baseline_headroom: p.baseline_headroom,
        agent: AgentSettings {
            max_steps: config.agent.max_steps,
            short_timeout: Duration::from_secs(config.agent.short_timeout_secs),
            temperature: config.agent.temperature,
            top_p: config.agent.top_p,
            cost_limit: config.agent.cost_limit,
            max_tokens: config.agent.max_tokens,
            keep_observations: config.agent.keep_observations as usize,
            context_window: config.agent.context_window,
            wall_clock: Duration::from_secs(config.agent.wall_clock_secs),
            command_files: vec![
                ("commands.py".into(), include_str!("../config/agent/commands.py").into()),
                ("commands.sh".into(), include_str!("../config/agent/commands.sh").into()),
            ],
        },
        faults: Faults {
            panic_rate: config.faults.worker_panic_rate,
            error_rate: config.faults.worker_error_rate,
            stages: config.faults.stages.iter().filter_map(|s| Stage::parse(s)).collect(),
        },
        work_root,
        artefact_limit_bytes: config.store.max_artefact_mb.saturating_mul(1_000_000),
        pull_every: Duration::from_millis(config.store.pull_every_ms.max(10)),
    }
}

/// The state directory inside an output directory.
pub fn state_dir(out: &Path) -> PathBuf {
    out.join(".gymforge")
}

/// Where a batch stands, counted from its units in the store: what `gymforge run` judges its
/// exit status by.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Accepted tasks asked for (0: no target).
    pub target_tasks: u32,
    pub rollouts_per_task: u32,
    pub topic_units: u32,
    pub accepted_tasks: u32,
    pub rollouts_dropped: u32,
    /// Units not yet ended.
    pub pending: u32,
    /// Accepted tasks with fewer than `rollouts_per_task` ended rollouts.
    pub tasks_missing_rollouts: u32,
    /// The most rollouts any task has.
    pub most_rollouts: u32,
}

impl Tally {
    pub fn of(units: &[gymforge_actors::Unit], target_tasks: u32, rollouts_per_task: u32) -> Tally {
        use gymforge_actors::model::{UnitKind, UnitStatus};
        use std::collections::BTreeMap;
        let mut t = Tally { target_tasks, rollouts_per_task, ..Tally::default() };
        let mut ended_rollouts: BTreeMap<&str, u32> = BTreeMap::new();
        let mut rollouts: BTreeMap<&str, u32> = BTreeMap::new();
        for u in units {
            match (u.kind, u.status) {
                (_, UnitStatus::Pending) => t.pending += 1,
                (UnitKind::Task, UnitStatus::Done) => t.accepted_tasks += 1,
                (UnitKind::Rollout, UnitStatus::Dropped) => t.rollouts_dropped += 1,
                (UnitKind::Rollout, UnitStatus::Done) | (UnitKind::Task, UnitStatus::Dropped) => {}
            }
            t.topic_units += u32::from(u.kind == UnitKind::Task);
            if let (UnitKind::Rollout, Some(task)) = (u.kind, u.parent.as_deref()) {
                *rollouts.entry(task).or_default() += 1;
                if u.status != UnitStatus::Pending {
                    *ended_rollouts.entry(task).or_default() += 1;
                }
            }
        }
        t.most_rollouts = rollouts.values().copied().max().unwrap_or(0);
        t.tasks_missing_rollouts = units
            .iter()
            .filter(|u| u.kind == UnitKind::Task && u.status == UnitStatus::Done)
            .filter(|u| ended_rollouts.get(u.id.as_str()).copied().unwrap_or(0) < rollouts_per_task)
            .count() as u32;
        t
    }

    /// Nothing is left to do for the target: every asked-for task is accepted and every
    /// accepted task's rollouts have ended.
    pub fn complete(&self) -> bool {
        self.target_tasks > 0 && self.accepted_tasks >= self.target_tasks && self.pending == 0 && self.tasks_missing_rollouts == 0
    }

    /// Why a batch that has ended falls short of its target, or `None` when it met it. A
    /// rollout meets the target only with a scored submission, as `report` counts it: a
    /// trajectory that ended without one is recorded but is no training data.
    pub fn shortfall(&self, report: &Report) -> Option<String> {
        if self.target_tasks == 0 {
            return None;
        }
        let asked_trajectories = u64::from(self.accepted_tasks.min(self.target_tasks) * self.rollouts_per_task);
        let mut short = Vec::new();
        if self.accepted_tasks < self.target_tasks {
            short.push(format!(
                "{} of {} tasks accepted after {} topics (the topic budget is run.max_topics_per_task per task)",
                self.accepted_tasks, self.target_tasks, self.topic_units
            ));
        }
        let (scored, recorded) = (report.rollouts.scored, report.rollouts.total);
        if scored < asked_trajectories {
            short.push(format!(
                "{scored} of {asked_trajectories} trajectories scored ({} recorded without a score, {} rollouts dropped)",
                recorded.saturating_sub(scored),
                self.rollouts_dropped
            ));
        }
        if short.is_empty() {
            return None;
        }
        let why = crate::export::frequent_drop_details(report, 1)
            .into_iter()
            .next()
            .map(|d| format!("; most frequent drop: {d}"))
            .unwrap_or_default();
        Some(format!("the batch ended short of its target: {}{why}", short.join(", ")))
    }

    /// Says so when the directory already holds more than this run asks for: nothing is removed.
    pub fn more_than_asked(&self) -> Option<String> {
        let more_tasks = self.target_tasks > 0 && self.accepted_tasks > self.target_tasks;
        let more_rollouts = self.most_rollouts > self.rollouts_per_task;
        (more_tasks || more_rollouts).then(|| {
            format!(
                "the output directory already holds {} accepted tasks with up to {} rollouts each, \
                 more than the {} tasks x {} rollouts asked for; nothing is removed, and its outputs keep all of them",
                self.accepted_tasks, self.most_rollouts, self.target_tasks, self.rollouts_per_task
            )
        })
    }
}

/// How a batch ended.
#[derive(Clone, Debug)]
pub struct BatchEnd {
    /// The store's count after the run.
    pub tally: Tally,
    /// The batch had met its target before this run started: nothing ran.
    pub already_complete: bool,
}

/// Counts the batch's units in the store.
async fn tally(store: &dyn Store, config: &Config) -> anyhow::Result<Tally> {
    let units = store.units().await.map_err(anyhow::Error::msg)?;
    Ok(Tally::of(&units, config.run.tasks, config.run.rollouts))
}

/// Runs one batch to its end. `progress` receives live snapshots.
pub async fn run_batch(
    request: RunRequest,
    status: &(dyn Fn(&str) + Sync),
    progress: tokio::sync::watch::Sender<Progress>,
) -> anyhow::Result<BatchEnd> {
    let RunRequest { config, out, llm_source, drain, daemon } = request;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let state = state_dir(&out);
    let _lock = StateLock::acquire(&state)?;
    if !config.store.url.is_empty() {
        status("connecting to the store");
    }
    let store = crate::store::open(&config.store, &state, Some(config.pipeline.rollout_workers)).await?;
    tracing::info!(store = %store.location(), "store open");
    check_resumable(&*store, &config, &out).await?;
    let before = tally(&*store, &config).await?;
    if let Some(note) = before.more_than_asked() {
        tracing::warn!("{note}");
    }
    if before.complete() && out.join("report.json").is_file() {
        return Ok(BatchEnd { tally: before, already_complete: true });
    }
    let spent_usd: f64 = { store.usage().await.map_err(anyhow::Error::msg)?.iter().map(|row| row.usage.cost_usd).sum() };
    let run_id = run_id(&*store).await?;
    let services = services(&config, llm_source, spent_usd, &state, status).await?;
    if let Some(shared) = store.shared_limits() {
        services.llm.share_limits(shared);
    }
    // An export from the store on another machine labels the services as this run does.
    let labels = serde_json::to_string(&services.labels).expect("serialisable");
    store.set_meta(SERVICES_META, &labels).await.map_err(anyhow::Error::msg)?;
    let sft = crate::sft::SftOptions { keep_observations: config.agent.keep_observations as usize, ..Default::default() };
    let outputs = OutputDir::new(out.clone()).with_labels(services.labels).with_gateway(services.llm.clone()).with_sft(sft);
    let pipeline = Arc::new(Pipeline {
        llm: services.llm.clone(),
        hub: services.hub.clone(),
        sandbox: services.sandbox.clone(),
        store: store.clone() as Arc<dyn Store>,
        outputs: Arc::new(outputs),
        telemetry: Arc::new(crate::telemetry::units::UnitTraces::new(run_id, store.clone())),
        logic: Arc::new(gymforge_actors::PipelineStages),
        settings: settings(&config, state.join("work")),
        prompts: prompts(),
        taxonomy: taxonomy(),
        ideas: Default::default(),
        progress,
    });
    status("running the pipeline");
    if let Some(d) = &daemon {
        d.gateway.set(services.llm.clone()).ok();
        d.store.set(store.clone()).ok();
        d.set_phase("running");
    }
    let outcome = gymforge_actors::supervisor::run_pipeline_until(pipeline, drain).await;
    services.llm.log_summary();
    store.leave().await;
    outcome.map_err(anyhow::Error::msg)?;
    Ok(BatchEnd { tally: tally(&*store, &config).await?, already_complete: false })
}

/// The store's meta key holding the run's [`crate::export::ServiceLabels`] as JSON.
const SERVICES_META: &str = "services";

/// `gymforge export --store`: writes the MLGym directory, trajectories, SFT data and report of a
/// batch from its shared store into `out`, on any machine, while the batch runs. Returns the
/// tasks and trajectories written.
pub async fn export_batch(config: &Config, out: &Path) -> anyhow::Result<(usize, usize)> {
    anyhow::ensure!(!config.store.url.is_empty(), "name the store: --store postgres://USER@HOST:PORT/DATABASE (or GYMFORGE_STORE_URL)");
    std::fs::create_dir_all(out).with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let state = state_dir(out);
    let _lock = StateLock::acquire(&state)?;
    let store = crate::store::open(&config.store, &state, None).await?;
    let labels = store.meta(SERVICES_META).await.map_err(anyhow::Error::msg)?.and_then(|text| serde_json::from_str(&text).ok());
    let mut outputs = OutputDir::new(out.to_path_buf());
    if let Some(labels) = labels {
        outputs = outputs.with_labels(labels);
    }
    let wall = store.meta("wall_time_secs").await.map_err(anyhow::Error::msg)?.and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let outputs: Arc<dyn gymforge_actors::ports::Outputs> = Arc::new(outputs);
    let work = gymforge_actors::paths::WorkPaths::new(state.join("work"));
    let written = gymforge_actors::export::write_from_store(store.as_ref(), &outputs, &work, wall).await;
    store.leave().await;
    let inputs = written.map_err(anyhow::Error::msg)?;
    Ok((inputs.tasks.len(), inputs.rollouts.len()))
}

/// One process at a time per output directory: an exclusive `flock` on `.gymforge/lock`, held
/// until drop (the kernel releases it if the process dies).
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub fn acquire(state: &Path) -> anyhow::Result<StateLock> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(state).with_context(|| format!("cannot create {}", state.display()))?;
        let path = state.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if let Err(e) = file.try_lock() {
            if let std::fs::TryLockError::Error(e) = e {
                anyhow::bail!("cannot lock {}: {e}", path.display());
            }
            let mut holder = String::new();
            file.read_to_string(&mut holder).ok();
            anyhow::bail!(
                "another gymforge process (pid {}) is working on {}; \
                 stop it first (the batch resumes where it stopped) or choose another --out",
                holder.trim(),
                state.parent().unwrap_or(state).display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(StateLock { _file: file })
    }
}

/// A directory holding an earlier run resumes it only with the same seed: a different seed
/// would mix two runs' tasks.
async fn check_resumable(store: &dyn Store, config: &Config, out: &Path) -> anyhow::Result<()> {
    let seed = config.seed.to_string();
    match store.meta("seed").await.map_err(anyhow::Error::msg)? {
        Some(previous) if previous != seed => {
            anyhow::bail!("{} holds a run with seed {previous}; resume it with --seed {previous} or choose another --out", out.display())
        }
        Some(_) => {}
        None => store.set_meta("seed", &seed).await.map_err(anyhow::Error::msg)?,
    }
    Ok(())
}

/// The run's identity, made at its first start and kept across resumes; trace ids derive from it.
async fn run_id(store: &dyn Store) -> anyhow::Result<String> {
    if let Some(id) = store.meta("run_id").await.map_err(anyhow::Error::msg)? {
        return Ok(id);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let id = format!("{:x}-{:x}", now.as_nanos(), std::process::id());
    store.set_meta("run_id", &id).await.map_err(anyhow::Error::msg)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gymforge_actors::model::{Stage, Unit, UnitKind, UnitStatus};

    fn ended(id: &str, kind: UnitKind, parent: Option<&str>, status: UnitStatus) -> Unit {
        let stage = if kind == UnitKind::Task { Stage::Export } else { Stage::Rollout };
        Unit { status, ..Unit::pending(id.into(), kind, 0, parent.map(Into::into), stage) }
    }

    /// One accepted task with two rollouts, both ended with a trajectory.
    fn two_trajectories() -> Tally {
        let units = [
            ended("t0", UnitKind::Task, None, UnitStatus::Done),
            ended("t0.r0", UnitKind::Rollout, Some("t0"), UnitStatus::Done),
            ended("t0.r1", UnitKind::Rollout, Some("t0"), UnitStatus::Done),
        ];
        Tally::of(&units, 1, 2)
    }

    /// A report of the two trajectories, `n` of them scored.
    fn scored(n: u64) -> Report {
        let mut report = Report::default();
        report.rollouts.total = 2;
        report.rollouts.scored = n;
        report
    }

    #[test]
    fn a_batch_meets_its_target_only_with_scored_trajectories() {
        let tally = two_trajectories();
        assert!(tally.complete(), "nothing is left to do: {tally:?}");
        assert_eq!(tally.shortfall(&scored(2)), None);
        let why = tally.shortfall(&scored(0)).expect("no trajectory scored");
        assert_eq!(why, "the batch ended short of its target: 0 of 2 trajectories scored (2 recorded without a score, 0 rollouts dropped)");
        assert!(tally.shortfall(&scored(1)).unwrap().contains("1 of 2 trajectories scored (1 recorded without a score"));
    }

    #[test]
    fn a_batch_without_a_target_is_never_short() {
        let tally = Tally { target_tasks: 0, ..two_trajectories() };
        assert_eq!(tally.shortfall(&scored(0)), None);
    }

    #[test]
    fn too_few_tasks_are_said_with_the_topics_tried() {
        let units = [ended("t0", UnitKind::Task, None, UnitStatus::Dropped), ended("t1", UnitKind::Task, None, UnitStatus::Dropped)];
        let why = Tally::of(&units, 1, 1).shortfall(&scored(0)).unwrap();
        assert!(why.contains("0 of 1 tasks accepted after 2 topics"), "{why}");
        assert!(!why.contains("trajectories"), "no task, so no trajectory was asked for: {why}");
    }
}
