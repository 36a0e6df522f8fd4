//! Incremental Server-Sent Events parser for teeing an upstream stream: the server forwards the
//! raw bytes to the client untouched and feeds the same bytes here to collect the answer.
//! Follows the WHATWG event-stream rules: `\n`, `\r\n` and `\r` line endings, multi-line
//! `data`, `:` comments, one optional space after the colon, a leading BOM, and chunk
//! boundaries anywhere (even inside a UTF-8 character or between `\r` and `\n`). It never
//! fails: malformed lines are ignored as the spec says.

/// One dispatched event. `data` lines are joined with `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (Anthropic uses it; OpenAI does not). `None` means "message".
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// OpenAI's end-of-stream sentinel `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// Feed bytes in any chunking, get complete events out.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a leading `\n` in the next chunk ends the same line.
    skip_lf: bool,
    bom_checked: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Parse `chunk` and return the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.feed_into(chunk, &mut out);
        out
    }

    /// Parse `chunk`, appending completed events to `out`.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = chunk;
        if self.skip_lf && !rest.is_empty() {
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.skip_lf = false;
        }
        while let Some(pos) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.line.extend_from_slice(&rest[..pos]);
            let was_cr = rest[pos] == b'\r';
            rest = &rest[pos + 1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            self.end_line(out);
        }
        self.line.extend_from_slice(rest);
    }

    /// Bytes or fields are buffered that no blank line has dispatched yet. At the end of a
    /// stream this means the upstream stopped mid-event (the spec discards such an event).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data || self.event.is_some()
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let mut line: &[u8] = &self.line;
        if !self.bom_checked {
            self.bom_checked = true;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event = None;
            self.data.clear();
            self.has_data = false;
        } else if line[0] != b':' {
            let (field, value) = match line.iter().position(|b| *b == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(&String::from_utf8_lossy(value));
                    self.has_data = true;
                }
                b"event" => {
                    self.event = if value.is_empty() {
                        None
                    } else {
                        Some(String::from_utf8_lossy(value).into_owned())
                    };
                }
                // `id` and `retry` matter to reconnecting browsers, not to a proxy's tee.
                _ => {}
            }
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        SseParser::new().feed(input)
    }

    /// Every split of the input into 1..=3 pieces (all cut points) must give the same events.
    fn assert_split_invariant(input: &[u8], expected: &[SseEvent]) {
        assert_eq!(parse_all(input), expected, "whole input");
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut p = SseParser::new();
                let mut got = p.feed(&input[..i]);
                got.extend(p.feed(&input[i..j]));
                got.extend(p.feed(&input[j..]));
                assert_eq!(got, expected, "split at {i},{j}");
            }
        }
        let mut p = SseParser::new();
        let got: Vec<SseEvent> = input.iter().flat_map(|b| p.feed(&[*b])).collect();
        assert_eq!(got, expected, "byte by byte");
    }

    #[test]
    fn openai_chunks_and_done() {
        let input = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        let expected = vec![
            ev(None, "{\"a\":1}"),
            ev(None, "{\"b\":2}"),
            ev(None, "[DONE]"),
        ];
        assert_split_invariant(input, &expected);
        assert!(expected[2].is_done());
        assert!(!expected[0].is_done());
    }

    #[test]
    fn crlf_and_lone_cr_line_endings() {
        let expected = vec![ev(Some("ping"), "x"), ev(None, "y")];
        assert_split_invariant(b"event: ping\r\ndata: x\r\n\r\ndata: y\r\n\r\n", &expected);
        assert_split_invariant(b"event: ping\rdata: x\r\rdata: y\r\r", &expected);
        assert_split_invariant(b"event: ping\r\ndata: x\n\rdata: y\r\n\n", &expected);
    }

    #[test]
    fn multiline_data_comments_and_fields() {
        let input = b": keep-alive\n\nevent: message_start\ndata: line1\ndata:line2\ndata\nid: 7\nretry: 10\nunknown: z\n\n";
        let expected = vec![ev(Some("message_start"), "line1\nline2\n")];
        assert_split_invariant(input, &expected);
    }

    #[test]
    fn only_one_leading_space_is_stripped_and_colons_kept() {
        let expected = vec![ev(None, "  two: spaces:")];
        assert_split_invariant(b"data:   two: spaces:\n\n", &expected);
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_does_not_leak() {
        let expected = vec![ev(None, "d")];
        assert_split_invariant(b"event: lonely\n\ndata: d\n\n", &expected);
    }

    #[test]
    fn utf8_split_inside_a_character_and_bom() {
        let input = "\u{feff}data: héllo — 日本\n\n".as_bytes();
        assert_split_invariant(input, &[ev(None, "héllo — 日本")]);
    }

    #[test]
    fn unterminated_event_is_held_and_reported_partial() {
        let mut p = SseParser::new();
        assert!(!p.has_partial());
        assert_eq!(p.feed(b"data: a\n\ndata: {\"cut"), vec![ev(None, "a")]);
        assert!(p.has_partial());
        assert_eq!(p.feed(b"\"}\n"), vec![]);
        assert!(p.has_partial());
        assert_eq!(p.feed(b"\n"), vec![ev(None, "{\"cut\"}")]);
        assert!(!p.has_partial());
    }

    #[test]
    fn pseudo_random_chunkings_of_a_long_stream() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for i in 0..50 {
            let data = format!("{{\"i\":{i},\"t\":\"chunk ✓ {i}\"}}");
            let nl: &[u8] = match i % 3 {
                0 => b"\n",
                1 => b"\r\n",
                _ => b"\r",
            };
            input.extend_from_slice(b"data: ");
            input.extend_from_slice(data.as_bytes());
            input.extend_from_slice(nl);
            input.extend_from_slice(nl);
            if i % 7 == 0 {
                input.extend_from_slice(b": comment\n");
            }
            expected.push(ev(None, &data));
        }
        // Deterministic xorshift so a failure is reproducible.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200 {
            let mut p = SseParser::new();
            let mut got = Vec::new();
            let mut pos = 0;
            while pos < input.len() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let len = 1 + (seed % 40) as usize;
                let end = (pos + len).min(input.len());
                p.feed_into(&input[pos..end], &mut got);
                pos = end;
            }
            assert_eq!(got, expected);
            assert!(!p.has_partial());
        }
    }
}
