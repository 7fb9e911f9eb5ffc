//! GatewayError: the one place that picks a status and builds the error JSON
//! for everything the gateway itself decides.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::api::error_body;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// A parameter named at run time (`input[3].type`), or one the gateway
    /// cannot honour (`code` `unsupported_parameter`).
    #[error("{message}")]
    BadParam {
        message: String,
        param: String,
        code: &'static str,
    },
    #[error("missing or invalid API key")]
    InvalidApiKey,
    #[error("this key may not use the admin API")]
    AdminOnly,
    #[error("{0}")]
    TierNotAllowed(String),
    #[error("{0}")]
    ModelNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("the request body exceeds {0} bytes")]
    RequestTooLarge(usize),
    #[error("the request body did not arrive within server.request_timeout_ms")]
    RequestTimeout,
    /// A connection beyond `server.max_connections` asked for something
    /// other than the probes or the metrics.
    #[error("the gateway is at server.max_connections; this connection serves /healthz, /readyz and /metrics only")]
    Saturated,
    #[error("{0}")]
    NoEligibleTier(String),
    #[error("{0}")]
    BudgetExceeded(String),
    /// A 400/413/422 from the first tier: the client's request is wrong, and
    /// the upstream's answer goes back as is.
    #[error("the upstream rejected the request: {message}")]
    Rejected {
        status: StatusCode,
        message: String,
        body: bytes::Bytes,
    },
    #[error("{message}")]
    AllModelsFailed {
        status: StatusCode,
        message: String,
        attempts: Value,
        retry_after: Option<Duration>,
    },
}

impl GatewayError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidRequest { .. } | GatewayError::BadParam { .. } => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            GatewayError::AdminOnly | GatewayError::TierNotAllowed(_) => StatusCode::FORBIDDEN,
            GatewayError::ModelNotFound(_) | GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Saturated => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NoEligibleTier(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::BudgetExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::AllModelsFailed { status, .. }
            | GatewayError::Rejected { status, .. } => *status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { .. } | GatewayError::Rejected { .. } => {
                "invalid_request"
            }
            GatewayError::BadParam { code, .. } => code,
            GatewayError::InvalidApiKey => "invalid_api_key",
            GatewayError::AdminOnly => "admin_key_required",
            GatewayError::TierNotAllowed(_) => "tier_not_allowed",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::RequestTooLarge(_) => "request_too_large",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::Saturated => "overloaded",
            GatewayError::NoEligibleTier(_) => "no_eligible_tier",
            GatewayError::BudgetExceeded(_) => "budget_exceeded",
            GatewayError::AllModelsFailed { .. } => "all_models_failed",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            GatewayError::InvalidApiKey => "authentication_error",
            GatewayError::AdminOnly | GatewayError::TierNotAllowed(_) => "permission_error",
            GatewayError::ModelNotFound(_) | GatewayError::NotFound(_) => "not_found_error",
            GatewayError::BudgetExceeded(_) => "rate_limit_error",
            GatewayError::AllModelsFailed { .. } => "upstream_error",
            GatewayError::RequestTimeout => "timeout_error",
            GatewayError::Saturated => "overloaded_error",
            _ => "invalid_request_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. } => *param,
            GatewayError::BadParam { param, .. } => Some(param),
            GatewayError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }
}

impl GatewayError {
    /// The error in Anthropic's shape (the Messages API): `type: "error"`,
    /// the error type by status; the gateway's `code` (and `attempts`) kept
    /// as extra fields. An upstream's own Anthropic error goes back as is.
    pub fn into_anthropic_response(self) -> Response {
        let status = self.status();
        let mut body = match &self {
            GatewayError::Rejected { body, message, .. } => {
                match serde_json::from_slice::<Value>(body) {
                    Ok(v) if v["type"] == "error" => v,
                    _ => crate::api::messages::error_body(status.as_u16(), message, self.code()),
                }
            }
            _ => crate::api::messages::error_body(status.as_u16(), &self.to_string(), self.code()),
        };
        let mut retry_after = None;
        if let GatewayError::AllModelsFailed {
            attempts,
            retry_after: ra,
            ..
        } = self
        {
            body["error"]["attempts"] = attempts;
            retry_after = ra;
        }
        finish((status, Json(body)).into_response(), retry_after)
    }
}

/// `x-should-retry: false` (the gateway has retried already: an SDK must
/// not multiply its attempts) and the Retry-After when one applies.
fn finish(mut resp: Response, retry_after: Option<Duration>) -> Response {
    let headers = resp.headers_mut();
    headers.insert(
        crate::header_names::SHOULD_RETRY,
        HeaderValue::from_static("false"),
    );
    if let Some(ra) = retry_after {
        // whole seconds, rounded up, at least 1
        let secs = ra.as_millis().div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            headers.insert("retry-after", v);
        }
    }
    resp
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let GatewayError::Rejected { body, .. } = &self {
            if !body.is_empty() {
                let mut resp = (status, body.clone()).into_response();
                resp.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp.headers_mut().insert(
                    crate::header_names::SHOULD_RETRY,
                    HeaderValue::from_static("false"),
                );
                return resp;
            }
        }
        let mut body = error_body(&self.to_string(), self.kind(), self.param(), self.code());
        let mut retry_after = None;
        if let GatewayError::AllModelsFailed {
            attempts,
            retry_after: ra,
            ..
        } = self
        {
            body["error"]["attempts"] = attempts;
            retry_after = ra;
        }
        finish((status, Json(body)).into_response(), retry_after)
    }
}
