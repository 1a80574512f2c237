//! The stage worker actor. Every stage pool is made of these: a worker takes one unit at a time
//! from the supervisor, runs its stage's logic, commits the result to the store, and reports the
//! verdict. A panic or an error escapes to the supervisor, which owns restarts.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::model::{Outcome, Stage, Unit, UnitKind};
use crate::pipeline::Pipeline;
use crate::ports::{Event, PortError};
use crate::supervisor::SupervisorMsg;

pub struct StageWorker;

pub struct WorkerArgs {
    pub stage: Stage,
    pub pipeline: Arc<Pipeline>,
    pub supervisor: ActorRef<SupervisorMsg>,
}

pub enum WorkerMsg {
    Work(Unit),
}

/// What became of a unit, as reported to the supervisor. The store already holds it.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Moved to the next stage (`None`: the unit is done).
    Advanced { next: Option<Stage> },
    /// `fatal`: the reason dooms every unit (see [`stops_the_run`]); the run stops with this
    /// message.
    Dropped { reason: String, fatal: Option<String> },
    /// A transient failure; the unit should be tried again after a pause.
    Retry { attempts: u32 },
    /// The unit was claimed already (it is being worked on elsewhere): nothing was done.
    NotClaimed,
}

impl Actor for StageWorker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(&self, _: ActorRef<WorkerMsg>, args: WorkerArgs) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(&self, myself: ActorRef<WorkerMsg>, msg: WorkerMsg, state: &mut WorkerArgs) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Work(unit) = msg;
        // No work starts on a unit that is not claimed in the store first.
        if !state.pipeline.store.claim(&unit.id, state.stage)? {
            tracing::error!(unit = %unit.id, stage = %state.stage, "unit already claimed; not working on it twice");
            state.supervisor.cast(SupervisorMsg::Finished { worker: myself.get_id(), unit: unit.id, verdict: Verdict::NotClaimed })?;
            return Ok(());
        }
        inject_fault(&state.pipeline, state.stage, &unit)?;
        let span = state.pipeline.telemetry.stage_span(&unit, state.stage);
        let started = std::time::Instant::now();
        let verdict = process(&state.pipeline, state.stage, &unit).instrument(span).await?;
        state.pipeline.telemetry.stage_ended(&unit, state.stage, &verdict, started.elapsed());
        state.supervisor.cast(SupervisorMsg::Finished { worker: myself.get_id(), unit: unit.id, verdict })?;
        Ok(())
    }
}

/// Runs one stage on one unit and commits the outcome. `Err` only when the store fails.
pub async fn process(p: &Pipeline, stage: Stage, unit: &Unit) -> Result<Verdict, PortError> {
    let result = match stage {
        Stage::Topic => crate::topic::run(p, unit).await,
        Stage::Dataset => crate::dataset::run(p, unit).await,
        Stage::Codegen => crate::codegen::run(p, unit).await,
        Stage::Debug => crate::debug::run(p, unit).await,
        Stage::Export => crate::export::run(p, unit).await,
        Stage::Rollout => crate::rollout::run(p, unit).await,
    };
    let drop = |reason: &str, detail: &str| -> Result<Verdict, PortError> {
        tracing::info!(unit = %unit.id, %stage, reason, detail, "unit dropped");
        p.store.drop_unit(&unit.id, reason, detail)?;
        let fatal = stops_the_run(reason).then(|| format!("{detail} ({stage} stage, unit {}: {reason})", unit.id));
        Ok(Verdict::Dropped { reason: reason.to_string(), fatal })
    };
    match result {
        Ok(Outcome::Advance(value)) => {
            let next = if unit.kind == UnitKind::Task { stage.next() } else { None };
            p.store.complete_stage(&unit.id, stage, &value, next)?;
            Ok(Verdict::Advanced { next })
        }
        Ok(Outcome::Drop { reason, detail }) => drop(&reason, &detail),
        Err(PortError::Transient(e)) => {
            let attempts = p.store.record_attempt(&unit.id)?;
            p.store.add_event(&Event { kind: "retry".into(), unit: unit.id.clone(), stage, detail: e.clone() })?;
            if attempts >= p.settings.max_attempts {
                drop("transient_exhausted", &format!("after {attempts} attempts: {e}"))
            } else {
                tracing::warn!(unit = %unit.id, %stage, attempts, error = %e, "transient failure, will retry");
                Ok(Verdict::Retry { attempts })
            }
        }
        // Named after the stage: the detail says what failed.
        Err(PortError::Permanent(e)) => drop(&format!("{stage}_failed"), &e),
        Err(PortError::Refused { reason, detail }) => drop(&reason, &detail),
    }
}

/// Drop reasons that would end every later unit the same way: the first one stops the run
/// instead of letting it burn its topic budget (the sandbox cannot start, an endpoint refuses
/// the key or has no quota, the run's LLM budget is spent, the output directory is unwritable).
pub fn stops_the_run(reason: &str) -> bool {
    matches!(reason, "sandbox_unavailable" | "llm_auth" | "llm_quota" | "budget_exhausted" | "output_unwritable")
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

/// Reads a stored stage result of a unit.
pub fn stored<T: DeserializeOwned>(p: &Pipeline, unit: &str, stage: Stage) -> Result<T, PortError> {
    let value = p
        .store
        .result(unit, stage)?
        .ok_or_else(|| PortError::Permanent(format!("unit {unit} has no stored {stage} result")))?;
    serde_json::from_value(value).map_err(|e| PortError::Permanent(format!("stored {stage} result of {unit} is unreadable: {e}")))
}
