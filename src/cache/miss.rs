//! Stage 3 of the cached request path, for misses: a [`Miss`] owns everything the upstream
//! answer needs once it is complete (the plan, the singleflight flight, the embedding computed
//! during the lookup) and is turned into a [`Settle`] when the upstream replied. `Settle` tees a
//! streamed answer to the client while collecting it, accounts its tokens (estimated when the
//! provider sent no usage) and stores it when the plan says so, after the response, off the
//! response path. Dropping a `Miss` or a `Settle` anywhere releases its flight, so followers of
//! an identical miss never wait on a leader that gave up.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::api::collect::NotCacheable;
use crate::api::inbound::{not_cacheable_label, StreamEnd, StreamTee};
use crate::api::ApiKind;
use crate::cache::budget::Reservation;
use crate::cache::chains::ChainWrite;
use crate::cache::engine::{CacheEngine, LookupTrace};
use crate::cache::policy::CachePlan;
use crate::cache::privacy;
use crate::cache::request::CacheRequest;
use crate::cache::singleflight::Flight;
use crate::config::Config;
use crate::metrics::pii::Source;
use crate::metrics::{cost, Metrics};
use crate::pii::stream::StreamRestorer;
use crate::providers::ByteStream;
use crate::store::{CachedResponse, Usage};

/// A request the cache did not answer.
pub struct Miss {
    kind: MissKind,
    /// What the lookup did (for headers and logs).
    pub trace: LookupTrace,
    /// The best similarity seen, for `x-deja-nearest-similarity`.
    pub best: Option<f32>,
    job: Option<InsertJob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MissKind {
    /// Looked up and not found.
    Miss,
    /// Not cacheable, or the cache is not ready: forwarded without a lookup or an insert.
    Bypass,
}

impl Miss {
    pub(crate) fn new(trace: LookupTrace, best: Option<f32>, job: Option<InsertJob>) -> Miss {
        Miss {
            kind: MissKind::Miss,
            trace,
            best,
            job,
        }
    }

    pub(crate) fn bypass() -> Miss {
        Miss {
            kind: MissKind::Bypass,
            trace: LookupTrace::default(),
            best: None,
            job: None,
        }
    }

    /// The `x-deja-cache` value (also the `outcome` metric label).
    pub fn outcome(&self) -> &'static str {
        match self.kind {
            MissKind::Miss => "miss",
            MissKind::Bypass => "bypass",
        }
    }

    /// Binds the miss to the upstream answer that `provider` is sending.
    pub fn settle(self, req: &CacheRequest, metrics: Arc<Metrics>, provider: &str) -> Settle {
        Settle {
            api: req.api,
            model: req.canonical.model.clone(),
            body: req.body.clone(),
            config: req.config.clone(),
            provider: provider.to_string(),
            metrics,
            job: self.job,
            restorer: None,
            charge: None,
            audit: None,
            chain: None,
        }
    }
}

/// What happens once an upstream answer is complete: its tokens are accounted for, then it is
/// stored when the plan says so.
pub struct Settle {
    api: ApiKind,
    model: String,
    body: Arc<Map<String, Value>>,
    config: Arc<Config>,
    provider: String,
    metrics: Arc<Metrics>,
    job: Option<InsertJob>,
    /// A redacted request's values, put back into the stream the client gets (the answer
    /// collected for the cache keeps the placeholders).
    restorer: Option<StreamRestorer>,
    /// A deja key's reservation (`[[keys]] tpm`, budgets), settled with the answer's usage.
    charge: Option<Reservation>,
    /// The request's audit line, written once the answer is complete.
    audit: Option<crate::audit::Pending>,
    /// Where a Responses answer's conversation is remembered, before its terminal event is
    /// relayed (`cache::chains`).
    chain: Option<ChainWrite>,
}

impl Settle {
    /// Writes `line` to the audit log once the answer is complete.
    pub fn auditing(mut self, line: Option<crate::audit::Pending>) -> Settle {
        self.audit = line;
        self
    }

    /// Remembers a Responses answer's conversation (`cache::chains`) when its stream finishes.
    pub fn chaining(mut self, chain: Option<ChainWrite>) -> Settle {
        self.chain = chain;
        self
    }

    /// Settles `reservation` with this answer's usage (`cache::budget`).
    pub fn charging(mut self, reservation: Option<Reservation>) -> Settle {
        self.charge = reservation;
        self
    }

    /// Settles the key's reservation off the runtime (a sled write) and counts what it spent.
    async fn settle_charge(&mut self, usage: Option<Usage>, charge: bool) {
        let Some(r) = self.charge.take() else { return };
        if !charge {
            // No answer to pay for (an upstream error): the estimate is given back.
            drop(r);
            return;
        }
        let key = r.key().to_string();
        if let Ok(spent) =
            tokio::task::spawn_blocking(move || r.settle_blocking(usage.as_ref())).await
        {
            self.metrics
                .keys
                .cost
                .with_label_values(&[key.as_str(), "spent"])
                .inc_by(spent.nano_usd as f64 / 1e9);
        }
    }

    /// Restores a redacted request's values in the relayed stream (`[pii] mode = "redact"`).
    pub fn restoring(mut self, restorer: Option<StreamRestorer>) -> Settle {
        self.restorer = restorer;
        self
    }

    /// Settles a complete answer (or the reason there is none to store).
    pub async fn finish(mut self, answer: Result<CachedResponse, NotCacheable>) {
        let answer = match answer {
            Ok(mut a) => {
                if a.usage.is_none() {
                    let content = cost::completion_text(&a.content, &a.tool_calls);
                    let (api, body) = (self.api, self.body.clone());
                    // Tokenizing is CPU work (and loads the BPE once): keep it off the runtime.
                    let estimate = tokio::task::spawn_blocking(move || {
                        cost::estimate_usage(api, &body, &content)
                    })
                    .await;
                    if let Ok(u) = estimate {
                        self.metrics.tokens_estimated.inc();
                        a.usage = Some(u);
                    }
                }
                if let Some(u) = &a.usage {
                    cost::record_upstream(&self.metrics, &self.config, &self.model, u);
                }
                self.settle_charge(a.usage, true).await;
                if let Some(line) = self.audit.take() {
                    let price = self.config.price_for(&self.model);
                    line.finish(a.usage, price, Some(a.content.as_str()));
                }
                let mode = self.config.pii.mode_for(&self.model);
                let pii = |text: &str| {
                    privacy::answer_has_pii(mode, text, &self.metrics.pii, Source::Answer)
                };
                if !a.tool_calls.is_empty() && !self.config.cache_tool_calls_for(&self.model) {
                    // The route did not opt in (`cache_tool_calls`): a replay reruns the tool.
                    Err(NotCacheable::ToolCalls)
                } else if self.job.is_some()
                    && (pii(&a.content) || a.tool_calls.iter().any(|c| pii(&c.arguments)))
                {
                    self.metrics.pii.action("not_cached");
                    Err(NotCacheable::PersonalData)
                } else {
                    Ok(a)
                }
            }
            Err(e) => {
                // An answer whose usage is unknown (cut, too large) is charged its estimate.
                let answered = !matches!(e, NotCacheable::UpstreamError);
                self.settle_charge(None, answered).await;
                if let Some(line) = self.audit.take() {
                    line.finish(None, None, None);
                }
                Err(e)
            }
        };
        if let Some(job) = self.job {
            job.run(&self.metrics, answer).await;
        }
    }

    /// Forwards upstream SSE bytes to the client (`tx`) as they arrive while collecting the
    /// answer, then settles it. If the client goes away the upstream is still read to the end
    /// when the answer is to be cached (it is paid for either way); otherwise, or once the
    /// answer can no longer be cached, reading stops. A stream that breaks (cut, timed out, an
    /// event over `max_event_bytes`) gets the provider-style error event before it ends.
    pub async fn tee(
        mut self,
        mut upstream: ByteStream,
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
        max_event_bytes: usize,
    ) {
        let max_entry_bytes = self.config.cache.max_entry_bytes;
        let mut tee = StreamTee::new(self.api, &self.provider, max_event_bytes, max_entry_bytes);
        let mut client_gone = false;
        let mut failure = None;
        let mut abandoned = false;
        while let Some(chunk) = upstream.next().await {
            match chunk {
                Ok(bytes) => {
                    let (relay, intact) = tee.push(bytes);
                    if self.chain.is_some() {
                        if let Some(finished) = tee.take_response() {
                            if let Some(w) = self.chain.take() {
                                w.record(&finished).await;
                            }
                        }
                    }
                    let relay = match (relay, self.restorer.as_mut()) {
                        (Some(r), Some(restorer)) => Some(restorer.relay(&r)),
                        (relay, _) => relay,
                    };
                    if let (Some(relay), false) = (relay, client_gone) {
                        client_gone = tx.send(Ok(relay)).await.is_err();
                    }
                    if !intact {
                        tracing::warn!(provider = %self.provider, "upstream stream over max_event_bytes");
                        break;
                    }
                    if client_gone && (self.job.is_none() || !tee.cacheable()) {
                        abandoned = true;
                        break;
                    }
                }
                Err(e) => {
                    // The router's stats count the cut; /metrics exports them.
                    tracing::warn!(provider = %self.provider, error = %e, "upstream stream failed");
                    failure = Some(e);
                    break;
                }
            }
        }
        let end = match (&failure, abandoned) {
            (Some(e), _) => StreamEnd::Failed(e),
            (None, true) => StreamEnd::Abandoned,
            (None, false) => StreamEnd::Finished,
        };
        let (tail, answer) = tee.finish(end);
        let tail = match self.restorer.as_mut() {
            Some(r) => {
                let mut out = r.release().to_vec();
                out.extend_from_slice(&tail.map(|t| r.relay(&t)).unwrap_or_default());
                (!out.is_empty()).then(|| Bytes::from(out))
            }
            None => tail,
        };
        if let (Some(tail), false) = (tail, client_gone) {
            let _ = tx.send(Ok(tail)).await;
        }
        drop(tx);
        self.finish(answer).await;
    }
}

/// What to store once the upstream answer completed normally.
pub(crate) struct InsertJob {
    engine: CacheEngine,
    plan: CachePlan,
    embedding: Option<Arc<[f32]>>,
    /// Released (waking followers) when the insert is done or abandoned.
    flight: Option<Flight>,
}

impl InsertJob {
    pub(crate) fn new(
        engine: CacheEngine,
        plan: CachePlan,
        embedding: Option<Arc<[f32]>>,
        flight: Option<Flight>,
    ) -> InsertJob {
        InsertJob {
            engine,
            plan,
            embedding,
            flight,
        }
    }

    async fn run(self, metrics: &Metrics, answer: Result<CachedResponse, NotCacheable>) {
        let answer = match answer {
            Ok(a) => a,
            Err(reason) => {
                metrics
                    .not_cached
                    .with_label_values(&[not_cacheable_label(&reason)])
                    .inc();
                tracing::debug!(reason = %reason, "answer not cached");
                return;
            }
        };
        let embedding = match (self.plan.semantic, self.embedding) {
            (false, _) => None,
            (true, Some(e)) => Some(e),
            // `no-cache` skipped the lookup, so the prompt has not been embedded yet.
            (true, None) => match self.engine.embedder().embed(&self.plan.prompt).await {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "embedding for insert failed; storing exact-only");
                    None
                }
            },
        };
        let res = self
            .engine
            .insert(
                self.plan.scope,
                self.plan.prompt.clone(),
                embedding,
                answer,
                self.plan.ttl,
                Some(self.plan.namespace.clone()),
            )
            .await;
        match res {
            Ok(id) => {
                metrics.inserts.inc();
                metrics.entries.set(self.engine.entries() as i64);
                tracing::debug!(entry = id, "answer cached");
            }
            Err(e) => tracing::error!(error = %e, "cache insert failed"),
        }
        drop(self.flight);
    }
}
