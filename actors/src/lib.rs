//! The gymforge pipeline: one supervised pool of worker actors per stage, the stage logic they
//! run, and the ports through which they reach the outside world.
//!
//! A unit of work moves topic -> dataset -> codegen -> debug -> export, then fans out into
//! rollout units. Each stage result is committed to the [`ports::Store`] before the next stage
//! sees the unit, so a crash or a kill loses at most the work in flight.
//! `ARCHITECTURE.md` at the repository root has the map.

pub mod agent;
pub mod artefacts;
pub mod codegen;
pub mod dataset;
pub mod debug;
pub mod digest;
pub mod export;
pub mod json;
pub mod llm;
pub mod memory;
pub mod minhash;
pub mod model;
pub mod paths;
pub mod pipeline;
pub mod ports;
pub mod rollout;
pub mod schemas;
pub mod seed;
pub mod supervisor;
pub mod template;
pub mod topic;
pub mod validate;
pub mod worker;

pub use model::{DropReason, Outcome, Stage, StageResult, Unit, UnitId, UnitKind, UnitStatus, Verdict};
pub use pipeline::{Pipeline, PipelineStages, Progress, Prompts, Settings, StageLogic, Taxonomy};
pub use supervisor::{RunOutcome, run_pipeline};
