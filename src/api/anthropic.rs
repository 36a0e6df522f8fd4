//! Anthropic Messages wire types (`POST /v1/messages`): the request (lossless, like the OpenAI
//! ones: unknown fields in `extra`, uninterpreted fields as raw JSON), the `message` response,
//! and the stream events. Rendering and collecting live in the `render` and `collect`
//! submodules. Serde only: no cache or HTTP logic.

mod collect;
mod render;

pub use collect::{collect_messages_json, MessagesStreamCollector};
pub use render::{new_message_id, render_messages_json, render_messages_sse};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/messages`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: u32,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// `thinking`, `service_tier`, `container`, ... forwarded and hashed untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MessagesRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Content,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A message's `content` or the `system` prompt: a string or an array of blocks.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

impl Content {
    /// The text when the content is text only (blocks joined with `\n`); `None` otherwise.
    pub fn text(&self) -> Option<String> {
        match self {
            Content::Text(s) => Some(s.clone()),
            Content::Blocks(blocks) => {
                crate::api::text::join_parts(blocks.iter().map(|b| match b {
                    ContentBlock::Text { text, .. } => Some(text.as_str()),
                    _ => None,
                }))
            }
        }
    }
}

// Hand-written so that a wrong shape, or a bad block, reports itself instead of serde's
// untagged "data did not match any variant".
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Content::Text(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(b) = seq.next_element::<ContentBlock>()? {
                    blocks.push(b);
                }
                Ok(Content::Blocks(blocks))
            }
        }
        d.deserialize_any(V)
    }
}

/// One content block of a request. Unknown types (`document`, `thinking`, server tools, ...)
/// are kept verbatim in `Other`.
#[derive(Clone, Debug, PartialEq)]
pub enum ContentBlock {
    Text {
        text: String,
        extra: Map<String, Value>,
    },
    Image {
        source: Value,
        extra: Map<String, Value>,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
        extra: Map<String, Value>,
    },
    /// `content` (string or blocks) and `is_error` stay in `extra`.
    ToolResult {
        tool_use_id: String,
        extra: Map<String, Value>,
    },
    Other(Map<String, Value>),
}

impl Serialize for ContentBlock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (mut map, ty) = match self {
            ContentBlock::Other(map) => return map.serialize(s),
            ContentBlock::Text { text, extra } => {
                let mut m = extra.clone();
                m.insert("text".into(), Value::from(text.as_str()));
                (m, "text")
            }
            ContentBlock::Image { source, extra } => {
                let mut m = extra.clone();
                m.insert("source".into(), source.clone());
                (m, "image")
            }
            ContentBlock::ToolUse {
                id,
                name,
                input,
                extra,
            } => {
                let mut m = extra.clone();
                m.insert("id".into(), Value::from(id.as_str()));
                m.insert("name".into(), Value::from(name.as_str()));
                m.insert("input".into(), input.clone());
                (m, "tool_use")
            }
            ContentBlock::ToolResult { tool_use_id, extra } => {
                let mut m = extra.clone();
                m.insert("tool_use_id".into(), Value::from(tool_use_id.as_str()));
                (m, "tool_result")
            }
        };
        map.insert("type".into(), Value::from(ty));
        map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ContentBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(d)?;
        let ty = match map.remove("type") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("content block `type` must be a string")),
            None => return Err(D::Error::missing_field("type")),
        };
        fn string<E: serde::de::Error>(
            map: &mut Map<String, Value>,
            key: &'static str,
        ) -> Result<String, E> {
            match map.remove(key) {
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(E::custom(format!("`{key}` must be a string"))),
                None => Err(E::missing_field(key)),
            }
        }
        fn value<E: serde::de::Error>(
            map: &mut Map<String, Value>,
            key: &'static str,
        ) -> Result<Value, E> {
            map.remove(key).ok_or_else(|| E::missing_field(key))
        }
        Ok(match ty.as_str() {
            "text" => ContentBlock::Text {
                text: string(&mut map, "text")?,
                extra: map,
            },
            "image" => ContentBlock::Image {
                source: value(&mut map, "source")?,
                extra: map,
            },
            "tool_use" => ContentBlock::ToolUse {
                id: string(&mut map, "id")?,
                name: string(&mut map, "name")?,
                input: value(&mut map, "input")?,
                extra: map,
            },
            "tool_result" => ContentBlock::ToolResult {
                tool_use_id: string(&mut map, "tool_use_id")?,
                extra: map,
            },
            _ => {
                map.insert("type".into(), Value::String(ty));
                ContentBlock::Other(map)
            }
        })
    }
}

/// Token usage as Anthropic reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u32,
    #[serde(default)]
    pub output_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A `message` object (the non-streamed answer, and the `message` of `message_start`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessagesResponse {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default = "message_type")]
    pub kind: String,
    #[serde(default = "assistant")]
    pub role: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub content: Vec<Value>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    #[serde(default)]
    pub usage: Usage,
}

fn message_type() -> String {
    "message".into()
}

fn assistant() -> String {
    "assistant".into()
}

/// One event of a Messages stream; the SSE `event:` name equals `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: MessagesResponse,
    },
    ContentBlockStart {
        index: u32,
        content_block: Value,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Error {
        error: Value,
    },
    /// Event types added after this was written; Anthropic asks clients to ignore them.
    #[serde(other)]
    Unknown,
}

impl StreamEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::Ping => "ping",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Error { .. } => "error",
            StreamEvent::Unknown => "unknown",
        }
    }
}

/// `delta` of `content_block_delta`: `text_delta` carries `text`; other kinds (`input_json_delta`,
/// `thinking_delta`, `citations_delta`, ...) keep their fields in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockDelta {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `usage` of `message_delta`: cumulative output tokens, and (in newer API versions) the input
/// counts, which a client's accumulator copies over the ones from `message_start` when present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u32>,
    #[serde(default)]
    pub output_tokens: u32,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageDeltaBody {
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
}
