//! The simulated teacher's HTTP face: a minimal OpenAI-compatible server.
//!
//! `POST /v1/chat/completions` answers with [`super::answer`] after a deterministic latency,
//! `GET /v1/models` lists the one simulated model, and every response carries the header
//! `x-gymforge-simulated: true`. Requests are parsed leniently (unknown fields are ignored,
//! message content may be a string or a list of text parts), errors use OpenAI's shape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::faults::{Counters, Fault};
use super::text::Draw;
use super::{MODEL_ID, SYSTEM_FINGERPRINT, UNRECOGNISED};
use crate::SimConfig;

/// The header that marks every response as simulated.
pub const SIMULATED_HEADER: &str = "x-gymforge-simulated";

/// Starts the simulated teacher on `addr` (port 0 picks a free port). Returns the bound address
/// and the server task; abort the task to stop the server.
pub async fn serve(cfg: SimConfig, addr: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (bound, handle, _) = serve_counted(cfg, addr).await?;
    Ok((bound, handle))
}

/// [`serve`], also returning the counters of what the server saw and injected.
pub async fn serve_counted(cfg: SimConfig, addr: SocketAddr) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>, Arc<Counters>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("the simulated teacher cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("the simulated teacher's socket has no address")?;
    let counters = Arc::new(Counters::default());
    let app = router(Sim { cfg, counters: counters.clone() });
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the simulated teacher stopped");
        }
    });
    tracing::info!(%bound, "simulated teacher listening (a stand-in for a real LLM)");
    Ok((bound, handle, counters))
}

/// The server's state: its configuration and counters.
struct Sim {
    cfg: SimConfig,
    counters: Arc<Counters>,
}

fn router(sim: Sim) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .layer(axum::middleware::map_response(mark_simulated))
        .with_state(Arc::new(sim))
}

async fn mark_simulated(mut response: Response) -> Response {
    response.headers_mut().insert(SIMULATED_HEADER, HeaderValue::from_static("true"));
    response
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn error(status: StatusCode, message: &str, kind: &str) -> Response {
    (status, axum::Json(json!({ "error": { "message": message, "type": kind } }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "the simulated teacher serves only /v1/chat/completions and /v1/models", "invalid_request_error")
}

async fn models() -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{ "id": MODEL_ID, "object": "model", "created": now(), "owned_by": "gymforge-simulated" }],
    }))
    .into_response()
}

/// The text of a message's `content`: a string, or the text parts of a list.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        Value::Array(parts) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str())).collect::<Vec<_>>().join(""))
        }
        _ => None,
    }
}

/// The `(role, content)` pairs of a chat request.
fn messages_of(request: &Value) -> Result<Vec<(String, String)>, String> {
    let messages = request.get("messages").and_then(Value::as_array).ok_or("the request has no `messages` array")?;
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or(format!("message {i} has no role"))?;
            let content = content_text(m.get("content").unwrap_or(&Value::Null)).ok_or(format!("message {i} has unreadable content"))?;
            Ok((role.to_string(), content))
        })
        .collect()
}

/// The simulator seed for one request: the configured seed, with the request's `seed` folded in.
pub(crate) fn request_seed(cfg: &SimConfig, request: &Value) -> u64 {
    let seed = request.get("seed").and_then(|s| s.as_u64().or_else(|| s.as_i64().map(|v| v as u64)));
    match seed {
        Some(s) => gymforge_actors::seed::hash(&[&cfg.seed.to_string(), "request-seed", &s.to_string()]),
        None => cfg.seed,
    }
}

/// A deterministic log-normal delay with median `cfg.latency_ms` and 99th percentile
/// `cfg.latency_p99_ms` (clamped to a quarter of the median and twice the 99th percentile).
pub(crate) fn latency(cfg: &SimConfig, messages: &[(String, String)]) -> Duration {
    if cfg.latency_ms == 0 {
        return Duration::ZERO;
    }
    let last = messages.last().map(|(_, c)| c.as_str()).unwrap_or("");
    let count = messages.len().to_string();
    let mut draw = Draw::new(cfg.seed, &["latency", &count, last]);
    // Irwin-Hall: the sum of twelve uniforms minus six is close to a standard normal.
    let z = (0..12).map(|_| draw.unit()).sum::<f64>() - 6.0;
    let median = cfg.latency_ms as f64;
    let p99 = (cfg.latency_p99_ms as f64).max(median);
    // z = 2.326 at the 99th percentile.
    let sigma = (p99 / median).ln() / 2.326;
    let ms = (median * (sigma * z).exp()).clamp(median / 4.0, p99 * 2.0);
    Duration::from_micros((ms * 1000.0) as u64)
}

/// Tokens as OpenAI-style usage estimates them here: a quarter of the characters, rounded up.
fn tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

async fn chat_completions(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let n = sim.counters.arrive();
    if sim.cfg.requests_per_minute > 0 && !sim.counters.within_limit(sim.cfg.requests_per_minute) {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "simulated provider limit: too many requests per minute", "rate_limit_error");
        r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        return r;
    }
    let fault = Fault::draw(&sim.cfg.faults, sim.cfg.seed, n);
    if let Some(fault) = fault {
        sim.counters.injected(fault);
        if let Some(response) = fault.respond(&sim.cfg.faults, &sim.counters).await {
            tracing::debug!(fault = fault.as_str(), "simulated teacher injected a fault");
            return response;
        }
    }
    let cfg = &sim.cfg;
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the request body is not valid JSON: {e}"), "invalid_request_error"),
    };
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return error(StatusCode::BAD_REQUEST, "streaming is not supported by the simulated teacher", "invalid_request_error");
    }
    let messages = match messages_of(&request) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e, "invalid_request_error"),
    };
    let cfg = SimConfig { seed: request_seed(cfg, &request), ..cfg.clone() };
    let stage = super::recognise(&messages).map_or("unrecognised", |s| s.as_str());
    let content = match super::answer(&cfg, &messages) {
        Ok(content) => fault.map_or(content.clone(), |f| f.alter(content)),
        Err(reason) => {
            tracing::debug!(%reason, "simulated teacher: unrecognised prompt");
            return error(StatusCode::BAD_REQUEST, UNRECOGNISED, "invalid_request_error");
        }
    };
    let delay = latency(&cfg, &messages);
    tokio::time::sleep(delay).await;
    tracing::debug!(stage, delay_ms = delay.as_millis() as u64, chars = content.len(), "simulated teacher answered");

    sim.counters.answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prompt_tokens = tokens(messages.iter().map(|(_, c)| c.chars().count()).sum());
    let completion_tokens = tokens(content.chars().count());
    let model = request.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(MODEL_ID);
    let id = format!("chatcmpl-sim-{:016x}", gymforge_actors::seed::hash(&[&cfg.seed.to_string(), &content]));
    axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_deterministic_and_centred_on_the_median() {
        let cfg = SimConfig { seed: 1, latency_ms: 100, latency_p99_ms: 300, ..SimConfig::default() };
        let m = |s: &str| vec![("user".to_string(), s.to_string())];
        assert_eq!(latency(&cfg, &m("a")), latency(&cfg, &m("a")));
        let mut all: Vec<Duration> = (0..400).map(|i| latency(&cfg, &m(&i.to_string()))).collect();
        all.sort();
        let median = all[200].as_millis();
        assert!((80..=125).contains(&median), "{median}");
        assert!(all[0] >= Duration::from_millis(25) && all[399] <= Duration::from_millis(600));
        let p99 = all[396].as_millis();
        assert!((200..=420).contains(&p99), "the 99th percentile is near 300 ms: {p99}");
        assert_eq!(latency(&SimConfig { latency_ms: 0, ..cfg }, &m("a")), Duration::ZERO);
    }

    #[test]
    fn reads_openai_messages() {
        let request = json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ], "temperature": 0.2, "extra": true});
        assert_eq!(messages_of(&request).unwrap(), vec![("system".into(), "s".into()), ("user".into(), "ab".into())]);
        assert!(messages_of(&json!({"model": "x"})).is_err());
    }

    #[test]
    fn the_request_seed_changes_the_simulator_seed() {
        let cfg = SimConfig { seed: 7, ..SimConfig::default() };
        assert_eq!(request_seed(&cfg, &json!({})), 7);
        assert_ne!(request_seed(&cfg, &json!({"seed": 1})), request_seed(&cfg, &json!({"seed": 2})));
        assert_eq!(request_seed(&cfg, &json!({"seed": 1})), request_seed(&cfg, &json!({"seed": 1})));
    }
}
