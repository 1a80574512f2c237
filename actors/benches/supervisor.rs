//! The supervisor over a daemon's life: memory and cost per unit stay flat in the number of
//! finished units, and the topic stage's near-duplicate test stays flat in the number of
//! earlier ideas. Each is printed as a ratio against a bound measured in the same run.
//!
//! `cargo bench -p gymforge-actors --bench supervisor` runs 100,000 task units through the five
//! task stages (over the in-memory store, with a stage logic that answers at once) and looks
//! up ideas among 100,000; the suite runs it small (2,000 units and ideas) as a test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Act, Script, pipeline, settings};
use gymforge_actors::Taxonomy;
use gymforge_actors::minhash::{Index, Signature};
use gymforge_actors::pipeline::Weighted;
use gymforge_actors::supervisor::run_pipeline_until;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u32 = if full { 100_000 } else { 2_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let ok = runtime.block_on(supervisor(n)) & ideas(n as usize) & sampling(u64::from(n));
    if !ok {
        std::process::exit(1);
    }
}

/// Time per unit in the first and the last tenth of the run, and the most units held at once.
async fn supervisor(n: u32) -> bool {
    let mut s = settings(n, 0);
    s.max_topics = n;
    let window = 2 * 6; // twice the task-stage workers of `settings` (2 + 1 + 1 + 1 + 1)
    let run = pipeline(s, Script::new(Duration::ZERO, |_, _| Act::Advance));
    let mut progress = run.progress.clone();
    let watcher = tokio::spawn(async move {
        let tenth = (n / 10).max(1);
        let (mut marks, mut most_live) = (vec![Instant::now()], 0u32);
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            most_live = most_live.max(p.live_units);
            if p.accepted_tasks >= tenth * marks.len() as u32 {
                marks.push(Instant::now());
            }
            if p.finished {
                break;
            }
        }
        (marks, most_live)
    });
    let started = Instant::now();
    let outcome = run_pipeline_until(run.pipeline.clone(), None).await.expect("the run finishes");
    let (marks, most_live) = watcher.await.expect("the watcher ends");
    let tenth = |i: usize| marks[i + 1].duration_since(marks[i]).as_secs_f64();
    let (first, last) = (tenth(0), tenth(marks.len().saturating_sub(2)));
    let per_unit_us = |secs: f64| secs * 1e6 / f64::from((n / 10).max(1));
    println!("supervisor: {} task units in {:.1} s, 5 stages each", outcome.accepted_tasks, started.elapsed().as_secs_f64());
    println!(
        "  cost per unit: {:.1} us in the first tenth, {:.1} us in the last: ratio {:.2} (flat: about 1)",
        per_unit_us(first),
        per_unit_us(last),
        last / first
    );
    println!(
        "  units held at most: {most_live}, bound (task window) {window}: ratio {:.2} (at most 1)",
        f64::from(most_live) / f64::from(window)
    );
    outcome.accepted_tasks == n && most_live <= window
}

/// Lookups among 1/50 of the ideas against lookups among all of them.
fn ideas(n: usize) -> bool {
    let text = |i: usize| format!("idea {i} on topic {} with twist {} for domain {} scored by {}", i * 7, i * 13, i % 97, i * 31);
    let mut index = Index::default();
    let lookups = 500;
    let time_lookups = |index: &Index<usize>| {
        let started = Instant::now();
        for q in 0..lookups {
            let probe = Signature::of(&format!("{} today", text(q * 3)));
            std::hint::black_box(index.most_similar(&probe, 0.6, |_| true));
        }
        started.elapsed().as_secs_f64() / lookups as f64
    };
    let small = (n / 50).max(lookups * 3);
    for i in 0..small {
        index.insert(i, Signature::of(&text(i)));
    }
    let at_small = time_lookups(&index);
    for i in small..n.max(small) {
        index.insert(i, Signature::of(&text(i)));
    }
    let at_full = time_lookups(&index);
    println!(
        "topic near-duplicate test: {:.1} us per idea among {small} earlier ideas, {:.1} us among {}: ratio {:.2} (flat: about 1)",
        at_small * 1e6,
        at_full * 1e6,
        index.len(),
        at_full / at_small
    );
    true
}

/// Taxonomy samples for the first units of a run against samples as far in as unit `n`.
fn sampling(n: u64) -> bool {
    let axis = |k: usize| (0..k).map(|i| Weighted { name: format!("e{i}"), weight: 1.0 + i as f64 / 3.0 }).collect();
    let t = Taxonomy { domain: axis(12), task_type: axis(8), modality: axis(3), twist: axis(10), checkpoints: Default::default() };
    let samples = 2_000u64;
    let time = |from: u64| {
        let started = Instant::now();
        for seq in from..from + samples {
            std::hint::black_box(t.sample(7, seq));
        }
        started.elapsed().as_secs_f64() / samples as f64
    };
    // The checkpoints up to `n` are made once, as a long run makes them along the way.
    t.sample(7, n);
    let (early, late) = (time(0), time(n));
    println!(
        "topic sampling: {:.2} us per unit at the start, {:.2} us at unit {n}: ratio {:.2} (flat: about 1)",
        early * 1e6,
        late * 1e6,
        late / early
    );
    true
}
