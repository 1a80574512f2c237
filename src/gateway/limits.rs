//! The three shared brakes of one endpoint, each used by every worker that calls it:
//!
//! - [`AdaptiveConcurrency`]: how many requests may be in flight. It halves on the first 429 of
//!   a burst (429s from requests started before the last cut do not cut again), remembers the
//!   limit where 429s started as a ceiling, and grows back by one per window of successes, ten
//!   times more slowly at and above the ceiling.
//! - [`Cooldown`]: a pause every worker honours after a 429, until the time the server asked for.
//! - [`Circuit`]: opens when failures persist past a time budget with no success, pauses every
//!   caller, lets one probe through per interval, and closes on the first success.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lock;

// ---------------------------------------------------------------------------------------------

/// An AIMD limit on requests in flight.
pub struct AdaptiveConcurrency {
    max: usize,
    state: Mutex<ConcurrencyState>,
    changed: Notify,
}

struct ConcurrencyState {
    limit: usize,
    in_flight: usize,
    /// The limit at which the last cut happened: growth above it is slow.
    ceiling: Option<usize>,
    last_cut: Option<Instant>,
    successes: usize,
    cuts: u64,
}

/// One request's place in flight; released on drop.
pub struct ConcurrencyPermit<'a> {
    owner: &'a AdaptiveConcurrency,
    started: Instant,
}

impl AdaptiveConcurrency {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        AdaptiveConcurrency {
            max,
            state: Mutex::new(ConcurrencyState { limit: max, in_flight: 0, ceiling: None, last_cut: None, successes: 0, cuts: 0 }),
            changed: Notify::new(),
        }
    }

    pub async fn acquire(&self) -> ConcurrencyPermit<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = lock(&self.state);
                if s.in_flight < s.limit {
                    s.in_flight += 1;
                    return ConcurrencyPermit { owner: self, started: Instant::now() };
                }
            }
            changed.await;
        }
    }

    /// A request was rate limited. Cuts the limit unless a cut already happened after the
    /// request started (the 429s of one burst cut once).
    pub fn on_rate_limited(&self, permit: &ConcurrencyPermit<'_>) {
        let mut s = lock(&self.state);
        if s.last_cut.is_some_and(|cut| permit.started <= cut) {
            return;
        }
        s.ceiling = Some(s.limit);
        s.limit = (s.limit / 2).max(1);
        s.last_cut = Some(Instant::now());
        s.successes = 0;
        s.cuts += 1;
        tracing::info!(limit = s.limit, ceiling = s.limit * 2, "concurrency limit cut after a 429");
    }

    /// A request succeeded: one step of additive increase.
    pub fn on_success(&self) {
        let mut s = lock(&self.state);
        s.successes += 1;
        let slow = s.ceiling.is_some_and(|c| s.limit >= c);
        let window = if slow { s.limit * 10 } else { s.limit };
        if s.successes >= window && s.limit < self.max {
            s.limit += 1;
            s.successes = 0;
            drop(s);
            self.changed.notify_waiters();
        }
    }

    pub fn snapshot(&self) -> ConcurrencySnapshot {
        let s = lock(&self.state);
        ConcurrencySnapshot { limit: s.limit, max: self.max, in_flight: s.in_flight, ceiling: s.ceiling, cuts: s.cuts }
    }

    pub fn limit(&self) -> usize {
        lock(&self.state).limit
    }
}

impl Drop for ConcurrencyPermit<'_> {
    fn drop(&mut self) {
        lock(&self.owner.state).in_flight -= 1;
        self.owner.changed.notify_waiters();
    }
}

// ---------------------------------------------------------------------------------------------

/// The endpoint-wide pause after a 429.
#[derive(Default)]
pub struct Cooldown {
    until: Mutex<Option<Instant>>,
}

impl Cooldown {
    /// Pauses the endpoint until `now + delay`, or longer if a pause already runs past it.
    /// Returns the end of the pause.
    pub fn extend(&self, delay: Duration) -> Instant {
        let end = Instant::now() + delay;
        let mut until = lock(&self.until);
        let end = until.map_or(end, |u| u.max(end));
        *until = Some(end);
        end
    }

    /// Waits until no pause is running, and returns that instant: the moment the caller is
    /// cleared to send.
    pub async fn clear(&self) -> Instant {
        loop {
            let end = {
                let until = lock(&self.until);
                let now = Instant::now();
                match *until {
                    Some(end) if end > now => end,
                    _ => return now,
                }
            };
            tokio::time::sleep_until(end).await;
        }
    }

    /// Time left of the running pause.
    pub fn remaining(&self) -> Duration {
        lock(&self.until).map_or(Duration::ZERO, |end| end.saturating_duration_since(Instant::now()))
    }
}

// ---------------------------------------------------------------------------------------------

/// A circuit breaker over an endpoint's transient failures.
pub struct Circuit {
    failure_budget: Duration,
    probe_interval: Duration,
    max_wait: Duration,
    state: Mutex<CircuitState>,
    changed: Notify,
}

#[derive(Clone, Debug)]
enum CircuitState {
    Closed { failing_since: Option<Instant> },
    Open { since: Instant, reason: String, next_probe: Instant, probing: bool },
}

/// How a caller was admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// The circuit is closed.
    Normal,
    /// The circuit is open and this caller is its probe: report the outcome.
    Probe,
}

/// A caller waited longer than `circuit_max_wait_secs` for an open circuit.
#[derive(Debug)]
pub struct CircuitStillOpen {
    pub reason: String,
}

impl Circuit {
    pub fn new(failure_budget: Duration, probe_interval: Duration, max_wait: Duration) -> Self {
        Circuit {
            failure_budget,
            probe_interval,
            max_wait,
            state: Mutex::new(CircuitState::Closed { failing_since: None }),
            changed: Notify::new(),
        }
    }

    /// Waits until the circuit lets this caller through.
    pub async fn admit(&self) -> Result<Admission, CircuitStillOpen> {
        let deadline = Instant::now() + self.max_wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake = {
                let mut s = lock(&self.state);
                let now = Instant::now();
                match &mut *s {
                    CircuitState::Closed { .. } => return Ok(Admission::Normal),
                    CircuitState::Open { next_probe, probing, reason, .. } => {
                        if !*probing && now >= *next_probe {
                            *probing = true;
                            return Ok(Admission::Probe);
                        }
                        if now >= deadline {
                            return Err(CircuitStillOpen { reason: reason.clone() });
                        }
                        (*next_probe).max(now + Duration::from_millis(10)).min(deadline)
                    }
                }
            };
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    pub fn on_success(&self) {
        let mut s = lock(&self.state);
        if let CircuitState::Open { since, .. } = &*s {
            tracing::warn!(open_secs = since.elapsed().as_secs(), "LLM endpoint circuit closed: the probe succeeded");
        }
        *s = CircuitState::Closed { failing_since: None };
        drop(s);
        self.changed.notify_waiters();
    }

    /// A transient failure. Returns true when this failure opened the circuit.
    pub fn on_failure(&self, admission: &Admission, reason: &str) -> bool {
        let mut s = lock(&self.state);
        let now = Instant::now();
        match &mut *s {
            CircuitState::Closed { failing_since } => {
                let since = *failing_since.get_or_insert(now);
                if now.duration_since(since) >= self.failure_budget {
                    tracing::warn!(
                        failing_secs = now.duration_since(since).as_secs(),
                        reason,
                        "LLM endpoint circuit opened: its stages pause, probing every {} s",
                        self.probe_interval.as_secs()
                    );
                    *s = CircuitState::Open {
                        since: now,
                        reason: reason.to_string(),
                        next_probe: now + self.probe_interval,
                        probing: false,
                    };
                    return true;
                }
            }
            CircuitState::Open { next_probe, probing, reason: why, .. } => {
                if *admission == Admission::Probe {
                    *probing = false;
                    *next_probe = now + self.probe_interval;
                    *why = reason.to_string();
                    tracing::warn!(reason, "LLM endpoint circuit stays open: the probe failed");
                }
            }
        }
        false
    }

    /// A probe that ended without an outcome (cancelled, or refused before sending) frees the
    /// probe slot.
    pub fn probe_abandoned(&self) {
        if let CircuitState::Open { probing, .. } = &mut *lock(&self.state) {
            *probing = false;
        }
        self.changed.notify_waiters();
    }

    pub fn is_open(&self) -> bool {
        matches!(*lock(&self.state), CircuitState::Open { .. })
    }

    pub fn snapshot(&self) -> CircuitSnapshot {
        match &*lock(&self.state) {
            CircuitState::Closed { failing_since } => {
                CircuitSnapshot::Closed { failing_for_secs: failing_since.map(|s| s.elapsed().as_secs_f64()) }
            }
            CircuitState::Open { since, reason, next_probe, probing } => CircuitSnapshot::Open {
                reason: reason.clone(),
                open_for_secs: since.elapsed().as_secs_f64(),
                next_probe_in_secs: next_probe.saturating_duration_since(Instant::now()).as_secs_f64(),
                probing: *probing,
            },
        }
    }
}

/// The adaptive concurrency limit as `/status` and the report show it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ConcurrencySnapshot {
    pub limit: usize,
    pub max: usize,
    pub in_flight: usize,
    pub ceiling: Option<usize>,
    pub cuts: u64,
}

/// The circuit breaker as `/status` and the report show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CircuitSnapshot {
    Closed { failing_for_secs: Option<f64> },
    Open { reason: String, open_for_secs: f64, next_probe_in_secs: f64, probing: bool },
}

impl Default for CircuitSnapshot {
    fn default() -> CircuitSnapshot {
        CircuitSnapshot::Closed { failing_for_secs: None }
    }
}

impl CircuitSnapshot {
    pub fn open_reason(&self) -> Option<&str> {
        match self {
            CircuitSnapshot::Open { reason, .. } => Some(reason),
            CircuitSnapshot::Closed { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(2);

    #[tokio::test]
    async fn a_burst_of_429s_cuts_once_and_growth_is_slow_above_the_ceiling() {
        let c = AdaptiveConcurrency::new(8);
        let mut permits = Vec::new();
        for _ in 0..4 {
            permits.push(c.acquire().await);
        }
        tokio::time::sleep(TICK).await;
        for p in &permits {
            c.on_rate_limited(p);
        }
        assert_eq!(c.limit(), 4, "four 429s of one burst cut once");
        drop(permits);
        for _ in 0..4 {
            c.on_success();
        }
        assert_eq!(c.limit(), 5, "below the ceiling: one step per `limit` successes");

        // Two bursts: the ceiling is where the second one started (8).
        let c2 = AdaptiveConcurrency::new(16);
        for _ in 0..2 {
            let p = c2.acquire().await;
            tokio::time::sleep(TICK).await;
            c2.on_rate_limited(&p);
        }
        assert_eq!(c2.limit(), 4);
        for _ in 0..(4 + 5 + 6 + 7) {
            c2.on_success();
        }
        assert_eq!(c2.limit(), 8);
        for _ in 0..79 {
            c2.on_success();
        }
        assert_eq!(c2.limit(), 8, "at the ceiling a step needs ten times as many successes");
        c2.on_success();
        assert_eq!(c2.limit(), 9);
    }

    #[tokio::test]
    async fn acquire_waits_for_a_free_place() {
        let c = AdaptiveConcurrency::new(1);
        let first = c.acquire().await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), c.acquire()).await;
        assert!(waiting.is_err(), "a second request waits while the only place is taken");
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(5), c.acquire()).await.expect("freed");
    }

    #[tokio::test]
    async fn cooldown_extends_and_clears() {
        let c = Cooldown::default();
        let start = Instant::now();
        c.extend(Duration::from_millis(200));
        c.extend(Duration::from_millis(100));
        let cleared = c.clear().await;
        assert!(cleared >= start + Duration::from_millis(200), "the longer pause wins");
        assert_eq!(c.remaining(), Duration::ZERO);
    }

    #[tokio::test]
    async fn circuit_opens_after_the_budget_probes_and_closes() {
        let c = Circuit::new(Duration::from_millis(100), Duration::from_millis(50), Duration::from_secs(60));
        assert!(!c.on_failure(&Admission::Normal, "HTTP 503"));
        tokio::time::sleep(Duration::from_millis(110)).await;
        assert!(c.on_failure(&Admission::Normal, "HTTP 503"), "failing for longer than the budget opens it");
        assert!(c.is_open());
        let t0 = Instant::now();
        assert_eq!(c.admit().await.unwrap(), Admission::Probe);
        assert!(Instant::now() >= t0 + Duration::from_millis(45), "the first probe waits one interval");
        c.on_failure(&Admission::Probe, "HTTP 503");
        assert!(c.is_open());
        assert_eq!(c.admit().await.unwrap(), Admission::Probe);
        c.on_success();
        assert!(!c.is_open());
        assert_eq!(c.admit().await.unwrap(), Admission::Normal);
    }

    #[tokio::test]
    async fn waiting_on_an_open_circuit_is_bounded() {
        let c = Circuit::new(Duration::ZERO, Duration::from_millis(20), Duration::from_millis(200));
        c.on_failure(&Admission::Normal, "connection refused");
        assert_eq!(c.admit().await.unwrap(), Admission::Probe);
        // The probe never reports; the others give up at the deadline.
        let err = c.admit().await.unwrap_err();
        assert_eq!(err.reason, "connection refused");
    }
}
