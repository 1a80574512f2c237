//! gymforge's simulated components: real servers speaking the real protocols, for tests, demos
//! and benchmarks, each labelled as simulated in everything it serves.
//!
//! * [`teacher`]: the simulated teacher, an OpenAI-compatible chat endpoint that answers
//!   gymforge's own prompts (every response carries `x-gymforge-simulated: true`);
//! * [`mirror`]: the embedded Hub mirror, a server of the Hugging Face Hub API and the dataset
//!   viewer API over real datasets that ship with scikit-learn (`x-gymforge-mirror: embedded`).
//!
//! They live apart from the application so that production code and instruments are visibly
//! separate: nothing in `gymforge-actors` knows they exist, and the application reaches them only
//! through the same HTTP clients it uses for the real services.

use serde::Deserialize;

pub mod mirror;
pub mod teacher;

/// The simulated teacher (`llm.endpoints.*.base_url = "sim"`).
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub seed: u64,
    /// Median response latency.
    pub latency_ms: u64,
    /// 99th percentile of the response latency (a log-normal tail); at least `latency_ms`.
    pub latency_p99_ms: u64,
    pub buggy_draft_rate: f64,
    /// Requests per minute the server itself allows (0: no limit): past it, in any 60 s
    /// window, it answers 429 as a provider does, and counts the request `over_limit`.
    #[serde(default)]
    pub requests_per_minute: u32,
    pub faults: SimFaults,
}

/// Failures the simulated teacher injects, each a fraction of requests.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct SimFaults {
    /// HTTP 429 with `retry-after-ms` and `Retry-After` headers.
    pub rate_429: f64,
    /// The delay those headers announce.
    pub retry_after_ms: u64,
    /// HTTP 429 with no retry hint at all.
    pub rate_429_bare: f64,
    pub rate_500: f64,
    pub rate_503: f64,
    /// No answer for `hang_secs` (longer than a client's timeout).
    pub rate_hang: f64,
    pub hang_secs: u64,
    /// The connection is closed without a response.
    pub rate_reset: f64,
    /// HTTP 200 whose content is prose with no JSON object in it.
    pub rate_malformed: f64,
    /// HTTP 200 whose content is the real answer cut off halfway.
    pub rate_truncated: f64,
}

impl Default for SimConfig {
    /// A quiet simulator: no latency, no buggy drafts, no faults.
    fn default() -> Self {
        SimConfig { seed: 0, latency_ms: 0, latency_p99_ms: 0, buggy_draft_rate: 0.0, requests_per_minute: 0, faults: SimFaults::default() }
    }
}
