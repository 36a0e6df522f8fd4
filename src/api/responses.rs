//! OpenAI Responses API (`POST /v1/responses`): request validation with field-precise 400s, and
//! the one mapping of a Responses request onto the equivalent chat-completions body
//! ([`to_chat`]): `instructions` become the system message, input items become messages,
//! `max_output_tokens`, `text.format`, `reasoning.effort`, `tools` and `tool_choice` take their
//! chat names and shapes. The cache keys a Responses request on that chat form, so a chat request
//! and a Responses request that say the same thing share one scope and one stored answer; the
//! provider translator sends it to providers that have no Responses API. Rendering and
//! collecting live in the `render` and `collect` submodules. JSON only: no cache or HTTP logic.

pub mod chain;
mod collect;
mod render;

pub use collect::{collect_responses_json, ResponsesStreamCollector};
pub use render::{
    envelope, message_item, new_message_id, new_response_id, render_responses_json,
    render_responses_sse, text_part, usage_of, Envelope,
};

use serde_json::{json, Map, Value};

use crate::api::error::ApiError;

/// Input item types OpenAI documents. Only `message`, `function_call` and
/// `function_call_output` have a chat equivalent; the others are forwarded natively, uncached.
const ITEM_TYPES: &[&str] = &[
    "message",
    "function_call",
    "function_call_output",
    "reasoning",
    "item_reference",
    "file_search_call",
    "web_search_call",
    "computer_call",
    "computer_call_output",
    "image_generation_call",
    "code_interpreter_call",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
    "custom_tool_call",
    "custom_tool_call_output",
    "compaction",
];

const ROLES: &[&str] = &["user", "assistant", "system", "developer"];

const PART_TYPES: &[&str] = &[
    "input_text",
    "output_text",
    "refusal",
    "input_image",
    "input_file",
    "input_audio",
];

/// Top-level fields that make the answer depend on state only the provider holds (an earlier
/// stored response, a conversation, a background job): such a request is never answered from
/// the cache, and cannot be translated for a provider that does not hold that state.
pub const SERVER_STATE_FIELDS: &[&str] = &["previous_response_id", "conversation", "background"];

/// Whether a field of [`SERVER_STATE_FIELDS`] is set (not `null`, and `background` not false).
pub fn server_state_field(body: &Map<String, Value>) -> Option<&'static str> {
    SERVER_STATE_FIELDS
        .iter()
        .copied()
        .find(|k| match body.get(*k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(_) => true,
        })
}

/// Structural checks of a `POST /v1/responses` body, each failure a 400 whose `param` names the
/// field (`input[2].content[0].type`). Values the upstream judges (ranges, model names) are left
/// to it, as for chat.
pub fn validate(body: &Map<String, Value>) -> Result<(), ApiError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        Some(Value::String(_)) | None => {
            return Err(ApiError::invalid_request(
                "you must provide a model parameter",
                Some("model".into()),
            ))
        }
        Some(_) => return Err(bad("model", "expected a string")),
    }
    match body.get("input") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                validate_item(i, item)?;
            }
        }
        Some(_) => return Err(bad("input", "expected a string or an array of input items")),
    }
    match body.get("instructions") {
        None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
        Some(_) => return Err(bad("instructions", "expected a string")),
    }
    match body.get("previous_response_id") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(bad("previous_response_id", "expected a string")),
    }
    for key in ["stream", "store", "background", "parallel_tool_calls"] {
        match body.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(_)) => {}
            Some(_) => return Err(bad(key, "expected a boolean")),
        }
    }
    for key in ["temperature", "top_p"] {
        match body.get(key) {
            None | Some(Value::Null) | Some(Value::Number(_)) => {}
            Some(_) => return Err(bad(key, "expected a number")),
        }
    }
    match body.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {}
        Some(_) => {
            return Err(bad(
                "max_output_tokens",
                "expected an integer greater than or equal to 1",
            ))
        }
    }
    for key in ["text", "reasoning"] {
        match body.get(key) {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => return Err(bad(key, "expected an object")),
        }
    }
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                validate_tool(i, tool)?;
            }
        }
        Some(_) => return Err(bad("tools", "expected an array of tools")),
    }
    Ok(())
}

fn validate_item(i: usize, item: &Value) -> Result<(), ApiError> {
    let path = format!("input[{i}]");
    let Some(obj) = item.as_object() else {
        return Err(bad(&path, "expected an input item object"));
    };
    let ty = match obj.get("type") {
        None => "message",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(bad(&format!("{path}.type"), "expected a string")),
    };
    if !ITEM_TYPES.contains(&ty) {
        return Err(bad(
            &format!("{path}.type"),
            &format!(
                "invalid value '{ty}'; supported values are: {}",
                ITEM_TYPES.join(", ")
            ),
        ));
    }
    match ty {
        "message" => {
            match obj.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => {}
                Some(Value::String(r)) => {
                    return Err(bad(
                        &format!("{path}.role"),
                        &format!(
                            "invalid value '{r}'; supported values are: {}",
                            ROLES.join(", ")
                        ),
                    ))
                }
                Some(_) => return Err(bad(&format!("{path}.role"), "expected a string")),
                None => return Err(missing(format!("{path}.role"))),
            }
            match obj.get("content") {
                Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    for (j, part) in parts.iter().enumerate() {
                        validate_part(&format!("{path}.content[{j}]"), part)?;
                    }
                }
                Some(_) => {
                    return Err(bad(
                        &format!("{path}.content"),
                        "expected a string or an array of content parts",
                    ))
                }
                None => return Err(missing(format!("{path}.content"))),
            }
        }
        "function_call" => {
            for key in ["call_id", "name", "arguments"] {
                require_string(obj, &path, key)?;
            }
        }
        "function_call_output" => {
            require_string(obj, &path, "call_id")?;
            match obj.get("output") {
                Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    for (j, part) in parts.iter().enumerate() {
                        validate_part(&format!("{path}.output[{j}]"), part)?;
                    }
                }
                Some(_) => {
                    return Err(bad(
                        &format!("{path}.output"),
                        "expected a string or an array of content parts",
                    ))
                }
                None => return Err(missing(format!("{path}.output"))),
            }
        }
        _ => {}
    }
    Ok(())
}

fn validate_part(path: &str, part: &Value) -> Result<(), ApiError> {
    let Some(obj) = part.as_object() else {
        return Err(bad(path, "expected a content part object"));
    };
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(bad(&format!("{path}.type"), "expected a string")),
        None => return Err(missing(format!("{path}.type"))),
    };
    if !PART_TYPES.contains(&ty) {
        return Err(bad(
            &format!("{path}.type"),
            &format!(
                "invalid value '{ty}'; supported values are: {}",
                PART_TYPES.join(", ")
            ),
        ));
    }
    match ty {
        "input_text" | "output_text" => require_string(obj, path, "text"),
        "refusal" => require_string(obj, path, "refusal"),
        _ => Ok(()),
    }
}

fn validate_tool(i: usize, tool: &Value) -> Result<(), ApiError> {
    let path = format!("tools[{i}]");
    let Some(obj) = tool.as_object() else {
        return Err(bad(&path, "expected a tool object"));
    };
    match obj.get("type") {
        Some(Value::String(t)) if t == "function" => {}
        Some(Value::String(_)) => return Ok(()),
        Some(_) => return Err(bad(&format!("{path}.type"), "expected a string")),
        None => return Err(missing(format!("{path}.type"))),
    }
    require_string(obj, &path, "name")?;
    match obj.get("parameters") {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(bad(
            &format!("{path}.parameters"),
            "expected a JSON schema object",
        )),
    }
}

fn require_string(obj: &Map<String, Value>, path: &str, key: &str) -> Result<(), ApiError> {
    match obj.get(key) {
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err(bad(&format!("{path}.{key}"), "expected a string")),
        None => Err(missing(format!("{path}.{key}"))),
    }
}

fn bad(param: &str, what: &str) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("Invalid '{param}': {what}."),
        param: Some(param.to_owned()),
    }
}

fn missing(param: String) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("Missing required parameter: '{param}'."),
        param: Some(param),
    }
}

/// Why a (valid) Responses request has no chat-completions equivalent: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmappable {
    pub param: String,
    pub reason: String,
}

impl std::fmt::Display for Unmappable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.param, self.reason)
    }
}

fn unmappable(param: impl Into<String>, reason: impl Into<String>) -> Unmappable {
    Unmappable {
        param: param.into(),
        reason: reason.into(),
    }
}

/// The chat-completions body that asks what this (validated) Responses body asks. Fields with no
/// chat counterpart keep their Responses name, so they still separate cache scopes (and the
/// chat → Anthropic translator refuses what it cannot say). Fails for content that a chat body
/// cannot hold at all: server-side state, items without a chat form, a non-string
/// `instructions`.
pub fn to_chat(body: &Map<String, Value>) -> Result<Map<String, Value>, Unmappable> {
    if let Some(k) = server_state_field(body) {
        return Err(unmappable(k, "refers to state only the provider holds"));
    }
    let mut out = Map::new();
    let mut messages: Vec<Value> = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => {
            return Err(unmappable(
                "instructions",
                "as a list of items has no chat form",
            ))
        }
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                push_item(&mut messages, i, item)?;
            }
        }
        _ => return Err(unmappable("input", "is required to say what to answer")),
    }
    for (k, v) in body {
        match k.as_str() {
            "input" | "instructions" => {}
            "max_output_tokens" => {
                out.insert("max_completion_tokens".into(), v.clone());
            }
            "text" => text_to_chat(v, &mut out)?,
            "reasoning" => reasoning_to_chat(v, &mut out),
            "tools" => {
                out.insert("tools".into(), tools_to_chat(v));
            }
            "tool_choice" => {
                out.insert("tool_choice".into(), tool_choice_to_chat(v));
            }
            "truncation" if v.as_str() == Some("disabled") => {}
            _ if v.is_null() => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    Ok(out)
}

fn push_item(messages: &mut Vec<Value>, i: usize, item: &Value) -> Result<(), Unmappable> {
    let path = format!("input[{i}]");
    let obj = item
        .as_object()
        .ok_or_else(|| unmappable(&path, "is not an object"))?;
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("message");
    match ty {
        "message" => {
            let role = obj.get("role").and_then(Value::as_str).unwrap_or("user");
            let content = match obj.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => parts_to_chat(&format!("{path}.content"), parts)?,
                _ => return Err(unmappable(format!("{path}.content"), "is missing")),
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": obj.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": obj.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": obj.get("arguments").cloned().unwrap_or(Value::Null),
                },
            });
            // Consecutive calls (and a call right after the assistant's text) are one chat turn.
            let joins = messages
                .last()
                .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
            if joins {
                if let Some(Value::Object(last)) = messages.last_mut() {
                    match last.get_mut("tool_calls") {
                        Some(Value::Array(calls)) => calls.push(call),
                        _ => {
                            last.insert("tool_calls".into(), Value::Array(vec![call]));
                        }
                    }
                }
            } else {
                messages.push(json!({"role": "assistant", "tool_calls": [call]}));
            }
        }
        "function_call_output" => {
            let content = match obj.get("output") {
                Some(Value::Array(parts)) => parts_to_chat(&format!("{path}.output"), parts)?,
                Some(v) => v.clone(),
                None => Value::String(String::new()),
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": obj.get("call_id").cloned().unwrap_or(Value::Null),
                "content": content,
            }));
        }
        other => {
            return Err(unmappable(
                format!("{path}.type"),
                format!("'{other}' has no chat-completions form"),
            ))
        }
    }
    Ok(())
}

/// Content parts in chat's shapes; a single text part collapses to a string, as most clients
/// send it.
fn parts_to_chat(path: &str, parts: &[Value]) -> Result<Value, Unmappable> {
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
        let part = match ty {
            "input_text" | "output_text" => {
                json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()})
            }
            "refusal" => {
                json!({"type": "refusal", "refusal": p.get("refusal").cloned().unwrap_or_default()})
            }
            "input_image" => match p.get("image_url") {
                Some(Value::String(url)) => {
                    let mut image = json!({"url": url});
                    if let Some(d) = p.get("detail") {
                        image["detail"] = d.clone();
                    }
                    json!({"type": "image_url", "image_url": image})
                }
                _ => {
                    return Err(unmappable(
                        format!("{path}[{j}]"),
                        "an image by file id has no chat form",
                    ))
                }
            },
            "input_file" => {
                let mut file = p.as_object().cloned().unwrap_or_default();
                file.remove("type");
                json!({"type": "file", "file": file})
            }
            "input_audio" => {
                json!({"type": "input_audio", "input_audio": p.get("input_audio").cloned().unwrap_or_default()})
            }
            other => {
                return Err(unmappable(
                    format!("{path}[{j}].type"),
                    format!("'{other}' has no chat form"),
                ))
            }
        };
        out.push(part);
    }
    if let [only] = out.as_slice() {
        if only.get("type").and_then(Value::as_str) == Some("text") {
            return Ok(only.get("text").cloned().unwrap_or_default());
        }
    }
    Ok(Value::Array(out))
}

fn text_to_chat(text: &Value, out: &mut Map<String, Value>) -> Result<(), Unmappable> {
    let Some(obj) = text.as_object() else {
        return Ok(());
    };
    for (k, v) in obj {
        match k.as_str() {
            "format" => match v.get("type").and_then(Value::as_str) {
                Some("text") | None => {}
                Some("json_object") => {
                    out.insert("response_format".into(), json!({"type": "json_object"}));
                }
                Some("json_schema") => {
                    let mut schema = v.as_object().cloned().unwrap_or_default();
                    schema.remove("type");
                    out.insert(
                        "response_format".into(),
                        json!({"type": "json_schema", "json_schema": schema}),
                    );
                }
                Some(other) => {
                    return Err(unmappable(
                        "text.format.type",
                        format!("'{other}' has no chat form"),
                    ))
                }
            },
            "verbosity" => {
                if !v.is_null() {
                    out.insert("verbosity".into(), v.clone());
                }
            }
            other => {
                return Err(unmappable(
                    format!("text.{other}"),
                    "has no chat-completions form",
                ))
            }
        }
    }
    Ok(())
}

fn reasoning_to_chat(reasoning: &Value, out: &mut Map<String, Value>) {
    let Some(obj) = reasoning.as_object() else {
        return;
    };
    let mut rest = obj.clone();
    if let Some(effort) = rest.remove("effort") {
        if !effort.is_null() {
            out.insert("reasoning_effort".into(), effort);
        }
    }
    rest.retain(|_, v| !v.is_null());
    if !rest.is_empty() {
        // `summary` and the like: no chat name; kept so that they still separate scopes.
        out.insert("reasoning".into(), Value::Object(rest));
    }
}

/// Function tools in chat's nested shape; hosted tools (`web_search`, ...) as they are.
pub fn tools_to_chat(tools: &Value) -> Value {
    let Some(list) = tools.as_array() else {
        return tools.clone();
    };
    Value::Array(
        list.iter()
            .map(|t| {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return t.clone();
                }
                let mut function = t.as_object().cloned().unwrap_or_default();
                function.remove("type");
                function.retain(|_, v| !v.is_null());
                json!({"type": "function", "function": function})
            })
            .collect(),
    )
}

/// `{"type":"function","name":N}` → `{"type":"function","function":{"name":N}}`; the string
/// forms are the same in both APIs.
pub fn tool_choice_to_chat(choice: &Value) -> Value {
    match choice {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or_default()}})
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn param_of(v: Value) -> String {
        match validate(&obj(v)) {
            Err(ApiError::InvalidRequest { param, .. }) => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn bad_inputs_name_the_field() {
        assert_eq!(param_of(json!({"input": "hi"})), "model");
        assert_eq!(param_of(json!({"model": "m", "input": 5})), "input");
        assert_eq!(param_of(json!({"model": "m", "input": [5]})), "input[0]");
        assert_eq!(
            param_of(json!({"model": "m", "input": [{"type": "telepathy"}]})),
            "input[0].type"
        );
        assert_eq!(
            param_of(json!({"model": "m", "input": [{"role": "robot", "content": "x"}]})),
            "input[0].role"
        );
        assert_eq!(
            param_of(json!({"model": "m", "input": [{"role": "user"}]})),
            "input[0].content"
        );
        assert_eq!(
            param_of(json!({"model": "m", "input": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "input_text"}]}]})),
            "input[1].content[0].text"
        );
        assert_eq!(
            param_of(
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "video"}]}]})
            ),
            "input[0].content[0].type"
        );
        assert_eq!(
            param_of(
                json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]})
            ),
            "input[0].arguments"
        );
        assert_eq!(
            param_of(json!({"model": "m", "input": "x", "tools": [
                {"type": "function", "name": "f", "parameters": "not a schema"}]})),
            "tools[0].parameters"
        );
        assert_eq!(
            param_of(json!({"model": "m", "input": "x", "max_output_tokens": 0})),
            "max_output_tokens"
        );
        assert_eq!(
            param_of(json!({"model": "m", "input": "x", "previous_response_id": 5})),
            "previous_response_id"
        );
        assert!(validate(&obj(json!({"model": "m", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []}],
            "tools": [{"type": "web_search"}]})))
        .is_ok());
    }

    #[test]
    fn responses_body_maps_onto_the_equivalent_chat_body() {
        let chat = to_chat(&obj(json!({
            "model": "m", "instructions": "be brief", "temperature": 0.2,
            "max_output_tokens": 50, "truncation": "disabled",
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}},
            "reasoning": {"effort": "low"},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": null}],
            "tool_choice": {"type": "function", "name": "f"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "message", "role": "user", "content": "thanks"}
            ]
        })))
        .unwrap();
        assert_eq!(
            Value::Object(chat),
            json!({
                "model": "m", "temperature": 0.2, "max_completion_tokens": 50,
                "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
                "reasoning_effort": "low",
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "weather?"},
                    {"role": "assistant", "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                    {"role": "user", "content": "thanks"}
                ]
            })
        );
    }

    #[test]
    fn state_and_unmappable_items_have_no_chat_form() {
        let e = to_chat(&obj(
            json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
        ))
        .unwrap_err();
        assert_eq!(e.param, "previous_response_id");
        assert_eq!(
            server_state_field(&obj(json!({"background": false, "conversation": null}))),
            None
        );
        let e = to_chat(&obj(
            json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]}),
        ))
        .unwrap_err();
        assert_eq!(e.param, "input[0].type");
    }
}
