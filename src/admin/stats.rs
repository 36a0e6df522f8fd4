//! `GET /admin/stats` and `GET /admin/dashboard.json`: what is in the cache and what it saved.
//!
//! Two sources, both bounded:
//! - the **inventory**, one scan of the backend in pages ([`Backend::scan`]) on a blocking
//!   thread: entries and bytes per model and per namespace (the tenant each entry was stored
//!   for; [`UNKNOWN_NAMESPACE`] for entries stored before deja recorded it), the oldest entry, the busiest entries (a top-N heap),
//!   tokens and dollars the stored hits saved. It is kept for [`INVENTORY_TTL`] and dropped by
//!   every delete, purge and import, so a dashboard refreshing every few seconds scans at most
//!   that often, one scan at a time;
//! - the **counters** the request path already keeps in `metrics` (requests by outcome,
//!   latency and similarity histograms, tokens and cost saved), read without touching it,
//!   and the lookups by namespace and by requested model ([`crate::metrics::namespaces`]),
//!   which give each its exact and semantic hit rate.
//!   [`History`] samples the request counters into a ring of per-minute buckets (the last
//!   hour, [`HISTORY_MINUTES`]) for the rates the dashboard draws.
//!
//! The dashboard JSON is an open object: the page draws the fields it knows and ignores the
//! others, so a later stage (live precision) adds a field without touching this one.
//!
//! [`Backend::scan`]: crate::cache::backend::Backend::scan

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use prometheus::core::Collector;
use serde::Serialize;
use serde_json::{json, Value};

use super::AdminState;
use crate::api::error::ApiError;
use crate::cache::CacheEngine;
use crate::config::Config;
use crate::server::AppState;
use crate::store::now_ms;

/// Minutes of request history kept (one bucket each).
pub const HISTORY_MINUTES: usize = 60;
/// How long a scanned inventory is reused.
pub const INVENTORY_TTL: Duration = Duration::from_secs(10);
/// Entries read per page of a scan.
pub const SCAN_PAGE: usize = 1000;
/// Models listed one by one; the rest are summed under `"(other)"`.
pub const MAX_MODELS: usize = 100;
/// Namespaces listed one by one; the rest are summed under `"(other)"` (a client can name any
/// tenant, with a key of its own).
pub const MAX_NAMESPACES: usize = 100;
/// The namespace of entries stored before deja recorded one (and what purge matches for them).
pub const UNKNOWN_NAMESPACE: &str = "(unknown)";
/// Characters of a prompt shown among the busiest entries.
const PROMPT_PREVIEW: usize = 120;

/// The outcomes the request path counts, in display order.
pub const OUTCOMES: [&str; 5] = ["exact_hit", "semantic_hit", "miss", "bypass", "error"];

/// Requests by outcome, summed over the APIs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub exact_hit: u64,
    pub semantic_hit: u64,
    pub miss: u64,
    pub bypass: u64,
    pub error: u64,
}

impl Totals {
    pub fn total(&self) -> u64 {
        self.exact_hit + self.semantic_hit + self.miss + self.bypass + self.error
    }

    fn minus(&self, o: &Totals) -> Totals {
        Totals {
            exact_hit: self.exact_hit.saturating_sub(o.exact_hit),
            semantic_hit: self.semantic_hit.saturating_sub(o.semantic_hit),
            miss: self.miss.saturating_sub(o.miss),
            bypass: self.bypass.saturating_sub(o.bypass),
            error: self.error.saturating_sub(o.error),
        }
    }

    /// The request counters as they are now.
    pub fn read(state: &AppState) -> Totals {
        let mut t = Totals::default();
        for (labels, v) in counter_values(&state.metrics().requests) {
            let n = v as u64;
            match label(&labels, "outcome") {
                Some("exact_hit") => t.exact_hit += n,
                Some("semantic_hit") => t.semantic_hit += n,
                Some("miss") => t.miss += n,
                Some("bypass") => t.bypass += n,
                Some("error") => t.error += n,
                _ => {}
            }
        }
        t
    }
}

/// The last hour of request counts, one bucket per minute: each holds the counters' totals at
/// the latest sample taken in that minute. Bounded to [`HISTORY_MINUTES`] + 1 samples.
pub struct History {
    samples: Mutex<VecDeque<(u64, Totals)>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            samples: Mutex::new(VecDeque::with_capacity(HISTORY_MINUTES + 1)),
        }
    }

    /// Records the totals seen at `now_ms`.
    pub fn record(&self, now_ms: u64, totals: Totals) {
        let minute = now_ms / 60_000;
        let mut s = self.samples.lock();
        match s.back_mut() {
            Some((m, t)) if *m == minute => *t = totals,
            // The clock went back: keep the ring ordered, start over.
            Some((m, _)) if *m > minute => {
                s.clear();
                s.push_back((minute, totals));
            }
            _ => s.push_back((minute, totals)),
        }
        while s.len() > HISTORY_MINUTES + 1 {
            s.pop_front();
        }
    }

    /// Requests per minute for the last [`HISTORY_MINUTES`] minutes ending at `now_ms`'s
    /// minute, oldest first; a minute with no sample counts nothing. The counters start at zero
    /// with the process, so the first sampled minute counts from the start.
    pub fn series(&self, now_ms: u64) -> Vec<MinuteCounts> {
        let now_minute = now_ms / 60_000;
        let first = now_minute.saturating_sub(HISTORY_MINUTES as u64 - 1);
        let s = self.samples.lock();
        let mut out = Vec::with_capacity(HISTORY_MINUTES);
        for minute in first..=now_minute {
            let at = s.iter().position(|(m, _)| *m == minute);
            let counts = match at {
                Some(i) => {
                    let before = i
                        .checked_sub(1)
                        .map(|j| s[j].1)
                        .filter(|_| s.len() > 1)
                        .unwrap_or_default();
                    // Only the oldest sample of a full ring has no predecessor kept: it is not
                    // a count from zero, so it shows nothing rather than a wrong spike.
                    if i == 0 && s.len() > HISTORY_MINUTES {
                        Totals::default()
                    } else {
                        s[i].1.minus(&before)
                    }
                }
                None => Totals::default(),
            };
            out.push(MinuteCounts {
                minute_ms: minute * 60_000,
                counts,
            });
        }
        out
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MinuteCounts {
    pub minute_ms: u64,
    #[serde(flatten)]
    pub counts: Totals,
}

/// Samples the request counters every 15 s while the admin listener runs.
pub async fn sample_loop(state: AdminState) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.history.record(now_ms(), Totals::read(&state.app));
    }
}

/// Per model (as the upstream named it in the stored answer), or per namespace.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ModelStats {
    pub entries: u64,
    pub bytes: u64,
    /// Hits recorded on these entries (across restarts).
    pub hits: u64,
    /// Tokens those hits did not spend upstream (hits × the stored answer's usage).
    pub tokens_saved: u64,
    /// Those tokens priced by `[[prices]]` (0 without a price).
    pub cost_saved_usd: f64,
    pub oldest_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Busiest {
    pub id: u64,
    pub hits: u64,
    pub model: String,
    pub prompt: String,
}

/// One scan's findings.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Inventory {
    pub entries: u64,
    /// Approximate bytes of the entries (prompt, answer, embedding).
    pub bytes: u64,
    pub expired: u64,
    pub oldest_ms: Option<u64>,
    pub by_model: BTreeMap<String, ModelStats>,
    pub by_namespace: BTreeMap<String, ModelStats>,
    pub busiest: Vec<Busiest>,
    pub hits: u64,
    pub tokens_saved: u64,
    pub cost_saved_usd: f64,
}

/// Reads the whole backend in pages (blocking: call it off the runtime).
pub fn scan_inventory(
    engine: &CacheEngine,
    config: &Config,
    top: usize,
) -> Result<Inventory, crate::cache::CacheError> {
    let now = now_ms();
    let mut inv = Inventory::default();
    let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::with_capacity(top + 1);
    let mut keep: BTreeMap<u64, Busiest> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = engine.backend().scan(after, SCAN_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.entry.id);
        for s in &page {
            let e = &s.entry;
            if e.is_expired(now) {
                inv.expired += 1;
                continue;
            }
            let bytes = (e.prompt.len()
                + e.response.content.len()
                + e.embedding.as_ref().map_or(0, |v| v.len() * 4)
                + 64) as u64;
            let tokens = s.hits * e.response.usage.map_or(0, |u| u.total() as u64);
            let cost = e.response.usage.map_or(0.0, |u| {
                config
                    .price_for(&e.response.model)
                    .map_or(0.0, |p| p.cost(&u))
            }) * s.hits as f64;
            let one = ModelStats {
                entries: 1,
                bytes,
                hits: s.hits,
                tokens_saved: tokens,
                cost_saved_usd: cost,
                oldest_ms: Some(e.created_ms),
            };
            tally(&mut inv.by_model, &e.response.model, MAX_MODELS, &one);
            let ns = s.namespace.as_deref().unwrap_or(UNKNOWN_NAMESPACE);
            tally(&mut inv.by_namespace, ns, MAX_NAMESPACES, &one);
            inv.entries += 1;
            inv.bytes += bytes;
            inv.hits += s.hits;
            inv.tokens_saved += tokens;
            inv.cost_saved_usd += cost;
            inv.oldest_ms = Some(inv.oldest_ms.map_or(e.created_ms, |o| o.min(e.created_ms)));
            if s.hits > 0 {
                heap.push(Reverse((s.hits, e.id)));
                keep.insert(
                    e.id,
                    Busiest {
                        id: e.id,
                        hits: s.hits,
                        model: e.response.model.clone(),
                        prompt: e.prompt.chars().take(PROMPT_PREVIEW).collect(),
                    },
                );
                if heap.len() > top {
                    if let Some(Reverse((_, gone))) = heap.pop() {
                        keep.remove(&gone);
                    }
                }
            }
        }
    }
    let mut busiest: Vec<Busiest> = keep.into_values().collect();
    busiest.sort_by(|a, b| b.hits.cmp(&a.hits).then(a.id.cmp(&b.id)));
    inv.busiest = busiest;
    Ok(inv)
}

/// Adds `one` to `key`'s stats in `map`, or to `"(other)"`'s once `map` has `max` keys.
fn tally(map: &mut BTreeMap<String, ModelStats>, key: &str, max: usize, one: &ModelStats) {
    let key = if map.contains_key(key) || map.len() < max {
        key
    } else {
        crate::metrics::namespaces::OTHER
    };
    let m = map.entry(key.to_string()).or_default();
    m.entries += one.entries;
    m.bytes += one.bytes;
    m.hits += one.hits;
    m.tokens_saved += one.tokens_saved;
    m.cost_saved_usd += one.cost_saved_usd;
    m.oldest_ms = match (m.oldest_ms, one.oldest_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

/// Per namespace: what the inventory holds for it and its lookups since start, with their
/// hit rates (every namespace either knows).
fn by_namespace(
    stored: &BTreeMap<String, ModelStats>,
    lookups: &BTreeMap<String, crate::metrics::namespaces::Lookups>,
) -> BTreeMap<String, Value> {
    let mut keys: Vec<&String> = stored.keys().chain(lookups.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let s = stored.get(k).cloned().unwrap_or_default();
            let l = lookups.get(k).copied().unwrap_or_default();
            let mut v = serde_json::to_value(&s).unwrap_or_else(|_| json!({}));
            v["requests"] = json!(l);
            v["hit_rate"] = hit_rate(&l);
            (k.clone(), v)
        })
        .collect()
}

fn hit_rate(l: &crate::metrics::namespaces::Lookups) -> Value {
    let (exact, semantic) = l.hit_rates();
    json!({"exact": exact, "semantic": semantic})
}

/// The last inventory, reused for [`INVENTORY_TTL`]; one scan runs at a time.
#[derive(Default)]
pub struct InventoryCache {
    last: Mutex<Option<(Instant, Arc<Inventory>)>>,
    scanning: tokio::sync::Mutex<()>,
}

impl InventoryCache {
    /// Forgets the last scan (after a delete, purge or import).
    pub fn invalidate(&self) {
        *self.last.lock() = None;
    }

    fn fresh(&self) -> Option<Arc<Inventory>> {
        match &*self.last.lock() {
            Some((at, inv)) if at.elapsed() < INVENTORY_TTL => Some(inv.clone()),
            _ => None,
        }
    }

    pub async fn get(&self, state: &AdminState) -> Result<Arc<Inventory>, ApiError> {
        if let Some(inv) = self.fresh() {
            return Ok(inv);
        }
        let _one = self.scanning.lock().await;
        if let Some(inv) = self.fresh() {
            return Ok(inv);
        }
        let engine = state.engine()?;
        let config = state.app.config();
        let top = config.admin.top_entries;
        let scanned =
            tokio::task::spawn_blocking(move || scan_inventory(&engine, &config, top)).await;
        let inv = match scanned {
            Ok(Ok(inv)) => Arc::new(inv),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "admin: scanning the cache failed");
                return Err(ApiError::internal(format!(
                    "scanning the cache failed: {e}"
                )));
            }
            Err(e) => return Err(ApiError::internal(format!("scan task failed: {e}"))),
        };
        *self.last.lock() = Some((Instant::now(), inv.clone()));
        Ok(inv)
    }
}

/// `GET /admin/stats`.
pub async fn stats(State(state): State<AdminState>) -> Response {
    match stats_value(&state).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response_for(None),
    }
}

/// The stats object (also the dashboard's `stats` field, so both show the same numbers).
pub async fn stats_value(state: &AdminState) -> Result<Value, ApiError> {
    let engine = state.engine()?;
    let inv = state.inventory.get(state).await?;
    let totals = Totals::read(&state.app);
    let m = state.app.metrics();
    let (ns_lookups, model_lookups) = m.lookups.snapshot();
    let requests_by_model: BTreeMap<String, Value> = model_lookups
        .iter()
        .map(|(k, l)| (k.clone(), json!({"requests": l, "hit_rate": hit_rate(l)})))
        .collect();
    let lookups = totals.total().saturating_sub(totals.bypass + totals.error);
    let rate = |n: u64| {
        if lookups == 0 {
            0.0
        } else {
            n as f64 / lookups as f64
        }
    };
    Ok(json!({
        "backend": engine.backend().kind(),
        "entries": inv.entries,
        "expired": inv.expired,
        "bytes": inv.bytes,
        "oldest_ms": inv.oldest_ms,
        "by_model": inv.by_model,
        "by_namespace": by_namespace(&inv.by_namespace, &ns_lookups),
        "requests_by_model": requests_by_model,
        "busiest": inv.busiest,
        "stored_hits": inv.hits,
        "stored_tokens_saved": inv.tokens_saved,
        "stored_cost_saved_usd": inv.cost_saved_usd,
        "since_start": {
            "requests": totals,
            "total": totals.total(),
            "hit_rate": {
                "exact": rate(totals.exact_hit),
                "semantic": rate(totals.semantic_hit),
            },
            "tokens_saved": sum_counters(&m.tokens_saved) as u64,
            "cost_saved_usd": sum_counters(&m.cost_saved),
            "tokens_upstream": sum_counters(&m.tokens_upstream) as u64,
            "cost_upstream_usd": sum_counters(&m.cost_upstream),
        },
    }))
}

/// `GET /admin/dashboard.json`: everything the page draws.
pub async fn dashboard(State(state): State<AdminState>) -> Response {
    let stats = match stats_value(&state).await {
        Ok(v) => v,
        Err(e) => return e.into_response_for(None),
    };
    let now = now_ms();
    state.history.record(now, Totals::read(&state.app));
    let config = state.app.config();
    let m = state.app.metrics();
    let providers: Vec<Value> = state
        .app
        .router()
        .stats()
        .into_iter()
        .map(|p| {
            let errors: BTreeMap<&str, u64> =
                p.errors.iter().filter(|(_, n)| *n > 0).copied().collect();
            json!({
                "name": p.provider,
                "breaker": match p.breaker.as_gauge() { 0 => "closed", 1 => "open", _ => "half-open" },
                "attempts": p.attempts,
                "responses": p.responses,
                "retries": p.retries,
                "fallbacks": p.fallbacks,
                "breaker_opened": p.breaker_opened,
                "errors": errors,
            })
        })
        .collect();
    let latency: BTreeMap<String, Value> = histograms(&m.request_seconds, "outcome")
        .into_iter()
        .map(|(outcome, h)| {
            let q = |p: f64| quantile(&h.buckets, h.count, p).map(|s| s * 1e3);
            (
                outcome,
                json!({"count": h.count, "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99)}),
            )
        })
        .collect();
    // Live precision (feedback and shadow checks), once there is something to show: shadow
    // checks are on, or feedback or recorded pairs exist.
    let precision = state.app.quality().map(|q| q.summary(&config)).filter(|p| {
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        p["audit_rate"].as_f64().unwrap_or(0.0) > 0.0
            || n(&p["pairs"]) > 0
            || n(&p["feedback"]["correct"]) + n(&p["feedback"]["wrong"]) > 0
    });
    Json(json!({
        "generated_ms": now,
        "precision": precision,
        "threshold": config.cache.threshold,
        "verified_threshold": config.cache.verified_threshold,
        "stats": stats,
        "series": state.history.series(now),
        "latency": latency,
        "similarity": similarity_bins(&state.app),
        "providers": providers,
    }))
    .into_response()
}

/// The similarity histogram of semantic lookups: the fixed bins of `deja_similarity`, each
/// with its hits and near-misses (the best candidate of a miss).
pub fn similarity_bins(state: &AppState) -> Value {
    let h = histograms(&state.metrics().similarity, "result");
    let per_bin = |result: &str| -> Vec<(f64, u64)> {
        let Some(h) = h.get(result) else {
            return Vec::new();
        };
        let mut prev = 0;
        h.buckets
            .iter()
            .map(|(upper, cum)| {
                let n = cum.saturating_sub(prev);
                prev = *cum;
                (*upper, n)
            })
            .collect()
    };
    let (hits, misses) = (per_bin("hit"), per_bin("miss"));
    let uppers: Vec<f64> = if hits.len() >= misses.len() {
        hits.iter().map(|(u, _)| *u).collect()
    } else {
        misses.iter().map(|(u, _)| *u).collect()
    };
    let mut lower = -1.0;
    let bins: Vec<Value> = uppers
        .iter()
        .enumerate()
        .map(|(i, upper)| {
            let bin = json!({
                "lo": lower,
                "hi": upper,
                "hit": hits.get(i).map_or(0, |(_, n)| *n),
                "miss": misses.get(i).map_or(0, |(_, n)| *n),
            });
            lower = *upper;
            bin
        })
        .collect();
    json!({ "bins": bins })
}

/// A histogram's cumulative buckets (finite upper bounds only) and its count.
pub struct Hist {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
}

/// Each series of a histogram family, keyed by the value of `by`.
fn histograms(c: &impl Collector, by: &str) -> BTreeMap<String, Hist> {
    let mut out = BTreeMap::new();
    for family in c.collect() {
        for m in family.get_metric() {
            let key = m
                .get_label()
                .iter()
                .find(|l| l.name() == by)
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let h = m.get_histogram();
            out.insert(
                key,
                Hist {
                    buckets: h
                        .get_bucket()
                        .iter()
                        .filter(|b| b.upper_bound().is_finite())
                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                        .collect(),
                    count: h.get_sample_count(),
                },
            );
        }
    }
    out
}

/// The `p` quantile estimated from cumulative buckets, linear within a bucket (as Prometheus's
/// `histogram_quantile`); past the last finite bucket, its bound.
pub fn quantile(buckets: &[(f64, u64)], count: u64, p: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = p * count as f64;
    let mut prev = (0.0, 0u64);
    for &(upper, cum) in buckets {
        if cum as f64 >= rank {
            let in_bucket = (cum - prev.1) as f64;
            let frac = if in_bucket == 0.0 {
                1.0
            } else {
                (rank - prev.1 as f64) / in_bucket
            };
            return Some(prev.0 + (upper - prev.0) * frac);
        }
        prev = (upper, cum);
    }
    buckets.last().map(|(u, _)| *u)
}

/// Every series of a counter family with its labels.
fn counter_values(c: &impl Collector) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for family in c.collect() {
        for m in family.get_metric() {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            out.push((labels, m.get_counter().get_value()));
        }
    }
    out
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn sum_counters(c: &impl Collector) -> f64 {
    counter_values(c).iter().map(|(_, v)| v).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(exact: u64, miss: u64) -> Totals {
        Totals {
            exact_hit: exact,
            miss,
            ..Default::default()
        }
    }

    #[test]
    fn history_counts_per_minute_and_stays_bounded() {
        let h = History::new();
        let base = 1_000 * 60_000;
        h.record(base, t(1, 1));
        h.record(base + 30_000, t(2, 3));
        h.record(base + 60_000, t(5, 3));
        let s = h.series(base + 60_000);
        assert_eq!(s.len(), HISTORY_MINUTES);
        let last = &s[HISTORY_MINUTES - 1];
        assert_eq!((last.counts.exact_hit, last.counts.miss), (3, 0));
        let before = &s[HISTORY_MINUTES - 2];
        assert_eq!((before.counts.exact_hit, before.counts.miss), (2, 3));
        for i in 0..500u64 {
            h.record(base + 120_000 + i * 60_000, t(10 + i, 3));
        }
        assert_eq!(h.samples.lock().len(), HISTORY_MINUTES + 1);
        let s = h.series(base + 120_000 + 499 * 60_000);
        assert!(s.iter().all(|m| m.counts.exact_hit <= 1), "{s:?}");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(0.01, 50), (0.1, 90), (1.0, 100)];
        assert_eq!(quantile(&b, 100, 0.5), Some(0.01));
        let p90 = quantile(&b, 100, 0.9).unwrap();
        assert!((p90 - 0.1).abs() < 1e-9, "{p90}");
        let p95 = quantile(&b, 100, 0.95).unwrap();
        assert!((p95 - 0.55).abs() < 1e-9, "{p95}");
        assert_eq!(quantile(&b, 0, 0.5), None);
        // Past the last finite bucket: its bound.
        assert_eq!(quantile(&[(0.01, 1)], 2, 0.99), Some(0.01));
    }
}
