//! HTTP/1 connections to plain-HTTP upstreams, driven by the request that
//! uses them.
//!
//! hyper-util's pooled client runs every upstream connection in a task of its
//! own: a request hands its head to that task over hyper's dispatch channel,
//! the task writes it and reads the answer, and hands the answer back; when
//! the body is done a further task waits for the connection to be ready again
//! before it goes back to the pool. Here there is no such task: the request's
//! own task polls the connection (hyper's `client::conn::http1`) while it
//! waits for the answer, and the answer's body polls it while it is read, so
//! the request is written and the answer read on the task that wants them.
//! When the body has been read to its end the connection goes back to its
//! worker's idle list; a body dropped part way closes it.
//!
//! One idle list per worker (`worker::current`), so a connection stays on the
//! thread whose runtime registered its socket; a lock that only that worker
//! takes. A connection idle for over a second is asked of the kernel whether
//! the upstream closed it before it is used. Idle connections are checked every second by a sweeper task (one
//! per worker while the list is not empty): those idle for longer than the
//! pool's timeout, or closed by the upstream, are dropped.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tower::Service;

use super::egress::{Conn, Connector};

type Sender = http1::SendRequest<Full<Bytes>>;
type Driver = http1::Connection<Conn, Full<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per worker.
const MAX_IDLE: usize = 256;

/// A connection idle for longer is asked of the kernel whether the upstream
/// closed it before it is used (one `recv` with `MSG_PEEK`): the runtime
/// may not yet have read the close, and a request written to a closed
/// connection fails (it cannot be sent again: the upstream may have read it).
/// Upstreams close idle connections after seconds (Node 5 s, nginx 75 s),
/// so a connection reused within a second is spared the system call.
pub const PEEK_AFTER: Duration = Duration::from_secs(1);

/// Whether the upstream closed the socket (or sent bytes nobody asked for).
fn peer_closed(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the open socket of a connection the caller holds; the
    // buffer is one valid byte; MSG_PEEK leaves the socket's data as it was.
    let n = unsafe {
        libc::recv(
            fd,
            std::ptr::from_mut(&mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
}

/// One upstream connection: the handle that sends on it, and the state
/// machine that reads and writes it (polled by whoever waits on it).
struct Link {
    sender: Sender,
    /// None once it has finished (the connection is closed): dropped then,
    /// so a request queued on it and never written comes back unsent.
    driver: Option<Driver>,
    /// It served a request before (a request refused unsent is retried on a
    /// new connection).
    reused: bool,
    /// The socket, asked directly whether the upstream closed it.
    fd: std::os::fd::RawFd,
}

impl Link {
    /// Let the connection read and write what it can; false once it is
    /// closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(driver) = &mut self.driver {
            if Pin::new(driver).poll(cx).is_ready() {
                self.driver = None;
            }
        }
        self.driver.is_some()
    }

    /// Open and ready for a request now. A connection that needs more than
    /// one turn to be ready is not waited for (the next one is taken).
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            Poll::Ready(self.drive(cx) && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(()))))
        })
        .await
    }
}

/// Boxed: a connection's state is large, and it moves (into the idle list,
/// into the body) as a pointer, not a copy.
type Boxed = Box<Link>;

struct Idle {
    link: Boxed,
    since: Instant,
}

struct Shard {
    idle: Mutex<Vec<Idle>>,
    /// A sweeper task runs for this worker's idle list.
    sweeping: AtomicBool,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        // a poisoned lock only means a panic elsewhere; the list is still usable
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A provider's HTTP/1 connections, per worker.
pub struct Pool {
    shards: Vec<Shard>,
    connector: Connector,
    idle_timeout: Duration,
}

/// Why a request got no answer: the connection could not be made, or the
/// exchange on it failed.
pub enum Failure {
    Connect(BoxError),
    Http(hyper::Error),
}

impl Pool {
    pub fn new(connector: Connector, idle_timeout: Duration) -> Arc<Pool> {
        let shards = (0..crate::worker::workers().max(1))
            .map(|_| Shard {
                idle: Mutex::new(Vec::new()),
                sweeping: AtomicBool::new(false),
            })
            .collect();
        Arc::new(Pool {
            shards,
            connector,
            idle_timeout,
        })
    }

    /// Send `req` (its URI as it goes on the wire, a `Host` header set) on an
    /// idle connection of this worker, or a new one to `dst`.
    pub async fn send(
        self: &Arc<Self>,
        dst: &Uri,
        mut req: Request<Full<Bytes>>,
    ) -> Result<http::Response<UpBody>, Failure> {
        let shard = crate::worker::current() % self.shards.len();
        loop {
            let mut link = match self.take(shard).await {
                Some(link) => link,
                // boxed: the handshake's state would otherwise make every
                // request's future (and each move of it) larger
                None => Box::pin(self.connect(dst)).await?,
            };
            let mut sent = std::pin::pin!(link.sender.try_send_request(req));
            // Written at the end of the worker's turn, with the other requests
            // that became ready in it, not at once: the upstream then reads
            // them in one wake-up. Writing each at once measured 17% fewer
            // requests/s at c=32 (more cross-core wake-ups of the upstream, the
            // kernel's `_raw_spin_unlock_irqrestore` 11% -> 15% of samples)
            // for 8% less latency at c=1; yielding keeps both (benchmarks notes).
            tokio::task::yield_now().await;
            let answer = poll_fn(|cx| {
                link.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match answer {
                Ok(resp) => {
                    let held = Held {
                        link,
                        pool: Arc::clone(self),
                        shard,
                    };
                    return Ok(resp.map(|inner| UpBody {
                        inner,
                        held: Some(held),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // refused before a byte was written (the upstream had
                    // closed the idle connection): safe to send again
                    Some(unsent) if link.reused => req = unsent,
                    _ => return Err(Failure::Http(e.into_error())),
                },
            }
        }
    }

    /// This worker's most recently used idle connection that is still open.
    async fn take(&self, shard: usize) -> Option<Boxed> {
        loop {
            let idle = self.shards[shard].lock().pop()?;
            let idle_for = idle.since.elapsed();
            if idle_for >= self.idle_timeout
                || (idle_for >= PEEK_AFTER && peer_closed(idle.link.fd))
            {
                continue;
            }
            let mut link = idle.link;
            if link.ready().await {
                return Some(link);
            }
        }
    }

    async fn connect(&self, dst: &Uri) -> Result<Boxed, Failure> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(Failure::Connect)?;
        let io = connector
            .call(dst.clone())
            .await
            .map_err(Failure::Connect)?;
        let fd = io.raw_fd();
        let (sender, driver) = http1::handshake(io).await.map_err(Failure::Http)?;
        Ok(Box::new(Link {
            sender,
            driver: Some(driver),
            reused: false,
            fd,
        }))
    }

    /// Back to the idle list, once its answer has been read to the end.
    fn put(self: &Arc<Self>, shard: usize, mut link: Boxed) {
        if link.driver.is_none() || link.sender.is_closed() {
            return;
        }
        link.reused = true;
        let s = &self.shards[shard];
        let mut idle = s.lock();
        if idle.len() >= MAX_IDLE {
            return;
        }
        idle.push(Idle {
            link,
            since: Instant::now(),
        });
        if !s.sweeping.swap(true, Ordering::AcqRel) {
            self.sweep_later(shard);
        }
    }

    /// Start this worker's sweeper (on the worker's own runtime).
    fn sweep_later(self: &Arc<Self>, shard: usize) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.shards[shard].sweeping.store(false, Ordering::Release);
            return;
        };
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).min(Duration::from_secs(1));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                if !pool.sweep(shard) {
                    return;
                }
            }
        });
    }

    /// Drop the idle connections that expired or were closed; false (and the
    /// sweeper stops) once none is left.
    fn sweep(&self, shard: usize) -> bool {
        let s = &self.shards[shard];
        let mut idle = s.lock();
        let mut cx = Context::from_waker(Waker::noop());
        idle.retain_mut(|i| i.since.elapsed() < self.idle_timeout && i.link.drive(&mut cx));
        if idle.is_empty() {
            s.sweeping.store(false, Ordering::Release);
            return false;
        }
        true
    }
}

/// An upstream answer's body. From a pooled connection, reading it drives
/// the connection and its end gives the connection back to the pool; from
/// hyper-util's client (`UpBody::new`), it is hyper's body as it is.
pub struct UpBody {
    inner: Incoming,
    held: Option<Held>,
}

/// The pooled connection an answer is read from.
struct Held {
    link: Boxed,
    pool: Arc<Pool>,
    shard: usize,
}

impl UpBody {
    pub fn new(inner: Incoming) -> UpBody {
        UpBody { inner, held: None }
    }

    fn release(&mut self) {
        if let Some(h) = self.held.take() {
            h.pool.put(h.shard, h.link);
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut frame = Pin::new(&mut this.inner).poll_frame(cx);
        if frame.is_pending() {
            if let Some(h) = &mut this.held {
                h.link.drive(cx);
                frame = Pin::new(&mut this.inner).poll_frame(cx);
            }
        }
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.held = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
