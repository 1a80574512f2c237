//! Which Hub a run talks to and with which token: the `[hub]` config and the Hugging Face
//! environment variables, with one documented precedence.
//!
//! * Endpoint: `hub.endpoint` set in the user's config file, else `HF_ENDPOINT` (the variable
//!   `huggingface_hub` reads, e.g. `https://hf-mirror.com`), else the embedded default
//!   (`"mirror"`, the embedded Hub mirror).
//! * Dataset viewer: `hub.viewer_endpoint`, else the public dataset viewer for a real Hub, or
//!   the mirror itself.
//! * Token: the environment variable named by `hub.token_env` (default `HF_TOKEN`); a config
//!   that names another variable uses that one alone. The token goes to the Hub client and
//!   nowhere else: the embedded mirror gets none, and `Debug` shows it redacted.

use std::fmt;

use std::time::Duration;

use anyhow::Context;

use super::HubClient;
use crate::config::HubConfig;

/// The variable `huggingface_hub` reads for the Hub's base URL.
pub const HF_ENDPOINT: &str = "HF_ENDPOINT";
/// The public dataset viewer API, used with a real Hub when `hub.viewer_endpoint` is empty.
pub const DEFAULT_VIEWER: &str = "https://datasets-server.huggingface.co";

/// Where the Hub endpoint came from, for the run summary and report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    ConfigFile,
    Environment,
    EmbeddedDefault,
}

impl EndpointSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointSource::ConfigFile => "config file (hub.endpoint)",
            EndpointSource::Environment => "environment (HF_ENDPOINT)",
            EndpointSource::EmbeddedDefault => "embedded default",
        }
    }
}

/// The resolved Hub settings of a run.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// `None`: serve the embedded mirror. Otherwise the Hub API's base URL.
    pub endpoint: Option<String>,
    /// The dataset viewer's base URL; empty with the mirror (it serves both APIs).
    pub viewer: String,
    pub source: EndpointSource,
    /// The access token (never logged or written anywhere).
    pub token: Option<String>,
}

impl fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("viewer", &self.viewer)
            .field("source", &self.source)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HubSettings {
    /// Resolves the settings from the config and an environment lookup.
    pub fn resolve(hub: &HubConfig, env: &dyn Fn(&str) -> Option<String>) -> HubSettings {
        let set = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let (endpoint, source) = match set(HF_ENDPOINT) {
            _ if hub.endpoint_in_file => (hub.endpoint.clone(), EndpointSource::ConfigFile),
            Some(url) => (url, EndpointSource::Environment),
            None => (hub.endpoint.clone(), EndpointSource::EmbeddedDefault),
        };
        if endpoint == crate::config::MIRROR_ENDPOINT {
            return HubSettings { endpoint: None, viewer: String::new(), source, token: None };
        }
        let viewer = if hub.viewer_endpoint.trim().is_empty() { DEFAULT_VIEWER.to_string() } else { hub.viewer_endpoint.clone() };
        HubSettings { endpoint: Some(endpoint.trim_end_matches('/').to_string()), viewer, source, token: set(&hub.token_env) }
    }

    /// The client of a real Hub; `None` for the embedded mirror, which the run starts itself.
    pub fn client(&self, hub: &HubConfig) -> anyhow::Result<Option<HubClient>> {
        let Some(endpoint) = &self.endpoint else { return Ok(None) };
        let timeout = Duration::from_secs(hub.timeout_secs);
        HubClient::new(endpoint.clone(), self.viewer.clone(), self.token.clone(), hub.max_dataset_bytes, timeout)
            .map(Some)
            .with_context(|| format!("the Hub endpoint from the {}", self.source.as_str()))
    }

    /// Resolves against the process environment.
    pub fn from_env(hub: &HubConfig) -> HubSettings {
        HubSettings::resolve(hub, &|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn hub(endpoint: &str, viewer: &str, token_env: &str, in_file: bool) -> HubConfig {
        HubConfig {
            endpoint: endpoint.into(),
            endpoint_in_file: in_file,
            viewer_endpoint: viewer.into(),
            token_env: token_env.into(),
            max_dataset_bytes: 1,
            timeout_secs: 1,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn embedded_default_is_the_mirror_without_a_token() {
        let s = HubSettings::resolve(&hub("mirror", "", "HF_TOKEN", false), &env(&[("HF_TOKEN", "hf_secret")]));
        assert_eq!((s.endpoint, s.source, s.token), (None, EndpointSource::EmbeddedDefault, None));
    }

    #[test]
    fn hf_endpoint_replaces_the_default_and_brings_the_token() {
        let e = env(&[("HF_ENDPOINT", "https://hf-mirror.example/"), ("HF_TOKEN", " hf_secret ")]);
        let s = HubSettings::resolve(&hub("mirror", "", "HF_TOKEN", false), &e);
        assert_eq!(s.endpoint.as_deref(), Some("https://hf-mirror.example"));
        assert_eq!(s.source, EndpointSource::Environment);
        assert_eq!(s.viewer, DEFAULT_VIEWER);
        assert_eq!(s.token.as_deref(), Some("hf_secret"));
        assert!(!format!("{s:?}").contains("hf_secret"));
        // An empty HF_ENDPOINT is no endpoint.
        let s = HubSettings::resolve(&hub("mirror", "", "HF_TOKEN", false), &env(&[("HF_ENDPOINT", "  ")]));
        assert_eq!(s.source, EndpointSource::EmbeddedDefault);
    }

    #[test]
    fn the_config_file_wins_over_hf_endpoint() {
        let e = env(&[("HF_ENDPOINT", "https://hf-mirror.example")]);
        let s = HubSettings::resolve(&hub("https://huggingface.co", "http://viewer.local", "HF_TOKEN", true), &e);
        assert_eq!(s.endpoint.as_deref(), Some("https://huggingface.co"));
        assert_eq!((s.viewer.as_str(), s.source), ("http://viewer.local", EndpointSource::ConfigFile));
        // A file that asks for the mirror keeps it, whatever the environment says.
        let s = HubSettings::resolve(&hub("mirror", "", "HF_TOKEN", true), &e);
        assert_eq!(s.endpoint, None);
    }

    #[test]
    fn a_configured_token_variable_is_the_only_one_read() {
        let e = env(&[("HF_ENDPOINT", "https://hub.example"), ("HF_TOKEN", "hf_default"), ("TEAM_TOKEN", "hf_team")]);
        assert_eq!(HubSettings::resolve(&hub("mirror", "", "TEAM_TOKEN", false), &e).token.as_deref(), Some("hf_team"));
        assert_eq!(HubSettings::resolve(&hub("mirror", "", "OTHER_TOKEN", false), &e).token, None);
    }
}
