//! The in-process `mock` provider: answers with an echo of the last user
//! message and plausible usage, after a configured latency, failing a
//! configured share of calls. For demos, tests and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use base64::Engine;

use super::call::{Completion, EmbedRequest, Embeddings, UpstreamError, UpstreamRequest};
use super::stream::{classify_event, UpstreamStream};
use crate::api::embeddings::Encoding;
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

    /// The configured latency (for the slow share, the slow one), then the
    /// configured share of failures.
    async fn wait_or_fail(&self) -> Result<(), UpstreamError> {
        let s = &self.settings;
        let wait = if s.slow_rate > 0.0 && rand::random::<f64>() < s.slow_rate {
            s.slow
        } else {
            s.latency
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
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
        Ok(())
    }

    /// Deterministic unit vectors: the same model and text give the same
    /// vector, of the asked length (else `MOCK_DIMENSIONS`).
    pub async fn embed(&self, req: EmbedRequest<'_>) -> Result<Embeddings, UpstreamError> {
        self.wait_or_fail().await?;
        let dims = req.dimensions().unwrap_or(MOCK_DIMENSIONS) as usize;
        let input: Value = req
            .body
            .raw("input")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or(Value::Null);
        let texts: Vec<String> = match &input {
            Value::Array(items) if !items.iter().all(Value::is_u64) => {
                items.iter().map(|i| i.to_string()).collect()
            }
            other => vec![other.to_string()],
        };
        let data: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let v = unit_vector(&req.model.upstream, text, dims);
                let embedding = match req.body.encoding {
                    Encoding::Float => json!(v),
                    Encoding::Base64 => {
                        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                    }
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let prompt = tokens(req.body.input_chars);
        let body = json!({
            "object": "list",
            "data": data,
            "model": req.model.upstream,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        });
        Ok(Embeddings {
            body: Bytes::from(body.to_string()),
            usage: Some(Usage {
                prompt,
                ..Usage::default()
            }),
        })
    }

    async fn prepare(&self, req: &UpstreamRequest<'_>) -> Result<Answer, UpstreamError> {
        self.wait_or_fail().await?;
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

/// The mock's vector length when neither the model nor the client sets one.
pub const MOCK_DIMENSIONS: u32 = 8;

/// A unit vector from FNV-1a of (model, text) and a xorshift walk.
fn unit_vector(model: &str, text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in model.bytes().chain([0]).chain(text.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut v: Vec<f32> = (0..dims)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
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
