//! `gymforge daemon`: one batch run as a long-lived service with an HTTP face on loopback.
//!
//! `/healthz` (the process answers), `/readyz` (the pipeline is running and no LLM endpoint's
//! circuit is open), `/status` (JSON: per-stage queues, in flight, done and dropped, targets,
//! the gateway's limits, counters and circuits) and `/metrics` (the same in Prometheus text
//! format). SIGTERM or SIGINT drains: no new work starts, the units in flight may finish until
//! `daemon.drain_timeout_secs`, the rest stays pending in the store, and the process exits 0;
//! the next `daemon` or `run` on the same directory resumes. When the batch reaches its target
//! the daemon keeps serving its final status until it is stopped, and `/readyz` answers 200 with
//! the phase `finished`: the process is healthy and serving.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gymforge_actors::Progress;
use serde_json::{Value, json};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::run::BatchEnd;

/// A batch started as a service: the status it publishes, and the way to drain it.
pub struct Service {
    pub state: Arc<DaemonState>,
    drain: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Service {
    /// Stops taking work; the batch finishes what is in flight (once; later calls do nothing).
    pub fn drain(&mut self) {
        if let Some(drain) = self.drain.take() {
            drain.send(()).ok();
        }
    }
}

/// The batch of `config` into `out`, live, with its status in a [`DaemonState`] and its progress
/// messages in the log. The batch runs when the returned future is polled.
pub fn start(config: Config, out: std::path::PathBuf) -> (Service, impl std::future::Future<Output = anyhow::Result<BatchEnd>>) {
    fn log_status(message: &str) {
        tracing::info!("{message}");
    }
    let (tx, rx) = tokio::sync::watch::channel(Progress::default());
    let state = DaemonState::new(rx);
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel();
    let request = crate::run::RunRequest {
        config,
        out,
        llm_source: crate::gateway::Source::Live { record: None },
        drain: Some(drain_rx),
        daemon: Some(state.clone()),
    };
    (Service { state, drain: Some(drain_tx) }, crate::run::run_batch(request, &log_status, tx))
}

/// `gymforge daemon`: serves the status on `daemon.listen`, runs the batch, and on SIGTERM or
/// SIGINT drains it within `daemon.drain_timeout_secs`; after a finished batch it serves its
/// final status until stopped.
pub async fn run(config: Config, out: std::path::PathBuf) -> anyhow::Result<()> {
    let listen: SocketAddr = config.daemon.listen.parse()?;
    let drain_timeout = std::time::Duration::from_secs(config.daemon.drain_timeout_secs);
    let (mut service, batch) = start(config, out);
    let addr = serve(service.state.clone(), listen).await?;
    tracing::info!("serving status on http://{addr} (/healthz /readyz /status /metrics); SIGTERM drains and stops");
    tokio::pin!(batch);
    tokio::select! {
        result = &mut batch => {
            let end = result?;
            service.state.set_phase("finished");
            tracing::info!("batch finished, {} of {} tasks accepted; serving status until stopped", end.tally.accepted_tasks, end.tally.target_tasks);
            stop_signal().await;
        }
        _ = stop_signal() => {
            service.state.set_phase("draining");
            tracing::info!("stopping; units in flight may finish within {} s", drain_timeout.as_secs());
            service.drain();
            match tokio::time::timeout(drain_timeout, &mut batch).await {
                Ok(result) => {
                    result?;
                    tracing::info!("drained; pending work resumes on the next start");
                }
                Err(_) => tracing::warn!("the drain deadline passed; the units still in flight resume on the next start"),
            }
        }
    }
    Ok(())
}

/// What the HTTP handlers read.
pub struct DaemonState {
    pub progress: tokio::sync::watch::Receiver<Progress>,
    /// Set once the batch's services are up.
    pub gateway: OnceLock<Arc<Gateway>>,
    pub started: Instant,
    pub phase: std::sync::Mutex<&'static str>,
}

impl DaemonState {
    pub fn new(progress: tokio::sync::watch::Receiver<Progress>) -> Arc<DaemonState> {
        Arc::new(DaemonState { progress, gateway: OnceLock::new(), started: Instant::now(), phase: std::sync::Mutex::new("starting") })
    }

    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `/status` document.
    pub fn status(&self) -> Value {
        let progress = self.progress.borrow().clone();
        let stages: serde_json::Map<String, Value> = progress
            .stages
            .iter()
            .map(|(stage, c)| (stage.as_str().to_string(), json!({ "queued": c.queued, "in_flight": c.in_flight, "passed": c.passed, "dropped": c.dropped })))
            .collect();
        let uptime = self.started.elapsed().as_secs_f64();
        json!({
            "phase": self.phase(),
            "uptime_secs": uptime,
            "stages": stages,
            "target_tasks": progress.target_tasks,
            "accepted_tasks": progress.accepted_tasks,
            "rollouts": { "total": progress.rollouts_total, "done": progress.rollouts_done },
            "worker_restarts": progress.worker_restarts,
            "throughput": {
                "accepted_tasks_per_hour": f64::from(progress.accepted_tasks) / uptime.max(1.0) * 3600.0,
                // Every rollout that ended, scored or not (report.json's `trajectories_per_hour`
                // counts the scored ones when the batch is exported).
                "recorded_trajectories_per_hour": f64::from(progress.rollouts_done) / uptime.max(1.0) * 3600.0,
            },
            "llm": self.gateway.get().map(|g| g.snapshot()),
        })
    }
}

/// Serves the daemon's endpoints on `addr` until the process ends; returns the bound address.
pub async fn serve(state: Arc<DaemonState>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("the daemon cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(|State(s): State<Arc<DaemonState>>| async move { axum::Json(s.status()) }))
        .route("/metrics", get(metrics))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the daemon's HTTP server stopped");
        }
    });
    Ok(bound)
}

async fn readyz(State(s): State<Arc<DaemonState>>) -> Response {
    let phase = s.phase();
    let open: Vec<String> = s
        .gateway
        .get()
        .map(|g| {
            g.snapshot()["endpoints"]
                .as_object()
                .map(|m| m.iter().filter(|(_, e)| e["circuit"]["state"] == "open").map(|(n, e)| format!("{n}: {}", e["circuit"]["reason"])).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let ready = is_ready(phase, &open);
    let body = json!({ "ready": ready, "phase": phase, "open_circuits": open });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// Ready: running with every circuit closed, or finished (the batch is done; the process serves
/// its final status until stopped, whatever state the circuits were left in).
fn is_ready(phase: &str, open_circuits: &[String]) -> bool {
    match phase {
        "running" => open_circuits.is_empty(),
        "finished" => true,
        _ => false,
    }
}

async fn metrics(State(s): State<Arc<DaemonState>>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], render_metrics(&s.status())).into_response()
}

/// The status in Prometheus text format.
pub fn render_metrics(status: &Value) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let stages = status["stages"].as_object().cloned().unwrap_or_default();
    let per_stage = |field: &str| -> Vec<(String, f64)> {
        stages.iter().map(|(stage, c)| (format!("{{stage=\"{stage}\"}}"), c[field].as_f64().unwrap_or(0.0))).collect()
    };
    family("gymforge_stage_queued", "gauge", "Units waiting for a worker of the stage.", per_stage("queued"));
    family("gymforge_stage_in_flight", "gauge", "Units a worker of the stage is processing.", per_stage("in_flight"));
    family("gymforge_stage_passed_total", "counter", "Units that passed the stage.", per_stage("passed"));
    family("gymforge_stage_dropped_total", "counter", "Units dropped at the stage.", per_stage("dropped"));
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    family("gymforge_accepted_tasks", "gauge", "Tasks accepted so far.", vec![(String::new(), n(&status["accepted_tasks"]))]);
    family("gymforge_target_tasks", "gauge", "Tasks the batch aims for.", vec![(String::new(), n(&status["target_tasks"]))]);
    family("gymforge_rollouts_done_total", "counter", "Rollouts finished.", vec![(String::new(), n(&status["rollouts"]["done"]))]);
    family("gymforge_worker_restarts_total", "counter", "Stage workers restarted after a crash.", vec![(String::new(), n(&status["worker_restarts"]))]);
    family("gymforge_uptime_seconds", "gauge", "Seconds since the daemon started.", vec![(String::new(), n(&status["uptime_secs"]))]);
    let endpoints = status["llm"]["endpoints"].as_object().cloned().unwrap_or_default();
    let per_endpoint = |f: &dyn Fn(&Value) -> f64| -> Vec<(String, f64)> {
        endpoints.iter().map(|(name, e)| (format!("{{endpoint=\"{}\"}}", escape_label(name)), f(e))).collect()
    };
    for (metric, field, kind, help) in [
        ("gymforge_llm_requests_total", "requests_sent", "counter", "Requests sent to the endpoint."),
        ("gymforge_llm_answered_total", "answered", "counter", "Requests answered with a chat completion, usable or not (billed)."),
        ("gymforge_llm_succeeded_total", "succeeded", "counter", "Answers with usable content."),
        ("gymforge_llm_rate_limited_total", "rate_limited", "counter", "Requests answered 429."),
        ("gymforge_llm_transient_failures_total", "transient_failures", "counter", "Requests that failed and may be retried."),
        ("gymforge_llm_permanent_failures_total", "permanent_failures", "counter", "Requests refused for good."),
        ("gymforge_llm_retries_total", "retries", "counter", "Retries."),
        ("gymforge_llm_input_tokens_total", "input_tokens", "counter", "Prompt tokens."),
        ("gymforge_llm_output_tokens_total", "output_tokens", "counter", "Completion tokens."),
        ("gymforge_llm_cost_usd_total", "cost_usd", "counter", "Dollars spent."),
        ("gymforge_llm_circuit_openings_total", "circuit_openings", "counter", "Times the circuit opened."),
    ] {
        family(metric, kind, help, per_endpoint(&|e: &Value| n(&e[field])));
    }
    family("gymforge_llm_circuit_open", "gauge", "1 while the endpoint's circuit is open.", per_endpoint(&|e: &Value| f64::from(u8::from(e["circuit"]["state"] == "open"))));
    family("gymforge_llm_concurrency_limit", "gauge", "The adaptive limit on requests in flight.", per_endpoint(&|e: &Value| n(&e["concurrency"]["limit"])));
    family("gymforge_llm_cooldown_seconds", "gauge", "Time left of the endpoint's 429 cooldown.", per_endpoint(&|e: &Value| n(&e["cooldown_remaining_ms"]) / 1000.0));
    out
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler can be installed");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler can be installed");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn readyz_of(phase: &'static str) -> (StatusCode, Value) {
        let (_tx, rx) = tokio::sync::watch::channel(Progress::default());
        let state = DaemonState::new(rx);
        state.set_phase(phase);
        let response = readyz(State(state)).await;
        let code = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (code, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn readyz_answers_ready_while_running_and_once_finished() {
        for (phase, code) in [
            ("starting", StatusCode::SERVICE_UNAVAILABLE),
            ("running", StatusCode::OK),
            ("draining", StatusCode::SERVICE_UNAVAILABLE),
            ("finished", StatusCode::OK),
        ] {
            let (got, body) = readyz_of(phase).await;
            assert_eq!(got, code, "{phase}: {body}");
            assert_eq!(body["phase"], phase);
            assert_eq!(body["ready"], code == StatusCode::OK);
        }
        assert!(!is_ready("running", &["main: failing".into()]));
        assert!(is_ready("finished", &["main: failing".into()]));
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let status = json!({
            "stages": {"topic": {"queued": 1, "in_flight": 2, "passed": 3, "dropped": 0}},
            "accepted_tasks": 1, "target_tasks": 3, "rollouts": {"done": 2}, "worker_restarts": 0, "uptime_secs": 12.5,
            "llm": {"endpoints": {"main": {"requests_sent": 10, "circuit": {"state": "open"}, "concurrency": {"limit": 4}, "cooldown_remaining_ms": 1500}}},
        });
        let text = render_metrics(&status);
        assert!(text.contains("# TYPE gymforge_stage_queued gauge\ngymforge_stage_queued{stage=\"topic\"} 1\n"), "{text}");
        assert!(text.contains("gymforge_llm_requests_total{endpoint=\"main\"} 10\n"));
        assert!(text.contains("gymforge_llm_circuit_open{endpoint=\"main\"} 1\n"));
        assert!(text.contains("gymforge_llm_cooldown_seconds{endpoint=\"main\"} 1.5\n"));
        assert_eq!(escape_label("a\"b"), "a\\\"b");
    }
}
