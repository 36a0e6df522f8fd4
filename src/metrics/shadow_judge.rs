//! The shadow checks' LLM judge (`quality.judge_model`, `crate::quality::shadow_judge`): its
//! verdicts and what it spends, apart from the checks' own upstream calls
//! (`deja_shadow_tokens_total`) and from the lookup judge's `deja_judge_*`. Labels are fixed
//! strings.

use prometheus::{Counter, IntCounterVec, Opts, Registry};

pub struct ShadowJudgeMetrics {
    /// `deja_shadow_judge_calls_total{verdict}`: agree, disagree, or why there was none
    /// (error, unparsable, too_long: the answers' cosine decided instead).
    pub calls: IntCounterVec,
    /// `deja_shadow_judge_tokens_total{kind}`: prompt and completion tokens it spent.
    pub tokens: IntCounterVec,
    /// `deja_shadow_judge_cost_usd_total`: those tokens priced by `[[prices]]`.
    pub cost_usd: Counter,
}

impl ShadowJudgeMetrics {
    pub(super) fn new(registry: &Registry) -> Result<ShadowJudgeMetrics, prometheus::Error> {
        let m = ShadowJudgeMetrics {
            calls: IntCounterVec::new(
                Opts::new(
                    "deja_shadow_judge_calls_total",
                    "Shadow checks' judge calls by verdict (agree, disagree) or by why there was \
                     none (error, unparsable, too_long: the answers' cosine decided).",
                ),
                &["verdict"],
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "deja_shadow_judge_tokens_total",
                    "Tokens the shadow checks' judge spent, by kind (prompt/completion).",
                ),
                &["kind"],
            )?,
            cost_usd: Counter::new(
                "deja_shadow_judge_cost_usd_total",
                "Money the shadow checks' judge spent, priced by [[prices]].",
            )?,
        };
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.tokens.clone()))?;
        registry.register(Box::new(m.cost_usd.clone()))?;
        Ok(m)
    }
}
