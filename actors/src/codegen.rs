//! Code generation stage: the LLM writes the task bundle (task text, metric spec, prepare.py,
//! baseline.py, evaluate.py) for the idea and its verified dataset.

use crate::llm::ask_json;
use crate::model::{DatasetChoice, Outcome, Stage, TaskBundle, TopicIdea, Unit};
use crate::pipeline::Pipeline;
use crate::ports::{ChatMessage, PortError};
use crate::template::render;

/// Output token budget of a bundle (three scripts and the task text).
pub const BUNDLE_MAX_TOKENS: u32 = 8000;

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let idea: TopicIdea = crate::worker::stored(p, &unit.id).await?;
    let choice: DatasetChoice = crate::worker::stored(p, &unit.id).await?;
    let messages =
        vec![ChatMessage::new("system", p.prompts.codegen_system.clone()), ChatMessage::new("user", codegen_prompt(p, &idea, &choice)?)];
    match ask_json::<TaskBundle>(p, &unit.id, Stage::Codegen, crate::schemas::task_bundle(), messages, BUNDLE_MAX_TOKENS).await? {
        Ok(bundle) => Ok(Outcome::Advance(bundle.into())),
        Err(no) => Ok(no.into()),
    }
}

/// The user prompt of the codegen stage (the debug stage repeats it as context).
pub fn codegen_prompt(p: &Pipeline, idea: &TopicIdea, choice: &DatasetChoice) -> Result<String, PortError> {
    // The dataset as the model should see it: no download URLs, which are irrelevant to it.
    let mut meta = serde_json::to_value(&choice.meta).expect("serialisable");
    if let Some(obj) = meta.as_object_mut() {
        obj.remove("parquet_files");
    }
    let raw_files = choice.staged.iter().map(|f| format!("- raw/{}", f.path)).collect::<Vec<_>>().join("\n");
    render(
        &p.prompts.codegen_user,
        &[
            ("idea_json", &serde_json::to_string_pretty(idea).expect("serialisable")),
            ("dataset_json", &serde_json::to_string_pretty(&meta).expect("serialisable")),
            ("raw_files", &raw_files),
        ],
    )
    .map_err(PortError::Permanent)
}
