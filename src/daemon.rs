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
use std::collections::BTreeMap;

use gymforge_actors::pipeline::StageCounts;
use gymforge_actors::{Progress, Stage};
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::gateway::{EndpointSnapshot, Gateway, GatewaySnapshot};
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
pub fn start(config: Config, out: std::path::PathBuf) -> (Service, impl Future<Output = anyhow::Result<BatchEnd>>) {
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
            let (accepted, target) = (end.tally.accepted_tasks, end.tally.target_tasks);
            tracing::info!("batch finished, {accepted} of {target} tasks accepted; serving status until stopped");
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
    /// Set once the batch's store is open.
    pub store: OnceLock<Arc<dyn crate::store::BatchStore>>,
    pub started: Instant,
    pub phase: std::sync::Mutex<&'static str>,
}

impl DaemonState {
    pub fn new(progress: tokio::sync::watch::Receiver<Progress>) -> Arc<DaemonState> {
        Arc::new(DaemonState {
            progress,
            gateway: OnceLock::new(),
            store: OnceLock::new(),
            started: Instant::now(),
            phase: std::sync::Mutex::new("starting"),
        })
    }

    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `/status` document.
    pub fn status(&self) -> Status {
        let progress = self.progress.borrow().clone();
        let uptime = self.started.elapsed().as_secs_f64();
        let per_hour = |n: u32| f64::from(n) / uptime.max(1.0) * 3600.0;
        Status {
            node: crate::node::id(),
            phase: self.phase(),
            uptime_secs: uptime,
            stages: progress.stages.iter().copied().collect(),
            target_tasks: progress.target_tasks,
            accepted_tasks: progress.accepted_tasks,
            rollouts: RolloutCounts { total: progress.rollouts_total, done: progress.rollouts_done },
            worker_restarts: progress.worker_restarts,
            throughput: Throughput {
                accepted_tasks_per_hour: per_hour(progress.accepted_tasks),
                recorded_trajectories_per_hour: per_hour(progress.rollouts_done),
            },
            llm: self.gateway.get().map(|g| g.snapshot()),
            cluster: None,
        }
    }

    /// The `/status` document with the cluster's state read from a shared store.
    pub async fn status_with_cluster(&self) -> Status {
        let mut status = self.status();
        if let Some(store) = self.store.get() {
            status.cluster = match store.cluster_view().await {
                Some(Ok(view)) => Some(view),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "/status without the cluster's state");
                    None
                }
                None => None,
            };
        }
        status
    }
}

/// What `/status` answers (and `/metrics` renders).
#[derive(Serialize, Clone, Debug, Default)]
pub struct Status {
    /// This process's node id (see `src/node.rs`).
    pub node: &'static str,
    pub phase: &'static str,
    pub uptime_secs: f64,
    pub stages: BTreeMap<Stage, StageCounts>,
    pub target_tasks: u32,
    pub accepted_tasks: u32,
    pub rollouts: RolloutCounts,
    pub worker_restarts: u32,
    pub throughput: Throughput,
    pub llm: Option<GatewaySnapshot>,
    /// With a PostgreSQL store: every node of the batch, queues and leases taken over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::store::ClusterView>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct RolloutCounts {
    pub total: u32,
    pub done: u32,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Throughput {
    pub accepted_tasks_per_hour: f64,
    /// Every rollout that ended, scored or not (report.json's `trajectories_per_hour` counts the
    /// scored ones when the batch is exported).
    pub recorded_trajectories_per_hour: f64,
}

/// Serves the daemon's endpoints on `addr` until the process ends; returns the bound address.
pub async fn serve(state: Arc<DaemonState>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("the daemon cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(|State(s): State<Arc<DaemonState>>| async move { axum::Json(s.status_with_cluster().await) }))
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
        .map(|g| g.snapshot().endpoints.iter().filter_map(|(n, e)| e.circuit.open_reason().map(|r| format!("{n}: {r}"))).collect())
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
pub fn render_metrics(status: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_stage = |field: &dyn Fn(&StageCounts) -> u32| -> Vec<(String, f64)> {
        status.stages.iter().map(|(stage, c)| (format!("{{stage=\"{stage}\"}}"), f64::from(field(c)))).collect()
    };
    family("gymforge_stage_queued", "gauge", "Units waiting for a worker of the stage.", per_stage(&|c| c.queued));
    family("gymforge_stage_in_flight", "gauge", "Units a worker of the stage is processing.", per_stage(&|c| c.in_flight));
    family("gymforge_stage_passed_total", "counter", "Units that passed the stage.", per_stage(&|c| c.passed));
    family("gymforge_stage_dropped_total", "counter", "Units dropped at the stage.", per_stage(&|c| c.dropped));
    let one = |v: f64| vec![(String::new(), v)];
    family("gymforge_accepted_tasks", "gauge", "Tasks accepted so far.", one(f64::from(status.accepted_tasks)));
    family("gymforge_target_tasks", "gauge", "Tasks the batch aims for.", one(f64::from(status.target_tasks)));
    family("gymforge_rollouts_done_total", "counter", "Rollouts finished.", one(f64::from(status.rollouts.done)));
    family("gymforge_worker_restarts_total", "counter", "Stage workers restarted after a crash.", one(f64::from(status.worker_restarts)));
    family("gymforge_uptime_seconds", "gauge", "Seconds since the daemon started.", one(status.uptime_secs));
    let endpoints: Vec<(&String, &EndpointSnapshot)> = status.llm.iter().flat_map(|g| g.endpoints.iter()).collect();
    let per_endpoint = |f: &dyn Fn(&EndpointSnapshot) -> f64| -> Vec<(String, f64)> {
        endpoints.iter().map(|(name, e)| (format!("{{endpoint=\"{}\"}}", escape_label(name)), f(e))).collect()
    };
    type Field = fn(&EndpointSnapshot) -> u64;
    let counters: [(&str, Field, &str); 10] = [
        ("gymforge_llm_requests_total", |e| e.requests_sent, "Requests sent to the endpoint."),
        ("gymforge_llm_answered_total", |e| e.answered, "Requests answered with a chat completion, usable or not (billed)."),
        ("gymforge_llm_succeeded_total", |e| e.succeeded, "Answers with usable content."),
        ("gymforge_llm_rate_limited_total", |e| e.rate_limited, "Requests answered 429."),
        ("gymforge_llm_transient_failures_total", |e| e.transient_failures, "Requests that failed and may be retried."),
        ("gymforge_llm_permanent_failures_total", |e| e.permanent_failures, "Requests refused for good."),
        ("gymforge_llm_retries_total", |e| e.retries, "Retries."),
        ("gymforge_llm_input_tokens_total", |e| e.input_tokens, "Prompt tokens."),
        ("gymforge_llm_output_tokens_total", |e| e.output_tokens, "Completion tokens."),
        ("gymforge_llm_circuit_openings_total", |e| e.circuit_openings, "Times the circuit opened."),
    ];
    for (metric, field, help) in counters {
        family(metric, "counter", help, per_endpoint(&|e| field(e) as f64));
    }
    family("gymforge_llm_cost_usd_total", "counter", "Dollars spent.", per_endpoint(&|e| e.cost_usd));
    family(
        "gymforge_llm_circuit_open",
        "gauge",
        "1 while the endpoint's circuit is open.",
        per_endpoint(&|e| f64::from(u8::from(e.circuit.open_reason().is_some()))),
    );
    family(
        "gymforge_llm_concurrency_limit",
        "gauge",
        "The adaptive limit on requests in flight.",
        per_endpoint(&|e| e.concurrency.limit as f64),
    );
    family(
        "gymforge_llm_cooldown_seconds",
        "gauge",
        "Time left of the endpoint's 429 cooldown.",
        per_endpoint(&|e| e.cooldown_remaining_ms as f64 / 1000.0),
    );
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

    async fn readyz_of(phase: &'static str) -> (StatusCode, serde_json::Value) {
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
        use crate::gateway::limits::CircuitSnapshot;
        let main = EndpointSnapshot {
            requests_sent: 10,
            circuit: CircuitSnapshot::Open { reason: "503".into(), open_for_secs: 1.0, next_probe_in_secs: 2.0, probing: false },
            cooldown_remaining_ms: 1500,
            ..Default::default()
        };
        let llm = GatewaySnapshot {
            endpoints: BTreeMap::from([("main".to_string(), main)]),
            routes: BTreeMap::new(),
            run_budget_usd: 0.0,
            spent_usd: 0.0,
            replay: None,
        };
        let status = Status {
            stages: BTreeMap::from([(Stage::Topic, StageCounts { queued: 1, in_flight: 2, passed: 3, dropped: 0 })]),
            accepted_tasks: 1,
            target_tasks: 3,
            rollouts: RolloutCounts { total: 2, done: 2 },
            uptime_secs: 12.5,
            llm: Some(llm),
            ..Default::default()
        };
        let text = render_metrics(&status);
        assert!(text.contains("# TYPE gymforge_stage_queued gauge\ngymforge_stage_queued{stage=\"topic\"} 1\n"), "{text}");
        assert!(text.contains("gymforge_llm_requests_total{endpoint=\"main\"} 10\n"));
        assert!(text.contains("gymforge_llm_circuit_open{endpoint=\"main\"} 1\n"));
        assert!(text.contains("gymforge_llm_cooldown_seconds{endpoint=\"main\"} 1.5\n"));
        assert_eq!(escape_label("a\"b"), "a\\\"b");
    }
}
