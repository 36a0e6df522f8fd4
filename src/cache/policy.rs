//! Cache policy: from a canonical request, the client's identity and its `Cache-Control` /
//! `x-deja-*` headers, decide whether and how the cache takes part: the hard scope, whether the
//! semantic layer may run, the effective threshold (a client may only tighten it), whether to
//! read and whether to write, and the TTL. Pure functions: no I/O, no model, no clock.

use std::time::Duration;

use crate::api::canonical::{Bypass, CanonicalRequest};
use crate::api::ApiKind;
use crate::cache::verify::Rule;
use crate::config::{grants, Config, KeyHash, TenantMode};
use crate::store::ScopeId;

/// The longest `x-deja-ttl` a client may ask for: ten years. Longer values are rejected rather
/// than clamped (as an out-of-range threshold is), since they are a client bug; unchecked, a value
/// near 2^64 ms wrapped into an entry that expired within a second.
pub const MAX_TTL: Duration = Duration::from_secs(MAX_TTL_DAYS * 86_400);
const MAX_TTL_DAYS: u64 = 3650;

/// Per-request controls taken from headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestControls {
    /// `Cache-Control: no-cache`: skip the lookup, refresh the entry from upstream.
    pub no_cache: bool,
    /// `Cache-Control: no-store`: do not write this answer.
    pub no_store: bool,
    /// `x-deja-threshold`: may only tighten the configured threshold.
    pub threshold: Option<f32>,
    /// `x-deja-ttl`: lifetime of the entry written by this request.
    pub ttl: Option<Duration>,
    /// `x-deja-namespace`: the tenant to file this request under.
    pub namespace: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ControlError {
    #[error("header x-deja-threshold: '{0}' is not a number in [-1, 1]")]
    Threshold(String),
    #[error("header x-deja-ttl: '{0}' is not a duration (e.g. \"10m\", \"1d\")")]
    Ttl(String),
    #[error("header x-deja-ttl: '{0}' is longer than the maximum of {max} days", max = MAX_TTL_DAYS)]
    TtlTooLong(String),
    #[error("header x-deja-namespace: must be 1 to 128 printable ASCII characters")]
    Namespace,
}

impl RequestControls {
    /// Parses the controls from header values (each already looked up by name).
    pub fn parse(
        cache_control: Option<&str>,
        threshold: Option<&str>,
        ttl: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<RequestControls, ControlError> {
        let mut c = RequestControls::default();
        if let Some(cc) = cache_control {
            for directive in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
                match directive.as_str() {
                    "no-cache" => c.no_cache = true,
                    "no-store" => c.no_store = true,
                    _ => {}
                }
            }
        }
        if let Some(t) = threshold {
            let v: f32 = t
                .trim()
                .parse()
                .map_err(|_| ControlError::Threshold(t.into()))?;
            if !(-1.0..=1.0).contains(&v) {
                return Err(ControlError::Threshold(t.into()));
            }
            c.threshold = Some(v);
        }
        if let Some(t) = ttl {
            let d = humantime::parse_duration(t.trim()).map_err(|_| ControlError::Ttl(t.into()))?;
            if d.is_zero() {
                return Err(ControlError::Ttl(t.into()));
            }
            if d > MAX_TTL {
                return Err(ControlError::TtlTooLong(t.into()));
            }
            c.ttl = Some(d);
        }
        if let Some(ns) = namespace {
            if !grants::valid_namespace(ns) {
                return Err(ControlError::Namespace);
            }
            c.namespace = Some(ns.to_string());
        }
        Ok(c)
    }
}

/// Why a request may not use the namespace it names. The message is the same whether or not
/// the namespace exists, so it tells a client nothing about other tenants.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NamespaceDenied {
    #[error(
        "x-deja-namespace '{0}' needs an API key the namespace is granted to \
         ([[cache.namespaces]] in deja's config)"
    )]
    NoKey(String),
    #[error(
        "x-deja-namespace '{0}' is not granted to this API key \
         ([[cache.namespaces]] in deja's config)"
    )]
    NotGranted(String),
}

impl From<NamespaceDenied> for crate::api::error::ApiError {
    fn from(e: NamespaceDenied) -> Self {
        crate::api::error::ApiError::Forbidden {
            message: e.to_string(),
        }
    }
}

/// Who is asking. Isolation by key is the default: two clients with different keys never
/// share answers unless the config says `tenant = "shared"`, or the operator granted both keys
/// the namespace they name (`[[cache.namespaces]]`). A namespace nobody granted is refused
/// rather than ignored: a client that means to share should learn it does not.
pub fn tenant(
    config: &Config,
    client_key: Option<&str>,
    controls: &RequestControls,
) -> Result<String, NamespaceDenied> {
    if let Some(ns) = &controls.namespace {
        let Some(key) = client_key else {
            return Err(NamespaceDenied::NoKey(ns.clone()));
        };
        let hash = KeyHash::of(key);
        let granted = config
            .cache
            .namespaces
            .iter()
            .any(|g| g.name == *ns && g.allows(&hash));
        if !granted {
            return Err(NamespaceDenied::NotGranted(ns.clone()));
        }
        return Ok(format!("ns:{ns}"));
    }
    Ok(match config.cache.tenant {
        TenantMode::Shared => format!("ns:{}", config.cache.namespace),
        TenantMode::ApiKey => match client_key {
            // The key itself never leaves this function: only its hash is kept.
            Some(k) => format!("key:{}", blake3::hash(k.as_bytes()).to_hex()),
            None => "anonymous".to_string(),
        },
    })
}

/// The hard scope: tenant + API + everything in the request except the prompt.
pub fn scope_id(tenant: &str, request: &CanonicalRequest) -> ScopeId {
    let mut material = Vec::with_capacity(tenant.len() + request.scope_material.len() + 16);
    material.extend_from_slice(tenant.as_bytes());
    material.push(0);
    material.extend_from_slice(request.api.scope_name().as_bytes());
    material.push(0);
    material.extend_from_slice(&request.scope_material);
    ScopeId::from_bytes(&material)
}

/// What the cache does for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Forward without reading or writing the cache.
    Bypass(BypassReason),
    Use(CachePlan),
}

#[derive(Debug, Clone, PartialEq)]
pub enum BypassReason {
    Request(Bypass),
    /// `Cache-Control: no-cache, no-store` together: nothing to read, nothing to write.
    ClientOptOut,
    /// The model or store is still loading: forward uncached rather than fail.
    Warming,
}

impl BypassReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            BypassReason::Request(b) => b.as_str(),
            BypassReason::ClientOptOut => "client-opt-out",
            BypassReason::Warming => "warming",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CachePlan {
    pub scope: ScopeId,
    pub prompt: String,
    /// Whether the semantic layer may run (else exact only).
    pub semantic: bool,
    /// The decision rule for semantic candidates, tightened by `x-deja-threshold`.
    pub rule: Rule,
    pub read: bool,
    pub write: bool,
    pub ttl: Duration,
    pub api: ApiKind,
    /// The tenant, recorded with the entry a miss stores (admin stats and purge by namespace).
    pub namespace: String,
}

/// The plan for one request of `tenant` (from [`tenant`], which has checked its namespace).
pub fn plan(
    config: &Config,
    request: &CanonicalRequest,
    tenant: &str,
    controls: &RequestControls,
) -> Plan {
    let prompt = match &request.prompt {
        Ok(p) => p.clone(),
        Err(b) => return Plan::Bypass(BypassReason::Request(b.clone())),
    };
    if controls.no_cache && controls.no_store {
        return Plan::Bypass(BypassReason::ClientOptOut);
    }
    let rule = config
        .rule_for(&request.model)
        .tightened(controls.threshold);
    Plan::Use(CachePlan {
        scope: scope_id(tenant, request),
        semantic: request.turns <= config.cache.max_turns && !prompt.is_empty(),
        prompt,
        rule,
        read: !controls.no_cache,
        write: !controls.no_store,
        ttl: controls.ttl.unwrap_or(config.cache.ttl),
        api: request.api,
        namespace: tenant.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(
            &format!("[cache]\nthreshold = 0.9\nmax_turns = 3\n{extra}"),
            Vec::<(String, String)>::new(),
            Path::new("/"),
        )
        .unwrap()
    }

    fn chat(v: serde_json::Value) -> CanonicalRequest {
        CanonicalRequest::from_chat(v.as_object().unwrap())
    }

    /// The plan as the flow builds it: the tenant first (its namespace checked), then the plan.
    fn plan(
        config: &Config,
        request: &CanonicalRequest,
        key: Option<&str>,
        controls: &RequestControls,
    ) -> Plan {
        let tenant = tenant(config, key, controls).unwrap();
        super::plan(config, request, &tenant, controls)
    }

    fn use_plan(p: Plan) -> CachePlan {
        match p {
            Plan::Use(c) => c,
            Plan::Bypass(b) => panic!("unexpected bypass {b:?}"),
        }
    }

    #[test]
    fn threshold_may_only_be_tightened() {
        let c = config("");
        let r = chat(json!({"model":"m","messages":[{"role":"user","content":"q"}]}));
        let loose = RequestControls {
            threshold: Some(0.5),
            ..Default::default()
        };
        assert_eq!(use_plan(plan(&c, &r, None, &loose)).rule.threshold, 0.9);
        let tight = RequestControls {
            threshold: Some(0.97),
            ..Default::default()
        };
        assert_eq!(use_plan(plan(&c, &r, None, &tight)).rule.threshold, 0.97);
    }

    #[test]
    fn different_keys_are_different_scopes_unless_shared() {
        let r = chat(json!({"model":"m","messages":[{"role":"user","content":"q"}]}));
        let none = RequestControls::default();
        let c = config("");
        let a = use_plan(plan(&c, &r, Some("sk-a"), &none)).scope;
        let b = use_plan(plan(&c, &r, Some("sk-b"), &none)).scope;
        assert_ne!(a, b);
        let shared = config("tenant = \"shared\"");
        let a = use_plan(plan(&shared, &r, Some("sk-a"), &none)).scope;
        let b = use_plan(plan(&shared, &r, Some("sk-b"), &none)).scope;
        assert_eq!(a, b);
        let ns = RequestControls {
            namespace: Some("team".into()),
            ..Default::default()
        };
        let granted = config(&grant("team", &["sk-a", "sk-b"]));
        let a = use_plan(plan(&granted, &r, Some("sk-a"), &ns)).scope;
        let b = use_plan(plan(&granted, &r, Some("sk-b"), &ns)).scope;
        assert_eq!(a, b);
    }

    fn grant(name: &str, keys: &[&str]) -> String {
        let hashes: Vec<String> = keys
            .iter()
            .map(|k| format!("\"{}\"", KeyHash::of(k)))
            .collect();
        format!(
            "[[cache.namespaces]]\nname = \"{name}\"\nkeys = [{}]\n",
            hashes.join(", ")
        )
    }

    #[test]
    fn issue12_namespace_needs_a_grant() {
        let ns = RequestControls {
            namespace: Some("team-a".into()),
            ..Default::default()
        };
        // Nobody is granted anything by default, with or without a key.
        let c = config("");
        assert_eq!(
            tenant(&c, Some("sk-b"), &ns),
            Err(NamespaceDenied::NotGranted("team-a".into()))
        );
        assert_eq!(
            tenant(&c, None, &ns),
            Err(NamespaceDenied::NoKey("team-a".into()))
        );
        // A grant covers the keys it lists, and only for its own name.
        let c = config(&grant("team-a", &["sk-a"]));
        assert_eq!(tenant(&c, Some("sk-a"), &ns), Ok("ns:team-a".to_string()));
        assert!(tenant(&c, Some("sk-b"), &ns).is_err());
        assert!(tenant(&c, None, &ns).is_err());
        let other = RequestControls {
            namespace: Some("team-b".into()),
            ..Default::default()
        };
        assert!(tenant(&c, Some("sk-a"), &other).is_err());
        // Shared mode still puts everyone in one namespace when no header names another.
        let shared = config("tenant = \"shared\"\nnamespace = \"everyone\"");
        let none = RequestControls::default();
        assert_eq!(tenant(&shared, None, &none), Ok("ns:everyone".to_string()));
        assert!(tenant(&shared, Some("sk-a"), &ns).is_err());
    }

    #[test]
    fn tenant_never_contains_the_key() {
        let c = config("");
        let t = tenant(&c, Some("sk-secret-123"), &RequestControls::default()).unwrap();
        assert!(!t.contains("sk-secret-123"));
    }

    #[test]
    fn long_conversations_are_exact_only() {
        let c = config("");
        let short = chat(json!({"model":"m","messages":[{"role":"user","content":"q"}]}));
        assert!(use_plan(plan(&c, &short, None, &RequestControls::default())).semantic);
        let long = chat(json!({"model":"m","messages":[
            {"role":"user","content":"a"},{"role":"assistant","content":"b"},
            {"role":"user","content":"c"},{"role":"assistant","content":"d"},
            {"role":"user","content":"more"}]}));
        assert!(!use_plan(plan(&c, &long, None, &RequestControls::default())).semantic);
    }

    #[test]
    fn cache_control_directives() {
        let c = RequestControls::parse(Some("No-Cache"), None, None, None).unwrap();
        assert!(c.no_cache && !c.no_store);
        let c = RequestControls::parse(Some("max-age=0, no-store"), None, None, None).unwrap();
        assert!(c.no_store && !c.no_cache);
        let cfg = config("");
        let r = chat(json!({"model":"m","messages":[{"role":"user","content":"q"}]}));
        let both = RequestControls {
            no_cache: true,
            no_store: true,
            ..Default::default()
        };
        assert_eq!(
            plan(&cfg, &r, None, &both),
            Plan::Bypass(BypassReason::ClientOptOut)
        );
    }

    #[test]
    fn bad_control_headers_are_errors() {
        assert!(RequestControls::parse(None, Some("high"), None, None).is_err());
        assert!(RequestControls::parse(None, Some("1.5"), None, None).is_err());
        assert!(RequestControls::parse(None, None, Some("forever"), None).is_err());
        assert!(RequestControls::parse(None, None, None, Some("has space")).is_err());
        let ok = RequestControls::parse(None, Some("0.95"), Some("10m"), Some("team-a")).unwrap();
        assert_eq!(ok.ttl, Some(Duration::from_secs(600)));
    }

    #[test]
    fn issue12_ttl_overflow_is_rejected() {
        // 2^64 / 1000 seconds: in milliseconds it wrapped to a 384 ms entry.
        for huge in ["18446744073709552s", "3651d", "11y"] {
            assert_eq!(
                RequestControls::parse(None, None, Some(huge), None),
                Err(ControlError::TtlTooLong(huge.into())),
                "{huge}"
            );
        }
        let max = RequestControls::parse(None, None, Some("3650d"), None).unwrap();
        assert_eq!(max.ttl, Some(MAX_TTL));
    }
}
