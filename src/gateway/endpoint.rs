//! One configured OpenAI-compatible endpoint: its HTTP client, its limiters, and the loop that
//! sends one request through them.
//!
//! A request passes five gates, in order: the circuit (waits while the endpoint is known to be
//! down), the adaptive concurrency limit, the requests-per-minute limiter, the input and output
//! tokens-per-minute limiters, and last the shared cooldown (so a 429 seen by any worker while
//! this one waited on a limiter still stops it). Answers are classified: rate limits set the
//! cooldown and cut concurrency, transient failures back off and retry a bounded number of
//! times, permanent ones return at once with a reason code.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use gymforge_actors::ports::{ChatReply, ChatRequest, Finish, ModelLimits, PortError, ResponseFormat};
use gymforge_actors::{DropReason, Stage};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::classify::{Failure, classify_status, describe_transport_error, snippet};
use super::limits::{AdaptiveConcurrency, Admission, Circuit, CircuitSnapshot, ConcurrencySnapshot, Cooldown};
use super::lock;
use super::record::{Exchange, Recorder};
use super::shared::{Ask, Rates, SharedLimits};
use crate::config::{EndpointConfig, LlmConfig, StructuredOutput};

/// Gateway-wide retry and circuit policy (from `[llm]`).
#[derive(Clone, Debug)]
pub struct Policy {
    pub max_retries: u32,
    pub max_retry_after: Duration,
    pub cooldown_without_hint: Duration,
    pub circuit_failure: Duration,
    pub circuit_probe: Duration,
    pub circuit_max_wait: Duration,
}

impl Policy {
    pub fn from_config(cfg: &LlmConfig) -> Policy {
        Policy {
            max_retries: cfg.max_retries,
            max_retry_after: Duration::from_secs(cfg.max_retry_after_secs),
            cooldown_without_hint: Duration::from_millis(cfg.cooldown_without_hint_ms),
            circuit_failure: Duration::from_secs(cfg.circuit_failure_secs),
            circuit_probe: Duration::from_secs(cfg.circuit_probe_secs),
            circuit_max_wait: Duration::from_secs(cfg.circuit_max_wait_secs),
        }
    }
}

/// Counters of one endpoint since start.
#[derive(Default)]
pub struct Stats {
    pub requests_sent: AtomicU64,
    /// Requests answered with a chat completion (HTTP 2xx), whatever its content: what the
    /// endpoint bills. The token and cost counters cover every one of them.
    pub answered: AtomicU64,
    /// Answers a stage can use ([`usable`]); the rest of `answered` were billed for nothing.
    pub succeeded: AtomicU64,
    pub rate_limited: AtomicU64,
    pub transient_failures: AtomicU64,
    pub permanent_failures: AtomicU64,
    pub retries: AtomicU64,
    pub cooldowns: AtomicU64,
    pub circuit_openings: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    /// Dollars times 1e9.
    pub cost_nano_usd: AtomicU64,
    pub latency_ms_total: AtomicU64,
}

/// When each request was cleared to send and when each cooldown became known, kept only when a
/// benchmark asks, so that it can check no request was sent during a known cooldown.
#[derive(Default)]
pub struct DispatchLog {
    pub dispatched: Vec<Instant>,
    /// `(learned_at, until)` of every cooldown.
    pub cooldowns: Vec<(Instant, Instant)>,
}

pub struct Endpoint {
    pub name: String,
    pub model: String,
    pub base_url: String,
    api_key: Option<String>,
    /// The name of the variable the key is read from (`api_key_env`), for messages.
    api_key_env: String,
    http: reqwest::Client,
    structured_output: StructuredOutput,
    input_price_per_mtok: f64,
    output_price_per_mtok: f64,
    policy: Policy,
    /// Workers pass the rate limiters one at a time, in arrival order: fair, and one timer
    /// instead of a herd of them.
    pacing: tokio::sync::Mutex<()>,
    rpm: DefaultDirectRateLimiter,
    input_tpm: DefaultDirectRateLimiter,
    input_tpm_burst: u32,
    output_tpm: DefaultDirectRateLimiter,
    output_tpm_burst: u32,
    /// Running mean of completion tokens, charged to the output limiter before a request.
    output_estimate: AtomicU64,
    /// The model's context window and the server's `max_tokens` cap (0: unknown), from the
    /// configuration, `/models`, or a 400 that named them.
    context_tokens: AtomicU64,
    max_output_tokens: AtomicU64,
    pub concurrency: AdaptiveConcurrency,
    pub cooldown: Cooldown,
    pub circuit: Circuit,
    pub stats: Stats,
    recorder: Option<std::sync::Arc<Recorder>>,
    dispatch_log: Mutex<Option<DispatchLog>>,
    /// The provider's limits, for the budgets a cluster shares.
    rates: Rates,
    /// Set when the batch's store is shared: the cluster's budgets for this endpoint.
    shared: std::sync::OnceLock<std::sync::Arc<dyn SharedLimits>>,
}

/// How long a node keeps asking a store that fails for a shared admission before the request
/// fails as transient.
const SHARED_ADMISSION_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct CompletionResponse {
    model: Option<String>,
    choices: Vec<Choice>,
    usage: Option<UsageBody>,
}

#[derive(Deserialize)]
struct Choice {
    message: MessageBody,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct MessageBody {
    content: Option<String>,
    refusal: Option<String>,
}

/// `GET /models`, as far as limits go.
#[derive(Deserialize)]
struct ModelList {
    #[serde(default)]
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    max_model_len: Option<u64>,
}

#[derive(Deserialize)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// One request, prepared once and sent as many times as needed.
#[derive(Clone)]
pub struct Prepared {
    pub stage: Stage,
    pub unit: String,
    pub body: Value,
    pub prompt_tokens: u64,
    /// The `max_tokens` the stage asked for, before it was fitted to the model's limits.
    pub asked_max_tokens: u32,
}

/// The first number after any of `patterns` in `text` (within a few separator characters;
/// `4,096` reads as 4096).
fn number_after(text: &str, patterns: &[&str]) -> Option<u64> {
    patterns.iter().find_map(|pattern| {
        let at = text.find(pattern)? + pattern.len();
        let rest = text[at..].trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ':' | '=' | '`' | '\'' | '"'));
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == ',').filter(char::is_ascii_digit).collect();
        digits.parse().ok().filter(|n| *n > 0)
    })
}

/// Tokens kept free beside the prompt estimate when fitting `max_tokens` into the context: the
/// estimate uses one tokenizer, the server another.
fn context_margin(prompt_tokens: u64) -> u64 {
    prompt_tokens / 8 + 16
}

/// A limiter allowing `per_minute` cells, with a burst of `burst_secs` seconds' worth.
fn per_minute(per_minute: u32, burst_secs: u32, max_burst: u32) -> (DefaultDirectRateLimiter, u32) {
    let rate = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
    let burst = (per_minute / 60 * burst_secs).clamp(1, max_burst);
    let quota = Quota::per_minute(rate).allow_burst(NonZeroU32::new(burst).expect("at least 1"));
    (RateLimiter::direct(quota), burst)
}

impl Endpoint {
    pub fn new(
        name: &str,
        cfg: &EndpointConfig,
        base_url: String,
        api_key: Option<String>,
        policy: Policy,
        recorder: Option<std::sync::Arc<Recorder>>,
    ) -> anyhow::Result<Endpoint> {
        let http = crate::http::client_builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(cfg.max_concurrency as usize)
            .build()?;
        // Requests: one second's worth of burst keeps the rate even (a whole minute's burst
        // would let a restart send the minute at once). Tokens: ten seconds' worth, so that one
        // large prompt fits.
        let (rpm, _) = per_minute(cfg.requests_per_minute, 1, 10);
        let (input_tpm, input_tpm_burst) = per_minute(cfg.input_tokens_per_minute, 10, u32::MAX);
        let (output_tpm, output_tpm_burst) = per_minute(cfg.output_tokens_per_minute, 10, u32::MAX);
        Ok(Endpoint {
            name: name.to_string(),
            model: cfg.model.clone(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            api_key_env: cfg.api_key_env.clone(),
            http,
            structured_output: cfg.structured_output,
            input_price_per_mtok: cfg.input_price_per_mtok,
            output_price_per_mtok: cfg.output_price_per_mtok,
            context_tokens: AtomicU64::new(cfg.context_tokens.unwrap_or(0)),
            max_output_tokens: AtomicU64::new(cfg.max_output_tokens.map_or(0, u64::from)),
            concurrency: AdaptiveConcurrency::new(cfg.max_concurrency as usize),
            cooldown: Cooldown::default(),
            circuit: Circuit::new(policy.circuit_failure, policy.circuit_probe, policy.circuit_max_wait),
            policy,
            pacing: tokio::sync::Mutex::new(()),
            rpm,
            input_tpm,
            input_tpm_burst,
            output_tpm,
            output_tpm_burst,
            output_estimate: AtomicU64::new(256),
            stats: Stats::default(),
            recorder,
            dispatch_log: Mutex::new(None),
            rates: Rates {
                requests_per_minute: cfg.requests_per_minute,
                input_tokens_per_minute: cfg.input_tokens_per_minute,
                output_tokens_per_minute: cfg.output_tokens_per_minute,
            },
            shared: std::sync::OnceLock::new(),
        })
    }

    /// From now on also within the cluster's budgets for this endpoint.
    pub fn share_limits(&self, shared: std::sync::Arc<dyn SharedLimits>) {
        self.shared.set(shared).ok();
    }

    /// Waits for the cluster's admission of one request, if the limits are shared.
    async fn admit_shared(&self, ask: Ask) -> Result<(), Failure> {
        let Some(shared) = self.shared.get() else { return Ok(()) };
        let mut failing_since = None;
        loop {
            let wait = match shared.admit(&self.name, &self.rates, ask).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => wait,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > SHARED_ADMISSION_PATIENCE {
                        return Err(Failure::Transient { detail: format!("no admission from the shared store: {e}"), wait: None });
                    }
                    tracing::warn!(endpoint = %self.name, error = %e, "cannot reach the cluster's LLM limits; asking again");
                    Duration::from_secs(1)
                }
            };
            tokio::time::sleep(wait.clamp(Duration::from_millis(5), Duration::from_secs(1))).await;
        }
    }

    /// Starts keeping the dispatch log (benchmarks only; it grows with every request).
    pub fn keep_dispatch_log(&self) {
        *lock(&self.dispatch_log) = Some(DispatchLog::default());
    }

    pub fn take_dispatch_log(&self) -> Option<DispatchLog> {
        lock(&self.dispatch_log).take()
    }

    fn log_dispatch(&self, f: impl FnOnce(&mut DispatchLog)) {
        if let Some(log) = lock(&self.dispatch_log).as_mut() {
            f(log);
        }
    }

    /// What is known of the model's limits.
    pub fn limits(&self) -> ModelLimits {
        let known = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|n| *n > 0);
        ModelLimits {
            context_tokens: known(&self.context_tokens),
            max_output_tokens: known(&self.max_output_tokens).map(|n| n.min(u64::from(u32::MAX)) as u32),
        }
    }

    /// The `max_tokens` to send for a prompt of `prompt_tokens`: what was asked, within the
    /// server's cap and the room the context leaves. `Err` when the prompt alone does not fit.
    fn fit(&self, asked: u32, prompt_tokens: u64) -> Result<u32, PortError> {
        let limits = self.limits();
        let mut max_tokens = limits.max_output_tokens.map_or(asked, |cap| asked.min(cap));
        if let Some(context) = limits.context_tokens {
            let room = context.saturating_sub(prompt_tokens + context_margin(prompt_tokens));
            if room == 0 {
                return Err(PortError::Refused {
                    reason: DropReason::LlmContextLength,
                    detail: format!(
                        "endpoint `{}`: the prompt (about {prompt_tokens} tokens) leaves no room for an answer \
                         in the model's context of {context} tokens",
                        self.name
                    ),
                });
            }
            max_tokens = max_tokens.min(room.min(u64::from(u32::MAX)) as u32);
        }
        Ok(max_tokens.max(1))
    }

    /// Learns the limits a refusal names (vLLM, OpenAI and llama.cpp spell them differently).
    /// Returns the `max_tokens` that fits now, when the refusal taught something that changes it.
    fn learn_limits(&self, body: &str, request: &Prepared) -> Option<u32> {
        let lower = body.to_ascii_lowercase();
        let sent = request.body["max_tokens"].as_u64().unwrap_or(u64::from(request.asked_max_tokens));
        let mut learned = false;
        if let Some(context) = number_after(&lower, &["maximum context length is", "context length of", "context window of", "n_ctx"]) {
            learned |= self.context_tokens.swap(context, Ordering::Relaxed) != context;
        }
        // Only a refusal about the answer's length teaches a cap ("temperature must be at most
        // 2" does not).
        let about_answer_length =
            ["max_tokens", "max_completion_tokens", "max_new_tokens", "completion tokens"].iter().any(|w| lower.contains(w));
        if about_answer_length
            && let Some(cap) =
                number_after(&lower, &["supports at most", "must be at most", "must be less than or equal to", "max_tokens <=", "at most"])
                    .filter(|cap| *cap < sent)
        {
            learned |= self.max_output_tokens.swap(cap, Ordering::Relaxed) != cap;
        }
        // The server's own count of the prompt, when it gives one, beats the estimate: it
        // refits even when the limits were already known (the estimate was short).
        let counted = number_after(&lower, &["tokens (", "your request has"]);
        if !learned && counted.is_none() {
            return None;
        }
        let limits = self.limits();
        let fitted = match (limits.context_tokens, counted) {
            (Some(context), Some(counted)) => {
                let cap = limits.max_output_tokens.map_or(request.asked_max_tokens, |cap| cap.min(request.asked_max_tokens));
                let room = context.saturating_sub(counted + 1);
                (room > 0).then(|| u64::from(cap).min(room) as u32)
            }
            _ => self.fit(request.asked_max_tokens, request.prompt_tokens).ok(),
        }?;
        tracing::info!(
            endpoint = %self.name,
            ?limits,
            max_tokens = fitted,
            "fitted max_tokens to the limits a refusal named; sending again"
        );
        (u64::from(fitted) < sent).then_some(fitted)
    }

    /// The request body, in the OpenAI chat-completions shape, with `max_tokens` fitted to the
    /// model's known limits.
    pub fn prepare(&self, stage: Stage, request: &ChatRequest) -> Result<Prepared, PortError> {
        let prompt_tokens = super::tokens::prompt_tokens(&request.messages);
        let mut body = json!({
            "model": self.model,
            "messages": request.messages,
            "max_tokens": self.fit(request.max_tokens, prompt_tokens)?,
            "temperature": request.temperature,
        });
        if let Some(seed) = request.seed {
            body["seed"] = json!(seed);
        }
        if let ResponseFormat::Json { name, schema } = &request.response {
            match self.structured_output {
                StructuredOutput::JsonSchema => {
                    body["response_format"] =
                        json!({ "type": "json_schema", "json_schema": { "name": name, "schema": schema, "strict": true } });
                }
                StructuredOutput::JsonObject => body["response_format"] = json!({ "type": "json_object" }),
                StructuredOutput::None => {}
            }
        }
        Ok(Prepared { stage, unit: request.unit.clone(), body, prompt_tokens, asked_max_tokens: request.max_tokens })
    }

    /// Checks that the endpoint answers `GET /models`; used before a run starts.
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        let mut req = self.http.get(format!("{}/models", self.base_url));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "the LLM endpoint `{}` at {} is unreachable ({}); check `llm.endpoints.{}.base_url`",
                self.name,
                self.base_url,
                describe_transport_error(&e),
                self.name
            )
        })?;
        match resp.status().as_u16() {
            status @ (401 | 403) => match self.missing_key() {
                Some(missing) => anyhow::bail!("the LLM endpoint `{}` at {} answered HTTP {status}: {missing}", self.name, self.base_url),
                None => anyhow::bail!(
                    "the LLM endpoint `{}` at {} refused the API key (HTTP {status}); \
                     check the variable named by `llm.endpoints.{}.api_key_env`",
                    self.name,
                    self.base_url,
                    self.name
                ),
            },
            status @ 200..=299 => {
                self.learn_context(resp.json::<ModelList>().await.ok(), status);
                Ok(())
            }
            // Some servers have no /models route; the first chat request will tell.
            _ => Ok(()),
        }
    }

    /// Takes the model's context window from `/models` (vLLM's `max_model_len`) unless the
    /// configuration set it.
    fn learn_context(&self, models: Option<ModelList>, status: u16) {
        if self.context_tokens.load(Ordering::Relaxed) > 0 {
            return;
        }
        let published = models.into_iter().flat_map(|m| m.data).find(|m| m.id == self.model).and_then(|m| m.max_model_len);
        if let Some(context) = published.filter(|n| *n > 0) {
            self.context_tokens.store(context, Ordering::Relaxed);
            tracing::info!(
                endpoint = %self.name,
                model = %self.model,
                context_tokens = context,
                status,
                "the server publishes the model's context window"
            );
        }
    }

    /// When no API key was found: why an answer of 401 or 403 is no surprise.
    fn missing_key(&self) -> Option<String> {
        self.api_key.is_none().then(|| {
            format!("it needs an API key, and the variable {} (llm.endpoints.{}.api_key_env) is not set", self.api_key_env, self.name)
        })
    }

    /// Sends one request through every gate, retrying what is worth retrying.
    pub async fn call(&self, request: &Prepared) -> Result<ChatReply, PortError> {
        let mut attempt = 0u32;
        // At most one refit per call: the request with `max_tokens` a refusal taught.
        let mut refit: Option<Prepared> = None;
        loop {
            attempt += 1;
            let request = refit.as_ref().unwrap_or(request);
            let admission =
                self.circuit.admit().await.map_err(|open| {
                    PortError::Transient(format!("LLM endpoint `{}` is down (circuit open: {})", self.name, open.reason))
                })?;
            // However this attempt ends (even cancelled), the probe slot is freed.
            let _probe = (admission == Admission::Probe).then(|| ProbeSlot(&self.circuit));
            let outcome = self.attempt(request, attempt, &admission, refit.is_none()).await;
            let failure = match outcome {
                Ok(reply) => {
                    self.circuit.on_success();
                    return Ok(reply);
                }
                Err(Failure::Refit { max_tokens }) => {
                    let mut fitted = request.clone();
                    fitted.body["max_tokens"] = json!(max_tokens);
                    refit = Some(fitted);
                    continue;
                }
                Err(failure) => failure,
            };
            let (error, delay) = match failure {
                Failure::Refit { .. } => unreachable!("a refit is sent again above"),
                Failure::Permanent { reason, mut detail } => {
                    self.stats.permanent_failures.fetch_add(1, Ordering::Relaxed);
                    if reason == DropReason::LlmAuth
                        && let Some(missing) = self.missing_key()
                    {
                        detail = format!("{detail}; {missing}");
                    }
                    tracing::warn!(
                        endpoint = %self.name,
                        stage = %request.stage,
                        unit = %request.unit,
                        %reason,
                        %detail,
                        "LLM call refused"
                    );
                    return Err(PortError::Refused { reason, detail: format!("endpoint `{}`: {detail}", self.name) });
                }
                Failure::RateLimited { wait } => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let text = format!(
                        "rate limited (HTTP 429{})",
                        wait.map(|w| format!(", retry after {} ms", w.as_millis())).unwrap_or_default()
                    );
                    match wait {
                        Some(w) if w > self.policy.max_retry_after => {
                            let message = format!(
                                "LLM endpoint `{}` asked to wait {} s, longer than llm.max_retry_after_secs",
                                self.name,
                                w.as_secs()
                            );
                            self.circuit.on_failure(&admission, &text);
                            return Err(PortError::Transient(message));
                        }
                        _ => {}
                    }
                    let pause = wait.unwrap_or(self.policy.cooldown_without_hint);
                    let now = Instant::now();
                    let until = self.cooldown.extend(pause);
                    if let Some(shared) = self.shared.get()
                        && let Err(e) = shared.cool_down(&self.name, pause).await
                    {
                        tracing::warn!(endpoint = %self.name, error = %e, "cannot share the cooldown with the cluster");
                    }
                    self.log_dispatch(|log| log.cooldowns.push((now, until)));
                    self.stats.cooldowns.fetch_add(1, Ordering::Relaxed);
                    (text, Duration::ZERO)
                }
                Failure::Transient { detail, wait } => {
                    self.stats.transient_failures.fetch_add(1, Ordering::Relaxed);
                    let delay = match wait {
                        Some(w) if w > self.policy.max_retry_after => {
                            self.circuit.on_failure(&admission, &detail);
                            return Err(PortError::Transient(format!(
                                "LLM endpoint `{}` asked to wait {} s: {detail}",
                                self.name,
                                w.as_secs()
                            )));
                        }
                        Some(w) => w,
                        None => gymforge_actors::seed::backoff(
                            attempt,
                            Duration::from_millis(500),
                            Duration::from_secs(8),
                            &[&request.unit, request.stage.as_str()],
                        ),
                    };
                    (detail, delay)
                }
            };
            if self.circuit.on_failure(&admission, &error) {
                self.stats.circuit_openings.fetch_add(1, Ordering::Relaxed);
            }
            if attempt > self.policy.max_retries {
                return Err(PortError::Transient(format!("LLM endpoint `{}` failed {attempt} times; last: {error}", self.name)));
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                endpoint = %self.name,
                stage = %request.stage,
                unit = %request.unit,
                attempt,
                delay_ms = delay.as_millis() as u64,
                %error,
                "retrying LLM call"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One pass through the gates and one HTTP exchange.
    async fn attempt(&self, request: &Prepared, attempt: u32, admission: &Admission, may_refit: bool) -> Result<ChatReply, Failure> {
        let permit = self.concurrency.acquire().await;
        let input = (request.prompt_tokens.min(u64::from(self.input_tpm_burst)) as u32).max(1);
        let output_estimate = self.output_estimate.load(Ordering::Relaxed).clamp(1, u64::from(self.output_tpm_burst)) as u32;
        {
            let _turn = self.pacing.lock().await;
            take(&self.rpm, 1).await;
            take(&self.input_tpm, input).await;
            take(&self.output_tpm, output_estimate).await;
            self.admit_shared(Ask { input_tokens: u64::from(input), output_tokens: u64::from(output_estimate) }).await?;
        }
        let cleared = self.cooldown.clear().await;
        self.log_dispatch(|log| log.dispatched.push(cleared));

        self.stats.requests_sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut http = self.http.post(format!("{}/chat/completions", self.base_url)).json(&request.body);
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(key);
        }
        if let Some(traceparent) = crate::telemetry::traceparent() {
            http = http.header("traceparent", traceparent);
        }
        let exchange = match http.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                match resp.text().await {
                    Ok(text) => Ok((status, headers, self.redact(&text))),
                    Err(e) => Err(format!("LLM response unreadable: {}", describe_transport_error(&e))),
                }
            }
            Err(e) => Err(format!("LLM request failed: {}", describe_transport_error(&e))),
        };
        let latency = started.elapsed();
        self.stats.latency_ms_total.fetch_add(latency.as_millis() as u64, Ordering::Relaxed);
        if let Some(recorder) = &self.recorder {
            let (status, response, error) = match &exchange {
                Ok((status, _, text)) => {
                    (Some(*status), Some(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))), None)
                }
                Err(e) => (None, None, Some(e.clone())),
            };
            recorder.append(&Exchange {
                at_ms,
                endpoint: self.name.clone(),
                stage: request.stage,
                unit: request.unit.clone(),
                attempt,
                request: request.body.clone(),
                status,
                response,
                error,
                latency_ms: latency.as_millis() as u64,
            });
        }
        let (status, headers, text) = exchange.map_err(|detail| Failure::Transient { detail, wait: None })?;
        if !(200..300).contains(&status) {
            if may_refit
                && matches!(status, 400 | 413 | 422)
                && let Some(max_tokens) = self.learn_limits(&text, request)
            {
                return Err(Failure::Refit { max_tokens });
            }
            let failure = classify_status(status, &headers, &text);
            if matches!(failure, Failure::RateLimited { .. }) {
                self.concurrency.on_rate_limited(&permit);
            }
            return Err(failure);
        }
        let reply = self.parse(&text, request.prompt_tokens).map_err(|detail| Failure::Transient { detail, wait: None })?;
        self.concurrency.on_success();
        self.account(&reply, u64::from(input), output_estimate);
        tracing::debug!(endpoint = %self.name, stage = %request.stage, unit = %request.unit, model = %reply.model,
            input_tokens = reply.input_tokens, output_tokens = reply.output_tokens, cost_usd = reply.cost_usd,
            latency_ms = latency.as_millis() as u64, probe = (*admission == Admission::Probe), "LLM call");
        Ok(reply)
    }

    /// Reads a chat completion; its usage (or, without one, the estimate) prices it.
    pub fn parse(&self, text: &str, prompt_tokens: u64) -> Result<ChatReply, String> {
        let parsed: CompletionResponse =
            serde_json::from_str(text).map_err(|e| format!("LLM response is not a chat completion ({e}): {}", snippet(text)))?;
        // A refusal, an empty answer and a filtered one are answers: the stage decides.
        let choice = parsed.choices.into_iter().next().ok_or_else(|| format!("LLM response has no choices: {}", snippet(text)))?;
        let content = choice.message.content.unwrap_or_default();
        let refusal = choice.message.refusal.filter(|r| !r.trim().is_empty());
        let finish = Finish::from_reason(choice.finish_reason.as_deref());
        let (input_tokens, output_tokens) = parsed
            .usage
            .map(|u| (u.prompt_tokens, u.completion_tokens))
            .unwrap_or_else(|| (prompt_tokens, (content.len() as u64).div_ceil(4)));
        Ok(ChatReply {
            model: parsed.model.unwrap_or_else(|| self.model.clone()),
            endpoint: self.name.clone(),
            refusal,
            finish,
            cost_usd: (input_tokens as f64 * self.input_price_per_mtok + output_tokens as f64 * self.output_price_per_mtok) / 1e6,
            content,
            input_tokens,
            output_tokens,
        })
    }

    /// Counts a reply and reconciles the token limiters with its real usage.
    pub fn account(&self, reply: &ChatReply, input_charged: u64, output_charged: u32) {
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
        if usable(reply) {
            self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.input_tokens.fetch_add(reply.input_tokens, Ordering::Relaxed);
        self.stats.output_tokens.fetch_add(reply.output_tokens, Ordering::Relaxed);
        self.stats.cost_nano_usd.fetch_add((reply.cost_usd * 1e9) as u64, Ordering::Relaxed);
        // Governor cannot refund: charge what was used beyond the estimates, if it conforms now.
        for (limiter, used, charged, burst) in [
            (&self.input_tpm, reply.input_tokens, input_charged, self.input_tpm_burst),
            (&self.output_tpm, reply.output_tokens, u64::from(output_charged), self.output_tpm_burst),
        ] {
            if let Some(n) = NonZeroU32::new(used.saturating_sub(charged).min(u64::from(burst)) as u32) {
                let _ = limiter.check_n(n);
            }
        }
        // Next estimate: a running mean (weight 1/8) of real completions.
        let old = self.output_estimate.load(Ordering::Relaxed);
        self.output_estimate.store((old * 7 + reply.output_tokens) / 8 + 1, Ordering::Relaxed);
    }

    /// Removes the API key from text that came back from the server (some echo it in errors).
    pub fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.is_empty() => text.replace(key.as_str(), "[redacted]"),
            _ => text.to_string(),
        }
    }

    /// Limits, live state and counters, for the report and `/status`.
    pub fn snapshot(&self) -> EndpointSnapshot {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sent = get(&s.requests_sent);
        EndpointSnapshot {
            model: self.model.clone(),
            base_url: self.base_url.clone(),
            requests_sent: sent,
            answered: get(&s.answered),
            succeeded: get(&s.succeeded),
            rate_limited: get(&s.rate_limited),
            transient_failures: get(&s.transient_failures),
            permanent_failures: get(&s.permanent_failures),
            retries: get(&s.retries),
            cooldowns: get(&s.cooldowns),
            cooldown_remaining_ms: self.cooldown.remaining().as_millis() as u64,
            circuit_openings: get(&s.circuit_openings),
            circuit: self.circuit.snapshot(),
            concurrency: self.concurrency.snapshot(),
            input_tokens: get(&s.input_tokens),
            output_tokens: get(&s.output_tokens),
            cost_usd: get(&s.cost_nano_usd) as f64 / 1e9,
            mean_latency_ms: if sent > 0 { get(&s.latency_ms_total) as f64 / sent as f64 } else { 0.0 },
        }
    }
}

/// One endpoint's limits, live state and counters (`/status`, report.json's `llm.gateway`).
#[derive(serde::Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct EndpointSnapshot {
    pub model: String,
    pub base_url: String,
    pub requests_sent: u64,
    /// Answers billed, usable or not.
    pub answered: u64,
    /// Answers with usable content.
    pub succeeded: u64,
    pub rate_limited: u64,
    pub transient_failures: u64,
    pub permanent_failures: u64,
    pub retries: u64,
    pub cooldowns: u64,
    pub cooldown_remaining_ms: u64,
    pub circuit_openings: u64,
    pub circuit: CircuitSnapshot,
    pub concurrency: ConcurrencySnapshot,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub mean_latency_ms: f64,
}

/// Whether an answer holds something a stage can use: whole text that is neither a refusal nor
/// filtered. Any other answer is billed like one (it counts in `answered`, tokens and cost) but
/// not as a success.
pub fn usable(reply: &ChatReply) -> bool {
    gymforge_actors::llm::unusable(reply).is_none() && reply.finish != Finish::Length
}

/// Takes `n` cells (at most the burst) from a limiter, sleeping on tokio's timer until they
/// conform.
async fn take(limiter: &DefaultDirectRateLimiter, n: u32) {
    let n = NonZeroU32::new(n.max(1)).expect("at least 1");
    loop {
        match limiter.check_n(n) {
            Ok(Ok(())) => return,
            Ok(Err(not_until)) => tokio::time::sleep(not_until.wait_time_from(limiter.clock().now())).await,
            // More than the burst can never conform; callers clamp, so this is unreachable.
            Err(_) => return,
        }
    }
}

struct ProbeSlot<'a>(&'a Circuit);

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        self.0.probe_abandoned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(content: &str) -> ChatReply {
        ChatReply {
            content: content.into(),
            model: "m".into(),
            endpoint: "e".into(),
            input_tokens: 10,
            output_tokens: 3,
            cost_usd: 0.5,
            ..ChatReply::default()
        }
    }

    #[test]
    fn an_empty_answer_is_answered_and_billed_but_not_a_success() {
        let config = crate::config::Config::embedded();
        let cfg = &config.llm.endpoints["sim"];
        let endpoint = Endpoint::new("e", cfg, "http://127.0.0.1:9/v1".into(), None, Policy::from_config(&config.llm), None).unwrap();
        let refused = ChatReply { refusal: Some("no".into()), ..reply("") };
        let cut = ChatReply { finish: Finish::Length, ..reply("{\"a\": ") };
        for r in [reply("a command"), reply(""), reply(" \n"), refused, cut] {
            endpoint.account(&r, 10, 3);
        }
        let s = endpoint.snapshot();
        assert_eq!((s.answered, s.succeeded), (5, 1), "{s:?}");
        assert_eq!((s.input_tokens, s.output_tokens), (50, 15), "{s:?}");
        assert!((s.cost_usd - 2.5).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn only_a_refusal_about_the_answer_s_length_teaches_a_cap() {
        let config = crate::config::Config::embedded();
        let endpoint =
            Endpoint::new("e", &config.llm.endpoints["sim"], "http://127.0.0.1:9/v1".into(), None, Policy::from_config(&config.llm), None)
                .unwrap();
        let request = ChatRequest {
            unit: "t1".into(),
            messages: vec![gymforge_actors::ports::ChatMessage::new("user", "hi")],
            max_tokens: 500,
            temperature: 0.0,
            response: ResponseFormat::Text,
            seed: None,
        };
        let prepared = endpoint.prepare(Stage::Topic, &request).unwrap();
        assert_eq!(endpoint.learn_limits("temperature must be at most 2", &prepared), None);
        assert_eq!(endpoint.limits(), ModelLimits::default());
        assert_eq!(endpoint.learn_limits("max_tokens must be at most 256", &prepared), Some(256));
        assert_eq!(endpoint.limits().max_output_tokens, Some(256));
        // Limits already known, but the server counts more prompt than the estimate did: its
        // count decides the room (500 - 300 - 1).
        let vllm = "this model's maximum context length is 500 tokens. \
                    however, you requested 556 tokens (300 in the messages, 256 in the completion).";
        assert_eq!(endpoint.learn_limits(vllm, &prepared), Some(199));
        assert_eq!(endpoint.learn_limits(vllm, &prepared), Some(199), "nothing new learnt, the count still refits");
    }

    #[test]
    fn limits_are_read_from_every_server_s_wording() {
        let vllm = "this model's maximum context length is 4,096 tokens. \
                    however, you requested 5000 tokens (1000 in the messages, 4000 in the completion).";
        assert_eq!(number_after(vllm, &["maximum context length is"]), Some(4096));
        assert_eq!(number_after(vllm, &["tokens (", "your request has"]), Some(1000));
        let openai = "max_tokens is too large: 5000. this model supports at most 4096 completion tokens, whereas you provided 5000.";
        assert_eq!(number_after(openai, &["supports at most", "at most"]), Some(4096));
        assert_eq!(number_after("n_ctx: 2048", &["n_ctx"]), Some(2048));
        assert_eq!(number_after("no numbers here", &["at most"]), None);
    }
}
