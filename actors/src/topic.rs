//! Topic stage: sample a point of the taxonomy, have the LLM expand it into a challenge idea,
//! and reject ideas that nearly duplicate an earlier one (word-shingle MinHash, see
//! [`crate::minhash`]); rejections are dropped as `near_duplicate` and counted in the funnel.

use serde::Deserialize;

use crate::llm::ask_json;
use crate::minhash::{Index, Signature};
use crate::model::StageOutput;
use crate::model::{DropReason, Outcome, Stage, TopicIdea, Unit};
use crate::pipeline::Pipeline;
use crate::ports::{ChatMessage, PortError};
use crate::template::render;

/// Estimated Jaccard similarity of word shingles at or above which an idea counts as a near
/// duplicate.
pub const NEAR_DUPLICATE_JACCARD: f64 = 0.6;

/// Earlier titles shown to the model as taken: the most recent ones (the near-duplicate test
/// covers them all), so the prompt stays the same size however long the run.
pub const TAKEN_TITLES_SHOWN: usize = 60;

/// The run's topic ideas, kept between units so a new idea costs the same whatever the number
/// of earlier ones: read from the store once, then grown by each idea this process accepts
/// (with a shared store, also by the ideas other nodes committed, read before each topic).
#[derive(Default)]
pub struct Ideas {
    known: tokio::sync::Mutex<Option<Known>>,
}

struct Known {
    index: Index<String>,
    /// `(unit, title)` in unit order: the titles to show as taken.
    titles: std::collections::BTreeMap<String, String>,
}

impl Known {
    /// Keeps a unit's first idea: a later one for the same unit (after a failed commit) only
    /// differs in what the index compares it by.
    fn add(&mut self, unit: &str, idea: &TopicIdea) {
        if !self.titles.contains_key(unit) {
            self.titles.insert(unit.to_string(), idea.title.clone());
            self.index.insert(unit.to_string(), signature(idea));
        }
    }
}

fn signature(idea: &TopicIdea) -> Signature {
    Signature::of(&format!("{} {}", idea.title, idea.idea))
}

#[derive(Deserialize)]
struct IdeaAnswer {
    title: String,
    idea: String,
}

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let sample = p.taxonomy.sample(p.settings.seed, unit.seq);
    // Earlier ideas: task units created before this one. Topic work runs in creation order, so
    // this set is the same in every run with the same seed.
    let taken = {
        let mut known = p.ideas.known.lock().await;
        // Other nodes of a shared store settle topics too: their ideas are read each time.
        let fresh = known.is_none() || p.store.is_shared();
        let known = known.get_or_insert_with(|| Known { index: Index::default(), titles: Default::default() });
        if fresh {
            for (id, result) in p.store.results(Stage::Topic).await? {
                if let Some(idea) = TopicIdea::from_result(result) {
                    known.add(&id, &idea);
                }
            }
        }
        let earlier: Vec<&String> = known.titles.range(..unit.id.clone()).rev().take(TAKEN_TITLES_SHOWN).map(|(_, t)| t).collect();
        if earlier.is_empty() {
            "(none yet)".to_string()
        } else {
            earlier.iter().rev().map(|t| format!("- {t}")).collect::<Vec<_>>().join("\n")
        }
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
    let messages = vec![ChatMessage::new("system", p.prompts.topic_system.clone()), ChatMessage::new("user", user)];
    let answer = match ask_json::<IdeaAnswer>(p, &unit.id, Stage::Topic, crate::schemas::topic_idea(), messages, 800).await? {
        Ok(a) => a,
        Err(no) => return Ok(no.into()),
    };
    if answer.title.trim().is_empty() || answer.idea.trim().is_empty() {
        return Ok(Outcome::Drop { reason: DropReason::LlmUnparseable, detail: "empty title or idea".into() });
    }
    let idea = TopicIdea { sample, title: answer.title.trim().to_string(), idea: answer.idea.trim().to_string() };
    let mut known = p.ideas.known.lock().await;
    let known = known.as_mut().expect("loaded above");
    let duplicate = known.index.most_similar(&signature(&idea), NEAR_DUPLICATE_JACCARD, |id| id.as_str() < unit.id.as_str());
    if let Some((dup, _)) = duplicate {
        return Ok(Outcome::Drop {
            reason: DropReason::NearDuplicate,
            detail: format!("\"{}\" nearly duplicates \"{}\"", idea.title, known.titles[dup]),
        });
    }
    // Known before it is committed: a unit retried after a failed commit finds only itself,
    // which the `<` above leaves out.
    known.add(&unit.id, &idea);
    Ok(Outcome::Advance(idea.into()))
}

/// Estimated Jaccard similarity of the word shingles of two texts (MinHash).
pub fn similarity(a: &str, b: &str) -> f64 {
    Signature::of(a).jaccard(&Signature::of(b))
}
