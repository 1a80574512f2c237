//! `gymforge bench llm`: how much of an endpoint's request limit the gateway uses.
//!
//! The simulated teacher runs in this process on loopback, injecting 429s (with a
//! `retry-after-ms` hint) at the given rate; one gateway endpoint with the given
//! requests-per-minute limit serves 64 workers that send topic prompts back to back for the
//! given time. Then the workers drain and the numbers are read:
//!
//! - `achieved_rpm`: requests that reached the server per minute of the measured window (a 429
//!   answer counts: providers count rejected requests against the limit too); `goodput_rpm`
//!   counts only answered calls;
//! - `lost`: calls the gateway accepted that neither returned a reply nor an error;
//! - `cooldown_violations`: requests the gateway cleared to send while a cooldown it had already
//!   learned of was running, found by checking its dispatch log against its cooldown log;
//! - `cpu_us_per_request`: CPU time of the whole process (gateway, workers, and the simulated
//!   server too, so it overstates the gateway's share) per request sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gymforge_actors::Stage;
use gymforge_actors::ports::{ChatMessage, ChatRequest, Llm, ResponseFormat};
use serde_json::json;
use tokio::time::Instant;

use super::{BenchReport, Target};
use crate::config::{Config, EndpointConfig, SimFaults, StructuredOutput};
use crate::gateway::{Gateway, Source};

/// Target utilisation of the request limit.
const TARGET_UTILIZATION: f64 = 0.95;
/// One core should drive this many requests per minute.
const TARGET_RPM_PER_CORE: f64 = 10_000.0;
pub(super) const WORKERS: usize = 64;
/// How long in-flight calls get to finish after the window closes.
const DRAIN: Duration = Duration::from_secs(60);

pub struct BenchLlm {
    pub rpm: u32,
    pub seconds: u64,
    pub fault_429: f64,
}

/// Calls the workers made, answered and failed.
#[derive(Default)]
pub(super) struct Tally {
    pub accepted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

/// [`WORKERS`] workers numbered from `first`, each sending topic prompts back to back through
/// `gateway` until `deadline`.
pub(super) fn spawn_workers(
    gateway: &Arc<Gateway>,
    tally: &Arc<Tally>,
    prompts: &gymforge_actors::pipeline::Prompts,
    first: usize,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    (first..first + WORKERS)
        .map(|w| {
            let (gateway, tally, prompts) = (gateway.clone(), tally.clone(), prompts.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let request = topic_request(&prompts, w, n);
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                    match gateway.chat(Stage::Topic, request).await {
                        Ok(_) => tally.completed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect()
}

pub async fn run(b: BenchLlm) -> anyhow::Result<BenchReport> {
    let mut config = Config::embedded();
    config.sim.latency_ms = 30;
    config.sim.latency_p99_ms = 150;
    config.sim.faults = SimFaults { rate_429: b.fault_429, retry_after_ms: 200, ..SimFaults::default() };
    let (addr, server, counters) = gymforge_sim::teacher::serve_counted(config.sim.clone(), "127.0.0.1:0".parse()?).await?;

    let endpoint = endpoint_config(addr, b.rpm);
    config.llm.endpoints = BTreeMap::from([("bench".to_string(), endpoint.clone())]);
    config.llm.routes.route_all("bench");
    let bases = BTreeMap::from([("bench".to_string(), endpoint.base_url.clone())]);
    let keys = BTreeMap::from([("bench".to_string(), None)]);
    let gateway = Arc::new(Gateway::new(&config.llm, &bases, &keys, 0.0, Source::Live { record: None })?);
    let ep = gateway.endpoints()["bench"].clone();
    ep.keep_dispatch_log();

    let prompts = crate::run::prompts();
    let tally = Arc::new(Tally::default());
    // The tokenizer's one-time load is start-up cost, not per-request cost.
    crate::gateway::tokens::prompt_tokens(&[ChatMessage::new("user", "warm up")]);
    let cpu_before = cpu_time();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(b.seconds);
    let workers = spawn_workers(&gateway, &tally, &prompts, 0, deadline);
    tokio::time::sleep_until(deadline).await;
    let arrivals_in_window = counters.requests.load(Ordering::Relaxed);
    let completed_in_window = tally.completed.load(Ordering::Relaxed);
    let window = start.elapsed().as_secs_f64();
    let drained = tokio::time::timeout(DRAIN, futures_util::future::join_all(workers)).await.is_ok();
    let cpu = cpu_time().saturating_sub(cpu_before);
    server.abort();

    let log = ep.take_dispatch_log().unwrap_or_default();
    let violations =
        log.dispatched.iter().filter(|d| log.cooldowns.iter().any(|(learned, until)| learned < d && *d < until)).count() as u64;
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let completed = tally.completed.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let lost = accepted - completed - failed;
    let sent = ep.stats.requests_sent.load(Ordering::Relaxed);
    let achieved_rpm = arrivals_in_window as f64 / window * 60.0;
    let utilization = achieved_rpm / f64::from(b.rpm);
    let cpu_us_per_request = if sent > 0 { cpu.as_micros() as f64 / sent as f64 } else { 0.0 };
    let rpm_per_core = if cpu_us_per_request > 0.0 { 60e6 / cpu_us_per_request } else { f64::INFINITY };

    let targets = vec![
        Target::at_least("utilization", utilization, TARGET_UTILIZATION),
        Target::zero("lost", lost as f64, lost == 0 && drained),
        Target::zero("cooldown_violations", violations as f64, violations == 0),
        Target::at_least("requests_per_minute_per_core", rpm_per_core, TARGET_RPM_PER_CORE),
    ];
    let targets_met = targets.iter().all(|t| t.met);
    let json = json!({
        "simulated": true,
        "limit_rpm": b.rpm,
        "seconds": b.seconds,
        "fault_429": b.fault_429,
        "achieved_rpm": achieved_rpm,
        "utilization": utilization,
        "goodput_rpm": completed_in_window as f64 / window * 60.0,
        "requests_sent": sent,
        "requests_completed": completed,
        "requests_failed": failed,
        "calls_accepted": accepted,
        "lost": lost,
        "drained": drained,
        "cooldown_violations": violations,
        "cooldowns": log.cooldowns.len(),
        "cpu_us_per_request": cpu_us_per_request,
        "requests_per_minute_per_core": rpm_per_core,
        "endpoint": ep.snapshot(),
        "server": counters.snapshot(),
        "targets": super::targets_json(&targets),
        "targets_met": targets_met,
    });
    let mut table = format!(
        "gymforge bench llm (against the SIMULATED teacher on loopback): limit {} rpm, {} s, {:.0}% injected 429s\n\
         achieved {:.1} rpm, goodput {:.1} rpm, {} sent, {} completed, {} failed, {} cooldowns, {:.0} us CPU per request\n",
        b.rpm,
        b.seconds,
        b.fault_429 * 100.0,
        achieved_rpm,
        completed_in_window as f64 / window * 60.0,
        sent,
        completed,
        failed,
        log.cooldowns.len(),
        cpu_us_per_request,
    );
    table.push_str(&super::targets_table(&targets));
    Ok(BenchReport { json, table, targets_met })
}

/// The bench's one endpoint: the simulated teacher at `addr`, with `rpm` as its request limit.
pub(super) fn endpoint_config(addr: std::net::SocketAddr, rpm: u32) -> EndpointConfig {
    EndpointConfig {
        base_url: format!("http://{addr}/v1"),
        model: gymforge_sim::teacher::MODEL_ID.to_string(),
        api_key_env: String::new(),
        requests_per_minute: rpm,
        input_tokens_per_minute: 100_000_000,
        output_tokens_per_minute: 100_000_000,
        max_concurrency: WORKERS as u32,
        timeout_secs: 30,
        input_price_per_mtok: 0.15,
        output_price_per_mtok: 0.6,
        context_tokens: None,
        max_output_tokens: None,
        structured_output: StructuredOutput::JsonSchema,
    }
}

/// Request `n` of worker `w`: a topic prompt, different every time.
pub(super) fn topic_request(prompts: &gymforge_actors::pipeline::Prompts, w: usize, n: u64) -> ChatRequest {
    let taken = format!("- idea {w}-{n}");
    let user = gymforge_actors::template::render(
        &prompts.topic_user,
        &[("domain", "botany"), ("task_type", "classification"), ("modality", "tabular"), ("twist", "none"), ("taken", &taken)],
    )
    .expect("the topic template renders");
    ChatRequest {
        unit: format!("bench-{w}-{n}"),
        messages: vec![ChatMessage::new("system", prompts.topic_system.clone()), ChatMessage::new("user", user)],
        max_tokens: 400,
        temperature: 0.7,
        response: ResponseFormat::Json { name: "topic_idea", schema: gymforge_actors::schemas::topic_idea().1 },
        seed: Some(n),
    }
}

/// User plus system CPU time of this process (all its threads): the process CPU-time clock,
/// the sum getrusage(RUSAGE_SELF) reports as ru_utime + ru_stime.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
