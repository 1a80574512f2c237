//! How stages talk to the LLM port: every call is accounted in the store, and JSON answers are
//! parsed tolerantly and re-asked with the parse error a bounded number of times.

use serde::de::DeserializeOwned;

use crate::model::Stage;
use crate::pipeline::Pipeline;
use crate::ports::{ChatMessage, ChatReply, ChatRequest, PortError, Usage};

/// Re-asks after an unparseable JSON answer before the unit fails with `llm_unparseable`.
pub const JSON_REASKS: usize = 2;

/// Sends one chat request and records its usage against the unit and stage.
pub async fn chat(
    p: &Pipeline,
    unit: &str,
    stage: Stage,
    request: ChatRequest,
) -> Result<ChatReply, PortError> {
    let reply = p.llm.chat(stage, request).await?;
    let usage = Usage {
        calls: 1,
        input_tokens: reply.input_tokens,
        output_tokens: reply.output_tokens,
        cost_usd: reply.cost_usd,
    };
    p.store.add_usage(unit, stage, &reply.model, &usage)?;
    Ok(reply)
}

/// Asks for a JSON answer of type `T`. `Ok(Err(reason))` means the model never produced a
/// parseable answer within the re-ask budget.
pub async fn ask_json<T: DeserializeOwned>(
    p: &Pipeline,
    unit: &str,
    stage: Stage,
    mut messages: Vec<ChatMessage>,
    max_tokens: u32,
) -> Result<Result<T, String>, PortError> {
    let seed = crate::seed::hash(&[&p.settings.seed.to_string(), unit, stage.as_str()]);
    let mut last_error = String::new();
    for _ in 0..=JSON_REASKS {
        let request = ChatRequest {
            messages: messages.clone(),
            max_tokens,
            temperature: 0.7,
            json: true,
            seed: Some(seed),
        };
        let reply = chat(p, unit, stage, request).await?;
        match crate::json::extract::<T>(&reply.content) {
            Ok(parsed) => return Ok(Ok(parsed)),
            Err(e) => {
                tracing::info!(unit, %stage, error = %e, "unparseable LLM answer, asking again");
                last_error = e.clone();
                messages.push(ChatMessage::new("assistant", reply.content));
                messages.push(ChatMessage::new(
                    "user",
                    format!("Your answer could not be parsed: {e}. Answer again with only the JSON object."),
                ));
            }
        }
    }
    Ok(Err(last_error))
}

/// The outcome for a unit whose LLM answers never parsed.
pub fn unparseable(detail: String) -> crate::model::Outcome {
    crate::model::Outcome::Drop { reason: "llm_unparseable".to_string(), detail }
}
