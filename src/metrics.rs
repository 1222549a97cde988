//! The Prometheus endpoint: `GET /metrics` over HTTP, or HTTPS with a
//! certificate, answering with the text format (version 0.0.4) that
//! prometheus-client encodes from a [`Registry`] — the NBD server's and the
//! KMS's collectors (`nbd/metrics.rs`, `kms/metrics.rs`) read their
//! counters there, at scrape time.
//!
//! What a stranger can hold of it is bounded: [`MAX_CONNECTIONS`] at
//! once (more are closed at accept), a TLS handshake and each request
//! header within [`HEADER_TIMEOUT`] (hyper's header timeout also closes a
//! keep-alive connection idle that long; Prometheus simply reconnects at
//! its next scrape), and nothing is read from a request but its header.
//! Where it may listen (loopback, unless over TLS or asked for) is the
//! command line's rule, as for NBD.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// Connections served at once; a scraper needs one, a few Prometheus
/// replicas a few.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a TLS handshake, and each request header, may take.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The path Prometheus scrapes by default.
pub const PATH: &str = "/metrics";

/// A bound metrics endpoint, not yet serving.
pub struct MetricsEndpoint {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl MetricsEndpoint {
    /// Binds `addr` (before there is anything to measure: a command that
    /// cannot listen fails before it starts work); with `tls`, every
    /// connection is HTTPS.
    pub async fn bind(addr: SocketAddr, tls: Option<Arc<ServerConfig>>) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            tls: tls.map(TlsAcceptor::from),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The URL to scrape.
    pub fn url(&self) -> io::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}{PATH}", self.local_addr()?))
    }

    /// Serves `registry` until `shutdown` resolves; connections still open
    /// then are dropped (a scrape is cheap to repeat).
    pub async fn serve(self, registry: Registry, shutdown: impl Future<Output = ()>) {
        let registry = Arc::new(registry);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: pause rather
                        // than spin.
                        tracing::warn!("metrics: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(
                    "metrics: closing the connection from {peer}: {MAX_CONNECTIONS} already open"
                );
                continue;
            };
            let tls = self.tls.clone();
            let registry = registry.clone();
            connections.spawn(async move {
                let _slot = slot;
                match tls {
                    None => serve_connection(stream, registry, peer).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => serve_connection(stream, registry, peer).await,
                            Ok(Err(e)) => {
                                tracing::debug!("metrics: TLS handshake with {peer}: {e}")
                            }
                            Err(_) => {
                                tracing::debug!("metrics: TLS handshake with {peer} timed out")
                            }
                        }
                    }
                }
            });
            // Reap finished connections as we go.
            while connections.try_join_next().is_some() {}
        }
    }
}

async fn serve_connection<IO>(io: IO, registry: Arc<Registry>, peer: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let registry = registry.clone();
        async move { Ok::<_, Infallible>(respond(&request, registry).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        tracing::debug!("metrics: connection from {peer}: {e}");
    }
}

async fn respond(request: &Request<Incoming>, registry: Arc<Registry>) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return plain(StatusCode::NOT_FOUND, format!("not found: try {PATH}\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n".into());
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // The KMS's collector reads its store (SQLite): off the async threads.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).map(|()| text)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            );
            response
        }
        _ => {
            tracing::error!("metrics: encoding failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the metrics could not be encoded\n".into(),
            )
        }
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
