//! Configuration: the embedded default, user files merged over it, and validation.
//!
//! A user file only needs the keys it changes: it is merged key by key over
//! `config/default.toml`, then the result is checked field by field. Every error names the file,
//! the key and the problem.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The embedded default configuration (compiled into the binary).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
/// The sandbox's Python requirements.
pub const PYTHON_REQUIREMENTS: &str = include_str!("../config/python-requirements.txt");
/// The topic taxonomy.
pub const TAXONOMY_TOML: &str = include_str!("../config/taxonomy.toml");

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub seed: u64,
    pub run: RunConfig,
    pub llm: LlmConfig,
    pub sim: SimConfig,
    pub hub: HubConfig,
    pub sandbox: SandboxConfig,
    pub pipeline: PipelineConfig,
    pub agent: AgentConfig,
    pub faults: FaultsConfig,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub tasks: u32,
    pub rollouts: u32,
    pub max_topics_per_task: u32,
    pub max_attempts: u32,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    pub endpoint: String,
    pub model: String,
    pub api_key_env: String,
    pub requests_per_minute: u32,
    pub timeout_secs: u64,
    pub max_retries: u32,
    pub input_price_per_mtok: f64,
    pub output_price_per_mtok: f64,
}

impl LlmConfig {
    pub fn is_sim(&self) -> bool {
        self.endpoint == "sim"
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub seed: u64,
    pub latency_ms: u64,
    pub buggy_draft_rate: f64,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub endpoint: String,
    pub viewer_endpoint: String,
    pub token_env: String,
    pub max_dataset_bytes: u64,
    pub timeout_secs: u64,
}

impl HubConfig {
    pub fn is_mirror(&self) -> bool {
        self.endpoint == "mirror"
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    pub python_env: String,
    pub base_python: String,
    pub memory_mb: u64,
    pub cpu_secs: u64,
    pub max_processes: u64,
    pub max_file_mb: u64,
    pub max_output_bytes: usize,
}

impl SandboxConfig {
    /// Where the sandbox's Python environment lives.
    pub fn python_env_dir(&self) -> PathBuf {
        if !self.python_env.is_empty() {
            return PathBuf::from(&self.python_env);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/opt/gymforge/pyenv")
        } else {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into());
            home.join(".local/share/gymforge/pyenv")
        }
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub topic_workers: u32,
    pub dataset_workers: u32,
    pub codegen_workers: u32,
    pub debug_workers: u32,
    pub export_workers: u32,
    pub rollout_workers: u32,
    pub debug_rounds: u32,
    pub prepare_timeout_secs: u64,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub max_steps: u32,
    pub short_timeout_secs: u64,
    pub temperature: f32,
    pub top_p: f32,
    pub cost_limit: f64,
    pub max_tokens: u32,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct FaultsConfig {
    pub worker_panic_rate: f64,
    pub worker_error_rate: f64,
    pub stages: Vec<String>,
}

impl Config {
    /// The embedded default.
    pub fn embedded() -> Config {
        Config::parse(DEFAULT_TOML, Path::new("<embedded default>"))
            .expect("the embedded default configuration is valid")
    }

    /// Loads a user file merged over the embedded default.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, path)
    }

    /// Parses `text` (named `origin` in errors) merged over the embedded default.
    pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Config> {
        let mut base: toml::Table = DEFAULT_TOML.parse().expect("embedded default parses");
        let user: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            anyhow::anyhow!("{}: {}", origin.display(), describe_toml_error(&e, text))
        })?;
        merge(&mut base, user);
        let merged = toml::to_string(&base).expect("a table serialises");
        let config: Config = toml::from_str(&merged).map_err(|e| {
            anyhow::anyhow!("{}: {}", origin.display(), describe_toml_error(&e, &merged))
        })?;
        config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", origin.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        fn positive(key: &str, v: u64) -> anyhow::Result<()> {
            if v == 0 {
                bail!("key `{key}` must be at least 1");
            }
            Ok(())
        }
        fn rate(key: &str, v: f64) -> anyhow::Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!("key `{key}` must be between 0 and 1, got {v}");
            }
            Ok(())
        }
        positive("run.tasks", self.run.tasks.into())?;
        positive("run.rollouts", self.run.rollouts.into())?;
        positive("run.max_topics_per_task", self.run.max_topics_per_task.into())?;
        positive("run.max_attempts", self.run.max_attempts.into())?;
        positive("llm.requests_per_minute", self.llm.requests_per_minute.into())?;
        positive("llm.timeout_secs", self.llm.timeout_secs)?;
        positive("hub.timeout_secs", self.hub.timeout_secs)?;
        positive("sandbox.memory_mb", self.sandbox.memory_mb)?;
        positive("sandbox.cpu_secs", self.sandbox.cpu_secs)?;
        positive("sandbox.max_processes", self.sandbox.max_processes)?;
        positive("sandbox.max_file_mb", self.sandbox.max_file_mb)?;
        positive("sandbox.max_output_bytes", self.sandbox.max_output_bytes as u64)?;
        for (key, v) in [
            ("pipeline.topic_workers", self.pipeline.topic_workers),
            ("pipeline.dataset_workers", self.pipeline.dataset_workers),
            ("pipeline.codegen_workers", self.pipeline.codegen_workers),
            ("pipeline.debug_workers", self.pipeline.debug_workers),
            ("pipeline.export_workers", self.pipeline.export_workers),
            ("pipeline.rollout_workers", self.pipeline.rollout_workers),
            ("pipeline.debug_rounds", self.pipeline.debug_rounds),
            ("agent.max_steps", self.agent.max_steps),
        ] {
            positive(key, v.into())?;
        }
        positive("agent.short_timeout_secs", self.agent.short_timeout_secs)?;
        rate("sim.buggy_draft_rate", self.sim.buggy_draft_rate)?;
        rate("faults.worker_panic_rate", self.faults.worker_panic_rate)?;
        rate("faults.worker_error_rate", self.faults.worker_error_rate)?;
        for stage in &self.faults.stages {
            if gymforge_actors::Stage::parse(stage).is_none() {
                bail!(
                    "key `faults.stages` names unknown stage `{stage}` \
                     (stages: topic, dataset, codegen, debug, export, rollout)"
                );
            }
        }
        if !self.llm.is_sim() && !self.llm.endpoint.starts_with("http") {
            bail!(
                "key `llm.endpoint` must be \"sim\" or an http(s) URL, got `{}`",
                self.llm.endpoint
            );
        }
        if !self.hub.is_mirror() && !self.hub.endpoint.starts_with("http") {
            bail!(
                "key `hub.endpoint` must be \"mirror\" or an http(s) URL, got `{}`",
                self.hub.endpoint
            );
        }
        if self.llm.api_key_env.contains("sk-") || self.hub.token_env.starts_with("hf_") {
            bail!(
                "keys `llm.api_key_env` and `hub.token_env` name environment variables; \
                 put the secret itself in the environment, never in the config file"
            );
        }
        Ok(())
    }

    /// Reads the LLM API key from the environment variable the config names.
    pub fn llm_api_key(&self) -> Option<String> {
        read_secret(&self.llm.api_key_env)
    }

    /// Reads the Hub token from the environment variable the config names.
    pub fn hub_token(&self) -> Option<String> {
        read_secret(&self.hub.token_env)
    }
}

fn read_secret(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Recursively merges `over` into `base`: tables merge key by key, everything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Turns a toml error into one line: the problem and, when known, the line it is on.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) if !text.is_empty() => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("{message} (at `{snippet}`)")
        }
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded();
        assert!(c.llm.is_sim());
        assert!(c.hub.is_mirror());
        assert_eq!(c.run.tasks, 3);
    }

    #[test]
    fn user_file_overrides_only_its_keys() {
        let c = Config::parse("[run]\ntasks = 9\n", Path::new("my.toml")).unwrap();
        assert_eq!(c.run.tasks, 9);
        assert_eq!(c.run.rollouts, 2);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = Config::parse("[run]\ntaks = 9\n", Path::new("my.toml")).unwrap_err().to_string();
        assert!(err.contains("my.toml"), "{err}");
        assert!(err.contains("taks"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err =
            Config::parse("[run]\ntasks = \"many\"\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("tasks"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::parse("[llm]\nrequests_per_minute = 0\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("llm.requests_per_minute"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = Config::parse("[run\n", Path::new("broken.toml")).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }
}
