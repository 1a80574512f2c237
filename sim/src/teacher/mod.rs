//! The simulated teacher: an OpenAI-compatible chat endpoint that answers gymforge's own prompts
//! with realistic output, so the whole pipeline runs end to end with no network and no model.
//!
//! It is a test, demo and benchmark instrument, and says so: every HTTP response carries the
//! header `x-gymforge-simulated: true`, the model is `gymforge-sim-teacher` and the
//! `system_fingerprint` is `gymforge-simulated-teacher`.
//!
//! It recognises the five kinds of conversation the pipeline holds (see `config/prompts/`):
//!
//! | stage    | recognised by                                             | answer                   |
//! |----------|-----------------------------------------------------------|--------------------------|
//! | topic    | system prompt of a research lead who designs challenges   | `{"title", "idea"}`      |
//! | dataset  | system prompt of a data curator                           | `{"datasets": [...]}`    |
//! | codegen  | system prompt of the bundle-writing ML engineer           | a task bundle            |
//! | debug    | same system prompt, last user message with `FAILED STEP:` | the corrected bundle     |
//! | agent    | system prompt of the autonomous ML researcher (MLGym)     | DISCUSSION + one command |
//!
//! Answers are a pure function of [`SimConfig::seed`] and the messages ([`answer`]). The HTTP
//! server ([`serve`]) folds the request's optional `seed` into the simulator seed, the way
//! OpenAI's `seed` selects one sample, so two rollouts of the same task that send different
//! seeds take different paths.
//!
//! The simulated "knowledge" is deliberately small: the datasets of the embedded Hub mirror
//! (scikit-learn's iris, wine, breast_cancer, digits and diabetes), a few domain vocabularies for
//! ideas, one family of task scripts, and the repairs for the bugs it injects into first drafts.

mod agent;
mod codegen;
mod dataset;
mod debug;
pub mod faults;
mod python;
mod server;
mod text;
mod topic;

pub use agent::model_expressions;
pub use codegen::{Bug, draft_bug};
pub use python::EVALUATE_METRICS;
pub use server::{SIMULATED_HEADER, serve, serve_counted};

use crate::SimConfig;

/// The model id the simulator reports.
pub const MODEL_ID: &str = "gymforge-sim-teacher";
/// The `system_fingerprint` of every completion.
pub const SYSTEM_FINGERPRINT: &str = "gymforge-simulated-teacher";
/// The error message of a prompt the simulator does not recognise.
pub const UNRECOGNISED: &str = "the simulated teacher does not recognise this prompt";

/// The conversations the simulator can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimStage {
    Topic,
    Dataset,
    Codegen,
    Debug,
    Agent,
}

impl SimStage {
    pub fn as_str(self) -> &'static str {
        match self {
            SimStage::Topic => "topic",
            SimStage::Dataset => "dataset",
            SimStage::Codegen => "codegen",
            SimStage::Debug => "debug",
            SimStage::Agent => "agent",
        }
    }
}

/// Markers of each stage's system prompt (`config/prompts/*_system.md`).
const TOPIC_SYSTEM: &str = "designs benchmark challenges";
const DATASET_SYSTEM: &str = "data curator";
const CODEGEN_SYSTEM: &str = "runnable MLGym task bundle";
const AGENT_SYSTEM: &str = "autonomous machine learning researcher";
/// Markers of the user prompts, used when a conversation has no system message.
const TOPIC_USER: &str = "Ideas already taken";
const DATASET_USER: &str = "Proposals already rejected";
const CODEGEN_USER: &str = "VERIFIED DATASET";
const DEBUG_USER: &str = "FAILED STEP:";
const AGENT_USER: &str = "TASK DESCRIPTION:";

/// Which stage a conversation belongs to, from its system prompt (or, without one, from its
/// first user message). `None` when it is none of gymforge's prompts.
pub fn recognise(messages: &[(String, String)]) -> Option<SimStage> {
    let system = messages.iter().find(|(role, _)| role == "system").map(|(_, c)| c.as_str());
    let first_user = messages.iter().find(|(role, _)| role == "user").map(|(_, c)| c.as_str())?;
    let is_debug = last_with(messages, "user", DEBUG_USER).is_some();
    match system {
        Some(s) if s.contains(TOPIC_SYSTEM) => Some(SimStage::Topic),
        Some(s) if s.contains(DATASET_SYSTEM) => Some(SimStage::Dataset),
        Some(s) if s.contains(CODEGEN_SYSTEM) => Some(if is_debug { SimStage::Debug } else { SimStage::Codegen }),
        Some(s) if s.contains(AGENT_SYSTEM) => Some(SimStage::Agent),
        _ if is_debug => Some(SimStage::Debug),
        _ if first_user.contains(TOPIC_USER) => Some(SimStage::Topic),
        _ if first_user.contains(DATASET_USER) => Some(SimStage::Dataset),
        _ if first_user.contains(CODEGEN_USER) => Some(SimStage::Codegen),
        _ if first_user.contains(AGENT_USER) && first_user.contains("Remaining Steps") => Some(SimStage::Agent),
        _ => None,
    }
}

/// The simulated teacher's answer to a conversation of `(role, content)` messages.
///
/// Deterministic: the same seed and messages always give the same answer. `Err` explains why
/// the conversation is not one the simulator can answer.
pub fn answer(cfg: &SimConfig, messages: &[(String, String)]) -> Result<String, String> {
    let stage = recognise(messages).ok_or_else(|| "no gymforge stage prompt found in the messages".to_string())?;
    let first_user =
        messages.iter().find(|(role, _)| role == "user").map(|(_, c)| c.as_str()).ok_or("the conversation has no user message")?;
    match stage {
        SimStage::Topic => topic::answer(cfg, first_user),
        SimStage::Dataset => dataset::answer(cfg, first_user),
        SimStage::Codegen => codegen::answer(cfg, first_user),
        SimStage::Debug => {
            let request = last_with(messages, "user", DEBUG_USER).expect("recognised as debug");
            let codegen_prompt =
                messages.iter().find(|(role, content)| role == "user" && content.contains(CODEGEN_USER)).map(|(_, c)| c.as_str());
            debug::answer(request, codegen_prompt)
        }
        SimStage::Agent => agent::answer(cfg, messages),
    }
}

/// The content of the last message with `role` that contains `marker`.
fn last_with<'a>(messages: &'a [(String, String)], role: &str, marker: &str) -> Option<&'a str> {
    messages.iter().rev().find(|(r, c)| r == role && c.contains(marker)).map(|(_, c)| c.as_str())
}

#[cfg(test)]
pub(crate) mod testing {
    //! Prompt rendering for the unit tests: the real templates, filled like the pipeline does.

    pub(crate) fn prompt(name: &str) -> String {
        let path = format!("{}/../config/prompts/{name}.md", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    pub(crate) fn render(name: &str, values: &[(&str, &str)]) -> String {
        gymforge_actors::template::render(&prompt(name), values).expect("template renders")
    }

    pub(crate) fn msgs(pairs: &[(&str, String)]) -> Vec<(String, String)> {
        pairs.iter().map(|(r, c)| (r.to_string(), c.clone())).collect()
    }

    pub(crate) fn cfg(seed: u64) -> crate::SimConfig {
        crate::SimConfig { seed, ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn recognises_every_stage_from_the_real_prompts() {
        let topic = msgs(&[("system", prompt("topic_system")), ("user", "Domain: x\nIdeas already taken:\n".into())]);
        assert_eq!(recognise(&topic), Some(SimStage::Topic));
        let dataset = msgs(&[("system", prompt("dataset_system")), ("user", "Challenge: x".into())]);
        assert_eq!(recognise(&dataset), Some(SimStage::Dataset));
        let codegen = msgs(&[("system", prompt("codegen_system")), ("user", "VERIFIED DATASET".into())]);
        assert_eq!(recognise(&codegen), Some(SimStage::Codegen));
        let mut debug = codegen.clone();
        debug.push(("assistant".into(), "{}".into()));
        debug.push(("user".into(), render("debug_user", &[("step", "prepare"), ("problem", "p"), ("output", "o"), ("bundle_json", "{}")])));
        assert_eq!(recognise(&debug), Some(SimStage::Debug));
        let agent = msgs(&[("system", prompt("agent_system")), ("user", "TASK DESCRIPTION:\n...".into())]);
        assert_eq!(recognise(&agent), Some(SimStage::Agent));
    }

    #[test]
    fn unknown_prompts_are_refused() {
        let chat = msgs(&[("system", "You are a helpful assistant.".into()), ("user", "Hello!".into())]);
        assert_eq!(recognise(&chat), None);
        assert!(answer(&cfg(1), &chat).is_err());
        assert!(answer(&cfg(1), &[]).is_err());
    }

    #[test]
    fn recognises_user_prompts_without_a_system_message() {
        let topic = msgs(&[(
            "user",
            render(
                "topic_user",
                &[
                    ("domain", "botany"),
                    ("task_type", "classification"),
                    ("modality", "tabular"),
                    ("twist", "none"),
                    ("taken", "(none yet)"),
                ],
            ),
        )]);
        assert_eq!(recognise(&topic), Some(SimStage::Topic));
    }
}
