//! Request parsing and validation: body bytes → typed request, or an [`ApiError`] whose message
//! and `param` name the exact field (`messages[2].role`), as OpenAI's own 400s do. Only checks
//! that every OpenAI-compatible server would also fail are made here; value ranges
//! (temperature, penalties) are left to the upstream, which is the authority on its models.

use super::anthropic::MessagesRequest;
use super::error::ApiError;
use super::openai::{ChatCompletionRequest, CompletionRequest, Role};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parse a JSON body into `T`, mapping serde errors to OpenAI-style 400s.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(de).map_err(path_error)?;
    Ok(value)
}

/// Parse and validate a `POST /v1/chat/completions` body.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    let req: ChatCompletionRequest = parse_json(body)?;
    validate_chat(&req)?;
    Ok(req)
}

/// Parse and validate a `POST /v1/completions` body.
pub fn parse_completion_request(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let req: CompletionRequest = parse_json(body)?;
    require_model(&req.model)?;
    require_n(req.n)?;
    Ok(req)
}

/// Parse and validate a `POST /v1/messages` body (Anthropic).
pub fn parse_messages_request(body: &[u8]) -> Result<MessagesRequest, ApiError> {
    let req: MessagesRequest = parse_json(body)?;
    require_model(&req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_request(
            "messages: at least one message is required",
            Some("messages".into()),
        ));
    }
    if req.max_tokens == 0 {
        return Err(ApiError::invalid_request(
            "max_tokens: must be greater than or equal to 1",
            Some("max_tokens".into()),
        ));
    }
    require_schemas(req.tools.as_deref(), "/input_schema", "input_schema")?;
    Ok(req)
}

/// Structural checks on a parsed chat request.
pub fn validate_chat(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    require_model(&req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got \
             an empty array instead.",
            Some("messages".into()),
        ));
    }
    require_n(req.n)?;
    for (i, m) in req.messages.iter().enumerate() {
        let needs_content = !matches!(m.role, Role::Assistant);
        if needs_content && m.content.is_none() {
            return Err(missing(format!("messages[{i}].content")));
        }
        if m.role == Role::Tool && m.tool_call_id.is_none() {
            return Err(missing(format!("messages[{i}].tool_call_id")));
        }
    }
    require_schemas(
        req.tools.as_deref(),
        "/function/parameters",
        "function.parameters",
    )
}

/// Each tool's JSON schema (at `pointer`), when it has one, must be an object: a 400 naming
/// `tools[i].<name>` otherwise, before any upstream sees it.
fn require_schemas(tools: Option<&[Value]>, pointer: &str, name: &str) -> Result<(), ApiError> {
    for (i, tool) in tools.unwrap_or_default().iter().enumerate() {
        match tool.pointer(pointer) {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => {
                let param = format!("tools[{i}].{name}");
                return Err(ApiError::InvalidRequest {
                    message: format!("Invalid '{param}': expected a JSON schema object."),
                    param: Some(param),
                });
            }
        }
    }
    Ok(())
}

fn require_model(model: &str) -> Result<(), ApiError> {
    if model.trim().is_empty() {
        return Err(ApiError::invalid_request(
            "you must provide a model parameter",
            Some("model".into()),
        ));
    }
    Ok(())
}

fn require_n(n: Option<u32>) -> Result<(), ApiError> {
    if n == Some(0) {
        return Err(ApiError::invalid_request(
            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.",
            Some("n".into()),
        ));
    }
    Ok(())
}

fn missing(param: String) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("Missing required parameter: '{param}'."),
        param: Some(param),
    }
}

fn path_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.inner();
    let full = inner.to_string();
    // serde_json appends the byte position; the field path says more and reads better.
    let suffix = format!(" at line {} column {}", inner.line(), inner.column());
    let msg = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    match inner.classify() {
        serde_json::error::Category::Data => {}
        _ => return ApiError::InvalidJson { message: full },
    }
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        let param = if path == "." {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return missing(param);
    }
    let msg = msg.replace('`', "'");
    if path == "." {
        ApiError::invalid_request(msg, None)
    } else {
        ApiError::InvalidRequest {
            message: format!("{path}: {msg}"),
            param: Some(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::{ContentPart, MessageContent, Prompt, Stop};
    use serde_json::{json, Value};

    fn err_of(body: &str) -> (String, Option<String>) {
        match parse_chat_request(body.as_bytes()) {
            Err(ApiError::InvalidRequest { message, param }) => (message, param),
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn full_chat_request_round_trips_without_loss() {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}},
                    {"type": "video_url", "video_url": {"url": "http://x"}}
                ], "name": "bob"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}
            ],
            "temperature": 0.2, "top_p": 1, "n": 1, "stream": true,
            "stream_options": {"include_usage": true},
            "stop": ["\n\n", "END"], "max_completion_tokens": 64, "seed": -3,
            "logit_bias": {"50256": -100}, "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto", "response_format": {"type": "json_object"},
            "reasoning_effort": "low", "modalities": ["text"], "metadata": {"k": "v"},
            "store": false, "service_tier": "auto", "web_search_options": {},
            "some_vendor_flag": {"nested": [1, 2]}
        });
        let req = parse_chat_request(body.to_string().as_bytes()).unwrap();
        assert!(req.include_usage());
        assert_eq!(
            req.stop.as_ref().map(Stop::as_vec),
            Some(vec!["\n\n", "END"])
        );
        assert_eq!(req.extra["some_vendor_flag"], json!({"nested": [1, 2]}));
        let parts = match &req.messages[1].content {
            Some(MessageContent::Parts(p)) => p,
            other => panic!("{other:?}"),
        };
        assert!(matches!(&parts[0], ContentPart::Text { text, extra }
            if text == "what is this?" && extra.contains_key("cache_control")));
        assert!(matches!(parts[1], ContentPart::ImageUrl { .. }));
        assert!(matches!(parts[2], ContentPart::Other(_)));
        assert_eq!(req.messages[1].text(), None);
        assert_eq!(req.messages[0].text().as_deref(), Some("be brief"));

        // Serializing back yields the same JSON (numbers aside: `1` becomes `1.0` for floats).
        let mut back: Value = serde_json::to_value(&req).unwrap();
        assert_eq!(back["top_p"], json!(1.0));
        back["top_p"] = json!(1);
        // `content: null` is dropped on the way back, which every server reads the same.
        let mut expected = body.clone();
        expected["messages"][2]
            .as_object_mut()
            .unwrap()
            .remove("content");
        assert_eq!(back, expected);
    }

    #[test]
    fn text_parts_join() {
        let req = parse_chat_request(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(req.messages[0].text().as_deref(), Some("a\nb"));
        assert!(!req.include_usage());
    }

    #[test]
    fn unknown_role_names_the_path() {
        let (msg, param) = err_of(
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"robot","content":"c"}]}"#,
        );
        assert_eq!(param.as_deref(), Some("messages[2].role"));
        assert!(
            msg.starts_with("messages[2].role: unknown variant 'robot', expected one of"),
            "{msg}"
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let (msg, param) = err_of(r#"{"messages":[{"role":"user","content":"a"}]}"#);
        assert_eq!(msg, "Missing required parameter: 'model'.");
        assert_eq!(param.as_deref(), Some("model"));

        let (_, param) = err_of(r#"{"model":"m","messages":[{"content":"a"}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].role"));

        let (_, param) = err_of(r#"{"model":"m","messages":[{"role":"user"}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].content"));

        let (_, param) = err_of(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].tool_call_id"));

        let (_, param) =
            err_of(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].content[0].text"));
    }

    #[test]
    fn structural_errors() {
        let (msg, param) = err_of(r#"{"model":"m","messages":[]}"#);
        assert!(msg.contains("empty array"), "{msg}");
        assert_eq!(param.as_deref(), Some("messages"));

        let (_, param) = err_of(r#"{"model":"","messages":[{"role":"user","content":"a"}]}"#);
        assert_eq!(param.as_deref(), Some("model"));

        let (_, param) =
            err_of(r#"{"model":"m","n":0,"messages":[{"role":"user","content":"a"}]}"#);
        assert_eq!(param.as_deref(), Some("n"));

        let (msg, param) = err_of(
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"temperature":"hot"}"#,
        );
        assert_eq!(param.as_deref(), Some("temperature"));
        assert!(msg.contains("invalid type"), "{msg}");

        let (msg, param) = err_of(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].content"));
        assert!(
            msg.contains("a string or an array of content parts"),
            "{msg}"
        );

        let (_, param) = err_of(r#"{"model":"m","messages":"hi"}"#);
        assert_eq!(param.as_deref(), Some("messages"));
        assert!(matches!(
            parse_chat_request(b"[1,2]"),
            Err(ApiError::InvalidRequest { param: None, .. })
        ));
    }

    #[test]
    fn issue15_a_tool_schema_that_is_not_an_object_names_the_field() {
        let (msg, param) = err_of(
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"tools":[
                {"type":"function","function":{"name":"f","parameters":{"type":"object"}}},
                {"type":"function","function":{"name":"g","parameters":"nope"}}]}"#,
        );
        assert_eq!(param.as_deref(), Some("tools[1].function.parameters"));
        assert!(msg.contains("JSON schema object"), "{msg}");
        let e = parse_messages_request(
            br#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"a"}],
                "tools":[{"name":"f","input_schema":[1]}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidRequest { param: Some(p), .. } if p == "tools[0].input_schema")
        );
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        for body in [&b"{"[..], b"", b"{\"model\": }", b"\xff\xfe", b"nul"] {
            assert!(
                matches!(parse_chat_request(body), Err(ApiError::InvalidJson { .. })),
                "{body:?}"
            );
        }
        // Deep nesting hits serde_json's recursion limit instead of the stack.
        let deep = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"a"}}],"x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(
            parse_chat_request(deep.as_bytes()),
            Err(ApiError::InvalidJson { .. })
        ));
    }

    #[test]
    fn completion_prompts_of_every_shape() {
        let cases = [
            (json!("hi"), Prompt::Text("hi".into())),
            (
                json!(["a", "b"]),
                Prompt::Texts(vec!["a".into(), "b".into()]),
            ),
            (json!([1, 2, 3]), Prompt::Tokens(vec![1, 2, 3])),
            (
                json!([[1], [2, 3]]),
                Prompt::TokenArrays(vec![vec![1], vec![2, 3]]),
            ),
        ];
        for (prompt, expected) in cases {
            let body = json!({"model": "m", "prompt": prompt, "echo": true, "best_of": 2,
                              "logprobs": 3, "suffix": "x"});
            let req = parse_completion_request(body.to_string().as_bytes()).unwrap();
            assert_eq!(req.prompt, expected);
            assert_eq!(req.logprobs, Some(3));
            assert_eq!(serde_json::to_value(&req).unwrap(), body);
        }
        assert_eq!(Prompt::Texts(vec!["a".into()]).single_text(), Some("a"));
        assert_eq!(Prompt::Tokens(vec![1]).single_text(), None);

        for bad in [json!(5), json!([{"x": 1}]), json!(["a", 1]), json!([1, -1])] {
            let body = json!({"model": "m", "prompt": bad});
            match parse_completion_request(body.to_string().as_bytes()) {
                Err(ApiError::InvalidRequest { message, param }) => {
                    assert_eq!(param.as_deref(), Some("prompt"));
                    assert!(message.contains("invalid prompt"), "{message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let e = parse_completion_request(br#"{"prompt":"x"}"#).unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest { param: Some(p), .. } if p == "model"));
    }

    #[test]
    fn anthropic_messages_request() {
        let body = json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny", "is_error": false},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
                    {"type": "document", "source": {"type": "text", "data": "x"}}
                ]}
            ],
            "temperature": 0.5, "top_k": 40, "stop_sequences": ["###"], "stream": true,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto"}, "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 2048}
        });
        let req = parse_messages_request(body.to_string().as_bytes()).unwrap();
        assert!(req.is_stream());
        assert_eq!(
            req.system.as_ref().and_then(|s| s.text()).as_deref(),
            Some("be brief")
        );
        assert_eq!(req.messages[0].content.text().as_deref(), Some("weather?"));
        assert_eq!(req.messages[1].content.text(), None);
        assert!(req.extra.contains_key("thinking"));
        assert_eq!(serde_json::to_value(&req).unwrap(), body);

        let e =
            parse_messages_request(br#"{"model":"c","messages":[{"role":"user","content":"a"}]}"#)
                .unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest { param: Some(p), .. } if p == "max_tokens"));
        let e = parse_messages_request(
            br#"{"model":"c","max_tokens":5,"messages":[{"role":"system","content":"a"}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidRequest { param: Some(p), .. } if p == "messages[0].role")
        );
        let e = parse_messages_request(
            br#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_use","id":"x"}]}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidRequest { param: Some(p), .. } if p == "messages[0].content[0].name")
        );
        let e =
            parse_messages_request(br#"{"model":"c","max_tokens":5,"messages":[]}"#).unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest { param: Some(p), .. } if p == "messages"));
    }
}

#[cfg(test)]
#[path = "parse_props.rs"]
mod props;
