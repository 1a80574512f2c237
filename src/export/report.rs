//! `report.json`: what a run did, derived from the store's contents: the per-stage funnel with
//! drop reasons, the accepted tasks' spread, the rollouts kept, LLM usage, events and
//! throughput; and the service labels that say which services were simulated. [`Report`] is
//! the document; it is serialised only when written and read back for the summary.

use std::collections::BTreeMap;

use gymforge_actors::model::{DropReason, RolloutRecord, Stage, UnitKind, UnitStatus};
use gymforge_actors::ports::{FinalInputs, Usage};
use serde::{Deserialize, Serialize};

use super::services::ServiceLabels;
use crate::gateway::GatewaySnapshot;
use crate::sft::SftSummary;

/// Version of the `report.json` layout. 2: a rollout passes its stage only with a scored
/// submission, `throughput.trajectories_per_hour` counts scored trajectories
/// (`recorded_trajectories_per_hour` all), `services.llm.stages` labels each stage.
pub const REPORT_VERSION: u32 = 2;

/// `report.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Report {
    pub report_version: u32,
    /// True when any service was simulated (only with `services`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceLabels>,
    /// One entry per stage, in pipeline order.
    pub stages: Vec<StageFunnel>,
    pub units: UnitCounts,
    pub tasks: TaskSpread,
    pub rollouts: RolloutCounts,
    pub llm: LlmReport,
    pub events: EventCounts,
    pub wall_time_secs: f64,
    pub throughput: Throughput,
}

/// How units went through one stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StageFunnel {
    pub stage: Stage,
    pub entered: u64,
    pub passed: u64,
    pub dropped: u64,
    pub in_progress: u64,
    /// Units dropped per reason: a [`DropReason`]'s name, or a rollout's exit status.
    #[serde(default)]
    pub drop_reasons: BTreeMap<String, u64>,
    /// Per reason, what happened to the first unit dropped for it, in words.
    #[serde(default)]
    pub drop_details: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct UnitCounts {
    pub task: u64,
    pub rollout: u64,
    pub pending: u64,
    pub done: u64,
    pub dropped: u64,
}

/// The accepted tasks and their spread over datasets and task types.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct TaskSpread {
    pub topic_units: u64,
    pub accepted: u64,
    pub accepted_ids: Vec<String>,
    #[serde(rename = "yield")]
    pub task_yield: f64,
    pub distinct_datasets: u64,
    pub distinct_task_types: u64,
    pub by_dataset: BTreeMap<String, u64>,
    pub by_task_type: BTreeMap<String, u64>,
}

/// The trajectories recorded, scored and kept for SFT.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct RolloutCounts {
    pub total: u64,
    pub scored: u64,
    pub kept: u64,
    pub kept_beat_baseline: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub over_token_budget: u64,
    pub shortened: u64,
}

/// LLM usage as the stages recorded it, and the gateway's counters of this session.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct LlmReport {
    pub by_stage_endpoint_model: Vec<UsageRowReport>,
    pub by_stage: BTreeMap<Stage, UsageReport>,
    pub by_model: BTreeMap<String, UsageReport>,
    pub by_endpoint: BTreeMap<String, UsageReport>,
    pub by_unit: BTreeMap<String, UsageReport>,
    pub total: UsageReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySnapshot>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct UsageReport {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UsageRowReport {
    pub stage: Stage,
    pub endpoint: String,
    pub model: String,
    #[serde(flatten)]
    pub usage: UsageReport,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct EventCounts {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Throughput {
    pub accepted_tasks_per_hour: f64,
    /// Scored trajectories.
    pub trajectories_per_hour: f64,
    /// Every trajectory written.
    pub recorded_trajectories_per_hour: f64,
    pub kept_trajectories_per_hour: f64,
}

impl From<&Usage> for UsageReport {
    fn from(u: &Usage) -> UsageReport {
        UsageReport {
            calls: u.calls,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: u.input_tokens + u.output_tokens,
            cost_usd: u.cost_usd,
        }
    }
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
        UnitKind::Task => &[Stage::Topic, Stage::Dataset, Stage::Codegen, Stage::Debug, Stage::Export],
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
            let plural = if steps == 1 { "" } else { "s" };
            Some((reason, format!("the trajectory ended after {steps} step{plural} without a scored submission")))
        }
        None => Some(("trajectory_unreadable".into(), "the rollout's stored result could not be read as a trajectory".into())),
    }
}

impl StageFunnel {
    fn new(stage: Stage) -> StageFunnel {
        StageFunnel {
            stage,
            entered: 0,
            passed: 0,
            dropped: 0,
            in_progress: 0,
            drop_reasons: BTreeMap::new(),
            drop_details: BTreeMap::new(),
        }
    }

    fn drop(&mut self, reason: String, detail: Option<&str>) {
        self.dropped += 1;
        // The first unit dropped for a reason says, in words, what happened.
        if let Some(detail) = detail {
            self.drop_details.entry(reason.clone()).or_insert_with(|| crate::output::one_line(detail, 200));
        }
        *self.drop_reasons.entry(reason).or_default() += 1;
    }
}

/// Counts by key, keys in order.
fn count_by<'a>(keys: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for key in keys {
        *counts.entry(key.to_string()).or_default() += 1;
    }
    counts
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
/// `recorded_trajectories_per_hour` every trajectory written. The services and the gateway's
/// counters are the caller's to add.
pub fn build_report(inputs: &FinalInputs, sft: &SftSummary) -> Report {
    let records: BTreeMap<&str, &RolloutRecord> = inputs.rollouts.iter().map(|r| (r.unit.as_str(), r)).collect();
    let mut stages: Vec<StageFunnel> = Stage::ALL.iter().map(|&stage| StageFunnel::new(stage)).collect();
    let mut units = UnitCounts::default();
    for unit in &inputs.units {
        match unit.kind {
            UnitKind::Task => units.task += 1,
            UnitKind::Rollout => units.rollout += 1,
        }
        match unit.status {
            UnitStatus::Pending => units.pending += 1,
            UnitStatus::Done => units.done += 1,
            UnitStatus::Dropped => units.dropped += 1,
        }
        for &stage in stages_of(unit.kind) {
            if stage > unit.stage {
                break;
            }
            let c = stages.iter_mut().find(|c| c.stage == stage).expect("every stage has a funnel");
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
                UnitStatus::Dropped => {
                    c.drop(unit.drop_reason.map_or("unknown", DropReason::as_str).to_string(), unit.drop_detail.as_deref())
                }
            }
        }
    }

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
    let reported = |m: BTreeMap<&str, Usage>| m.iter().map(|(k, u)| (k.to_string(), UsageReport::from(u))).collect();
    let llm = LlmReport {
        by_stage_endpoint_model: by_stage_endpoint_model
            .iter()
            .map(|((stage, endpoint, model), u)| UsageRowReport {
                stage: *stage,
                endpoint: endpoint.to_string(),
                model: model.to_string(),
                usage: u.into(),
            })
            .collect(),
        by_stage: by_stage.iter().map(|(s, u)| (*s, u.into())).collect(),
        by_model: reported(by_model),
        by_endpoint: reported(by_endpoint),
        by_unit: reported(by_unit),
        total: (&total).into(),
        gateway: None,
    };

    let accepted = inputs.tasks.len() as u64;
    // The spread of the accepted tasks: how many per dataset and per task type.
    let by_dataset = count_by(inputs.tasks.iter().map(|t| t.dataset.id.as_str()));
    let by_task_type = count_by(inputs.tasks.iter().map(|t| t.topic.sample.task_type.as_str()));
    let tasks = TaskSpread {
        topic_units: units.task,
        accepted,
        accepted_ids: inputs.tasks.iter().map(|t| t.task_id.clone()).collect(),
        task_yield: if units.task > 0 { accepted as f64 / units.task as f64 } else { 0.0 },
        distinct_datasets: by_dataset.len() as u64,
        distinct_task_types: by_task_type.len() as u64,
        by_dataset,
        by_task_type,
    };
    let rollouts = RolloutCounts {
        total: inputs.rollouts.len() as u64,
        scored: inputs.rollouts.iter().filter(|r| r.has_scored_submission()).count() as u64,
        kept: sft.kept,
        kept_beat_baseline: sft.beat_baseline,
        duplicates: sft.duplicates,
        malformed: sft.malformed,
        over_token_budget: sft.over_budget,
        shortened: sft.shortened,
    };
    let wall = inputs.wall_time_secs;
    Report {
        report_version: REPORT_VERSION,
        simulated: None,
        services: None,
        stages,
        units,
        throughput: Throughput {
            accepted_tasks_per_hour: per_hour(accepted, wall),
            trajectories_per_hour: per_hour(rollouts.scored, wall),
            recorded_trajectories_per_hour: per_hour(rollouts.total, wall),
            kept_trajectories_per_hour: per_hour(sft.kept, wall),
        },
        tasks,
        rollouts,
        llm,
        events: EventCounts { total: inputs.events.len() as u64, by_kind: count_by(inputs.events.iter().map(|e| e.kind.as_str())) },
        wall_time_secs: wall,
    }
}

impl Report {
    /// The report with the services the run used: `simulated` says whether any was.
    pub fn with_services(mut self, services: ServiceLabels) -> Report {
        self.simulated = Some(services.any_simulated());
        self.services = Some(services);
        self
    }

    /// The stage's funnel.
    pub fn stage(&self, stage: Stage) -> Option<&StageFunnel> {
        self.stages.iter().find(|s| s.stage == stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use serde_json::{Value, json};

    use gymforge_actors::ports::Outputs;

    use crate::export::OutputDir;
    use crate::export::fixtures::{TURNS, final_inputs, no_temp_files, rollout, scores, unit};
    use crate::export::services::{HubLabel, LlmLabel, StageLabel};
    use crate::export::summary::summary_table;
    use crate::sft::SftOptions;

    /// report.json as written, and as the summary reads it back.
    fn read_report(out: &OutputDir) -> (Value, Report) {
        let bytes = fs::read(out.report_path()).unwrap();
        (serde_json::from_slice(&bytes).unwrap(), serde_json::from_slice(&bytes).unwrap())
    }

    fn as_json(report: &Report) -> Value {
        serde_json::to_value(report).unwrap()
    }

    #[test]
    fn report_counts_and_tasks_index() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let inputs = final_inputs();
        out.finalize(&inputs).unwrap();
        let (report, typed) = read_report(&out);

        let stage = |name: &str| report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == name).unwrap().clone();
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
            json!({
                "total": 4, "scored": 3, "kept": 2, "kept_beat_baseline": 2,
                "duplicates": 1, "malformed": 0, "over_token_budget": 0, "shortened": 0
            })
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

        let index: Value = serde_json::from_slice(&fs::read(out.tasks_index_path()).unwrap()).unwrap();
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
            json!({
                "split": "train", "filename": "0000.parquet", "size": 10_000,
                "revision": "refs/convert/parquet", "path": "default/train/0000.parquet"
            })
        );
        assert_eq!(first["topic"]["sample"]["domain"], "chemistry");
        assert_eq!(first["debug_rounds"], 2);
        assert_eq!(index[1]["direction"], "minimize");
        no_temp_files(out.root());

        let table = summary_table(&typed);
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

    fn hub_label(simulated: bool) -> HubLabel {
        HubLabel {
            kind: "embedded mirror".into(),
            simulated,
            endpoint: "http://127.0.0.1:9".into(),
            endpoint_from: None,
            viewer: None,
            token: None,
        }
    }

    /// Labels of an LLM that is one endpoint for every stage.
    fn llm_label(kind: &str, simulated: bool) -> LlmLabel {
        LlmLabel { kind: kind.into(), simulated, model: "sim-teacher".into(), endpoints: BTreeMap::new(), stages: BTreeMap::new() }
    }

    #[test]
    fn labels_mark_simulated_runs() {
        let dir = tempfile::tempdir().unwrap();
        let labels = ServiceLabels { llm: llm_label("simulated teacher", true), hub: hub_label(true) };
        let out = OutputDir::new(dir.path().join("out")).with_labels(labels.clone());
        out.finalize(&final_inputs()).unwrap();
        let (report, typed) = read_report(&out);
        assert_eq!(report["simulated"], json!(true));
        assert_eq!(report["services"]["llm"]["kind"], "simulated teacher");
        assert_eq!(typed.services.as_ref(), Some(&labels), "the labels read back as written");
        let text = fs::read_to_string(out.sft_path()).unwrap();
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["meta"]["simulated"], json!(true));
        }
        let table = summary_table(&typed);
        assert!(table.contains("simulated teacher, model sim-teacher [SIMULATED]"), "{table}");
        assert!(table.contains("embedded mirror [SIMULATED]"), "{table}");

        let real = ServiceLabels { llm: llm_label("OpenAI-compatible endpoint", false), hub: hub_label(false) };
        let out = OutputDir::new(dir.path().join("real")).with_labels(real);
        out.finalize(&final_inputs()).unwrap();
        let (report, typed) = read_report(&out);
        assert_eq!(report["simulated"], json!(false));
        assert!(!summary_table(&typed).contains("SIMULATED"));
    }

    /// Reports of version 1 labelled the LLM only as a whole: `export sft` still reads whether
    /// the teacher was simulated from them.
    #[test]
    fn labels_without_stages_say_it_for_the_whole_llm() {
        let v1 = json!({
            "llm": {"kind": "simulated teacher", "simulated": true, "model": "m"},
            "hub": {"kind": "k", "simulated": true, "endpoint": "e"}
        });
        let labels: ServiceLabels = serde_json::from_value(v1).unwrap();
        assert!(labels.teacher_simulated() && labels.any_simulated());
    }

    /// Service labels of an LLM whose stages are routed to `rollout` for the rollout stage and to
    /// `other` for the rest (`"sim"` is the simulated teacher).
    fn routed_labels(rollout: &str, other: &str) -> ServiceLabels {
        let label =
            |endpoint: &str| StageLabel { endpoint: endpoint.into(), model: format!("{endpoint}-model"), simulated: endpoint == "sim" };
        let stages = Stage::ALL
            .iter()
            .filter(|&&s| s != Stage::Export)
            .map(|&s| (s, label(if s == Stage::Rollout { rollout } else { other })))
            .collect();
        let llm = LlmLabel {
            kind: "mixed".into(),
            simulated: rollout == "sim" || other == "sim",
            model: format!("{rollout}-model"),
            endpoints: BTreeMap::new(),
            stages,
        };
        ServiceLabels { llm, hub: hub_label(false) }
    }

    /// A run whose rollouts came from a real endpoint is marked simulated only for the stages
    /// the simulator answered: the summary marks each endpoint, and the SFT lines follow the
    /// rollout stage's teacher, whichever way round.
    #[test]
    fn simulated_is_said_per_stage_and_sft_lines_follow_the_teacher() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("real-teacher")).with_labels(routed_labels("openai", "sim"));
        out.finalize(&final_inputs()).unwrap();
        let (report, typed) = read_report(&out);
        assert_eq!(report["simulated"], json!(true), "some service was simulated");
        assert_eq!(report["services"]["llm"]["stages"]["rollout"]["simulated"], json!(false));
        let lines: Vec<Value> = fs::read_to_string(out.sft_path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| l["meta"]["simulated"] == json!(false)), "{lines:?}");
        let table = summary_table(&typed);
        let line =
            |prefix: &str| table.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} line: {table}")).to_string();
        assert!(line("llm openai ").ends_with("stages rollout; model openai-model"), "{table}");
        assert!(line("llm sim ").ends_with("stages topic, dataset, codegen, debug; model sim-model [SIMULATED]"), "{table}");
        assert!(!line("llm ").contains("SIMULATED"), "the LLM as a whole is not marked: {table}");

        let out = OutputDir::new(dir.path().join("simulated-teacher")).with_labels(routed_labels("sim", "openai"));
        out.finalize(&final_inputs()).unwrap();
        let lines: Vec<Value> = fs::read_to_string(out.sft_path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.iter().all(|l| l["meta"]["simulated"] == json!(true)), "{lines:?}");
        assert!(routed_labels("sim", "openai").teacher_simulated() && !routed_labels("openai", "sim").teacher_simulated());
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
        let typed = build_report(&inputs, &SftSummary::default());
        let report = as_json(&typed);
        let rollout_stage = report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "rollout").unwrap().clone();
        assert_eq!(
            (rollout_stage["entered"].as_u64(), rollout_stage["passed"].as_u64(), rollout_stage["dropped"].as_u64()),
            (Some(7), Some(3), Some(4))
        );
        assert_eq!(
            rollout_stage["drop_reasons"],
            json!({
                "rollout_failed": 1, "submission_not_found (submit)": 1,
                "submission_not_found (exit_format)": 1, "trajectory_unreadable": 1
            })
        );
        assert_eq!(
            rollout_stage["drop_details"]["submission_not_found (exit_format)"],
            "the trajectory ended after 0 steps without a scored submission"
        );
        assert_eq!((report["rollouts"]["total"].as_u64(), report["rollouts"]["scored"].as_u64()), (Some(5), Some(3)));
        assert_eq!(report["throughput"]["trajectories_per_hour"], json!(6.0));
        assert_eq!(report["throughput"]["recorded_trajectories_per_hour"], json!(10.0));
        let table = summary_table(&typed);
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
        let beats: Vec<Option<bool>> = lines.iter().map(|l| l.meta().beats_baseline).collect();
        assert_eq!(beats, [Some(true), Some(true), Some(false), Some(true), Some(false)]);
        assert_eq!((summary.kept, summary.beat_baseline), (5, 3));
        let report = build_report(&inputs, &summary);
        assert_eq!((report.rollouts.kept, report.rollouts.kept_beat_baseline), (5, 3));
        let table = summary_table(&report);
        assert!(table.lines().any(|l| l.starts_with("beat the baseline") && l.ends_with("3 of 5 kept trajectories")), "{table}");
        assert!(summary.describe().starts_with("kept 5 of 7 trajectories (3 beat the baseline)"), "{}", summary.describe());
    }

    #[test]
    fn empty_run_reports_zeroes() {
        let inputs = FinalInputs { units: vec![], tasks: vec![], rollouts: vec![], usage: vec![], events: vec![], wall_time_secs: 0.0 };
        let report = build_report(&inputs, &SftSummary::default());
        assert_eq!(as_json(&report)["tasks"]["yield"], json!(0.0));
        assert_eq!(report.throughput.trajectories_per_hour, 0.0);
        let table = summary_table(&report);
        assert!(table.contains("0 of 0 topics"), "{table}");
    }
}
