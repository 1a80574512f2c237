//! The run's summary for the terminal: a report (as `report.json` has it) rendered as an aligned
//! table of the stage funnel, then the run's facts one per line.

use std::collections::BTreeMap;

use gymforge_actors::model::Stage;
use serde_json::{Value, json};

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

/// Renders a report (as [`build_report`](super::build_report) makes it) as an aligned
/// plain-text table for the terminal: per stage entered / passed / dropped with the top drop
/// reasons, then yield, rollouts kept, tokens, cost, wall time, throughput, and the services the
/// run used (marked when simulated) if the report names them.
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
