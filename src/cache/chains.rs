//! `previous_response_id` on the request path (issue 15). A Responses follow-up names an
//! earlier response instead of repeating the conversation. The provider resolves ids it made;
//! an id deja made (a cache hit, an answer translated from a provider without a Responses API:
//! `resp_dj…`) exists nowhere else, so deja resolves it. Every Responses answer deja serves or
//! relays is therefore remembered as a [`ChainRecord`] (the whole conversation as input items,
//! the answer's output last) under its response id, in the backend (the sled store, or the
//! shared PostgreSQL database so that any replica can resolve it), for
//! `cache.response_chain_ttl`, at most `cache.response_chains` of them.
//!
//! A follow-up is then [`resolve`]d before anything else looks at it:
//! - **known** id: the request becomes the stateless one it stands for (the conversation, then
//!   its own input; `previous_response_id` gone), so the cache looks it up with every earlier
//!   turn in its scope like any multi-turn request. Upstream gets that stateless body when deja
//!   made the id (the provider has never seen it), and the client's body unchanged when the
//!   provider did (it holds the full state, reasoning included);
//! - **unknown** provider id (made before deja was in the path, expired here, or a store that
//!   is down): forwarded as it came, uncached, and its answer is not remembered (deja does not
//!   know the whole conversation);
//! - **unknown** deja id: `400 previous_response_not_found`, as OpenAI answers an id it does not
//!   know, without an upstream call (the provider could not know it either).
//!
//! A record belongs to the tenant that made it (a hash of it is kept): another tenant's
//! follow-up does not find it. Nothing is remembered for `store: false` (the client asked the
//! provider not to keep the response either), for a provider-side `conversation`, or when the
//! request or the answer holds personal data (`[pii]` on): such follow-ups go upstream as sent.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::responses::chain::{self, ChainRecord};
use crate::api::ApiKind;
use crate::cache::CacheEngine;
use crate::config::chains::ChainsConfig;
use crate::config::pii::PiiMode;
use crate::metrics::Metrics;

/// What [`resolve`] made of a request.
#[derive(Debug)]
pub enum Resolved {
    /// Not a follow-up deja resolves (no `previous_response_id`, or a provider-side
    /// `conversation`): the request as it came.
    Plain,
    /// The conversation is known. `body` is the stateless request; `forward_expanded` when the
    /// provider cannot know `id` (deja made it), so `body` is what goes upstream too.
    Known {
        body: Map<String, Value>,
        id: String,
        forward_expanded: bool,
    },
    /// A provider's id deja does not know: forwarded as it came, uncached, not remembered.
    Unknown,
}

impl Resolved {
    /// The id to echo as the answer's `previous_response_id`.
    pub fn previous_id(&self) -> Option<&str> {
        match self {
            Resolved::Known { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Resolves a Responses request's `previous_response_id` for `tenant` (see the module docs).
/// `engine` is `None` while the store is loading.
pub async fn resolve(
    engine: Option<&CacheEngine>,
    cfg: &ChainsConfig,
    body: &Map<String, Value>,
    tenant: &str,
    metrics: &Metrics,
) -> Result<Resolved, ApiError> {
    let Some(id) = chain::previous_id(body) else {
        return Ok(Resolved::Plain);
    };
    let minted = chain::is_minted(id);
    let not_found = || {
        metrics.chains.event("not_found");
        ApiError::PreviousResponseNotFound { id: id.to_string() }
    };
    let found = match engine {
        _ if !cfg.enabled() => None,
        None if minted => {
            // The store is still loading: the record may well be there in a moment.
            return Err(ApiError::Overloaded {
                retry_after_s: Some(1),
            });
        }
        None => None,
        Some(engine) => match engine.chain(id.to_string()).await {
            Ok(found) => found,
            Err(e) => {
                metrics.chains.event("failed");
                tracing::warn!(error = %e, "reading a response chain failed");
                if minted {
                    return Err(ApiError::Overloaded {
                        retry_after_s: Some(1),
                    });
                }
                None
            }
        },
    };
    let record = found
        .as_deref()
        .and_then(ChainRecord::decode)
        .filter(|r| r.belongs_to(tenant));
    match record {
        Some(r) => {
            metrics.chains.event("resolved");
            Ok(Resolved::Known {
                body: chain::expand(body, &r.items),
                id: id.to_string(),
                forward_expanded: minted,
            })
        }
        None if minted => Err(not_found()),
        None => {
            metrics.chains.event("unknown");
            Ok(Resolved::Unknown)
        }
    }
}

/// Remembers one answer's conversation once the answer is known: the conversation so far is
/// fixed when the request is planned, the answer's output is added by [`ChainWrite::record`].
pub struct ChainWrite {
    engine: CacheEngine,
    tenant: String,
    items: Vec<Value>,
    cfg: ChainsConfig,
    /// Largest record kept (the request body cap: a conversation a client could not send).
    max_bytes: usize,
    pii: PiiMode,
    metrics: Arc<Metrics>,
}

/// What a request needs to have its answer remembered.
pub struct WriteContext<'a> {
    pub engine: Option<&'a CacheEngine>,
    pub cfg: &'a ChainsConfig,
    pub api: ApiKind,
    /// The request as resolved (the stateless body of a known follow-up).
    pub body: &'a Map<String, Value>,
    pub resolved: &'a Resolved,
    pub tenant: &'a str,
    /// The request held no personal data (or `[pii]` is off).
    pub clean: bool,
    pub pii: PiiMode,
    pub max_bytes: usize,
    pub metrics: Arc<Metrics>,
}

impl ChainWrite {
    /// `None` when nothing may be remembered for this request (see the module docs).
    pub fn new(cx: WriteContext<'_>) -> Option<ChainWrite> {
        let engine = cx.engine?;
        let remembers = cx.api == ApiKind::Responses
            && cx.cfg.enabled()
            && cx.clean
            && !matches!(cx.resolved, Resolved::Unknown)
            && cx.body.get("store").and_then(Value::as_bool) != Some(false)
            && cx.body.get("conversation").is_none_or(Value::is_null);
        remembers.then(|| ChainWrite {
            engine: engine.clone(),
            tenant: cx.tenant.to_string(),
            items: chain::input_items(cx.body),
            cfg: *cx.cfg,
            max_bytes: cx.max_bytes,
            pii: cx.pii,
            metrics: cx.metrics,
        })
    }

    /// Remembers the conversation with `response` (the finished `response` object the client
    /// got) as its last turn. Awaited before the client can name the id in a follow-up.
    pub async fn record(self, response: &Value) {
        let Some((id, answer)) = chain::answer_items(response) else {
            return;
        };
        if self.pii != PiiMode::Off && !crate::pii::kinds_in(texts(&answer)).is_empty() {
            return;
        }
        let mut items = self.items;
        items.extend(answer);
        let record = ChainRecord::new(&self.tenant, items).encode();
        if record.len() > self.max_bytes {
            self.metrics.chains.event("too_large");
            return;
        }
        let ttl: Duration = self.cfg.ttl;
        match self
            .engine
            .put_chain(id, record, ttl, self.cfg.limits())
            .await
        {
            Ok(()) => self.metrics.chains.event("recorded"),
            Err(e) => {
                self.metrics.chains.event("failed");
                tracing::warn!(error = %e, "remembering a response chain failed");
            }
        }
    }
}

/// The texts of answer items: message parts and call arguments.
fn texts(items: &[Value]) -> Vec<&str> {
    let mut out = Vec::new();
    for item in items {
        if let Some(a) = item.get("arguments").and_then(Value::as_str) {
            out.push(a);
        }
        for part in item
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                out.push(t);
            }
        }
    }
    out
}
