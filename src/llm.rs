//! OpenAI-compatible chat-completions client: the adapter behind the pipeline's `Llm` port.
//!
//! One endpoint serves every stage for now. Requests wait on a governor requests-per-minute
//! limiter, time out, and retry transient failures (429, 5xx, timeouts, connection errors) with
//! jittered exponential backoff that honours `Retry-After`, a bounded number of times. Other 4xx
//! answers are permanent. The API key goes only into the `Authorization` header.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use gymforge_actors::Stage;
use gymforge_actors::ports::{ChatReply, ChatRequest, Llm, PortError};
use serde::Deserialize;

use crate::config::LlmConfig;

/// Longest `Retry-After` honoured; a server asking for more fails the request as transient.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

pub struct OpenAiClient {
    http: reqwest::Client,
    /// Base URL ending before `/chat/completions`, e.g. `http://127.0.0.1:8080/v1`.
    base_url: String,
    model: String,
    api_key: Option<String>,
    limiter: Arc<DefaultDirectRateLimiter>,
    max_retries: u32,
    input_price_per_mtok: f64,
    output_price_per_mtok: f64,
}

#[derive(Deserialize)]
struct CompletionResponse {
    model: Option<String>,
    choices: Vec<Choice>,
    usage: Option<UsageBody>,
}

#[derive(Deserialize)]
struct Choice {
    message: MessageBody,
}

#[derive(Deserialize)]
struct MessageBody {
    content: Option<String>,
}

#[derive(Deserialize)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl OpenAiClient {
    pub fn new(cfg: &LlmConfig, base_url: String, api_key: Option<String>) -> anyhow::Result<OpenAiClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let rpm = NonZeroU32::new(cfg.requests_per_minute).expect("validated positive");
        // A per-minute quota would allow the whole minute as a burst at start; a small burst keeps
        // the request rate even.
        let burst = NonZeroU32::new((cfg.requests_per_minute / 60).clamp(1, 10)).expect("at least 1");
        let quota = Quota::per_minute(rpm).allow_burst(burst);
        Ok(OpenAiClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            model: cfg.model.clone(),
            api_key,
            limiter: Arc::new(RateLimiter::direct(quota)),
            max_retries: cfg.max_retries,
            input_price_per_mtok: cfg.input_price_per_mtok,
            output_price_per_mtok: cfg.output_price_per_mtok,
        })
    }

    /// Checks that the endpoint answers `GET /models`; used before a run starts.
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        let mut req = self.http.get(format!("{}/models", self.base_url));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!("the LLM endpoint {} is unreachable ({}); check `llm.endpoint`", self.base_url, without_url(&e))
        })?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            401 | 403 => anyhow::bail!(
                "the LLM endpoint {} refused the API key (HTTP {}); check the variable named by `llm.api_key_env`",
                self.base_url,
                resp.status().as_u16()
            ),
            // Some servers have no /models route; the first chat request will tell.
            _ => Ok(()),
        }
    }

    /// Removes the API key from text that came back from the server (some echo it in errors).
    fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.is_empty() => text.replace(key.as_str(), "[redacted]"),
            _ => text.to_string(),
        }
    }

    async fn send_once(&self, request: &ChatRequest) -> Result<ChatReply, (PortError, Option<Duration>)> {
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        });
        if let Some(seed) = request.seed {
            body["seed"] = serde_json::json!(seed);
        }
        if request.json {
            body["response_format"] = serde_json::json!({ "type": "json_object" });
        }
        let mut req = self.http.post(format!("{}/chat/completions", self.base_url)).json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err((PortError::Transient(format!("LLM request failed: {}", without_url(&e))), None)),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let text = resp
            .text()
            .await
            .map_err(|e| (PortError::Transient(format!("LLM response unreadable: {}", without_url(&e))), None))?;
        let text = if status >= 300 { self.redact(&text) } else { text };
        match status {
            200..=299 => {}
            429 if text.contains("insufficient_quota") => {
                return Err((PortError::Permanent(format!("LLM quota exhausted (HTTP 429): {}", snippet(&text))), None));
            }
            408 | 409 | 429 | 500..=599 => {
                return Err((PortError::Transient(format!("LLM endpoint answered HTTP {status}: {}", snippet(&text))), retry_after));
            }
            _ => return Err((PortError::Permanent(format!("LLM endpoint answered HTTP {status}: {}", snippet(&text))), None)),
        }
        let parsed: CompletionResponse = serde_json::from_str(&text)
            .map_err(|e| (PortError::Transient(format!("LLM response is not a chat completion ({e}): {}", snippet(&text))), None))?;
        let content = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| (PortError::Transient("LLM response has no message content".into()), None))?;
        let (input_tokens, output_tokens) = parsed
            .usage
            .map(|u| (u.prompt_tokens, u.completion_tokens))
            .unwrap_or_else(|| (estimate_tokens(&request.messages), (content.len() as u64).div_ceil(4)));
        Ok(ChatReply {
            model: parsed.model.unwrap_or_else(|| self.model.clone()),
            cost_usd: (input_tokens as f64 * self.input_price_per_mtok + output_tokens as f64 * self.output_price_per_mtok) / 1e6,
            content,
            input_tokens,
            output_tokens,
        })
    }
}

#[async_trait]
impl Llm for OpenAiClient {
    async fn chat(&self, stage: Stage, request: ChatRequest) -> Result<ChatReply, PortError> {
        let mut attempt = 0;
        loop {
            self.limiter.until_ready_with_jitter(Jitter::up_to(Duration::from_millis(50))).await;
            let started = std::time::Instant::now();
            match self.send_once(&request).await {
                Ok(reply) => {
                    tracing::debug!(%stage, model = %reply.model, input_tokens = reply.input_tokens, output_tokens = reply.output_tokens,
                        latency_ms = started.elapsed().as_millis() as u64, "LLM call");
                    return Ok(reply);
                }
                Err((err @ PortError::Permanent(_), _)) => return Err(err),
                Err((err, retry_after)) => {
                    attempt += 1;
                    if attempt > self.max_retries {
                        return Err(err);
                    }
                    let delay = match retry_after {
                        Some(d) if d > MAX_RETRY_AFTER => return Err(err),
                        Some(d) => d,
                        None => backoff(attempt),
                    };
                    tracing::info!(%stage, attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying LLM call");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn model_for(&self, _stage: Stage) -> String {
        self.model.clone()
    }
}

/// Exponential backoff from 0.5 s, capped at 8 s, with up to 25% jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 500u64.saturating_mul(1 << attempt.saturating_sub(1).min(4)).min(8000);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let jitter = base * u64::from(nanos % 250) / 1000;
    Duration::from_millis(base - jitter)
}

/// `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return Some(Duration::from_secs_f64(secs.max(0.0)));
    }
    let when = httpdate_to_unix(value)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
fn httpdate_to_unix(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u64 = parts[1].parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].iter().position(|m| *m == parts[2])? as u64 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u64> = parts[4].split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    // Days from civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = (y - era * 400) as u64;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe as i64 - 719_468;
    Some((days as u64) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

fn estimate_tokens(messages: &[gymforge_actors::ports::ChatMessage]) -> u64 {
    messages.iter().map(|m| (m.content.len() as u64).div_ceil(4) + 4).sum()
}

fn snippet(text: &str) -> String {
    text.chars().take(300).collect()
}

/// A short description of a transport error, without its URL, for one-line messages.
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        let mut text = e.to_string();
        if let Some(url) = e.url() {
            text = text.replace(url.as_str(), "");
        }
        text.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(httpdate_to_unix("nonsense"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(500));
        assert!(backoff(3) > Duration::from_millis(1400));
        assert!(backoff(20) <= Duration::from_secs(8));
    }
}
