//! Topic stage: sample a point of the taxonomy, have the LLM expand it into a challenge idea,
//! and reject ideas that nearly duplicate an earlier one (word-shingle MinHash, see
//! [`crate::minhash`]); rejections are dropped as `near_duplicate` and counted in the funnel.

use serde::Deserialize;

use crate::llm::ask_json;
use crate::minhash::Signature;
use crate::model::{Outcome, Stage, TopicIdea, Unit};
use crate::pipeline::Pipeline;
use crate::ports::{ChatMessage, PortError};
use crate::template::render;

/// Estimated Jaccard similarity of word shingles at or above which an idea counts as a near
/// duplicate.
pub const NEAR_DUPLICATE_JACCARD: f64 = 0.6;

#[derive(Deserialize)]
struct IdeaAnswer {
    title: String,
    idea: String,
}

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let sample = p.taxonomy.sample(p.settings.seed, unit.seq);
    // Earlier ideas: task units created before this one. Topic work runs in creation order, so
    // this set is the same in every run with the same seed.
    let earlier: Vec<TopicIdea> = p
        .store
        .results(Stage::Topic)?
        .into_iter()
        .filter(|(id, _)| id.as_str() < unit.id.as_str())
        .filter_map(|(_, v)| serde_json::from_value(v).ok())
        .collect();
    let taken = if earlier.is_empty() {
        "(none yet)".to_string()
    } else {
        earlier.iter().map(|i| format!("- {}", i.title)).collect::<Vec<_>>().join("\n")
    };
    let user = render(
        &p.prompts.topic_user,
        &[
            ("domain", &sample.domain),
            ("task_type", &sample.task_type),
            ("modality", &sample.modality),
            ("twist", &sample.twist),
            ("taken", &taken),
        ],
    )
    .map_err(PortError::Permanent)?;
    let messages = vec![
        ChatMessage::new("system", p.prompts.topic_system.clone()),
        ChatMessage::new("user", user),
    ];
    let answer = match ask_json::<IdeaAnswer>(p, &unit.id, Stage::Topic, crate::schemas::topic_idea(), messages, 800).await? {
        Ok(a) => a,
        Err(no) => return Ok(no.into()),
    };
    if answer.title.trim().is_empty() || answer.idea.trim().is_empty() {
        return Ok(Outcome::Drop { reason: "llm_unparseable".into(), detail: "empty title or idea".into() });
    }
    let idea = TopicIdea { sample, title: answer.title.trim().to_string(), idea: answer.idea.trim().to_string() };
    let signature = Signature::of(&format!("{} {}", idea.title, idea.idea));
    if let Some(dup) = earlier.iter().find(|e| signature.jaccard(&Signature::of(&format!("{} {}", e.title, e.idea))) >= NEAR_DUPLICATE_JACCARD) {
        return Ok(Outcome::Drop {
            reason: "near_duplicate".into(),
            detail: format!("\"{}\" nearly duplicates \"{}\"", idea.title, dup.title),
        });
    }
    Ok(Outcome::Advance(serde_json::to_value(&idea).expect("serialisable")))
}

/// Estimated Jaccard similarity of the word shingles of two texts (MinHash).
pub fn similarity(a: &str, b: &str) -> f64 {
    Signature::of(a).jaccard(&Signature::of(b))
}
