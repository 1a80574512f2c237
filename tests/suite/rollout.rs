//! Full rollouts through `gymforge run`, with the rollout stage routed to a scripted teacher on
//! loopback (the other stages use the simulated teacher). Each rollout of the one task plays a
//! scenario: every command of the agent interface in one persistent shell, format errors,
//! timeouts, step, context and wall-clock limits, and an agent that hunts for the answers.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use common::files_under;
use serde_json::{Value, json};

/// What the scripted teacher answers at each step of a scenario.
enum Answer {
    /// A well-formed answer holding this command.
    Run(&'static str),
    /// A malformed answer (no code block).
    Malformed,
}
use Answer::{Malformed, Run};

struct Scenario {
    name: &'static str,
    answers: Vec<Answer>,
    /// Prompt tokens the teacher claims each call used (to reach the context window).
    prompt_tokens: u64,
}

fn scenarios() -> Vec<Scenario> {
    let every_command = vec![
        Run("open \"baseline.py\""),
        Run("goto 2"),
        Run("scroll_down"),
        Run("scroll_up"),
        Run("search_file \"import\""),
        Run("search_dir \"import\""),
        Run("find_file \"*.py\""),
        Run("create notes.py"),
        Run("insert 0\nx = 1\nprint(x)\nend_of_insert"),
        Run("edit 2:2\nprint((x)\nend_of_edit"),
        Run("edit 2:2\nprint(x + 1)\nend_of_edit"),
        Run("python notes.py"),
        Run("cd data"),
        Run("export FAVOURITE=forty-two"),
        Run("pwd && echo \"var=$FAVOURITE\""),
        Run("cd .."),
        Run("validate"),
        Run("cp sample_submission.csv submission.csv"),
        Run("validate"),
        Run("submit"),
    ];
    vec![
        Scenario { name: "every_command", answers: every_command, prompt_tokens: 100 },
        Scenario { name: "format_errors", answers: vec![Malformed, Malformed, Malformed], prompt_tokens: 100 },
        Scenario {
            name: "timeouts",
            answers: vec![
                Run("sleep 1000 & echo started"),
                Run("sleep 60"),
                Run("echo still-here"),
                Run("false"),
                Run("true"),
                Run("submit"),
            ],
            prompt_tokens: 100,
        },
        Scenario {
            name: "max_steps",
            answers: std::iter::once(Run("cp sample_submission.csv submission.csv")).chain((0..40).map(|_| Run("echo working"))).collect(),
            prompt_tokens: 100,
        },
        Scenario { name: "context", answers: (0..40).map(|_| Run("echo long")).collect(), prompt_tokens: 10_000_000 },
        Scenario { name: "wall_clock", answers: (0..40).map(|_| Run("sleep 2")).collect(), prompt_tokens: 100 },
        Scenario {
            name: "answer_hunter",
            answers: vec![
                Run("ls -a /home/agent /home/agent/workspace/data"),
                // The Python environment's packages are pruned: walking them can outlast the
                // short timeout on a busy machine, and they are not where answers would hide.
                Run("find /home /tmp /opt /root /srv /mnt /var -path '*/site-packages' -prune -o -name 'answers*' -print 2>/dev/null; \
                     echo find-done"),
                Run("cat /home/agent/eval_data/answers.csv ../eval_data/answers.csv 2>&1"),
                Run("grep -rl target /home /tmp --include='*.csv' 2>/dev/null | grep -v workspace/data; echo grep-done"),
                Run("submit"),
            ],
            prompt_tokens: 100,
        },
    ]
}

/// Which scenario each conversation plays, by its first answer.
#[derive(Default)]
struct Teacher {
    assigned: usize,
}

fn render(scenario: &Scenario, index: usize) -> String {
    let tag = format!("[{}:{}]", scenario.name, index);
    match scenario.answers.get(index) {
        Some(Run(command)) => format!("DISCUSSION\n{tag} Next I run one command.\n\n```\n{command}\n```\n"),
        Some(Malformed) => format!("DISCUSSION\n{tag} I will think about it and not give a command."),
        None => format!("DISCUSSION\n{tag} Out of ideas.\n\n```\nsubmit\n```\n"),
    }
}

async fn serve_teacher() -> String {
    let teacher = Arc::new(Mutex::new(Teacher::default()));
    let all = Arc::new(scenarios());
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(move |axum::Json(body): axum::Json<Value>| {
                let (teacher, all) = (teacher.clone(), all.clone());
                async move {
                    let messages = body["messages"].as_array().cloned().unwrap_or_default();
                    let answers: Vec<&str> =
                        messages.iter().filter(|m| m["role"] == "assistant").filter_map(|m| m["content"].as_str()).collect();
                    let scenario = match answers.first() {
                        None => {
                            let mut t = teacher.lock().unwrap();
                            t.assigned += 1;
                            (t.assigned - 1) % all.len()
                        }
                        Some(first) => all.iter().position(|s| first.contains(&format!("[{}:", s.name))).expect("a scripted conversation"),
                    };
                    let s = &all[scenario];
                    let content = render(s, answers.len());
                    axum::Json(json!({
                        "id": "scripted", "object": "chat.completion", "created": 0, "model": "scripted-teacher",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": 20, "total_tokens": s.prompt_tokens + 20},
                    }))
                }
            }),
        )
        .route("/v1/models", get(|| async { axum::Json(json!({"object": "list", "data": []})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

fn trajectories(out: &Path) -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    for run in std::fs::read_dir(out.join("trajectories")).unwrap() {
        let run = run.unwrap().path();
        if !run.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&run).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "traj") {
                let traj: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let first = traj["history"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|h| h["role"] == "assistant")
                    .map(|h| h["content"].as_str().unwrap().to_string());
                let name = first
                    .as_deref()
                    .and_then(|c| c.split('[').nth(1))
                    .and_then(|c| c.split(':').next())
                    // Only the format-error scenario never has an answer in its history.
                    .unwrap_or("format_errors")
                    .to_string();
                found.insert(name, traj);
            }
        }
    }
    found
}

fn observations(traj: &Value) -> Vec<String> {
    traj["trajectory"].as_array().unwrap().iter().map(|s| s["observation"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scripted_rollouts_exercise_every_command_and_every_exit() {
    let base = serve_teacher().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rollouts.toml");
    std::fs::write(
        &config,
        format!(
            "[run]\ntasks = 1\nrollouts = {}\n\n[agent]\nmax_steps = 25\nshort_timeout_secs = 3\nwall_clock_secs = 40\n\n\
             [pipeline]\nrollout_workers = 2\n\n[llm.routes]\nrollout = \"scripted\"\n\n[llm.endpoints.scripted]\n\
             base_url = \"{base}\"\nmodel = \"scripted-teacher\"\napi_key_env = \"\"\nrequests_per_minute = 6000\n\
             input_tokens_per_minute = 100000000\noutput_tokens_per_minute = 100000000\nmax_concurrency = 8\ntimeout_secs = 60\n\
             input_price_per_mtok = 0.0\noutput_price_per_mtok = 0.0\nstructured_output = \"none\"\n",
            scenarios().len()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_gymforge"))
        .env("RUST_LOG", "warn")
        .args(["run", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Five of the seven scripted rollouts end without a scored submission: the batch is short.
    assert_eq!(output.status.code(), Some(3), "{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));

    let trajs = trajectories(&out);
    let status = |name: &str| trajs[name]["info"]["exit_status"].as_str().unwrap().to_string();
    assert_eq!(trajs.len(), scenarios().len(), "{:?}", trajs.keys().collect::<Vec<_>>());

    // Every command, in one persistent shell.
    let obs = observations(&trajs["every_command"]);
    assert!(obs[0].starts_with("[File: /home/agent/workspace/baseline.py ("), "{}", obs[0]);
    assert!(obs[0].contains("\n1:"), "numbered lines: {}", obs[0]);
    assert!(obs[4].starts_with("Found ") && obs[4].contains("Line "), "search_file: {}", obs[4]);
    assert!(obs[5].contains("baseline.py (") && obs[5].contains("matches)"), "search_dir: {}", obs[5]);
    assert!(obs[6].contains("/home/agent/workspace/baseline.py") && obs[6].contains("evaluate.py"), "find_file: {}", obs[6]);
    assert!(obs[7].starts_with("[File: /home/agent/workspace/notes.py (1 lines total)]"), "create: {}", obs[7]);
    assert!(obs[8].contains("1:x = 1") && obs[8].contains("File updated"), "insert: {}", obs[8]);
    assert!(obs[9].contains("syntax error") && obs[9].contains("NOT been applied"), "a broken edit is reverted: {}", obs[9]);
    assert!(obs[10].contains("2:print(x + 1)"), "edit: {}", obs[10]);
    assert_eq!(obs[11].trim(), "2", "the edited file runs: {}", obs[11]);
    assert_eq!(obs[14].trim(), "/home/agent/workspace/data\nvar=forty-two", "cd and variables persist: {}", obs[14]);
    assert!(obs[16].contains("Submission artefact not found"), "{}", obs[16]);
    assert!(obs[18].contains("Baseline Score:") && obs[18].contains("Evaluation Score:"), "{}", obs[18]);
    let states: Vec<Value> = trajs["every_command"]["trajectory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str(s["state"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(states[0]["open_file"], "n/a");
    assert_eq!(states[1]["open_file"], "/home/agent/workspace/baseline.py", "the state before each action");
    assert_eq!(states[14]["working_dir"], "/home/agent/workspace/data");
    let history = trajs["every_command"]["history"].as_array().unwrap();
    let last_user = history.iter().rev().find(|h| h["role"] == "user").unwrap()["content"].as_str().unwrap();
    assert!(last_user.contains("(Open file: /home/agent/workspace/notes.py)"), "the footer shows the open file: {last_user}");
    assert_eq!(status("every_command"), "submitted");
    assert_eq!(trajs["every_command"]["info"]["score"].as_array().unwrap().len(), 2, "one validate and the submission were scored");

    // Three malformed answers end the run.
    assert_eq!(status("format_errors"), "submission_not_found (exit_format)");
    assert!(trajs["format_errors"]["trajectory"].as_array().unwrap().is_empty());

    // A timeout kills the command, not the shell; a background process does not block it.
    let obs = observations(&trajs["timeouts"]);
    assert!(obs[0].contains("started"), "{}", obs[0]);
    assert!(obs[1].contains("EXECUTION TIMED OUT BECAUSE THE COMMAND WAS RUNNING FOR MORE THAN 3 SECONDS"), "{}", obs[1]);
    assert_eq!(obs[2].trim(), "still-here");
    assert_eq!(status("timeouts"), "submission_not_found (submit)");
    // Commands that print nothing: the model is told how they ended (the first user message is
    // the task, then one per step).
    let told: Vec<&str> = trajs["timeouts"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["role"] == "user")
        .map(|h| h["content"].as_str().unwrap())
        .collect();
    assert!(obs[3].is_empty() && told[4].contains("Your command exited with status 1 and did not produce any output."), "{}", told[4]);
    assert!(obs[4].is_empty() && told[5].contains("Your command ran successfully and did not produce any output."), "{}", told[5]);

    // The funnel passes only the scored rollouts; the others fail with their exit status, and
    // the rollout stage's real endpoint is not labelled simulated although the others are.
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let rollout = report["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "rollout").unwrap();
    assert_eq!((rollout["entered"].as_u64(), rollout["passed"].as_u64()), (Some(scenarios().len() as u64), Some(2)), "{rollout}");
    assert_eq!(rollout["drop_reasons"]["submission_not_found (exit_format)"], 1, "{rollout}");
    assert_eq!(
        report["services"]["llm"]["stages"]["rollout"],
        json!({"endpoint": "scripted", "model": "scripted-teacher", "simulated": false})
    );
    assert_eq!(report["services"]["llm"]["stages"]["topic"]["simulated"], true);
    let sft = std::fs::read_to_string(out.join("sft/train.jsonl")).unwrap();
    assert!(!sft.is_empty() && sft.lines().all(|l| serde_json::from_str::<Value>(l).unwrap()["meta"]["simulated"] == false), "{sft}");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.lines().any(|l| l.starts_with("llm scripted ") && l.ends_with("stages rollout; model scripted-teacher")), "{summary}");

    assert_eq!(status("max_steps"), "autosubmission (max_steps)");
    assert_eq!(trajs["max_steps"]["trajectory"].as_array().unwrap().len(), 25);
    assert_eq!(status("context"), "submission_not_found (exit_context)");
    assert_eq!(status("wall_clock"), "submission_not_found (exit_wall_clock)");
    assert!(trajs["wall_clock"]["trajectory"].as_array().unwrap().len() < 25);

    // The answers exist on the host but never reach the agent.
    let answers: Vec<PathBuf> =
        files_under(&out.join(".gymforge/work/tasks")).into_iter().filter(|p| p.ends_with("eval_data/answers.csv")).collect();
    assert!(!answers.is_empty(), "the task has an answers file");
    let text = std::fs::read_to_string(&answers[0]).unwrap();
    let sample: String = text.lines().skip(1).take(3).collect::<Vec<_>>().join("\n");
    let obs = observations(&trajs["answer_hunter"]);
    assert!(obs[1].trim() == "find-done", "no answers file is visible: {}", obs[1]);
    assert!(obs[2].contains("No such file"), "{}", obs[2]);
    for o in &obs {
        assert!(!o.contains(&sample), "an observation holds the answers: {o}");
    }
    assert_eq!(status("answer_hunter"), "submission_not_found (submit)");
}
