//! One canonical request for every inbound API. It splits a request into the two things the
//! cache needs: the **prompt** (the last user message, normalized) and the **scope material**
//! (canonical bytes of everything else that can change the answer: model, system prompt, every
//! earlier turn, every output-changing parameter). Scope material is built by *removing* the few
//! fields known not to change the output (`stream`, `stream_options`, `user`, `metadata`,
//! `store`) from the request, never by picking known ones, so an unknown parameter separates
//! scopes instead of leaking answers across them. This module never decides policy (thresholds,
//! tenants): that is `cache::policy`.

use crate::api::ApiKind;
use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;

/// Why a request is served without the cache at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bypass {
    /// The last message is not from the user (e.g. an assistant prefill or a tool result).
    LastMessageNotUser,
    /// The last user message holds non-text parts (images, audio, files).
    NonTextContent,
    /// More than one choice requested.
    MultipleChoices,
    /// A prompt shape the cache does not handle (token arrays, several prompts).
    UnsupportedPrompt,
    /// The answer depends on state only the provider holds (a Responses request's
    /// `previous_response_id`, `conversation`, `background`), or on input items with no chat
    /// form.
    ServerState,
}

impl Bypass {
    pub fn as_str(&self) -> &'static str {
        match self {
            Bypass::LastMessageNotUser => "last-message-not-user",
            Bypass::NonTextContent => "non-text-content",
            Bypass::MultipleChoices => "n-greater-than-1",
            Bypass::UnsupportedPrompt => "unsupported-prompt",
            Bypass::ServerState => "server-state",
        }
    }
}

/// A request reduced to what the cache needs. The original body is kept by the caller and
/// forwarded upstream untouched.
#[derive(Debug, Clone)]
pub struct CanonicalRequest {
    pub api: ApiKind,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Normalized last user message, or why the cache is bypassed.
    pub prompt: Result<String, Bypass>,
    /// Canonical JSON (sorted keys, no insignificant whitespace) of everything but the prompt
    /// and the fields that do not change the output.
    pub scope_material: Vec<u8>,
    /// Number of messages in the conversation (the prompt included).
    pub turns: usize,
    pub has_tools: bool,
}

/// Fields that never change the model's output. Everything else is scope.
const NON_OUTPUT_FIELDS: &[&str] = &["stream", "stream_options", "user", "metadata", "store"];

impl CanonicalRequest {
    /// OpenAI `POST /v1/chat/completions`. The body must already have passed wire validation
    /// (an object with a string `model` and a non-empty `messages` array).
    pub fn from_chat(body: &Map<String, Value>) -> CanonicalRequest {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let prompt = match messages.last() {
            Some(last) if last.get("role").and_then(Value::as_str) == Some("user") => {
                content_text(last.get("content"))
            }
            _ => Err(Bypass::LastMessageNotUser),
        };
        let prompt = check_n(body, prompt);
        let scope_material = scope_without_last(body, "messages");
        CanonicalRequest {
            api: ApiKind::Chat,
            model: str_field(body, "model"),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: include_usage(body),
            prompt,
            scope_material,
            turns: messages.len(),
            has_tools: has_tools(body),
        }
    }

    /// OpenAI legacy `POST /v1/completions`: the prompt is a string (or a one-string array).
    pub fn from_completions(body: &Map<String, Value>) -> CanonicalRequest {
        let prompt = match body.get("prompt") {
            Some(Value::String(s)) => Ok(normalize(s)),
            Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
                Value::String(s) => Ok(normalize(s)),
                _ => Err(Bypass::UnsupportedPrompt),
            },
            _ => Err(Bypass::UnsupportedPrompt),
        };
        let prompt = check_n(body, prompt);
        let prompt = match (prompt, body.get("best_of").and_then(Value::as_u64)) {
            (Ok(_), Some(b)) if b > 1 => Err(Bypass::MultipleChoices),
            (p, _) => p,
        };
        let mut rest = body.clone();
        rest.remove("prompt");
        CanonicalRequest {
            api: ApiKind::Completions,
            model: str_field(body, "model"),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: include_usage(body),
            prompt,
            scope_material: canonical_scope(rest),
            turns: 1,
            has_tools: false,
        }
    }

    /// OpenAI `POST /v1/responses`, keyed on its chat form ([`crate::api::responses::to_chat`])
    /// so that it shares scope and answers with the chat request that says the same. A body
    /// with no chat form (server-side state, hosted-tool items) is served uncached.
    pub fn from_responses(body: &Map<String, Value>) -> CanonicalRequest {
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let mut canonical = match crate::api::responses::to_chat(body) {
            Ok(chat) => CanonicalRequest::from_chat(&chat),
            Err(_) => CanonicalRequest {
                api: ApiKind::Responses,
                model: str_field(body, "model"),
                stream,
                include_usage: true,
                prompt: Err(Bypass::ServerState),
                scope_material: canonical_scope(body.clone()),
                turns: 1,
                has_tools: has_tools(body),
            },
        };
        canonical.api = ApiKind::Responses;
        canonical.stream = stream;
        // A Responses stream always ends with the usage of its `response.completed` event.
        canonical.include_usage = true;
        canonical
    }

    /// Anthropic `POST /v1/messages`: `system` is a top-level field (it stays in the scope).
    pub fn from_messages(body: &Map<String, Value>) -> CanonicalRequest {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let prompt = match messages.last() {
            Some(last) if last.get("role").and_then(Value::as_str) == Some("user") => {
                content_text(last.get("content"))
            }
            _ => Err(Bypass::LastMessageNotUser),
        };
        CanonicalRequest {
            api: ApiKind::Messages,
            model: str_field(body, "model"),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: true,
            prompt,
            scope_material: scope_without_last(body, "messages"),
            turns: messages.len(),
            has_tools: has_tools(body),
        }
    }
}

fn str_field(body: &Map<String, Value>, key: &str) -> String {
    body.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn include_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn has_tools(body: &Map<String, Value>) -> bool {
    ["tools", "functions"].iter().any(|k| {
        body.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    })
}

fn check_n(body: &Map<String, Value>, prompt: Result<String, Bypass>) -> Result<String, Bypass> {
    match body.get("n").and_then(Value::as_u64) {
        Some(n) if n > 1 => Err(Bypass::MultipleChoices),
        _ => prompt,
    }
}

/// Text of a message's content (see [`crate::api::text`]), normalized. Any image, audio, file or
/// tool part bypasses the cache.
fn content_text(content: Option<&Value>) -> Result<String, Bypass> {
    content
        .and_then(crate::api::text::content_text)
        .map(|t| normalize(&t))
        .ok_or(Bypass::NonTextContent)
}

/// The body without its last `list_key` element and without non-output fields, canonicalized.
fn scope_without_last(body: &Map<String, Value>, list_key: &str) -> Vec<u8> {
    let mut rest = body.clone();
    if let Some(Value::Array(items)) = rest.get_mut(list_key) {
        items.pop();
    }
    canonical_scope(rest)
}

fn canonical_scope(mut rest: Map<String, Value>) -> Vec<u8> {
    for k in NON_OUTPUT_FIELDS {
        rest.remove(*k);
    }
    let mut out = Vec::with_capacity(256);
    write_canonical(&Value::Object(rest), &mut out);
    out
}

/// JSON with object keys sorted at every depth, independent of serde_json's map ordering
/// features, so the same request always hashes to the same scope.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String((*k).clone()), out);
                out.push(b':');
                if let Some(val) = map.get(*k) {
                    write_canonical(val, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// Prompt normalization shared by the exact key, the embedding LRU and the bench: Unicode
/// NFKC, whitespace runs collapsed to one space, trimmed. Case and punctuation are kept: this
/// is the prompt stored and embedded (the embedding model lowercases on its own). The exact key
/// goes one step further for prose only, folding case and trailing sentence punctuation
/// ([`crate::api::exact_form`]), since code, names and quotations are case-sensitive.
pub fn normalize(text: &str) -> String {
    let nfkc: String = text.nfkc().collect();
    let mut out = String::with_capacity(nfkc.len());
    for word in nfkc.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: Value) -> CanonicalRequest {
        CanonicalRequest::from_chat(v.as_object().unwrap())
    }

    #[test]
    fn prompt_is_the_normalized_last_user_message() {
        let r = chat(json!({"model":"m","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":"  How do I\n reset   my password? "}]}));
        assert_eq!(r.prompt.unwrap(), "How do I reset my password?");
        assert_eq!(r.turns, 2);
    }

    #[test]
    fn text_parts_are_joined_and_images_bypass() {
        let r = chat(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"a"},{"type":"text","text":"b"}]}]}));
        assert_eq!(r.prompt.unwrap(), "a b");
        let r = chat(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"what is this"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}));
        assert_eq!(r.prompt, Err(Bypass::NonTextContent));
    }

    #[test]
    fn last_message_from_assistant_bypasses() {
        let r = chat(json!({"model":"m","messages":[
            {"role":"user","content":"hi"},{"role":"assistant","content":"Sure, "}]}));
        assert_eq!(r.prompt, Err(Bypass::LastMessageNotUser));
    }

    #[test]
    fn n_above_one_bypasses() {
        let r = chat(json!({"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}));
        assert_eq!(r.prompt, Err(Bypass::MultipleChoices));
    }

    #[test]
    fn stream_and_user_do_not_change_scope_but_parameters_do() {
        let base = json!({"model":"m","messages":[{"role":"user","content":"hi"}]});
        let mut streamed = base.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        streamed["user"] = json!("u-42");
        assert_eq!(
            chat(base.clone()).scope_material,
            chat(streamed).scope_material
        );
        for (k, v) in [
            ("temperature", json!(0.2)),
            ("top_p", json!(0.5)),
            ("max_tokens", json!(5)),
            ("seed", json!(1)),
            (
                "tools",
                json!([{"type":"function","function":{"name":"f"}}]),
            ),
            ("response_format", json!({"type":"json_object"})),
            ("some_future_param", json!(true)),
        ] {
            let mut changed = base.clone();
            changed[k] = v;
            assert_ne!(
                chat(base.clone()).scope_material,
                chat(changed).scope_material,
                "{k} must change the scope"
            );
        }
    }

    #[test]
    fn earlier_turns_and_system_prompt_are_scope_not_prompt() {
        let a = chat(json!({"model":"m","messages":[
            {"role":"system","content":"A"},{"role":"user","content":"q"}]}));
        let b = chat(json!({"model":"m","messages":[
            {"role":"system","content":"B"},{"role":"user","content":"q"}]}));
        assert_eq!(a.prompt, b.prompt);
        assert_ne!(a.scope_material, b.scope_material);
    }

    #[test]
    fn key_order_does_not_change_scope() {
        let a: Value = serde_json::from_str(
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"q"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"messages":[{"content":"q","role":"user"}],"temperature":0,"model":"m"}"#,
        )
        .unwrap();
        assert_eq!(chat(a).scope_material, chat(b).scope_material);
    }

    #[test]
    fn completions_prompt_forms() {
        let c = |v: Value| CanonicalRequest::from_completions(v.as_object().unwrap());
        assert_eq!(
            c(json!({"model":"m","prompt":"Say hi"})).prompt.unwrap(),
            "Say hi"
        );
        assert_eq!(
            c(json!({"model":"m","prompt":["Say hi"]})).prompt.unwrap(),
            "Say hi"
        );
        assert_eq!(
            c(json!({"model":"m","prompt":[1,2,3]})).prompt,
            Err(Bypass::UnsupportedPrompt)
        );
        assert_eq!(
            c(json!({"model":"m","prompt":"x","best_of":3})).prompt,
            Err(Bypass::MultipleChoices)
        );
    }

    #[test]
    fn normalize_unicode_and_whitespace() {
        assert_eq!(normalize("\u{FF21}\u{3000}b\t\tc "), "A b c");
        assert_eq!(normalize(""), "");
    }
}
