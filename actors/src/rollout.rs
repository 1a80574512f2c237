//! Rollout stage: one run of the teacher model as an MLGym agent on an accepted task.
//!
//! The agent works in its own workspace (starter code plus the public data, read-only) through
//! one persistent sandboxed shell, which also holds the file commands (`agent.rs`). Its
//! submissions are scored by the task's pristine evaluate.py in a separate sandbox that alone
//! sees the answers. The run ends on `submit`, or on a step, cost, context, wall-clock or format
//! limit with an automatic final evaluation, and is recorded as an MLGym trajectory. The model
//! sees the task and the last `keep_observations` observations; older ones are elided (the saved
//! history is complete).

use std::time::{Duration, Instant};

use crate::agent::{self, MAX_FORMAT_ERRORS, MAX_OBSERVATION_CHARS};
use crate::model::{
    AcceptedTask, DropReason, HistoryItem, ModelStats, Outcome, RolloutRecord, Scores, Stage, Trajectory, TrajectoryInfo, TrajectoryStep,
    Unit,
};
use crate::paths::{PreparedTask, WORKSPACE, copy_files, fresh_dir};
use crate::pipeline::Pipeline;
use crate::ports::{ArtefactKind, ChatMessage, ChatRequest, Finish, JobOutput, Mount, PortError, ResponseFormat, SandboxJob, Shell};
use crate::template::render;
use crate::validate::{evaluate_submission, format_scores, head_tail, parse_scores};
use tracing::Instrument;

const AGENT: &str = "primary_0";

/// How one evaluation of the agent's submission went.
enum Evaluation {
    Scored(Scores),
    NotFound,
    FormatError(String),
}

struct Run<'a> {
    p: &'a Pipeline,
    unit: &'a Unit,
    task: AcceptedTask,
    prepared: PreparedTask,
    dir: std::path::PathBuf,
    workspace: std::path::PathBuf,
    evaluations: u32,
    scores: Vec<Scores>,
    /// The agent's shell, started on first use and again after it died.
    shell: Option<Box<dyn Shell>>,
    /// What the footer shows: the open file and the shell's directory.
    open_file: String,
    cwd: String,
}

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let task_unit = unit.parent.clone().ok_or_else(|| PortError::Permanent(format!("rollout {} has no task", unit.id)))?;
    let task: AcceptedTask = crate::worker::stored(p, &task_unit).await?;
    let dir = p.paths().rollout_dir(&unit.id);
    let workspace = dir.join("workspace");
    // A rollout always restarts cleanly: its workspace is rebuilt from the starter code.
    fresh_dir(&dir).map_err(|e| io("cannot create the rollout directory", e))?;
    let prepared = PreparedTask::new(crate::artefacts::fetch(p, &task_unit, ArtefactKind::PreparedTask).await?);
    fresh_dir(&workspace.join("data")).map_err(|e| io("cannot create the workspace", e))?;
    copy_files(&prepared.starter(), &workspace).map_err(|e| io("cannot copy the starter code", e))?;
    let control = dir.join("commands");
    fresh_dir(&control).map_err(|e| io("cannot create the shell's control directory", e))?;
    for (name, content) in &p.settings.agent.command_files {
        std::fs::write(control.join(name), content).map_err(|e| io("cannot write the agent's commands", e))?;
    }
    let init =
        format!("export GYMFORGE_COMMANDS={inside}\n. {inside}/commands.sh\ncd {WORKSPACE}\n", inside = crate::ports::CONTROL_INSIDE);
    std::fs::write(control.join("init.sh"), init).map_err(|e| io("cannot write the shell's start script", e))?;
    let mut run = Run {
        p,
        unit,
        task,
        prepared,
        dir,
        workspace,
        evaluations: 0,
        scores: Vec::new(),
        shell: None,
        open_file: "n/a".into(),
        cwd: WORKSPACE.into(),
    };
    let record = run.agent_loop().await?;
    // With a shared store this node may lose the unit before it commits: the trajectory is
    // written only from the store (`export::write_from_store`), as the others see it.
    if !p.store.is_shared() {
        p.outputs.write_rollout(&record)?;
    }
    Ok(Outcome::Advance(record.into()))
}

/// The MLGym run directory name: model, task, agent config and sampling settings.
pub fn run_name(model: &str, task_id: &str, temperature: f32, top_p: f32, cost_limit: f64, index: u32) -> String {
    let model: String = model.chars().map(|c| if c == ':' || c == '/' { '-' } else { c }).collect();
    format!("{model}__{task_id}__gymforge__t-{temperature:.2}__p-{top_p:.2}__c-{cost_limit:.2}__install-0_run_{index}")
}

/// The task statement as the agent sees it: MLGym's `{dataset_docs}` substitution applied.
pub fn agent_description(task: &AcceptedTask) -> String {
    let docs = format!("{}:\n{}\n\n", task.dataset.id.to_uppercase(), task.bundle.dataset_description.trim());
    if task.bundle.description.contains("{dataset_docs}") {
        task.bundle.description.replacen("{dataset_docs}", &docs, 1)
    } else {
        format!("{}\n\n{docs}", task.bundle.description)
    }
}

impl Run<'_> {
    async fn agent_loop(&mut self) -> Result<RolloutRecord, PortError> {
        let p = self.p;
        let s = &p.settings.agent;
        let model = p.llm.model_for(Stage::Rollout);
        let training_timeout = Duration::from_secs(self.task.bundle.training_timeout);
        let system = render(
            &p.prompts.agent_system,
            &[("command_docs", &agent::command_docs()), ("training_timeout", &self.task.bundle.training_timeout.to_string())],
        )
        .map_err(PortError::Permanent)?;
        let first = render(
            &p.prompts.agent_task,
            &[("description", &agent_description(&self.task)), ("footer", &agent::footer(0, s.max_steps, "n/a", WORKSPACE))],
        )
        .map_err(PortError::Permanent)?;
        let mut history = vec![history_item("system", system, None), history_item("user", first, None)];
        let mut steps: Vec<TrajectoryStep> = Vec::new();
        let mut stats = ModelStats::default();
        let mut exit_status: Option<String> = None;
        let mut submission: Option<String> = None;
        let seed = crate::seed::hash(&[&p.settings.seed.to_string(), &self.unit.id]);
        let began = Instant::now();
        // Prompt tokens of the last call: the next one is at least this long.
        let mut last_input_tokens = 0u64;
        // The configured window, or the model's when that is smaller.
        let limits = p.llm.limits(Stage::Rollout);
        let context_window = limits.context_tokens.map_or(s.context_window, |c| c.min(s.context_window));
        let max_output = limits.max_output_tokens.unwrap_or(s.max_tokens);

        'steps: for step in 1..=s.max_steps {
            if began.elapsed() > s.wall_clock {
                exit_status = Some("exit_wall_clock".into());
                break;
            }
            if last_input_tokens + u64::from(s.max_tokens.min(max_output)) > context_window {
                exit_status = Some("exit_context".into());
                break;
            }
            let state = serde_json::json!({ "open_file": self.open_file, "working_dir": self.cwd }).to_string();
            // The step's LLM calls and its command run in this span.
            let step_span = tracing::info_span!(
                "rollout_step",
                otel.name = %format!("rollout step {step}"),
                step = i64::from(step),
                command = tracing::field::Empty
            );
            // Ask for the next command; a malformed answer is re-asked with the error, bounded.
            let mut messages = model_input(&history, s.keep_observations);
            let mut format_errors = 0;
            let mut max_tokens = s.max_tokens;
            let mut truncations = 0;
            let (response, thought, action) = loop {
                let request = ChatRequest {
                    unit: self.unit.id.clone(),
                    messages: messages.clone(),
                    max_tokens,
                    temperature: s.temperature,
                    response: ResponseFormat::Text,
                    seed: Some(seed.wrapping_add(u64::from(step))),
                };
                let reply = match crate::llm::chat(p, Stage::Rollout, request).instrument(step_span.clone()).await {
                    Err(PortError::Refused { reason: DropReason::LlmContextLength, .. }) => {
                        exit_status = Some("exit_context".into());
                        break 'steps;
                    }
                    other => other?,
                };
                last_input_tokens = reply.input_tokens;
                stats.api_calls += 1;
                stats.tokens_sent += reply.input_tokens;
                stats.tokens_received += reply.output_tokens;
                stats.instance_cost_add(reply.cost_usd);
                if stats.total_cost > s.cost_limit {
                    exit_status = Some("exit_cost".into());
                    break 'steps;
                }
                // A refusal or a filtered answer ends the run; nothing is left to re-ask.
                match crate::llm::unusable(&reply) {
                    Some(no) if no.reason == DropReason::LlmRefused => {
                        exit_status = Some("exit_refused".into());
                        tracing::info!(unit = %self.unit.id, step, detail = %no.detail, "the agent model refused");
                        break 'steps;
                    }
                    Some(no) if no.reason == DropReason::LlmContentFilter => {
                        exit_status = Some("exit_content_filter".into());
                        tracing::info!(unit = %self.unit.id, step, detail = %no.detail, "the agent's answer was filtered");
                        break 'steps;
                    }
                    _ => {}
                }
                let parsed = agent::parse_action(&reply.content);
                if parsed.is_err() && reply.finish == Finish::Length {
                    // Cut off before its command was complete: once more, larger if the cap
                    // allows, without the cut-off text.
                    truncations += 1;
                    if truncations > crate::llm::TRUNCATION_REASKS {
                        exit_status = Some("exit_truncated".into());
                        break 'steps;
                    }
                    max_tokens = limits.larger_answer(max_tokens);
                    continue;
                }
                match parsed {
                    Ok((thought, action)) => break (reply.content, thought, action),
                    Err(problem) => {
                        format_errors += 1;
                        if format_errors >= MAX_FORMAT_ERRORS {
                            exit_status = Some("exit_format".into());
                            break 'steps;
                        }
                        messages.push(ChatMessage::new("assistant", reply.content));
                        messages.push(ChatMessage::new("user", agent::format_error(&problem)));
                    }
                }
            };
            let started = Instant::now();
            step_span.record("command", action.split_whitespace().next().unwrap_or(""));
            let (observation, done, ended) = async {
                Ok::<_, PortError>(match agent::special_command(&action) {
                    Some("submit") => {
                        let (status, obs) = match self.evaluate().await? {
                            Evaluation::Scored(scores) => {
                                self.scores.push(scores);
                                submission = Some(format!("{WORKSPACE}/submission.csv"));
                                ("submitted".to_string(), "Exited (submit)".to_string())
                            }
                            Evaluation::NotFound => ("submission_not_found (submit)".into(), not_found_text().into()),
                            Evaluation::FormatError(e) => ("evaluation_format_error (submit)".into(), e),
                        };
                        exit_status = Some(status);
                        // submit and validate are gymforge's own and always answer with text.
                        (obs, true, CommandEnd::Exited(0))
                    }
                    Some(_) => (self.validate_observation().await?, false, CommandEnd::Exited(0)),
                    None => {
                        let (obs, ended) = self.command(&action, s.short_timeout, training_timeout).await?;
                        (obs, false, ended)
                    }
                })
            }
            .instrument(step_span)
            .await?;
            let execution_time = started.elapsed().as_secs_f64();
            let next = if done {
                observation.clone()
            } else {
                let body = if observation.trim().is_empty() { ended.silent_observation() } else { observation.clone() };
                let footer = agent::footer(step, s.max_steps, &self.open_file, &self.cwd);
                render(&p.prompts.agent_next, &[("observation", &body), ("footer", &footer)]).map_err(PortError::Permanent)?
            };
            history.push(history_item("assistant", response.clone(), Some((thought.clone(), action.clone()))));
            if !done {
                history.push(history_item("user", next, None));
            }
            steps.push(TrajectoryStep { action, observation, response, state, thought, execution_time });
            if done {
                break;
            }
        }

        let exit_status = match exit_status {
            Some(status) if status == "submitted" || status.contains('(') => status,
            forced => {
                // The run ended without a submit: evaluate whatever artefact exists.
                let reason = forced.unwrap_or_else(|| "max_steps".into());
                match self.evaluate().await? {
                    Evaluation::Scored(scores) => {
                        self.scores.push(scores);
                        submission = Some(format!("{WORKSPACE}/submission.csv"));
                        format!("autosubmission ({reason})")
                    }
                    Evaluation::NotFound => format!("submission_not_found ({reason})"),
                    Evaluation::FormatError(_) => format!("evaluation_format_error ({reason})"),
                }
            }
        };
        let run_index = (self.unit.seq % 1000) as u32;
        Ok(RolloutRecord {
            unit: self.unit.id.clone(),
            task_id: self.task.task_id.clone(),
            run_index,
            run_name: run_name(&model, &self.task.task_id, s.temperature, s.top_p, s.cost_limit, run_index),
            model,
            baseline_scores: self.task.baseline_scores.clone(),
            trajectory: Trajectory {
                environment: "mlgym_main".into(),
                trajectory: steps,
                history,
                info: TrajectoryInfo {
                    model_stats: stats,
                    exit_status,
                    submission,
                    score: self.scores.clone(),
                    summarizer: serde_json::json!({}),
                },
            },
        })
    }

    /// Runs one agent command in the rollout's shell and returns the observation and how the
    /// command ended; then reads the open file and directory for the footer.
    async fn command(&mut self, action: &str, short: Duration, training: Duration) -> Result<(String, CommandEnd), PortError> {
        let command = match agent::shell_command(action) {
            Ok(c) => c,
            Err(malformed) => return Ok((malformed, CommandEnd::Exited(0))),
        };
        let timeout = agent::command_timeout(action, short, training);
        let out = self.in_shell(&command, timeout).await?;
        let mut text = head_tail(out.stdout.trim_end(), MAX_OBSERVATION_CHARS);
        if out.timed_out {
            text.push_str(&format!("\nEXECUTION TIMED OUT BECAUSE THE COMMAND WAS RUNNING FOR MORE THAN {} SECONDS.", timeout.as_secs()));
        }
        let state = self.in_shell("_gymforge_state", short).await?;
        let v: serde_json::Value = serde_json::from_str(state.stdout.trim()).unwrap_or_default();
        if let (Some(file), Some(dir)) = (v["open_file"].as_str(), v["working_dir"].as_str()) {
            self.open_file = file.to_string();
            self.cwd = dir.to_string();
        }
        Ok((text, CommandEnd::of(&out)))
    }

    /// Runs a command in the agent's shell, starting the shell when there is none alive.
    async fn in_shell(&mut self, command: &str, timeout: Duration) -> Result<JobOutput, PortError> {
        if !self.shell.as_ref().is_some_and(|s| s.is_alive()) {
            let job = SandboxJob {
                label: format!("{} shell", self.unit.id),
                workdir: self.workspace.clone(),
                workdir_inside: WORKSPACE.to_string(),
                mounts: vec![Mount { host: self.prepared.public_data(), inside: format!("{WORKSPACE}/data"), writable: false }],
                command: Vec::new(),
                timeout,
            };
            self.shell = Some(self.p.sandbox.shell(job, &self.dir.join("commands")).await?);
            self.open_file = "n/a".into();
            self.cwd = WORKSPACE.into();
        }
        self.shell.as_mut().expect("started above").run(command, timeout).await
    }

    async fn validate_observation(&mut self) -> Result<String, PortError> {
        Ok(match self.evaluate().await? {
            Evaluation::Scored(scores) => {
                let text = format!(
                    "Your code produced a valid submission artefact at {WORKSPACE}/submission.csv.\n\
                     Baseline Score: {}\nEvaluation Score: {}",
                    format_scores(&self.task.baseline_scores),
                    format_scores(&scores)
                );
                self.scores.push(scores);
                text
            }
            Evaluation::NotFound => not_found_text().to_string(),
            Evaluation::FormatError(e) => e,
        })
    }

    /// Scores the workspace's submission.csv with the task's own evaluate.py.
    async fn evaluate(&mut self) -> Result<Evaluation, PortError> {
        let submission = self.workspace.join("submission.csv");
        if !submission.is_file() {
            return Ok(Evaluation::NotFound);
        }
        self.evaluations += 1;
        let dir = self.dir.join(format!("eval-{}", self.evaluations));
        let out = evaluate_submission(
            self.p.sandbox.as_ref(),
            &self.prepared,
            &submission,
            &dir,
            Duration::from_secs(self.task.bundle.training_timeout),
            &format!("{} evaluate", self.unit.id),
        )
        .await?;
        if !out.success() {
            return Ok(Evaluation::FormatError(format!(
                "Evaluation of your submission failed ({}):\n{}",
                out.status_line(),
                crate::validate::output_text(&out)
            )));
        }
        Ok(match parse_scores(&out) {
            Ok(scores) => Evaluation::Scored(scores),
            Err(e) => Evaluation::FormatError(format!("Evaluation of your submission failed: {e}")),
        })
    }
}

impl ModelStats {
    fn instance_cost_add(&mut self, cost: f64) {
        self.total_cost += cost;
        self.task_cost += cost;
    }
}

/// How an agent's command ended, which an empty output must not hide: the model is told
/// whether a command that printed nothing succeeded, failed, was killed or timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommandEnd {
    /// The shell's exit status (`$?`).
    Exited(i32),
    /// The process reading the command was killed (the shell itself died).
    Signalled(i32),
    TimedOut,
    /// Neither a status nor a signal was reported.
    NoStatus,
}

impl CommandEnd {
    fn of(out: &JobOutput) -> CommandEnd {
        match (out.timed_out, out.exit_code, out.signal) {
            (true, _, _) => CommandEnd::TimedOut,
            (false, Some(code), _) => CommandEnd::Exited(code),
            (false, None, Some(signal)) => CommandEnd::Signalled(signal),
            (false, None, None) => CommandEnd::NoStatus,
        }
    }

    /// The observation of a command that printed nothing.
    fn silent_observation(self) -> String {
        let how = match self {
            CommandEnd::Exited(0) => "ran successfully".to_string(),
            // A shell reports a command killed by signal N as status 128 + N.
            CommandEnd::Exited(code @ 129..=192) => format!("was killed by {}", signal(code - 128, Some(code))),
            CommandEnd::Exited(code) => format!("exited with status {code}"),
            CommandEnd::Signalled(n) => format!("was killed by {}", signal(n, None)),
            CommandEnd::TimedOut => "timed out".to_string(),
            CommandEnd::NoStatus => "ended without an exit status".to_string(),
        };
        format!("Your command {how} and did not produce any output.")
    }
}

/// `signal 9 (SIGKILL, exit status 137)`: names the signals a sandboxed command commonly dies
/// of (Linux numbers) and the status the shell gave, if any.
fn signal(n: i32, status: Option<i32>) -> String {
    let name = match n {
        1 => Some("SIGHUP"),
        2 => Some("SIGINT"),
        3 => Some("SIGQUIT"),
        4 => Some("SIGILL"),
        6 => Some("SIGABRT"),
        7 => Some("SIGBUS"),
        8 => Some("SIGFPE"),
        9 => Some("SIGKILL"),
        11 => Some("SIGSEGV"),
        13 => Some("SIGPIPE"),
        14 => Some("SIGALRM"),
        15 => Some("SIGTERM"),
        24 => Some("SIGXCPU"),
        25 => Some("SIGXFSZ"),
        _ => None,
    };
    let status = status.map(|code| format!("exit status {code}"));
    let notes: Vec<String> = name.map(str::to_string).into_iter().chain(status).collect();
    if notes.is_empty() { format!("signal {n}") } else { format!("signal {n} ({})", notes.join(", ")) }
}

fn not_found_text() -> &'static str {
    "Submission artefact not found. You have to produce a valid submission artefact as described in the task description \
     to validate your results."
}

/// The model input: the system prompt, the task, every answer, and the last `keep` observations;
/// older observations are replaced by a one-line note (MLGym's `LastNObservations`).
pub fn model_input(history: &[HistoryItem], keep: usize) -> Vec<ChatMessage> {
    let users: Vec<usize> = history.iter().enumerate().filter(|(_, h)| h.role == "user").map(|(i, _)| i).collect();
    // The first user message is the task; of the rest, the last `keep` stay.
    let elide_end = users.len().saturating_sub(keep).max(1);
    let old: std::collections::HashSet<usize> = users.iter().skip(1).take(elide_end - 1).copied().collect();
    history
        .iter()
        .enumerate()
        .map(
            |(i, h)| {
                if old.contains(&i) { ChatMessage::new("user", elided(&h.content)) } else { ChatMessage::new(&h.role, h.content.clone()) }
            },
        )
        .collect()
}

/// What an elided observation becomes in a model input.
pub fn elided(observation: &str) -> String {
    format!("Old output omitted ({} lines)", observation.lines().count())
}

fn history_item(role: &str, content: String, thought_action: Option<(String, String)>) -> HistoryItem {
    let (thought, action) = match thought_action {
        Some((t, a)) => (Some(t), Some(a)),
        None => (None, None),
    };
    HistoryItem { role: role.into(), content, agent: AGENT.into(), thought, action }
}

fn io(context: &str, e: std::io::Error) -> PortError {
    PortError::Transient(format!("{context}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_printed_nothing_is_described_by_how_it_ended() {
        let exited = |code| JobOutput { exit_code: Some(code), ..JobOutput::default() };
        let said = |out: &JobOutput| CommandEnd::of(out).silent_observation();
        assert_eq!(said(&exited(0)), "Your command ran successfully and did not produce any output.");
        assert_eq!(said(&exited(1)), "Your command exited with status 1 and did not produce any output.");
        assert_eq!(said(&exited(137)), "Your command was killed by signal 9 (SIGKILL, exit status 137) and did not produce any output.");
        assert_eq!(said(&exited(168)), "Your command was killed by signal 40 (exit status 168) and did not produce any output.");
        assert_eq!(said(&exited(200)), "Your command exited with status 200 and did not produce any output.");
        let killed = JobOutput { signal: Some(9), ..JobOutput::default() };
        assert_eq!(said(&killed), "Your command was killed by signal 9 (SIGKILL) and did not produce any output.");
        let late = JobOutput { exit_code: Some(0), timed_out: true, ..JobOutput::default() };
        assert_eq!(said(&late), "Your command timed out and did not produce any output.");
        assert_eq!(said(&JobOutput::default()), "Your command ended without an exit status and did not produce any output.");
    }

    #[test]
    fn old_observations_are_elided_and_the_task_and_answers_kept() {
        let mut history = vec![history_item("system", "sys".into(), None), history_item("user", "task".into(), None)];
        for i in 1..=4 {
            history.push(history_item("assistant", format!("answer {i}"), None));
            history.push(history_item("user", format!("observation {i}\nsecond line"), None));
        }
        let input = model_input(&history, 2);
        let texts: Vec<&str> = input.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            texts,
            [
                "sys",
                "task",
                "answer 1",
                "Old output omitted (2 lines)",
                "answer 2",
                "Old output omitted (2 lines)",
                "answer 3",
                "observation 3\nsecond line",
                "answer 4",
                "observation 4\nsecond line",
            ]
        );
        assert_eq!(model_input(&history, 10).len(), history.len());
        assert_eq!(model_input(&history[..2], 0).len(), 2, "the task is never elided");
    }
}
