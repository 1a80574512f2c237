//! MLGym-Bench scoring: per-task and per-model scores, performance profiles and AUP.
//!
//! The method is MLGym's (performance profiles in the style of Dolan & Moré, summarised by the
//! Area Under the Profile):
//!
//! 1. **Scores.** For each (method, task) a [`ScoreTable`] holds one value or nothing. From
//!    trajectories ([`from_trajectories`]) the *Best Attempt* score of a run is the best value
//!    of the task's priority metric over every entry of `results.json` `"agent"` (every
//!    validate and the final submission); the *Last* score is the priority metric of the last
//!    entry. Runs with an empty list are dropped; a model's score on a task is the best over
//!    its runs. The task baseline takes part as the pseudo-method [`BASELINE`].
//! 2. **Ratios.** Per task, a method is *feasible* when its score is present, `>= 0` and not
//!    worse than the baseline (so a negative baseline is itself infeasible). With `best` the
//!    best feasible score, the ratio is `best / score` (maximize) or `score / best` (minimize),
//!    so the winner has `r = 1`. Every infeasible or missing method gets `r = worst * 1.05`
//!    where `worst` is the largest feasible ratio of the task.
//! 3. **Profile.** Each task bounds tau by `ceil(worst * 1.05)`; `max_tau` is `log10` of the
//!    largest bound over all tasks, rounded up to one decimal, and is shared by the Best
//!    Attempt and Last settings ([`compute_pair`]). On a grid of [`GRID_POINTS`] points
//!    `linspace(0, max_tau)` (log10 space), `rho_m(tau)` is the fraction of tasks with
//!    `log10(r) <= tau`, and `AUP_m = sum_i (tau_{i+1} - tau_i) * rho_m(tau_i)` (left Riemann
//!    sum); a method that wins every task scores `max_tau`.
//!
//! AUP is relative to the pool of compared methods: adding a method can move the best score of
//! a task and so every other method's ratio.
//!
//! Inputs are either an output directory written by gymforge (`mlgym/tasks.json` plus
//! `trajectories/<run_name>/{<task_id>.traj, results.json}`) or MLGym's published score tables
//! (CSV: first column `Task`, then one column per method; empty cell = missing) with a
//! directions file (`task,direction`). Outputs are a plain-text table, a JSON document and an
//! SVG plot of the performance profiles ([`run_aup`] ties them together).
//!
//! `scores` reads and extracts the score tables, `profile` computes ratios, profiles and
//! AUP, `svg` draws the plot; this module writes the text table and the JSON document and
//! runs the command.

mod profile;
mod scores;
mod svg;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

pub use profile::{AupResult, GRID_POINTS, INFEASIBLE_FACTOR, compute, compute_pair, compute_with_max_tau, linspace, max_tau};
pub use scores::{BASELINE, ScoreTable, from_trajectories, parse_direction, read_directions_csv, read_score_table_csv};
pub use svg::profile_svg;

// ---------------------------------------------------------------------------------------------
// Output: the text table and the JSON document

/// Plain-text table: method, Best AUP, Last AUP, sorted by Best AUP (then Last AUP, then name),
/// followed by the scale. Methods present in only one result show `-` for the other.
pub fn text_table(best: &AupResult, last: &AupResult) -> String {
    let rows = method_rows(best, last);
    let width = rows.iter().map(|(m, _, _)| m.chars().count()).max().unwrap_or(0).max("method".len());
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    let mut out = String::new();
    let _ = writeln!(out, "{:<width$}  {:>8}  {:>8}", "method", "best AUP", "last AUP");
    for (m, b, l) in &rows {
        let _ = writeln!(out, "{m:<width$}  {:>8}  {:>8}", cell(*b), cell(*l));
    }
    let _ = writeln!(
        out,
        "\n{} tasks, max_tau = {} (log10 ratio), {} grid points; maximum AUP = max_tau",
        best.table.tasks.len(),
        fmt_num(best.max_tau),
        GRID_POINTS
    );
    out
}

/// (method, best AUP, last AUP), sorted best-first.
fn method_rows(best: &AupResult, last: &AupResult) -> Vec<(String, Option<f64>, Option<f64>)> {
    let mut names: Vec<&String> = best.table.methods.iter().collect();
    for m in &last.table.methods {
        if !names.contains(&m) {
            names.push(m);
        }
    }
    let mut rows: Vec<_> = names.into_iter().map(|m| (m.clone(), best.aup_of(m), last.aup_of(m))).collect();
    let key = |v: Option<f64>| v.unwrap_or(f64::NEG_INFINITY);
    rows.sort_by(|a, b| key(b.1).total_cmp(&key(a.1)).then(key(b.2).total_cmp(&key(a.2))).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// Shortest decimal form of a number.
fn fmt_num(v: f64) -> String {
    format!("{v}")
}

fn finite_json(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

fn setting_json(result: &AupResult, t: usize) -> Value {
    let table = &result.table;
    let mut scores = Map::new();
    let mut ratios = Map::new();
    let mut feasible = Map::new();
    for (m, name) in table.methods.iter().enumerate() {
        scores.insert(name.clone(), table.scores[t][m].map_or(Value::Null, |v| json!(v)));
        ratios.insert(name.clone(), finite_json(result.ratios[t][m]));
        feasible.insert(name.clone(), json!(result.feasible[t][m]));
    }
    json!({
        "scores": scores,
        "ratios": ratios,
        "feasible": feasible,
        "tau_bound": result.tau_bounds[t],
    })
}

/// JSON document: `max_tau`, `grid_points`, `methods` (sorted best-first, each with
/// `best_aup`/`last_aup`) and `tasks` (each with its direction and, per setting, scores, ratios
/// and feasibility per method; a missing score or non-finite ratio is `null`).
pub fn to_json(best: &AupResult, last: &AupResult) -> Value {
    let methods: Vec<Value> =
        method_rows(best, last).into_iter().map(|(m, b, l)| json!({ "method": m, "best_aup": b, "last_aup": l })).collect();
    let mut task_names: Vec<&String> = best.table.tasks.iter().collect();
    for t in &last.table.tasks {
        if !task_names.contains(&t) {
            task_names.push(t);
        }
    }
    let tasks: Vec<Value> = task_names
        .into_iter()
        .map(|name| {
            let bt = best.table.task_index(name);
            let lt = last.table.task_index(name);
            let direction = bt
                .map(|t| best.table.directions[t])
                .or_else(|| lt.map(|t| last.table.directions[t]))
                .expect("the task comes from one of the tables");
            json!({
                "task": name,
                "direction": direction,
                "best": bt.map_or(Value::Null, |t| setting_json(best, t)),
                "last": lt.map_or(Value::Null, |t| setting_json(last, t)),
            })
        })
        .collect();
    json!({
        "max_tau": best.max_tau,
        "grid_points": GRID_POINTS,
        "infeasible_factor": INFEASIBLE_FACTOR,
        "methods": methods,
        "tasks": tasks,
    })
}

// ---------------------------------------------------------------------------------------------
// Command

/// Where the scores come from.
#[derive(Clone, Debug, PartialEq)]
pub enum AupInput {
    /// A gymforge output directory (`mlgym/tasks.json` and `trajectories/`).
    OutputDir(PathBuf),
    /// MLGym-layout score tables for the Best Attempt and Last settings plus a directions file
    /// (`task,direction`).
    Tables { best: PathBuf, last: PathBuf, directions: PathBuf },
}

/// Loads the Best Attempt and Last score tables.
pub fn load(input: &AupInput) -> Result<(ScoreTable, ScoreTable)> {
    match input {
        AupInput::OutputDir(dir) => from_trajectories(dir),
        AupInput::Tables { best, last, directions } => {
            let directions = read_directions_csv(directions)?;
            Ok((read_score_table_csv(best, &directions)?, read_score_table_csv(last, &directions)?))
        }
    }
}

/// The path of the Last-setting plot beside the Best Attempt plot: `<stem>.last.<ext>`.
pub fn last_svg_path(svg: &Path) -> PathBuf {
    let stem = svg.file_stem().and_then(|s| s.to_str()).unwrap_or("profile");
    let ext = svg.extension().and_then(|e| e.to_str()).unwrap_or("svg");
    svg.with_file_name(format!("{stem}.last.{ext}"))
}

/// `gymforge aup`: loads the scores, computes Best Attempt and Last AUP on a shared scale and
/// returns the text table (or pretty JSON when `json`). With `svg`, writes the Best Attempt
/// performance profile plot there and the Last one beside it ([`last_svg_path`]).
pub fn run_aup(input: AupInput, json: bool, svg: Option<&Path>) -> Result<String> {
    let (best_table, last_table) = load(&input)?;
    if best_table.tasks.is_empty() && last_table.tasks.is_empty() {
        bail!("no scored tasks found");
    }
    let (best, last) = compute_pair(&best_table, &last_table);
    if let Some(path) = svg {
        let last_path = last_svg_path(path);
        fs::write(path, profile_svg(&best, "Performance profiles: Best Attempt")).with_context(|| format!("writing {}", path.display()))?;
        fs::write(&last_path, profile_svg(&last, "Performance profiles: Last"))
            .with_context(|| format!("writing {}", last_path.display()))?;
    }
    if json {
        let mut text = serde_json::to_string_pretty(&to_json(&best, &last)).expect("JSON values serialise");
        text.push('\n');
        Ok(text)
    } else {
        Ok(text_table(&best, &last))
    }
}
