//! Routes a request by model to a chain of providers and drives the attempts: retries with
//! exponential backoff and full jitter (honouring `Retry-After`), fallback to the next target on
//! a retryable failure, and per-provider circuit breakers. A non-retryable status (400, 401,
//! 404, ...) is the upstream's answer and is returned, never retried. `send` returns only once
//! a target produced response headers, so the server can still fall back before anything
//! reaches the client; after that, a broken stream is the server's to report.

use crate::providers::breaker::BreakerState;
use crate::providers::client::Provider;
use crate::providers::error::{ProviderError, ProviderErrorKind, RouterConfigError, RouterError};
use crate::providers::settings::{ProviderSettings, RouteSettings, RouteTarget};
use crate::providers::stats::{ProviderStats, ProviderStatsSnapshot};
use crate::providers::types::{UpstreamRequest, UpstreamResponse};
use bytes::Bytes;
use globset::{Glob, GlobMatcher};
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A compiled route: which models it takes and the provider chain that serves them.
#[derive(Clone, Debug)]
pub struct Route {
    pub model_glob: String,
    pub targets: Vec<RouteTarget>,
    matcher: GlobMatcher,
}

impl Route {
    pub fn matches(&self, model: &str) -> bool {
        self.matcher.is_match(model)
    }

    /// Indices into `targets` in the order one request tries them: weighted targets first, in
    /// a weighted random order (Efraimidis–Spirakis), then unweighted ones as listed.
    pub fn attempt_order<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        let mut weighted: Vec<(f64, usize)> = Vec::new();
        let mut rest = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            match t.weight {
                Some(w) if w > 0 => {
                    // u in (0, 1]; ln(u)/w is a monotone transform of u^(1/w).
                    let u: f64 = 1.0 - rng.random::<f64>();
                    weighted.push((u.ln() / f64::from(w), i));
                }
                _ => rest.push(i),
            }
        }
        weighted.sort_by(|a, b| b.0.total_cmp(&a.0));
        weighted.into_iter().map(|(_, i)| i).chain(rest).collect()
    }
}

/// Providers plus routes. Cheap to clone; clones share providers (pools, breakers, counters).
#[derive(Clone)]
pub struct Router {
    providers: Arc<HashMap<String, Arc<Provider>>>,
    /// Provider names in configuration order, for stable stats output.
    order: Arc<Vec<String>>,
    routes: Vec<Route>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("providers", &self.order)
            .field("routes", &self.routes)
            .finish()
    }
}

impl Router {
    pub fn new(
        providers: Vec<ProviderSettings>,
        routes: Vec<RouteSettings>,
    ) -> Result<Router, RouterConfigError> {
        let mut map = HashMap::new();
        let mut order = Vec::new();
        for settings in providers {
            let name = settings.name.clone();
            if map.contains_key(&name) {
                return Err(RouterConfigError::DuplicateProvider(name));
            }
            map.insert(name.clone(), Arc::new(Provider::new(settings)?));
            order.push(name);
        }
        let router = Router {
            providers: Arc::new(map),
            order: Arc::new(order),
            routes: Vec::new(),
        };
        router.with_routes(routes)
    }

    /// Same providers (and so the same pools, breakers and counters) with new routes: the hot
    /// reload path.
    pub fn with_routes(&self, routes: Vec<RouteSettings>) -> Result<Router, RouterConfigError> {
        let mut compiled = Vec::with_capacity(routes.len());
        for r in routes {
            let matcher = Glob::new(&r.model_glob)
                .map_err(|e| RouterConfigError::BadGlob {
                    glob: r.model_glob.clone(),
                    message: e.to_string(),
                })?
                .compile_matcher();
            if r.targets.is_empty() {
                return Err(RouterConfigError::EmptyRoute { glob: r.model_glob });
            }
            if let Some(t) = r
                .targets
                .iter()
                .find(|t| !self.providers.contains_key(&t.provider))
            {
                return Err(RouterConfigError::UnknownProvider {
                    glob: r.model_glob.clone(),
                    provider: t.provider.clone(),
                });
            }
            compiled.push(Route {
                model_glob: r.model_glob,
                targets: r.targets,
                matcher,
            });
        }
        Ok(Router {
            providers: Arc::clone(&self.providers),
            order: Arc::clone(&self.order),
            routes: compiled,
        })
    }

    /// First route whose glob matches `model`.
    pub fn route(&self, model: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(model))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn provider_names(&self) -> &[String] {
        &self.order
    }

    /// Send `req` for `model` through its route: targets in attempt order, retries per target,
    /// fallback on retryable failures. `Ok` carries a 2xx or a passed-through non-retryable
    /// status; streaming bodies are live and nothing of them has been read.
    pub async fn send(
        &self,
        req: UpstreamRequest,
        model: &str,
    ) -> Result<UpstreamResponse, RouterError> {
        let route = self.route(model).ok_or_else(|| RouterError::NoRoute {
            model: model.to_string(),
        })?;
        // Draw the order before any await: the thread RNG must not live across one.
        let order = route.attempt_order(&mut rand::rng());
        let mut attempts = Vec::new();
        for (n, i) in order.iter().enumerate() {
            let target = &route.targets[*i];
            let Some(provider) = self.providers.get(&target.provider) else {
                continue;
            };
            let (body, sent_model) = match &target.model {
                Some(rename) => (rename_model(&req.body, rename), Some(rename.clone())),
                None => (req.body.clone(), Some(model.to_string())),
            };
            if let Some(resp) = try_provider(provider, &req, body, sent_model, &mut attempts).await
            {
                return Ok(resp);
            }
            // Falling back sends the request again, unless this target never sent it.
            let sent = attempts.last().is_some_and(|(_, e)| {
                !matches!(
                    e.kind,
                    ProviderErrorKind::CircuitOpen
                        | ProviderErrorKind::NoApiKey
                        | ProviderErrorKind::Untranslatable { .. }
                )
            });
            if sent && !req.resend {
                break;
            }
            ProviderStats::bump(&provider.stats.fallbacks);
            if n + 1 < order.len() {
                tracing::warn!(
                    provider = %provider.name(),
                    model,
                    error = %attempts.last().map(|(_, e)| e.to_string()).unwrap_or_default(),
                    "falling back to the next provider"
                );
            }
        }
        Err(RouterError::AllFailed { attempts })
    }

    /// Send to one named provider with its retries but no fallback (e.g. `GET /models`).
    pub async fn send_to(
        &self,
        provider: &str,
        req: UpstreamRequest,
    ) -> Result<UpstreamResponse, RouterError> {
        let p = self
            .providers
            .get(provider)
            .ok_or_else(|| RouterError::UnknownProvider {
                provider: provider.to_string(),
            })?;
        let mut attempts = Vec::new();
        let body = req.body.clone();
        match try_provider(p, &req, body, None, &mut attempts).await {
            Some(resp) => Ok(resp),
            None => Err(RouterError::AllFailed { attempts }),
        }
    }

    /// Counters and breaker state for every provider, in configuration order.
    pub fn stats(&self) -> Vec<ProviderStatsSnapshot> {
        self.order
            .iter()
            .filter_map(|n| self.provider_stats(n))
            .collect()
    }

    pub fn provider_stats(&self, provider: &str) -> Option<ProviderStatsSnapshot> {
        let p = self.providers.get(provider)?;
        Some(ProviderStatsSnapshot::new(
            provider,
            &p.stats,
            p.breaker.state(),
            p.breaker.times_opened(),
        ))
    }

    pub fn breaker_state(&self, provider: &str) -> Option<BreakerState> {
        self.providers.get(provider).map(|p| p.breaker.state())
    }
}

/// Attempts on one provider until a response, a non-retryable error, or `max_retries`
/// retries, under one breaker permit: the breaker hears once per request (success when an
/// attempt got an answer, failure when every attempt failed retryably), not once per retry.
/// The request is translated for the provider once, before the first attempt (an
/// untranslatable one makes none). Every error is appended to `attempts`.
async fn try_provider(
    provider: &Provider,
    req: &UpstreamRequest,
    body: Bytes,
    model: Option<String>,
    attempts: &mut Vec<(String, ProviderError)>,
) -> Option<UpstreamResponse> {
    let settings = &provider.settings;
    let prepared = match provider.prepare(req, body) {
        Ok(p) => p,
        Err(err) => {
            attempts.push((provider.name().to_string(), err));
            return None;
        }
    };
    let permit = match provider.breaker.acquire() {
        Ok(permit) => permit,
        Err(wait) => {
            let mut err = ProviderError::new(provider.name(), ProviderErrorKind::CircuitOpen);
            err.retry_after = Some(wait);
            provider.stats.record_error(&err.kind);
            attempts.push((provider.name().to_string(), err));
            return None;
        }
    };
    let mut retry: u32 = 0;
    loop {
        match provider.send_once(req, &prepared, model.clone()).await {
            Ok(resp) => {
                permit.success();
                return Some(resp);
            }
            Err(err) => {
                let retryable = err.retryable();
                let retry_after = err.retry_after;
                attempts.push((provider.name().to_string(), err));
                if !retryable {
                    // A missing key, an oversized or malformed answer: nothing about health.
                    drop(permit);
                    return None;
                }
                // A request that may not be resent (a non-idempotent pass-through) gets one try.
                if retry >= settings.max_retries || !req.resend {
                    permit.failure();
                    return None;
                }
                let delay = backoff_delay(
                    settings.backoff_base,
                    settings.backoff_max,
                    retry,
                    retry_after,
                    &mut rand::rng(),
                );
                retry += 1;
                ProviderStats::bump(&provider.stats.retries);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Full jitter below `min(max, base * 2^retry)`, but never less than the upstream's
/// `Retry-After` (itself capped at `max`, so a huge value cannot stall the request).
pub fn backoff_delay<R: Rng + ?Sized>(
    base: Duration,
    max: Duration,
    retry: u32,
    retry_after: Option<Duration>,
    rng: &mut R,
) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.min(20)).min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    let jittered = Duration::from_nanos(rng.random_range(0..=nanos));
    match retry_after {
        Some(wait) => jittered.max(wait.min(max)),
        None => jittered,
    }
}

/// The body with its `model` replaced, for a target that renames it. A body that is not a
/// JSON object goes as is: the upstream will say what is wrong with it.
fn rename_model(body: &Bytes, model: &str) -> Bytes {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(body) else {
        return body.clone();
    };
    map.insert(
        "model".to_string(),
        serde_json::Value::String(model.to_string()),
    );
    match serde_json::to_vec(&map) {
        Ok(v) => Bytes::from(v),
        Err(_) => body.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn router(routes: Vec<RouteSettings>) -> Result<Router, RouterConfigError> {
        Router::new(
            vec![
                ProviderSettings::openai("a", "http://127.0.0.1:9/v1"),
                ProviderSettings::openai("b", "http://127.0.0.1:9/v1"),
            ],
            routes,
        )
    }

    #[test]
    fn first_matching_route_wins() {
        let r = router(vec![
            RouteSettings::new("gpt-4o*", &["a"]),
            RouteSettings::new("gpt-*", &["b"]),
            RouteSettings::new("*", &["b", "a"]),
        ])
        .unwrap();
        assert_eq!(r.route("gpt-4o-mini").unwrap().model_glob, "gpt-4o*");
        assert_eq!(r.route("gpt-3.5-turbo").unwrap().model_glob, "gpt-*");
        assert_eq!(r.route("llama3/8b").unwrap().model_glob, "*");
        let only = router(vec![RouteSettings::new("claude-*", &["a"])]).unwrap();
        assert!(only.route("gpt-4o").is_none());
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            router(vec![RouteSettings::new("*", &["a", "nope"])]).unwrap_err(),
            RouterConfigError::UnknownProvider {
                glob: "*".into(),
                provider: "nope".into()
            }
        );
        assert!(matches!(
            router(vec![RouteSettings::new("*", &[])]).unwrap_err(),
            RouterConfigError::EmptyRoute { .. }
        ));
        assert!(matches!(
            router(vec![RouteSettings::new("gpt-[", &["a"])]).unwrap_err(),
            RouterConfigError::BadGlob { .. }
        ));
        let dup = Router::new(
            vec![
                ProviderSettings::openai("a", "http://x/v1"),
                ProviderSettings::openai("a", "http://y/v1"),
            ],
            vec![],
        );
        assert_eq!(
            dup.unwrap_err(),
            RouterConfigError::DuplicateProvider("a".into())
        );
        let bad = Router::new(vec![ProviderSettings::openai("a", "not a url")], vec![]);
        assert!(matches!(
            bad.unwrap_err(),
            RouterConfigError::BadBaseUrl { .. }
        ));
    }

    #[test]
    fn unweighted_targets_keep_their_order() {
        let r = router(vec![RouteSettings::new("*", &["b", "a"])]).unwrap();
        let route = r.route("m").unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(route.attempt_order(&mut rng), vec![0, 1]);
        }
    }

    #[test]
    fn weights_spread_first_choice_proportionally() {
        let mut settings = RouteSettings::new("*", &["a", "b", "a"]);
        settings.targets[0].weight = Some(3);
        settings.targets[1].weight = Some(1);
        // targets[2] is unweighted: always last.
        let r = router(vec![settings]).unwrap();
        let route = r.route("m").unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut first_a = 0;
        for _ in 0..4000 {
            let order = route.attempt_order(&mut rng);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], 2);
            if order[0] == 0 {
                first_a += 1;
            }
        }
        // Expected 3000 of 4000; allow ±4 standard deviations (~27 each).
        assert!((2890..=3110).contains(&first_a), "first_a = {first_a}");
    }

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        let mut rng = StdRng::seed_from_u64(3);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for retry in 0..30 {
            let d = backoff_delay(base, max, retry, None, &mut rng);
            let ceiling = (base * 2u32.pow(retry.min(20))).min(max);
            assert!(d <= ceiling, "retry {retry}: {d:?} > {ceiling:?}");
        }
        let spread: Vec<Duration> = (0..50)
            .map(|_| backoff_delay(base, max, 3, None, &mut rng))
            .collect();
        assert!(spread.iter().any(|d| *d != spread[0]), "no jitter");
        let d = backoff_delay(base, max, 0, Some(Duration::from_millis(700)), &mut rng);
        assert!(d >= Duration::from_millis(700) && d <= max);
        let d = backoff_delay(base, max, 0, Some(Duration::from_secs(60)), &mut rng);
        assert_eq!(d, max);
    }

    #[test]
    fn rename_rewrites_only_the_model() {
        let body = Bytes::from_static(br#"{"model":"gpt-4o","messages":[],"stream":true}"#);
        let out: serde_json::Value =
            serde_json::from_slice(&rename_model(&body, "llama3")).unwrap();
        assert_eq!(out["model"], "llama3");
        assert_eq!(out["stream"], true);
        let raw = Bytes::from_static(b"not json");
        assert_eq!(rename_model(&raw, "x"), raw);
    }
}
