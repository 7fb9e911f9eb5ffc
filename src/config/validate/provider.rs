//! `[providers.NAME]`: the kind, the URL, the key and how it is sent, extra
//! headers, and the way out (a proxy, trusted certificates).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::checker::Checker;
use crate::config::raw::RawProvider;
use crate::config::types::*;
use crate::secret::Secret;

pub(super) fn provider(c: &mut Checker, name: &str, p: &RawProvider, env: &Env) -> Provider {
    let key = format!("providers.{name}");
    c.name(&key, name);
    let mock_only = [
        ("latency_ms", p.latency_ms.is_some()),
        ("chunk_delay_ms", p.chunk_delay_ms.is_some()),
        ("fail_rate", p.fail_rate.is_some()),
        ("fail_status", p.fail_status.is_some()),
        ("slow_rate", p.slow_rate.is_some()),
        ("slow_ms", p.slow_ms.is_some()),
    ];
    let kind = match p.kind.as_str() {
        "openai" => ProviderKind::OpenAi,
        "anthropic" => ProviderKind::Anthropic,
        "mock" => {
            let fail_rate = p.fail_rate.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&fail_rate) {
                c.err(format!("{key}.fail_rate"), "must be between 0 and 1");
            }
            let slow_rate = p.slow_rate.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&slow_rate) {
                c.err(format!("{key}.slow_rate"), "must be between 0 and 1");
            }
            let fail_status = p.fail_status.unwrap_or(503);
            if !(400..=599).contains(&fail_status) {
                c.err(
                    format!("{key}.fail_status"),
                    "must be an HTTP error status (400-599)",
                );
            }
            ProviderKind::Mock(MockSettings {
                latency: c.ms(&format!("{key}.latency_ms"), p.latency_ms.unwrap_or(0)),
                chunk_delay: c.ms(
                    &format!("{key}.chunk_delay_ms"),
                    p.chunk_delay_ms.unwrap_or(0),
                ),
                fail_rate,
                fail_status: fail_status.clamp(400, 599) as u16,
                slow_rate,
                slow: c.ms(&format!("{key}.slow_ms"), p.slow_ms.unwrap_or(0)),
            })
        }
        other => {
            c.err(
                format!("{key}.kind"),
                format!("unknown kind {other:?} (openai | anthropic | mock)"),
            );
            ProviderKind::Mock(MockSettings {
                latency: Duration::ZERO,
                chunk_delay: Duration::ZERO,
                fail_rate: 0.0,
                fail_status: 503,
                slow_rate: 0.0,
                slow: Duration::ZERO,
            })
        }
    };
    if p.kind != "mock" {
        for (field, set) in mock_only {
            if set {
                c.err(
                    format!("{key}.{field}"),
                    "only providers of kind \"mock\" take this key",
                );
            }
        }
    }
    let enabled = p.enabled.unwrap_or(true);
    let base_url = match (&kind, &p.base_url) {
        (_, Some(url)) => {
            let url = url.trim_end_matches('/').to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                c.err(
                    format!("{key}.base_url"),
                    format!("{url:?} is not an http(s) URL"),
                );
            }
            url
        }
        (ProviderKind::Anthropic, None) => "https://api.anthropic.com".into(),
        (ProviderKind::Mock(_), None) => String::new(),
        (ProviderKind::OpenAi, None) => {
            c.err(format!("{key}.base_url"), "required for kind \"openai\"");
            String::new()
        }
    };
    let secret = match (&p.api_key_env, &p.api_key_file) {
        (Some(_), Some(_)) => {
            c.err(&key, "set api_key_env or api_key_file, not both");
            None
        }
        (Some(var), None) if enabled => c.secret_from_env(&format!("{key}.api_key_env"), var, env),
        (None, Some(file)) if enabled => match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
            Ok(_) => {
                c.err(format!("{key}.api_key_file"), format!("{file} is empty"));
                None
            }
            Err(e) => {
                c.err(
                    format!("{key}.api_key_file"),
                    format!("cannot read {file}: {e}"),
                );
                None
            }
        },
        _ => None,
    };
    let configured_key = p.api_key_env.is_some() || p.api_key_file.is_some();
    let auth = match p.auth.as_deref() {
        None if configured_key => Auth::Bearer,
        None => Auth::None,
        Some("bearer") => Auth::Bearer,
        Some("api-key") => Auth::ApiKey,
        Some("x-api-key") => Auth::XApiKey,
        Some("none") => Auth::None,
        Some(other) => {
            c.err(
                format!("{key}.auth"),
                format!("unknown auth {other:?} (bearer | api-key | x-api-key | none)"),
            );
            Auth::None
        }
    };
    if auth != Auth::None && !configured_key {
        c.err(
            format!("{key}.auth"),
            "needs a key: set api_key_env or api_key_file",
        );
    }
    let proxy = if matches!(kind, ProviderKind::Mock(_)) || base_url.is_empty() {
        None
    } else {
        proxy(c, &key, p.proxy.as_deref(), &base_url, env)
    };
    Provider {
        name: name.to_string(),
        kind,
        host: url::Url::parse(&base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string)),
        base_url,
        key: secret,
        auth,
        query: p
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        headers: headers(c, &key, &p.headers),
        connect_timeout: c.ms(
            &format!("{key}.connect_timeout_ms"),
            p.connect_timeout_ms.unwrap_or(3000),
        ),
        stream_usage: p.stream_usage.unwrap_or(true),
        enabled,
        proxy,
        ca_file: p.ca_file.as_ref().and_then(|f| ca_file(c, &key, f)),
    }
}

/// The provider's proxy: its own `proxy` (`none`: direct), else the
/// environment's for its base URL (`NO_PROXY` honoured).
fn proxy(
    c: &mut Checker,
    key: &str,
    own: Option<&str>,
    base_url: &str,
    env: &Env,
) -> Option<Proxy> {
    let field = format!("{key}.proxy");
    let url = match own.map(str::trim) {
        Some("none") => return None,
        Some(url) => url.to_string(),
        None => {
            let var = |names: [&str; 2]| {
                names
                    .iter()
                    .find_map(|n| env.get(*n).filter(|v| !v.trim().is_empty()).cloned())
                    .unwrap_or_default()
            };
            let matcher = hyper_util::client::proxy::matcher::Matcher::builder()
                .all(var(["ALL_PROXY", "all_proxy"]))
                .http(var(["HTTP_PROXY", "http_proxy"]))
                .https(var(["HTTPS_PROXY", "https_proxy"]))
                .no(var(["NO_PROXY", "no_proxy"]))
                .build();
            let uri: http::Uri = base_url.parse().ok()?;
            // the matcher says whether (NO_PROXY); the variable says where,
            // with its credentials (the matcher's URI has them stripped)
            matcher.intercept(&uri)?;
            let own = if base_url.starts_with("https://") {
                var(["HTTPS_PROXY", "https_proxy"])
            } else {
                var(["HTTP_PROXY", "http_proxy"])
            };
            let url = if own.is_empty() {
                var(["ALL_PROXY", "all_proxy"])
            } else {
                own
            };
            let url = url.trim().to_string();
            if url.contains("://") {
                url
            } else {
                format!("http://{url}")
            }
        }
    };
    let parsed = match url::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            c.err(field, format!("not a proxy URL: {e}"));
            return None;
        }
    };
    if parsed.scheme() != "http" {
        c.err(
            field,
            format!(
                "proxy scheme {:?} is not supported: use http://host:port (TLS upstreams are tunnelled through it)",
                parsed.scheme()
            ),
        );
        return None;
    }
    let Some(host) = parsed.host_str() else {
        c.err(field, "the proxy URL has no host");
        return None;
    };
    let credentials = (!parsed.username().is_empty()).then(|| {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        Secret::new(&format!(
            "{}:{}",
            decode(parsed.username()),
            decode(parsed.password().unwrap_or(""))
        ))
    });
    Some(Proxy {
        uri: format!(
            "http://{host}:{}",
            parsed.port_or_known_default().unwrap_or(80)
        ),
        credentials,
    })
}

/// A PEM file with at least one certificate.
fn ca_file(c: &mut Checker, key: &str, file: &str) -> Option<PathBuf> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let field = format!("{key}.ca_file");
    match CertificateDer::pem_file_iter(file) {
        Ok(certs) => match certs.collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Some(PathBuf::from(file)),
            Ok(_) => {
                c.err(field, format!("{file} holds no PEM certificate"));
                None
            }
            Err(e) => {
                c.err(field, format!("{file}: {e}"));
                None
            }
        },
        Err(e) => {
            c.err(field, format!("cannot read {file}: {e}"));
            None
        }
    }
}

fn headers(
    c: &mut Checker,
    key: &str,
    raw: &BTreeMap<String, String>,
) -> Vec<(HeaderName, HeaderValue)> {
    raw.iter()
        .filter_map(|(name, value)| {
            let n = HeaderName::try_from(name.as_str());
            let v = HeaderValue::try_from(value.as_str());
            match (n, v) {
                (Ok(n), Ok(v)) => Some((n, v)),
                _ => {
                    c.err(format!("{key}.headers.{name}"), "not a valid HTTP header");
                    None
                }
            }
        })
        .collect()
}
