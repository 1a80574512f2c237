//! The embedded store: the pipeline state in one SQLite file (units of work, stage results, LLM
//! usage, events and run metadata), for one process.
//!
//! [`SqliteStore`] implements the pipeline's [`Store`] port. The database runs in WAL mode with
//! `synchronous=NORMAL`: every method's transaction is committed to the write-ahead log when it
//! returns, so it survives a `SIGKILL` of the process; an operating-system crash or power cut
//! can at worst roll back the last few commits, never corrupt the file. (`FULL` would also
//! cover power cuts at the price of an fsync per call, about twenty times slower.)
//!
//! Completing a stage is a single transaction that stores the result and moves the unit on
//! together, and it refuses to complete a stage the unit is not waiting at: a stage result can
//! never be recorded twice. Reopening the file resumes exactly where the previous process
//! stopped.
//!
//! The schema version lives in SQLite's `user_version`; a file written by a newer schema is
//! refused rather than misread.
//!
//! The port's methods are async: each runs its statement on tokio's blocking threads, so the
//! actors awaiting it never hold up a runtime thread. The same operations are inherent,
//! synchronous methods for the command line and tests (inherent methods win over the trait's).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use gymforge_actors::model::{DropReason, Stage, StageResult, Unit, UnitId, UnitKind, UnitStatus};
use gymforge_actors::ports::{Event, EventKind, PortError, Store, TaskPlan, Usage, UsageRow};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{parse_payload, to_i64, to_u64};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Current time as SQLite renders it: UTC, ISO 8601, millisecond precision.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS units (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    parent      TEXT,
    stage       TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    drop_reason TEXT,
    drop_detail TEXT,
    claim       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS units_order ON units (kind, seq);
CREATE TABLE IF NOT EXISTS stage_results (
    unit       TEXT NOT NULL,
    stage      TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (unit, stage)
);
CREATE INDEX IF NOT EXISTS stage_results_stage ON stage_results (stage);
CREATE TABLE IF NOT EXISTS usage (
    unit          TEXT NOT NULL,
    stage         TEXT NOT NULL,
    endpoint      TEXT NOT NULL DEFAULT '',
    model         TEXT NOT NULL,
    calls         INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind   TEXT NOT NULL,
    unit   TEXT NOT NULL,
    stage  TEXT NOT NULL,
    detail TEXT NOT NULL,
    at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    unit    TEXT NOT NULL,
    stage   TEXT NOT NULL,
    session TEXT NOT NULL,
    at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
";

fn insert_unit(conn: &Connection, unit: &Unit) -> Result<(), PortError> {
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO units \
             (id, kind, seq, parent, stage, status, attempts, drop_reason, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, {NOW}, {NOW})"
        ),
        params![
            unit.id,
            unit.kind.as_str(),
            to_i64(unit.seq),
            unit.parent,
            unit.stage.as_str(),
            unit.status.as_str(),
            unit.attempts,
            unit.drop_reason.map(DropReason::as_str),
        ],
    )
    .map_err(|e| db_err(&format!("inserting unit {}", unit.id), e))?;
    Ok(())
}

/// Orders units: task units before rollout units, then by creation sequence.
const UNIT_ORDER: &str = "CASE u.kind WHEN 'task' THEN 0 ELSE 1 END, u.seq, u.id";

/// The SQLite-backed [`Store`]. Clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// This process's claim token: claims with another token were made by an earlier process.
    session: Arc<str>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, creating its parent directories.
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create the store directory {}", parent.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("cannot open the store database {}", path.display()))?;
        Self::init(conn).with_context(|| format!("cannot initialise the store {}", path.display()))
    }

    fn init(mut conn: Connection) -> anyhow::Result<SqliteStore> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("the filesystem does not support SQLite's WAL mode (journal_mode is {mode})");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;

        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "the store has schema version {version}, newer than this gymforge understands \
                 ({SCHEMA_VERSION}); use a newer gymforge or a fresh output directory"
            );
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(SCHEMA)?;
            if version == 1 {
                // Version 2 records which configured endpoint answered each call.
                tx.execute_batch("ALTER TABLE usage ADD COLUMN endpoint TEXT NOT NULL DEFAULT ''")?;
            }
            if (1..=2).contains(&version) {
                // Version 3 claims a unit before work starts on it (and keeps the history).
                tx.execute_batch("ALTER TABLE units ADD COLUMN claim TEXT")?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)), session: format!("{}-{nanos:x}", std::process::id()).into() })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (an
        // uncommitted transaction rolls back when dropped), so the connection stays usable.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When a unit was created, in milliseconds since the Unix epoch.
    pub fn unit_created_unix_ms(&self, unit: &str) -> anyhow::Result<Option<u64>> {
        let conn = self.lock();
        let ms: Option<i64> = conn
            .query_row("SELECT CAST((julianday(created_at) - 2440587.5) * 86400000.0 AS INTEGER) FROM units WHERE id = ?1", [unit], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(ms.map(|ms| ms.max(0) as u64))
    }

    /// `(unit, stage, session)` of every claim ever made, oldest first.
    pub fn claim_history(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT unit, stage, session FROM claims ORDER BY id")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// `(unit, stage, created_at)` of every stored stage result, in unit order then stage.
    pub fn stage_result_times(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT r.unit, r.stage, r.created_at FROM stage_results r \
             LEFT JOIN units u ON u.id = r.unit ORDER BY {UNIT_ORDER}, r.created_at, r.stage"
        ))?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions

fn bad_column(index: usize, what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, format!("unknown {what} {value:?} in the store").into())
}

fn parse_kind(index: usize, s: &str) -> rusqlite::Result<UnitKind> {
    UnitKind::parse(s).ok_or_else(|| bad_column(index, "unit kind", s))
}

fn parse_status(index: usize, s: &str) -> rusqlite::Result<UnitStatus> {
    UnitStatus::parse(s).ok_or_else(|| bad_column(index, "unit status", s))
}

fn parse_stage(index: usize, s: &str) -> rusqlite::Result<Stage> {
    Stage::parse(s).ok_or_else(|| bad_column(index, "stage", s))
}

/// Classifies a database error: lock contention and full disks may clear, the rest will not.
fn db_err(context: &str, err: rusqlite::Error) -> PortError {
    let transient = matches!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull));
    let msg = format!("store: {context}: {err}");
    if transient { PortError::Transient(msg) } else { PortError::Permanent(msg) }
}

fn unit_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Unit> {
    let kind: String = row.get(1)?;
    let stage: String = row.get(4)?;
    let status: String = row.get(5)?;
    let attempts: i64 = row.get(6)?;
    Ok(Unit {
        id: row.get(0)?,
        kind: parse_kind(1, &kind)?,
        seq: to_u64(row.get(2)?),
        parent: row.get(3)?,
        stage: parse_stage(4, &stage)?,
        status: parse_status(5, &status)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        drop_reason: row
            .get::<_, Option<String>>(7)?
            .map(|r| DropReason::parse(&r).ok_or_else(|| bad_column(7, "drop reason", &r)))
            .transpose()?,
        drop_detail: row.get(8)?,
    })
}

// ---------------------------------------------------------------------------------------------
// The operations

impl SqliteStore {
    pub fn units(&self) -> Result<Vec<Unit>, PortError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT u.id, u.kind, u.seq, u.parent, u.stage, u.status, u.attempts, \
                 u.drop_reason, u.drop_detail FROM units u ORDER BY {UNIT_ORDER}"
            ))
            .map_err(|e| db_err("listing units", e))?;
        let rows = stmt
            .query_map([], unit_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| db_err("listing units", e))?;
        Ok(rows)
    }

    pub fn insert_unit(&self, unit: &Unit) -> Result<(), PortError> {
        insert_unit(&self.lock(), unit)
    }

    /// [`Store::create_task_unit`]: counted and inserted under the one connection's lock.
    pub fn create_task_unit(&self, plan: &TaskPlan) -> Result<Option<Unit>, PortError> {
        let conn = self.lock();
        let (created, accepted, pending): (i64, i64, i64) = conn
            .query_row(
                "SELECT COALESCE(MAX(seq) + 1, 0), COUNT(*) FILTER (WHERE status = 'done'),                  COUNT(*) FILTER (WHERE status = 'pending') FROM units WHERE kind = 'task'",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(|e| db_err("counting task units", e))?;
        let created = to_u64(created);
        if !plan.wants(created, to_u64(accepted), to_u64(pending), 1) {
            return Ok(None);
        }
        let unit = Unit::pending(gymforge_actors::supervisor::task_unit_id(created), UnitKind::Task, created, None, Stage::Topic);
        insert_unit(&conn, &unit)?;
        Ok(Some(unit))
    }

    pub fn result(&self, unit: &str, stage: Stage) -> Result<Option<StageResult>, PortError> {
        let conn = self.lock();
        let text: Option<String> = conn
            .query_row("SELECT payload FROM stage_results WHERE unit = ?1 AND stage = ?2", params![unit, stage.as_str()], |row| row.get(0))
            .optional()
            .map_err(|e| db_err(&format!("reading the {stage} result of {unit}"), e))?;
        text.map(|t| parse_payload(unit, stage, &t)).transpose()
    }

    pub fn results(&self, stage: Stage) -> Result<Vec<(UnitId, StageResult)>, PortError> {
        let rows: Vec<(String, String)> = {
            let conn = self.lock();
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT r.unit, r.payload FROM stage_results r \
                     LEFT JOIN units u ON u.id = r.unit \
                     WHERE r.stage = ?1 ORDER BY {UNIT_ORDER}, r.unit"
                ))
                .map_err(|e| db_err(&format!("listing {stage} results"), e))?;
            stmt.query_map(params![stage.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| db_err(&format!("listing {stage} results"), e))?
        };
        rows.into_iter()
            .map(|(unit, text)| {
                let value = parse_payload(&unit, stage, &text)?;
                Ok((unit, value))
            })
            .collect()
    }

    pub fn complete_stage(&self, unit: &str, result: &StageResult, next: Option<Stage>) -> Result<(), PortError> {
        let stage = result.stage();
        let context = format!("completing {stage} of {unit}");
        let payload = result.to_json().to_string();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| db_err(&context, e))?;
        let current: Option<(String, String)> = tx
            .query_row("SELECT stage, status FROM units WHERE id = ?1", params![unit], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
            .map_err(|e| db_err(&context, e))?;
        match current {
            None => {
                return Err(PortError::Permanent(format!("store: {context}: no such unit")));
            }
            Some((at, status)) if at != stage.as_str() || status != "pending" => {
                return Err(PortError::Permanent(format!("store: {context}: the unit is {status} at stage {at}, not pending at {stage}")));
            }
            Some(_) => {}
        }
        tx.execute(
            &format!(
                "INSERT INTO stage_results (unit, stage, payload, created_at) \
                 VALUES (?1, ?2, ?3, {NOW}) \
                 ON CONFLICT (unit, stage) DO UPDATE SET \
                 payload = excluded.payload, created_at = excluded.created_at"
            ),
            params![unit, stage.as_str(), payload],
        )
        .map_err(|e| db_err(&context, e))?;
        match next {
            Some(next) => tx.execute(
                &format!("UPDATE units SET stage = ?2, attempts = 0, claim = NULL, updated_at = {NOW} WHERE id = ?1"),
                params![unit, next.as_str()],
            ),
            None => tx.execute(
                &format!(
                    "UPDATE units SET status = 'done', attempts = 0, claim = NULL, updated_at = {NOW} \
                     WHERE id = ?1"
                ),
                params![unit],
            ),
        }
        .map_err(|e| db_err(&context, e))?;
        tx.commit().map_err(|e| db_err(&context, e))
    }

    pub fn drop_unit(&self, unit: &str, reason: DropReason, detail: &str) -> Result<(), PortError> {
        let context = format!("dropping {unit}");
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| db_err(&context, e))?;
        let status: Option<String> = tx
            .query_row("SELECT status FROM units WHERE id = ?1", params![unit], |row| row.get(0))
            .optional()
            .map_err(|e| db_err(&context, e))?;
        match status.as_deref() {
            None => return Err(PortError::Permanent(format!("store: {context}: no such unit"))),
            // Dropping twice keeps the first verdict.
            Some("dropped") => return Ok(()),
            // Finished work is never thrown away: a late drop (say, after a worker crashed
            // between committing its result and reporting it) leaves the unit done.
            Some("done") => {
                tracing::warn!(unit, %reason, "not dropping a unit that already finished");
                return Ok(());
            }
            _ => {}
        }
        tx.execute(
            &format!(
                "UPDATE units SET status = 'dropped', drop_reason = ?2, drop_detail = ?3, \
                 claim = NULL, updated_at = {NOW} WHERE id = ?1"
            ),
            params![unit, reason.as_str(), detail],
        )
        .map_err(|e| db_err(&context, e))?;
        tx.commit().map_err(|e| db_err(&context, e))
    }

    pub fn record_attempt(&self, unit: &str) -> Result<u32, PortError> {
        let context = format!("counting an attempt of {unit}");
        let conn = self.lock();
        let attempts: Option<i64> = conn
            .query_row(
                &format!(
                    "UPDATE units SET attempts = attempts + 1, claim = NULL, updated_at = {NOW} \
                     WHERE id = ?1 RETURNING attempts"
                ),
                params![unit],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| db_err(&context, e))?;
        match attempts {
            Some(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            None => Err(PortError::Permanent(format!("store: {context}: no such unit"))),
        }
    }

    pub fn claim(&self, unit: &str, stage: Stage) -> Result<bool, PortError> {
        let context = format!("claiming {unit} at {stage}");
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| db_err(&context, e))?;
        let claimed = tx
            .execute(
                &format!(
                    "UPDATE units SET claim = ?3, updated_at = {NOW} WHERE id = ?1 AND stage = ?2 \
                     AND status = 'pending' AND (claim IS NULL OR claim != ?3)"
                ),
                params![unit, stage.as_str(), &*self.session],
            )
            .map_err(|e| db_err(&context, e))?;
        if claimed == 1 {
            tx.execute(
                &format!("INSERT INTO claims (unit, stage, session, at) VALUES (?1, ?2, ?3, {NOW})"),
                params![unit, stage.as_str(), &*self.session],
            )
            .map_err(|e| db_err(&context, e))?;
        }
        tx.commit().map_err(|e| db_err(&context, e))?;
        Ok(claimed == 1)
    }

    pub fn release(&self, unit: &str) -> Result<(), PortError> {
        let conn = self.lock();
        conn.execute("UPDATE units SET claim = NULL WHERE id = ?1", params![unit]).map_err(|e| db_err(&format!("releasing {unit}"), e))?;
        Ok(())
    }

    pub fn add_usage(&self, unit: &str, stage: Stage, endpoint: &str, model: &str, usage: &Usage) -> Result<(), PortError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO usage (unit, stage, endpoint, model, calls, input_tokens, output_tokens, cost_usd) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                unit,
                stage.as_str(),
                endpoint,
                model,
                to_i64(usage.calls),
                to_i64(usage.input_tokens),
                to_i64(usage.output_tokens),
                usage.cost_usd,
            ],
        )
        .map_err(|e| db_err(&format!("recording usage of {unit}"), e))?;
        Ok(())
    }

    pub fn usage(&self) -> Result<Vec<UsageRow>, PortError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT unit, stage, endpoint, model, SUM(calls), SUM(input_tokens), \
                 SUM(output_tokens), SUM(cost_usd) FROM usage GROUP BY unit, stage, endpoint, model",
            )
            .map_err(|e| db_err("summing usage", e))?;
        let mut rows = stmt
            .query_map([], |row| {
                let stage: String = row.get(1)?;
                Ok(UsageRow {
                    unit: row.get(0)?,
                    stage: parse_stage(1, &stage)?,
                    endpoint: row.get(2)?,
                    model: row.get(3)?,
                    usage: Usage {
                        calls: to_u64(row.get(4)?),
                        input_tokens: to_u64(row.get(5)?),
                        output_tokens: to_u64(row.get(6)?),
                        cost_usd: row.get(7)?,
                    },
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| db_err("summing usage", e))?;
        rows.sort_by(|a, b| (&a.unit, a.stage, &a.endpoint, &a.model).cmp(&(&b.unit, b.stage, &b.endpoint, &b.model)));
        Ok(rows)
    }

    pub fn add_event(&self, event: &Event) -> Result<(), PortError> {
        let conn = self.lock();
        conn.execute(
            &format!("INSERT INTO events (kind, unit, stage, detail, at) VALUES (?1, ?2, ?3, ?4, {NOW})"),
            params![event.kind.as_str(), event.unit, event.stage.as_str(), event.detail],
        )
        .map_err(|e| db_err(&format!("recording a {} event", event.kind), e))?;
        Ok(())
    }

    pub fn events(&self) -> Result<Vec<Event>, PortError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT kind, unit, stage, detail FROM events ORDER BY id").map_err(|e| db_err("listing events", e))?;
        let rows = stmt
            .query_map([], |row| {
                let kind: String = row.get(0)?;
                let stage: String = row.get(2)?;
                Ok(Event {
                    kind: EventKind::parse(&kind).ok_or_else(|| bad_column(0, "event kind", &kind))?,
                    unit: row.get(1)?,
                    stage: parse_stage(2, &stage)?,
                    detail: row.get(3)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| db_err("listing events", e))?;
        Ok(rows)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, PortError> {
        let conn = self.lock();
        conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |row| row.get(0))
            .optional()
            .map_err(|e| db_err(&format!("reading meta {key}"), e))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), PortError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map_err(|e| db_err(&format!("writing meta {key}"), e))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The port

impl SqliteStore {
    /// Runs one operation on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&SqliteStore) -> Result<T, PortError> + Send + 'static,
    ) -> Result<T, PortError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|e| PortError::Permanent(format!("store: the operation stopped: {e}")))?
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn units(&self) -> Result<Vec<Unit>, PortError> {
        self.blocking(|s| s.units()).await
    }

    async fn insert_unit(&self, unit: &Unit) -> Result<(), PortError> {
        let unit = unit.clone();
        self.blocking(move |s| s.insert_unit(&unit)).await
    }

    async fn create_task_unit(&self, plan: &TaskPlan) -> Result<Option<Unit>, PortError> {
        let plan = *plan;
        self.blocking(move |s| s.create_task_unit(&plan)).await
    }

    async fn result(&self, unit: &str, stage: Stage) -> Result<Option<StageResult>, PortError> {
        let unit = unit.to_string();
        self.blocking(move |s| s.result(&unit, stage)).await
    }

    async fn results(&self, stage: Stage) -> Result<Vec<(UnitId, StageResult)>, PortError> {
        self.blocking(move |s| s.results(stage)).await
    }

    async fn complete_stage(&self, unit: &str, result: &StageResult, next: Option<Stage>) -> Result<(), PortError> {
        let (unit, result) = (unit.to_string(), result.clone());
        self.blocking(move |s| s.complete_stage(&unit, &result, next)).await
    }

    async fn drop_unit(&self, unit: &str, reason: DropReason, detail: &str) -> Result<(), PortError> {
        let (unit, detail) = (unit.to_string(), detail.to_string());
        self.blocking(move |s| s.drop_unit(&unit, reason, &detail)).await
    }

    async fn record_attempt(&self, unit: &str) -> Result<u32, PortError> {
        let unit = unit.to_string();
        self.blocking(move |s| s.record_attempt(&unit)).await
    }

    async fn claim(&self, unit: &str, stage: Stage) -> Result<bool, PortError> {
        let unit = unit.to_string();
        self.blocking(move |s| s.claim(&unit, stage)).await
    }

    async fn release(&self, unit: &str) -> Result<(), PortError> {
        let unit = unit.to_string();
        self.blocking(move |s| s.release(&unit)).await
    }

    async fn add_usage(&self, unit: &str, stage: Stage, endpoint: &str, model: &str, usage: &Usage) -> Result<(), PortError> {
        let (unit, endpoint, model, usage) = (unit.to_string(), endpoint.to_string(), model.to_string(), usage.clone());
        self.blocking(move |s| s.add_usage(&unit, stage, &endpoint, &model, &usage)).await
    }

    async fn usage(&self) -> Result<Vec<UsageRow>, PortError> {
        self.blocking(|s| s.usage()).await
    }

    async fn add_event(&self, event: &Event) -> Result<(), PortError> {
        let event = event.clone();
        self.blocking(move |s| s.add_event(&event)).await
    }

    async fn events(&self) -> Result<Vec<Event>, PortError> {
        self.blocking(|s| s.events()).await
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, PortError> {
        let key = key.to_string();
        self.blocking(move |s| s.meta(&key)).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), PortError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.blocking(move |s| s.set_meta(&key, &value)).await
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(id: &str, seq: u64) -> Unit {
        Unit::pending(id.to_string(), UnitKind::Task, seq, None, Stage::Topic)
    }

    fn rollout(id: &str, seq: u64, parent: &str) -> Unit {
        Unit {
            id: id.to_string(),
            kind: UnitKind::Rollout,
            seq,
            parent: Some(parent.to_string()),
            stage: Stage::Rollout,
            status: UnitStatus::Pending,
            attempts: 0,
            drop_reason: None,
            drop_detail: None,
        }
    }

    /// A result of `stage` that carries `tag` (the tests need only tell results apart).
    fn res(stage: Stage, tag: serde_json::Value) -> StageResult {
        use gymforge_actors::model::{DatasetChoice, DatasetMeta, Direction, ExportedTask, TaskBundle, TopicIdea, TopicSample};
        let tag = tag.to_string();
        match stage {
            Stage::Topic => {
                let sample = TopicSample { domain: "d".into(), task_type: "t".into(), modality: "m".into(), twist: "w".into() };
                TopicIdea { sample, title: tag, idea: "an idea".into() }.into()
            }
            Stage::Dataset => {
                let meta = DatasetMeta {
                    id: tag,
                    revision: "0".repeat(40),
                    config: "default".into(),
                    splits: vec!["train".into()],
                    features: vec![],
                    num_rows: Default::default(),
                    num_bytes_parquet: 0,
                    description: String::new(),
                    parquet_files: vec![],
                };
                DatasetChoice { meta, rejected: vec![], staged: vec![] }.into()
            }
            Stage::Codegen => TaskBundle {
                name: "t".into(),
                title: tag,
                description: String::new(),
                dataset_description: String::new(),
                priority_metric: "accuracy".into(),
                direction: Direction::Maximize,
                metrics: vec!["accuracy".into()],
                target_column: "y".into(),
                training_timeout: 60,
                files: Default::default(),
            }
            .into(),
            Stage::Export => ExportedTask { task_id: tag }.into(),
            Stage::Debug | Stage::Rollout => unreachable!("not needed here"),
        }
    }

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("nested/dir/state.db")).unwrap();
        (dir, store)
    }

    fn unit(store: &SqliteStore, id: &str) -> Unit {
        store.units().unwrap().into_iter().find(|u| u.id == id).unwrap()
    }

    #[test]
    fn units_roundtrip_in_kind_then_seq_order() {
        let (_dir, store) = fresh();
        store.insert_unit(&rollout("t0001.r0", 0, "t0001")).unwrap();
        store.insert_unit(&task("t0010", 10)).unwrap();
        store.insert_unit(&task("t0002", 2)).unwrap();
        let mut odd = task("t0003", 3);
        odd.stage = Stage::Codegen;
        odd.attempts = 2;
        store.insert_unit(&odd).unwrap();

        let units = store.units().unwrap();
        let ids: Vec<_> = units.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["t0002", "t0003", "t0010", "t0001.r0"]);
        assert_eq!(units[1], odd);
        assert_eq!(units[3], rollout("t0001.r0", 0, "t0001"));

        // INSERT OR IGNORE: a second insert does not overwrite progress.
        store.insert_unit(&task("t0003", 3)).unwrap();
        assert_eq!(unit(&store, "t0003"), odd);
        assert_eq!(store.units().unwrap().len(), 4);
    }

    #[test]
    fn results_roundtrip_and_order() {
        let (_dir, store) = fresh();
        for (id, seq) in [("t0002", 2), ("t0001", 1)] {
            store.insert_unit(&task(id, seq)).unwrap();
        }
        assert_eq!(store.result("t0001", Stage::Topic).unwrap(), None);
        store.complete_stage("t0002", &res(Stage::Topic, json!({"title": "b"})), Some(Stage::Dataset)).unwrap();
        store.complete_stage("t0001", &res(Stage::Topic, json!({"title": "a"})), Some(Stage::Dataset)).unwrap();
        assert_eq!(store.result("t0001", Stage::Topic).unwrap(), Some(res(Stage::Topic, json!({"title": "a"}))));
        let results = store.results(Stage::Topic).unwrap();
        assert_eq!(
            results,
            vec![
                ("t0001".to_string(), res(Stage::Topic, json!({"title": "a"}))),
                ("t0002".to_string(), res(Stage::Topic, json!({"title": "b"}))),
            ]
        );
        assert!(store.results(Stage::Dataset).unwrap().is_empty());
    }

    #[test]
    fn complete_stage_moves_unit_and_resets_attempts() {
        let (_dir, store) = fresh();
        store.insert_unit(&task("t0001", 1)).unwrap();
        assert_eq!(store.record_attempt("t0001").unwrap(), 1);
        assert_eq!(store.record_attempt("t0001").unwrap(), 2);
        assert_eq!(unit(&store, "t0001").attempts, 2);

        store.complete_stage("t0001", &res(Stage::Topic, json!(1)), Some(Stage::Dataset)).unwrap();
        let u = unit(&store, "t0001");
        assert_eq!((u.stage, u.status, u.attempts), (Stage::Dataset, UnitStatus::Pending, 0));

        // The last stage marks the unit done and leaves it at that stage.
        let mut at_export = task("t0002", 2);
        at_export.stage = Stage::Export;
        store.insert_unit(&at_export).unwrap();
        store.record_attempt("t0002").unwrap();
        store.complete_stage("t0002", &res(Stage::Export, json!({})), None).unwrap();
        let u = unit(&store, "t0002");
        assert_eq!((u.stage, u.status, u.attempts), (Stage::Export, UnitStatus::Done, 0));
    }

    #[test]
    fn complete_stage_refuses_twice_and_wrong_stage_without_side_effects() {
        let (_dir, store) = fresh();
        store.insert_unit(&task("t0001", 1)).unwrap();
        store.complete_stage("t0001", &res(Stage::Topic, json!("first")), Some(Stage::Dataset)).unwrap();
        let times = store.stage_result_times().unwrap();

        // Same stage again: refused, the first result and the unit's position are untouched.
        let err = store.complete_stage("t0001", &res(Stage::Topic, json!("second")), Some(Stage::Dataset)).unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
        assert_eq!(store.result("t0001", Stage::Topic).unwrap(), Some(res(Stage::Topic, json!("first"))));
        assert_eq!(store.stage_result_times().unwrap(), times);

        // A stage the unit has not reached: refused, nothing stored.
        let err = store.complete_stage("t0001", &res(Stage::Codegen, json!("x")), Some(Stage::Debug)).unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)));
        assert_eq!(store.result("t0001", Stage::Codegen).unwrap(), None);
        assert_eq!(unit(&store, "t0001").stage, Stage::Dataset);

        // Unknown unit.
        let err = store.complete_stage("nope", &res(Stage::Topic, json!(1)), None).unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)));
        assert!(store.result("nope", Stage::Topic).unwrap().is_none());

        // A done unit cannot be completed again.
        store.complete_stage("t0001", &res(Stage::Dataset, json!(2)), None).unwrap();
        let err = store.complete_stage("t0001", &res(Stage::Dataset, json!(3)), None).unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)));
        assert_eq!(store.result("t0001", Stage::Dataset).unwrap(), Some(res(Stage::Dataset, json!(2))));
    }

    #[test]
    fn dropped_units_keep_their_reason_and_cannot_advance() {
        let (_dir, store) = fresh();
        store.insert_unit(&task("t0001", 1)).unwrap();
        store.drop_unit("t0001", DropReason::NoVerifiedDataset, "no dataset fits").unwrap();
        let u = unit(&store, "t0001");
        assert_eq!(u.status, UnitStatus::Dropped);
        assert_eq!(u.drop_reason, Some(DropReason::NoVerifiedDataset));
        assert_eq!(u.stage, Stage::Topic);

        // A second drop keeps the first verdict.
        store.drop_unit("t0001", DropReason::Timeout, "").unwrap();
        assert_eq!(unit(&store, "t0001").drop_reason, Some(DropReason::NoVerifiedDataset));

        let err = store.complete_stage("t0001", &res(Stage::Topic, json!(1)), Some(Stage::Dataset)).unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)));
        assert!(store.result("t0001", Stage::Topic).unwrap().is_none());

        assert!(matches!(store.drop_unit("missing", DropReason::LlmEmpty, "y"), Err(PortError::Permanent(_))));
        store.insert_unit(&task("t0002", 2)).unwrap();
        store.complete_stage("t0002", &res(Stage::Topic, json!(1)), None).unwrap();
        store.drop_unit("t0002", DropReason::LlmEmpty, "y").unwrap();
        let u = unit(&store, "t0002");
        assert_eq!((u.status, u.drop_reason), (UnitStatus::Done, None));
    }

    #[test]
    fn attempts_count_per_stage() {
        let (_dir, store) = fresh();
        store.insert_unit(&task("t0001", 1)).unwrap();
        for n in 1..=3 {
            assert_eq!(store.record_attempt("t0001").unwrap(), n);
        }
        store.complete_stage("t0001", &res(Stage::Topic, json!(1)), Some(Stage::Dataset)).unwrap();
        assert_eq!(store.record_attempt("t0001").unwrap(), 1);
        assert!(matches!(store.record_attempt("missing"), Err(PortError::Permanent(_))));
    }

    #[test]
    fn usage_sums_grouped_by_unit_stage_endpoint_and_model() {
        let (_dir, store) = fresh();
        let u = |calls, i, o, c| Usage { calls, input_tokens: i, output_tokens: o, cost_usd: c };
        store.add_usage("t1", Stage::Codegen, "main", "big", &u(1, 100, 10, 0.5)).unwrap();
        store.add_usage("t1", Stage::Codegen, "main", "big", &u(2, 200, 20, 0.25)).unwrap();
        store.add_usage("t1", Stage::Topic, "cheap", "small", &u(1, 5, 1, 0.0)).unwrap();
        store.add_usage("t2", Stage::Codegen, "cheap", "small", &u(1, 7, 3, 0.125)).unwrap();
        let row = |unit: &str, stage, endpoint: &str, model: &str, usage| UsageRow {
            unit: unit.into(),
            stage,
            endpoint: endpoint.into(),
            model: model.into(),
            usage,
        };
        assert_eq!(
            store.usage().unwrap(),
            vec![
                row("t1", Stage::Topic, "cheap", "small", u(1, 5, 1, 0.0)),
                row("t1", Stage::Codegen, "main", "big", u(3, 300, 30, 0.75)),
                row("t2", Stage::Codegen, "cheap", "small", u(1, 7, 3, 0.125)),
            ]
        );
    }

    #[test]
    fn events_and_meta() {
        let (_dir, store) = fresh();
        assert_eq!(store.meta("run_id").unwrap(), None);
        store.set_meta("run_id", "a").unwrap();
        store.set_meta("run_id", "b").unwrap();
        assert_eq!(store.meta("run_id").unwrap().as_deref(), Some("b"));

        let ev = |kind: EventKind, unit: &str| Event { kind, unit: unit.into(), stage: Stage::Debug, detail: format!("{kind} of {unit}") };
        store.add_event(&ev(EventKind::Retry, "t1")).unwrap();
        store.add_event(&ev(EventKind::WorkerRestart, "t2")).unwrap();
        store.add_event(&ev(EventKind::Retry, "t1")).unwrap();
        assert_eq!(
            store.events().unwrap(),
            vec![ev(EventKind::Retry, "t1"), ev(EventKind::WorkerRestart, "t2"), ev(EventKind::Retry, "t1")]
        );
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let times = {
            let store = SqliteStore::open(&path).unwrap();
            store.insert_unit(&task("t0001", 1)).unwrap();
            store.insert_unit(&task("t0002", 2)).unwrap();
            store.complete_stage("t0001", &res(Stage::Topic, json!({"idea": 1})), Some(Stage::Dataset)).unwrap();
            store.drop_unit("t0002", DropReason::NearDuplicate, "near-duplicate idea").unwrap();
            store.record_attempt("t0001").unwrap();
            store.add_usage("t0001", Stage::Topic, "e", "m", &Usage { calls: 1, ..Usage::default() }).unwrap();
            store.set_meta("seed", "7").unwrap();
            store.stage_result_times().unwrap()
            // Dropped without any explicit close or checkpoint.
        };
        assert_eq!(times.len(), 1);
        assert_eq!((times[0].0.as_str(), times[0].1.as_str()), ("t0001", "topic"));

        let store = SqliteStore::open(&path).unwrap();
        // Resuming re-inserts the same units: ignored.
        store.insert_unit(&task("t0001", 1)).unwrap();
        store.insert_unit(&task("t0002", 2)).unwrap();
        let u1 = unit(&store, "t0001");
        assert_eq!((u1.stage, u1.status, u1.attempts), (Stage::Dataset, UnitStatus::Pending, 1));
        let u2 = unit(&store, "t0002");
        assert_eq!(u2.status, UnitStatus::Dropped);
        assert_eq!(store.result("t0001", Stage::Topic).unwrap(), Some(res(Stage::Topic, json!({"idea": 1}))));
        assert_eq!(store.usage().unwrap().len(), 1);
        assert_eq!(store.meta("seed").unwrap().as_deref(), Some("7"));
        assert_eq!(store.stage_result_times().unwrap(), times);
        // The finished stage cannot be redone after the restart either.
        assert!(store.complete_stage("t0001", &res(Stage::Topic, json!(2)), None).is_err());
    }

    /// Commits are on disk when a method returns: a process killed with SIGKILL right after
    /// loses nothing. The test re-runs itself as a child process that writes and then waits to
    /// be killed.
    #[test]
    fn commits_survive_sigkill() {
        const CHILD_ENV: &str = "GYMFORGE_STORE_SIGKILL_CHILD";
        if let Ok(path) = std::env::var(CHILD_ENV) {
            let store = SqliteStore::open(Path::new(&path)).unwrap();
            store.insert_unit(&task("t0001", 1)).unwrap();
            store.complete_stage("t0001", &res(Stage::Topic, json!({"k": 1})), Some(Stage::Dataset)).unwrap();
            store.add_usage("t0001", Stage::Topic, "e", "m", &Usage { calls: 1, ..Usage::default() }).unwrap();
            println!("READY");
            std::io::Write::flush(&mut std::io::stdout()).unwrap();
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let test_name = format!("{}::commits_survive_sigkill", module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest));
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test_name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let ready = stdout.lines().map_while(Result::ok).any(|line| line.contains("READY"));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(ready, "the child process never finished writing");

        let store = SqliteStore::open(&path).unwrap();
        let u = unit(&store, "t0001");
        assert_eq!((u.stage, u.status), (Stage::Dataset, UnitStatus::Pending));
        assert_eq!(store.result("t0001", Stage::Topic).unwrap(), Some(res(Stage::Topic, json!({"k": 1}))));
        assert_eq!(store.usage().unwrap().len(), 1);
    }

    #[test]
    fn schema_version_is_recorded_and_newer_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(format!("{err:#}").contains("newer"), "{err:#}");
    }

    #[test]
    fn concurrent_completions_record_each_stage_once() {
        let (_dir, store) = fresh();
        let store = Arc::new(store);
        store.insert_unit(&task("t0001", 1)).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || store.complete_stage("t0001", &res(Stage::Topic, json!(i)), Some(Stage::Dataset)).is_ok())
            })
            .collect();
        let ok = handles.into_iter().map(|h| h.join().unwrap()).filter(|&ok| ok);
        assert_eq!(ok.count(), 1);
        assert_eq!(store.stage_result_times().unwrap().len(), 1);
    }
}
