//! The pipeline state in a PostgreSQL database that several gymforge processes (nodes) share.
//!
//! [`PgStore`] implements the [`Store`] port with the same tables and the same guarantees as the
//! SQLite store (a stage result is stored once, in the transaction that moves its unit on), plus
//! what sharing needs:
//!
//! - **Leases.** A claim is a lease: the unit's `claim` column holds the claiming session's
//!   token and `lease_until` the database time it expires. Every store renews the leases its
//!   session holds in the background (every third of the lease), so a claim lives as long as its
//!   process runs; a process that is killed, paused or cut off stops renewing, and once the lease
//!   has expired any other session may claim the unit. Expiry is computed with the database's
//!   clock, never a node's.
//! - **Fencing.** Completing, dropping, counting an attempt and keeping an artefact are refused
//!   with [`PortError::LeaseLost`] when another session holds the unit's claim or the unit has
//!   moved on, so a session whose lease was taken over can never commit over the one that took it.
//! - **Pulling.** Nodes claim work with `FOR UPDATE SKIP LOCKED` ([`Store::claim_next`]), task
//!   units are created under an advisory lock by one rule for the whole batch, and the files a
//!   later stage needs are content-addressed blobs in 1 MiB chunks, checked on every read.
//! - **Migrations.** The schema is versioned in `gymforge_schema`; migrations run in one
//!   transaction under an advisory lock, so nodes starting together migrate once, and a
//!   database migrated by a newer gymforge is refused with a message saying so.
//!
//! The password never travels in the URL: it comes from `GYMFORGE_STORE_PASSWORD` or a password
//! file, and no error, log line or status shows it (errors name the server as
//! [`PgTarget::display`] does: user, host, port and database).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use gymforge_actors::model::{DropReason, Stage, StageResult, Unit, UnitId, UnitKind, UnitStatus};
use gymforge_actors::ports::{ArtefactKind, Event, EventKind, PortError, Store, TaskPlan, Usage, UsageRow};
use serde::Serialize;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::{parse_payload, to_i64, to_u64};

/// The migrations, in order: the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE units (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    parent      TEXT,
    stage       TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    drop_reason TEXT,
    drop_detail TEXT,
    claim       TEXT,
    lease_until TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX units_order ON units (kind, seq);
CREATE INDEX units_claimed ON units (claim) WHERE claim IS NOT NULL;
CREATE TABLE stage_results (
    unit       TEXT NOT NULL,
    stage      TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (unit, stage)
);
CREATE INDEX stage_results_stage ON stage_results (stage);
CREATE TABLE usage (
    id            BIGSERIAL PRIMARY KEY,
    unit          TEXT NOT NULL,
    stage         TEXT NOT NULL,
    endpoint      TEXT NOT NULL,
    model         TEXT NOT NULL,
    calls         BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd      DOUBLE PRECISION NOT NULL
);
CREATE TABLE events (
    id     BIGSERIAL PRIMARY KEY,
    kind   TEXT NOT NULL,
    unit   TEXT NOT NULL,
    stage  TEXT NOT NULL,
    detail TEXT NOT NULL,
    at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE claims (
    id      BIGSERIAL PRIMARY KEY,
    unit    TEXT NOT NULL,
    stage   TEXT NOT NULL,
    session TEXT NOT NULL,
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
",
    "
CREATE TABLE nodes (
    session      TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    slots        INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE claims ADD COLUMN took_over_from TEXT;
",
    "
CREATE TABLE blobs (
    sha256     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    chunks     INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE blob_chunks (
    sha256 TEXT NOT NULL REFERENCES blobs (sha256),
    idx    INTEGER NOT NULL,
    data   BYTEA NOT NULL,
    PRIMARY KEY (sha256, idx)
);
CREATE TABLE artefacts (
    unit       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    sha256     TEXT NOT NULL REFERENCES blobs (sha256),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (unit, kind)
);
CREATE INDEX units_pending ON units (stage, kind, seq) WHERE status = 'pending';
ALTER TABLE nodes ADD COLUMN left_at TIMESTAMPTZ;
CREATE TABLE llm_shares (
    endpoint       TEXT PRIMARY KEY,
    requests_tat   TIMESTAMPTZ NOT NULL DEFAULT now(),
    input_tat      TIMESTAMPTZ NOT NULL DEFAULT now(),
    output_tat     TIMESTAMPTZ NOT NULL DEFAULT now(),
    cooldown_until TIMESTAMPTZ NOT NULL DEFAULT now()
);
",
];

/// Artefacts are stored in chunks of this many bytes (one row each).
const CHUNK_BYTES: usize = 1 << 20;

/// The advisory lock under which task units are counted and created.
const CREATE_LOCK: i64 = 0x6766_7461_736b_7321;

/// The columns [`unit_from_row`] reads, in its order.
const UNIT_COLUMNS: &str = "u.id, u.kind, u.seq, u.parent, u.stage, u.status, u.attempts, u.drop_reason, u.drop_detail";

/// The schema version this gymforge writes and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key migrations hold ("gymforge" in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x6779_6d66_6f72_6765;

/// Orders units: task units before rollout units, then by creation sequence.
const UNIT_ORDER: &str = "CASE u.kind WHEN 'task' THEN 0 ELSE 1 END, u.seq, u.id";

/// Where the database is, without its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl PgTarget {
    /// Reads `postgres://user@host:port/dbname` (port 5432 and user `postgres` by default). A
    /// password in the URL is refused, so that it never sits in a config file, a command line or
    /// a process list.
    pub fn parse(url: &str) -> anyhow::Result<PgTarget> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| anyhow::anyhow!("a PostgreSQL store URL starts with postgres://"))?;
        let (authority, dbname) = rest.split_once('/').unwrap_or((rest, "gymforge"));
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((user, hostport)) => (user, hostport),
            None => ("postgres", authority),
        };
        if user.contains(':') {
            bail!(
                "the store URL holds a password: put it in the GYMFORGE_STORE_PASSWORD environment variable or a file named by \
                 store.password_file instead"
            );
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) => {
                (host, port.parse::<u16>().map_err(|_| anyhow::anyhow!("the store URL's port {port:?} is not a port number"))?)
            }
            None => (hostport, 5432),
        };
        let dbname = dbname.split('?').next().unwrap_or_default();
        if host.is_empty() || dbname.is_empty() || user.is_empty() {
            bail!("a PostgreSQL store URL reads postgres://USER@HOST:PORT/DATABASE");
        }
        Ok(PgTarget { user: user.to_string(), host: host.to_string(), port, dbname: dbname.to_string() })
    }

    /// `user@host:port/dbname`: how messages name the server.
    pub fn display(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// How a [`PgStore`] connects and leases.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// Connections the pool holds at most (each node's share of the server's `max_connections`).
    pub pool_size: usize,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// How long a connection attempt or a wait for a pooled connection may take.
    pub connect_timeout: Duration,
    /// Rollout slots this node offers, as the node registry shows them; `None`: not a node
    /// (an export from the store), so not registered.
    pub slots: Option<u32>,
}

impl Default for PgSettings {
    fn default() -> PgSettings {
        PgSettings { pool_size: 8, lease: Duration::from_secs(30), connect_timeout: Duration::from_secs(10), slots: None }
    }
}

/// Stops the lease renewal when the last clone of the store is dropped.
struct Renewal(tokio::task::JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The PostgreSQL-backed [`Store`]. Clones share one pool and one session.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    target: Arc<PgTarget>,
    /// This store's claim token, unique per process and connection.
    session: Arc<str>,
    lease: Duration,
    _renewal: Arc<Renewal>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target.display()).field("session", &self.session).finish_non_exhaustive()
    }
}

/// Classifies a database error without its connection details: lost connections, serialisation
/// failures and a server shutting down may clear; the rest will not.
fn db_err(target: &PgTarget, context: &str, err: &tokio_postgres::Error) -> PortError {
    let code = err.code();
    let transient = err.is_closed()
        || code.is_none()
        || code.is_some_and(|c| {
            [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::ADMIN_SHUTDOWN, SqlState::TOO_MANY_CONNECTIONS]
                .contains(c)
        });
    let said = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_else(|| err.to_string());
    let msg = format!("store {}: {context}: {said}", target.display());
    if transient { PortError::Transient(msg) } else { PortError::Permanent(msg) }
}

impl PgStore {
    /// Connects to `target` with `password`, migrates the schema to [`SCHEMA_VERSION`] (or
    /// refuses a newer one) and starts renewing this session's leases.
    pub async fn connect(target: &PgTarget, password: Option<&str>, settings: &PgSettings) -> anyhow::Result<PgStore> {
        let config = pg_config(target, password, settings.connect_timeout);
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .context("cannot build the store's connection pool")?;
        let where_ = target.display();
        let mut client = pool.get().await.map_err(|e| anyhow::anyhow!("cannot connect to the store {where_}: {}", pool_error(&e)))?;
        migrate(&mut client).await.with_context(|| format!("cannot prepare the store {where_}"))?;

        // The node id; a second store in the same process (tests) gets a suffix.
        static STORES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let session: Arc<str> = match STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => crate::node::id().into(),
            n => format!("{}.{n}", crate::node::id()).into(),
        };
        let host = crate::node::host();
        if let Some(slots) = settings.slots {
            client
                .execute(
                    "INSERT INTO nodes (session, host, pid, version, slots) VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &&*session,
                        &host,
                        &i32::try_from(std::process::id()).unwrap_or(i32::MAX),
                        &env!("CARGO_PKG_VERSION"),
                        &i32::try_from(slots).unwrap_or(i32::MAX),
                    ],
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}", db_err(target, "registering this node", &e)))?;
        }
        drop(client);
        let renewal = tokio::spawn(renew_leases(pool.clone(), Arc::new(target.clone()), session.clone(), settings.lease));
        Ok(PgStore { pool, target: Arc::new(target.clone()), session, lease: settings.lease, _renewal: Arc::new(Renewal(renewal)) })
    }

    /// This store's claim token (the session in the claim history).
    pub fn session(&self) -> &str {
        &self.session
    }

    async fn client(&self, context: &str) -> Result<deadpool_postgres::Object, PortError> {
        self.pool
            .get()
            .await
            .map_err(|e| PortError::Transient(format!("store {}: {context}: no connection: {}", self.target.display(), pool_error(&e))))
    }

    fn err(&self, context: &str, err: &tokio_postgres::Error) -> PortError {
        db_err(&self.target, context, err)
    }

    /// `(unit, stage, session)` of every claim ever made, oldest first.
    pub async fn claim_history(&self) -> Result<Vec<(String, String, String)>, PortError> {
        let context = "listing claims";
        let client = self.client(context).await?;
        let rows = client.query("SELECT unit, stage, session FROM claims ORDER BY id", &[]).await.map_err(|e| self.err(context, &e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Removes an endpoint's shared LLM budgets (a bench's own endpoint).
    pub async fn forget_shared_limits(&self, endpoint: &str) -> Result<(), PortError> {
        let context = "removing shared LLM budgets";
        let client = self.client(context).await?;
        client.execute("DELETE FROM llm_shares WHERE endpoint = $1", &[&endpoint]).await.map_err(|e| self.err(context, &e))?;
        Ok(())
    }

    /// Makes every lease of this session expire now, as if its process had stopped renewing
    /// long ago (for tests of take-overs and fencing).
    pub async fn expire_own_leases(&self) -> Result<(), PortError> {
        let context = "expiring leases";
        let client = self.client(context).await?;
        client
            .execute("UPDATE units SET lease_until = now() - interval '1 second' WHERE claim = $1", &[&&*self.session])
            .await
            .map_err(|e| self.err(context, &e))?;
        Ok(())
    }

    /// Removes every unit whose id starts with `prefix`, with its results and claims (the
    /// store bench's own units); returns how many.
    pub async fn remove_units_with_prefix(&self, prefix: &str) -> Result<u64, PortError> {
        let context = "removing units";
        let mut client = self.client(context).await?;
        let tx = client.transaction().await.map_err(|e| self.err(context, &e))?;
        let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        for table in ["stage_results", "claims", "usage", "events"] {
            tx.execute(&format!("DELETE FROM {table} WHERE unit LIKE $1"), &[&pattern]).await.map_err(|e| self.err(context, &e))?;
        }
        let removed = tx.execute("DELETE FROM units WHERE id LIKE $1", &[&pattern]).await.map_err(|e| self.err(context, &e))?;
        tx.commit().await.map_err(|e| self.err(context, &e))?;
        Ok(removed)
    }

    async fn record_claim(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        unit: &str,
        stage: Stage,
        took_over_from: Option<&str>,
        context: &str,
    ) -> Result<(), PortError> {
        tx.execute(
            "INSERT INTO claims (unit, stage, session, took_over_from) VALUES ($1, $2, $3, $4)",
            &[&unit, &stage.as_str(), &&*self.session, &took_over_from],
        )
        .await
        .map_err(|e| self.err(context, &e))?;
        Ok(())
    }

    /// Locks the unit's row in `tx` and checks that this session's lease on it never lapsed:
    /// a lease that expired is lost, whether or not another session took the unit over since
    /// (a paused process must not commit work whose timing it did not see). A commit of
    /// `committing`'s result needs this session's claim; without a stage (dropping, counting an
    /// attempt after the claim was given back) a unit no session claims passes. Returns its stage
    /// and status, or `None` when there is no such unit.
    async fn lock_unit(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        unit: &str,
        committing: Option<Stage>,
        context: &str,
    ) -> Result<Option<(String, String)>, PortError> {
        let row = tx
            .query_opt("SELECT stage, status, claim, lease_until < now() FROM units WHERE id = $1 FOR UPDATE", &[&unit])
            .await
            .map_err(|e| self.err(context, &e))?;
        let Some(row) = row else { return Ok(None) };
        let (claim, expired): (Option<String>, Option<bool>) = (row.get(2), row.get(3));
        let lost = match claim {
            Some(holder) if *holder != *self.session => Some(format!("session {holder} took the unit over")),
            Some(_) if expired == Some(true) => Some("the lease expired before the commit".to_string()),
            None if committing.is_some_and(|stage| row.get::<_, String>(0) == stage.as_str() && row.get::<_, String>(1) == "pending") => {
                Some("no session holds the unit".to_string())
            }
            _ => None,
        };
        if let Some(why) = lost {
            return Err(PortError::LeaseLost(format!("store {}: {context}: the lease was lost: {why}", self.target.display())));
        }
        Ok(Some((row.get(0), row.get(1))))
    }
}

/// One admission under an endpoint's shared budgets (see [`crate::gateway::shared`]): each
/// budget's theoretical arrival time, pushed to now when it lies behind, must lie no further
/// ahead than its tolerance; then every budget advances by what the request costs. Returns
/// whether it was admitted and, when not, the seconds until it could be.
const ADMIT: &str = "
WITH s AS (
    SELECT endpoint, GREATEST(requests_tat, now()) AS r, GREATEST(input_tat, now()) AS i,
           GREATEST(output_tat, now()) AS o, cooldown_until AS c
    FROM llm_shares WHERE endpoint = $1 FOR UPDATE
), d AS (
    SELECT s.*, s.r - now() - make_interval(secs => $2) AS wait_r, s.i - now() - make_interval(secs => $3) AS wait_i,
           s.o - now() - make_interval(secs => $4) AS wait_o, s.c - now() AS wait_c
    FROM s
), ok AS (
    SELECT d.*, GREATEST(d.wait_r, d.wait_i, d.wait_o, d.wait_c) <= interval '0' AS admitted FROM d
), advanced AS (
    UPDATE llm_shares l SET requests_tat = ok.r + make_interval(secs => $5), input_tat = ok.i + make_interval(secs => $6),
           output_tat = ok.o + make_interval(secs => $7)
    FROM ok WHERE l.endpoint = ok.endpoint AND ok.admitted
    RETURNING 1
)
SELECT admitted, extract(epoch FROM GREATEST(wait_r, wait_i, wait_o, wait_c, interval '0'))::FLOAT8 FROM ok";

#[async_trait::async_trait]
impl crate::gateway::shared::SharedLimits for PgStore {
    async fn admit(
        &self,
        endpoint: &str,
        rates: &crate::gateway::shared::Rates,
        ask: crate::gateway::shared::Ask,
    ) -> Result<Option<Duration>, String> {
        use crate::gateway::shared::Rates;
        let context = format!("admitting a request to {endpoint}");
        // Seconds per request or token; 0 (no limit) never advances its budget.
        let per = |per_minute: u32| if per_minute == 0 { 0.0 } else { 60.0 / f64::from(per_minute) };
        let input_tolerance = Rates::token_burst(rates.input_tokens_per_minute) as f64 * per(rates.input_tokens_per_minute);
        let output_tolerance = Rates::token_burst(rates.output_tokens_per_minute) as f64 * per(rates.output_tokens_per_minute);
        // The steady rate leaves room for the burst, so that no 60 s window holds more than the
        // provider's requests per minute: (rpm - burst + 1) steady plus burst - 1 at once.
        let steady_rpm = rates.requests_per_minute.saturating_sub(rates.request_burst() - 1).max(1);
        let request_tolerance = f64::from(rates.request_burst() - 1) * per(steady_rpm);
        let costs = [
            per(steady_rpm),
            ask.input_tokens as f64 * per(rates.input_tokens_per_minute),
            ask.output_tokens as f64 * per(rates.output_tokens_per_minute),
        ];
        let client = self.client(&context).await.map_err(|e| e.to_string())?;
        for _ in 0..2 {
            let row = client
                .query_opt(ADMIT, &[&endpoint, &request_tolerance, &input_tolerance, &output_tolerance, &costs[0], &costs[1], &costs[2]])
                .await
                .map_err(|e| self.err(&context, &e).to_string())?;
            match row {
                Some(row) if row.get::<_, bool>(0) => return Ok(None),
                Some(row) => return Ok(Some(Duration::from_secs_f64(row.get::<_, f64>(1).max(0.0)))),
                None => {
                    client
                        .execute("INSERT INTO llm_shares (endpoint) VALUES ($1) ON CONFLICT (endpoint) DO NOTHING", &[&endpoint])
                        .await
                        .map_err(|e| self.err(&context, &e).to_string())?;
                }
            }
        }
        Err(format!("store {}: {context}: the endpoint's row is missing", self.target.display()))
    }

    async fn cool_down(&self, endpoint: &str, pause: Duration) -> Result<(), String> {
        let context = format!("sharing a cooldown of {endpoint}");
        let client = self.client(&context).await.map_err(|e| e.to_string())?;
        client
            .execute(
                "INSERT INTO llm_shares (endpoint, cooldown_until) VALUES ($1, now() + make_interval(secs => $2)) \
                 ON CONFLICT (endpoint) DO UPDATE SET cooldown_until = GREATEST(llm_shares.cooldown_until, excluded.cooldown_until)",
                &[&endpoint, &pause.as_secs_f64()],
            )
            .await
            .map_err(|e| self.err(&context, &e).to_string())?;
        Ok(())
    }

    async fn spent_usd(&self) -> Result<f64, String> {
        let context = "reading what the batch spent";
        let client = self.client(context).await.map_err(|e| e.to_string())?;
        let row = client
            .query_one("SELECT COALESCE(SUM(cost_usd), 0)::FLOAT8 FROM usage", &[])
            .await
            .map_err(|e| self.err(context, &e).to_string())?;
        Ok(row.get(0))
    }
}

#[async_trait::async_trait]
impl super::BatchStore for PgStore {
    fn shared_limits(&self) -> Option<Arc<dyn crate::gateway::shared::SharedLimits>> {
        Some(Arc::new(self.clone()))
    }

    async fn leave(&self) {
        let left = async {
            let client = self.pool.get().await.map_err(|e| pool_error(&e))?;
            let session = &*self.session;
            client
                .execute("UPDATE units SET claim = NULL, lease_until = NULL WHERE claim = $1 AND status = 'pending'", &[&session])
                .await
                .and(client.execute("UPDATE nodes SET left_at = now() WHERE session = $1", &[&session]).await)
                .map_err(|e| self.err("leaving the batch", &e).to_string())
        };
        if let Err(e) = left.await {
            tracing::warn!(error = %e, "could not leave the batch cleanly; this node's leases expire on their own");
        }
    }

    fn created_unix_ms(&self, unit: &str) -> Option<u64> {
        // A blocking read is possible only on a runtime with other threads to carry on.
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return None;
        }
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let client = self.pool.get().await.ok()?;
                let row = client
                    .query_opt("SELECT (extract(epoch FROM created_at) * 1000)::BIGINT FROM units WHERE id = $1", &[&unit])
                    .await
                    .ok()??;
                u64::try_from(row.get::<_, i64>(0)).ok()
            })
        })
    }

    fn location(&self) -> String {
        format!("the PostgreSQL database {}", self.target.display())
    }

    async fn cluster_view(&self) -> Option<Result<ClusterView, PortError>> {
        Some(self.cluster().await)
    }
}

/// One node as the registry shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct NodeView {
    pub session: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub slots: i32,
    /// It has not left and its heartbeat is younger than a lease.
    pub alive: bool,
    /// It left the batch cleanly.
    pub left: bool,
    pub heartbeat_age_secs: f64,
    /// Units it holds an unexpired lease on.
    pub units_in_flight: i64,
}

/// Where a shared batch stands: the nodes, the work waiting and in flight per stage, and how
/// often a unit passed from a node whose lease expired to another.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    /// Pending units no live lease holds, per stage.
    pub queued: BTreeMap<String, i64>,
    /// Pending units under an unexpired lease, per stage.
    pub in_flight: BTreeMap<String, i64>,
    pub done: i64,
    pub dropped: i64,
    pub leases_taken_over: i64,
}

impl ClusterView {
    /// The view as text for people, headed by the server it was read from.
    pub fn table(&self, server: &str) -> String {
        use std::fmt::Write;
        let mut out = format!("store {server}\n");
        let alive = self.nodes.iter().filter(|n| n.alive).count();
        let _ = writeln!(out, "nodes {alive} alive of {} registered", self.nodes.len());
        let _ =
            writeln!(out, "  {:<40} {:>7} {:>8} {:>5} {:>9} {:>10}  state", "node", "pid", "version", "slots", "in flight", "heartbeat");
        for n in &self.nodes {
            let state = match (n.alive, n.left) {
                (true, _) => "alive",
                (false, true) => "left",
                (false, false) => "gone",
            };
            let _ = writeln!(
                out,
                "  {:<40} {:>7} {:>8} {:>5} {:>9} {:>9.1}s  {state}",
                n.session, n.pid, n.version, n.slots, n.units_in_flight, n.heartbeat_age_secs
            );
        }
        let _ = writeln!(out, "stage      queued  in flight");
        for (stage, queued) in &self.queued {
            let _ = writeln!(out, "  {stage:<8} {queued:>6} {:>10}", self.in_flight.get(stage).copied().unwrap_or(0));
        }
        let _ = write!(out, "units done {}, dropped {}; leases taken over {}", self.done, self.dropped, self.leases_taken_over);
        out
    }
}

/// Reads the [`ClusterView`]; a node is alive when its heartbeat is younger than `lease`.
async fn cluster_view(client: &tokio_postgres::Client, lease: Duration) -> Result<ClusterView, tokio_postgres::Error> {
    let nodes = client
        .query(
            "SELECT n.session, n.host, n.pid, n.version, n.slots, extract(epoch FROM now() - n.heartbeat_at)::FLOAT8, \
             (SELECT count(*) FROM units u WHERE u.claim = n.session AND u.status = 'pending' AND u.lease_until >= now()), \
             n.left_at IS NOT NULL FROM nodes n ORDER BY n.started_at, n.session",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let (age, left): (f64, bool) = (r.get(5), r.get(7));
            NodeView {
                session: r.get(0),
                host: r.get(1),
                pid: r.get(2),
                version: r.get(3),
                slots: r.get(4),
                alive: !left && age < lease.as_secs_f64(),
                left,
                heartbeat_age_secs: age,
                units_in_flight: r.get(6),
            }
        })
        .collect();
    let (mut queued, mut in_flight) = (BTreeMap::new(), BTreeMap::new());
    for r in client
        .query(
            "SELECT stage, count(*) FILTER (WHERE claim IS NULL OR lease_until < now()), \
             count(*) FILTER (WHERE claim IS NOT NULL AND lease_until >= now()) FROM units WHERE status = 'pending' GROUP BY stage",
            &[],
        )
        .await?
    {
        queued.insert(r.get::<_, String>(0), r.get(1));
        in_flight.insert(r.get::<_, String>(0), r.get(2));
    }
    let totals = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'dropped'), \
             (SELECT count(*) FROM claims WHERE took_over_from IS NOT NULL) FROM units",
            &[],
        )
        .await?;
    Ok(ClusterView { nodes, queued, in_flight, done: totals.get(0), dropped: totals.get(1), leases_taken_over: totals.get(2) })
}

impl PgStore {
    /// Where the shared batch stands (for `/status`).
    pub async fn cluster(&self) -> Result<ClusterView, PortError> {
        let context = "reading the cluster's state";
        let client = self.client(context).await?;
        cluster_view(&client, self.lease).await.map_err(|e| self.err(context, &e))
    }
}

/// Reads where a shared batch stands without joining it (`gymforge cluster status`): one
/// connection, no registration, no migration (a schema other than this gymforge's is refused).
pub async fn observe(target: &PgTarget, password: Option<&str>, lease: Duration) -> anyhow::Result<ClusterView> {
    let config = pg_config(target, password, Duration::from_secs(10));
    let where_ = target.display();
    let (client, connection) = config.connect(NoTls).await.map_err(|e| anyhow::anyhow!("{}", db_err(target, "connecting", &e)))?;
    let driver = tokio::spawn(connection);
    let version: Option<i32> = client
        .query_opt("SELECT version FROM gymforge_schema", &[])
        .await
        .map_err(|e| anyhow::anyhow!("{where_} holds no gymforge batch ({})", db_err(target, "reading the schema version", &e)))?
        .map(|r| r.get(0));
    if version != Some(SCHEMA_VERSION) {
        bail!(
            "{where_} has gymforge schema version {}, this gymforge reads {SCHEMA_VERSION}: use the gymforge its nodes run",
            version.map_or("none".to_string(), |v| v.to_string())
        );
    }
    let view = cluster_view(&client, lease).await.map_err(|e| anyhow::anyhow!("{}", db_err(target, "reading the cluster's state", &e)));
    drop(client);
    driver.abort();
    view
}

/// How to reach `target`, as gymforge (the name the server's activity views show).
fn pg_config(target: &PgTarget, password: Option<&str>, connect_timeout: Duration) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&target.user)
        .host(&target.host)
        .port(target.port)
        .dbname(&target.dbname)
        .application_name("gymforge")
        .connect_timeout(connect_timeout);
    if let Some(password) = password {
        config.password(password);
    }
    config
}

fn pool_error(err: &deadpool_postgres::PoolError) -> String {
    match err {
        deadpool_postgres::PoolError::Backend(e) => e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()),
        other => other.to_string(),
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction under the migration lock.
async fn migrate(client: &mut deadpool_postgres::Object) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS gymforge_schema (version INTEGER NOT NULL)").await?;
    let version: i32 = match tx.query_opt("SELECT version FROM gymforge_schema", &[]).await? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO gymforge_schema (version) VALUES (0)", &[]).await?;
            0
        }
    };
    if version > SCHEMA_VERSION {
        bail!(
            "the database has gymforge schema version {version}, newer than this gymforge understands ({SCHEMA_VERSION}); \
             upgrade gymforge on this node"
        );
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        tx.batch_execute(migration).await.with_context(|| format!("migration {} failed", index + 1))?;
    }
    tx.execute("UPDATE gymforge_schema SET version = $1", &[&SCHEMA_VERSION]).await?;
    tx.commit().await?;
    Ok(())
}

/// Extends this session's leases and beats its node's heart every third of the lease, for as
/// long as the store lives.
async fn renew_leases(pool: Pool, target: Arc<PgTarget>, session: Arc<str>, lease: Duration) {
    let seconds = lease.as_secs_f64();
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let renewed = match pool.get().await {
            Ok(client) => {
                let leases = client
                    .execute(
                        "UPDATE units SET lease_until = now() + make_interval(secs => $2) \
                         WHERE claim = $1 AND status = 'pending' AND lease_until >= now()",
                        &[&&*session, &seconds],
                    )
                    .await;
                let heartbeat = client.execute("UPDATE nodes SET heartbeat_at = now() WHERE session = $1", &[&&*session]).await;
                leases.and(heartbeat).map(|_| ()).map_err(|e| db_err(&target, "renewing leases", &e).to_string())
            }
            Err(e) => Err(pool_error(&e)),
        };
        if let Err(e) = renewed {
            tracing::warn!(error = %e, "could not renew this node's leases; they expire unless a later renewal succeeds");
        }
    }
}

fn unit_from_row(row: &tokio_postgres::Row) -> Result<Unit, String> {
    let kind: String = row.get(1);
    let stage: String = row.get(4);
    let status: String = row.get(5);
    let attempts: i32 = row.get(6);
    let drop_reason: Option<String> = row.get(7);
    Ok(Unit {
        id: row.get(0),
        kind: UnitKind::parse(&kind).ok_or_else(|| format!("unknown unit kind {kind:?}"))?,
        seq: to_u64(row.get(2)),
        parent: row.get(3),
        stage: Stage::parse(&stage).ok_or_else(|| format!("unknown stage {stage:?}"))?,
        status: UnitStatus::parse(&status).ok_or_else(|| format!("unknown unit status {status:?}"))?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        drop_reason: drop_reason.map(|r| DropReason::parse(&r).ok_or_else(|| format!("unknown drop reason {r:?}"))).transpose()?,
        drop_detail: row.get(8),
    })
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn units(&self) -> Result<Vec<Unit>, PortError> {
        let context = "listing units";
        let client = self.client(context).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT u.id, u.kind, u.seq, u.parent, u.stage, u.status, u.attempts, u.drop_reason, u.drop_detail \
                     FROM units u ORDER BY {UNIT_ORDER}"
                ),
                &[],
            )
            .await
            .map_err(|e| self.err(context, &e))?;
        rows.iter().map(|r| unit_from_row(r).map_err(|e| PortError::Permanent(format!("store: {context}: {e}")))).collect()
    }

    async fn insert_unit(&self, unit: &Unit) -> Result<(), PortError> {
        let context = format!("inserting unit {}", unit.id);
        let client = self.client(&context).await?;
        let attempts = i32::try_from(unit.attempts).unwrap_or(i32::MAX);
        client
            .execute(
                "INSERT INTO units (id, kind, seq, parent, stage, status, attempts, drop_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
                &[
                    &unit.id,
                    &unit.kind.as_str(),
                    &to_i64(unit.seq),
                    &unit.parent,
                    &unit.stage.as_str(),
                    &unit.status.as_str(),
                    &attempts,
                    &unit.drop_reason.map(DropReason::as_str),
                ],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        Ok(())
    }

    async fn result(&self, unit: &str, stage: Stage) -> Result<Option<StageResult>, PortError> {
        let context = format!("reading the {stage} result of {unit}");
        let client = self.client(&context).await?;
        let row = client
            .query_opt("SELECT payload FROM stage_results WHERE unit = $1 AND stage = $2", &[&unit, &stage.as_str()])
            .await
            .map_err(|e| self.err(&context, &e))?;
        row.map(|r| parse_payload(unit, stage, r.get(0))).transpose()
    }

    async fn results(&self, stage: Stage) -> Result<Vec<(UnitId, StageResult)>, PortError> {
        let context = format!("listing {stage} results");
        let client = self.client(&context).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT r.unit, r.payload FROM stage_results r LEFT JOIN units u ON u.id = r.unit \
                     WHERE r.stage = $1 ORDER BY {UNIT_ORDER}, r.unit"
                ),
                &[&stage.as_str()],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        rows.iter()
            .map(|r| {
                let unit: String = r.get(0);
                let value = parse_payload(&unit, stage, r.get(1))?;
                Ok((unit, value))
            })
            .collect()
    }

    async fn complete_stage(&self, unit: &str, result: &StageResult, next: Option<Stage>) -> Result<(), PortError> {
        let stage = result.stage();
        let context = format!("completing {stage} of {unit}");
        let payload = result.to_json().to_string();
        let mut client = self.client(&context).await?;
        let tx = client.transaction().await.map_err(|e| self.err(&context, &e))?;
        match self.lock_unit(&tx, unit, Some(stage), &context).await? {
            None => return Err(PortError::Permanent(format!("store: {context}: no such unit"))),
            // Another session took the unit over and committed it (or dropped it) meanwhile.
            Some((at, status)) if at != stage.as_str() || status != "pending" => {
                return Err(PortError::LeaseLost(format!(
                    "store {}: {context}: the lease was lost: the unit is {status} at stage {at}, not pending at {stage}",
                    self.target.display()
                )));
            }
            Some(_) => {}
        }
        tx.execute(
            "INSERT INTO stage_results (unit, stage, payload) VALUES ($1, $2, $3) \
             ON CONFLICT (unit, stage) DO UPDATE SET payload = excluded.payload, created_at = now()",
            &[&unit, &stage.as_str(), &payload],
        )
        .await
        .map_err(|e| self.err(&context, &e))?;
        // The unit moves to `next`, or stays at its stage and is done.
        let (stage_after, status_after) = match next {
            Some(next) => (next.as_str(), "pending"),
            None => (stage.as_str(), "done"),
        };
        tx.execute(
            "UPDATE units SET stage = $2, status = $3, attempts = 0, claim = NULL, lease_until = NULL, updated_at = now() \
             WHERE id = $1",
            &[&unit, &stage_after, &status_after],
        )
        .await
        .map_err(|e| self.err(&context, &e))?;
        tx.commit().await.map_err(|e| self.err(&context, &e))
    }

    async fn drop_unit(&self, unit: &str, reason: DropReason, detail: &str) -> Result<(), PortError> {
        let context = format!("dropping {unit}");
        let mut client = self.client(&context).await?;
        let tx = client.transaction().await.map_err(|e| self.err(&context, &e))?;
        match self.lock_unit(&tx, unit, None, &context).await?.map(|(_, status)| status) {
            None => return Err(PortError::Permanent(format!("store: {context}: no such unit"))),
            Some(status) if status == "dropped" => return Ok(()),
            Some(status) if status == "done" => {
                tracing::warn!(unit, %reason, "not dropping a unit that already finished");
                return Ok(());
            }
            Some(_) => {}
        }
        tx.execute(
            "UPDATE units SET status = 'dropped', drop_reason = $2, drop_detail = $3, claim = NULL, lease_until = NULL, \
             updated_at = now() WHERE id = $1",
            &[&unit, &reason.as_str(), &detail],
        )
        .await
        .map_err(|e| self.err(&context, &e))?;
        tx.commit().await.map_err(|e| self.err(&context, &e))
    }

    async fn record_attempt(&self, unit: &str) -> Result<u32, PortError> {
        let context = format!("counting an attempt of {unit}");
        let mut client = self.client(&context).await?;
        let tx = client.transaction().await.map_err(|e| self.err(&context, &e))?;
        if self.lock_unit(&tx, unit, None, &context).await?.is_none() {
            return Err(PortError::Permanent(format!("store: {context}: no such unit")));
        }
        let row = tx
            .query_one(
                "UPDATE units SET attempts = attempts + 1, claim = NULL, lease_until = NULL, updated_at = now() \
                 WHERE id = $1 RETURNING attempts",
                &[&unit],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        tx.commit().await.map_err(|e| self.err(&context, &e))?;
        Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
    }

    async fn claim(&self, unit: &str, stage: Stage) -> Result<bool, PortError> {
        let context = format!("claiming {unit} at {stage}");
        let mut client = self.client(&context).await?;
        let tx = client.transaction().await.map_err(|e| self.err(&context, &e))?;
        // The old claim comes back when an expired lease is taken over.
        let claimed = tx
            .query_opt(
                "WITH old AS (SELECT id, claim FROM units WHERE id = $1 FOR UPDATE) \
                 UPDATE units u SET claim = $3, lease_until = now() + make_interval(secs => $4), updated_at = now() FROM old \
                 WHERE u.id = old.id AND u.stage = $2 AND u.status = 'pending' AND (u.claim IS NULL OR u.lease_until < now()) \
                 RETURNING old.claim",
                &[&unit, &stage.as_str(), &&*self.session, &self.lease.as_secs_f64()],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        if let Some(took_over_from) = claimed.as_ref().map(|row| row.get::<_, Option<String>>(0)) {
            self.record_claim(&tx, unit, stage, took_over_from.as_deref(), &context).await?;
        }
        tx.commit().await.map_err(|e| self.err(&context, &e))?;
        Ok(claimed.is_some())
    }

    async fn release(&self, unit: &str) -> Result<(), PortError> {
        let context = format!("releasing {unit}");
        let client = self.client(&context).await?;
        client
            .execute("UPDATE units SET claim = NULL, lease_until = NULL WHERE id = $1 AND claim = $2", &[&unit, &&*self.session])
            .await
            .map_err(|e| self.err(&context, &e))?;
        Ok(())
    }

    async fn add_usage(&self, unit: &str, stage: Stage, endpoint: &str, model: &str, usage: &Usage) -> Result<(), PortError> {
        let context = format!("recording usage of {unit}");
        let client = self.client(&context).await?;
        client
            .execute(
                "INSERT INTO usage (unit, stage, endpoint, model, calls, input_tokens, output_tokens, cost_usd) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &unit,
                    &stage.as_str(),
                    &endpoint,
                    &model,
                    &to_i64(usage.calls),
                    &to_i64(usage.input_tokens),
                    &to_i64(usage.output_tokens),
                    &usage.cost_usd,
                ],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        Ok(())
    }

    async fn usage(&self) -> Result<Vec<UsageRow>, PortError> {
        let context = "summing usage";
        let client = self.client(context).await?;
        let rows = client
            .query(
                "SELECT unit, stage, endpoint, model, SUM(calls)::BIGINT, SUM(input_tokens)::BIGINT, SUM(output_tokens)::BIGINT, \
                 SUM(cost_usd) FROM usage GROUP BY unit, stage, endpoint, model",
                &[],
            )
            .await
            .map_err(|e| self.err(context, &e))?;
        let mut out = rows
            .iter()
            .map(|r| {
                let stage: String = r.get(1);
                Ok(UsageRow {
                    unit: r.get(0),
                    stage: Stage::parse(&stage)
                        .ok_or_else(|| PortError::Permanent(format!("store: {context}: unknown stage {stage:?}")))?,
                    endpoint: r.get(2),
                    model: r.get(3),
                    usage: Usage {
                        calls: to_u64(r.get(4)),
                        input_tokens: to_u64(r.get(5)),
                        output_tokens: to_u64(r.get(6)),
                        cost_usd: r.get(7),
                    },
                })
            })
            .collect::<Result<Vec<_>, PortError>>()?;
        out.sort_by(|a, b| (&a.unit, a.stage, &a.endpoint, &a.model).cmp(&(&b.unit, b.stage, &b.endpoint, &b.model)));
        Ok(out)
    }

    async fn add_event(&self, event: &Event) -> Result<(), PortError> {
        let context = format!("recording a {} event", event.kind);
        let client = self.client(&context).await?;
        client
            .execute(
                "INSERT INTO events (kind, unit, stage, detail) VALUES ($1, $2, $3, $4)",
                &[&event.kind.as_str(), &event.unit, &event.stage.as_str(), &event.detail],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        Ok(())
    }

    async fn events(&self) -> Result<Vec<Event>, PortError> {
        let context = "listing events";
        let client = self.client(context).await?;
        let rows =
            client.query("SELECT kind, unit, stage, detail FROM events ORDER BY id", &[]).await.map_err(|e| self.err(context, &e))?;
        rows.iter()
            .map(|r| {
                let (kind, stage): (String, String) = (r.get(0), r.get(2));
                Ok(Event {
                    kind: EventKind::parse(&kind)
                        .ok_or_else(|| PortError::Permanent(format!("store: {context}: unknown kind {kind:?}")))?,
                    unit: r.get(1),
                    stage: Stage::parse(&stage)
                        .ok_or_else(|| PortError::Permanent(format!("store: {context}: unknown stage {stage:?}")))?,
                    detail: r.get(3),
                })
            })
            .collect()
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, PortError> {
        let context = format!("reading meta {key}");
        let client = self.client(&context).await?;
        let row = client.query_opt("SELECT value FROM meta WHERE key = $1", &[&key]).await.map_err(|e| self.err(&context, &e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), PortError> {
        let context = format!("writing meta {key}");
        let client = self.client(&context).await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        Ok(())
    }

    async fn create_task_unit(&self, plan: &TaskPlan) -> Result<Option<Unit>, PortError> {
        let context = "creating a task unit";
        let mut client = self.client(context).await?;
        let tx = client.transaction().await.map_err(|e| self.err(context, &e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK]).await.map_err(|e| self.err(context, &e))?;
        let row = tx
            .query_one(
                "SELECT COALESCE(MAX(seq) + 1, 0), COUNT(*) FILTER (WHERE status = 'done'), \
                 COUNT(*) FILTER (WHERE status = 'pending'), \
                 (SELECT COUNT(*) FROM nodes WHERE left_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)) \
                 FROM units WHERE kind = 'task'",
                &[&self.lease.as_secs_f64()],
            )
            .await
            .map_err(|e| self.err(context, &e))?;
        let created = to_u64(row.get(0));
        if !plan.wants(created, to_u64(row.get(1)), to_u64(row.get(2)), to_u64(row.get(3))) {
            return Ok(None);
        }
        let unit = Unit::pending(gymforge_actors::supervisor::task_unit_id(created), UnitKind::Task, created, None, Stage::Topic);
        tx.execute(
            "INSERT INTO units (id, kind, seq, stage, status) VALUES ($1, 'task', $2, 'topic', 'pending')",
            &[&unit.id, &to_i64(unit.seq)],
        )
        .await
        .map_err(|e| self.err(context, &e))?;
        tx.commit().await.map_err(|e| self.err(context, &e))?;
        Ok(Some(unit))
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn claim_next(&self, stage: Stage, limit: u32, held: &[UnitId]) -> Result<Vec<Unit>, PortError> {
        let context = format!("claiming work at {stage}");
        let mut client = self.client(&context).await?;
        let tx = client.transaction().await.map_err(|e| self.err(&context, &e))?;
        // Topics are settled in creation order: only the oldest pending one is ever claimable,
        // and only while no live lease holds it.
        let picked = if stage == Stage::Topic {
            "SELECT id, claim, lease_until FROM units WHERE kind = 'task' AND stage = $1 AND status = 'pending' \
             ORDER BY seq LIMIT 1 FOR UPDATE"
        } else {
            "SELECT id, claim, lease_until FROM units WHERE stage = $1 AND status = 'pending' \
             AND (claim IS NULL OR lease_until < now()) AND id <> ALL($5::TEXT[]) \
             ORDER BY CASE kind WHEN 'task' THEN 0 ELSE 1 END, seq, id LIMIT $2 FOR UPDATE SKIP LOCKED"
        };
        let limit = i64::from(if stage == Stage::Topic { 1 } else { limit });
        let rows = tx
            .query(
                &format!(
                    "WITH picked AS ({picked}) \
                     UPDATE units u SET claim = $3, lease_until = now() + make_interval(secs => $4), updated_at = now() \
                     FROM picked WHERE u.id = picked.id AND (picked.claim IS NULL OR picked.lease_until < now()) \
                     AND picked.id <> ALL($5::TEXT[]) AND $2::BIGINT > 0 RETURNING {UNIT_COLUMNS}, picked.claim"
                ),
                &[&stage.as_str(), &limit, &&*self.session, &self.lease.as_secs_f64(), &held],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        let mut units = Vec::with_capacity(rows.len());
        for row in &rows {
            let unit = unit_from_row(row).map_err(|e| PortError::Permanent(format!("store: {context}: {e}")))?;
            self.record_claim(&tx, &unit.id, stage, row.get::<_, Option<&str>>(9), &context).await?;
            units.push(unit);
        }
        tx.commit().await.map_err(|e| self.err(&context, &e))?;
        Ok(units)
    }

    async fn pending_count(&self) -> Result<u64, PortError> {
        let context = "counting pending units";
        let client = self.client(context).await?;
        let row = client.query_one("SELECT COUNT(*) FROM units WHERE status = 'pending'", &[]).await.map_err(|e| self.err(context, &e))?;
        Ok(to_u64(row.get(0)))
    }

    async fn put_artefact(&self, unit: &str, kind: ArtefactKind, bytes: &[u8]) -> Result<(), PortError> {
        let context = format!("keeping the {} of {unit}", kind.as_str());
        let digest = gymforge_actors::digest::sha256_hex(bytes);
        let mut client = self.client(&context).await?;
        let tx = client.transaction().await.map_err(|e| self.err(&context, &e))?;
        if self.lock_unit(&tx, unit, Some(kind.made_by()), &context).await?.is_none() {
            return Err(PortError::Permanent(format!("store: {context}: no such unit")));
        }
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        let new = tx
            .execute(
                "INSERT INTO blobs (sha256, size, chunks) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
                &[&digest, &to_i64(bytes.len() as u64), &i32::try_from(chunks.len()).unwrap_or(i32::MAX)],
            )
            .await
            .map_err(|e| self.err(&context, &e))?;
        if new == 1 {
            for (idx, chunk) in chunks.iter().enumerate() {
                tx.execute(
                    "INSERT INTO blob_chunks (sha256, idx, data) VALUES ($1, $2, $3)",
                    &[&digest, &i32::try_from(idx).unwrap_or(i32::MAX), chunk],
                )
                .await
                .map_err(|e| self.err(&context, &e))?;
            }
        }
        tx.execute(
            "INSERT INTO artefacts (unit, kind, sha256) VALUES ($1, $2, $3) \
             ON CONFLICT (unit, kind) DO UPDATE SET sha256 = excluded.sha256, created_at = now()",
            &[&unit, &kind.as_str(), &digest],
        )
        .await
        .map_err(|e| self.err(&context, &e))?;
        tx.commit().await.map_err(|e| self.err(&context, &e))
    }

    async fn artefact_digest(&self, unit: &str, kind: ArtefactKind) -> Result<Option<String>, PortError> {
        let context = format!("looking up the {} of {unit}", kind.as_str());
        let client = self.client(&context).await?;
        let row = client
            .query_opt("SELECT sha256 FROM artefacts WHERE unit = $1 AND kind = $2", &[&unit, &kind.as_str()])
            .await
            .map_err(|e| self.err(&context, &e))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn artefact(&self, unit: &str, kind: ArtefactKind) -> Result<Option<Vec<u8>>, PortError> {
        let context = format!("reading the {} of {unit}", kind.as_str());
        let client = self.client(&context).await?;
        let Some(row) = client
            .query_opt(
                "SELECT b.sha256, b.size, b.chunks FROM artefacts a JOIN blobs b ON b.sha256 = a.sha256 \
                 WHERE a.unit = $1 AND a.kind = $2",
                &[&unit, &kind.as_str()],
            )
            .await
            .map_err(|e| self.err(&context, &e))?
        else {
            return Ok(None);
        };
        let (digest, size, chunks): (String, i64, i32) = (row.get(0), row.get(1), row.get(2));
        let rows = client
            .query("SELECT data FROM blob_chunks WHERE sha256 = $1 ORDER BY idx", &[&digest])
            .await
            .map_err(|e| self.err(&context, &e))?;
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for row in &rows {
            bytes.extend_from_slice(row.get::<_, &[u8]>(0));
        }
        let actual = gymforge_actors::digest::sha256_hex(&bytes);
        if rows.len() != usize::try_from(chunks).unwrap_or(0) || to_i64(bytes.len() as u64) != size || actual != digest {
            return Err(PortError::Permanent(format!(
                "store {}: {context}: the blob is corrupt ({} of {chunks} chunks, {} of {size} bytes, sha256 {actual}, expected {digest})",
                self.target.display(),
                rows.len(),
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_user_host_port_and_database_and_refuse_a_password() {
        let t = PgTarget::parse("postgres://gf@db.internal:6543/batch").unwrap();
        assert_eq!(t, PgTarget { user: "gf".into(), host: "db.internal".into(), port: 6543, dbname: "batch".into() });
        assert_eq!(t.display(), "gf@db.internal:6543/batch");
        let t = PgTarget::parse("postgresql://127.0.0.1").unwrap();
        assert_eq!((t.user.as_str(), t.port, t.dbname.as_str()), ("postgres", 5432, "gymforge"));
        let err = PgTarget::parse("postgres://gf:hunter2@db/batch").unwrap_err().to_string();
        assert!(err.contains("GYMFORGE_STORE_PASSWORD") && !err.contains("hunter2"), "{err}");
        assert!(PgTarget::parse("mysql://db").is_err());
        assert!(PgTarget::parse("postgres://db:port/x").unwrap_err().to_string().contains("port"));
    }
}
