//! Gateway keys (docs/api.md, authentication): `Authorization: Bearer KEY`,
//! or `x-api-key: KEY` on the client API (Anthropic's clients send it),
//! compared in constant time.

use axum::http::HeaderMap;

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

/// A caller of `/v1/*`.
pub fn client<'a>(cfg: &'a Config, headers: &HeaderMap) -> Result<Caller<'a>, GatewayError> {
    if !cfg.auth_required() {
        return Ok(Caller::Anonymous);
    }
    let key = presented_by_client(headers).ok_or(GatewayError::InvalidApiKey)?;
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
    found.ok_or(GatewayError::InvalidApiKey)
}

/// A caller of `/v1/cascade/*`: the admin key when one is set, else any
/// gateway key. 401 without a valid key, 403 with a chat key.
pub fn admin(cfg: &Config, headers: &HeaderMap) -> Result<(), GatewayError> {
    match &cfg.admin_key {
        Some(admin) => {
            let key = presented(headers).ok_or(GatewayError::InvalidApiKey)?;
            if admin.matches(key) {
                return Ok(());
            }
            match client(cfg, headers) {
                Ok(Caller::Named(_) | Caller::Unnamed) => Err(GatewayError::AdminOnly),
                _ => Err(GatewayError::InvalidApiKey),
            }
        }
        None => client(cfg, headers).map(|_| ()),
    }
}
