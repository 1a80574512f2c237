//! The Hub client: checks proposed dataset ids against the Hugging Face Hub API and the dataset
//! viewer API, and downloads a verified dataset's parquet files.
//!
//! It speaks the real services' protocol, so the same code runs against `huggingface.co` plus
//! `datasets-server.huggingface.co` and against gymforge's embedded mirror. Verification walks
//! the documented check sequence: `/api/datasets/{id}` (exists, not disabled, gated),
//! `/is-valid`, `/splits`, `/info`, `/size` and `/parquet`. Unusable datasets come back as
//! [`DatasetCheck::Rejected`] with a short reason code; failures worth retrying (transport
//! errors, timeouts, 5xx, 429) as [`PortError::Transient`].
//!
//! The access token is only ever sent in the `Authorization` header, and only to the configured
//! API and viewer origins; it never appears in logs, errors or `Debug` output.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use gymforge_actors::model::{DatasetMeta, Feature, ParquetFile, StagedFile};
use gymforge_actors::ports::{DatasetCheck, Hub, PortError, Rejection};
use reqwest::{StatusCode, Url};
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Longest part (owner or name) of a dataset id the Hub accepts.
const MAX_ID_PART: usize = 96;
/// Longest error text kept from a response body.
const MAX_ERROR_TEXT: usize = 300;

/// A Hub API + dataset viewer client implementing the pipeline's [`Hub`] port.
pub struct HubClient {
    http: reqwest::Client,
    api_base: String,
    viewer_base: String,
    token: Option<String>,
    max_bytes: u64,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("api_base", &self.api_base)
            .field("viewer_base", &self.viewer_base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// A client for the embedded mirror, which serves the Hub API and the viewer at one base URL.
pub fn mirror_client(base: &str, max_bytes: u64, timeout: Duration) -> anyhow::Result<HubClient> {
    HubClient::new(base.to_string(), base.to_string(), None, max_bytes, timeout)
}

/// Why verification stopped: a verdict on the dataset, or a failure of the port itself.
enum Fail {
    Reject { reason: Rejection, detail: String },
    Port(PortError),
}

fn reject(reason: Rejection, detail: impl Into<String>) -> Fail {
    Fail::Reject { reason, detail: detail.into() }
}

fn transient(detail: impl Into<String>) -> Fail {
    Fail::Port(PortError::Transient(detail.into()))
}

/// Which service a request went to, for interpreting its error statuses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    Api,
    Viewer,
}

impl HubClient {
    /// `api_base` is the Hub (`https://huggingface.co`), `viewer_base` the dataset viewer
    /// (`https://datasets-server.huggingface.co`). Datasets whose parquet export exceeds
    /// `max_bytes` are rejected, and downloads stop there. `timeout` bounds each request.
    pub fn new(
        api_base: String,
        viewer_base: String,
        token: Option<String>,
        max_bytes: u64,
        timeout: Duration,
    ) -> anyhow::Result<HubClient> {
        let api_base = normalise_base(&api_base, "Hub API")?;
        let viewer_base = normalise_base(&viewer_base, "dataset viewer")?;
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        if let Some(t) = &token
            && reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).is_err()
        {
            anyhow::bail!("the Hub token contains characters that cannot be sent in a header");
        }
        let http = crate::http::client_builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(15)))
            .user_agent(concat!("gymforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot create the Hub HTTP client: {e}"))?;
        Ok(HubClient { http, api_base, viewer_base, token, max_bytes })
    }

    /// The Hub API's base URL.
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// The dataset viewer's base URL.
    pub fn viewer_base(&self) -> &str {
        &self.viewer_base
    }

    /// Whether requests carry an access token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Fails with one sentence when the Hub or the viewer does not answer at all; any HTTP
    /// answer counts as reachable (what a dataset needs is verified per dataset later).
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        for (service, url) in [
            ("Hub API", format!("{}/api/datasets?limit=1", self.api_base)),
            ("dataset viewer", format!("{}/healthcheck", self.viewer_base)),
        ] {
            let request = self.authorize(self.http.get(&url).timeout(Duration::from_secs(20)), &url);
            if let Err(e) = request.send().await {
                anyhow::bail!(
                    "the {service} at {} is unreachable ({}); check `hub.endpoint` / `hub.viewer_endpoint` or the HF_ENDPOINT variable",
                    Url::parse(&url).map(|u| u.origin().ascii_serialization()).unwrap_or_default(),
                    describe_reqwest(&e)
                );
            }
        }
        Ok(())
    }

    /// The parquet size limit, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Removes the token from text that might echo it.
    fn scrub(&self, text: String) -> String {
        match &self.token {
            Some(t) if text.contains(t.as_str()) => text.replace(t.as_str(), "<redacted>"),
            _ => text,
        }
    }

    fn scrub_port(&self, e: PortError) -> PortError {
        match e {
            PortError::Transient(m) => PortError::Transient(self.scrub(m)),
            PortError::Permanent(m) => PortError::Permanent(self.scrub(m)),
            PortError::Refused { reason, detail } => PortError::Refused { reason, detail: self.scrub(detail) },
            PortError::LeaseLost(m) => PortError::LeaseLost(self.scrub(m)),
        }
    }

    /// Adds the token, if any, when `url` is on the configured API or viewer origin.
    fn authorize(&self, request: reqwest::RequestBuilder, url: &str) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) if self.is_trusted_origin(url) => request.bearer_auth(token),
            _ => request,
        }
    }

    fn is_trusted_origin(&self, url: &str) -> bool {
        let Ok(url) = Url::parse(url) else {
            return false;
        };
        [&self.api_base, &self.viewer_base].iter().any(|base| Url::parse(base).is_ok_and(|b| b.origin() == url.origin()))
    }

    async fn get_json<T: DeserializeOwned>(&self, service: Service, url: &str, query: &[(&str, &str)], what: &str) -> Result<T, Fail> {
        tracing::debug!(url, ?query, "hub request");
        let mut request = self.http.get(url);
        if !query.is_empty() {
            request = request.query(query);
        }
        let response = self.authorize(request, url).send().await.map_err(|e| transient(format!("{what}: {}", describe_reqwest(&e))))?;
        let status = response.status();
        let error_code = header_str(&response, "x-error-code");
        let retry_after = header_str(&response, "retry-after");
        let body = response.bytes().await.map_err(|e| transient(format!("{what}: {}", describe_reqwest(&e))))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| reject(Rejection::HubError, format!("{what}: unexpected response shape: {e}")));
        }
        Err(self.classify(service, status, error_code.as_deref(), retry_after.as_deref(), &body, what))
    }

    /// Turns an error status into a verdict or a port error.
    fn classify(
        &self,
        service: Service,
        status: StatusCode,
        error_code: Option<&str>,
        retry_after: Option<&str>,
        body: &[u8],
        what: &str,
    ) -> Fail {
        let message = error_text(body);
        let with_message = |prefix: String| {
            if message.is_empty() { prefix } else { format!("{prefix}: {message}") }
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after.map(|r| format!(" (Retry-After: {r})")).unwrap_or_default();
            return transient(with_message(format!("{what}: rate limited, HTTP 429{wait}")));
        }
        if status == StatusCode::REQUEST_TIMEOUT || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED) {
            return transient(with_message(format!("{what}: HTTP {}", status.as_u16())));
        }
        let auth = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
        match service {
            Service::Api if status == StatusCode::NOT_FOUND || (auth && error_code == Some("RepoNotFound")) => {
                reject(Rejection::NotFound, with_message(format!("{what}: the dataset does not exist")))
            }
            _ if auth => reject(Rejection::Gated, self.gated_detail(what, &message)),
            Service::Viewer if status == StatusCode::NOT_FOUND || status == StatusCode::NOT_IMPLEMENTED => reject(
                Rejection::ViewerInvalid,
                with_message(format!("{what}: the dataset viewer has no data for it (HTTP {})", status.as_u16())),
            ),
            _ => reject(Rejection::HubError, with_message(format!("{what}: HTTP {}", status.as_u16()))),
        }
    }

    fn gated_detail(&self, what: &str, message: &str) -> String {
        let advice = if self.token.is_some() {
            "the configured Hub token has no access to it; request access on the dataset's page"
        } else {
            "the dataset is gated or private and a Hub access token with access to it is needed \
             (set the environment variable named by hub.token_env)"
        };
        if message.is_empty() { format!("{what}: {advice}") } else { format!("{what}: {advice} ({message})") }
    }

    /// Resolves the pinned `rev` of `id`; it must be the `current` revision, the only one the
    /// dataset viewer has data for.
    async fn check_pin(&self, id: &str, rev: &str, current: &str) -> Result<(), Fail> {
        if rev.is_empty() || rev.contains(['/', '?', '#']) {
            return Err(reject(Rejection::RevisionNotFound, format!("`{rev}` is not a revision of {id}")));
        }
        let url = format!("{}/api/datasets/{id}/revision/{rev}", self.api_base);
        let pinned: ApiDataset = match self.get_json(Service::Api, &url, &[], "Hub API").await {
            Ok(api) => api,
            Err(Fail::Reject { reason: Rejection::NotFound, detail }) => {
                return Err(reject(Rejection::RevisionNotFound, format!("{id} has no revision `{rev}` ({detail})")));
            }
            Err(other) => return Err(other),
        };
        match pinned.sha.filter(|s| !s.is_empty()) {
            Some(sha) if sha == current => Ok(()),
            Some(sha) => Err(reject(
                Rejection::RevisionNotCurrent,
                format!(
                    "{id}@{rev} is revision {sha}, but the dataset viewer serves only the current revision {current}; \
                     propose {id} without a revision"
                ),
            )),
            None => Err(reject(Rejection::RevisionNotFound, format!("the Hub gave no commit for {id}@{rev}"))),
        }
    }

    async fn viewer<T: DeserializeOwned>(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<T, Fail> {
        let url = format!("{}/{endpoint}", self.viewer_base);
        self.get_json(Service::Viewer, &url, query, &format!("viewer /{endpoint}")).await
    }

    /// Verifies `owner/name`, or `owner/name@revision` pinned to that revision. The dataset
    /// viewer serves only the current revision, so a pin to an older one is refused.
    async fn verify_inner(&self, dataset_ref: &str) -> Result<DatasetMeta, Fail> {
        let (requested, pinned) = match dataset_ref.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (dataset_ref, None),
        };
        if !valid_dataset_id(requested) {
            return Err(reject(Rejection::InvalidId, format!("`{requested}` is not a Hub dataset id (expected `owner/name`)")));
        }
        let api: ApiDataset = self.get_json(Service::Api, &format!("{}/api/datasets/{requested}", self.api_base), &[], "Hub API").await?;
        if api.disabled == Some(true) {
            return Err(reject(Rejection::Disabled, format!("{requested} has been disabled on the Hub")));
        }
        if let Some(mode) = gated_mode(&api.gated)
            && self.token.is_none()
        {
            return Err(reject(
                Rejection::Gated,
                format!(
                    "{requested} is gated (access: {mode}): a Hub access token with access to it \
                     is needed (set the environment variable named by hub.token_env)"
                ),
            ));
        }
        // The canonical id (the Hub redirects legacy ids without an owner).
        let id = api.id.filter(|i| valid_dataset_id(i)).unwrap_or_else(|| requested.to_string());
        let revision = api.sha.filter(|s| !s.is_empty()).unwrap_or_else(|| "main".to_string());
        if let Some(rev) = pinned.filter(|rev| *rev != "main" && *rev != revision) {
            self.check_pin(&id, rev, &revision).await?;
        }

        let valid: IsValid = self.viewer("is-valid", &[("dataset", &id)]).await?;
        if !(valid.preview.unwrap_or(false) || valid.viewer.unwrap_or(false)) {
            return Err(reject(Rejection::ViewerInvalid, format!("the dataset viewer cannot load {id} (is-valid: no preview, no viewer)")));
        }

        let splits: SplitsResponse = self.viewer("splits", &[("dataset", &id)]).await?;
        let config = match splits.splits.iter().find(|s| s.config == "default") {
            Some(s) => s.config.clone(),
            None => match splits.splits.first() {
                Some(s) => s.config.clone(),
                None if !splits.pending.is_empty() => {
                    return Err(transient(format!("viewer /splits: {id} is still being processed")));
                }
                None => {
                    return Err(reject(Rejection::ViewerInvalid, format!("viewer /splits: {id} has no splits")));
                }
            },
        };
        let mut split_names: Vec<String> = Vec::new();
        for s in splits.splits.iter().filter(|s| s.config == config) {
            if !split_names.contains(&s.split) {
                split_names.push(s.split.clone());
            }
        }

        let info: InfoResponse = self.viewer("info", &[("dataset", &id), ("config", &config)]).await?;
        let features: Vec<Feature> = info.dataset_info.features.0.iter().map(|(name, spec)| to_feature(name, spec)).collect();
        let mut num_rows = BTreeMap::new();
        for split in &split_names {
            if let Some(n) = info.dataset_info.splits.as_ref().and_then(|s| s.get(split)).and_then(|s| s.num_examples) {
                num_rows.insert(split.clone(), n);
            }
        }

        let size: SizeResponse = self.viewer("size", &[("dataset", &id)]).await?;
        for s in size.size.splits.iter().filter(|s| s.config == config) {
            if let Some(n) = s.num_rows
                && split_names.contains(&s.split)
            {
                num_rows.entry(s.split.clone()).or_insert(n);
            }
        }
        let config_bytes = size
            .size
            .configs
            .iter()
            .find(|c| c.config == config)
            .and_then(|c| c.num_bytes_parquet_files)
            .or_else(|| {
                let per_split: Vec<u64> =
                    size.size.splits.iter().filter(|s| s.config == config).filter_map(|s| s.num_bytes_parquet_files).collect();
                (!per_split.is_empty()).then(|| per_split.iter().sum())
            })
            .or_else(|| size.size.dataset.as_ref().and_then(|d| d.num_bytes_parquet_files));
        if size.partial {
            return Err(reject(
                Rejection::TooLarge,
                format!(
                    "{id} is larger than the dataset viewer converts in full (its size is partial); \
                     the limit is {} bytes",
                    self.max_bytes
                ),
            ));
        }
        if let Some(bytes) = config_bytes
            && bytes > self.max_bytes
        {
            return Err(reject(
                Rejection::TooLarge,
                format!("{id} (config {config}) has {bytes} bytes of parquet, over the limit of {} bytes", self.max_bytes),
            ));
        }

        let parquet: ParquetResponse = self.viewer("parquet", &[("dataset", &id)]).await?;
        let mut files = Vec::new();
        for f in parquet.parquet_files.into_iter().filter(|f| f.config == config) {
            let scheme_ok = Url::parse(&f.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !scheme_ok {
                return Err(reject(Rejection::HubError, format!("viewer /parquet: bad file url `{}`", f.url)));
            }
            files.push(ParquetFile { split: f.split, url: f.url, filename: f.filename, size: f.size });
        }
        if files.is_empty() {
            if !parquet.pending.is_empty() {
                return Err(transient(format!("viewer /parquet: the conversion of {id} is pending")));
            }
            return Err(reject(Rejection::NoParquet, format!("the dataset viewer lists no parquet files for {id} (config {config})")));
        }
        let listed: u64 = files.iter().map(|f| f.size).sum();
        if listed > self.max_bytes {
            return Err(reject(
                Rejection::TooLarge,
                format!("{id} (config {config}) has {listed} bytes of parquet files, over the limit of {} bytes", self.max_bytes),
            ));
        }

        let description = info
            .dataset_info
            .description
            .filter(|d| !d.trim().is_empty())
            .or(api.description.filter(|d| !d.trim().is_empty()))
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(DatasetMeta {
            id,
            revision,
            config,
            splits: split_names,
            features,
            num_rows,
            num_bytes_parquet: config_bytes.unwrap_or(listed),
            description,
            parquet_files: files,
        })
    }

    async fn download_inner(&self, meta: &DatasetMeta, dest: &Path) -> Result<Vec<StagedFile>, PortError> {
        if meta.parquet_files.is_empty() {
            return Err(PortError::Permanent(format!("no_parquet: {} lists no parquet files", meta.id)));
        }
        let mut seen = HashSet::new();
        for f in &meta.parquet_files {
            if !safe_component(&f.split) || !safe_component(&f.filename) {
                return Err(PortError::Permanent(format!(
                    "refusing to download {}: unsafe split or file name `{}/{}`",
                    meta.id, f.split, f.filename
                )));
            }
            if !seen.insert((f.split.as_str(), f.filename.as_str())) {
                return Err(PortError::Permanent(format!("{} lists `{}/{}` twice", meta.id, f.split, f.filename)));
            }
        }
        let listed: u64 = meta.parquet_files.iter().map(|f| f.size).sum();
        if listed > self.max_bytes {
            return Err(PortError::Permanent(format!(
                "too_large: {} has {listed} bytes of parquet files, over the limit of {} bytes",
                meta.id, self.max_bytes
            )));
        }
        let mut total = 0u64;
        let mut staged = Vec::new();
        for f in &meta.parquet_files {
            let dir = dest.join(&f.split);
            tokio::fs::create_dir_all(&dir).await.map_err(|e| PortError::Permanent(format!("cannot create {}: {e}", dir.display())))?;
            let target = dir.join(&f.filename);
            let part = dir.join(format!(".{}.part-{}", f.filename, std::process::id()));
            let fetched = self.fetch_file(&meta.id, &f.url, &part, &mut total).await;
            let (sha256, bytes) = match fetched {
                Ok(v) => v,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(e);
                }
            };
            if let Err(e) = tokio::fs::rename(&part, &target).await {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(PortError::Permanent(format!("cannot move the download into {}: {e}", target.display())));
            }
            if bytes != f.size {
                tracing::warn!(dataset = %meta.id, file = %f.filename, listed = f.size, bytes,
                    "downloaded size differs from the listed size");
            }
            staged.push(StagedFile { path: format!("{}/{}", f.split, f.filename), sha256, bytes });
        }
        Ok(staged)
    }

    /// Streams `url` into `part`, counting towards `total`; returns (sha256, bytes).
    async fn fetch_file(&self, id: &str, url: &str, part: &Path, total: &mut u64) -> Result<(String, u64), PortError> {
        let what = format!("download of {url}");
        tracing::debug!(url, "hub download");
        let mut response = self
            .authorize(self.http.get(url), url)
            .send()
            .await
            .map_err(|e| PortError::Transient(format!("{what}: {}", describe_reqwest(&e))))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = header_str(&response, "retry-after");
            let body = response.bytes().await.unwrap_or_default();
            let message = error_text(&body);
            let code = status.as_u16();
            return Err(if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = retry_after.map(|r| format!(" (Retry-After: {r})")).unwrap_or_default();
                PortError::Transient(format!("{what}: rate limited, HTTP 429{wait}"))
            } else if status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
                PortError::Transient(format!("{what}: HTTP {code}: {message}"))
            } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                PortError::Permanent(format!("gated: {}", self.gated_detail(&what, &message)))
            } else {
                PortError::Permanent(format!("{what} failed: HTTP {code}: {message}"))
            });
        }
        let too_large = |n: u64| {
            PortError::Permanent(format!("too_large: downloading {id} exceeded the limit of {} bytes (at least {n} bytes)", self.max_bytes))
        };
        if let Some(len) = response.content_length()
            && total.saturating_add(len) > self.max_bytes
        {
            return Err(too_large(total.saturating_add(len)));
        }
        let mut file =
            tokio::fs::File::create(part).await.map_err(|e| PortError::Permanent(format!("cannot create {}: {e}", part.display())))?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| PortError::Transient(format!("{what}: {}", describe_reqwest(&e))))? {
            bytes += chunk.len() as u64;
            *total += chunk.len() as u64;
            if *total > self.max_bytes {
                return Err(too_large(*total));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| PortError::Permanent(format!("cannot write {}: {e}", part.display())))?;
        }
        file.sync_all().await.map_err(|e| PortError::Permanent(format!("cannot write {}: {e}", part.display())))?;
        let digest = gymforge_actors::digest::hex(&hasher.finalize());
        Ok((digest, bytes))
    }
}

#[async_trait]
impl Hub for HubClient {
    async fn verify(&self, dataset_id: &str) -> Result<DatasetCheck, PortError> {
        let id = dataset_id.trim();
        let outcome = self.verify_inner(id).await;
        match outcome {
            Ok(meta) => {
                tracing::debug!(dataset = %meta.id, revision = %meta.revision, "dataset verified");
                Ok(DatasetCheck::Verified(meta))
            }
            Err(Fail::Reject { reason, detail }) => {
                tracing::debug!(dataset = id, %reason, "dataset rejected");
                Ok(DatasetCheck::Rejected { reason, detail: self.scrub(detail) })
            }
            Err(Fail::Port(e)) => Err(self.scrub_port(e)),
        }
    }

    async fn download(&self, meta: &DatasetMeta, dest: &Path) -> Result<Vec<StagedFile>, PortError> {
        self.download_inner(meta, dest).await.map_err(|e| self.scrub_port(e))
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn normalise_base(base: &str, what: &str) -> anyhow::Result<String> {
    let trimmed = base.trim().trim_end_matches('/').to_string();
    let url = Url::parse(&trimmed).map_err(|e| anyhow::anyhow!("the {what} base URL `{trimmed}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("the {what} base URL `{trimmed}` must be http or https");
    }
    Ok(trimmed)
}

/// `owner/name` (or a legacy `name`), each part made of ASCII letters, digits, `-`, `_`, `.`,
/// not starting or ending with `-` or `.`, without `--` or `..`.
pub fn valid_dataset_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    if parts.is_empty() || parts.len() > 2 {
        return false;
    }
    parts.iter().all(|p| {
        !p.is_empty()
            && p.len() <= MAX_ID_PART
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    })
}

/// A single, harmless path component.
fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.starts_with('.') && s.len() <= 255 && !s.contains(['/', '\\', '\0'])
}

/// `Some(mode)` when the Hub's `gated` field says the dataset is gated.
fn gated_mode(gated: &Value) -> Option<String> {
    match gated {
        Value::Bool(true) => Some("true".to_string()),
        Value::String(s) if !s.is_empty() && s != "false" => Some(s.clone()),
        _ => None,
    }
}

fn header_str(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(|s| s.to_string())
}

/// The `error` field of a JSON error body, or the start of the body's text.
fn error_text(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => match o.get("error") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => Value::Object(o).to_string(),
        },
        _ => String::from_utf8_lossy(body).trim().to_string(),
    };
    let mut text: String = text.chars().filter(|c| !c.is_control()).collect();
    if text.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// A reqwest error with its causes (reqwest's own message hides them).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() { format!("timed out: {e}") } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A column as the pipeline describes it, from its `datasets` feature spec.
fn to_feature(name: &str, spec: &Value) -> Feature {
    let (dtype, class_names) = match spec {
        Value::Object(o) => match o.get("_type").and_then(Value::as_str) {
            Some("Value") => (o.get("dtype").and_then(Value::as_str).unwrap_or("unknown").to_string(), None),
            Some("ClassLabel") => {
                let names = match o.get("names").and_then(Value::as_array) {
                    Some(names) => Some(names.iter().map(|n| n.as_str().map(str::to_string).unwrap_or_else(|| n.to_string())).collect()),
                    None => o.get("num_classes").and_then(Value::as_u64).map(|n| (0..n).map(|i| i.to_string()).collect()),
                };
                ("int64".to_string(), names)
            }
            Some(other) => (other.to_ascii_lowercase(), None),
            None => ("struct".to_string(), None),
        },
        Value::Array(_) => ("list".to_string(), None),
        _ => ("unknown".to_string(), None),
    };
    Feature { name: name.to_string(), dtype, class_names }
}

// ---------------------------------------------------------------------------------------------
// Response shapes (only the fields used; everything else is ignored)

#[derive(Deserialize)]
struct ApiDataset {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    sha: Option<String>,
    #[serde(default)]
    gated: Value,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct IsValid {
    #[serde(default)]
    viewer: Option<bool>,
    #[serde(default)]
    preview: Option<bool>,
}

#[derive(Deserialize)]
struct SplitsResponse {
    #[serde(default)]
    splits: Vec<SplitEntry>,
    #[serde(default)]
    pending: Vec<Value>,
}

#[derive(Deserialize)]
struct SplitEntry {
    config: String,
    split: String,
}

#[derive(Deserialize)]
struct InfoResponse {
    dataset_info: InfoBody,
}

#[derive(Deserialize)]
struct InfoBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    features: OrderedFeatures,
    #[serde(default)]
    splits: Option<BTreeMap<String, InfoSplit>>,
}

#[derive(Deserialize)]
struct InfoSplit {
    #[serde(default)]
    num_examples: Option<u64>,
}

#[derive(Deserialize)]
struct SizeResponse {
    size: SizeBody,
    #[serde(default)]
    partial: bool,
}

#[derive(Deserialize)]
struct SizeBody {
    #[serde(default)]
    dataset: Option<SizeDataset>,
    #[serde(default)]
    configs: Vec<SizeConfig>,
    #[serde(default)]
    splits: Vec<SizeSplit>,
}

#[derive(Deserialize)]
struct SizeDataset {
    #[serde(default)]
    num_bytes_parquet_files: Option<u64>,
}

#[derive(Deserialize)]
struct SizeConfig {
    config: String,
    #[serde(default)]
    num_bytes_parquet_files: Option<u64>,
}

#[derive(Deserialize)]
struct SizeSplit {
    config: String,
    split: String,
    #[serde(default)]
    num_bytes_parquet_files: Option<u64>,
    #[serde(default)]
    num_rows: Option<u64>,
}

#[derive(Deserialize)]
struct ParquetResponse {
    #[serde(default)]
    parquet_files: Vec<ParquetEntry>,
    #[serde(default)]
    pending: Vec<Value>,
}

#[derive(Deserialize)]
struct ParquetEntry {
    config: String,
    split: String,
    url: String,
    filename: String,
    #[serde(default)]
    size: u64,
}

/// A JSON object of features, kept in the order the server wrote the columns.
#[derive(Default)]
struct OrderedFeatures(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedFeatures {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = OrderedFeatures;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of features")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    entries.push((k, v));
                }
                Ok(OrderedFeatures(entries))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(OrderedFeatures::default())
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(OrderedFeatures::default())
            }
        }
        deserializer.deserialize_any(OrderedVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_ids() {
        for ok in ["sklearn/iris", "ibm/duorc", "imdb", "HuggingFaceFW/fineweb-edu", "a/b.c_d-e"] {
            assert!(valid_dataset_id(ok), "{ok}");
        }
        for bad in ["", "/", "a/", "/b", "a/b/c", "a b/c", "../x", "a/..", "https://x/y", "a/-b", "a/b.", "a--b/c"] {
            assert!(!valid_dataset_id(bad), "{bad}");
        }
    }

    #[test]
    fn components() {
        assert!(safe_component("train"));
        assert!(safe_component("0000.parquet"));
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a\\b"] {
            assert!(!safe_component(bad), "{bad}");
        }
    }

    #[test]
    fn features_keep_order_and_class_names() {
        let info: InfoBody = serde_json::from_str(
            r#"{"features": {"zeta": {"dtype": "float64", "_type": "Value"},
                "alpha": {"names": ["neg", "pos"], "_type": "ClassLabel"},
                "tokens": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"}}}"#,
        )
        .unwrap();
        let f: Vec<Feature> = info.features.0.iter().map(|(n, s)| to_feature(n, s)).collect();
        assert_eq!(f[0].name, "zeta");
        assert_eq!(f[1].dtype, "int64");
        assert_eq!(f[1].class_names.as_deref(), Some(&["neg".to_string(), "pos".to_string()][..]));
        assert_eq!(f[2].dtype, "list");
    }

    #[test]
    fn debug_hides_token() {
        let c =
            HubClient::new("http://127.0.0.1:1".into(), "http://127.0.0.1:1".into(), Some("hf_secret".into()), 10, Duration::from_secs(1))
                .unwrap();
        assert!(!format!("{c:?}").contains("hf_secret"));
    }
}
