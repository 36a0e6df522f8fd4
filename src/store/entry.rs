//! The records deja persists: one [`Entry`] per cached answer, keyed by [`EntryId`] and filed
//! under the [`ScopeId`] that its request hashed to. Wire formats never appear here: an entry
//! holds the answer in a provider-neutral shape so that any API (OpenAI chat, legacy completions,
//! Anthropic messages) and any delivery (JSON or SSE replay) can be rendered from it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Monotonic id of an entry inside one store (never reused).
pub type EntryId = u64;

/// Hash of everything that must match exactly for an answer to be reusable (tenant, model,
/// system prompt, earlier turns, output-changing parameters). Answers never cross scopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopeId(pub [u8; 16]);

impl ScopeId {
    /// Scope from arbitrary canonical bytes (blake3, truncated to 128 bits).
    pub fn from_bytes(canonical: &[u8]) -> Self {
        let hash = blake3::hash(canonical);
        let mut out = [0u8; 16];
        out.copy_from_slice(&hash.as_bytes()[..16]);
        ScopeId(out)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ScopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeId({})", &self.to_hex()[..12])
    }
}

/// Token counts as the provider reported them (or as estimated when a stream had none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn total(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Why the model stopped, in OpenAI's vocabulary (`stop`, `length`, ...). Only answers that
/// finished normally are ever stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    Stop,
    Length,
    /// The model called tools (stored only where a route sets `cache_tool_calls`). Appended
    /// last: postcard writes the variant index, so the first two keep their bytes.
    ToolCalls,
}

impl FinishReason {
    pub fn as_openai(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }

    pub fn as_anthropic(&self) -> &'static str {
        match self {
            FinishReason::Stop => "end_turn",
            FinishReason::Length => "max_tokens",
            FinishReason::ToolCalls => "tool_use",
        }
    }

    pub fn from_openai(s: &str) -> Option<Self> {
        match s {
            "stop" => Some(FinishReason::Stop),
            "length" => Some(FinishReason::Length),
            "tool_calls" => Some(FinishReason::ToolCalls),
            _ => None,
        }
    }
}

/// The answer as served to the client, provider-neutral.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedResponse {
    /// Model name the upstream reported.
    pub model: String,
    /// The assistant's text.
    pub content: String,
    pub finish_reason: FinishReason,
    pub usage: Option<Usage>,
    /// Provider that produced it (for headers and metrics).
    pub provider: String,
    pub system_fingerprint: Option<String>,
    /// The tool calls the assistant made, in order (empty for a plain text answer). Default
    /// when absent, so PostgreSQL rows written before it existed still read.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
}

/// One tool (function) call of a stored answer, provider-neutral: OpenAI's `tool_calls[]`,
/// Anthropic's `tool_use` block and the Responses `function_call` item all render from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The id the upstream gave the call. Never replayed as is: each render makes a fresh one
    /// (see [`ToolCall::fresh_id`]).
    pub id: String,
    pub name: String,
    /// The arguments as the JSON text the model wrote (an object).
    pub arguments: String,
}

impl ToolCall {
    /// A new call id for a replay, in the style of `prefix` (`call_`, `toolu_`, `fc_`). A
    /// client matches each tool result to its call by id within a conversation, so two hits of
    /// the same entry in one conversation must not share ids.
    pub fn fresh_id(prefix: &str) -> String {
        format!("{prefix}{}", uuid::Uuid::new_v4().simple())
    }
}

/// One cached answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    pub scope: ScopeId,
    /// The normalized last user message (what was embedded / exact-matched).
    pub prompt: String,
    /// L2-normalized embedding of `prompt`; `None` when the request skipped the semantic layer.
    pub embedding: Option<Vec<f32>>,
    pub response: CachedResponse,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds after which the entry is dead.
    pub expires_ms: u64,
}

impl Entry {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }
}

/// What the cache hands the store to insert (the store assigns the id).
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub scope: ScopeId,
    pub prompt: String,
    pub embedding: Option<Vec<f32>>,
    pub response: CachedResponse,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The tenant the answer was stored for (`ns:<name>`, `key:<hash>`, `dkey:<name>`,
    /// `anonymous`): kept beside the entry, not in it, so stores written before it existed
    /// need no migration (their entries have none). For admin stats and purge only.
    pub namespace: Option<String>,
}

/// Current wall clock in unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
