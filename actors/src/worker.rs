//! The stage worker actor. Every stage pool is made of these: a worker takes one unit at a time
//! from the supervisor, runs its stage's logic, commits the result to the store, and reports the
//! verdict. A panic or an error escapes to the supervisor, which owns restarts.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::model::{DropReason, Outcome, Stage, StageOutput, Unit, UnitKind, Verdict};
use crate::pipeline::Pipeline;
use crate::ports::{Event, EventKind, PortError};
use crate::supervisor::SupervisorMsg;

pub struct StageWorker;

pub struct WorkerArgs {
    pub stage: Stage,
    pub pipeline: Arc<Pipeline>,
    pub supervisor: ActorRef<SupervisorMsg>,
}

pub enum WorkerMsg {
    /// Work on the unit; `claimed` when the supervisor pulled it claimed from a shared store.
    Work { unit: Unit, claimed: bool },
}

impl Actor for StageWorker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(&self, _: ActorRef<WorkerMsg>, args: WorkerArgs) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(&self, myself: ActorRef<WorkerMsg>, msg: WorkerMsg, state: &mut WorkerArgs) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Work { unit, claimed } = msg;
        // No work starts on a unit that is not claimed in the store first.
        if !claimed && !state.pipeline.store.claim(&unit.id, state.stage).await? {
            tracing::error!(unit = %unit.id, stage = %state.stage, "unit already claimed; not working on it twice");
            state.supervisor.cast(SupervisorMsg::Finished { worker: myself.get_id(), unit: unit.id, verdict: Verdict::NotClaimed })?;
            return Ok(());
        }
        inject_fault(&state.pipeline, state.stage, &unit)?;
        let span = state.pipeline.telemetry.stage_span(&unit, state.stage);
        let started = std::time::Instant::now();
        let verdict = match process(&state.pipeline, state.stage, &unit).instrument(span).await {
            // Another node holds the unit now: its work here is forgotten, not retried.
            Err(PortError::LeaseLost(e)) => {
                tracing::warn!(unit = %unit.id, stage = %state.stage, error = %e, "lease lost; leaving the unit to the node that holds it");
                Verdict::NotClaimed
            }
            other => other?,
        };
        state.pipeline.telemetry.stage_ended(&unit, state.stage, &verdict, started.elapsed());
        state.supervisor.cast(SupervisorMsg::Finished { worker: myself.get_id(), unit: unit.id, verdict })?;
        Ok(())
    }
}

/// Runs one stage on one unit and commits the outcome. `Err` only when the store fails.
pub async fn process(p: &Pipeline, stage: Stage, unit: &Unit) -> Result<Verdict, PortError> {
    let result = p.logic.run(p, stage, unit).await;
    match result {
        Ok(Outcome::Advance(result)) => {
            debug_assert_eq!(result.stage(), stage, "a stage returns its own result");
            let next = if unit.kind == UnitKind::Task { stage.next() } else { None };
            p.store.complete_stage(&unit.id, &result, next).await?;
            Ok(Verdict::Advanced { next })
        }
        Ok(Outcome::Drop { reason, detail }) => drop(p, stage, unit, reason, &detail).await,
        Err(PortError::Transient(e)) => {
            let attempts = p.store.record_attempt(&unit.id).await?;
            p.store.add_event(&Event { kind: EventKind::Retry, unit: unit.id.clone(), stage, detail: e.clone() }).await?;
            if attempts >= p.settings.max_attempts {
                drop(p, stage, unit, DropReason::TransientExhausted, &format!("after {attempts} attempts: {e}")).await
            } else {
                tracing::warn!(unit = %unit.id, %stage, attempts, error = %e, "transient failure, will retry");
                Ok(Verdict::Retry { attempts })
            }
        }
        // Named after the stage: the detail says what failed.
        Err(PortError::Permanent(e)) => drop(p, stage, unit, DropReason::stage_failed(stage), &e).await,
        Err(PortError::Refused { reason, detail }) => drop(p, stage, unit, reason, &detail).await,
        Err(lost @ PortError::LeaseLost(_)) => Err(lost),
    }
}

async fn drop(p: &Pipeline, stage: Stage, unit: &Unit, reason: DropReason, detail: &str) -> Result<Verdict, PortError> {
    tracing::info!(unit = %unit.id, %stage, %reason, detail, "unit dropped");
    p.store.drop_unit(&unit.id, reason, detail).await?;
    let fatal = reason.stops_the_run().then(|| format!("{detail} ({stage} stage, unit {}: {reason})", unit.id));
    Ok(Verdict::Dropped { reason, fatal })
}

/// Fails on purpose at the configured rates (a pure function of seed, unit, stage and attempt).
fn inject_fault(p: &Pipeline, stage: Stage, unit: &Unit) -> Result<(), ActorProcessingErr> {
    let f = &p.settings.faults;
    if f.panic_rate <= 0.0 && f.error_rate <= 0.0 {
        return Ok(());
    }
    if !f.stages.is_empty() && !f.stages.contains(&stage) {
        return Ok(());
    }
    let x = crate::seed::unit_float(crate::seed::hash(&[
        "fault",
        &p.settings.seed.to_string(),
        &unit.id,
        stage.as_str(),
        &unit.attempts.to_string(),
    ]));
    if x < f.panic_rate {
        panic!("injected fault: {stage} worker panics on {}", unit.id);
    }
    if x < f.panic_rate + f.error_rate {
        return Err(format!("injected fault: {stage} worker fails on {}", unit.id).into());
    }
    Ok(())
}

/// Reads a unit's stored result of the stage `T` is the result of.
pub async fn stored<T: StageOutput>(p: &Pipeline, unit: &str) -> Result<T, PortError> {
    let stage = T::STAGE;
    let result =
        p.store.result(unit, stage).await?.ok_or_else(|| PortError::Permanent(format!("unit {unit} has no stored {stage} result")))?;
    T::from_result(result).ok_or_else(|| PortError::Permanent(format!("the stored {stage} result of {unit} is of another stage")))
}
