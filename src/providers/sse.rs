//! A server-sent events parser that reads each byte once and holds at most
//! one event. The crate it replaces (eventsource-stream) parsed its whole
//! buffer again on every chunk: an upstream that sent one endless line made
//! that quadratic, pinned a core and grew without bound. Here a line is
//! scanned from where the last scan stopped, and an event (its data, its name
//! and the line still being read) larger than `max` fails the stream.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::call::UpstreamError;

/// One dispatched event: its `event` field (empty when absent) and its data
/// lines joined with '\n'.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// The event being read grew past the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

pub struct Parser {
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
    /// `buf[start..scanned]` holds no line terminator.
    scanned: usize,
    /// The last line ended with '\r': a '\n' first thing next is part of it.
    skip_lf: bool,
    event: String,
    data: String,
    has_data: bool,
    max: usize,
}

impl Parser {
    pub fn new(max: usize) -> Self {
        Parser {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            skip_lf: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            max,
        }
    }

    /// Add bytes as they arrived.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            // drop what was read; what is left is one unfinished line
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if the bytes so far hold one.
    pub fn next_event(&mut self) -> Result<Option<Event>, TooLarge> {
        loop {
            if self.skip_lf && self.start < self.buf.len() {
                if self.buf[self.start] == b'\n' {
                    self.start += 1;
                }
                self.skip_lf = false;
                self.scanned = self.scanned.max(self.start);
            }
            let from = self.scanned.max(self.start);
            let Some(pos) = self.buf[from..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
            else {
                self.scanned = self.buf.len();
                let pending = self.buf.len() - self.start;
                if self.held() + pending > self.max {
                    return Err(TooLarge(self.max));
                }
                return Ok(None);
            };
            let end = from + pos;
            if self.buf[end] == b'\r' {
                self.skip_lf = true;
            }
            let line_start = self.start;
            self.start = end + 1;
            self.scanned = self.start;
            if let Some(ev) = self.line(line_start, end)? {
                return Ok(Some(ev));
            }
        }
    }

    /// The end of the body: a last line without its terminator still
    /// counts, and so does an event without its closing blank line.
    pub fn finish(&mut self) -> Result<Option<Event>, TooLarge> {
        if let Some(ev) = self.next_event()? {
            return Ok(Some(ev));
        }
        if self.start < self.buf.len() {
            let (s, e) = (self.start, self.buf.len());
            self.start = e;
            self.scanned = e;
            if let Some(ev) = self.line(s, e)? {
                return Ok(Some(ev));
            }
        }
        Ok(self.dispatch())
    }

    /// Bytes of the event being read.
    fn held(&self) -> usize {
        self.event.len() + self.data.len()
    }

    fn line(&mut self, s: usize, e: usize) -> Result<Option<Event>, TooLarge> {
        if s == e {
            return Ok(self.dispatch());
        }
        let line = &self.buf[s..e];
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        if self.held() + value.len() + 1 > self.max {
            return Err(TooLarge(self.max));
        }
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            // id, retry and unknown fields mean nothing to a relay
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = std::mem::take(&mut self.event);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(Event {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

pub type Events = Pin<Box<dyn Stream<Item = Result<Event, UpstreamError>> + Send>>;

/// The events of a body stream. Ends after the body ends, or with one error:
/// the transport failed, or an event passed `max` bytes.
pub fn events<S, E>(bytes: S, max: usize) -> Events
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    struct St<S> {
        bytes: Pin<Box<S>>,
        parser: Parser,
        done: bool,
    }
    let too_large = |TooLarge(max)| {
        UpstreamError::BadBody(format!(
            "an event of the stream is larger than policy.max_event_bytes ({max} bytes)"
        ))
    };
    let st = St {
        bytes: Box::pin(bytes),
        parser: Parser::new(max),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.parser.next_event() {
                Ok(Some(ev)) => return Some((Ok(ev), st)),
                Ok(None) => {}
                Err(e) => {
                    st.done = true;
                    return Some((Err(too_large(e)), st));
                }
            }
            match st.bytes.next().await {
                Some(Ok(chunk)) => st.parser.push(&chunk),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(UpstreamError::MidStream(e.to_string())), st));
                }
                None => {
                    st.done = true;
                    return match st.parser.finish() {
                        Ok(Some(ev)) => Some((Ok(ev), st)),
                        Ok(None) => None,
                        Err(e) => Some((Err(too_large(e)), st)),
                    };
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]], max: usize) -> Result<Vec<Event>, TooLarge> {
        let mut p = Parser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c);
            while let Some(ev) = p.next_event()? {
                out.push(ev);
            }
        }
        while let Some(ev) = p.finish()? {
            out.push(ev);
        }
        Ok(out)
    }

    fn ev(event: &str, data: &str) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn parses_events_across_chunk_boundaries() {
        let text = b"event: a\ndata: {\"x\":1}\n\n: comment\ndata: one\r\ndata:two\r\n\r\ndata: [DONE]\n\n";
        let whole = parse_all(&[text], 1024).unwrap();
        assert_eq!(
            whole,
            vec![ev("a", "{\"x\":1}"), ev("", "one\ntwo"), ev("", "[DONE]")]
        );
        // every split point gives the same events
        for i in 0..text.len() {
            let (a, b) = text.split_at(i);
            assert_eq!(parse_all(&[a, b], 1024).unwrap(), whole, "split at {i}");
        }
        // one byte at a time
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse_all(&bytes, 1024).unwrap(), whole);
    }

    #[test]
    fn a_last_event_without_its_blank_line_counts() {
        assert_eq!(
            parse_all(&[b"data: a\n\ndata: b"], 64).unwrap(),
            vec![ev("", "a"), ev("", "b")]
        );
        assert_eq!(parse_all(&[b"event: x\n\n"], 64).unwrap(), vec![]);
    }

    #[test]
    fn an_endless_line_fails_at_the_limit() {
        let mut p = Parser::new(1000);
        p.push(b"data: ");
        let mut failed = false;
        for _ in 0..100 {
            p.push(&[b'x'; 100]);
            if p.next_event().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        assert!(p.buf.len() <= 1200, "held {} bytes", p.buf.len());
        // many small data lines add up to the limit too
        let many: Vec<u8> = b"data: 0123456789\n".repeat(200);
        assert_eq!(parse_all(&[&many], 1000), Err(TooLarge(1000)));
    }

    #[test]
    fn the_buffer_keeps_only_the_unfinished_line() {
        let mut p = Parser::new(1 << 20);
        for i in 0..10_000 {
            p.push(format!("data: {i}\n\n").as_bytes());
            assert_eq!(p.next_event().unwrap().unwrap().data, i.to_string());
        }
        assert!(p.buf.len() < 64);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;
        use crate::testing::chunked;

        /// Feed `chunks`, checking after each that the parser holds no more
        /// than the limit allows: the unfinished line and the event so far.
        fn parse_bounded(chunks: &[Vec<u8>], max: usize) -> Result<Vec<Event>, TooLarge> {
            let mut p = Parser::new(max);
            let mut out = Vec::new();
            for c in chunks {
                p.push(c);
                while let Some(ev) = p.next_event()? {
                    out.push(ev);
                }
                assert!(p.held() + (p.buf.len() - p.start) <= max);
                assert!(p.buf.len() <= max + c.len() + 1);
            }
            while let Some(ev) = p.finish()? {
                out.push(ev);
            }
            Ok(out)
        }

        fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
            // the bytes that matter to the grammar, and anything else
            let byte = prop_oneof![
                4 => prop::sample::select(&b"data: event:\r\n\n\n\r"[..]),
                1 => any::<u8>(),
            ];
            prop::collection::vec(byte, 0..600)
        }

        proptest! {
            #[test]
            fn any_bytes_any_cuts_never_panic_and_stay_bounded(
                bytes in sse_bytes(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
                max in 1usize..300,
            ) {
                let whole = parse_bounded(std::slice::from_ref(&bytes), max);
                let pieces = parse_bounded(&chunked(bytes, cuts), max);
                // the same events whatever the chunking, up to the limit
                if let (Ok(w), Ok(p)) = (&whole, &pieces) {
                    prop_assert_eq!(w, p);
                }
            }

            #[test]
            fn valid_events_round_trip(
                events in prop::collection::vec(
                    ("[a-z_]{0,8}", prop::collection::vec("[^\r\n]{0,20}", 1..4)),
                    0..8,
                ),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
                crlf in any::<bool>(),
            ) {
                let nl = if crlf { "\r\n" } else { "\n" };
                let mut text = String::new();
                for (name, lines) in &events {
                    if !name.is_empty() {
                        text.push_str(&format!("event: {name}{nl}"));
                    }
                    for l in lines {
                        text.push_str(&format!("data: {l}{nl}"));
                    }
                    text.push_str(nl);
                }
                let want: Vec<Event> = events
                    .iter()
                    .map(|(name, lines)| Event { event: name.clone(), data: lines.join("\n") })
                    .collect();
                let got = parse_bounded(&chunked(text.into_bytes(), cuts), 1 << 20).unwrap();
                prop_assert_eq!(got, want);
            }
        }
    }
}
