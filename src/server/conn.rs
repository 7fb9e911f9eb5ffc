//! Accepting and serving connections, with every wait bounded:
//! - `max_connections`: beyond it no new connection is accepted (they wait in
//!   the kernel's queue), except `RESERVED` more that serve only /healthz,
//!   /readyz and /metrics, so a full gateway can still be probed and scraped;
//! - `header_read_timeout`: a new connection that has not sent a request head
//!   by then is closed, and so is a kept-alive one whose next head started
//!   arriving and did not finish;
//! - `keep_alive_timeout`: an idle kept-alive connection is closed;
//! - `stream_write_timeout`: a client that takes none of the bytes written to
//!   it for that long is dropped (its response, a stream included, is
//!   cancelled: the relay settles it as a client disconnect).
//!
//! hyper's own header-read timer also runs between requests on a kept-alive
//! connection, which would close idle connections after the (short) header
//! timeout; so the timers here are our own: one watchdog per connection,
//! reading a few atomics the connection updates.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Connections beyond `max_connections` that still serve the ops endpoints.
pub const RESERVED: usize = 16;

/// The connection slots: `max_connections` regular ones and `RESERVED`
/// for the ops endpoints. One set per process, shared by every worker.
#[derive(Clone, Debug)]
pub struct Slots {
    regular: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
}

impl Slots {
    pub fn new(max_connections: usize) -> Self {
        Slots {
            regular: Arc::new(Semaphore::new(max_connections)),
            reserved: Arc::new(Semaphore::new(RESERVED)),
        }
    }
}

/// The connection limits, read from `[server]` at start.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read: Duration,
    pub keep_alive: Duration,
    pub write: Duration,
}

impl Limits {
    pub fn of(s: &crate::config::Server) -> Self {
        Limits {
            max_connections: s.max_connections,
            header_read: s.header_read_timeout,
            keep_alive: s.keep_alive_timeout,
            write: s.stream_write_timeout,
        }
    }
}

/// What the watchdog needs to know about one connection, kept by the
/// connection's service and I/O with a few relaxed atomics.
struct Watch {
    accepted: Instant,
    /// Requests in flight (HTTP/2 may have several).
    busy: AtomicU32,
    /// No request has started on this connection yet.
    fresh: AtomicBool,
    /// Milliseconds since `accepted` when the connection last went idle.
    idle_since: AtomicU64,
    /// Milliseconds since `accepted` (plus one; 0: none) when bytes of a next
    /// request arrived on an idle connection.
    head_since: AtomicU64,
    /// Raised by the watchdog: the connection expired, or should drain.
    alarm: tokio::sync::Notify,
    expired: AtomicBool,
}

/// Why the watchdog raised the alarm.
enum Alarm {
    Expired,
    Drain,
}

impl Watch {
    fn new() -> Self {
        Watch {
            accepted: Instant::now(),
            busy: AtomicU32::new(0),
            fresh: AtomicBool::new(true),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            alarm: tokio::sync::Notify::new(),
            expired: AtomicBool::new(false),
        }
    }

    fn alarm(&self) -> Alarm {
        if self.expired.load(Ordering::Acquire) {
            Alarm::Expired
        } else {
            Alarm::Drain
        }
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    /// Bytes arrived. On an idle connection they start the next head.
    fn read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.fresh.store(false, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// Resolves when the connection has waited too long for a head, or sat
    /// idle too long. Wakes at most every half header timeout while idle.
    async fn expired(&self, limits: Limits) {
        let hrt = limits.header_read.as_millis() as u64;
        loop {
            let now = self.now_ms();
            let next = if self.busy.load(Ordering::Relaxed) > 0 {
                now + hrt
            } else if self.fresh.load(Ordering::Relaxed) {
                // a new connection: its first head within the header timeout
                if now >= hrt {
                    return;
                }
                hrt
            } else {
                let head = self.head_since.load(Ordering::Relaxed);
                if head > 0 {
                    let deadline = head - 1 + hrt;
                    if now >= deadline {
                        return;
                    }
                    deadline
                } else {
                    let deadline = self.idle_since.load(Ordering::Relaxed)
                        + limits.keep_alive.as_millis() as u64;
                    if now >= deadline {
                        return;
                    }
                    deadline.min(now + (hrt / 2).max(1))
                }
            };
            tokio::time::sleep_until(self.at(next)).await;
        }
    }
}

/// One request in flight on a connection; dropped when its response body is
/// done (or dropped).
struct Busy(Arc<Watch>);

impl Drop for Busy {
    fn drop(&mut self) {
        let w = &self.0;
        w.idle_since.store(w.now_ms(), Ordering::Relaxed);
        w.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight.
    pub struct Tracked {
        #[pin]
        body: Body,
        busy: Busy,
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The router's answer, counted as in flight from the call on.
    pub struct Answer<F> {
        #[pin]
        fut: F,
        busy: Option<Busy>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Answer<F> {
    type Output = Result<http::Response<Tracked>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(Ok(resp)) = this.fut.poll(cx) else {
            return Poll::Pending;
        };
        let Some(busy) = this.busy.take() else {
            return Poll::Pending;
        };
        Poll::Ready(Ok(resp.map(|body| Tracked { body, busy })))
    }
}

/// The router as a hyper service for one connection.
#[derive(Clone)]
struct Svc {
    router: Router,
    watch: Arc<Watch>,
}

impl hyper::service::Service<http::Request<Incoming>> for Svc {
    type Response = http::Response<Tracked>;
    type Error = Infallible;
    type Future = Answer<tower::util::Oneshot<Router, Request>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let busy = self.watch.begin();
        Answer {
            fut: self.router.clone().oneshot(req.map(Body::new)),
            busy: Some(busy),
        }
    }
}

pin_project_lite::pin_project! {
    /// The socket, telling the watchdog when bytes arrive, and failing a write
    /// the client has not made room for within the write timeout.
    struct Guarded {
        #[pin]
        tcp: TcpStream,
        watch: Arc<Watch>,
        write_timeout: Duration,
        stalled: Option<Pin<Box<Sleep>>>,
    }
}

impl Guarded {
    /// A write that could not proceed: fail it once it has waited too long.
    fn stall(
        stalled: &mut Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let sleep = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of the response within server.stream_write_timeout_ms",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.tcp.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.read();
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.tcp.poll_write(cx, buf) {
            Poll::Pending => Guarded::stall(this.stalled, *this.write_timeout, cx),
            ready => {
                *this.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.tcp.poll_write_vectored(cx, bufs) {
            Poll::Pending => Guarded::stall(this.stalled, *this.write_timeout, cx),
            ready => {
                *this.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().tcp.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().tcp.poll_shutdown(cx)
    }
}

/// A permit to serve one connection: a regular one, or one of the reserved.
enum Slot {
    Regular(#[allow(dead_code)] OwnedSemaphorePermit),
    Reserved(#[allow(dead_code)] OwnedSemaphorePermit),
}

/// Watch one connection until it is `gone`: raise the alarm when it expires
/// (waited too long for a head, or idle too long), and once when the
/// gateway starts draining.
async fn watchdog(
    watch: Arc<Watch>,
    limits: Limits,
    mut signal: watch::Receiver<()>,
    mut gone: tokio::sync::oneshot::Receiver<()>,
) {
    let expired = watch.expired(limits);
    tokio::pin!(expired);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = &mut gone => return,
            _ = &mut expired => {
                watch.expired.store(true, Ordering::Release);
                watch.alarm.notify_one();
                return;
            }
            _ = signal.changed(), if !draining => {
                draining = true;
                watch.alarm.notify_one();
            }
        }
    }
}

/// Accept and serve until `stop` resolves; then stop accepting, ask every
/// connection to finish gracefully, and wait for them up to `grace`.
/// Returns whether every connection finished in time.
pub async fn run(
    listener: TcpListener,
    (app, ops): (Router, Router),
    (limits, slots): (Limits, Slots),
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> bool {
    let Slots { regular, reserved } = slots;
    // dropping `signal` asks every connection to finish; each holds a
    // receiver of `closed` until it is gone
    let (signal, signal_rx) = watch::channel(());
    let (closed, closed_rx) = watch::channel(());
    tokio::pin!(stop);
    loop {
        let slot = match Arc::clone(&regular).try_acquire_owned() {
            Ok(p) => Slot::Regular(p),
            Err(_) => match Arc::clone(&reserved).try_acquire_owned() {
                Ok(p) => Slot::Reserved(p),
                Err(_) => tokio::select! {
                    p = Arc::clone(&regular).acquire_owned() => match p {
                        Ok(p) => Slot::Regular(p),
                        Err(_) => break,
                    },
                    _ = &mut stop => break,
                },
            },
        };
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // no Nagle delay on answers, as nginx does for keep-alive connections
        let _ = tcp.set_nodelay(true);
        let router = match slot {
            Slot::Regular(_) => app.clone(),
            Slot::Reserved(_) => ops.clone(),
        };
        let watch = Arc::new(Watch::new());
        // the watchdog runs beside the connection, so a request's wake-ups
        // poll the connection and one `Notify`, no timer
        let (done, gone) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(watchdog(
            Arc::clone(&watch),
            limits,
            signal_rx.clone(),
            gone,
        ));
        let closed_rx = closed_rx.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(Guarded {
                tcp,
                watch: Arc::clone(&watch),
                write_timeout: limits.write,
                stalled: None,
            });
            let svc = Svc {
                router,
                watch: Arc::clone(&watch),
            };
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(io, svc);
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    biased;
                    _ = conn.as_mut() => break,
                    _ = watch.alarm.notified() => match watch.alarm() {
                        Alarm::Expired => break,
                        Alarm::Drain => conn.as_mut().graceful_shutdown(),
                    },
                }
            }
            drop(done);
            drop(slot);
            drop(closed_rx);
        });
    }
    drop(listener);
    drop(signal_rx);
    drop(signal);
    drop(closed_rx);
    tokio::time::timeout(grace, closed.closed()).await.is_ok()
}

/// Accept failed. Most errors concern that one connection; running out of
/// file descriptors or memory is logged, and accepting pauses a moment so
/// the loop does not spin.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed; pausing 50 ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Raise the soft open-files limit to the hard limit: each connection and
/// each upstream connection is a file descriptor, and the usual soft limit
/// (1,024) is far below `max_connections`.
pub fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct passed, nothing else.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return;
            }
            if lim.rlim_cur >= lim.rlim_max {
                tracing::info!(open_files = lim.rlim_cur, "open-files limit");
                return;
            }
            let from = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!(
                    from,
                    to = lim.rlim_cur,
                    "raised the soft open-files limit to the hard limit"
                );
            } else {
                tracing::warn!(
                    open_files = from,
                    "could not raise the soft open-files limit"
                );
            }
        }
    }
}
