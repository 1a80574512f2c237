//! How stages talk to the LLM port: every call is accounted in the store, and JSON answers are
//! asked for with a schema, parsed tolerantly, and re-asked with the parse error a bounded
//! number of times.

use serde::de::DeserializeOwned;

use crate::model::Stage;
use crate::pipeline::Pipeline;
use crate::ports::{ChatMessage, ChatReply, ChatRequest, Llm, PortError, ResponseFormat, Usage};

/// Re-asks after an unparseable JSON answer before the unit fails with `llm_unparseable`.
pub const JSON_REASKS: usize = 2;

/// Sends one chat request and records its usage against its unit, stage and endpoint.
pub async fn chat(p: &Pipeline, stage: Stage, request: ChatRequest) -> Result<ChatReply, PortError> {
    let unit = request.unit.clone();
    let reply = p.llm.chat(stage, request).await?;
    record_usage(p, &unit, stage, &reply)?;
    Ok(reply)
}

fn record_usage(p: &Pipeline, unit: &str, stage: Stage, reply: &ChatReply) -> Result<(), PortError> {
    let usage = Usage { calls: 1, input_tokens: reply.input_tokens, output_tokens: reply.output_tokens, cost_usd: reply.cost_usd };
    p.store.add_usage(unit, stage, &reply.endpoint, &reply.model, &usage)
}

/// Asks for a JSON answer of type `T` following `schema` (see [`crate::schemas`]).
/// `Ok(Err(reason))` means the model never produced a parseable answer within the re-ask budget.
pub async fn ask_json<T: DeserializeOwned>(
    p: &Pipeline,
    unit: &str,
    stage: Stage,
    schema: (&'static str, serde_json::Value),
    messages: Vec<ChatMessage>,
    max_tokens: u32,
) -> Result<Result<T, String>, PortError> {
    let request = ChatRequest {
        unit: unit.to_string(),
        messages,
        max_tokens,
        temperature: 0.7,
        response: ResponseFormat::Json { name: schema.0, schema: schema.1 },
        seed: Some(crate::seed::hash(&[&p.settings.seed.to_string(), unit, stage.as_str()])),
    };
    ask_json_with(&*p.llm, stage, request, &|reply| record_usage(p, unit, stage, reply)).await
}

/// The re-ask loop of [`ask_json`] over any LLM port: an answer that does not parse into `T` is
/// sent back with the parse error, at most [`JSON_REASKS`] times. `on_reply` sees every reply.
pub async fn ask_json_with<T: DeserializeOwned>(
    llm: &dyn Llm,
    stage: Stage,
    mut request: ChatRequest,
    on_reply: &(dyn Fn(&ChatReply) -> Result<(), PortError> + Sync),
) -> Result<Result<T, String>, PortError> {
    let mut last_error = String::new();
    for _ in 0..=JSON_REASKS {
        let reply = llm.chat(stage, request.clone()).await?;
        on_reply(&reply)?;
        match crate::json::extract::<T>(&reply.content) {
            Ok(parsed) => return Ok(Ok(parsed)),
            Err(e) => {
                tracing::info!(unit = %request.unit, %stage, error = %e, "unparseable LLM answer, asking again");
                last_error = e.clone();
                request.messages.push(ChatMessage::new("assistant", reply.content));
                request.messages.push(ChatMessage::new(
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
