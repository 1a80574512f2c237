//! The simulated teacher against real Python: its task bundles run, pass the pipeline's own
//! checks, its injected bugs fail and its repairs pass, its agent solves the tasks, and its
//! HTTP server speaks the OpenAI protocol.
//!
//! The Python environment is the sandbox's ([`PythonEnv::ensure`], provisioned on first use);
//! generated scripts run in the bubblewrap sandbox, like everywhere else. The raw data is made here from
//! scikit-learn's bundled datasets, with the Hub mirror's layout and column naming.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use gymforge::config::{Config, PYTHON_REQUIREMENTS, SimConfig};
use gymforge::sandbox::{BwrapSandbox, PythonEnv};
use gymforge_actors::agent::{command_docs, format_error, parse_action};
use gymforge_actors::model::{AcceptedTask, DatasetMeta, DropReason, Feature, ParquetFile, TaskBundle, TopicIdea, TopicSample};
use gymforge_actors::paths::{PreparedTask, WORKSPACE, copy_tree};
use gymforge_actors::ports::{JobOutput, Sandbox, SandboxJob};
use gymforge_actors::template::render;
use gymforge_actors::validate::{Failure, TaskCheck, check_bundle, evaluate_submission, format_scores, parse_scores};
use gymforge_sim::teacher::{self as sim, Bug};

// ---------------------------------------------------------------------------------------------
// Python and data

fn python_env() -> &'static PythonEnv {
    static ENV: OnceLock<PythonEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        PythonEnv::ensure(&Config::embedded().sandbox, PYTHON_REQUIREMENTS, &|_| {}).expect("the sandbox's Python environment")
    })
}

/// Writes `<out>/<name>/train/0000.parquet` for each scikit-learn dataset, as the Hub mirror
/// lays it out, and prints its features.
const MAKE_RAW: &str = r#"
import json, os, re, sys
import numpy as np
import pandas as pd
from sklearn import datasets

def sanitise(name):
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")

out, names = sys.argv[1], sys.argv[2:]
facts = {}
for name in names:
    bunch = getattr(datasets, "load_" + name)(as_frame=True, **({"scaled": False} if name == "diabetes" else {}))
    columns = [sanitise(f) for f in bunch.feature_names]
    data = pd.DataFrame({c: bunch.frame[f].to_numpy() for c, f in zip(columns, bunch.feature_names)})
    features = [{"name": c, "dtype": str(data[c].dtype)} for c in columns]
    if name == "diabetes":
        data["target"] = np.asarray(bunch.target, dtype=np.float64)
        features.append({"name": "target", "dtype": "float64"})
    else:
        data["target"] = np.asarray(bunch.target, dtype=np.int64)
        features.append({"name": "target", "dtype": "int64", "class_names": [str(c) for c in bunch.target_names]})
    os.makedirs(os.path.join(out, name, "train"), exist_ok=True)
    data.to_parquet(os.path.join(out, name, "train", "0000.parquet"), index=False)
    facts[name] = {"features": features, "rows": len(data)}
print(json.dumps(facts))
"#;

/// One dataset made for a test: its raw directory and the verified metadata.
struct RawDataset {
    raw_dir: PathBuf,
    meta: DatasetMeta,
}

fn make_raw(dir: &Path, names: &[&str]) -> BTreeMap<String, RawDataset> {
    let out = std::process::Command::new(python_env().python()).arg("-c").arg(MAKE_RAW).arg(dir).args(names).output().expect("python runs");
    assert!(out.status.success(), "making the raw data failed: {}", String::from_utf8_lossy(&out.stderr));
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("facts JSON");
    names
        .iter()
        .map(|name| {
            let f = &facts[*name];
            let features: Vec<Feature> = serde_json::from_value(f["features"].clone()).unwrap();
            let rows = f["rows"].as_u64().unwrap();
            let raw_dir = dir.join(name);
            let size = std::fs::metadata(raw_dir.join("train/0000.parquet")).unwrap().len();
            let meta = DatasetMeta {
                id: format!("sklearn/{name}"),
                revision: "0".repeat(40),
                config: "default".into(),
                splits: vec!["train".into()],
                features,
                num_rows: BTreeMap::from([("train".to_string(), rows)]),
                num_bytes_parquet: size,
                description: format!("scikit-learn's bundled {name} dataset."),
                parquet_files: vec![ParquetFile { split: "train".into(), url: "mirror".into(), filename: "0000.parquet".into(), size }],
            };
            (name.to_string(), RawDataset { raw_dir, meta })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Prompts, rendered like the pipeline renders them

fn prompt(name: &str) -> String {
    let path = format!("{}/config/prompts/{name}.md", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn idea(title: &str, task_type: &str, twist: &str) -> TopicIdea {
    TopicIdea {
        sample: TopicSample { domain: "botany".into(), task_type: task_type.into(), modality: "tabular".into(), twist: twist.into() },
        title: title.into(),
        idea: "A challenge idea.".into(),
    }
}

fn codegen_messages(idea: &TopicIdea, meta: &DatasetMeta) -> Vec<(String, String)> {
    let mut meta_json = serde_json::to_value(meta).unwrap();
    meta_json.as_object_mut().unwrap().remove("parquet_files");
    let user = render(
        &prompt("codegen_user"),
        &[
            ("idea_json", &serde_json::to_string_pretty(idea).unwrap()),
            ("dataset_json", &serde_json::to_string_pretty(&meta_json).unwrap()),
            ("raw_files", "- raw/train/0000.parquet"),
        ],
    )
    .unwrap();
    vec![("system".into(), prompt("codegen_system")), ("user".into(), user)]
}

fn debug_messages(codegen: &[(String, String)], bundle: &TaskBundle, failure: &Failure) -> Vec<(String, String)> {
    let user = render(
        &prompt("debug_user"),
        &[
            ("step", &failure.step),
            ("problem", &failure.problem),
            ("output", &failure.output),
            ("bundle_json", &serde_json::to_string_pretty(bundle).unwrap()),
        ],
    )
    .unwrap();
    let mut messages = codegen.to_vec();
    messages.push(("assistant".into(), serde_json::to_string(bundle).unwrap()));
    messages.push(("user".into(), user));
    messages
}

fn sim_cfg(seed: u64, buggy_draft_rate: f64) -> SimConfig {
    SimConfig { seed, buggy_draft_rate, ..SimConfig::default() }
}

fn bundle_from(answer: &str) -> TaskBundle {
    gymforge_actors::json::extract(answer, Some(&gymforge_actors::schemas::task_bundle().1)).expect("the answer is a task bundle")
}

// ---------------------------------------------------------------------------------------------
// Running scripts in the sandbox

/// The real bubblewrap sandbox: generated code never runs outside it, in tests either.
fn sandbox() -> &'static BwrapSandbox {
    static SANDBOX: OnceLock<BwrapSandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| BwrapSandbox::new(&Config::embedded().sandbox, python_env().clone()).expect("the sandbox"))
}

/// Runs one command in the sandbox with `dir` as the workspace, from sync or async code.
fn run_in_sandbox(dir: &Path, command: Vec<String>) -> JobOutput {
    let job = SandboxJob {
        label: "sim test".into(),
        workdir: dir.to_path_buf(),
        workdir_inside: WORKSPACE.to_string(),
        mounts: Vec::new(),
        command,
        timeout: Duration::from_secs(600),
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(sandbox().run(job)).expect("the sandbox runs the job")
            })
            .join()
            .expect("the sandbox thread")
    })
}

/// Runs the pipeline's task checks on a bundle.
async fn check(bundle: &TaskBundle, raw_dir: &Path, work_dir: &Path) -> (Option<Failure>, Option<gymforge_actors::validate::Passed>) {
    let c = TaskCheck {
        sandbox: sandbox(),
        bundle,
        raw_dir,
        work_dir,
        prepare_timeout: Duration::from_secs(300),
        headroom: Config::embedded().pipeline.baseline_headroom,
        label: "sim test".into(),
    };
    let (report, passed) = check_bundle(&c).await.expect("the checks run");
    (report.failure, passed)
}

fn run_python(dir: &Path, args: &[&str]) -> JobOutput {
    let mut command = vec!["python".to_string()];
    command.extend(args.iter().map(|a| a.to_string()));
    run_in_sandbox(dir, command)
}

// ---------------------------------------------------------------------------------------------
// Tests

const ALL_DATASETS: [&str; 5] = ["iris", "wine", "breast_cancer", "digits", "diabetes"];

fn task_type(dataset: &str) -> &'static str {
    if dataset == "diabetes" { "regression" } else { "classification" }
}

/// Runs prepare.py, baseline.py and `evaluate.py --submission_file submission.csv` in a plain
/// directory, checks what each one must produce, and lays the result out as the debug stage
/// does (starter code, public data, evaluation data). Returns the layout and the baseline's
/// scores.
fn prepare_task(label: &str, bundle: &TaskBundle, raw_dir: &Path, root: &Path) -> (PreparedTask, BTreeMap<String, f64>) {
    let dir = root.join("work");
    copy_tree(raw_dir, &dir.join("raw")).unwrap();
    for (file, source) in &bundle.files {
        std::fs::write(dir.join(file), source).unwrap();
    }
    for script in ["prepare.py", "baseline.py"] {
        let out = run_python(&dir, &[script]);
        assert!(out.success(), "{label}: {script} failed:\n{}", out.stderr);
    }
    let header = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap().lines().next().unwrap().to_string();
    let test_header = header("data/test.csv");
    assert!(test_header.starts_with("id,") && !test_header.split(',').any(|c| c == bundle.target_column), "{label}: {test_header}");
    assert_eq!(header("data/answers.csv"), format!("id,{}", bundle.target_column), "{label}");
    assert_eq!(header("sample_submission.csv"), format!("id,{}", bundle.target_column), "{label}");

    let out = run_python(&dir, &["evaluate.py", "--submission_file", "submission.csv"]);
    let stdout = &out.stdout;
    assert!(out.success() && out.stderr.is_empty(), "{label}: evaluate failed:\n{}", out.stderr);
    assert_eq!(stdout.trim().lines().count(), 1, "{label}: {stdout}");
    let scores: BTreeMap<String, f64> = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let mut declared: Vec<&String> = bundle.metrics.iter().collect();
    declared.sort();
    assert_eq!(scores.keys().collect::<Vec<_>>(), declared, "{label}");
    assert!(scores.values().all(|v| v.is_finite() && *v >= 0.0), "{label}: {scores:?}");

    let prepared = PreparedTask::new(root.join("prepared"));
    copy_tree(&dir.join("data"), &prepared.eval_data()).unwrap();
    copy_tree(&dir.join("data"), &prepared.public_data()).unwrap();
    std::fs::remove_file(prepared.public_data().join("answers.csv")).unwrap();
    std::fs::create_dir_all(prepared.starter()).unwrap();
    for file in ["baseline.py", "evaluate.py", "sample_submission.csv"] {
        std::fs::copy(dir.join(file), prepared.starter().join(file)).unwrap();
    }
    (prepared, scores)
}

/// What the titles of a mirror dataset's tasks are about.
fn subject(dataset: &str, task: &str) -> &'static str {
    match (dataset, task) {
        ("iris", "classification") => "iris species",
        ("iris", _) => "iris petal width",
        ("wine", "classification") => "wine cultivar",
        ("wine", _) => "wine alcohol content",
        ("breast_cancer", _) => "breast tumour diagnosis",
        ("digits", _) => "handwritten digit",
        _ => "diabetes progression",
    }
}

/// The texts of a bundle agree with its data: the title names the dataset's subject and the
/// task type, the task statement opens with the title, and a regression or a ranking by a
/// quantity speaks of targets, never of classes (a class imbalance twist is a rare upper range
/// of the target there).
fn assert_titled_for_the_data(label: &str, bundle: &TaskBundle, dataset: &str, task: &str, twist: &str) {
    let title = bundle.title.to_lowercase();
    assert!(title.starts_with(subject(dataset, task)) && title.contains(task), "{label}: title {:?}", bundle.title);
    assert!(bundle.description.starts_with(&format!("{}.\n", bundle.title)), "{label}: {}", bundle.description);
    let texts = format!("{}\n{}\n{}", bundle.title, bundle.description, bundle.dataset_description).to_lowercase();
    if task == "classification" {
        if twist == "class imbalance" {
            assert!(title.ends_with("under class imbalance"), "{label}: {title}");
        }
    } else {
        assert!(!texts.contains("class"), "{label}: a task with a numeric target mentions classes:\n{texts}");
        if twist == "class imbalance" {
            assert!(title.ends_with("with rare high targets") && texts.contains("top quartile"), "{label}: {title}");
        }
    }
}

/// The baseline leaves headroom: its priority metric is not within the configured margin of
/// the metric's best value.
fn assert_headroom(label: &str, bundle: &TaskBundle, passed: &gymforge_actors::validate::Passed) {
    let metric = &bundle.priority_metric;
    let (base, trivial) = (passed.baseline_scores[metric], passed.sample_scores[metric]);
    let margin = Config::embedded().pipeline.baseline_headroom;
    let saturated = gymforge_actors::validate::saturation(metric, bundle.direction, base, trivial, margin);
    assert!(saturated.is_none(), "{label}: {saturated:?}");
    assert!(gymforge_actors::validate::metric_bound(metric).is_some(), "{label}: {metric} has no known bound");
}

/// Every task type each mirror dataset supports passes every check of the pipeline (the
/// baseline leaves headroom included), with a sensible baseline score, and its texts agree
/// with the data. Regression on iris and wine predicts a numeric column (petal width,
/// alcohol); ranking orders rows by diabetes' target or by that numeric column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_bundles_pass_every_check_for_every_dataset_and_task_type() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = make_raw(&tmp.path().join("raw"), &ALL_DATASETS);
    let mut cases: Vec<(&str, &str)> = ALL_DATASETS.iter().map(|name| (*name, task_type(name))).collect();
    cases.extend([("iris", "regression"), ("wine", "regression")]);
    cases.extend(["diabetes", "iris", "wine"].map(|name| (name, "ranking")));
    for (name, task) in cases {
        let d = &raw[name];
        let answer = sim::answer(&sim_cfg(7, 0.0), &codegen_messages(&idea(&format!("{name} challenge"), task, "none"), &d.meta)).unwrap();
        let bundle = bundle_from(&answer);
        let label = format!("{name} {task}");
        assert_titled_for_the_data(&label, &bundle, name, task, "none");
        let (failure, passed) = check(&bundle, &d.raw_dir, &tmp.path().join(label.replace(' ', "-"))).await;
        let passed = passed.unwrap_or_else(|| panic!("{label}: {failure:#?}"));
        assert_headroom(&label, &bundle, &passed);
        let header = |path: PathBuf| std::fs::read_to_string(path).unwrap().lines().next().unwrap().to_string();
        assert_eq!(header(passed.prepared.eval_data().join("answers.csv")), format!("id,{}", bundle.target_column), "{label}");
        assert_eq!(header(passed.prepared.starter().join("sample_submission.csv")), format!("id,{}", bundle.target_column), "{label}");
        let scores = &passed.baseline_scores;
        eprintln!("{label}: {:?} baseline {} naive {}", bundle.title, format_scores(scores), format_scores(&passed.sample_scores));
        match (name, task) {
            ("diabetes", "regression") => assert!(scores["rmse"] > 10.0 && scores["rmse"] < 100.0, "{scores:?}"),
            ("iris", "regression") => {
                assert_eq!(bundle.target_column, "petal_width_cm");
                assert!(scores["rmse"] < 0.5, "{label}: {scores:?}");
            }
            ("wine", "regression") => {
                assert_eq!(bundle.target_column, "alcohol");
                assert!(scores["rmse"] < 0.8, "{label}: {scores:?}");
            }
            (_, "ranking") => {
                assert_eq!((bundle.priority_metric.as_str(), bundle.metrics.len()), ("ndcg_at_10", 2), "{label}");
                assert!(scores["ndcg_at_10"] > 0.6, "{label}: {scores:?}");
            }
            _ => assert!(scores["accuracy"] > 0.8, "{label}: {scores:?}"),
        }
    }
}

/// Ranking breast tumours by class leaves no headroom: a linear model already puts ten
/// malignant rows first, so the checks reject the bundle as `baseline_saturated` (which is why
/// the simulated curator does not propose the dataset for ranking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranking_by_a_well_separated_class_leaves_no_headroom() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = make_raw(&tmp.path().join("raw"), &["breast_cancer"]);
    let d = &raw["breast_cancer"];
    let bundle =
        bundle_from(&sim::answer(&sim_cfg(7, 0.0), &codegen_messages(&idea("Tumour triage", "ranking", "none"), &d.meta)).unwrap());
    assert_eq!(bundle.title, "Malignant breast tumour diagnosis ranking");
    let (failure, passed) = check(&bundle, &d.raw_dir, &tmp.path().join("check")).await;
    assert!(passed.is_none());
    let failure = failure.unwrap();
    assert_eq!((failure.step.as_str(), failure.reason.as_str()), ("headroom", "baseline_saturated"), "{failure:#?}");
    assert!(failure.problem.starts_with("baseline ndcg_at_10 1.0000 leaves no headroom: the best possible is 1.0"), "{}", failure.problem);
}

/// Every twist that changes the data, for classification and regression, passes the
/// pipeline's own task checks
/// (leak check, reproducibility, baseline beats the naive submission, wrong shape rejected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_twist_passes_the_task_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = make_raw(&tmp.path().join("raw"), &["iris", "diabetes", "wine"]);
    // The twists that change the data; "compute budget" only changes the task text.
    let twists = ["few labels", "class imbalance", "noisy labels", "distribution shift"];
    let mut cases: Vec<(&str, &str, &str)> = Vec::new();
    for name in ["iris", "diabetes"] {
        cases.extend(twists.iter().map(|twist| (name, task_type(name), *twist)));
    }
    // Ranking by a numeric column of a class-labelled dataset and by the dataset's target.
    cases.extend(["few labels", "class imbalance", "distribution shift"].map(|twist| ("wine", "ranking", twist)));
    cases.push(("diabetes", "ranking", "distribution shift"));
    for (name, task, twist) in cases {
        {
            let d = &raw[name];
            let answer = sim::answer(&sim_cfg(11, 0.0), &codegen_messages(&idea("Twisted", task, twist), &d.meta)).unwrap();
            let bundle = bundle_from(&answer);
            let label = format!("{name} / {task} / {twist}");
            assert_titled_for_the_data(&label, &bundle, name, task, twist);
            let work = tmp.path().join(format!("check-{name}-{task}-{}", twist.replace(' ', "-")));
            let (failure, passed) = check(&bundle, &d.raw_dir, &work).await;
            assert!(failure.is_none(), "{label}: {failure:#?}");
            let passed = passed.unwrap();
            assert_headroom(&label, &bundle, &passed);
            eprintln!(
                "{label}: {:?} baseline {} naive {}",
                bundle.title,
                format_scores(&passed.baseline_scores),
                format_scores(&passed.sample_scores)
            );
            assert!(passed.baseline_scores.values().all(|v| v.is_finite() && *v >= 0.0));
            if twist == "few labels" {
                let train = std::fs::read_to_string(passed.prepared.public_data().join("train.csv")).unwrap();
                let unlabelled = train.lines().skip(1).filter(|l| l.ends_with(',')).count();
                let rows = train.lines().count() - 1;
                assert!(unlabelled * 2 > rows, "{name}: {unlabelled} of {rows} unlabelled");
            }
            if twist == "distribution shift" {
                assert_shifted(&passed.prepared, &bundle.target_column, name);
            }
        }
    }
}

/// The test rows of a shifted task all lie at or above the training rows' range on one feature.
/// Every model expression the agent can write, for the tasks it meets (classification and
/// regression, with the twists that change its choice of model), constructs and fits with the
/// sandbox's scikit-learn: one Python process for all of them, ensembles shrunk to five members.
#[test]
fn every_model_the_agent_writes_is_valid_scikit_learn() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = make_raw(&tmp.path().join("raw"), &["iris", "diabetes"]);
    let mut cases = Vec::new();
    for name in ["iris", "diabetes"] {
        for twist in ["none", "class imbalance", "noisy labels", "compute budget"] {
            let bundle = bundle_from(
                &sim::answer(&sim_cfg(3, 0.0), &codegen_messages(&idea("Models", task_type(name), twist), &raw[name].meta)).unwrap(),
            );
            for (expression, regression) in sim::model_expressions(&bundle.description) {
                let case = format!("({expression:?}, {})", if regression { "True" } else { "False" });
                if !cases.contains(&case) {
                    cases.push(case);
                }
            }
        }
    }
    assert!(cases.iter().any(|c| c.contains("Regressor")) && cases.iter().any(|c| c.contains("class_weight")), "{cases:?}");
    let script = [
        "import numpy as np",
        "from sklearn.ensemble import *",
        "rng = np.random.default_rng(0)",
        "X = rng.normal(size=(80, 4))",
        "y_class = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)",
        "y_value = 2 * X[:, 0] + rng.normal(size=80)",
        "for expr, regression in [CASES]:",
        "    model = eval(expr)",
        "    params = model.get_params()",
        "    model.set_params(**{k: 5 for k in ('n_estimators', 'max_iter') if k in params})",
        "    model.fit(X, y_value if regression else y_class)",
        "    assert len(model.predict(X)) == 80, expr",
        "print('fitted', COUNT)",
    ]
    .join("\n")
    .replace("CASES", &cases.join(", "))
    .replace("COUNT", &cases.len().to_string());
    let out = std::process::Command::new(python_env().python()).arg("-c").arg(&script).env("OMP_NUM_THREADS", "1").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("fitted {}", cases.len())));
}

/// The metrics evaluate.py computes with numpy alone equal scikit-learn's, on random labels and
/// scores with many ties (NDCG averages the gains of tied rows, as scikit-learn does), at the
/// cut-offs the tasks use and with no relevant row at all.
#[test]
fn the_metrics_evaluate_computes_with_numpy_equal_scikit_learns() {
    let script = [
        "import numpy as np",
        "from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, ndcg_score",
        "ns = {'np': np}",
        "for source in SOURCES:",
        "    exec(source, ns)",
        "rng = np.random.default_rng(0)",
        "pairs = []",
        "for _ in range(200):",
        "    n = int(rng.integers(2, 60))",
        "    t, p = rng.integers(0, 4, n), rng.integers(0, 5, n)",
        "    pairs += [(ns['accuracy'](t, p), accuracy_score(t, p))]",
        "    pairs += [(ns['f1_macro'](t, p), f1_score(t, p, average='macro', zero_division=0))]",
        "    y, q = rng.normal(size=n), rng.normal(size=n)",
        "    pairs += [(ns['rmse'](y, q), np.sqrt(mean_squared_error(y, q))), (ns['mae'](y, q), mean_absolute_error(y, q))]",
        "    scores = rng.integers(0, 4, n).astype(float)",
        "    for relevance in (rng.integers(0, 3, n).astype(float), np.zeros(n)):",
        "        for k in (None, 10, 3):",
        "            pairs += [(ns['ndcg'](relevance, scores, k=k), ndcg_score([relevance], [scores], k=k))]",
        "worst = max(abs(ours - theirs) for ours, theirs in pairs)",
        "assert worst < 1e-12, worst",
        "print('compared', len(pairs))",
    ]
    .join("\n")
    .replace("SOURCES", &format!("{:?}", sim::EVALUATE_METRICS));
    let out = std::process::Command::new(python_env().python()).arg("-c").arg(&script).env("OMP_NUM_THREADS", "1").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("compared 2000"), "{}", String::from_utf8_lossy(&out.stdout));
}

fn assert_shifted(prepared: &PreparedTask, target: &str, name: &str) {
    let read = |file: &str| -> (Vec<String>, Vec<Vec<f64>>) {
        let text = std::fs::read_to_string(prepared.public_data().join(file)).unwrap();
        let mut lines = text.lines();
        let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
        let rows = lines.map(|l| l.split(',').map(|v| v.parse::<f64>().unwrap_or(f64::NAN)).collect()).collect();
        (header, rows)
    };
    let (header, train) = read("train.csv");
    let (test_header, test) = read("test.csv");
    let shifted = test_header.iter().enumerate().filter(|(_, c)| *c != "id" && *c != target).any(|(j, column)| {
        let i = header.iter().position(|c| c == column).unwrap();
        let train_max = train.iter().map(|r| r[i]).fold(f64::NEG_INFINITY, f64::max);
        let test_min = test.iter().map(|r| r[j]).fold(f64::INFINITY, f64::min);
        test_min >= train_max
    });
    assert!(shifted, "{name}: no feature separates the test rows from the training rows");
}

fn seed_with_bug(bug: Bug, title: &str) -> u64 {
    (0..10_000).find(|&s| sim::draft_bug(&sim_cfg(s, 1.0), title) == Some(bug)).expect("a seed for every bug")
}

/// Each bug of the catalogue makes the first draft fail the checks, and the simulated debug
/// answer, built from the real failing output, passes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_bug_fails_and_its_repair_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = make_raw(&tmp.path().join("raw"), &ALL_DATASETS);
    for (i, bug) in Bug::ALL.into_iter().enumerate() {
        let name = ALL_DATASETS[i % ALL_DATASETS.len()];
        let d = &raw[name];
        let title = format!("Challenge with {}", bug.as_str());
        let cfg = sim_cfg(seed_with_bug(bug, &title), 1.0);
        let codegen = codegen_messages(&idea(&title, task_type(name), "none"), &d.meta);
        let draft = bundle_from(&sim::answer(&cfg, &codegen).unwrap());

        let (failure, passed) = check(&draft, &d.raw_dir, &tmp.path().join(format!("{name}-draft"))).await;
        assert!(passed.is_none(), "{name}: the draft with {bug:?} passed");
        let failure = failure.unwrap();
        let expected_reason = match bug {
            Bug::MisspelledColumn => DropReason::PrepareFailed,
            Bug::MissingNumpyImport => DropReason::BaselineFailed,
            Bug::ExtraEvaluateOutput => DropReason::EvalFormat,
            Bug::TargetInTestFile => DropReason::Leak,
            Bug::WrongAnswersPath => DropReason::EvalFailed,
        };
        assert_eq!(failure.reason, expected_reason, "{bug:?}: {failure:#?}");

        let fixed = bundle_from(&sim::answer(&cfg, &debug_messages(&codegen, &draft, &failure)).unwrap());
        assert_ne!(fixed, draft, "{bug:?}: the debug answer changed nothing");
        let clean = bundle_from(&sim::answer(&sim_cfg(cfg.seed, 0.0), &codegen).unwrap());
        assert_eq!(fixed, clean, "{bug:?}: the repair differs from the clean bundle");
        let (failure, passed) = check(&fixed, &d.raw_dir, &tmp.path().join(format!("{name}-fixed"))).await;
        assert!(passed.is_some(), "{bug:?}: the repaired bundle fails: {failure:#?}");
    }
}

/// A failure the simulator does not recognise gets the bundle back unchanged.
#[test]
fn unrecognised_failures_are_not_fixed() {
    let meta = DatasetMeta {
        id: "sklearn/iris".into(),
        revision: "0".into(),
        config: "default".into(),
        splits: vec!["train".into()],
        features: vec![
            Feature { name: "sepal_length_cm".into(), dtype: "float64".into(), class_names: None },
            Feature { name: "target".into(), dtype: "int64".into(), class_names: Some(vec!["a".into(), "b".into()]) },
        ],
        num_rows: BTreeMap::from([("train".to_string(), 150)]),
        num_bytes_parquet: 1,
        description: String::new(),
        parquet_files: vec![],
    };
    let codegen = codegen_messages(&idea("Iris", "classification", "none"), &meta);
    let bundle = bundle_from(&sim::answer(&sim_cfg(1, 0.0), &codegen).unwrap());
    let failure = Failure {
        step: "baseline".into(),
        reason: DropReason::BaselineNotReproducible,
        problem: "the baseline scored {'accuracy': 0.9} then {'accuracy': 0.8}: fix every random seed".into(),
        output: String::new(),
    };
    let answer = bundle_from(&sim::answer(&sim_cfg(1, 0.0), &debug_messages(&codegen, &bundle, &failure)).unwrap());
    assert_eq!(answer, bundle);
}

/// Runs one agent rollout the way the pipeline does, executing commands with bash in a real
/// workspace; returns the actions and the scores of validate and submit.
async fn rollout(
    seed: u64,
    task: &AcceptedTask,
    prepared: &PreparedTask,
    dir: &Path,
    max_steps: u32,
) -> (Vec<String>, Vec<String>, Vec<BTreeMap<String, f64>>) {
    let workspace = dir.join("workspace");
    copy_tree(&prepared.starter(), &workspace).unwrap();
    copy_tree(&prepared.public_data(), &workspace.join("data")).unwrap();
    let system = render(
        &prompt("agent_system"),
        &[("command_docs", &command_docs()), ("training_timeout", &task.bundle.training_timeout.to_string())],
    )
    .unwrap();
    let description = gymforge_actors::rollout::agent_description(task);
    let footer = |step: u32| gymforge_actors::agent::footer(step, max_steps, "n/a", WORKSPACE);
    let first = render(&prompt("agent_task"), &[("description", &description), ("footer", &footer(0))]).unwrap();
    let mut history: Vec<(String, String)> = vec![("system".into(), system), ("user".into(), first)];
    let (mut actions, mut observations, mut scores) = (Vec::new(), Vec::new(), Vec::new());
    let cfg = sim_cfg(seed, 0.0);
    for step in 1..=max_steps {
        let mut messages = history.clone();
        let mut errors = 0;
        let (response, action) = loop {
            let reply = sim::answer(&cfg, &messages).unwrap();
            match parse_action(&reply) {
                Ok((_, action)) => break (reply, action),
                Err(problem) => {
                    errors += 1;
                    assert!(errors < 3, "three malformed answers in a row");
                    messages.push(("assistant".into(), reply));
                    messages.push(("user".into(), format_error(&problem)));
                }
            }
        };
        history.push(("assistant".into(), response));
        actions.push(action.trim().to_string());
        let evaluate = |n: usize| {
            let eval_dir = dir.join(format!("eval-{n}"));
            let submission = workspace.join("submission.csv");
            async move { evaluate_submission(sandbox(), prepared, &submission, &eval_dir, Duration::from_secs(600), "eval").await.unwrap() }
        };
        let observation = match action.trim() {
            "submit" => {
                let out = evaluate(scores.len()).await;
                scores.push(parse_scores(&out).expect("the submission scores"));
                break;
            }
            "validate" => {
                let out = evaluate(scores.len()).await;
                match parse_scores(&out) {
                    Ok(s) => {
                        let text = format!(
                            "Your code produced a valid submission artefact at {WORKSPACE}/submission.csv.\n\
                             Baseline Score: {}\nEvaluation Score: {}",
                            format_scores(&task.baseline_scores),
                            format_scores(&s)
                        );
                        scores.push(s);
                        text
                    }
                    Err(e) => format!("Evaluation of your submission failed: {e}"),
                }
            }
            command => {
                let ws = workspace.clone();
                let command = command.to_string();
                let out =
                    tokio::task::spawn_blocking(move || run_in_sandbox(&ws, vec!["bash".into(), "-c".into(), command])).await.unwrap();
                let mut text = out.stdout;
                text.push_str(&out.stderr);
                text.trim_end().to_string()
            }
        };
        observations.push(observation.clone());
        let body = if observation.trim().is_empty() {
            "Your command ran successfully and did not produce any output.".to_string()
        } else {
            observation
        };
        history.push(("user".into(), render(&prompt("agent_next"), &[("observation", &body), ("footer", &footer(step))]).unwrap()));
    }
    (actions, observations, scores)
}

/// The simulated agent solves real tasks: its train.py runs, validates and beats or matches
/// a sensible level, and the run ends with a scored submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_solves_real_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = make_raw(&tmp.path().join("raw"), &["wine", "diabetes"]);
    for name in ["wine", "diabetes"] {
        let d = &raw[name];
        let topic = idea(&format!("{name} agent task"), task_type(name), if name == "wine" { "class imbalance" } else { "few labels" });
        let bundle = bundle_from(&sim::answer(&sim_cfg(5, 0.0), &codegen_messages(&topic, &d.meta)).unwrap());
        let (prepared, baseline_scores) = prepare_task(name, &bundle, &d.raw_dir, &tmp.path().join(format!("{name}-task")));
        let task = AcceptedTask {
            task_id: format!("{}_t0001", bundle.name),
            unit: "t0001".into(),
            topic,
            dataset: d.meta.clone(),
            bundle,
            baseline_scores,
            rounds: 1,
        };
        // One rollout per task; every model the agent can write is checked by a unit test.
        let seed = u64::from(name == "diabetes");
        let dir = tmp.path().join(format!("{name}-rollout"));
        let (actions, observations, scores) = rollout(seed, &task, &prepared, &dir, 30).await;
        assert_eq!(actions.last().map(String::as_str), Some("submit"), "{name}: {actions:#?}");
        assert!(actions.iter().any(|a| a.starts_with("cat << 'EOF' > train.py")), "{name}: the agent never wrote train.py");
        for (action, observation) in actions.iter().zip(&observations) {
            if action.starts_with("python") {
                assert!(!observation.contains("Traceback"), "{name}: {action} crashed:\n{observation}");
            }
        }
        let last = scores.last().expect("a scored submission");
        let (metric, reasonable) = if name == "diabetes" { ("rmse", last["rmse"] < 80.0) } else { ("accuracy", last["accuracy"] > 0.7) };
        assert!(reasonable, "{name}: final {metric} {last:?}");
    }
}

/// The HTTP server: an OpenAI-shaped completion, the model list, the simulated-header on every
/// response and an OpenAI-shaped error for unknown prompts.
#[tokio::test]
async fn the_server_speaks_openai() {
    let cfg = SimConfig { seed: 3, latency_ms: 5, latency_p99_ms: 20, buggy_draft_rate: 0.5, ..SimConfig::default() };
    let (addr, handle) = sim::serve(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let client = gymforge::http::client_builder().build().unwrap();
    let base = format!("http://{addr}/v1");
    let topic_user = render(
        &prompt("topic_user"),
        &[("domain", "chemistry"), ("task_type", "classification"), ("modality", "tabular"), ("twist", "none"), ("taken", "(none yet)")],
    )
    .unwrap();
    let body = serde_json::json!({
        "model": "gymforge-sim-teacher",
        "messages": [{"role": "system", "content": prompt("topic_system")}, {"role": "user", "content": topic_user}],
        "max_tokens": 800, "temperature": 0.7, "top_p": 0.95, "seed": 42,
        "response_format": {"type": "json_object"}, "some_extension": {"x": 1},
    });
    let response = client.post(format!("{base}/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gymforge-simulated"], "true");
    let v: serde_json::Value = response.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["system_fingerprint"], "gymforge-simulated-teacher");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let idea: serde_json::Value = serde_json::from_str(content).unwrap();
    assert!(idea["title"].is_string() && idea["idea"].is_string());
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"].as_u64().unwrap(), content.chars().count().div_ceil(4) as u64);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Deterministic: the same request, the same content; another seed, another idea.
    let again: serde_json::Value = client.post(format!("{base}/chat/completions")).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["choices"][0]["message"]["content"], v["choices"][0]["message"]["content"]);
    let mut other_seed = body.clone();
    let differs = {
        let mut found = false;
        for s in 0..5 {
            other_seed["seed"] = serde_json::json!(s);
            let o: serde_json::Value =
                client.post(format!("{base}/chat/completions")).json(&other_seed).send().await.unwrap().json().await.unwrap();
            found |= o["choices"][0]["message"]["content"] != v["choices"][0]["message"]["content"];
        }
        found
    };
    assert!(differs);

    let models = client.get(format!("{base}/models")).send().await.unwrap();
    assert_eq!(models.headers()["x-gymforge-simulated"], "true");
    let models: serde_json::Value = models.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "gymforge-sim-teacher");
    assert_eq!(models["data"][0]["owned_by"], "gymforge-simulated");

    let unknown = serde_json::json!({"model": "x", "messages": [{"role": "user", "content": "Write me a poem."}]});
    let response = client.post(format!("{base}/chat/completions")).json(&unknown).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-gymforge-simulated"], "true");
    let err: serde_json::Value = response.json().await.unwrap();
    assert_eq!(err["error"]["message"], "the simulated teacher does not recognise this prompt");
    assert_eq!(err["error"]["type"], "invalid_request_error");

    let broken = client.post(format!("{base}/chat/completions")).body("{not json").send().await.unwrap();
    assert_eq!(broken.status(), 400);
    handle.abort();
}

/// Same seed and messages, same answer at every stage; another seed changes answers.
#[test]
fn answers_are_deterministic_per_seed() {
    let meta = DatasetMeta {
        id: "sklearn/wine".into(),
        revision: "0".into(),
        config: "default".into(),
        splits: vec!["train".into()],
        features: vec![
            Feature { name: "alcohol".into(), dtype: "float64".into(), class_names: None },
            Feature { name: "malic_acid".into(), dtype: "float64".into(), class_names: None },
            Feature {
                name: "target".into(),
                dtype: "int64".into(),
                class_names: Some(vec!["class_0".into(), "class_1".into(), "class_2".into()]),
            },
        ],
        num_rows: BTreeMap::from([("train".to_string(), 178)]),
        num_bytes_parquet: 1,
        description: String::new(),
        parquet_files: vec![],
    };
    let dataset_user = render(
        &prompt("dataset_user"),
        &[("title", "Wine Origin"), ("task_type", "classification"), ("idea", "x"), ("rejected", "(none)")],
    )
    .unwrap();
    let conversations = [
        vec![("system".to_string(), prompt("dataset_system")), ("user".to_string(), dataset_user)],
        codegen_messages(&idea("Wine Origin", "classification", "few labels"), &meta),
    ];
    for messages in &conversations {
        let a = sim::answer(&sim_cfg(1, 0.5), messages).unwrap();
        assert_eq!(a, sim::answer(&sim_cfg(1, 0.5), messages).unwrap());
        let varies = (2..40).any(|s| sim::answer(&sim_cfg(s, 0.5), messages).unwrap() != a);
        assert!(varies, "no seed changes the answer to {}", &messages[1].1[..40]);
    }
}
