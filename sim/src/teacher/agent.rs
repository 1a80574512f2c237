//! Agent stage of the simulated teacher: plays an MLGym agent, one command per answer.
//!
//! The policy is a deterministic function of the conversation: it reads the task description,
//! its own earlier commands and their observations, and the footer's step budget. A run looks
//! at the workspace, reads the baseline, sometimes reads evaluate.py or the data, writes
//! train.py (the baseline with its `model = ` line replaced by a tree ensemble), runs it,
//! validates, sometimes tries a second model (restoring the better one, or regenerating the
//! baseline's submission when no model beats it), and submits. It repairs a crashed train.py a
//! bounded number of times, submits early when the step budget runs out, and about one run in
//! ten emits one malformed answer, then corrects it when the format error comes back.

use gymforge_actors::agent::parse_action;

use super::debug::add_import;
use super::python::py_str;
use super::text::{Draw, fenced_blocks, normalise, quoted, score};
use crate::SimConfig;

/// Start of the message the agent loop sends after a malformed answer.
const FORMAT_ERROR: &str = "Your output was not formatted correctly";
/// Chance that one answer is malformed; with about ten answers per run, one run in ten has one.
const MALFORMED_PER_ANSWER: f64 = 0.011;
/// Crashes of train.py the agent tries to repair before falling back to the baseline.
const MAX_REPAIRS: usize = 2;
const TRACEBACK: &str = "Traceback (most recent call last)";
const TIMED_OUT: &str = "EXECUTION TIMED OUT";

/// What the task description says about the task.
#[derive(Debug)]
struct Task {
    regression: bool,
    minimize: bool,
    target: String,
    /// The ranking metric, when the description names it.
    metric: Option<String>,
    imbalanced: bool,
    noisy: bool,
    budget: bool,
}

impl Task {
    fn parse(description: &str) -> Task {
        let d = description.to_lowercase();
        let regression_terms = ["rmse", "squared error", "absolute error", "regression", "r2"];
        // A ranking by a numeric column is fitted as a regression, a ranking by class as a
        // classification (its scores are class probabilities).
        let regression = if d.contains("ranking task") {
            d.contains("minus the smallest value")
        } else {
            regression_terms.iter().any(|t| d.contains(t)) && !d.contains("accuracy")
        };
        let minimize = if d.contains("lower is better") || d.contains("minimi") {
            true
        } else if d.contains("higher is better") || d.contains("maximi") {
            false
        } else {
            regression
        };
        let names: Vec<&str> = quoted(description, '`');
        let metric_names = ["accuracy", "f1_macro", "f1", "rmse", "mae", "r2", "auc", "roc_auc", "log_loss", "ndcg_at_10", "ndcg"];
        let metric = ["ranked by", "scored by", "ranked on", "metric"]
            .iter()
            .filter_map(|phrase| d.find(phrase))
            .min()
            .and_then(|at| quoted(&d[at..], '`').into_iter().find(|w| metric_names.contains(w)))
            .or_else(|| names.iter().copied().find(|w| metric_names.contains(w)))
            .map(str::to_string);
        let target = description
            .find("column to predict is `")
            .and_then(|at| quoted(&description[at..], '`').into_iter().next())
            .or_else(|| {
                let submission = &description[description.find("SUBMISSION FORMAT").unwrap_or(0)..];
                quoted(submission, '`').into_iter().find(|w| *w != "id" && !w.contains('.') && !w.contains('/'))
            })
            .unwrap_or("target")
            .to_string();
        Task {
            regression,
            minimize,
            target,
            metric,
            imbalanced: d.contains("imbalanc"),
            noisy: d.contains("noisy") || d.contains("label in ten is wrong") || d.contains("noise"),
            budget: d.contains("compute budget") || d.contains("under one minute"),
        }
    }

    fn metric_name(&self) -> &str {
        self.metric.as_deref().unwrap_or(if self.regression { "rmse" } else { "accuracy" })
    }

    fn direction(&self) -> &'static str {
        if self.minimize { "lower is better" } else { "higher is better" }
    }

    fn better(&self, a: f64, b: f64) -> bool {
        if self.minimize { a < b } else { a > b }
    }
}

/// One earlier answer of the agent and what it got back.
#[derive(Debug)]
struct Turn {
    /// The command, when the answer was well formed.
    action: Option<String>,
    observation: Option<String>,
}

impl Turn {
    fn action(&self) -> &str {
        self.action.as_deref().unwrap_or("").trim()
    }

    fn observation(&self) -> &str {
        self.observation.as_deref().unwrap_or("")
    }

    fn writes_train_script(&self) -> bool {
        let a = self.action();
        (a.starts_with("cat <<") && a.lines().next().is_some_and(|l| l.contains("train.py"))) || a == "cp baseline.py train.py"
    }

    fn runs_python(&self) -> bool {
        self.action().starts_with("python")
    }

    fn crashed(&self) -> bool {
        self.observation().contains(TRACEBACK) || self.observation().contains(TIMED_OUT)
    }

    fn scores(&self) -> Option<Vec<(String, f64)>> {
        (self.action() == "validate").then(|| scores_after(self.observation(), "Evaluation Score:")).flatten()
    }
}

/// The conversation as the policy sees it.
struct State {
    task: Task,
    description: String,
    turns: Vec<Turn>,
    remaining: Option<u32>,
    /// The last message was a format error: answer the same move, well formed.
    retry: bool,
}

fn strip_footer(message: &str) -> &str {
    match message.rfind("(Current Step:") {
        Some(at) => message[..at].trim_end(),
        None => message.trim_end(),
    }
}

fn remaining_steps(message: &str) -> Option<u32> {
    let at = message.rfind("Remaining Steps:")?;
    let digits: String = message[at + "Remaining Steps:".len()..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn parse_state(messages: &[(String, String)]) -> Result<State, String> {
    let task_at = messages
        .iter()
        .position(|(role, content)| role == "user" && content.contains("TASK DESCRIPTION:"))
        .ok_or("the agent conversation has no task message")?;
    let task_message = &messages[task_at].1;
    let start = task_message.find("TASK DESCRIPTION:").expect("checked") + "TASK DESCRIPTION:".len();
    let end = task_message[start..].find("\nINSTRUCTIONS:").map_or(task_message.len(), |i| start + i);
    let description = strip_footer(&task_message[start..end]).trim().to_string();

    let mut turns: Vec<Turn> = Vec::new();
    let mut last_user = task_message.as_str();
    let mut retry = false;
    for (role, content) in &messages[task_at + 1..] {
        match role.as_str() {
            "assistant" => {
                turns.push(Turn { action: parse_action(content).ok().map(|(_, action)| action), observation: None });
                retry = false;
            }
            "user" if content.trim_start().starts_with(FORMAT_ERROR) => {
                // The answer it refers to was not executed.
                if turns.last().is_some_and(|t| t.observation.is_none()) {
                    turns.pop();
                }
                retry = true;
            }
            "user" => {
                if let Some(turn) = turns.last_mut().filter(|t| t.observation.is_none()) {
                    turn.observation = Some(strip_footer(content).to_string());
                }
                last_user = content;
                retry = false;
            }
            _ => {}
        }
    }
    Ok(State { task: Task::parse(&description), description, turns, remaining: remaining_steps(last_user), retry })
}

/// `{'accuracy': 0.93, 'f1_macro': 0.92}` after `label`, as MLGym prints scores.
fn scores_after(text: &str, label: &str) -> Option<Vec<(String, f64)>> {
    let at = text.find(label)?;
    let line = text[at + label.len()..].lines().next()?.trim();
    let inner = line.trim_start_matches('{').trim_end_matches('}');
    let scores: Vec<(String, f64)> = inner
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once(':')?;
            let key = key.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
            Some((key, value.trim().parse::<f64>().ok()?))
        })
        .collect();
    (!scores.is_empty()).then_some(scores)
}

/// A model the agent can put into train.py.
#[derive(Debug, Clone)]
struct Model {
    class: &'static str,
    /// Constructor arguments, as Python source.
    args: String,
    /// How the discussion names it.
    label: String,
}

impl Model {
    fn expr(&self) -> String {
        format!("{}({})", self.class, self.args)
    }

    fn family(&self) -> &'static str {
        ["HistGradientBoosting", "GradientBoosting", "RandomForest", "ExtraTrees"]
            .into_iter()
            .find(|f| self.class.starts_with(f))
            .unwrap_or(self.class)
    }
}

fn choose_model(draw: &mut Draw, task: &Task, avoid: &[&str]) -> Model {
    let mut families = vec!["RandomForest", "ExtraTrees", "GradientBoosting", "HistGradientBoosting"];
    if task.imbalanced && !task.regression {
        // GradientBoostingClassifier has no class weights.
        families.retain(|f| *f != "GradientBoosting");
    }
    let open: Vec<&str> = families.iter().copied().filter(|f| !avoid.contains(f)).collect();
    let family = *draw.pick(if open.is_empty() { &families } else { &open });
    model_of(draw, task, family)
}

/// Every scikit-learn model expression the agent may write for a task with this description,
/// each with whether it is a regressor, so that a check outside the simulator can construct and
/// fit them with the sandbox's scikit-learn.
pub fn model_expressions(description: &str) -> Vec<(String, bool)> {
    let task = Task::parse(description);
    let mut expressions = Vec::new();
    for family in ["RandomForest", "ExtraTrees", "GradientBoosting", "HistGradientBoosting"] {
        for i in 0..6 {
            let expression = (model_of(&mut Draw::new(i, &[family, description]), &task, family).expr(), task.regression);
            if !expressions.contains(&expression) {
                expressions.push(expression);
            }
        }
    }
    expressions
}

fn model_of(draw: &mut Draw, task: &Task, family: &str) -> Model {
    let suffix = if task.regression { "Regressor" } else { "Classifier" };
    let seed = *draw.pick(&[0, 1, 42]);
    let balanced = if task.imbalanced && !task.regression { ", class_weight=\"balanced\"" } else { "" };
    let leaf_choices: &[u32] = if task.noisy { &[3, 5] } else { &[1, 2, 3] };
    let model = match family {
        "ExtraTrees" => {
            let trees = if task.budget { *draw.pick(&[200, 300]) } else { *draw.pick(&[300, 400, 600]) };
            let leaf = *draw.pick(leaf_choices);
            let features = if task.regression { *draw.pick(&["1.0", "0.7"]) } else { "\"sqrt\"" };
            Model {
                class: if task.regression { "ExtraTreesRegressor" } else { "ExtraTreesClassifier" },
                args: format!(
                    "n_estimators={trees}, min_samples_leaf={leaf}, max_features={features}{balanced}, random_state={seed}, n_jobs=1"
                ),
                label: format!("extra-trees ensemble of {trees} trees"),
            }
        }
        "GradientBoosting" => {
            let stages = *draw.pick(&[100, 150, 200]);
            let rate = *draw.pick(&["0.05", "0.1"]);
            let depth = *draw.pick(&[2, 3]);
            let subsample = *draw.pick(&["0.8", "1.0"]);
            Model {
                class: if task.regression { "GradientBoostingRegressor" } else { "GradientBoostingClassifier" },
                args: format!("n_estimators={stages}, learning_rate={rate}, max_depth={depth}, subsample={subsample}, random_state={seed}"),
                label: format!("gradient boosting model ({stages} stages of depth {depth}, learning rate {rate})"),
            }
        }
        "HistGradientBoosting" => {
            let iterations = *draw.pick(&[200, 300]);
            let rate = *draw.pick(&["0.05", "0.1"]);
            let leaves = *draw.pick(&[15, 31]);
            let l2 = *draw.pick(&["0.0", "1.0"]);
            Model {
                class: if task.regression { "HistGradientBoostingRegressor" } else { "HistGradientBoostingClassifier" },
                args: format!(
                    "max_iter={iterations}, learning_rate={rate}, max_leaf_nodes={leaves}, l2_regularization={l2}{balanced}, \
                     random_state={seed}"
                ),
                label: format!("histogram gradient boosting model ({iterations} iterations, learning rate {rate})"),
            }
        }
        _ => {
            let trees = if task.budget { *draw.pick(&[150, 200]) } else { *draw.pick(&[200, 300, 400, 500]) };
            let leaf = *draw.pick(leaf_choices);
            let features = if task.regression { *draw.pick(&["1.0", "0.5", "\"sqrt\""]) } else { "\"sqrt\"" };
            Model {
                class: if task.regression { "RandomForestRegressor" } else { "RandomForestClassifier" },
                args: format!(
                    "n_estimators={trees}, min_samples_leaf={leaf}, max_features={features}{balanced}, random_state={seed}, n_jobs=1"
                ),
                label: format!("random forest of {trees} trees"),
            }
        }
    };
    debug_assert!(model.class.ends_with(suffix), "{} is not a {suffix}", model.class);
    model
}

/// train.py: the baseline with its model replaced, or a self-contained script when the
/// baseline has no single `model = ` line.
fn train_script(baseline: Option<&str>, task: &Task, model: &Model) -> String {
    let import = format!("from sklearn.ensemble import {}", model.class);
    if let Some(source) = baseline {
        let lines: Vec<&str> = source.lines().collect();
        let model_lines: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].trim_start().starts_with("model = ")).collect();
        if model_lines.len() == 1 && !source.lines().any(|l| l.trim() == "EOF" || l.trim_start().starts_with("```")) {
            let at = model_lines[0];
            let indent = &lines[at][..lines[at].len() - lines[at].trim_start().len()];
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            out[at] = format!("{indent}model = {}", model.expr());
            if let Some(first) = out.first_mut().filter(|l| l.starts_with("\"\"\"")) {
                let one_line = first.len() > 6 && first.trim_end().ends_with("\"\"\"");
                let summary = format!("{} version of baseline.py: same data handling, stronger model.", model.class);
                *first = if one_line { format!("\"\"\"{summary}\"\"\"") } else { format!("\"\"\"{summary}") };
            }
            let text = out.join("\n") + "\n";
            let text = add_import(&text, &import).unwrap_or(text);
            return without_unused_imports(&text);
        }
    }
    let (fit_target, predictions) = if task.regression {
        ("train[TARGET].to_numpy(dtype=np.float64)", "predictions")
    } else {
        ("train[TARGET].to_numpy(dtype=np.int64)", "predictions.astype(np.int64)")
    };
    format!(
        r#""""Train {label} on the task's data and write submission.csv."""

import numpy as np
import pandas as pd
{import}

TARGET = {target}


def main():
    train = pd.read_csv("data/train.csv")
    test = pd.read_csv("data/test.csv")
    features = [column for column in test.columns if column != "id"]
    train = train[train[TARGET].notna()]

    model = {expr}
    model.fit(train[features].to_numpy(dtype=np.float64), {fit_target})
    predictions = model.predict(test[features].to_numpy(dtype=np.float64))
    pd.DataFrame({{"id": test["id"], TARGET: {predictions}}}).to_csv("submission.csv", index=False)
    print(f"wrote submission.csv with {{len(test)}} rows")


if __name__ == "__main__":
    main()
"#,
        label = with_article(&model.label),
        target = py_str(&task.target),
        expr = model.expr(),
    )
}

/// Whether `name` is used as a word in `text`.
fn uses(text: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Drops top-level imports whose names the script no longer uses (after its model changed).
fn without_unused_imports(source: &str) -> String {
    let body: String = source.lines().filter(|l| !l.starts_with("import ") && !l.starts_with("from ")).collect::<Vec<_>>().join("\n");
    let mut out: Vec<String> = Vec::new();
    for line in source.lines() {
        if let Some((module, names)) = line.strip_prefix("from ").and_then(|rest| rest.split_once(" import ")) {
            if names.contains('(') || names.contains('*') {
                out.push(line.to_string());
                continue;
            }
            let kept: Vec<&str> = names.split(',').map(str::trim).filter(|n| uses(&body, n.rsplit(" as ").next().unwrap_or(n))).collect();
            if !kept.is_empty() {
                out.push(format!("from {module} import {}", kept.join(", ")));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("import ") {
            let alias = rest.rsplit(" as ").next().unwrap_or(rest).trim();
            let alias = alias.split('.').next().unwrap_or(alias);
            if !rest.contains(',') && !uses(&body, alias) {
                continue;
            }
        }
        out.push(line.to_string());
    }
    out.join("\n") + "\n"
}

/// The label with "a" or "an" in front.
fn with_article(label: &str) -> String {
    let vowel = label.chars().next().is_some_and(|c| "aeiouAEIOU".contains(c));
    format!("{} {label}", if vowel { "an" } else { "a" })
}

fn heredoc(script: &str) -> String {
    format!("cat << 'EOF' > train.py\n{}EOF", script)
}

/// The model a train.py command installs, read back from its `model = ` line.
fn model_in(action: &str) -> Option<(String, String)> {
    let line = action.lines().find(|l| l.trim_start().starts_with("model = "))?;
    let expr = line.trim_start().trim_start_matches("model = ").to_string();
    let class = expr.split('(').next()?.trim().to_string();
    Some((class, expr))
}

/// A readable name for a model class (`RandomForestClassifier` -> `random forest`).
fn readable(class: &str) -> String {
    let base = class.trim_end_matches("Classifier").trim_end_matches("Regressor");
    let mut words = String::new();
    for (i, c) in base.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.extend(c.to_lowercase());
    }
    match words.as_str() {
        "baseline" | "baseline model" | "make_pipeline" => "baseline model".into(),
        "hist gradient boosting" => "histogram gradient boosting model".into(),
        "gradient boosting" => "gradient boosting model".into(),
        "extra trees" => "extra-trees ensemble".into(),
        other => other.to_string(),
    }
}

/// One answer: the reasoning and the command.
struct Move {
    discussion: String,
    command: String,
}

fn mv(discussion: impl Into<String>, command: impl Into<String>) -> Move {
    Move { discussion: discussion.into(), command: command.into() }
}

struct Policy<'a> {
    state: &'a State,
    draw: Draw,
}

impl Policy<'_> {
    fn task(&self) -> &Task {
        &self.state.task
    }

    fn turns(&self) -> &[Turn] {
        &self.state.turns
    }

    fn did(&self, prefix: &str) -> bool {
        self.turns().iter().any(|t| t.action().starts_with(prefix))
    }

    fn baseline_source(&self) -> Option<String> {
        self.turns()
            .iter()
            .find(|t| t.action() == "cat baseline.py" && !t.observation().contains("No such file"))
            .map(|t| t.observation().trim_end().to_string() + "\n")
    }

    fn baseline_model(&self) -> Option<String> {
        let source = self.baseline_source()?;
        source.lines().find(|l| l.trim_start().starts_with("model = ")).map(|l| l.trim_start().trim_start_matches("model = ").to_string())
    }

    fn writes(&self) -> Vec<&Turn> {
        self.turns().iter().filter(|t| t.writes_train_script()).collect()
    }

    /// Each validated submission: (index of the turn that wrote its script, model class or
    /// `baseline`, priority score).
    fn validated(&self) -> Vec<(usize, String, f64)> {
        let mut out = Vec::new();
        let mut current: Option<(usize, String)> = None;
        for (i, turn) in self.turns().iter().enumerate() {
            if turn.writes_train_script() {
                let class = model_in(turn.action()).map(|(c, _)| c).unwrap_or_else(|| "baseline".into());
                current = Some((i, class));
            }
            if turn.action().starts_with("python baseline.py") && !turn.crashed() {
                current = Some((i, "baseline".into()));
            }
            if let (Some(scores), Some((write, class))) = (turn.scores(), current.as_ref())
                && let Some(value) = self.priority(&scores)
            {
                out.push((*write, class.clone(), value));
            }
        }
        out
    }

    fn priority(&self, scores: &[(String, f64)]) -> Option<f64> {
        let metric = self.task().metric_name();
        scores.iter().find(|(k, _)| k == metric).or(scores.first()).map(|(_, v)| *v)
    }

    /// The baseline's priority score, from any validate observation.
    fn baseline_score(&self) -> Option<f64> {
        self.turns()
            .iter()
            .filter(|t| t.action() == "validate")
            .find_map(|t| scores_after(t.observation(), "Baseline Score:"))
            .and_then(|s| self.priority(&s))
    }

    fn has_submission(&self) -> bool {
        self.turns().iter().any(|t| t.runs_python() && !t.crashed())
    }

    fn next(&mut self) -> Move {
        let task_metric = self.task().metric_name().to_string();
        let last = self.turns().last();
        let last_action = last.map(|t| t.action().to_string()).unwrap_or_default();

        // Out of steps: make sure a submission exists, then submit.
        if let Some(remaining) = self.state.remaining.filter(|r| *r <= 2) {
            if !self.has_submission() && remaining == 2 {
                let wrote = !self.writes().is_empty();
                let script = if wrote && !self.did("python train.py") { "train.py" } else { "baseline.py" };
                return mv(
                    format!(
                        "Only {remaining} steps remain and no submission.csv has been produced yet, so I'll run {script} now to have a \
                         valid submission."
                    ),
                    format!("python {script}"),
                );
            }
            return self.submit(Some(remaining));
        }

        // A crashed run: repair it a bounded number of times.
        if let Some(turn) = last.filter(|t| t.runs_python() && t.crashed()) {
            return self.repair(turn.observation().to_string(), last_action);
        }

        if !self.did("ls") {
            let t = self.task();
            return mv(
                format!(
                    "The task is to predict `{}` and submissions are ranked by {} ({}). First I'll list the workspace to see the starter \
                     files and how the data is laid out.",
                    t.target,
                    task_metric,
                    t.direction()
                ),
                "ls -F",
            );
        }
        if !self.did("cat baseline.py") {
            let files = self.listed_files();
            let seen =
                if files.is_empty() { "The workspace is listed".to_string() } else { format!("The workspace holds {}", files.join(", ")) };
            return mv(
                format!(
                    "{seen}. I'll read baseline.py first to see how it loads the data, which model it trains and how it writes \
                     submission.csv."
                ),
                "cat baseline.py",
            );
        }
        if self.writes().is_empty() {
            let mut options: Vec<&str> = Vec::new();
            if !self.did("open \"evaluate.py\"") {
                options.push("open \"evaluate.py\"");
            }
            if !self.did("head") {
                options.push("head -5 data/train.csv");
            }
            if !options.is_empty() && self.draw.chance(0.35) {
                let choice = *self.draw.pick(&options);
                return self.explore(choice);
            }
            return self.write_first_model();
        }
        if self.turns().last().is_some_and(Turn::writes_train_script) {
            let model = model_in(&last_action).map(|(c, _)| readable(&c)).unwrap_or_else(|| "baseline model".into());
            return mv(format!("Now I'll run train.py to fit the {model} and write submission.csv."), "python train.py");
        }
        if last.is_some_and(|t| t.runs_python() && !t.crashed()) {
            let output = last.map(Turn::observation).unwrap_or("");
            let reported = output
                .lines()
                .find(|l| l.trim_start().starts_with("validation "))
                .and_then(|l| l.split_once(':'))
                .map(|(what, value)| (what.trim().to_string(), value.trim().to_string()));
            let text = match reported {
                Some((what, value)) => {
                    format!("The script reports a {what} of {value}. Let me validate the submission to get its score on the test set.")
                }
                None => "The script finished and wrote submission.csv. Let me validate it to get its score on the test set.".to_string(),
            };
            return mv(text, "validate");
        }
        if last_action == "validate" {
            return self.after_validate();
        }
        // Anything else: finish the pipeline that is under way.
        if !self.has_submission() {
            return mv("train.py is written but has not produced a submission yet, so I'll run it.", "python train.py");
        }
        self.submit(None)
    }

    /// The names `ls -F` listed (directories end with `/`).
    fn listed_files(&self) -> Vec<String> {
        let Some(ls) = self.turns().iter().find(|t| t.action().starts_with("ls")) else { return Vec::new() };
        ls.observation().split_whitespace().map(|name| name.trim_end_matches(['*', '@']).to_string()).collect()
    }

    fn explore(&mut self, command: &str) -> Move {
        let target = self.task().target.clone();
        if command.starts_with("open \"evaluate") {
            let model = self.baseline_model().map(|m| format!("fits `{m}`")).unwrap_or_else(|| "trains a simple model".into());
            mv(
                format!(
                    "The baseline {model} on data/train.csv and writes `id` and `{target}` to submission.csv. Before changing it I'll \
                     check how evaluate.py scores a submission and which checks it applies."
                ),
                command,
            )
        } else {
            mv(
                format!("Let me look at the first rows of data/train.csv to check the feature scales and how `{target}` is encoded."),
                command,
            )
        }
    }

    fn write_first_model(&mut self) -> Move {
        let task = &self.state.task;
        let model = choose_model(&mut self.draw, task, &[]);
        let script = train_script(self.baseline_source().as_deref(), task, &model);
        let baseline = self.baseline_model();
        let why = match &baseline {
            Some(m) if m.contains("Regression") || m.contains("Ridge") || m.contains("Linear") => {
                format!("The baseline is a linear model (`{m}`), which cannot capture interactions between the features.")
            }
            Some(m) => format!("The baseline trains `{m}`."),
            None => "The baseline's model is simple.".to_string(),
        };
        let extra = if task.imbalanced && !task.regression && model.args.contains("balanced") {
            " I'll use balanced class weights because the training set is imbalanced."
        } else if task.noisy {
            " Larger leaves should make it less sensitive to the noisy training labels."
        } else if task.budget {
            " I'm keeping it small so that training stays well within the compute budget."
        } else {
            ""
        };
        let how = if baseline.is_some() {
            "I'll copy baseline.py to train.py and swap the model"
        } else {
            "I'll write train.py from scratch with"
        };
        mv(
            format!("{why} {how} for {}, keeping the data loading and the submission format unchanged.{extra}", with_article(&model.label)),
            heredoc(&script),
        )
    }

    fn after_validate(&mut self) -> Move {
        let last = self.turns().last().expect("a validate turn");
        if last.scores().is_none() {
            if !self.did("python baseline.py") {
                return mv(
                    "Validation did not produce a score for this submission. I'll run the baseline to make sure a valid submission.csv \
                     exists.",
                    "python baseline.py",
                );
            }
            return self.submit(None);
        }
        let validated = self.validated();
        let metric = self.task().metric_name().to_string();
        let baseline = self.baseline_score();
        let remaining = self.state.remaining.unwrap_or(u32::MAX);
        let writes = self.writes().len();
        let (_, last_class, last_score) = validated.last().cloned().expect("scored");
        let best = validated.iter().cloned().reduce(|a, b| if self.task().better(b.2, a.2) { b } else { a }).expect("scored");

        let minimize = self.task().minimize;
        let beats_baseline = move |x: f64| baseline.is_none_or(|b| if minimize { x < b } else { x > b });
        let last_beats = beats_baseline(last_score);

        // A second model, once: often when the first one helped, always when it did not.
        if writes == 1 && remaining > 6 && (!last_beats || self.draw.chance(0.6)) {
            let first_family = model_in(self.writes()[0].action())
                .map(|(c, _)| c)
                .and_then(|c| {
                    ["HistGradientBoosting", "GradientBoosting", "RandomForest", "ExtraTrees"].into_iter().find(|f| c.starts_with(f))
                })
                .unwrap_or("");
            let task = &self.state.task;
            let model = choose_model(&mut self.draw, task, &[first_family]);
            let script = train_script(self.baseline_source().as_deref(), task, &model);
            let against = match baseline {
                Some(b) if last_beats => {
                    format!("The {} scores {metric} {} against the baseline's {}.", readable(&last_class), score(last_score), score(b))
                }
                Some(b) => format!(
                    "The {} scores {metric} {}, which does not beat the baseline's {}.",
                    readable(&last_class),
                    score(last_score),
                    score(b)
                ),
                None => format!("The {} scores {metric} {}.", readable(&last_class), score(last_score)),
            };
            let reason = match model.family() {
                "HistGradientBoosting" | "GradientBoosting" => "Boosted trees often do better than bagged ones on small tabular data",
                "ExtraTrees" => "Extra trees average more randomised splits and often generalise better on small datasets",
                _ => "A random forest is a robust alternative that is hard to overfit",
            };
            return mv(format!("{against} {reason}, so I'll try {} in train.py.", with_article(&model.label)), heredoc(&script));
        }

        // No model beats the baseline: fall back to the baseline's own submission, once.
        if !beats_baseline(best.2) && !self.did("python baseline.py") && remaining > 3 {
            let b = baseline.map(score).unwrap_or_default();
            return mv(
                format!(
                    "None of the models I tried beats the baseline's {metric} of {b} (the best, the {}, scores {}). On this data the \
                     linear baseline is hard to beat, so I'll regenerate its submission and submit that instead of a worse one.",
                    readable(&best.1),
                    score(best.2)
                ),
                "python baseline.py",
            );
        }

        // The latest version is worse than an earlier one: restore the best, once.
        let restored = {
            let writes = self.writes();
            writes.iter().enumerate().any(|(i, w)| writes[..i].iter().any(|e| e.action() == w.action()))
        };
        let best_is_a_script = self.turns()[best.0].writes_train_script();
        if self.task().better(best.2, last_score) && best_is_a_script && !restored && remaining > 4 {
            let command = self.turns()[best.0].action().to_string();
            return mv(
                format!(
                    "The {} scores {metric} {}, worse than the {}'s {}, so I'll restore the {} version of train.py before submitting.",
                    readable(&last_class),
                    score(last_score),
                    readable(&best.1),
                    score(best.2),
                    readable(&best.1)
                ),
                command,
            );
        }
        self.submit(None)
    }

    fn repair(&mut self, observation: String, action: String) -> Move {
        let error =
            observation.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with(' ')).unwrap_or("an error").trim().to_string();
        let crashes = self.turns().iter().filter(|t| t.runs_python() && t.crashed()).count();
        let timed_out = observation.contains(TIMED_OUT);
        if action.starts_with("python train.py") && crashes <= MAX_REPAIRS {
            if crashes < MAX_REPAIRS {
                let task = &self.state.task;
                let mut model = model_of(&mut self.draw, task, "RandomForest");
                if timed_out {
                    model.args = model
                        .args
                        .replace("n_estimators=500", "n_estimators=100")
                        .replace("n_estimators=400", "n_estimators=100")
                        .replace("n_estimators=300", "n_estimators=100")
                        .replace("n_estimators=200", "n_estimators=100");
                    model.label = "random forest of 100 trees".into();
                }
                let script = train_script(self.baseline_source().as_deref(), task, &model);
                let what = if timed_out { "ran out of time".to_string() } else { format!("failed with `{error}`") };
                return mv(
                    format!(
                        "train.py {what}. I'll rewrite it from the baseline with {}, which takes the same inputs and is quick to train.",
                        with_article(&model.label)
                    ),
                    heredoc(&script),
                );
            }
            return mv(
                format!(
                    "train.py failed again (`{error}`). I'll fall back to the baseline script itself so that a valid submission exists."
                ),
                "cp baseline.py train.py",
            );
        }
        if !self.did("python baseline.py") {
            return mv(
                format!("The run failed with `{error}`. I'll run the baseline to make sure a valid submission.csv exists."),
                "python baseline.py",
            );
        }
        self.submit(None)
    }

    fn submit(&self, remaining: Option<u32>) -> Move {
        let metric = self.task().metric_name();
        // The submission on disk is the last one validated.
        let current = self.validated().last().cloned();
        let summary = match (current, self.baseline_score()) {
            (Some((_, class, s)), Some(_)) if class == "baseline" => {
                format!("The submission is the baseline's again ({metric} {}): none of the tree models beat it.", score(s))
            }
            (Some((_, class, s)), Some(b)) if self.task().better(s, b) => {
                format!("The {} reaches {metric} {} on the test set against the baseline's {}.", readable(&class), score(s), score(b))
            }
            (Some((_, class, s)), Some(b)) => format!(
                "The {} scores {metric} {} and does not beat the baseline's {}, but the submission is valid.",
                readable(&class),
                score(s),
                score(b)
            ),
            (Some((_, class, s)), None) => format!("The {} scores {metric} {}.", readable(&class), score(s)),
            (None, _) => "A submission.csv has been written.".to_string(),
        };
        let close = match remaining {
            Some(n) => format!(" Only {n} steps remain, so I'll submit now."),
            None => " I don't expect large further gains from here, so I'll submit.".to_string(),
        };
        mv(format!("{summary}{close}"), "submit")
    }
}

/// Renders a move in MLGym's response format.
fn render(m: &Move) -> String {
    format!("DISCUSSION\n{}\n\n```\n{}\n```", m.discussion, m.command)
}

/// Renders a move the way models sometimes get the format wrong.
fn render_malformed(m: &Move, draw: &mut Draw) -> String {
    if draw.chance(0.5) {
        // No code block at all.
        format!("DISCUSSION\n{}\n\n{}", m.discussion, m.command)
    } else {
        // The code block never closed.
        format!("DISCUSSION\n{}\n\n```\n{}\n", m.discussion, m.command)
    }
}

pub(crate) fn answer(cfg: &SimConfig, messages: &[(String, String)]) -> Result<String, String> {
    let state = parse_state(messages)?;
    // The draw depends on everything the policy can see, so a retry after a format error
    // recomputes the same move.
    let mut digest = String::new();
    for turn in &state.turns {
        digest.push_str(turn.action());
        digest.push('\u{1}');
        digest.push_str(turn.observation());
        digest.push('\u{2}');
    }
    let remaining = state.remaining.map(|r| r.to_string()).unwrap_or_default();
    let draw = Draw::new(cfg.seed, &["agent", &normalise(&state.description), &digest, &remaining]);
    let mut policy = Policy { state: &state, draw };
    let next = policy.next();
    let mut format_draw = Draw::new(cfg.seed, &["agent-format", &state.description, &digest, &remaining]);
    let malformed = !state.retry && next.command != "submit" && format_draw.chance(MALFORMED_PER_ANSWER);
    let text = if malformed { render_malformed(&next, &mut format_draw) } else { render(&next) };
    debug_assert!(malformed || fenced_blocks(&text).len() == 1);
    Ok(text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testing::{cfg, msgs, prompt, render as render_template};
    use super::*;

    pub(crate) const CLASSIFICATION: &str = "Iris species classification.\n\nThe goal is to predict the \
                                             species.\n\nSKLEARN/IRIS:\nFiles...\n\nThe column to predict is `target`: a class index. \
                                             Submissions are ranked by accuracy (`accuracy`) on the hidden test labels, where higher is \
                                             better; the macro-averaged F1 score (`f1_macro`) is reported as well.\n\nSUBMISSION \
                                             FORMAT:\nWrite ... columns: `id` and `target`.";
    pub(crate) const REGRESSION: &str = "Diabetes progression regression.\n\nThe column to predict is `target`: a real number. Submissions \
                                         are ranked by root mean squared error (`rmse`) on the hidden test labels, where lower is better; \
                                         the mean absolute error (`mae`) is reported as well.\n\nSUBMISSION FORMAT:\nWrite ... `id` and \
                                         `target`.";

    pub(crate) fn footer(step: u32, max: u32) -> String {
        gymforge_actors::agent::footer(step, max, "n/a", "/home/agent/workspace")
    }

    pub(crate) fn start(description: &str, max_steps: u32) -> Vec<(String, String)> {
        let system =
            render_template("agent_system", &[("command_docs", &gymforge_actors::agent::command_docs()), ("training_timeout", "600")]);
        let task = render_template("agent_task", &[("description", description), ("footer", &footer(0, max_steps))]);
        msgs(&[("system", system), ("user", task)])
    }

    pub(crate) fn push_observation(conversation: &mut Vec<(String, String)>, observation: &str, step: u32, max: u32) {
        let body =
            if observation.trim().is_empty() { "Your command ran successfully and did not produce any output." } else { observation };
        let next = render_template("agent_next", &[("observation", body), ("footer", &footer(step, max))]);
        conversation.push(("user".into(), next));
    }

    const BASELINE: &str = "\"\"\"Baseline for the T task: logistic regression on standardised features.\n\nTrains.\n\"\"\"\n\nimport \
                            numpy as np\nimport pandas as pd\nfrom sklearn.linear_model import LogisticRegression\nfrom sklearn.pipeline \
                            import make_pipeline\nfrom sklearn.preprocessing import StandardScaler\n\nTARGET = \"target\"\n\n\ndef \
                            main():\n    train = pd.read_csv(\"data/train.csv\")\n    model = make_pipeline(StandardScaler(), \
                            LogisticRegression(max_iter=1000))\n    model.fit(train, train)\n\n\nif __name__ == \"__main__\":\n    main()";

    /// Fake observations for a scripted environment.
    fn observe(action: &str, step: u32) -> String {
        match action.trim() {
            a if a.starts_with("ls") => "baseline.py\ndata/\nevaluate.py\nsample_submission.csv".into(),
            "cat baseline.py" => BASELINE.into(),
            a if a.starts_with("cat << 'EOF'") => String::new(),
            a if a.starts_with("python") => "validation accuracy: 0.9333\nwrote submission.csv with 30 rows".into(),
            "validate" => format!(
                "Your code produced a valid submission artefact at /home/agent/workspace/submission.csv.\nBaseline Score: {{'accuracy': \
                 0.9, 'f1_macro': 0.89}}\nEvaluation Score: {{'accuracy': {}, 'f1_macro': 0.9}}",
                0.9 + f64::from(step % 3) / 100.0
            ),
            _ => "some output".into(),
        }
    }

    /// Plays a whole run against scripted observations; returns the actions and the number of
    /// malformed answers.
    fn play(seed: u64, description: &str, max_steps: u32) -> (Vec<String>, usize) {
        let mut conversation = start(description, max_steps);
        let mut actions = Vec::new();
        let mut malformed = 0;
        for step in 1..=max_steps {
            let mut reply = answer(&cfg(seed), &conversation).unwrap();
            let mut tries = 0;
            let action = loop {
                match parse_action(&reply) {
                    Ok((_, action)) => break action,
                    Err(problem) => {
                        malformed += 1;
                        tries += 1;
                        assert!(tries < 2, "malformed twice in a row");
                        let mut retry = conversation.clone();
                        retry.push(("assistant".into(), reply.clone()));
                        retry.push(("user".into(), gymforge_actors::agent::format_error(&problem)));
                        reply = answer(&cfg(seed), &retry).unwrap();
                    }
                }
            };
            assert!(reply.starts_with("DISCUSSION\n"), "{reply}");
            conversation.push(("assistant".into(), reply));
            actions.push(action.trim().to_string());
            if action.trim() == "submit" {
                break;
            }
            push_observation(&mut conversation, &observe(&action, step), step, max_steps);
        }
        (actions, malformed)
    }

    #[test]
    fn reads_the_task_description() {
        let t = Task::parse(CLASSIFICATION);
        assert!(!t.regression && !t.minimize);
        assert_eq!((t.target.as_str(), t.metric.as_deref()), ("target", Some("accuracy")));
        let t = Task::parse(REGRESSION);
        assert!(t.regression && t.minimize);
        assert_eq!(t.metric.as_deref(), Some("rmse"));
    }

    #[test]
    fn a_run_explores_trains_validates_and_submits() {
        for seed in 0..12 {
            let (actions, _) = play(seed, CLASSIFICATION, 30);
            assert_eq!(actions[0], "ls -F");
            assert_eq!(actions[1], "cat baseline.py");
            assert_eq!(actions.last().unwrap(), "submit");
            let write = actions.iter().position(|a| a.starts_with("cat << 'EOF' > train.py")).expect("writes train.py");
            assert_eq!(actions[write + 1], "python train.py");
            assert_eq!(actions[write + 2], "validate");
            assert!(actions.len() <= 16, "{actions:#?}");
            let script = &actions[write];
            assert!(script.ends_with("\nEOF"));
            assert!(script.contains("from sklearn.ensemble import"), "{script}");
            assert!(script.contains("Classifier("), "{script}");
            assert_eq!(script.matches("model = ").count(), 1);
        }
    }

    #[test]
    fn regression_tasks_get_regressors() {
        let (actions, _) = play(4, REGRESSION, 30);
        let script = actions.iter().find(|a| a.starts_with("cat << 'EOF'")).unwrap();
        assert!(script.contains("Regressor("), "{script}");
    }

    #[test]
    fn runs_vary_with_the_seed_and_some_are_malformed_once() {
        let mut shapes = std::collections::BTreeSet::new();
        let mut malformed_runs = 0;
        let runs = 300;
        for seed in 0..runs {
            let (actions, malformed) = play(seed, CLASSIFICATION, 30);
            assert!(malformed <= 2);
            malformed_runs += usize::from(malformed > 0);
            shapes.insert(actions.iter().map(|a| a.lines().next().unwrap().to_string()).collect::<Vec<_>>().join(" | "));
        }
        assert!(shapes.len() >= 4, "{shapes:#?}");
        assert!((runs / 25..=runs / 5).contains(&(malformed_runs as u64)), "{malformed_runs} of {runs} runs malformed");
    }

    #[test]
    fn falls_back_to_the_baseline_when_no_model_beats_it() {
        for seed in 0..6 {
            let mut conversation = start(CLASSIFICATION, 30);
            let mut actions: Vec<String> = Vec::new();
            for step in 1..=30 {
                let reply = answer(&cfg(seed), &conversation).unwrap();
                let Ok((_, action)) = parse_action(&reply) else {
                    conversation.push(("assistant".into(), reply.clone()));
                    conversation.push(("user".into(), gymforge_actors::agent::format_error("no block")));
                    continue;
                };
                let action = action.trim().to_string();
                conversation.push(("assistant".into(), reply));
                actions.push(action.clone());
                if action == "submit" {
                    break;
                }
                let baseline_ran = actions.iter().any(|a| a == "python baseline.py");
                let obs = if action == "validate" {
                    let score = if baseline_ran { 0.9 } else { 0.8 };
                    format!(
                        "Your code produced a valid submission artefact at /home/agent/workspace/submission.csv.\nBaseline Score: \
                         {{'accuracy': 0.9, 'f1_macro': 0.89}}\nEvaluation Score: {{'accuracy': {score}, 'f1_macro': 0.8}}"
                    )
                } else {
                    observe(&action, step)
                };
                push_observation(&mut conversation, &obs, step, 30);
            }
            let n = actions.len();
            assert_eq!(actions.iter().filter(|a| a.starts_with("cat << 'EOF'")).count(), 2, "{actions:#?}");
            assert_eq!(&actions[n - 3..], ["python baseline.py", "validate", "submit"], "{actions:#?}");
            let last = conversation.last().unwrap().1.clone();
            assert!(last.contains("baseline's again"), "{last}");
        }
    }

    #[test]
    fn submits_when_steps_run_out() {
        let (actions, _) = play(1, CLASSIFICATION, 5);
        assert_eq!(actions.last().unwrap(), "submit");
        assert!(actions.len() <= 5);
        assert!(actions.iter().any(|a| a.starts_with("python")), "{actions:?}");
    }

    #[test]
    fn repairs_a_crashed_train_script_a_bounded_number_of_times() {
        let mut conversation = start(CLASSIFICATION, 30);
        let mut actions = Vec::new();
        for step in 1..=30 {
            let reply = answer(&cfg(2), &conversation).unwrap();
            let action = match parse_action(&reply) {
                Ok((_, a)) => a.trim().to_string(),
                Err(p) => {
                    conversation.push(("assistant".into(), reply));
                    conversation.push(("user".into(), gymforge_actors::agent::format_error(&p)));
                    continue;
                }
            };
            conversation.push(("assistant".into(), reply));
            actions.push(action.clone());
            if action == "submit" {
                break;
            }
            let obs = if action == "python train.py" {
                "Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\nValueError: boom".to_string()
            } else {
                observe(&action, step)
            };
            push_observation(&mut conversation, &obs, step, 30);
        }
        let runs = actions.iter().filter(|a| *a == "python train.py").count();
        assert!(runs <= 3, "{actions:#?}");
        assert!(actions.contains(&"cp baseline.py train.py".to_string()), "{actions:#?}");
        assert_eq!(actions.last().unwrap(), "submit");
    }

    #[test]
    fn answers_a_format_error_with_the_same_move_well_formed() {
        let conversation = start(CLASSIFICATION, 30);
        let good = answer(&cfg(3), &conversation).unwrap();
        let mut retry = conversation.clone();
        retry.push(("assistant".into(), "I will list files: ls -la".into()));
        retry.push(("user".into(), gymforge_actors::agent::format_error("the answer has no fenced code block")));
        let fixed = answer(&cfg(3), &retry).unwrap();
        assert_eq!(parse_action(&fixed).unwrap().1, parse_action(&good).unwrap().1);
    }

    #[test]
    fn train_script_replaces_only_the_model_line() {
        let task = Task::parse(CLASSIFICATION);
        let mut draw = Draw::new(1, &["x"]);
        let model = model_of(&mut draw, &task, "RandomForest");
        let script = train_script(Some(&(BASELINE.to_string() + "\n")), &task, &model);
        assert!(script.contains("    model = RandomForestClassifier(n_estimators="));
        assert!(script.contains("n_jobs=1"));
        assert!(script.contains("import pandas as pd\nfrom sklearn.ensemble import RandomForestClassifier\n\nTARGET"), "{script}");
        // The baseline's model imports are no longer used, so they go.
        assert!(
            !script.contains("LogisticRegression") && !script.contains("StandardScaler") && !script.contains("import numpy"),
            "{script}"
        );
        assert!(script.starts_with("\"\"\"RandomForestClassifier version of baseline.py"));
        assert!(script.contains("\n    model.fit(train, train)\n"));
        assert_eq!(with_article("extra-trees ensemble"), "an extra-trees ensemble");
        // Without a usable baseline, a self-contained script.
        let fallback = train_script(None, &task, &model);
        assert!(fallback.contains("TARGET = \"target\"") && fallback.contains("model = RandomForestClassifier("));
        assert!(prompt("agent_system").contains("DISCUSSION"));
    }
}
