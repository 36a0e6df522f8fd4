//! Hit quality on live traffic (`crate::quality`, issue 17): feedback by verdict, shadow checks
//! by outcome and what they spend, and the estimated live precision of semantic hits with its
//! 95% Wilson score interval. The shadow checks' spend is kept apart from the upstream totals,
//! which count only answers sent to clients (as the judge's is). Labels are fixed strings.

use prometheus::{Counter, Gauge, IntCounter, IntCounterVec, Opts, Registry};

pub struct QualityMetrics {
    /// `deja_feedback_total{verdict,kind}`: verdict `correct` or `wrong`, kind `semantic` or
    /// `exact` (the hit the feedback is about).
    pub feedback: IntCounterVec,
    /// `deja_feedback_tightened_misses_total`: candidates turned away because feedback raised
    /// their entry's own threshold.
    pub tightened: IntCounter,
    /// `deja_shadow_checks_total{outcome}`: agree, disagree, error (no comparable answer),
    /// dropped (queue full).
    pub shadow: IntCounterVec,
    /// `deja_shadow_tokens_total{kind}`: prompt and completion tokens the checks spent.
    pub shadow_tokens: IntCounterVec,
    /// `deja_shadow_cost_usd_total`: those tokens priced by `[[prices]]`.
    pub shadow_cost_usd: Counter,
    /// `deja_semantic_hit_agreement`: agreeing checks / compared checks (NaN before the first).
    pub agreement: Gauge,
    /// `deja_semantic_hit_agreement_lower` / `_upper`: the 95% Wilson score interval.
    pub agreement_lower: Gauge,
    pub agreement_upper: Gauge,
    /// `deja_quality_pairs_recorded_total{source,same}`: labeled pairs written.
    pub pairs: IntCounterVec,
}

impl QualityMetrics {
    pub(super) fn new(registry: &Registry) -> Result<QualityMetrics, prometheus::Error> {
        let m = QualityMetrics {
            feedback: IntCounterVec::new(
                Opts::new(
                    "deja_feedback_total",
                    "Feedback on served hits by verdict (correct, wrong) and hit kind (semantic, \
                     exact).",
                ),
                &["verdict", "kind"],
            )?,
            tightened: IntCounter::new(
                "deja_feedback_tightened_misses_total",
                "Semantic candidates turned away because feedback raised their entry's own \
                 threshold above their similarity.",
            )?,
            shadow: IntCounterVec::new(
                Opts::new(
                    "deja_shadow_checks_total",
                    "Shadow checks of semantic hits by outcome: agree, disagree, error (no \
                     comparable fresh answer), dropped (queue full).",
                ),
                &["outcome"],
            )?,
            shadow_tokens: IntCounterVec::new(
                Opts::new(
                    "deja_shadow_tokens_total",
                    "Tokens the shadow checks spent upstream, by kind (prompt/completion).",
                ),
                &["kind"],
            )?,
            shadow_cost_usd: Counter::new(
                "deja_shadow_cost_usd_total",
                "Money the shadow checks spent upstream, priced by [[prices]].",
            )?,
            agreement: Gauge::new(
                "deja_semantic_hit_agreement",
                "Estimated live precision of semantic hits: shadow checks whose fresh answer \
                 agreed with the served one, over those compared (NaN before the first).",
            )?,
            agreement_lower: Gauge::new(
                "deja_semantic_hit_agreement_lower",
                "Lower bound of the 95% Wilson score interval of deja_semantic_hit_agreement.",
            )?,
            agreement_upper: Gauge::new(
                "deja_semantic_hit_agreement_upper",
                "Upper bound of the 95% Wilson score interval of deja_semantic_hit_agreement.",
            )?,
            pairs: IntCounterVec::new(
                Opts::new(
                    "deja_quality_pairs_recorded_total",
                    "Labeled pairs recorded for calibration, by source (feedback, shadow) and \
                     label (same: true, false).",
                ),
                &["source", "same"],
            )?,
        };
        for g in [&m.agreement, &m.agreement_lower, &m.agreement_upper] {
            g.set(f64::NAN);
        }
        registry.register(Box::new(m.feedback.clone()))?;
        registry.register(Box::new(m.tightened.clone()))?;
        registry.register(Box::new(m.shadow.clone()))?;
        registry.register(Box::new(m.shadow_tokens.clone()))?;
        registry.register(Box::new(m.shadow_cost_usd.clone()))?;
        registry.register(Box::new(m.agreement.clone()))?;
        registry.register(Box::new(m.agreement_lower.clone()))?;
        registry.register(Box::new(m.agreement_upper.clone()))?;
        registry.register(Box::new(m.pairs.clone()))?;
        Ok(m)
    }
}
