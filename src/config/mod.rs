//! Configuration: `config.toml` → environment overrides (`DEJA__SECTION__KEY`) → raw serde
//! structs ([`raw`]) → [`validate`] → a typed [`Config`]. Every problem is reported at once with
//! its field path. Secrets never live here: providers name the env var that holds their key.
//! This module never touches the network, the store or the model.

pub mod admin;
pub mod audit;
pub mod backend;
pub mod chains;
pub mod grants;
pub mod judge;
pub mod keys;
mod parse;
pub mod pii;
pub mod quality;
pub mod raw;
pub mod shadow_judge;
pub mod templates;
pub mod tools;
mod validate;
pub mod verifier;

use crate::cache::verify::{ModelBar, Rule};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use admin::AdminConfig;
pub use backend::{BackendConfig, PostgresConfig};
pub use grants::{KeyHash, NamespaceGrant};
pub use judge::JudgeConfig;
pub use keys::{AuthMode, KeysConfig};
pub use pii::{PiiConfig, PiiMode};
pub use quality::QualityConfig;
pub use validate::validate;
pub use verifier::VerifierConfig;

/// One problem in a config, with the dotted path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is invalid:\n{}", format_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn format_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(v) => v,
            ConfigError::Read { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    pub watch_config: bool,
    /// How long a client has to send a request's line and headers, from the moment the
    /// connection opens or its previous request's first byte arrives (slowloris bound).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit with no request in flight before it is closed.
    pub idle_timeout: Duration,
    /// How long a handler waits for the whole request body; past it the answer is 408.
    pub body_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
}

/// Whose answers a client may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantMode {
    /// Hash of the client's API key (Authorization bearer or x-api-key): the default.
    ApiKey,
    /// Everyone shares one namespace (e.g. a single internal chatbot).
    Shared,
}

#[derive(Debug, Clone)]
pub struct ThresholdOverride {
    pub model_glob: ModelGlob,
    pub threshold: f32,
    /// The lexical verifier's bar for this model; unset = `threshold` (a plain cosine rule).
    pub verified_threshold: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Cosine similarity in [-1, 1] at which a candidate is served on similarity alone; higher
    /// = stricter.
    pub threshold: f32,
    /// Cosine at which a candidate the lexical verifier confirms (same content words, guards
    /// passed) is served (see `cache::verify`).
    pub verified_threshold: f32,
    pub ttl: Duration,
    pub max_entries: usize,
    pub guards: bool,
    /// Conversations with more messages than this skip the semantic layer (exact only).
    pub max_turns: usize,
    pub tenant: TenantMode,
    pub namespace: String,
    pub flush_interval: Duration,
    /// Per-model thresholds (first matching glob wins); routes may also set one.
    pub thresholds: Vec<ThresholdOverride>,
    // --- Bounded upstream answers (issue 12) ---
    /// Largest answer stored: the text of a streamed answer, the body of a JSON one. Bigger
    /// answers are relayed unchanged but not cached (`deja_not_cached_total{reason="too_large"}`).
    pub max_entry_bytes: usize,
    /// Namespaces clients may name in `x-deja-namespace`, each with the keys granted it.
    pub namespaces: Vec<NamespaceGrant>,
    /// `[cache.judge]`: the LLM judge for uncertain semantic candidates; `None` = no judge.
    pub judge: Option<JudgeConfig>,
    /// `[cache.verifier]`: the cross-encoder for the band below the thresholds; `None` = none.
    pub verifier: Option<VerifierConfig>,
    /// `[cache] backend` + `[cache.postgres]`: where entries and vectors live.
    pub backend: BackendConfig,
    /// `cache.audit_rate` + `[quality]`: feedback and shadow checks (issue 17).
    pub quality: QualityConfig,
    /// `cache.response_chains` + `cache.response_chain_ttl`: `previous_response_id` (issue 15).
    pub chains: chains::ChainsConfig,
}

#[derive(Debug, Clone)]
pub struct IndexConfig {
    pub flat_max: usize,
    pub hnsw_m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    pub rebuild_tombstone_fraction: f32,
    /// Write HNSW graphs to `<cache.dir>/index-snapshot/` at shutdown (and every
    /// `snapshot_every`), so a restart reloads them instead of rebuilding.
    pub snapshot: bool,
    /// How often a changed index is snapshotted while serving; zero = only at shutdown.
    pub snapshot_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
    Metal,
}

#[derive(Debug, Clone)]
pub struct EmbeddingConfig {
    /// A Hugging Face id or a local directory.
    pub model: String,
    pub revision: Option<String>,
    pub device: Device,
    pub max_tokens: usize,
    pub sha256: Option<String>,
    pub threads: usize,
    /// Threads one CPU forward pass uses; 0 = every core.
    pub compute_threads: usize,
    pub cpu_backend: crate::embed::CpuBackend,
    pub max_batch: usize,
    pub lru_capacity: usize,
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Azure,
    Anthropic,
    /// Google Gemini's OpenAI-compatible endpoint.
    Gemini,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key_env: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub read_timeout: Duration,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub api_version: Option<String>,
    // --- Bounded upstream answers (issue 12); see `providers::ProviderSettings` ---
    pub max_response_bytes: usize,
    pub max_event_bytes: usize,
    pub stream_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub provider: String,
    pub model: Option<String>,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub model_glob: ModelGlob,
    pub targets: Vec<RouteTarget>,
    pub threshold: Option<f32>,
    pub verified_threshold: Option<f32>,
    /// Store and serve answers that call tools (`cache_tool_calls`, see [`tools`]).
    pub cache_tool_calls: bool,
}

/// Price of the models a glob matches, in currency units (USD by convention) per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, usage: &crate::store::Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input_per_mtok
            + usage.completion_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

#[derive(Debug, Clone)]
pub struct PriceConfig {
    pub model_glob: ModelGlob,
    pub price: Price,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub index: IndexConfig,
    pub embedding: EmbeddingConfig,
    pub providers: Vec<ProviderConfig>,
    pub routes: Vec<RouteConfig>,
    pub prices: Vec<PriceConfig>,
    /// `server.auth` and `[[keys]]`: who may call deja.
    pub keys: KeysConfig,
    /// `[pii]`: what to do with personal data in prompts and answers.
    pub pii: PiiConfig,
    /// `[admin]`: the operator's listener (issue 17).
    pub admin: AdminConfig,
    /// `[[templates]]`: prompt templates, called as `model = "template:NAME"`.
    pub templates: Vec<templates::Template>,
    /// `[audit]`: the audit log.
    pub audit: audit::AuditConfig,
}

impl Config {
    /// The price of a model: the first `[[prices]]` glob that matches.
    pub fn price_for(&self, model: &str) -> Option<Price> {
        self.prices
            .iter()
            .find(|p| p.model_glob.matches(model))
            .map(|p| p.price)
    }

    /// Reads `path`, applies `DEJA__*` overrides from the process environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Config::from_toml_str(&text, std::env::vars(), base)
    }

    /// Parses TOML text with the given environment (only `DEJA__*` variables are read).
    /// Relative paths in the file are resolved against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        base_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            ConfigError::Invalid(vec![ConfigIssue {
                path: "<file>".into(),
                message: format!("not valid TOML: {}", e.message()),
            }])
        })?;
        let mut issues = Vec::new();
        apply_env_overrides(&mut value, env, &mut issues);
        // Unknown keys, type errors and value errors are reported together. A value taken out
        // for its type is not judged again (it fell back to its default).
        let Some((raw, repairs)) = parse::raw_config(value, &mut issues) else {
            return Err(ConfigError::Invalid(issues));
        };
        match validate(raw, base_dir) {
            Ok(config) if issues.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError::Invalid(issues)),
            Err(e) => {
                for issue in e.issues() {
                    let path = repairs.original_path(&issue.path);
                    if !issues.iter().any(|r| r.path == path) {
                        issues.push(ConfigIssue {
                            path,
                            message: issue.message.clone(),
                        });
                    }
                }
                Err(ConfigError::Invalid(issues))
            }
        }
    }

    /// Things that are valid but probably not what the operator meant, for a warning at start
    /// (and on reload): the server runs, but does not do what a proxy is for.
    pub fn warnings(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        if self.routes.is_empty() {
            out.push(ConfigIssue {
                path: "routes".into(),
                message: "no [[routes]] configured: every request to /v1 is answered 404 \
                          (no route for the model) until a route is added (the file is \
                          reloaded without a restart)"
                    .into(),
            });
        }
        out.extend(judge::judge_warnings(self));
        out
    }

    /// Logs [`Config::warnings`] at WARN, one line each.
    pub fn log_warnings(&self) {
        for w in self.warnings() {
            tracing::warn!(path = %w.path, "config: {}", w.message);
        }
    }

    /// The decision rule for a model: per-route, then `[[cache.thresholds]]`, then the
    /// defaults. An override that sets `threshold` without `verified_threshold` is a plain
    /// cosine rule (the lexical verifier cannot lower a bar someone raised for that model).
    pub fn rule_for(&self, model: &str) -> Rule {
        let (threshold, verified) = self.thresholds_for(model);
        Rule {
            threshold,
            verified_threshold: verified,
            guards: self.cache.guards,
            judge_floor: self.cache.judge.as_ref().map(|j| j.band),
            model: self.cache.verifier.as_ref().map(|v| ModelBar {
                floor: v.band,
                threshold: v.threshold,
            }),
        }
    }

    fn thresholds_for(&self, model: &str) -> (f32, f32) {
        for route in &self.routes {
            if route.model_glob.matches(model) {
                if let Some(t) = route.threshold {
                    return (t, route.verified_threshold.unwrap_or(t));
                }
                break;
            }
        }
        for o in &self.cache.thresholds {
            if o.model_glob.matches(model) {
                return (o.threshold, o.verified_threshold.unwrap_or(o.threshold));
            }
        }
        (self.cache.threshold, self.cache.verified_threshold)
    }

    /// The cosine-only threshold for a model: per-route, then `[[cache.thresholds]]`, then the
    /// default (the `threshold` of [`Config::rule_for`]).
    pub fn threshold_for(&self, model: &str) -> f32 {
        self.thresholds_for(model).0
    }
}

/// A shell-style glob on model names (`*`, `?`, `[...]`), compiled once when the configuration
/// is validated: matching runs on every request, compiling costs tens of microseconds.
#[derive(Debug, Clone)]
pub struct ModelGlob {
    pattern: String,
    /// `None` for an invalid pattern, which matches nothing (validation rejects it up front).
    matcher: Option<globset::GlobMatcher>,
}

impl ModelGlob {
    pub fn new(pattern: &str) -> Result<ModelGlob, globset::Error> {
        let matcher = globset::Glob::new(pattern)?.compile_matcher();
        Ok(ModelGlob {
            pattern: pattern.to_string(),
            matcher: Some(matcher),
        })
    }

    /// A pattern that failed to compile: it matches nothing.
    pub(crate) fn invalid(pattern: &str) -> ModelGlob {
        ModelGlob {
            pattern: pattern.to_string(),
            matcher: None,
        }
    }

    /// The glob as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, model: &str) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(model))
    }
}

/// `DEJA__CACHE__THRESHOLD=0.9` sets `cache.threshold`. Values are parsed as TOML scalars
/// (numbers, booleans, arrays) when they parse, else taken as strings.
fn apply_env_overrides(
    value: &mut toml::Value,
    env: impl IntoIterator<Item = (String, String)>,
    issues: &mut Vec<ConfigIssue>,
) {
    for (key, raw_value) in env {
        let Some(rest) = key.strip_prefix("DEJA__") else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(|p| p.is_empty()) {
            issues.push(ConfigIssue {
                path: key.clone(),
                message: "malformed override: expected DEJA__SECTION__KEY".into(),
            });
            continue;
        }
        let parsed = parse_env_value(&raw_value);
        let mut cursor = &mut *value;
        let mut ok = true;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let Some(table) = cursor.as_table_mut() else {
                issues.push(ConfigIssue {
                    path: key.clone(),
                    message: format!("cannot override inside non-table at '{part}'"),
                });
                ok = false;
                break;
            };
            if last {
                table.insert(part.clone(), parsed.clone());
                break;
            }
            cursor = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
        let _ = ok;
    }
}

fn parse_env_value(s: &str) -> toml::Value {
    let wrapped = format!("v = {s}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(s.into())),
        Err(_) => toml::Value::String(s.into()),
    }
}

#[cfg(test)]
mod tests;
