//! Cost of reading model answers, as a ratio against a bound measured in the same run.
//!
//! `json::extract` finds a JSON object inside prose, fences and a `<think>` section; its bound is
//! `serde_json` parsing the bare object. `agent::parse_action` splits an agent answer into its
//! thought and command; its bound is one pass over the answer's lines. Run with
//! `cargo bench --bench parsers`.

use std::hint::black_box;
use std::time::Instant;

use gymforge_actors::agent::parse_action;
use gymforge_actors::json::extract;
use gymforge_actors::model::TaskBundle;

fn bundle_json() -> String {
    let code = "import pandas as pd\n".repeat(200);
    serde_json::json!({
        "name": "wineCultivarClassification",
        "description": "Predict the cultivar. {dataset_docs}\n\nSUBMISSION FORMAT: submission.csv",
        "dataset_description": "Chemical analysis of wines.",
        "priority_metric": "accuracy",
        "direction": "maximize",
        "metrics": ["accuracy", "f1_macro"],
        "target_column": "target",
        "training_timeout": 600,
        "files": {"prepare.py": code, "baseline.py": code, "evaluate.py": code}
    })
    .to_string()
}

/// Median nanoseconds per call over `rounds` rounds of `iters` calls.
fn time(rounds: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    samples[samples.len() / 2]
}

fn main() {
    let bare = bundle_json();
    let wrapped = format!("<think>Let me plan the bundle.</think>\nHere is the bundle:\n```json\n{bare}\n```\nGood luck!");
    let bound = time(15, 200, || {
        black_box(serde_json::from_str::<TaskBundle>(black_box(&bare)).expect("parses"));
    });
    let (_, schema) = gymforge_actors::schemas::task_bundle();
    let measured = time(15, 200, || {
        black_box(extract::<TaskBundle>(black_box(&wrapped), Some(&schema)).expect("parses"));
    });
    println!(
        "json::extract           {measured:>10.0} ns/answer  bound (serde_json on the bare object) {bound:>10.0} ns  ratio {:.2}",
        measured / bound
    );

    let answer = format!(
        "DISCUSSION\n{}\n\n```\ncat << 'EOF' > train.py\n{}EOF\n```\n",
        "I will rewrite the training script. ".repeat(20),
        "x = 1\n".repeat(300)
    );
    let bound = time(15, 2000, || {
        black_box(black_box(&answer).lines().count());
    });
    let measured = time(15, 2000, || {
        black_box(parse_action(black_box(&answer)).expect("parses"));
    });
    println!(
        "agent::parse_action     {measured:>10.0} ns/answer  bound (one pass over the lines)       {bound:>10.0} ns  ratio {:.2}",
        measured / bound
    );
}
