//! Score tables: the score of each method on each task, read from MLGym's published CSV
//! tables and a directions file, or taken from the trajectories of a gymforge output directory
//! (Best Attempt and Last).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use gymforge_actors::model::Direction;
use serde_json::Value;

/// Name of the pseudo-method holding each task's baseline score.
pub const BASELINE: &str = "baseline";

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
            bail!("{}: line {}: expected 2 cells (task,direction), found {}", path.display(), rec.line, rec.fields.len());
        }
        let task = rec.fields[0].trim();
        match parse_direction(&rec.fields[1]) {
            Some(d) => {
                if out.insert(task.to_string(), d).is_some() {
                    bail!("{}: line {}: task {task:?} listed twice", path.display(), rec.line);
                }
            }
            None if i == 0 => {} // header
            None => bail!("{}: line {}, column 2: {:?} is not a direction (maximize or minimize)", path.display(), rec.line, rec.fields[1]),
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
pub fn read_score_table_csv(path: &Path, directions: &BTreeMap<String, Direction>) -> Result<ScoreTable> {
    let records = read_csv(path)?;
    let file = path.display();
    let Some((header, rows)) = records.split_first() else {
        bail!("{file}: empty file, expected a header row `Task,<method>,...`");
    };
    if header.fields.len() < 2 {
        bail!("{file}: line {}: header needs a task column and at least one method column", header.line);
    }
    let methods: Vec<String> = header.fields[1..].iter().map(|m| m.trim().to_string()).collect();
    let mut seen = BTreeSet::new();
    for (j, m) in methods.iter().enumerate() {
        if m.is_empty() {
            bail!("{file}: line {}, column {}: empty method name in the header", header.line, j + 2);
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
        let direction =
            *directions.get(&task).ok_or_else(|| anyhow!("{file}: line {}, column 1: no direction given for task {task:?}", rec.line))?;
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
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let entries = doc.as_array().ok_or_else(|| anyhow!("{}: expected a JSON array of tasks", path.display()))?;
    let mut specs = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let field = |name: &str| {
            e[name].as_str().map(str::to_string).ok_or_else(|| anyhow!("{}: task entry {i}: missing string field {name:?}", path.display()))
        };
        let id = field("task_id")?;
        let metric = field("priority_metric")?;
        let direction = parse_direction(&field("direction")?)
            .ok_or_else(|| anyhow!("{}: task {id:?}: direction {:?} is not maximize or minimize", path.display(), e["direction"]))?;
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

pub(super) fn better(direction: Direction, a: f64, b: f64) -> f64 {
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
        let text = fs::read_to_string(&results_path).with_context(|| format!("reading {}", results_path.display()))?;
        let results: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", results_path.display()))?;
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
        let run_best = agent.iter().filter_map(|e| metric_value(e, &spec.metric)).reduce(|a, b| better(spec.direction, a, b));
        let run_last = agent.last().and_then(|e| metric_value(e, &spec.metric));
        merge(best_slot, run_best, spec.direction);
        merge(last_slot, run_last, spec.direction);
    }

    let models: BTreeSet<&String> = best.keys().map(|(m, _)| m).collect();
    let methods: Vec<String> = std::iter::once(BASELINE.to_string()).chain(models.into_iter().cloned()).collect();
    let tasks: Vec<(String, Direction)> =
        specs.iter().zip(&has_runs).filter(|(_, has)| **has).map(|(s, _)| (s.id.clone(), s.direction)).collect();
    let mut tables = [ScoreTable::new(tasks.clone(), methods.clone()), ScoreTable::new(tasks, methods)];
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

#[cfg(test)]
mod tests {
    use super::*;

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
