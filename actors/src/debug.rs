//! Self-debug stage: execute the bundle in the sandbox, and while a check fails send the LLM the
//! failing step and its output for a corrected bundle, a bounded number of rounds. A task that
//! passes is accepted with its baseline score; one that never passes is dropped with the reason
//! of its last failure.

use crate::llm::ask_json;
use crate::model::{AcceptedTask, DatasetChoice, Outcome, Stage, TaskBundle, TopicIdea, Unit};
use crate::pipeline::Pipeline;
use crate::ports::{ArtefactKind, ChatMessage, PortError};
use crate::template::render;
use crate::validate::{TaskCheck, check_bundle};

pub async fn run(p: &Pipeline, unit: &Unit) -> Result<Outcome, PortError> {
    let idea: TopicIdea = crate::worker::stored(p, &unit.id).await?;
    let choice: DatasetChoice = crate::worker::stored(p, &unit.id).await?;
    let mut bundle: TaskBundle = crate::worker::stored(p, &unit.id).await?;
    let paths = p.paths();
    let raw = crate::artefacts::fetch(p, &unit.id, ArtefactKind::RawData).await?;
    let rounds = p.settings.debug_rounds;
    for round in 1..=rounds {
        let work_dir = paths.round_dir(&unit.id, round);
        let check = TaskCheck {
            sandbox: p.sandbox.as_ref(),
            bundle: &bundle,
            raw_dir: &raw,
            work_dir: &work_dir,
            prepare_timeout: p.settings.prepare_timeout,
            headroom: p.settings.baseline_headroom,
            label: format!("{} round {round}", unit.id),
        };
        let (report, passed) = check_bundle(&check).await?;
        if let Some(passed) = passed {
            let final_dir = paths.final_dir(&unit.id);
            if final_dir.exists() {
                std::fs::remove_dir_all(&final_dir)
                    .map_err(|e| PortError::Transient(format!("cannot replace {}: {e}", final_dir.display())))?;
            }
            std::fs::rename(&passed.prepared.root, &final_dir)
                .map_err(|e| PortError::Transient(format!("cannot keep the accepted task: {e}")))?;
            crate::validate::write_bundle_dir(&bundle, &raw, &final_dir.join("bundle"))
                .map_err(|e| PortError::Transient(format!("cannot keep the accepted bundle: {e}")))?;
            crate::artefacts::share(p, &unit.id, ArtefactKind::PreparedTask).await?;
            let accepted = AcceptedTask {
                task_id: format!("{}_{}", bundle.name, unit.id),
                unit: unit.id.clone(),
                topic: idea,
                dataset: choice.meta,
                bundle,
                baseline_scores: passed.baseline_scores,
                rounds: round,
            };
            return Ok(Outcome::Advance(accepted.into()));
        }
        let failure = report.failure.expect("a failed check reports its failure");
        tracing::info!(unit = %unit.id, round, step = %failure.step, reason = %failure.reason, "task check failed");
        if round == rounds {
            return Ok(Outcome::Drop { reason: failure.reason, detail: format!("after {rounds} rounds: {}", failure.problem) });
        }
        let user = render(
            &p.prompts.debug_user,
            &[
                ("step", &failure.step),
                ("problem", &failure.problem),
                ("output", &failure.output),
                ("bundle_json", &serde_json::to_string_pretty(&bundle).expect("serialisable")),
            ],
        )
        .map_err(PortError::Permanent)?;
        let messages = vec![
            ChatMessage::new("system", p.prompts.codegen_system.clone()),
            ChatMessage::new("user", crate::codegen::codegen_prompt(p, &idea, &choice)?),
            ChatMessage::new("assistant", serde_json::to_string(&bundle).expect("serialisable")),
            ChatMessage::new("user", user),
        ];
        bundle = match ask_json::<TaskBundle>(
            p,
            &unit.id,
            Stage::Debug,
            crate::schemas::task_bundle(),
            messages,
            crate::codegen::BUNDLE_MAX_TOKENS,
        )
        .await?
        {
            Ok(fixed) => fixed,
            Err(no) => return Ok(no.into()),
        };
    }
    unreachable!("the loop returns in its last round")
}
