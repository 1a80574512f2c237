//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses some of them

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every `.traj` file of a run, sorted.
pub fn traj_files(out: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for run in std::fs::read_dir(out.join("trajectories")).unwrap() {
        for f in std::fs::read_dir(run.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|x| x == "traj") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The actions (and final scores) of every trajectory, by `<run_name>/<task_id>.traj`.
pub fn actions(out: &Path) -> BTreeMap<String, Vec<String>> {
    traj_files(out)
        .into_iter()
        .map(|path| {
            let traj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut steps: Vec<String> = traj["trajectory"].as_array().unwrap().iter().map(|s| s["action"].as_str().unwrap().to_string()).collect();
            steps.push(traj["info"]["score"].to_string());
            let run = path.parent().unwrap().file_name().unwrap().to_string_lossy();
            (format!("{run}/{}", path.file_name().unwrap().to_string_lossy()), steps)
        })
        .collect()
}

/// `mlgym/tasks.json`. Two runs of the same batch write the same one: its provenance names the
/// parquet files by their place in the dataset repository, not by the embedded mirror's
/// ephemeral loopback URL.
pub fn accepted_tasks(out: &Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("mlgym/tasks.json")).unwrap()).unwrap();
    for task in v.as_array().unwrap() {
        for file in task["provenance"]["parquet_files"].as_array().unwrap() {
            assert!(file.get("url").is_none() && file["path"].is_string(), "tasks.json names a loopback URL or no repository path: {file}");
        }
    }
    v
}
