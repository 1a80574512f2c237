//! Hugging Face Hub access: the client that verifies datasets and downloads their parquet
//! files, and the embedded mirror that stands in for the Hub when there is no network.
//!
//! [`HubClient`] implements the pipeline's `Hub` port against any server that speaks the Hub
//! API and the dataset viewer API. [`HubMirror`] builds and serves such a server locally from
//! scikit-learn's bundled datasets, clearly labelled as a mirror. [`CachedHub`] keeps the run's
//! verdicts and downloads on disk; [`HubSettings`] resolves the endpoint and token from the
//! config and the `HF_ENDPOINT` / `HF_TOKEN` environment variables.

pub mod cache;
pub mod client;
pub mod mirror;
pub mod settings;

pub use cache::CachedHub;
pub use client::{HubClient, mirror_client};
pub use mirror::HubMirror;
pub use settings::HubSettings;
