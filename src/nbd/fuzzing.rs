//! Test-support entry points: the handshake and the transmission phase run
//! on any in-memory stream, without listeners, sockets or timeouts.
//!
//! The fuzz targets in `fuzz/` (`nbd_handshake`, `nbd_requests`) drive the
//! real state machines through these, over a `tokio::io::duplex` pipe (or,
//! for the threaded transmission loop, a Unix socket pair). They
//! are thin wrappers over the crate-private `handshake::negotiate`,
//! `async_loop::serve` and `threaded_loop::serve_blocking`, exposed (hidden from the docs) only so code
//! outside the crate can reach them. Not part of the supported API.

use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::async_loop;
use super::export::{Export, ExportError};
use super::export_set::ExportSet;
use super::handshake::{self, HandshakeError, HandshakeOutcome, Negotiated, Tls};
use super::limits::{ConnectionLimits, Limits};
use super::registry::ExportRegistry;
use super::served_export::ServedExport;
use super::threaded_loop::{self, PlainSocket};
use super::transmission::{Stop, TransmissionError};
use super::workers::Shared;

/// The TLS situation a handshake starts in (the server's TLS mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// No TLS configured (NOTLS): STARTTLS is answered `ERR_UNSUP`.
    Unavailable,
    /// TLS offered; `required` is FORCEDTLS.
    Offered { required: bool },
    /// Haggling already runs over TLS (as after STARTTLS): no greeting.
    Active,
}

/// How a handshake that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Transmission would start on this export, with these options.
    Transmission {
        export: String,
        structured_replies: bool,
        base_allocation: bool,
    },
    /// The client sent `NBD_OPT_ABORT`.
    Closed,
    /// `NBD_OPT_STARTTLS` was acknowledged.
    StartTls,
}

/// Runs the server side of the handshake on `stream` against `exports`
/// (validated as [`Server::new`](super::Server::new) does).
pub async fn handshake<S>(
    stream: &mut S,
    exports: Vec<Export>,
    tls: TlsState,
) -> Result<Result<Outcome, HandshakeError>, ExportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exports = ExportRegistry::new(ExportSet::new(exports)?);
    let result = match tls {
        TlsState::Unavailable => handshake::negotiate(stream, &exports, Tls::Unavailable).await,
        TlsState::Offered { required } => {
            handshake::negotiate(stream, &exports, Tls::Offered { required }).await
        }
        TlsState::Active => handshake::negotiate_over_tls(stream, &exports, false, false).await,
    };
    Ok(result.map(|outcome| match outcome {
        HandshakeOutcome::Transmission(n) => Outcome::Transmission {
            export: n.export.name.clone(),
            structured_replies: n.structured_replies,
            base_allocation: n.base_allocation,
        },
        HandshakeOutcome::Closed => Outcome::Closed,
        HandshakeOutcome::StartTls { .. } => Outcome::StartTls,
    }))
}

/// Runs the transmission phase on `stream` for `export`, as if the
/// handshake had negotiated the given options, until DISC, the client
/// closing its side, or an error. Never sees a server shutdown.
/// `base_allocation` counts only with `structured_replies`, as the
/// handshake allows `NBD_OPT_SET_META_CONTEXT` only after structured
/// replies were negotiated.
pub async fn transmission<S>(
    stream: S,
    export: Export,
    structured_replies: bool,
    base_allocation: bool,
) -> Result<(), TransmissionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    // Keep the sender alive so shutdown is never requested.
    let (_stop, stop_rx) = watch::channel(false);
    let negotiated = negotiated(export, structured_replies, base_allocation);
    let stop = Stop::new(stop_rx, negotiated.export.eviction());
    async_loop::serve(stream, negotiated, stop, shared(), limits()).await
}

/// What a handshake would have negotiated; `base_allocation` counts only
/// with structured replies.
fn negotiated(export: Export, structured_replies: bool, base_allocation: bool) -> Negotiated {
    Negotiated {
        export: Arc::new(ServedExport::new(export, None)),
        structured_replies,
        base_allocation: base_allocation && structured_replies,
    }
}

/// One set of workers for every call of both loops, as a server would
/// share it.
fn shared() -> Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED
        .get_or_init(|| Arc::new(Shared::with_default_workers()))
        .clone()
}

/// The default limits, with one in-flight budget for every call, as a
/// listener's connections share it.
fn limits() -> ConnectionLimits {
    static LIMITS: OnceLock<ConnectionLimits> = OnceLock::new();
    LIMITS
        .get_or_init(|| ConnectionLimits::new(&Limits::default()))
        .clone()
}

/// Runs the threaded transmission loop — the one plain Unix and TCP
/// connections get — on `socket` (one end of a socket pair, say), as if
/// the handshake had negotiated the given options, until DISC, the client
/// closing its side, or an error. Blocks the calling thread.
pub fn threaded_transmission(
    socket: std::os::unix::net::UnixStream,
    export: Export,
    structured_replies: bool,
    base_allocation: bool,
) -> Result<(), TransmissionError> {
    let negotiated = negotiated(export, structured_replies, base_allocation);
    threaded_loop::serve_blocking(
        PlainSocket::Unix(socket),
        None,
        negotiated,
        shared(),
        limits(),
    )
}
