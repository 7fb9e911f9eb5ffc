//! The in-process `mock` provider: answers with an echo of the last user
//! message and plausible usage, after a configured latency, failing a
//! configured share of calls. For demos, tests and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::call::{Completion, UpstreamError, UpstreamRequest};
use super::stream::{classify_event, UpstreamStream};
use crate::config::MockSettings;
use crate::cost::Usage;

pub struct MockClient {
    settings: MockSettings,
    seq: AtomicU64,
}

struct Answer {
    id: String,
    model: String,
    created: u64,
    text: String,
    usage: Usage,
}

impl MockClient {
    pub fn new(settings: MockSettings) -> Self {
        Self {
            settings,
            seq: AtomicU64::new(0),
        }
    }

    async fn prepare(&self, req: &UpstreamRequest<'_>) -> Result<Answer, UpstreamError> {
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        if self.settings.fail_rate > 0.0 && rand::random::<f64>() < self.settings.fail_rate {
            return Err(UpstreamError::Status {
                status: self.settings.fail_status,
                message: "mock provider: simulated failure".into(),
                retry_after: None,
                context_length: false,
                body: Bytes::new(),
            });
        }
        let messages: Vec<Value> = req
            .body
            .raw("messages")
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let prompt_chars: usize = messages.iter().map(|m| text_of(m).chars().count()).sum();
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(text_of)
            .unwrap_or_default();
        let text = format!("[{}] {}", req.model.name, last_user);
        let usage = Usage {
            prompt: tokens(prompt_chars) + 4 * messages.len() as u64,
            completion: tokens(text.chars().count()),
            ..Usage::default()
        };
        Ok(Answer {
            id: format!("chatcmpl-mock-{}", self.seq.fetch_add(1, Ordering::Relaxed)),
            model: req.model.upstream.clone(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            text,
            usage,
        })
    }

    pub async fn complete(&self, req: UpstreamRequest<'_>) -> Result<Completion, UpstreamError> {
        let a = self.prepare(&req).await?;
        let body = json!({
            "id": a.id,
            "object": "chat.completion",
            "created": a.created,
            "model": a.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": a.text},
                "finish_reason": "stop"
            }],
            "usage": usage_json(&a.usage),
        });
        Ok(Completion {
            body: Bytes::from(body.to_string()),
            usage: Some(a.usage),
        })
    }

    pub async fn stream(&self, req: UpstreamRequest<'_>) -> Result<UpstreamStream, UpstreamError> {
        let a = self.prepare(&req).await?;
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": a.id, "object": "chat.completion.chunk", "created": a.created, "model": a.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
            })
            .to_string()
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        for piece in a.text.split_inclusive(' ') {
            events.push(chunk(json!({ "content": piece }), Value::Null));
        }
        events.push(chunk(json!({}), json!("stop")));
        events.push(
            json!({
                "id": a.id, "object": "chat.completion.chunk", "created": a.created, "model": a.model,
                "choices": [], "usage": usage_json(&a.usage)
            })
            .to_string(),
        );
        events.push("[DONE]".into());
        let delay = self.settings.chunk_delay;
        let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(
            move |(i, data)| async move {
                // the first chunk goes at once (latency was already waited)
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                classify_event(&data)
            },
        );
        Ok(Box::pin(stream))
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
    })
}

/// About four characters a token, at least one.
fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// The text of a message: a string, or the text parts of a content list.
fn text_of(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}
