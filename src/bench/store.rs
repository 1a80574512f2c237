//! `gymforge bench store`: how many units one PostgreSQL store takes through a stage per second
//! with many claimers at once, and the bound its round trips set, measured in the same run.
//!
//! Each claimer does what a node does for every stage of every unit, over and over: insert a
//! unit, claim it (one transaction: the claiming update and the claim history), complete its
//! stage (another: lock and fence check, the result, the unit moved on). The bound is the same
//! claimers' rate of the cheapest call a store makes (reading one meta key: one round trip on a
//! pooled connection) divided by the round trips one cycle sends ([`ROUND_TRIPS_PER_CYCLE`]):
//! the target is that cycles reach at least half of it, so that a claim and a commit cost about
//! their round trips and no lock makes claimers wait on each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gymforge_actors::model::{Stage, TopicIdea, TopicSample, Unit, UnitKind};
use gymforge_actors::ports::Store;
use serde_json::json;

use super::{BenchReport, Target, targets_json, targets_table};
use crate::store::{PgSettings, PgStore, PgTarget};

/// Round trips of one insert-claim-complete cycle: the insert (1); the claim's BEGIN, update,
/// history insert and COMMIT (4); the completion's BEGIN, locking select, result insert, unit
/// update and COMMIT (5).
pub const ROUND_TRIPS_PER_CYCLE: f64 = 10.0;

/// How far cycles per second must reach towards the round-trip bound.
const TARGET_RATIO: f64 = 0.5;

/// Unit ids the bench makes start with this, and are removed at the end.
const PREFIX: &str = "bench-";

pub struct BenchStore {
    pub target: PgTarget,
    pub password: Option<String>,
    pub claimers: usize,
    pub seconds: u64,
}

/// Runs `work` on `claimers` tasks until `seconds` pass; returns operations per second.
async fn rate<F, Fut>(claimers: usize, seconds: u64, work: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let (done, stop, work) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(work));
    let start = Instant::now();
    let tasks: Vec<_> = (0..claimers)
        .map(|claimer| {
            let (done, stop, work) = (done.clone(), stop.clone(), work.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    work(claimer, i).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(b: BenchStore) -> anyhow::Result<BenchReport> {
    let settings = PgSettings { pool_size: b.claimers, ..PgSettings::default() };
    let store = Arc::new(PgStore::connect(&b.target, b.password.as_deref(), &settings).await?);
    let units = store.units().await.map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        units.iter().all(|u| u.id.starts_with(PREFIX)),
        "{} holds a batch ({} units): the bench adds and removes units of its own, give it an empty database",
        b.target.display(),
        units.len()
    );

    let s = store.clone();
    let round_trips = rate(b.claimers, b.seconds, move |_, _| {
        let s = s.clone();
        async move { s.meta("bench").await.map(drop).map_err(anyhow::Error::msg) }
    })
    .await?;

    let s = store.clone();
    let run = crate::node::id().to_string();
    let cycles = rate(b.claimers, b.seconds, move |claimer, i| {
        let (s, id) = (s.clone(), format!("{PREFIX}{run}-{claimer}-{i}"));
        async move {
            let unit = Unit::pending(id.clone(), UnitKind::Task, i, None, Stage::Topic);
            s.insert_unit(&unit).await.map_err(anyhow::Error::msg)?;
            anyhow::ensure!(s.claim(&id, Stage::Topic).await.map_err(anyhow::Error::msg)?, "{id} could not be claimed");
            let sample = TopicSample { domain: "bench".into(), task_type: "t".into(), modality: "m".into(), twist: "w".into() };
            let idea = TopicIdea { sample, title: id.clone(), idea: "bench".into() };
            s.complete_stage(&id, &idea.into(), None).await.map_err(anyhow::Error::msg)
        }
    })
    .await?;
    let removed = store.remove_units_with_prefix(PREFIX).await.map_err(anyhow::Error::msg)?;

    let bound = round_trips / ROUND_TRIPS_PER_CYCLE;
    let target = Target::at_least("cycles per second", cycles, TARGET_RATIO * bound);
    // A rollout is one claim and one commit at its stage; at ten minutes a rollout, a node of
    // 256 slots finishes 256 / 600 s of them.
    let rollouts_per_hour = cycles * 3600.0;
    let nodes_of_256_slots = cycles * 600.0 / 256.0;
    let hours_for_128k = 128_000.0 / rollouts_per_hour;
    let json = json!({
        "store": b.target.display(),
        "claimers": b.claimers,
        "seconds": b.seconds,
        "round_trips_per_second": round_trips,
        "cycles_per_second": cycles,
        "claims_per_second": cycles,
        "commits_per_second": cycles,
        "bound_cycles_per_second": bound,
        "ratio_to_bound": cycles / bound,
        "rollouts_per_hour_the_store_admits": rollouts_per_hour,
        "nodes_of_256_slots_at_10_min_a_rollout": nodes_of_256_slots,
        "units_removed": removed,
        "targets": targets_json(std::slice::from_ref(&target)),
    });
    let table = format!(
        "store {} with {} claimers, {} s per phase\n\
         round trips (one meta read)  {round_trips:>10.0} per second\n\
         insert+claim+commit cycles   {cycles:>10.0} per second (each a claim and a commit)\n\
         bound ({ROUND_TRIPS_PER_CYCLE} round trips a cycle) {bound:>10.0} per second, ratio {:.3}\n\
         rollouts the store admits    {rollouts_per_hour:>10.0} per hour: 128,000 in {:.2} h, or {nodes_of_256_slots:.0} nodes of 256 slots \
         at 10 min a rollout\n\n{}",
        b.target.display(),
        b.claimers,
        b.seconds,
        cycles / bound,
        hours_for_128k,
        targets_table(std::slice::from_ref(&target))
    );
    Ok(BenchReport { json, table, targets_met: target.met })
}
