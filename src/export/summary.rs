//! The run's summary for the terminal: a report (as `report.json` has it) rendered as an aligned
//! table of the stage funnel, then the run's facts one per line.

use std::collections::BTreeMap;

use gymforge_actors::model::Stage;

use super::report::Report;
use super::services::StageLabel;

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
pub fn frequent_drop_details(report: &Report, n: usize) -> Vec<String> {
    let mut all: Vec<(u64, &str, &str, &str)> = Vec::new();
    for stage in &report.stages {
        for (reason, &count) in &stage.drop_reasons {
            let detail = stage.drop_details.get(reason).map_or("", String::as_str);
            all.push((count, stage.stage.as_str(), reason.as_str(), detail));
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
fn endpoint_lines(stages: &BTreeMap<Stage, StageLabel>) -> Vec<(String, String)> {
    let mut by_endpoint: BTreeMap<&str, (Vec<&str>, &str, bool)> = BTreeMap::new();
    for (stage, label) in stages {
        let entry = by_endpoint.entry(&label.endpoint).or_insert((Vec::new(), &label.model, false));
        entry.0.push(stage.as_str());
        entry.2 |= label.simulated;
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
pub fn summary_table(report: &Report) -> String {
    let mut table: Vec<[String; 6]> =
        vec![["stage".into(), "entered".into(), "passed".into(), "dropped".into(), "running".into(), "top drop reasons".into()]];
    for stage in &report.stages {
        let mut reasons: Vec<(&str, u64)> = stage.drop_reasons.iter().map(|(k, &v)| (k.as_str(), v)).collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut top: Vec<String> = reasons.iter().take(3).map(|(r, n)| format!("{r} {n}")).collect();
        if reasons.len() > 3 {
            top.push(format!("+{} more", reasons.len() - 3));
        }
        table.push([
            stage.stage.as_str().to_string(),
            stage.entered.to_string(),
            stage.passed.to_string(),
            stage.dropped.to_string(),
            stage.in_progress.to_string(),
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

    let (tasks, rollouts, total) = (&report.tasks, &report.rollouts, &report.llm.total);
    let throughput = &report.throughput;
    let mut facts: Vec<(String, String)> = vec![
        (
            "accepted tasks".into(),
            format!(
                "{} of {} topics (yield {:.1}%), {} datasets, {} task types",
                tasks.accepted,
                tasks.topic_units,
                tasks.task_yield * 100.0,
                tasks.distinct_datasets,
                tasks.distinct_task_types
            ),
        ),
        (
            "rollouts kept".into(),
            format!("{} of {} ({} scored, {} duplicate)", rollouts.kept, rollouts.total, rollouts.scored, rollouts.duplicates),
        ),
        ("beat the baseline".into(), format!("{} of {} kept trajectories", rollouts.kept_beat_baseline, rollouts.kept)),
        ("llm calls".into(), thousands(total.calls)),
        (
            "tokens".into(),
            format!("{} ({} in, {} out)", thousands(total.total_tokens), thousands(total.input_tokens), thousands(total.output_tokens)),
        ),
        ("cost".into(), format!("${:.4}", total.cost_usd)),
        ("wall time".into(), duration(report.wall_time_secs)),
        (
            "throughput".into(),
            format!(
                "{:.1} tasks/h, {:.1} scored trajectories/h ({:.1} recorded/h)",
                throughput.accepted_tasks_per_hour, throughput.trajectories_per_hour, throughput.recorded_trajectories_per_hour,
            ),
        ),
    ];
    if !report.events.by_kind.is_empty() {
        let events: Vec<String> = report.events.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        facts.push(("events".into(), events.join(", ")));
    }
    for (name, e) in report.llm.gateway.iter().flat_map(|g| &g.endpoints) {
        let mut text = format!("{} requests this session", thousands(e.requests_sent));
        text.push_str(&format!(", {} answered ({} usable)", thousands(e.answered), thousands(e.succeeded)));
        text.push_str(&format!(", {} rate limited, {} transient failures, {} retries", e.rate_limited, e.transient_failures, e.retries));
        if e.circuit_openings > 0 {
            text.push_str(&format!(", circuit opened {} times", e.circuit_openings));
        }
        facts.push((format!("endpoint {name}"), text));
    }
    if let Some(services) = &report.services {
        let hub = &services.hub;
        facts.push(("hub".into(), format!("{}{}", hub.kind, if hub.simulated { " [SIMULATED]" } else { "" })));
        let llm = &services.llm;
        // With per-stage labels, each endpoint's line says whether it is simulated.
        let mark = if llm.stages.is_empty() && llm.simulated { " [SIMULATED]" } else { "" };
        facts.push(("llm".into(), format!("{}, model {}{mark}", llm.kind, llm.model)));
        for (endpoint, line) in endpoint_lines(&llm.stages) {
            facts.push((format!("llm {endpoint}"), line));
        }
    }
    let w = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in facts {
        out.push_str(&format!("{k:<w$}  {v}\n"));
    }
    out
}
