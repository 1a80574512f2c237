//! Test fixtures shared by the export tests: an accepted task with its prepared bundle, rollouts
//! with their trajectories, and the final inputs of a small run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use gymforge_actors::model::{
    AcceptedTask, DatasetMeta, Direction, DropReason, HistoryItem, ModelStats, ParquetFile, RolloutRecord, Scores, Stage, TaskBundle,
    TopicIdea, TopicSample, Trajectory, TrajectoryInfo, TrajectoryStep, Unit, UnitKind, UnitStatus,
};
use gymforge_actors::ports::{Event, EventKind, FinalInputs, Usage, UsageRow};
use serde_json::json;

pub(super) fn scores(pairs: &[(&str, f64)]) -> Scores {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

pub(super) fn accepted(task_id: &str, description: &str) -> AcceptedTask {
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
            dataset_description: "Columns: alcohol, ... ; label `cultivar` in {0, 1, 2}.".into(),
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

pub(super) fn prepared(dir: &Path) -> PathBuf {
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

pub(super) fn all_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
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

pub(super) fn no_temp_files(root: &Path) {
    for (path, _) in all_files(root) {
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(!name.ends_with(".tmp"), "temporary file left behind: {}", path.display());
    }
}

pub(super) const DESCRIPTION: &str = "Classify wines. Predictions look like {\"cultivar\": 0}; sets {a, b}.\n\
    {dataset_docs}\n\
    Use `df.groupby('x').agg({'y': 'mean'})` if you like. A lone } or { must survive.\n\n\
    SUBMISSION FORMAT:\nWrite submission.csv with one column `cultivar`.";

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

pub(super) fn rollout(task_id: &str, run_index: u32, score: Vec<Scores>, turns: &[(&str, &str)]) -> RolloutRecord {
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
                state: "{\"open_file\": \"n/a\", \"working_dir\": \"/home/agent/workspace\"}".into(),
                thought: "DISCUSSION\nvalidate".into(),
                execution_time: 0.5,
            }],
            history: history(turns),
            info: TrajectoryInfo {
                model_stats: ModelStats::default(),
                exit_status: if score.is_empty() { "submission_not_found (submit)" } else { "submitted" }.into(),
                submission: None,
                score,
                summarizer: json!({}),
            },
        },
    }
}

pub(super) const TURNS: &[(&str, &str)] = &[
    ("system", "You are an ML researcher."),
    ("user", "TASK DESCRIPTION: classify wines"),
    ("assistant", "DISCUSSION\nlook\n\n```\nls\n```"),
    ("user", "baseline.py evaluate.py"),
    ("assistant", "DISCUSSION\nsubmit\n\n```\nsubmit\n```"),
    ("user", "Exited (submit)"),
];

pub(super) fn unit(id: &str, kind: UnitKind, seq: u64, stage: Stage, status: UnitStatus, reason: Option<&str>) -> Unit {
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

pub(super) fn final_inputs() -> FinalInputs {
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
    let mut t2 = rollout("wineT2", 0, vec![scores(&[("rmse", 3.0)]), scores(&[("rmse", 2.0)]), scores(&[("rmse", 2.5)])], &other_turns);
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
            rollout("wineT1", 0, vec![scores(&[("accuracy", 0.7)]), scores(&[("accuracy", 0.9)]), scores(&[("accuracy", 0.8)])], TURNS),
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
                usage: Usage { calls: 3, input_tokens: 3000, output_tokens: 900, cost_usd: 0.5 },
            },
            UsageRow {
                unit: "t0001-r1".into(),
                stage: Rollout,
                endpoint: "main".into(),
                model: "teacher".into(),
                usage: Usage { calls: 20, input_tokens: 20000, output_tokens: 2000, cost_usd: 1.0 },
            },
        ],
        events: vec![
            Event { kind: EventKind::Retry, unit: "t0002".into(), stage: Dataset, detail: "429".into() },
            Event { kind: EventKind::WorkerRestart, unit: "t0003".into(), stage: Debug, detail: "panic".into() },
            Event { kind: EventKind::Retry, unit: "t0004".into(), stage: Codegen, detail: "timeout".into() },
        ],
        wall_time_secs: 1800.0,
    };
    // Each trajectory is the result of one of the rollout units above.
    for (r, unit) in inputs.rollouts.iter_mut().zip(["t0001.r0", "t0001.r1", "t0001.r2", "t0006.r0"]) {
        r.unit = unit.into();
    }
    inputs
}
