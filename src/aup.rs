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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use gymforge_actors::model::Direction;
use serde_json::{Map, Value, json};

/// Name of the pseudo-method holding each task's baseline score.
pub const BASELINE: &str = "baseline";

/// Number of tau grid points (`linspace(0, max_tau, GRID_POINTS)`).
pub const GRID_POINTS: usize = 500;

/// Factor applied to the worst feasible ratio for infeasible methods (`1 + eps`, eps = 0.05).
pub const INFEASIBLE_FACTOR: f64 = 1.05;

// ---------------------------------------------------------------------------------------------
// Score tables

/// Scores of methods (columns) on tasks (rows); `None` = no valid score.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreTable {
    /// Task labels, in row order.
    pub tasks: Vec<String>,
    /// Metric direction of each task (same order as `tasks`).
    pub directions: Vec<Direction>,
    /// Method labels, in column order; [`BASELINE`] is the baseline pseudo-method.
    pub methods: Vec<String>,
    /// `scores[task][method]`.
    pub scores: Vec<Vec<Option<f64>>>,
}

impl ScoreTable {
    /// An empty table (every score missing).
    pub fn new(tasks: Vec<(String, Direction)>, methods: Vec<String>) -> ScoreTable {
        let (tasks, directions): (Vec<_>, Vec<_>) = tasks.into_iter().unzip();
        let scores = vec![vec![None; methods.len()]; tasks.len()];
        ScoreTable { tasks, directions, methods, scores }
    }

    /// Index of a task label.
    pub fn task_index(&self, task: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t == task)
    }

    /// Index of a method label.
    pub fn method_index(&self, method: &str) -> Option<usize> {
        self.methods.iter().position(|m| m == method)
    }

    /// The score of `method` on `task` (`None` when missing or either label is unknown).
    pub fn value(&self, task: &str, method: &str) -> Option<f64> {
        self.scores[self.task_index(task)?][self.method_index(method)?]
    }

    /// Sets the score of `method` on `task`; false when either label is unknown.
    pub fn set(&mut self, task: &str, method: &str, value: Option<f64>) -> bool {
        match (self.task_index(task), self.method_index(method)) {
            (Some(t), Some(m)) => {
                self.scores[t][m] = value;
                true
            }
            _ => false,
        }
    }

    /// The baseline score of task `t`, when the table has a [`BASELINE`] column.
    pub fn baseline(&self, t: usize) -> Option<f64> {
        self.method_index(BASELINE).and_then(|m| self.scores[t][m])
    }
}

/// Parses a direction word: `maximize`/`max`/`higher` or `minimize`/`min`/`lower`.
pub fn parse_direction(word: &str) -> Option<Direction> {
    match word.trim().to_ascii_lowercase().as_str() {
        "maximize" | "max" | "higher" | "up" => Some(Direction::Maximize),
        "minimize" | "min" | "lower" | "down" => Some(Direction::Minimize),
        _ => None,
    }
}

/// A CSV record with the (1-based) line it starts on.
struct Record {
    line: usize,
    fields: Vec<String>,
}

/// Splits CSV text into records (the `csv` crate: quoted fields may hold commas, doubled quotes
/// and line breaks; CRLF and a leading BOM are accepted); blank lines are skipped.
fn parse_csv(text: &str) -> std::result::Result<Vec<Record>, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut records = Vec::new();
    for result in reader.records() {
        let record = result.map_err(|e| e.to_string())?;
        // The reader's own line count misses the blank lines it skipped; count from the byte.
        let byte = record.position().map_or(0, |p| p.byte() as usize).min(text.len());
        let start = text.len() - text[byte..].trim_start_matches(['\r', '\n']).len();
        let line = 1 + text[..start].matches('\n').count();
        let fields: Vec<String> = record.iter().map(str::to_string).collect();
        if !(fields.len() == 1 && fields[0].trim().is_empty()) {
            records.push(Record { line, fields });
        }
    }
    Ok(records)
}

fn read_csv(path: &Path) -> Result<Vec<Record>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_csv(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Reads a directions file: CSV `task,direction` (a header row is recognised by its second
/// cell not being a direction word), direction `maximize` or `minimize`.
pub fn read_directions_csv(path: &Path) -> Result<BTreeMap<String, Direction>> {
    let records = read_csv(path)?;
    let mut out = BTreeMap::new();
    for (i, rec) in records.iter().enumerate() {
        if rec.fields.len() != 2 {
            bail!(
                "{}: line {}: expected 2 cells (task,direction), found {}",
                path.display(),
                rec.line,
                rec.fields.len()
            );
        }
        let task = rec.fields[0].trim();
        match parse_direction(&rec.fields[1]) {
            Some(d) => {
                if out.insert(task.to_string(), d).is_some() {
                    bail!("{}: line {}: task {task:?} listed twice", path.display(), rec.line);
                }
            }
            None if i == 0 => {} // header
            None => bail!(
                "{}: line {}, column 2: {:?} is not a direction (maximize or minimize)",
                path.display(),
                rec.line,
                rec.fields[1]
            ),
        }
    }
    Ok(out)
}

/// Parses one score cell: empty or NaN = missing; other non-finite values are missing too.
fn parse_cell(cell: &str) -> std::result::Result<Option<f64>, ()> {
    let cell = cell.trim();
    if cell.is_empty() || cell.eq_ignore_ascii_case("nan") {
        return Ok(None);
    }
    let v: f64 = cell.parse().map_err(|_| ())?;
    Ok(v.is_finite().then_some(v))
}

/// Reads a score table in MLGym's published layout (`results/tables/*_scores_*.csv`): a header
/// `Task,<method>,...`, then one row per task; an empty cell means no valid score. Every task
/// label must have an entry in `directions`.
pub fn read_score_table_csv(
    path: &Path,
    directions: &BTreeMap<String, Direction>,
) -> Result<ScoreTable> {
    let records = read_csv(path)?;
    let file = path.display();
    let Some((header, rows)) = records.split_first() else {
        bail!("{file}: empty file, expected a header row `Task,<method>,...`");
    };
    if header.fields.len() < 2 {
        bail!(
            "{file}: line {}: header needs a task column and at least one method column",
            header.line
        );
    }
    let methods: Vec<String> = header.fields[1..].iter().map(|m| m.trim().to_string()).collect();
    let mut seen = BTreeSet::new();
    for (j, m) in methods.iter().enumerate() {
        if m.is_empty() {
            bail!(
                "{file}: line {}, column {}: empty method name in the header",
                header.line,
                j + 2
            );
        }
        if !seen.insert(m.as_str()) {
            bail!("{file}: line {}, column {}: method {m:?} appears twice", header.line, j + 2);
        }
    }
    let mut table = ScoreTable::new(Vec::new(), methods);
    for rec in rows {
        let task = rec.fields[0].trim().to_string();
        if rec.fields.len() != table.methods.len() + 1 {
            bail!(
                "{file}: line {} (task {task:?}): expected {} cells like the header, found {}",
                rec.line,
                table.methods.len() + 1,
                rec.fields.len()
            );
        }
        if task.is_empty() {
            bail!("{file}: line {}, column 1: empty task label", rec.line);
        }
        if table.tasks.contains(&task) {
            bail!("{file}: line {}, column 1: task {task:?} appears twice", rec.line);
        }
        let direction = *directions.get(&task).ok_or_else(|| {
            anyhow!("{file}: line {}, column 1: no direction given for task {task:?}", rec.line)
        })?;
        let mut row = Vec::with_capacity(table.methods.len());
        for (j, cell) in rec.fields[1..].iter().enumerate() {
            row.push(parse_cell(cell).map_err(|()| {
                anyhow!(
                    "{file}: line {} (task {task:?}), column {} (method {:?}): {cell:?} is not a number",
                    rec.line,
                    j + 2,
                    table.methods[j]
                )
            })?);
        }
        table.tasks.push(task);
        table.directions.push(direction);
        table.scores.push(row);
    }
    Ok(table)
}

// ---------------------------------------------------------------------------------------------
// Scores from trajectories

/// A task's scoring spec from `mlgym/tasks.json`.
struct TaskSpec {
    id: String,
    metric: String,
    direction: Direction,
    baseline: Option<f64>,
}

fn read_tasks_index(path: &Path) -> Result<Vec<TaskSpec>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let entries = doc
        .as_array()
        .ok_or_else(|| anyhow!("{}: expected a JSON array of tasks", path.display()))?;
    let mut specs = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let field = |name: &str| {
            e[name].as_str().map(str::to_string).ok_or_else(|| {
                anyhow!("{}: task entry {i}: missing string field {name:?}", path.display())
            })
        };
        let id = field("task_id")?;
        let metric = field("priority_metric")?;
        let direction = parse_direction(&field("direction")?).ok_or_else(|| {
            anyhow!(
                "{}: task {id:?}: direction {:?} is not maximize or minimize",
                path.display(),
                e["direction"]
            )
        })?;
        let baseline = metric_value(&e["baseline_scores"], &metric);
        specs.push(TaskSpec { id, metric, direction, baseline });
    }
    Ok(specs)
}

/// The finite value of `metric` in a score object (or the first object of a list, as MLGym's
/// `baseline_scores` is).
fn metric_value(scores: &Value, metric: &str) -> Option<f64> {
    let obj = match scores {
        Value::Array(items) => items.first()?,
        other => other,
    };
    obj.get(metric)?.as_f64().filter(|v| v.is_finite())
}

fn better(direction: Direction, a: f64, b: f64) -> f64 {
    match direction {
        Direction::Maximize => a.max(b),
        Direction::Minimize => a.min(b),
    }
}

/// Keeps the better of an existing and a new score.
fn merge(slot: &mut Option<f64>, value: Option<f64>, direction: Direction) {
    if let Some(v) = value {
        *slot = Some(slot.map_or(v, |old| better(direction, old, v)));
    }
}

/// The task id and model of a run directory: the task id is the stem of the `.traj` file
/// beside `results.json` (or, failing that, the known task id the directory name carries), and
/// the directory name starts with `<model>__<task_id>__`.
fn identify_run(dir: &Path, specs: &[TaskSpec]) -> Result<Option<(usize, String)>> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let mut stems = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("traj")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            stems.push(stem.to_string());
        }
    }
    let split = |id: &str| -> Option<String> {
        let at = name.find(&format!("__{id}__"))?;
        (at > 0).then(|| name[..at].to_string())
    };
    for stem in &stems {
        if let Some(t) = specs.iter().position(|s| &s.id == stem)
            && let Some(model) = split(stem)
        {
            return Ok(Some((t, model)));
        }
    }
    // No usable .traj: the longest known task id that the directory name carries.
    let mut found: Option<(usize, String)> = None;
    for (t, spec) in specs.iter().enumerate() {
        if let Some(model) = split(&spec.id)
            && found.as_ref().is_none_or(|(f, _)| specs[*f].id.len() < spec.id.len())
        {
            found = Some((t, model));
        }
    }
    Ok(found)
}

/// Builds the Best Attempt and Last score tables from a gymforge output directory.
///
/// Reads `OUT/mlgym/tasks.json` (priority metric and direction per task) and every
/// `OUT/trajectories/<run_name>/results.json`. Per run, Best Attempt = best priority-metric
/// value over all `"agent"` entries, Last = the priority metric of the last entry (a last entry
/// without that metric gives the run no Last score); runs with an empty list are dropped; the
/// score of a (model, task) is the best over its runs. The baseline column [`BASELINE`] comes
/// from `results.json` `"baseline"` (falling back to `baseline_scores` in tasks.json).
///
/// Rows: the tasks of tasks.json that have at least one run, in tasks.json order. Columns:
/// [`BASELINE`], then models sorted by name. Run directories without `results.json`, or whose
/// task is not in tasks.json, are ignored.
pub fn from_trajectories(out_dir: &Path) -> Result<(ScoreTable, ScoreTable)> {
    let specs = read_tasks_index(&out_dir.join("mlgym").join("tasks.json"))?;
    let traj_root = out_dir.join("trajectories");
    let mut run_dirs: Vec<PathBuf> = fs::read_dir(&traj_root)
        .with_context(|| format!("listing {}", traj_root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    run_dirs.sort();

    let mut baselines: Vec<Option<f64>> = specs.iter().map(|_| None).collect();
    let mut has_runs = vec![false; specs.len()];
    let mut best: BTreeMap<(String, usize), Option<f64>> = BTreeMap::new();
    let mut last: BTreeMap<(String, usize), Option<f64>> = BTreeMap::new();
    for dir in &run_dirs {
        let results_path = dir.join("results.json");
        if !results_path.is_file() {
            continue;
        }
        let Some((t, model)) = identify_run(dir, &specs)? else { continue };
        if model == BASELINE {
            bail!("{}: a model named {BASELINE:?} clashes with the baseline column", dir.display());
        }
        let spec = &specs[t];
        let text = fs::read_to_string(&results_path)
            .with_context(|| format!("reading {}", results_path.display()))?;
        let results: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", results_path.display()))?;
        let agent = match &results["agent"] {
            Value::Array(items) => items.as_slice(),
            Value::Null => &[],
            _ => bail!("{}: \"agent\" is not a list", results_path.display()),
        };
        has_runs[t] = true;
        if baselines[t].is_none() {
            baselines[t] = metric_value(&results["baseline"], &spec.metric);
        }
        let best_slot = best.entry((model.clone(), t)).or_default();
        let last_slot = last.entry((model, t)).or_default();
        if agent.is_empty() {
            continue;
        }
        let run_best = agent
            .iter()
            .filter_map(|e| metric_value(e, &spec.metric))
            .reduce(|a, b| better(spec.direction, a, b));
        let run_last = agent.last().and_then(|e| metric_value(e, &spec.metric));
        merge(best_slot, run_best, spec.direction);
        merge(last_slot, run_last, spec.direction);
    }

    let models: BTreeSet<&String> = best.keys().map(|(m, _)| m).collect();
    let methods: Vec<String> =
        std::iter::once(BASELINE.to_string()).chain(models.into_iter().cloned()).collect();
    let tasks: Vec<(String, Direction)> = specs
        .iter()
        .zip(&has_runs)
        .filter(|(_, has)| **has)
        .map(|(s, _)| (s.id.clone(), s.direction))
        .collect();
    let mut tables =
        [ScoreTable::new(tasks.clone(), methods.clone()), ScoreTable::new(tasks, methods)];
    for (t, spec) in specs.iter().enumerate() {
        if has_runs[t] {
            for table in &mut tables {
                table.set(&spec.id, BASELINE, baselines[t].or(spec.baseline));
            }
        }
    }
    for (table, scores) in tables.iter_mut().zip([&best, &last]) {
        for ((model, t), value) in scores {
            table.set(&specs[*t].id, model, *value);
        }
    }
    let [best_table, last_table] = tables;
    Ok((best_table, last_table))
}

// ---------------------------------------------------------------------------------------------
// Ratios, profiles, AUP

/// Performance ratios of one table.
#[derive(Clone, Debug, PartialEq)]
struct Ratios {
    /// `ratio[task][method]`; `INFINITY` on a task where no method is feasible.
    ratio: Vec<Vec<f64>>,
    feasible: Vec<Vec<bool>>,
    /// Per task `ceil(worst * 1.05)`; `None` when no method is feasible.
    bound: Vec<Option<f64>>,
}

fn ratios(table: &ScoreTable) -> Ratios {
    let n_methods = table.methods.len();
    let mut out = Ratios { ratio: Vec::new(), feasible: Vec::new(), bound: Vec::new() };
    for (t, row) in table.scores.iter().enumerate() {
        let direction = table.directions[t];
        let baseline = table.baseline(t);
        let mut feasible: Vec<bool> = row
            .iter()
            .map(|s| match *s {
                Some(v) if v.is_finite() && v >= 0.0 => match (direction, baseline) {
                    (_, None) => true,
                    (Direction::Maximize, Some(b)) => v >= b,
                    (Direction::Minimize, Some(b)) => v <= b,
                },
                _ => false,
            })
            .collect();
        let best = row
            .iter()
            .zip(&feasible)
            .filter(|(_, f)| **f)
            .filter_map(|(s, _)| *s)
            .reduce(|a, b| better(direction, a, b));
        let mut ratio = vec![f64::INFINITY; n_methods];
        let mut bound = None;
        if let Some(best) = best {
            for m in 0..n_methods {
                if !feasible[m] {
                    continue;
                }
                let s = row[m].expect("feasible scores are present");
                let r = if s == best {
                    1.0
                } else {
                    match direction {
                        Direction::Maximize => best / s,
                        Direction::Minimize => s / best,
                    }
                };
                // A zero score against a positive best (or the reverse when minimizing) has no
                // finite ratio: such a method counts as infeasible.
                if r.is_finite() {
                    ratio[m] = r;
                } else {
                    feasible[m] = false;
                }
            }
            let worst =
                (0..n_methods).filter(|&m| feasible[m]).map(|m| ratio[m]).fold(1.0, f64::max);
            let penalty = worst * INFEASIBLE_FACTOR;
            for m in 0..n_methods {
                if !feasible[m] {
                    ratio[m] = penalty;
                }
            }
            bound = Some(penalty.ceil());
        }
        out.ratio.push(ratio);
        out.feasible.push(feasible);
        out.bound.push(bound);
    }
    out
}

/// `max_tau` for a set of tables compared on one scale: `log10` of the largest per-task bound
/// `ceil(worst * 1.05)` over all of them, rounded up to one decimal (0 when no task has a
/// feasible method).
pub fn max_tau(tables: &[&ScoreTable]) -> f64 {
    let largest = tables.iter().flat_map(|t| ratios(t).bound).flatten().fold(f64::NAN, f64::max);
    if largest.is_nan() { 0.0 } else { (largest.log10() * 10.0).ceil() / 10.0 }
}

/// `linspace(0, stop, n)` computed as numpy does: `i * (stop / (n - 1))`, last point = `stop`.
pub fn linspace(stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![0.0],
        _ => {
            let step = stop / (n - 1) as f64;
            let mut grid: Vec<f64> = (0..n).map(|i| i as f64 * step + 0.0).collect();
            grid[n - 1] = stop;
            grid
        }
    }
}

/// Performance ratios, profiles and AUP of the methods of one table.
#[derive(Clone, Debug, PartialEq)]
pub struct AupResult {
    /// The scores the result was computed from.
    pub table: ScoreTable,
    /// `ratios[task][method]` (infeasible methods carry the 1.05 x worst penalty; `INFINITY`
    /// on a task with no feasible method).
    pub ratios: Vec<Vec<f64>>,
    /// `feasible[task][method]`.
    pub feasible: Vec<Vec<bool>>,
    /// Per task `ceil(worst * 1.05)`.
    pub tau_bounds: Vec<Option<f64>>,
    /// Upper end of the tau grid (log10 space).
    pub max_tau: f64,
    /// The tau grid, `linspace(0, max_tau, GRID_POINTS)`.
    pub taus: Vec<f64>,
    /// `profiles[method][i] = rho_method(taus[i])`.
    pub profiles: Vec<Vec<f64>>,
    /// AUP per method (same order as `table.methods`).
    pub aup: Vec<f64>,
}

impl AupResult {
    /// The AUP of a method.
    pub fn aup_of(&self, method: &str) -> Option<f64> {
        self.table.method_index(method).map(|m| self.aup[m])
    }

    /// Method indices by AUP, best first (ties by name).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.aup.len()).collect();
        order.sort_by(|&a, &b| {
            self.aup[b]
                .total_cmp(&self.aup[a])
                .then_with(|| self.table.methods[a].cmp(&self.table.methods[b]))
        });
        order
    }
}

/// Computes ratios, profiles and AUP of one table on the tau grid ending at `max_tau`.
pub fn compute_with_max_tau(table: &ScoreTable, max_tau: f64) -> AupResult {
    let Ratios { ratio, feasible, bound } = ratios(table);
    let taus = linspace(max_tau, GRID_POINTS);
    let n_tasks = table.tasks.len();
    let mut profiles = Vec::with_capacity(table.methods.len());
    let mut aup = Vec::with_capacity(table.methods.len());
    for m in 0..table.methods.len() {
        let logs: Vec<f64> = ratio.iter().map(|row| row[m].log10()).collect();
        let profile: Vec<f64> = taus
            .iter()
            .map(|&tau| {
                if n_tasks == 0 {
                    0.0
                } else {
                    logs.iter().filter(|&&l| l <= tau).count() as f64 / n_tasks as f64
                }
            })
            .collect();
        let area = taus.windows(2).zip(&profile).map(|(w, rho)| (w[1] - w[0]) * rho).sum();
        profiles.push(profile);
        aup.push(area);
    }
    AupResult {
        table: table.clone(),
        ratios: ratio,
        feasible,
        tau_bounds: bound,
        max_tau,
        taus,
        profiles,
        aup,
    }
}

/// Computes one table on its own scale (`max_tau` from this table alone).
pub fn compute(table: &ScoreTable) -> AupResult {
    compute_with_max_tau(table, max_tau(&[table]))
}

/// Computes the Best Attempt and Last tables on one shared scale: `max_tau` is taken over both
/// (as the published MLGym-Bench AUP tables are, with max_tau = 1.5).
pub fn compute_pair(best: &ScoreTable, last: &ScoreTable) -> (AupResult, AupResult) {
    let tau = max_tau(&[best, last]);
    (compute_with_max_tau(best, tau), compute_with_max_tau(last, tau))
}

// ---------------------------------------------------------------------------------------------
// Output

/// Plain-text table: method, Best AUP, Last AUP, sorted by Best AUP (then Last AUP, then name),
/// followed by the scale. Methods present in only one result show `-` for the other.
pub fn text_table(best: &AupResult, last: &AupResult) -> String {
    let rows = method_rows(best, last);
    let width =
        rows.iter().map(|(m, _, _)| m.chars().count()).max().unwrap_or(0).max("method".len());
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
    let mut rows: Vec<_> =
        names.into_iter().map(|m| (m.clone(), best.aup_of(m), last.aup_of(m))).collect();
    let key = |v: Option<f64>| v.unwrap_or(f64::NEG_INFINITY);
    rows.sort_by(|a, b| {
        key(b.1)
            .total_cmp(&key(a.1))
            .then(key(b.2).total_cmp(&key(a.2)))
            .then_with(|| a.0.cmp(&b.0))
    });
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
    let methods: Vec<Value> = method_rows(best, last)
        .into_iter()
        .map(|(m, b, l)| json!({ "method": m, "best_aup": b, "last_aup": l }))
        .collect();
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

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// A "nice" tick step (1, 2, 2.5 or 5 x 10^k) giving about `target` intervals over `span`.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|f| f * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn decimals(step: f64) -> usize {
    (0..6)
        .find(|&d| {
            ((step * 10f64.powi(d as i32)).round() - step * 10f64.powi(d as i32)).abs() < 1e-9
        })
        .unwrap_or(6)
}

const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
const DASHES: [&str; 3] = ["", "6 3", "2 2"];

/// A self-contained SVG plot of the performance profiles `rho_m(tau)` of every method: one
/// step line (`<path>`) per method, axes with ticks and labels, and a legend ordered by AUP.
pub fn profile_svg(result: &AupResult, title: &str) -> String {
    // The plot area is fixed; the picture grows to the right for long method names and
    // downwards when the legend has more entries than the plot is tall.
    let (left, top, bottom): (f64, f64, f64) = (70.0, 50.0, 60.0);
    let (pw, ph): (f64, f64) = (540.0, 390.0);
    let longest = result.table.methods.iter().map(|m| m.chars().count()).max().unwrap_or(0);
    let right = 60.0 + (longest + 8) as f64 * 7.0;
    let width = (left + pw + right).round();
    let legend_height = 10.0 + result.table.methods.len() as f64 * 18.0;
    let height = (top + ph.max(legend_height) + bottom).round();
    let span = if result.max_tau > 0.0 { result.max_tau } else { 1.0 };
    let x = |tau: f64| left + tau / span * pw;
    let y = |rho: f64| top + (1.0 - rho) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        left + pw / 2.0,
        xml_escape(title)
    );

    // Grid, ticks and tick labels.
    let step = tick_step(span, 6.0);
    let digits = decimals(step);
    let mut k = 0;
    loop {
        let tau = k as f64 * step;
        if tau > span + 1e-9 {
            break;
        }
        let px = x(tau);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.2}" y1="{top:.2}" x2="{px:.2}" y2="{:.2}" stroke="#e0e0e0"/>"##,
            top + ph
        );
        let _ = writeln!(
            s,
            r##"<line x1="{px:.2}" y1="{:.2}" x2="{px:.2}" y2="{:.2}" stroke="black"/>"##,
            top + ph,
            top + ph + 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{px:.2}" y="{:.2}" text-anchor="middle">{tau:.digits$}</text>"#,
            top + ph + 19.0
        );
        k += 1;
    }
    for k in 0..=5 {
        let rho = k as f64 / 5.0;
        let py = y(rho);
        let _ = writeln!(
            s,
            r##"<line x1="{left:.2}" y1="{py:.2}" x2="{:.2}" y2="{py:.2}" stroke="#e0e0e0"/>"##,
            left + pw
        );
        let _ = writeln!(
            s,
            r##"<line x1="{:.2}" y1="{py:.2}" x2="{left:.2}" y2="{py:.2}" stroke="black"/>"##,
            left - 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}" text-anchor="end">{rho:.1}</text>"#,
            left - 8.0,
            py + 4.0
        );
    }
    // Axes and labels.
    let _ = writeln!(
        s,
        r#"<rect x="{left:.2}" y="{top:.2}" width="{pw:.2}" height="{ph:.2}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">τ (log10 of the performance ratio)</text>"#,
        left + pw / 2.0,
        top + ph + 45.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.2}" text-anchor="middle" transform="rotate(-90 18 {:.2})">ρ(τ): fraction of tasks</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );

    // One step line per method, in legend (AUP) order.
    let order = result.ranking();
    for (rank, &m) in order.iter().enumerate() {
        let color = PALETTE[rank % PALETTE.len()];
        let dash = DASHES[(rank / PALETTE.len()) % DASHES.len()];
        let profile = &result.profiles[m];
        let mut d = String::new();
        if let (Some(&t0), Some(&r0)) = (result.taus.first(), profile.first()) {
            let _ = write!(d, "M{:.2} {:.2}", x(t0), y(r0));
            for i in 1..profile.len() {
                if profile[i] != profile[i - 1] {
                    let _ = write!(d, " H{:.2} V{:.2}", x(result.taus[i]), y(profile[i]));
                }
            }
            let _ = write!(d, " H{:.2}", x(*result.taus.last().expect("non-empty grid")));
        }
        let dash_attr =
            if dash.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{dash}""#) };
        let name = xml_escape(&result.table.methods[m]);
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.8"{dash_attr}><title>{name}</title></path>"#
        );
        let ly = top + 10.0 + rank as f64 * 18.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.2}" y1="{ly:.2}" x2="{:.2}" y2="{ly:.2}" stroke="{color}" stroke-width="2"{dash_attr}/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.2}" y="{:.2}">{name} ({:.3})</text>"#,
            lx + 30.0,
            ly + 4.0,
            result.aup[m]
        );
    }
    s.push_str("</svg>\n");
    s
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
        fs::write(path, profile_svg(&best, "Performance profiles: Best Attempt"))
            .with_context(|| format!("writing {}", path.display()))?;
        fs::write(&last_path, profile_svg(&last, "Performance profiles: Last"))
            .with_context(|| format!("writing {}", last_path.display()))?;
    }
    if json {
        let mut text =
            serde_json::to_string_pretty(&to_json(&best, &last)).expect("JSON values serialise");
        text.push('\n');
        Ok(text)
    } else {
        Ok(text_table(&best, &last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_construction() {
        let g = linspace(1.5, 500);
        assert_eq!(g.len(), 500);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[499], 1.5);
        assert_eq!(g[1], 1.5 / 499.0);
        assert_eq!(g[250], 250.0 * (1.5 / 499.0));
    }

    #[test]
    fn csv_quotes_and_blank_lines() {
        let recs = parse_csv("Task,\"a,b\"\r\n\r\n\"x \"\"y\"\"\",1\n").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].fields, vec!["Task", "a,b"]);
        assert_eq!(recs[1].fields, vec!["x \"y\"", "1"]);
        assert_eq!(recs[1].line, 3);
        let bom = parse_csv("\u{feff}Task,x\n").unwrap();
        assert_eq!(bom[0].fields, vec!["Task", "x"]);
    }
}
