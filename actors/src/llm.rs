//! How stages talk to the LLM port: every answered call is accounted in the store, and JSON
//! answers are asked for with a schema, parsed tolerantly ([`crate::json`]), and re-asked a
//! bounded number of times.
//!
//! An answer is not always usable, and what it is decides what happens next:
//!
//! | answer                          | JSON stage                                  |
//! |---------------------------------|---------------------------------------------|
//! | a refusal (`message.refusal`)   | dropped `llm_refused`, the text kept        |
//! | stopped by the content filter   | dropped `llm_content_filter`                |
//! | empty                           | dropped `llm_empty`                         |
//! | cut off (`finish_reason: length`) | re-asked once, larger when the cap allows and without the cut-off text; then `llm_truncated` |
//! | unparseable                     | re-asked with the error, [`JSON_REASKS`] times; then `llm_unparseable` |
//!
//! None of them is retried as a transport failure: each was answered, and billed.

use serde::de::DeserializeOwned;

use crate::model::{DropReason, Outcome, Stage};
use crate::pipeline::Pipeline;
use crate::ports::{ChatMessage, ChatReply, ChatRequest, Finish, Llm, PortError, ResponseFormat, Usage};

/// Re-asks after an unparseable JSON answer before the unit fails with `llm_unparseable`.
pub const JSON_REASKS: usize = 2;
/// Re-asks after a cut-off answer before the unit fails with `llm_truncated`.
pub const TRUNCATION_REASKS: usize = 1;

/// Sends one chat request and records its usage against its unit, stage and endpoint.
pub async fn chat(p: &Pipeline, stage: Stage, request: ChatRequest) -> Result<ChatReply, PortError> {
    let unit = request.unit.clone();
    let reply = p.llm.chat(stage, request).await?;
    record_usage(p, &unit, stage, &reply).await?;
    Ok(reply)
}

async fn record_usage(p: &Pipeline, unit: &str, stage: Stage, reply: &ChatReply) -> Result<(), PortError> {
    let usage = Usage { calls: 1, input_tokens: reply.input_tokens, output_tokens: reply.output_tokens, cost_usd: reply.cost_usd };
    p.store.add_usage(unit, stage, &reply.endpoint, &reply.model, &usage).await
}

/// Why a stage got no usable answer: the unit is dropped with `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoAnswer {
    pub reason: DropReason,
    pub detail: String,
}

impl From<NoAnswer> for Outcome {
    fn from(n: NoAnswer) -> Outcome {
        Outcome::Drop { reason: n.reason, detail: n.detail }
    }
}

/// An answer that is not one whatever its text: a refusal, a content-filter stop, or nothing.
pub fn unusable(reply: &ChatReply) -> Option<NoAnswer> {
    if let Some(refusal) = &reply.refusal {
        return Some(NoAnswer { reason: DropReason::LlmRefused, detail: format!("the model refused: {}", short(refusal)) });
    }
    if reply.finish == Finish::ContentFilter {
        let partial = if reply.content.trim().is_empty() { String::new() } else { format!(" after: {}", short(&reply.content)) };
        return Some(NoAnswer {
            reason: DropReason::LlmContentFilter,
            detail: format!("the provider's content filter stopped the answer{partial}"),
        });
    }
    if reply.content.trim().is_empty() && reply.finish != Finish::Length {
        return Some(NoAnswer {
            reason: DropReason::LlmEmpty,
            detail: format!("the model answered with no text ({} output tokens)", reply.output_tokens),
        });
    }
    None
}

/// Asks for a JSON answer of type `T` following `schema` (see [`crate::schemas`]).
/// `Ok(Err(_))` means the model gave no usable answer within the re-ask budgets.
pub async fn ask_json<T: DeserializeOwned>(
    p: &Pipeline,
    unit: &str,
    stage: Stage,
    schema: (&'static str, serde_json::Value),
    messages: Vec<ChatMessage>,
    max_tokens: u32,
) -> Result<Result<T, NoAnswer>, PortError> {
    let request = ChatRequest {
        unit: unit.to_string(),
        messages,
        max_tokens,
        temperature: 0.7,
        response: ResponseFormat::Json { name: schema.0, schema: schema.1 },
        seed: Some(crate::seed::hash(&[&p.settings.seed.to_string(), unit, stage.as_str()])),
    };
    ask_json_with(&*p.llm, stage, request, &RecordUsage { p, unit, stage }).await
}

/// What sees every reply of [`ask_json_with`]: usage accounting in the pipeline, a check in a
/// test (any `Fn(&ChatReply) -> Result<(), PortError>`).
#[async_trait::async_trait]
pub trait OnReply: Sync {
    async fn reply(&self, reply: &ChatReply) -> Result<(), PortError>;
}

#[async_trait::async_trait]
impl<F: Fn(&ChatReply) -> Result<(), PortError> + Sync> OnReply for F {
    async fn reply(&self, reply: &ChatReply) -> Result<(), PortError> {
        self(reply)
    }
}

struct RecordUsage<'a> {
    p: &'a Pipeline,
    unit: &'a str,
    stage: Stage,
}

#[async_trait::async_trait]
impl OnReply for RecordUsage<'_> {
    async fn reply(&self, reply: &ChatReply) -> Result<(), PortError> {
        record_usage(self.p, self.unit, self.stage, reply).await
    }
}

/// The re-ask loop of [`ask_json`] over any LLM port (see the table at the top). `on_reply`
/// sees every reply.
pub async fn ask_json_with<T: DeserializeOwned>(
    llm: &dyn Llm,
    stage: Stage,
    request: ChatRequest,
    on_reply: &dyn OnReply,
) -> Result<Result<T, NoAnswer>, PortError> {
    let schema = match &request.response {
        ResponseFormat::Json { schema, .. } => Some(schema.clone()),
        ResponseFormat::Text => None,
    };
    let original = request.messages.clone();
    let mut request = request;
    let mut unparseable = 0;
    let mut truncated = 0;
    loop {
        let reply = llm.chat(stage, request.clone()).await?;
        on_reply.reply(&reply).await?;
        if let Some(no) = unusable(&reply) {
            tracing::info!(unit = %request.unit, %stage, reason = %no.reason, detail = %no.detail, "unusable LLM answer");
            return Ok(Err(no));
        }
        if reply.finish == Finish::Length {
            truncated += 1;
            let asked = request.max_tokens;
            if truncated > TRUNCATION_REASKS {
                return Ok(Err(NoAnswer {
                    reason: DropReason::LlmTruncated,
                    detail: format!("the answer was cut off at {asked} tokens {truncated} times (finish_reason: length)"),
                }));
            }
            // The cut-off text is not sent back: it would only grow the prompt.
            let larger = llm.limits(stage).larger_answer(asked);
            tracing::info!(unit = %request.unit, %stage, asked, larger, "cut-off LLM answer, asking again");
            request.max_tokens = larger;
            request.messages = original.clone();
            if larger == asked {
                request.messages.push(ChatMessage::new(
                    "user",
                    format!("Your previous answer was cut off at {asked} tokens. Answer again, more briefly, with only the JSON object."),
                ));
            }
            continue;
        }
        match crate::json::extract::<T>(&reply.content, schema.as_ref()) {
            Ok(parsed) => return Ok(Ok(parsed)),
            Err(e) => {
                unparseable += 1;
                if unparseable > JSON_REASKS {
                    return Ok(Err(NoAnswer { reason: DropReason::LlmUnparseable, detail: e }));
                }
                tracing::info!(unit = %request.unit, %stage, error = %e, "unparseable LLM answer, asking again");
                request.messages.push(ChatMessage::new("assistant", reply.content));
                request.messages.push(ChatMessage::new(
                    "user",
                    format!("Your answer could not be parsed: {e}. Answer again with only the JSON object."),
                ));
            }
        }
    }
}

/// A model's text for a one-line detail: whitespace collapsed, at most 300 characters.
fn short(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 300 { format!("{}...", line.chars().take(300).collect::<String>()) } else { line }
}
