//! Supervised fine-tuning data from teacher trajectories: which trajectories are kept, and the
//! training example each becomes. `gymforge run` writes `sft/train.jsonl` with the default
//! rules at the end of a batch; `gymforge export sft` applies them with options.
//!
//! Rules, in order: a trajectory needs at least one scored submission (`unscored`), and with
//! `beats_baseline_only` its best score must beat the baseline (`not_better`); its history must
//! start with the system message and hold an assistant turn (`malformed`). The example is what
//! the model saw at its last step (observations older than the last `keep_observations` elided,
//! as in the rollout) plus its last answer, with every observation cut to head and tail. When
//! it is over the token budget (a real tokenizer counts), the oldest observations are replaced
//! by a one-line note until it fits (`shortened`); if eliding all of them is not enough, it is
//! left out (`over_budget`). An example whose messages repeat an earlier one is left out
//! (`duplicates`).

use std::collections::{BTreeMap, HashSet};

use gymforge_actors::model::{AcceptedTask, RolloutRecord};
use gymforge_actors::ports::ChatMessage;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::export::{SftExample, SftMeta};

/// One line of an SFT file, in the layout asked for.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum SftLine {
    /// `{"messages": [{"role", "content"}], "meta"}`, as TRL's `SFTTrainer` reads it.
    Chat(SftExample),
    /// `{"conversations": [{"from", "value"}], "meta"}`, ShareGPT's layout.
    ShareGpt { conversations: Vec<ShareGptTurn>, meta: SftMeta },
}

impl SftLine {
    pub fn meta(&self) -> &SftMeta {
        match self {
            SftLine::Chat(example) => &example.meta,
            SftLine::ShareGpt { meta, .. } => meta,
        }
    }
}

/// One turn in ShareGPT's layout.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ShareGptTurn {
    pub from: &'static str,
    pub value: String,
}

#[derive(Clone, Debug)]
pub struct SftOptions {
    pub beats_baseline_only: bool,
    /// ShareGPT's `{"conversations": [{"from", "value"}]}` instead of chat `messages`.
    pub sharegpt: bool,
    pub token_budget: u64,
    pub max_observation_chars: usize,
    /// Observations the model saw verbatim (`agent.keep_observations`); older ones are elided
    /// in the example as they were in the model's input.
    pub keep_observations: usize,
    /// Whether the teacher was the simulated one (written into every line's meta).
    pub simulated: bool,
}

impl Default for SftOptions {
    fn default() -> Self {
        SftOptions {
            beats_baseline_only: false,
            sharegpt: false,
            token_budget: 32_768,
            max_observation_chars: gymforge_actors::agent::MAX_OBSERVATION_CHARS,
            keep_observations: 5,
            simulated: false,
        }
    }
}

/// What became of the trajectories.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SftSummary {
    pub trajectories: u64,
    pub kept: u64,
    pub unscored: u64,
    pub not_better: u64,
    pub malformed: u64,
    pub over_budget: u64,
    pub duplicates: u64,
    /// Kept, with old observations elided to fit the budget.
    pub shortened: u64,
    /// Kept, with a best score better than the task's baseline on its priority metric (in the
    /// task's direction).
    pub beat_baseline: u64,
}

impl SftSummary {
    /// `kept 3 of 5 trajectories; left out: 1 without a scored submission, ...`.
    pub fn describe(&self) -> String {
        let reasons = self.left_out();
        let mut text = format!("kept {} of {} trajectories", self.kept, self.trajectories);
        if self.kept > 0 {
            text.push_str(&format!(" ({} beat the baseline)", self.beat_baseline));
        }
        if !reasons.is_empty() {
            text.push_str(&format!("; left out: {}", reasons.join(", ")));
        }
        if self.shortened > 0 {
            text.push_str(&format!("; {} shortened by eliding old observations", self.shortened));
        }
        text
    }

    /// When there were trajectories and every one was left out: how many and why, e.g. `all 6
    /// trajectories were left out: 6 over the token budget`. An export that keeps nothing
    /// failed.
    pub fn nothing_kept(&self) -> Option<String> {
        let all = match self.trajectories {
            1 => "the 1 trajectory was".to_string(),
            n => format!("all {n} trajectories were"),
        };
        (self.trajectories > 0 && self.kept == 0).then(|| format!("{all} left out: {}", self.left_out().join(", ")))
    }

    /// `1 without a scored submission`, ... for each reason that left some trajectory out.
    fn left_out(&self) -> Vec<String> {
        [
            (self.unscored, "without a scored submission"),
            (self.not_better, "not better than the baseline"),
            (self.malformed, "malformed"),
            (self.over_budget, "over the token budget"),
            (self.duplicates, "duplicates"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect()
    }
}

/// The SFT lines of `rollouts`, in order, and what was left out.
pub fn build(rollouts: &[RolloutRecord], tasks: &[AcceptedTask], options: &SftOptions) -> (Vec<SftLine>, SftSummary) {
    let tasks: BTreeMap<&str, &AcceptedTask> = tasks.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let mut summary = SftSummary { trajectories: rollouts.len() as u64, ..SftSummary::default() };
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for rollout in rollouts {
        if !rollout.has_scored_submission() {
            summary.unscored += 1;
            continue;
        }
        let task = tasks.get(rollout.task_id.as_str()).copied();
        let Some(mut example) = crate::export::sft_line(rollout, task, options.keep_observations, options.simulated) else {
            summary.malformed += 1;
            continue;
        };
        let beats = example.meta.beats_baseline == Some(true);
        if options.beats_baseline_only && !beats {
            summary.not_better += 1;
            continue;
        }
        cut_observations(&mut example.messages, options.max_observation_chars);
        example.meta.tokens = match fit(&mut example.messages, options.token_budget) {
            Fit::Fits { tokens } => tokens,
            Fit::Shortened { tokens } => {
                summary.shortened += 1;
                tokens
            }
            Fit::TooLong => {
                summary.over_budget += 1;
                continue;
            }
        };
        let digest = Sha256::digest(serde_json::to_vec(&example.messages).expect("messages serialise"));
        if !seen.insert(digest) {
            summary.duplicates += 1;
            continue;
        }
        lines.push(if options.sharegpt { sharegpt(example) } else { SftLine::Chat(example) });
        summary.kept += 1;
        summary.beat_baseline += u64::from(beats);
    }
    (lines, summary)
}

/// Observations are the user turns after the task statement (the first user turn).
fn observation_indices(messages: &[ChatMessage]) -> Vec<usize> {
    messages.iter().enumerate().filter(|(_, m)| m.role == "user").map(|(i, _)| i).skip(1).collect()
}

fn cut_observations(messages: &mut [ChatMessage], max_chars: usize) {
    for i in observation_indices(messages) {
        messages[i].content = gymforge_actors::validate::head_tail(&messages[i].content, max_chars);
    }
}

/// Whether an example fits the token budget, with its token count when it does.
enum Fit {
    Fits { tokens: u64 },
    Shortened { tokens: u64 },
    TooLong,
}

/// Elides the oldest observations until the messages fit `budget` tokens.
fn fit(messages: &mut [ChatMessage], budget: u64) -> Fit {
    let mut total = tokens(messages);
    if total <= budget {
        return Fit::Fits { tokens: total };
    }
    for i in observation_indices(messages) {
        let note = gymforge_actors::rollout::elided(&messages[i].content);
        total = total - crate::gateway::tokens::text_tokens(&messages[i].content) + crate::gateway::tokens::text_tokens(&note);
        messages[i].content = note;
        if total <= budget {
            return Fit::Shortened { tokens: total };
        }
    }
    Fit::TooLong
}

fn tokens(messages: &[ChatMessage]) -> u64 {
    messages.iter().map(|m| crate::gateway::tokens::text_tokens(&m.content) + crate::gateway::tokens::PER_MESSAGE).sum()
}

/// The same example in ShareGPT's layout.
fn sharegpt(example: SftExample) -> SftLine {
    let conversations = example
        .messages
        .into_iter()
        .map(|m| {
            let from = match m.role.as_str() {
                "system" => "system",
                "assistant" => "gpt",
                _ => "human",
            };
            ShareGptTurn { from, value: m.content }
        })
        .collect();
    SftLine::ShareGpt { conversations, meta: example.meta }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(observation: &str, n: usize) -> Vec<ChatMessage> {
        let mut m = vec![ChatMessage::new("system", "sys"), ChatMessage::new("user", "the task")];
        for i in 0..n {
            m.push(ChatMessage::new("assistant", format!("answer {i}\n```\nls\n```")));
            m.push(ChatMessage::new("user", observation));
        }
        m.push(ChatMessage::new("assistant", "done\n```\nsubmit\n```"));
        m
    }

    /// A scored rollout whose history is `messages(observation, n)`.
    fn scored_rollout(observation: &str, n: usize) -> RolloutRecord {
        let history: Vec<serde_json::Value> =
            messages(observation, n).into_iter().map(|m| json!({"role": m.role, "content": m.content, "agent": "primary_0"})).collect();
        serde_json::from_value(json!({
            "unit": "t0001.r0", "task_id": "t", "run_index": 0, "run_name": "r", "model": "m", "baseline_scores": {},
            "trajectory": {
                "environment": "mlgym_main",
                "trajectory": [],
                "history": history,
                "info": {
                    "model_stats": {"total_cost": 0.0, "task_cost": 0.0, "tokens_sent": 0, "tokens_received": 0, "api_calls": 0},
                    "exit_status": "submitted", "submission": null, "score": [{"accuracy": 0.9}], "summarizer": {}
                },
            },
        }))
        .unwrap()
    }

    #[test]
    fn old_observations_are_elided_to_fit_and_hopeless_ones_are_too_long() {
        let long = "word ".repeat(2000);
        let mut m = messages(&long, 4);
        let before = tokens(&m);
        assert!(matches!(fit(&mut m, before), Fit::Fits { tokens } if tokens == before));
        let budget = before - 3000;
        let Fit::Shortened { tokens: counted } = fit(&mut m, budget) else { panic!("shortened") };
        assert_eq!(counted, tokens(&m), "the count kept while eliding is the messages' count");
        assert!(tokens(&m) <= budget);
        assert!(m[3].content.starts_with("Old output omitted"), "the oldest goes first");
        assert_eq!(m[9].content, long, "the newest stays");
        assert_eq!(m[1].content, "the task", "the task is never elided");
        let mut m = messages("short", 2);
        assert!(matches!(fit(&mut m, 5), Fit::TooLong));
    }

    #[test]
    fn long_observations_are_cut_to_head_and_tail() {
        let mut m = messages(&"x".repeat(50_000), 1);
        cut_observations(&mut m, 1000);
        assert!(m[3].content.len() < 1200);
        assert_eq!(m[1].content, "the task");
    }

    #[test]
    fn sharegpt_maps_roles() {
        let (lines, _) = build(&[scored_rollout("obs", 1)], &[], &SftOptions { sharegpt: true, simulated: true, ..SftOptions::default() });
        let line = serde_json::to_value(&lines[0]).unwrap();
        let froms: Vec<&str> = line["conversations"].as_array().unwrap().iter().map(|c| c["from"].as_str().unwrap()).collect();
        assert_eq!(froms, ["system", "human", "gpt", "human", "gpt"]);
        assert_eq!(line["conversations"][1]["value"], "the task");
        assert_eq!((&line["meta"]["task_id"], &line["meta"]["simulated"]), (&json!("t"), &json!(true)));
        assert!(line["meta"]["tokens"].as_u64().unwrap() > 0);
    }

    #[test]
    fn keeping_nothing_of_some_trajectories_is_a_failure_that_says_why() {
        let all_too_long = SftSummary { trajectories: 6, over_budget: 5, unscored: 1, ..SftSummary::default() };
        assert_eq!(
            all_too_long.nothing_kept().as_deref(),
            Some("all 6 trajectories were left out: 1 without a scored submission, 5 over the token budget")
        );
        assert_eq!(SftSummary { trajectories: 6, kept: 1, over_budget: 5, ..SftSummary::default() }.nothing_kept(), None);
        assert_eq!(SftSummary::default().nothing_kept(), None, "a run without trajectories drops nothing");
    }

    #[test]
    fn every_trajectory_over_a_tiny_budget_is_left_out() {
        let rollout = scored_rollout("obs", 2);
        let (lines, summary) = build(&[rollout], &[], &SftOptions { token_budget: 5, ..SftOptions::default() });
        assert!(lines.is_empty());
        assert_eq!(summary.nothing_kept().as_deref(), Some("the 1 trajectory was left out: 1 over the token budget"));
    }

    #[test]
    fn the_summary_names_every_reason() {
        let s = SftSummary {
            trajectories: 6,
            kept: 2,
            unscored: 1,
            not_better: 1,
            over_budget: 1,
            duplicates: 1,
            shortened: 1,
            malformed: 0,
            beat_baseline: 1,
        };
        assert_eq!(
            s.describe(),
            "kept 2 of 6 trajectories (1 beat the baseline); left out: 1 without a scored submission, 1 not better than the baseline, \
             1 over the token budget, 1 duplicates; 1 shortened by eliding old observations"
        );
        let none = SftSummary { trajectories: 1, unscored: 1, ..SftSummary::default() };
        assert_eq!(none.describe(), "kept 0 of 1 trajectories; left out: 1 without a scored submission");
    }
}
