//! Tests of `render`: every rendered body parses back with our own response types, and every
//! replay, decoded event by event, reproduces the stored text byte for byte.

use super::*;
use crate::api::openai::CompletionChunk;
use crate::api::sse::decode_all;
use crate::store::{FinishReason, Usage as StoreUsage};
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn cached(content: &str) -> CachedResponse {
    CachedResponse {
        model: "gpt-4o-mini-2024-07-18".into(),
        content: content.into(),
        finish_reason: FinishReason::Stop,
        usage: Some(StoreUsage {
            prompt_tokens: 12,
            completion_tokens: 7,
        }),
        provider: "openai".into(),
        system_fingerprint: Some("fp_44709d6fcb".into()),
        tool_calls: Vec::new(),
    }
}

const TEXTS: &[&str] = &[
    "",
    "Hi",
    "The capital of France is Paris. It has been the capital since 987 AD.\n\nAnything else?",
    "東京は日本の首都です。人口は約一千四百万人で、世界最大級の都市圏を形成しています。",
    "Emoji 😀😃😄😁 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 end",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "  leading and trailing spaces  \n",
    "quotes \" backslash \\ control \u{0001} data: [DONE]\n\ndata: fake",
];

/// Decode a replay into its JSON payloads, checking the `[DONE]` terminator.
fn payloads(events: &[Bytes]) -> Vec<Value> {
    let decoded = decode_all(&join_events(events));
    assert_eq!(decoded.len(), events.len(), "one SSE event per Bytes");
    let (last, rest) = decoded.split_last().expect("non-empty");
    assert_eq!(last.data, "[DONE]");
    assert_eq!(last.event, None);
    rest.iter()
        .map(|e| {
            assert_eq!(e.event, None, "OpenAI streams carry no event names");
            serde_json::from_str(&e.data).expect("chunk is JSON")
        })
        .collect()
}

#[test]
fn chat_json_has_openai_shape_and_parses_back() {
    let resp = cached("Paris.");
    let body = render_chat_json(&resp, "chatcmpl-abc", 1_700_000_000, Some("gpt-4o-mini"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], "chatcmpl-abc");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["created"], 1_700_000_000u64);
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(v["system_fingerprint"], "fp_44709d6fcb");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Paris.");
    assert!(choice["message"]["refusal"].is_null());
    assert!(choice.as_object().unwrap().contains_key("logprobs"));
    assert!(choice["logprobs"].is_null());
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 19);

    let parsed: ChatCompletion = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed.choices.len(), 1);
    assert_eq!(
        parsed.choices[0].message.content,
        Some(Value::String("Paris.".into()))
    );
}

#[test]
fn chat_json_falls_back_to_requested_model_and_zero_usage() {
    let mut resp = cached("x");
    resp.model.clear();
    resp.usage = None;
    resp.system_fingerprint = None;
    resp.finish_reason = FinishReason::Length;
    let v: Value =
        serde_json::from_slice(&render_chat_json(&resp, "id", 1, Some("llama3"))).unwrap();
    assert_eq!(v["model"], "llama3");
    assert_eq!(v["usage"]["total_tokens"], 0);
    assert!(v["system_fingerprint"].is_null());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[test]
fn chat_sse_reproduces_every_text_exactly() {
    for text in TEXTS {
        for include_usage in [false, true] {
            let resp = cached(text);
            let events = render_chat_sse(&resp, "chatcmpl-x", 42, None, include_usage);
            let chunks = payloads(&events);
            let mut content = String::new();
            for (i, raw) in chunks.iter().enumerate() {
                let c: ChatCompletionChunk = serde_json::from_value(raw.clone()).unwrap();
                assert_eq!(c.id, "chatcmpl-x");
                assert_eq!(c.object, "chat.completion.chunk");
                assert_eq!(c.created, 42);
                assert_eq!(c.model, "gpt-4o-mini-2024-07-18");
                assert_eq!(c.system_fingerprint.as_deref(), Some("fp_44709d6fcb"));
                let obj = raw.as_object().unwrap();
                let is_usage_chunk = include_usage && i == chunks.len() - 1;
                if include_usage {
                    assert!(obj.contains_key("usage"), "usage key on every chunk");
                    assert_eq!(raw["usage"].is_null(), !is_usage_chunk);
                } else {
                    assert!(!obj.contains_key("usage"), "no usage key when not asked");
                }
                if is_usage_chunk {
                    assert!(c.choices.is_empty());
                    let u = c.usage.as_usage().unwrap();
                    assert_eq!((u.prompt_tokens, u.total_tokens), (12, 19));
                    continue;
                }
                assert_eq!(c.choices.len(), 1);
                let ch = &c.choices[0];
                assert_eq!(ch.index, 0);
                assert!(raw["choices"][0]
                    .as_object()
                    .unwrap()
                    .contains_key("logprobs"));
                if i == 0 {
                    assert_eq!(ch.delta.role.as_deref(), Some("assistant"));
                    assert_eq!(ch.delta.content.as_deref(), Some(""));
                }
                let is_finish = i == chunks.len() - 1 - usize::from(include_usage);
                if is_finish {
                    assert_eq!(ch.finish_reason.as_deref(), Some("stop"));
                    assert_eq!(raw["choices"][0]["delta"], serde_json::json!({}));
                } else {
                    assert_eq!(ch.finish_reason, None);
                    assert!(raw["choices"][0]["finish_reason"].is_null());
                }
                content.push_str(ch.delta.content.as_deref().unwrap_or(""));
            }
            assert_eq!(&content, text);
            // role + pieces + finish (+ usage) + [DONE]
            let expected = split_pieces(text).len() + 3 + usize::from(include_usage);
            assert_eq!(events.len(), expected);
        }
    }
}

#[test]
fn completion_json_and_sse() {
    let resp = cached("def add(a, b):\n    return a + b\n");
    let body = render_completion_json(&resp, "cmpl-1", 7, None);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], resp.content);
    assert!(v["choices"][0]["logprobs"].is_null());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 19);
    let parsed: Completion = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed.choices[0].text, resp.content);

    for text in TEXTS {
        for include_usage in [false, true] {
            let resp = cached(text);
            let events = render_completion_sse(&resp, "cmpl-1", 7, None, include_usage);
            let chunks = payloads(&events);
            let mut got = String::new();
            let mut finishes = 0;
            for (i, raw) in chunks.iter().enumerate() {
                let c: CompletionChunk = serde_json::from_value(raw.clone()).unwrap();
                assert_eq!(c.object, "text_completion");
                assert_eq!(
                    raw.as_object().unwrap().contains_key("usage"),
                    include_usage
                );
                if include_usage && i == chunks.len() - 1 {
                    assert!(c.choices.is_empty());
                    assert_eq!(c.usage.as_usage().map(|u| u.total_tokens), Some(19));
                    continue;
                }
                if let Some(f) = &c.choices[0].finish_reason {
                    assert_eq!(f, "stop");
                    finishes += 1;
                }
                got.push_str(&c.choices[0].text);
            }
            assert_eq!(finishes, 1);
            assert_eq!(&got, text);
        }
    }
}

#[test]
fn split_pieces_never_breaks_chars_and_rebuilds_text() {
    let alphabet: Vec<char> = "ab c\n\t😀中é👨‍👩 ".chars().collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..500 {
        let len = rng.random_range(0..200);
        let s: String = (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        let pieces = split_pieces(&s);
        assert_eq!(pieces.concat(), s);
        for p in &pieces {
            assert!(!p.is_empty());
            // At most one char past the hard limit.
            assert!(p.len() < PIECE_MAX_BYTES + 4, "{p:?}");
        }
    }
    assert!(split_pieces("").is_empty());
    let words = split_pieces("The quick brown fox jumps over the lazy dog again and again");
    assert!(words.len() > 1);
    assert!(words[..words.len() - 1].iter().all(|p| p.ends_with(' ')));
}

#[test]
fn ids_are_fresh_and_prefixed() {
    let (a, b) = (new_chat_id(), new_chat_id());
    assert!(a.starts_with("chatcmpl-") && a.len() == 9 + 32);
    assert_ne!(a, b);
    assert!(new_completion_id().starts_with("cmpl-"));
    assert!(unix_now() > 1_700_000_000);
}

#[test]
fn piece_template_matches_struct_serialization() {
    let resp = cached("x");
    let make = |piece: &str| {
        let mut c = ChatCompletionChunk {
            id: "chatcmpl-\"a\"".into(),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "a".into(),
            service_tier: None,
            system_fingerprint: resp.system_fingerprint.clone(),
            choices: vec![],
            usage: UsageField::Null,
        };
        c.choices.push(ChunkChoice {
            index: 0,
            delta: ChunkDelta {
                content: Some(piece.to_owned()),
                ..ChunkDelta::default()
            },
            logprobs: None,
            finish_reason: None,
        });
        c
    };
    let t = PieceTemplate::new(make).expect("template");
    for piece in [
        "",
        "a",
        "b",
        "quote \" back \\ nl \n",
        "😀 中文 \u{7f}\u{1}",
    ] {
        assert_eq!(t.event(piece), sse::data_event(&make(piece)), "{piece:?}");
    }
    // A placeholder that is not one quoted letter (or appears twice) gives no template.
    assert!(PieceTemplate::new(|p: &str| format!("{p}{p}")).is_none());
    assert!(PieceTemplate::new(|p: &str| vec![p.to_owned(), p.to_owned()]).is_none());
    assert!(PieceTemplate::new(|_: &str| 5).is_none());
}

/// An answer with text and two tool calls, as the collectors store it (arguments compact, keys
/// sorted, as serde_json writes a parsed object).
fn with_calls() -> CachedResponse {
    let mut r = cached("Let me check both for you, one moment please.");
    r.finish_reason = FinishReason::ToolCalls;
    r.tool_calls = vec![
        crate::store::ToolCall {
            id: "call_upstream_a".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris","days":[1,2,3],"note":"ünïcode \"quoted\" and a long tail to split"}"#.into(),
        },
        crate::store::ToolCall {
            id: "call_upstream_b".into(),
            name: "get_time".into(),
            arguments: r#"{"tz":"Europe/Paris"}"#.into(),
        },
    ];
    r
}

/// Everything but the ids (fresh per render) and usage (absent from a chat stream without
/// `include_usage`).
fn without_ids(mut r: CachedResponse) -> CachedResponse {
    for c in &mut r.tool_calls {
        c.id.clear();
    }
    r.usage = None;
    r
}

fn ids_of(r: &CachedResponse) -> Vec<String> {
    r.tool_calls.iter().map(|c| c.id.clone()).collect()
}

/// A stored tool-call answer rendered in every API, JSON and stream, collects back to the same
/// answer with fresh call ids in that API's style, and each wire format says what its clients
/// read: chat `tool_calls` + `finish_reason: "tool_calls"`, Anthropic `tool_use` blocks with a
/// parsed `input` + `stop_reason: "tool_use"`, Responses `function_call` items whose streamed
/// argument deltas reassemble into the `done` arguments.
#[test]
fn a_tool_call_answer_renders_in_every_api_and_collects_back() {
    use crate::api::anthropic::{
        collect_messages_json, render_messages_json, render_messages_sse, MessagesStreamCollector,
    };
    use crate::api::collect::{collect_chat_json, ChatStreamCollector};
    use crate::api::responses::{
        collect_responses_json, render_responses_json, render_responses_sse,
        ResponsesStreamCollector,
    };
    let orig = with_calls();
    let expected = without_ids(orig.clone());
    let request = serde_json::Map::new();
    let stream = |events: &[Bytes], push: &mut dyn FnMut(&str)| {
        for ev in decode_all(&join_events(events)) {
            push(&ev.data);
        }
    };
    let mut collected: Vec<(&str, CachedResponse)> = Vec::new();

    let body = render_chat_json(&orig, "chatcmpl-1", 1, None);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["type"],
        "function"
    );
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        orig.tool_calls[0].arguments.as_str()
    );
    collected.push(("chat json", collect_chat_json(&body, "openai").unwrap()));
    for include_usage in [false, true] {
        let events = render_chat_sse(&orig, "chatcmpl-1", 1, None, include_usage);
        let argument_chunks = payloads(&events)
            .iter()
            .filter(|p| {
                p.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                    .is_some()
            })
            .count();
        assert!(argument_chunks > 4, "arguments are streamed in pieces");
        let mut c = ChatStreamCollector::new("openai");
        stream(&events, &mut |d| c.push_event_data(d));
        collected.push(("chat sse", c.finish().unwrap()));
    }

    let body = render_messages_json(&orig, "msg_1", None);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["content"][1]["type"], "tool_use");
    assert_eq!(
        v["content"][1]["input"]["city"], "Paris",
        "input is an object"
    );
    collected.push((
        "messages json",
        collect_messages_json(&body, "openai").unwrap(),
    ));
    let events = render_messages_sse(&orig, "msg_1", None);
    let mut c = MessagesStreamCollector::new("openai");
    stream(&events, &mut |d| c.push_event_data(d));
    collected.push(("messages sse", c.finish().unwrap()));

    let body = render_responses_json(&orig, "resp_1", 1, "m", &request);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let types: Vec<_> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].clone())
        .collect();
    assert_eq!(types, ["message", "function_call", "function_call"]);
    assert_eq!(v["status"], "completed");
    assert!(v["output"][1]["call_id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));
    assert!(v["output"][1]["id"].as_str().unwrap().starts_with("fc_"));
    collected.push((
        "responses json",
        collect_responses_json(&body, "openai").unwrap(),
    ));
    let events = render_responses_sse(&orig, "resp_1", 1, "m", &request);
    let decoded: Vec<Value> = decode_all(&join_events(&events))
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let mut args = std::collections::BTreeMap::<String, String>::new();
    let mut done = Vec::new();
    for (seq, e) in decoded.iter().enumerate() {
        assert_eq!(e["sequence_number"], seq as u64);
        match e["type"].as_str().unwrap() {
            "response.function_call_arguments.delta" => args
                .entry(e["item_id"].as_str().unwrap().to_owned())
                .or_default()
                .push_str(e["delta"].as_str().unwrap()),
            "response.function_call_arguments.done" => done.push((
                e["item_id"].as_str().unwrap().to_owned(),
                e["arguments"].as_str().unwrap().to_owned(),
            )),
            _ => {}
        }
    }
    assert_eq!(done.len(), 2);
    for (item, full) in &done {
        assert_eq!(&args[item], full);
        serde_json::from_str::<serde_json::Map<String, Value>>(full).unwrap();
    }
    let mut c = ResponsesStreamCollector::with_limit("openai", 1 << 20);
    stream(&events, &mut |d| c.push_event_data(d));
    collected.push(("responses sse", c.finish().unwrap()));

    let prefixes = [
        ("chat", "call_"),
        ("messages", "toolu_"),
        ("responses", "call_"),
    ];
    for (what, got) in &collected {
        let got_ids = ids_of(got);
        let prefix = prefixes.iter().find(|p| what.starts_with(p.0)).unwrap().1;
        assert!(
            got_ids
                .iter()
                .all(|id| id.starts_with(prefix) && id.len() > prefix.len() + 20),
            "{what}: {got_ids:?}"
        );
        assert!(
            got_ids.iter().all(|id| !ids_of(&orig).contains(id)),
            "{what}: ids are fresh"
        );
        let mut got = without_ids(got.clone());
        got.provider = expected.provider.clone();
        got.system_fingerprint = expected.system_fingerprint.clone();
        assert_eq!(got, expected, "{what}");
    }
    // Two renders of one entry never share call ids.
    assert_ne!(
        ids_of(&collected[0].1),
        ids_of(&collect_chat_json(&render_chat_json(&orig, "c", 1, None), "o").unwrap())
    );
}

/// A tool call without any text renders without a text part (`content: null` in chat, no text
/// block, no message item) and still collects back.
#[test]
fn a_tool_call_without_text_renders_no_empty_text() {
    let mut orig = with_calls();
    orig.content.clear();
    let v: Value = serde_json::from_slice(&render_chat_json(&orig, "c", 1, None)).unwrap();
    assert!(v["choices"][0]["message"]["content"].is_null());
    let body = crate::api::anthropic::render_messages_json(&orig, "m", None);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["content"][0]["type"], "tool_use");
    let back = crate::api::anthropic::collect_messages_json(&body, "o").unwrap();
    assert_eq!((back.content.as_str(), back.tool_calls.len()), ("", 2));
    let body =
        crate::api::responses::render_responses_json(&orig, "r", 1, "m", &Default::default());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["output"][0]["type"], "function_call");
    let back = crate::api::responses::collect_responses_json(&body, "openai").unwrap();
    // The Responses wire has no system fingerprint.
    let expected = CachedResponse {
        system_fingerprint: None,
        ..without_ids(orig)
    };
    assert_eq!(without_ids(back), expected);
}
