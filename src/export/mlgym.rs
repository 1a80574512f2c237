//! MLGym's task and dataset config documents, as typed structs serialised to YAML, and the
//! escaping that makes a task description safe for MLGym's `str.format`.

use std::collections::BTreeMap;

use gymforge_actors::model::{AcceptedTask, Scores};
use gymforge_actors::ports::PortError;
use serde::{Deserialize, Serialize};

use super::files::permanent;

/// The placeholder MLGym fills with the dataset documentation.
pub const DATASET_DOCS: &str = "{dataset_docs}";

/// Starter files every task ships, copied from `prepared/starter/`.
pub const STARTER_FILES: [&str; 3] = ["baseline.py", "evaluate.py", "sample_submission.csv"];

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
    DatasetConfig { name: meta.id.clone(), description, data_path: format!("data/{}/data", task.task_id), is_local: true }
}

pub(super) fn to_yaml<T: Serialize>(what: &str, value: &T) -> Result<String, PortError> {
    serde_norway::to_string(value).map_err(|e| permanent(format!("serialising {what}: {e}")))
}

// MLGym's own loader, as gymforge's exports are checked against it: the fields MLGym's
// TaskConfig and DatasetConfig know, unknown keys refused.

/// Every field of MLGym's TaskConfig; unknown keys are an error, as in MLGym's loader.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct MlgymTaskConfig {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub dataset_configs: Vec<String>,
    #[serde(default)]
    pub task_entrypoint: Option<String>,
    #[serde(default)]
    pub training_timeout: Option<u64>,
    #[serde(default)]
    pub requirements_path: Option<String>,
    #[serde(default)]
    pub use_generic_conda: Option<bool>,
    #[serde(default)]
    pub starter_code: Vec<String>,
    #[serde(default)]
    pub baseline_paths: Vec<String>,
    #[serde(default)]
    pub baseline_scores: Vec<BTreeMap<String, f64>>,
    #[serde(default)]
    pub sample_submission: Option<String>,
    #[serde(default)]
    pub evaluation_paths: Vec<String>,
    #[serde(default)]
    pub evaluation_read_only: Option<bool>,
    #[serde(default)]
    pub secret_files: Vec<String>,
    #[serde(default)]
    pub memory_path: Option<String>,
    #[serde(default)]
    pub benchmark_name: Option<String>,
}

/// Every field of MLGym's DatasetConfig.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct MlgymDatasetConfig {
    pub name: String,
    pub description: String,
    pub data_path: String,
    #[serde(default)]
    pub is_local: Option<bool>,
    #[serde(default)]
    pub train_split: Option<serde_json::Value>,
    #[serde(default)]
    pub valid_split: Option<serde_json::Value>,
    #[serde(default)]
    pub test_split: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use gymforge_actors::ports::Outputs;

    use crate::export::OutputDir;
    use crate::export::fixtures::{DESCRIPTION, accepted, no_temp_files, prepared, scores};
    use crate::export::tasks_json::tasks_index;

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
            ["data/wineCultivarT0001/baseline.py", "data/wineCultivarT0001/evaluate.py", "data/wineCultivarT0001/sample_submission.csv"]
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
        assert_eq!(fs::read_to_string(out.task_data_dir("wineCultivarT0001").join("data/answers.csv")).unwrap(), "cultivar\n2\n");
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
        assert_eq!(escape_description(raw), "Goal {{x}}.\n\n{dataset_docs}\n\nSUBMISSION FORMAT:\nsubmission.csv");
        assert_eq!(escape_description("Goal."), "Goal.\n\n{dataset_docs}");
        assert_eq!(escape_description("## Submission format\nx"), "{dataset_docs}\n\n## Submission format\nx");
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
}
