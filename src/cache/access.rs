//! Stage 0 of the cached request path, before anything else: who is asking (`server.auth`,
//! `[[keys]]`, issue 16). With `auth = "keys"` the request must carry a deja key the config
//! lists (401 otherwise), the key must allow the model (403), and its requests-per-minute limit
//! must have room (429 with `Retry-After`). The limit is a GCRA bucket per key name from the
//! `governor` crate; buckets are kept across config reloads while a key's limit is unchanged.
//! The admitted key decides the tenant; the deja key itself never goes upstream, nor into a
//! log, a metric label (the key's configured *name* is the label) or an error.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use prometheus::IntCounterVec;

use crate::api::error::ApiError;
use crate::config::keys::{AuthMode, KeyConfig, KeysConfig};
use crate::config::KeyHash;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The rate-limit buckets of the configured keys.
#[derive(Default)]
pub struct Access {
    /// key name → (its rpm, its bucket).
    buckets: Mutex<HashMap<String, (u32, Arc<Limiter>)>>,
}

/// A request the access stage let through.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub key: KeyConfig,
    /// The request budget after this request, for the `x-ratelimit-*-requests` headers.
    pub requests: Option<RateState>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl Access {
    /// `Ok(None)` in passthrough mode; the admitted key in keys mode, or the refusal. `model`
    /// is `None` for a pass-through request that names none (`GET /v1/models`).
    pub fn admit(
        &self,
        keys: &KeysConfig,
        client_key: Option<&str>,
        model: Option<&str>,
        counter: &IntCounterVec,
    ) -> Result<Option<Admitted>, ApiError> {
        if keys.auth == AuthMode::Passthrough {
            return Ok(None);
        }
        let count = |name: &str, result: &str| counter.with_label_values(&[name, result]).inc();
        let Some(key) = client_key.and_then(|k| keys.find(&KeyHash::of(k))) else {
            count("unknown", "unauthorized");
            return Err(ApiError::Unauthorized {
                message: if client_key.is_some() {
                    "Incorrect API key provided: this deja accepts only the keys in its \
                     [[keys]] config."
                        .into()
                } else {
                    "Missing API key: send a deja key as `Authorization: Bearer <key>` or \
                     `x-api-key`."
                        .into()
                },
            });
        };
        if let Some(model) = model.filter(|m| !key.allows_model(m)) {
            count(&key.name, "forbidden");
            return Err(ApiError::ModelNotAllowed {
                message: format!(
                    "The deja key '{}' may not use the model `{model}`.",
                    key.name
                ),
            });
        }
        let requests = match key.rpm.and_then(NonZeroU32::new) {
            None => None,
            Some(rpm) => {
                let bucket = self.bucket(&key.name, rpm, keys);
                let checked = bucket.check();
                match checked {
                    Ok(snapshot) => {
                        let remaining = snapshot.remaining_burst_capacity();
                        Some(RateState {
                            limit: rpm.get(),
                            remaining,
                            reset: per_request(rpm) * (rpm.get() - remaining.min(rpm.get())),
                        })
                    }
                    Err(not_until) => {
                        count(&key.name, "rate_limited");
                        let wait = not_until.wait_time_from(bucket.clock().now());
                        return Err(ApiError::KeyLimited {
                            message: format!(
                                "The deja key '{}' reached its limit of {rpm} requests per minute \
                             (rpm); retry in {}.",
                                key.name,
                                openai_duration(wait)
                            ),
                            retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                            code: "rate_limit_exceeded",
                        });
                    }
                }
            }
        };
        count(&key.name, "allowed");
        Ok(Some(Admitted {
            key: key.clone(),
            requests,
        }))
    }

    /// The bucket of `name` at `rpm`; a changed limit starts a fresh bucket, and buckets of
    /// keys no longer configured are dropped, so the map never outgrows the config.
    fn bucket(&self, name: &str, rpm: NonZeroU32, keys: &KeysConfig) -> Arc<Limiter> {
        let mut b = self.buckets.lock();
        if let Some((r, l)) = b.get(name) {
            if *r == rpm.get() {
                return l.clone();
            }
        }
        if b.len() >= keys.keys.len() {
            b.retain(|n, _| keys.keys.iter().any(|k| k.name == *n));
        }
        let l = Arc::new(
            RateLimiter::direct(Quota::per_minute(rpm))
                .with_middleware::<StateInformationMiddleware>(),
        );
        b.insert(name.to_string(), (rpm.get(), l.clone()));
        l
    }
}

fn per_request(rpm: NonZeroU32) -> Duration {
    Duration::from_secs(60) / rpm.get()
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs_f64();
    if s < 60.0 {
        let t = format!("{s:.3}");
        let t = t.trim_end_matches('0').trim_end_matches('.');
        return format!("{t}s");
    }
    let secs = d.as_secs();
    format!("{}m{}s", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn keys(extra: &str) -> KeysConfig {
        let text = format!(
            "[server]\nauth = \"keys\"\n[[keys]]\nname = \"a\"\nhash = \"{}\"\n\
             models = [\"gpt-*\"]\n{extra}",
            KeyHash::of("dk-a")
        );
        Config::from_toml_str(&text, Vec::<(String, String)>::new(), Path::new("/"))
            .unwrap()
            .keys
    }

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("c", "c"), &["key", "result"]).unwrap()
    }

    #[test]
    fn unknown_keys_wrong_models_and_the_rpm_limit() {
        let (access, c) = (Access::default(), counter());
        let k = keys("rpm = 2\n");
        let status = |r: Result<Option<Admitted>, ApiError>| {
            r.map(|_| 200).unwrap_or_else(|e| e.status().as_u16())
        };
        assert_eq!(status(access.admit(&k, None, Some("gpt-4o"), &c)), 401);
        assert_eq!(
            status(access.admit(&k, Some("dk-b"), Some("gpt-4o"), &c)),
            401
        );
        assert_eq!(
            status(access.admit(&k, Some("dk-a"), Some("claude-3"), &c)),
            403
        );
        let first = access
            .admit(&k, Some("dk-a"), Some("gpt-4o"), &c)
            .unwrap()
            .unwrap();
        let r = first.requests.unwrap();
        assert_eq!((r.limit, r.remaining), (2, 1));
        assert_eq!(r.reset, Duration::from_secs(30));
        assert_eq!(
            access
                .admit(&k, Some("dk-a"), Some("gpt-4o"), &c)
                .unwrap()
                .unwrap()
                .requests
                .unwrap()
                .remaining,
            0
        );
        let e = access
            .admit(&k, Some("dk-a"), Some("gpt-4o"), &c)
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 429);
        let retry = e.retry_after_s().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        assert!(
            e.to_string().contains("rpm") && !e.to_string().contains("dk-a"),
            "{e}"
        );
        assert_eq!(c.with_label_values(&["a", "allowed"]).get(), 2);
        assert_eq!(c.with_label_values(&["a", "rate_limited"]).get(), 1);
        assert_eq!(c.with_label_values(&["unknown", "unauthorized"]).get(), 2);
        // A reload that raises the limit starts a fresh bucket.
        let k = keys("rpm = 3\n");
        assert!(access.admit(&k, Some("dk-a"), Some("gpt-4o"), &c).is_ok());
        // Passthrough admits everyone without a key.
        let pass = KeysConfig::default();
        assert!(access.admit(&pass, None, None, &c).unwrap().is_none());
    }

    #[test]
    fn durations_read_as_openai_writes_them() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
    }

    /// What the stage adds to a request in keys mode: `cargo test --lib cache::access --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn overhead_per_request() {
        let (access, c) = (Access::default(), counter());
        let k = keys("rpm = 10000000\n");
        let n = 100_000;
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(access.admit(&k, Some("dk-a"), Some("gpt-4o"), &c).is_ok());
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("admit (sha256 of the key, glob, rpm bucket): {us:.2} us per request");
    }
}
