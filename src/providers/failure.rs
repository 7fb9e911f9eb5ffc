//! What an upstream's failure means: a transport error (a timeout, or a
//! connection that failed, with its chain of causes), a non-2xx answer (its
//! message, whether the prompt was too long, when to try again) and the part
//! of an error body that is read.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;

use super::call::UpstreamError;
use super::pool::UpBody;

/// How much of an error answer is read: enough for any real error message;
/// the rest is never read (the connection is dropped, not pooled).
pub const ERROR_BODY_MAX: usize = 8 * 1024;

/// A transport failure: a timeout anywhere in its chain of causes, else a
/// failed connection with the whole chain as its message.
pub fn transport(e: &(dyn std::error::Error + 'static)) -> UpstreamError {
    if is_timeout(e) {
        return UpstreamError::Timeout;
    }
    UpstreamError::Connect(error_chain(e))
}

/// Up to `max` bytes of a body; the rest is left unread. A body that fails
/// part way gives what arrived.
pub async fn read_prefix(mut body: UpBody, max: usize) -> Bytes {
    let mut out = Vec::new();
    while out.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(max - out.len());
                    out.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    Bytes::from(out)
}

pub fn status_error(status: u16, headers: &HeaderMap, body: Bytes) -> UpstreamError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let message = parsed
        .as_ref()
        .and_then(crate::api::upstream_error_message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    UpstreamError::Status {
        status,
        context_length: (status == 400 || status == 413)
            && super::call::is_context_length(&message),
        retry_after: retry_after(headers),
        message,
        // passed back to the client as is when its request was wrong
        body: if parsed.is_some() { body } else { Bytes::new() },
    }
}

/// A connect timeout, anywhere in the error's chain.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// `retry-after-ms` (milliseconds) or `retry-after` (seconds) from a response.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_micros((ms * 1000.0) as u64));
        }
    }
    let secs = get("retry-after")?.parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_millis((secs * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reads_retry_after_in_both_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        h.insert("retry-after-ms", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    }
}
