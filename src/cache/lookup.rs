//! Stage 2 of the cached request path: a [`Planned`] request is looked up (exact → embed →
//! search → guards) and comes out [`LookedUp::Hit`] or [`LookedUp::Miss`]. A miss that will
//! write joins the singleflight here: a follower waits for the leader's answer and is served
//! from it when it landed, so concurrent identical misses cost one upstream call.
//!
//! This is where a second judgement on semantic candidates (a verifier) plugs in: between the
//! engine's candidates and the hit.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::engine::{Lookup, LookupTrace};
use crate::cache::fleet;
use crate::cache::judge::{Judge, JudgeVerdict};
use crate::cache::miss::{InsertJob, Miss};
use crate::cache::request::Planned;
use crate::cache::singleflight::{Role, Singleflight};
use crate::cache::verify::Verified;
use crate::metrics::Metrics;
use crate::store::Entry;

/// How long a follower waits for the leader of an identical miss before going upstream itself.
pub const FOLLOWER_WAIT: Duration = Duration::from_secs(120);

/// The outcome of the lookup stage.
pub enum LookedUp {
    Hit(Hit),
    Miss(Miss),
}

impl LookedUp {
    /// The `outcome` label: `exact_hit`, `semantic_hit`, `miss` or `bypass`.
    pub fn outcome(&self) -> &'static str {
        match self {
            LookedUp::Hit(h) => h.kind.label(),
            LookedUp::Miss(m) => m.outcome(),
        }
    }
}

/// A stored answer to serve.
pub struct Hit {
    pub entry: Entry,
    pub kind: HitKind,
    /// Cosine similarity of the served entry (1.0 for exact hits).
    pub similarity: f32,
    /// How a semantic hit was decided (`None` for exact hits).
    pub verified: Option<Verified>,
    pub trace: LookupTrace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    Exact,
    Semantic,
}

impl HitKind {
    /// The `x-deja-cache` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            HitKind::Exact => "exact-hit",
            HitKind::Semantic => "semantic-hit",
        }
    }

    /// The `outcome` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            HitKind::Exact => "exact_hit",
            HitKind::Semantic => "semantic_hit",
        }
    }
}

impl Planned {
    /// Runs the lookup the plan asks for. Never fails: a broken cache must not break the
    /// chatbot, so a lookup error is logged and the request goes upstream as a miss.
    pub async fn look_up(
        self,
        metrics: &Metrics,
        singleflight: &Arc<Singleflight>,
        judge: Option<&Judge>,
    ) -> LookedUp {
        let (engine, plan) = match self {
            Planned::Bypass(reason) => {
                tracing::debug!(reason = reason.as_str(), "cache bypassed");
                return LookedUp::Miss(Miss::bypass());
            }
            Planned::Cached { engine, plan } => (engine, plan),
        };
        let mut trace = LookupTrace::default();
        let mut best = None;
        let mut embedding = None;
        if plan.read {
            let lookup = engine
                .lookup(
                    plan.scope,
                    &plan.prompt,
                    plan.semantic,
                    plan.rule,
                    &mut trace,
                )
                .await;
            for guard in &trace.vetoed {
                metrics
                    .guard_vetoes
                    .with_label_values(&[guard.as_str()])
                    .inc();
            }
            if trace.tightened {
                metrics.quality.tightened.inc();
            }
            if trace.unverified {
                metrics
                    .verifier_decisions
                    .with_label_values(&["unverified"])
                    .inc();
            }
            if let Some((_, took)) = trace.model {
                let served = matches!(
                    &lookup,
                    Ok(Lookup::Semantic {
                        verified: Verified::Model,
                        ..
                    })
                );
                metrics.verifier_model.record(served, took);
            }
            if plan.semantic && !trace.embed.is_zero() {
                metrics.embed_seconds.observe(trace.embed.as_secs_f64());
                metrics.search_seconds.observe(trace.search.as_secs_f64());
            }
            match lookup {
                Ok(Lookup::Exact(entry)) => {
                    return LookedUp::Hit(Hit {
                        entry,
                        kind: HitKind::Exact,
                        similarity: 1.0,
                        verified: None,
                        trace,
                    })
                }
                Ok(Lookup::Semantic {
                    entry,
                    similarity,
                    verified,
                }) => return semantic_hit(metrics, entry, similarity, verified, trace),
                Ok(Lookup::Uncertain {
                    entry,
                    similarity,
                    embedding: e,
                }) => {
                    // Only the judge can serve it; without one (a reload just removed it), or
                    // on anything but a yes, it is a miss.
                    let asked = std::time::Instant::now();
                    let verdict = match judge {
                        Some(j) => j.judge(plan.scope, &plan.prompt, &entry.prompt).await,
                        None => JudgeVerdict::Unavailable("error"),
                    };
                    trace.judge = asked.elapsed();
                    if verdict == JudgeVerdict::Same {
                        engine.record_hit_async(entry.id).await;
                        return semantic_hit(metrics, entry, similarity, Verified::Judge, trace);
                    }
                    metrics
                        .verifier_decisions
                        .with_label_values(&["unverified"])
                        .inc();
                    metrics
                        .similarity
                        .with_label_values(&["miss"])
                        .observe(similarity as f64);
                    embedding = Some(e);
                    best = Some(similarity);
                }
                Ok(Lookup::Miss {
                    embedding: e,
                    best: b,
                }) => {
                    if let Some(b) = b {
                        metrics
                            .similarity
                            .with_label_values(&["miss"])
                            .observe(b as f64);
                    }
                    embedding = e;
                    best = b;
                }
                Err(e) => tracing::error!(error = %e, "cache lookup failed; forwarding uncached"),
            }
        }

        let mut flight = None;
        if plan.write {
            match singleflight.join(plan.scope, &plan.prompt) {
                Role::Leader(mut f) => {
                    // One leader per process; across processes sharing the backend, one per
                    // fleet (`no-cache` asks upstream itself, as below).
                    if plan.read {
                        match fleet::join(&engine, metrics, plan.scope, &plan.prompt).await {
                            fleet::Joined::Served(entry) => {
                                return LookedUp::Hit(Hit {
                                    entry,
                                    kind: HitKind::Exact,
                                    similarity: 1.0,
                                    verified: None,
                                    trace,
                                })
                            }
                            fleet::Joined::Lead(claim) => f.hold(claim),
                        }
                    }
                    flight = Some(f)
                }
                // `no-cache` (the plan does not read) must not be answered from the leader's
                // entry: it asks upstream itself, and its answer replaces the entry.
                Role::Follower(_) if !plan.read => {}
                Role::Follower(waiter) => {
                    metrics.singleflight_waits.inc();
                    if waiter.wait(FOLLOWER_WAIT).await {
                        let again = engine.exact(plan.scope, plan.prompt.clone()).await;
                        if let Ok(Some(entry)) = again {
                            return LookedUp::Hit(Hit {
                                entry,
                                kind: HitKind::Exact,
                                similarity: 1.0,
                                verified: None,
                                trace,
                            });
                        }
                    }
                }
            }
        }
        let job = plan
            .write
            .then(|| InsertJob::new(engine, plan, embedding, flight));
        LookedUp::Miss(Miss::new(trace, best, job))
    }
}

/// A semantic hit, counted in the similarity histogram and by how it was verified.
fn semantic_hit(
    metrics: &Metrics,
    entry: Entry,
    similarity: f32,
    verified: Verified,
    trace: LookupTrace,
) -> LookedUp {
    metrics
        .similarity
        .with_label_values(&["hit"])
        .observe(similarity as f64);
    metrics
        .verifier_decisions
        .with_label_values(&[verified.as_str()])
        .inc();
    LookedUp::Hit(Hit {
        entry,
        kind: HitKind::Semantic,
        similarity,
        verified: Some(verified),
        trace,
    })
}
