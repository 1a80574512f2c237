//! Durable pipeline state behind the pipeline's [`Store`](gymforge_actors::ports::Store) port:
//! units of work, stage results, LLM usage, events, claims and run metadata.
//!
//! `sqlite.rs` is the embedded default, one file in a run's state directory for one process;
//! `postgres.rs` is a database several nodes share, with leases that expire when their holder
//! stops renewing and commits fenced against a holder that lost its lease. Both keep the same
//! contract, which `tests/suite/store.rs` checks against each: a stage result is stored once, in
//! the transaction that moves its unit on, and every claim is kept in the claim history.

mod postgres;
mod sqlite;

pub use postgres::{PgSettings, PgStore, PgTarget, SCHEMA_VERSION as PG_SCHEMA_VERSION};
pub use sqlite::SqliteStore;

use gymforge_actors::model::{Stage, StageResult};
use gymforge_actors::ports::PortError;

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A stored stage result, read back.
fn parse_payload(unit: &str, stage: Stage, text: &str) -> Result<StageResult, PortError> {
    serde_json::from_str(text)
        .and_then(|value| StageResult::from_json(stage, value))
        .map_err(|e| PortError::Permanent(format!("store: the stored {stage} result of {unit} is unreadable: {e}")))
}
