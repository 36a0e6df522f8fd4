//! Request bodies of `POST /v1/chat/completions` and `POST /v1/completions`. Lossless: unknown
//! fields land in `extra`, and fields deja never interprets stay raw JSON values.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Legacy `functions` / `function_call` travel in `extra`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_search_options: Option<Value>,
    /// Every field deja does not model, forwarded and hashed untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed answer must end with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.is_stream()
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stop`: one string or several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn as_vec(&self) -> Vec<&str> {
        match self {
            Stop::One(s) => vec![s.as_str()],
            Stop::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// Absent or `null` for an assistant turn that only calls tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// The text of this message when it is text only (a string, or only text parts joined with
    /// `\n`); `None` when it carries anything else (images, audio, files) or nothing.
    pub fn text(&self) -> Option<String> {
        self.content.as_ref().and_then(MessageContent::text)
    }
}

/// `content`: a string or an array of typed parts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// See [`ChatMessage::text`].
    pub fn text(&self) -> Option<String> {
        match self {
            MessageContent::Text(s) => Some(s.clone()),
            MessageContent::Parts(parts) => {
                crate::api::text::join_parts(parts.iter().map(|p| match p {
                    ContentPart::Text { text, .. } => Some(text.as_str()),
                    _ => None,
                }))
            }
        }
    }

    pub fn is_text_only(&self) -> bool {
        match self {
            MessageContent::Text(_) => true,
            MessageContent::Parts(parts) => {
                parts.iter().all(|p| matches!(p, ContentPart::Text { .. }))
            }
        }
    }
}

// Hand-written so that a wrong shape says what was expected instead of serde's untagged
// "data did not match any variant".
impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MessageContent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(p) = seq.next_element::<ContentPart>()? {
                    parts.push(p);
                }
                Ok(MessageContent::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

/// One part of an array `content`. Types deja does not know are kept verbatim in `Other`, so an
/// OpenAI-compatible server's extensions (vLLM `video_url`, ...) still pass through.
#[derive(Clone, Debug, PartialEq)]
pub enum ContentPart {
    Text {
        text: String,
        extra: Map<String, Value>,
    },
    ImageUrl {
        image_url: Value,
        extra: Map<String, Value>,
    },
    InputAudio {
        input_audio: Value,
        extra: Map<String, Value>,
    },
    File {
        file: Value,
        extra: Map<String, Value>,
    },
    Refusal {
        refusal: String,
        extra: Map<String, Value>,
    },
    Other(Map<String, Value>),
}

impl Serialize for ContentPart {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (ty, key, val, extra) = match self {
            ContentPart::Text { text, extra } => {
                ("text", "text", Value::from(text.as_str()), extra)
            }
            ContentPart::ImageUrl { image_url, extra } => {
                ("image_url", "image_url", image_url.clone(), extra)
            }
            ContentPart::InputAudio { input_audio, extra } => {
                ("input_audio", "input_audio", input_audio.clone(), extra)
            }
            ContentPart::File { file, extra } => ("file", "file", file.clone(), extra),
            ContentPart::Refusal { refusal, extra } => {
                ("refusal", "refusal", Value::from(refusal.as_str()), extra)
            }
            ContentPart::Other(map) => return map.serialize(s),
        };
        let mut map = extra.clone();
        map.insert("type".to_owned(), Value::from(ty));
        map.insert(key.to_owned(), val);
        map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ContentPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(d)?;
        let ty = match map.remove("type") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("content part `type` must be a string")),
            None => return Err(D::Error::missing_field("type")),
        };
        let mut take = |key: &'static str| map.remove(key).ok_or(D::Error::missing_field(key));
        let part = match ty.as_str() {
            "text" => match take("text")? {
                Value::String(text) => ContentPart::Text {
                    text,
                    extra: Map::new(),
                },
                _ => return Err(D::Error::custom("content part `text` must be a string")),
            },
            "image_url" => ContentPart::ImageUrl {
                image_url: take("image_url")?,
                extra: Map::new(),
            },
            "input_audio" => ContentPart::InputAudio {
                input_audio: take("input_audio")?,
                extra: Map::new(),
            },
            "file" => ContentPart::File {
                file: take("file")?,
                extra: Map::new(),
            },
            "refusal" => match take("refusal")? {
                Value::String(refusal) => ContentPart::Refusal {
                    refusal,
                    extra: Map::new(),
                },
                _ => return Err(D::Error::custom("content part `refusal` must be a string")),
            },
            _ => {
                map.insert("type".to_owned(), Value::String(ty));
                return Ok(ContentPart::Other(map));
            }
        };
        Ok(part.with_extra(map))
    }
}

impl ContentPart {
    fn with_extra(mut self, rest: Map<String, Value>) -> Self {
        match &mut self {
            ContentPart::Text { extra, .. }
            | ContentPart::ImageUrl { extra, .. }
            | ContentPart::InputAudio { extra, .. }
            | ContentPart::File { extra, .. }
            | ContentPart::Refusal { extra, .. } => *extra = rest,
            ContentPart::Other(_) => {}
        }
        self
    }
}

/// A tool call made by an earlier assistant turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCall>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn function_type() -> String {
    "function".to_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON-encoded arguments, as the model produced them.
    #[serde(default)]
    pub arguments: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /v1/completions` (legacy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<Map<String, Value>>,
    /// Legacy: the number of most likely tokens to return per position (an integer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CompletionRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.is_stream()
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false)
    }
}

/// `prompt`: a string, strings, a token array or token arrays.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenArrays(Vec<Vec<u32>>),
}

impl Prompt {
    /// The prompt text when it is exactly one string (the only shape the semantic layer embeds).
    pub fn single_text(&self) -> Option<&str> {
        match self {
            Prompt::Text(s) => Some(s),
            Prompt::Texts(v) if v.len() == 1 => Some(&v[0]),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str =
            "a string, an array of strings, an array of tokens, or an array of token arrays";
        let v = Value::deserialize(d)?;
        let parsed = match v {
            Value::String(s) => Some(Prompt::Text(s)),
            Value::Array(items) if items.is_empty() => Some(Prompt::Texts(Vec::new())),
            Value::Array(items) => match &items[0] {
                Value::String(_) => serde_json::from_value(Value::Array(items))
                    .ok()
                    .map(Prompt::Texts),
                Value::Number(_) => serde_json::from_value(Value::Array(items))
                    .ok()
                    .map(Prompt::Tokens),
                Value::Array(_) => serde_json::from_value(Value::Array(items))
                    .ok()
                    .map(Prompt::TokenArrays),
                _ => None,
            },
            _ => None,
        };
        parsed.ok_or_else(|| D::Error::custom(format!("invalid prompt: expected {EXPECTED}")))
    }
}
