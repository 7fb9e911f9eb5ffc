//! Gateway keys (docs/api.md, authentication): `Authorization: Bearer KEY`,
//! or `x-api-key: KEY` on the client API (Anthropic's clients send it);
//! the admin endpoints and the page also take HTTP Basic with the key as
//! the password (what a browser sends). Compared in constant time.

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::config::{Config, NamedKey};
use crate::error::GatewayError;

/// Who is calling.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    /// No keys are configured.
    Anonymous,
    /// An unnamed key from `server.api_keys_env`.
    Unnamed,
    Named(&'a NamedKey),
}

impl<'a> Caller<'a> {
    pub fn named(self) -> Option<&'a NamedKey> {
        match self {
            Caller::Named(k) => Some(k),
            _ => None,
        }
    }

    pub fn label(self) -> &'a str {
        match self {
            Caller::Named(k) => &k.name,
            Caller::Anonymous => "-",
            Caller::Unnamed => "default",
        }
    }
}

fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let v = v
        .strip_prefix(b"Bearer ")
        .or_else(|| v.strip_prefix(b"bearer "))?;
    Some(v.trim_ascii())
}

/// A client's key: `Authorization: Bearer`, else `x-api-key`.
fn presented_by_client(headers: &HeaderMap) -> Option<&[u8]> {
    presented(headers).or_else(|| {
        let v = headers.get(&crate::header_names::X_API_KEY)?.as_bytes();
        Some(v.trim_ascii()).filter(|v| !v.is_empty())
    })
}

/// `Authorization: Basic base64(user:password)`: the password.
fn basic_password(headers: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine;
    let v = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let v = v
        .strip_prefix(b"Basic ")
        .or_else(|| v.strip_prefix(b"basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// A caller of `/v1/*`.
pub fn client<'a>(cfg: &'a Config, headers: &HeaderMap) -> Result<Caller<'a>, GatewayError> {
    if !cfg.auth_required() {
        return Ok(Caller::Anonymous);
    }
    let key = presented_by_client(headers).ok_or(GatewayError::InvalidApiKey)?;
    caller(cfg, key).ok_or(GatewayError::InvalidApiKey)
}

/// Whose gateway key `key` is.
fn caller<'a>(cfg: &'a Config, key: &[u8]) -> Option<Caller<'a>> {
    // check every key, so timing does not tell which matched
    let mut found = None;
    for k in &cfg.keys {
        if k.key.matches(key) && found.is_none() {
            found = Some(Caller::Named(k));
        }
    }
    for k in &cfg.gateway_keys {
        if k.matches(key) && found.is_none() {
            found = Some(Caller::Unnamed);
        }
    }
    found
}

/// A caller of `/v1/cascade/*` and `/ui`: the admin key when one is set,
/// else any gateway key (open when there is none), as a Bearer token or as
/// the password of HTTP Basic. 401 without a valid key, 403 with a chat key.
pub fn admin(cfg: &Config, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let basic = basic_password(headers);
    let refuse = |e: GatewayError| Err(Box::new(refusal(e)));
    match &cfg.admin_key {
        Some(admin) => {
            let Some(key) = presented(headers).or(basic.as_deref()) else {
                return refuse(GatewayError::InvalidApiKey);
            };
            if admin.matches(key) {
                return Ok(());
            }
            match caller(cfg, key) {
                Some(_) => refuse(GatewayError::AdminOnly),
                None => refuse(GatewayError::InvalidApiKey),
            }
        }
        None if !cfg.auth_required() => Ok(()),
        None => match presented_by_client(headers).or(basic.as_deref()) {
            Some(key) if caller(cfg, key).is_some() => Ok(()),
            _ => refuse(GatewayError::InvalidApiKey),
        },
    }
}

/// The admin endpoints' refusal: a 401 asks a browser for HTTP Basic.
fn refusal(e: GatewayError) -> Response {
    let unauthorized = matches!(e, GatewayError::InvalidApiKey);
    let mut resp = e.into_response();
    if unauthorized {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cascade\", charset=\"UTF-8\""),
        );
    }
    resp
}
