//! Property tests of the request parsers (issue 12): whatever JSON-ish bytes arrive, parsing
//! never panics; a rejection is a 400 whose `param` names the field it is about, whenever the
//! body is an object; and the normalizations (typed round trip, prompt text, canonical scope
//! JSON, the exact-key text) are idempotent. A few hundred cases each, well under a second.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

use super::*;
use crate::api::canonical::{normalize, write_canonical, CanonicalRequest};
use crate::api::exact_form::exact_form;
use crate::api::inbound;
use crate::api::ApiKind;

/// Field names the parsers know, so that generated objects reach past the first level.
const KEYS: [&str; 24] = [
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "n",
    "stream",
    "stream_options",
    "include_usage",
    "tool_call_id",
    "tool_calls",
    "prompt",
    "max_tokens",
    "system",
    "temperature",
    "stop",
    "tools",
    "image_url",
    "url",
    "name",
    "input",
    "id",
    "best_of",
];

const WORDS: [&str; 12] = [
    "user",
    "assistant",
    "system",
    "tool",
    "developer",
    "text",
    "image_url",
    "tool_use",
    "tool_result",
    "function",
    "",
    "gpt-4o",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&KEYS[..]).prop_map(str::to_string),
        1 => "[a-z_]{1,6}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&WORDS[..]).prop_map(str::to_string),
        // Any Unicode: combining marks, odd whitespace, compatibility forms.
        "\\PC{0,12}",
        "[ \\t\\n\u{a0}\u{3000}\u{2028}a\u{301}\u{fb01}]{0,8}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..4).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A plausible message: mostly the right shape, with any field possibly replaced.
fn message() -> impl Strategy<Value = Value> {
    let content = prop_oneof![
        4 => text().prop_map(Value::String),
        2 => prop::collection::vec(
            (text(), prop::option::of(value())).prop_map(|(t, extra)| {
                let mut part = json!({"type": "text", "text": t});
                if let Some(v) = extra {
                    part["cache_control"] = v;
                }
                part
            }),
            0..3
        )
        .prop_map(Value::Array),
        1 => value(),
    ];
    (
        prop::sample::select(&WORDS[..5]),
        content,
        prop::option::of(text()),
    )
        .prop_map(|(role, content, tool_call_id)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(id) = tool_call_id {
                m["tool_call_id"] = Value::String(id);
            }
            m
        })
}

/// A plausible request body for any of the three APIs, with some fields mutated.
fn request() -> impl Strategy<Value = Value> {
    (
        prop_oneof![4 => "[a-z0-9.-]{1,12}".prop_map(Value::String), 1 => value()],
        prop_oneof![
            4 => prop::collection::vec(message(), 1..4),
            1 => prop::collection::vec(message(), 0..1),
        ],
        prop::collection::btree_map(key(), value(), 0..2),
        prop_oneof![
            2 => text().prop_map(|t| Some(Value::String(t))),
            1 => value().prop_map(Some),
            1 => Just(None),
        ],
    )
        .prop_map(|(model, messages, extra, prompt)| {
            let mut body = Map::new();
            body.insert("model".into(), model);
            body.insert("messages".into(), Value::Array(messages));
            body.insert("max_tokens".into(), json!(16));
            if let Some(p) = prompt {
                body.insert("prompt".into(), p);
            }
            for (k, v) in extra {
                body.insert(k, v);
            }
            Value::Object(body)
        })
}

/// A body: a request, any JSON value, or raw bytes (truncated JSON, invalid UTF-8).
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => request().prop_map(|v| v.to_string().into_bytes()),
        2 => value().prop_map(|v| v.to_string().into_bytes()),
        1 => (request(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let s = v.to_string().into_bytes();
            let at = cut.index(s.len() + 1);
            s[..at].to_vec()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

const APIS: [ApiKind; 4] = [
    ApiKind::Chat,
    ApiKind::Completions,
    ApiKind::Messages,
    ApiKind::Responses,
];

/// Checks one rejection: a 400; for an object body an `InvalidRequest` names its field, and
/// that field's top-level key is one the body has or one the API requires.
fn check_rejection(api: ApiKind, body: &[u8], e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.status().as_u16(), 400, "{:?}", e);
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    if let ApiError::InvalidRequest { param, message } = e {
        let param = param.as_deref();
        prop_assert!(
            param.is_some_and(|p| !p.is_empty()),
            "{:?}: no param for {:?} on {}",
            api,
            message,
            String::from_utf8_lossy(body)
        );
        let root = param
            .unwrap_or_default()
            .split(['.', '['])
            .next()
            .unwrap_or_default();
        let required = ["model", "messages", "prompt", "max_tokens"];
        prop_assert!(
            map.contains_key(root) || required.contains(&root),
            "{:?}: param {:?} is not a field of {}",
            api,
            param,
            String::from_utf8_lossy(body)
        );
    }
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn issue12_parsers_never_panic_and_reject_with_400s(body in body()) {
        for api in APIS {
            if let Err(e) = inbound::parse_request(api, &body) {
                check_rejection(api, &body, &e)?;
            }
        }
        let typed = [
            parse_chat_request(&body).err(),
            parse_completion_request(&body).err(),
            parse_messages_request(&body).err(),
        ];
        for (api, e) in APIS.into_iter().zip(typed) {
            if let Some(e) = e {
                check_rejection(api, &body, &e)?;
            }
        }
    }

    #[test]
    fn issue12_typed_round_trip_is_idempotent(body in request()) {
        let bytes = body.to_string().into_bytes();
        if let Ok(req) = parse_chat_request(&bytes) {
            let again = serde_json::to_vec(&req).unwrap();
            prop_assert_eq!(parse_chat_request(&again).unwrap(), req);
        }
        if let Ok(req) = parse_messages_request(&bytes) {
            let once = serde_json::to_value(&req).unwrap();
            let again = parse_messages_request(once.to_string().as_bytes()).unwrap();
            prop_assert_eq!(serde_json::to_value(&again).unwrap(), once);
        }
        if let Ok(req) = parse_completion_request(&bytes) {
            let again = serde_json::to_vec(&req).unwrap();
            prop_assert_eq!(parse_completion_request(&again).unwrap(), req);
        }
    }

    #[test]
    fn issue12_prompt_normalization_is_idempotent(s in "\\PC{0,24}|[ \\t\\n\u{a0}\u{3000}\u{85}\u{2028}a\u{301}\u{fb01}\u{ff21}\u{1100}\u{1161}]{0,16}") {
        let once = normalize(&s);
        prop_assert_eq!(normalize(&once), once.clone());
        prop_assert_eq!(once.trim(), once.as_str());
        prop_assert!(!once.contains("  "));
    }

    /// Prose-like text (letters of several cases and scripts, sentence punctuation, the
    /// characters the prose rules look at) or anything at all: the exact form is a fixed point,
    /// so an exact key derived from a derived key is the same key.
    #[test]
    fn exact_form_is_idempotent(s in "[A-Za-zÉéİıΣσςß I'’.,?!:()%+…？！。¿\\-]{0,24}|\\PC{0,24}") {
        let prompt = normalize(&s);
        let once = exact_form(&prompt).into_owned();
        prop_assert_eq!(exact_form(&once), once.as_str());
        // Folding only ever lowercases and shortens: the key text is never longer in chars
        // than its lowercase prompt.
        prop_assert!(once.chars().count() <= prompt.to_lowercase().chars().count());
    }

    #[test]
    fn issue12_canonical_requests_are_normalized_and_order_free(body in request()) {
        let bytes = body.to_string().into_bytes();
        for api in APIS {
            let Ok(map) = inbound::parse_request(api, &bytes) else { continue };
            let build = |m: &Map<String, Value>| match api {
                ApiKind::Chat => CanonicalRequest::from_chat(m),
                ApiKind::Completions => CanonicalRequest::from_completions(m),
                ApiKind::Messages => CanonicalRequest::from_messages(m),
                ApiKind::Responses => CanonicalRequest::from_responses(m),
            };
            let c = build(&map);
            if let Ok(p) = &c.prompt {
                prop_assert_eq!(&normalize(p), p);
            }
            // The same body with its keys in reverse order has the same scope.
            let reversed: Map<String, Value> =
                map.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&build(&reversed).scope_material, &c.scope_material);
            // Canonical JSON is JSON, and canonical again when re-read.
            let v: Value = serde_json::from_slice(&c.scope_material).unwrap();
            let mut again = Vec::new();
            write_canonical(&v, &mut again);
            prop_assert_eq!(again, c.scope_material.clone());
        }
    }
}
