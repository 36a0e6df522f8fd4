//! `[cache.verifier]`: the optional verifier model, a cross-encoder that scores (query, cached
//! prompt) pairs in the band the cheaper stages leave open (see `cache::verify`). Its raw shape
//! and its validation live here ([`validate_verifier`], called once from `validate`). An absent
//! block means no model. The model is loaded at start; a change of `model` needs a restart
//! (thresholds reload like the rest of the rule).

use serde::Deserialize;

use super::ConfigIssue;

/// P(same) at which the model's yes serves a candidate.
pub const DEFAULT_VERIFIER_THRESHOLD: f32 = 0.5;
/// Lowest cosine a candidate may have to be scored.
pub const DEFAULT_VERIFIER_BAND: f32 = 0.80;
pub const DEFAULT_VERIFIER_MAX_TOKENS: usize = 256;
const MAX_VERIFIER_MAX_TOKENS: usize = 512;

/// `[cache.verifier]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerifier {
    /// HF id (`cross-encoder/quora-distilroberta-base`) or a local directory.
    pub model: String,
    pub revision: Option<String>,
    pub sha256: Option<String>,
    pub threshold: Option<f64>,
    pub band: Option<f64>,
    pub max_tokens: Option<u64>,
}

/// The validated `[cache.verifier]` block.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierConfig {
    pub model: String,
    pub revision: Option<String>,
    /// Expected SHA-256 of model.safetensors (strongly advised: there is no built-in pin).
    pub sha256: Option<String>,
    /// P(same) at or above which a candidate is served.
    pub threshold: f32,
    /// Lowest cosine similarity a candidate may have to be scored.
    pub band: f32,
    /// Tokens of one pair (both texts and the special tokens).
    pub max_tokens: usize,
}

fn issue(issues: &mut Vec<ConfigIssue>, field: &str, message: impl Into<String>) {
    issues.push(ConfigIssue {
        path: format!("cache.verifier.{field}"),
        message: message.into(),
    });
}

/// Validates `[cache.verifier]`; problems are appended to `issues` with their paths. `None`
/// when there is no block.
pub fn validate_verifier(
    raw: Option<&RawVerifier>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<VerifierConfig> {
    let raw = raw?;
    let model = raw.model.trim().to_string();
    if model.is_empty() {
        issue(issues, "model", "must not be empty");
    }
    if let Some(h) = &raw.sha256 {
        if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            issue(issues, "sha256", "must be 64 hex digits");
        }
    }
    // NaN fails both comparisons, so it is rejected too.
    let unit = |issues: &mut Vec<ConfigIssue>, field: &str, v: Option<f64>, d: f32, what: &str| {
        let v = v.unwrap_or(d as f64);
        if !(v > 0.0 && v <= 1.0) {
            issue(issues, field, format!("{v} is not {what} in (0, 1]"));
            return d;
        }
        v as f32
    };
    let threshold = unit(
        issues,
        "threshold",
        raw.threshold,
        DEFAULT_VERIFIER_THRESHOLD,
        "a probability",
    );
    let band = unit(
        issues,
        "band",
        raw.band,
        DEFAULT_VERIFIER_BAND,
        "a cosine similarity",
    );
    let max_tokens = match raw.max_tokens {
        None => DEFAULT_VERIFIER_MAX_TOKENS,
        Some(v) if (8..=MAX_VERIFIER_MAX_TOKENS as u64).contains(&v) => v as usize,
        Some(v) => {
            issue(
                issues,
                "max_tokens",
                format!("{v} is not between 8 and {MAX_VERIFIER_MAX_TOKENS}"),
            );
            DEFAULT_VERIFIER_MAX_TOKENS
        }
    };
    Some(VerifierConfig {
        model,
        revision: raw.revision.clone(),
        sha256: raw.sha256.clone(),
        threshold,
        band,
        max_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<VerifierConfig>, Vec<ConfigIssue>) {
        let raw: RawVerifier = toml::from_str(text).unwrap();
        let mut issues = Vec::new();
        (validate_verifier(Some(&raw), &mut issues), issues)
    }

    #[test]
    fn a_valid_block_and_its_defaults() {
        let (v, issues) = parse("model = \"cross-encoder/quora-distilroberta-base\"");
        assert!(issues.is_empty(), "{issues:?}");
        let v = v.unwrap();
        assert_eq!(v.threshold, DEFAULT_VERIFIER_THRESHOLD);
        assert_eq!(v.band, DEFAULT_VERIFIER_BAND);
        assert_eq!(v.max_tokens, DEFAULT_VERIFIER_MAX_TOKENS);
        let (v, issues) = parse(&format!(
            "model = \"/models/ce\"\nthreshold = 0.8\nband = 0.85\nmax_tokens = 128\nsha256 = \"{}\"",
            "ab".repeat(32)
        ));
        assert!(issues.is_empty(), "{issues:?}");
        let v = v.unwrap();
        assert_eq!((v.threshold, v.band, v.max_tokens), (0.8, 0.85, 128));
        assert_eq!(v.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    }

    #[test]
    fn bad_values_are_named() {
        let (_, issues) =
            parse("model = \" \"\nthreshold = 1.5\nband = 0\nmax_tokens = 4\nsha256 = \"abc\"");
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "cache.verifier.model",
                "cache.verifier.sha256",
                "cache.verifier.threshold",
                "cache.verifier.band",
                "cache.verifier.max_tokens"
            ]
        );
        assert!(issues[2].message.contains("1.5"), "{issues:?}");
    }
}
