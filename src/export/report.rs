//! `report.json`: what a run did, derived from the store's contents: the per-stage funnel with
//! drop reasons, the accepted tasks' spread, the rollouts kept, LLM usage, events and
//! throughput; and the service labels that say which services were simulated.

use std::collections::BTreeMap;

use gymforge_actors::model::{DropReason, RolloutRecord, Stage, UnitKind, UnitStatus};
use gymforge_actors::ports::{FinalInputs, Usage};

use crate::sft::SftSummary;
use serde_json::{Value, json};

/// Version of the `report.json` layout. 2: a rollout passes its stage only with a scored
/// submission, `throughput.trajectories_per_hour` counts scored trajectories
/// (`recorded_trajectories_per_hour` all), `services.llm.stages` labels each stage.
pub const REPORT_VERSION: u32 = 2;

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

/// Whether the rollout stage's endpoint, the teacher whose trajectories become SFT data, was
/// simulated, from service labels (`report.json`'s `services`). Labels without per-stage
/// entries (reports of earlier versions) say it only for the LLM as a whole.
pub fn teacher_simulated(labels: &Value) -> bool {
    let simulated = labels.pointer("/llm/stages/rollout/simulated").or_else(|| labels.pointer("/llm/simulated"));
    simulated == Some(&json!(true))
}

/// True when any service label says `"simulated": true`.
pub(super) fn any_simulated(labels: &Value) -> bool {
    labels.as_object().is_some_and(|m| m.values().any(|v| v["simulated"] == json!(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use gymforge_actors::ports::Outputs;

    use crate::export::OutputDir;
    use crate::export::fixtures::{TURNS, final_inputs, no_temp_files, rollout, scores, unit};
    use crate::export::summary::summary_table;
    use crate::sft::SftOptions;

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
