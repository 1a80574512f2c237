//! Failures the simulated teacher injects on purpose ([`crate::SimFaults`]), so that
//! every failure path of a client is exercised over real HTTP: 429s with and without retry
//! hints, 500 and 503, hangs, connection resets, malformed and truncated answers.
//!
//! Which request gets which fault is drawn from the simulator seed and a request counter, so a
//! retry of the same request is a new draw. [`Counters`] records what was injected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use super::text::Draw;
use crate::SimFaults;

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    RateLimited,
    RateLimitedBare,
    Internal,
    Unavailable,
    Hang,
    Reset,
    Malformed,
    Truncated,
}

impl Fault {
    /// Draws the fault (if any) for the `n`-th request.
    pub fn draw(faults: &SimFaults, seed: u64, n: u64) -> Option<Fault> {
        let x = Draw::new(seed, &["fault", &n.to_string()]).unit();
        let table = [
            (faults.rate_429, Fault::RateLimited),
            (faults.rate_429_bare, Fault::RateLimitedBare),
            (faults.rate_500, Fault::Internal),
            (faults.rate_503, Fault::Unavailable),
            (faults.rate_hang, Fault::Hang),
            (faults.rate_reset, Fault::Reset),
            (faults.rate_malformed, Fault::Malformed),
            (faults.rate_truncated, Fault::Truncated),
        ];
        let mut edge = 0.0;
        for (rate, fault) in table {
            edge += rate;
            if x < edge {
                return Some(fault);
            }
        }
        None
    }

    /// The response of a fault that replaces the answer (`None` for the ones that alter it).
    pub async fn respond(self, faults: &SimFaults, counters: &Counters) -> Option<Response> {
        let error = |status: StatusCode, message: &str, kind: &str| {
            (status, axum::Json(json!({ "error": { "message": message, "type": kind } }))).into_response()
        };
        match self {
            Fault::RateLimited => {
                let wait = Duration::from_millis(faults.retry_after_ms);
                counters.announce_cooldown(wait);
                let mut r = error(StatusCode::TOO_MANY_REQUESTS, "simulated rate limit, retry later", "rate_limit_error");
                let h = r.headers_mut();
                h.insert("retry-after-ms", HeaderValue::from(faults.retry_after_ms));
                h.insert("retry-after", HeaderValue::from(faults.retry_after_ms.div_ceil(1000)));
                Some(r)
            }
            Fault::RateLimitedBare => Some(error(StatusCode::TOO_MANY_REQUESTS, "simulated rate limit", "rate_limit_error")),
            Fault::Internal => Some(error(StatusCode::INTERNAL_SERVER_ERROR, "simulated internal error", "server_error")),
            Fault::Unavailable => Some(error(StatusCode::SERVICE_UNAVAILABLE, "simulated overload", "server_error")),
            Fault::Hang => {
                tokio::time::sleep(Duration::from_secs(faults.hang_secs)).await;
                Some(error(StatusCode::GATEWAY_TIMEOUT, "simulated hang ended", "server_error"))
            }
            Fault::Reset => {
                // Headers go out, then the body fails: the server drops the connection mid-answer.
                let stream = futures_util::stream::once(async {
                    Err::<Bytes, std::io::Error>(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "simulated connection reset"))
                });
                Some(Response::new(Body::from_stream(stream)))
            }
            Fault::Malformed | Fault::Truncated => None,
        }
    }

    /// Alters a real answer's content (malformed and truncated answers).
    pub fn alter(self, content: String) -> String {
        match self {
            Fault::Malformed => "I have thought about this carefully and I believe the approach above is the right one; \
                                 let me know if you would like me to elaborate on any part of it."
                .to_string(),
            Fault::Truncated => content.chars().take(content.chars().count() / 2).collect(),
            _ => content,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::RateLimited => "rate_limited",
            Fault::RateLimitedBare => "rate_limited_bare",
            Fault::Internal => "internal_error",
            Fault::Unavailable => "unavailable",
            Fault::Hang => "hang",
            Fault::Reset => "reset",
            Fault::Malformed => "malformed",
            Fault::Truncated => "truncated",
        }
    }
}

/// What the simulated teacher saw and did, for tests and benchmarks.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub answered: AtomicU64,
    pub faults: [AtomicU64; 8],
    /// Requests that arrived while a 429 it announced was still running (including requests
    /// the client had sent before the 429 reached it).
    pub arrivals_during_cooldown: AtomicU64,
    cooldown_until: std::sync::Mutex<Option<Instant>>,
    /// Requests refused for passing the server's own requests per minute.
    pub over_limit: AtomicU64,
    /// When each request arrived, kept only while the server enforces a limit (for the
    /// sliding-window rates a bench reports).
    arrivals: std::sync::Mutex<Vec<Instant>>,
}

impl Counters {
    /// Counts one arriving request; returns its sequence number.
    pub fn arrive(&self) -> u64 {
        let now = Instant::now();
        if self.cooldown_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| now < until) {
            self.arrivals_during_cooldown.fetch_add(1, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed)
    }

    fn announce_cooldown(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut c = self.cooldown_until.lock().unwrap_or_else(|p| p.into_inner());
        *c = Some(c.map_or(until, |u| u.max(until)));
    }

    /// Records a request arriving now and says whether it passes `per_minute` in the last 60 s
    /// of arrivals (each request counts, refused or not, as providers count them); refused ones
    /// are counted. The record keeps the last million arrivals.
    pub fn within_limit(&self, per_minute: u32) -> bool {
        const KEPT: usize = 1_000_000;
        let now = Instant::now();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        if arrivals.len() >= KEPT {
            arrivals.drain(..KEPT / 2);
        }
        arrivals.push(now);
        let recent = arrivals.iter().rev().take_while(|a| now.duration_since(**a) < Duration::from_secs(60)).count();
        // The one arriving now is in the list already.
        let within = recent <= per_minute as usize;
        if !within {
            self.over_limit.fetch_add(1, Ordering::Relaxed);
        }
        within
    }

    /// When every request arrived (kept while a limit is enforced).
    pub fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn injected(&self, fault: Fault) {
        self.faults[fault as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let faults: serde_json::Map<String, serde_json::Value> =
            ALL.iter().map(|f| (f.as_str().to_string(), json!(self.faults[*f as usize].load(Ordering::Relaxed)))).collect();
        json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "answered": self.answered.load(Ordering::Relaxed),
            "faults": faults,
            "arrivals_during_cooldown": self.arrivals_during_cooldown.load(Ordering::Relaxed),
            "over_limit": self.over_limit.load(Ordering::Relaxed),
        })
    }
}

const ALL: [Fault; 8] = [
    Fault::RateLimited,
    Fault::RateLimitedBare,
    Fault::Internal,
    Fault::Unavailable,
    Fault::Hang,
    Fault::Reset,
    Fault::Malformed,
    Fault::Truncated,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_drawn_at_their_rates() {
        let faults = SimFaults { rate_429: 0.1, rate_500: 0.05, rate_truncated: 0.2, ..SimFaults::default() };
        let mut counts = std::collections::HashMap::new();
        for n in 0..20_000 {
            if let Some(f) = Fault::draw(&faults, 3, n) {
                *counts.entry(f).or_insert(0u32) += 1;
            }
        }
        let share = |f| f64::from(counts.get(&f).copied().unwrap_or(0)) / 20_000.0;
        assert!((share(Fault::RateLimited) - 0.1).abs() < 0.015, "{}", share(Fault::RateLimited));
        assert!((share(Fault::Internal) - 0.05).abs() < 0.01);
        assert!((share(Fault::Truncated) - 0.2).abs() < 0.02);
        assert_eq!(share(Fault::Hang), 0.0);
        assert_eq!(Fault::draw(&SimFaults::default(), 3, 1), None);
    }

    #[test]
    fn altered_answers() {
        assert_eq!(Fault::Truncated.alter("{\"a\": 12345}".into()), "{\"a\": ");
        assert!(!Fault::Malformed.alter("{}".into()).contains('{'));
    }
}
