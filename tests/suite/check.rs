//! `gymforge check task DIR` on a hand-written bundle: valid as shipped, and invalid after each
//! of several deliberate breakages, each reported with its own reason: one breakage for every
//! rule of a valid task (DESIGN.md 3.3) and every drop reason the checks give.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

fn bundle(dir: &Path) -> PathBuf {
    common::fixture_bundle(dir)
}

/// The fixture bundle over points with a `noise` share of flipped labels and none closer than
/// `gap` to the line.
fn bundle_of(dir: &Path, noise: f64, gap: f64) -> PathBuf {
    common::fixture_bundle_with(dir, noise, gap)
}

fn check(dir: &Path) -> (bool, serde_json::Value) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_gymforge")).args(["check", "task"]).arg(dir).env_remove("RUST_BACKTRACE").output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}); stderr: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.success(), report)
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} contains {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn valid_bundle_passes_every_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, report) = check(&bundle(tmp.path()));
    assert!(ok, "{report:#}");
    assert_eq!(report["valid"], true);
    let names: Vec<&str> = report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["static", "prepare", "baseline", "reproducible", "trivial", "headroom", "wrong_shape"]);
    assert!(report["baseline_scores"]["accuracy"].as_f64().unwrap() > 0.7);
}

#[test]
fn each_breakage_is_reported_with_its_reason() {
    let cases: [(&str, &str, &str, &str); 13] = [
        // Static: the priority metric must be one of the declared metrics.
        ("task.json", "\"priority_metric\": \"accuracy\"", "\"priority_metric\": \"auc\"", "bundle_invalid"),
        // prepare.py crashes, or does not write every file.
        ("prepare.py", "pd.read_csv(\"raw/points.csv\")", "pd.read_csv(\"raw/point.csv\")", "prepare_failed"),
        ("prepare.py", ".to_csv(\"sample_submission.csv\"", ".to_csv(\"sample.csv\"", "prepare_failed"),
        // The answers are not in the baseline's workspace: reading them fails the baseline.
        (
            "baseline.py",
            "test = pd.read_csv(\"data/test.csv\")",
            "test = pd.read_csv(\"data/test.csv\")\nanswers = pd.read_csv(\"data/answers.csv\")",
            "baseline_failed",
        ),
        // The answers are mounted read-only into evaluation: writing them fails evaluate.py.
        (
            "evaluate.py",
            "answers = pd.read_csv(\"data/answers.csv\")",
            "answers = pd.read_csv(\"data/answers.csv\")\nopen(\"data/answers.csv\", \"a\").write(\"1,1\\n\")",
            "eval_failed",
        ),
        // Metrics must be finite and non-negative.
        ("evaluate.py", "{\"accuracy\": float(", "{\"accuracy\": -1.0 * float(", "eval_format"),
        // A score that changes from one run to the next is not reproducible.
        ("evaluate.py", "{\"accuracy\": float(", "{\"accuracy\": __import__(\"random\").random() + float(", "baseline_not_reproducible"),
        ("evaluate.py", "print(json.dumps(", "print('scoring'); print(json.dumps(", "eval_format"),
        ("prepare.py", "test.drop(columns=[\"label\"])", "test", "leak"),
        ("baseline.py", "model = LogisticRegression()", "model = LogisticRegresion()", "baseline_failed"),
        ("evaluate.py", "{\"accuracy\": ", "{\"acc\": ", "metric_mismatch"),
        ("evaluate.py", "sorted(submission[\"id\"]) != sorted(answers[\"id\"])", "False", "eval_accepts_wrong_shape"),
        (
            "baseline.py",
            "model = LogisticRegression()",
            "from sklearn.dummy import DummyClassifier\nmodel = DummyClassifier()",
            "baseline_not_better_than_trivial",
        ),
    ];
    for (file, from, to, reason) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = bundle(tmp.path());
        edit(&dir.join(file), from, to);
        let (ok, report) = check(&dir);
        assert!(!ok, "{file}: {to} must make the task invalid");
        assert_eq!(report["valid"], false);
        assert_eq!(report["failure"]["reason"], reason, "{report:#}");
        if to.contains("answers.csv") {
            assert!(report["failure"]["output"].as_str().unwrap().contains("answers.csv"), "{report:#}");
        }
    }
}

/// A task whose baseline already predicts the answers perfectly leaves the agent nothing to
/// improve: clean labels and a wide gap around the line let logistic regression classify every
/// test point. The check rejects it with its own reason, for a metric whose best value is 1 and
/// for an error metric whose best value is 0.
#[test]
fn a_baseline_at_the_best_possible_score_leaves_no_headroom() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle_of(tmp.path(), 0.0, 1.0);
    let (ok, report) = check(&dir);
    assert!(!ok, "{report:#}");
    assert_eq!(report["valid"], false);
    assert_eq!(
        (report["failure"]["step"].as_str(), report["failure"]["reason"].as_str()),
        (Some("headroom"), Some("baseline_saturated")),
        "{report:#}"
    );
    assert_eq!(report["failure"]["problem"], "baseline accuracy 1.0000 leaves no headroom: the best possible is 1.0 (margin 0.01)");
    assert!(report["failure"]["output"].as_str().unwrap().contains("'accuracy': 1"), "{report:#}");

    // The same task scored by the root mean squared error of the labels: 0 is the best value,
    // and the margin is a share of the naive submission's error.
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle_of(tmp.path(), 0.0, 1.0);
    let task = dir.join("task.json");
    edit(&task, "\"priority_metric\": \"accuracy\"", "\"priority_metric\": \"rmse\"");
    edit(&task, "\"direction\": \"maximize\"", "\"direction\": \"minimize\"");
    edit(&task, "\"metrics\": [\"accuracy\"]", "\"metrics\": [\"rmse\"]");
    edit(
        &dir.join("evaluate.py"),
        "{\"accuracy\": float((merged[\"label_true\"] == merged[\"label_pred\"]).mean())}",
        "{\"rmse\": float(((merged[\"label_true\"] - merged[\"label_pred\"]) ** 2).mean() ** 0.5)}",
    );
    let (ok, report) = check(&dir);
    assert!(!ok, "{report:#}");
    assert_eq!(report["failure"]["reason"], "baseline_saturated", "{report:#}");
    let problem = report["failure"]["problem"].as_str().unwrap();
    assert!(
        problem.starts_with("baseline rmse 0.0000 leaves no headroom: the best possible is 0.0 (margin 0.01 of the naive submission's 0."),
        "{problem}"
    );

    // With noisy labels the same baseline leaves headroom on the error metric too.
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle(tmp.path());
    std::fs::copy(&task, dir.join("task.json")).unwrap();
    std::fs::copy(task.with_file_name("evaluate.py"), dir.join("evaluate.py")).unwrap();
    let (ok, report) = check(&dir);
    assert!(ok, "{report:#}");
    let headroom = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "headroom").unwrap();
    assert!(headroom["detail"].as_str().unwrap().contains("leaves headroom"), "{report:#}");
}

/// A baseline that outlives the task's training timeout is stopped and reported as a timeout.
#[test]
fn a_baseline_over_its_timeout_is_a_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle(tmp.path());
    edit(&dir.join("task.json"), "\"training_timeout\": 300", "\"training_timeout\": 2");
    edit(&dir.join("baseline.py"), "model = LogisticRegression()", "__import__(\"time\").sleep(3600)\nmodel = LogisticRegression()");
    let (ok, report) = check(&dir);
    assert!(!ok);
    assert_eq!(
        (report["failure"]["step"].as_str(), report["failure"]["reason"].as_str()),
        (Some("baseline"), Some("timeout")),
        "{report:#}"
    );
}

#[test]
fn a_missing_bundle_file_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = bundle(tmp.path());
    std::fs::remove_file(dir.join("evaluate.py")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gymforge")).args(["check", "task"]).arg(&dir).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("evaluate.py") && !stderr.contains("panicked"), "{stderr}");
}
