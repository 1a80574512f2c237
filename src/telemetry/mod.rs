//! Logging and OpenTelemetry: how the process's tracing is set up, and where traces and metrics go.
//!
//! Logs always go to stderr, filtered by `RUST_LOG` (default `warn`; `info` for a daemon, whose
//! log is its only output). When an OTLP endpoint is
//! configured (`telemetry.otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `..._TRACES_ENDPOINT`, `..._METRICS_ENDPOINT` variables), the info-level spans of gymforge's
//! own code are exported as traces and the instruments of [`metrics`] as metrics, over OTLP
//! http/protobuf; otherwise nothing is exported. [`Telemetry::shutdown`] flushes both.
//!
//! [`units`] makes one trace per unit of work; the LLM gateway adds GenAI spans and sends W3C
//! `traceparent` headers ([`traceparent`]).

pub mod metrics;
pub mod units;

use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::TelemetryConfig;

/// The exporters of this process; [`Telemetry::shutdown`] sends what they still hold.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static RECORD_PROMPTS: OnceLock<bool> = OnceLock::new();

/// The tracer spans are exported with, when traces are exported.
pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Whether LLM spans carry prompt and completion text (`telemetry.record_prompts`).
pub fn record_prompts() -> bool {
    RECORD_PROMPTS.get().copied().unwrap_or(false)
}

/// Where each signal goes: `Some(None)` lets the exporter read the standard variables.
#[derive(Debug, PartialEq)]
struct Destinations {
    traces: Option<Option<String>>,
    metrics: Option<Option<String>>,
}

fn destinations(config: Option<&TelemetryConfig>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Destinations> {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(Destinations { traces: None, metrics: None });
    }
    for var in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"] {
        if let Some(p) = env(var).filter(|p| p.trim() != "http/protobuf" && !p.trim().is_empty()) {
            bail!(
                "{var}={p}: gymforge exports OTLP over http/protobuf only (collectors usually listen for it on port 4318); \
                 unset it or set it to http/protobuf"
            );
        }
    }
    if let Some(base) = config.map(|c| c.otlp_endpoint.trim().trim_end_matches('/')).filter(|b| !b.is_empty()) {
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "telemetry.otlp_endpoint = {base:?} is not an http(s) URL (expected something like \"http://127.0.0.1:4318\")"
        );
        return Ok(Destinations { traces: Some(Some(format!("{base}/v1/traces"))), metrics: Some(Some(format!("{base}/v1/metrics"))) });
    }
    let general = set("OTEL_EXPORTER_OTLP_ENDPOINT");
    Ok(Destinations {
        traces: (general || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")).then_some(None),
        metrics: (general || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")).then_some(None),
    })
}

/// Sets up logging to stderr and, when configured, OTLP export. Call once, before the runtime
/// starts (the exporters run on threads of their own).
pub fn init(config: Option<&TelemetryConfig>) -> anyhow::Result<Telemetry> {
    init_with_level(config, "warn")
}

/// [`init`] with `default_level` as the log filter when `RUST_LOG` is not set.
pub fn init_with_level(config: Option<&TelemetryConfig>, default_level: &str) -> anyhow::Result<Telemetry> {
    let to = destinations(config, &|name| std::env::var(name).ok())?;
    RECORD_PROMPTS.set(config.is_some_and(|c| c.record_prompts)).ok();
    let resource = {
        let mut builder = opentelemetry_sdk::Resource::builder()
            .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attribute(opentelemetry::KeyValue::new("service.instance.id", crate::node::id()));
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            builder = builder.with_service_name("gymforge");
        }
        builder.build()
    };
    crate::http::install_tls();
    let traces = match to.traces {
        Some(endpoint) => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(url) = endpoint {
                exporter = exporter.with_endpoint(url);
            }
            let exporter = exporter.build().context("cannot set up the OTLP trace exporter")?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_id_generator(units::UnitIds::default())
                .with_resource(resource.clone())
                .build();
            TRACER.set(provider.tracer("gymforge")).ok();
            Some(provider)
        }
        None => None,
    };
    let metrics = match to.metrics {
        Some(endpoint) => {
            let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_http();
            if let Some(url) = endpoint {
                exporter = exporter.with_endpoint(url);
            }
            let exporter = exporter.build().context("cannot set up the OTLP metric exporter")?;
            let provider = SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource).build();
            opentelemetry::global::set_meter_provider(provider.clone());
            Some(provider)
        }
        None => None,
    };

    let logs = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(logs);
    // Only gymforge's own spans: the exporter's HTTP client must not trace itself.
    let ours = tracing_subscriber::filter::Targets::new()
        .with_target("gymforge", tracing::Level::INFO)
        .with_target("gymforge_actors", tracing::Level::INFO);
    let otel = tracer().map(|t| tracing_opentelemetry::layer().with_tracer(t.clone()).with_threads(false).with_filter(ours));
    tracing_subscriber::registry().with(fmt).with(otel).try_init().context("cannot set up logging")?;
    Ok(Telemetry { traces, metrics })
}

impl Telemetry {
    /// Whether anything is exported.
    pub fn exporting(&self) -> bool {
        self.traces.is_some() || self.metrics.is_some()
    }

    /// Sends every span and metric still held, then stops the exporters. Call outside the runtime.
    pub fn shutdown(self) {
        if let Some(p) = self.traces
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: could not send the last traces to the OTLP endpoint: {e}");
        }
        if let Some(p) = self.metrics
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: could not send the last metrics to the OTLP endpoint: {e}");
        }
    }
}

/// The W3C `traceparent` header value for the current span, when it is being traced.
pub fn traceparent() -> Option<String> {
    tracer()?;
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let d = destinations(Some(&TelemetryConfig::default()), &env(&[])).unwrap();
        assert_eq!(d, Destinations { traces: None, metrics: None });
    }

    #[test]
    fn the_config_endpoint_is_a_base_url() {
        let c = TelemetryConfig { otlp_endpoint: "http://127.0.0.1:4318/".into(), ..Default::default() };
        let d = destinations(Some(&c), &env(&[])).unwrap();
        assert_eq!(d.traces, Some(Some("http://127.0.0.1:4318/v1/traces".into())));
        assert_eq!(d.metrics, Some(Some("http://127.0.0.1:4318/v1/metrics".into())));
        let bad = TelemetryConfig { otlp_endpoint: "127.0.0.1:4318".into(), ..Default::default() };
        assert!(destinations(Some(&bad), &env(&[])).unwrap_err().to_string().contains("not an http(s) URL"));
    }

    #[test]
    fn standard_variables_enable_each_signal() {
        let d = destinations(None, &env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x:4318/v1/traces")])).unwrap();
        assert_eq!(d, Destinations { traces: Some(None), metrics: None });
        let d = destinations(None, &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318")])).unwrap();
        assert_eq!(d, Destinations { traces: Some(None), metrics: Some(None) });
        let d = destinations(None, &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"), ("OTEL_SDK_DISABLED", "true")])).unwrap();
        assert_eq!(d, Destinations { traces: None, metrics: None });
    }

    #[test]
    fn other_protocols_are_refused_with_a_reason() {
        let e = destinations(None, &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]))
            .unwrap_err();
        assert!(e.to_string().contains("http/protobuf only"), "{e}");
    }
}
