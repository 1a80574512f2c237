//! The output directory `OUT/` and its layout: [`OutputDir`] implements the pipeline's
//! [`Outputs`] port, writing each task's MLGym configs and data, each rollout's trajectory, and
//! at the end of a run tasks.json, the SFT dataset, the replay file and report.json.

use std::path::{Path, PathBuf};

use gymforge_actors::model::{AcceptedTask, RolloutRecord};
use gymforge_actors::ports::{FinalInputs, Outputs, PortError};

use crate::sft::{SftOptions, SftSummary};
use serde_json::json;

use super::files::{copy_atomic, io_err, mirror_dir, permanent, regular_file, to_pretty_json, write_atomic, write_jsonl};
use super::mlgym::{STARTER_FILES, dataset_config, task_config, to_yaml};
use super::replay::replay_lines;
use super::report::build_report;
use super::services::ServiceLabels;
use super::tasks_json::tasks_index;

/// The output directory `OUT/`.
#[derive(Clone)]
pub struct OutputDir {
    root: PathBuf,
    labels: Option<ServiceLabels>,
    gateway: Option<std::sync::Arc<crate::gateway::Gateway>>,
    sft: SftOptions,
}

impl OutputDir {
    pub fn new(root: PathBuf) -> OutputDir {
        OutputDir { root, labels: None, gateway: None, sft: SftOptions::default() }
    }

    /// The rules `sft/train.jsonl` is written with at the end of a run.
    pub fn with_sft(mut self, options: SftOptions) -> OutputDir {
        self.sft = options;
        self
    }

    /// The LLM gateway whose live counters (per endpoint: requests, 429s, retries, cooldowns,
    /// circuit, concurrency) go into `report.json` under `llm.gateway`.
    pub fn with_gateway(mut self, gateway: std::sync::Arc<crate::gateway::Gateway>) -> OutputDir {
        self.gateway = Some(gateway);
        self
    }

    /// The services the run used. They appear in `report.json` under `services`, with a
    /// top-level `simulated` flag that is true when any service (any stage's endpoint) is
    /// simulated; every SFT line's `meta.simulated` says whether the rollout stage's teacher was
    /// ([`ServiceLabels::teacher_simulated`]).
    pub fn with_labels(mut self, labels: ServiceLabels) -> OutputDir {
        self.labels = Some(labels);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `OUT/mlgym`, the directory to drop into an MLGym checkout.
    pub fn mlgym_dir(&self) -> PathBuf {
        self.root.join("mlgym")
    }

    pub fn task_config_path(&self, task_id: &str) -> PathBuf {
        self.mlgym_dir().join("configs/tasks").join(format!("{task_id}.yaml"))
    }

    pub fn dataset_config_path(&self, task_id: &str) -> PathBuf {
        self.mlgym_dir().join("configs/datasets").join(format!("{task_id}.yaml"))
    }

    /// `OUT/mlgym/data/<task_id>`: the task's starter code, with its data in `data/`.
    pub fn task_data_dir(&self, task_id: &str) -> PathBuf {
        self.mlgym_dir().join("data").join(task_id)
    }

    pub fn tasks_index_path(&self) -> PathBuf {
        self.mlgym_dir().join("tasks.json")
    }

    /// `OUT/trajectories/<run_name>` (separators in the name become `-`).
    pub fn run_dir(&self, run_name: &str) -> Result<PathBuf, PortError> {
        Ok(self.root.join("trajectories").join(path_component("run name", run_name)?))
    }

    pub fn sft_path(&self) -> PathBuf {
        self.root.join("sft/train.jsonl")
    }

    pub fn report_path(&self) -> PathBuf {
        self.root.join("report.json")
    }

    /// `OUT/replay.jsonl`: MLGym's replay format, one trajectory per line.
    pub fn replay_path(&self) -> PathBuf {
        self.root.join("replay.jsonl")
    }

    /// Writes `sft/train.jsonl` from the rollouts with the default rules of [`crate::sft`].
    pub fn write_sft(&self, inputs: &FinalInputs) -> Result<SftSummary, PortError> {
        let options = SftOptions { simulated: self.labels.as_ref().is_some_and(ServiceLabels::teacher_simulated), ..self.sft.clone() };
        let (lines, summary) = crate::sft::build(&inputs.rollouts, &inputs.tasks, &options);
        write_jsonl(&self.sft_path(), &lines)?;
        Ok(summary)
    }
}

impl Outputs for OutputDir {
    fn write_task(&self, task: &AcceptedTask, prepared: &Path) -> Result<(), PortError> {
        let task_id = path_component("task id", &task.task_id)?;
        if task_id != task.task_id {
            return Err(permanent(format!("task id {:?} contains a path separator", task.task_id)));
        }
        let starter = prepared.join("starter");
        let eval_data = prepared.join("eval_data");
        for name in STARTER_FILES {
            regular_file(&starter.join(name))?;
        }
        if !eval_data.is_dir() {
            return Err(permanent(format!("{} is not a directory", eval_data.display())));
        }

        // Data and starter code first, configs last: a config never names missing files.
        let data_dir = self.task_data_dir(&task_id);
        mirror_dir(&eval_data, &data_dir.join("data"))?;
        for name in STARTER_FILES {
            let (src, dst) = (starter.join(name), data_dir.join(name));
            copy_atomic(&src, &dst).map_err(|e| io_err(format!("copying {} to {}", src.display(), dst.display()), e))?;
        }

        let dataset_yaml = to_yaml("the dataset config", &dataset_config(task))?;
        let path = self.dataset_config_path(&task_id);
        write_atomic(&path, dataset_yaml.as_bytes()).map_err(|e| io_err(format!("writing {}", path.display()), e))?;

        let task_yaml = to_yaml("the task config", &task_config(task))?;
        let path = self.task_config_path(&task_id);
        write_atomic(&path, task_yaml.as_bytes()).map_err(|e| io_err(format!("writing {}", path.display()), e))?;
        Ok(())
    }

    fn write_rollout(&self, rollout: &RolloutRecord) -> Result<(), PortError> {
        let dir = self.run_dir(&rollout.run_name)?;
        let task_id = path_component("task id", &rollout.task_id)?;

        let traj = to_pretty_json("the trajectory", &rollout.trajectory)?;
        let path = dir.join(format!("{task_id}.traj"));
        write_atomic(&path, &traj).map_err(|e| io_err(format!("writing {}", path.display()), e))?;

        let results = json!({
            "agent": rollout.trajectory.info.score,
            "baseline": rollout.baseline_scores,
        });
        let path = dir.join("results.json");
        write_atomic(&path, &to_pretty_json("results.json", &results)?).map_err(|e| io_err(format!("writing {}", path.display()), e))?;
        Ok(())
    }

    fn has_task(&self, task_id: &str) -> bool {
        // The task config is written last.
        self.task_config_path(task_id).is_file()
    }

    fn has_rollout(&self, rollout: &RolloutRecord) -> bool {
        self.run_dir(&rollout.run_name).is_ok_and(|dir| dir.join("results.json").is_file())
    }

    fn finalize(&self, inputs: &FinalInputs) -> Result<(), PortError> {
        let path = self.tasks_index_path();
        write_atomic(&path, &to_pretty_json("tasks.json", &tasks_index(&inputs.tasks))?)
            .map_err(|e| io_err(format!("writing {}", path.display()), e))?;

        let sft = self.write_sft(inputs)?;
        write_jsonl(&self.replay_path(), &replay_lines(&inputs.rollouts))?;

        let mut report = build_report(inputs, &sft);
        if let Some(labels) = &self.labels {
            report = report.with_services(labels.clone());
        }
        report.llm.gateway = self.gateway.as_ref().map(|gateway| gateway.snapshot());
        let path = self.report_path();
        write_atomic(&path, &to_pretty_json("report.json", &report)?).map_err(|e| io_err(format!("writing {}", path.display()), e))?;
        Ok(())
    }
}

/// Turns an id into a single safe path component: path separators and NUL become `-`.
fn path_component(what: &str, value: &str) -> Result<String, PortError> {
    let cleaned: String = value.chars().map(|c| if matches!(c, '/' | '\\' | '\0') { '-' } else { c }).collect();
    if cleaned.trim().is_empty() || cleaned == "." || cleaned == ".." {
        return Err(permanent(format!("{what} {value:?} cannot be used as a file name")));
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use gymforge_actors::model::{Stage, Trajectory, UnitKind, UnitStatus};

    use crate::export::fixtures::{DESCRIPTION, TURNS, accepted, all_files, no_temp_files, prepared, rollout, scores, unit};

    #[test]
    fn rewriting_a_task_is_idempotent_and_prunes_stale_data() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let task = accepted("wineT1", DESCRIPTION);
        let prep = prepared(dir.path());
        out.write_task(&task, &prep).unwrap();
        let first = all_files(out.root());
        out.write_task(&task, &prep).unwrap();
        assert_eq!(all_files(out.root()), first);

        // A stale file from an earlier version of the data disappears on rewrite.
        fs::write(out.task_data_dir("wineT1").join("data/old.csv"), "x").unwrap();
        out.write_task(&task, &prep).unwrap();
        assert_eq!(all_files(out.root()), first);
        no_temp_files(out.root());
    }

    #[test]
    fn write_task_rejects_incomplete_bundles_and_skips_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let prep = prepared(dir.path());
        std::os::unix::fs::symlink("/etc/hostname", prep.join("eval_data/leak.csv")).unwrap();
        out.write_task(&accepted("wineT1", DESCRIPTION), &prep).unwrap();
        assert!(!out.task_data_dir("wineT1").join("data/leak.csv").exists());

        fs::remove_file(prep.join("starter/evaluate.py")).unwrap();
        let err = out.write_task(&accepted("wineT2", DESCRIPTION), &prep).unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
        assert!(!out.task_config_path("wineT2").exists());

        let err = out.write_task(&accepted("../escape", DESCRIPTION), &prep).unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)));
    }

    #[test]
    fn rollout_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let r = rollout("wineT1", 0, vec![scores(&[("accuracy", 0.8)])], TURNS);
        out.write_rollout(&r).unwrap();
        let run = out.run_dir(&r.run_name).unwrap();
        let traj: Trajectory = serde_json::from_slice(&fs::read(run.join("wineT1.traj")).unwrap()).unwrap();
        assert_eq!(traj, r.trajectory);
        let results: serde_json::Value = serde_json::from_slice(&fs::read(run.join("results.json")).unwrap()).unwrap();
        assert_eq!(results, json!({"agent": [{"accuracy": 0.8}], "baseline": {"accuracy": 0.75, "f1": 0.7}}));

        let mut slashed = r.clone();
        slashed.run_name = "org/model__wineT1__run_1".into();
        out.write_rollout(&slashed).unwrap();
        assert!(out.root().join("trajectories/org-model__wineT1__run_1/wineT1.traj").is_file());
        no_temp_files(out.root());
    }

    #[tokio::test]
    async fn a_stored_rollout_is_read_with_its_unit_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let mut u = unit("t0001.r1", UnitKind::Rollout, 1, Stage::Rollout, UnitStatus::Pending, None);
        u.parent = Some("t0001".into());
        store.insert_unit(&u).unwrap();
        // A record stored before records carried their unit.
        let mut stored = serde_json::to_value(rollout("wineT1", 1, vec![], TURNS)).unwrap();
        stored.as_object_mut().unwrap().remove("unit");
        let stored = gymforge_actors::StageResult::from_json(Stage::Rollout, stored).unwrap();
        store.complete_stage("t0001.r1", &stored, None).unwrap();
        let inputs = gymforge_actors::export::final_inputs(&store, 0.0).await.unwrap();
        assert_eq!(inputs.rollouts.len(), 1);
        assert_eq!(inputs.rollouts[0].unit, "t0001.r1");
    }
}
