//! Request bodies both ways: OpenAI chat → Anthropic Messages, and Anthropic Messages → OpenAI
//! chat. Every field is either carried over, dropped because it cannot change the output, or
//! refused with [`TranslateError::Untranslatable`] naming it; nothing output-changing is lost.
//!
//! Choices, documented for users:
//! - Anthropic requires `max_tokens`: an OpenAI request without `max_tokens` or
//!   `max_completion_tokens` is sent with [`DEFAULT_MAX_TOKENS`].
//! - OpenAI `temperature` ranges over 0..2, Anthropic's over 0..1: a value above 1 is refused
//!   rather than clamped, since clamping would change the answer silently.
//! - System and developer messages must precede the conversation (Anthropic has one system
//!   prompt); each becomes one text block of `system`, so several are kept apart, not joined.
//! - A conversation ending with an assistant message is refused both ways: Anthropic continues
//!   such a message (prefill) where OpenAI writes a new one.
//! - Function tools become Anthropic tools (`parameters` → `input_schema`); `tool_choice`
//!   `auto`/`none`/`required`/named becomes `auto`/`none`/`any`/`tool`, and
//!   `parallel_tool_calls: false` becomes `disable_parallel_tool_use`. An assistant's
//!   `tool_calls` become `tool_use` blocks (the JSON-string arguments parsed into `input`, which
//!   must be an object), and `role: tool` messages become `tool_result` blocks of a user turn.

use super::TranslateError;
use crate::api::anthropic::{
    Content as AContent, ContentBlock, Message as AMessage, MessagesRequest, Role as ARole,
};
use crate::api::openai::{
    ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, Role, Stop, StreamOptions,
};
use serde_json::{json, Map, Value};

/// `max_tokens` sent to Anthropic when the OpenAI request sets no limit (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

fn refuse<T>(message: impl Into<String>) -> Result<T, TranslateError> {
    Err(TranslateError::Untranslatable(message.into()))
}

fn no_equivalent<T>(param: &str, side: &str) -> Result<T, TranslateError> {
    refuse(format!(
        "`{param}` has no equivalent in the {side} API, so this request cannot be served by a \
         {side} provider"
    ))
}

const ANTHROPIC: &str = "Anthropic Messages";
const OPENAI: &str = "OpenAI chat";

/// OpenAI request fields, not modeled by the wire types, that cannot change the output.
const CHAT_EXTRA_DROPPED: [&str; 2] = ["prompt_cache_key", "safety_identifier"];

/// Values of a message's unmodeled fields that a client may echo back from an earlier answer
/// and that say nothing to the model.
fn harmless_message_extra(key: &str, value: &Value) -> bool {
    value.is_null()
        || key == "annotations"
        || (key == "refusal" && value.as_str().is_some_and(str::is_empty))
}

// ---------------------------------------------------------------------------------------------
// OpenAI chat → Anthropic Messages
// ---------------------------------------------------------------------------------------------

/// Translate an OpenAI chat request into an Anthropic Messages request.
pub fn chat_to_messages(req: &ChatCompletionRequest) -> Result<MessagesRequest, TranslateError> {
    check_chat_params(req)?;
    let (system, messages) = chat_messages(&req.messages)?;
    let tools = match req.tools.as_deref() {
        Some(list) if !list.is_empty() => Some(tools_to_anthropic(list)?),
        _ => None,
    };
    let tool_choice = match tools {
        Some(_) => tool_choice_to_anthropic(req.tool_choice.as_ref(), req.parallel_tool_calls)?,
        None => None,
    };
    if let Some(t) = req.temperature {
        if t > 1.0 {
            return refuse(format!(
                "`temperature` {t} is above 1, the maximum of the {ANTHROPIC} API (OpenAI's \
                 scale goes to 2); send a value between 0 and 1"
            ));
        }
    }
    let stop_sequences = req.stop.as_ref().and_then(|s| {
        let v: Vec<String> = s.as_vec().into_iter().map(str::to_owned).collect();
        (!v.is_empty()).then_some(v)
    });
    let user = req.user.clone().or_else(|| {
        req.extra
            .get("safety_identifier")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    Ok(MessagesRequest {
        model: req.model.clone(),
        max_tokens: req
            .max_completion_tokens
            .or(req.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS),
        messages,
        system,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: None,
        stop_sequences,
        stream: req.stream,
        tools,
        tool_choice,
        metadata: user.map(|u| json!({ "user_id": u })),
        extra: Map::new(),
    })
}

fn check_chat_params(req: &ChatCompletionRequest) -> Result<(), TranslateError> {
    if req.n.is_some_and(|n| n != 1) {
        return refuse(format!(
            "`n` other than 1 is not supported by the {ANTHROPIC} API (one answer per request)"
        ));
    }
    if req.logprobs == Some(true) || req.top_logprobs.is_some_and(|k| k > 0) {
        return no_equivalent("logprobs", ANTHROPIC);
    }
    if req.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return no_equivalent("logit_bias", ANTHROPIC);
    }
    if req.seed.is_some() {
        return no_equivalent("seed", ANTHROPIC);
    }
    for (name, value) in [
        ("presence_penalty", req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return no_equivalent(name, ANTHROPIC);
        }
    }
    let has_tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    if let Some(choice) = &req.tool_choice {
        if !has_tools && !matches!(choice.as_str(), Some("none" | "auto")) && !choice.is_null() {
            return no_equivalent("tool_choice", ANTHROPIC);
        }
    }
    if let Some(format) = &req.response_format {
        if !(format.is_null() || format.get("type").and_then(Value::as_str) == Some("text")) {
            return refuse(format!(
                "`response_format` (JSON mode or JSON schema) has no equivalent in the \
                 {ANTHROPIC} API"
            ));
        }
    }
    if req.reasoning_effort.is_some() {
        return no_equivalent("reasoning_effort", ANTHROPIC);
    }
    if req
        .modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|x| x != "text"))
    {
        return no_equivalent("modalities", ANTHROPIC);
    }
    if req.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return no_equivalent("audio", ANTHROPIC);
    }
    if req
        .web_search_options
        .as_ref()
        .is_some_and(|a| !a.is_null())
    {
        return no_equivalent("web_search_options", ANTHROPIC);
    }
    for (key, value) in &req.extra {
        if !value.is_null() && !CHAT_EXTRA_DROPPED.contains(&key.as_str()) {
            return no_equivalent(key, ANTHROPIC);
        }
    }
    Ok(())
}

/// `system` (leading system/developer messages) and the conversation.
fn chat_messages(
    messages: &[ChatMessage],
) -> Result<(Option<AContent>, Vec<AMessage>), TranslateError> {
    let mut system: Vec<(String, bool)> = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let at = |what: &str| format!("messages[{i}]: {what}");
        if m.name.is_some() {
            return refuse(at(&format!(
                "`name` has no equivalent in the {ANTHROPIC} API"
            )));
        }
        if let Some((key, _)) = m.extra.iter().find(|(k, v)| !harmless_message_extra(k, v)) {
            return refuse(at(&format!(
                "`{key}` has no equivalent in the {ANTHROPIC} API"
            )));
        }
        match m.role {
            Role::System | Role::Developer => {
                if !out.is_empty() {
                    return refuse(at(&format!(
                        "a {} message after the conversation started has no equivalent in the \
                         {ANTHROPIC} API, which takes one system prompt before all messages",
                        m.role.as_str()
                    )));
                }
                match &m.content {
                    Some(MessageContent::Text(s)) => system.push((s.clone(), true)),
                    Some(MessageContent::Parts(parts)) => {
                        for p in parts {
                            match p {
                                ContentPart::Text { text, .. } => {
                                    system.push((text.clone(), false))
                                }
                                _ => return refuse(at("a system message may only hold text")),
                            }
                        }
                    }
                    None => return refuse(at("a system message needs content")),
                }
            }
            Role::User => {
                let content = match &m.content {
                    Some(c) => user_content(c).map_err(|e| prefix(e, i))?,
                    None => return refuse(at("a user message needs content")),
                };
                out.push(AMessage {
                    role: ARole::User,
                    content,
                    extra: Map::new(),
                });
            }
            Role::Assistant => {
                if m.function_call.as_ref().is_some_and(|f| !f.is_null()) {
                    return refuse(at(&format!(
                        "the legacy `function_call` has no equivalent in the {ANTHROPIC} API; \
                         use `tool_calls`"
                    )));
                }
                let calls = m.tool_calls.as_deref().unwrap_or_default();
                if !calls.is_empty() {
                    let mut blocks = Vec::with_capacity(calls.len() + 1);
                    match &m.content {
                        Some(MessageContent::Text(s)) if !s.is_empty() => {
                            blocks.push(text_block(s))
                        }
                        Some(MessageContent::Parts(parts)) => {
                            for p in parts {
                                match p {
                                    ContentPart::Text { text, .. } => blocks.push(text_block(text)),
                                    _ => {
                                        return refuse(at(
                                            "an assistant message may only hold text",
                                        ))
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    for (j, call) in calls.iter().enumerate() {
                        blocks.push(tool_use_block(call).map_err(|e| {
                            TranslateError::Untranslatable(at(&format!("tool_calls[{j}]: {e}")))
                        })?);
                    }
                    out.push(AMessage {
                        role: ARole::Assistant,
                        content: AContent::Blocks(blocks),
                        extra: Map::new(),
                    });
                    continue;
                }
                let content = match &m.content {
                    Some(MessageContent::Text(s)) => AContent::Text(s.clone()),
                    Some(MessageContent::Parts(parts)) => {
                        let mut blocks = Vec::with_capacity(parts.len());
                        for p in parts {
                            match p {
                                ContentPart::Text { text, .. } => blocks.push(text_block(text)),
                                _ => return refuse(at("an assistant message may only hold text")),
                            }
                        }
                        AContent::Blocks(blocks)
                    }
                    None => return refuse(at("an assistant message needs content")),
                };
                out.push(AMessage {
                    role: ARole::Assistant,
                    content,
                    extra: Map::new(),
                });
            }
            Role::Tool => {
                let text = match &m.content {
                    Some(c) => c.text().ok_or_else(|| {
                        TranslateError::Untranslatable(at("a tool result may only hold text"))
                    })?,
                    None => String::new(),
                };
                let mut extra = Map::new();
                extra.insert("content".into(), Value::String(text));
                let block = ContentBlock::ToolResult {
                    tool_use_id: m.tool_call_id.clone().unwrap_or_default(),
                    extra,
                };
                // Parallel calls' results are one user turn, as Anthropic expects them.
                match out.last_mut() {
                    Some(AMessage {
                        role: ARole::User,
                        content: AContent::Blocks(blocks),
                        ..
                    }) if blocks
                        .iter()
                        .all(|b| matches!(b, ContentBlock::ToolResult { .. })) =>
                    {
                        blocks.push(block)
                    }
                    _ => out.push(AMessage {
                        role: ARole::User,
                        content: AContent::Blocks(vec![block]),
                        extra: Map::new(),
                    }),
                }
            }
            Role::Function => {
                return refuse(at(&format!(
                    "legacy `function` messages have no equivalent in the {ANTHROPIC} API; use \
                     `role: tool`"
                )))
            }
        }
    }
    match out.last() {
        None => {
            return refuse(format!(
                "the {ANTHROPIC} API needs at least one user message besides the system prompt"
            ))
        }
        Some(last) if last.role == ARole::Assistant => {
            return refuse(format!(
                "a conversation ending with an assistant message would be continued (prefill) by \
                 the {ANTHROPIC} API instead of answered; end with a user message"
            ))
        }
        Some(_) => {}
    }
    let system = match system.as_slice() {
        [] => None,
        [(text, true)] => Some(AContent::Text(text.clone())),
        _ => Some(AContent::Blocks(
            system.iter().map(|(t, _)| text_block(t)).collect(),
        )),
    };
    Ok((system, out))
}

/// An assistant's tool call as a `tool_use` block: its arguments must be a JSON object.
fn tool_use_block(call: &crate::api::openai::ToolCall) -> Result<ContentBlock, String> {
    let Some(f) = &call.function else {
        return Err("only function calls have an equivalent".into());
    };
    let input: Value = serde_json::from_str(&f.arguments)
        .map_err(|e| format!("`function.arguments` is not JSON: {e}"))?;
    if !input.is_object() {
        return Err("`function.arguments` must be a JSON object".into());
    }
    Ok(ContentBlock::ToolUse {
        id: call.id.clone(),
        name: f.name.clone(),
        input,
        extra: Map::new(),
    })
}

/// OpenAI function tools → Anthropic tools (`parameters` → `input_schema`).
fn tools_to_anthropic(tools: &[Value]) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let at = |m: &str| refuse::<Vec<Value>>(format!("tools[{i}]: {m}"));
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return at(&format!(
                "only function tools have an equivalent in the {ANTHROPIC} API"
            ));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return at("`function` is missing");
        };
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            return at("`function.name` is missing");
        };
        if f.get("strict").and_then(Value::as_bool) == Some(true) {
            return at(&format!(
                "`function.strict` has no equivalent in the {ANTHROPIC} API"
            ));
        }
        let schema = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return at("`function.parameters` must be a JSON schema object"),
        };
        let mut tool = json!({"name": name, "input_schema": schema});
        if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
            tool["description"] = d.clone();
        }
        out.push(tool);
    }
    Ok(out)
}

/// `tool_choice` (and `parallel_tool_calls: false`) in Anthropic's shape.
fn tool_choice_to_anthropic(
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Value>, TranslateError> {
    let mut out = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            _ => return no_equivalent("tool_choice", ANTHROPIC),
        },
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
            match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) => Some(json!({"type": "tool", "name": name})),
                None => return refuse("`tool_choice.function.name` is missing"),
            }
        }
        Some(_) => return no_equivalent("tool_choice", ANTHROPIC),
    };
    if parallel == Some(false) {
        let c = out.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = json!(true);
        }
    }
    Ok(out)
}

fn prefix(e: TranslateError, i: usize) -> TranslateError {
    match e {
        TranslateError::Untranslatable(m) => {
            TranslateError::Untranslatable(format!("messages[{i}]: {m}"))
        }
        other => other,
    }
}

fn text_block(text: &str) -> ContentBlock {
    ContentBlock::Text {
        text: text.to_owned(),
        extra: Map::new(),
    }
}

fn user_content(c: &MessageContent) -> Result<AContent, TranslateError> {
    let parts = match c {
        MessageContent::Text(s) => return Ok(AContent::Text(s.clone())),
        MessageContent::Parts(parts) => parts,
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            ContentPart::Text { text, .. } => blocks.push(text_block(text)),
            ContentPart::ImageUrl { image_url, .. } => blocks.push(image_block(image_url)?),
            ContentPart::InputAudio { .. } => return no_equivalent("input_audio", ANTHROPIC),
            ContentPart::File { .. } => return refuse("`file` parts are not translated by deja"),
            ContentPart::Refusal { .. } => return refuse("a user message cannot hold a refusal"),
            ContentPart::Other(map) => {
                let ty = map.get("type").and_then(Value::as_str).unwrap_or("?");
                return refuse(format!(
                    "`{ty}` parts have no equivalent in the {ANTHROPIC} API"
                ));
            }
        }
    }
    Ok(AContent::Blocks(blocks))
}

/// `image_url` → an image block: a data URL becomes a base64 source, an http(s) URL a URL
/// source. `detail` other than `auto` would change what the model sees: refused.
fn image_block(image_url: &Value) -> Result<ContentBlock, TranslateError> {
    let url = image_url
        .get("url")
        .and_then(Value::as_str)
        .or_else(|| image_url.as_str());
    let Some(url) = url else {
        return refuse("`image_url.url` is missing");
    };
    if let Some(detail) = image_url.get("detail").and_then(Value::as_str) {
        if detail != "auto" {
            return refuse(format!(
                "`image_url.detail` \"{detail}\" has no equivalent in the {ANTHROPIC} API; \
                 use \"auto\" or leave it out"
            ));
        }
    }
    let source = if let Some(rest) = url.strip_prefix("data:") {
        let Some((media_type, data)) = rest.split_once(";base64,") else {
            return refuse("an image data URL must be base64 (`data:<type>;base64,<data>`)");
        };
        json!({"type": "base64", "media_type": media_type, "data": data})
    } else if url.starts_with("https://") || url.starts_with("http://") {
        json!({"type": "url", "url": url})
    } else {
        return refuse("`image_url.url` must be an http(s) URL or a base64 data URL");
    };
    Ok(ContentBlock::Image {
        source,
        extra: Map::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages → OpenAI chat
// ---------------------------------------------------------------------------------------------

/// Translate an Anthropic Messages request into an OpenAI chat request. A stream asks for the
/// usage chunk, since every Anthropic stream reports usage.
pub fn messages_to_chat(req: &MessagesRequest) -> Result<ChatCompletionRequest, TranslateError> {
    if req.top_k.is_some() {
        return no_equivalent("top_k", OPENAI);
    }
    let tools = match req.tools.as_deref() {
        Some(list) if !list.is_empty() => Some(tools_to_chat(list)?),
        _ => None,
    };
    let (tool_choice, parallel_tool_calls) = match &req.tool_choice {
        None => (None, None),
        Some(c) if c.is_null() => (None, None),
        Some(choice) => {
            let parallel = choice
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                .map(|d| !d);
            let openai = match choice.get("type").and_then(Value::as_str) {
                Some("auto") => json!("auto"),
                Some("none") => json!("none"),
                Some("any") if tools.is_some() => json!("required"),
                Some("tool") if tools.is_some() => match choice.get("name") {
                    Some(Value::String(n)) => json!({"type": "function", "function": {"name": n}}),
                    _ => return refuse("`tool_choice.name` is missing"),
                },
                _ => return no_equivalent("tool_choice", OPENAI),
            };
            (
                tools.as_ref().map(|_| openai),
                parallel.filter(|_| tools.is_some()),
            )
        }
    };
    for (key, value) in &req.extra {
        let disabled_thinking =
            key == "thinking" && value.get("type").and_then(Value::as_str) == Some("disabled");
        if !(value.is_null() || disabled_thinking || key == "service_tier") {
            return no_equivalent(key, OPENAI);
        }
    }
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    match &req.system {
        None => {}
        Some(AContent::Text(s)) => {
            messages.push(chat_message(Role::System, MessageContent::Text(s.clone())))
        }
        Some(AContent::Blocks(blocks)) => {
            for b in blocks {
                let text = block_text(b)
                    .map_err(|m| TranslateError::Untranslatable(format!("system: {m}")))?;
                messages.push(chat_message(Role::System, MessageContent::Text(text)));
            }
        }
    }
    for (i, m) in req.messages.iter().enumerate() {
        let at = |m: String| TranslateError::Untranslatable(format!("messages[{i}]: {m}"));
        if let Some((key, _)) = m.extra.iter().find(|(_, v)| !v.is_null()) {
            return Err(at(format!("`{key}` has no equivalent in the {OPENAI} API")));
        }
        let role = match m.role {
            ARole::User => Role::User,
            ARole::Assistant => Role::Assistant,
        };
        if let AContent::Blocks(blocks) = &m.content {
            let tooling = |b: &ContentBlock| {
                matches!(
                    b,
                    ContentBlock::ToolUse { .. } | ContentBlock::ToolResult { .. }
                )
            };
            if blocks.iter().any(tooling) {
                tool_turn(role, blocks, &mut messages).map_err(at)?;
                continue;
            }
        }
        let content = match &m.content {
            AContent::Text(s) => MessageContent::Text(s.clone()),
            AContent::Blocks(blocks) => {
                let mut parts = Vec::with_capacity(blocks.len());
                for b in blocks {
                    let part = match (b, role) {
                        (ContentBlock::Image { source, .. }, Role::User) => {
                            image_part(source).map_err(at)?
                        }
                        _ => ContentPart::Text {
                            text: block_text(b).map_err(at)?,
                            extra: Map::new(),
                        },
                    };
                    parts.push(part);
                }
                MessageContent::Parts(parts)
            }
        };
        messages.push(chat_message(role, content));
    }
    if req
        .messages
        .last()
        .is_some_and(|m| m.role == ARole::Assistant)
    {
        return refuse(format!(
            "a final assistant message (prefill) has no equivalent in the {OPENAI} API, which \
             would write a new message instead of continuing it; end with a user message"
        ));
    }
    let stream = req.stream;
    let user = req
        .metadata
        .as_ref()
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(ChatCompletionRequest {
        model: req.model.clone(),
        messages,
        temperature: req.temperature,
        top_p: req.top_p,
        n: None,
        stream,
        stream_options: (stream == Some(true)).then(|| StreamOptions {
            include_usage: Some(true),
            extra: Map::new(),
        }),
        stop: req
            .stop_sequences
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| Stop::Many(s.clone())),
        max_tokens: Some(req.max_tokens),
        max_completion_tokens: None,
        presence_penalty: None,
        frequency_penalty: None,
        logit_bias: None,
        logprobs: None,
        top_logprobs: None,
        user,
        seed: None,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format: None,
        reasoning_effort: None,
        modalities: None,
        prediction: None,
        audio: None,
        metadata: None,
        store: None,
        service_tier: None,
        web_search_options: None,
        extra: Map::new(),
    })
}

/// Anthropic tools → OpenAI function tools (`input_schema` → `parameters`).
fn tools_to_chat(tools: &[Value]) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let at = |m: &str| refuse::<Vec<Value>>(format!("tools[{i}]: {m}"));
        if t.get("type")
            .and_then(Value::as_str)
            .is_some_and(|ty| ty != "custom")
        {
            return at(&format!(
                "server tools have no equivalent in the {OPENAI} API"
            ));
        }
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return at("`name` is missing");
        };
        let mut function = json!({"name": name});
        match t.get("input_schema") {
            Some(s @ Value::Object(_)) => function["parameters"] = s.clone(),
            _ => return at("`input_schema` must be a JSON schema object"),
        }
        if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
            function["description"] = d.clone();
        }
        if let Some((k, _)) = t.as_object().and_then(|o| {
            o.iter().find(|(k, v)| {
                !v.is_null()
                    && !matches!(
                        k.as_str(),
                        "type" | "name" | "input_schema" | "description" | "cache_control"
                    )
            })
        }) {
            return at(&format!("`{k}` has no equivalent in the {OPENAI} API"));
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

/// A turn with `tool_use` blocks (assistant: text and `tool_calls`) or `tool_result` blocks
/// (user: one `role: tool` message per result, then the turn's other content as a user
/// message).
fn tool_turn(
    role: Role,
    blocks: &[ContentBlock],
    out: &mut Vec<ChatMessage>,
) -> Result<(), String> {
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        match (b, role) {
            (
                ContentBlock::ToolUse {
                    id, name, input, ..
                },
                Role::Assistant,
            ) => {
                calls.push(crate::api::openai::ToolCall {
                    id: id.clone(),
                    kind: "function".to_owned(),
                    function: Some(crate::api::openai::FunctionCall {
                        name: name.clone(),
                        arguments: input.to_string(),
                        extra: Map::new(),
                    }),
                    extra: Map::new(),
                });
            }
            (ContentBlock::ToolResult { tool_use_id, extra }, Role::User) => {
                if extra.get("is_error").and_then(Value::as_bool) == Some(true) {
                    return Err(format!(
                        "`is_error` on a tool result has no equivalent in the {OPENAI} API"
                    ));
                }
                let content = match extra.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        let texts: Option<Vec<&str>> = parts
                            .iter()
                            .map(|p| {
                                (p.get("type").and_then(Value::as_str) == Some("text"))
                                    .then(|| p.get("text").and_then(Value::as_str))
                                    .flatten()
                            })
                            .collect();
                        texts.ok_or("a tool result may only hold text")?.join("\n")
                    }
                    Some(_) => return Err("a tool result's `content` is not text".into()),
                };
                let mut m = chat_message(Role::Tool, MessageContent::Text(content));
                m.tool_call_id = Some(tool_use_id.clone());
                out.push(m);
            }
            (ContentBlock::ToolUse { .. }, _) => return Err("`tool_use` in a user turn".into()),
            (ContentBlock::ToolResult { .. }, _) => {
                return Err("`tool_result` in an assistant turn".into())
            }
            _ => text.push(ContentPart::Text {
                text: block_text(b)?,
                extra: Map::new(),
            }),
        }
    }
    match role {
        Role::Assistant => {
            let mut m = chat_message(role, MessageContent::Parts(text));
            if matches!(&m.content, Some(MessageContent::Parts(p)) if p.is_empty()) {
                m.content = None;
            }
            m.tool_calls = Some(calls);
            out.push(m);
        }
        _ if !text.is_empty() => out.push(chat_message(role, MessageContent::Parts(text))),
        _ => {}
    }
    Ok(())
}

fn chat_message(role: Role, content: MessageContent) -> ChatMessage {
    ChatMessage {
        role,
        content: Some(content),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        function_call: None,
        extra: Map::new(),
    }
}

/// A text block's text; anything else (tool use and results, documents, thinking) is refused.
/// `cache_control` is a prompt-caching hint, dropped; other block fields are refused.
fn block_text(b: &ContentBlock) -> Result<String, String> {
    match b {
        ContentBlock::Text { text, extra } => {
            match extra
                .iter()
                .find(|(k, v)| !v.is_null() && k.as_str() != "cache_control")
            {
                Some((k, _)) => Err(format!(
                    "`{k}` on a text block has no equivalent in the {OPENAI} API"
                )),
                None => Ok(text.clone()),
            }
        }
        ContentBlock::Image { .. } => {
            Err("images are only translated in user messages".to_string())
        }
        ContentBlock::ToolUse { .. } | ContentBlock::ToolResult { .. } => Err(format!(
            "tool use is not translated to the {OPENAI} API by deja"
        )),
        ContentBlock::Other(map) => {
            let ty = map.get("type").and_then(Value::as_str).unwrap_or("?");
            Err(format!(
                "`{ty}` blocks have no equivalent in the {OPENAI} API"
            ))
        }
    }
}

/// An Anthropic image source → an `image_url` part (base64 → data URL, url → url).
fn image_part(source: &Value) -> Result<ContentPart, String> {
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(m), Some(d)) => format!("data:{m};base64,{d}"),
                _ => return Err("a base64 image needs `media_type` and `data`".to_string()),
            }
        }
        Some("url") => match source.get("url").and_then(Value::as_str) {
            Some(u) => u.to_owned(),
            None => return Err("a URL image needs `url`".to_string()),
        },
        other => {
            return Err(format!(
                "image source `{}` has no equivalent in the {OPENAI} API",
                other.unwrap_or("?")
            ))
        }
    };
    Ok(ContentPart::ImageUrl {
        image_url: json!({ "url": url }),
        extra: Map::new(),
    })
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
