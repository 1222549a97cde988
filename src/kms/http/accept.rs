//! The KMS's accept loop: a cap on connections, and TLS handshakes with a
//! deadline, both before any byte of HTTP.
//!
//! A connection takes a slot at accept and gives it back when it closes. At
//! the cap, a new connection is closed at once — refused by us, at a number
//! the operator chose, never by the process running out of descriptors —
//! and logged at most once per [`REFUSAL_LOG_INTERVAL`], with a count. The
//! slots a stranger can take are each bounded in time (handshake, header,
//! idle deadlines), so a flood holds the KMS for at most one deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use super::connection;
use super::limits::Limits;

/// At most one "connection refused" line per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long to pause after a failed accept (EMFILE and friends) instead of
/// spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refusals.refused(peer, limits.max_connections);
            continue;
        };
        let app = app.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => connection::serve(stream, peer, app, limits, watcher).await,
                Some(acceptor) => {
                    if let Some(tls) = handshake(&acceptor, stream, peer, &limits).await {
                        connection::serve(tls, peer, app, limits, watcher).await;
                    }
                }
            }
            drop(slot);
        });
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

/// Connections refused at the cap since the last log line.
#[derive(Debug, Default)]
struct Refusals {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn refused(&mut self, peer: SocketAddr, cap: usize) {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            "KMS: {cap} connections open (--max-connections): refused {} connection(s) since the last such line, the latest from {peer}",
            self.unlogged
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}
