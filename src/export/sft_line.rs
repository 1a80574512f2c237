//! One SFT example per rollout: the chat messages the model saw at its last step, with the
//! rollout's scores and whether it beat its task's baseline. Which rollouts are kept is
//! `crate::sft`'s choice.

use gymforge_actors::model::{AcceptedTask, Direction, RolloutRecord, Scores};
use gymforge_actors::ports::ChatMessage;
use serde::Serialize;

/// One supervised example in the chat layout (`{"messages": [...], "meta": {...}}`).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SftExample {
    pub messages: Vec<ChatMessage>,
    pub meta: SftMeta,
}

/// What is known about an example: where it comes from and how well its rollout did.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SftMeta {
    pub task_id: String,
    pub run_name: String,
    pub run_index: u32,
    pub model: String,
    pub exit_status: String,
    /// The scores of the last submission.
    pub score: Option<Scores>,
    /// The best value of the task's priority metric over the rollout's submissions.
    pub best_score: Option<f64>,
    pub priority_metric: Option<String>,
    pub direction: Option<Direction>,
    pub baseline: Scores,
    pub beats_baseline: Option<bool>,
    pub steps: usize,
    /// Whether the teacher that wrote it was the simulated one.
    pub simulated: bool,
    /// The messages' token count, as the SFT budget counts it.
    pub tokens: u64,
}

/// Best value of `metric` over `scores` in `direction`, ignoring entries without a finite value.
pub fn best_score(scores: &[Scores], metric: &str, direction: Direction) -> Option<f64> {
    scores.iter().filter_map(|s| s.get(metric).copied()).filter(|v| v.is_finite()).reduce(|a, b| match direction {
        Direction::Maximize => a.max(b),
        Direction::Minimize => a.min(b),
    })
}

/// One SFT line for a rollout: the messages the model saw at its last step (the history up to
/// the last answer, observations older than the last `keep_observations` elided as in the
/// rollout), roles and contents only, plus metadata. `None` when the rollout has no scored
/// submission or its history is not a usable conversation. `meta.tokens` is left at 0 for the
/// caller, which counts the messages when it fits them to its budget.
pub fn sft_line(rollout: &RolloutRecord, task: Option<&AcceptedTask>, keep_observations: usize, simulated: bool) -> Option<SftExample> {
    if !rollout.has_scored_submission() {
        return None;
    }
    let history = &rollout.trajectory.history;
    let last_assistant = history.iter().rposition(|m| m.role == "assistant")?;
    if history.first()?.role != "system" {
        return None;
    }
    let messages = gymforge_actors::rollout::model_input(&history[..=last_assistant], keep_observations);

    let info = &rollout.trajectory.info;
    let (best, beats_baseline, metric, direction) = match task {
        Some(t) => {
            let metric = t.bundle.priority_metric.as_str();
            let best = best_score(&info.score, metric, t.bundle.direction);
            let beats = match (best, rollout.baseline_scores.get(metric)) {
                (Some(b), Some(&base)) => Some(match t.bundle.direction {
                    Direction::Maximize => b > base,
                    Direction::Minimize => b < base,
                }),
                _ => None,
            };
            (best, beats, Some(metric.to_string()), Some(t.bundle.direction))
        }
        None => (None, None, None, None),
    };
    Some(SftExample {
        messages,
        meta: SftMeta {
            task_id: rollout.task_id.clone(),
            run_name: rollout.run_name.clone(),
            run_index: rollout.run_index,
            model: rollout.model.clone(),
            exit_status: info.exit_status.clone(),
            score: info.score.last().cloned(),
            best_score: best,
            priority_metric: metric,
            direction,
            baseline: rollout.baseline_scores.clone(),
            beats_baseline,
            steps: rollout.trajectory.trajectory.len(),
            simulated,
            tokens: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use serde_json::{Value, json};

    use gymforge_actors::ports::Outputs;

    use crate::export::OutputDir;
    use crate::export::fixtures::{TURNS, final_inputs, rollout, scores};

    #[test]
    fn sft_lines_are_chat_examples_with_meta() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let inputs = final_inputs();
        out.finalize(&inputs).unwrap();
        let text = fs::read_to_string(out.sft_path()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        // Rollout 1 has no score; rollout 2 repeats rollout 0's messages exactly.
        assert_eq!(lines.len(), 2);
        for line in &lines {
            let messages = line["messages"].as_array().unwrap();
            assert_eq!(messages.first().unwrap()["role"], "system");
            assert_eq!(messages.last().unwrap()["role"], "assistant");
            for m in messages {
                let obj = m.as_object().unwrap();
                assert_eq!(obj.len(), 2, "only role and content: {m}");
            }
        }
        assert_eq!(lines[0]["messages"].as_array().unwrap().len(), 5);
        assert_eq!(lines[0]["messages"][1]["content"], "TASK DESCRIPTION: classify wines");
        let meta = &lines[0]["meta"];
        assert_eq!(meta["task_id"], "wineT1");
        assert_eq!(meta["exit_status"], "submitted");
        assert_eq!(meta["score"], json!({"accuracy": 0.8}));
        assert_eq!(meta["best_score"], json!(0.9));
        assert_eq!(meta["beats_baseline"], json!(true));
        assert_eq!(meta["baseline"], json!({"accuracy": 0.75, "f1": 0.7}));
        assert_eq!(meta["steps"], json!(1));
        // Minimised metric: best is the smallest.
        assert_eq!(lines[1]["meta"]["best_score"], json!(2.0));
        assert_eq!(lines[1]["meta"]["direction"], "minimize");
        assert_eq!(lines[1]["meta"]["beats_baseline"], json!(true));

        // Histories that cannot be training examples are left out.
        let no_system = rollout("wineT1", 5, vec![scores(&[("accuracy", 0.8)])], &TURNS[1..]);
        assert!(sft_line(&no_system, None, 5, false).is_none());
        let no_assistant = rollout("wineT1", 6, vec![scores(&[("accuracy", 0.8)])], &TURNS[..2]);
        assert!(sft_line(&no_assistant, None, 5, false).is_none());
    }
}
