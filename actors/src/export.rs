//! Export stage: write an accepted task into the MLGym output tree, and at the end of a run the
//! files that summarise it (tasks.json, SFT data, report).

use crate::model::{AcceptedTask, ExportedTask, Outcome, RolloutRecord, Stage, StageOutput, Unit};
use crate::pipeline::Pipeline;
use std::sync::Arc;

use crate::paths::WorkPaths;
use crate::ports::{ArtefactKind, FinalInputs, Outputs, PortError, Store};

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let task: AcceptedTask = crate::worker::stored(p, &unit.id).await?;
    let prepared = crate::artefacts::fetch(p, &unit.id, ArtefactKind::PreparedTask).await?;
    p.outputs.write_task(&task, &prepared)?;
    Ok(Outcome::Advance(ExportedTask { task_id: task.task_id }.into()))
}

/// Reads everything back from the store and writes the run's summary files.
/// The store is read on the caller's task; the files are written on a blocking thread.
pub async fn finalize(p: &Pipeline, wall_time_secs: f64) -> Result<FinalInputs, PortError> {
    write_from_store(p.store.as_ref(), &p.outputs, &p.paths(), wall_time_secs).await
}

/// Writes an output directory from the store: with a shared store first every task and
/// trajectory it does not hold yet (other nodes made them; a task's prepared files come from
/// the store into `work`), then the summary files. `gymforge export --store` is this on any
/// machine.
pub async fn write_from_store(
    store: &dyn Store,
    outputs: &Arc<dyn Outputs>,
    work: &WorkPaths,
    wall_time_secs: f64,
) -> Result<FinalInputs, PortError> {
    let inputs = final_inputs(store, wall_time_secs).await?;
    if store.is_shared() {
        for task in inputs.tasks.iter().filter(|t| !outputs.has_task(&t.task_id)) {
            let dir = work.final_dir(&task.unit);
            crate::artefacts::fetch_into(store, &task.unit, ArtefactKind::PreparedTask, &dir).await?;
            let (outputs, task) = (outputs.clone(), task.clone());
            blocking(move || outputs.write_task(&task, &dir)).await?;
        }
        let missing: Vec<RolloutRecord> = inputs.rollouts.iter().filter(|r| !outputs.has_rollout(r)).cloned().collect();
        let out = outputs.clone();
        blocking(move || missing.iter().try_for_each(|r| out.write_rollout(r))).await?;
    }
    let outputs = outputs.clone();
    blocking(move || outputs.finalize(&inputs).map(|()| inputs)).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, PortError> + Send + 'static) -> Result<T, PortError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| PortError::Permanent(format!("writing the run's outputs stopped: {e}")))?
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
