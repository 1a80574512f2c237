//! Configuration: the embedded default, user files merged over it, and validation.
//!
//! A user file only needs the keys it changes: it is merged key by key over
//! `config/default.toml`, then the result is checked field by field. Every error names the file,
//! the key and the problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
pub use gymforge_sim::{SimConfig, SimFaults};
use serde::Deserialize;

/// The embedded default configuration (compiled into the binary).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
/// How errors name the embedded default.
const EMBEDDED_ORIGIN: &str = "<embedded default>";
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
    pub daemon: DaemonConfig,
    pub telemetry: TelemetryConfig,
    pub store: StoreConfig,
}

/// Where the pipeline state lives (see `src/store/`).
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Empty: the embedded SQLite file in the output directory. `postgres://USER@HOST:PORT/DB`:
    /// a PostgreSQL database, shared by every node working on the batch. `GYMFORGE_STORE_URL`
    /// and `--store` override it.
    pub url: String,
    /// A file holding the database password (one line), when `GYMFORGE_STORE_PASSWORD` is unset.
    pub password_file: String,
    /// How long a claim on a unit lasts without renewal; nodes renew every third of it.
    pub lease_secs: u64,
    /// Connections this node keeps to the database at most.
    pub pool_size: u32,
    /// The largest directory shared through the database, in MB.
    pub max_artefact_mb: u64,
    /// How often a node looks for work it can claim, in milliseconds.
    pub pull_every_ms: u64,
}

impl StoreConfig {
    /// The database password: `GYMFORGE_STORE_PASSWORD`, else the first line of `password_file`.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        if let Some(password) = read_secret("GYMFORGE_STORE_PASSWORD") {
            return Ok(Some(password));
        }
        if self.password_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.password_file)
            .with_context(|| format!("cannot read store.password_file {}", self.password_file))?;
        Ok(text.lines().next().map(str::to_string).filter(|p| !p.is_empty()))
    }
}

/// OpenTelemetry export (see `src/telemetry/`).
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP base URL; empty means the standard `OTEL_EXPORTER_OTLP_*` variables decide.
    pub otlp_endpoint: String,
    /// Prompt and completion text on LLM spans.
    pub record_prompts: bool,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address of the status server (`/healthz`, `/readyz`, `/status`, `/metrics`).
    pub listen: String,
    pub drain_timeout_secs: u64,
    /// Without a target (`run.tasks = 0`): how often the outputs are rewritten.
    pub export_every_secs: u64,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub tasks: u32,
    pub rollouts: u32,
    pub max_topics_per_task: u32,
    pub max_attempts: u32,
}

/// The LLM gateway: named endpoints, which stage each serves, and the policies shared by all.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    pub routes: Routes,
    pub endpoints: BTreeMap<String, EndpointConfig>,
    pub max_retries: u32,
    pub max_retry_after_secs: u64,
    pub cooldown_without_hint_ms: u64,
    pub circuit_failure_secs: u64,
    pub circuit_probe_secs: u64,
    pub circuit_max_wait_secs: u64,
    pub run_budget_usd: f64,
}

/// The endpoint (a key of `llm.endpoints`) that serves each stage that talks to an LLM.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    pub topic: String,
    pub dataset: String,
    pub codegen: String,
    pub debug: String,
    pub rollout: String,
}

impl Routes {
    /// Routes every stage to the endpoint `name`.
    pub fn route_all(&mut self, name: &str) {
        for route in [&mut self.topic, &mut self.dataset, &mut self.codegen, &mut self.debug, &mut self.rollout] {
            *route = name.to_string();
        }
    }

    /// `(stage, endpoint name)` for every routed stage.
    pub fn all(&self) -> [(gymforge_actors::Stage, &str); 5] {
        use gymforge_actors::Stage;
        [
            (Stage::Topic, self.topic.as_str()),
            (Stage::Dataset, self.dataset.as_str()),
            (Stage::Codegen, self.codegen.as_str()),
            (Stage::Debug, self.debug.as_str()),
            (Stage::Rollout, self.rollout.as_str()),
        ]
    }
}

/// One OpenAI-compatible endpoint and its limits.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `"sim"` (the simulated teacher on loopback) or a base URL ending before
    /// `/chat/completions`.
    pub base_url: String,
    pub model: String,
    pub api_key_env: String,
    pub requests_per_minute: u32,
    pub input_tokens_per_minute: u32,
    pub output_tokens_per_minute: u32,
    pub max_concurrency: u32,
    pub timeout_secs: u64,
    pub input_price_per_mtok: f64,
    pub output_price_per_mtok: f64,
    pub structured_output: StructuredOutput,
    /// The model's context window in tokens, when the server does not publish it in
    /// `/models` (vLLM's `max_model_len`).
    #[serde(default)]
    pub context_tokens: Option<u64>,
    /// The largest `max_tokens` the server accepts.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
}

impl EndpointConfig {
    pub fn is_sim(&self) -> bool {
        self.base_url == "sim"
    }
}

/// What an endpoint understands of OpenAI's `response_format`.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// `{"type": "json_schema", ...}` with the stage's schema (OpenAI, vLLM, SGLang, Ollama,
    /// llama.cpp, OpenRouter for models that support it).
    JsonSchema,
    /// `{"type": "json_object"}` only.
    JsonObject,
    /// No `response_format` field; the prompt alone asks for JSON.
    None,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub endpoint: String,
    /// Whether the user's config file set `endpoint` (it then wins over `HF_ENDPOINT`; see
    /// `hub::settings`).
    #[serde(skip)]
    pub endpoint_in_file: bool,
    pub viewer_endpoint: String,
    pub token_env: String,
    pub max_dataset_bytes: u64,
    pub timeout_secs: u64,
}

/// The `hub.endpoint` value that selects the embedded Hub mirror.
pub const MIRROR_ENDPOINT: &str = "mirror";

impl HubConfig {
    pub fn is_mirror(&self) -> bool {
        self.endpoint == MIRROR_ENDPOINT
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    pub python_env: String,
    pub base_python: String,
    pub bwrap: String,
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
        if rustix::process::geteuid().is_root() {
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
    /// Margin to the best possible value of the priority metric a baseline must leave.
    pub baseline_headroom: f64,
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
    pub keep_observations: u32,
    pub context_window: u64,
    pub wall_clock_secs: u64,
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
        Config::parse(DEFAULT_TOML, Path::new(EMBEDDED_ORIGIN)).expect("the embedded default configuration is valid")
    }

    /// Loads a user file merged over the embedded default.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, path)
    }

    /// Parses `text` (named `origin` in errors) merged over the embedded default.
    pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Config> {
        let mut base: toml::Table = DEFAULT_TOML.parse().expect("embedded default parses");
        let syntax_error = |e: toml::de::Error| anyhow::anyhow!("{}: {}", origin.display(), describe_toml_error(&e, text));
        // Unknown keys are found in the user's own text, so that the error names its line (once
        // merged, a key's line would be one of the merged document's).
        let spanned = toml::de::DeTable::parse(text).map_err(syntax_error)?;
        if let Some((key, offset, known)) = unknown_key(spanned.get_ref(), &base, "") {
            bail!("{}:{}: unknown key `{key}` (known here: {})", origin.display(), line_of(text, offset), known.join(", "));
        }
        let user: toml::Table = text.parse().map_err(syntax_error)?;
        let endpoint_in_file = user.get("hub").and_then(|h| h.get("endpoint")).is_some();
        merge(&mut base, user);
        let merged = toml::to_string(&base).expect("a table serialises");
        let mut config: Config =
            toml::from_str(&merged).map_err(|e| anyhow::anyhow!("{}: {}", origin.display(), describe_toml_error(&e, &merged)))?;
        config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", origin.display()))?;
        config.hub.endpoint_in_file = endpoint_in_file && origin != Path::new(EMBEDDED_ORIGIN);
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
        positive("run.rollouts", self.run.rollouts.into())?;
        positive("daemon.export_every_secs", self.daemon.export_every_secs)?;
        positive("store.pool_size", self.store.pool_size.into())?;
        positive("store.max_artefact_mb", self.store.max_artefact_mb)?;
        positive("store.pull_every_ms", self.store.pull_every_ms)?;
        if self.store.lease_secs < 3 {
            bail!("key `store.lease_secs` must be at least 3 (nodes renew every third of it)");
        }
        if !self.store.url.is_empty() {
            crate::store::PgTarget::parse(&self.store.url).map_err(|e| anyhow::anyhow!("key `store.url`: {e}"))?;
        }
        positive("run.max_topics_per_task", self.run.max_topics_per_task.into())?;
        positive("run.max_attempts", self.run.max_attempts.into())?;
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
        if self.daemon.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!("key `daemon.listen` must be an address such as \"127.0.0.1:8790\", got `{}`", self.daemon.listen);
        }
        positive("agent.context_window", self.agent.context_window)?;
        positive("agent.wall_clock_secs", self.agent.wall_clock_secs)?;
        rate("sim.buggy_draft_rate", self.sim.buggy_draft_rate)?;
        if !(0.0..1.0).contains(&self.pipeline.baseline_headroom) {
            bail!("key `pipeline.baseline_headroom` must be at least 0 and below 1, got {}", self.pipeline.baseline_headroom);
        }
        let f = &self.sim.faults;
        let fault_rates = [
            ("sim.faults.rate_429", f.rate_429),
            ("sim.faults.rate_429_bare", f.rate_429_bare),
            ("sim.faults.rate_500", f.rate_500),
            ("sim.faults.rate_503", f.rate_503),
            ("sim.faults.rate_hang", f.rate_hang),
            ("sim.faults.rate_reset", f.rate_reset),
            ("sim.faults.rate_malformed", f.rate_malformed),
            ("sim.faults.rate_truncated", f.rate_truncated),
        ];
        for (key, v) in fault_rates {
            rate(key, v)?;
        }
        if fault_rates.iter().map(|(_, v)| v).sum::<f64>() > 1.0 {
            bail!("the `sim.faults.rate_*` keys must add up to at most 1");
        }
        if self.sim.latency_p99_ms < self.sim.latency_ms {
            bail!("key `sim.latency_p99_ms` must be at least `sim.latency_ms`");
        }
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
        self.validate_llm()?;
        if !self.hub.is_mirror() && !self.hub.endpoint.starts_with("http") {
            bail!("key `hub.endpoint` must be \"mirror\" or an http(s) URL, got `{}`", self.hub.endpoint);
        }
        if self.llm.endpoints.values().any(|e| e.api_key_env.contains("sk-")) || self.hub.token_env.starts_with("hf_") {
            bail!(
                "keys `llm.endpoints.*.api_key_env` and `hub.token_env` name environment variables; \
                 put the secret itself in the environment, never in the config file"
            );
        }
        Ok(())
    }

    fn validate_llm(&self) -> anyhow::Result<()> {
        let llm = &self.llm;
        for (key, v) in [
            ("llm.circuit_failure_secs", llm.circuit_failure_secs),
            ("llm.circuit_probe_secs", llm.circuit_probe_secs),
            ("llm.circuit_max_wait_secs", llm.circuit_max_wait_secs),
            ("llm.max_retry_after_secs", llm.max_retry_after_secs),
        ] {
            if v == 0 {
                bail!("key `{key}` must be at least 1");
            }
        }
        if llm.run_budget_usd.is_nan() || llm.run_budget_usd < 0.0 {
            bail!("key `llm.run_budget_usd` must be 0 (no budget) or a positive number of dollars");
        }
        for (stage, name) in llm.routes.all() {
            if !llm.endpoints.contains_key(name) {
                let known: Vec<&str> = llm.endpoints.keys().map(String::as_str).collect();
                bail!("key `llm.routes.{stage}` names endpoint `{name}`, which is not defined (defined: {})", known.join(", "));
            }
        }
        for (name, e) in &llm.endpoints {
            let key = |field: &str| format!("llm.endpoints.{name}.{field}");
            if !e.is_sim() && !e.base_url.starts_with("http") {
                bail!("key `{}` must be \"sim\" or an http(s) URL, got `{}`", key("base_url"), e.base_url);
            }
            for (field, v) in [
                ("requests_per_minute", u64::from(e.requests_per_minute)),
                ("input_tokens_per_minute", u64::from(e.input_tokens_per_minute)),
                ("output_tokens_per_minute", u64::from(e.output_tokens_per_minute)),
                ("max_concurrency", u64::from(e.max_concurrency)),
                ("timeout_secs", e.timeout_secs),
            ] {
                if v == 0 {
                    bail!("key `{}` must be at least 1", key(field));
                }
            }
            for (field, v) in [("input_price_per_mtok", e.input_price_per_mtok), ("output_price_per_mtok", e.output_price_per_mtok)] {
                if v.is_nan() || v < 0.0 {
                    bail!("key `{}` must be a non-negative number of dollars", key(field));
                }
            }
        }
        Ok(())
    }

    /// Makes the config's relative paths (the Python environment, a base interpreter given as a
    /// path) absolute against the working directory, once, when gymforge starts: nothing later
    /// depends on the directory it runs in.
    pub fn resolve_paths(&mut self) -> anyhow::Result<()> {
        let sandbox = &mut self.sandbox;
        if !sandbox.python_env.is_empty() {
            sandbox.python_env = absolute(Path::new(&sandbox.python_env))?.to_string_lossy().into_owned();
        }
        for program in [&mut sandbox.base_python, &mut sandbox.bwrap] {
            if program.contains('/') {
                *program = absolute(Path::new(program.as_str()))?.to_string_lossy().into_owned();
            }
        }
        Ok(())
    }

    /// Reads an endpoint's API key from the environment variable its config names.
    pub fn llm_api_key(endpoint: &EndpointConfig) -> Option<String> {
        read_secret(&endpoint.api_key_env)
    }
}

fn read_secret(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Tables whose keys are names the user chooses (each entry has the shape of the default's entries).
const NAMED_TABLES: &[&str] = &["llm.endpoints"];

/// The first key of `user` (at dotted path `prefix`) that `default` does not have: its dotted
/// path, its byte offset in the user's text, and the keys that are allowed there.
/// Endpoint keys that have no default (the default file shows them commented out).
const OPTIONAL_ENDPOINT_KEYS: [&str; 2] = ["context_tokens", "max_output_tokens"];

fn unknown_key(user: &toml::de::DeTable<'_>, default: &toml::Table, prefix: &str) -> Option<(String, usize, Vec<String>)> {
    let mut entries: Vec<_> = user.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let name: &str = key.get_ref();
        let path = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        // Keys without a default value: absent from the default file, known all the same.
        if prefix.starts_with("llm.endpoints.") && OPTIONAL_ENDPOINT_KEYS.contains(&name) {
            continue;
        }
        let expected = match default.get(name) {
            Some(toml::Value::Table(t)) => t,
            Some(_) => continue,
            // A new entry of a named table is checked against the shape of the default's entries.
            None if NAMED_TABLES.contains(&prefix) => match default.values().next() {
                Some(toml::Value::Table(t)) => t,
                _ => continue,
            },
            None => return Some((path, key.span().start, default.keys().cloned().collect())),
        };
        if let toml::de::DeValue::Table(inner) = value.get_ref()
            && let Some(found) = unknown_key(inner, expected, &path)
        {
            return Some(found);
        }
    }
    None
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
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

/// `path` made absolute against the working directory (without resolving symlinks).
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute (is the working directory gone?)", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded();
        assert!(c.llm.endpoints[&c.llm.routes.rollout].is_sim());
        assert!(c.hub.is_mirror());
        assert_eq!(c.run.tasks, 3);
    }

    #[test]
    fn records_whether_the_user_file_names_the_hub_endpoint() {
        assert!(!Config::embedded().hub.endpoint_in_file);
        assert!(!Config::parse("[hub]\ntoken_env = \"MY_TOKEN\"\n", Path::new("a.toml")).unwrap().hub.endpoint_in_file);
        let c = Config::parse("[hub]\nendpoint = \"mirror\"\n", Path::new("b.toml")).unwrap();
        assert!(c.hub.endpoint_in_file && c.hub.is_mirror());
    }

    #[test]
    fn the_store_url_is_checked_and_its_password_comes_from_elsewhere() {
        assert!(Config::embedded().store.url.is_empty(), "the embedded default is the SQLite file");
        let c = Config::parse("[store]\nurl = \"postgres://gf@db:5433/batch\"\n", Path::new("s.toml")).unwrap();
        assert_eq!(c.store.url, "postgres://gf@db:5433/batch");
        let err = Config::parse("[store]\nurl = \"postgres://gf:secret-1@db/batch\"\n", Path::new("s.toml")).unwrap_err().to_string();
        assert!(err.contains("store.url") && err.contains("GYMFORGE_STORE_PASSWORD") && !err.contains("secret-1"), "{err}");
        let err = Config::parse("[store]\nlease_secs = 1\n", Path::new("s.toml")).unwrap_err().to_string();
        assert!(err.contains("store.lease_secs"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let store = StoreConfig { password_file: file.to_string_lossy().into_owned(), ..StoreConfig::default() };
        if std::env::var_os("GYMFORGE_STORE_PASSWORD").is_none() {
            assert_eq!(store.password().unwrap().as_deref(), Some("from-the-file"));
        }
    }

    #[test]
    fn user_file_overrides_only_its_keys() {
        let c = Config::parse("[run]\ntasks = 9\n", Path::new("my.toml")).unwrap();
        assert_eq!(c.run.tasks, 9);
        assert_eq!(c.run.rollouts, 2);
    }

    #[test]
    fn an_endpoint_may_set_the_model_s_limits() {
        let c = Config::parse("[llm.endpoints.sim]\ncontext_tokens = 4096\nmax_output_tokens = 1024\n", Path::new("l.toml")).unwrap();
        assert_eq!((c.llm.endpoints["sim"].context_tokens, c.llm.endpoints["sim"].max_output_tokens), (Some(4096), Some(1024)));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = Config::parse("[run]\ntaks = 9\n", Path::new("my.toml")).unwrap_err().to_string();
        assert!(err.contains("my.toml"), "{err}");
        assert!(err.contains("taks"), "{err}");
    }

    #[test]
    fn unknown_key_names_the_line_of_the_users_file() {
        let text = "# mine\n[run]\ntasks = 2\ntaskz = 9\n";
        let err = Config::parse(text, Path::new("my.toml")).unwrap_err().to_string();
        assert!(err.starts_with("my.toml:4: unknown key `run.taskz`"), "{err}");
        assert!(err.contains("max_topics_per_task"), "{err}");
        let err = Config::parse("seed = 1\nsed = 2\n", Path::new("my.toml")).unwrap_err().to_string();
        assert!(err.starts_with("my.toml:2: unknown key `sed`"), "{err}");
        let err = Config::parse("\n\nrun.taskz = 9\n", Path::new("my.toml")).unwrap_err().to_string();
        assert!(err.starts_with("my.toml:3: unknown key `run.taskz`"), "{err}");
    }

    #[test]
    fn a_new_endpoints_keys_are_checked_against_an_endpoints_shape() {
        let text = "[llm.endpoints.teacher]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodle = \"m\"\n";
        let err = Config::parse(text, Path::new("my.toml")).unwrap_err().to_string();
        assert!(err.starts_with("my.toml:3: unknown key `llm.endpoints.teacher.modle`"), "{err}");
        assert!(err.contains("api_key_env"), "{err}");
        let err = Config::parse("[llm.endpoints.sim]\ntimeout = 5\n", Path::new("my.toml")).unwrap_err().to_string();
        assert!(err.starts_with("my.toml:2: unknown key `llm.endpoints.sim.timeout`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Config::parse("[run]\ntasks = \"many\"\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("tasks"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::parse("[llm.endpoints.sim]\nrequests_per_minute = 0\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("llm.endpoints.sim.requests_per_minute"), "{err}");
    }

    #[test]
    fn the_baseline_headroom_is_a_margin_below_one() {
        assert_eq!(Config::embedded().pipeline.baseline_headroom, 0.01);
        let c = Config::parse("[pipeline]\nbaseline_headroom = 0.0\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.pipeline.baseline_headroom, 0.0);
        for bad in ["-0.1", "1.0", "nan"] {
            let err = Config::parse(&format!("[pipeline]\nbaseline_headroom = {bad}\n"), Path::new("x.toml")).unwrap_err().to_string();
            assert!(err.contains("pipeline.baseline_headroom"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_route_to_an_undefined_endpoint_is_refused() {
        let err = Config::parse("[llm.routes]\nrollout = \"teacher\"\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("llm.routes.rollout") && err.contains("teacher"), "{err}");
    }

    #[test]
    fn a_second_endpoint_merges_beside_the_default_one() {
        let text = "[llm.routes]\ntopic = \"cheap\"\n[llm.endpoints.cheap]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"small\"\n\
                    api_key_env = \"CHEAP_KEY\"\nrequests_per_minute = 60\n\
                    input_tokens_per_minute = 1000\noutput_tokens_per_minute = 1000\nmax_concurrency = 2\ntimeout_secs = 5\n\
                    input_price_per_mtok = 0.1\noutput_price_per_mtok = 0.2\nstructured_output = \"json_object\"\n";
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.llm.routes.topic, "cheap");
        assert_eq!(c.llm.endpoints.len(), 2);
        assert_eq!(c.llm.endpoints["cheap"].structured_output, StructuredOutput::JsonObject);
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = Config::parse("[run\n", Path::new("broken.toml")).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }
}
