//! `gymforge run` against a teacher that answers the way real models deviate: refusals, empty
//! answers, content-filter stops, cut-off answers, drafts before the final answer, loose JSON,
//! Hub URLs for dataset ids, agent commands in the wrong wrapping, and context limits.
//!
//! Each test starts [`Deviant`] (tests/common/deviate.rs), a proxy in front of the simulated
//! teacher that rewrites its answers at the stages a case applies to, runs the real binary on
//! it (`--tasks 1 --rollouts 1`, one topic, short rollouts) and checks the outcome end to end:
//! an answer that can be read is read, and the batch makes the same task (and trajectory) as an
//! undisturbed run; one that cannot drops its unit with its own reason. In every run the calls
//! and cost report.json counts per stage are the answers the server gave.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::common;

use common::deviate::{
    Case, DRAFT_DATASET, DRAFT_TITLE, Deviant, EXAMPLE_BLOCK, Exchange, HubForm, JSON_STAGES, NON_ASCII, REFUSAL, Setup,
};
use gymforge_actors::model::Stage;
use serde_json::Value;

/// Agent steps per rollout in every run here, the undisturbed one included: enough for the
/// simulated agent to look around, write and run a training script and validate it.
const MAX_STEPS: u32 = 6;

/// What one `gymforge run` left.
struct Finished {
    output: Output,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Finished {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn text(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.output.status,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    fn report(&self) -> Value {
        let path = self.out.join("report.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.text())))
            .unwrap()
    }

    /// The stage's funnel entry in report.json.
    fn funnel(&self, stage: Stage) -> Value {
        self.report()["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == stage.as_str())
            .cloned()
            .expect("every stage is in the funnel")
    }

    /// LLM calls report.json counts for the stage.
    fn calls(&self, stage: Stage) -> u64 {
        self.report()["llm"]["by_stage"][stage.as_str()]["calls"].as_u64().unwrap_or(0)
    }

    fn cost(&self, stage: Stage) -> f64 {
        self.report()["llm"]["by_stage"][stage.as_str()]["cost_usd"].as_f64().unwrap_or(0.0)
    }

    fn tasks(&self) -> Value {
        common::accepted_tasks(&self.out)
    }

    /// The only trajectory of the run.
    fn trajectory(&self) -> Value {
        let files = common::traj_files(&self.out);
        assert_eq!(files.len(), 1, "one trajectory: {files:?}\n{}", self.text());
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap()
    }

    fn exit_status(&self) -> String {
        self.trajectory()["info"]["exit_status"].as_str().unwrap().to_string()
    }
}

/// What a run adds to the configuration: keys of the JSON stages' endpoint, of the agent's
/// endpoint, and of `[agent]`.
#[derive(Default)]
struct Extra<'a> {
    json_keys: &'a str,
    agent_keys: &'a str,
    agent: &'a str,
}

/// Runs `gymforge run --tasks 1 --rollouts 1` against `deviant`, one topic per task and
/// [`MAX_STEPS`] agent steps, with `extra` settings.
fn run_with(deviant: &Deviant, extra: Extra<'_>) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[run]\nmax_topics_per_task = 1\n\n[agent]\nmax_steps = {MAX_STEPS}\n{}",
        deviant.config(extra.json_keys, extra.agent_keys),
        extra.agent
    );
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config).unwrap();
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_gymforge"))
        .args(["run", "--tasks", "1", "--rollouts", "1", "--config"])
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("gymforge runs");
    let finished = Finished { output, out, _dir: dir };
    assert_accounted(&finished, deviant);
    finished
}

fn run(deviant: &Deviant) -> Finished {
    run_with(deviant, Extra::default())
}

/// report.json counts, per stage, exactly the answers the server gave, each at a cost.
fn assert_accounted(f: &Finished, deviant: &Deviant) {
    assert_eq!(deviant.unrecognised(), 0, "every request was one of gymforge's stages");
    for stage in JSON_STAGES.into_iter().chain([Stage::Rollout]) {
        let answered = deviant.answered(stage);
        assert_eq!(f.calls(stage), answered, "{stage}: report.json counts the server's answers\n{}", f.text());
        if answered > 0 {
            assert!(f.cost(stage) > 0.0, "{stage}: the answers cost something\n{}", f.text());
        }
    }
}

/// What an undisturbed run makes: the reference of the parse cases.
struct Undisturbed {
    tasks: Value,
    actions: BTreeMap<String, Vec<String>>,
    calls: BTreeMap<Stage, u64>,
    /// Estimated prompt tokens of each agent turn.
    rollout_prompts: Vec<u64>,
    steps: usize,
}

fn undisturbed() -> &'static Undisturbed {
    static RUN: OnceLock<Undisturbed> = OnceLock::new();
    RUN.get_or_init(|| {
        let deviant = Deviant::start(Setup::undisturbed());
        let f = run(&deviant);
        assert_eq!(f.code(), Some(0), "{}", f.text());
        for stage in JSON_STAGES {
            assert!(deviant.answered(stage) >= 1, "the undisturbed run goes through {stage} (every first draft is buggy)");
        }
        Undisturbed {
            tasks: f.tasks(),
            actions: common::actions(&f.out),
            calls: JSON_STAGES.into_iter().chain([Stage::Rollout]).map(|s| (s, f.calls(s))).collect(),
            rollout_prompts: deviant.exchanges(Stage::Rollout).iter().map(|e| e.prompt_tokens).collect(),
            steps: f.trajectory()["trajectory"].as_array().unwrap().len(),
        }
    })
}

/// The only accepted task of a run.
fn only_task(tasks: &Value) -> &Value {
    let all = tasks.as_array().unwrap();
    assert_eq!(all.len(), 1, "{tasks}");
    &all[0]
}

/// Runs `case` at `stages`, expects the batch to meet its target with the same task as the
/// undisturbed run, each rewritten answer read at once (no re-ask), and returns the run.
fn parses_as_undisturbed(case: Case, stages: &[Stage]) -> (Finished, Deviant) {
    let reference = undisturbed();
    let deviant = Deviant::start(Setup::new(case.clone(), stages));
    let f = run(&deviant);
    assert_eq!(f.code(), Some(0), "{case:?}: the batch meets its target\n{}", f.text());
    for &stage in stages {
        assert!(deviant.rewritten(stage) >= 1, "{case:?} was applied at {stage}");
        assert_eq!(f.calls(stage), reference.calls[&stage], "{case:?} at {stage}: read without a re-ask\n{}", f.text());
    }
    assert_eq!(f.tasks(), reference.tasks, "{case:?}: the same task as undisturbed");
    (f, deviant)
}

/// Runs `case` at each of `stages` in turn (one stage per run) and expects the unit dropped
/// there with `reason` after `calls` answers, the batch short of its target (exit 3).
fn drops_at_each(case: Case, stages: &[Stage], reason: &str, calls: u64) -> Vec<(Stage, Finished, Deviant)> {
    let mut runs = Vec::new();
    for &stage in stages {
        let deviant = Deviant::start(Setup::new(case.clone(), &[stage]));
        let f = run(&deviant);
        assert_eq!(f.code(), Some(3), "{case:?} at {stage}: short of its target\n{}", f.text());
        let funnel = f.funnel(stage);
        assert_eq!(funnel["dropped"], 1, "{case:?} at {stage}: {funnel}\n{}", f.text());
        assert_eq!(funnel["drop_reasons"], serde_json::json!({ reason: 1 }), "{case:?} at {stage}\n{}", f.text());
        assert_eq!(deviant.answered(stage), calls, "{case:?} at {stage}: answers before the drop");
        assert_eq!(deviant.rewritten(stage), calls, "{case:?} at {stage}: every answer deviated");
        let last = String::from_utf8_lossy(&f.output.stderr).lines().last().unwrap_or_default().to_string();
        assert!(last.contains(reason), "{case:?} at {stage}: the last line names the drop: {last}");
        runs.push((stage, f, deviant));
    }
    runs
}

// ---------------------------------------------------------------------------------------------
// JSON stages: answers that can be read

#[test]
fn a_draft_then_a_corrected_final_answer_is_read_as_the_final_one_at_every_json_stage() {
    let (f, _) = parses_as_undisturbed(Case::DraftThenFinal, &JSON_STAGES);
    let task = only_task(&f.tasks()).clone();
    assert_ne!(task["topic"]["title"], DRAFT_TITLE);
    assert_ne!(task["provenance"]["hub_id"], DRAFT_DATASET);
    assert_eq!(task["debug_rounds"], only_task(&undisturbed().tasks)["debug_rounds"], "the draft's broken prepare.py was never checked");
}

#[test]
fn numbers_and_booleans_given_as_strings_are_read_as_the_schema_types() {
    let (f, _) = parses_as_undisturbed(Case::NumbersAsStrings, &[Stage::Codegen, Stage::Debug]);
    assert!(only_task(&f.tasks())["training_timeout"].is_u64());
}

#[test]
fn a_capitalised_enum_and_a_string_for_an_array_of_strings_are_read_as_the_schema_types() {
    parses_as_undisturbed(Case::LooseTypes, &[Stage::Dataset, Stage::Codegen, Stage::Debug]);
}

#[test]
fn a_python_dict_answer_is_read_at_every_json_stage() {
    parses_as_undisturbed(Case::PythonDict, &JSON_STAGES);
}

#[test]
fn raw_newlines_and_tabs_inside_json_strings_are_read_at_every_json_stage() {
    parses_as_undisturbed(Case::RawNewlines, &JSON_STAGES);
}

#[test]
fn json_in_a_fenced_block_with_prose_around_it_is_read_at_every_json_stage() {
    parses_as_undisturbed(Case::FencedProse, &JSON_STAGES);
}

#[test]
fn braces_and_objects_inside_a_think_section_are_ignored_at_every_json_stage() {
    let (f, _) = parses_as_undisturbed(Case::ThinkBraces, &JSON_STAGES);
    assert_ne!(only_task(&f.tasks())["topic"]["title"], DRAFT_TITLE);
}

#[test]
fn crlf_line_ends_are_read_and_non_ascii_text_is_kept_in_tasks_json() {
    // The title changes what the simulator writes next: not the undisturbed task.
    let deviant = Deviant::start(Setup::new(Case::CrlfNonAscii, &JSON_STAGES));
    let f = run(&deviant);
    assert_eq!(f.code(), Some(0), "{}", f.text());
    for stage in JSON_STAGES {
        assert!(deviant.rewritten(stage) >= 1, "applied at {stage}");
    }
    assert_eq!(f.calls(Stage::Topic), 1, "read without a re-ask\n{}", f.text());
    assert_eq!(f.calls(Stage::Codegen), 1, "read without a re-ask\n{}", f.text());
    let tasks = f.tasks();
    let task = only_task(&tasks);
    assert!(task["topic"]["title"].as_str().unwrap().ends_with(NON_ASCII), "{task}");
    assert!(task["name"].as_str().unwrap().contains(NON_ASCII), "the bundle's title: {task}");
    let raw = std::fs::read_to_string(f.out.join("mlgym/tasks.json")).unwrap();
    assert!(raw.contains("données über 数据") || raw.contains("donn\\u00e9es"), "tasks.json keeps the text");
}

#[test]
fn dataset_ids_given_as_hub_urls_or_with_a_revision_are_normalised_and_the_revision_pinned() {
    let reference = only_task(&undisturbed().tasks);
    let id = reference["provenance"]["hub_id"].as_str().unwrap();
    let sha = reference["provenance"]["revision"].as_str().unwrap().to_string();
    assert!(sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()), "the mirror's revision is a commit sha: {sha}");
    for form in [HubForm::Url, HubForm::AtMain, HubForm::AtRevision(sha.clone())] {
        let deviant = Deviant::start(Setup::new(Case::HubUrls(form.clone()), &[Stage::Dataset]));
        let f = run(&deviant);
        assert_eq!(f.code(), Some(0), "{form:?}\n{}", f.text());
        assert!(deviant.exchanges(Stage::Dataset)[0].content.as_deref().unwrap().contains(&match &form {
            HubForm::Url => format!("/datasets/{id}"),
            HubForm::AtMain => format!("{id}@main"),
            HubForm::AtRevision(sha) => format!("{id}@{sha}"),
        }));
        let tasks = f.tasks();
        let task = only_task(&tasks);
        assert_eq!(task["provenance"]["hub_id"], id, "{form:?}: the id is normalised");
        assert_eq!(task["provenance"]["revision"], sha.as_str(), "{form:?}: the revision is pinned");
        for key in ["task_id", "baseline_scores", "topic"] {
            assert_eq!(task[key], reference[key], "{form:?}: {key}");
        }
    }
    // A revision the repository does not have rejects the proposal.
    let unknown = "0".repeat(40);
    let deviant = Deviant::start(Setup::new(Case::HubUrls(HubForm::AtRevision(unknown.clone())), &[Stage::Dataset]));
    let f = run(&deviant);
    assert_eq!(f.code(), Some(3), "{}", f.text());
    let funnel = f.funnel(Stage::Dataset);
    assert_eq!(funnel["drop_reasons"], serde_json::json!({ "no_verified_dataset": 1 }), "{funnel}");
    let detail = funnel["drop_details"]["no_verified_dataset"].as_str().unwrap();
    assert!(detail.contains(id) && detail.contains("revision"), "the rejection names the id and its revision: {funnel}");
}

/// For every answer cut off with `finish_reason: "length"`, the next request of the same
/// conversation does not carry the cut-off text and asks for at least as many tokens.
fn assert_reasked_without_the_cut_text(stage: Stage, exchanges: &[Exchange], larger: bool) {
    for (i, cut) in exchanges.iter().enumerate().filter(|(_, e)| e.finish_reason == "length") {
        let text = cut.content.as_deref().unwrap();
        let opening = if stage == Stage::Debug { 4 } else { 2 };
        let Some(next) = exchanges[i + 1..].iter().find(|e| e.messages.iter().take(opening).eq(cut.messages.iter().take(opening))) else {
            continue; // the rollout's next step, or a drop
        };
        assert!(next.messages.iter().all(|(_, c)| !c.contains(text)), "{stage}: the re-ask carries the cut-off text");
        assert!(next.prompt_chars() < cut.prompt_chars() + text.chars().count(), "{stage}: the re-ask's prompt grew by the cut-off text");
        let (asked, again) = (cut.max_tokens.unwrap(), next.max_tokens.unwrap());
        if larger {
            assert!(again > asked, "{stage}: the re-ask allows more tokens ({asked} then {again})");
        } else {
            assert_eq!(again, asked, "{stage}: the re-ask keeps the capped limit");
        }
    }
}

#[test]
fn an_answer_cut_off_once_is_asked_again_without_the_cut_text_and_read_at_every_stage() {
    let reference = undisturbed();
    let stages: Vec<Stage> = JSON_STAGES.into_iter().chain([Stage::Rollout]).collect();
    let deviant = Deviant::start(Setup::new(Case::Truncation { times: 1 }, &stages));
    let f = run(&deviant);
    assert_eq!(f.code(), Some(0), "{}", f.text());
    for &stage in &stages {
        let cut = deviant.rewritten(stage);
        assert!(cut >= 1, "applied at {stage}");
        assert_eq!(f.calls(stage), reference.calls[&stage] + cut, "{stage}: one re-ask per cut-off answer\n{}", f.text());
        assert_reasked_without_the_cut_text(stage, &deviant.exchanges(stage), true);
    }
    assert_eq!(deviant.rewritten(Stage::Rollout), reference.steps as u64, "every agent step was cut once");
    assert_eq!(f.tasks(), reference.tasks);
    assert_eq!(common::actions(&f.out), reference.actions, "the same trajectory");
}

// ---------------------------------------------------------------------------------------------
// JSON stages: answers that drop the unit

#[test]
fn a_refusal_drops_the_unit_as_llm_refused_with_its_text_after_one_call_at_each_json_stage() {
    for (stage, f, _) in drops_at_each(Case::Refusal, &JSON_STAGES, "llm_refused", 1) {
        let detail = f.funnel(stage)["drop_details"]["llm_refused"].as_str().unwrap_or_default().to_string();
        assert!(detail.contains(REFUSAL), "{stage}: the detail holds the refusal: {detail}");
    }
}

#[test]
fn an_empty_answer_drops_the_unit_as_llm_empty_after_one_call_at_each_json_stage() {
    drops_at_each(Case::Empty, &JSON_STAGES, "llm_empty", 1);
}

#[test]
fn a_content_filter_stop_drops_the_unit_as_llm_content_filter_after_one_call_at_each_json_stage() {
    drops_at_each(Case::ContentFilter, &JSON_STAGES, "llm_content_filter", 1);
}

#[test]
fn an_answer_cut_off_twice_drops_the_unit_as_llm_truncated_after_two_calls_at_each_json_stage() {
    for (stage, _, deviant) in drops_at_each(Case::Truncation { times: 2 }, &JSON_STAGES, "llm_truncated", 2) {
        assert_reasked_without_the_cut_text(stage, &deviant.exchanges(stage), true);
    }
}

#[test]
fn a_cut_off_answer_is_asked_again_with_the_same_limit_when_the_endpoint_caps_it() {
    // The topic stage asks for 800 tokens; the endpoint allows no more.
    let deviant = Deviant::start(Setup::new(Case::Truncation { times: 2 }, &[Stage::Topic]));
    let f = run_with(&deviant, Extra { json_keys: "max_output_tokens = 800\n", ..Extra::default() });
    assert_eq!(f.code(), Some(3), "{}", f.text());
    assert_eq!(f.funnel(Stage::Topic)["drop_reasons"], serde_json::json!({ "llm_truncated": 1 }), "{}", f.text());
    assert_reasked_without_the_cut_text(Stage::Topic, &deviant.exchanges(Stage::Topic), false);
}

// ---------------------------------------------------------------------------------------------
// Agent turns

/// Every step's thought of the run's trajectory.
fn thoughts(f: &Finished) -> Vec<String> {
    f.trajectory()["trajectory"].as_array().unwrap().iter().map(|s| s["thought"].as_str().unwrap().to_string()).collect()
}

/// Runs `case` on agent turns and expects the same trajectory as undisturbed, with `calls`
/// agent calls (given the undisturbed run's calls and steps).
fn rollout_as_undisturbed(case: Case, calls: fn(&Undisturbed) -> u64) -> Finished {
    let reference = undisturbed();
    let deviant = Deviant::start(Setup::new(case.clone(), &[Stage::Rollout]));
    let f = run(&deviant);
    assert_eq!(f.code(), Some(0), "{case:?}\n{}", f.text());
    assert!(deviant.rewritten(Stage::Rollout) >= 1, "{case:?} was applied");
    assert_eq!(common::actions(&f.out), reference.actions, "{case:?}: the same trajectory");
    assert_eq!(f.calls(Stage::Rollout), calls(reference), "{case:?}: agent calls\n{}", f.text());
    f
}

#[test]
fn an_answer_without_a_command_is_asked_again_and_the_rollout_goes_on_as_undisturbed() {
    // Every step's first answer is prose alone, and asked again.
    rollout_as_undisturbed(Case::NoCodeBlock, |u| 2 * u.steps as u64);
}

#[test]
fn the_last_of_two_code_blocks_is_the_command() {
    let f = rollout_as_undisturbed(Case::TwoCodeBlocks, |u| u.calls[&Stage::Rollout]);
    assert!(
        thoughts(&f).iter().all(|t| t.contains("echo example")),
        "the example block is part of the thought, not a command: {EXAMPLE_BLOCK}"
    );
}

#[test]
fn a_command_in_bash_or_command_tags_or_a_bash_fence_is_the_command() {
    // The turns take the three spellings in turn: more than three steps use them all.
    assert!(undisturbed().steps > 3);
    rollout_as_undisturbed(Case::BashTag, |u| u.calls[&Stage::Rollout]);
}

#[test]
fn a_command_before_the_prose_is_the_command_and_the_prose_the_thought() {
    let f = rollout_as_undisturbed(Case::CommandFirst, |u| u.calls[&Stage::Rollout]);
    assert!(thoughts(&f).iter().all(|t| t.contains("DISCUSSION")), "{:?}", thoughts(&f));
}

/// Runs `case` on agent turns and expects the rollout to end after `calls` answers with
/// `exit_status`, its trajectory written and counted in the funnel as a rollout without a
/// score; a trajectory without a score is no training data, so the batch is short (exit 3).
fn ends_the_rollout(case: Case, calls: u64, exit_status: &str) -> (Finished, Deviant) {
    let deviant = Deviant::start(Setup::new(case.clone(), &[Stage::Rollout]));
    let f = run(&deviant);
    assert_eq!(f.code(), Some(3), "{case:?}: the rollout ended without a scored trajectory\n{}", f.text());
    assert!(f.text().contains("0 of 1 trajectories scored (1 recorded without a score"), "{case:?}: says why\n{}", f.text());
    assert_eq!(f.exit_status(), exit_status, "{case:?}");
    assert_eq!(deviant.answered(Stage::Rollout), calls, "{case:?}");
    assert_eq!(f.report()["rollouts"]["total"], 1, "{case:?}");
    let funnel = f.funnel(Stage::Rollout);
    assert_eq!(funnel["drop_reasons"], serde_json::json!({ exit_status: 1 }), "{case:?}: the funnel names how it ended: {funnel}");
    (f, deviant)
}

#[test]
fn a_refusal_ends_the_rollout_as_exit_refused_with_its_trajectory_written() {
    let (f, _) = ends_the_rollout(Case::Refusal, 1, "submission_not_found (exit_refused)");
    assert_eq!(f.trajectory()["trajectory"].as_array().unwrap().len(), 0, "no command ran");
}

#[test]
fn a_content_filter_stop_ends_the_rollout_as_exit_content_filter() {
    ends_the_rollout(Case::ContentFilter, 1, "submission_not_found (exit_content_filter)");
}

#[test]
fn empty_answers_are_format_errors_and_three_end_the_rollout_as_exit_format() {
    ends_the_rollout(Case::Empty, 3, "submission_not_found (exit_format)");
}

#[test]
fn an_answer_cut_off_twice_ends_the_rollout_as_exit_truncated() {
    let (_, deviant) = ends_the_rollout(Case::Truncation { times: 2 }, 2, "submission_not_found (exit_truncated)");
    let exchanges = deviant.exchanges(Stage::Rollout);
    assert!(exchanges[1].max_tokens > exchanges[0].max_tokens, "the re-ask allows more tokens");
}

// ---------------------------------------------------------------------------------------------
// Context limits

/// Every answered request fitted `limit`: its estimated prompt plus its `max_tokens`.
fn assert_fits(deviant: &Deviant, stages: &[Stage], limit: u64) {
    for &stage in stages {
        for e in deviant.exchanges(stage).iter().filter(|e| e.status == 200) {
            let asked = e.max_tokens.expect("max_tokens is sent");
            assert!(e.prompt_tokens + asked <= limit, "{stage}: {} prompt tokens + {asked} > {limit}", e.prompt_tokens);
        }
    }
}

#[test]
fn max_tokens_fit_the_context_the_models_endpoint_announces_and_the_endpoint_cap() {
    // 9000 tokens: the codegen request (8000 asked) must shrink, the debug one (a prompt of
    // some 6000 tokens) the most. A request that would not fit is refused by the server.
    let limit = 9000;
    let setup = Setup { max_model_len: Some(limit), context_limit: Some(limit), ..Setup::undisturbed() };
    let deviant = Deviant::start(setup);
    let cap = "max_output_tokens = 3000\n";
    let f = run_with(&deviant, Extra { json_keys: cap, agent_keys: cap, ..Extra::default() });
    assert_eq!(f.code(), Some(0), "{}", f.text());
    let all: Vec<Stage> = JSON_STAGES.into_iter().chain([Stage::Rollout]).collect();
    for &stage in &all {
        assert!(deviant.exchanges(stage).iter().all(|e| e.status == 200), "{stage}: nothing was sent that does not fit");
    }
    assert_fits(&deviant, &all, limit);
    let asked = |stage| deviant.exchanges(stage).iter().map(|e| e.max_tokens.unwrap()).collect::<Vec<_>>();
    assert!(asked(Stage::Codegen).iter().all(|&t| t == 3000), "the endpoint's cap: {:?}", asked(Stage::Codegen));
    assert!(asked(Stage::Debug).iter().all(|&t| t < 3000), "the context: {:?}", asked(Stage::Debug));
    assert_eq!(f.tasks(), undisturbed().tasks);
}

#[test]
fn a_400_naming_the_context_length_teaches_the_limit_and_the_request_is_sent_again_fitted() {
    let limit = 9000;
    let setup = Setup { context_limit: Some(limit), ..Setup::undisturbed() };
    let deviant = Deviant::start(setup);
    let f = run(&deviant);
    assert_eq!(f.code(), Some(0), "{}", f.text());
    let refused: Vec<(Stage, usize)> = JSON_STAGES
        .into_iter()
        .flat_map(|s| deviant.exchanges(s).into_iter().enumerate().filter(|(_, e)| e.status == 400).map(move |(i, _)| (s, i)))
        .collect();
    assert_eq!(refused, vec![(Stage::Codegen, 0)], "only the first request over the limit was refused: the endpoint learned it");
    assert_fits(&deviant, &JSON_STAGES, limit);
    assert_eq!(f.tasks(), undisturbed().tasks);
}

#[test]
fn a_prompt_that_cannot_fit_the_context_is_refused_without_sending() {
    // The topic prompt alone is longer than 150 tokens.
    let setup = Setup { max_model_len: Some(150), ..Setup::undisturbed() };
    let deviant = Deviant::start(setup);
    let f = run(&deviant);
    assert_eq!(f.code(), Some(3), "{}", f.text());
    assert_eq!(f.funnel(Stage::Topic)["drop_reasons"], serde_json::json!({ "llm_context_length": 1 }), "{}", f.text());
    assert!(deviant.exchanges(Stage::Topic).is_empty(), "nothing was sent");
}

#[test]
fn a_rollout_ends_with_exit_context_when_the_next_step_cannot_fit_the_endpoints_context() {
    let reference = undisturbed();
    // Between the first agent turn's prompt and the last one's, with answers of at most 256
    // tokens: the first steps fit, a later one cannot.
    let (first, last) = (reference.rollout_prompts[0], *reference.rollout_prompts.last().unwrap());
    assert!(last > first + 1200, "the undisturbed rollout's prompt grows: {:?}", reference.rollout_prompts);
    let context = (first + last) / 2;
    let deviant = Deviant::start(Setup::undisturbed());
    let keys = format!("context_tokens = {context}\n");
    let f = run_with(&deviant, Extra { agent_keys: &keys, agent: "max_tokens = 256\n", ..Extra::default() });
    assert_eq!(f.code(), Some(3), "a trajectory without a score leaves the batch short\n{}", f.text());
    let status = f.exit_status();
    assert!(status.ends_with("(exit_context)"), "{status}");
    assert_fits(&deviant, &[Stage::Rollout], context);
    let steps = f.trajectory()["trajectory"].as_array().unwrap().len();
    assert!(steps >= 1 && steps < reference.steps, "{steps} steps of the undisturbed {}", reference.steps);
}
