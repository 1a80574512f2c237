//! The supervisor: owns the stage worker pools, schedules units onto idle workers, restarts
//! crashed workers, and finishes the run.
//!
//! Backpressure is explicit: a worker holds at most one unit, and a unit waits in its stage's
//! queue until a worker of that stage is idle. Queues are bounded: at most [`State::task_window`]
//! task units are in progress at once, and each accepted task adds `rollouts` rollout units.
//! A run with a target creates at most `max_topics` task units; a run without one (`tasks = 0`)
//! goes on until drained, rewriting its outputs every `export_every`, and stops with an
//! error when `max_topics` task units in a row are dropped.
//!
//! Restarts: when a worker panics or fails, the unit it held is retried from the store (its
//! previous stages' results are kept) up to `max_attempts`, then dropped as `worker_crashed`;
//! the worker is replaced. More than `max_restarts` restarts in a run stop it with an error.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use crate::model::{Stage, Unit, UnitId, UnitKind, UnitStatus};
use crate::pipeline::{Pipeline, Progress, StageCounts};
use crate::ports::{Event, FinalInputs, PortError};
use crate::worker::{StageWorker, Verdict, WorkerArgs, WorkerMsg};

pub enum SupervisorMsg {
    /// A worker finished a unit; the store already holds the outcome.
    Finished { worker: ActorId, unit: UnitId, verdict: Verdict },
    /// A unit's retry pause is over.
    Requeue(UnitId),
    /// Stop taking work: no new units, nothing more dispatched; finish when the units in
    /// flight are done. Pending units stay in the store for the next run.
    Drain,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub target_tasks: u32,
    pub accepted_tasks: u32,
    pub inputs: FinalInputs,
}

pub struct Supervisor;

pub struct SupervisorArgs {
    pub pipeline: Arc<Pipeline>,
    pub done: oneshot::Sender<Result<RunOutcome, String>>,
    /// Resolves when the run should drain (a daemon's SIGTERM).
    pub drain: Option<oneshot::Receiver<()>>,
}

#[derive(Default)]
struct Pool {
    idle: Vec<ActorRef<WorkerMsg>>,
    busy: HashMap<ActorId, (ActorRef<WorkerMsg>, UnitId)>,
    queue: VecDeque<UnitId>,
}

pub struct State {
    p: Arc<Pipeline>,
    pools: BTreeMap<Stage, Pool>,
    worker_stage: HashMap<ActorId, Stage>,
    units: BTreeMap<UnitId, Unit>,
    /// Units in a stage queue or in a worker's hands: a unit is scheduled at most once, however
    /// it came to be queued (created, resumed, grown, retried, after a crash).
    scheduled: HashSet<UnitId>,
    retries_waiting: usize,
    restarts: u32,
    started: Instant,
    done: Option<oneshot::Sender<Result<RunOutcome, String>>>,
    drain: Option<oneshot::Receiver<()>>,
    draining: bool,
    stopping: bool,
    /// Task units dropped since the last accepted one.
    dropped_in_a_row: u32,
    /// When a run without a target last wrote its outputs, and whether anything ended since.
    last_export: Instant,
    ended_since_export: bool,
}

/// Runs the pipeline until its target is met or its budget is spent, and returns the outcome.
pub async fn run_pipeline(pipeline: Arc<Pipeline>) -> Result<RunOutcome, String> {
    run_pipeline_until(pipeline, None).await
}

/// [`run_pipeline`], draining early when `drain` resolves.
pub async fn run_pipeline_until(pipeline: Arc<Pipeline>, drain: Option<oneshot::Receiver<()>>) -> Result<RunOutcome, String> {
    let (tx, rx) = oneshot::channel();
    let (_actor, handle) = Actor::spawn(None, Supervisor, SupervisorArgs { pipeline, done: tx, drain })
        .await
        .map_err(|e| format!("cannot start the supervisor: {e}"))?;
    let outcome = rx.await.map_err(|_| "the supervisor stopped without finishing the run".to_string())?;
    handle.await.ok();
    outcome
}

pub fn task_unit_id(seq: u64) -> UnitId {
    format!("t{seq:06}")
}

pub fn rollout_unit_id(task: &str, index: u32) -> UnitId {
    format!("{task}.r{index}")
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = State;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, myself: ActorRef<SupervisorMsg>, args: SupervisorArgs) -> Result<State, ActorProcessingErr> {
        let p = args.pipeline;
        let units = p.store.units()?.into_iter().map(|u| (u.id.clone(), u)).collect();
        let mut state = State {
            p: p.clone(),
            pools: Stage::ALL.iter().map(|s| (*s, Pool::default())).collect(),
            worker_stage: HashMap::new(),
            units,
            scheduled: HashSet::new(),
            retries_waiting: 0,
            restarts: 0,
            started: Instant::now(),
            done: Some(args.done),
            drain: args.drain,
            draining: false,
            stopping: false,
            dropped_in_a_row: 0,
            last_export: Instant::now(),
            ended_since_export: false,
        };
        for stage in Stage::ALL {
            for _ in 0..p.workers_for(stage) {
                state.spawn_worker(&myself, stage).await?;
            }
        }
        Ok(state)
    }

    async fn post_start(&self, myself: ActorRef<SupervisorMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        // Resume: every pending unit goes back to the queue of the stage it is at, in creation
        // order; accepted tasks get any rollout units a crash kept them from creating.
        let task_ids: Vec<UnitId> = state
            .units
            .values()
            .filter(|u| u.kind == UnitKind::Task && u.status == UnitStatus::Done)
            .map(|u| u.id.clone())
            .collect();
        for id in task_ids {
            state.create_rollouts(&id)?;
        }
        let mut pending: Vec<&Unit> = state.units.values().filter(|u| u.status == UnitStatus::Pending).collect();
        pending.sort_by_key(|u| (u.kind == UnitKind::Rollout, u.seq));
        let queued: Vec<(Stage, UnitId)> = pending.iter().map(|u| (u.stage, u.id.clone())).collect();
        for (stage, id) in queued {
            state.enqueue(stage, id, false);
        }
        if let Some(drain) = state.drain.take() {
            let me = myself.clone();
            tokio::spawn(async move {
                if drain.await.is_ok() {
                    me.cast(SupervisorMsg::Drain).ok();
                }
            });
        }
        state.step(&myself)
    }

    async fn handle(&self, myself: ActorRef<SupervisorMsg>, msg: SupervisorMsg, state: &mut State) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Finished { worker, unit, verdict } => {
                if let Some(stage) = state.worker_stage.get(&worker).copied() {
                    let pool = state.pool(stage);
                    if let Some((actor, _)) = pool.busy.remove(&worker) {
                        pool.idle.push(actor);
                    }
                }
                state.scheduled.remove(&unit);
                state.apply(&myself, &unit, verdict)?;
            }
            SupervisorMsg::Requeue(unit) => {
                state.retries_waiting = state.retries_waiting.saturating_sub(1);
                if let Some(u) = state.units.get(&unit) {
                    let stage = u.stage;
                    state.enqueue(stage, unit, true);
                }
            }
            SupervisorMsg::Drain => {
                let in_flight: usize = state.pools.values().map(|p| p.busy.len()).sum();
                tracing::warn!(in_flight, "draining: no new work is started; waiting for the units in flight");
                state.draining = true;
            }
        }
        state.step(&myself)
    }

    async fn handle_supervisor_evt(&self, myself: ActorRef<SupervisorMsg>, event: SupervisionEvent, state: &mut State) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let id = cell.get_id();
        let Some(stage) = state.worker_stage.remove(&id) else { return Ok(()) };
        let pool = state.pool(stage);
        pool.idle.retain(|w| w.get_id() != id);
        let held = pool.busy.remove(&id).map(|(_, unit)| unit);
        state.restarts += 1;
        state.p.telemetry.worker_restarted(stage);
        tracing::warn!(%stage, unit = ?held, %reason, restarts = state.restarts, "stage worker crashed; restarting it");
        if let Some(unit) = held {
            state.scheduled.remove(&unit);
            state.p.store.release(&unit)?;
            state.p.store.add_event(&Event { kind: "worker_restart".into(), unit: unit.clone(), stage, detail: reason.clone() })?;
            let attempts = state.p.store.record_attempt(&unit)?;
            if attempts >= state.p.settings.max_attempts {
                let detail = format!("worker crashed {attempts} times; last: {reason}");
                state.p.store.drop_unit(&unit, "worker_crashed", &detail)?;
                let verdict = Verdict::Dropped { reason: "worker_crashed".into(), fatal: None };
                if let Some(u) = state.units.get(&unit) {
                    state.p.telemetry.stage_ended(u, stage, &verdict, std::time::Duration::ZERO);
                }
                state.apply(&myself, &unit, verdict)?;
            } else {
                if let Some(u) = state.units.get_mut(&unit) {
                    u.attempts = attempts;
                }
                state.enqueue(stage, unit, true);
            }
        }
        if state.restarts > state.p.settings.max_restarts {
            let msg = format!("stage workers crashed {} times, more than the limit of {}; stopping the run", state.restarts, state.p.settings.max_restarts);
            state.fail(&myself, msg);
            return Ok(());
        }
        state.spawn_worker(&myself, stage).await?;
        state.step(&myself)
    }
}

impl State {
    fn pool(&mut self, stage: Stage) -> &mut Pool {
        self.pools.get_mut(&stage).expect("a pool per stage")
    }

    /// Queues a unit at `stage` (at the front: a retry) unless it is scheduled already.
    fn enqueue(&mut self, stage: Stage, id: UnitId, front: bool) {
        if !self.scheduled.insert(id.clone()) {
            return;
        }
        let queue = &mut self.pool(stage).queue;
        if front { queue.push_front(id) } else { queue.push_back(id) }
    }

    async fn spawn_worker(&mut self, myself: &ActorRef<SupervisorMsg>, stage: Stage) -> Result<(), ActorProcessingErr> {
        let args = WorkerArgs { stage, pipeline: self.p.clone(), supervisor: myself.clone() };
        let (worker, _) = Actor::spawn_linked(None, StageWorker, args, myself.get_cell()).await?;
        self.worker_stage.insert(worker.get_id(), stage);
        self.pool(stage).idle.push(worker);
        Ok(())
    }

    /// Mirrors a verdict (already committed by the worker) in memory and schedules what follows.
    fn apply(&mut self, myself: &ActorRef<SupervisorMsg>, unit_id: &str, verdict: Verdict) -> Result<(), PortError> {
        let Some(unit) = self.units.get_mut(unit_id) else { return Ok(()) };
        match verdict {
            Verdict::Advanced { next: Some(stage) } => {
                unit.stage = stage;
                unit.attempts = 0;
                self.enqueue(stage, unit_id.to_string(), false);
            }
            Verdict::Advanced { next: None } => {
                unit.status = UnitStatus::Done;
                unit.attempts = 0;
                self.ended_since_export = true;
                if unit.kind == UnitKind::Task {
                    self.dropped_in_a_row = 0;
                    self.create_rollouts(unit_id)?;
                }
            }
            Verdict::Dropped { reason, fatal } => {
                unit.status = UnitStatus::Dropped;
                unit.drop_reason = Some(reason);
                self.ended_since_export = true;
                if unit.kind == UnitKind::Task {
                    self.dropped_in_a_row += 1;
                }
                if let Some(message) = fatal {
                    // The units in flight stay pending in the store: a later run resumes them.
                    self.fail(myself, message);
                }
            }
            Verdict::NotClaimed => {}
            Verdict::Retry { attempts } => {
                unit.attempts = attempts;
                self.retries_waiting += 1;
                let delay = crate::seed::backoff(attempts, Duration::from_millis(500), Duration::from_secs(32), &[unit_id]);
                let id = unit_id.to_string();
                myself.send_after(delay, move || SupervisorMsg::Requeue(id));
            }
        }
        Ok(())
    }

    /// Creates (idempotently) the rollout units of an accepted task and queues the new ones.
    fn create_rollouts(&mut self, task: &str) -> Result<(), PortError> {
        let task_seq = self.units.get(task).map(|u| u.seq).unwrap_or(0);
        for index in 0..self.p.settings.rollouts {
            let id = rollout_unit_id(task, index);
            if self.units.contains_key(&id) {
                continue;
            }
            let unit = Unit {
                id: id.clone(),
                kind: UnitKind::Rollout,
                seq: task_seq * 1000 + u64::from(index),
                parent: Some(task.to_string()),
                stage: Stage::Rollout,
                status: UnitStatus::Pending,
                attempts: 0,
                drop_reason: None,
                drop_detail: None,
            };
            self.p.store.insert_unit(&unit)?;
            self.units.insert(id.clone(), unit);
            self.enqueue(Stage::Rollout, id, false);
        }
        Ok(())
    }

    /// Task units in progress at once: twice the workers of the task stages, so every worker has
    /// one unit at hand and the next is queued.
    fn task_window(&self) -> u32 {
        2 * [Stage::Topic, Stage::Dataset, Stage::Codegen, Stage::Debug, Stage::Export].iter().map(|s| self.p.workers_for(*s)).sum::<u32>()
    }

    /// Creates task units, in order, while fewer than the window are in progress and the
    /// accepted plus in-progress tasks fall short of the target within the topic budget (or
    /// forever, without a target).
    fn top_up(&mut self) -> Result<(), PortError> {
        let p = self.p.clone();
        let s = &p.settings;
        let (mut created, mut live, mut in_progress) = (0u64, 0u32, 0u32);
        for u in self.units.values().filter(|u| u.kind == UnitKind::Task) {
            created += 1;
            live += u32::from(u.status != UnitStatus::Dropped);
            in_progress += u32::from(u.status == UnitStatus::Pending);
        }
        let window = self.task_window();
        while in_progress < window && (s.forever() || (live < s.tasks && created < u64::from(s.max_topics))) {
            let unit = Unit {
                id: task_unit_id(created),
                kind: UnitKind::Task,
                seq: created,
                parent: None,
                stage: Stage::Topic,
                status: UnitStatus::Pending,
                attempts: 0,
                drop_reason: None,
                drop_detail: None,
            };
            self.p.store.insert_unit(&unit)?;
            self.enqueue(Stage::Topic, unit.id.clone(), false);
            self.units.insert(unit.id.clone(), unit);
            created += 1;
            live += 1;
            in_progress += 1;
        }
        Ok(())
    }

    /// A run without a target rewrites its outputs now and then, so they are current while it runs.
    fn export_now_and_then(&mut self) {
        if !self.p.settings.forever() || !self.ended_since_export || self.last_export.elapsed() < self.p.settings.export_every {
            return;
        }
        self.last_export = Instant::now();
        self.ended_since_export = false;
        if let Err(e) = crate::export::finalize(&self.p, self.wall_time()) {
            tracing::warn!(error = %e, "cannot rewrite the run's outputs; trying again later");
        }
    }

    /// Hands queued units to idle workers.
    fn dispatch(&mut self) {
        for stage in Stage::ALL {
            loop {
                let pool = self.pools.get_mut(&stage).expect("a pool per stage");
                if pool.idle.is_empty() || pool.queue.is_empty() {
                    break;
                }
                let unit_id = pool.queue.pop_front().expect("non-empty");
                let Some(unit) = self.units.get(&unit_id).filter(|u| u.status == UnitStatus::Pending).cloned() else {
                    self.scheduled.remove(&unit_id);
                    continue;
                };
                let worker = pool.idle.pop().expect("non-empty");
                match worker.cast(WorkerMsg::Work(unit)) {
                    Ok(()) => {
                        pool.busy.insert(worker.get_id(), (worker, unit_id));
                    }
                    // The worker is dying; its supervision event will replace it.
                    Err(_) => pool.queue.push_front(unit_id),
                }
            }
        }
    }

    /// Tops up, dispatches, publishes progress, and finishes when nothing is left to do.
    fn step(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        if self.stopping {
            return Ok(());
        }
        if self.p.settings.forever() && self.dropped_in_a_row >= self.p.settings.max_topics {
            let msg = format!(
                "the last {} task units were all dropped: the pipeline is producing nothing (see report.json's funnel for the reasons); stopping",
                self.dropped_in_a_row
            );
            self.fail(myself, msg);
            return Ok(());
        }
        let idle = if self.draining {
            self.pools.values().all(|p| p.busy.is_empty())
        } else {
            self.export_now_and_then();
            self.top_up()?;
            self.dispatch();
            self.retries_waiting == 0 && self.pools.values().all(|p| p.queue.is_empty() && p.busy.is_empty())
        };
        self.publish(idle);
        if idle {
            self.finish(myself);
        }
        Ok(())
    }

    /// Wall time of the run so far, over all its starts.
    fn wall_time(&self) -> f64 {
        let before: f64 = self.p.store.meta("wall_time_secs").ok().flatten().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        before + self.started.elapsed().as_secs_f64()
    }

    fn finish(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let wall = self.wall_time();
        let result = self
            .p
            .store
            .set_meta("wall_time_secs", &format!("{wall:.3}"))
            .and_then(|()| crate::export::finalize(&self.p, wall))
            .map(|inputs| RunOutcome {
                target_tasks: self.p.settings.tasks,
                accepted_tasks: inputs.tasks.len() as u32,
                inputs,
            })
            .map_err(|e| format!("cannot write the run's final outputs: {e}"));
        self.shutdown(myself, result);
    }

    fn fail(&mut self, myself: &ActorRef<SupervisorMsg>, message: String) {
        self.shutdown(myself, Err(message));
    }

    fn shutdown(&mut self, myself: &ActorRef<SupervisorMsg>, result: Result<RunOutcome, String>) {
        self.stopping = true;
        if let Some(done) = self.done.take() {
            done.send(result).ok();
        }
        myself.stop_children(None);
        myself.stop(None);
    }

    fn publish(&self, finished: bool) {
        let mut progress = Progress {
            target_tasks: self.p.settings.tasks,
            worker_restarts: self.restarts,
            finished,
            ..Default::default()
        };
        for stage in Stage::ALL {
            let pool = &self.pools[&stage];
            let mut counts = StageCounts {
                queued: pool.queue.len() as u32,
                in_flight: pool.busy.len() as u32,
                ..Default::default()
            };
            for u in self.units.values() {
                let relevant = (stage == Stage::Rollout) == (u.kind == UnitKind::Rollout);
                if !relevant {
                    continue;
                }
                if u.status == UnitStatus::Dropped && u.stage == stage {
                    counts.dropped += 1;
                } else if u.status == UnitStatus::Done || (u.status == UnitStatus::Pending && u.stage > stage) || (u.status == UnitStatus::Dropped && u.stage > stage) {
                    counts.passed += 1;
                }
            }
            progress.stages.push((stage, counts));
        }
        for u in self.units.values() {
            match (u.kind, u.status) {
                (UnitKind::Task, UnitStatus::Done) => progress.accepted_tasks += 1,
                (UnitKind::Rollout, status) => {
                    progress.rollouts_total += 1;
                    if status != UnitStatus::Pending {
                        progress.rollouts_done += 1;
                    }
                }
                _ => {}
            }
        }
        self.p.progress.send_replace(progress);
    }
}
