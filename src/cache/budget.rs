//! Tokens per minute and spend budgets of deja keys (`[[keys]] tpm`, `budget_daily_usd`,
//! `budget_monthly_usd`, issue 16). Only upstream calls spend: a cached answer costs the key
//! nothing (its price is counted as saved).
//!
//! **Reserve, then settle.** Before a request goes upstream, [`Ledger::reserve`] takes, under
//! one lock, an estimate from every limit of the key: tokens (the prompt counted with the
//! o200k tokenizer plus the request's `max_tokens`, times `n`, or `reserve_output_tokens`
//! when it sets none) and their price (`[[prices]]`). A request is refused (429) unless the
//! estimate fits beside what is already spent *and* what other requests in flight have
//! reserved, so N concurrent requests can never spend more than the budget between them (the
//! estimate of completion tokens is an upper bound whenever the request sets `max_tokens`).
//! When the answer is complete, the [`Reservation`] is settled with the real usage: the
//! estimate is given back and the real cost added. An upstream error gives the estimate back;
//! an answer whose usage cannot be known is charged the estimate.
//!
//! Tokens per minute are a bucket of `tpm` tokens refilled continuously (`tpm`/60 a second):
//! settling returns what was over-estimated. `governor` (used for `rpm`) cannot give tokens
//! back, so this bucket is written here. Budgets are integer nano-dollars per UTC day and per
//! UTC calendar month.
//!
//! **Persistence.** Each settle writes the key's spent day and month to a sled database of its
//! own, `<cache.dir>/usage` (opened before serving, while the cache's store waits for the
//! model), flushed every 500 ms and at shutdown; a restart reads it back. Reservations in
//! flight and the token bucket are not persisted. Counters are per process: replicas sharing
//! a PostgreSQL backend each keep their own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::ApiKind;
use crate::cache::access::openai_duration;
use crate::cache::request::CacheRequest;
use crate::config::keys::KeyConfig;
use crate::config::Price;
use crate::metrics::keys::KeyMetrics;
use crate::store::Usage;

/// What one request is expected (or found) to spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub tokens: u64,
    pub nano_usd: u64,
}

impl Spend {
    pub fn of(price: Option<Price>, usage: &Usage) -> Spend {
        Spend {
            tokens: usage.total() as u64,
            nano_usd: price
                .map(|p| crate::config::keys::usd_to_nano(p.cost(usage)))
                .unwrap_or(0),
        }
    }
}

/// The usage a request may reach: its prompt's tokens and every completion at its
/// `max_tokens` (or the key's `reserve_output_tokens`). Blocking on first use (the tokenizer
/// loads): call off the runtime.
pub fn estimate(api: ApiKind, body: &Map<String, Value>, reserve_output_tokens: u32) -> Usage {
    let prompt = crate::metrics::cost::estimate_usage(api, body, "").prompt_tokens;
    let max_out = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .map(|v| v.min(u32::MAX as u64) as u32)
        .unwrap_or(reserve_output_tokens);
    let n = body
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128) as u32;
    Usage {
        prompt_tokens: prompt,
        completion_tokens: max_out.saturating_mul(n),
    }
}

/// A key's counters as persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// Days since 1970-01-01 (UTC) and what was spent that day.
    day: i64,
    day_nano: u64,
    /// Months since January 1970 and what was spent that month.
    month: i64,
    month_nano: u64,
}

impl Record {
    fn roll(&mut self, now: &Now) {
        if self.day != now.day {
            self.day = now.day;
            self.day_nano = 0;
        }
        if self.month != now.month {
            self.month = now.month;
            self.month_nano = 0;
        }
    }
}

/// A continuously refilled bucket of `tpm` tokens; its level may go below zero when a
/// request's tokens exceed what was left (it then refills before the next one).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tpm: u64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(tpm: u64, now: Instant) -> Bucket {
        Bucket {
            tpm,
            level: tpm as f64,
            at: now,
        }
    }

    fn per_sec(&self) -> f64 {
        self.tpm as f64 / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.per_sec()).min(self.tpm as f64);
        self.at = now;
    }

    /// How long until `tokens` (at most a full bucket) fit; zero when they fit now.
    fn wait_for(&self, tokens: u64) -> Duration {
        let need = tokens.min(self.tpm) as f64;
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.per_sec())
        }
    }

    fn remaining(&self) -> u64 {
        self.level.max(0.0) as u64
    }

    fn until_full(&self) -> Duration {
        Duration::from_secs_f64(((self.tpm as f64 - self.level) / self.per_sec()).max(0.0))
    }
}

#[derive(Debug, Default)]
struct KeyUsage {
    record: Record,
    /// Nano-USD reserved by requests in flight.
    reserved_nano: u64,
    bucket: Option<Bucket>,
}

impl KeyUsage {
    /// The key's token bucket at its current `tpm` (a changed limit starts a full one).
    fn bucket(&mut self, tpm: u64, now: Instant) -> &mut Bucket {
        let b = self.bucket.get_or_insert_with(|| Bucket::new(tpm, now));
        if b.tpm != tpm {
            *b = Bucket::new(tpm, now);
        }
        b.refill(now);
        b
    }
}

/// The clock a decision is made at: a monotonic instant for the token bucket, the UTC
/// calendar for the budgets.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    /// Seconds since 1970-01-01 UTC.
    pub unix_s: i64,
    day: i64,
    month: i64,
}

impl Now {
    pub fn at(instant: Instant, unix_s: i64) -> Now {
        let day = unix_s.div_euclid(86_400);
        let (y, m, _) = civil_from_days(day);
        Now {
            instant,
            unix_s,
            day,
            month: (y - 1970) * 12 + (m as i64 - 1),
        }
    }

    pub fn system() -> Now {
        let unix_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Now::at(Instant::now(), unix_s)
    }

    fn until_next_day(&self) -> u64 {
        ((self.day + 1) * 86_400 - self.unix_s).max(1) as u64
    }

    fn until_next_month(&self) -> u64 {
        let (y, m) = (
            1970 + self.month.div_euclid(12),
            self.month.rem_euclid(12) + 1,
        );
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        (days_from_civil(ny, nm as u32, 1) * 86_400 - self.unix_s).max(1) as u64
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let (m, d) = (m as i64, d as i64);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What a key has left, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remaining {
    /// (limit, remaining, until full) of the token bucket.
    pub tokens: Option<(u64, u64, Duration)>,
    pub daily_nano: Option<u64>,
    pub monthly_nano: Option<u64>,
}

impl Remaining {
    /// `x-ratelimit-{limit,remaining,reset}-tokens` as OpenAI names them, and
    /// `x-deja-budget-remaining-{daily,monthly}-usd`.
    pub fn apply(&self, h: &mut HeaderMap) {
        if let Some((limit, remaining, reset)) = self.tokens {
            h.insert("x-ratelimit-limit-tokens", HeaderValue::from(limit));
            h.insert("x-ratelimit-remaining-tokens", HeaderValue::from(remaining));
            if let Ok(v) = HeaderValue::from_str(&openai_duration(reset)) {
                h.insert("x-ratelimit-reset-tokens", v);
            }
        }
        for (name, v) in [
            ("x-deja-budget-remaining-daily-usd", self.daily_nano),
            ("x-deja-budget-remaining-monthly-usd", self.monthly_nano),
        ] {
            if let Some(n) = v {
                if let Ok(v) = HeaderValue::from_str(&usd(n)) {
                    h.insert(name, v);
                }
            }
        }
    }
}

/// Nano-dollars as USD with six decimals.
fn usd(nano: u64) -> String {
    format!("{:.6}", nano as f64 / 1e9)
}

/// The counters of every configured key (by name, so bounded by the config).
pub struct Ledger {
    keys: Mutex<HashMap<String, KeyUsage>>,
    dir: PathBuf,
    /// Opened once, on first need; `None` inside when it could not be (counters then live in
    /// memory only, and the log said why) or once closed at shutdown (which releases the
    /// database's file lock even while other handles to the ledger live on).
    db: OnceLock<Mutex<Option<(sled::Db, sled::Tree)>>>,
}

impl Ledger {
    /// A ledger persisting in `dir` (not opened yet).
    pub fn new(dir: PathBuf) -> Ledger {
        Ledger {
            keys: Mutex::new(HashMap::new()),
            dir,
            db: OnceLock::new(),
        }
    }

    /// Opens the database and loads the counters, once. Blocking: call off the runtime.
    pub fn open_blocking(&self) {
        self.db.get_or_init(|| {
            let opened = open_db(&self.dir);
            Mutex::new(match opened {
                Ok((db, tree)) => {
                    let mut keys = self.keys.lock();
                    for (k, v) in tree.iter().flatten() {
                        let (Ok(name), Ok(record)) = (
                            String::from_utf8(k.to_vec()),
                            serde_json::from_slice::<Record>(&v),
                        ) else {
                            continue;
                        };
                        keys.entry(name).or_default().record = record;
                    }
                    Some((db, tree))
                }
                Err(e) => {
                    tracing::error!(
                        dir = %self.dir.display(),
                        error = %e,
                        "opening the key usage counters failed: they are kept in memory only"
                    );
                    None
                }
            })
        });
    }

    /// Flushes the counters to disk. Blocking.
    pub fn flush_blocking(&self) {
        if let Some(open) = self.db.get() {
            if let Some((db, _)) = open.lock().as_ref() {
                if let Err(e) = db.flush() {
                    tracing::error!(error = %e, "flushing the key usage counters failed");
                }
            }
        }
    }

    /// Flushes and closes the database (shutdown): its file lock is released at once, so a
    /// process that starts next (or a server restarted in the same process) reads the
    /// counters back. Later spends are counted in memory only. Blocking.
    pub fn close_blocking(&self) {
        self.flush_blocking();
        if let Some(open) = self.db.get() {
            open.lock().take();
        }
    }

    /// Reserves `estimate` from every limit of `key`, or says which one it does not fit
    /// (429). Takes only the lock: cheap, but call [`Ledger::open_blocking`] first.
    pub fn reserve(
        self: &Arc<Self>,
        key: &KeyConfig,
        price: Option<Price>,
        estimate: Spend,
        now: Now,
    ) -> Result<Reservation, ApiError> {
        let mut keys = self.keys.lock();
        let u = keys.entry(key.name.clone()).or_default();
        u.record.roll(&now);
        let limited = |message: String, retry_after_s: u64, code| ApiError::KeyLimited {
            message,
            retry_after_s: retry_after_s.max(1),
            code,
        };
        if let Some(tpm) = key.tpm {
            let b = u.bucket(tpm, now.instant);
            let wait = b.wait_for(estimate.tokens);
            if !wait.is_zero() {
                return Err(limited(
                    format!(
                        "The deja key '{}' reached its limit of {tpm} tokens per minute (tpm): \
                         this request may use {} tokens and {} are left; retry in {}.",
                        key.name,
                        estimate.tokens,
                        b.remaining(),
                        openai_duration(wait)
                    ),
                    wait.as_secs_f64().ceil() as u64,
                    "rate_limit_exceeded",
                ));
            }
        }
        let committed = |spent: u64| spent.saturating_add(u.reserved_nano);
        for (limit, spent, what, field, retry) in [
            (
                key.budget_daily_nano,
                u.record.day_nano,
                "daily",
                "budget_daily_usd",
                now.until_next_day(),
            ),
            (
                key.budget_monthly_nano,
                u.record.month_nano,
                "monthly",
                "budget_monthly_usd",
                now.until_next_month(),
            ),
        ] {
            let Some(limit) = limit else { continue };
            if committed(spent).saturating_add(estimate.nano_usd) > limit {
                return Err(limited(
                    format!(
                        "The deja key '{}' has spent its {what} budget of ${} ({field}): ${} \
                         spent or reserved, this request may cost ${}; it renews in {}.",
                        key.name,
                        usd(limit),
                        usd(committed(spent)),
                        usd(estimate.nano_usd),
                        openai_duration(Duration::from_secs(retry))
                    ),
                    retry,
                    "insufficient_quota",
                ));
            }
        }
        if let Some(tpm) = key.tpm {
            u.bucket(tpm, now.instant).level -= estimate.tokens as f64;
        }
        u.reserved_nano = u.reserved_nano.saturating_add(estimate.nano_usd);
        Ok(Reservation {
            ledger: Arc::clone(self),
            key: key.name.clone(),
            price,
            estimate,
            settled: false,
        })
    }

    /// What `key` has left now (nothing for a key without limits).
    pub fn remaining(&self, key: &KeyConfig, now: Now) -> Remaining {
        let mut keys = self.keys.lock();
        let u = keys.entry(key.name.clone()).or_default();
        u.record.roll(&now);
        let left = |limit: Option<u64>, spent: u64| {
            limit.map(|l| l.saturating_sub(spent.saturating_add(u.reserved_nano)))
        };
        let daily = left(key.budget_daily_nano, u.record.day_nano);
        let monthly = left(key.budget_monthly_nano, u.record.month_nano);
        Remaining {
            tokens: key.tpm.map(|tpm| {
                let b = u.bucket(tpm, now.instant);
                (tpm, b.remaining(), b.until_full())
            }),
            daily_nano: daily,
            monthly_nano: monthly,
        }
    }

    /// Gives `estimate` back and charges `actual`; returns the record to persist.
    fn settle(&self, key: &str, estimate: Spend, actual: Spend, now: Now) -> Record {
        let mut keys = self.keys.lock();
        let u = keys.entry(key.to_string()).or_default();
        u.record.roll(&now);
        u.reserved_nano = u.reserved_nano.saturating_sub(estimate.nano_usd);
        u.record.day_nano = u.record.day_nano.saturating_add(actual.nano_usd);
        u.record.month_nano = u.record.month_nano.saturating_add(actual.nano_usd);
        if let Some(b) = u.bucket.as_mut() {
            b.refill(now.instant);
            b.level = (b.level + estimate.tokens as f64 - actual.tokens as f64).min(b.tpm as f64);
        }
        u.record
    }

    /// Writes the key's counters as they are now. The keys lock is held across the write, so
    /// concurrent settles reach the database in the order they happened: writing the record
    /// each settle computed, after the lock, let an older total overwrite a newer one (a
    /// restart then forgot spend).
    fn persist(&self, key: &str) {
        let Some(open) = self.db.get() else {
            return;
        };
        let keys = self.keys.lock();
        let Some(record) = keys.get(key).map(|u| u.record) else {
            return;
        };
        let open = open.lock();
        let Some((_, tree)) = open.as_ref() else {
            return;
        };
        let written = serde_json::to_vec(&record)
            .map_err(|e| e.to_string())
            .and_then(|v| tree.insert(key.as_bytes(), v).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::error!(key, error = %e, "writing the key usage counters failed");
        }
    }
}

/// Reserves what a request about to go upstream may spend, when its deja key has limits
/// (`Ok(None)` otherwise). A refusal is counted (`over_tpm`, `over_budget`) and is the 429.
pub async fn reserve_for(
    ledger: &Arc<Ledger>,
    key: Option<&KeyConfig>,
    req: &CacheRequest,
    metrics: &KeyMetrics,
) -> Result<Option<Reservation>, ApiError> {
    let Some(key) = key.filter(|k| k.has_spend_limits()).cloned() else {
        return Ok(None);
    };
    let (ledger, body, api) = (Arc::clone(ledger), Arc::clone(&req.body), req.api);
    let price = req.config.price_for(req.model());
    // Tokenizing the prompt (and, once, opening the counters) is blocking work.
    let name = key.name.clone();
    let reserved = tokio::task::spawn_blocking(move || {
        ledger.open_blocking();
        let usage = estimate(api, &body, key.reserve_output_tokens);
        ledger.reserve(&key, price, Spend::of(price, &usage), Now::system())
    })
    .await
    .map_err(|e| ApiError::internal(format!("reserving a key's budget failed: {e}")))?;
    match reserved {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            let result = match &e {
                ApiError::KeyLimited {
                    code: "insufficient_quota",
                    ..
                } => "over_budget",
                _ => "over_tpm",
            };
            metrics
                .requests
                .with_label_values(&[name.as_str(), result])
                .inc();
            Err(e)
        }
    }
}

/// Counts what a cached answer saved the key (it costs the key nothing).
pub fn count_saved(metrics: &KeyMetrics, key: &str, price: Option<Price>, usage: Option<Usage>) {
    if let (Some(p), Some(u)) = (price, usage) {
        metrics
            .cost
            .with_label_values(&[key, "saved"])
            .inc_by(p.cost(&u));
    }
}

fn open_db(dir: &std::path::Path) -> Result<(sled::Db, sled::Tree), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    // A just-closed ledger (a restart in one process) can hold the file lock for a moment.
    let mut tries = 0;
    let db = loop {
        match sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .open()
        {
            Ok(db) => break db,
            Err(sled::Error::Io(e))
                if tries < 200 && e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let tree = db.open_tree("key_usage").map_err(|e| e.to_string())?;
    Ok((db, tree))
}

/// An estimate held against a key's limits until the answer is complete. Dropped unsettled
/// (an upstream failure, a request that never got an answer), it gives everything back.
pub struct Reservation {
    ledger: Arc<Ledger>,
    key: String,
    price: Option<Price>,
    estimate: Spend,
    settled: bool,
}

impl Reservation {
    /// Settles with the answer's real usage (`None`: unknown, the estimate is charged) and
    /// persists the key's counters. Blocking (a sled write): call off the runtime. Returns
    /// what was charged.
    pub fn settle_blocking(self, usage: Option<&Usage>) -> Spend {
        let actual = usage
            .map(|u| Spend::of(self.price, u))
            .unwrap_or(self.estimate);
        self.settle_at(actual, Now::system());
        actual
    }

    /// Charges `actual` at `now` instead of the estimate, and persists.
    pub fn settle_at(mut self, actual: Spend, now: Now) {
        self.settled = true;
        self.ledger.settle(&self.key, self.estimate, actual, now);
        self.ledger.persist(&self.key);
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger
                .settle(&self.key, self.estimate, Spend::default(), Now::system());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, KeyHash};
    use std::path::Path;

    fn key(extra: &str) -> KeyConfig {
        let text = format!(
            "[server]\nauth = \"keys\"\n[[keys]]\nname = \"a\"\nhash = \"{}\"\n{extra}",
            KeyHash::of("dk-a")
        );
        Config::from_toml_str(&text, Vec::<(String, String)>::new(), Path::new("/"))
            .unwrap()
            .keys
            .keys[0]
            .clone()
    }

    fn spend(tokens: u64, usd: f64) -> Spend {
        Spend {
            tokens,
            nano_usd: crate::config::keys::usd_to_nano(usd),
        }
    }

    #[test]
    fn calendar_days_and_months() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2024, 3, 1), 19_783);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        for d in [-800, 0, 59, 60, 11_016, 19_782, 40_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        // 2024-02-29 12:00 UTC: half a day to March, the same to the next month.
        let now = Now::at(Instant::now(), 19_782 * 86_400 + 43_200);
        assert_eq!(now.until_next_day(), 43_200);
        assert_eq!(now.until_next_month(), 43_200);
        let dec = Now::at(Instant::now(), days_from_civil(2025, 12, 31) * 86_400);
        assert_eq!(dec.until_next_month(), 86_400);
    }

    #[test]
    fn budgets_reserve_settle_and_renew() {
        let ledger = Arc::new(Ledger::new(PathBuf::from("/nonexistent")));
        let k = key("budget_daily_usd = 1.0\nbudget_monthly_usd = 1.5\n");
        let t0 = Now::at(Instant::now(), 100 * 86_400);
        // Two reservations of $0.40 fit, a third does not while they are in flight.
        let a = ledger.reserve(&k, None, spend(10, 0.4), t0).unwrap();
        let b = ledger.reserve(&k, None, spend(10, 0.4), t0).unwrap();
        let e = match ledger.reserve(&k, None, spend(10, 0.4), t0) {
            Err(e) => e,
            Ok(_) => panic!("a third $0.40 fits a $1 budget"),
        };
        assert_eq!(e.status().as_u16(), 429);
        assert_eq!(e.retry_after_s(), Some(86_400));
        let msg = e.to_string();
        assert!(
            msg.contains("daily budget of $1.000000 (budget_daily_usd)"),
            "{msg}"
        );
        assert_eq!(
            ledger.remaining(&k, t0).daily_nano,
            Some(200_000_000),
            "reservations count against what is left"
        );
        // Settling one for less gives the difference back; dropping one gives it all back.
        a.settle_at(spend(5, 0.1), t0);
        // What dropping an unsettled reservation does, at the test's clock.
        b.settle_at(Spend::default(), t0);
        assert_eq!(ledger.remaining(&k, t0).daily_nano, Some(900_000_000));
        // The next day the daily budget is whole again; the monthly one remembers.
        let t1 = Now::at(t0.instant, 101 * 86_400);
        let r = ledger.remaining(&k, t1);
        assert_eq!(
            (r.daily_nano, r.monthly_nano),
            (Some(1_000_000_000), Some(1_400_000_000))
        );
        let c = ledger.reserve(&k, None, spend(1, 1.0), t1).unwrap();
        c.settle_at(spend(1, 1.0), t1);
        let e = ledger.reserve(&k, None, spend(1, 0.5), t1).err().unwrap();
        assert!(e.to_string().contains("daily"), "{e}");
        let t2 = Now::at(t0.instant, 102 * 86_400);
        let e = ledger.reserve(&k, None, spend(1, 0.5), t2).err().unwrap();
        assert!(e.to_string().contains("monthly budget"), "{e}");
        assert_eq!(e.retry_after_s(), Some(t2.until_next_month()));
    }

    #[test]
    fn tokens_per_minute_refill_and_give_back() {
        let ledger = Arc::new(Ledger::new(PathBuf::from("/nonexistent")));
        let k = key("tpm = 600\n");
        let t0 = Instant::now();
        let at = |s: f64| Now::at(t0 + Duration::from_secs_f64(s), 0);
        let a = ledger.reserve(&k, None, spend(500, 0.0), at(0.0)).unwrap();
        let e = ledger
            .reserve(&k, None, spend(200, 0.0), at(0.0))
            .err()
            .unwrap();
        assert!(e.to_string().contains("600 tokens per minute (tpm)"), "{e}");
        // 100 left, 10 a second: 200 fit after 10 s.
        assert_eq!(e.retry_after_s(), Some(10));
        assert_eq!(ledger.remaining(&k, at(0.0)).tokens.unwrap().1, 100);
        // The answer used 100 of the 500 reserved: 400 come back.
        a.settle_at(spend(100, 0.0), at(0.0));
        let r = ledger.remaining(&k, at(0.0)).tokens.unwrap();
        assert_eq!((r.0, r.1), (600, 500));
        assert_eq!(r.2, Duration::from_secs(10));
        let _held = ledger.reserve(&k, None, spend(500, 0.0), at(0.0)).unwrap();
        // A request larger than the whole bucket waits for a full bucket, then goes.
        let big = ledger
            .reserve(&k, None, spend(5000, 0.0), at(1.0))
            .err()
            .unwrap();
        assert_eq!(big.retry_after_s(), Some(59));
        assert!(ledger.reserve(&k, None, spend(5000, 0.0), at(60.0)).is_ok());
    }

    #[test]
    fn concurrent_reservations_never_overspend() {
        let ledger = Arc::new(Ledger::new(PathBuf::from("/nonexistent")));
        let k = key("budget_daily_usd = 1.0\n");
        let now = Now::system();
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..50 {
                s.spawn(|| {
                    if let Ok(r) = ledger.reserve(&k, None, spend(1, 0.07), now) {
                        granted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        r.settle_blocking(None);
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 14, "floor(1.00 / 0.07)");
    }

    #[test]
    fn counters_persist_across_ledgers() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("budget_daily_usd = 1.0\n");
        let price = Some(Price {
            input_per_mtok: 1_000.0,
            output_per_mtok: 2_000.0,
        });
        {
            let ledger = Arc::new(Ledger::new(dir.path().join("usage")));
            ledger.open_blocking();
            let r = ledger
                .reserve(&k, price, spend(300, 0.5), Now::system())
                .unwrap();
            let charged = r.settle_blocking(Some(&Usage {
                prompt_tokens: 100,
                completion_tokens: 100,
            }));
            assert_eq!(charged, spend(200, 0.3));
            ledger.flush_blocking();
        }
        let ledger = Arc::new(Ledger::new(dir.path().join("usage")));
        ledger.open_blocking();
        assert_eq!(
            ledger.remaining(&k, Now::system()).daily_nano,
            Some(700_000_000)
        );
    }

    #[test]
    fn estimates_use_max_tokens_n_or_the_reserve() {
        let body = serde_json::json!({"messages":[{"role":"user","content":"hello world"}],
                                      "max_tokens": 50, "n": 2});
        let u = estimate(ApiKind::Chat, body.as_object().unwrap(), 1024);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (8, 100));
        let body = serde_json::json!({"messages":[{"role":"user","content":"hello world"}]});
        let u = estimate(ApiKind::Chat, body.as_object().unwrap(), 1024);
        assert_eq!(u.completion_tokens, 1024);
    }

    /// What budgets add: `remaining` runs on every answer of a key with limits (a hit too),
    /// reserve + settle on each upstream call: `cargo test --lib cache::budget -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn overhead_per_request() {
        let ledger = Arc::new(Ledger::new(PathBuf::from("/nonexistent")));
        let k = key("tpm = 1000000000
budget_daily_usd = 1000000
");
        let n = 100_000;
        let started = Instant::now();
        for _ in 0..n {
            let mut h = HeaderMap::new();
            ledger.remaining(&k, Now::system()).apply(&mut h);
            std::hint::black_box(h);
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("remaining + headers: {us:.2} us per request");
        let started = Instant::now();
        for _ in 0..n {
            let r = ledger
                .reserve(&k, None, spend(10, 0.000001), Now::system())
                .unwrap();
            r.settle_blocking(None);
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("reserve + settle (in memory): {us:.2} us per upstream call");
    }

    #[test]
    fn headers_name_what_is_left() {
        let mut h = HeaderMap::new();
        Remaining {
            tokens: Some((600, 100, Duration::from_secs(50))),
            daily_nano: Some(250_000_000),
            monthly_nano: None,
        }
        .apply(&mut h);
        assert_eq!(h["x-ratelimit-limit-tokens"], "600");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "100");
        assert_eq!(h["x-ratelimit-reset-tokens"], "50s");
        assert_eq!(h["x-deja-budget-remaining-daily-usd"], "0.250000");
        assert!(h.get("x-deja-budget-remaining-monthly-usd").is_none());
    }
}
