//! Export stage: write an accepted task into the MLGym output tree, and at the end of a run the
//! files that summarise it (tasks.json, SFT data, report).

use crate::model::{AcceptedTask, ExportedTask, Outcome, RolloutRecord, Stage, StageOutput, Unit};
use crate::pipeline::Pipeline;
use crate::ports::{FinalInputs, PortError, Store};

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let task: AcceptedTask = crate::worker::stored(p, &unit.id).await?;
    p.outputs.write_task(&task, &p.paths().final_dir(&unit.id))?;
    Ok(Outcome::Advance(ExportedTask { task_id: task.task_id }.into()))
}

/// Reads everything back from the store and writes the run's summary files.
/// The store is read on the caller's task; the files are written on a blocking thread.
pub async fn finalize(p: &Pipeline, wall_time_secs: f64) -> Result<FinalInputs, PortError> {
    let inputs = final_inputs(p.store.as_ref(), wall_time_secs).await?;
    let outputs = p.outputs.clone();
    tokio::task::spawn_blocking(move || outputs.finalize(&inputs).map(|()| inputs))
        .await
        .map_err(|e| PortError::Permanent(format!("writing the run's outputs stopped: {e}")))?
}

/// What the summary files are made from: the exported tasks, the rollouts, usage and events.
pub async fn final_inputs(store: &dyn Store, wall_time_secs: f64) -> Result<FinalInputs, PortError> {
    let exported: std::collections::HashSet<String> = store.results(Stage::Export).await?.into_iter().map(|(id, _)| id).collect();
    let tasks: Vec<AcceptedTask> = store
        .results(Stage::Debug)
        .await?
        .into_iter()
        .filter(|(id, _)| exported.contains(id))
        .filter_map(|(_, result)| AcceptedTask::from_result(result))
        .collect();
    let rollouts: Vec<RolloutRecord> = store
        .results(Stage::Rollout)
        .await?
        .into_iter()
        .filter_map(|(id, result)| RolloutRecord::from_result(result).map(|r| RolloutRecord { unit: id, ..r }))
        .collect();
    Ok(FinalInputs {
        units: store.units().await?,
        tasks,
        rollouts,
        usage: store.usage().await?,
        events: store.events().await?,
        wall_time_secs,
    })
}
