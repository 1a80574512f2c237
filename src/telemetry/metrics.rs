//! The OpenTelemetry instruments: units, drops by reason, restarts, stage and sandbox time, LLM
//! latency, tokens and cost. Without an OTLP endpoint they record into a no-op meter.
//!
//! LLM instruments follow the GenAI semantic conventions (`gen_ai.client.operation.duration`,
//! `gen_ai.client.token.usage`); the rest are named `gymforge.*`.

use std::sync::OnceLock;
use std::time::Duration;

use gymforge_actors::model::{Stage, Verdict};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

pub struct Metrics {
    stage_results: Counter<u64>,
    units_dropped: Counter<u64>,
    stage_duration: Histogram<f64>,
    worker_restarts: Counter<u64>,
    llm_duration: Histogram<f64>,
    llm_tokens: Histogram<u64>,
    llm_cost: Counter<f64>,
    sandbox_duration: Histogram<f64>,
}

/// The process's instruments, made on first use from the global meter provider (set up by
/// [`super::init`] before anything records).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("gymforge");
        Metrics {
            stage_results: meter
                .u64_counter("gymforge.stage.results")
                .with_description("Stage runs by outcome (advanced, done, dropped, retry)")
                .build(),
            units_dropped: meter.u64_counter("gymforge.units.dropped").with_description("Units dropped, by stage and reason").build(),
            stage_duration: meter
                .f64_histogram("gymforge.stage.duration")
                .with_unit("s")
                .with_description("Time one stage took on one unit")
                .build(),
            worker_restarts: meter
                .u64_counter("gymforge.worker.restarts")
                .with_description("Stage workers that crashed and were replaced")
                .build(),
            llm_duration: meter
                .f64_histogram("gen_ai.client.operation.duration")
                .with_unit("s")
                .with_description("LLM call time, retries included")
                .build(),
            llm_tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Tokens per LLM call")
                .build(),
            llm_cost: meter
                .f64_counter("gymforge.llm.cost")
                .with_unit("USD")
                .with_description("LLM spending at the configured prices")
                .build(),
            sandbox_duration: meter
                .f64_histogram("gymforge.sandbox.duration")
                .with_unit("s")
                .with_description("Time of one sandboxed job")
                .build(),
        }
    })
}

impl Metrics {
    pub fn stage_ended(&self, stage: Stage, verdict: &Verdict, elapsed: Duration) {
        let stage_kv = KeyValue::new("stage", stage.as_str());
        let outcome = match verdict {
            Verdict::Advanced { next: None } => "done",
            Verdict::Advanced { .. } => "advanced",
            Verdict::Dropped { reason, .. } => {
                self.units_dropped.add(1, &[stage_kv.clone(), KeyValue::new("reason", reason.as_str())]);
                "dropped"
            }
            Verdict::Retry { .. } => "retry",
            Verdict::NotClaimed => "not_claimed",
        };
        self.stage_results.add(1, &[stage_kv.clone(), KeyValue::new("outcome", outcome)]);
        self.stage_duration.record(elapsed.as_secs_f64(), &[stage_kv]);
    }

    pub fn worker_restarted(&self, stage: Stage) {
        self.worker_restarts.add(1, &[KeyValue::new("stage", stage.as_str())]);
    }

    /// One LLM call (all its attempts); `error` is the failure's type when it failed.
    pub fn llm_call(&self, model: &str, endpoint: &str, elapsed: Duration, usage: Option<(u64, u64, f64)>, error: Option<&str>) {
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.system", "openai"),
            KeyValue::new("gen_ai.request.model", model.to_string()),
            KeyValue::new("gymforge.endpoint", endpoint.to_string()),
        ];
        if let Some(error) = error {
            attrs.push(KeyValue::new("error.type", error.to_string()));
        }
        self.llm_duration.record(elapsed.as_secs_f64(), &attrs);
        if let Some((input, output, cost)) = usage {
            for (kind, n) in [("input", input), ("output", output)] {
                let mut a = attrs.clone();
                a.push(KeyValue::new("gen_ai.token.type", kind));
                self.llm_tokens.record(n, &a);
            }
            self.llm_cost.add(cost, &attrs);
        }
    }

    pub fn sandbox_job(&self, elapsed_secs: f64, outcome: &'static str) {
        self.sandbox_duration.record(elapsed_secs, &[KeyValue::new("outcome", outcome)]);
    }
}
