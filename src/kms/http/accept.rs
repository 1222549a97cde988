//! The KMS's accept loop: a cap on connections, and TLS handshakes with a
//! deadline, both before any byte of HTTP.
//!
//! A connection takes a slot at accept and gives it back when it closes. At
//! the cap, the connection that has gone longest without a request in
//! progress (mid-handshake, half a header, idle) is closed to make room: a
//! flood of half-sent requests evicts its own oldest members, and a real
//! client, which sends its request at once, still gets in. Only when every
//! slot is handling a request is the newcomer closed at once — refused by
//! us, at a number the operator chose, never by the process running out of
//! descriptors. Both are logged at most once per [`REFUSAL_LOG_INTERVAL`],
//! with counts. The cap is also held under the process's descriptor limit
//! (see [`capped_to_descriptors`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use super::connection::{self, Tracker};
use super::limits::Limits;

/// At most one "connection refused" line per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long to pause after a failed accept (EMFILE and friends) instead of
/// spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long the accept loop waits for an evicted connection to give its
/// slot back before refusing the newcomer after all.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// Accepts connections until `stop` resolves, serving each in its own task
/// and registering it with `graceful` so shutdown can wait for it.
pub(super) async fn accept_until(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: Router,
    limits: Limits,
    graceful: &GracefulShutdown,
    stop: impl Future<Output = ()>,
) {
    let cap = capped_to_descriptors(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let open = Arc::new(OpenConnections::default());
    let acceptor = tls.map(TlsAcceptor::from);
    let mut refusals = Refusals::default();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("KMS accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // At the cap: make room by closing the connection that has
                // gone longest without a request in progress. A real client
                // sends its header at once, so what goes is a stranger's
                // half-sent request or an idle pooled connection (whose
                // client reconnects) — never a request being handled.
                let evicted = open.evict_oldest();
                let freed = if evicted {
                    tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                refusals.at_cap(peer, cap, evicted, freed.is_some());
                match freed {
                    Some(slot) => slot,
                    None => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let tracker = Tracker::new();
        let id = open.insert(tracker.clone());
        let app = app.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let open = open.clone();
        tokio::spawn(async move {
            match acceptor {
                None => connection::serve(stream, peer, false, app, limits, watcher, tracker).await,
                Some(acceptor) => {
                    let handshaken = tokio::select! {
                        tls = handshake(&acceptor, stream, peer, &limits) => tls,
                        () = tracker.evicted() => None,
                    };
                    if let Some(tls) = handshaken {
                        connection::serve(tls, peer, true, app, limits, watcher, tracker).await;
                    }
                }
            }
            open.remove(id);
            drop(slot);
        });
    }
}

/// Descriptors kept for everything but KMS connections (the database, the
/// audit log, the runtime, in `envol up` the NBD server).
const RESERVED_DESCRIPTORS: u64 = 64;

/// `requested`, lowered (with a warning) to what the process's descriptor
/// limit leaves after [`RESERVED_DESCRIPTORS`]: a cap the process cannot
/// reach would let the limit refuse connections instead — and with them
/// the database's own files.
fn capped_to_descriptors(requested: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let Some(limit) = limit else {
        return requested;
    };
    let room =
        usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS).max(1)).unwrap_or(usize::MAX);
    if requested > room {
        tracing::warn!(
            "KMS: --max-connections {requested} lowered to {room}: the descriptor limit (ulimit -n) is {limit}, and {RESERVED_DESCRIPTORS} are kept for the rest of the process"
        );
        return room;
    }
    requested
}

/// The connections being served, for eviction at the cap.
#[derive(Debug, Default)]
struct OpenConnections {
    next_id: std::sync::atomic::AtomicU64,
    trackers: Mutex<HashMap<u64, Arc<Tracker>>>,
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracker>>> {
        self.trackers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, tracker: Arc<Tracker>) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, tracker);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Evicts the connection longest without a request in progress; false
    /// if every connection is handling one.
    fn evict_oldest(&self) -> bool {
        let open = self.lock();
        let oldest = open
            .values()
            .filter_map(|t| t.evictable_since().map(|since| (since, t)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, tracker)) => {
                tracker.evict();
                true
            }
            None => false,
        }
    }
}

/// Runs the TLS handshake within its deadline; `None` if it failed or ran out.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    limits: &Limits,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!("KMS: TLS handshake with {peer} failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(
                "KMS: TLS handshake with {peer} not done within {:?}: closed",
                limits.tls_handshake_timeout
            );
            None
        }
    }
}

/// What happened at the cap since the last log line about it.
#[derive(Debug, Default)]
struct Refusals {
    last_logged: Option<Instant>,
    evicted: u64,
    refused: u64,
}

impl Refusals {
    /// Notes one connection that arrived at the cap: whether an older one
    /// was evicted for it, and whether it got a slot.
    fn at_cap(&mut self, peer: SocketAddr, cap: usize, evicted: bool, admitted: bool) {
        self.evicted += u64::from(evicted);
        self.refused += u64::from(!admitted);
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            "KMS: {cap} connections open (--max-connections): since the last such line, closed {} idle or half-sent connection(s) to make room and refused {} connection(s) (the latest from {peer})",
            self.evicted,
            self.refused
        );
        self.last_logged = Some(now);
        self.evicted = 0;
        self.refused = 0;
    }
}
