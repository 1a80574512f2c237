//! The supervisor and its workers over in-memory ports and a scripted stage logic, in tokio's
//! paused time: restarts, retries with attempts counted, drain, the task window, a stuck stage
//! and the finish, each in milliseconds of real time.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Act, Script, pipeline, settings};
use gymforge_actors::model::DropReason;
use gymforge_actors::ports::{EventKind, Store};
use gymforge_actors::supervisor::run_pipeline_until;
use gymforge_actors::{Pipeline, Stage, UnitKind, UnitStatus};

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test(start_paused = true)]
async fn a_run_meets_its_target_and_each_accepted_task_fans_out_into_its_rollouts() {
    let script = Script::new(Duration::from_secs(5), |_, _| Act::Advance);
    let run = pipeline(settings(3, 2), script.clone());
    let outcome = run_pipeline_until(run.pipeline.clone(), None).await.unwrap();
    assert_eq!((outcome.target_tasks, outcome.accepted_tasks), (3, 3));
    assert_eq!(run.count(UnitKind::Task, UnitStatus::Done).await, 3);
    assert_eq!(run.count(UnitKind::Rollout, UnitStatus::Done).await, 6);
    assert_eq!(outcome.inputs.rollouts.len(), 6);
    assert_eq!(run.outputs.finalized.load(Ordering::Relaxed), 1, "the outputs are written once, at the finish");
    let progress = run.progress.borrow().clone();
    assert!(progress.finished);
    assert_eq!((progress.accepted_tasks, progress.rollouts_total, progress.rollouts_done, progress.live_units), (3, 6, 6, 0));
    let passed: BTreeMap<Stage, u32> = progress.stages.iter().map(|(s, c)| (*s, c.passed)).collect();
    assert_eq!(passed[&Stage::Topic], 3);
    assert_eq!(passed[&Stage::Rollout], 6);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_worker_is_replaced_and_its_unit_retried_with_the_attempt_counted() {
    let crashes = Arc::new(AtomicUsize::new(0));
    let c = crashes.clone();
    let script = Script::new(Duration::from_secs(1), move |stage, unit| {
        if stage == Stage::Codegen && unit.id == "t000001" && unit.attempts == 0 {
            c.fetch_add(1, Ordering::Relaxed);
            Act::Panic
        } else {
            Act::Advance
        }
    });
    let run = pipeline(settings(2, 0), script);
    let outcome = run_pipeline_until(run.pipeline.clone(), None).await.unwrap();
    assert_eq!(outcome.accepted_tasks, 2);
    assert_eq!(crashes.load(Ordering::Relaxed), 1);
    assert_eq!(run.telemetry.restarts.load(Ordering::Relaxed), 1);
    let events = run.store.events().await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::WorkerRestart).count(), 1, "{events:?}");
    assert_eq!((events[0].unit.as_str(), events[0].stage), ("t000001", Stage::Codegen));
    assert_eq!(run.progress.borrow().worker_restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_unit_that_crashes_its_worker_every_time_is_dropped_after_its_attempts() {
    let script =
        Script::new(
            Duration::from_secs(1),
            |stage, unit| if stage == Stage::Dataset && unit.id == "t000000" { Act::Panic } else { Act::Advance },
        );
    let run = pipeline(settings(2, 0), script);
    let outcome = run_pipeline_until(run.pipeline.clone(), None).await.unwrap();
    assert_eq!(outcome.accepted_tasks, 2, "a replacement unit makes up for the dropped one");
    let t0 = run.units().await.into_iter().find(|u| u.id == "t000000").unwrap();
    assert_eq!((t0.status, t0.drop_reason, t0.stage), (UnitStatus::Dropped, Some(DropReason::WorkerCrashed), Stage::Dataset));
    assert_eq!(run.telemetry.restarts.load(Ordering::Relaxed), 3, "max_attempts crashes, then the drop");
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_after_a_pause_and_exhaust_into_a_drop() {
    let script = Script::new(Duration::from_secs(1), |stage, unit| match (stage, unit.id.as_str(), unit.attempts) {
        // t000000 recovers on its third attempt; t000001 never does.
        (Stage::Topic, "t000000", 0 | 1) | (Stage::Debug, "t000001", _) => Act::Transient,
        _ => Act::Advance,
    });
    let run = pipeline(settings(2, 0), script);
    let started = tokio::time::Instant::now();
    let outcome = run_pipeline_until(run.pipeline.clone(), None).await.unwrap();
    assert_eq!(outcome.accepted_tasks, 2);
    let units = run.units().await;
    let t0 = units.iter().find(|u| u.id == "t000000").unwrap();
    let t1 = units.iter().find(|u| u.id == "t000001").unwrap();
    assert_eq!(t0.status, UnitStatus::Done);
    assert_eq!((t1.status, t1.drop_reason), (UnitStatus::Dropped, Some(DropReason::TransientExhausted)));
    let events = run.store.events().await.unwrap();
    let retries = |id: &str| events.iter().filter(|e| e.kind == EventKind::Retry && e.unit == id).count();
    assert_eq!(retries("t000000"), 2);
    assert_eq!(retries("t000001"), 3, "every attempt is counted, the last one drops the unit");
    assert_eq!(outcome.inputs.events.iter().filter(|e| e.kind == EventKind::Retry).count(), 5);
    // The pauses between attempts are real (virtual) time: at least half a second each.
    assert!(started.elapsed() >= Duration::from_millis(500 * 2), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn the_task_window_bounds_the_task_units_in_progress() {
    // Without a target the run would go on forever: it drains after a while.
    let script = Script::new(Duration::from_secs(3), |_, _| Act::Advance);
    let mut s = settings(0, 1);
    s.export_every = Duration::from_secs(3600);
    let run = pipeline(s, script.clone());
    let (drain, drained) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(run_pipeline_until(run.pipeline.clone(), Some(drained)));
    tokio::time::sleep(Duration::from_secs(600)).await;
    drain.send(()).unwrap();
    let outcome = handle.await.unwrap().unwrap();
    // The window: twice the workers of the task stages (2 + 1 + 1 + 1 + 1).
    let window = 12;
    let most = script.most_open.load(Ordering::Relaxed);
    assert!(most <= window && most >= 6, "{most} task units in progress at once, window {window}");
    assert!(outcome.accepted_tasks >= 30, "{} tasks in 600 s", outcome.accepted_tasks);
    // Drained: what was in flight finished; what was queued is still pending for the next run.
    let pending = run.units().await.into_iter().filter(|u| u.status == UnitStatus::Pending).count();
    assert!(pending > 0 && pending <= window + 3 * 2, "{pending} units left pending");
    assert!(run.progress.borrow().finished);
}

#[tokio::test(start_paused = true)]
async fn a_run_without_a_target_rewrites_its_outputs_as_it_goes() {
    let script = Script::new(Duration::from_secs(3), |_, _| Act::Advance);
    let mut s = settings(0, 0);
    s.export_every = Duration::from_secs(60);
    let run = pipeline(s, script);
    let (drain, drained) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(run_pipeline_until(run.pipeline.clone(), Some(drained)));
    tokio::time::sleep(Duration::from_secs(601)).await;
    let during = run.outputs.finalized.load(Ordering::Relaxed);
    assert!((8..=10).contains(&during), "{during} exports in 600 s at one a minute");
    drain.send(()).unwrap();
    handle.await.unwrap().unwrap();
    assert_eq!(run.outputs.finalized.load(Ordering::Relaxed), during + 1, "and once more at the finish");
}

#[tokio::test(start_paused = true)]
async fn a_stage_stuck_past_its_deadline_is_killed_and_its_unit_retried() {
    let script = Script::new(Duration::from_secs(1), |stage, unit| {
        if stage == Stage::Topic && unit.id == "t000000" && unit.attempts == 0 { Act::Hang } else { Act::Advance }
    });
    let run = pipeline(settings(2, 0), script);
    let started = tokio::time::Instant::now();
    let outcome = run_pipeline_until(run.pipeline.clone(), None).await.unwrap();
    assert_eq!(outcome.accepted_tasks, 2);
    let deadline = run.pipeline.settings.stage_deadline(Stage::Topic);
    assert!(started.elapsed() >= deadline, "the unit was retried only after the deadline");
    assert!(started.elapsed() < deadline + Duration::from_secs(120), "{:?}", started.elapsed());
    let events = run.store.events().await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].unit.as_str()), (EventKind::WorkerRestart, "t000000"));
    let t0 = run.units().await.into_iter().find(|u| u.id == "t000000").unwrap();
    assert_eq!(t0.status, UnitStatus::Done);
}

#[tokio::test(start_paused = true)]
async fn a_drop_that_dooms_every_unit_stops_the_run_with_its_message() {
    let script =
        Script::new(
            Duration::from_secs(1),
            |stage, _| if stage == Stage::Debug { Act::Drop(DropReason::SandboxUnavailable) } else { Act::Advance },
        );
    let run = pipeline(settings(3, 0), script);
    let err = run_pipeline_until(run.pipeline.clone(), None).await.unwrap_err();
    assert!(err.contains("sandbox_unavailable") && err.contains("debug stage"), "{err}");
    assert_eq!(run.count(UnitKind::Task, UnitStatus::Dropped).await, 1, "the first such drop stops the run");
}

#[tokio::test(start_paused = true)]
async fn a_resumed_run_goes_on_from_the_store_and_creates_the_missing_rollouts() {
    let script = Script::new(Duration::from_secs(1), |_, _| Act::Advance);
    let first = pipeline(settings(2, 0), script.clone());
    run_pipeline_until(first.pipeline.clone(), None).await.unwrap();
    // The same store, now with rollouts asked for and a higher target.
    let second = Pipeline { settings: settings(3, 2), ..first.pipeline.with_store(first.store.clone()) };
    let outcome = run_pipeline_until(Arc::new(second), None).await.unwrap();
    assert_eq!(outcome.accepted_tasks, 3);
    assert_eq!(first.count(UnitKind::Task, UnitStatus::Done).await, 3);
    assert_eq!(first.count(UnitKind::Rollout, UnitStatus::Done).await, 6);
}
