//! The LLM gateway: the adapter behind the pipeline's `Llm` port.
//!
//! Several named OpenAI-compatible endpoints ([`endpoint::Endpoint`]), each with its own
//! limiters, cooldown and circuit; each stage is routed to one. The gateway adds what spans
//! endpoints: the run's dollar budget, record and replay, the status snapshot, and one
//! OpenTelemetry span per call with the GenAI semantic conventions' attributes.
//!
//! | module       | what it holds                                                       |
//! |--------------|---------------------------------------------------------------------|
//! | `endpoint`   | one endpoint: request shape, the gates, the retry loop, accounting |
//! | `limits`     | adaptive concurrency, the shared cooldown, the circuit breaker      |
//! | `classify`   | status codes and headers to rate limit / transient / permanent      |
//! | `tokens`     | prompt token estimates with a real tokenizer                        |
//! | `record`     | `--record` and `--replay` files                                     |
//! | `shared`     | the limits several nodes share through the store                    |

pub mod classify;
pub mod endpoint;
pub mod limits;
pub mod record;
pub mod shared;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use gymforge_actors::ports::{ChatMessage, ChatReply, ChatRequest, Llm, ModelLimits, PortError};
use gymforge_actors::{DropReason, Stage};
use tracing::Instrument;

use crate::config::LlmConfig;
pub use endpoint::{Endpoint, EndpointSnapshot, Policy};
use record::{Recorder, Replayed, Replayer};

/// Locks a mutex of the gateway, whose guarded state (counters, a pause, a log) stays consistent
/// between statements, so a panic elsewhere while holding it leaves nothing half-done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the gateway's answers come from.
pub enum Source {
    /// The endpoints, over HTTP; optionally recording every exchange.
    Live { record: Option<std::path::PathBuf> },
    /// A recorded file; no endpoint is contacted.
    Replay(std::path::PathBuf),
}

pub struct Gateway {
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    routes: HashMap<Stage, Arc<Endpoint>>,
    budget: RunBudget,
    replay: Option<Replayer>,
}

/// The run's dollar budget (0: none). Spending before a resume counts, and with a shared store
/// every node's spending (read from the store at most once a second).
struct RunBudget {
    limit_usd: f64,
    spent_usd: Mutex<f64>,
    shared: std::sync::OnceLock<Arc<dyn shared::SharedLimits>>,
    read_at: Mutex<Option<tokio::time::Instant>>,
}

/// How often a node reads what the whole batch has spent.
const SHARED_SPENDING_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The gateway as `/status` and report.json's `llm.gateway` show it.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct GatewaySnapshot {
    pub endpoints: BTreeMap<String, EndpointSnapshot>,
    /// The endpoint each stage is routed to.
    pub routes: BTreeMap<Stage, String>,
    pub run_budget_usd: f64,
    pub spent_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySnapshot>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct ReplaySnapshot {
    pub answered: u64,
    pub mismatches: u64,
}

impl Gateway {
    /// Builds the gateway. `base_urls` gives each endpoint's resolved base URL (the simulated
    /// teacher's loopback address for `"sim"`), `keys` its API key, and `spent_usd` what earlier
    /// sessions of this run already spent.
    pub fn new(
        cfg: &LlmConfig,
        base_urls: &BTreeMap<String, String>,
        keys: &BTreeMap<String, Option<String>>,
        spent_usd: f64,
        source: Source,
    ) -> anyhow::Result<Gateway> {
        let (recorder, replay) = match source {
            Source::Live { record: Some(path) } => (Some(Arc::new(Recorder::create(&path)?)), None),
            Source::Live { record: None } => (None, None),
            Source::Replay(path) => (None, Some(Replayer::load(&path)?)),
        };
        let policy = Policy::from_config(cfg);
        let mut endpoints = BTreeMap::new();
        for (name, e) in &cfg.endpoints {
            let Some(base) = base_urls.get(name) else { continue };
            let key = keys.get(name).cloned().flatten();
            endpoints.insert(name.clone(), Arc::new(Endpoint::new(name, e, base.clone(), key, policy.clone(), recorder.clone())?));
        }
        let mut routes = HashMap::new();
        for (stage, name) in cfg.routes.all() {
            let endpoint = endpoints.get(name).ok_or_else(|| anyhow::anyhow!("llm.routes.{stage}: endpoint `{name}` was not started"))?;
            routes.insert(stage, endpoint.clone());
        }
        let budget = RunBudget {
            limit_usd: cfg.run_budget_usd,
            spent_usd: Mutex::new(spent_usd),
            shared: Default::default(),
            read_at: Mutex::new(None),
        };
        Ok(Gateway { endpoints, routes, budget, replay })
    }

    /// Spends the cluster's budgets from now on: each endpoint's requests, tokens and cooldown,
    /// and the run's dollars, shared with every node of the batch.
    pub fn share_limits(&self, shared: Arc<dyn shared::SharedLimits>) {
        for endpoint in self.endpoints.values() {
            endpoint.share_limits(shared.clone());
        }
        self.budget.shared.set(shared).ok();
    }

    /// Brings the spending up to what the whole batch spent, at most once a second.
    async fn read_shared_spending(&self) {
        let Some(shared) = self.budget.shared.get().filter(|_| self.budget.limit_usd > 0.0) else { return };
        {
            let mut read_at = lock(&self.budget.read_at);
            if read_at.is_some_and(|at| at.elapsed() < SHARED_SPENDING_EVERY) {
                return;
            }
            *read_at = Some(tokio::time::Instant::now());
        }
        match shared.spent_usd().await {
            Ok(all) => {
                let mut spent = lock(&self.budget.spent_usd);
                *spent = spent.max(all);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read what the batch spent; the budget counts this node's spending"),
        }
    }

    /// The endpoints stages are routed to, by name.
    pub fn endpoints(&self) -> &BTreeMap<String, Arc<Endpoint>> {
        &self.endpoints
    }

    /// Checks every routed endpoint answers (skipped when replaying).
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        if self.replay.is_some() {
            return Ok(());
        }
        for endpoint in self.endpoints.values() {
            endpoint.check_reachable().await?;
        }
        Ok(())
    }

    fn route(&self, stage: Stage) -> Result<&Arc<Endpoint>, PortError> {
        self.routes.get(&stage).ok_or_else(|| PortError::Permanent(format!("no LLM endpoint is routed for stage {stage}")))
    }

    /// Per-endpoint limits, state and counters, the run budget, and replay counts.
    pub fn snapshot(&self) -> GatewaySnapshot {
        GatewaySnapshot {
            endpoints: self.endpoints.iter().map(|(n, e)| (n.clone(), e.snapshot())).collect(),
            routes: self.routes.iter().map(|(s, e)| (*s, e.name.clone())).collect(),
            run_budget_usd: self.budget.limit_usd,
            spent_usd: *lock(&self.budget.spent_usd),
            replay: self
                .replay
                .as_ref()
                .map(|r| ReplaySnapshot { answered: r.answered.load(Ordering::Relaxed), mismatches: r.mismatches.load(Ordering::Relaxed) }),
        }
    }

    /// One log line per endpoint: what it was asked and what it cost.
    pub fn log_summary(&self) {
        for (name, e) in &self.endpoints {
            let s = e.snapshot();
            tracing::info!(
                endpoint = %name,
                requests = s.requests_sent,
                answered = s.answered,
                succeeded = s.succeeded,
                rate_limited = s.rate_limited,
                retries = s.retries,
                input_tokens = s.input_tokens,
                output_tokens = s.output_tokens,
                cost_usd = s.cost_usd,
                "LLM endpoint usage"
            );
        }
    }

    fn check_budget(&self) -> Result<(), PortError> {
        if self.budget.limit_usd <= 0.0 {
            return Ok(());
        }
        let spent = *lock(&self.budget.spent_usd);
        if spent >= self.budget.limit_usd {
            return Err(PortError::Refused {
                reason: DropReason::BudgetExhausted,
                detail: format!("the run has spent ${spent:.4} of its ${:.4} budget (llm.run_budget_usd)", self.budget.limit_usd),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Llm for Gateway {
    async fn chat(&self, stage: Stage, request: ChatRequest) -> Result<ChatReply, PortError> {
        self.read_shared_spending().await;
        self.check_budget()?;
        let endpoint = self.route(stage)?;
        let span = llm_span(endpoint, stage, &request);
        let started = std::time::Instant::now();
        let result = self.chat_on(endpoint, stage, &request).instrument(span.clone()).await;
        finish_llm_span(&span, endpoint, &result, started.elapsed());
        result
    }

    fn model_for(&self, stage: Stage) -> String {
        self.routes.get(&stage).map(|e| e.model.clone()).unwrap_or_default()
    }

    fn limits(&self, stage: Stage) -> ModelLimits {
        self.routes.get(&stage).map(|e| e.limits()).unwrap_or_default()
    }
}

impl Gateway {
    async fn chat_on(&self, endpoint: &Endpoint, stage: Stage, request: &ChatRequest) -> Result<ChatReply, PortError> {
        let prepared = endpoint.prepare(stage, request)?;
        let reply = match &self.replay {
            Some(replay) => match replay.answer(&endpoint.name, stage, &request.unit, &prepared.body) {
                Replayed::Body(text) => {
                    let reply = endpoint.parse(&text, prepared.prompt_tokens).map_err(PortError::Permanent)?;
                    endpoint.account(&reply, reply.input_tokens, reply.output_tokens as u32);
                    reply
                }
                Replayed::Missing => {
                    return Err(PortError::Refused {
                        reason: DropReason::ReplayMissing,
                        detail: format!("the replay file has no further answer for unit {} at stage {stage}", request.unit),
                    });
                }
            },
            None => endpoint.call(&prepared).await?,
        };
        *lock(&self.budget.spent_usd) += reply.cost_usd;
        Ok(reply)
    }
}

/// The span of one LLM call, retries included, with the GenAI semantic conventions' attributes.
/// Prompt text is added only when `telemetry.record_prompts` asks for it.
fn llm_span(endpoint: &Endpoint, stage: Stage, request: &ChatRequest) -> tracing::Span {
    let url = reqwest::Url::parse(&endpoint.base_url).ok();
    let span = tracing::info_span!(
        "llm_call",
        otel.name = %format!("chat {}", endpoint.model),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "chat",
        gen_ai.system = "openai",
        gen_ai.request.model = %endpoint.model,
        gen_ai.request.max_tokens = i64::from(request.max_tokens),
        gen_ai.request.temperature = f64::from(request.temperature),
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.input.messages = tracing::field::Empty,
        gen_ai.output.messages = tracing::field::Empty,
        server.address = url.as_ref().and_then(|u| u.host_str()).unwrap_or_default(),
        server.port = i64::from(url.as_ref().and_then(|u| u.port_or_known_default()).unwrap_or_default()),
        error.type = tracing::field::Empty,
        gymforge.endpoint = %endpoint.name,
        gymforge.stage = %stage,
        gymforge.unit = %request.unit,
        gymforge.cost_usd = tracing::field::Empty,
    );
    if crate::telemetry::record_prompts() {
        span.record("gen_ai.input.messages", serde_json::to_string(&request.messages).unwrap_or_default());
    }
    span
}

fn finish_llm_span(span: &tracing::Span, endpoint: &Endpoint, result: &Result<ChatReply, PortError>, elapsed: std::time::Duration) {
    let metrics = crate::telemetry::metrics::metrics();
    match result {
        Ok(reply) => {
            span.record("gen_ai.response.model", reply.model.as_str());
            // Integers as i64: OpenTelemetry has no unsigned type.
            span.record("gen_ai.usage.input_tokens", reply.input_tokens as i64);
            span.record("gen_ai.usage.output_tokens", reply.output_tokens as i64);
            span.record("gymforge.cost_usd", reply.cost_usd);
            if crate::telemetry::record_prompts() {
                span.record(
                    "gen_ai.output.messages",
                    serde_json::to_string(&[ChatMessage::new("assistant", reply.content.as_str())]).unwrap_or_default(),
                );
            }
            metrics.llm_call(
                &endpoint.model,
                &endpoint.name,
                elapsed,
                Some((reply.input_tokens, reply.output_tokens, reply.cost_usd)),
                None,
            );
        }
        Err(e) => {
            let kind = match e {
                PortError::Refused { reason, .. } => reason.as_str(),
                PortError::Transient(_) => "transient",
                PortError::Permanent(_) => "permanent",
                PortError::LeaseLost(_) => "lease_lost",
            };
            span.record("otel.status_code", "ERROR");
            span.record("error.type", kind);
            metrics.llm_call(&endpoint.model, &endpoint.name, elapsed, None, Some(kind));
        }
    }
}
