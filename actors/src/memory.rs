//! An in-memory [`Store`]: the port's contract without a database, for tests and benches of the
//! supervisor. Nothing survives the process; a real run uses the application's SQLite store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::model::{DropReason, Stage, StageResult, Unit, UnitId, UnitKind, UnitStatus};
use crate::ports::{Event, PortError, Store, TaskPlan, Usage, UsageRow};

#[derive(Default)]
struct Data {
    units: HashMap<UnitId, (Unit, bool)>,
    results: BTreeMap<(Stage, (bool, u64, UnitId)), StageResult>,
    usage: BTreeMap<(UnitId, Stage, String, String), Usage>,
    events: Vec<Event>,
    meta: HashMap<String, String>,
}

/// The [`Store`] port over maps behind one mutex.
#[derive(Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn no_such_unit(unit: &str) -> PortError {
    PortError::Permanent(format!("store: no such unit {unit}"))
}

/// Units in the store's order: tasks before rollouts, then by creation sequence.
fn order(unit: &Unit) -> (bool, u64, UnitId) {
    (unit.kind == UnitKind::Rollout, unit.seq, unit.id.clone())
}

#[async_trait]
impl Store for MemoryStore {
    async fn units(&self) -> Result<Vec<Unit>, PortError> {
        let mut units: Vec<Unit> = self.lock().units.values().map(|(u, _)| u.clone()).collect();
        units.sort_by_key(order);
        Ok(units)
    }

    async fn insert_unit(&self, unit: &Unit) -> Result<(), PortError> {
        self.lock().units.entry(unit.id.clone()).or_insert_with(|| (unit.clone(), false));
        Ok(())
    }

    async fn result(&self, unit: &str, stage: Stage) -> Result<Option<StageResult>, PortError> {
        let data = self.lock();
        let Some((u, _)) = data.units.get(unit) else { return Ok(None) };
        Ok(data.results.get(&(stage, order(u))).cloned())
    }

    async fn results(&self, stage: Stage) -> Result<Vec<(UnitId, StageResult)>, PortError> {
        let data = self.lock();
        Ok(data
            .results
            .range((stage, (false, 0, String::new()))..)
            .take_while(|((s, _), _)| *s == stage)
            .map(|((_, (_, _, id)), r)| (id.clone(), r.clone()))
            .collect())
    }

    async fn complete_stage(&self, unit: &str, result: &StageResult, next: Option<Stage>) -> Result<(), PortError> {
        let stage = result.stage();
        let mut data = self.lock();
        let (u, claimed) = data.units.get_mut(unit).ok_or_else(|| no_such_unit(unit))?;
        if u.stage != stage || u.status != UnitStatus::Pending {
            return Err(PortError::Permanent(format!(
                "store: completing {stage} of {unit}: the unit is {:?} at stage {}",
                u.status, u.stage
            )));
        }
        let key = (stage, order(u));
        match next {
            Some(next) => u.stage = next,
            None => u.status = UnitStatus::Done,
        }
        u.attempts = 0;
        *claimed = false;
        data.results.insert(key, result.clone());
        Ok(())
    }

    async fn drop_unit(&self, unit: &str, reason: DropReason, detail: &str) -> Result<(), PortError> {
        let mut data = self.lock();
        let (u, claimed) = data.units.get_mut(unit).ok_or_else(|| no_such_unit(unit))?;
        // As the SQLite store: the first verdict stays, and finished work is never dropped.
        if u.status == UnitStatus::Pending {
            u.status = UnitStatus::Dropped;
            u.drop_reason = Some(reason);
            u.drop_detail = Some(detail.to_string());
            *claimed = false;
        }
        Ok(())
    }

    async fn record_attempt(&self, unit: &str) -> Result<u32, PortError> {
        let mut data = self.lock();
        let (u, claimed) = data.units.get_mut(unit).ok_or_else(|| no_such_unit(unit))?;
        u.attempts += 1;
        *claimed = false;
        Ok(u.attempts)
    }

    async fn claim(&self, unit: &str, stage: Stage) -> Result<bool, PortError> {
        let mut data = self.lock();
        let Some((u, claimed)) = data.units.get_mut(unit) else { return Ok(false) };
        if u.stage != stage || u.status != UnitStatus::Pending || *claimed {
            return Ok(false);
        }
        *claimed = true;
        Ok(true)
    }

    async fn create_task_unit(&self, plan: &TaskPlan) -> Result<Option<Unit>, PortError> {
        let mut data = self.lock();
        let tasks = || data.units.values().map(|(u, _)| u).filter(|u| u.kind == UnitKind::Task);
        let created = tasks().map(|u| u.seq + 1).max().unwrap_or(0);
        let accepted = tasks().filter(|u| u.status == UnitStatus::Done).count() as u64;
        let pending = tasks().filter(|u| u.status == UnitStatus::Pending).count() as u64;
        if !plan.wants(created, accepted, pending, 1) {
            return Ok(None);
        }
        let unit = Unit::pending(crate::supervisor::task_unit_id(created), UnitKind::Task, created, None, Stage::Topic);
        data.units.insert(unit.id.clone(), (unit.clone(), false));
        Ok(Some(unit))
    }

    async fn release(&self, unit: &str) -> Result<(), PortError> {
        if let Some((_, claimed)) = self.lock().units.get_mut(unit) {
            *claimed = false;
        }
        Ok(())
    }

    async fn add_usage(&self, unit: &str, stage: Stage, endpoint: &str, model: &str, usage: &Usage) -> Result<(), PortError> {
        let mut data = self.lock();
        let sum = data.usage.entry((unit.to_string(), stage, endpoint.to_string(), model.to_string())).or_default();
        sum.calls += usage.calls;
        sum.input_tokens += usage.input_tokens;
        sum.output_tokens += usage.output_tokens;
        sum.cost_usd += usage.cost_usd;
        Ok(())
    }

    async fn usage(&self) -> Result<Vec<UsageRow>, PortError> {
        let data = self.lock();
        Ok(data
            .usage
            .iter()
            .map(|((unit, stage, endpoint, model), usage)| UsageRow {
                unit: unit.clone(),
                stage: *stage,
                endpoint: endpoint.clone(),
                model: model.clone(),
                usage: usage.clone(),
            })
            .collect())
    }

    async fn add_event(&self, event: &Event) -> Result<(), PortError> {
        self.lock().events.push(event.clone());
        Ok(())
    }

    async fn events(&self) -> Result<Vec<Event>, PortError> {
        Ok(self.lock().events.clone())
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, PortError> {
        Ok(self.lock().meta.get(key).cloned())
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), PortError> {
        self.lock().meta.insert(key.to_string(), value.to_string());
        Ok(())
    }
}
