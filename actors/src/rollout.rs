//! Rollout stage: one run of the teacher model as an MLGym agent on an accepted task.
//!
//! The agent works in its own workspace (starter code plus the public data, read-only); its
//! submissions are scored by the task's pristine evaluate.py in a separate sandbox that alone
//! sees the answers. The run ends on `submit`, or on a step, cost or format limit with an
//! automatic final evaluation, and is recorded as an MLGym trajectory.

use std::time::Instant;

use crate::agent::{self, COMMAND_DOCS, MAX_FORMAT_ERRORS, MAX_OBSERVATION_CHARS};
use crate::model::{
    AcceptedTask, HistoryItem, ModelStats, Outcome, RolloutRecord, Scores, Stage, Trajectory,
    TrajectoryInfo, TrajectoryStep, Unit,
};
use crate::paths::{PreparedTask, WORKSPACE, copy_files, fresh_dir};
use crate::pipeline::Pipeline;
use crate::ports::{ChatMessage, ChatRequest, Mount, PortError, ResponseFormat, SandboxJob};
use crate::template::render;
use crate::validate::{evaluate_submission, format_scores, head_tail, parse_scores};

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
}

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let task_unit = unit.parent.clone().ok_or_else(|| PortError::Permanent(format!("rollout {} has no task", unit.id)))?;
    let task: AcceptedTask = crate::worker::stored(p, &task_unit, Stage::Debug)?;
    let dir = p.paths().rollout_dir(&unit.id);
    let workspace = dir.join("workspace");
    // A rollout always restarts cleanly: its workspace is rebuilt from the starter code.
    fresh_dir(&dir).map_err(|e| io("cannot create the rollout directory", e))?;
    let prepared = PreparedTask::new(p.paths().final_dir(&task_unit));
    fresh_dir(&workspace.join("data")).map_err(|e| io("cannot create the workspace", e))?;
    copy_files(&prepared.starter(), &workspace).map_err(|e| io("cannot copy the starter code", e))?;
    let mut run = Run { p, unit, task, prepared, dir, workspace, evaluations: 0, scores: Vec::new() };
    let record = run.agent_loop().await?;
    p.outputs.write_rollout(&record)?;
    Ok(Outcome::Advance(serde_json::to_value(&record).expect("serialisable")))
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
        let training_timeout = std::time::Duration::from_secs(self.task.bundle.training_timeout);
        let system = render(
            &p.prompts.agent_system,
            &[("command_docs", COMMAND_DOCS), ("training_timeout", &self.task.bundle.training_timeout.to_string())],
        )
        .map_err(PortError::Permanent)?;
        let first = render(
            &p.prompts.agent_task,
            &[("description", &agent_description(&self.task)), ("footer", &agent::footer(0, s.max_steps, WORKSPACE))],
        )
        .map_err(PortError::Permanent)?;
        let mut history = vec![history_item("system", system, None), history_item("user", first, None)];
        let mut steps: Vec<TrajectoryStep> = Vec::new();
        let mut stats = ModelStats::default();
        let mut exit_status: Option<String> = None;
        let mut submission: Option<String> = None;
        let seed = crate::seed::hash(&[&p.settings.seed.to_string(), &self.unit.id]);
        let state = format!("{{\"open_file\": \"n/a\", \"working_dir\": \"{WORKSPACE}\"}}");

        'steps: for step in 1..=s.max_steps {
            // Ask for the next command; a malformed answer is re-asked with the error, bounded.
            let mut messages: Vec<ChatMessage> = history.iter().map(|h| ChatMessage::new(&h.role, h.content.clone())).collect();
            let mut format_errors = 0;
            let (response, thought, action) = loop {
                let request = ChatRequest {
                    unit: self.unit.id.clone(),
                    messages: messages.clone(),
                    max_tokens: s.max_tokens,
                    temperature: s.temperature,
                    response: ResponseFormat::Text,
                    seed: Some(seed.wrapping_add(u64::from(step))),
                };
                let reply = crate::llm::chat(p, Stage::Rollout, request).await?;
                stats.api_calls += 1;
                stats.tokens_sent += reply.input_tokens;
                stats.tokens_received += reply.output_tokens;
                stats.instance_cost_add(reply.cost_usd);
                if stats.total_cost > s.cost_limit {
                    exit_status = Some("exit_cost".into());
                    break 'steps;
                }
                match agent::parse_action(&reply.content) {
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
            let (observation, done) = match agent::special_command(&action) {
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
                    (obs, true)
                }
                Some(_) => (self.validate_observation().await?, false),
                None => (self.shell(&action, s.short_timeout, training_timeout).await?, false),
            };
            let execution_time = started.elapsed().as_secs_f64();
            let next = if done {
                observation.clone()
            } else {
                let body = if observation.trim().is_empty() {
                    "Your command ran successfully and did not produce any output.".to_string()
                } else {
                    observation.clone()
                };
                render(&p.prompts.agent_next, &[("observation", &body), ("footer", &agent::footer(step, s.max_steps, WORKSPACE))])
                    .map_err(PortError::Permanent)?
            };
            history.push(history_item("assistant", response.clone(), Some((thought.clone(), action.clone()))));
            if !done {
                history.push(history_item("user", next, None));
            }
            steps.push(TrajectoryStep { action, observation, response, state: state.clone(), thought, execution_time });
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

    /// Runs a shell command in the agent's sandbox.
    async fn shell(&self, action: &str, short: std::time::Duration, training: std::time::Duration) -> Result<String, PortError> {
        let timeout = agent::command_timeout(action, short, training);
        let out = self
            .p
            .sandbox
            .run(SandboxJob {
                label: format!("{} step", self.unit.id),
                workdir: self.workspace.clone(),
                workdir_inside: WORKSPACE.to_string(),
                mounts: vec![Mount { host: self.prepared.public_data(), inside: format!("{WORKSPACE}/data"), writable: false }],
                command: vec!["bash".into(), "-c".into(), action.to_string()],
                timeout,
            })
            .await?;
        let mut text = out.stdout;
        if !out.stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&out.stderr);
        }
        let mut text = head_tail(text.trim_end(), MAX_OBSERVATION_CHARS);
        if out.timed_out {
            text.push_str(&format!(
                "\nEXECUTION TIMED OUT BECAUSE THE COMMAND WAS RUNNING FOR MORE THAN {} SECONDS.",
                timeout.as_secs()
            ));
        }
        Ok(text)
    }

    async fn validate_observation(&mut self) -> Result<String, PortError> {
        Ok(match self.evaluate().await? {
            Evaluation::Scored(scores) => {
                let text = format!(
                    "Your code produced a valid submission artefact at {WORKSPACE}/submission.csv.\nBaseline Score: {}\nEvaluation Score: {}",
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
            std::time::Duration::from_secs(self.task.bundle.training_timeout),
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

fn not_found_text() -> &'static str {
    "Submission artefact not found. You have to produce a valid submission artefact as described in the task description to validate your results."
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
