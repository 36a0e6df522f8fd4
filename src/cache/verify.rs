//! The decision rule for semantic candidates: retrieve, then verify. One cosine threshold on a
//! bi-encoder cannot serve paraphrases safely (see docs/benchmarks.md, "Verified hits"): the
//! pairs that embed closest without meaning the same differ in a negation, a number, whose
//! thing it is ("my name" / "your name") or a swapped word, while true paraphrases often differ
//! only in function words, word order and inflection. So a candidate is judged on more than its
//! cosine:
//!
//! 1. the guards ([`super::guards`]) veto it when negation, numbers or roles differ;
//! 2. at or above `threshold` it is served on its cosine alone (`x-deja-verified: skipped`);
//! 3. at or above `verified_threshold` it is served when the lexical verifier confirms it: both
//!    prompts have the same content words (`x-deja-verified: lexical`);
//! 4. at or above the verifier model's floor, when one is configured (`[cache.verifier]`), the
//!    cross-encoder ([`crate::embed::PairModel`]) scores the pair and serves it at its own
//!    threshold (`x-deja-verified: model`, `x-deja-verifier-score`);
//! 5. otherwise, at or above the judge's floor and when a judge is configured, it is
//!    **uncertain**: the LLM judge ([`super::judge`]) decides (`x-deja-verified: judge`);
//! 6. anything else is a miss.
//!
//! Each stage runs only when the cheaper ones before it could not decide, so a near-identical
//! repeat never pays for the model and a lexically confirmed paraphrase never for the judge.
//!
//! The most similar candidate decides; falling through to the next one would let a veto create
//! a hit on a less similar entry (measured: it lowered precision), and guards and verifiers may
//! only ever turn hits into misses. The server and `deja bench` call this same function, so the
//! bench scores exactly what is served.

use crate::cache::guards::GuardVerdict;
use crate::store::EntryId;

/// One nearest neighbour with what the guards and the lexical verifier said about it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: EntryId,
    pub similarity: f32,
    pub guard: GuardVerdict,
    /// Both prompts have the same content words (see [`super::guards::Features::same_content`]).
    pub same_content: bool,
}

/// A decision rule, as configured for one request (per route and model, tightened by
/// `x-deja-threshold`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Cosine at which a candidate is served on similarity alone.
    pub threshold: f32,
    /// Cosine at which a candidate the lexical verifier confirms is served.
    pub verified_threshold: f32,
    /// Whether the guards may veto candidates.
    pub guards: bool,
    /// Lowest cosine a candidate may have to be sent to the judge; `None` without a judge.
    pub judge_floor: Option<f32>,
    /// The verifier model's bars; `None` without a model.
    pub model: Option<ModelBar>,
}

/// Where the verifier model decides: candidates at or above `floor` (cosine) that the cheaper
/// stages left open are served when the model's P(same) reaches `threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelBar {
    pub floor: f32,
    pub threshold: f32,
}

impl Rule {
    /// A plain cosine threshold (no verifier, no judge), as the bench's sweep uses.
    pub fn cosine(threshold: f32, guards: bool) -> Rule {
        Rule {
            threshold,
            verified_threshold: threshold,
            guards,
            judge_floor: None,
            model: None,
        }
    }

    /// The rule a client's `x-deja-threshold` asks for: every bar is raised to it (never
    /// lowered), so the header keeps meaning "tighten only".
    pub fn tightened(self, header: Option<f32>) -> Rule {
        let Some(h) = header else { return self };
        Rule {
            threshold: self.threshold.max(h),
            verified_threshold: self.verified_threshold.max(h),
            guards: self.guards,
            judge_floor: self.judge_floor.map(|f| f.max(h)),
            model: self.model.map(|m| ModelBar {
                floor: m.floor.max(h),
                threshold: m.threshold,
            }),
        }
    }

    /// The lowest cosine at which anything can still be served: below it the candidate's entry
    /// need not even be read.
    pub fn floor(&self) -> f32 {
        let f = self.threshold.min(self.verified_threshold);
        let f = self.model.map_or(f, |m| f.min(m.floor));
        match self.judge_floor {
            Some(j) => f.min(j),
            None => f,
        }
    }
}

/// How a served semantic hit was decided (`x-deja-verified`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The cosine alone reached the threshold; no verifier needed to run.
    Skipped,
    /// The lexical verifier confirmed it (same content words, guards passed).
    Lexical,
    /// The verifier model scored the pair at or above its threshold.
    Model,
    /// The LLM judge said both prompts ask the same.
    Judge,
}

impl Verified {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verified::Skipped => "skipped",
            Verified::Lexical => "lexical",
            Verified::Model => "model",
            Verified::Judge => "judge",
        }
    }
}

/// What the rule says about the most similar candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Hit {
        id: EntryId,
        verified: Verified,
    },
    /// Only the judge can decide this one.
    Uncertain {
        id: EntryId,
    },
    Miss(MissReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissReason {
    /// No candidate at all.
    Empty,
    /// Below every bar.
    Below,
    /// A guard turned it away.
    Vetoed(GuardVerdict),
    /// Between the bars, and neither the lexical verifier nor the model confirmed it (and no
    /// judge).
    Unverified,
}

/// Whether a candidate clears its entry's own threshold, which feedback on a wrong hit raised
/// to that hit's similarity (`crate::quality`): it must be strictly more similar, so the wrong
/// hit's query and its neighbours at that similarity miss. No threshold: it clears. This only
/// ever turns hits into misses.
pub fn passes_entry_floor(similarity: f32, floor: Option<f32>) -> bool {
    floor.is_none_or(|f| similarity > f)
}

/// Applies `rule` to candidates sorted most similar first, without a verifier model.
pub fn decide(candidates: &[Candidate], rule: &Rule) -> Decision {
    decide_with(candidates, rule, |_| None).0
}

/// [`decide`] with the verifier model: `score` gives P(same) for a candidate (`None` when the
/// model could not run: the candidate then falls through to the judge or misses). It is called
/// at most once, only when the rule needs it; its score is returned with the decision.
pub fn decide_with(
    candidates: &[Candidate],
    rule: &Rule,
    score: impl FnOnce(&Candidate) -> Option<f32>,
) -> (Decision, Option<f32>) {
    let Some(c) = candidates.first() else {
        return (Decision::Miss(MissReason::Empty), None);
    };
    if c.similarity < rule.floor() {
        return (Decision::Miss(MissReason::Below), None);
    }
    if rule.guards && !c.guard.passed() {
        return (Decision::Miss(MissReason::Vetoed(c.guard)), None);
    }
    let hit = |verified| Decision::Hit { id: c.id, verified };
    if c.similarity >= rule.threshold {
        return (hit(Verified::Skipped), None);
    }
    if c.similarity >= rule.verified_threshold && c.same_content {
        return (hit(Verified::Lexical), None);
    }
    let mut scored = None;
    if let Some(bar) = rule.model.filter(|m| c.similarity >= m.floor) {
        scored = score(c);
        if scored.is_some_and(|s| s >= bar.threshold) {
            return (hit(Verified::Model), scored);
        }
    }
    let decision = match rule.judge_floor {
        Some(floor) if c.similarity >= floor => Decision::Uncertain { id: c.id },
        _ => Decision::Miss(MissReason::Unverified),
    };
    (decision, scored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: EntryId, similarity: f32, guard: GuardVerdict, same_content: bool) -> Candidate {
        Candidate {
            id,
            similarity,
            guard,
            same_content,
        }
    }

    const PASS: GuardVerdict = GuardVerdict::Pass;

    fn rule() -> Rule {
        Rule {
            threshold: 0.98,
            verified_threshold: 0.90,
            guards: true,
            judge_floor: None,
            model: None,
        }
    }

    fn hit(d: &Decision) -> Option<(EntryId, Verified)> {
        match d {
            Decision::Hit { id, verified } => Some((*id, *verified)),
            _ => None,
        }
    }

    #[test]
    fn the_most_similar_candidate_decides() {
        let cands = [c(1, 0.99, PASS, false), c(2, 0.96, PASS, true)];
        assert_eq!(hit(&decide(&cands, &rule())), Some((1, Verified::Skipped)));
        assert_eq!(
            decide(&[], &rule()),
            Decision::Miss(MissReason::Empty),
            "nothing to serve"
        );
    }

    #[test]
    fn the_lexical_verifier_lowers_the_bar_only_for_same_content_words() {
        let same = [c(1, 0.93, PASS, true)];
        assert_eq!(hit(&decide(&same, &rule())), Some((1, Verified::Lexical)));
        let different = [c(1, 0.93, PASS, false)];
        assert_eq!(
            decide(&different, &rule()),
            Decision::Miss(MissReason::Unverified)
        );
        let too_low = [c(1, 0.85, PASS, true)];
        assert_eq!(decide(&too_low, &rule()), Decision::Miss(MissReason::Below));
    }

    #[test]
    fn a_veto_is_a_miss_not_a_fall_through() {
        let cands = [
            c(1, 0.99, GuardVerdict::Negation, true),
            c(2, 0.985, PASS, true),
        ];
        assert_eq!(
            decide(&cands, &rule()),
            Decision::Miss(MissReason::Vetoed(GuardVerdict::Negation)),
            "guards must never create a hit"
        );
        let off = Rule {
            guards: false,
            ..rule()
        };
        assert_eq!(hit(&decide(&cands, &off)), Some((1, Verified::Skipped)));
    }

    #[test]
    fn the_judge_takes_only_the_uncertain_band() {
        let judged = Rule {
            judge_floor: Some(0.85),
            ..rule()
        };
        assert_eq!(
            decide(&[c(7, 0.88, PASS, false)], &judged),
            Decision::Uncertain { id: 7 }
        );
        assert_eq!(
            decide(&[c(7, 0.80, PASS, false)], &judged),
            Decision::Miss(MissReason::Below)
        );
        assert_eq!(
            hit(&decide(&[c(7, 0.95, PASS, true)], &judged)),
            Some((7, Verified::Lexical)),
            "the verifier's yes needs no judge"
        );
        assert_eq!(
            decide(&[c(7, 0.95, GuardVerdict::Numbers, false)], &judged),
            Decision::Miss(MissReason::Vetoed(GuardVerdict::Numbers)),
            "a vetoed candidate never reaches the judge"
        );
    }

    #[test]
    fn the_model_decides_what_the_cheaper_stages_left_open() {
        let modelled = Rule {
            model: Some(ModelBar {
                floor: 0.80,
                threshold: 0.7,
            }),
            judge_floor: Some(0.85),
            ..rule()
        };
        let yes = |_: &Candidate| Some(0.9);
        let no = |_: &Candidate| Some(0.2);
        let d = decide_with(&[c(3, 0.83, PASS, false)], &modelled, yes);
        assert_eq!((hit(&d.0), d.1), (Some((3, Verified::Model)), Some(0.9)));
        let d = decide_with(&[c(3, 0.87, PASS, false)], &modelled, no);
        assert_eq!(
            d,
            (Decision::Uncertain { id: 3 }, Some(0.2)),
            "the model's no leaves the judge's band to the judge"
        );
        let d = decide_with(&[c(3, 0.83, PASS, false)], &modelled, no);
        assert_eq!(d, (Decision::Miss(MissReason::Unverified), Some(0.2)));
        let d = decide_with(&[c(3, 0.83, PASS, false)], &modelled, |_| None);
        assert_eq!(
            d,
            (Decision::Miss(MissReason::Unverified), None),
            "a model that cannot run is a miss, never a hit"
        );
        let never = |_: &Candidate| -> Option<f32> { panic!("the model must not run") };
        assert_eq!(
            hit(&decide_with(&[c(3, 0.99, PASS, false)], &modelled, never).0),
            Some((3, Verified::Skipped))
        );
        assert_eq!(
            hit(&decide_with(&[c(3, 0.93, PASS, true)], &modelled, never).0),
            Some((3, Verified::Lexical))
        );
        assert_eq!(
            decide_with(&[c(3, 0.93, GuardVerdict::Roles, false)], &modelled, never).0,
            Decision::Miss(MissReason::Vetoed(GuardVerdict::Roles)),
            "guards veto before the model runs"
        );
        assert_eq!(
            decide_with(&[c(3, 0.79, PASS, false)], &modelled, never).0,
            Decision::Miss(MissReason::Below)
        );
        let t = modelled.tightened(Some(0.9)).model.unwrap();
        assert_eq!((t.floor, t.threshold), (0.9, 0.7));
    }

    #[test]
    fn issue17_an_entry_threshold_turns_away_at_and_below_it() {
        assert!(passes_entry_floor(0.91, None));
        assert!(
            !passes_entry_floor(0.91, Some(0.91)),
            "the wrong hit itself"
        );
        assert!(
            !passes_entry_floor(0.90, Some(0.91)),
            "a less similar neighbour"
        );
        assert!(
            passes_entry_floor(0.92, Some(0.91)),
            "a closer query still hits"
        );
    }

    #[test]
    fn the_header_only_tightens() {
        let judged = Rule {
            judge_floor: Some(0.85),
            ..rule()
        };
        let t = judged.tightened(Some(0.95));
        assert_eq!(t.threshold, 0.98);
        assert_eq!(t.verified_threshold, 0.95);
        assert_eq!(t.judge_floor, Some(0.95));
        assert_eq!(judged.tightened(Some(0.5)), judged);
        assert_eq!(judged.tightened(None), judged);
    }
}
