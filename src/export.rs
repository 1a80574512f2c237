//! The user-facing output directory: MLGym task and dataset configs with their starter code and
//! data, MLGym trajectories, the SFT dataset and the run report.
//!
//! [`OutputDir`] implements the pipeline's [`Outputs`] port. Layout under the root `OUT/`:
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

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gymforge_actors::model::{
    AcceptedTask, Direction, DropReason, RolloutRecord, Scores, Stage, UnitKind, UnitStatus,
};
use gymforge_actors::ports::{FinalInputs, Outputs, PortError, Usage};

use crate::sft::{SftOptions, SftSummary};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The placeholder MLGym fills with the dataset documentation.
pub const DATASET_DOCS: &str = "{dataset_docs}";

/// Starter files every task ships, copied from `prepared/starter/`.
pub const STARTER_FILES: [&str; 3] = ["baseline.py", "evaluate.py", "sample_submission.csv"];

/// Version of the `report.json` layout. 2: a rollout passes its stage only with a scored
/// submission, `throughput.trajectories_per_hour` counts scored trajectories
/// (`recorded_trajectories_per_hour` all), `services.llm.stages` labels each stage.
pub const REPORT_VERSION: u32 = 2;

// ---------------------------------------------------------------------------------------------
// MLGym config documents

/// MLGym's `TaskConfig`, restricted to the fields gymforge sets. MLGym's loader rejects unknown
/// keys, so nothing else may appear in the YAML.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Paths relative to MLGym's `configs/`.
    pub dataset_configs: Vec<String>,
    pub task_entrypoint: String,
    pub training_timeout: u64,
    pub use_generic_conda: bool,
    /// Repository-relative files copied into the agent's workspace.
    pub starter_code: Vec<String>,
    /// Workspace-relative.
    pub baseline_paths: Vec<String>,
    pub baseline_scores: Vec<Scores>,
    /// Workspace-relative.
    pub evaluation_paths: Vec<String>,
    pub evaluation_read_only: bool,
}

/// MLGym's `DatasetConfig` for a local dataset shipped with the task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    pub description: String,
    /// Repository-relative directory copied to the workspace's `data/`.
    pub data_path: String,
    pub is_local: bool,
}

/// Makes a task description safe for Python's `str.format(dataset_docs=...)`: every literal
/// brace is doubled, and exactly one `{dataset_docs}` placeholder is kept (the first one). When
/// the description has none, one is inserted before the `SUBMISSION FORMAT` paragraph, or
/// appended at the end.
pub fn escape_description(raw: &str) -> String {
    let (before, after): (String, String) = match raw.find(DATASET_DOCS) {
        Some(pos) => (raw[..pos].to_string(), raw[pos + DATASET_DOCS.len()..].to_string()),
        None => match submission_format_line(raw) {
            Some(start) => {
                let head = raw[..start].trim_end();
                let head = if head.is_empty() { String::new() } else { format!("{head}\n\n") };
                (head, format!("\n\n{}", &raw[start..]))
            }
            None => {
                let head = raw.trim_end();
                let head = if head.is_empty() { String::new() } else { format!("{head}\n\n") };
                (head, String::new())
            }
        },
    };
    format!("{}{DATASET_DOCS}{}", double_braces(&before), double_braces(&after))
}

/// Byte offset of the start of the line that opens the `SUBMISSION FORMAT` paragraph.
fn submission_format_line(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_start_matches(|c: char| c.is_whitespace() || c == '#' || c == '*');
        if bare.to_ascii_uppercase().starts_with("SUBMISSION FORMAT") {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

fn double_braces(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

/// The MLGym task config of an accepted task.
pub fn task_config(task: &AcceptedTask) -> TaskConfig {
    let id = &task.task_id;
    // The bundle's title is written for the verified dataset; the topic's was written before
    // any dataset was chosen.
    let name = [task.bundle.title.trim(), task.topic.title.trim()]
        .into_iter()
        .find(|t| !t.is_empty())
        .map_or_else(|| task.bundle.name.clone(), str::to_string);
    TaskConfig {
        id: id.clone(),
        name,
        description: escape_description(&task.bundle.description),
        dataset_configs: vec![format!("datasets/{id}.yaml")],
        task_entrypoint: "CSVSubmissionTasks".to_string(),
        training_timeout: task.bundle.training_timeout,
        use_generic_conda: true,
        starter_code: STARTER_FILES.iter().map(|f| format!("data/{id}/{f}")).collect(),
        baseline_paths: vec!["baseline.py".to_string()],
        baseline_scores: vec![task.baseline_scores.clone()],
        evaluation_paths: vec!["evaluate.py".to_string()],
        evaluation_read_only: true,
    }
}

/// The MLGym dataset config of an accepted task: its data ships in the task's data folder.
pub fn dataset_config(task: &AcceptedTask) -> DatasetConfig {
    let meta = &task.dataset;
    let mut description = task.bundle.dataset_description.trim_end().to_string();
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&format!(
        "SOURCE: Hugging Face Hub dataset {} (revision {}, config {}, split{} {}).",
        meta.id,
        if meta.revision.is_empty() { "unknown" } else { &meta.revision },
        if meta.config.is_empty() { "default" } else { &meta.config },
        if meta.splits.len() == 1 { "" } else { "s" },
        meta.splits.join(", "),
    ));
    DatasetConfig {
        name: meta.id.clone(),
        description,
        data_path: format!("data/{}/data", task.task_id),
        is_local: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Atomic files

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written next to its final path; renamed into place by [`AtomicFile::commit`],
/// removed if dropped uncommitted.
struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    fn create(target: &Path) -> io::Result<AtomicFile> {
        let dir = parent_dir(target);
        fs::create_dir_all(dir)?;
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let temp = dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&temp)?;
        Ok(AtomicFile { target: target.to_path_buf(), temp, writer: Some(BufWriter::new(file)) })
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer present until commit")
    }

    fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temp, &self.target)?;
        sync_dir(parent_dir(&self.target));
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename durable. Best effort: some filesystems do not support syncing directories.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// synced and renamed over `path`. Creates missing parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.writer().write_all(bytes)?;
    file.commit()
}

/// Copies a regular file atomically.
fn copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = File::open(from)?;
    let mut file = AtomicFile::create(to)?;
    io::copy(&mut src, file.writer())?;
    file.commit()
}

// ---------------------------------------------------------------------------------------------
// Errors and paths

fn io_err(context: impl std::fmt::Display, err: io::Error) -> PortError {
    use io::ErrorKind::*;
    let msg = format!("output: {context}: {err}");
    match err.kind() {
        // Every later task and trajectory would fail to be written the same way.
        PermissionDenied | ReadOnlyFilesystem => PortError::Refused { reason: DropReason::OutputUnwritable, detail: msg },
        NotFound | InvalidInput | InvalidData | AlreadyExists | IsADirectory | NotADirectory => PortError::Permanent(msg),
        _ => PortError::Transient(msg),
    }
}

fn permanent(msg: impl std::fmt::Display) -> PortError {
    PortError::Permanent(format!("output: {msg}"))
}

/// Turns an id into a single safe path component: path separators and NUL become `-`.
fn path_component(what: &str, value: &str) -> Result<String, PortError> {
    let cleaned: String =
        value.chars().map(|c| if matches!(c, '/' | '\\' | '\0') { '-' } else { c }).collect();
    if cleaned.trim().is_empty() || cleaned == "." || cleaned == ".." {
        return Err(permanent(format!("{what} {value:?} cannot be used as a file name")));
    }
    Ok(cleaned)
}

/// Copies the regular files of `from` (recursively) into `to`, then removes files under `to`
/// that `from` does not have. Symbolic links and other special files are skipped: the source
/// was written by untrusted code.
fn mirror_dir(from: &Path, to: &Path) -> Result<(), PortError> {
    let mut kept = HashSet::new();
    copy_tree(from, to, Path::new(""), &mut kept)?;
    prune_tree(to, Path::new(""), &kept)
}

fn copy_tree(
    from: &Path,
    to: &Path,
    rel: &Path,
    kept: &mut HashSet<PathBuf>,
) -> Result<(), PortError> {
    let dir = from.join(rel);
    let entries =
        fs::read_dir(&dir).map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
    let mut names: Vec<_> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(format!("reading {}", dir.display()), e))?;
    names.sort();
    for name in names {
        let rel_path = rel.join(&name);
        let src = from.join(&rel_path);
        let meta = fs::symlink_metadata(&src)
            .map_err(|e| io_err(format!("reading {}", src.display()), e))?;
        if meta.is_dir() {
            copy_tree(from, to, &rel_path, kept)?;
        } else if meta.is_file() {
            let dst = to.join(&rel_path);
            copy_atomic(&src, &dst).map_err(|e| {
                io_err(format!("copying {} to {}", src.display(), dst.display()), e)
            })?;
            kept.insert(rel_path);
        } else {
            tracing::warn!(path = %src.display(), "skipping a file that is not a regular file");
        }
    }
    Ok(())
}

fn prune_tree(to: &Path, rel: &Path, kept: &HashSet<PathBuf>) -> Result<(), PortError> {
    let dir = to.join(rel);
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let rel_path = rel.join(entry.file_name());
        let path = to.join(&rel_path);
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            prune_tree(to, &rel_path, kept)?;
            let _ = fs::remove_dir(&path); // only succeeds when empty
        } else if !kept.contains(&rel_path) {
            fs::remove_file(&path)
                .map_err(|e| io_err(format!("removing stale {}", path.display()), e))?;
        }
    }
    Ok(())
}

fn regular_file(path: &Path) -> Result<(), PortError> {
    let meta =
        fs::symlink_metadata(path).map_err(|e| io_err(format!("reading {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(permanent(format!("{} is not a regular file", path.display())));
    }
    Ok(())
}

fn to_yaml<T: Serialize>(what: &str, value: &T) -> Result<String, PortError> {
    serde_norway::to_string(value).map_err(|e| permanent(format!("serialising {what}: {e}")))
}

fn to_pretty_json<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, PortError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| permanent(format!("serialising {what}: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// The output directory

/// The output directory `OUT/`.
#[derive(Clone)]
pub struct OutputDir {
    root: PathBuf,
    labels: Option<Value>,
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

    /// Describes the services the run used, e.g. `{"llm": {"kind": ..., "simulated": true,
    /// "stages": {"rollout": {"endpoint": "sim", "model": ..., "simulated": true}, ...}},
    /// "hub": {...}}`. The labels appear in `report.json` under `services`, with a top-level
    /// `simulated` flag that is true when any service (any stage's endpoint) is simulated;
    /// every SFT line's `meta.simulated` says whether the rollout stage's teacher was
    /// ([`teacher_simulated`]).
    pub fn with_labels(mut self, labels: Value) -> OutputDir {
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
        let options = SftOptions { simulated: self.labels.as_ref().is_some_and(teacher_simulated), ..self.sft.clone() };
        let (lines, summary) = crate::sft::build(&inputs.rollouts, &inputs.tasks, &options);
        write_jsonl(&self.sft_path(), &lines)?;
        Ok(summary)
    }
}

/// Writes one JSON value per line, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), PortError> {
    let context = format!("writing {}", path.display());
    let mut file = AtomicFile::create(path).map_err(|e| io_err(&context, e))?;
    for line in lines {
        serde_json::to_writer(file.writer(), line).map_err(|e| permanent(format!("serialising a line of {}: {e}", path.display())))?;
        file.writer().write_all(b"\n").map_err(|e| io_err(&context, e))?;
    }
    file.commit().map_err(|e| io_err(&context, e))
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
            copy_atomic(&src, &dst).map_err(|e| {
                io_err(format!("copying {} to {}", src.display(), dst.display()), e)
            })?;
        }

        let dataset_yaml = to_yaml("the dataset config", &dataset_config(task))?;
        let path = self.dataset_config_path(&task_id);
        write_atomic(&path, dataset_yaml.as_bytes())
            .map_err(|e| io_err(format!("writing {}", path.display()), e))?;

        let task_yaml = to_yaml("the task config", &task_config(task))?;
        let path = self.task_config_path(&task_id);
        write_atomic(&path, task_yaml.as_bytes())
            .map_err(|e| io_err(format!("writing {}", path.display()), e))?;
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
        write_atomic(&path, &to_pretty_json("results.json", &results)?)
            .map_err(|e| io_err(format!("writing {}", path.display()), e))?;
        Ok(())
    }

    fn finalize(&self, inputs: &FinalInputs) -> Result<(), PortError> {
        let path = self.tasks_index_path();
        write_atomic(&path, &to_pretty_json("tasks.json", &tasks_index(&inputs.tasks))?)
            .map_err(|e| io_err(format!("writing {}", path.display()), e))?;

        let sft = self.write_sft(inputs)?;
        write_jsonl(&self.replay_path(), &replay_lines(&inputs.rollouts))?;

        let mut report = build_report(inputs, &sft);
        if let Some(labels) = &self.labels {
            report["simulated"] = json!(any_simulated(labels));
            report["services"] = labels.clone();
        }
        if let Some(gateway) = &self.gateway {
            report["llm"]["gateway"] = json!(gateway.snapshot());
        }
        let path = self.report_path();
        write_atomic(&path, &to_pretty_json("report.json", &report)?)
            .map_err(|e| io_err(format!("writing {}", path.display()), e))?;
        Ok(())
    }
}

/// MLGym's replay file: per trajectory, `{"<task_id>": [<assistant messages in order>]}`, which
/// MLGym's replay model answers with one by one to re-run the trajectory in a real environment,
/// followed by `"task_id"` and the rollout's `"unit"` so that the lines of one task's rollouts
/// can be told apart. MLGym reads a line's first value, so the turns stay first.
pub fn replay_lines(rollouts: &[RolloutRecord]) -> Vec<ReplayLine<'_>> {
    rollouts
        .iter()
        .map(|r| ReplayLine {
            task_id: &r.task_id,
            unit: &r.unit,
            turns: r.trajectory.history.iter().filter(|h| h.role == "assistant").map(|h| h.content.as_str()).collect(),
        })
        .collect()
}

/// One line of `replay.jsonl`; serialised with its keys in that order (see `replay_lines`).
pub struct ReplayLine<'a> {
    pub task_id: &'a str,
    pub unit: &'a str,
    pub turns: Vec<&'a str>,
}

impl Serialize for ReplayLine<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry(self.task_id, &self.turns)?;
        map.serialize_entry("task_id", self.task_id)?;
        map.serialize_entry("unit", self.unit)?;
        map.end()
    }
}

/// Whether the rollout stage's endpoint, the teacher whose trajectories become SFT data, was
/// simulated, from service labels (`report.json`'s `services`). Labels without per-stage
/// entries (reports of earlier versions) say it only for the LLM as a whole.
pub fn teacher_simulated(labels: &Value) -> bool {
    let simulated = labels.pointer("/llm/stages/rollout/simulated").or_else(|| labels.pointer("/llm/simulated"));
    simulated == Some(&json!(true))
}

/// True when any service label says `"simulated": true`.
fn any_simulated(labels: &Value) -> bool {
    labels.as_object().is_some_and(|m| m.values().any(|v| v["simulated"] == json!(true)))
}

// ---------------------------------------------------------------------------------------------
// tasks.json

/// Where a parquet file lives in its dataset repository, read from the URL the Hub or its
/// viewer gave for it: `(revision, path)`. Two shapes are known:
/// `{endpoint}/datasets/{id}/resolve/{revision}/{path}` (revision and path percent-encoded, as
/// the viewer lists the files of the `refs/convert/parquet` branch), and the viewer's
/// `{endpoint}/api/datasets/{id}/parquet/{config}/{split}/{n}.parquet` (a file of that branch).
pub fn repo_file(url: &str, id: &str) -> Option<(String, String)> {
    let url = reqwest::Url::parse(url).ok()?;
    let segments: Vec<String> = url.path_segments()?.map(percent_decode).collect();
    let id: Vec<&str> = id.split('/').collect();
    let after_id = |prefix: &[&str]| -> Option<&[String]> {
        let rest = segments.strip_prefix(prefix.iter().map(|s| s.to_string()).collect::<Vec<_>>().as_slice())?;
        (rest.len() > id.len() && rest.iter().zip(&id).all(|(a, b)| a == b)).then(|| &rest[id.len()..])
    };
    let (revision, path) = if let Some(rest) = after_id(&["datasets"]) {
        match rest {
            [resolve, revision, path @ ..] if resolve == "resolve" && !path.is_empty() => (revision.clone(), path.join("/")),
            _ => return None,
        }
    } else if let Some(rest) = after_id(&["api", "datasets"]) {
        match rest {
            [parquet, path @ ..] if parquet == "parquet" && !path.is_empty() => ("refs/convert/parquet".to_string(), path.join("/")),
            _ => return None,
        }
    } else {
        return None;
    };
    (!revision.is_empty() && path.split('/').all(|p| !p.is_empty() && p != "." && p != "..")).then_some((revision, path))
}

/// `%2F` -> `/` in one URL path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `url` points at this machine (`localhost`, `127.0.0.0/8`, `::1`): the embedded
/// mirror's ephemeral port, meaningless once the run has ended.
fn is_loopback_url(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase)) else {
        return false;
    };
    match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

/// A parquet file's provenance in tasks.json: its split and file name, the revision and path
/// of the file in the dataset repository, and its download URL unless that URL was a loopback
/// address (the embedded mirror's, which no longer answers once the run is over).
fn parquet_provenance(f: &gymforge_actors::model::ParquetFile, id: &str) -> Value {
    let mut entry = json!({"split": f.split, "filename": f.filename, "size": f.size});
    if let Some((revision, path)) = repo_file(&f.url, id) {
        entry["revision"] = json!(revision);
        entry["path"] = json!(path);
    }
    if !is_loopback_url(&f.url) {
        entry["url"] = json!(f.url);
    }
    entry
}

/// `mlgym/tasks.json`: one entry per accepted task.
pub fn tasks_index(tasks: &[AcceptedTask]) -> Value {
    Value::Array(
        tasks
            .iter()
            .map(|t| {
                let meta = &t.dataset;
                json!({
                    "task_id": t.task_id,
                    "unit": t.unit,
                    "name": task_config(t).name,
                    "config": format!("configs/tasks/{}.yaml", t.task_id),
                    "priority_metric": t.bundle.priority_metric,
                    "direction": t.bundle.direction,
                    "metrics": t.bundle.metrics,
                    "baseline_scores": t.baseline_scores,
                    "training_timeout": t.bundle.training_timeout,
                    "provenance": {
                        "hub_id": meta.id,
                        "revision": meta.revision,
                        "config": meta.config,
                        "splits": meta.splits,
                        "num_rows": meta.num_rows,
                        "parquet_files": meta.parquet_files.iter().map(|f| parquet_provenance(f, &meta.id)).collect::<Vec<_>>(),
                    },
                    "topic": {
                        "title": t.topic.title,
                        "sample": t.topic.sample,
                    },
                    "debug_rounds": t.rounds,
                })
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// SFT


/// Best value of `metric` over `scores` in `direction`, ignoring entries without a finite value.
pub fn best_score(scores: &[Scores], metric: &str, direction: Direction) -> Option<f64> {
    scores.iter().filter_map(|s| s.get(metric).copied()).filter(|v| v.is_finite()).reduce(|a, b| {
        match direction {
            Direction::Maximize => a.max(b),
            Direction::Minimize => a.min(b),
        }
    })
}

/// One SFT line for a rollout: the messages the model saw at its last step (the history up to
/// the last answer, observations older than the last `keep_observations` elided as in the
/// rollout), roles and contents only, plus metadata. `None` when the rollout has no scored
/// submission or its history is not a usable conversation.
pub fn sft_line(rollout: &RolloutRecord, task: Option<&AcceptedTask>, keep_observations: usize) -> Option<Value> {
    if !rollout.has_scored_submission() {
        return None;
    }
    let history = &rollout.trajectory.history;
    let last_assistant = history.iter().rposition(|m| m.role == "assistant")?;
    if history.first()?.role != "system" {
        return None;
    }
    let messages: Vec<Value> = gymforge_actors::rollout::model_input(&history[..=last_assistant], keep_observations)
        .into_iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();

    let info = &rollout.trajectory.info;
    let (best, beats_baseline, metric, direction) = match task {
        Some(t) => {
            let metric = t.bundle.priority_metric.as_str();
            let best = best_score(&info.score, metric, t.bundle.direction);
            let beats = match (best, rollout.baseline_scores.get(metric)) {
                (Some(b), Some(&base)) => Some(match t.bundle.direction {
                    Direction::Maximize => b > base,
                    Direction::Minimize => b < base,
                }),
                _ => None,
            };
            (best, beats, Some(metric), Some(t.bundle.direction))
        }
        None => (None, None, None, None),
    };
    Some(json!({
        "messages": messages,
        "meta": {
            "task_id": rollout.task_id,
            "run_name": rollout.run_name,
            "run_index": rollout.run_index,
            "model": rollout.model,
            "exit_status": info.exit_status,
            "score": info.score.last(),
            "best_score": best,
            "priority_metric": metric,
            "direction": direction,
            "baseline": rollout.baseline_scores,
            "beats_baseline": beats_baseline,
            "steps": rollout.trajectory.trajectory.len(),
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// report.json

fn usage_json(u: &Usage) -> Value {
    json!({
        "calls": u.calls,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "cost_usd": u.cost_usd,
    })
}

fn add_usage(into: &mut Usage, u: &Usage) {
    into.calls += u.calls;
    into.input_tokens += u.input_tokens;
    into.output_tokens += u.output_tokens;
    into.cost_usd += u.cost_usd;
}

fn per_hour(count: u64, secs: f64) -> f64 {
    if secs > 0.0 && secs.is_finite() { count as f64 * 3600.0 / secs } else { 0.0 }
}

/// The stages a unit of this kind goes through.
fn stages_of(kind: UnitKind) -> &'static [Stage] {
    match kind {
        UnitKind::Task => {
            &[Stage::Topic, Stage::Dataset, Stage::Codegen, Stage::Debug, Stage::Export]
        }
        UnitKind::Rollout => &[Stage::Rollout],
    }
}

/// Why a finished rollout did not pass its stage, `(reason, detail)`: its trajectory has no
/// scored submission, and the reason is the trajectory's exit status (`submission_not_found
/// (exit_format)`). `None` when it has a scored submission.
fn unscored(unit: &str, records: &BTreeMap<&str, &RolloutRecord>) -> Option<(String, String)> {
    match records.get(unit) {
        Some(r) if r.has_scored_submission() => None,
        Some(r) => {
            let status = &r.trajectory.info.exit_status;
            let reason = if status.trim().is_empty() { "unknown".to_string() } else { status.clone() };
            let steps = r.trajectory.trajectory.len();
            Some((reason, format!("the trajectory ended after {steps} step{} without a scored submission", if steps == 1 { "" } else { "s" })))
        }
        None => Some(("trajectory_unreadable".into(), "the rollout's stored result could not be read as a trajectory".into())),
    }
}

/// `report.json`: what the run did, derived from the store's contents.
///
/// Stage counts come from the units: a unit at stage S (or beyond) has entered S; it passed S
/// when it is beyond S or done at S; a dropped unit was dropped at its current stage. A rollout
/// passes only when its trajectory has a scored submission: one that ended without a score is
/// counted as dropped, its exit status the reason (its trajectory is still in the output).
///
/// `llm` counts every answered request a stage received (as the stages record them), usable
/// or not: a refused, empty, filtered or cut-off answer is billed like any other.
/// `throughput.trajectories_per_hour` counts scored trajectories only;
/// `recorded_trajectories_per_hour` every trajectory written.
pub fn build_report(inputs: &FinalInputs, sft: &SftSummary) -> Value {
    #[derive(Default)]
    struct Counts {
        entered: u64,
        passed: u64,
        dropped: u64,
        in_progress: u64,
        reasons: BTreeMap<String, u64>,
        details: BTreeMap<String, String>,
    }
    impl Counts {
        fn drop(&mut self, reason: String, detail: Option<&str>) {
            self.dropped += 1;
            // The first unit dropped for a reason says, in words, what happened.
            if let Some(detail) = detail {
                self.details.entry(reason.clone()).or_insert_with(|| crate::output::one_line(detail, 200));
            }
            *self.reasons.entry(reason).or_default() += 1;
        }
    }
    let records: BTreeMap<&str, &RolloutRecord> = inputs.rollouts.iter().map(|r| (r.unit.as_str(), r)).collect();
    let mut counts: BTreeMap<Stage, Counts> = BTreeMap::new();
    let (mut task_units, mut rollout_units) = (0u64, 0u64);
    let (mut pending, mut done, mut dropped) = (0u64, 0u64, 0u64);
    for unit in &inputs.units {
        match unit.kind {
            UnitKind::Task => task_units += 1,
            UnitKind::Rollout => rollout_units += 1,
        }
        match unit.status {
            UnitStatus::Pending => pending += 1,
            UnitStatus::Done => done += 1,
            UnitStatus::Dropped => dropped += 1,
        }
        for &stage in stages_of(unit.kind) {
            if stage > unit.stage {
                break;
            }
            let c = counts.entry(stage).or_default();
            c.entered += 1;
            if stage < unit.stage {
                c.passed += 1;
                continue;
            }
            match unit.status {
                UnitStatus::Done if unit.kind == UnitKind::Rollout => match unscored(&unit.id, &records) {
                    None => c.passed += 1,
                    Some((reason, detail)) => c.drop(reason, Some(&detail)),
                },
                UnitStatus::Done => c.passed += 1,
                UnitStatus::Pending => c.in_progress += 1,
                UnitStatus::Dropped => c.drop(unit.drop_reason.map_or("unknown", DropReason::as_str).to_string(), unit.drop_detail.as_deref()),
            }
        }
    }
    let stages: Vec<Value> = Stage::ALL
        .iter()
        .map(|stage| {
            let c = counts.remove(stage).unwrap_or_default();
            json!({
                "stage": stage,
                "entered": c.entered,
                "passed": c.passed,
                "dropped": c.dropped,
                "in_progress": c.in_progress,
                "drop_reasons": c.reasons,
                "drop_details": c.details,
            })
        })
        .collect();

    let mut by_stage: BTreeMap<Stage, Usage> = BTreeMap::new();
    let mut by_model: BTreeMap<&str, Usage> = BTreeMap::new();
    let mut by_endpoint: BTreeMap<&str, Usage> = BTreeMap::new();
    let mut by_unit: BTreeMap<&str, Usage> = BTreeMap::new();
    let mut by_stage_endpoint_model: BTreeMap<(Stage, &str, &str), Usage> = BTreeMap::new();
    let mut total = Usage::default();
    for row in &inputs.usage {
        add_usage(by_stage.entry(row.stage).or_default(), &row.usage);
        add_usage(by_model.entry(row.model.as_str()).or_default(), &row.usage);
        add_usage(by_endpoint.entry(row.endpoint.as_str()).or_default(), &row.usage);
        add_usage(by_unit.entry(row.unit.as_str()).or_default(), &row.usage);
        add_usage(by_stage_endpoint_model.entry((row.stage, &row.endpoint, &row.model)).or_default(), &row.usage);
        add_usage(&mut total, &row.usage);
    }
    let rows: Vec<Value> = by_stage_endpoint_model
        .iter()
        .map(|((stage, endpoint, model), u)| {
            let mut v = usage_json(u);
            v["stage"] = json!(stage);
            v["endpoint"] = json!(endpoint);
            v["model"] = json!(model);
            v
        })
        .collect();

    let mut events: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &inputs.events {
        *events.entry(e.kind.as_str()).or_default() += 1;
    }

    let accepted = inputs.tasks.len() as u64;
    // The spread of the accepted tasks: how many per dataset and per task type.
    let mut by_dataset: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_task_type: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &inputs.tasks {
        *by_dataset.entry(t.dataset.id.as_str()).or_default() += 1;
        *by_task_type.entry(t.topic.sample.task_type.as_str()).or_default() += 1;
    }
    let rollouts_total = inputs.rollouts.len() as u64;
    let rollouts_scored = inputs.rollouts.iter().filter(|r| r.has_scored_submission()).count() as u64;
    let wall = inputs.wall_time_secs;
    json!({
        "report_version": REPORT_VERSION,
        "stages": stages,
        "units": {
            "task": task_units,
            "rollout": rollout_units,
            "pending": pending,
            "done": done,
            "dropped": dropped,
        },
        "tasks": {
            "topic_units": task_units,
            "accepted": accepted,
            "accepted_ids": inputs.tasks.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
            "yield": if task_units > 0 { accepted as f64 / task_units as f64 } else { 0.0 },
            "distinct_datasets": by_dataset.len(),
            "distinct_task_types": by_task_type.len(),
            "by_dataset": by_dataset,
            "by_task_type": by_task_type,
        },
        "rollouts": {
            "total": rollouts_total,
            "scored": rollouts_scored,
            "kept": sft.kept,
            "kept_beat_baseline": sft.beat_baseline,
            "duplicates": sft.duplicates,
            "malformed": sft.malformed,
            "over_token_budget": sft.over_budget,
            "shortened": sft.shortened,
        },
        "llm": {
            "by_stage_endpoint_model": rows,
            "by_stage": by_stage.iter().map(|(s, u)| (s.as_str(), usage_json(u))).collect::<BTreeMap<_, _>>(),
            "by_model": by_model.iter().map(|(m, u)| (*m, usage_json(u))).collect::<BTreeMap<_, _>>(),
            "by_endpoint": by_endpoint.iter().map(|(e, u)| (*e, usage_json(u))).collect::<BTreeMap<_, _>>(),
            "by_unit": by_unit.iter().map(|(n, u)| (*n, usage_json(u))).collect::<BTreeMap<_, _>>(),
            "total": usage_json(&total),
        },
        "events": {
            "total": inputs.events.len(),
            "by_kind": events,
        },
        "wall_time_secs": wall,
        "throughput": {
            "accepted_tasks_per_hour": per_hour(accepted, wall),
            "trajectories_per_hour": per_hour(rollouts_scored, wall),
            "recorded_trajectories_per_hour": per_hour(rollouts_total, wall),
            "kept_trajectories_per_hour": per_hour(sft.kept, wall),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Terminal summary

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_u64).unwrap_or(0)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64).unwrap_or(0.0)
}

/// `1234567` -> `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "n/a".into();
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let total = secs.round() as u64;
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    if h > 0 { format!("{h}h {m:02}m {s:02}s") } else { format!("{m}m {s:02}s") }
}

/// One line for each of the `n` most frequent drop reasons of the run: stage, reason, count and
/// what happened to the first unit dropped for it (`debug eval_format x2: ...`).
pub fn frequent_drop_details(report: &Value, n: usize) -> Vec<String> {
    let mut all: Vec<(u64, &str, &str, &str)> = Vec::new();
    for stage in report.get("stages").and_then(Value::as_array).into_iter().flatten() {
        let name = stage.get("stage").and_then(Value::as_str).unwrap_or("?");
        for (reason, count) in stage.get("drop_reasons").and_then(Value::as_object).into_iter().flatten() {
            let detail = stage.pointer(&format!("/drop_details/{reason}")).and_then(Value::as_str).unwrap_or("");
            all.push((count.as_u64().unwrap_or(0), name, reason.as_str(), detail));
        }
    }
    all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(b.2)));
    all.iter()
        .take(n)
        .map(|(count, stage, reason, detail)| {
            let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
            format!("{stage} {reason} x{count}{detail}")
        })
        .collect()
}

/// The LLM's per-stage labels as one line per endpoint, stages in pipeline order:
/// `("sim", "stages topic, dataset; model m [SIMULATED]")`.
fn endpoint_lines(stages: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    let mut by_endpoint: BTreeMap<&str, (Vec<&str>, &str, bool)> = BTreeMap::new();
    for stage in Stage::ALL {
        let Some(label) = stages.get(stage.as_str()) else { continue };
        let endpoint = label.get("endpoint").and_then(Value::as_str).unwrap_or("?");
        let model = label.get("model").and_then(Value::as_str).unwrap_or("?");
        let entry = by_endpoint.entry(endpoint).or_insert((Vec::new(), model, false));
        entry.0.push(stage.as_str());
        entry.2 |= label["simulated"] == json!(true);
    }
    by_endpoint
        .into_iter()
        .map(|(endpoint, (stages, model, simulated))| {
            let mark = if simulated { " [SIMULATED]" } else { "" };
            (endpoint.to_string(), format!("stages {}; model {model}{mark}", stages.join(", ")))
        })
        .collect()
}

/// Renders a report (as [`build_report`] makes it) as an aligned plain-text table for the
/// terminal: per stage entered / passed / dropped with the top drop reasons, then yield,
/// rollouts kept, tokens, cost, wall time, throughput, and the services the run used (marked
/// when simulated) if the report names them.
pub fn summary_table(report: &Value) -> String {
    let mut table: Vec<[String; 6]> = vec![[
        "stage".into(),
        "entered".into(),
        "passed".into(),
        "dropped".into(),
        "running".into(),
        "top drop reasons".into(),
    ]];
    for stage in report.get("stages").and_then(Value::as_array).into_iter().flatten() {
        let mut reasons: Vec<(&str, u64)> = stage
            .get("drop_reasons")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut top: Vec<String> =
            reasons.iter().take(3).map(|(r, n)| format!("{r} {n}")).collect();
        if reasons.len() > 3 {
            top.push(format!("+{} more", reasons.len() - 3));
        }
        table.push([
            stage.get("stage").and_then(Value::as_str).unwrap_or("?").to_string(),
            u(stage, &["entered"]).to_string(),
            u(stage, &["passed"]).to_string(),
            u(stage, &["dropped"]).to_string(),
            u(stage, &["in_progress"]).to_string(),
            top.join(", "),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &table {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for line in frequent_drop_details(report, 3) {
        out.push_str("  ");
        out.push_str(&line);
        out.push('\n');
    }
    out.push('\n');

    let accepted = u(report, &["tasks", "accepted"]);
    let topics = u(report, &["tasks", "topic_units"]);
    let yield_pct = f(report, &["tasks", "yield"]) * 100.0;
    let total_tokens = u(report, &["llm", "total", "total_tokens"]);
    let events: Vec<String> = report
        .pointer("/events/by_kind")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k} {}", v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    let mut facts: Vec<(std::borrow::Cow<str>, String)> = vec![
        (
            "accepted tasks".into(),
            format!(
                "{accepted} of {topics} topics (yield {yield_pct:.1}%), {} datasets, {} task types",
                u(report, &["tasks", "distinct_datasets"]),
                u(report, &["tasks", "distinct_task_types"])
            ),
        ),
        (
            "rollouts kept".into(),
            format!(
                "{} of {} ({} scored, {} duplicate)",
                u(report, &["rollouts", "kept"]),
                u(report, &["rollouts", "total"]),
                u(report, &["rollouts", "scored"]),
                u(report, &["rollouts", "duplicates"]),
            ),
        ),
        (
            "beat the baseline".into(),
            format!("{} of {} kept trajectories", u(report, &["rollouts", "kept_beat_baseline"]), u(report, &["rollouts", "kept"])),
        ),
        ("llm calls".into(), thousands(u(report, &["llm", "total", "calls"]))),
        (
            "tokens".into(),
            format!(
                "{} ({} in, {} out)",
                thousands(total_tokens),
                thousands(u(report, &["llm", "total", "input_tokens"])),
                thousands(u(report, &["llm", "total", "output_tokens"])),
            ),
        ),
        ("cost".into(), format!("${:.4}", f(report, &["llm", "total", "cost_usd"]))),
        ("wall time".into(), duration(f(report, &["wall_time_secs"]))),
        (
            "throughput".into(),
            format!(
                "{:.1} tasks/h, {:.1} scored trajectories/h ({:.1} recorded/h)",
                f(report, &["throughput", "accepted_tasks_per_hour"]),
                f(report, &["throughput", "trajectories_per_hour"]),
                f(report, &["throughput", "recorded_trajectories_per_hour"]),
            ),
        ),
    ];
    if !events.is_empty() {
        facts.push(("events".into(), events.join(", ")));
    }
    if let Some(endpoints) = report.pointer("/llm/gateway/endpoints").and_then(Value::as_object) {
        for (name, e) in endpoints {
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            let mut text = format!("{} requests this session", thousands(n("requests_sent")));
            // Reports written before answers were counted apart from successes lack the field.
            if e.get("answered").is_some() {
                text.push_str(&format!(", {} answered ({} usable)", thousands(n("answered")), thousands(n("succeeded"))));
            }
            text.push_str(&format!(", {} rate limited, {} transient failures, {} retries", n("rate_limited"), n("transient_failures"), n("retries")));
            if n("circuit_openings") > 0 {
                text.push_str(&format!(", circuit opened {} times", n("circuit_openings")));
            }
            facts.push((format!("endpoint {name}").into(), text));
        }
    }
    if let Some(services) = report.get("services").and_then(Value::as_object) {
        for (name, label) in services {
            let mut text = label.get("kind").and_then(Value::as_str).unwrap_or("?").to_string();
            if let Some(model) = label.get("model").and_then(Value::as_str) {
                text.push_str(&format!(", model {model}"));
            }
            let stages = label.get("stages").and_then(Value::as_object);
            // With per-stage labels, each endpoint's line says whether it is simulated.
            if stages.is_none() && label["simulated"] == json!(true) {
                text.push_str(" [SIMULATED]");
            }
            facts.push((name.as_str().into(), text));
            for (endpoint, line) in stages.map(endpoint_lines).unwrap_or_default() {
                facts.push((format!("{name} {endpoint}").into(), line));
            }
        }
    }
    let w = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in facts {
        out.push_str(&format!("{k:<w$}  {v}\n"));
    }
    out
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use gymforge_actors::model::{
        DatasetMeta, HistoryItem, ModelStats, ParquetFile, TaskBundle, TopicIdea, TopicSample,
        Trajectory, TrajectoryInfo, TrajectoryStep, Unit,
    };
    use gymforge_actors::ports::{Event, EventKind, UsageRow};

    /// Every field of MLGym's TaskConfig; unknown keys are an error, as in MLGym's loader.
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct MlgymTaskConfig {
        id: String,
        name: String,
        description: String,
        #[serde(default)]
        dataset_configs: Vec<String>,
        #[serde(default)]
        task_entrypoint: Option<String>,
        #[serde(default)]
        training_timeout: Option<u64>,
        #[serde(default)]
        requirements_path: Option<String>,
        #[serde(default)]
        use_generic_conda: Option<bool>,
        #[serde(default)]
        starter_code: Vec<String>,
        #[serde(default)]
        baseline_paths: Vec<String>,
        #[serde(default)]
        baseline_scores: Vec<BTreeMap<String, f64>>,
        #[serde(default)]
        sample_submission: Option<String>,
        #[serde(default)]
        evaluation_paths: Vec<String>,
        #[serde(default)]
        evaluation_read_only: Option<bool>,
        #[serde(default)]
        secret_files: Vec<String>,
        #[serde(default)]
        memory_path: Option<String>,
        #[serde(default)]
        benchmark_name: Option<String>,
    }

    /// Every field of MLGym's DatasetConfig.
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct MlgymDatasetConfig {
        name: String,
        description: String,
        data_path: String,
        #[serde(default)]
        is_local: Option<bool>,
        #[serde(default)]
        train_split: Option<serde_json::Value>,
        #[serde(default)]
        valid_split: Option<serde_json::Value>,
        #[serde(default)]
        test_split: Option<serde_json::Value>,
    }

    /// Python's `str.format(dataset_docs=docs)` brace handling.
    fn py_format(template: &str, docs: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    out.push('{');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err("unexpected '{' in field name".into()),
                            Some(ch) => name.push(ch),
                            None => return Err("expected '}' before end of string".into()),
                        }
                    }
                    if name == "dataset_docs" {
                        out.push_str(docs);
                    } else {
                        return Err(format!("KeyError: {name:?}"));
                    }
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    out.push('}');
                }
                '}' => return Err("single '}' encountered in format string".into()),
                ch => out.push(ch),
            }
        }
        Ok(out)
    }

    fn scores(pairs: &[(&str, f64)]) -> Scores {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn accepted(task_id: &str, description: &str) -> AcceptedTask {
        AcceptedTask {
            task_id: task_id.to_string(),
            unit: "t0001".into(),
            topic: TopicIdea {
                sample: TopicSample {
                    domain: "chemistry".into(),
                    task_type: "classification".into(),
                    modality: "tabular".into(),
                    twist: "few features".into(),
                },
                title: "Wine cultivar classification".into(),
                idea: "Predict the cultivar from chemical analysis.".into(),
            },
            dataset: DatasetMeta {
                id: "sklearn/wine".into(),
                revision: "0123abcd".into(),
                config: "default".into(),
                splits: vec!["train".into()],
                features: vec![],
                num_rows: [("train".to_string(), 178u64)].into_iter().collect(),
                num_bytes_parquet: 10_000,
                description: "Wine recognition".into(),
                parquet_files: vec![ParquetFile {
                    split: "train".into(),
                    url: "http://127.0.0.1:41234/datasets/sklearn/wine/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet".into(),
                    filename: "0000.parquet".into(),
                    size: 10_000,
                }],
            },
            bundle: TaskBundle {
                name: "wineCultivar".into(),
                title: String::new(),
                description: description.to_string(),
                dataset_description: "Columns: alcohol, ... ; label `cultivar` in {0, 1, 2}."
                    .into(),
                priority_metric: "accuracy".into(),
                direction: Direction::Maximize,
                metrics: vec!["accuracy".into(), "f1".into()],
                target_column: "cultivar".into(),
                training_timeout: 1800,
                files: BTreeMap::new(),
            },
            baseline_scores: scores(&[("accuracy", 0.75), ("f1", 0.7)]),
            rounds: 2,
        }
    }

    fn prepared(dir: &Path) -> PathBuf {
        let p = dir.join("prepared");
        for (rel, body) in [
            ("starter/baseline.py", "print('baseline')\n"),
            ("starter/evaluate.py", "import json\nprint(json.dumps({'accuracy': 1.0}))\n"),
            ("starter/sample_submission.csv", "cultivar\n0\n"),
            ("public_data/train.csv", "a,cultivar\n1,0\n"),
            ("public_data/validation.csv", "a,cultivar\n2,1\n"),
            ("public_data/test.csv", "a\n3\n"),
            ("eval_data/train.csv", "a,cultivar\n1,0\n"),
            ("eval_data/validation.csv", "a,cultivar\n2,1\n"),
            ("eval_data/test.csv", "a\n3\n"),
            ("eval_data/answers.csv", "cultivar\n2\n"),
        ] {
            let path = p.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        p
    }

    fn all_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = fs::read(&path).unwrap();
                    out.push((path.strip_prefix(root).unwrap().to_path_buf(), bytes));
                }
            }
        }
        out.sort();
        out
    }

    fn no_temp_files(root: &Path) {
        for (path, _) in all_files(root) {
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(!name.ends_with(".tmp"), "temporary file left behind: {}", path.display());
        }
    }

    const DESCRIPTION: &str = "Classify wines. Predictions look like {\"cultivar\": 0}; sets {a, b}.\n\
        {dataset_docs}\n\
        Use `df.groupby('x').agg({'y': 'mean'})` if you like. A lone } or { must survive.\n\n\
        SUBMISSION FORMAT:\nWrite submission.csv with one column `cultivar`.";

    #[test]
    fn task_yaml_has_only_mlgym_fields_and_formats_in_python() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let task = accepted("wineCultivarT0001", DESCRIPTION);
        out.write_task(&task, &prepared(dir.path())).unwrap();

        let yaml = fs::read_to_string(out.task_config_path("wineCultivarT0001")).unwrap();
        let cfg: MlgymTaskConfig = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(cfg.id, "wineCultivarT0001");
        assert_eq!(cfg.dataset_configs, ["datasets/wineCultivarT0001.yaml"]);
        assert_eq!(cfg.task_entrypoint.as_deref(), Some("CSVSubmissionTasks"));
        assert_eq!(cfg.training_timeout, Some(1800));
        assert_eq!(cfg.use_generic_conda, Some(true));
        assert_eq!(
            cfg.starter_code,
            [
                "data/wineCultivarT0001/baseline.py",
                "data/wineCultivarT0001/evaluate.py",
                "data/wineCultivarT0001/sample_submission.csv"
            ]
        );
        assert_eq!(cfg.baseline_paths, ["baseline.py"]);
        assert_eq!(cfg.evaluation_paths, ["evaluate.py"]);
        assert_eq!(cfg.evaluation_read_only, Some(true));
        assert_eq!(cfg.baseline_scores, vec![scores(&[("accuracy", 0.75), ("f1", 0.7)])]);
        // Our own typed struct reads it back identically.
        let typed: TaskConfig = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(typed, task_config(&task));

        // The description formats in Python and restores the original text around the docs.
        let formatted = py_format(&cfg.description, "WINE:\nthe docs\n\n").unwrap();
        assert_eq!(formatted, DESCRIPTION.replace("{dataset_docs}", "WINE:\nthe docs\n\n"));

        // Starter paths resolve relative to OUT/mlgym, and the dataset config is a DatasetConfig.
        for rel in &cfg.starter_code {
            assert!(out.mlgym_dir().join(rel).is_file(), "{rel} missing");
        }
        for rel in &cfg.dataset_configs {
            let yaml = fs::read_to_string(out.mlgym_dir().join("configs").join(rel)).unwrap();
            let ds: MlgymDatasetConfig = serde_norway::from_str(&yaml).unwrap();
            assert_eq!(ds.is_local, Some(true));
            assert_eq!(ds.data_path, "data/wineCultivarT0001/data");
            assert!(ds.description.contains("sklearn/wine"));
            assert!(ds.description.contains("0123abcd"));
            assert!(ds.description.starts_with("Columns:"));
            for f in ["train.csv", "validation.csv", "test.csv", "answers.csv"] {
                assert!(out.mlgym_dir().join(&ds.data_path).join(f).is_file(), "{f} missing");
            }
        }
        assert_eq!(
            fs::read_to_string(out.task_data_dir("wineCultivarT0001").join("data/answers.csv"))
                .unwrap(),
            "cultivar\n2\n"
        );
        no_temp_files(dir.path());
    }

    #[test]
    fn task_yaml_loads_in_python_when_available() {
        let probe = std::process::Command::new("python3").args(["-c", "import yaml"]).output();
        if !probe.map(|o| o.status.success()).unwrap_or(false) {
            eprintln!("python3 with PyYAML not available; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        out.write_task(&accepted("wineT1", DESCRIPTION), &prepared(dir.path())).unwrap();
        let script = "import sys, yaml\n\
            t = yaml.safe_load(open(sys.argv[1]))\n\
            d = yaml.safe_load(open(sys.argv[2]))\n\
            docs = d['name'].upper() + ':\\n' + d['description'] + '\\n\\n'\n\
            text = t['description'].format(dataset_docs=docs)\n\
            assert t['baseline_scores'] == [{'accuracy': 0.75, 'f1': 0.7}], t['baseline_scores']\n\
            assert t['use_generic_conda'] is True and d['is_local'] is True\n\
            sys.stdout.write(text)\n";
        let output = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(out.task_config_path("wineT1"))
            .arg(out.dataset_config_path("wineT1"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.starts_with("Classify wines. Predictions look like {\"cultivar\": 0}"));
        assert!(text.contains("SKLEARN/WINE:\nColumns:"));
        assert!(text.contains("agg({'y': 'mean'})"));
    }

    #[test]
    fn description_escaping() {
        for raw in [
            "plain text",
            "",
            "{",
            "}}",
            "{dataset_docs}",
            "a {dataset_docs} b {dataset_docs} c",
            "{{dataset_docs}}",
            "{ dataset_docs }",
            "weird {dataset_docs",
            "x {0} {name} {} y",
        ] {
            let escaped = escape_description(raw);
            let formatted = py_format(&escaped, "DOCS").unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(formatted.matches("DOCS").count(), 1, "{raw:?} -> {escaped:?}");
            if raw.contains(DATASET_DOCS) {
                assert_eq!(formatted, raw.replacen(DATASET_DOCS, "DOCS", 1), "{raw:?}");
            }
        }
        // Missing placeholder: inserted before the SUBMISSION FORMAT paragraph.
        let raw = "Goal {x}.\n\nSUBMISSION FORMAT:\nsubmission.csv";
        assert_eq!(
            escape_description(raw),
            "Goal {{x}}.\n\n{dataset_docs}\n\nSUBMISSION FORMAT:\nsubmission.csv"
        );
        assert_eq!(escape_description("Goal."), "Goal.\n\n{dataset_docs}");
        assert_eq!(
            escape_description("## Submission format\nx"),
            "{dataset_docs}\n\n## Submission format\nx"
        );
    }

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
    fn write_atomic_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["c.txt"]);
        // A failed write leaves the old content and no temporary file.
        let mut file = AtomicFile::create(&path).unwrap();
        file.writer().write_all(b"partial").unwrap();
        drop(file);
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path().join("a/b")).unwrap().count(), 1);
    }

    fn history(turns: &[(&str, &str)]) -> Vec<HistoryItem> {
        turns
            .iter()
            .map(|(role, content)| HistoryItem {
                role: role.to_string(),
                content: content.to_string(),
                agent: "primary_0".into(),
                thought: None,
                action: (*role == "assistant").then(|| "ls\n".to_string()),
            })
            .collect()
    }

    fn rollout(
        task_id: &str,
        run_index: u32,
        score: Vec<Scores>,
        turns: &[(&str, &str)],
    ) -> RolloutRecord {
        RolloutRecord {
            unit: format!("{task_id}.r{run_index}"),
            task_id: task_id.into(),
            run_index,
            run_name: format!("sim-teacher__{task_id}__default__t-0.70__run_{run_index}"),
            model: "sim-teacher".into(),
            baseline_scores: scores(&[("accuracy", 0.75), ("f1", 0.7)]),
            trajectory: Trajectory {
                environment: "mlgym_main".into(),
                trajectory: vec![TrajectoryStep {
                    action: "validate\n".into(),
                    observation: "ok".into(),
                    response: "DISCUSSION\nvalidate\n\n```\nvalidate\n```".into(),
                    state: "{\"open_file\": \"n/a\", \"working_dir\": \"/home/agent/workspace\"}"
                        .into(),
                    thought: "DISCUSSION\nvalidate".into(),
                    execution_time: 0.5,
                }],
                history: history(turns),
                info: TrajectoryInfo {
                    model_stats: ModelStats::default(),
                    exit_status: if score.is_empty() {
                        "submission_not_found (submit)"
                    } else {
                        "submitted"
                    }
                    .into(),
                    submission: None,
                    score,
                    summarizer: json!({}),
                },
            },
        }
    }

    const TURNS: &[(&str, &str)] = &[
        ("system", "You are an ML researcher."),
        ("user", "TASK DESCRIPTION: classify wines"),
        ("assistant", "DISCUSSION\nlook\n\n```\nls\n```"),
        ("user", "baseline.py evaluate.py"),
        ("assistant", "DISCUSSION\nsubmit\n\n```\nsubmit\n```"),
        ("user", "Exited (submit)"),
    ];

    #[test]
    fn rollout_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let r = rollout("wineT1", 0, vec![scores(&[("accuracy", 0.8)])], TURNS);
        out.write_rollout(&r).unwrap();
        let run = out.run_dir(&r.run_name).unwrap();
        let traj: Trajectory =
            serde_json::from_slice(&fs::read(run.join("wineT1.traj")).unwrap()).unwrap();
        assert_eq!(traj, r.trajectory);
        let results: Value =
            serde_json::from_slice(&fs::read(run.join("results.json")).unwrap()).unwrap();
        assert_eq!(
            results,
            json!({"agent": [{"accuracy": 0.8}], "baseline": {"accuracy": 0.75, "f1": 0.7}})
        );

        let mut slashed = r.clone();
        slashed.run_name = "org/model__wineT1__run_1".into();
        out.write_rollout(&slashed).unwrap();
        assert!(out.root().join("trajectories/org-model__wineT1__run_1/wineT1.traj").is_file());
        no_temp_files(out.root());
    }

    fn unit(
        id: &str,
        kind: UnitKind,
        seq: u64,
        stage: Stage,
        status: UnitStatus,
        reason: Option<&str>,
    ) -> Unit {
        Unit {
            id: id.into(),
            kind,
            seq,
            parent: (kind == UnitKind::Rollout).then(|| "t0001".to_string()),
            stage,
            status,
            attempts: 0,
            drop_reason: reason.map(|r| DropReason::parse(r).expect("a known reason")),
            drop_detail: reason.map(|r| format!("what {r} means")),
        }
    }

    fn final_inputs() -> FinalInputs {
        use Stage::*;
        use UnitKind::{Rollout as R, Task};
        use UnitStatus::*;
        let task = accepted("wineT1", DESCRIPTION);
        let mut minimize_task = accepted("wineT2", DESCRIPTION);
        minimize_task.bundle.priority_metric = "rmse".into();
        minimize_task.bundle.direction = Direction::Minimize;
        minimize_task.topic.sample.task_type = "regression".into();
        let mut other_turns = TURNS.to_vec();
        other_turns[2].1 = "DISCUSSION\nother\n\n```\nls -la\n```";
        let mut t2 = rollout(
            "wineT2",
            0,
            vec![scores(&[("rmse", 3.0)]), scores(&[("rmse", 2.0)]), scores(&[("rmse", 2.5)])],
            &other_turns,
        );
        t2.baseline_scores = scores(&[("rmse", 2.2)]);
        let mut inputs = FinalInputs {
            units: vec![
                unit("t0001", Task, 1, Export, Done, None),
                unit("t0002", Task, 2, Dataset, Dropped, Some("no_verified_dataset")),
                unit("t0003", Task, 3, Debug, Dropped, Some("baseline_failed")),
                unit("t0004", Task, 4, Codegen, Pending, None),
                unit("t0005", Task, 5, Dataset, Dropped, Some("no_verified_dataset")),
                unit("t0006", Task, 6, Export, Done, None),
                unit("t0001.r0", R, 0, Rollout, Done, None),
                unit("t0001.r1", R, 1, Rollout, Done, None),
                unit("t0001.r2", R, 2, Rollout, Done, None),
                unit("t0001.r3", R, 3, Rollout, Dropped, Some("rollout_failed")),
                unit("t0006.r0", R, 4, Rollout, Done, None),
            ],
            tasks: vec![task, minimize_task],
            rollouts: vec![
                rollout(
                    "wineT1",
                    0,
                    vec![
                        scores(&[("accuracy", 0.7)]),
                        scores(&[("accuracy", 0.9)]),
                        scores(&[("accuracy", 0.8)]),
                    ],
                    TURNS,
                ),
                rollout("wineT1", 1, vec![], TURNS),
                rollout("wineT1", 2, vec![scores(&[("accuracy", 0.6)])], TURNS),
                t2,
            ],
            usage: vec![
                UsageRow {
                    unit: "t0001".into(),
                    stage: Topic,
                    endpoint: "cheap".into(),
                    model: "sim".into(),
                    usage: Usage { calls: 6, input_tokens: 600, output_tokens: 60, cost_usd: 0.06 },
                },
                UsageRow {
                    unit: "t0001".into(),
                    stage: Codegen,
                    endpoint: "cheap".into(),
                    model: "sim".into(),
                    usage: Usage {
                        calls: 3,
                        input_tokens: 3000,
                        output_tokens: 900,
                        cost_usd: 0.5,
                    },
                },
                UsageRow {
                    unit: "t0001-r1".into(),
                    stage: Rollout,
                    endpoint: "main".into(),
                    model: "teacher".into(),
                    usage: Usage {
                        calls: 20,
                        input_tokens: 20000,
                        output_tokens: 2000,
                        cost_usd: 1.0,
                    },
                },
            ],
            events: vec![
                Event {
                    kind: EventKind::Retry,
                    unit: "t0002".into(),
                    stage: Dataset,
                    detail: "429".into(),
                },
                Event {
                    kind: EventKind::WorkerRestart,
                    unit: "t0003".into(),
                    stage: Debug,
                    detail: "panic".into(),
                },
                Event {
                    kind: EventKind::Retry,
                    unit: "t0004".into(),
                    stage: Codegen,
                    detail: "timeout".into(),
                },
            ],
            wall_time_secs: 1800.0,
        };
        // Each trajectory is the result of one of the rollout units above.
        for (r, unit) in inputs.rollouts.iter_mut().zip(["t0001.r0", "t0001.r1", "t0001.r2", "t0006.r0"]) {
            r.unit = unit.into();
        }
        inputs
    }

    #[test]
    fn sft_lines_are_chat_examples_with_meta() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let inputs = final_inputs();
        out.finalize(&inputs).unwrap();
        let text = fs::read_to_string(out.sft_path()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        // Rollout 1 has no score; rollout 2 repeats rollout 0's messages exactly.
        assert_eq!(lines.len(), 2);
        for line in &lines {
            let messages = line["messages"].as_array().unwrap();
            assert_eq!(messages.first().unwrap()["role"], "system");
            assert_eq!(messages.last().unwrap()["role"], "assistant");
            for m in messages {
                let obj = m.as_object().unwrap();
                assert_eq!(obj.len(), 2, "only role and content: {m}");
            }
        }
        assert_eq!(lines[0]["messages"].as_array().unwrap().len(), 5);
        assert_eq!(lines[0]["messages"][1]["content"], "TASK DESCRIPTION: classify wines");
        let meta = &lines[0]["meta"];
        assert_eq!(meta["task_id"], "wineT1");
        assert_eq!(meta["exit_status"], "submitted");
        assert_eq!(meta["score"], json!({"accuracy": 0.8}));
        assert_eq!(meta["best_score"], json!(0.9));
        assert_eq!(meta["beats_baseline"], json!(true));
        assert_eq!(meta["baseline"], json!({"accuracy": 0.75, "f1": 0.7}));
        assert_eq!(meta["steps"], json!(1));
        // Minimised metric: best is the smallest.
        assert_eq!(lines[1]["meta"]["best_score"], json!(2.0));
        assert_eq!(lines[1]["meta"]["direction"], "minimize");
        assert_eq!(lines[1]["meta"]["beats_baseline"], json!(true));

        // Histories that cannot be training examples are left out.
        let no_system = rollout("wineT1", 5, vec![scores(&[("accuracy", 0.8)])], &TURNS[1..]);
        assert!(sft_line(&no_system, None, 5).is_none());
        let no_assistant = rollout("wineT1", 6, vec![scores(&[("accuracy", 0.8)])], &TURNS[..2]);
        assert!(sft_line(&no_assistant, None, 5).is_none());
    }

    #[test]
    fn report_counts_and_tasks_index() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let inputs = final_inputs();
        out.finalize(&inputs).unwrap();
        let report: Value = serde_json::from_slice(&fs::read(out.report_path()).unwrap()).unwrap();

        let stage = |name: &str| {
            report["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["stage"] == name)
                .unwrap()
                .clone()
        };
        let counts = |name: &str| {
            let s = stage(name);
            (
                s["entered"].as_u64().unwrap(),
                s["passed"].as_u64().unwrap(),
                s["dropped"].as_u64().unwrap(),
                s["in_progress"].as_u64().unwrap(),
            )
        };
        assert_eq!(counts("topic"), (6, 6, 0, 0));
        assert_eq!(counts("dataset"), (6, 4, 2, 0));
        assert_eq!(counts("codegen"), (4, 3, 0, 1));
        assert_eq!(counts("debug"), (3, 2, 1, 0));
        assert_eq!(counts("export"), (2, 2, 0, 0));
        // t0001.r1 finished without a scored submission: it does not pass.
        assert_eq!(counts("rollout"), (5, 3, 2, 0));
        assert_eq!(stage("dataset")["drop_reasons"], json!({"no_verified_dataset": 2}));
        assert_eq!(stage("debug")["drop_reasons"], json!({"baseline_failed": 1}));
        assert_eq!(stage("rollout")["drop_reasons"], json!({"rollout_failed": 1, "submission_not_found (submit)": 1}));
        assert_eq!(
            stage("rollout")["drop_details"]["submission_not_found (submit)"],
            "the trajectory ended after 1 step without a scored submission"
        );

        assert_eq!(report["tasks"]["accepted"], 2);
        assert_eq!(report["tasks"]["topic_units"], 6);
        assert!((report["tasks"]["yield"].as_f64().unwrap() - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!((report["tasks"]["distinct_datasets"].as_u64(), report["tasks"]["distinct_task_types"].as_u64()), (Some(1), Some(2)));
        assert_eq!(report["tasks"]["by_task_type"], json!({"classification": 1, "regression": 1}));
        assert_eq!(report["tasks"]["by_dataset"], json!({"sklearn/wine": 2}));
        assert_eq!(
            report["rollouts"],
            json!({"total": 4, "scored": 3, "kept": 2, "kept_beat_baseline": 2, "duplicates": 1, "malformed": 0, "over_token_budget": 0, "shortened": 0})
        );
        assert_eq!(report["llm"]["total"]["calls"], 29);
        assert_eq!(report["llm"]["total"]["input_tokens"], 23600);
        assert_eq!(report["llm"]["total"]["total_tokens"], 23600 + 2960);
        assert!((report["llm"]["total"]["cost_usd"].as_f64().unwrap() - 1.56).abs() < 1e-9);
        assert_eq!(report["llm"]["by_stage"]["codegen"]["calls"], 3);
        assert_eq!(report["llm"]["by_model"]["sim"]["calls"], 9);
        assert_eq!(report["llm"]["by_stage_endpoint_model"].as_array().unwrap().len(), 3);
        assert_eq!(report["llm"]["by_endpoint"]["cheap"]["calls"], 9);
        assert_eq!(report["llm"]["by_unit"]["t0001-r1"]["calls"], 20);
        assert_eq!(report["events"]["by_kind"], json!({"retry": 2, "worker_restart": 1}));
        assert_eq!(report["wall_time_secs"], json!(1800.0));
        assert_eq!(report["throughput"]["accepted_tasks_per_hour"], json!(4.0));
        // Three of the four trajectories are scored, in half an hour.
        assert_eq!(report["throughput"]["trajectories_per_hour"], json!(6.0));
        assert_eq!(report["throughput"]["recorded_trajectories_per_hour"], json!(8.0));

        let index: Value =
            serde_json::from_slice(&fs::read(out.tasks_index_path()).unwrap()).unwrap();
        let first = &index[0];
        assert_eq!(first["task_id"], "wineT1");
        assert_eq!(first["priority_metric"], "accuracy");
        assert_eq!(first["direction"], "maximize");
        assert_eq!(first["metrics"], json!(["accuracy", "f1"]));
        assert_eq!(first["baseline_scores"], json!({"accuracy": 0.75, "f1": 0.7}));
        assert_eq!(first["provenance"]["hub_id"], "sklearn/wine");
        assert_eq!(first["provenance"]["revision"], "0123abcd");
        assert_eq!(first["provenance"]["config"], "default");
        assert_eq!(first["provenance"]["splits"], json!(["train"]));
        // The file is named by its place in the dataset repository; the embedded mirror's
        // loopback URL, dead once the run is over, is not kept.
        assert_eq!(
            first["provenance"]["parquet_files"][0],
            json!({"split": "train", "filename": "0000.parquet", "size": 10_000, "revision": "refs/convert/parquet", "path": "default/train/0000.parquet"})
        );
        assert_eq!(first["topic"]["sample"]["domain"], "chemistry");
        assert_eq!(first["debug_rounds"], 2);
        assert_eq!(index[1]["direction"], "minimize");
        no_temp_files(out.root());

        let table = summary_table(&report);
        assert!(table.contains("dataset"), "{table}");
        assert!(table.contains("no_verified_dataset 2"), "{table}");
        assert!(table.contains("2 of 6 topics (yield 33.3%)"), "{table}");
        assert!(table.contains("26,560"), "{table}");
        assert!(table.contains("$1.5600"), "{table}");
        assert!(table.contains("30m 00s"), "{table}");
        assert!(table.contains("6.0 scored trajectories/h (8.0 recorded/h)"), "{table}");
        // Columns line up: every stage row has its counts ending at the same offset.
        let rows: Vec<&str> = table.lines().take(7).collect();
        let header_end = rows[0].find("running").unwrap() + "running".len();
        for row in &rows[1..] {
            assert!(row.as_bytes()[header_end - 1].is_ascii_digit(), "{table}");
        }
    }

    #[test]
    fn replay_lines_lead_with_the_turns_and_name_their_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let inputs = final_inputs();
        out.finalize(&inputs).unwrap();
        let text = fs::read_to_string(out.replay_path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), inputs.rollouts.len());
        let mut units = HashSet::new();
        for (line, r) in lines.iter().zip(&inputs.rollouts) {
            // MLGym's replay model takes a line's first value: the task's assistant turns.
            assert!(line.starts_with(&format!("{{\"{}\":[\"DISCUSSION", r.task_id)), "{line}");
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v[&r.task_id].as_array().unwrap().len(), 2, "{line}");
            assert_eq!((v["task_id"].as_str(), v["unit"].as_str()), (Some(r.task_id.as_str()), Some(r.unit.as_str())), "{line}");
            assert!(units.insert(r.unit.clone()), "one line per rollout unit: {line}");
        }
        assert!(units.len() > inputs.tasks.len(), "some task has several rollouts, told apart by unit");
        // As MLGym reads it, where Python is installed.
        if let Ok(python) = std::process::Command::new("python3")
            .args(["-c", "import json, sys\nfor x in open(sys.argv[1]).read().splitlines(keepends=True):\n    t = list(json.loads(x).values())[0]\n    assert all(isinstance(s, str) for s in t) and t, t\nprint('ok')", out.replay_path().to_str().unwrap()])
            .output()
        {
            assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&python.stderr));
        }
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

    #[test]
    fn labels_mark_simulated_runs() {
        let dir = tempfile::tempdir().unwrap();
        let labels = json!({
            "llm": {"kind": "simulated teacher", "simulated": true, "model": "sim-teacher"},
            "hub": {"kind": "embedded mirror", "simulated": true},
        });
        let out = OutputDir::new(dir.path().join("out")).with_labels(labels.clone());
        out.finalize(&final_inputs()).unwrap();
        let report: Value = serde_json::from_slice(&fs::read(out.report_path()).unwrap()).unwrap();
        assert_eq!(report["simulated"], json!(true));
        assert_eq!(report["services"], labels);
        let text = fs::read_to_string(out.sft_path()).unwrap();
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["meta"]["simulated"], json!(true));
        }
        let table = summary_table(&report);
        assert!(table.contains("simulated teacher, model sim-teacher [SIMULATED]"), "{table}");

        let real = json!({"llm": {"kind": "OpenAI-compatible endpoint", "simulated": false}});
        let out = OutputDir::new(dir.path().join("real")).with_labels(real);
        out.finalize(&final_inputs()).unwrap();
        let report: Value = serde_json::from_slice(&fs::read(out.report_path()).unwrap()).unwrap();
        assert_eq!(report["simulated"], json!(false));
        assert!(!summary_table(&report).contains("SIMULATED"));
    }

    /// Service labels of an LLM whose stages are routed to `rollout` for the rollout stage and to
    /// `other` for the rest (`"sim"` is the simulated teacher).
    fn routed_labels(rollout: &str, other: &str) -> Value {
        let label = |endpoint: &str| json!({"endpoint": endpoint, "model": format!("{endpoint}-model"), "simulated": endpoint == "sim"});
        json!({"llm": {
            "kind": "mixed",
            "simulated": rollout == "sim" || other == "sim",
            "model": format!("{rollout}-model"),
            "stages": {
                "topic": label(other), "dataset": label(other), "codegen": label(other), "debug": label(other),
                "rollout": label(rollout),
            },
        }})
    }

    /// A run whose rollouts came from a real endpoint is marked simulated only for the stages
    /// the simulator answered: the summary marks each endpoint, and the SFT lines follow the
    /// rollout stage's teacher, whichever way round.
    #[test]
    fn simulated_is_said_per_stage_and_sft_lines_follow_the_teacher() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("real-teacher")).with_labels(routed_labels("openai", "sim"));
        out.finalize(&final_inputs()).unwrap();
        let report: Value = serde_json::from_slice(&fs::read(out.report_path()).unwrap()).unwrap();
        assert_eq!(report["simulated"], json!(true), "some service was simulated");
        assert_eq!(report["services"]["llm"]["stages"]["rollout"]["simulated"], json!(false));
        let lines: Vec<Value> = fs::read_to_string(out.sft_path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| l["meta"]["simulated"] == json!(false)), "{lines:?}");
        let table = summary_table(&report);
        let line = |prefix: &str| table.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} line: {table}")).to_string();
        assert!(line("llm openai ").ends_with("stages rollout; model openai-model"), "{table}");
        assert!(line("llm sim ").ends_with("stages topic, dataset, codegen, debug; model sim-model [SIMULATED]"), "{table}");
        assert!(!line("llm ").contains("SIMULATED"), "the LLM as a whole is not marked: {table}");

        let out = OutputDir::new(dir.path().join("simulated-teacher")).with_labels(routed_labels("sim", "openai"));
        out.finalize(&final_inputs()).unwrap();
        let lines: Vec<Value> = fs::read_to_string(out.sft_path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.iter().all(|l| l["meta"]["simulated"] == json!(true)), "{lines:?}");
        assert!(teacher_simulated(&routed_labels("sim", "openai")) && !teacher_simulated(&routed_labels("openai", "sim")));
    }

    /// A rollout passes its stage only with a scored submission: one that ended on format
    /// errors before any step, or whose result cannot be read, fails with that as its reason,
    /// and neither counts towards the trajectories per hour.
    #[test]
    fn a_finished_rollout_without_a_score_fails_its_stage() {
        let mut inputs = final_inputs();
        let mut format_errors = rollout("wineT1", 4, vec![], TURNS);
        format_errors.unit = "t0001.r4".into();
        format_errors.trajectory.trajectory.clear();
        format_errors.trajectory.info.exit_status = "submission_not_found (exit_format)".into();
        inputs.rollouts.push(format_errors);
        inputs.units.push(unit("t0001.r4", UnitKind::Rollout, 5, Stage::Rollout, UnitStatus::Done, None));
        inputs.units.push(unit("t0001.r5", UnitKind::Rollout, 6, Stage::Rollout, UnitStatus::Done, None));
        let report = build_report(&inputs, &SftSummary::default());
        let rollout_stage = report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "rollout").unwrap().clone();
        assert_eq!((rollout_stage["entered"].as_u64(), rollout_stage["passed"].as_u64(), rollout_stage["dropped"].as_u64()), (Some(7), Some(3), Some(4)));
        assert_eq!(
            rollout_stage["drop_reasons"],
            json!({"rollout_failed": 1, "submission_not_found (submit)": 1, "submission_not_found (exit_format)": 1, "trajectory_unreadable": 1})
        );
        assert_eq!(
            rollout_stage["drop_details"]["submission_not_found (exit_format)"],
            "the trajectory ended after 0 steps without a scored submission"
        );
        assert_eq!((report["rollouts"]["total"].as_u64(), report["rollouts"]["scored"].as_u64()), (Some(5), Some(3)));
        assert_eq!(report["throughput"]["trajectories_per_hour"], json!(6.0));
        assert_eq!(report["throughput"]["recorded_trajectories_per_hour"], json!(10.0));
        let table = summary_table(&report);
        assert!(table.contains("submission_not_found (exit_format) 1"), "shown with the other drop reasons: {table}");
    }

    /// report.json and the summary say how many kept trajectories beat their task's baseline:
    /// a best score better than the baseline's priority metric, in the task's direction.
    #[test]
    fn the_report_counts_kept_trajectories_that_beat_the_baseline() {
        let mut inputs = final_inputs();
        // Kept, but its best accuracy (0.7) is below the baseline's 0.75.
        let mut turns = TURNS.to_vec();
        turns[2].1 = "DISCUSSION\nworse\n\n```\ncat data/train.csv\n```";
        inputs.rollouts.push(rollout("wineT1", 7, vec![scores(&[("accuracy", 0.6)]), scores(&[("accuracy", 0.7)])], &turns));
        // Kept, and its best RMSE (2.1) is below the baseline's 2.2 on a minimised metric.
        turns[2].1 = "DISCUSSION\nbetter\n\n```\nhead data/train.csv\n```";
        let mut lower = rollout("wineT2", 8, vec![scores(&[("rmse", 2.1)]), scores(&[("rmse", 2.4)])], &turns);
        lower.baseline_scores = scores(&[("rmse", 2.2)]);
        inputs.rollouts.push(lower);
        // Kept, equal to the baseline: not better.
        turns[2].1 = "DISCUSSION\nsame\n\n```\nwc -l data/train.csv\n```";
        inputs.rollouts.push(rollout("wineT1", 9, vec![scores(&[("accuracy", 0.75)])], &turns));
        let (lines, summary) = crate::sft::build(&inputs.rollouts, &inputs.tasks, &SftOptions::default());
        let beats: Vec<&Value> = lines.iter().map(|l| &l["meta"]["beats_baseline"]).collect();
        assert_eq!(beats, [&json!(true), &json!(true), &json!(false), &json!(true), &json!(false)]);
        assert_eq!((summary.kept, summary.beat_baseline), (5, 3));
        let report = build_report(&inputs, &summary);
        assert_eq!(report["rollouts"]["kept"], 5);
        assert_eq!(report["rollouts"]["kept_beat_baseline"], 3);
        let table = summary_table(&report);
        assert!(table.lines().any(|l| l.starts_with("beat the baseline") && l.ends_with("3 of 5 kept trajectories")), "{table}");
        assert!(summary.describe().starts_with("kept 5 of 7 trajectories (3 beat the baseline)"), "{}", summary.describe());
    }

    #[test]
    fn parquet_files_are_named_by_their_place_in_the_dataset_repository() {
        let hf = "https://huggingface.co/datasets/stanfordnlp/imdb/resolve/refs%2Fconvert%2Fparquet/plain_text/train/0000.parquet";
        assert_eq!(repo_file(hf, "stanfordnlp/imdb"), Some(("refs/convert/parquet".into(), "plain_text/train/0000.parquet".into())));
        let at_sha = "https://huggingface.co/datasets/imdb/resolve/e6281661ce1c48d982bc483cf8a173c1bbeb5d31/data/train-00000-of-00001.parquet";
        assert_eq!(repo_file(at_sha, "imdb"), Some(("e6281661ce1c48d982bc483cf8a173c1bbeb5d31".into(), "data/train-00000-of-00001.parquet".into())));
        let api = "https://huggingface.co/api/datasets/stanfordnlp/imdb/parquet/plain_text/test/0.parquet";
        assert_eq!(repo_file(api, "stanfordnlp/imdb"), Some(("refs/convert/parquet".into(), "plain_text/test/0.parquet".into())));
        let mirror = "http://127.0.0.1:39211/datasets/sklearn/iris/resolve/refs%2Fconvert%2Fparquet/default/train/0000.parquet";
        assert_eq!(repo_file(mirror, "sklearn/iris"), Some(("refs/convert/parquet".into(), "default/train/0000.parquet".into())));
        // Another dataset's file, or a URL of another shape, names no place in this repository.
        assert_eq!(repo_file(hf, "stanfordnlp/sst2"), None);
        assert_eq!(repo_file("https://cdn.example.org/files/0000.parquet", "stanfordnlp/imdb"), None);
        assert_eq!(repo_file("https://huggingface.co/datasets/stanfordnlp/imdb/resolve/main/../../x", "stanfordnlp/imdb"), None);

        let file = |url: &str| ParquetFile { split: "train".into(), url: url.into(), filename: "0000.parquet".into(), size: 7 };
        let real = parquet_provenance(&file(hf), "stanfordnlp/imdb");
        assert_eq!(real["url"], hf);
        assert_eq!(real["path"], "plain_text/train/0000.parquet");
        for loopback in [mirror, "http://localhost:8080/datasets/sklearn/iris/resolve/main/x.parquet", "http://[::1]:9/datasets/sklearn/iris/resolve/main/x.parquet"] {
            let v = parquet_provenance(&file(loopback), "sklearn/iris");
            assert!(v.get("url").is_none(), "{v}");
            assert!(v["path"].is_string(), "{v}");
        }
        let unknown = parquet_provenance(&file("https://cdn.example.org/files/0000.parquet"), "sklearn/iris");
        assert_eq!(unknown, json!({"split": "train", "filename": "0000.parquet", "size": 7, "url": "https://cdn.example.org/files/0000.parquet"}));
    }

    /// MLGym's task name is the bundle's title (written for the verified dataset), else the
    /// topic's title, else the bundle's camelCase name.
    #[test]
    fn the_task_name_follows_the_bundle_title() {
        let mut task = accepted("wineCultivarT0001", DESCRIPTION);
        task.topic.title = "Leaf Morphotype Identification".into();
        task.bundle.title = "Wine cultivar classification".into();
        assert_eq!(task_config(&task).name, "Wine cultivar classification");
        assert_eq!(tasks_index(std::slice::from_ref(&task))[0]["name"], "Wine cultivar classification");
        task.bundle.title = " ".into();
        assert_eq!(task_config(&task).name, "Leaf Morphotype Identification");
        task.topic.title = String::new();
        assert_eq!(task_config(&task).name, "wineCultivar");
    }

    #[test]
    fn empty_run_reports_zeroes() {
        let inputs = FinalInputs {
            units: vec![],
            tasks: vec![],
            rollouts: vec![],
            usage: vec![],
            events: vec![],
            wall_time_secs: 0.0,
        };
        let report = build_report(&inputs, &SftSummary::default());
        assert_eq!(report["tasks"]["yield"], json!(0.0));
        assert_eq!(report["throughput"]["trajectories_per_hour"], json!(0.0));
        let table = summary_table(&report);
        assert!(table.contains("0 of 0 topics"), "{table}");
    }
}
