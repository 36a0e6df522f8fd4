//! Entries, as the operator handles them: `GET`/`DELETE /admin/entries/{id}`,
//! `POST /admin/purge`, `POST /admin/reload`, `GET /admin/export`, `POST /admin/import`.
//! Every change goes through [`Backend::remove`] / [`Backend::import`], which take an entry
//! out of (or put it into) the store and the search at once, whichever backend runs; the
//! blocking work runs on blocking threads, a page of [`SCAN_PAGE`] entries at a time.
//!
//! Export is JSONL: a header line (`{"deja_export":1,"embedding_model":…,"dim":…}`), then one
//! entry per line with its scope, prompt, embedding, answer and times. Import reads that back
//! line by line (a line longer than `admin.max_line_bytes` stops it with 413), keeps the
//! embeddings when the header names this deja's model and dimension, and embeds the prompts
//! again otherwise. Expired entries are skipped.
//!
//! [`Backend::remove`]: crate::cache::backend::Backend::remove
//! [`Backend::import`]: crate::cache::backend::Backend::import

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::stats::{SCAN_PAGE, UNKNOWN_NAMESPACE};
use super::AdminState;
use crate::api::error::ApiError;
use crate::cache::{CacheEngine, CacheError};
use crate::config::ModelGlob;
use crate::store::{now_ms, CachedResponse, Entry, EntryId, NewEntry, ScopeId};

/// Entries imported per blocking call.
const IMPORT_BATCH: usize = 256;
/// Export lines buffered between the scan and the client.
const EXPORT_QUEUE: usize = 64;

fn entry_json(e: &Entry) -> Value {
    json!({
        "id": e.id,
        "scope": e.scope.to_hex(),
        "prompt": e.prompt,
        "response": e.response,
        "created_ms": e.created_ms,
        "expires_ms": e.expires_ms,
        "expired": e.is_expired(now_ms()),
        "embedding_dim": e.embedding.as_ref().map(Vec::len),
    })
}

fn not_found(id: EntryId) -> Response {
    let body = json!({"error": {
        "message": format!("no entry {id} (deleted, evicted, expired and swept, or never stored)"),
        "type": "invalid_request_error",
        "param": "id",
        "code": "entry_not_found",
    }});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "admin: cache operation failed");
            Err(ApiError::internal(format!("cache: {e}")))
        }
        Err(e) => Err(ApiError::internal(format!("task failed: {e}"))),
    }
}

pub async fn get_entry(State(state): State<AdminState>, Path(id): Path<u64>) -> Response {
    let engine = match state.engine() {
        Ok(e) => e,
        Err(e) => return e.into_response_for(None),
    };
    match blocking(move || engine.backend().get(id)).await {
        Ok(Some(e)) => Json(entry_json(&e)).into_response(),
        Ok(None) => not_found(id),
        Err(e) => e.into_response_for(None),
    }
}

/// Removes the entry from the store and the search; once this answers, it is never served.
pub async fn delete_entry(State(state): State<AdminState>, Path(id): Path<u64>) -> Response {
    let engine = match state.engine() {
        Ok(e) => e,
        Err(e) => return e.into_response_for(None),
    };
    let removed = blocking(move || engine.remove_blocking(id)).await;
    state.inventory.invalidate();
    match removed {
        Ok(Some(e)) => {
            tracing::info!(entry = id, "admin: entry deleted");
            Json(json!({"deleted": e.id})).into_response()
        }
        Ok(None) => not_found(id),
        Err(e) => e.into_response_for(None),
    }
}

/// `POST /admin/purge`: every filter given must match (they combine with AND).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeFilter {
    /// A glob on the model the stored answer came from (`gpt-4o*`).
    pub model: Option<String>,
    /// Entries created longer ago than this (`"1h"`, `"7d"`).
    pub older_than: Option<String>,
    /// Entries whose prompt contains this text (case-insensitive).
    pub prompt_contains: Option<String>,
    /// One scope, as `POST /admin/explain` reports it (hex).
    pub scope: Option<String>,
    /// One namespace, as `GET /admin/stats` lists it (`ns:team-a`, `key:…`, `dkey:…`,
    /// `anonymous`, `(unknown)`); a bare name means `ns:<name>`.
    pub namespace: Option<String>,
    /// Required to purge everything (no other filter).
    #[serde(default)]
    pub all: bool,
}

/// A purge filter checked and compiled.
pub struct Purge {
    model: Option<ModelGlob>,
    created_before: Option<u64>,
    prompt_contains: Option<String>,
    scope: Option<ScopeId>,
    namespace: Option<String>,
}

impl Purge {
    pub fn new(f: &PurgeFilter, now_ms: u64) -> Result<Purge, ApiError> {
        let bad = |m: String, p: &str| ApiError::invalid_request(m, Some(p.to_string()));
        let model = match &f.model {
            Some(g) => Some(
                ModelGlob::new(g).map_err(|e| bad(format!("invalid glob '{g}': {e}"), "model"))?,
            ),
            None => None,
        };
        let created_before = match &f.older_than {
            Some(s) => {
                let d = humantime::parse_duration(s)
                    .map_err(|e| bad(format!("invalid duration '{s}': {e}"), "older_than"))?;
                Some(now_ms.saturating_sub(d.as_millis().min(u64::MAX as u128) as u64))
            }
            None => None,
        };
        let scope = match &f.scope {
            Some(h) => {
                let raw = hex::decode(h)
                    .ok()
                    .and_then(|b| <[u8; 16]>::try_from(b).ok());
                Some(ScopeId(raw.ok_or_else(|| {
                    bad("scope must be 32 hex digits".into(), "scope")
                })?))
            }
            None => None,
        };
        let prompt_contains = match &f.prompt_contains {
            Some(t) if t.is_empty() => {
                return Err(bad(
                    "prompt_contains must not be empty".into(),
                    "prompt_contains",
                ))
            }
            t => t.as_ref().map(|t| t.to_lowercase()),
        };
        let namespace = match f.namespace.as_deref() {
            Some("") => return Err(bad("namespace must not be empty".into(), "namespace")),
            Some(n) if n.contains(':') || n == "anonymous" || n == UNKNOWN_NAMESPACE => {
                Some(n.to_string())
            }
            Some(n) => Some(format!("ns:{n}")),
            None => None,
        };
        let p = Purge {
            model,
            created_before,
            prompt_contains,
            scope,
            namespace,
        };
        let any = p.model.is_some()
            || p.created_before.is_some()
            || p.prompt_contains.is_some()
            || p.scope.is_some()
            || p.namespace.is_some();
        if any == f.all {
            return Err(bad(
                "give at least one filter (model, older_than, prompt_contains, scope, \
                 namespace), or \"all\": true alone to purge everything"
                    .into(),
                "all",
            ));
        }
        Ok(p)
    }

    /// Whether entry `e`, stored for `namespace` (`None`: not recorded), is to go.
    pub fn matches(&self, e: &Entry, namespace: Option<&str>) -> bool {
        self.model
            .as_ref()
            .is_none_or(|g| g.matches(&e.response.model))
            && self.created_before.is_none_or(|t| e.created_ms < t)
            && self
                .prompt_contains
                .as_ref()
                .is_none_or(|t| e.prompt.to_lowercase().contains(t))
            && self.scope.is_none_or(|s| e.scope == s)
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| namespace.unwrap_or(UNKNOWN_NAMESPACE) == n)
    }

    /// Scans the backend and removes every match; (removed, scanned). Blocking.
    pub fn run_blocking(&self, engine: &CacheEngine) -> Result<(u64, u64), CacheError> {
        let (mut removed, mut scanned) = (0u64, 0u64);
        let mut after = None;
        loop {
            let page = engine.backend().scan(after, SCAN_PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.entry.id);
            for s in &page {
                scanned += 1;
                let hit = self.matches(&s.entry, s.namespace.as_deref());
                if hit && engine.remove_blocking(s.entry.id)?.is_some() {
                    removed += 1;
                }
            }
        }
        Ok((removed, scanned))
    }
}

pub async fn purge(State(state): State<AdminState>, body: Body) -> Response {
    let bytes = match crate::server::read_body(&state.app, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response_for(None),
    };
    let filter: PurgeFilter = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            return ApiError::invalid_request(format!("purge filter: {e}"), None)
                .into_response_for(None)
        }
    };
    let purge = match Purge::new(&filter, now_ms()) {
        Ok(p) => p,
        Err(e) => return e.into_response_for(None),
    };
    let engine = match state.engine() {
        Ok(e) => e,
        Err(e) => return e.into_response_for(None),
    };
    let done = blocking(move || purge.run_blocking(&engine)).await;
    state.inventory.invalidate();
    match done {
        Ok((removed, scanned)) => {
            tracing::info!(removed, scanned, "admin: purge");
            Json(json!({"removed": removed, "scanned": scanned})).into_response()
        }
        Err(e) => e.into_response_for(None),
    }
}

/// `POST /admin/reload`: what a change of the config file does, now.
pub async fn reload(State(state): State<AdminState>) -> Response {
    let app = state.app.clone();
    match tokio::task::spawn_blocking(move || crate::server::reload::reload(&app)).await {
        Ok(Ok(())) => Json(json!({"reloaded": true})).into_response(),
        Ok(Err(message)) => ApiError::invalid_request(format!("reload failed: {message}"), None)
            .into_response_for(None),
        Err(e) => ApiError::internal(format!("reload task failed: {e}")).into_response_for(None),
    }
}

/// The first line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    pub deja_export: u32,
    pub embedding_model: String,
    pub dim: usize,
}

/// One exported entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportLine {
    pub scope: String,
    pub prompt: String,
    pub embedding: Option<Vec<f32>>,
    pub response: CachedResponse,
    pub created_ms: u64,
    pub expires_ms: u64,
    #[serde(default)]
    pub hits: u64,
    /// The tenant it was stored for (absent in exports of entries without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The export of the whole backend as JSONL lines, produced a page at a time into `tx`
/// (blocking; stops when the receiver is gone).
pub fn export_blocking(
    engine: &CacheEngine,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<u64, CacheError> {
    let header = ExportHeader {
        deja_export: 1,
        embedding_model: engine.embedder().model_id().to_string(),
        dim: engine.embedder().dim(),
    };
    if tx.blocking_send(Ok(line(&header))).is_err() {
        return Ok(0);
    }
    let now = now_ms();
    let (mut after, mut n) = (None, 0u64);
    loop {
        let page = engine.backend().scan(after, SCAN_PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.entry.id);
        for s in page {
            let e = s.entry;
            if e.is_expired(now) {
                continue;
            }
            let l = ExportLine {
                scope: e.scope.to_hex(),
                prompt: e.prompt,
                embedding: e.embedding,
                response: e.response,
                created_ms: e.created_ms,
                expires_ms: e.expires_ms,
                hits: s.hits,
                namespace: s.namespace,
            };
            if tx.blocking_send(Ok(line(&l))).is_err() {
                return Ok(n);
            }
            n += 1;
        }
    }
    Ok(n)
}

/// One JSONL line. The line types hold only strings, numbers and arrays, which always
/// serialize; an empty line would be skipped by an import.
fn line<T: Serialize>(v: &T) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

pub async fn export(State(state): State<AdminState>) -> Response {
    let engine = match state.engine() {
        Ok(e) => e,
        Err(e) => return e.into_response_for(None),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_QUEUE);
    tokio::task::spawn_blocking(move || match export_blocking(&engine, &tx) {
        Ok(n) => tracing::info!(entries = n, "admin: export"),
        Err(e) => {
            tracing::warn!(error = %e, "admin: export failed");
            let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
        }
    });
    let mut r = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// What an import did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Imported {
    pub imported: u64,
    pub expired_skipped: u64,
    pub reembedded: u64,
}

pub async fn import(State(state): State<AdminState>, body: Body) -> Response {
    let engine = match state.engine() {
        Ok(e) => e,
        Err(e) => return e.into_response_for(None),
    };
    let config = state.app.config();
    let max_line = config.admin.max_line_bytes;
    let idle = config.server.body_read_timeout;
    let result = import_stream(&engine, body, max_line, idle).await;
    state.inventory.invalidate();
    match result {
        Ok(done) => {
            tracing::info!(imported = done.imported, "admin: import");
            Json(done).into_response()
        }
        Err((status, message, done)) => {
            let mut r = (
                status,
                Json(json!({"error": {
                    "message": message,
                    "type": if status.is_client_error() { "invalid_request_error" } else { "server_error" },
                    "param": null,
                    "code": "import_failed",
                }, "imported": done.imported})),
            )
                .into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

type ImportError = (StatusCode, String, Imported);

/// Reads JSONL from `body` line by line (each at most `max_line` bytes, each chunk within
/// `idle` of the previous one) and stores the entries in batches.
pub async fn import_stream(
    engine: &CacheEngine,
    body: Body,
    max_line: usize,
    idle: Duration,
) -> Result<Imported, ImportError> {
    let mut done = Imported::default();
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut line_no = 0u64;
    let mut keep_embeddings: Option<bool> = None;
    let mut batch: Vec<NewEntry> = Vec::with_capacity(IMPORT_BATCH);
    let mut ended = false;
    while !ended {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return Err((
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the import body stalled for {idle:?}"),
                    done,
                ))
            }
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(e))) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {e}"),
                    done,
                ))
            }
            Ok(None) => {
                ended = true;
                Bytes::new()
            }
        };
        buf.extend_from_slice(&chunk);
        loop {
            let line = match memchr::memchr(b'\n', &buf) {
                Some(at) => {
                    let rest = buf.split_off(at + 1);
                    let mut l = std::mem::replace(&mut buf, rest);
                    l.pop();
                    l
                }
                None if ended && !buf.is_empty() => std::mem::take(&mut buf),
                None => break,
            };
            line_no += 1;
            if line.len() > max_line {
                return Err(too_long(line_no, max_line, done));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some(keep) = keep_embeddings else {
                let h: ExportHeader = serde_json::from_slice(&line).map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("line 1 is not a deja export header: {e}"),
                        Imported::default(),
                    )
                })?;
                keep_embeddings = Some(
                    h.embedding_model == engine.embedder().model_id()
                        && h.dim == engine.embedder().dim(),
                );
                continue;
            };
            let l: ExportLine = serde_json::from_slice(&line).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("line {line_no}: {e} (earlier lines were imported)"),
                    Imported {
                        imported: done.imported + batch.len() as u64,
                        ..Default::default()
                    },
                )
            })?;
            if now_ms() >= l.expires_ms {
                done.expired_skipped += 1;
                continue;
            }
            let scope = hex::decode(&l.scope)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(ScopeId)
                .ok_or_else(|| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("line {line_no}: scope must be 32 hex digits"),
                        Imported {
                            imported: done.imported + batch.len() as u64,
                            ..Default::default()
                        },
                    )
                })?;
            let embedding = match (keep, l.embedding) {
                (true, e) => e,
                (false, None) => None,
                (false, Some(_)) => {
                    done.reembedded += 1;
                    let v = engine.embedder().embed(&l.prompt).await.map_err(|e| {
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("line {line_no}: embedding failed: {e}"),
                            Imported {
                                imported: done.imported + batch.len() as u64,
                                ..Default::default()
                            },
                        )
                    })?;
                    Some(v.to_vec())
                }
            };
            batch.push(NewEntry {
                scope,
                prompt: l.prompt,
                embedding,
                response: l.response,
                created_ms: l.created_ms,
                expires_ms: l.expires_ms,
                namespace: l.namespace,
            });
            if batch.len() >= IMPORT_BATCH {
                flush_batch(engine, &mut batch, &mut done).await?;
            }
        }
        if buf.len() > max_line {
            return Err(too_long(line_no + 1, max_line, done));
        }
    }
    flush_batch(engine, &mut batch, &mut done).await?;
    if keep_embeddings.is_none() {
        return Err((
            StatusCode::BAD_REQUEST,
            "empty import: the first line must be a deja export header".into(),
            done,
        ));
    }
    Ok(done)
}

fn too_long(line: u64, max: usize, done: Imported) -> ImportError {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("line {line} is longer than admin.max_line_bytes ({max} bytes)"),
        done,
    )
}

async fn flush_batch(
    engine: &CacheEngine,
    batch: &mut Vec<NewEntry>,
    done: &mut Imported,
) -> Result<(), ImportError> {
    if batch.is_empty() {
        return Ok(());
    }
    let entries = std::mem::take(batch);
    let e = engine.clone();
    let stored = tokio::task::spawn_blocking(move || e.backend().import_batch(entries)).await;
    match stored {
        Ok((n, Ok(()))) => {
            done.imported += n as u64;
            Ok(())
        }
        Ok((n, Err(err))) => {
            done.imported += n as u64;
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing imported entries failed: {err}"),
                std::mem::take(done),
            ))
        }
        Err(err) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("import task failed: {err}"),
            std::mem::take(done),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FinishReason;

    fn entry(model: &str, prompt: &str, created_ms: u64) -> Entry {
        Entry {
            id: 1,
            scope: ScopeId([7; 16]),
            prompt: prompt.into(),
            embedding: None,
            response: CachedResponse {
                model: model.into(),
                content: "a".into(),
                finish_reason: FinishReason::Stop,
                usage: None,
                provider: "p".into(),
                system_fingerprint: None,
                tool_calls: Vec::new(),
            },
            created_ms,
            expires_ms: u64::MAX,
        }
    }

    #[test]
    fn purge_filters_combine() {
        let now = 10 * 3_600_000;
        let f = PurgeFilter {
            model: Some("gpt-4o*".into()),
            older_than: Some("1h".into()),
            prompt_contains: Some("Refund".into()),
            ..Default::default()
        };
        let p = Purge::new(&f, now).unwrap();
        assert!(p.matches(&entry("gpt-4o-mini", "my refund please", 0), None));
        assert!(!p.matches(&entry("claude", "my refund please", 0), None));
        assert!(!p.matches(
            &entry("gpt-4o-mini", "my refund please", now - 60_000),
            None
        ));
        assert!(!p.matches(&entry("gpt-4o-mini", "hello", 0), None));
        let s = Purge::new(
            &PurgeFilter {
                scope: Some(hex::encode([7u8; 16])),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert!(s.matches(&entry("m", "x", 0), None));
    }

    #[test]
    fn purge_needs_a_filter_or_all() {
        assert!(Purge::new(&PurgeFilter::default(), 0).is_err());
        let all = PurgeFilter {
            all: true,
            ..Default::default()
        };
        assert!(Purge::new(&all, 0)
            .unwrap()
            .matches(&entry("m", "x", 0), None));
        let both = PurgeFilter {
            all: true,
            model: Some("*".into()),
            ..Default::default()
        };
        assert!(Purge::new(&both, 0).is_err());
        let bad = PurgeFilter {
            scope: Some("zz".into()),
            ..Default::default()
        };
        assert!(Purge::new(&bad, 0).is_err());
        let bad = PurgeFilter {
            older_than: Some("soon".into()),
            ..Default::default()
        };
        assert!(Purge::new(&bad, 0).is_err());
    }

    #[test]
    fn purge_by_namespace_matches_the_label_stats_show() {
        let by = |n: &str| {
            let f = PurgeFilter {
                namespace: Some(n.into()),
                ..Default::default()
            };
            Purge::new(&f, 0).unwrap()
        };
        let e = entry("m", "x", 0);
        assert!(by("team-a").matches(&e, Some("ns:team-a")), "a bare name");
        assert!(by("ns:team-a").matches(&e, Some("ns:team-a")));
        assert!(!by("team-a").matches(&e, Some("ns:team-b")));
        assert!(!by("team-a").matches(&e, None));
        assert!(by("key:abc").matches(&e, Some("key:abc")));
        assert!(by("anonymous").matches(&e, Some("anonymous")));
        assert!(
            by("(unknown)").matches(&e, None),
            "entries stored before namespaces"
        );
        assert!(!by("(unknown)").matches(&e, Some("ns:team-a")));
        let empty = PurgeFilter {
            namespace: Some(String::new()),
            ..Default::default()
        };
        assert!(Purge::new(&empty, 0).is_err());
    }
}
