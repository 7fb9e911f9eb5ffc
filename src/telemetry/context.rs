//! A request's place in a trace (W3C Trace Context): the client's
//! `traceparent` continued, or a new trace; the request's span; each
//! attempt's span, derived from the request's and the attempt's number, so
//! the `traceparent` sent upstream and the exported span agree without
//! anything stored per attempt.

use http::{HeaderMap, HeaderValue};

use crate::config::Telemetry;
use crate::header_names::TRACEPARENT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The request's own span.
    pub span: [u8; 8],
    /// Recorded and exported (parent-based: a client's sampled flag decides).
    pub sampled: bool,
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A `traceparent` value: (trace id, parent span, sampled). Version 00's
/// layout; a later version is read by the same layout, as the spec says.
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let _: [u8; 1] = hex_bytes(version)?;
    if version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace: [u8; 16] = hex_bytes(trace)?;
    let span: [u8; 8] = hex_bytes(span)?;
    let flags: [u8; 1] = hex_bytes(flags)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags[0] & 1 == 1))
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let b: [u8; N] = std::array::from_fn(|_| rand::random());
        if b != [0; N] {
            return b;
        }
    }
}

impl TraceCtx {
    /// The request's context when tracing is on (None when it is off).
    pub fn start(headers: &HeaderMap, t: &Telemetry) -> Option<TraceCtx> {
        t.traces_url.as_ref()?;
        let client = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        Some(match client {
            Some((trace_id, parent, sampled)) => TraceCtx {
                trace_id,
                parent: Some(parent),
                span: nonzero(),
                sampled,
            },
            None => TraceCtx {
                trace_id: nonzero(),
                parent: None,
                span: nonzero(),
                sampled: t.sample_ratio >= 1.0 || rand::random::<f64>() < t.sample_ratio,
            },
        })
    }

    /// The span of the request's attempt `number` (1-based).
    pub fn attempt_span(&self, number: u32) -> [u8; 8] {
        let base = u64::from_be_bytes(self.span);
        let id = base ^ u64::from(number).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let id = if id == 0 { base.rotate_left(1) | 1 } else { id };
        id.to_be_bytes()
    }

    /// The `traceparent` attempt `number` sends upstream: its own span, a
    /// child of the request's.
    pub fn traceparent(&self, number: u32) -> HeaderValue {
        let v = format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.attempt_span(number)),
            u8::from(self.sampled)
        );
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_rejects() {
        let (t, s, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s), "00f067aa0ba902b7");
        assert!(sampled);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "nonsense",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let ctx = TraceCtx {
            trace_id: t,
            parent: Some(s),
            span: [1, 2, 3, 4, 5, 6, 7, 8],
            sampled: false,
        };
        let header = ctx.traceparent(2);
        let (t2, s2, sampled2) = parse_traceparent(header.to_str().unwrap()).unwrap();
        assert_eq!((t2, s2, sampled2), (t, ctx.attempt_span(2), false));
        assert_ne!(ctx.attempt_span(1), ctx.attempt_span(2));
        assert_ne!(ctx.attempt_span(1), ctx.span);
    }
}
