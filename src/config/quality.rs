//! Hit quality on live traffic (issue 17, section 3): `cache.audit_rate` and the `[quality]`
//! section. Its raw shape, its validation (one function, [`validate_quality`], called once from
//! `validate`) and its unit tests live here. The machinery itself is [`crate::quality`].

use serde::Deserialize;

use super::ConfigIssue;

/// Shadow checks are off unless asked for: each one is a paid upstream call.
pub const DEFAULT_AUDIT_RATE: f64 = 0.0;
pub const DEFAULT_AUDIT_QUEUE: usize = 64;
const MAX_AUDIT_QUEUE: usize = 100_000;
pub const DEFAULT_AUDIT_CONCURRENCY: usize = 2;
const MAX_AUDIT_CONCURRENCY: usize = 1_000;
/// Cosine of the two answers' embeddings at or above which a fresh answer agrees with the
/// served one. Answers vary in wording more than questions do, so it sits below the prompt
/// threshold; tune it with the pairs the checks record.
pub const DEFAULT_ANSWER_AGREEMENT: f64 = 0.80;
pub const DEFAULT_MAX_PAIRS: usize = 100_000;
const MAX_MAX_PAIRS: usize = 10_000_000;
pub const DEFAULT_RECENT_HITS: usize = 10_000;
const MAX_RECENT_HITS: usize = 10_000_000;

/// `[quality]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuality {
    pub audit_queue: Option<u64>,
    pub audit_concurrency: Option<u64>,
    pub answer_agreement: Option<f64>,
    pub max_pairs: Option<u64>,
    pub recent_hits: Option<u64>,
    /// Validated by `config::shadow_judge`.
    pub judge_model: Option<String>,
}

/// The validated `cache.audit_rate` + `[quality]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityConfig {
    /// Share of semantic hits also sent upstream in the background and compared, in [0, 1].
    pub audit_rate: f64,
    /// Shadow checks waiting for a slot; past it a check is dropped (and counted).
    pub audit_queue: usize,
    /// Shadow checks in flight upstream at once.
    pub audit_concurrency: usize,
    /// Answer-embedding cosine at or above which a shadow check agrees.
    pub answer_agreement: f32,
    /// Labeled pairs kept (oldest out first); also bounds the entries with a tightened
    /// threshold.
    pub max_pairs: usize,
    /// Hits remembered for feedback (by response id and by entry), least recent out first.
    pub recent_hits: usize,
    /// The model asked whether a shadow check's two answers agree (`quality.judge_model`,
    /// see `config::shadow_judge`); `None`: their cosine decides.
    pub judge_model: Option<String>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            audit_rate: DEFAULT_AUDIT_RATE,
            audit_queue: DEFAULT_AUDIT_QUEUE,
            audit_concurrency: DEFAULT_AUDIT_CONCURRENCY,
            answer_agreement: DEFAULT_ANSWER_AGREEMENT as f32,
            max_pairs: DEFAULT_MAX_PAIRS,
            recent_hits: DEFAULT_RECENT_HITS,
            judge_model: None,
        }
    }
}

fn issue(issues: &mut Vec<ConfigIssue>, path: &str, message: impl Into<String>) {
    issues.push(ConfigIssue {
        path: path.to_string(),
        message: message.into(),
    });
}

fn count(
    issues: &mut Vec<ConfigIssue>,
    field: &str,
    v: Option<u64>,
    default: usize,
    max: usize,
) -> usize {
    let Some(v) = v else { return default };
    if !(1..=max as u64).contains(&v) {
        issue(
            issues,
            &format!("quality.{field}"),
            format!("{v} is not between 1 and {max}"),
        );
        return default;
    }
    v as usize
}

/// Validates `cache.audit_rate` and `[quality]`; problems are appended with their paths.
pub fn validate_quality(
    audit_rate: Option<f64>,
    raw: &RawQuality,
    issues: &mut Vec<ConfigIssue>,
) -> QualityConfig {
    let d = QualityConfig::default();
    let rate = audit_rate.unwrap_or(DEFAULT_AUDIT_RATE);
    // NaN fails the range check, so it is rejected too.
    let audit_rate = if (0.0..=1.0).contains(&rate) {
        rate
    } else {
        issue(
            issues,
            "cache.audit_rate",
            format!("{rate} is not a share between 0 and 1 (0.01 = one semantic hit in 100)"),
        );
        d.audit_rate
    };
    let agreement = raw.answer_agreement.unwrap_or(DEFAULT_ANSWER_AGREEMENT);
    let answer_agreement = if agreement > 0.0 && agreement <= 1.0 {
        agreement as f32
    } else {
        issue(
            issues,
            "quality.answer_agreement",
            format!("{agreement} is not a cosine similarity in (0, 1]"),
        );
        d.answer_agreement
    };
    QualityConfig {
        audit_rate,
        audit_queue: count(
            issues,
            "audit_queue",
            raw.audit_queue,
            d.audit_queue,
            MAX_AUDIT_QUEUE,
        ),
        audit_concurrency: count(
            issues,
            "audit_concurrency",
            raw.audit_concurrency,
            d.audit_concurrency,
            MAX_AUDIT_CONCURRENCY,
        ),
        answer_agreement,
        max_pairs: count(
            issues,
            "max_pairs",
            raw.max_pairs,
            d.max_pairs,
            MAX_MAX_PAIRS,
        ),
        recent_hits: count(
            issues,
            "recent_hits",
            raw.recent_hits,
            d.recent_hits,
            MAX_RECENT_HITS,
        ),
        judge_model: None,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Vec::<(String, String)>::new(), Path::new("/"))
    }

    fn paths(e: &ConfigError) -> Vec<String> {
        e.issues().iter().map(|i| i.path.clone()).collect()
    }

    #[test]
    fn defaults_leave_shadow_checks_off() {
        let c = parse("").unwrap();
        assert_eq!(c.cache.quality, super::QualityConfig::default());
        assert_eq!(c.cache.quality.audit_rate, 0.0);
    }

    #[test]
    fn valid_values_are_taken() {
        let c = parse(
            "[cache]\naudit_rate = 0.01\n[quality]\naudit_queue = 8\naudit_concurrency = 1\n\
             answer_agreement = 0.7\nmax_pairs = 500\nrecent_hits = 100\n",
        )
        .unwrap();
        let q = &c.cache.quality;
        assert_eq!(q.audit_rate, 0.01);
        assert_eq!((q.audit_queue, q.audit_concurrency), (8, 1));
        assert_eq!(q.answer_agreement, 0.7);
        assert_eq!((q.max_pairs, q.recent_hits), (500, 100));
    }

    #[test]
    fn invalid_values_are_all_reported_with_their_paths() {
        let e = parse(
            "[cache]\naudit_rate = 1.5\n[quality]\naudit_queue = 0\naudit_concurrency = 0\n\
             answer_agreement = 0.0\nmax_pairs = 0\nrecent_hits = 0\n",
        )
        .unwrap_err();
        let p = paths(&e);
        for want in [
            "cache.audit_rate",
            "quality.audit_queue",
            "quality.audit_concurrency",
            "quality.answer_agreement",
            "quality.max_pairs",
            "quality.recent_hits",
        ] {
            assert!(p.iter().any(|x| x == want), "{want} missing in {p:?}");
        }
        let e = parse("[cache]\naudit_rate = -0.1\n").unwrap_err();
        assert_eq!(paths(&e), ["cache.audit_rate"]);
        let e = parse("[quality]\nshadow = true\n").unwrap_err();
        assert!(e.to_string().contains("shadow"), "{e}");
    }
}
