//! Collecting an upstream OpenAI-shaped answer (a JSON body, or the `data:` payloads of its SSE
//! stream) into a [`CachedResponse`], or saying precisely why it must not be cached. The rule is
//! conservative: only one choice that finished normally with plain text and/or function tool
//! calls, and nothing the replay could not reproduce (refusals, logprobs, audio, annotations,
//! legacy `function_call`). Whether an answer with tool calls may be stored is the route's
//! decision (`cache_tool_calls`, applied by `cache::miss`), not the collector's. It copes with
//! OpenAI-compatible servers (Ollama, vLLM, TGI) that omit fields or name finish reasons
//! differently. It never decides policy (TTL, scope) and never blocks: pure CPU on small data.

use super::openai::{ChatCompletion, Completion, Usage};
use crate::store::{CachedResponse, FinishReason, ToolCall};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

/// Default cap on the text a stream collector accumulates (an answer bigger than this is
/// passed through but not cached).
pub const DEFAULT_MAX_CONTENT_BYTES: usize = 4 << 20;

/// Most tool calls one stored answer may hold; an answer with more is not cached.
pub const MAX_TOOL_CALLS: usize = 64;

/// Why an upstream answer is not cacheable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotCacheable {
    #[error("the answer is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("the upstream answered with an error object")]
    UpstreamError,
    #[error("the answer has no choices")]
    NoChoices,
    #[error("the answer has more than one choice")]
    MultipleChoices,
    #[error("the answer calls tools or functions")]
    ToolCalls,
    #[error("the model refused")]
    Refusal,
    #[error("the answer has no text content")]
    NoContent,
    #[error("finish reason `{0}` is not cacheable")]
    FinishReason(String),
    /// Carries something a replay would drop (`logprobs`, `audio`, `annotations`, ...).
    #[error("the answer carries `{0}`, which a replay cannot reproduce")]
    Unrepresentable(&'static str),
    #[error("the stream ended before it finished")]
    Truncated,
    #[error("the answer exceeds {0} bytes")]
    TooLarge(usize),
    /// The answer's text has personal data (`[pii]`, issue 16): never stored.
    #[error("the answer contains personal data")]
    PersonalData,
}

/// Map a finish reason to the stored vocabulary, accepting the synonyms of OpenAI-compatible
/// servers (TGI `eos_token`, `stop_sequence`; Anthropic-style `end_turn`, `max_tokens`).
pub fn finish_reason_of(s: &str) -> Option<FinishReason> {
    match s {
        "stop" | "eos" | "eos_token" | "stop_sequence" | "end_turn" => Some(FinishReason::Stop),
        "length" | "max_tokens" | "model_length" => Some(FinishReason::Length),
        _ => None,
    }
}

/// The stored finish reason of an answer with (`with_calls`) or without tool calls. An answer
/// with tool calls is stored as [`FinishReason::ToolCalls`] whether its server said
/// `tool_calls` or `stop` (as Ollama does); one cut by `length` has incomplete arguments.
fn finish(reason: Option<&str>, with_calls: bool) -> Result<FinishReason, NotCacheable> {
    match (reason, with_calls) {
        (None, _) => Err(NotCacheable::FinishReason("null".into())),
        (Some("function_call"), _) => Err(NotCacheable::Unrepresentable("function_call")),
        (Some("tool_calls"), true) => Ok(FinishReason::ToolCalls),
        (Some("tool_calls"), false) => Err(NotCacheable::Malformed(
            "finish reason `tool_calls` without tool calls".into(),
        )),
        (Some(r), true) => match finish_reason_of(r) {
            Some(FinishReason::Stop) => Ok(FinishReason::ToolCalls),
            _ => Err(NotCacheable::FinishReason(r.to_owned())),
        },
        (Some(r), false) => {
            finish_reason_of(r).ok_or_else(|| NotCacheable::FinishReason(r.to_owned()))
        }
    }
}

/// Tool calls as stored: at most [`MAX_TOOL_CALLS`], each with a name and arguments that are a
/// JSON object (empty arguments, which some servers send for a call without parameters, are
/// `{}`), so that every API can render them (Anthropic's `input` is a parsed object).
pub(crate) fn checked_tool_calls(calls: Vec<ToolCall>) -> Result<Vec<ToolCall>, NotCacheable> {
    if calls.len() > MAX_TOOL_CALLS {
        return Err(NotCacheable::Unrepresentable(
            "more tool calls than a stored answer holds",
        ));
    }
    calls
        .into_iter()
        .map(|mut c| {
            if c.name.is_empty() {
                return Err(NotCacheable::Malformed("a tool call without a name".into()));
            }
            if c.arguments.trim().is_empty() {
                c.arguments = "{}".into();
            }
            match serde_json::from_str::<Value>(&c.arguments) {
                Ok(Value::Object(_)) => Ok(c),
                _ => Err(NotCacheable::Unrepresentable(
                    "tool call arguments that are not a JSON object",
                )),
            }
        })
        .collect()
}

/// The calls of a non-streamed chat message's `tool_calls`.
fn chat_tool_calls(calls: &[Value]) -> Result<Vec<ToolCall>, NotCacheable> {
    let calls = calls
        .iter()
        .map(|c| {
            if c.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
                return Err(NotCacheable::Unrepresentable("non-function tool calls"));
            }
            let field = |k: &str| {
                c.get("function")
                    .and_then(|f| f.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Ok(ToolCall {
                id: c
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                name: field("name"),
                arguments: field("arguments"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    checked_tool_calls(calls)
}

fn non_empty_array(v: &Option<Vec<Value>>) -> bool {
    v.as_ref().is_some_and(|a| !a.is_empty())
}

fn present(v: &Option<Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, NotCacheable> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| NotCacheable::Malformed(e.to_string()))?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(NotCacheable::UpstreamError);
    }
    serde_json::from_value(v).map_err(|e| NotCacheable::Malformed(e.to_string()))
}

/// Text of a non-streamed message `content`: a string, or an array made only of text parts.
fn content_text(content: Option<&Value>) -> Result<String, NotCacheable> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    _ => return Err(NotCacheable::Unrepresentable("non-text content part")),
                }
            }
            Ok(out)
        }
        Some(Value::Null) | None => Err(NotCacheable::NoContent),
        Some(_) => Err(NotCacheable::Malformed("content is not a string".into())),
    }
}

fn store_usage(u: Option<&Usage>) -> Option<crate::store::Usage> {
    u.map(crate::store::Usage::from)
}

/// Collect a non-streamed `chat.completion` body.
pub fn collect_chat_json(body: &[u8], provider: &str) -> Result<CachedResponse, NotCacheable> {
    let c: ChatCompletion = parse(body)?;
    let choice = match c.choices.as_slice() {
        [] => return Err(NotCacheable::NoChoices),
        [one] => one,
        _ => return Err(NotCacheable::MultipleChoices),
    };
    let m = &choice.message;
    if present(&m.function_call) {
        return Err(NotCacheable::Unrepresentable("function_call"));
    }
    let tool_calls = chat_tool_calls(m.tool_calls.as_deref().unwrap_or_default())?;
    if m.refusal.as_deref().is_some_and(|r| !r.is_empty()) {
        return Err(NotCacheable::Refusal);
    }
    let finish_reason = finish(choice.finish_reason.as_deref(), !tool_calls.is_empty())?;
    if present(&choice.logprobs) {
        return Err(NotCacheable::Unrepresentable("logprobs"));
    }
    if present(&m.audio) {
        return Err(NotCacheable::Unrepresentable("audio"));
    }
    if non_empty_array(&m.annotations) {
        return Err(NotCacheable::Unrepresentable("annotations"));
    }
    let content = match content_text(m.content.as_ref()) {
        // A tool call may come without any text.
        Err(NotCacheable::NoContent) if !tool_calls.is_empty() => String::new(),
        other => other?,
    };
    if content.is_empty() && tool_calls.is_empty() {
        return Err(NotCacheable::NoContent);
    }
    Ok(CachedResponse {
        model: c.model,
        content,
        finish_reason,
        usage: store_usage(c.usage.as_ref()),
        provider: provider.to_owned(),
        system_fingerprint: c.system_fingerprint,
        tool_calls,
    })
}

/// Collect a non-streamed legacy `text_completion` body.
pub fn collect_completion_json(
    body: &[u8],
    provider: &str,
) -> Result<CachedResponse, NotCacheable> {
    let c: Completion = parse(body)?;
    let choice = match c.choices.as_slice() {
        [] => return Err(NotCacheable::NoChoices),
        [one] => one,
        _ => return Err(NotCacheable::MultipleChoices),
    };
    let finish_reason = finish(choice.finish_reason.as_deref(), false)?;
    if present(&choice.logprobs) {
        return Err(NotCacheable::Unrepresentable("logprobs"));
    }
    if choice.text.is_empty() {
        return Err(NotCacheable::NoContent);
    }
    Ok(CachedResponse {
        model: c.model,
        content: choice.text.clone(),
        finish_reason,
        usage: store_usage(c.usage.as_usage()),
        provider: provider.to_owned(),
        system_fingerprint: c.system_fingerprint,
        tool_calls: Vec::new(),
    })
}

/// The parts of a stream chunk (chat or legacy) the collectors read. Everything else is skipped
/// without being built, and `IgnoredAny` marks fields whose presence (non-null) is all that
/// matters: this is the per-chunk cost of teeing a stream.
#[derive(Deserialize)]
struct ChunkIn {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    system_fingerprint: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    choices: Vec<ChoiceIn>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    #[serde(default)]
    index: u32,
    /// Chat chunks.
    #[serde(default)]
    delta: Option<DeltaIn>,
    /// Legacy completion chunks.
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    logprobs: Option<IgnoredAny>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaIn {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDeltaIn>>,
    #[serde(default)]
    function_call: Option<IgnoredAny>,
    #[serde(default)]
    audio: Option<IgnoredAny>,
    #[serde(default)]
    annotations: Option<Vec<IgnoredAny>>,
}

/// One entry of a chunk's `delta.tool_calls`: the first for a call carries its `id` and
/// `function.name`, the later ones pieces of `function.arguments`, all under the call's `index`.
#[derive(Deserialize)]
struct ToolCallDeltaIn {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    function: Option<FunctionDeltaIn>,
}

#[derive(Deserialize)]
struct FunctionDeltaIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// What both stream collectors accumulate.
#[derive(Debug)]
struct StreamState {
    provider: String,
    max_bytes: usize,
    model: String,
    content: String,
    /// Tool calls by index; their arguments count towards `max_bytes` with the text.
    tool_calls: Vec<ToolCall>,
    bytes: usize,
    finish_reason: Option<String>,
    usage: Option<crate::store::Usage>,
    system_fingerprint: Option<String>,
    done: bool,
    failed: Option<NotCacheable>,
}

impl StreamState {
    fn new(provider: &str, max_bytes: usize) -> Self {
        StreamState {
            provider: provider.to_owned(),
            max_bytes,
            model: String::new(),
            content: String::new(),
            tool_calls: Vec::new(),
            bytes: 0,
            finish_reason: None,
            usage: None,
            system_fingerprint: None,
            done: false,
            failed: None,
        }
    }

    /// Parse one payload; `None` for `[DONE]`, blanks, and anything after the end or a failure.
    fn accept(&mut self, data: &str) -> Option<ChunkIn> {
        if self.failed.is_some() || self.done {
            return None;
        }
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return None;
        }
        if data.is_empty() {
            return None;
        }
        match serde_json::from_str::<ChunkIn>(data) {
            Ok(c) if c.error.is_some() => {
                self.fail(NotCacheable::UpstreamError);
                None
            }
            Ok(c) => {
                self.meta(&c);
                Some(c)
            }
            Err(e) => {
                self.fail(NotCacheable::Malformed(e.to_string()));
                None
            }
        }
    }

    /// Checks shared by both stream kinds; `false` when the choice made the answer uncacheable.
    fn choice_ok(&mut self, choice: &ChoiceIn) -> bool {
        if choice.index != 0 {
            self.fail(NotCacheable::MultipleChoices);
        } else if choice.logprobs.is_some() {
            self.fail(NotCacheable::Unrepresentable("logprobs"));
        }
        self.failed.is_none()
    }

    fn fail(&mut self, why: NotCacheable) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
        // Nothing more will be stored: free the text early.
        self.content = String::new();
        self.tool_calls = Vec::new();
    }

    /// Counts `n` more bytes of text or arguments; `false` (and failed) past the cap.
    fn grow(&mut self, n: usize) -> bool {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            self.fail(NotCacheable::TooLarge(self.max_bytes));
        }
        self.failed.is_none()
    }

    /// One `delta.tool_calls` entry: a new call at the next index, or more of an earlier one.
    fn tool_delta(&mut self, d: &ToolCallDeltaIn) {
        if self.failed.is_some() {
            return;
        }
        if d.kind.as_deref().is_some_and(|k| k != "function") {
            return self.fail(NotCacheable::Unrepresentable("non-function tool calls"));
        }
        let (name, args) = match &d.function {
            Some(f) => (f.name.as_deref(), f.arguments.as_deref()),
            None => (None, None),
        };
        let n = d.id.as_deref().map_or(0, str::len)
            + name.map_or(0, str::len)
            + args.map_or(0, str::len);
        if !self.grow(n) {
            return;
        }
        if d.index == self.tool_calls.len() {
            if self.tool_calls.len() == MAX_TOOL_CALLS {
                return self.fail(NotCacheable::Unrepresentable(
                    "more tool calls than a stored answer holds",
                ));
            }
            self.tool_calls.push(ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        let Some(call) = self.tool_calls.get_mut(d.index) else {
            return self.fail(NotCacheable::Malformed(format!(
                "tool call index {} skips ahead",
                d.index
            )));
        };
        if let Some(id) = d.id.as_deref().filter(|id| !id.is_empty()) {
            call.id = id.to_owned();
        }
        if let Some(name) = name {
            call.name.push_str(name);
        }
        if let Some(args) = args {
            call.arguments.push_str(args);
        }
    }

    fn meta(&mut self, c: &ChunkIn) {
        if self.model.is_empty() {
            if let Some(m) = &c.model {
                self.model.clone_from(m);
            }
        }
        if self.system_fingerprint.is_none() {
            self.system_fingerprint.clone_from(&c.system_fingerprint);
        }
        if let Some(u) = &c.usage {
            self.usage = Some(u.into());
        }
    }

    fn text(&mut self, piece: &str) {
        if self.failed.is_some() {
            return;
        }
        if self.grow(piece.len()) {
            self.content.push_str(piece);
        }
    }

    fn finish_reason(&mut self, reason: Option<&String>) {
        if let Some(r) = reason {
            self.finish_reason = Some(r.clone());
        }
    }

    fn finish(self) -> Result<CachedResponse, NotCacheable> {
        if let Some(why) = self.failed {
            return Err(why);
        }
        if !self.done {
            return Err(NotCacheable::Truncated);
        }
        let tool_calls = checked_tool_calls(self.tool_calls)?;
        let finish_reason = match self.finish_reason.as_deref() {
            None => return Err(NotCacheable::Truncated),
            reason => finish(reason, !tool_calls.is_empty())?,
        };
        if self.content.is_empty() && tool_calls.is_empty() {
            return Err(NotCacheable::NoContent);
        }
        Ok(CachedResponse {
            model: self.model,
            content: self.content,
            finish_reason,
            usage: self.usage,
            provider: self.provider,
            system_fingerprint: self.system_fingerprint,
            tool_calls,
        })
    }
}

/// Accumulates a streamed chat answer from its SSE `data:` payloads.
#[derive(Debug)]
pub struct ChatStreamCollector {
    st: StreamState,
}

impl ChatStreamCollector {
    pub fn new(provider: &str) -> Self {
        Self::with_limit(provider, DEFAULT_MAX_CONTENT_BYTES)
    }

    pub fn with_limit(provider: &str, max_content_bytes: usize) -> Self {
        ChatStreamCollector {
            st: StreamState::new(provider, max_content_bytes),
        }
    }

    /// Feed one `data:` payload (without the `data: ` prefix), `[DONE]` included. Payloads
    /// after `[DONE]` or after the answer became uncacheable are ignored.
    pub fn push_event_data(&mut self, data: &str) {
        let Some(chunk) = self.st.accept(data) else {
            return;
        };
        for choice in &chunk.choices {
            if !self.st.choice_ok(choice) {
                return;
            }
            let Some(d) = &choice.delta else {
                continue;
            };
            if d.function_call.is_some() {
                return self.st.fail(NotCacheable::Unrepresentable("function_call"));
            }
            for call in d.tool_calls.iter().flatten() {
                self.st.tool_delta(call);
            }
            if d.refusal.as_deref().is_some_and(|r| !r.is_empty()) {
                return self.st.fail(NotCacheable::Refusal);
            }
            if d.audio.is_some() {
                return self.st.fail(NotCacheable::Unrepresentable("audio"));
            }
            if d.annotations.as_ref().is_some_and(|a| !a.is_empty()) {
                return self.st.fail(NotCacheable::Unrepresentable("annotations"));
            }
            if let Some(text) = &d.content {
                self.st.text(text);
            }
            self.st.finish_reason(choice.finish_reason.as_ref());
        }
    }

    /// Whether the answer already became uncacheable (the caller may stop feeding it).
    pub fn failed(&self) -> Option<&NotCacheable> {
        self.st.failed.as_ref()
    }

    /// The collected answer; `Truncated` without `[DONE]` or without a finish reason.
    pub fn finish(self) -> Result<CachedResponse, NotCacheable> {
        self.st.finish()
    }
}

/// Accumulates a streamed legacy completion from its SSE `data:` payloads.
#[derive(Debug)]
pub struct CompletionStreamCollector {
    st: StreamState,
}

impl CompletionStreamCollector {
    pub fn new(provider: &str) -> Self {
        Self::with_limit(provider, DEFAULT_MAX_CONTENT_BYTES)
    }

    pub fn with_limit(provider: &str, max_content_bytes: usize) -> Self {
        CompletionStreamCollector {
            st: StreamState::new(provider, max_content_bytes),
        }
    }

    /// See [`ChatStreamCollector::push_event_data`].
    pub fn push_event_data(&mut self, data: &str) {
        let Some(chunk) = self.st.accept(data) else {
            return;
        };
        for choice in &chunk.choices {
            if !self.st.choice_ok(choice) {
                return;
            }
            if let Some(text) = &choice.text {
                self.st.text(text);
            }
            self.st.finish_reason(choice.finish_reason.as_ref());
        }
    }

    pub fn failed(&self) -> Option<&NotCacheable> {
        self.st.failed.as_ref()
    }

    pub fn finish(self) -> Result<CachedResponse, NotCacheable> {
        self.st.finish()
    }
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod tests;
