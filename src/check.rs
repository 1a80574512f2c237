//! `gymforge check task DIR`: audits one task bundle by running every validity check in the
//! sandbox, and reports the result as JSON.
//!
//! DIR holds `task.json` (the bundle's task text and metric spec), `prepare.py`, `baseline.py`,
//! `evaluate.py` and the raw data under `raw/`. Every task gymforge accepts is kept in this
//! layout under `OUT/.gymforge/work/tasks/<unit>/final/bundle/`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use gymforge_actors::validate::{self, TaskCheck};

use crate::config::Config;

/// Checks the bundle in `dir`; returns the JSON report and whether the task is valid.
pub async fn check_task(config: &Config, dir: &Path, status: &(dyn Fn(&str) + Sync)) -> anyhow::Result<(serde_json::Value, bool)> {
    let bundle = validate::read_bundle_dir(dir).map_err(anyhow::Error::msg)?;
    let raw = dir.join("raw");
    anyhow::ensure!(raw.is_dir(), "{} has no raw/ directory with the data prepare.py reads", dir.display());
    let work = tempfile::Builder::new().prefix("gymforge-check-").tempdir().context("cannot create a scratch directory")?;
    let (_python, sandbox) = crate::run::sandbox(config, work.path(), status).await?;
    status("running the task's checks in the sandbox");
    let check = TaskCheck {
        sandbox: sandbox.as_ref(),
        bundle: &bundle,
        raw_dir: &raw,
        work_dir: work.path(),
        prepare_timeout: Duration::from_secs(config.pipeline.prepare_timeout_secs),
        headroom: config.pipeline.baseline_headroom,
        label: format!("check {}", bundle.name),
    };
    let (report, _) = validate::check_bundle(&check).await.map_err(anyhow::Error::msg)?;
    let mut json = serde_json::to_value(&report).expect("serialisable");
    json["task"] = serde_json::json!(bundle.name);
    json["dir"] = serde_json::json!(dir.display().to_string());
    Ok((json, report.valid))
}
