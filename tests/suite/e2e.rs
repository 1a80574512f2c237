//! End-to-end tests of `gymforge run` on the embedded default: the real binary, the simulated
//! teacher and the Hub mirror on loopback, generated code in the bubblewrap sandbox.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

use common::{accepted_tasks, actions, files_under, traj_files};
use gymforge::config::Config;
use gymforge::export::{MlgymDatasetConfig, MlgymTaskConfig};
use gymforge_actors::paths::copy_tree;
use gymforge_actors::ports::{Mount, Sandbox, SandboxJob};
use serde::Deserialize;

fn gymforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gymforge"));
    cmd.env("RUST_LOG", "warn").env_remove("RUST_BACKTRACE");
    cmd
}

fn run_to_end(out: &Path, extra: &[&str]) -> String {
    run_to_end_with(out, extra, 0)
}

/// Runs a batch to its end and expects exit status `code` (3: short of its target).
fn run_to_end_with(out: &Path, extra: &[&str], code: i32) -> String {
    let output = gymforge().args(["run", "--out"]).arg(out).args(extra).stdin(Stdio::null()).output().expect("gymforge runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(code), "gymforge run\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Step {
    action: String,
    observation: String,
    response: String,
    state: String,
    thought: String,
    execution_time: f64,
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Python's own `str.format(dataset_docs=...)` on the description.
fn python_formats(description: &str) -> bool {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), description).unwrap();
    Command::new("/usr/bin/python3")
        .args(["-c", "import sys; open(sys.argv[1]).read().format(dataset_docs='DOCS')"])
        .arg(file.path())
        .status()
        .unwrap()
        .success()
}

async fn sandbox() -> gymforge::sandbox::BwrapSandbox {
    let config = Config::embedded();
    let (_, sandbox) = gymforge::run::sandbox(&config, &std::env::temp_dir(), &|_| {}).await.expect("sandbox works");
    std::sync::Arc::try_unwrap(sandbox).ok().expect("sole owner")
}

/// Copies an exported task's starter code and data into a fresh workspace, runs the baseline
/// and the evaluation there (in the sandbox), and returns the scores evaluate.py printed.
async fn rerun_exported_baseline(sandbox: &gymforge::sandbox::BwrapSandbox, task_dir: &Path) -> BTreeMap<String, f64> {
    let ws = tempfile::tempdir().unwrap();
    copy_tree(task_dir, ws.path()).unwrap();
    let job = |command: &str| SandboxJob {
        label: "e2e baseline".into(),
        workdir: ws.path().to_path_buf(),
        workdir_inside: "/home/agent/workspace".into(),
        mounts: Vec::<Mount>::new(),
        command: vec!["bash".into(), "-c".into(), command.into()],
        timeout: Duration::from_secs(600),
    };
    let out = sandbox.run(job("python baseline.py")).await.unwrap();
    assert!(out.success(), "baseline failed: {}", out.stderr);
    let out = sandbox.run(job("python evaluate.py --submission_file submission.csv")).await.unwrap();
    assert!(out.success(), "evaluate failed: {}", out.stderr);
    assert!(out.stderr.trim().is_empty(), "evaluate wrote to stderr: {}", out.stderr);
    let value: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("exactly one JSON object");
    serde_json::from_value(value).expect("a JSON object of numbers")
}

fn count_code_blocks(text: &str) -> usize {
    text.lines().filter(|l| l.trim_start().starts_with("```")).count() / 2
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_default_produces_valid_mlgym_tasks_trajectories_and_sft() {
    let out = tempfile::tempdir().unwrap();
    let stdout = run_to_end(out.path(), &["--tasks", "3", "--rollouts", "2"]);
    assert!(stdout.contains("simulated"), "the summary says the teacher is simulated:\n{stdout}");

    // Tasks: MLGym loads them, the description survives str.format, the data is local.
    let tasks = yaml_files(&out.path().join("mlgym/configs/tasks"));
    assert_eq!(tasks.len(), 3, "three accepted tasks");
    let sandbox = sandbox().await;
    let mut datasets = BTreeSet::new();
    for path in &tasks {
        let task: MlgymTaskConfig = serde_norway::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{} does not load as an MLGym TaskConfig: {e}", path.display()));
        assert!(python_formats(&task.description), "{}: description breaks str.format", task.id);
        assert_eq!(task.dataset_configs.len(), 1);
        let dataset_path = out.path().join("mlgym/configs").join(&task.dataset_configs[0]);
        let dataset: MlgymDatasetConfig = serde_norway::from_str(&std::fs::read_to_string(&dataset_path).unwrap())
            .unwrap_or_else(|e| panic!("{} does not load as an MLGym DatasetConfig: {e}", dataset_path.display()));
        assert_eq!(dataset.is_local, Some(true));
        datasets.insert(dataset.name.clone());
        for starter in &task.starter_code {
            assert!(out.path().join("mlgym").join(starter).is_file(), "starter file {starter} exists");
        }
        assert!(out.path().join("mlgym").join(&dataset.data_path).join("train.csv").is_file());
        // The baseline, rerun in a copy of the workspace, reproduces the recorded score.
        let recorded = &task.baseline_scores[0];
        let task_dir = out.path().join("mlgym/data").join(&task.id);
        let scores = rerun_exported_baseline(&sandbox, &task_dir).await;
        assert_eq!(scores.keys().collect::<Vec<_>>(), recorded.keys().collect::<Vec<_>>());
        for (k, v) in recorded {
            assert!((scores[k] - v).abs() <= 1e-6 * v.abs().max(1.0), "{}: {k} {} vs recorded {v}", task.id, scores[k]);
        }
    }

    // tasks.json carries the metric spec and provenance.
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("mlgym/tasks.json")).unwrap()).unwrap();
    assert_eq!(index.as_array().unwrap().len(), 3);

    // Trajectories: every step has MLGym's fields; every assistant turn holds one command.
    let trajs = traj_files(out.path());
    assert_eq!(trajs.len(), 6, "two rollouts for each of three tasks");
    let mut kept_per_task: BTreeMap<String, usize> = BTreeMap::new();
    for path in &trajs {
        let traj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let steps: Vec<Step> = serde_json::from_value(traj["trajectory"].clone()).expect("steps have MLGym's fields");
        assert!(!steps.is_empty());
        for step in &steps {
            serde_json::from_str::<serde_json::Value>(&step.state).expect("state is a JSON string");
        }
        for item in traj["history"].as_array().unwrap() {
            if item["role"] == "assistant" {
                assert_eq!(count_code_blocks(item["content"].as_str().unwrap()), 1, "one code block per assistant turn");
            }
        }
        assert!(path.with_file_name("results.json").is_file());
        if !traj["info"]["score"].as_array().unwrap().is_empty() {
            let task = path.file_stem().unwrap().to_string_lossy().to_string();
            *kept_per_task.entry(task).or_default() += 1;
        }
    }

    // SFT: at least one kept trajectory per task; conversations start with the system message
    // and end with an assistant turn.
    let sft = std::fs::read_to_string(out.path().join("sft/train.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = sft.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut sft_tasks = BTreeSet::new();
    for line in &lines {
        let messages = line["messages"].as_array().unwrap();
        assert_eq!(messages.first().unwrap()["role"], "system");
        assert_eq!(messages.last().unwrap()["role"], "assistant");
        // What the model saw at its last step: the last 5 observations verbatim, older ones elided.
        let observations: Vec<&str> =
            messages.iter().filter(|m| m["role"] == "user").skip(1).map(|m| m["content"].as_str().unwrap()).collect();
        let elided = observations.iter().filter(|o| o.starts_with("Old output omitted (")).count();
        assert_eq!(elided, observations.len().saturating_sub(5), "{observations:#?}");
        sft_tasks.insert(line["meta"]["task_id"].as_str().unwrap().to_string());
    }
    assert_eq!(sft_tasks.len(), 3, "every task has a kept trajectory: {kept_per_task:?}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert!(report.is_object());

    // `gymforge export sft` with a tight token budget, ShareGPT layout and the baseline filter.
    let file = out.path().join("sharegpt.jsonl");
    let output = gymforge()
        .args(["export", "sft", "--sharegpt", "--beats-baseline", "--token-budget", "6000", "--out"])
        .arg(out.path())
        .arg("--file")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{said}{}", String::from_utf8_lossy(&output.stderr));
    assert!(said.contains(&format!("of {} trajectories", trajs.len())), "{said}");
    let exported: Vec<serde_json::Value> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for line in &exported {
        assert_eq!(line["meta"]["beats_baseline"], true);
        assert!(line["meta"]["tokens"].as_u64().unwrap() <= 6000, "{}", line["meta"]);
        let turns = line["conversations"].as_array().unwrap();
        assert_eq!(turns.first().unwrap()["from"], "system");
        assert_eq!(turns.last().unwrap()["from"], "gpt");
    }
    let kept: u64 = said.split_whitespace().nth(2).and_then(|n| n.parse().ok()).unwrap();
    assert_eq!(kept, exported.len() as u64, "{said}");

    // A budget no example fits: keeping nothing fails, says how many and why, writes nothing.
    let tiny = out.path().join("tiny.jsonl");
    let output =
        gymforge().args(["export", "sft", "--token-budget", "10", "--out"]).arg(out.path()).arg("--file").arg(&tiny).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("all {} trajectories were left out", trajs.len())), "{stderr}");
    assert!(stderr.contains("over the token budget (--token-budget 10)"), "{stderr}");
    assert!(!tiny.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_run_then_resume_completes_without_redoing_or_duplicating() {
    let out = tempfile::tempdir().unwrap();
    let mut child = gymforge()
        .args(["run", "--tasks", "3", "--rollouts", "2", "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(common::Reaped)
        .unwrap();
    // Wait until some tasks are accepted but the batch is not over, then kill without warning.
    let db = out.path().join(".gymforge/state.db");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        assert!(Instant::now() < deadline, "the run made no progress");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        if db.exists() {
            let store = gymforge::store::SqliteStore::open(&db).unwrap();
            let times = store.stage_result_times().unwrap();
            if times.iter().any(|(_, stage, _)| stage == "export") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = gymforge::store::SqliteStore::open(&db).unwrap().stage_result_times().unwrap();
    assert!(!out.path().join("report.json").exists(), "killed before the end");

    run_to_end(out.path(), &["--tasks", "3", "--rollouts", "2"]);

    let after: BTreeMap<(String, String), String> =
        gymforge::store::SqliteStore::open(&db).unwrap().stage_result_times().unwrap().into_iter().map(|(u, s, t)| ((u, s), t)).collect();
    for (unit, stage, time) in &before {
        assert_eq!(after.get(&(unit.clone(), stage.clone())), Some(time), "{unit} {stage} was redone after the resume");
    }
    assert_eq!(yaml_files(&out.path().join("mlgym/configs/tasks")).len(), 3);
    let trajs = traj_files(out.path());
    assert_eq!(trajs.len(), 6, "exactly two rollouts per task, no duplicates: {trajs:?}");
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("mlgym/tasks.json")).unwrap()).unwrap();
    let ids: BTreeSet<&str> = index.as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    // No temporary files left among the outputs.
    let state = out.path().join(".gymforge");
    let leftovers: Vec<PathBuf> = files_under(out.path())
        .into_iter()
        .filter(|p| !p.starts_with(&state) && p.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn panicking_stage_workers_are_restarted_and_the_batch_completes_within_rollout_budgets() {
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("faults.toml");
    // Half of all stage attempts panic and 5% more fail with an error, 30% of LLM requests fail in
    // one of six ways, and a dollar budget per rollout is smaller than a few agent steps cost at
    // the simulated prices.
    std::fs::write(
        &config,
        "[faults]\nworker_panic_rate = 0.5\nworker_error_rate = 0.05\n\n[run]\nmax_attempts = 8\n\n[agent]\ncost_limit = 0.001\n\n\
         [sim.faults]\nrate_429 = 0.1\nretry_after_ms = 50\nrate_500 = 0.05\nrate_503 = 0.05\nrate_reset = 0.05\n\
         rate_malformed = 0.03\nrate_truncated = 0.02\n",
    )
    .unwrap();
    let results = out.path().join("results");
    // The rollouts' cost limit ends them before a scored submission: the batch is short (3).
    run_to_end_with(&results, &["--config", config.to_str().unwrap(), "--tasks", "2", "--rollouts", "1"], 3);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(results.join("report.json")).unwrap()).unwrap();
    let restarts = report["events"]["by_kind"]["worker_restart"].as_u64().unwrap_or(0);
    assert!(restarts > 0, "faults were injected: {report}");
    // Every unit ended, done or dropped with a reason, within its attempts.
    let store = gymforge::store::SqliteStore::open(&results.join(".gymforge/state.db")).unwrap();
    for unit in store.units().unwrap() {
        use gymforge_actors::model::UnitStatus;
        assert_ne!(unit.status, UnitStatus::Pending, "{} never ended", unit.id);
        assert!(unit.status == UnitStatus::Done || unit.drop_reason.is_some(), "{} dropped without a reason", unit.id);
        assert!(unit.attempts <= 8, "{} took {} attempts", unit.id, unit.attempts);
    }
    assert_eq!(yaml_files(&results.join("mlgym/configs/tasks")).len(), 2);
    let trajs = traj_files(&results);
    assert_eq!(trajs.len(), 2);
    for path in trajs {
        let traj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let status = traj["info"]["exit_status"].as_str().unwrap_or_default();
        assert!(status.ends_with("(exit_cost)"), "{}: {status}", path.display());
        let stats = &traj["info"]["model_stats"];
        assert!(stats["total_cost"].as_f64().unwrap() > 0.001, "the budget was spent: {stats}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_run_with_llm_faults_replays_exactly_and_the_api_key_appears_nowhere() {
    const KEY: &str = "sk-e2e-SECRET-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("faults.toml");
    std::fs::write(
        &config,
        "[sim.faults]\nrate_429 = 0.05\nretry_after_ms = 50\nrate_429_bare = 0.03\nrate_500 = 0.05\nrate_reset = 0.03\n\
         rate_malformed = 0.04\nrate_truncated = 0.04\n\n[llm]\ncooldown_without_hint_ms = 100\n",
    )
    .unwrap();
    let record = dir.path().join("llm.jsonl");
    let (live, replayed) = (dir.path().join("live"), dir.path().join("replayed"));
    let mut logs = String::new();
    for (out, source) in [(&live, ["--record", record.to_str().unwrap()]), (&replayed, ["--replay", record.to_str().unwrap()])] {
        let output = gymforge()
            .env("OPENAI_API_KEY", KEY)
            .env("RUST_LOG", "debug")
            .args(["run", "--tasks", "1", "--rollouts", "1", "--config", config.to_str().unwrap(), "--out"])
            .arg(out)
            .args(source)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        logs.push_str(&stdout);
        logs.push_str(&stderr);
    }
    let report =
        |out: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap() };
    let (live_report, replay_report) = (report(&live), report(&replayed));
    let endpoint = &live_report["llm"]["gateway"]["endpoints"]["sim"];
    assert!(
        endpoint["rate_limited"].as_u64().unwrap() + endpoint["transient_failures"].as_u64().unwrap() > 0,
        "faults were injected: {endpoint}"
    );
    let differences: Vec<&str> = logs.lines().filter(|l| l.contains("differs from the recorded")).collect();
    assert_eq!(replay_report["llm"]["gateway"]["replay"]["mismatches"], 0, "the replay sent the recorded requests: {differences:#?}");

    // The same tasks, the same actions and scores, the same SFT data.
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    // The embedded mirror's port (in the parquet URLs) is the one thing that may change.
    assert_eq!(accepted_tasks(&live), accepted_tasks(&replayed));
    assert_eq!(actions(&live), actions(&replayed));
    assert!(!actions(&live).is_empty());
    assert_eq!(read(live.join("sft/train.jsonl")), read(replayed.join("sft/train.jsonl")));
    // MLGym's replay file: one line per trajectory, its assistant turns in order under the task
    // id, and which rollout unit it is.
    let replay_lines: Vec<serde_json::Value> = read(live.join("replay.jsonl")).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let trajectories = actions(&live);
    assert_eq!(replay_lines.len(), trajectories.len());
    let mut units = BTreeSet::new();
    for line in &replay_lines {
        let task = line["task_id"].as_str().unwrap();
        assert!(accepted_tasks(&live).as_array().unwrap().iter().any(|t| t["task_id"] == task));
        assert!(line[task].as_array().unwrap().iter().all(|t| t.as_str().unwrap().contains("```")));
        assert!(units.insert(line["unit"].as_str().unwrap().to_string()), "{line}");
    }
    assert_eq!(live_report["rollouts"], replay_report["rollouts"]);
    assert_eq!(live_report["llm"]["total"], replay_report["llm"]["total"]);

    // The key was sent (the simulated teacher received it as a bearer token) but is nowhere.
    assert!(!logs.contains(KEY), "a log line holds the API key");
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()), "{} holds the API key", file.display());
    }
}
