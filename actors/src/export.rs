//! Export stage: write an accepted task into the MLGym output tree, and at the end of a run the
//! files that summarise it (tasks.json, SFT data, report).

use crate::model::{AcceptedTask, Outcome, RolloutRecord, Stage, Unit};
use crate::pipeline::Pipeline;
use crate::ports::{FinalInputs, PortError, Store};

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let task: AcceptedTask = crate::worker::stored(p, &unit.id, Stage::Debug)?;
    p.outputs.write_task(&task, &p.paths().final_dir(&unit.id))?;
    Ok(Outcome::Advance(serde_json::json!({ "task_id": task.task_id })))
}

/// Reads everything back from the store and writes the run's summary files.
pub fn finalize(p: &Pipeline, wall_time_secs: f64) -> Result<FinalInputs, PortError> {
    let inputs = final_inputs(p.store.as_ref(), wall_time_secs)?;
    p.outputs.finalize(&inputs)?;
    Ok(inputs)
}

/// What the summary files are made from: the exported tasks, the rollouts, usage and events.
pub fn final_inputs(store: &dyn Store, wall_time_secs: f64) -> Result<FinalInputs, PortError> {
    let exported: std::collections::HashSet<String> = store.results(Stage::Export)?.into_iter().map(|(id, _)| id).collect();
    let tasks: Vec<AcceptedTask> = store
        .results(Stage::Debug)?
        .into_iter()
        .filter(|(id, _)| exported.contains(id))
        .filter_map(|(_, v)| serde_json::from_value(v).ok())
        .collect();
    let rollouts: Vec<RolloutRecord> = store
        .results(Stage::Rollout)?
        .into_iter()
        .filter_map(|(id, v)| serde_json::from_value(v).ok().map(|r| RolloutRecord { unit: id, ..r }))
        .collect();
    Ok(FinalInputs { units: store.units()?, tasks, rollouts, usage: store.usage()?, events: store.events()?, wall_time_secs })
}
