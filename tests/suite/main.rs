//! The integration suite: one test binary, so that it is compiled and linked once and its tests,
//! some waiting on processes and some computing, share the machine's cores instead of running one
//! file after another. Each module is one concern; run one with `cargo test --test suite <module>::`.
//!
//! `tests/sandbox.rs` stays a binary of its own: it sets an environment variable in its process
//! (the secret the sandbox must not pass on), which is only sound before other tests start threads.

mod common;

mod aup;
mod chaos;
mod check;
mod cli;
mod cluster;
mod daemon;
mod deviations;
mod e2e;
mod frontdoor;
mod gateway;
mod hub;
mod rollout;
mod sim;
mod stages;
mod store;
mod telemetry;
