//! One HTTP/1.1 connection of the KMS, with a deadline on every state a
//! client can leave it in.
//!
//! hyper's own `header_read_timeout` starts when hyper begins waiting for
//! a request, so it also closes idle keep-alive connections: one knob for
//! two bounds an operator wants apart (a header arrives in milliseconds; a
//! pooled connection idles for many seconds). So the deadlines live here,
//! as an explicit state machine that the transport and the service drive:
//!
//! ```text
//!   accept ──► AwaitingHeader ──(header complete)──► Handling
//!                 ▲     (header_timeout)                 │ (the handler bounds
//!                 │ first byte                            │  the body: body_timeout)
//!                 │                                       ▼
//!               Idle ◄────────────(response ready)──── Handling
//!          (idle_timeout)
//! ```
//!
//! A watchdog sleeps to the current state's deadline and closes the
//! connection when it passes with the state unchanged. At the connection
//! cap, the accept loop may also evict a connection that is not handling
//! a request (`accept`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tower::ServiceExt;

use super::super::tls::Peer;
use super::limits::Limits;

/// Where a connection stands, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the rest of a request header (or, just after accept,
    /// for the first one).
    AwaitingHeader { since: Instant },
    /// A request is with the service; the handler bounds its body.
    Handling,
    /// Between requests, nothing of the next one read yet.
    Idle { since: Instant },
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
    /// The accept loop needed its slot (see `accept`).
    Evicted,
}

/// The phase, shared by the reader, the service, the watchdog and the
/// accept loop (which may evict a connection that is not handling a
/// request).
#[derive(Debug)]
pub(super) struct Tracker {
    phase: Mutex<Phase>,
    evict: tokio::sync::Notify,
}

impl Tracker {
    /// A tracker for a connection accepted now.
    pub(super) fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            phase: Mutex::new(Phase::AwaitingHeader {
                since: Instant::now(),
            }),
            evict: tokio::sync::Notify::new(),
        })
    }

    /// Since when the connection has held its slot without a request in
    /// progress (handshaking, awaiting a header, or idle); `None` while it
    /// is handling one, which is never cut short.
    pub(super) fn evictable_since(&self) -> Option<Instant> {
        match self.get() {
            Phase::AwaitingHeader { since } | Phase::Idle { since } => Some(since),
            Phase::Handling => None,
        }
    }

    /// Asks the connection to close (it does unless it has just started
    /// handling a request).
    pub(super) fn evict(&self) {
        self.evict.notify_one();
    }

    /// Resolves once [`Tracker::evict`] was called.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }

    fn set(&self, update: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        *phase = update(*phase);
    }

    fn get(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: an idle connection has begun its next request.
    fn bytes_arrived(&self) {
        self.set(|p| match p {
            Phase::Idle { .. } => Phase::AwaitingHeader {
                since: Instant::now(),
            },
            other => other,
        });
    }

    /// hyper parsed a whole header and called the service.
    fn header_complete(&self) {
        self.set(|_| Phase::Handling);
    }

    /// The service answered: hyper writes the response and waits for more.
    fn answered(&self) {
        self.set(|_| Phase::Idle {
            since: Instant::now(),
        });
    }

    /// Resolves when the current phase outlives its bound, or the
    /// connection is evicted while not handling a request.
    async fn expired(&self, limits: &Limits) -> Expired {
        loop {
            let evicted = async {
                self.evicted().await;
                self.evictable_since().is_some()
            };
            tokio::select! {
                still_evictable = evicted => {
                    if still_evictable {
                        return Expired::Evicted;
                    }
                    continue;
                }
                why = self.overdue(limits) => return why,
            }
        }
    }

    /// Resolves when the current phase outlives its deadline.
    async fn overdue(&self, limits: &Limits) -> Expired {
        loop {
            let (deadline, why) = match self.get() {
                Phase::AwaitingHeader { since } => (since + limits.header_timeout, Expired::Header),
                Phase::Idle { since } => (since + limits.idle_timeout, Expired::Idle),
                // Nothing to bound here (the handler bounds the body and the
                // service always answers): look again later.
                Phase::Handling => {
                    let recheck = limits.header_timeout.min(limits.idle_timeout);
                    tokio::time::sleep(recheck).await;
                    continue;
                }
            };
            if Instant::now() >= deadline {
                return why;
            }
            // The phase may move on meanwhile; deadlines only move later,
            // so waking early and looking again is always right.
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A connection's byte stream, telling the tracker when bytes arrive.
struct Watched<IO> {
    inner: IO,
    tracker: Arc<Tracker>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.bytes_arrived();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long the handler may wait for a request's body: put in each
/// request's extensions by [`serve`], read by the handler.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

/// Serves HTTP/1.1 requests on `io` with `app` until the client closes, a
/// deadline passes, or graceful shutdown (through `watcher`) ends it.
/// `tracker` was made at accept; `over_tls` says whether `io` is a TLS
/// stream (the `aws:SecureTransport` condition key).
pub(super) async fn serve<IO>(
    io: IO,
    peer: SocketAddr,
    over_tls: bool,
    app: Router,
    limits: Limits,
    watcher: Watcher,
    tracker: Arc<Tracker>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Watched {
        inner: io,
        tracker: tracker.clone(),
    };
    let service_tracker = tracker.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        service_tracker.header_complete();
        req.extensions_mut().insert(ConnectInfo(Peer {
            addr: peer,
            over_tls,
        }));
        req.extensions_mut()
            .insert(BodyDeadline(limits.body_timeout));
        let app = app.clone();
        let tracker = service_tracker.clone();
        async move {
            let response = app.oneshot(req).await;
            tracker.answered();
            response
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // The deadlines are the tracker's (see the module comment).
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    let connection = watcher.watch(connection);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!("KMS connection from {peer}: {e}");
            }
        }
        why = tracker.expired(&limits) => match why {
            Expired::Header => tracing::debug!(
                "KMS: closing the connection from {peer}: no complete request header within {:?}",
                limits.header_timeout
            ),
            Expired::Idle => tracing::debug!(
                "KMS: closing the connection from {peer}: idle for {:?}",
                limits.idle_timeout
            ),
            Expired::Evicted => tracing::debug!(
                "KMS: closing the connection from {peer}: at --max-connections, and it was the longest without a request"
            ),
        },
    }
}
