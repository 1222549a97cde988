//! Listeners, the accept loop, per-connection lifecycle, graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::async_loop;
use super::export::{Export, ExportError};
use super::export_set::ExportSet;
use super::handshake::{self, HandshakeError, HandshakeOutcome, Negotiated, Tls};
use super::limits::{ConnectionLimits, Limits};
use super::metrics::ServerMetrics;
use super::registry::{DetachError, Detached, ExportRegistry, ExportStatus};
use super::threaded_loop::{self, IntoPlainSocket};
use super::tls::{TlsConfig, TlsMode};
use super::tls_session::TlsSession;
use super::transmission::{SHUTDOWN_GRACE, Stop, shutdown_requested};
use super::unix_endpoint::UnixEndpoint;
use super::workers::Shared;

/// A client must finish option haggling (TLS handshake included) within
/// this time by default; it bounds what a silent or slow client can hold
/// (and the discarding of oversized options).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The NBD server: a validated set of exports, served on [`Listeners`].
/// Clones share the exports: one clone serves while another attaches and
/// detaches ([`Server::attach`], [`Server::detach`]).
#[derive(Debug, Clone)]
pub struct Server {
    exports: Arc<ExportRegistry>,
    config: Arc<ConnectionConfig>,
    /// Worker threads and buffers, shared by every connection (and every
    /// clone of this server); the threads stop when the last handle goes.
    shared: Arc<Shared>,
}

/// Which loop serves a connection (Unix socket or TCP, plain or TLS) once
/// it is in transmission. On the threaded loop a TLS connection's session
/// is shared by its threads (`tls_session.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransmissionLoop {
    /// Blocking reader and writer threads per connection, cached requests
    /// answered without a hand-off (`threaded_loop.rs`): the fast path.
    #[default]
    Threaded,
    /// Tokio tasks, every device call on the workers (`async_loop.rs`), on
    /// tokio-rustls for TLS: for comparing the two, and for testing the
    /// async loop.
    Async,
}

/// What every connection needs besides the exports.
#[derive(Debug, Clone)]
struct ConnectionConfig {
    tls: Option<TlsConfig>,
    handshake_timeout: Duration,
    transmission_loop: TransmissionLoop,
    limits: Limits,
}

impl Server {
    /// Validates the exports (at least one, unique names, NBD-valid strings,
    /// block sizes the protocol allows). The first export is the default.
    pub fn new(exports: Vec<Export>) -> Result<Self, ExportError> {
        Ok(Self {
            exports: Arc::new(ExportRegistry::new(ExportSet::new(exports)?)),
            config: Arc::new(ConnectionConfig {
                tls: None,
                handshake_timeout: HANDSHAKE_TIMEOUT,
                transmission_loop: TransmissionLoop::default(),
                limits: Limits::default(),
            }),
            shared: Arc::new(Shared::with_default_workers()),
        })
    }

    /// Offers TLS (`NBD_OPT_STARTTLS`), and requires it in
    /// [`TlsMode::Require`].
    pub fn with_tls(self, tls: TlsConfig) -> Self {
        self.reconfigure(|c| c.tls = Some(tls))
    }

    /// Replaces [`HANDSHAKE_TIMEOUT`] (tests use a short one).
    pub fn with_handshake_timeout(self, timeout: Duration) -> Self {
        self.reconfigure(|c| c.handshake_timeout = timeout)
    }

    /// Serves connections, plain and TLS, with `transmission_loop`
    /// (default [`TransmissionLoop::Threaded`]).
    pub fn with_transmission_loop(self, transmission_loop: TransmissionLoop) -> Self {
        self.reconfigure(|c| c.transmission_loop = transmission_loop)
    }

    /// Caps the bytes buffered for in-flight requests across all
    /// connections of each listener (default
    /// [`MAX_INFLIGHT_BYTES`](super::MAX_INFLIGHT_BYTES) for the Unix
    /// socket, as much again for TCP); requests beyond it wait their turn.
    /// The listeners' budgets are apart, as their connection caps are, so
    /// TCP strangers holding theirs cannot starve the socket's owner. Each
    /// connection's own [`IN_FLIGHT_BYTES`](super::IN_FLIGHT_BYTES) still
    /// applies.
    pub fn with_max_inflight(self, bytes: u64) -> Self {
        self.reconfigure(|c| c.limits.max_inflight = bytes)
    }

    /// Caps the connections served at once on each listener (default
    /// [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS), at least 1): more are
    /// closed as soon as they are accepted, with a log line. The Unix
    /// socket and TCP are counted apart, so strangers on TCP cannot lock
    /// the socket's owner out. The process must be allowed the descriptors
    /// the caps need ([`descriptors_needed`](super::descriptors_needed));
    /// the server does not change `RLIMIT_NOFILE` itself (`envol serve`
    /// and `envol up` raise it at start).
    pub fn with_max_connections(self, connections: usize) -> Self {
        self.reconfigure(|c| c.limits.max_connections = connections.max(1))
    }

    /// Replaces [`REQUEST_TIMEOUT`](super::REQUEST_TIMEOUT): how long a
    /// request that has started arriving may stall (the threaded loop: no
    /// bytes for that long; the async loop: not complete within it), and a
    /// reply may wait for the client to take any of it, before the
    /// connection is closed.
    pub fn with_request_timeout(self, timeout: Duration) -> Self {
        self.reconfigure(|c| c.limits.request_timeout = timeout)
    }

    fn reconfigure(mut self, change: impl FnOnce(&mut ConnectionConfig)) -> Self {
        let mut config = ConnectionConfig::clone(&self.config);
        change(&mut config);
        self.config = Arc::new(config);
        self
    }

    /// Shows `description` as export `name`'s description (in
    /// `NBD_OPT_LIST`, `INFO` and `GO`) to clients that authenticated with a
    /// TLS client certificate the server verified ([`TlsConfig`] with a
    /// client CA); everyone else sees the export's own description. For
    /// details a stranger should not learn, such as a volume's key.
    pub fn with_certified_description(
        self,
        name: &str,
        description: String,
    ) -> Result<Self, ExportError> {
        self.exports.set_certified_description(name, description)?;
        Ok(self)
    }

    /// Adds `export` while the server runs (see [`with_certified_description`](Self::with_certified_description)
    /// for `certified_description`); new connections can reach it at once,
    /// existing ones are untouched.
    pub fn attach(
        &self,
        export: Export,
        certified_description: Option<String>,
    ) -> Result<(), ExportError> {
        self.exports.attach(export, certified_description)
    }

    /// Detaches export `name`: refuses new connections to it, waits for its
    /// clients to leave — or, with `force`, flushes it and evicts them:
    /// requests from then on get `ESHUTDOWN`, and connections still open
    /// after [`EVICTION_GRACE`](super::EVICTION_GRACE) close once their
    /// in-flight requests are answered — flushes it, and drops its device
    /// once nothing else holds it. Other exports and their connections are untouched.
    /// Dropping the future while it waits for clients reopens the export.
    pub async fn detach(&self, name: &str, force: bool) -> Result<Detached, DetachError> {
        // A handshake reading the old set ends within its timeout, a
        // connection's draining within the shutdown grace.
        let release_deadline = self.config.handshake_timeout + SHUTDOWN_GRACE;
        // (The eviction grace and the drain after it are waited for as the
        // clients' leaving, before this deadline starts.)
        self.exports.detach(name, force, release_deadline).await
    }

    /// Every export with its counters, those being detached included.
    pub fn status(&self) -> Vec<ExportStatus> {
        self.exports.status()
    }

    /// The server's Prometheus metrics: a collector that reads every
    /// export's counters at each scrape (`Registry::register_collector`).
    pub fn metrics(&self) -> ServerMetrics {
        ServerMetrics(self.exports.clone())
    }

    /// Whether clients must start TLS before anything else.
    pub fn tls_required(&self) -> bool {
        self.config
            .tls
            .as_ref()
            .is_some_and(|t| t.mode() == TlsMode::Require)
    }

    /// The exports as they are now, those being detached included.
    pub fn exports(&self) -> Vec<Export> {
        self.exports
            .snapshot()
            .all()
            .iter()
            .map(|e| e.export().clone())
            .collect()
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: stop
    /// accepting, let every connection finish its in-flight requests and
    /// send their replies (connections still negotiating are dropped), flush
    /// every device, remove the Unix socket. Returns the first flush error.
    ///
    /// Connection-level problems (a client vanishing, protocol violations)
    /// end only that connection and are reported through `tracing`.
    pub async fn serve(
        &self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut next_id: u64 = 0;
        tokio::pin!(shutdown);
        let limits = self.config.limits;
        // Each listener has its own in-flight budget, as it has its own
        // connection count: however much of the TCP budget strangers hold
        // (a reply stalls only if it is taken by nobody, so a client taking
        // a trickle keeps its share for ever), the Unix socket's owner
        // draws on a budget of its own.
        let unix_transmission = ConnectionLimits::new(&limits);
        let tcp_transmission = ConnectionLimits::new(&limits);
        // Each listener has its own count, so TCP strangers cannot take the
        // places of the Unix socket's owner.
        let mut unix_places = Places::new(limits.max_connections, "unix");
        let mut tcp_places = Places::new(limits.max_connections, "tcp");
        let context = |place, transmission: &ConnectionLimits| ConnectionContext {
            exports: self.exports.clone(),
            config: self.config.clone(),
            shared: self.shared.clone(),
            limits: transmission.clone(),
            stop: stop_rx.clone(),
            _place: place,
        };

        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = accept_unix(listeners.unix.as_ref()) => match accepted {
                    Ok(stream) => {
                        next_id += 1;
                        let Some(place) = unix_places.take("unix") else {
                            drop(stream);
                            continue;
                        };
                        let span = info_span!("nbd_conn", id = next_id, peer = "unix");
                        let context = context(place, &unix_transmission);
                        connections.spawn(connection(stream, context).instrument(span));
                    }
                    Err(e) => accept_failed(e).await,
                },
                accepted = accept_tcp(listeners.tcp.as_ref()) => match accepted {
                    Ok((stream, peer)) => {
                        next_id += 1;
                        let Some(place) = tcp_places.take(&peer.to_string()) else {
                            drop(stream);
                            continue;
                        };
                        // NBD replies are latency-bound; the spec asks for
                        // TCP_NODELAY on both ends.
                        if let Err(e) = stream.set_nodelay(true) {
                            debug!(error = %e, "could not set TCP_NODELAY");
                        }
                        let span = info_span!("nbd_conn", id = next_id, peer = %peer);
                        let context = context(place, &tcp_transmission);
                        connections.spawn(connection(stream, context).instrument(span));
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done {
                        warn!(error = %e, "nbd connection task failed");
                    }
                }
            }
        }

        info!(
            connections = connections.len(),
            "nbd server shutting down: finishing in-flight requests"
        );
        drop(listeners);
        // Receivers only see this if we keep the sender alive while waiting.
        let _ = stop_tx.send(true);
        while let Some(done) = connections.join_next().await {
            if let Err(e) = done {
                warn!(error = %e, "nbd connection task failed");
            }
        }
        self.flush_all().await
    }

    /// Flushes every export's device, so a clean shutdown leaves every
    /// acknowledged write durable even if no client sent FLUSH.
    async fn flush_all(&self) -> io::Result<()> {
        let mut first_error = None;
        for (name, device) in self.exports.devices() {
            let result = tokio::task::spawn_blocking(move || device.flush())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
            if let Err(e) = result {
                warn!(export = %name, error = %e, "flush at shutdown failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Binds, then serves until `shutdown` resolves. Use [`Listeners::bind`] and
/// [`Server::serve`] instead to report the bound addresses before serving.
pub async fn run(
    exports: Vec<Export>,
    unix: Option<PathBuf>,
    tcp: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let server =
        Server::new(exports).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listeners = Listeners::bind(unix.as_deref(), tcp).await?;
    server.serve(listeners, shutdown).await
}

/// Bound sockets, ready to be served. Binding is separate from serving so
/// that a caller learns of bind errors (and can print the URIs) first.
#[derive(Debug)]
pub struct Listeners {
    unix: Option<UnixEndpoint>,
    tcp: Option<TcpListener>,
}

impl Listeners {
    /// Binds a Unix socket at `unix` and/or a TCP listener at `tcp` (port 0
    /// picks a free port; see [`Listeners::tcp_addr`]).
    ///
    /// An existing file at `unix` is replaced only if it is a socket nobody
    /// is listening on (a stale one from a crashed server); anything else is
    /// an error, so we never delete a user's file or steal a live socket.
    /// The socket is created with the process umask: access to it is access
    /// to the plaintext volume, so callers wanting 0600 set a 077 umask or
    /// place it in a private directory.
    pub async fn bind(unix: Option<&Path>, tcp: Option<SocketAddr>) -> io::Result<Self> {
        if unix.is_none() && tcp.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no listener: give a Unix socket path or a TCP address",
            ));
        }
        let unix = match unix {
            Some(path) => Some(UnixEndpoint::bind(path).await?),
            None => None,
        };
        let tcp =
            match tcp {
                Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?),
                None => None,
            };
        Ok(Self { unix, tcp })
    }

    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|u| u.path())
    }

    /// The bound TCP address (with the real port when 0 was asked for).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// NBD URIs (as understood by libnbd and qemu) reaching `export_name`
    /// on each listener.
    pub fn uris(&self, export_name: &str) -> Vec<String> {
        self.uris_with_tls(export_name, false)
    }

    /// Like [`Listeners::uris`], with the TLS schemes (`nbds+unix`, `nbds`)
    /// when `tls` is set.
    pub fn uris_with_tls(&self, export_name: &str, tls: bool) -> Vec<String> {
        self.uri_maker(tls)(export_name)
    }

    /// [`Listeners::uris_with_tls`] as a function that outlives the
    /// listeners (for exports attached while they serve).
    pub fn uri_maker(&self, tls: bool) -> impl Fn(&str) -> Vec<String> + Send + Sync + 'static {
        let unix = self.unix_path().map(Path::to_path_buf);
        let tcp = self.tcp_addr();
        move |export_name: &str| {
            let mut uris = Vec::new();
            let name = percent_encode(export_name, false);
            let s = if tls { "s" } else { "" };
            if let Some(path) = &unix {
                let socket = percent_encode(&path.to_string_lossy(), true);
                uris.push(format!("nbd{s}+unix:///{name}?socket={socket}"));
            }
            if let Some(addr) = tcp {
                uris.push(format!("nbd{s}://{addr}/{name}"));
            }
            uris
        }
    }
}

async fn accept_unix(endpoint: Option<&UnixEndpoint>) -> io::Result<tokio::net::UnixStream> {
    match endpoint {
        Some(e) => e.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Accept errors are usually transient (out of file descriptors, a client
/// that reset before accept); back off briefly instead of spinning or dying.
async fn accept_failed(e: io::Error) {
    warn!(error = %e, "accepting an nbd connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A listener's places for connections, and its log of refusals: the
/// first refusal is logged at once, later ones at most once a second with
/// their count, so a flood of connections cannot flood the log.
struct Places {
    free: Arc<Semaphore>,
    cap: usize,
    listener: &'static str,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Places {
    fn new(cap: usize, listener: &'static str) -> Self {
        Self {
            free: Arc::new(Semaphore::new(cap)),
            cap,
            listener,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// One place for a new connection, or `None` (logged) at the cap.
    fn take(&mut self, peer: &str) -> Option<OwnedSemaphorePermit> {
        if let Ok(place) = self.free.clone().try_acquire_owned() {
            return Some(place);
        }
        self.unlogged += 1;
        let due = self
            .last_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            warn!(
                listener = self.listener,
                peer,
                refused = self.unlogged,
                max_connections = self.cap,
                "nbd connection refused: the listener is at its connection cap"
            );
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        }
        None
    }
}

/// Everything a connection task holds besides its stream; its place on
/// the listener is given back when the task ends.
struct ConnectionContext {
    exports: Arc<ExportRegistry>,
    config: Arc<ConnectionConfig>,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
    _place: OwnedSemaphorePermit,
}

/// One client connection: handshake (bounded in time, abandoned on
/// shutdown), then transmission. Never returns an error: a connection's
/// failure is its own and is logged here.
async fn connection<S>(stream: S, context: ConnectionContext)
where
    S: AsyncRead + AsyncWrite + IntoPlainSocket + Unpin + Send + 'static,
{
    let ConnectionContext {
        exports,
        config,
        shared,
        limits,
        mut stop,
        _place,
    } = context;
    debug!("nbd client connected");
    let attached = tokio::select! {
        r = tokio::time::timeout(config.handshake_timeout, handshake(stream, &exports, &config)) => r,
        _ = shutdown_requested(&mut stop) => {
            debug!("nbd handshake abandoned: server shutting down");
            return;
        }
    };
    let attached = match attached {
        Err(_) => {
            info!("nbd handshake timed out");
            return;
        }
        Ok(Err(HandshakeFailure::Nbd(HandshakeError::Io(e))))
            if e.kind() == io::ErrorKind::UnexpectedEof =>
        {
            debug!("nbd client left during the handshake");
            return;
        }
        Ok(Err(e)) => {
            warn!(error = %e, "nbd handshake failed");
            return;
        }
        Ok(Ok(Attached::Closed)) => {
            debug!("nbd client aborted the handshake");
            return;
        }
        Ok(Ok(a)) => a,
    };
    let negotiated = match &attached {
        Attached::Plain(_, n) | Attached::Tls(_, n) => &n.export,
        Attached::Closed => return,
    };
    // Counted as the export's client for as long as this connection lasts;
    // an export that began detaching since the client chose it is gone.
    let Some(_client) = negotiated.connect() else {
        info!(export = %negotiated.name, "nbd client refused: the export is being detached");
        return;
    };
    let stop = Stop::new(stop, negotiated.eviction());
    let result = match attached {
        Attached::Plain(stream, n) => {
            attached_log(&n, false);
            match config.transmission_loop {
                TransmissionLoop::Threaded => match stream.into_plain_socket() {
                    Ok(socket) => {
                        threaded_loop::serve(socket, None, *n, stop, shared, limits).await
                    }
                    Err(e) => Err(e.into()),
                },
                TransmissionLoop::Async => {
                    async_loop::serve(stream, *n, stop, shared, limits).await
                }
            }
        }
        Attached::Tls(stream, n) => {
            attached_log(&n, true);
            match config.transmission_loop {
                TransmissionLoop::Threaded => {
                    // The session leaves tokio-rustls with whatever it had
                    // decrypted or sealed but not yet sent.
                    let (io, conn) = stream.into_inner();
                    match io.into_plain_socket() {
                        Ok(socket) => {
                            let tls = Some(TlsSession::new(conn));
                            threaded_loop::serve(socket, tls, *n, stop, shared, limits).await
                        }
                        Err(e) => Err(e.into()),
                    }
                }
                TransmissionLoop::Async => {
                    async_loop::serve(*stream, *n, stop, shared, limits).await
                }
            }
        }
        Attached::Closed => return,
    };
    match result {
        Ok(()) => info!("nbd client detached"),
        Err(e) => warn!(error = %e, "nbd connection ended with an error"),
    }
}

fn attached_log(n: &Negotiated, tls: bool) {
    info!(
        export = %n.export.name,
        structured_replies = n.structured_replies,
        tls,
        "nbd client attached"
    );
}

/// How a handshake ended well: in transmission on the plain or the TLS
/// stream, or with the client's soft disconnect.
enum Attached<S> {
    Plain(S, Box<Negotiated>),
    Tls(Box<tokio_rustls::server::TlsStream<S>>, Box<Negotiated>),
    Closed,
}

#[derive(Debug, thiserror::Error)]
enum HandshakeFailure {
    #[error(transparent)]
    Nbd(#[from] HandshakeError),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
}

/// Option haggling, and if the client starts TLS, the TLS handshake and
/// the rest of the haggling over TLS.
async fn handshake<S>(
    mut stream: S,
    exports: &ExportRegistry,
    config: &ConnectionConfig,
) -> Result<Attached<S>, HandshakeFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = match &config.tls {
        None => Tls::Unavailable,
        Some(t) => Tls::Offered {
            required: t.mode() == TlsMode::Require,
        },
    };
    let no_zeroes = match handshake::negotiate(&mut stream, exports, tls).await? {
        HandshakeOutcome::Transmission(n) => return Ok(Attached::Plain(stream, n)),
        HandshakeOutcome::Closed => return Ok(Attached::Closed),
        HandshakeOutcome::StartTls { no_zeroes } => no_zeroes,
    };
    // Only offered when configured, so this is always Some.
    let Some(tls) = &config.tls else {
        return Err(HandshakeFailure::Tls(io::Error::other(
            "TLS not configured",
        )));
    };
    let mut stream = tls
        .acceptor()
        .accept(stream)
        .await
        .map_err(HandshakeFailure::Tls)?;
    debug!("nbd TLS established");
    // With a client CA configured, rustls has verified any certificate
    // the client presented (and refused the handshake otherwise).
    let certified = stream.get_ref().1.peer_certificates().is_some();
    match handshake::negotiate_over_tls(&mut stream, exports, no_zeroes, certified).await? {
        HandshakeOutcome::Transmission(n) => Ok(Attached::Tls(Box::new(stream), n)),
        // Not offered over TLS; a client that aborts is done either way.
        HandshakeOutcome::Closed | HandshakeOutcome::StartTls { .. } => Ok(Attached::Closed),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/`
/// when encoding a path), for building URIs from names and socket paths.
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent_encode("disk 1/é", false), "disk%201%2F%C3%A9");
        assert_eq!(percent_encode("/tmp/a b.sock", true), "/tmp/a%20b.sock");
    }
}
