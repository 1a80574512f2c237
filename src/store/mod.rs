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

pub use postgres::{ClusterView, NodeView, PgSettings, PgStore, PgTarget, SCHEMA_VERSION as PG_SCHEMA_VERSION, observe};
pub use sqlite::SqliteStore;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gymforge_actors::model::{Stage, StageResult};
use gymforge_actors::ports::{PortError, Store};

use crate::config::StoreConfig;

/// What a batch needs of its store beyond the pipeline's port.
#[async_trait::async_trait]
pub trait BatchStore: Store {
    /// When a unit was created, in milliseconds since the Unix epoch (the start of its trace).
    /// Called from synchronous telemetry code; `None` when it cannot be known there.
    fn created_unix_ms(&self, unit: &str) -> Option<u64>;
    /// Where the state is, for messages (no password).
    fn location(&self) -> String;
    /// Where the shared batch stands, for a store that several nodes share.
    async fn cluster_view(&self) -> Option<Result<ClusterView, PortError>> {
        None
    }
    /// A node leaving the batch cleanly: off the registry, its unstarted claims given back.
    async fn leave(&self) {}
    /// The LLM budgets the nodes of a shared store spend together.
    fn shared_limits(&self) -> Option<Arc<dyn crate::gateway::shared::SharedLimits>> {
        None
    }
}

#[async_trait::async_trait]
impl BatchStore for SqliteStore {
    fn created_unix_ms(&self, unit: &str) -> Option<u64> {
        self.unit_created_unix_ms(unit).ok().flatten()
    }

    fn location(&self) -> String {
        "the embedded SQLite file".to_string()
    }
}

/// Opens the batch's store: `config.url`'s PostgreSQL database (registering this node with its
/// `rollout_slots`; `None` for a reader that works on no unit), or else the SQLite file
/// `state.db` in the run's state directory.
pub async fn open(config: &StoreConfig, state: &Path, rollout_slots: Option<u32>) -> anyhow::Result<Arc<dyn BatchStore>> {
    if config.url.is_empty() {
        return Ok(Arc::new(SqliteStore::open(&state.join("state.db"))?));
    }
    let target = PgTarget::parse(&config.url)?;
    let settings = PgSettings {
        pool_size: config.pool_size.max(1) as usize,
        lease: Duration::from_secs(config.lease_secs),
        slots: rollout_slots,
        ..PgSettings::default()
    };
    Ok(Arc::new(PgStore::connect(&target, config.password()?.as_deref(), &settings).await?))
}

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
