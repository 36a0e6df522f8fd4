//! Stage 1 of the cached request path: a parsed request becomes a [`CacheRequest`] (the
//! per-request context every later stage reads, as pingora keeps one context per request), and
//! the policy turns it into a [`Planned`] request: either a bypass with its reason, or a cache
//! plan bound to the engine that will run it.
//!
//! ```text
//! CacheRequest::new ──plan──▶ Planned ──look_up──▶ LookedUp::Hit(Hit)
//!                                                 LookedUp::Miss(Miss) ──settle/tee──▶ stored
//! ```
//!
//! The HTTP edge (`server/`) builds the request, renders a [`super::lookup::Hit`] or forwards a
//! [`super::miss::Miss`] upstream and hands the answer back to it; it makes no cache decision.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use crate::api::canonical::CanonicalRequest;
use crate::api::ApiKind;
use crate::cache::engine::CacheEngine;
use crate::cache::policy::{self, BypassReason, CachePlan, NamespaceDenied, Plan, RequestControls};
use crate::config::Config;

/// One request on the cached path, as every stage sees it. Built once, never mutated.
pub struct CacheRequest {
    pub api: ApiKind,
    pub canonical: CanonicalRequest,
    /// The parsed body, kept for token estimation once the answer is complete.
    pub body: Arc<Map<String, Value>>,
    pub controls: RequestControls,
    /// The client's API key. Only its hash ever leaves this struct (see [`policy::tenant`]).
    key: Option<String>,
    /// The scope's tenant: a hash of the key or a namespace, for per-tenant accounting.
    pub tenant: String,
    /// The config snapshot this request runs under from start to end.
    pub config: Arc<Config>,
    pub started: Instant,
}

impl CacheRequest {
    /// `body` is the validated request object (see `api::inbound::parse_request`). Fails when
    /// the request names a namespace its key was not granted.
    pub fn new(
        api: ApiKind,
        body: Map<String, Value>,
        controls: RequestControls,
        key: Option<String>,
        config: Arc<Config>,
        started: Instant,
    ) -> Result<CacheRequest, NamespaceDenied> {
        let canonical = canonical_of(api, &body);
        let tenant = policy::tenant(&config, key.as_deref(), &controls)?;
        Ok(CacheRequest {
            api,
            canonical,
            body: Arc::new(body),
            controls,
            key,
            tenant,
            config,
            started,
        })
    }

    /// Files the request under the tenant its deja key names (`server.auth = "keys"`),
    /// instead of the one derived from the client's credentials.
    pub fn with_tenant(mut self, tenant: String) -> CacheRequest {
        self.tenant = tenant;
        self
    }

    /// The same request with another body: a Responses follow-up resolved into the stateless
    /// request it stands for (`cache::chains`). Scope and prompt follow the new body.
    pub fn with_body(mut self, body: Map<String, Value>) -> CacheRequest {
        self.canonical = canonical_of(self.api, &body);
        self.body = Arc::new(body);
        self
    }

    /// The key to send upstream when the provider has none of its own.
    pub fn client_key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub fn model(&self) -> &str {
        &self.canonical.model
    }

    /// The policy stage: what the cache does for this request. `engine` is `None` while the
    /// model and store are still loading; such requests are forwarded uncached.
    pub fn plan(&self, engine: Option<&CacheEngine>) -> Planned {
        let Some(engine) = engine else {
            return Planned::Bypass(BypassReason::Warming);
        };
        match policy::plan(&self.config, &self.canonical, &self.tenant, &self.controls) {
            Plan::Bypass(reason) => Planned::Bypass(reason),
            Plan::Use(plan) => Planned::Cached {
                engine: engine.clone(),
                plan,
            },
        }
    }
}

fn canonical_of(api: ApiKind, body: &Map<String, Value>) -> CanonicalRequest {
    match api {
        ApiKind::Chat => CanonicalRequest::from_chat(body),
        ApiKind::Completions => CanonicalRequest::from_completions(body),
        ApiKind::Messages => CanonicalRequest::from_messages(body),
        ApiKind::Responses => CanonicalRequest::from_responses(body),
    }
}

/// The outcome of the policy stage.
pub enum Planned {
    /// Forward without reading or writing the cache.
    Bypass(BypassReason),
    /// Run `plan` on `engine`: look up (when the plan reads), then store the answer of a miss
    /// (when it writes).
    Cached {
        engine: CacheEngine,
        plan: CachePlan,
    },
}
