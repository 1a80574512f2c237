//! Dataset stage: the LLM proposes Hugging Face dataset ids for the idea; each is verified
//! against the Hub API until one passes, and its parquet files are staged for the task.

use serde::Deserialize;

use crate::llm::ask_json;
use crate::model::{DatasetChoice, DropReason, Outcome, Stage, TopicIdea, Unit};
use crate::pipeline::Pipeline;
use crate::ports::{ArtefactKind, ChatMessage, DatasetCheck, PortError};
use crate::template::render;

/// A proposal as the Hub port takes it, `owner/name` or `owner/name@revision`: models also
/// write the dataset's page URL (`https://huggingface.co/datasets/owner/name`, with `/tree/<rev>`
/// for a revision), a `datasets/` prefix, quotes or a trailing slash.
pub fn dataset_ref(proposal: &str) -> String {
    let mut s = proposal.trim().trim_matches(|c| matches!(c, '`' | '"' | '\'' | '<' | '>')).trim();
    s = s.split(['?', '#']).next().unwrap_or(s);
    for scheme in ["https://", "http://"] {
        s = s.strip_prefix(scheme).unwrap_or(s);
    }
    for host in ["www.huggingface.co/", "huggingface.co/", "hf.co/"] {
        s = s.strip_prefix(host).unwrap_or(s);
    }
    s = s.strip_prefix("datasets/").unwrap_or(s);
    let parts: Vec<&str> = s.trim_matches('/').split('/').collect();
    let (id, revision) = match parts.as_slice() {
        [owner, name, "tree" | "blob" | "resolve", rev, ..] => (format!("{owner}/{name}"), Some(rev.to_string())),
        [owner, name] => (format!("{owner}/{name}"), None),
        _ => (s.to_string(), None),
    };
    match (id.split_once('@'), revision) {
        (Some((id, rev)), _) if !rev.is_empty() => format!("{id}@{rev}"),
        (Some((id, _)), None) => id.to_string(),
        (_, Some(rev)) => format!("{id}@{rev}"),
        (_, None) => id,
    }
}

/// Rounds of proposals before the unit is dropped with `no_verified_dataset`.
pub const PROPOSAL_ROUNDS: usize = 3;
/// Proposals verified per round.
pub const PROPOSALS_PER_ROUND: usize = 5;

#[derive(Deserialize)]
struct Proposals {
    datasets: Vec<String>,
}

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let idea: TopicIdea = crate::worker::stored(p, &unit.id).await?;
    let mut rejected: Vec<(String, String)> = Vec::new();
    for _ in 0..PROPOSAL_ROUNDS {
        let rejected_text = if rejected.is_empty() {
            "(none)".to_string()
        } else {
            rejected.iter().map(|(id, why)| format!("- {id}: {why}")).collect::<Vec<_>>().join("\n")
        };
        let user = render(
            &p.prompts.dataset_user,
            &[("title", &idea.title), ("task_type", &idea.sample.task_type), ("idea", &idea.idea), ("rejected", &rejected_text)],
        )
        .map_err(PortError::Permanent)?;
        let messages = vec![ChatMessage::new("system", p.prompts.dataset_system.clone()), ChatMessage::new("user", user)];
        let proposals = match ask_json::<Proposals>(p, &unit.id, Stage::Dataset, crate::schemas::dataset_proposals(), messages, 400).await?
        {
            Ok(a) => a.datasets,
            Err(no) => return Ok(no.into()),
        };
        let fresh: Vec<String> = proposals
            .iter()
            .map(|id| dataset_ref(id))
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
                    crate::artefacts::share(p, &unit.id, ArtefactKind::RawData).await?;
                    let choice = DatasetChoice { meta, rejected, staged };
                    return Ok(Outcome::Advance(choice.into()));
                }
                DatasetCheck::Rejected { reason, detail } => {
                    tracing::info!(unit = %unit.id, dataset = %id, %reason, %detail, "dataset proposal rejected");
                    rejected.push((id, format!("{reason}: {detail}")));
                }
            }
        }
    }
    // Each rejection is `reason: detail`; the reason codes alone keep the drop detail short.
    let detail = rejected.iter().map(|(id, why)| format!("{id} ({})", why.split(':').next().unwrap_or(why))).collect::<Vec<_>>().join(", ");
    Ok(Outcome::Drop { reason: DropReason::NoVerifiedDataset, detail })
}

#[cfg(test)]
mod tests {
    use super::dataset_ref;

    #[test]
    fn hub_urls_prefixes_and_revisions_become_dataset_refs() {
        for (proposal, expected) in [
            ("sklearn/iris", "sklearn/iris"),
            ("  `sklearn/iris` ", "sklearn/iris"),
            ("https://huggingface.co/datasets/sklearn/diabetes", "sklearn/diabetes"),
            ("https://huggingface.co/datasets/sklearn/diabetes/", "sklearn/diabetes"),
            ("hf.co/datasets/sklearn/wine?row=3", "sklearn/wine"),
            ("datasets/sklearn/wine", "sklearn/wine"),
            ("sklearn/iris@main", "sklearn/iris@main"),
            ("https://huggingface.co/datasets/sklearn/iris/tree/abc123", "sklearn/iris@abc123"),
            ("https://huggingface.co/datasets/sklearn/iris/blob/main/data.csv", "sklearn/iris@main"),
            ("iris", "iris"),
        ] {
            assert_eq!(dataset_ref(proposal), expected, "{proposal}");
        }
    }
}
