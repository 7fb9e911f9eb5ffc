//! How a provider's connections leave the gateway: straight to the upstream,
//! or through an HTTP proxy (plain HTTP requests in absolute form to the
//! proxy, TLS tunnelled with CONNECT); and which certificates a TLS upstream
//! may present (the built-in roots, the system's store, a provider's
//! `ca_file`). Decided once per provider at load: a pooled connection costs
//! nothing more per request.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use base64::Engine;
use http::{HeaderValue, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tower::Service;

use crate::config::{Provider, Proxy};

type BoxError = Box<dyn StdError + Send + Sync>;

/// A provider's way out.
#[derive(Clone)]
pub enum Connector {
    Direct(HttpConnector),
    /// http:// upstreams: connect to the proxy, send absolute-form requests.
    Forward {
        inner: HttpConnector,
        proxy: Uri,
    },
    /// https:// upstreams: a CONNECT tunnel through the proxy.
    Tunnel(Tunnel<HttpConnector>),
}

/// `Proxy-Authorization: Basic ...` for the proxy's credentials.
pub fn proxy_authorization(proxy: &Proxy) -> Option<HeaderValue> {
    let creds = proxy.credentials.as_ref()?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(creds.expose());
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl Connector {
    /// The way out for `p`, over `tcp` (connect timeout and nodelay set).
    pub fn new(p: &Provider, tcp: HttpConnector) -> Result<Connector, String> {
        let Some(proxy) = &p.proxy else {
            return Ok(Connector::Direct(tcp));
        };
        let uri: Uri = proxy
            .uri
            .parse()
            .map_err(|e| format!("providers.{}.proxy: {e}", p.name))?;
        if p.base_url.starts_with("https://") {
            let mut tunnel = Tunnel::new(uri, tcp);
            if let Some(auth) = proxy_authorization(proxy) {
                tunnel = tunnel.with_auth(auth);
            }
            Ok(Connector::Tunnel(tunnel))
        } else {
            Ok(Connector::Forward {
                inner: tcp,
                proxy: uri,
            })
        }
    }
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Direct(c) | Connector::Forward { inner: c, .. } => {
                c.poll_ready(cx).map_err(Into::into)
            }
            Connector::Tunnel(t) => t.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Connector::Direct(c) => {
                let f = c.call(dst);
                Box::pin(async move { Ok(Conn::new(f.await?, false)) })
            }
            Connector::Forward { inner, proxy } => {
                let f = inner.call(proxy.clone());
                Box::pin(async move {
                    let io = f.await.map_err(|e| -> BoxError {
                        format!("cannot reach the proxy: {e}").into()
                    })?;
                    Ok(Conn::new(io, true))
                })
            }
            Connector::Tunnel(t) => {
                let f = t.call(dst);
                Box::pin(async move { Ok(Conn::new(f.await?, false)) })
            }
        }
    }
}

/// A connection, telling the client whether it goes to a proxy (then
/// requests are sent in absolute form).
pub struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Conn {
    fn new(io: TokioIo<TcpStream>, proxied: bool) -> Self {
        Conn { io, proxied }
    }

    /// The socket's descriptor (open for as long as the connection lives).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.io.inner())
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The system's trusted roots, read once per process (an unreadable store
/// is logged and leaves the built-in roots).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() && found.certs.is_empty() {
            tracing::warn!(
                errors = found.errors.len(),
                "could not read the system's trusted certificates; using the built-in roots"
            );
        }
        found.certs
    })
}

/// The built-in (webpki) roots and the system's.
fn default_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // a system certificate rustls cannot use is skipped, as browsers do
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    roots
}

fn client_config(roots: rustls::RootCertStore, who: &str) -> Result<rustls::ClientConfig, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{who}TLS: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// TLS with the default roots (the OTLP exporter's).
pub fn default_tls() -> Result<rustls::ClientConfig, String> {
    client_config(default_roots(), "")
}

/// TLS for `p`: the default roots and its `ca_file`.
pub fn tls_config(p: &Provider) -> Result<rustls::ClientConfig, String> {
    let mut roots = default_roots();
    if let Some(file) = &p.ca_file {
        let certs = CertificateDer::pem_file_iter(file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("providers.{}.ca_file: {}: {e}", p.name, file.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("providers.{}.ca_file: {}: {e}", p.name, file.display()))?;
        }
    }
    client_config(roots, &format!("providers.{}: ", p.name))
}
