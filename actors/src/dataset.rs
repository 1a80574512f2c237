//! Dataset stage: the LLM proposes Hugging Face dataset ids for the idea; each is verified
//! against the Hub API until one passes, and its parquet files are staged for the task.

use serde::Deserialize;

use crate::llm::{ask_json, unparseable};
use crate::model::{DatasetChoice, Outcome, Stage, TopicIdea, Unit};
use crate::pipeline::Pipeline;
use crate::ports::{ChatMessage, DatasetCheck, PortError};
use crate::template::render;

/// Rounds of proposals before the unit is dropped with `no_verified_dataset`.
pub const PROPOSAL_ROUNDS: usize = 3;
/// Proposals verified per round.
pub const PROPOSALS_PER_ROUND: usize = 5;

#[derive(Deserialize)]
struct Proposals {
    datasets: Vec<String>,
}

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let idea: TopicIdea = crate::worker::stored(p, &unit.id, Stage::Topic)?;
    let mut rejected: Vec<(String, String)> = Vec::new();
    for _ in 0..PROPOSAL_ROUNDS {
        let rejected_text = if rejected.is_empty() {
            "(none)".to_string()
        } else {
            rejected.iter().map(|(id, why)| format!("- {id}: {why}")).collect::<Vec<_>>().join("\n")
        };
        let user = render(
            &p.prompts.dataset_user,
            &[
                ("title", &idea.title),
                ("task_type", &idea.sample.task_type),
                ("idea", &idea.idea),
                ("rejected", &rejected_text),
            ],
        )
        .map_err(PortError::Permanent)?;
        let messages = vec![
            ChatMessage::new("system", p.prompts.dataset_system.clone()),
            ChatMessage::new("user", user),
        ];
        let proposals = match ask_json::<Proposals>(p, &unit.id, Stage::Dataset, crate::schemas::dataset_proposals(), messages, 400).await? {
            Ok(a) => a.datasets,
            Err(e) => return Ok(unparseable(e)),
        };
        let fresh: Vec<String> = proposals
            .into_iter()
            .map(|id| id.trim().to_string())
            .filter(|id| !rejected.iter().any(|(r, _)| r == id))
            .take(PROPOSALS_PER_ROUND)
            .collect();
        if fresh.is_empty() {
            break;
        }
        for id in fresh {
            match p.hub.verify(&id).await? {
                DatasetCheck::Verified(meta) => {
                    let raw = p.paths().raw_dir(&unit.id);
                    crate::paths::fresh_dir(&raw).map_err(|e| PortError::Transient(format!("cannot prepare {}: {e}", raw.display())))?;
                    let staged = p.hub.download(&meta, &raw).await?;
                    let choice = DatasetChoice { meta, rejected, staged };
                    return Ok(Outcome::Advance(serde_json::to_value(&choice).expect("serialisable")));
                }
                DatasetCheck::Rejected { reason, detail } => {
                    tracing::info!(unit = %unit.id, dataset = %id, %reason, %detail, "dataset proposal rejected");
                    rejected.push((id, reason));
                }
            }
        }
    }
    let detail = rejected.iter().map(|(id, why)| format!("{id} ({why})")).collect::<Vec<_>>().join(", ");
    Ok(Outcome::Drop { reason: "no_verified_dataset".into(), detail })
}
