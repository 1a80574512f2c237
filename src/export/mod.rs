//! The user-facing output directory: MLGym task and dataset configs with their starter code and
//! data, MLGym trajectories, the SFT dataset and the run report.
//!
//! [`OutputDir`] implements the pipeline's [`Outputs`](gymforge_actors::ports::Outputs) port.
//! Layout under the root `OUT/`:
//!
//! ```text
//! mlgym/configs/tasks/<task_id>.yaml      MLGym TaskConfig (only fields MLGym knows)
//! mlgym/configs/datasets/<task_id>.yaml   MLGym DatasetConfig (local data, shipped)
//! mlgym/data/<task_id>/                   baseline.py, evaluate.py, sample_submission.csv
//! mlgym/data/<task_id>/data/              train/validation/test CSVs and answers.csv
//! mlgym/tasks.json                        per task: metric spec, provenance, baseline scores
//! trajectories/<run_name>/<task_id>.traj  MLGym trajectory, results.json beside it
//! sft/train.jsonl                         one kept trajectory per line, chat messages
//! report.json                             stage counts, drop reasons, yield, usage, throughput
//! ```
//!
//! Every file is written atomically ([`write_atomic`]): a temporary file in the same directory
//! is written, synced and renamed over the target, so a reader (or a crash) never sees a partial
//! file. YAML is produced by serialising typed structs, never by formatting text.
//!
//! MLGym runs `str.format(dataset_docs=...)` on a task description, so every literal brace is
//! doubled on export except the one `{dataset_docs}` placeholder ([`escape_description`]).
//! MLGym cannot hide files from the agent, so the test answers ship inside the task's local data
//! folder (as MLGym's own House Price task does); evaluate.py reads `data/answers.csv` relative
//! to the workspace both there and in gymforge's own sandbox.
//!
//! One file per part: `mlgym.rs` the MLGym config documents and the description escaping,
//! `tasks_json.rs` tasks.json with the datasets' provenance, `files.rs` atomic writes, mirrored
//! directories and the port errors of failed I/O, `output_dir.rs` the directory's layout and the
//! `Outputs` port, `sft_line.rs` one SFT example per rollout, `replay.rs` the replay lines,
//! `report.rs` report.json (`Report`), `services.rs` the services a run used and which were
//! simulated, `summary.rs` the terminal summary of a report.

mod files;
mod mlgym;
mod output_dir;
mod replay;
mod report;
mod services;
mod sft_line;
mod summary;
mod tasks_json;

#[cfg(test)]
mod fixtures;

pub use files::{write_atomic, write_jsonl};
pub use mlgym::{
    DATASET_DOCS, DatasetConfig, MlgymDatasetConfig, MlgymTaskConfig, STARTER_FILES, TaskConfig, dataset_config, escape_description,
    task_config,
};
pub use output_dir::OutputDir;
pub use replay::{ReplayLine, replay_lines};
pub use report::{
    EventCounts, LlmReport, REPORT_VERSION, Report, RolloutCounts, StageFunnel, TaskSpread, Throughput, UnitCounts, UsageReport,
    UsageRowReport, build_report,
};
pub use services::{EndpointLabel, HubLabel, LlmLabel, ServiceLabels, StageLabel};
pub use sft_line::{SftExample, SftMeta, best_score, sft_line};
pub use summary::{frequent_drop_details, summary_table};
pub use tasks_json::{repo_file, tasks_index};
