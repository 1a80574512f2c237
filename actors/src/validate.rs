//! What makes a task valid, checked by executing it in the sandbox.
//!
//! Used by the debug stage (whose failures go back to the LLM) and by `gymforge check task`.
//! The rules (DESIGN.md 3.3): prepare.py produces the data and hidden answers; the baseline
//! runs and reproduces its score; evaluate.py prints exactly one JSON object of finite,
//! non-negative numbers whose keys are the declared metrics; the sample submission evaluates and
//! scores worse than the baseline; the baseline leaves headroom (its priority metric is not at,
//! or within a margin of, the best value the metric can take); a wrong-shaped submission is
//! rejected; the test file the agent sees holds no target.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::model::{Direction, DropReason, Scores, TaskBundle};
use crate::paths::{PreparedTask, WORKSPACE, copy_files, copy_tree, fresh_dir};
use crate::ports::{JobOutput, Mount, PortError, Sandbox, SandboxJob};

/// Files the bundle must contain.
pub const BUNDLE_FILES: [&str; 3] = ["prepare.py", "baseline.py", "evaluate.py"];
/// Files prepare.py must write (relative to its working directory).
pub const PREPARED_FILES: [&str; 5] =
    ["data/train.csv", "data/validation.csv", "data/test.csv", "data/answers.csv", "sample_submission.csv"];
/// Output kept in a failure report (head and tail).
pub const FAILURE_OUTPUT_CHARS: usize = 4000;

/// One check and how it went.
#[derive(Serialize, Clone, Debug)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Why a task is not valid: the step that failed, a reason code, and the evidence.
#[derive(Serialize, Clone, Debug)]
pub struct Failure {
    pub step: String,
    pub reason: DropReason,
    pub problem: String,
    pub output: String,
}

/// A task that passed every check.
#[derive(Serialize, Clone, Debug)]
pub struct Passed {
    pub baseline_scores: Scores,
    pub sample_scores: Scores,
    #[serde(skip)]
    pub prepared: PreparedTask,
}

/// Everything `check_bundle` found.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    pub valid: bool,
    pub checks: Vec<CheckResult>,
    pub failure: Option<Failure>,
    pub baseline_scores: Option<Scores>,
}

/// Inputs of one validation.
pub struct TaskCheck<'a> {
    pub sandbox: &'a dyn Sandbox,
    pub bundle: &'a TaskBundle,
    /// Staged raw data, mounted read-only at `raw/` for prepare.py.
    pub raw_dir: &'a Path,
    /// Scratch directory for this validation (emptied first).
    pub work_dir: &'a Path,
    pub prepare_timeout: Duration,
    /// How close to the best possible value of its priority metric the baseline may come (see
    /// [`saturation`]).
    pub headroom: f64,
    /// Prefix of sandbox job labels.
    pub label: String,
}

/// Runs every check in order, stopping at the first failure.
pub async fn check_bundle(c: &TaskCheck<'_>) -> Result<(Report, Option<Passed>), PortError> {
    let mut checks = Vec::new();
    let result = run_checks(c, &mut checks).await?;
    let (failure, passed) = match result {
        Ok(passed) => (None, Some(passed)),
        Err(failure) => {
            checks.push(CheckResult { name: failure.step.clone(), ok: false, detail: failure.problem.clone() });
            (Some(failure), None)
        }
    };
    let report = Report { valid: passed.is_some(), checks, failure, baseline_scores: passed.as_ref().map(|p| p.baseline_scores.clone()) };
    Ok((report, passed))
}

fn fail(step: &str, reason: DropReason, problem: impl Into<String>, output: impl Into<String>) -> Failure {
    Failure { step: step.into(), reason, problem: problem.into(), output: output.into() }
}

fn io_err(context: &str, e: std::io::Error) -> PortError {
    PortError::Transient(format!("{context}: {e}"))
}

async fn run_checks(c: &TaskCheck<'_>, checks: &mut Vec<CheckResult>) -> Result<Result<Passed, Failure>, PortError> {
    let b = c.bundle;
    let ok = |checks: &mut Vec<CheckResult>, name: &str, detail: String| {
        checks.push(CheckResult { name: name.into(), ok: true, detail });
    };

    // 1. Static checks: nothing runs until the bundle is complete and consistent.
    let problems = static_problems(b);
    if !problems.is_empty() {
        return Ok(Err(fail("static", DropReason::BundleInvalid, problems.join("; "), "")));
    }
    ok(checks, "static", "bundle complete, metric spec consistent".into());
    fresh_dir(c.work_dir).map_err(|e| io_err("cannot create the validation directory", e))?;
    let training_timeout = Duration::from_secs(b.training_timeout);

    // 2. prepare.py turns the raw data into the task's files.
    let prep = c.work_dir.join("prepare");
    fresh_dir(&prep.join("raw")).map_err(|e| io_err("cannot create prepare dir", e))?;
    write_file(&prep.join("prepare.py"), &b.files["prepare.py"])?;
    let out = run_python(c, &prep, &["prepare.py"], vec![ro(c.raw_dir, "raw")], c.prepare_timeout, "prepare").await?;
    if let Some(f) = job_failure("prepare", DropReason::PrepareFailed, &out) {
        return Ok(Err(f));
    }
    let missing: Vec<&str> = PREPARED_FILES.iter().copied().filter(|f| !prep.join(f).is_file()).collect();
    if !missing.is_empty() {
        return Ok(Err(fail(
            "prepare",
            DropReason::PrepareFailed,
            format!("prepare.py did not write {}", missing.join(", ")),
            output_text(&out),
        )));
    }
    let test_header = csv_header(&prep.join("data/test.csv"))?;
    if test_header.iter().any(|h| h == &b.target_column) {
        return Ok(Err(fail(
            "prepare",
            DropReason::Leak,
            format!("data/test.csv contains the target column `{}`: the agent could read the answers", b.target_column),
            format!("test.csv columns: {}", test_header.join(",")),
        )));
    }
    for (file, needed) in [
        ("data/test.csv", vec!["id"]),
        ("data/answers.csv", vec!["id", b.target_column.as_str()]),
        ("sample_submission.csv", vec!["id", b.target_column.as_str()]),
    ] {
        let header = csv_header(&prep.join(file))?;
        if let Some(col) = needed.iter().find(|n| !header.iter().any(|h| h == *n)) {
            return Ok(Err(fail(
                "prepare",
                DropReason::PrepareFailed,
                format!("{file} has no `{col}` column"),
                format!("{file} columns: {}", header.join(",")),
            )));
        }
    }
    ok(checks, "prepare", format!("wrote the data files in {:.1} s; test.csv holds no target", out.elapsed_secs));

    // The prepared layout: starter code, the agent's data, and the evaluation data.
    let prepared = PreparedTask::new(c.work_dir.join("prepared"));
    for dir in [prepared.starter(), prepared.public_data(), prepared.eval_data()] {
        fresh_dir(&dir).map_err(|e| io_err("cannot create prepared dir", e))?;
    }
    write_file(&prepared.starter().join("baseline.py"), &b.files["baseline.py"])?;
    write_file(&prepared.starter().join("evaluate.py"), &b.files["evaluate.py"])?;
    copy(&prep.join("sample_submission.csv"), &prepared.starter().join("sample_submission.csv"))?;
    for f in ["train.csv", "validation.csv", "test.csv"] {
        copy(&prep.join("data").join(f), &prepared.public_data().join(f))?;
        copy(&prep.join("data").join(f), &prepared.eval_data().join(f))?;
    }
    copy(&prep.join("data/answers.csv"), &prepared.eval_data().join("answers.csv"))?;

    // 3. The baseline runs and its submission evaluates to exactly the declared metrics.
    let baseline_scores = match baseline_and_evaluate(c, &prepared, 1, training_timeout).await? {
        Ok(scores) => scores,
        Err(f) => return Ok(Err(f)),
    };
    ok(checks, "baseline", format!("scores {}", format_scores(&baseline_scores)));

    // 4. A second run reproduces the score.
    let again = match baseline_and_evaluate(c, &prepared, 2, training_timeout).await? {
        Ok(scores) => scores,
        Err(f) => return Ok(Err(f)),
    };
    if !same_scores(&baseline_scores, &again) {
        return Ok(Err(fail(
            "baseline",
            DropReason::BaselineNotReproducible,
            format!("the baseline scored {} then {}: fix every random seed", format_scores(&baseline_scores), format_scores(&again)),
            "",
        )));
    }
    ok(checks, "reproducible", "a second baseline run scored the same".into());

    // 5. The sample submission evaluates, and the baseline beats it.
    let sample_dir = c.work_dir.join("eval-sample");
    let out = evaluate_submission(
        c.sandbox,
        &prepared,
        &prepared.starter().join("sample_submission.csv"),
        &sample_dir,
        training_timeout,
        &format!("{} evaluate sample", c.label),
    )
    .await?;
    let sample_scores = match checked_scores("sample_submission", &out, b) {
        Ok(s) => s,
        Err(f) => return Ok(Err(f)),
    };
    let (base, trivial) = (baseline_scores[&b.priority_metric], sample_scores[&b.priority_metric]);
    let better = match b.direction {
        Direction::Maximize => base > trivial,
        Direction::Minimize => base < trivial,
    };
    if !better {
        return Ok(Err(fail(
            "sample_submission",
            DropReason::BaselineNotBetterThanTrivial,
            format!("the baseline's {} is {base} but the naive sample submission already scores {trivial}", b.priority_metric),
            "",
        )));
    }
    ok(checks, "trivial", format!("baseline {} {base} beats the naive submission's {trivial}", b.priority_metric));

    // 6. The baseline leaves the agent room to improve.
    if let Some(problem) = saturation(&b.priority_metric, b.direction, base, trivial, c.headroom) {
        let evidence =
            format!("baseline scores {}; naive submission scores {}", format_scores(&baseline_scores), format_scores(&sample_scores));
        return Ok(Err(fail("headroom", DropReason::BaselineSaturated, problem, evidence)));
    }
    let bound = match metric_bound(&b.priority_metric) {
        Some(bound) if bound.direction == b.direction => format!("the best possible {} is {:.1}", b.priority_metric, bound.best),
        _ => format!("not judged: the best value of {} in the declared direction is not known", b.priority_metric),
    };
    ok(checks, "headroom", format!("baseline {} {base:.4} leaves headroom ({bound})", b.priority_metric));

    // 7. A wrong-shaped submission (one row short) is rejected.
    let short = c.work_dir.join("short_submission.csv");
    let sample_text = std::fs::read_to_string(prepared.starter().join("sample_submission.csv"))
        .map_err(|e| io_err("cannot read sample submission", e))?;
    let mut lines: Vec<&str> = sample_text.lines().collect();
    lines.pop();
    write_file(&short, &(lines.join("\n") + "\n"))?;
    let out = evaluate_submission(
        c.sandbox,
        &prepared,
        &short,
        &c.work_dir.join("eval-short"),
        training_timeout,
        &format!("{} evaluate wrong shape", c.label),
    )
    .await?;
    if out.success() {
        return Ok(Err(fail(
            "wrong_shape",
            DropReason::EvalAcceptsWrongShape,
            "evaluate.py accepted a submission with a missing row; it must exit with status 1 and explain",
            output_text(&out),
        )));
    }
    ok(checks, "wrong_shape", "a submission with a missing row is rejected".into());

    Ok(Ok(Passed { baseline_scores, sample_scores, prepared }))
}

/// Runs the baseline in a fresh workspace, then evaluates its submission.
async fn baseline_and_evaluate(
    c: &TaskCheck<'_>,
    prepared: &PreparedTask,
    run: u32,
    timeout: Duration,
) -> Result<Result<Scores, Failure>, PortError> {
    let ws = c.work_dir.join(format!("baseline-{run}"));
    fresh_dir(&ws.join("data")).map_err(|e| io_err("cannot create baseline workspace", e))?;
    copy_files(&prepared.starter(), &ws).map_err(|e| io_err("cannot copy starter code", e))?;
    let out =
        run_python(c, &ws, &["baseline.py"], vec![ro(&prepared.public_data(), "data")], timeout, &format!("baseline run {run}")).await?;
    if let Some(f) = job_failure("baseline", DropReason::BaselineFailed, &out) {
        return Ok(Err(f));
    }
    let submission = ws.join("submission.csv");
    if !submission.is_file() {
        return Ok(Err(fail("baseline", DropReason::BaselineFailed, "baseline.py did not write submission.csv", output_text(&out))));
    }
    let out = evaluate_submission(
        c.sandbox,
        prepared,
        &submission,
        &c.work_dir.join(format!("eval-baseline-{run}")),
        timeout,
        &format!("{} evaluate baseline {run}", c.label),
    )
    .await?;
    Ok(checked_scores("evaluate", &out, c.bundle))
}

/// Parses evaluate.py's output and checks the keys against the bundle's metric spec.
fn checked_scores(step: &str, out: &JobOutput, b: &TaskBundle) -> Result<Scores, Failure> {
    if let Some(f) = job_failure(step, DropReason::EvalFailed, out) {
        return Err(f);
    }
    let scores = parse_scores(out).map_err(|e| fail(step, DropReason::EvalFormat, e, output_text(out)))?;
    let mut keys: Vec<&String> = scores.keys().collect();
    let mut declared: Vec<&String> = b.metrics.iter().collect();
    keys.sort();
    declared.sort();
    if keys != declared {
        return Err(fail(
            step,
            DropReason::MetricMismatch,
            format!("evaluate.py printed the metrics {keys:?} but the bundle declares {declared:?}"),
            output_text(out),
        ));
    }
    Ok(scores)
}

/// Evaluates `submission` with the task's pristine evaluate.py, in a sandbox that sees the
/// answers (read-only) and nothing of the agent's workspace.
pub async fn evaluate_submission(
    sandbox: &dyn Sandbox,
    prepared: &PreparedTask,
    submission: &Path,
    dir: &Path,
    timeout: Duration,
    label: &str,
) -> Result<JobOutput, PortError> {
    fresh_dir(&dir.join("data")).map_err(|e| io_err("cannot create evaluation dir", e))?;
    copy(&prepared.starter().join("evaluate.py"), &dir.join("evaluate.py"))?;
    copy(submission, &dir.join("submission.csv"))?;
    sandbox
        .run(SandboxJob {
            label: label.to_string(),
            workdir: dir.to_path_buf(),
            workdir_inside: WORKSPACE.to_string(),
            mounts: vec![Mount { host: prepared.eval_data(), inside: format!("{WORKSPACE}/data"), writable: false }],
            command: vec!["python".into(), "evaluate.py".into(), "--submission_file".into(), "submission.csv".into()],
            timeout,
        })
        .await
}

/// evaluate.py's output must be exactly one JSON object of finite, non-negative numbers, with
/// nothing on stderr.
pub fn parse_scores(out: &JobOutput) -> Result<Scores, String> {
    if !out.stderr.trim().is_empty() {
        return Err(format!("evaluate.py wrote to stderr; it must print only one JSON object: {}", head(out.stderr.trim(), 300)));
    }
    let text = out.stdout.trim();
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("evaluate.py must print exactly one JSON object and nothing else ({e}); it printed: {}", head(text, 300)))?;
    let obj = value.as_object().ok_or("evaluate.py printed JSON that is not an object")?;
    if obj.is_empty() {
        return Err("evaluate.py printed an empty JSON object".into());
    }
    let mut scores = Scores::new();
    for (k, v) in obj {
        let x = v.as_f64().ok_or_else(|| format!("metric `{k}` is not a number: {v}"))?;
        if !x.is_finite() || x < 0.0 {
            return Err(format!("metric `{k}` is {x}; every metric must be finite and non-negative"));
        }
        scores.insert(k.clone(), x);
    }
    Ok(scores)
}

/// Problems that can be seen without running anything.
/// The longest `training_timeout` a bundle may declare: every job of a task's check is bounded.
pub const MAX_TRAINING_TIMEOUT_SECS: u64 = 3600;

pub fn static_problems(b: &TaskBundle) -> Vec<String> {
    let mut problems = Vec::new();
    for f in BUNDLE_FILES {
        if b.files.get(f).is_none_or(|s| s.trim().is_empty()) {
            problems.push(format!("the bundle has no {f}"));
        }
    }
    if b.metrics.is_empty() {
        problems.push("no metrics declared".into());
    }
    if !b.metrics.contains(&b.priority_metric) {
        problems.push(format!("priority metric `{}` is not among the metrics {:?}", b.priority_metric, b.metrics));
    }
    if b.target_column.trim().is_empty() {
        problems.push("no target column".into());
    }
    if b.name.is_empty() || !b.name.chars().all(|c| c.is_ascii_alphanumeric()) {
        problems.push(format!("name `{}` must be camelCase letters and digits", b.name));
    }
    if b.description.matches("{dataset_docs}").count() > 1 {
        problems.push("the description contains {dataset_docs} more than once".into());
    }
    if !b.description.contains("SUBMISSION FORMAT") {
        problems.push("the description has no SUBMISSION FORMAT paragraph".into());
    }
    if b.training_timeout == 0 || b.training_timeout > MAX_TRAINING_TIMEOUT_SECS {
        problems.push(format!("training_timeout {} must be between 1 and {MAX_TRAINING_TIMEOUT_SECS} seconds", b.training_timeout));
    }
    problems
}

/// The best value a metric can take, known from its name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricBound {
    /// Which way the metric improves.
    pub direction: Direction,
    /// The best value the metric can take.
    pub best: f64,
    /// Whether the headroom margin is a share of the naive submission's score rather than an
    /// absolute distance: error metrics have no scale of their own (an RMSE of 0.01 is tiny
    /// for house prices and large for probabilities).
    pub relative_margin: bool,
}

/// Metrics whose best value is 1 (accuracy, F1, AUC, NDCG, R², IoU, correlations, ...),
/// after [`metric_stem`].
const BEST_AT_ONE: &[&str] = &[
    "accuracy",
    "acc",
    "balanced_accuracy",
    "top_k_accuracy",
    "f1",
    "fbeta",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "auc",
    "roc_auc",
    "auroc",
    "pr_auc",
    "auprc",
    "average_precision",
    "ap",
    "map",
    "mean_average_precision",
    "mrr",
    "mean_reciprocal_rank",
    "ndcg",
    "hits",
    "hit_rate",
    "r2",
    "r_squared",
    "explained_variance",
    "iou",
    "miou",
    "mean_iou",
    "jaccard",
    "dice",
    "exact_match",
    "em",
    "mcc",
    "matthews_corrcoef",
    "kappa",
    "cohen_kappa",
    "quadratic_weighted_kappa",
    "qwk",
    "spearman",
    "pearson",
];

/// Error metrics whose best value is 0 (RMSE, MAE, log loss, error rates, ...), after
/// [`metric_stem`].
const BEST_AT_ZERO: &[&str] = &[
    "rmse",
    "mse",
    "mae",
    "medae",
    "rmsle",
    "msle",
    "mape",
    "smape",
    "mean_squared_error",
    "root_mean_squared_error",
    "mean_absolute_error",
    "median_absolute_error",
    "mean_absolute_percentage_error",
    "log_loss",
    "logloss",
    "cross_entropy",
    "nll",
    "brier",
    "error",
    "error_rate",
    "wer",
    "cer",
    "hamming_loss",
    "zero_one_loss",
];

/// Words of a metric name that qualify it without changing its range.
const METRIC_QUALIFIERS: &[&str] = &["macro", "micro", "weighted", "samples", "score", "test", "val", "validation", "overall"];

/// A metric name reduced to what [`BEST_AT_ONE`] and [`BEST_AT_ZERO`] list: lowercase, words
/// joined by `_`, qualifiers dropped, numbers read as `k` and a trailing cutoff removed
/// (`NDCG@10` and `ndcg_at_10` -> `ndcg`, `f1_macro` -> `f1`, `top5_accuracy` -> `top_k_accuracy`).
fn metric_stem(name: &str) -> String {
    let spaced = name.to_lowercase().replace('@', "_at_").replace('²', "2");
    let mut words: Vec<String> = Vec::new();
    for word in spaced.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
        if METRIC_QUALIFIERS.contains(&word) {
            continue;
        }
        // `top5` -> `top`, `k`; a bare number -> `k`.
        let letters = word.trim_end_matches(|c: char| c.is_ascii_digit());
        if letters.len() < word.len() && !letters.is_empty() && !matches!(letters, "r" | "f" | "l") {
            words.push(letters.to_string());
            words.push("k".into());
        } else if letters.is_empty() {
            words.push("k".into());
        } else {
            words.push(word.to_string());
        }
    }
    let mut stem = words.join("_");
    for cutoff in ["_at_k", "_k"] {
        if let Some(s) = stem.strip_suffix(cutoff) {
            stem = s.to_string();
        }
    }
    stem
}

/// The best value of the metric `name`, when its name says what it is; `None` for metrics
/// gymforge does not know.
pub fn metric_bound(name: &str) -> Option<MetricBound> {
    let stem = metric_stem(name);
    if BEST_AT_ONE.contains(&stem.as_str()) {
        Some(MetricBound { direction: Direction::Maximize, best: 1.0, relative_margin: false })
    } else if BEST_AT_ZERO.contains(&stem.as_str()) {
        Some(MetricBound { direction: Direction::Minimize, best: 0.0, relative_margin: true })
    } else {
        None
    }
}

/// Why a baseline leaves no headroom, if it does not: its priority metric `metric` scores
/// `base`, the naive sample submission `trivial`, and `margin` is the configured headroom.
///
/// A metric whose best value is 1 is saturated at `1 - margin` or above (a metric on a
/// percent scale, with values above 1, at `100 * (1 - margin)`); an error metric whose best
/// value is 0 at `margin` times the naive submission's score or below. Metrics of unknown
/// name, and metrics declared in the direction opposite to what their name says, are not
/// judged.
pub fn saturation(metric: &str, direction: Direction, base: f64, trivial: f64, margin: f64) -> Option<String> {
    let bound = metric_bound(metric).filter(|b| b.direction == direction)?;
    if bound.relative_margin {
        let limit = bound.best + margin * trivial;
        return (base <= limit).then(|| {
            format!(
                "baseline {metric} {base:.4} leaves no headroom: the best possible is {:.1} \
                 (margin {margin} of the naive submission's {trivial:.4} = {:.4})",
                bound.best,
                margin * trivial
            )
        });
    }
    // Bounded metrics: on their own scale, or on a percent scale when the value exceeds 1.
    let scale = if base > bound.best + 1e-9 { 100.0 } else { 1.0 };
    if base > bound.best * scale + 1e-9 {
        return None;
    }
    let best = bound.best * scale;
    (base >= best - margin * scale).then(|| {
        let on = if scale == 1.0 { String::new() } else { " on a percent scale".to_string() };
        format!("baseline {metric} {base:.4} leaves no headroom: the best possible is {best:.1}{on} (margin {})", margin * scale)
    })
}

/// Scores are reproduced when every metric matches to 1e-9 relative.
pub fn same_scores(a: &Scores, b: &Scores) -> bool {
    a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| (x - y).abs() <= 1e-9 * x.abs().max(1.0)))
}

/// Scores as MLGym prints them: a Python dict.
pub fn format_scores(s: &Scores) -> String {
    let items: Vec<String> = s.iter().map(|(k, v)| format!("'{k}': {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

fn job_failure(step: &str, reason: DropReason, out: &JobOutput) -> Option<Failure> {
    if out.timed_out {
        return Some(fail(step, DropReason::Timeout, format!("{step} did not finish within {:.0} s", out.elapsed_secs), output_text(out)));
    }
    if !out.success() {
        return Some(fail(step, reason, format!("{step} failed ({})", out.status_line()), output_text(out)));
    }
    None
}

/// stdout and stderr of a job, cut to head and tail.
pub fn output_text(out: &JobOutput) -> String {
    let mut text = String::new();
    if !out.stdout.trim().is_empty() {
        text.push_str(out.stdout.trim_end());
        text.push('\n');
    }
    if !out.stderr.trim().is_empty() {
        text.push_str(out.stderr.trim_end());
    }
    head_tail(&text, FAILURE_OUTPUT_CHARS)
}

/// Keeps the first and last `max / 2` characters of a long text, with a marker between.
pub fn head_tail(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_string();
    }
    let half = max / 2;
    let head: String = chars[..half].iter().collect();
    let tail: String = chars[chars.len() - half..].iter().collect();
    format!("{head}\n[... {} characters omitted ...]\n{tail}", chars.len() - 2 * half)
}

fn head(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

async fn run_python(
    c: &TaskCheck<'_>,
    workdir: &Path,
    args: &[&str],
    mounts: Vec<(PathBuf, &str)>,
    timeout: Duration,
    what: &str,
) -> Result<JobOutput, PortError> {
    let mut command = vec!["python".to_string()];
    command.extend(args.iter().map(|s| s.to_string()));
    c.sandbox
        .run(SandboxJob {
            label: format!("{} {what}", c.label),
            workdir: workdir.to_path_buf(),
            workdir_inside: WORKSPACE.to_string(),
            mounts: mounts.into_iter().map(|(host, rel)| Mount { host, inside: format!("{WORKSPACE}/{rel}"), writable: false }).collect(),
            command,
            timeout,
        })
        .await
}

fn ro(host: &Path, rel: &'static str) -> (PathBuf, &'static str) {
    (host.to_path_buf(), rel)
}

fn write_file(path: &Path, text: &str) -> Result<(), PortError> {
    std::fs::write(path, text).map_err(|e| io_err(&format!("cannot write {}", path.display()), e))
}

fn copy(from: &Path, to: &Path) -> Result<(), PortError> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| io_err(&format!("cannot copy {}", from.display()), e))
}

/// The column names on the first line of a CSV file.
pub fn csv_header(path: &Path) -> Result<Vec<String>, PortError> {
    let file = std::fs::File::open(path).map_err(|e| io_err(&format!("cannot open {}", path.display()), e))?;
    let mut reader = csv::Reader::from_reader(std::io::BufReader::new(file));
    let header = reader.headers().map_err(|e| PortError::Permanent(format!("cannot read the CSV header of {}: {e}", path.display())))?;
    Ok(header.iter().map(|h| h.trim().to_string()).collect())
}

/// The file of a bundle directory holding everything but the scripts.
pub const BUNDLE_META_FILE: &str = "task.json";

/// Writes a bundle as a directory `gymforge check task` can audit: `task.json`, the three
/// scripts, and the raw data under `raw/`.
pub fn write_bundle_dir(bundle: &TaskBundle, raw_dir: &Path, dest: &Path) -> std::io::Result<()> {
    fresh_dir(dest)?;
    let mut meta = serde_json::to_value(bundle).expect("serialisable");
    if let Some(obj) = meta.as_object_mut() {
        obj.remove("files");
    }
    std::fs::write(dest.join(BUNDLE_META_FILE), serde_json::to_string_pretty(&meta).expect("serialisable"))?;
    for (name, text) in &bundle.files {
        std::fs::write(dest.join(name), text)?;
    }
    copy_tree(raw_dir, &dest.join("raw"))
}

/// Reads a bundle directory written by [`write_bundle_dir`] (or by hand).
pub fn read_bundle_dir(dir: &Path) -> Result<TaskBundle, String> {
    let meta_path = dir.join(BUNDLE_META_FILE);
    let text = std::fs::read_to_string(&meta_path).map_err(|e| format!("cannot read {}: {e}", meta_path.display()))?;
    let mut meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", meta_path.display()))?;
    let mut files = serde_json::Map::new();
    for name in BUNDLE_FILES {
        let path = dir.join(name);
        let code = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        files.insert(name.to_string(), serde_json::Value::String(code));
    }
    meta.as_object_mut().ok_or_else(|| format!("{} must hold a JSON object", meta_path.display()))?.insert("files".into(), files.into());
    serde_json::from_value(meta).map_err(|e| format!("{}: {e}", meta_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_header_with_commas_is_one_column() {
        let path = std::env::temp_dir().join(format!("gymforge-header-{}.csv", std::process::id()));
        std::fs::write(&path, "id,\"price, usd\", label\r\n1,2,3\n").unwrap();
        let header = csv_header(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(header.unwrap(), ["id", "price, usd", "label"]);
    }

    fn out(stdout: &str, stderr: &str) -> JobOutput {
        JobOutput { exit_code: Some(0), stdout: stdout.into(), stderr: stderr.into(), ..Default::default() }
    }

    #[test]
    fn scores_must_be_one_clean_json_object() {
        assert_eq!(parse_scores(&out("{\"accuracy\": 0.5}\n", "")).unwrap()["accuracy"], 0.5);
        assert!(parse_scores(&out("Evaluating\n{\"accuracy\": 0.5}", "")).is_err());
        assert!(parse_scores(&out("{\"accuracy\": 0.5}", "warning")).is_err());
        assert!(parse_scores(&out("{\"accuracy\": -1}", "")).is_err());
        assert!(parse_scores(&out("{\"accuracy\": \"high\"}", "")).is_err());
        assert!(parse_scores(&out("{}", "")).is_err());
        // Python's json.dumps writes NaN and Infinity, which are not JSON numbers.
        assert!(parse_scores(&out("{\"accuracy\": NaN}", "")).is_err());
        assert!(parse_scores(&out("{\"rmse\": Infinity}", "")).is_err());
        assert!(parse_scores(&out("{\"accuracy\": 0.5}\n{\"accuracy\": 0.6}", "")).is_err());
    }

    #[test]
    fn metric_bounds_come_from_the_metric_name() {
        let max = |name: &str| metric_bound(name).map(|b| (b.direction, b.best));
        for name in [
            "accuracy",
            "f1_macro",
            "macro-F1",
            "ndcg_at_10",
            "NDCG@10",
            "ndcg",
            "r2",
            "R²",
            "roc_auc",
            "top5_accuracy",
            "hits@10",
            "mean_iou",
        ] {
            assert_eq!(max(name), Some((Direction::Maximize, 1.0)), "{name}");
        }
        for name in ["rmse", "mae", "log_loss", "logloss", "mean_squared_error", "RMSE", "test_mae"] {
            assert_eq!(max(name), Some((Direction::Minimize, 0.0)), "{name}");
            assert!(metric_bound(name).unwrap().relative_margin, "{name}");
        }
        for name in ["score", "reward", "perplexity", "bleu", "dcg_at_10", "mean_return"] {
            assert_eq!(max(name), None, "{name}");
        }
    }

    #[test]
    fn a_baseline_at_or_near_the_best_value_is_saturated() {
        let max = Direction::Maximize;
        let problem = saturation("accuracy", max, 1.0, 0.33, 0.01).unwrap();
        assert_eq!(problem, "baseline accuracy 1.0000 leaves no headroom: the best possible is 1.0 (margin 0.01)");
        assert!(saturation("f1_macro", max, 0.995, 0.2, 0.01).is_some());
        assert!(saturation("ndcg_at_10", max, 0.99, 0.5, 0.01).is_some());
        assert!(saturation("accuracy", max, 0.9667, 0.33, 0.01).is_none());
        // A zero margin rejects only the best value itself.
        assert!(saturation("accuracy", max, 0.995, 0.33, 0.0).is_none());
        assert!(saturation("accuracy", max, 1.0, 0.33, 0.0).is_some());
        // Percent scales: 99.5 is within a margin of 100, 97 is not.
        assert!(saturation("accuracy", max, 99.5, 33.0, 0.01).unwrap().contains("percent scale"));
        assert!(saturation("accuracy", max, 97.0, 33.0, 0.01).is_none());
        assert!(saturation("accuracy", max, 250.0, 33.0, 0.01).is_none());
        // Error metrics: the margin is a share of the naive submission's score.
        let min = Direction::Minimize;
        let problem = saturation("rmse", min, 0.0, 0.8, 0.01).unwrap();
        assert!(problem.starts_with("baseline rmse 0.0000 leaves no headroom: the best possible is 0.0"), "{problem}");
        assert!(problem.contains("naive submission's 0.8000"), "{problem}");
        assert!(saturation("rmse", min, 0.005, 0.8, 0.01).is_some());
        assert!(saturation("rmse", min, 0.009, 0.8, 0.01).is_none());
        assert!(saturation("rmse", min, 50.0, 75.0, 0.01).is_none());
        // Unknown metrics, and metrics declared against their name's direction, are not judged.
        assert!(saturation("reward", max, 1.0, 0.0, 0.01).is_none());
        assert!(saturation("accuracy", min, 0.0, 0.5, 0.01).is_none());
    }

    #[test]
    fn head_tail_keeps_both_ends() {
        let t = "a".repeat(50) + &"b".repeat(50);
        let cut = head_tail(&t, 20);
        assert!(cut.starts_with("aaaaaaaaaa") && cut.ends_with("bbbbbbbbbb") && cut.contains("80 characters omitted"));
    }
}
