//! Server-sent events framing, both ways: encoding one event (`data: {json}\n\n`, optionally with
//! an `event:` line) and an incremental decoder that turns arbitrary byte chunks of an upstream
//! stream into events, following the WHATWG rules (any line ending, multi-line `data`, comments,
//! a chunk boundary anywhere, even inside a UTF-8 character). It knows nothing of the payloads.

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

/// One decoded event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the server sent one.
    pub event: Option<String>,
    /// All `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental SSE decoder: feed it bytes as they arrive, get whole events back.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    pending: Pending,
}

/// Fields of the event being read (apart from `buf`, so a line can borrow the buffer).
#[derive(Debug, Default)]
struct Pending {
    event: Option<String>,
    data: Option<String>,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one chunk; returns every event it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) else {
                break;
            };
            let terminator_len = if rest[pos] == b'\r' {
                match rest.get(pos + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A lone `\r` at the end may be the first half of `\r\n`: wait for more.
                    None => break,
                }
            } else {
                1
            };
            let line = String::from_utf8_lossy(&rest[..pos]);
            if let Some(ev) = self.pending.line(&line) {
                out.push(ev);
            }
            start += pos + terminator_len;
        }
        self.buf.drain(..start);
        out
    }

    /// End of stream: a last event the server did not close with a blank line is still
    /// returned (lenient: some servers omit it); a consumer that needs completeness checks the
    /// payload (`[DONE]`, `message_stop`) anyway.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let rest = std::mem::take(&mut self.buf);
        let rest = String::from_utf8_lossy(&rest).into_owned();
        let line = rest.trim_end_matches('\r');
        let mut out = None;
        if !line.is_empty() {
            out = self.pending.line(line);
        }
        out.or_else(|| self.pending.line(""))
    }
}

impl Pending {
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| SseEvent { event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry and unknown fields do not matter to a one-shot stream
        }
        None
    }
}

/// Decode a complete SSE body at once.
pub fn decode_all(body: &[u8]) -> Vec<SseEvent> {
    let mut d = SseDecoder::new();
    let mut events = d.push(body);
    events.extend(d.finish());
    events
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
    fn decodes_any_chunking_and_line_endings() {
        let body = "event: message_start\r\ndata: {\"x\":\"\u{1F600}\u{4E2D}\"}\r\n\r\n: keep-alive\n\ndata: a\ndata:b\n\ndata: [DONE]\r\r";
        let expected = vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"x\":\"\u{1F600}\u{4E2D}\"}".into(),
            },
            SseEvent {
                event: None,
                data: "a\nb".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        let bytes = body.as_bytes();
        assert_eq!(decode_all(bytes), expected);
        // Every split point, including inside the emoji and between \r and \n.
        for cut in 0..bytes.len() {
            let mut d = SseDecoder::new();
            let mut got = d.push(&bytes[..cut]);
            got.extend(d.push(&bytes[cut..]));
            got.extend(d.finish());
            assert_eq!(got, expected, "cut at {cut}");
        }
        // Byte by byte.
        let mut d = SseDecoder::new();
        let mut got: Vec<SseEvent> = bytes.iter().flat_map(|b| d.push(&[*b])).collect();
        got.extend(d.finish());
        assert_eq!(got, expected);
    }

    #[test]
    fn unterminated_last_event_is_flushed_on_finish() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: {\"a\":1}\n\ndata: [DONE]").len() == 1);
        assert_eq!(d.finish().map(|e| e.data), Some("[DONE]".into()));
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: x\n").is_empty());
        assert_eq!(d.finish().map(|e| e.data), Some("x".into()));
        assert_eq!(SseDecoder::new().finish(), None);
    }
}
