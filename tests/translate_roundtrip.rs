//! Round trips through the translators: OpenAI → Anthropic → OpenAI (and the reverse) for
//! requests, answers and streams, with multibyte text and arbitrary chunking. What comes back
//! must be what went in (up to the documented normalizations), and what the cache collects
//! from a doubly translated stream must equal what it collects from the original.

use bytes::Bytes;
use deja::api::anthropic::{
    collect_messages_json, render_messages_sse, MessagesRequest, MessagesStreamCollector,
};
use deja::api::collect::{collect_chat_json, ChatStreamCollector};
use deja::api::openai::ChatCompletionRequest;
use deja::api::render::{render_chat_json, render_chat_sse};
use deja::providers::translate::{
    chat_json_to_messages, chat_to_messages, messages_json_to_chat, messages_to_chat,
    translate_stream, ChatToMessagesStream, MessagesToChatStream, StreamTranslate, TranslateError,
};
use deja::providers::{ByteStream, ProviderError, ProviderErrorKind, SseParser};
use deja::store::{CachedResponse, FinishReason, Usage};
use futures::executor::block_on;
use futures::StreamExt;
use serde_json::{json, Value};

const TEXTS: [&str; 4] = [
    "Hello!",
    "Grüße aus München — naïve café, ½ € ✓",
    "日本語のテキストと絵文字 🎉🎉 を含む、かなり長めの応答です。改行も\nあります。",
    "👩‍👩‍👧‍👦 family, 🇫🇷 flag, e\u{301} combining, and \"quotes\" \\ backslash",
];

fn cached(content: &str, finish_reason: FinishReason) -> CachedResponse {
    CachedResponse {
        model: "some-model".into(),
        content: content.into(),
        finish_reason,
        usage: Some(Usage {
            prompt_tokens: 31,
            completion_tokens: 17,
        }),
        provider: "p".into(),
        system_fingerprint: None,
        tool_calls: Vec::new(),
    }
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

fn source(bytes: &[u8], piece: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, ProviderError>> = bytes
        .chunks(piece.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

fn through(inner: ByteStream, t: Box<dyn StreamTranslate>) -> ByteStream {
    translate_stream(
        inner,
        t,
        Box::new(|e: TranslateError| {
            ProviderError::new("p", ProviderErrorKind::StreamCut).with_detail(e.to_string())
        }),
    )
}

fn drain(mut s: ByteStream) -> Vec<u8> {
    block_on(async {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            out.extend_from_slice(&item.expect("no stream error"));
        }
        out
    })
}

fn collect_chat(bytes: &[u8]) -> CachedResponse {
    let mut c = ChatStreamCollector::new("p");
    for e in SseParser::new().feed(bytes) {
        c.push_event_data(&e.data);
    }
    c.finish().unwrap()
}

fn collect_messages(bytes: &[u8]) -> CachedResponse {
    let mut c = MessagesStreamCollector::new("p");
    for e in SseParser::new().feed(bytes) {
        c.push_event_data(&e.data);
    }
    c.finish().unwrap()
}

#[test]
fn openai_requests_round_trip_through_anthropic() {
    for text in TEXTS {
        let original = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": format!("System: {text}")},
                {"role": "user", "content": text},
                {"role": "assistant", "content": [{"type": "text", "text": text}]},
                {"role": "user", "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}}
                ]}
            ],
            "max_tokens": 321,
            "temperature": 0.7,
            "top_p": 0.25,
            "stop": [text, "###"],
            "user": text,
            "stream": true,
            "stream_options": {"include_usage": true}
        });
        let req: ChatCompletionRequest = serde_json::from_value(original.clone()).unwrap();
        let there = chat_to_messages(&req).unwrap();
        // Anthropic's request is valid for its wire types.
        let there: MessagesRequest =
            serde_json::from_value(to_value(&there)).expect("a Messages request");
        let back = messages_to_chat(&there).unwrap();
        assert_eq!(to_value(&back), original, "{text}");
    }
}

#[test]
fn openai_normalizations_are_the_documented_ones() {
    let req: ChatCompletionRequest = serde_json::from_value(json!({
        "model": "m",
        "messages": [{"role": "developer", "content": "D"}, {"role": "user", "content": "U"}],
        "max_completion_tokens": 9,
        "stop": "x",
        "n": 1,
        "store": false
    }))
    .unwrap();
    let back = messages_to_chat(&chat_to_messages(&req).unwrap()).unwrap();
    assert_eq!(
        to_value(&back),
        json!({
            "model": "m",
            "messages": [{"role": "system", "content": "D"}, {"role": "user", "content": "U"}],
            "max_tokens": 9,
            "stop": ["x"]
        })
    );
}

#[test]
fn anthropic_requests_round_trip_through_openai() {
    for text in TEXTS {
        let original = json!({
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": text}, {"type": "text", "text": "Second."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "text", "text": text}
                ]},
                {"role": "assistant", "content": text},
                {"role": "user", "content": text}
            ],
            "temperature": 0.0,
            "stop_sequences": ["END", text],
            "metadata": {"user_id": "u-1"},
            "stream": false
        });
        let req: MessagesRequest = serde_json::from_value(original.clone()).unwrap();
        let back = chat_to_messages(&messages_to_chat(&req).unwrap()).unwrap();
        assert_eq!(to_value(&back), original, "{text}");
    }
}

#[test]
fn answers_round_trip_both_ways() {
    for text in TEXTS {
        for finish in [FinishReason::Stop, FinishReason::Length] {
            let orig = cached(text, finish);
            let openai = render_chat_json(&orig, "chatcmpl-abc123", 1_700_000_000, None);
            let anthropic = chat_json_to_messages(&openai).unwrap();
            assert_eq!(collect_messages_json(&anthropic, "p").unwrap(), orig);
            let back = messages_json_to_chat(&anthropic).unwrap();
            assert_eq!(collect_chat_json(&back, "p").unwrap(), orig);
            let (a, b): (Value, Value) = (
                serde_json::from_slice(&openai).unwrap(),
                serde_json::from_slice(&back).unwrap(),
            );
            for field in ["id", "object", "model", "choices", "usage"] {
                assert_eq!(a[field], b[field], "{field} of {text}");
            }
            let again = chat_json_to_messages(&back).unwrap();
            assert_eq!(again, anthropic, "Anthropic → OpenAI → Anthropic is exact");
        }
    }
}

#[test]
fn openai_streams_round_trip_through_anthropic_at_any_chunking() {
    for text in TEXTS {
        let orig = cached(text, FinishReason::Length);
        let events = render_chat_sse(&orig, "chatcmpl-xyz", 1_700_000_000, None, true);
        let body: Vec<u8> = events.concat();
        let reference = collect_chat(&body);
        assert_eq!(reference, orig);
        for piece in [1, 2, 3, 5, 64, body.len()] {
            let anthropic = drain(through(
                source(&body, piece),
                Box::new(ChatToMessagesStream::new()),
            ));
            assert_eq!(collect_messages(&anthropic), orig, "{text} / {piece}");
            // And back, with the Anthropic bytes re-chunked too.
            let openai = drain(through(
                source(&anthropic, piece + 1),
                Box::new(MessagesToChatStream::new(true)),
            ));
            assert_eq!(collect_chat(&openai), orig, "{text} / {piece}");
            let chunks: Vec<Value> = SseParser::new()
                .feed(&openai)
                .iter()
                .filter(|e| !e.is_done())
                .map(|e| serde_json::from_str(&e.data).unwrap())
                .collect();
            assert!(chunks.iter().all(|c| c["id"] == "chatcmpl-xyz"));
        }
    }
}

#[test]
fn anthropic_streams_round_trip_through_openai_at_any_chunking() {
    for text in TEXTS {
        let orig = cached(text, FinishReason::Stop);
        let body: Vec<u8> = render_messages_sse(&orig, "msg_0123", None).concat();
        assert_eq!(collect_messages(&body), orig);
        for piece in [1, 4, 7, body.len()] {
            // Nested: the OpenAI stream is produced and consumed incrementally.
            let openai = through(
                source(&body, piece),
                Box::new(MessagesToChatStream::new(true)),
            );
            let anthropic = drain(through(openai, Box::new(ChatToMessagesStream::new())));
            assert_eq!(collect_messages(&anthropic), orig, "{text} / {piece}");
            let start = SseParser::new().feed(&anthropic).remove(0);
            let v: Value = serde_json::from_str(&start.data).unwrap();
            assert_eq!(v["message"]["id"], "msg_0123");
        }
    }
}
