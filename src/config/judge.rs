//! `[cache.judge]`: the optional LLM judge for semantic candidates in the uncertain band (issue
//! 13). Its raw shape, its validation (one function, [`validate_judge`], called once from
//! `validate`) and its start-up warnings live here, apart from the rest of the config. An
//! absent block means no judge. The judge itself is `cache::judge`.

use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigIssue, ProviderConfig, RouteConfig};

pub const DEFAULT_JUDGE_TIMEOUT: Duration = Duration::from_secs(2);
/// The judge runs on the request path, before the client has an answer: longer than this is
/// slower than the upstream call it is meant to save.
pub const MAX_JUDGE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_JUDGE_MAX_PROMPT_BYTES: usize = 2000;
const MAX_JUDGE_MAX_PROMPT_BYTES: usize = 1 << 20;
pub const DEFAULT_JUDGE_CACHE_SIZE: usize = 10_000;
const MAX_JUDGE_CACHE_SIZE: usize = 10_000_000;
pub const DEFAULT_JUDGE_MAX_CONCURRENT: usize = 16;
const MAX_JUDGE_MAX_CONCURRENT: usize = 10_000;
pub const DEFAULT_JUDGE_BAND: f32 = 0.90;

/// `[cache.judge]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJudge {
    /// The model asked (a cheap chat model).
    pub model: String,
    /// A `[[providers]]` name: the judge is sent to that provider only (its retries, breaker
    /// and key, no fallback). Absent: `model` is routed by `[[routes]]` like a client request.
    pub provider: Option<String>,
    pub timeout: Option<String>,
    pub max_prompt_bytes: Option<u64>,
    pub cache_size: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub band: Option<f64>,
}

/// The validated `[cache.judge]` block.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeConfig {
    /// The model the judge asks (sent as the request's `model`).
    pub model: String,
    /// Send to this provider only; `None` routes `model` through `[[routes]]`.
    pub provider: Option<String>,
    /// Bound on one whole judge call (retries included); past it the candidate is a miss.
    pub timeout: Duration,
    /// Largest prompt (each of the two) the judge is asked about; a longer one is a miss.
    pub max_prompt_bytes: usize,
    /// Verdicts remembered per (scope, pair of prompts), least recently used first out.
    pub cache_size: usize,
    /// Judge calls in flight at once; past it a candidate is a miss at once (never queued).
    pub max_concurrent: usize,
    /// Lowest cosine similarity a candidate may have to be sent to the judge.
    pub band: f32,
}

fn issue(issues: &mut Vec<ConfigIssue>, field: &str, message: impl Into<String>) {
    issues.push(ConfigIssue {
        path: format!("cache.judge.{field}"),
        message: message.into(),
    });
}

/// `v` (or `default`), which must lie in `1..=max`.
fn count(
    issues: &mut Vec<ConfigIssue>,
    field: &str,
    v: Option<u64>,
    default: usize,
    max: usize,
) -> usize {
    let Some(v) = v else {
        return default;
    };
    if !(1..=max as u64).contains(&v) {
        issue(issues, field, format!("{v} is not between 1 and {max}"));
        return default;
    }
    v as usize
}

/// Validates `[cache.judge]` against the providers and routes already validated; problems
/// are appended to `issues` with their paths. `None` when there is no block.
pub fn validate_judge(
    raw: Option<&RawJudge>,
    providers: &[ProviderConfig],
    routes: &[RouteConfig],
    issues: &mut Vec<ConfigIssue>,
) -> Option<JudgeConfig> {
    let raw = raw?;
    let model = raw.model.trim().to_string();
    if model.is_empty() {
        issue(issues, "model", "must not be empty");
    }
    match &raw.provider {
        Some(p) if !providers.iter().any(|q| q.name == *p) => issue(
            issues,
            "provider",
            format!("unknown provider '{p}' (not a [[providers]] name)"),
        ),
        Some(_) => {}
        None if !model.is_empty() && !routes.iter().any(|r| r.model_glob.matches(&model)) => issue(
            issues,
            "model",
            format!(
                "no [[routes]] entry matches '{model}': add a route for it or name a \
                     `provider` to send the judge to"
            ),
        ),
        None => {}
    }
    let timeout = match raw.timeout.as_deref() {
        None => DEFAULT_JUDGE_TIMEOUT,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() || d > MAX_JUDGE_TIMEOUT => {
                issue(
                    issues,
                    "timeout",
                    format!(
                        "'{s}' is not between 1ms and {}s",
                        MAX_JUDGE_TIMEOUT.as_secs()
                    ),
                );
                DEFAULT_JUDGE_TIMEOUT
            }
            Ok(d) => d,
            Err(e) => {
                issue(
                    issues,
                    "timeout",
                    format!("invalid duration '{s}': {e} (e.g. \"500ms\", \"2s\")"),
                );
                DEFAULT_JUDGE_TIMEOUT
            }
        },
    };
    let band = raw.band.unwrap_or(DEFAULT_JUDGE_BAND as f64);
    // NaN fails both comparisons, so it is rejected too.
    if !(band > 0.0 && band <= 1.0) {
        issue(
            issues,
            "band",
            format!("{band} is not a cosine similarity in (0, 1]"),
        );
    }
    Some(JudgeConfig {
        model,
        provider: raw.provider.clone(),
        timeout,
        max_prompt_bytes: count(
            issues,
            "max_prompt_bytes",
            raw.max_prompt_bytes,
            DEFAULT_JUDGE_MAX_PROMPT_BYTES,
            MAX_JUDGE_MAX_PROMPT_BYTES,
        ),
        cache_size: count(
            issues,
            "cache_size",
            raw.cache_size,
            DEFAULT_JUDGE_CACHE_SIZE,
            MAX_JUDGE_CACHE_SIZE,
        ),
        max_concurrent: count(
            issues,
            "max_concurrent",
            raw.max_concurrent,
            DEFAULT_JUDGE_MAX_CONCURRENT,
            MAX_JUDGE_MAX_CONCURRENT,
        ),
        band: band as f32,
    })
}

/// Valid but likely unintended: the judge sends no client key, so a provider it may reach
/// without `api_key_env` gets no key (fine for a keyless local server, a 401 elsewhere).
pub fn judge_warnings(config: &Config) -> Vec<ConfigIssue> {
    let Some(judge) = &config.cache.judge else {
        return Vec::new();
    };
    let reached: Vec<&str> = match &judge.provider {
        Some(p) => vec![p.as_str()],
        None => config
            .routes
            .iter()
            .find(|r| r.model_glob.matches(&judge.model))
            .map(|r| r.targets.iter().map(|t| t.provider.as_str()).collect())
            .unwrap_or_default(),
    };
    let mut out = Vec::new();
    for name in reached {
        let keyless = config
            .providers
            .iter()
            .any(|p| p.name == name && p.api_key_env.is_none());
        if keyless && !out.iter().any(|i: &ConfigIssue| i.message.contains(name)) {
            out.push(ConfigIssue {
                path: "cache.judge".into(),
                message: format!(
                    "the judge may be sent to provider '{name}', which has no api_key_env: \
                     judge calls carry no client key, so they go unauthenticated"
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("/"))
    }

    const BASE: &str = r#"
[[providers]]
name = "cheap"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
api_key_env = "CHEAP_KEY"
[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:2/v1"
[[routes]]
model = "gpt-*"
providers = ["cheap"]
"#;

    fn with_judge(block: &str) -> Result<Config, ConfigError> {
        parse(&format!("{BASE}\n[cache.judge]\n{block}\n"))
    }

    fn paths(e: &ConfigError) -> Vec<String> {
        e.issues().iter().map(|i| i.path.clone()).collect()
    }

    #[test]
    fn judge_absent_means_none() {
        assert!(parse(BASE).unwrap().cache.judge.is_none());
    }

    #[test]
    fn judge_valid_block_with_defaults_and_values() {
        let c = with_judge("model = \"gpt-4o-mini\"").unwrap();
        let j = c.cache.judge.as_ref().unwrap();
        assert_eq!(j.model, "gpt-4o-mini");
        assert_eq!(j.provider, None);
        assert_eq!(j.timeout, Duration::from_secs(2));
        assert_eq!(j.max_prompt_bytes, 2000);
        assert_eq!(j.cache_size, 10_000);
        assert_eq!(j.max_concurrent, 16);
        assert!((j.band - 0.90).abs() < 1e-6);
        assert!(super::judge_warnings(&c).is_empty(), "cheap has a key");

        let c = with_judge(
            "model = \"llama3\"\nprovider = \"local\"\ntimeout = \"750ms\"\n\
             max_prompt_bytes = 500\ncache_size = 7\nmax_concurrent = 2\nband = 0.85",
        )
        .unwrap();
        let j = c.cache.judge.as_ref().unwrap();
        assert_eq!(j.provider.as_deref(), Some("local"));
        assert_eq!(j.timeout, Duration::from_millis(750));
        assert_eq!(
            (j.max_prompt_bytes, j.cache_size, j.max_concurrent),
            (500, 7, 2)
        );
        assert!((j.band - 0.85).abs() < 1e-6);
        let w = super::judge_warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].message.contains("'local'"), "{w:?}");
    }

    #[test]
    fn judge_unknown_provider_names_the_key() {
        let err = with_judge("model = \"gpt-4o-mini\"\nprovider = \"nope\"").unwrap_err();
        assert_eq!(paths(&err), ["cache.judge.provider"]);
        assert!(err.to_string().contains("unknown provider 'nope'"), "{err}");
    }

    #[test]
    fn judge_unrouted_model_names_the_key() {
        let err = with_judge("model = \"claude-3-haiku\"").unwrap_err();
        assert_eq!(paths(&err), ["cache.judge.model"]);
        assert!(err.to_string().contains("no [[routes]] entry"), "{err}");
        // With a provider, the routes do not matter.
        assert!(with_judge("model = \"claude-3-haiku\"\nprovider = \"cheap\"").is_ok());
    }

    #[test]
    fn judge_bad_timeouts_are_rejected() {
        for t in ["0s", "31s", "soon"] {
            let err =
                with_judge(&format!("model = \"gpt-4o-mini\"\ntimeout = \"{t}\"")).unwrap_err();
            assert_eq!(paths(&err), ["cache.judge.timeout"], "{t}");
        }
        assert!(with_judge("model = \"gpt-4o-mini\"\ntimeout = \"30s\"").is_ok());
    }

    #[test]
    fn judge_bad_values_are_reported_at_once() {
        let err = with_judge(
            "model = \"gpt-4o-mini\"\nband = 0.0\nmax_prompt_bytes = 0\ncache_size = 0\n\
             max_concurrent = 0",
        )
        .unwrap_err();
        let mut p = paths(&err);
        p.sort();
        assert_eq!(
            p,
            [
                "cache.judge.band",
                "cache.judge.cache_size",
                "cache.judge.max_concurrent",
                "cache.judge.max_prompt_bytes"
            ]
        );
        assert!(with_judge("model = \"gpt-4o-mini\"\nband = 1.5").is_err());
        assert!(with_judge("model = \"gpt-4o-mini\"\nband = 1.0").is_ok());
    }

    #[test]
    fn judge_needs_a_model_and_knows_its_keys() {
        let err = with_judge("provider = \"cheap\"").unwrap_err();
        assert!(
            err.issues()
                .iter()
                .any(|i| i.path == "cache.judge.model" && i.message.contains("missing")),
            "{err}"
        );
        let err = with_judge("model = \"gpt-4o-mini\"\nroute = \"x\"").unwrap_err();
        assert!(err.to_string().contains("route"), "{err}");
        let err = with_judge("model = \"  \"\nprovider = \"cheap\"").unwrap_err();
        assert_eq!(paths(&err), ["cache.judge.model"]);
    }
}
