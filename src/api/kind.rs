//! [`ApiKind`]: which client API a request speaks. One type for every layer that needs to know:
//! the canonical request and the cache scope, the per-API dispatch of `api::inbound`, the shape
//! of an error body ([`crate::api::ApiError::into_response_for`]), and the providers, which
//! translate a request into the API of a provider that does not speak it.
//!
//! A request that deja does not understand (the pass-through endpoints) has no `ApiKind`: it is
//! an `Option<ApiKind>` of `None`, sent and answered untouched, with OpenAI's error shape unless
//! its path is under Anthropic's `/v1/messages` ([`ApiKind::for_path`]).

/// Which client API a request speaks, and so the API its answer (and its errors) must come back
/// in. Part of the cache scope: a chat answer is not a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiKind {
    /// OpenAI `POST /v1/chat/completions`.
    Chat,
    /// OpenAI legacy `POST /v1/completions`.
    Completions,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// OpenAI `POST /v1/responses` (the Responses API).
    Responses,
}

impl ApiKind {
    /// Low-cardinality name, for metric labels, logs and the cache scope.
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiKind::Chat => "chat",
            ApiKind::Completions => "completions",
            ApiKind::Messages => "messages",
            ApiKind::Responses => "responses",
        }
    }

    /// The name the cache scope is keyed on. A Responses request is keyed on its chat form
    /// (`api::responses::to_chat`), so it shares scopes, and answers, with chat.
    pub fn scope_name(&self) -> &'static str {
        match self {
            ApiKind::Responses => ApiKind::Chat.as_str(),
            other => other.as_str(),
        }
    }

    /// Path appended to a provider's base URL for this API.
    pub fn upstream_path(&self) -> &'static str {
        match self {
            ApiKind::Chat => "/chat/completions",
            ApiKind::Completions => "/completions",
            ApiKind::Messages => "/messages",
            ApiKind::Responses => "/responses",
        }
    }

    /// The API whose error shape a client of an uncached `path` (pass-through, unknown route)
    /// expects: [`ApiKind::Messages`] under `/v1/messages` (Anthropic's messages, batches and
    /// token counting), `None` (OpenAI's shape) everywhere else.
    pub fn for_path(path: &str) -> Option<ApiKind> {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Some(ApiKind::Messages)
        } else {
            None
        }
    }
}
