//! Hugging Face Hub access: the client that verifies datasets and downloads their parquet
//! files. The embedded mirror that stands in for the Hub when there is no network lives in
//! `gymforge-sim` (`gymforge_sim::mirror`) and is reached through the same client.
//!
//! [`HubClient`] implements the pipeline's `Hub` port against any server that speaks the Hub
//! API and the dataset viewer API. [`CachedHub`] keeps the run's
//! verdicts and downloads on disk; [`HubSettings`] resolves the endpoint and token from the
//! config and the `HF_ENDPOINT` / `HF_TOKEN` environment variables.

pub mod cache;
pub mod client;
pub mod settings;

pub use cache::CachedHub;
pub use client::{HubClient, mirror_client};
pub use settings::HubSettings;
