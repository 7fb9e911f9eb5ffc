//! `mid_stream = "continue"` (docs/api.md, streaming): what a committed
//! stream keeps so that, when it breaks, another model can be asked to
//! continue its answer, and how that model's chunks are made to look like
//! the rest of the stream.

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::ChatBody;
use crate::config::ModelId;
use crate::cost::{Usage, Usd};

/// The request and the answer so far, for a continuation.
pub struct Splice {
    pub body: ChatBody,
    pub headers: HeaderMap,
    pub request_id: Option<HeaderValue>,
    /// The answer's content so far (no reasoning).
    pub text: String,
    /// A tool-call delta was sent: a continuation could not pick it up.
    tool_calls: bool,
    /// The first chunk's `id`, `model` and `created`.
    ids: Map<String, Value>,
    /// The stream now relays a continuation: its chunks are rewritten.
    pub rewriting: bool,
}

/// The legs of a continued stream before the one now relayed.
#[derive(Clone, Copy, Debug)]
pub struct Prior {
    /// What they cost (each at its model's prices, fees included).
    pub cost: Usd,
    pub usage: Usage,
    /// Some leg's usage was estimated.
    pub estimated: bool,
    /// The leg now relayed: its tier (index into the chain's targets) and model.
    pub target: usize,
    pub model: ModelId,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    choices: Vec<ChoiceProbe>,
}

#[derive(Deserialize)]
struct ChoiceProbe {
    #[serde(default)]
    delta: Option<DeltaProbe>,
}

#[derive(Deserialize)]
struct DeltaProbe {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

const IDS: [&str; 3] = ["id", "model", "created"];

impl Splice {
    /// For a stream that may be continued: one answer (`n` <= 1).
    pub fn new(
        body: ChatBody,
        headers: &HeaderMap,
        request_id: Option<HeaderValue>,
    ) -> Option<Splice> {
        body.single_choice().then(|| Splice {
            body,
            headers: headers.clone(),
            request_id,
            text: String::new(),
            tool_calls: false,
            ids: Map::new(),
            rewriting: false,
        })
    }

    /// Whether a break now can be continued: there is text to continue and
    /// no tool call was started.
    pub fn can_continue(&self) -> bool {
        !self.tool_calls && !self.text.trim().is_empty()
    }

    /// Note what a chunk sent to the client holds.
    pub fn observe(&mut self, data: &[u8]) {
        if self.ids.is_empty() {
            if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(data) {
                self.ids = IDS
                    .iter()
                    .filter_map(|&k| o.get(k).map(|v| (k.to_owned(), v.clone())))
                    .collect();
            }
        }
        let Ok(probe) = serde_json::from_slice::<Probe>(data) else {
            return;
        };
        for delta in probe.choices.into_iter().filter_map(|c| c.delta) {
            if let Some(text) = delta.content {
                self.text.push_str(&text);
            }
            if delta.tool_calls.is_some_and(|t| !t.is_null()) {
                self.tool_calls = true;
            }
        }
    }

    /// A continuation's chunk as the client sees it: the original `id`,
    /// `model` and `created`, no reasoning, no role; `None` when nothing is
    /// left of it.
    pub fn rewrite(&self, data: &[u8]) -> Option<Bytes> {
        let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(data) else {
            return Some(Bytes::copy_from_slice(data));
        };
        for (k, v) in &self.ids {
            chunk.insert(k.clone(), v.clone());
        }
        let mut keep = chunk.get("usage").is_some_and(|u| !u.is_null());
        if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
            for choice in choices.iter_mut() {
                if let Some(Value::Object(delta)) = choice.get_mut("delta") {
                    for k in ["reasoning_content", "reasoning", "role"] {
                        delta.remove(k);
                    }
                    keep |= delta.values().any(|v| !v.is_null());
                }
                keep |= choice.get("finish_reason").is_some_and(|f| !f.is_null());
            }
        }
        keep.then(|| Bytes::from(Value::Object(chunk).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splice() -> Splice {
        let body = ChatBody::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        )
        .unwrap();
        Splice::new(body, &HeaderMap::new(), None).unwrap()
    }

    #[test]
    fn continuation_chunks_take_the_original_ids_and_lose_reasoning() {
        let mut s = splice();
        s.observe(br#"{"id":"a","model":"first","created":1,"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#);
        s.observe(br#"{"id":"a","model":"first","created":1,"choices":[{"index":0,"delta":{"content":"lo"}}]}"#);
        assert_eq!(s.text, "Hello");
        assert!(s.can_continue());
        let out = s
            .rewrite(br#"{"id":"b","model":"second","created":2,"choices":[{"index":0,"delta":{"content":" world","reasoning_content":"hm"}}]}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "a");
        assert_eq!(v["model"], "first");
        assert_eq!(v["created"], 1);
        assert_eq!(
            v["choices"][0]["delta"],
            serde_json::json!({"content": " world"})
        );
        // reasoning or role alone: nothing left to send
        let role = br#"{"id":"b","choices":[{"index":0,"delta":{"role":"assistant"}}]}"#;
        assert!(s.rewrite(role).is_none());
        let thinking = br#"{"id":"b","choices":[{"index":0,"delta":{"reasoning":"x"}}]}"#;
        assert!(s.rewrite(thinking).is_none());
        let finish = br#"{"id":"b","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert!(s.rewrite(finish).is_some());
    }

    #[test]
    fn a_started_tool_call_cannot_be_continued() {
        let mut s = splice();
        s.observe(br#"{"choices":[{"delta":{"content":"x","tool_calls":[{"index":0}]}}]}"#);
        assert!(!s.can_continue());
    }

    #[test]
    fn several_answers_are_never_continued() {
        let body =
            ChatBody::parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2}"#)
                .unwrap();
        assert!(Splice::new(body, &HeaderMap::new(), None).is_none());
    }
}
