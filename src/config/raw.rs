//! The raw, serde-shaped view of `config.toml`: every field optional where a default exists,
//! unknown fields rejected. Nothing here is trusted; [`super::validate`] turns it into a
//! [`super::Config`]. Never read raw values elsewhere.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub index: RawIndex,
    #[serde(default)]
    pub embedding: RawEmbedding,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub prices: Vec<RawPrice>,
    /// `[[keys]]`: deja keys (issue 16), see `config::keys`.
    #[serde(default)]
    pub keys: Vec<super::keys::RawKey>,
    /// `[pii]` (issue 16), see `config::pii`.
    #[serde(default)]
    pub pii: super::pii::RawPii,
    /// `[quality]`: feedback, shadow checks, recorded pairs (issue 17), see `config::quality`.
    #[serde(default)]
    pub quality: super::quality::RawQuality,
    /// `[admin]` (issue 17), see `config::admin`.
    #[serde(default)]
    pub admin: super::admin::RawAdmin,
    /// `[[templates]]` (issue 16), see `config::templates`.
    #[serde(default)]
    pub templates: Vec<super::templates::RawTemplate>,
    /// `[audit]` (issue 16), see `config::audit`.
    #[serde(default)]
    pub audit: super::audit::RawAudit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub model: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub log_format: Option<String>,
    pub shutdown_grace: Option<String>,
    pub watch_config: Option<bool>,
    // Connection bounds (issue 12): see `config::ServerConfig`.
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_connections: Option<u64>,
    /// `passthrough` (default) or `keys` (issue 16), see `config::keys`.
    pub auth: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub dir: Option<String>,
    pub threshold: Option<f64>,
    pub verified_threshold: Option<f64>,
    pub ttl: Option<String>,
    pub max_entries: Option<u64>,
    pub guards: Option<bool>,
    pub max_turns: Option<u64>,
    /// `api-key` (default: hash of the client's key) or `shared` (one namespace for everyone).
    pub tenant: Option<String>,
    pub namespace: Option<String>,
    pub flush_interval: Option<String>,
    #[serde(default)]
    pub thresholds: Vec<RawThreshold>,
    // --- Bounded upstream answers (issue 12) ---
    pub max_entry_bytes: Option<u64>,
    /// Namespaces the operator grants to listed client keys (`x-deja-namespace`).
    #[serde(default)]
    pub namespaces: Vec<RawNamespace>,
    /// `[cache.judge]`: the optional LLM judge (issue 13), see `config::judge`.
    pub judge: Option<super::judge::RawJudge>,
    /// `[cache.verifier]`: the optional verifier model, see `config::verifier`.
    pub verifier: Option<super::verifier::RawVerifier>,
    /// `embedded` (default) or `postgres` (issue 14), see `config::backend`.
    pub backend: Option<String>,
    /// `[cache.postgres]`: the shared backend's connection (issue 14), see `config::backend`.
    pub postgres: Option<super::backend::RawPostgres>,
    /// Share of semantic hits shadow-checked upstream (issue 17), see `config::quality`.
    pub audit_rate: Option<f64>,
    /// Responses conversations remembered for `previous_response_id` (issue 15), see
    /// `config::chains`.
    pub response_chains: Option<u64>,
    pub response_chain_ttl: Option<String>,
    pub response_chain_bytes: Option<u64>,
}

/// `[[cache.namespaces]]`: a namespace and the SHA-256 hashes of the keys that may use it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    pub name: String,
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    pub model: String,
    pub threshold: f64,
    pub verified_threshold: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIndex {
    pub flat_max: Option<u64>,
    pub hnsw_m: Option<u64>,
    pub ef_construction: Option<u64>,
    pub ef_search: Option<u64>,
    pub rebuild_tombstone_fraction: Option<f64>,
    pub snapshot: Option<bool>,
    pub snapshot_every: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbedding {
    pub model: Option<String>,
    pub revision: Option<String>,
    pub device: Option<String>,
    pub max_tokens: Option<u64>,
    pub sha256: Option<String>,
    pub threads: Option<u64>,
    pub compute_threads: Option<u64>,
    pub cpu_backend: Option<String>,
    pub max_batch: Option<u64>,
    pub lru_capacity: Option<u64>,
    pub queue_capacity: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub max_retries: Option<u64>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub breaker_failures: Option<u64>,
    pub breaker_cooldown: Option<String>,
    pub api_version: Option<String>,
    // --- Bounded upstream answers (issue 12) ---
    pub max_response_bytes: Option<u64>,
    pub max_event_bytes: Option<u64>,
    pub stream_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub model: String,
    /// Shorthand: provider names in fallback order.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Full form: ordered targets, each may rename the model.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    pub threshold: Option<f64>,
    pub verified_threshold: Option<f64>,
    /// Cache answers that contain tool calls (default false; see `config::tools`).
    pub cache_tool_calls: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: String,
    pub model: Option<String>,
    pub weight: Option<u32>,
}
