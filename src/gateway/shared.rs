//! Limits an endpoint's provider sets for the whole cluster, kept in the shared store so that
//! every node sending to the endpoint spends one budget: requests and tokens per minute as a
//! generic cell rate (GCRA: one "theoretical arrival time" per endpoint and budget, advanced by
//! each admitted request, by the database's clock), the cooldown a 429 taught any node, and
//! the batch's dollars spent. A node's own limiters still apply first.

use std::time::Duration;

/// One endpoint's provider limits (0: none), as configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub requests_per_minute: u32,
    pub input_tokens_per_minute: u32,
    pub output_tokens_per_minute: u32,
}

impl Rates {
    /// Requests admitted at once over the steady rate: a second's worth, between 1 and 10 (as a
    /// node's own limiter allows).
    pub fn request_burst(&self) -> u32 {
        (self.requests_per_minute / 60).clamp(1, 10)
    }

    /// Tokens admitted at once over the steady rate: ten seconds' worth.
    pub fn token_burst(per_minute: u32) -> u64 {
        u64::from(per_minute) / 6
    }
}

/// What a request asks of the shared budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[async_trait::async_trait]
pub trait SharedLimits: Send + Sync {
    /// Admits one request to `endpoint` within the cluster's `rates` and its cooldown, or says
    /// how long to wait before asking again.
    async fn admit(&self, endpoint: &str, rates: &Rates, ask: Ask) -> Result<Option<Duration>, String>;
    /// Pauses the endpoint for every node for `pause` (a 429 seen here).
    async fn cool_down(&self, endpoint: &str, pause: Duration) -> Result<(), String>;
    /// Dollars the whole batch has spent on LLM calls.
    async fn spent_usd(&self) -> Result<f64, String>;
}
