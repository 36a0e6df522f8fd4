//! The audit log (`[audit]`, issue 16): one JSON line per request with who asked (the deja
//! key's name, or the tenant's hash), what (model, route, provider), what happened (outcome,
//! status, similarity, entry), what it cost and saved, and how long each phase took. Prompts
//! and answers only with `include_content = true`, and then with personal data replaced by
//! its kind (`[EMAIL]`).
//!
//! A request never waits for the log: lines go into a bounded queue that one writer thread
//! drains; a line that finds the queue full is dropped and counted
//! (`deja_audit_lines_total{result="dropped"}`). The writer rotates the file before it grows
//! past `max_file_bytes` (`audit.jsonl` → `audit.jsonl.1` → ... → `audit.jsonl.N`, the oldest
//! deleted), so the log holds at most `max_files + 1` files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus::IntCounterVec;
use serde_json::{json, Map, Value};

use crate::cache::request::CacheRequest;
use crate::config::audit::AuditConfig;
use crate::config::Price;
use crate::store::Usage;

/// One request as the log records it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub request_id: String,
    pub api: &'static str,
    /// The deja key's configured name (keys mode).
    pub key: Option<String>,
    /// The tenant (a hash of the client's key, or a namespace) when there is no deja key.
    pub tenant: Option<String>,
    pub model: String,
    /// The `[[routes]]` glob that routed it.
    pub route: Option<String>,
    pub provider: Option<String>,
    /// exact-hit, semantic-hit, miss, bypass, error.
    pub outcome: &'static str,
    pub status: u16,
    pub similarity: Option<f32>,
    pub entry: Option<u64>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub cost_usd: Option<f64>,
    pub saved_usd: Option<f64>,
    /// (phase, milliseconds): lookup, upstream, total.
    pub ms: Vec<(&'static str, f64)>,
    pub error: Option<String>,
    /// The prompt's texts and the answer, only when `include_content` (redacted here).
    pub prompt: Option<String>,
    pub answer: Option<String>,
}

/// Personal data in `text` replaced by its kind, e.g. `[EMAIL]`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in crate::pii::detect::find_all(text) {
        if f.start < at {
            continue;
        }
        out.push_str(&text[at..f.start]);
        out.push('[');
        out.push_str(&f.kind.label().to_ascii_uppercase());
        out.push(']');
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

impl Record {
    /// The JSON line (without its newline), at `unix_ms`.
    pub fn line(&self, unix_ms: u64) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("ts".into(), Value::String(rfc3339(unix_ms)));
        m.insert("request_id".into(), json!(self.request_id));
        m.insert("api".into(), json!(self.api));
        let opt = |m: &mut Map<String, Value>, k: &str, v: Value| {
            if !v.is_null() {
                m.insert(k.into(), v);
            }
        };
        opt(&mut m, "key", json!(self.key));
        opt(&mut m, "tenant", json!(self.tenant));
        m.insert("model".into(), json!(self.model));
        opt(&mut m, "route", json!(self.route));
        opt(&mut m, "provider", json!(self.provider));
        m.insert("outcome".into(), json!(self.outcome));
        m.insert("status".into(), json!(self.status));
        opt(&mut m, "similarity", json!(self.similarity));
        opt(&mut m, "entry", json!(self.entry));
        opt(&mut m, "prompt_tokens", json!(self.prompt_tokens));
        opt(&mut m, "completion_tokens", json!(self.completion_tokens));
        opt(&mut m, "cost_usd", json!(self.cost_usd));
        opt(&mut m, "saved_usd", json!(self.saved_usd));
        let ms: Map<String, Value> = self
            .ms
            .iter()
            .map(|(k, v)| (k.to_string(), json!((v * 1000.0).round() / 1000.0)))
            .collect();
        m.insert("ms".into(), Value::Object(ms));
        opt(&mut m, "error", json!(self.error));
        opt(&mut m, "prompt", json!(self.prompt));
        opt(&mut m, "answer", json!(self.answer));
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (y, mo, d) = crate::cache::budget::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        unix_ms % 1000
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A request's line being filled in as it goes; written by [`Pending::hit`] or
/// [`Pending::finish`] (a request that fails instead gets its error line from the handler).
pub struct Pending {
    log: Arc<AuditLog>,
    pub record: Record,
    started: Instant,
}

impl Pending {
    /// The line of `req`, asked with the deja key named `key` (keys mode).
    pub fn begin(log: &Arc<AuditLog>, req: &CacheRequest, key: Option<&str>) -> Pending {
        let model = req.model().to_string();
        let route = req
            .config
            .routes
            .iter()
            .find(|r| r.model_glob.matches(&model))
            .map(|r| r.model_glob.as_str().to_string());
        let prompt = log
            .include_content
            .then(|| redact(&crate::pii::request_texts(&req.body).join("\n")));
        Pending {
            log: Arc::clone(log),
            record: Record {
                request_id: uuid::Uuid::new_v4().simple().to_string(),
                api: req.api.as_str(),
                key: key.map(str::to_string),
                tenant: key.is_none().then(|| req.tenant.clone()),
                model,
                route,
                prompt,
                ..Record::default()
            },
            started: req.started,
        }
    }

    /// Writes the line of a cached answer (it cost nothing; its price is saved).
    pub fn hit(
        mut self,
        outcome: &'static str,
        similarity: f32,
        entry: u64,
        usage: Option<Usage>,
        price: Option<Price>,
        answer: &str,
    ) {
        let r = &mut self.record;
        r.outcome = outcome;
        r.status = 200;
        r.similarity = Some(similarity);
        r.entry = Some(entry);
        r.prompt_tokens = usage.map(|u| u.prompt_tokens);
        r.completion_tokens = usage.map(|u| u.completion_tokens);
        r.cost_usd = Some(0.0);
        r.saved_usd = price.zip(usage).map(|(p, u)| p.cost(&u));
        if self.log.include_content {
            r.answer = Some(redact(answer));
        }
        r.ms.push(("total", self.started.elapsed().as_secs_f64() * 1e3));
        self.log.write(&self.record);
    }

    /// Writes the line of an upstream answer once it is complete (`usage` and `answer` when
    /// it could be read).
    pub fn finish(mut self, usage: Option<Usage>, price: Option<Price>, answer: Option<&str>) {
        let r = &mut self.record;
        r.prompt_tokens = usage.map(|u| u.prompt_tokens);
        r.completion_tokens = usage.map(|u| u.completion_tokens);
        r.cost_usd = price.zip(usage).map(|(p, u)| p.cost(&u));
        if self.log.include_content {
            r.answer = answer.map(redact);
        }
        r.ms.push(("total", self.started.elapsed().as_secs_f64() * 1e3));
        self.log.write(&self.record);
    }

    pub fn request_id(&self) -> &str {
        &self.record.request_id
    }
}

/// The line of a request that failed (status and message; what it asked is not known here).
pub fn error_line(log: &AuditLog, api: &'static str, status: u16, error: String, started: Instant) {
    log.write(&Record {
        request_id: uuid::Uuid::new_v4().simple().to_string(),
        api,
        outcome: "error",
        status,
        error: Some(redact(&error)),
        ms: vec![("total", started.elapsed().as_secs_f64() * 1e3)],
        ..Record::default()
    });
}

/// The log: a bounded queue and the thread that writes it.
pub struct AuditLog {
    tx: Mutex<Option<SyncSender<Vec<u8>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    lines: IntCounterVec,
    pub include_content: bool,
}

impl AuditLog {
    /// Opens the log file of `cfg` (creating its directory) and starts the writer; `None`
    /// without `[audit] path`. Blocking (opens a file): call at start-up.
    pub fn start(cfg: &AuditConfig, lines: IntCounterVec) -> std::io::Result<Option<AuditLog>> {
        let Some(path) = cfg.path.clone() else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = Rotating::open(path, cfg.max_file_bytes, cfg.max_files)?;
        let (tx, rx) = mpsc::sync_channel(cfg.queue);
        let counter = lines.clone();
        let writer = std::thread::Builder::new()
            .name("deja-audit".into())
            .spawn(move || write_loop(rx, file, counter))?;
        Ok(Some(AuditLog {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            lines,
            include_content: cfg.include_content,
        }))
    }

    /// Queues `record`'s line; never waits (a full queue drops it, counted).
    pub fn write(&self, record: &Record) {
        let line = record.line(now_ms());
        let tx = self.tx.lock();
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.lines.with_label_values(&["dropped"]).inc();
            }
        }
    }

    /// Stops taking lines, lets the writer drain the queue and waits for it (bounded by the
    /// queue's length). Blocking: call off the runtime.
    pub fn close_blocking(&self) {
        drop(self.tx.lock().take());
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }
}

fn write_loop(rx: Receiver<Vec<u8>>, mut file: Rotating, lines: IntCounterVec) {
    while let Ok(line) = rx.recv() {
        let mut batch = vec![line];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        for line in batch {
            match file.write_line(&line) {
                Ok(()) => lines.with_label_values(&["written"]).inc(),
                Err(e) => {
                    lines.with_label_values(&["failed"]).inc();
                    tracing::error!(error = %e, "writing the audit log failed");
                }
            }
        }
        if let Err(e) = file.flush() {
            tracing::error!(error = %e, "flushing the audit log failed");
        }
    }
    let _ = file.flush();
}

/// A file that is rotated before it grows past `max_bytes`.
struct Rotating {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl Rotating {
    fn open(path: PathBuf, max_bytes: u64, max_files: u32) -> std::io::Result<Rotating> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path,
            out: BufWriter::new(file),
            size,
            max_bytes,
            max_files,
        })
    }

    fn numbered(path: &Path, i: u32) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let n = line.len() as u64 + 1;
        if self.size > 0 && self.size + n > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.size += n;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        // path.(N-1) → path.N (replacing the oldest), ..., path → path.1.
        for i in (1..self.max_files).rev() {
            let from = Self::numbered(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, Self::numbered(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, Self::numbered(&self.path, 1))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("c", "c"), &["result"]).unwrap()
    }

    fn record(i: usize) -> Record {
        Record {
            request_id: format!("r{i}"),
            api: "chat",
            key: Some("team-a".into()),
            model: "gpt-4o-mini".into(),
            outcome: "miss",
            status: 200,
            ms: vec![("total", 1.5)],
            ..Record::default()
        }
    }

    #[test]
    fn lines_carry_the_fields_and_timestamps_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_164_800_123), "2024-02-29T00:00:00.123Z");
        let v: Value = serde_json::from_slice(&record(1).line(0)).unwrap();
        assert_eq!(v["key"], "team-a");
        assert_eq!(v["outcome"], "miss");
        assert_eq!(v["ms"]["total"], 1.5);
        assert!(v.get("prompt").is_none() && v.get("similarity").is_none());
    }

    #[test]
    fn redaction_names_the_kind_never_the_value() {
        let r = redact("mail ann@example.com or call +44 20 7946 0958");
        assert!(!r.contains("ann@") && !r.contains("7946"), "{r}");
        assert!(r.contains("[EMAIL]") && r.contains("[PHONE]"), "{r}");
        assert_eq!(redact("What is 15% of 80?"), "What is 15% of 80?");
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig {
            path: Some(dir.path().join("audit.jsonl")),
            max_file_bytes: 1024,
            max_files: 2,
            queue: 1000,
            include_content: false,
        };
        let c = counter();
        let log = AuditLog::start(&cfg, c.clone()).unwrap().unwrap();
        for i in 0..100 {
            log.write(&record(i));
        }
        log.close_blocking();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 1024, "{n} is {len} bytes");
        }
        // The newest lines are in the current file, whole.
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["request_id"], "r99");
        assert_eq!(c.with_label_values(&["written"]).get(), 100);
    }

    /// What the log adds to a request (building its line and queueing it; the writer thread
    /// runs beside): `cargo test --release --lib audit -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn overhead_per_request() {
        let (tx, rx) = mpsc::sync_channel(1_000_000);
        let log = AuditLog {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            lines: counter(),
            include_content: false,
        };
        let n = 100_000;
        let started = std::time::Instant::now();
        for i in 0..n {
            log.write(&record(i));
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("audit line (build + queue): {us:.2} us per request");
        drop(rx);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A writer that never drains: two lines fit, the rest are dropped at once.
        let (tx, rx) = mpsc::sync_channel(2);
        let c = counter();
        let log = AuditLog {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            lines: c.clone(),
            include_content: false,
        };
        for i in 0..5 {
            log.write(&record(i));
        }
        assert_eq!(c.with_label_values(&["dropped"]).get(), 3);
        assert_eq!(rx.try_iter().count(), 2);
    }
}
