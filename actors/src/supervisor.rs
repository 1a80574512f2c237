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
//! the worker is replaced. More than `max_restarts` restarts in a run stop it with an error. A
//! worker still on one unit past its stage's deadline
//! ([`crate::pipeline::Settings::stage_deadline`]) is killed
//! and treated the same way: a stuck stage costs an attempt, never the run.
//!
//! Memory stays flat over a daemon's life: the supervisor holds only the units that are not
//! finished, and keeps what finished as counters ([`Tally`]). The store is awaited (an async
//! port), and the periodic export of a run without a target runs as a task of its own while
//! the supervisor goes on scheduling.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::model::{DropReason, Stage, Unit, UnitId, UnitKind, UnitStatus, Verdict};
use crate::pipeline::{Pipeline, Progress, StageCounts};
use crate::ports::{Event, EventKind, FinalInputs, PortError, TaskPlan};
use crate::worker::{StageWorker, WorkerArgs, WorkerMsg};

/// How often the supervisor looks for workers stuck past their stage's deadline.
pub const STUCK_CHECK_EVERY: Duration = Duration::from_secs(30);

pub enum SupervisorMsg {
    /// A worker finished a unit; the store already holds the outcome.
    Finished { worker: ActorId, unit: UnitId, verdict: Verdict },
    /// A unit's retry pause is over.
    Requeue(UnitId),
    /// Stop taking work: no new units, nothing more dispatched; finish when the units in
    /// flight are done. Pending units stay in the store for the next run.
    Drain,
    /// Time to look for stuck workers.
    CheckStuck,
    /// A periodic export ended.
    Exported,
    /// Time for a node of a shared store to create and pull work (`Settings::pull_every`).
    Pull,
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

/// A unit in a worker's hands, and since when.
struct Held {
    worker: ActorRef<WorkerMsg>,
    unit: UnitId,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: Vec<ActorRef<WorkerMsg>>,
    busy: HashMap<ActorId, Held>,
    queue: VecDeque<UnitId>,
}

/// What the run has done so far, as counters: finished units are not kept in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Task units ever created (the next one's sequence number).
    pub tasks_created: u64,
    pub tasks_accepted: u32,
    pub tasks_dropped: u32,
    pub rollouts_created: u32,
    pub rollouts_ended: u32,
    /// Per stage: units that passed it and units dropped at it.
    pub passed: BTreeMap<Stage, u32>,
    pub dropped: BTreeMap<Stage, u32>,
}

impl Tally {
    /// The tally of units as the store holds them (a resumed run).
    fn of(units: &[Unit]) -> Tally {
        let mut t = Tally::default();
        for u in units {
            match u.kind {
                UnitKind::Task => {
                    t.tasks_created = t.tasks_created.max(u.seq + 1);
                    t.tasks_accepted += u32::from(u.status == UnitStatus::Done);
                    t.tasks_dropped += u32::from(u.status == UnitStatus::Dropped);
                    for stage in Stage::ALL.into_iter().filter(|s| *s != Stage::Rollout && *s < u.stage) {
                        *t.passed.entry(stage).or_default() += 1;
                    }
                }
                UnitKind::Rollout => {
                    t.rollouts_created += 1;
                    t.rollouts_ended += u32::from(u.status != UnitStatus::Pending);
                }
            }
            match u.status {
                UnitStatus::Done => *t.passed.entry(u.stage).or_default() += 1,
                UnitStatus::Dropped => *t.dropped.entry(u.stage).or_default() += 1,
                UnitStatus::Pending => {}
            }
        }
        t
    }
}

pub struct State {
    p: Arc<Pipeline>,
    pools: BTreeMap<Stage, Pool>,
    worker_stage: HashMap<ActorId, Stage>,
    /// The units that are not finished (pending in the store); finished ones leave.
    live: HashMap<UnitId, Unit>,
    tally: Tally,
    /// Units in a stage queue or in a worker's hands: a unit is scheduled at most once, however
    /// it came to be queued (created, resumed, grown, retried, after a crash).
    scheduled: HashSet<UnitId>,
    /// Queued units this node pulled from a shared store, claimed already.
    pulled: HashSet<UnitId>,
    retries_waiting: usize,
    restarts: u32,
    started: Instant,
    /// Wall time of the run's earlier starts.
    wall_before: f64,
    done: Option<oneshot::Sender<Result<RunOutcome, String>>>,
    drain: Option<oneshot::Receiver<()>>,
    draining: bool,
    stopping: bool,
    /// Task units dropped since the last accepted one.
    dropped_in_a_row: u32,
    /// When a run without a target last wrote its outputs, whether anything ended since, and the
    /// export in progress.
    last_export: Instant,
    ended_since_export: bool,
    export: Option<tokio::task::JoinHandle<()>>,
    stuck_timer: Option<tokio::task::JoinHandle<()>>,
    pull_timer: Option<tokio::task::JoinHandle<()>>,
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
        let units = p.store.units().await?;
        let wall_before = p.store.meta("wall_time_secs").await?.and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let mut state = State {
            p: p.clone(),
            pools: Stage::ALL.iter().map(|s| (*s, Pool::default())).collect(),
            worker_stage: HashMap::new(),
            tally: Tally::of(&units),
            live: HashMap::new(),
            scheduled: HashSet::new(),
            pulled: HashSet::new(),
            retries_waiting: 0,
            restarts: 0,
            started: Instant::now(),
            wall_before,
            done: Some(args.done),
            drain: args.drain,
            draining: false,
            stopping: false,
            dropped_in_a_row: 0,
            last_export: Instant::now(),
            ended_since_export: false,
            export: None,
            stuck_timer: None,
            pull_timer: None,
        };
        for stage in Stage::ALL {
            for _ in 0..p.workers_for(stage) {
                state.spawn_worker(&myself, stage).await?;
            }
        }
        // Resume: every pending unit goes back to the queue of the stage it is at, in creation
        // order (a node of a shared store pulls them instead), and accepted tasks get any
        // rollout units a crash kept them from creating.
        if !p.store.is_shared() {
            let mut pending: Vec<Unit> = units.iter().filter(|u| u.status == UnitStatus::Pending).cloned().collect();
            pending.sort_by_key(|u| (u.kind == UnitKind::Rollout, u.seq));
            for unit in pending {
                state.enqueue(unit.stage, unit.id.clone(), false);
                state.live.insert(unit.id.clone(), unit);
            }
        }
        state.create_missing_rollouts(&units).await?;
        Ok(state)
    }

    async fn post_start(&self, myself: ActorRef<SupervisorMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        if let Some(drain) = state.drain.take() {
            let me = myself.clone();
            tokio::spawn(async move {
                if drain.await.is_ok() {
                    me.cast(SupervisorMsg::Drain).ok();
                }
            });
        }
        state.stuck_timer = Some(myself.send_interval(STUCK_CHECK_EVERY, || SupervisorMsg::CheckStuck));
        if state.p.store.is_shared() {
            state.pull_timer = Some(myself.send_interval(state.p.settings.pull_every, || SupervisorMsg::Pull));
        }
        state.step(&myself).await
    }

    async fn post_stop(&self, _: ActorRef<SupervisorMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        for timer in [state.stuck_timer.take(), state.pull_timer.take()].into_iter().flatten() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<SupervisorMsg>, msg: SupervisorMsg, state: &mut State) -> Result<(), ActorProcessingErr> {
        let handled = State::on_message(myself.clone(), msg, state).await;
        state.fail_on(&myself, handled);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let handled = State::on_supervision(myself.clone(), event, state).await;
        state.fail_on(&myself, handled);
        Ok(())
    }
}

/// What the supervisor does with a message and with a worker's end; an error (the store failed)
/// ends the run with its message.
impl State {
    fn fail_on(&mut self, myself: &ActorRef<SupervisorMsg>, handled: Result<(), ActorProcessingErr>) {
        if let Err(e) = handled {
            self.fail(myself, format!("the supervisor stopped: {e}"));
        }
    }

    async fn on_message(myself: ActorRef<SupervisorMsg>, msg: SupervisorMsg, state: &mut State) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Finished { worker, unit, verdict } => {
                if let Some(stage) = state.worker_stage.get(&worker).copied() {
                    let pool = state.pool(stage);
                    if let Some(held) = pool.busy.remove(&worker) {
                        pool.idle.push(held.worker);
                    }
                }
                state.scheduled.remove(&unit);
                state.apply(&myself, &unit, verdict).await?;
            }
            SupervisorMsg::Requeue(unit) => {
                state.retries_waiting = state.retries_waiting.saturating_sub(1);
                if let Some(u) = state.live.get(&unit) {
                    let stage = u.stage;
                    state.enqueue(stage, unit, true);
                }
            }
            SupervisorMsg::Drain => {
                let in_flight: usize = state.pools.values().map(|p| p.busy.len()).sum();
                tracing::warn!(in_flight, "draining: no new work is started; waiting for the units in flight");
                state.draining = true;
                state.release_queued().await?;
            }
            SupervisorMsg::CheckStuck => state.kill_stuck_workers(),
            SupervisorMsg::Exported => state.export = None,
            SupervisorMsg::Pull => return state.pull(&myself).await,
        }
        state.step(&myself).await
    }

    async fn on_supervision(myself: ActorRef<SupervisorMsg>, event: SupervisionEvent, state: &mut State) -> Result<(), ActorProcessingErr> {
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
        let held = pool.busy.remove(&id).map(|held| held.unit);
        state.restarts += 1;
        state.p.telemetry.worker_restarted(stage);
        tracing::warn!(%stage, unit = ?held, %reason, restarts = state.restarts, "stage worker crashed; restarting it");
        if let Some(unit) = held {
            state.scheduled.remove(&unit);
            let store = &state.p.store;
            store.add_event(&Event { kind: EventKind::WorkerRestart, unit: unit.clone(), stage, detail: reason.clone() }).await?;
            let attempts = match store.record_attempt(&unit).await {
                Ok(attempts) => Some(attempts),
                // Another node holds the unit now: nothing to count here.
                Err(PortError::LeaseLost(_)) => None,
                Err(e) => return Err(e.into()),
            };
            if attempts.is_none() {
                state.live.remove(&unit);
            } else if let Some(attempts) = attempts.filter(|a| *a >= state.p.settings.max_attempts) {
                let detail = format!("worker crashed {attempts} times; last: {reason}");
                store.drop_unit(&unit, DropReason::WorkerCrashed, &detail).await?;
                let verdict = Verdict::Dropped { reason: DropReason::WorkerCrashed, fatal: None };
                if let Some(u) = state.live.get(&unit) {
                    state.p.telemetry.stage_ended(u, stage, &verdict, Duration::ZERO);
                }
                state.apply(&myself, &unit, verdict).await?;
            } else if let Some(attempts) = attempts {
                if let Some(u) = state.live.get_mut(&unit) {
                    u.attempts = attempts;
                }
                state.enqueue(stage, unit, true);
            }
        }
        if state.restarts > state.p.settings.max_restarts {
            let msg = format!(
                "stage workers crashed {} times, more than the limit of {}; stopping the run",
                state.restarts, state.p.settings.max_restarts
            );
            state.fail(&myself, msg);
            return Ok(());
        }
        state.spawn_worker(&myself, stage).await?;
        state.step(&myself).await
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

    /// Kills every worker that has held its unit past the stage's deadline; its supervision
    /// event then counts an attempt and replaces it.
    fn kill_stuck_workers(&mut self) {
        let now = Instant::now();
        for (stage, pool) in &self.pools {
            let deadline = self.p.settings.stage_deadline(*stage);
            for held in pool.busy.values().filter(|h| now.duration_since(h.since) > deadline) {
                let secs = now.duration_since(held.since).as_secs();
                tracing::error!(%stage, unit = %held.unit, secs, "stage stuck past its deadline; killing its worker");
                held.worker.kill();
            }
        }
    }

    /// Mirrors a verdict (already committed by the worker) in memory and schedules what follows.
    async fn apply(&mut self, myself: &ActorRef<SupervisorMsg>, unit_id: &str, verdict: Verdict) -> Result<(), PortError> {
        let Some(unit) = self.live.get_mut(unit_id) else { return Ok(()) };
        match verdict {
            Verdict::Advanced { next: Some(stage) } => {
                *self.tally.passed.entry(unit.stage).or_default() += 1;
                unit.stage = stage;
                unit.attempts = 0;
                if self.p.store.is_shared() {
                    // Whichever node has a free worker pulls it.
                    self.live.remove(unit_id);
                } else {
                    self.enqueue(stage, unit_id.to_string(), false);
                }
            }
            Verdict::Advanced { next: None } => {
                let unit = self.live.remove(unit_id).expect("present");
                *self.tally.passed.entry(unit.stage).or_default() += 1;
                self.ended_since_export = true;
                match unit.kind {
                    UnitKind::Task => {
                        self.tally.tasks_accepted += 1;
                        self.dropped_in_a_row = 0;
                        for index in 0..self.p.settings.rollouts {
                            self.create_rollout(&unit.id, unit.seq, index).await?;
                        }
                    }
                    UnitKind::Rollout => self.tally.rollouts_ended += 1,
                }
            }
            Verdict::Dropped { reason, fatal } => {
                let unit = self.live.remove(unit_id).expect("present");
                tracing::debug!(unit = %unit.id, %reason, "unit dropped");
                *self.tally.dropped.entry(unit.stage).or_default() += 1;
                self.ended_since_export = true;
                match unit.kind {
                    UnitKind::Task => {
                        self.tally.tasks_dropped += 1;
                        self.dropped_in_a_row += 1;
                    }
                    UnitKind::Rollout => self.tally.rollouts_ended += 1,
                }
                if let Some(message) = fatal {
                    // The units in flight stay pending in the store: a later run resumes them.
                    self.fail(myself, message);
                }
            }
            // Another node holds it: it is that node's now.
            Verdict::NotClaimed => {
                self.live.remove(unit_id);
            }
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

    /// Creates (idempotently in the store) rollout `index` of an accepted task and queues it
    /// (with a shared store, leaves it there for any node to pull).
    async fn create_rollout(&mut self, task: &str, task_seq: u64, index: u32) -> Result<(), PortError> {
        let id = rollout_unit_id(task, index);
        let unit = Unit::pending(id.clone(), UnitKind::Rollout, task_seq * 1000 + u64::from(index), Some(task.to_string()), Stage::Rollout);
        self.p.store.insert_unit(&unit).await?;
        self.tally.rollouts_created += 1;
        if !self.p.store.is_shared() {
            self.enqueue(Stage::Rollout, id.clone(), false);
            self.live.insert(id, unit);
        }
        Ok(())
    }

    /// Creates the rollout units of accepted tasks that a crash kept from being created.
    async fn create_missing_rollouts(&mut self, units: &[Unit]) -> Result<(), PortError> {
        let existing: HashSet<&str> = units.iter().map(|u| u.id.as_str()).collect();
        let mut missing = Vec::new();
        for task in units.iter().filter(|u| u.kind == UnitKind::Task && u.status == UnitStatus::Done) {
            for index in 0..self.p.settings.rollouts {
                if !existing.contains(rollout_unit_id(&task.id, index).as_str()) {
                    missing.push((task.id.clone(), task.seq, index));
                }
            }
        }
        for (task, seq, index) in missing {
            self.create_rollout(&task, seq, index).await?;
        }
        Ok(())
    }

    /// A node of a shared store: creates the task units the batch wants, claims work for its
    /// idle workers, and finishes when nothing is left in the whole batch.
    async fn pull(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        if self.stopping || self.draining {
            return Ok(());
        }
        self.top_up().await?;
        for stage in Stage::ALL {
            let pool = &self.pools[&stage];
            let wanted = pool.idle.len().saturating_sub(pool.queue.len());
            if wanted == 0 {
                continue;
            }
            // Not the units held here: a worker that committed a stage and has not reported yet
            // still holds its unit.
            let held: Vec<UnitId> = self.live.keys().cloned().collect();
            for unit in self.p.store.claim_next(stage, wanted as u32, &held).await? {
                self.enqueue(stage, unit.id.clone(), false);
                self.pulled.insert(unit.id.clone());
                self.live.insert(unit.id.clone(), unit);
            }
        }
        let locally_idle = self.retries_waiting == 0 && self.pools.values().all(|p| p.queue.is_empty() && p.busy.is_empty());
        if locally_idle && self.p.store.pending_count().await? == 0 {
            // A node killed between accepting a task and creating its rollouts left them out.
            let units = self.p.store.units().await?;
            self.create_missing_rollouts(&units).await?;
            if self.p.store.pending_count().await? == 0 {
                self.publish(true);
                self.finish(myself).await;
                return Ok(());
            }
        }
        self.step(myself).await
    }

    /// Gives back the claims on units queued here but not started, so other nodes take them
    /// at once (a draining node of a shared store).
    async fn release_queued(&mut self) -> Result<(), PortError> {
        if !self.p.store.is_shared() {
            return Ok(());
        }
        let queued: Vec<UnitId> = self.pools.values_mut().flat_map(|p| p.queue.drain(..)).collect();
        for unit in queued {
            if self.pulled.remove(&unit) {
                self.p.store.release(&unit).await?;
            }
            self.scheduled.remove(&unit);
            self.live.remove(&unit);
        }
        Ok(())
    }

    /// Task units in progress at once: twice the workers of the task stages, so every worker has
    /// one unit at hand and the next is queued.
    fn task_window(&self) -> u32 {
        2 * [Stage::Topic, Stage::Dataset, Stage::Codegen, Stage::Debug, Stage::Export].iter().map(|s| self.p.workers_for(*s)).sum::<u32>()
    }

    fn tasks_in_progress(&self) -> u32 {
        let ended = u64::from(self.tally.tasks_accepted) + u64::from(self.tally.tasks_dropped);
        (self.tally.tasks_created - ended) as u32
    }

    /// Creates task units, in order, while fewer than the window are in progress and the
    /// accepted plus in-progress tasks fall short of the target within the topic budget (or
    /// forever, without a target): [`TaskPlan`], applied by the store to the whole batch.
    async fn top_up(&mut self) -> Result<(), PortError> {
        let s = &self.p.settings;
        let plan = TaskPlan { tasks: s.tasks, max_topics: s.max_topics, window: self.task_window() };
        let shared = self.p.store.is_shared();
        loop {
            // One process knows the counts already; the store is asked only when they say yes.
            let (created, accepted) = (self.tally.tasks_created, u64::from(self.tally.tasks_accepted));
            if !shared && !plan.wants(created, accepted, u64::from(self.tasks_in_progress()), 1) {
                return Ok(());
            }
            let Some(unit) = self.p.store.create_task_unit(&plan).await? else { return Ok(()) };
            self.tally.tasks_created = self.tally.tasks_created.max(unit.seq + 1);
            if !shared {
                self.enqueue(Stage::Topic, unit.id.clone(), false);
                self.live.insert(unit.id.clone(), unit);
            }
        }
    }

    /// A run without a target rewrites its outputs now and then, so they are current while it
    /// runs; the export is a task of its own, one at a time.
    fn export_now_and_then(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if !self.p.settings.forever()
            || !self.ended_since_export
            || self.export.is_some()
            || self.last_export.elapsed() < self.p.settings.export_every
        {
            return;
        }
        self.last_export = Instant::now();
        self.ended_since_export = false;
        let (p, wall, me) = (self.p.clone(), self.wall_time(), myself.clone());
        self.export = Some(tokio::spawn(async move {
            if let Err(e) = crate::export::finalize(&p, wall).await {
                tracing::warn!(error = %e, "cannot rewrite the run's outputs; trying again later");
            }
            me.cast(SupervisorMsg::Exported).ok();
        }));
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
                let Some(unit) = self.live.get(&unit_id).cloned() else {
                    self.scheduled.remove(&unit_id);
                    continue;
                };
                let worker = pool.idle.pop().expect("non-empty");
                let claimed = self.pulled.remove(&unit_id);
                match worker.cast(WorkerMsg::Work { unit, claimed }) {
                    Ok(()) => {
                        pool.busy.insert(worker.get_id(), Held { worker, unit: unit_id, since: Instant::now() });
                    }
                    // The worker is dying; its supervision event will replace it.
                    Err(_) => {
                        if claimed {
                            self.pulled.insert(unit_id.clone());
                        }
                        pool.queue.push_front(unit_id);
                    }
                }
            }
        }
    }

    /// Tops up, dispatches, publishes progress, and finishes when nothing is left to do.
    async fn step(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        if self.stopping {
            return Ok(());
        }
        if self.p.settings.forever() && self.dropped_in_a_row >= self.p.settings.max_topics {
            let msg = format!(
                "the last {} task units were all dropped: the pipeline is producing nothing \
                 (see report.json's funnel for the reasons); stopping",
                self.dropped_in_a_row
            );
            self.fail(myself, msg);
            return Ok(());
        }
        let shared = self.p.store.is_shared();
        let idle = if self.draining {
            self.pools.values().all(|p| p.busy.is_empty())
        } else {
            self.export_now_and_then(myself);
            // A node of a shared store creates work and finishes on its pull ticks.
            if !shared {
                self.top_up().await?;
            }
            self.dispatch();
            !shared && self.retries_waiting == 0 && self.pools.values().all(|p| p.queue.is_empty() && p.busy.is_empty())
        };
        self.publish(idle);
        if idle {
            self.finish(myself).await;
        }
        Ok(())
    }

    /// Wall time of the run so far, over all its starts.
    fn wall_time(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    async fn finish(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if let Some(export) = self.export.take() {
            export.await.ok();
        }
        let wall = self.wall_time();
        let result = match self.p.store.set_meta("wall_time_secs", &format!("{wall:.3}")).await {
            Ok(()) => crate::export::finalize(&self.p, wall).await,
            Err(e) => Err(e),
        };
        let result = result
            .map(|inputs| RunOutcome { target_tasks: self.p.settings.tasks, accepted_tasks: inputs.tasks.len() as u32, inputs })
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

    /// Publishes the counts: a fixed cost per stage, whatever the number of finished units.
    fn publish(&self, finished: bool) {
        let stages = Stage::ALL
            .into_iter()
            .map(|stage| {
                let pool = &self.pools[&stage];
                let counts = StageCounts {
                    queued: pool.queue.len() as u32,
                    in_flight: pool.busy.len() as u32,
                    passed: self.tally.passed.get(&stage).copied().unwrap_or(0),
                    dropped: self.tally.dropped.get(&stage).copied().unwrap_or(0),
                };
                (stage, counts)
            })
            .collect();
        let progress = Progress {
            stages,
            target_tasks: self.p.settings.tasks,
            accepted_tasks: self.tally.tasks_accepted,
            rollouts_total: self.tally.rollouts_created,
            rollouts_done: self.tally.rollouts_ended,
            worker_restarts: self.restarts,
            finished,
            live_units: self.live.len() as u32,
        };
        self.p.progress.send_replace(progress);
    }
}
