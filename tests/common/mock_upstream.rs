//! An in-process upstream for integration tests: an axum server on `127.0.0.1:0` that speaks
//! the real wire formats of three vendors on one port: OpenAI (chat completions and legacy
//! completions, JSON and SSE, the Responses API's `response` object and events,
//! `GET /v1/models`, OpenAI-shaped errors), Azure OpenAI
//! (`/openai/deployments/{dep}/chat/completions?api-version=…` with `api-key`) and Anthropic
//! (`POST /v1/messages` with `x-api-key` and `anthropic-version`, its JSON, events and error
//! shape). It counts and records every call, and can be told to be slow, fail, rate limit, cut
//! a stream or fail in the middle of one, or to misbehave as a broken upstream does
//! ([`Fault`]: hang, drip, never end a line or a body, send broken or wrong-shape JSON, end a
//! stream before its terminator). Replies are deterministic ("Answer #<call number> to:
//! <last user message>") so a test can tell a fresh upstream answer from a cached one. It
//! never touches the network beyond loopback.
//!
//! ```ignore
//! let up = MockUpstream::builder().fail_n_times(2, 500).start().await;
//! let url = up.base_url(); // http://127.0.0.1:PORT/v1
//! assert_eq!(up.calls_for("/chat/completions"), 3);
//! let anthropic = up.anthropic_base_url(); // http://127.0.0.1:PORT
//! ```
#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod anthropic;
mod azure;
mod openai;
mod responses;
use openai::openai_completion;

/// Custom reply text from the request body.
pub type ReplyFn = Arc<dyn Fn(&Value) -> String + Send + Sync>;

/// A tool call (name, arguments JSON) computed from the request body.
pub type ToolCallFn = Arc<dyn Fn(&Value) -> (String, String) + Send + Sync>;

/// Ways an upstream breaks, for the fault suite (`tests/proxy_faults.rs`). A fault replaces
/// the answer of every POST to a completion endpoint (chat, legacy completions, messages; any
/// vendor) that is not failing by `fail_n_times`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, never send response headers.
    HangBeforeHeaders,
    /// The normal answer, one byte per `chunk_delay` (set it with `with_chunk_delay`).
    Drip,
    /// 200 `text/event-stream` whose first line never ends: `data: xxxx…` in 16 KiB chunks
    /// (`chunk_delay` apart) until `bytes` were sent, then silence with the connection open.
    EndlessSseLine { bytes: usize },
    /// 200 `application/json` that never ends: `{"choices":[{"message":{"content":"xxxx…`,
    /// sent like `EndlessSseLine`.
    EndlessJson { bytes: usize },
    /// 200 `application/json` cut in the middle of a value.
    BrokenJson,
    /// 200 `application/json`, valid but not the endpoint's shape (a model list).
    WrongShapeJson,
    /// Streams end cleanly after their content, before their end: no finish reason and no
    /// `data: [DONE]` (OpenAI), no `message_delta` and no `message_stop` (Anthropic).
    NoTerminator,
}

/// The arguments of the tool calls [`MockUpstreamBuilder::call_offered_tools`] makes.
pub const OFFERED_TOOL_ARGUMENTS: &str = r#"{"city": "Paris", "unit": "celsius", "days": 3}"#;

/// The tool call one request gets, if any: none once the conversation ends with a tool result
/// (chat `role: tool`, an Anthropic `tool_result` block, a Responses `function_call_output`).
fn tool_call_for(b: &Behaviour, body: &Value) -> Option<(String, String)> {
    let last_message = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last());
    let ends_with_result = last_message.is_some_and(|m| {
        m.get("role").and_then(Value::as_str) == Some("tool")
            || m.get("content").and_then(Value::as_array).is_some_and(|c| {
                c.iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            })
    }) || body
        .get("input")
        .and_then(Value::as_array)
        .and_then(|i| i.last())
        .is_some_and(|i| i.get("type").and_then(Value::as_str) == Some("function_call_output"));
    if ends_with_result {
        return None;
    }
    if let Some(f) = &b.tool_call_fn {
        return Some(f(body));
    }
    if let Some(call) = &b.tool_call {
        return Some(call.clone());
    }
    if !b.call_offered_tools {
        return None;
    }
    let tool = body.get("tools").and_then(Value::as_array)?.first()?;
    let name = tool
        .pointer("/function/name")
        .or_else(|| tool.get("name"))
        .and_then(Value::as_str)?;
    Some((name.to_string(), OFFERED_TOOL_ARGUMENTS.to_string()))
}

/// Models listed by `GET /v1/models` unless overridden.
pub const DEFAULT_MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo-instruct"];

#[derive(Clone)]
struct Behaviour {
    latency: Duration,
    chunk_delay: Duration,
    fail_remaining: u64,
    fail_status: u16,
    retry_after: Option<String>,
    retry_after_ms: Option<u64>,
    cut_stream_after: Option<usize>,
    stream_error_after: Option<usize>,
    reply: Option<ReplyFn>,
    tool_call: Option<(String, String)>,
    tool_call_fn: Option<ToolCallFn>,
    call_offered_tools: bool,
    models: Vec<String>,
    fault: Option<Fault>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            fail_remaining: 0,
            fail_status: 500,
            retry_after: None,
            retry_after_ms: None,
            cut_stream_after: None,
            stream_error_after: None,
            reply: None,
            tool_call: None,
            tool_call_fn: None,
            call_offered_tools: false,
            models: DEFAULT_MODELS.iter().map(|m| m.to_string()).collect(),
            fault: None,
        }
    }
}

/// One call as the mock saw it, with what it answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// 1-based, over all paths.
    pub call: u64,
    pub method: Method,
    /// Full path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The query string without `?`, e.g. `api-version=2024-10-21` (Azure).
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body parsed as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
    pub raw_body: Bytes,
    pub status: u16,
    /// Every byte of the response body the mock produced (for a cut stream: what it sent).
    pub response_body: Bytes,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The `Authorization` header, e.g. `Bearer sk-...`.
    pub fn authorization(&self) -> Option<String> {
        self.header("authorization")
    }

    /// One query parameter, e.g. `query_param("api-version")`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.to_string())
        })
    }
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    calls: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Response bodies being sent right now (a body the client stopped reading is dropped).
    open_bodies: Arc<AtomicU64>,
}

/// Counts a response body as open until the server drops it.
struct OpenBody(Arc<AtomicU64>);

impl OpenBody {
    fn new(counter: &Arc<AtomicU64>) -> OpenBody {
        counter.fetch_add(1, Ordering::SeqCst);
        OpenBody(Arc::clone(counter))
    }
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Builder: `MockUpstream::builder().with_latency(..).fail_n_times(..).start().await`.
#[derive(Default)]
pub struct MockUpstreamBuilder {
    behaviour: Behaviour,
}

impl MockUpstreamBuilder {
    /// Wait this long before answering any call (failures included).
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.behaviour.latency = latency;
        self
    }

    /// Pause between SSE events of a stream.
    pub fn with_chunk_delay(mut self, delay: Duration) -> Self {
        self.behaviour.chunk_delay = delay;
        self
    }

    /// The next `n` calls (any path) fail with `status` and an OpenAI-shaped error body.
    pub fn fail_n_times(mut self, n: u64, status: u16) -> Self {
        self.behaviour.fail_remaining = n;
        self.behaviour.fail_status = status;
        self
    }

    /// Every call fails with `status`.
    pub fn always_fail(self, status: u16) -> Self {
        self.fail_n_times(u64::MAX, status)
    }

    /// Failures carry `Retry-After: <secs>`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.behaviour.retry_after = Some(secs.to_string());
        self
    }

    /// Failures carry `Retry-After: <value>` verbatim (e.g. an HTTP date).
    pub fn with_retry_after_value(mut self, value: impl Into<String>) -> Self {
        self.behaviour.retry_after = Some(value.into());
        self
    }

    /// Failures carry `retry-after-ms: <ms>` (as OpenAI and Azure send).
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.behaviour.retry_after_ms = Some(ms);
        self
    }

    /// Streams send this many events (role chunk and content chunks; capped before the finish
    /// chunk) and then drop the connection: no finish_reason, no `[DONE]`.
    pub fn cut_stream_after(mut self, chunks: usize) -> Self {
        self.behaviour.cut_stream_after = Some(chunks);
        self
    }

    /// Streams send this many events (capped before the finish, as for `cut_stream_after`),
    /// then the vendor's in-stream error (OpenAI `data: {"error":…}`, Anthropic
    /// `event: error` with `overloaded_error`) and end the stream cleanly.
    pub fn with_stream_error_after(mut self, events: usize) -> Self {
        self.behaviour.stream_error_after = Some(events);
        self
    }

    /// Reply text computed from the request body instead of the default.
    pub fn reply_with(mut self, f: impl Fn(&Value) -> String + Send + Sync + 'static) -> Self {
        self.behaviour.reply = Some(Arc::new(f));
        self
    }

    /// A request that offers tools is answered with a call of its first tool, with
    /// [`OFFERED_TOOL_ARGUMENTS`] (streamed in 8-character pieces), until the conversation ends
    /// with the tool's result: that is answered with text. Any vendor.
    pub fn call_offered_tools(mut self) -> Self {
        self.behaviour.call_offered_tools = true;
        self
    }

    /// Chat replies are one tool call (`finish_reason: "tool_calls"`) instead of text.
    pub fn with_tool_call(mut self, name: &str, arguments_json: &str) -> Self {
        self.behaviour.tool_call = Some((name.to_string(), arguments_json.to_string()));
        self
    }

    /// Replies are one tool call computed from the request body (as [`Self::with_tool_call`]).
    pub fn with_tool_call_from(
        mut self,
        f: impl Fn(&Value) -> (String, String) + Send + Sync + 'static,
    ) -> Self {
        self.behaviour.tool_call_fn = Some(Arc::new(f));
        self
    }

    /// Misbehave as `fault` says on every completion call.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.behaviour.fault = Some(fault);
        self
    }

    /// Model ids listed by `GET /v1/models`.
    pub fn with_models(mut self, models: &[&str]) -> Self {
        self.behaviour.models = models.iter().map(|m| m.to_string()).collect();
        self
    }

    pub async fn start(self) -> MockUpstream {
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(self.behaviour),
            calls: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            open_bodies: Arc::new(AtomicU64::new(0)),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock upstream address");
        let task = tokio::spawn(async move {
            // As real providers do: streamed chunks go out at once, not after the previous ACK.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream { addr, shared, task }
    }
}

/// A running mock upstream; stops when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    pub fn builder() -> MockUpstreamBuilder {
        MockUpstreamBuilder::default()
    }

    /// A mock with default behaviour.
    pub async fn start() -> MockUpstream {
        MockUpstream::builder().start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, as an OpenAI SDK's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`, as the Anthropic SDK's `base_url` (it appends `/v1/messages`).
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT`, as an Azure OpenAI resource endpoint (requests go to
    /// `/openai/deployments/{deployment}/...?api-version=...`).
    pub fn azure_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls on any path.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Calls on `path`, given with or without the `/v1` prefix.
    pub fn calls_for(&self, path: &str) -> u64 {
        let full = format!("/v1{path}");
        self.shared
            .requests
            .lock()
            .iter()
            .filter(|r| r.path == path || r.path == full)
            .count() as u64
    }

    /// Response bodies still being sent: one the client (deja) stopped reading is dropped.
    pub fn open_bodies(&self) -> u64 {
        self.shared.open_bodies.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.requests.lock().last().cloned()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    pub fn set_failures(&self, n: u64, status: u16) {
        let mut b = self.shared.behaviour.lock();
        b.fail_remaining = n;
        b.fail_status = status;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.behaviour.lock().latency = latency;
    }

    pub fn set_cut_stream_after(&self, chunks: Option<usize>) {
        self.shared.behaviour.lock().cut_stream_after = chunks;
    }

    pub fn set_stream_error_after(&self, events: Option<usize>) {
        self.shared.behaviour.lock().stream_error_after = events;
    }

    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.behaviour.lock().fault = fault;
    }

    pub fn set_reply(&self, f: impl Fn(&Value) -> String + Send + Sync + 'static) {
        self.shared.behaviour.lock().reply = Some(Arc::new(f));
    }

    /// Forget recorded calls and reset the counter (behaviour is kept).
    pub fn reset_calls(&self) {
        self.shared.requests.lock().clear();
        self.shared.calls.store(0, Ordering::SeqCst);
    }
}

/// What one call produces before it is sent.
struct Planned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// One element per SSE event for streams, a single element for JSON.
    chunks: Vec<Bytes>,
    stream: bool,
    /// Stream: send this many chunks, then break the connection.
    cut_after: Option<usize>,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let call = shared.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let body: Value = serde_json::from_slice(&raw_body).unwrap_or(Value::Null);
    let path = uri.path().to_string();
    let query = uri.query().map(str::to_string);
    let behaviour = {
        let mut b = shared.behaviour.lock();
        let snapshot = b.clone();
        if b.fail_remaining > 0 {
            b.fail_remaining -= 1;
        }
        snapshot
    };
    let mut planned = plan(
        &behaviour,
        call,
        &method,
        &path,
        query.as_deref(),
        &headers,
        &body,
    );
    let fault = behaviour
        .fault
        .filter(|_| planned.status == 200 && method == Method::POST && is_completion(&path));
    match fault {
        Some(Fault::BrokenJson) => {
            planned = json_planned(
                Vec::new(),
                200,
                Bytes::from_static(br#"{"id":"x","choices":[{"message":{"role":"assis"#),
            );
        }
        Some(Fault::WrongShapeJson) => {
            planned = json_planned(
                Vec::new(),
                200,
                Bytes::from_static(br#"{"object":"list","data":[]}"#),
            );
        }
        Some(Fault::NoTerminator) if planned.stream => {
            let ending = |c: &Bytes| {
                let t = String::from_utf8_lossy(c);
                [
                    "[DONE]",
                    "\"finish_reason\":\"",
                    "message_delta",
                    "message_stop",
                ]
                .iter()
                .any(|m| t.contains(m))
            };
            planned.chunks.retain(|c| !ending(c));
        }
        _ => {}
    }
    let sent: Vec<Bytes> = match planned.cut_after {
        Some(k) => planned.chunks.iter().take(k).cloned().collect(),
        None => planned.chunks.clone(),
    };
    shared.requests.lock().push(RecordedRequest {
        call,
        method,
        path,
        query,
        headers,
        body,
        raw_body,
        status: planned.status,
        response_body: Bytes::from(sent.concat()),
    });
    if !behaviour.latency.is_zero() {
        tokio::time::sleep(behaviour.latency).await;
    }
    let streamed = planned.stream || fault.is_some();
    let delay = behaviour.chunk_delay;
    let response = match fault {
        Some(Fault::HangBeforeHeaders) => std::future::pending().await,
        Some(Fault::Drip) => drip(planned, delay),
        Some(Fault::EndlessSseLine { bytes }) => {
            endless(b"data: ", "text/event-stream", bytes, delay)
        }
        Some(Fault::EndlessJson { bytes }) => endless(
            br#"{"choices":[{"message":{"role":"assistant","content":""#,
            "application/json",
            bytes,
            delay,
        ),
        _ => respond(planned, delay),
    };
    if !streamed {
        return response;
    }
    let open = OpenBody::new(&shared.open_bodies);
    let (parts, body) = response.into_parts();
    // The guard lives as long as the body: dropped when sent or when the client hangs up.
    let body = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _ = &open;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

fn is_completion(path: &str) -> bool {
    path.ends_with("/chat/completions")
        || path.ends_with("/completions")
        || path == "/v1/messages"
        || path == "/v1/responses"
}

/// `prefix`, then `x` in 16 KiB chunks `delay` apart until `total` bytes went out; then the
/// body stays open and silent.
fn endless(prefix: &'static [u8], content_type: &str, total: usize, delay: Duration) -> Response {
    const CHUNK: usize = 16 << 10;
    let filler = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures::stream::unfold(0usize, move |sent| {
        let filler = filler.clone();
        async move {
            if sent == 0 {
                return Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from_static(prefix)),
                    prefix.len(),
                ));
            }
            if sent >= total {
                std::future::pending::<()>().await;
            }
            if delay.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(delay).await;
            }
            Some((Ok(filler), sent + CHUNK))
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert("content-type", v);
    }
    response
}

/// The planned answer, one byte per `delay`.
fn drip(planned: Planned, delay: Duration) -> Response {
    let bytes = Bytes::from(planned.chunks.concat());
    let stream = futures::stream::unfold(0usize, move |i| {
        let bytes = bytes.clone();
        async move {
            if i >= bytes.len() {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<Bytes, std::io::Error>(bytes.slice(i..i + 1)), i + 1))
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() =
        StatusCode::from_u16(planned.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in planned.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

fn respond(planned: Planned, chunk_delay: Duration) -> Response {
    let body = if planned.stream {
        let cut_after = planned.cut_after;
        let chunks = planned.chunks;
        let stream = futures::stream::unfold(0usize, move |i| {
            let chunks = chunks.clone();
            async move {
                // Returning Pending once lets hyper flush what it has, so each event (and the
                // headers before a cut) leaves as its own write, as from a real upstream.
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                if cut_after == Some(i) {
                    let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
                    return Some((Err(cut), usize::MAX));
                }
                let chunk = chunks.get(i)?.clone();
                if i > 0 && !chunk_delay.is_zero() {
                    tokio::time::sleep(chunk_delay).await;
                }
                Some((Ok::<Bytes, std::io::Error>(chunk), i + 1))
            }
        });
        Body::from_stream(stream)
    } else {
        Body::from(planned.chunks.concat())
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(planned.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in planned.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// Which vendor API a call addressed (all three are served on the same port).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vendor {
    OpenAi,
    Azure,
    Anthropic,
}

fn vendor_of(path: &str) -> Vendor {
    if path == "/v1/messages" {
        Vendor::Anthropic
    } else if path.starts_with("/openai/") {
        Vendor::Azure
    } else {
        Vendor::OpenAi
    }
}

fn plan(
    b: &Behaviour,
    call: u64,
    method: &Method,
    path: &str,
    query: Option<&str>,
    req_headers: &HeaderMap,
    body: &Value,
) -> Planned {
    let vendor = vendor_of(path);
    let request_id = format!("req_{}", uuid::Uuid::new_v4().simple());
    let mut headers = match vendor {
        Vendor::Anthropic => vec![
            ("request-id", request_id),
            ("anthropic-ratelimit-requests-limit", "4000".to_string()),
        ],
        Vendor::OpenAi | Vendor::Azure => vec![
            ("x-request-id", request_id),
            ("openai-version", "2020-10-01".to_string()),
            ("openai-organization", "deja-mock".to_string()),
            ("openai-processing-ms", "1".to_string()),
            ("x-ratelimit-limit-requests", "10000".to_string()),
        ],
    };
    if b.fail_remaining > 0 {
        if let Some(v) = &b.retry_after {
            headers.push(("retry-after", v.clone()));
        }
        if let Some(ms) = b.retry_after_ms {
            headers.push(("retry-after-ms", ms.to_string()));
        }
        let status = b.fail_status;
        return match vendor {
            Vendor::Anthropic => {
                let body = anthropic::error_body(status, &anthropic::failure_message(status));
                json_planned(headers, status, body)
            }
            _ => error(headers, status, &failure_message(status), None),
        };
    }
    if method == Method::POST {
        match vendor {
            Vendor::Anthropic => return anthropic::plan(b, call, req_headers, body, headers),
            Vendor::Azure => return azure::plan(b, call, path, query, req_headers, body, headers),
            Vendor::OpenAi => {}
        }
    }
    let route = (method.as_str(), path);
    if method == Method::POST && matches!(route.1, "/v1/chat/completions" | "/v1/completions") {
        if !body.is_object() {
            let msg = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)";
            return error(headers, 400, msg, None);
        }
        let Some(model) = body.get("model").and_then(Value::as_str) else {
            return error(headers, 400, "you must provide a model parameter", None);
        };
        let chat = route.1 == "/v1/chat/completions";
        return openai_completion(b, call, body, model, chat, headers);
    }
    if route == ("POST", "/v1/responses") {
        return responses::plan(b, call, body, headers);
    }
    if route == ("GET", "/v1/models") {
        let data: Vec<Value> = b
            .models
            .iter()
            .map(|m| json!({"id": m, "object": "model", "created": 1_686_935_002, "owned_by": "openai"}))
            .collect();
        headers.push(("content-type", "application/json".to_string()));
        let body = json!({"object": "list", "data": data}).to_string();
        return Planned {
            status: 200,
            headers,
            chunks: vec![Bytes::from(body)],
            stream: false,
            cut_after: None,
        };
    }
    let msg = format!("Invalid URL ({} {})", method, path);
    error(headers, 404, &msg, None)
}

fn json_planned(mut headers: Vec<(&'static str, String)>, status: u16, body: Bytes) -> Planned {
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        headers.push(("content-type", "application/json".to_string()));
    }
    Planned {
        status,
        headers,
        chunks: vec![body],
        stream: false,
        cut_after: None,
    }
}

fn stream_planned(
    mut headers: Vec<(&'static str, String)>,
    chunks: Vec<Bytes>,
    cut_after: Option<usize>,
) -> Planned {
    headers.push((
        "content-type",
        "text/event-stream; charset=utf-8".to_string(),
    ));
    Planned {
        status: 200,
        headers,
        chunks,
        stream: true,
        cut_after,
    }
}

fn error(
    mut headers: Vec<(&'static str, String)>,
    status: u16,
    message: &str,
    param: Option<&str>,
) -> Planned {
    let (kind, code) = match status {
        401 => ("invalid_request_error", json!("invalid_api_key")),
        404 => ("invalid_request_error", Value::Null),
        429 => ("requests", json!("rate_limit_exceeded")),
        s if s >= 500 => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    headers.push(("content-type", "application/json".to_string()));
    Planned {
        status,
        headers,
        chunks: vec![Bytes::from(body.to_string())],
        stream: false,
        cut_after: None,
    }
}

fn failure_message(status: u16) -> String {
    match status {
        400 => "Invalid request (mock failure).".to_string(),
        401 => "Incorrect API key provided.".to_string(),
        429 => "Rate limit reached for requests. Please try again later.".to_string(),
        s if s >= 500 => {
            "The server had an error while processing your request. Sorry about that!".to_string()
        }
        s => format!("Mock failure with status {s}."),
    }
}
