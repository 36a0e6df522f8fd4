//! Incremental Server-Sent Events parser for teeing an upstream stream: the server forwards the
//! raw bytes to the client untouched and feeds the same bytes here to collect the answer.
//! Follows the WHATWG event-stream rules: `\n`, `\r\n` and `\r` line endings, multi-line
//! `data`, `:` comments, one optional space after the colon, a leading BOM, and chunk
//! boundaries anywhere (even inside a UTF-8 character or between `\r` and `\n`). Malformed
//! lines are ignored as the spec says. The only failure is an upstream that sends a line or an
//! event longer than the parser's cap ([`SseOverflow`]): the parser then frees what it held and
//! takes nothing more, so a broken upstream cannot make it buffer without bound.

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

/// Largest line or event a parser buffers unless told otherwise (see
/// [`SseParser::with_limit`]). Real events are a few hundred bytes; a whole answer sent as one
/// event (some OpenAI-compatible servers do) stays far below it.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// The upstream sent a line or an event over the parser's cap; the stream is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseOverflow {
    #[error("an SSE line longer than {limit} bytes")]
    Line { limit: usize },
    #[error("an SSE event larger than {limit} bytes")]
    Event { limit: usize },
}

impl SseOverflow {
    pub fn limit(&self) -> usize {
        match self {
            SseOverflow::Line { limit } | SseOverflow::Event { limit } => *limit,
        }
    }
}

/// Feed bytes in any chunking, get complete events out. Never holds more than its cap in an
/// unterminated line or an undispatched event.
#[derive(Debug)]
pub struct SseParser {
    max_bytes: usize,
    /// Set once a line or event went over `max_bytes`; everything after is refused.
    overflow: Option<SseOverflow>,
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a leading `\n` in the next chunk ends the same line.
    skip_lf: bool,
    /// Offset in the last chunk fed just past its last blank line (an event boundary).
    boundary: Option<usize>,
    bom_checked: bool,
    event: Option<String>,
    data: String,
    /// Raw bytes of the `data` lines so far (what the cap measures; `data` may be longer where
    /// invalid UTF-8 was replaced).
    data_raw: usize,
    has_data: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Default for SseParser {
    fn default() -> SseParser {
        SseParser::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser with the [`DEFAULT_MAX_EVENT_BYTES`] cap.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// A parser that refuses any line, and any event's data, longer than `max_bytes`.
    pub fn with_limit(max_bytes: usize) -> SseParser {
        SseParser {
            max_bytes,
            overflow: None,
            line: Vec::new(),
            skip_lf: false,
            boundary: None,
            bom_checked: false,
            event: None,
            data: String::new(),
            data_raw: 0,
            has_data: false,
        }
    }

    /// Parse `chunk` and return the events it completed (those before an overflow included;
    /// see [`SseParser::overflow`] for whether one happened).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let _ = self.feed_into(chunk, &mut out);
        out
    }

    /// Parse `chunk`, appending completed events to `out`. `Err` when this chunk or an earlier
    /// one broke the cap: the events completed before the overflow are still in `out`, the
    /// rest is dropped, and every later call fails the same way.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseOverflow> {
        if let Some(o) = self.overflow {
            self.boundary = None;
            return Err(o);
        }
        match self.parse(chunk, out) {
            Ok(()) => Ok(()),
            Err(o) => {
                self.overflow = Some(o);
                // Give the memory back at once: the stream is over.
                self.line = Vec::new();
                self.data = String::new();
                self.data_raw = 0;
                self.event = None;
                self.has_data = false;
                Err(o)
            }
        }
    }

    /// The overflow that stopped this parser, if any.
    pub fn overflow(&self) -> Option<SseOverflow> {
        self.overflow
    }

    /// Bytes held for the unterminated line and the undispatched event: a small multiple of
    /// the cap (the line, the data and the event name are each under it in raw bytes; invalid
    /// UTF-8 decodes to three bytes per byte).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len() + self.event.as_ref().map_or(0, String::len)
    }

    /// Where the last chunk fed can be cut so that everything before the cut is whole events
    /// (the offset just past its last blank line), or `None` when it held no blank line. A
    /// relay that sends only up to here never leaves its client holding half an event.
    pub fn boundary(&self) -> Option<usize> {
        self.boundary
    }

    fn parse(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseOverflow> {
        self.boundary = None;
        let mut rest = chunk;
        if self.skip_lf && !rest.is_empty() {
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.skip_lf = false;
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) {
            self.push_line_bytes(&rest[..pos])?;
            let was_cr = rest[pos] == b'\r';
            rest = &rest[pos + 1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            if self.end_line(out)? {
                self.boundary = Some(chunk.len() - rest.len());
            }
        }
        self.push_line_bytes(rest)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseOverflow> {
        if self.line.len() + bytes.len() > self.max_bytes {
            return Err(SseOverflow::Line {
                limit: self.max_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes or fields are buffered that no blank line has dispatched yet. At the end of a
    /// stream this means the upstream stopped mid-event (the spec discards such an event).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data || self.event.is_some()
    }

    /// Ends the current line; `true` when it was blank (an event boundary).
    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<bool, SseOverflow> {
        let mut line: &[u8] = &self.line;
        if !self.bom_checked {
            self.bom_checked = true;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        let blank = line.is_empty();
        if blank {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event = None;
            self.data.clear();
            self.data_raw = 0;
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
                    // Raw bytes are measured, as `SseBounds` measures them.
                    self.data_raw += 1 + value.len();
                    if self.data_raw > self.max_bytes {
                        return Err(SseOverflow::Event {
                            limit: self.max_bytes,
                        });
                    }
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
        Ok(blank)
    }
}

/// The caps of [`SseParser`] without the parsing: counts the bytes of the current line and of
/// the current event (every line since the last blank one, field names included, so it is never
/// more lenient than the parser) and fails where the parser would, or earlier. The provider
/// runs it over a raw stream so that a broken upstream is cut at the source, before the
/// server's tee or the stream translator would have to refuse it; it holds no bytes.
#[derive(Debug)]
pub struct SseBounds {
    max_bytes: usize,
    line: usize,
    event: usize,
    /// The previous byte was `\r`: a `\n` now is the second half of `\r\n`.
    after_cr: bool,
    overflow: Option<SseOverflow>,
}

impl SseBounds {
    pub fn new(max_bytes: usize) -> SseBounds {
        SseBounds {
            max_bytes,
            line: 0,
            event: 0,
            after_cr: false,
            overflow: None,
        }
    }

    /// Account for `chunk`; `Err` from the first byte that breaks a cap on.
    pub fn check(&mut self, chunk: &[u8]) -> Result<(), SseOverflow> {
        if let Some(o) = self.overflow {
            return Err(o);
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.after_cr && rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.after_cr = false;
            let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.grow(rest.len())?;
                break;
            };
            self.grow(pos)?;
            self.after_cr = rest[pos] == b'\r';
            if self.line == 0 {
                self.event = 0;
            }
            self.line = 0;
            rest = &rest[pos + 1..];
        }
        Ok(())
    }

    fn grow(&mut self, n: usize) -> Result<(), SseOverflow> {
        self.line += n;
        self.event += n;
        let o = if self.line > self.max_bytes {
            SseOverflow::Line {
                limit: self.max_bytes,
            }
        } else if self.event > self.max_bytes {
            SseOverflow::Event {
                limit: self.max_bytes,
            }
        } else {
            return Ok(());
        };
        self.overflow = Some(o);
        Err(o)
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
                p.feed_into(&input[pos..end], &mut got).unwrap();
                pos = end;
            }
            assert_eq!(got, expected);
            assert!(!p.has_partial());
        }
    }

    #[test]
    fn issue12_sse_line_over_the_cap_is_refused_and_freed() {
        let mut p = SseParser::with_limit(64);
        let mut out = Vec::new();
        assert_eq!(p.feed_into(b"data: a\n\ndata: ", &mut out), Ok(()));
        assert_eq!(out, vec![ev(None, "a")]);
        let mut refused = None;
        for i in 0..100 {
            match p.feed_into(&[b'x'; 10], &mut out) {
                Ok(()) => assert!(p.buffered() <= 64, "chunk {i}: {} held", p.buffered()),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        // 6 bytes of `data: ` + 5 chunks of 10 fit in 64; the 6th chunk does not.
        assert_eq!(refused, Some((5, SseOverflow::Line { limit: 64 })));
        assert_eq!(
            p.buffered(),
            0,
            "an overflowing parser gives its memory back"
        );
        assert_eq!(p.overflow(), Some(SseOverflow::Line { limit: 64 }));
        assert_eq!(
            p.feed_into(b"\n\ndata: b\n\n", &mut out),
            Err(SseOverflow::Line { limit: 64 }),
            "nothing is parsed after an overflow"
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn issue12_sse_event_over_the_cap_is_refused() {
        let mut p = SseParser::with_limit(32);
        let mut out = Vec::new();
        let mut result = Ok(());
        for _ in 0..20 {
            result = p.feed_into(b"data: 0123456789\n", &mut out);
            assert!(p.buffered() <= 3 * 32);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseOverflow::Event { limit: 32 }));
        assert!(out.is_empty());
        // An event exactly at the cap passes.
        let mut p = SseParser::with_limit(16);
        let data = "a".repeat(10);
        assert_eq!(
            p.feed(format!("data: {data}\n\n").as_bytes()),
            vec![ev(None, &data)]
        );
        assert_eq!(p.overflow(), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Events as (name, data lines), written with a chosen line ending per line.
        fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<SseEvent>)> {
            let line = "[ -~é✓日]{0,20}";
            let event = (
                proptest::option::of("[a-z_]{1,12}"),
                proptest::collection::vec(line, 1..4),
                proptest::bool::ANY,
            );
            (
                proptest::collection::vec(event, 0..12),
                proptest::collection::vec(0u8..3, 64),
            )
                .prop_map(|(events, endings)| {
                    let mut bytes = Vec::new();
                    let mut expected = Vec::new();
                    let mut k = 0;
                    let mut nl = |bytes: &mut Vec<u8>| {
                        let mut e: &[u8] = match endings[k % endings.len()] {
                            0 => b"\n",
                            1 => b"\r\n",
                            _ => b"\r",
                        };
                        // After a lone `\r`, a blank line's `\n` would read as its second half.
                        if e == b"\n" && bytes.ends_with(b"\r") {
                            e = b"\r";
                        }
                        k += 1;
                        bytes.extend_from_slice(e);
                    };
                    for (name, lines, comment) in events {
                        if comment {
                            bytes.extend_from_slice(b": keep-alive");
                            nl(&mut bytes);
                        }
                        if let Some(n) = &name {
                            bytes.extend_from_slice(format!("event: {n}").as_bytes());
                            nl(&mut bytes);
                        }
                        for l in &lines {
                            bytes.extend_from_slice(format!("data: {l}").as_bytes());
                            nl(&mut bytes);
                        }
                        nl(&mut bytes);
                        expected.push(SseEvent {
                            event: name,
                            data: lines.join("\n"),
                        });
                    }
                    (bytes, expected)
                })
        }

        fn feed_in_pieces(p: &mut SseParser, bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                let _ = p.feed_into(&bytes[start..c], &mut out);
                start = c;
            }
            out
        }

        proptest! {
            #[test]
            fn any_chunking_yields_the_written_events(
                (bytes, expected) in stream(),
                cuts in proptest::collection::vec(any::<usize>(), 0..16),
            ) {
                let mut p = SseParser::new();
                prop_assert_eq!(feed_in_pieces(&mut p, &bytes, &cuts), expected);
                prop_assert!(!p.has_partial());
            }

            #[test]
            fn arbitrary_bytes_never_panic_and_never_pass_the_cap(
                bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                cuts in proptest::collection::vec(any::<usize>(), 0..16),
                limit in 1usize..96,
            ) {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut p = SseParser::with_limit(limit);
                let mut out = Vec::new();
                let mut start = 0;
                for c in cuts.into_iter().chain([bytes.len()]) {
                    let _ = p.feed_into(&bytes[start..c], &mut out);
                    start = c;
                    prop_assert!(p.buffered() <= 7 * limit, "{} held", p.buffered());
                }
                for e in &out {
                    prop_assert!(e.data.len() <= 3 * limit);
                }
                // The outcome depends on the bytes only, not on how they were cut.
                let mut whole = SseParser::with_limit(limit);
                prop_assert_eq!(whole.feed(&bytes), out);
                prop_assert_eq!(whole.overflow(), p.overflow());
            }

            #[test]
            fn relaying_up_to_boundaries_sends_whole_events_only(
                (bytes, expected) in stream(),
                cuts in proptest::collection::vec(any::<usize>(), 0..16),
            ) {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut p = SseParser::new();
                let mut seen = Vec::new();
                let mut relayed = Vec::new();
                let mut held: Vec<u8> = Vec::new();
                let mut start = 0;
                for c in cuts.into_iter().chain([bytes.len()]) {
                    let chunk = &bytes[start..c];
                    start = c;
                    p.feed_into(chunk, &mut seen).unwrap();
                    match p.boundary() {
                        Some(b) => {
                            relayed.append(&mut held);
                            relayed.extend_from_slice(&chunk[..b]);
                            held.extend_from_slice(&chunk[b..]);
                        }
                        None => held.extend_from_slice(chunk),
                    }
                    // A client fed only the relayed bytes holds no half event and has seen
                    // every event dispatched so far.
                    let mut client = SseParser::new();
                    prop_assert_eq!(client.feed(&relayed), seen.clone());
                    prop_assert!(!client.has_partial());
                }
                prop_assert_eq!(seen, expected);
            }

            #[test]
            fn bounds_refuse_whatever_the_parser_refuses(
                bytes in proptest::collection::vec(
                    prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), Just(b':'), any::<u8>()],
                    0..512,
                ),
                cuts in proptest::collection::vec(any::<usize>(), 0..8),
                limit in 1usize..48,
            ) {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut bounds = SseBounds::new(limit);
                let mut start = 0;
                let mut refused = false;
                for c in cuts.into_iter().chain([bytes.len()]) {
                    refused |= bounds.check(&bytes[start..c]).is_err();
                    start = c;
                }
                let mut p = SseParser::with_limit(limit);
                p.feed(&bytes);
                if p.overflow().is_some() {
                    prop_assert!(refused, "the parser refused what the bounds let through");
                }
                // Valid streams of small events always pass.
                let ok = b"data: a\r\n\r\nevent: e\ndata: b\n\n: c\r\r";
                let mut b = SseBounds::new(16);
                prop_assert!(b.check(ok).is_ok());
            }
        }
    }
}
