//! The scripted upstream's Anthropic side: `POST /v1/messages` answers the
//! same steps as the OpenAI route, shaped like Anthropic's API reference
//! (message objects, error objects, the Messages SSE event sequence).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::upstream::{async_stream, sse_frame, sse_response, Inner, Step, StreamScript};

/// A Messages API answer with one text block.
pub fn message(model: &str, text: &str, input: u64, output: u64) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": output}
    })
}

/// Anthropic's error type for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn error_json(kind: &str, message: &str) -> String {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})
        .to_string()
}

fn error(status: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        error_json(error_type(status), message),
    )
        .into_response()
}

pub async fn respond(inner: Arc<Inner>, model: &str, step: Step) -> Response {
    match step {
        Step::Ok => axum::Json(message(model, &format!("ok from {model}"), 10, 5)).into_response(),
        Step::Text(t, p, c) => axum::Json(message(model, t, p, c)).into_response(),
        Step::Status(code, msg) => error(code, msg),
        Step::RateLimited(headers) => {
            let mut resp = error(429, "Number of request tokens has exceeded your rate limit");
            for (k, v) in headers {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
        Step::ErrorIn200 => (
            StatusCode::OK,
            [("content-type", "application/json")],
            error_json("overloaded_error", "Overloaded"),
        )
            .into_response(),
        Step::ContextLength => error(400, "prompt is too long: 210000 tokens > 200000 maximum"),
        Step::Delay(ms, inner_step) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Box::pin(respond(inner, model, *inner_step)).await
        }
        Step::Stream(script) => stream(inner, model, script),
        // not API-specific: hang, garbage, reset, verbatim bodies and events
        other => Box::pin(super::upstream::respond(inner, model, other)).await,
    }
}

fn event(name: &str, data: Value) -> Bytes {
    sse_frame(name, &data)
}

/// The Messages event sequence for a scripted stream: message_start,
/// content_block_start, text deltas, content_block_stop, message_delta,
/// message_stop. Comments become pings.
fn stream(inner: Arc<Inner>, model: &str, script: StreamScript) -> Response {
    let model = model.to_string();
    let (input, output) = script.usage.unwrap_or((0, 0));
    let stop = event("message_stop", json!({"type": "message_stop"}));
    let last = stop.clone();
    let s = async_stream(move |tx| async move {
        let start = [
            event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant",
                    "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input, "output_tokens": 1}}}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
        ];
        for _ in 0..script.comments {
            tx.send(Ok(event("ping", json!({"type": "ping"}))))
                .await
                .ok();
        }
        let mut started = false;
        if script.role_first {
            for e in &start {
                tx.send(Ok(e.clone())).await.ok();
            }
            started = true;
        }
        for (delay, text) in &script.chunks {
            if *delay > 0 {
                tokio::time::sleep(Duration::from_millis(*delay)).await;
            }
            if !started {
                for e in &start {
                    tx.send(Ok(e.clone())).await.ok();
                }
                started = true;
            }
            let delta = event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            );
            if tx.send(Ok(delta)).await.is_err() {
                return;
            }
        }
        if script.cut {
            tx.send(Err(std::io::Error::other("cut"))).await.ok();
            return;
        }
        let end = [
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": output}}),
            ),
            stop,
        ];
        for e in end {
            tx.send(Ok(e)).await.ok();
        }
    });
    sse_response(inner, s, last)
}
