//! One trace per unit of work.
//!
//! A unit's stages run at different times, in different workers, and across restarts in
//! different processes. So a unit's trace id and root span id are derived from the run's id and
//! the unit's id: every stage span, in whichever process, becomes a child of the same root, and
//! the root span itself is sent once, when the unit ends (done or dropped), starting when the
//! unit was created. A rollout's root links to its task's root.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gymforge_actors::model::{DropReason, Stage, Unit, UnitKind, Verdict};
use gymforge_actors::ports::{Telemetry, stage_span};
use opentelemetry::trace::{Link, Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use sha2::{Digest, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::metrics;
use crate::store::BatchStore;

/// The [`Telemetry`] port over OpenTelemetry: stage spans in unit traces, unit roots, metrics.
pub struct UnitTraces {
    run_id: String,
    store: Arc<dyn BatchStore>,
}

impl UnitTraces {
    /// `run_id` names the run (it survives resumes), so trace ids differ between runs.
    pub fn new(run_id: String, store: Arc<dyn BatchStore>) -> UnitTraces {
        UnitTraces { run_id, store }
    }

    /// The unit's trace id and its root span's id.
    pub fn ids(&self, unit: &str) -> (TraceId, SpanId) {
        let digest = Sha256::digest(format!("{}\0{unit}", self.run_id).as_bytes());
        let trace: [u8; 16] = digest[..16].try_into().expect("16 bytes");
        let span: [u8; 8] = digest[16..24].try_into().expect("8 bytes");
        (TraceId::from_bytes(trace), SpanId::from_bytes(span))
    }

    fn root(&self, unit: &str) -> SpanContext {
        let (trace, span) = self.ids(unit);
        SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::default())
    }

    /// Sends the unit's root span, from its creation to now.
    fn end_unit(&self, unit: &Unit, status: &'static str, reason: Option<DropReason>) {
        let Some(tracer) = super::tracer() else { return };
        let created = self.store.created_unix_ms(&unit.id);
        let start = created.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)).unwrap_or_else(SystemTime::now);
        let kind = match unit.kind {
            UnitKind::Task => "task",
            UnitKind::Rollout => "rollout",
        };
        let mut attributes =
            vec![KeyValue::new("unit", unit.id.clone()), KeyValue::new("unit.kind", kind), KeyValue::new("unit.status", status)];
        if let Some(reason) = reason {
            attributes.push(KeyValue::new("unit.drop_reason", reason.as_str()));
        }
        let mut builder = tracer.span_builder(format!("unit {kind}")).with_start_time(start).with_attributes(attributes);
        if let Some(task) = &unit.parent {
            builder = builder.with_links(vec![Link::with_context(self.root(task))]);
            builder.attributes.get_or_insert_default().push(KeyValue::new("unit.task", task.clone()));
        }
        let (trace, span) = self.ids(&unit.id);
        let mut root = with_ids(trace, span, || builder.start_with_context(tracer, &Context::new()));
        if status == "dropped" {
            root.set_status(opentelemetry::trace::Status::error(reason.map_or("dropped", DropReason::as_str).to_string()));
        }
        root.end();
    }
}

impl Telemetry for UnitTraces {
    fn stage_span(&self, unit: &Unit, stage: Stage) -> tracing::Span {
        let span = stage_span(unit, stage);
        if super::tracer().is_some() {
            // Fails only when the span is disabled; it then has nothing to attach.
            let _ = span.set_parent(Context::new().with_remote_span_context(self.root(&unit.id)));
        }
        span
    }

    fn stage_ended(&self, unit: &Unit, stage: Stage, verdict: &Verdict, elapsed: Duration) {
        metrics().stage_ended(stage, verdict, elapsed);
        match verdict {
            Verdict::Advanced { next: None } => self.end_unit(unit, "done", None),
            Verdict::Dropped { reason, .. } => self.end_unit(unit, "dropped", Some(*reason)),
            Verdict::Advanced { .. } | Verdict::Retry { .. } | Verdict::NotClaimed => {}
        }
    }

    fn worker_restarted(&self, stage: Stage) {
        metrics().worker_restarted(stage);
    }
}

thread_local! {
    /// Ids the next span started on this thread must take (see [`with_ids`]).
    static FIXED_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for a span started inside [`with_ids`]: the SDK has no other way to give a
/// span an id chosen in advance.
#[derive(Debug, Default)]
pub struct UnitIds(RandomIdGenerator);

impl IdGenerator for UnitIds {
    fn new_trace_id(&self) -> TraceId {
        FIXED_IDS.get().map(|(t, _)| t).unwrap_or_else(|| self.0.new_trace_id())
    }
    fn new_span_id(&self) -> SpanId {
        FIXED_IDS.get().map(|(_, s)| s).unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Runs `start` (which must start exactly one span without a parent) with the given ids.
fn with_ids<T>(trace: TraceId, span: SpanId, start: impl FnOnce() -> T) -> T {
    FIXED_IDS.set(Some((trace, span)));
    let started = start();
    FIXED_IDS.set(None);
    started
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ids_apply_only_inside_with_ids() {
        let ids = UnitIds::default();
        let (t, s) = (TraceId::from_bytes([7; 16]), SpanId::from_bytes([9; 8]));
        with_ids(t, s, || {
            assert_eq!(ids.new_trace_id(), t);
            assert_eq!(ids.new_span_id(), s);
        });
        assert_ne!(ids.new_trace_id(), t);
        assert_ne!(ids.new_span_id(), s);
    }
}
