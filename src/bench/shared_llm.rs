//! `gymforge bench llm --nodes N --store URL`: N nodes' gateways against one endpoint whose
//! server itself enforces the limit, sharing it through a PostgreSQL store.
//!
//! The simulated teacher runs on loopback and refuses (429) any request past `rpm` in the last
//! 60 s, as a provider does. Each node is a gateway of its own with its own store session, each
//! configured with the provider's whole limit (what every node is told) and [`WORKERS`] workers
//! sending back to back; only the shared budget keeps them together. Read from the server's
//! arrival times:
//!
//! - `max_window_ratio`: the most requests that arrived in any 60 s window inside the run, over
//!   the limit (target at most 1.02);
//! - `goodput`: answered calls per minute over the run, over the limit (target at least 0.95);
//! - `over_limit_429s`: requests the server refused for passing its limit (target 0).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::llm::{Tally, WORKERS, endpoint_config, spawn_workers};
use super::{BenchReport, Target};
use crate::config::Config;
use crate::gateway::{Gateway, Source};
use crate::store::{PgSettings, PgStore, PgTarget};

const TARGET_MAX_WINDOW_RATIO: f64 = 1.02;
const TARGET_GOODPUT: f64 = 0.95;
const WINDOW: Duration = Duration::from_secs(60);
const DRAIN: Duration = Duration::from_secs(60);

pub struct BenchSharedLlm {
    pub rpm: u32,
    pub seconds: u64,
    pub nodes: usize,
    pub target: PgTarget,
    pub password: Option<String>,
}

pub async fn run(b: BenchSharedLlm) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(b.seconds >= WINDOW.as_secs(), "--seconds must be at least 60 to measure 60 s windows");
    let mut config = Config::embedded();
    config.sim.latency_ms = 30;
    config.sim.latency_p99_ms = 150;
    config.sim.requests_per_minute = b.rpm;
    config.sim.faults = Default::default();
    let (addr, server, counters) = gymforge_sim::teacher::serve_counted(config.sim.clone(), "127.0.0.1:0".parse()?).await?;

    // One endpoint name for every node (the shared budget is the endpoint's), new for each run.
    let name = format!("bench-{}", crate::node::id());
    let endpoint = endpoint_config(addr, b.rpm);
    config.llm.endpoints = BTreeMap::from([(name.clone(), endpoint.clone())]);
    config.llm.routes.route_all(&name);
    let bases = BTreeMap::from([(name.clone(), endpoint.base_url.clone())]);
    let keys = BTreeMap::from([(name.clone(), None)]);
    let mut gateways = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..b.nodes {
        let store = PgStore::connect(&b.target, b.password.as_deref(), &PgSettings { pool_size: 4, ..PgSettings::default() }).await?;
        let gateway = Arc::new(Gateway::new(&config.llm, &bases, &keys, 0.0, Source::Live { record: None })?);
        gateway.share_limits(Arc::new(store.clone()));
        gateways.push(gateway);
        stores.push(store);
    }

    let prompts = crate::run::prompts();
    let tally = Arc::new(Tally::default());
    crate::gateway::tokens::prompt_tokens(&[gymforge_actors::ports::ChatMessage::new("user", "warm up")]);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(b.seconds);
    let workers: Vec<_> =
        gateways.iter().enumerate().flat_map(|(i, g)| spawn_workers(g, &tally, &prompts, i * WORKERS, deadline)).collect();
    tokio::time::sleep_until(deadline).await;
    let completed_in_run = tally.completed.load(Ordering::Relaxed);
    let run_secs = start.elapsed().as_secs_f64();
    let drained = tokio::time::timeout(DRAIN, futures_util::future::join_all(workers)).await.is_ok();
    server.abort();
    stores[0].forget_shared_limits(&name).await.map_err(anyhow::Error::msg)?;

    // Every 60 s window inside the run, starting at each arrival and at the start.
    let arrivals: Vec<Instant> = counters.arrivals().into_iter().filter(|a| *a < deadline).collect();
    let windows = std::iter::once(start).chain(arrivals.iter().copied()).filter(|from| *from + WINDOW <= deadline);
    let max_window = windows.map(|from| arrivals.iter().filter(|a| **a >= from && **a < from + WINDOW).count()).max().unwrap_or(0);
    let max_window_ratio = max_window as f64 / f64::from(b.rpm);
    let goodput = completed_in_run as f64 / run_secs * 60.0 / f64::from(b.rpm);
    let over_limit = counters.over_limit.load(Ordering::Relaxed);
    let targets = vec![
        Target::at_most("max_window_ratio", max_window_ratio, TARGET_MAX_WINDOW_RATIO),
        Target::at_least("goodput", goodput, TARGET_GOODPUT),
        Target::zero("over_limit_429s", over_limit as f64, over_limit == 0),
    ];
    let targets_met = targets.iter().all(|t| t.met);
    let json = json!({
        "simulated": true,
        "nodes": b.nodes,
        "limit_rpm": b.rpm,
        "seconds": b.seconds,
        "max_requests_in_a_60s_window": max_window,
        "max_window_ratio": max_window_ratio,
        "goodput": goodput,
        "answered": completed_in_run,
        "over_limit_429s": over_limit,
        "drained": drained,
        "endpoints": gateways.iter().map(|g| g.endpoints()[&name].snapshot()).collect::<Vec<_>>(),
        "server": counters.snapshot(),
        "targets": super::targets_json(&targets),
        "targets_met": targets_met,
    });
    let mut table = format!(
        "gymforge bench llm --nodes {} (against the SIMULATED teacher enforcing {} rpm itself; the limit shared through {})\n\
         at most {max_window} requests in a 60 s window, {completed_in_run} answered in {:.0} s, {over_limit} refused for the limit\n",
        b.nodes,
        b.rpm,
        b.target.display(),
        run_secs,
    );
    table.push_str(&super::targets_table(&targets));
    Ok(BenchReport { json, table, targets_met })
}
