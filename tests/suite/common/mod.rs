//! Helpers shared by the integration tests.
#![allow(dead_code)] // not every helper is used by every module

pub mod deviate;
pub mod postgres;

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
            let mut steps: Vec<String> =
                traj["trajectory"].as_array().unwrap().iter().map(|s| s["action"].as_str().unwrap().to_string()).collect();
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

/// Copies the hand-written fixture bundle into `dir/bundle` and writes its raw data: 400 points
/// labelled by a noisy line (a tenth of the labels flipped). Returns the bundle directory.
pub fn fixture_bundle(dir: &Path) -> PathBuf {
    fixture_bundle_with(dir, 0.1, 0.0)
}

/// [`fixture_bundle`] with a `noise` share of the labels flipped and no point closer than `gap`
/// to the line.
pub fn fixture_bundle_with(dir: &Path, noise: f64, gap: f64) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle");
    let out = dir.join("bundle");
    std::fs::create_dir_all(out.join("raw")).unwrap();
    for f in ["task.json", "prepare.py", "baseline.py", "evaluate.py"] {
        std::fs::copy(fixture.join(f), out.join(f)).unwrap();
    }
    let mut csv = String::from("x,y,label\n");
    let mut state: u64 = 42;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut rows = 0;
    while rows < 400 {
        let (x, y, flip) = (next() * 10.0, next() * 10.0, next());
        if (y - 0.5 * x - 2.0).abs() < gap {
            continue;
        }
        let above = y > 0.5 * x + 2.0;
        let label = if flip < noise { !above } else { above };
        csv.push_str(&format!("{x:.4},{y:.4},{}\n", u8::from(label)));
        rows += 1;
    }
    std::fs::write(out.join("raw/points.csv"), csv).unwrap();
    out
}

/// A child process that is killed (SIGKILL) and reaped when the test lets go of it, also when
/// the test fails: a daemon left behind would run on and take the machine from the tests after.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}
