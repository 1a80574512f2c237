//! Where the pipeline keeps its scratch files under the work root.
//!
//! ```text
//! WORK/tasks/<unit>/raw/                 staged parquet files (dataset stage)
//! WORK/tasks/<unit>/round-<n>/           one self-debug round (debug stage)
//! WORK/tasks/<unit>/final/               the accepted task, see PreparedTask
//! WORK/rollouts/<unit>/workspace/        the agent's workspace
//! WORK/rollouts/<unit>/eval-<n>/         one evaluation of the agent's submission
//! ```

use std::path::{Path, PathBuf};

/// Path of the agent workspace inside every sandbox (MLGym's layout).
pub const WORKSPACE: &str = "/home/agent/workspace";

#[derive(Clone, Debug)]
pub struct WorkPaths {
    root: PathBuf,
}

impl WorkPaths {
    pub fn new(root: PathBuf) -> WorkPaths {
        WorkPaths { root }
    }

    pub fn task_dir(&self, unit: &str) -> PathBuf {
        self.root.join("tasks").join(unit)
    }

    pub fn raw_dir(&self, unit: &str) -> PathBuf {
        self.task_dir(unit).join("raw")
    }

    pub fn round_dir(&self, unit: &str, round: u32) -> PathBuf {
        self.task_dir(unit).join(format!("round-{round}"))
    }

    pub fn final_dir(&self, unit: &str) -> PathBuf {
        self.task_dir(unit).join("final")
    }

    pub fn rollout_dir(&self, unit: &str) -> PathBuf {
        self.root.join("rollouts").join(unit)
    }
}

/// A prepared task directory: what the debug stage leaves for export and rollouts.
#[derive(Clone, Debug)]
pub struct PreparedTask {
    pub root: PathBuf,
}

impl PreparedTask {
    pub fn new(root: impl Into<PathBuf>) -> PreparedTask {
        PreparedTask { root: root.into() }
    }

    /// baseline.py, evaluate.py and sample_submission.csv, as the agent gets them.
    pub fn starter(&self) -> PathBuf {
        self.root.join("starter")
    }

    /// train.csv, validation.csv and test.csv: the data the agent may read.
    pub fn public_data(&self) -> PathBuf {
        self.root.join("public_data")
    }

    /// The public data plus answers.csv: mounted only into evaluation sandboxes.
    pub fn eval_data(&self) -> PathBuf {
        self.root.join("eval_data")
    }
}

/// Removes `dir` if it exists and creates it empty.
pub fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)
}

/// Copies every regular file of `from` (not recursing) into `to`.
pub fn copy_files(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Copies the directory `from` into `to`, recursively.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
