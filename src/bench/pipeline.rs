//! `gymforge bench pipeline`: trajectories per hour end to end, against the bound the LLM limit
//! and the sandbox slots allow, and whether memory stays flat.
//!
//! The whole pipeline runs in this process on the embedded default, against the simulated
//! teacher with the given latency distribution and request limit, with the given number of
//! rollout slots, on a fresh output directory. Two tasks are synthesised first (not measured),
//! each with more rollouts than the window can finish; then trajectories are counted over the
//! window, the run drains, and the bounds are computed from the run's own trajectories:
//!
//! - LLM bound: `rpm x 60 / LLM calls per trajectory` trajectories per hour;
//! - slot bound: `slots x 3600 / (sandbox time + calls x mean LLM latency per trajectory)`:
//!   what the slots would give if a trajectory cost nothing but its commands and its answers
//!   (no shell start, final evaluation, scheduling or store writes);
//!
//! and the ratio of what was achieved to the lower of the two. Memory: the process's RSS at
//! minute 1 of the window against its RSS at the end, its peak, and the RSS the pipeline added
//! per rollout in flight.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gymforge_actors::Stage;
use gymforge_actors::model::{RolloutRecord, StageOutput};
use serde_json::json;

use super::{BenchReport, Target};
use crate::config::Config;
use crate::daemon::DaemonState;

/// Achieved trajectories per hour, as a fraction of the bound.
const TARGET_RATIO: f64 = 0.9;
/// RSS at the end of the window over RSS at its first minute.
const MAX_RSS_GROWTH: f64 = 1.10;
/// Steps per trajectory.
const AGENT_STEPS: u32 = 6;
/// Tasks synthesised before the window opens.
const TASKS: u32 = 2;

pub struct BenchPipeline {
    pub seconds: u64,
    pub rpm: u32,
    pub slots: u32,
    pub latency_ms: u64,
    pub latency_p99_ms: u64,
}

/// What the window saw.
struct Window {
    seconds: f64,
    completed: u32,
    rss_idle: u64,
    rss_minute_one: u64,
    rss_end: u64,
    rss_mean: u64,
    /// RSS at the end of each minute of the window.
    rss_by_minute: Vec<u64>,
    requests_sent: u64,
    latency_ms_total: u64,
}

/// Waits out the warm-up (services up, both tasks accepted, every slot busy), then counts
/// trajectories and samples RSS every second for the window.
async fn measure(
    b: &BenchPipeline,
    state: &DaemonState,
    rx: tokio::sync::watch::Receiver<gymforge_actors::Progress>,
    status: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Window> {
    while state.phase() != "running" {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_idle = rss_kib();
    status("synthesising the tasks (not measured)");
    loop {
        let p = rx.borrow().clone();
        let in_flight = p.stages.iter().find(|(s, _)| *s == Stage::Rollout).map(|(_, c)| c.in_flight).unwrap_or(0);
        if p.accepted_tasks >= TASKS && in_flight >= b.slots {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gateway = state.gateway.get().cloned().ok_or_else(|| anyhow::anyhow!("the gateway is not up"))?;
    let endpoint = gateway.endpoints().values().next().cloned().ok_or_else(|| anyhow::anyhow!("no LLM endpoint"))?;
    // Finished trajectories (rollouts that ended without being dropped).
    let done = || rx.borrow().stages.iter().find(|(s, _)| *s == Stage::Rollout).map(|(_, c)| c.passed).unwrap_or(0);
    let (start, done_before) = (Instant::now(), done());
    let (sent_before, latency_before) =
        (endpoint.stats.requests_sent.load(Ordering::Relaxed), endpoint.stats.latency_ms_total.load(Ordering::Relaxed));
    let minute_one = Duration::from_secs(60.min(b.seconds / 2));
    let (mut rss_minute_one, mut rss_sum, mut rss_samples, mut rss_by_minute) = (None, 0u64, 0u64, Vec::new());
    while start.elapsed() < Duration::from_secs(b.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib();
        rss_sum += rss;
        rss_samples += 1;
        if rss_minute_one.is_none() && start.elapsed() >= minute_one {
            rss_minute_one = Some(rss);
        }
        if start.elapsed().as_secs() / 60 > rss_by_minute.len() as u64 {
            rss_by_minute.push(rss);
        }
        if rss_samples % 10 == 0 {
            status(&format!("measuring: {} trajectories in {:.0} of {} s", done() - done_before, start.elapsed().as_secs_f64(), b.seconds));
        }
    }
    let rss_end = rss_kib();
    Ok(Window {
        seconds: start.elapsed().as_secs_f64(),
        completed: done() - done_before,
        rss_idle,
        rss_minute_one: rss_minute_one.unwrap_or(rss_end),
        rss_end,
        rss_mean: rss_sum / rss_samples.max(1),
        rss_by_minute,
        requests_sent: endpoint.stats.requests_sent.load(Ordering::Relaxed) - sent_before,
        latency_ms_total: endpoint.stats.latency_ms_total.load(Ordering::Relaxed) - latency_before,
    })
}

pub async fn run(b: BenchPipeline, status: &(dyn Fn(&str) + Sync)) -> anyhow::Result<BenchReport> {
    let mut config = Config::embedded();
    config.sim.latency_ms = b.latency_ms;
    config.sim.latency_p99_ms = b.latency_p99_ms;
    for endpoint in config.llm.endpoints.values_mut() {
        endpoint.requests_per_minute = b.rpm;
    }
    config.pipeline.rollout_workers = b.slots;
    // A cheap sandbox workload: with few steps the simulated agent looks around, runs one
    // training script, validates and submits, so the LLM limit and the pipeline are what is measured.
    config.agent.max_steps = AGENT_STEPS;
    config.run.tasks = TASKS;
    // More than the window can finish (a trajectory takes at least one LLM round trip per step).
    config.run.rollouts = (b.slots as u64 * b.seconds / 5 + 10).min(5000) as u32;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");

    // Run as a daemon runs it: progress messages to the log, drained at the end.
    let (mut service, run) = crate::daemon::start(config, out.clone());
    let (state, rx) = (service.state.clone(), service.state.progress.clone());
    tokio::pin!(run);
    let m = tokio::select! {
        result = &mut run => {
            result?;
            anyhow::bail!("the run ended before the measured window closed")
        }
        m = measure(&b, &state, rx, status) => m?,
    };
    status("draining the rollouts in flight");
    service.drain();
    run.await?;

    // The run's own trajectories give the cost of one.
    let store = crate::store::SqliteStore::open(&crate::run::state_dir(&out).join("state.db"))?;
    let records: Vec<RolloutRecord> = store
        .results(Stage::Rollout)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .filter_map(|(_, result)| RolloutRecord::from_result(result))
        .collect();
    anyhow::ensure!(!records.is_empty(), "no trajectory finished");
    let n = records.len() as f64;
    let calls_per_trajectory = records.iter().map(|r| r.trajectory.info.model_stats.api_calls as f64).sum::<f64>() / n;
    let sandbox_secs_per_trajectory =
        records.iter().map(|r| r.trajectory.trajectory.iter().map(|s| s.execution_time).sum::<f64>()).sum::<f64>() / n;
    let Window { seconds: window, completed, rss_idle, rss_minute_one, rss_end, rss_mean, rss_by_minute, requests_sent, latency_ms_total } =
        m;
    let latency_secs = latency_ms_total as f64 / requests_sent.max(1) as f64 / 1000.0;
    let llm_bound = f64::from(b.rpm) * 60.0 / calls_per_trajectory;
    let slot_bound = f64::from(b.slots) * 3600.0 / (sandbox_secs_per_trajectory + calls_per_trajectory * latency_secs);
    let bound = llm_bound.min(slot_bound);
    let achieved = f64::from(completed) / window * 3600.0;
    let ratio = achieved / bound;
    let growth = rss_end as f64 / rss_minute_one.max(1) as f64;
    let peak = peak_rss_kib();
    let per_rollout_kib = rss_mean.saturating_sub(rss_idle) as f64 / f64::from(b.slots);

    let targets = vec![
        Target::at_least("trajectories_per_hour / bound", ratio, TARGET_RATIO),
        Target::at_most("rss_end / rss_minute_1", growth, MAX_RSS_GROWTH),
    ];
    let targets_met = targets.iter().all(|t| t.met);
    let json = json!({
        "simulated": true,
        "seconds": window,
        "limit_rpm": b.rpm,
        "rollout_slots": b.slots,
        "agent_max_steps": AGENT_STEPS,
        "llm_latency_ms": {"median": b.latency_ms, "p99": b.latency_p99_ms, "measured_mean": latency_secs * 1000.0},
        "trajectories_in_window": completed,
        "trajectories_per_hour": achieved,
        "llm_calls_per_trajectory": calls_per_trajectory,
        "sandbox_secs_per_trajectory": sandbox_secs_per_trajectory,
        "bound_llm_per_hour": llm_bound,
        "bound_slots_per_hour": slot_bound,
        "bound_per_hour": bound,
        "binding": if llm_bound <= slot_bound { "llm" } else { "slots" },
        "ratio": ratio,
        "rss_kib": {
            "before_pipeline": rss_idle, "minute_1": rss_minute_one, "end": rss_end,
            "mean": rss_mean, "peak": peak, "by_minute": rss_by_minute
        },
        "rss_growth": growth,
        "rss_kib_per_inflight_rollout": per_rollout_kib,
        "targets": super::targets_json(&targets),
        "targets_met": targets_met,
    });
    let mut table = format!(
        "gymforge bench pipeline (against the SIMULATED teacher on loopback): {window:.0} s window, {} rpm limit, \
         {} rollout slots, LLM latency median {} ms / p99 {} ms\n\
         {completed} trajectories = {achieved:.1}/h; bound {bound:.1}/h ({} binds; \
         LLM {llm_bound:.1}/h at {calls_per_trajectory:.1} calls each, \
         slots {slot_bound:.1}/h at {sandbox_secs_per_trajectory:.1} s sandbox + {:.0} ms per call)\n\
         RSS: {rss_idle} KiB before the pipeline, {rss_minute_one} KiB at minute 1, {rss_end} KiB at the end, \
         peak {peak} KiB, {per_rollout_kib:.0} KiB per rollout in flight\n",
        b.rpm,
        b.slots,
        b.latency_ms,
        b.latency_p99_ms,
        if llm_bound <= slot_bound { "the LLM limit" } else { "the sandbox slots" },
        latency_secs * 1000.0,
    );
    table.push_str(&super::targets_table(&targets));
    Ok(BenchReport { json, table, targets_met })
}

/// A field of `/proc/self/status`, in KiB.
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    proc_status_kib("VmRSS:")
}

fn peak_rss_kib() -> u64 {
    proc_status_kib("VmHWM:")
}
