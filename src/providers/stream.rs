//! Server-sent events from OpenAI-compatible upstreams: each event is kept as
//! the bytes to forward and classified just enough for the chain to decide
//! when the stream has started, when it failed, and what it cost.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use super::call::UpstreamError;
use crate::api::WireUsage;
use crate::cost::Usage;

pub type UpstreamStream = Pin<Box<dyn Stream<Item = Result<Chunk, UpstreamError>> + Send>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// Role-only or otherwise empty: does not start the stream.
    Preamble,
    /// A content, tool-call or reasoning delta, or a finish chunk.
    Content,
    /// Only usage (no choices): forwarded when the client asked for it.
    UsageOnly,
    /// `data: [DONE]`, or a body that ended cleanly after a finish chunk.
    Done,
    /// Not a readable event: before the first content it fails the attempt,
    /// after it the event is dropped and counted.
    Malformed,
}

#[derive(Clone, Debug)]
pub struct Chunk {
    /// The event's `data` as sent by the upstream (or translated).
    pub data: Bytes,
    pub kind: ChunkKind,
    pub usage: Option<Usage>,
    /// Characters of generated text in this chunk, for estimating usage.
    pub text_len: usize,
    /// A choice carries a `finish_reason`: the answer is complete.
    pub finish: bool,
}

impl Chunk {
    fn bare(data: Bytes, kind: ChunkKind) -> Chunk {
        Chunk {
            data,
            kind,
            usage: None,
            text_len: 0,
            finish: false,
        }
    }

    /// The end of a stream whose body ended cleanly after a finish chunk.
    pub fn done() -> Chunk {
        Chunk::bare(Bytes::from_static(b"[DONE]"), ChunkKind::Done)
    }

    /// An event that could not be read.
    pub fn malformed(data: &str) -> Chunk {
        Chunk::bare(
            Bytes::copy_from_slice(data.as_bytes()),
            ChunkKind::Malformed,
        )
    }
}

#[derive(Deserialize)]
struct EventProbe {
    #[serde(default)]
    choices: Vec<ChoiceProbe>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceProbe {
    #[serde(default)]
    delta: Option<DeltaProbe>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaProbe {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<serde_json::Value>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

/// Classify one SSE `data` payload.
pub fn classify_event(data: &str) -> Result<Chunk, UpstreamError> {
    let bytes = Bytes::copy_from_slice(data.as_bytes());
    if data.trim() == "[DONE]" {
        return Ok(Chunk::bare(bytes, ChunkKind::Done));
    }
    let Ok(probe) = serde_json::from_str::<EventProbe>(data) else {
        return Ok(Chunk::bare(bytes, ChunkKind::Malformed));
    };
    if let Some(err) = probe.error.filter(|e| !e.is_null()) {
        let msg = crate::api::upstream_error_message(&serde_json::json!({ "error": err }))
            .unwrap_or_else(|| "an error event".into());
        return Err(UpstreamError::ErrorInBody(msg));
    }
    let mut content = false;
    let mut finish = false;
    let mut text_len = 0;
    for choice in &probe.choices {
        if let Some(reason) = choice.finish_reason.as_deref() {
            if reason == "error" {
                return Err(UpstreamError::ErrorInBody(
                    "the stream finished with finish_reason \"error\"".into(),
                ));
            }
            content = true;
            finish = true;
        }
        if let Some(d) = &choice.delta {
            for text in [&d.content, &d.reasoning_content, &d.reasoning]
                .into_iter()
                .flatten()
            {
                if !text.is_empty() {
                    content = true;
                    text_len += text.chars().count();
                }
            }
            if d.tool_calls.as_ref().is_some_and(|t| !t.is_null()) {
                content = true;
                text_len += d
                    .tool_calls
                    .as_ref()
                    .map(|t| t.to_string().len())
                    .unwrap_or(0);
            }
        }
    }
    let usage = probe.usage.as_ref().and_then(WireUsage::usage);
    let kind = if content {
        ChunkKind::Content
    } else if probe.choices.is_empty() && usage.is_some() {
        ChunkKind::UsageOnly
    } else {
        ChunkKind::Preamble
    };
    Ok(Chunk {
        data: bytes,
        kind,
        usage,
        text_len,
        finish,
    })
}

/// Turn an upstream SSE byte stream into classified chunks. Ends after
/// `[DONE]`, or when the body ends cleanly after a chunk with a
/// `finish_reason` (some servers never send `[DONE]`); any other end, or a
/// transport error, is an interruption. An event larger than `max_event`
/// bytes fails the stream.
pub fn from_sse<S, E>(bytes: S, max_event: usize) -> UpstreamStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let events = super::sse::events(bytes, max_event);
    // (events, ended, a finish chunk seen)
    let state = (events, false, false);
    let stream = futures_util::stream::unfold(state, |(mut events, ended, finished)| async move {
        if ended {
            return None;
        }
        loop {
            match events.next().await {
                None if finished => return Some((Ok(Chunk::done()), (events, true, true))),
                None => {
                    let err = UpstreamError::MidStream(
                        "the upstream closed the stream before [DONE]".into(),
                    );
                    return Some((Err(err), (events, true, finished)));
                }
                Some(Err(e)) => return Some((Err(e), (events, true, finished))),
                Some(Ok(ev)) => {
                    if ev.data.is_empty() {
                        continue;
                    }
                    let chunk = classify_event(&ev.data);
                    let (ended, finish) = match &chunk {
                        Ok(c) => (c.kind == ChunkKind::Done, c.finish),
                        Err(_) => (true, false),
                    };
                    return Some((chunk, (events, ended, finished || finish)));
                }
            }
        }
    });
    Box::pin(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_openai_chunks() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(classify_event(role).unwrap().kind, ChunkKind::Preamble);
        let text = r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#;
        let c = classify_event(text).unwrap();
        assert_eq!((c.kind, c.text_len), (ChunkKind::Content, 3));
        let reasoning = r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#;
        assert_eq!(classify_event(reasoning).unwrap().kind, ChunkKind::Content);
        let or_reasoning = r#"{"choices":[{"index":0,"delta":{"reasoning":"hmm"}}]}"#;
        assert_eq!(
            classify_event(or_reasoning).unwrap().kind,
            ChunkKind::Content
        );
        let tool = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#;
        assert_eq!(classify_event(tool).unwrap().kind, ChunkKind::Content);
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(classify_event(finish).unwrap().kind, ChunkKind::Content);
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
        let u = classify_event(usage).unwrap();
        assert_eq!(u.kind, ChunkKind::UsageOnly);
        assert_eq!(u.usage.unwrap().completion, 7);
        assert_eq!(classify_event("[DONE]").unwrap().kind, ChunkKind::Done);
    }

    #[test]
    fn errors_in_streams_are_failures() {
        assert!(matches!(
            classify_event(r#"{"error":{"message":"overloaded"}}"#),
            Err(UpstreamError::ErrorInBody(_))
        ));
        assert!(matches!(
            classify_event(r#"{"choices":[{"delta":{},"finish_reason":"error"}]}"#),
            Err(UpstreamError::ErrorInBody(_))
        ));
        // not JSON: the caller decides (fails before commit, dropped after)
        assert_eq!(classify_event("{nope").unwrap().kind, ChunkKind::Malformed);
    }
}
