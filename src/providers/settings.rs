//! Plain settings for upstream providers and model routes. The config layer maps `config.toml`
//! into these; nothing here reads files or validates beyond what the router needs to build.
//! Secrets never live here: a provider names the environment variable that holds its key, and
//! the key is read at request time so that rotating it needs no restart.

use std::fmt;
use std::time::Duration;

/// Azure OpenAI's `api-version` query parameter when `api_version` is unset (the GA version
/// with `stream_options` and `max_completion_tokens`).
pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// Anthropic's `anthropic-version` header when `api_version` is unset.
pub const ANTHROPIC_DEFAULT_VERSION: &str = "2023-06-01";

/// Default [`ProviderSettings::max_response_bytes`]: 64 MiB. Chat answers are kilobytes, but
/// the same cap covers pass-through answers, and the largest documented ones are embeddings: a
/// full 2,048-input batch of 3,072-dimension vectors is ~34 MB in the base64 encoding the
/// openai SDKs ask for. 32 MiB would cut that; the cap is per answer in flight, so 64 MiB
/// bounds memory at a size a proxy host has.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Default [`ProviderSettings::stream_timeout`]: 10 minutes, the openai SDK's own request
/// timeout; reasoning models stream for minutes, nothing legitimate streams for ten.
pub const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(600);

/// Which vendor API a provider exposes. Each variant decides how a request is addressed and
/// authenticated (see `client::Provider::build_request`) and which client APIs it speaks
/// natively (see [`crate::providers::translate::upstream_api`]); other APIs are translated per
/// attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server (vLLM, Ollama, llama.cpp, LiteLLM, ...):
    /// `POST {base_url}/chat/completions` with `Authorization: Bearer <key>`.
    #[default]
    OpenAi,
    /// Azure OpenAI: `POST {base_url}/openai/deployments/{model}/chat/completions
    /// ?api-version=V` with `api-key: <key>`; OpenAI's bodies.
    Azure,
    /// Anthropic: `POST {base_url}/v1/messages` with `x-api-key: <key>` and
    /// `anthropic-version: V`.
    Anthropic,
    /// Google Gemini through its OpenAI-compatible endpoint
    /// (`https://generativelanguage.googleapis.com/v1beta/openai`): `POST
    /// {base_url}/chat/completions` with `Authorization: Bearer <Gemini API key>`. It speaks chat
    /// completions only: Messages and Responses requests are translated, legacy completions
    /// refused.
    Gemini,
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Azure => "azure",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
        }
    }
}

/// One upstream endpoint. Field docs say what the vendor SDK would call them.
#[derive(Clone)]
pub struct ProviderSettings {
    /// Name used in routes, logs, metrics and `x-deja-provider`.
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL as the vendor SDK takes it, e.g. `https://api.openai.com/v1`; request paths
    /// (`/chat/completions`) are appended to it.
    pub base_url: String,
    /// Environment variable holding this provider's API key. `None` forwards the client's own
    /// bearer token instead (or none, for keyless local servers).
    pub api_key_env: Option<String>,
    /// TCP + TLS connect limit.
    pub connect_timeout: Duration,
    /// Per attempt: from sending the request until the response headers arrive (for a JSON
    /// answer, until its whole body has arrived, since nothing reaches the client before).
    pub request_timeout: Duration,
    /// Streams only: the longest silence tolerated between two body chunks.
    pub read_timeout: Duration,
    // --- Bounds on what an upstream may send (issue 12) ---
    /// Streams only: the whole stream, from sending the request to its last byte. A stream
    /// still running then is cut (the client gets an error event).
    pub stream_timeout: Duration,
    /// Largest non-streamed body read from this provider; a bigger one is a 502 and is not
    /// read past the cap.
    pub max_response_bytes: usize,
    /// Largest SSE line or event buffered from this provider's streams; a stream that sends a
    /// bigger one is cut (the client gets an error event).
    pub max_event_bytes: usize,
    /// Retries on this provider after the first attempt (so `max_retries + 1` attempts).
    pub max_retries: u32,
    /// First backoff ceiling; doubles per retry (full jitter draws below it).
    pub backoff_base: Duration,
    /// Ceiling on any single backoff, `Retry-After` included.
    pub backoff_max: Duration,
    /// Consecutive failed requests (each after all its retries on this provider) that open
    /// the breaker; 0 disables the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker rejects before letting one probe through.
    pub breaker_cooldown: Duration,
    /// Headers added to every request (e.g. `OpenAI-Organization`). Values are redacted in
    /// `Debug` since some vendors put credentials here.
    pub extra_headers: Vec<(String, String)>,
    /// Azure: the `api-version` query parameter (default [`AZURE_DEFAULT_API_VERSION`]).
    /// Anthropic: the `anthropic-version` header (default [`ANTHROPIC_DEFAULT_VERSION`]).
    /// Unused for OpenAI.
    pub api_version: Option<String>,
}

impl ProviderSettings {
    /// Settings with the defaults documented on each field.
    pub fn new(
        name: impl Into<String>,
        kind: ProviderKind,
        base_url: impl Into<String>,
    ) -> ProviderSettings {
        ProviderSettings {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            api_key_env: None,
            connect_timeout: Duration::from_secs(10),
            // OpenAI's own SDK waits 600 s: a long non-streaming answer sends no header before
            // it is complete.
            request_timeout: Duration::from_secs(600),
            read_timeout: Duration::from_secs(120),
            stream_timeout: DEFAULT_STREAM_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_event_bytes: crate::providers::sse::DEFAULT_MAX_EVENT_BYTES,
            max_retries: 2,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            extra_headers: Vec::new(),
            api_version: None,
        }
    }

    /// OpenAI-compatible provider with defaults.
    pub fn openai(name: impl Into<String>, base_url: impl Into<String>) -> ProviderSettings {
        ProviderSettings::new(name, ProviderKind::OpenAi, base_url)
    }

    /// Azure OpenAI resource (`https://myres.openai.azure.com`) with defaults.
    pub fn azure(name: impl Into<String>, base_url: impl Into<String>) -> ProviderSettings {
        ProviderSettings::new(name, ProviderKind::Azure, base_url)
    }

    /// Gemini's OpenAI-compatible endpoint
    /// (`https://generativelanguage.googleapis.com/v1beta/openai`) with defaults.
    pub fn gemini(name: impl Into<String>, base_url: impl Into<String>) -> ProviderSettings {
        ProviderSettings::new(name, ProviderKind::Gemini, base_url)
    }

    /// Anthropic (`https://api.anthropic.com`) with defaults.
    pub fn anthropic(name: impl Into<String>, base_url: impl Into<String>) -> ProviderSettings {
        ProviderSettings::new(name, ProviderKind::Anthropic, base_url)
    }

    /// The version this provider sends: the configured one, else the kind's default; `None`
    /// for OpenAI, which has no version parameter.
    pub fn effective_api_version(&self) -> Option<&str> {
        match self.kind {
            ProviderKind::OpenAi | ProviderKind::Gemini => None,
            ProviderKind::Azure => Some(
                self.api_version
                    .as_deref()
                    .unwrap_or(AZURE_DEFAULT_API_VERSION),
            ),
            ProviderKind::Anthropic => Some(
                self.api_version
                    .as_deref()
                    .unwrap_or(ANTHROPIC_DEFAULT_VERSION),
            ),
        }
    }
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .extra_headers
            .iter()
            .map(|(k, _)| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("ProviderSettings")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key_env", &self.api_key_env)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("stream_timeout", &self.stream_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("extra_headers", &headers)
            .field("api_version", &self.api_version)
            .finish()
    }
}

impl From<&crate::config::ProviderConfig> for ProviderSettings {
    fn from(p: &crate::config::ProviderConfig) -> ProviderSettings {
        use crate::config::ProviderKind as Cfg;
        let kind = match p.kind {
            Cfg::OpenAi => ProviderKind::OpenAi,
            Cfg::Azure => ProviderKind::Azure,
            Cfg::Anthropic => ProviderKind::Anthropic,
            Cfg::Gemini => ProviderKind::Gemini,
        };
        ProviderSettings {
            name: p.name.clone(),
            kind,
            base_url: p.base_url.clone(),
            api_key_env: p.api_key_env.clone(),
            connect_timeout: p.connect_timeout,
            request_timeout: p.request_timeout,
            read_timeout: p.read_timeout,
            stream_timeout: p.stream_timeout,
            max_response_bytes: p.max_response_bytes,
            max_event_bytes: p.max_event_bytes,
            max_retries: p.max_retries,
            backoff_base: p.backoff_base,
            backoff_max: p.backoff_max,
            breaker_failures: p.breaker_failures,
            breaker_cooldown: p.breaker_cooldown,
            extra_headers: Vec::new(),
            api_version: p.api_version.clone(),
        }
    }
}

/// Where requests whose model matches `model_glob` go. Routes are matched in order, first match
/// wins; `*` matches every model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSettings {
    pub model_glob: String,
    /// Tried in order (see [`RouteTarget::weight`] for load spreading).
    pub targets: Vec<RouteTarget>,
}

impl From<&crate::config::RouteConfig> for RouteSettings {
    fn from(r: &crate::config::RouteConfig) -> RouteSettings {
        RouteSettings {
            model_glob: r.model_glob.as_str().to_string(),
            targets: r.targets.iter().map(RouteTarget::from).collect(),
        }
    }
}

/// One provider in a route's fallback chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// A [`ProviderSettings::name`].
    pub provider: String,
    /// Model name to send this provider instead of the client's (rename); `None` keeps it.
    pub model: Option<String>,
    /// Targets with a positive weight are shuffled to the front of the chain per request,
    /// each drawn first with probability proportional to its weight; targets without a weight
    /// (or weight 0) follow in listed order as pure fallbacks.
    pub weight: Option<u32>,
}

impl RouteTarget {
    pub fn new(provider: impl Into<String>) -> RouteTarget {
        RouteTarget {
            provider: provider.into(),
            model: None,
            weight: None,
        }
    }
}

impl From<&crate::config::RouteTarget> for RouteTarget {
    fn from(t: &crate::config::RouteTarget) -> RouteTarget {
        RouteTarget {
            provider: t.provider.clone(),
            model: t.model.clone(),
            weight: t.weight,
        }
    }
}

impl RouteSettings {
    /// Route `model_glob` to `providers` in order, without renames or weights.
    pub fn new(model_glob: impl Into<String>, providers: &[&str]) -> RouteSettings {
        RouteSettings {
            model_glob: model_glob.into(),
            targets: providers.iter().map(|p| RouteTarget::new(*p)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_defaults_per_kind() {
        assert_eq!(
            ProviderSettings::openai("o", "http://x/v1").effective_api_version(),
            None
        );
        assert_eq!(
            ProviderSettings::azure("z", "https://r.openai.azure.com").effective_api_version(),
            Some(AZURE_DEFAULT_API_VERSION)
        );
        let mut a = ProviderSettings::anthropic("a", "https://api.anthropic.com");
        assert_eq!(a.effective_api_version(), Some(ANTHROPIC_DEFAULT_VERSION));
        a.api_version = Some("2099-01-01".into());
        assert_eq!(a.effective_api_version(), Some("2099-01-01"));
        assert_eq!(ProviderKind::Azure.as_str(), "azure");
        assert_eq!(ProviderKind::Anthropic.as_str(), "anthropic");
    }

    #[test]
    fn debug_redacts_extra_header_values() {
        let mut s = ProviderSettings::openai("a", "http://x/v1");
        s.extra_headers
            .push(("api-key".to_string(), "sk-secret-value".to_string()));
        let shown = format!("{s:?}");
        assert!(shown.contains("api-key"));
        assert!(!shown.contains("sk-secret-value"));
    }
}
