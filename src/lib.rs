//! gymforge: manufactures MLGym-compatible ML research tasks and teacher trajectories.
//!
//! This crate is the application around the pipeline in `gymforge-actors`: it implements the
//! pipeline's ports (LLM client, Hub client, sandbox, store, exporter), the embedded stand-ins
//! (simulated teacher, Hub mirror) and the command line. `ARCHITECTURE.md` has the map.

pub mod aup;
pub mod bench;
pub mod check;
pub mod config;
pub mod daemon;
pub mod export;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod node;
pub mod output;
pub mod progress;
pub mod run;
pub mod sandbox;
pub mod sft;
pub mod store;
pub mod telemetry;
