//! What an endpoint's answer means: success, a rate limit with the wait it asks for, a failure
//! worth retrying, or a permanent refusal with a reason code.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gymforge_actors::DropReason;
use reqwest::header::HeaderMap;

/// The meaning of one HTTP answer that was not a success.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// 429 without `insufficient_quota`; `wait` is the server's hint, if it gave one.
    RateLimited { wait: Option<Duration> },
    /// 408, 409, 5xx, timeouts, resets, unreadable bodies; `wait` is the server's retry hint.
    Transient { detail: String, wait: Option<Duration> },
    /// Will fail again. `reason` is the drop reason of the unit.
    Permanent { reason: DropReason, detail: String },
    /// A refusal that named the model's limits: send again once with this `max_tokens`.
    Refit { max_tokens: u32 },
}

/// Classifies a non-2xx status with its (already redacted) body.
pub fn classify_status(status: u16, headers: &HeaderMap, body: &str) -> Failure {
    let detail = format!("HTTP {status}: {}", snippet(body));
    match status {
        429 if body.contains("insufficient_quota") => Failure::Permanent { reason: DropReason::LlmQuota, detail },
        429 => Failure::RateLimited { wait: retry_hint(headers) },
        401 | 403 => Failure::Permanent { reason: DropReason::LlmAuth, detail },
        408 | 409 | 500..=599 => Failure::Transient { detail, wait: retry_hint(headers) },
        400 | 413 | 422 if is_context_length(body) => Failure::Permanent { reason: DropReason::LlmContextLength, detail },
        _ => Failure::Permanent { reason: DropReason::LlmBadRequest, detail },
    }
}

/// OpenAI says `context_length_exceeded`; vLLM, SGLang, llama.cpp and Ollama say it in words.
fn is_context_length(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    b.contains("context_length_exceeded") || b.contains("context length") || b.contains("maximum context") || b.contains("too many tokens")
}

/// The wait a rate-limited answer asks for: `retry-after-ms`, `Retry-After` (seconds or HTTP
/// date), or the longer of OpenAI's `x-ratelimit-reset-requests` and `-tokens`.
pub fn retry_hint(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).filter(|ms| ms.is_finite()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    if let Some(value) = header("retry-after") {
        if let Some(secs) = value.parse::<f64>().ok().filter(|s| s.is_finite()) {
            return Some(Duration::from_secs_f64(secs.max(0.0)));
        }
        if let Ok(when) = httpdate::parse_http_date(value) {
            // Whole seconds on both sides: the date has one-second resolution, and the wait it
            // asks for is until that second, counted from this one.
            let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            return Some(Duration::from_secs(secs(when).saturating_sub(secs(SystemTime::now()))));
        }
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"].iter().filter_map(|name| header(name).and_then(go_duration)).max()
}

/// Parses a Go-style duration as OpenAI sends it: `6m0s`, `1.5s`, `20ms`, `1h2m`.
pub fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" | "" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

pub fn snippet(text: &str) -> String {
    text.chars().take(300).collect()
}

/// A short description of a transport error, without its URL, for one-line messages.
pub fn describe_transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        let mut text = e.to_string();
        if let Some(url) = e.url() {
            text = text.replace(url.as_str(), "");
        }
        let mut source = std::error::Error::source(e);
        while let Some(inner) = source {
            text.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        text.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("1h2m"), Some(Duration::from_secs(3720)));
        assert_eq!(go_duration("soon"), None);
        assert_eq!(go_duration(""), None);
    }

    #[test]
    fn retry_hints_in_every_form() {
        assert_eq!(retry_hint(&headers(&[("retry-after-ms", "250")])), Some(Duration::from_millis(250)));
        assert_eq!(retry_hint(&headers(&[("retry-after", "2")])), Some(Duration::from_secs(2)));
        assert_eq!(retry_hint(&headers(&[("retry-after-ms", "100"), ("retry-after", "9")])), Some(Duration::from_millis(100)));
        assert_eq!(
            retry_hint(&headers(&[("x-ratelimit-reset-requests", "1s"), ("x-ratelimit-reset-tokens", "6m0s")])),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            retry_hint(&headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")])),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(retry_hint(&headers(&[])), None);
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        assert_eq!(classify_status(429, &h, "slow down"), Failure::RateLimited { wait: None });
        assert!(matches!(
            classify_status(429, &h, r#"{"error":{"code":"insufficient_quota"}}"#),
            Failure::Permanent { reason: DropReason::LlmQuota, .. }
        ));
        assert!(matches!(classify_status(401, &h, ""), Failure::Permanent { reason: DropReason::LlmAuth, .. }));
        assert!(matches!(classify_status(403, &h, ""), Failure::Permanent { reason: DropReason::LlmAuth, .. }));
        assert!(matches!(
            classify_status(400, &h, r#"{"error":{"code":"context_length_exceeded"}}"#),
            Failure::Permanent { reason: DropReason::LlmContextLength, .. }
        ));
        assert!(matches!(
            classify_status(400, &h, "This model's maximum context length is 8192 tokens"),
            Failure::Permanent { reason: DropReason::LlmContextLength, .. }
        ));
        assert!(matches!(classify_status(404, &h, "no such model"), Failure::Permanent { reason: DropReason::LlmBadRequest, .. }));
        assert!(matches!(classify_status(503, &h, ""), Failure::Transient { wait: None, .. }));
        assert!(matches!(classify_status(408, &h, ""), Failure::Transient { .. }));
        let mut busy = HeaderMap::new();
        busy.insert("retry-after", "3".parse().unwrap());
        assert_eq!(classify_status(503, &busy, ""), Failure::Transient { detail: "HTTP 503: ".into(), wait: Some(Duration::from_secs(3)) });
    }
}
