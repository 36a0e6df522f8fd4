//! Server-sent events framing: encoding one event (`data: {json}\n\n`, optionally with an
//! `event:` line), the providers' in-stream error events, and (re-exported from
//! `providers::sse`, the one decoder) decoding. It knows nothing of the payloads.

use bytes::Bytes;
use serde::Serialize;

/// The terminator OpenAI sends after the last chunk.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// `data: {json}\n\n`.
pub fn data_event<T: Serialize>(payload: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serializing our own types into memory cannot fail (string keys, no I/O).
    if serde_json::to_writer(&mut out, payload).is_err() {
        out.truncate(6);
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `event: NAME\ndata: {json}\n\n` (Anthropic's framing).
pub fn named_event<T: Serialize>(name: &str, payload: &T) -> Bytes {
    let data = data_event(payload);
    let mut out = Vec::with_capacity(name.len() + 8 + data.len());
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&data);
    Bytes::from(out)
}

/// The in-stream error event of OpenAI's streams, `data: {"error":{...}}`: the openai SDKs
/// raise it as an `APIError` with `message`.
pub fn openai_error_event(message: &str, kind: &str, code: Option<&str>) -> Bytes {
    data_event(&serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

/// Anthropic's in-stream error, `event: error` with `{"type":"error","error":{type,message}}`:
/// the anthropic SDKs raise it as an `APIStatusError` of that type.
pub fn anthropic_error_event(message: &str, kind: &str) -> Bytes {
    named_event(
        "error",
        &serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// The Responses API's in-stream error, `event: error` with
/// `{"type":"error","code","message","param","sequence_number"}`: the openai SDK yields it as
/// an event, and `get_final_response()` fails for want of `response.completed`.
pub fn responses_error_event(message: &str, code: &str, sequence_number: u64) -> Bytes {
    named_event(
        "error",
        &serde_json::json!({"type": "error", "code": code, "message": message, "param": null,
                            "sequence_number": sequence_number}),
    )
}

/// Decoding is [`crate::providers::sse::SseParser`]'s: one decoder for the tee, the stream
/// translator and the tests.
pub use crate::providers::sse::{SseEvent, SseParser};

/// Decode a complete SSE body at once (no cap: for bodies deja rendered itself).
pub fn decode_all(body: &[u8]) -> Vec<SseEvent> {
    SseParser::with_limit(usize::MAX).feed(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_openai_and_anthropic_framing() {
        assert_eq!(&data_event(&json!({"a": 1}))[..], b"data: {\"a\":1}\n\n");
        assert_eq!(
            &named_event("ping", &json!({"type": "ping"}))[..],
            b"event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
    }

    #[test]
    fn error_events_have_the_providers_shapes() {
        let decoded = decode_all(&openai_error_event(
            "boom",
            "server_error",
            Some("stream_cut"),
        ));
        let v: serde_json::Value = serde_json::from_str(&decoded[0].data).unwrap();
        assert_eq!(decoded[0].event, None);
        assert_eq!(
            v,
            json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": "stream_cut"}})
        );
        let decoded = decode_all(&anthropic_error_event("boom", "api_error"));
        let v: serde_json::Value = serde_json::from_str(&decoded[0].data).unwrap();
        assert_eq!(decoded[0].event.as_deref(), Some("error"));
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "api_error", "message": "boom"}})
        );
    }
}
