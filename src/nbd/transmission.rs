//! The rules of the transmission phase, whichever loop schedules it: what a
//! request header admits (and what a refused WRITE's payload costs to
//! skip), the per-connection in-flight budget, the reply [`Frame`], how a
//! connection's end is judged — including
//! [`Stalled`](TransmissionError::Stalled), a request or reply that ran
//! past the request deadline, told apart from other I/O errors by
//! [`is_stall`] — and how long server shutdown waits for replies to drain.
//! (The listener-wide budget and the deadlines' values are `limits.rs`'s.)
//!
//! Two loops apply these rules (see `mod.rs`): `threaded_loop.rs` on
//! blocking threads for plain sockets, `async_loop.rs` on tokio tasks for
//! TLS (and, as a server option, for plain sockets too). They differ only in
//! how they schedule reading, device calls and writing; everything they must
//! agree on lives here, and neither imports from the other.

use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

use super::commands::{CommandContext, MAX_STATUS_DESCRIPTORS, ReplyData};
use super::export_stats::InFlight;
use super::protocol::{Command, ProtocolError, REQUEST_HEADER_LEN, Request};

/// Per-connection cap on bytes buffered for in-flight requests.
pub const IN_FLIGHT_BYTES: u32 = 64 * 1024 * 1024;
/// What every request costs against [`IN_FLIGHT_BYTES`] on top of its
/// buffer, so that a flood of zero-length requests is bounded too
/// (at most 64 MiB / 4 KiB = 16384 in flight).
const REQUEST_OVERHEAD: u32 = 4096;
/// A WRITE whose payload we refuse is still read and discarded, to keep the
/// stream in sync; beyond this size (and beyond the advertised maximum) we
/// hard-disconnect instead, which the spec allows for payloads above 2^25.
const DISCARD_LIMIT: u32 = 1 << 25;
/// After server shutdown, how long in-flight replies may take to drain to a
/// client before the connection is dropped anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a transmission phase ended other than by DISC or the client leaving.
#[derive(Debug, Error)]
pub enum TransmissionError {
    #[error("i/o during transmission: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("write payload of {0} bytes exceeds what this server accepts")]
    PayloadTooLarge(u32),
    /// A request started arriving and stalled past the deadline (the
    /// threaded loop: no bytes for that long; the async loop: not complete
    /// within it), or a reply waited that long for the client to take any
    /// of it.
    #[error(
        "closed: the client stalled past the request deadline in the middle of a request or reply"
    )]
    Stalled,
}

impl TransmissionError {
    /// The error an I/O failure becomes: a read or write that timed out on
    /// the request deadline is the client stalling, anything else is I/O.
    pub(super) fn from_io(e: io::Error) -> Self {
        if is_stall(&e) {
            Self::Stalled
        } else {
            Self::Io(e)
        }
    }
}

/// Whether an I/O error is a deadline running out (`SO_RCVTIMEO` and
/// `SO_SNDTIMEO` report `EAGAIN`; the async loop's timers `TimedOut`).
pub(super) fn is_stall(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// How a loop's reader stopped.
pub(super) enum End {
    /// `NBD_CMD_DISC`, or the client closed its side (for the threaded
    /// loop, also the server shutting the read side down).
    Client,
    /// The server is shutting down (seen as such by the async loop).
    Shutdown,
    /// The writer stopped (client no longer reads, or a write failed).
    WriterGone,
}

/// One reply, encoded, ready for the writer. `P` is the loop's share of
/// the in-flight budget: holding it until the frame is written (or
/// dropped) is what bounds buffered memory.
pub(super) struct Frame<P> {
    pub(super) head: Vec<u8>,
    pub(super) data: Option<ReplyData>,
    pub(super) _permit: P,
}

impl<P> Frame<P> {
    pub(super) fn new(head: Vec<u8>, data: Option<ReplyData>, permit: P) -> Self {
        Self {
            head,
            data,
            _permit: permit,
        }
    }
}

/// What one request header asks of a transmission loop.
pub(super) struct Admission {
    pub(super) request: Request,
    /// Set when validation failed: answered with this errno, never reaching
    /// the device.
    pub(super) rejected: Option<(u32, &'static str)>,
    /// Payload bytes that follow the header (a WRITE's, even a refused one:
    /// it must be read to keep the stream framed).
    pub(super) payload_len: u32,
    /// What the request holds of [`IN_FLIGHT_BYTES`] until its reply is
    /// written: its buffer (READ data, WRITE payload, BLOCK_STATUS at its
    /// largest reply) plus [`REQUEST_OVERHEAD`].
    pub(super) cost: u32,
    /// Counts the request in its export's in-flight requests until the
    /// reply frame that carries it is written or dropped.
    pub(super) in_flight: InFlight,
}

impl Admission {
    /// Bytes of a refused WRITE's payload that must be read and dropped
    /// before the next header; `None` when nothing is to be discarded.
    pub(super) fn to_discard(&self) -> Option<u64> {
        (self.payload_len > 0 && self.rejected.is_some()).then_some(u64::from(self.payload_len))
    }
}

/// Parses and checks a request header. `Ok(None)` is `NBD_CMD_DISC`; a
/// refused WRITE whose payload is too large even to discard ends the
/// connection.
pub(super) fn admit(
    cmd: &CommandContext,
    header: &[u8; REQUEST_HEADER_LEN],
) -> Result<Option<Admission>, TransmissionError> {
    let request = Request::parse(header)?;
    let command = request.command();
    if command == Command::Disc {
        return Ok(None);
    }
    let rejected = cmd.validate(&request);
    let payload_len = if command == Command::Write {
        request.length
    } else {
        0
    };
    if payload_len > 0 && rejected.is_some() && payload_len > DISCARD_LIMIT.max(cmd.sizes.maximum) {
        return Err(TransmissionError::PayloadTooLarge(payload_len));
    }
    let buffered = match command {
        _ if rejected.is_some() => 0,
        Command::Read | Command::Write => request.length,
        Command::BlockStatus => u32::try_from(MAX_STATUS_DESCRIPTORS * 8).unwrap_or(u32::MAX),
        _ => 0,
    };
    let in_flight = cmd.export.stats.request(&request, rejected.is_none());
    Ok(Some(Admission {
        request,
        rejected,
        payload_len,
        in_flight,
        cost: buffered
            .saturating_add(REQUEST_OVERHEAD)
            .min(IN_FLIGHT_BYTES),
    }))
}

/// Checks that discarding a refused payload read all of it: a client that
/// closes mid-payload has broken the framing.
pub(super) fn discarded(copied: u64, expected: u64) -> io::Result<()> {
    if copied < expected {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Judges a finished connection from how its reader ended and what its
/// writer reported: a reader error wins; then a writer that gave up on a
/// client that took nothing within the request deadline; a writer that
/// stopped because the client went away is a normal end.
pub(super) fn conclude(
    ended: Result<End, TransmissionError>,
    written: io::Result<()>,
) -> Result<(), TransmissionError> {
    match (ended?, written) {
        (_, Err(e)) if is_stall(&e) => Err(TransmissionError::Stalled),
        (End::WriterGone, _) => Ok(()),
        (End::Client | End::Shutdown, Err(e)) if !is_disconnect(&e) => Err(e.into()),
        (End::Client | End::Shutdown, _) => Ok(()),
    }
}

/// Whether a write failed only because the client is gone.
pub(super) fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// After a forced detach, how long an evicted export's connections keep
/// reading — answering every request `ESHUTDOWN`, the NBD spec's soft
/// disconnect, so that a client learns why and can send `NBD_CMD_DISC` —
/// before they stop reading and close as at server shutdown.
pub const EVICTION_GRACE: Duration = Duration::from_secs(10);

/// What tells a connection in transmission to stop reading and close: the
/// server shutting down, or [`EVICTION_GRACE`] after its export was
/// evicted by a forced detach.
pub(crate) struct Stop {
    server: watch::Receiver<bool>,
    export: watch::Receiver<bool>,
    /// When the eviction's grace ends, once it has been seen: fixed, so
    /// that a client sending request after request cannot push it back.
    evicted_until: Option<tokio::time::Instant>,
}

impl Stop {
    pub(crate) fn new(server: watch::Receiver<bool>, export: watch::Receiver<bool>) -> Self {
        Self {
            server,
            export,
            evicted_until: None,
        }
    }

    /// Resolves once either asks.
    pub(crate) async fn requested(&mut self) {
        let Self {
            server,
            export,
            evicted_until,
        } = self;
        let evicted = async {
            if evicted_until.is_none() {
                shutdown_requested(export).await;
                *evicted_until = Some(tokio::time::Instant::now() + EVICTION_GRACE);
            }
            if let Some(until) = *evicted_until {
                tokio::time::sleep_until(until).await;
            }
        };
        tokio::select! {
            _ = shutdown_requested(server) => {}
            _ = evicted => {}
        }
    }
}

/// Resolves once shutdown is requested; never, if the server side is gone
/// without requesting it.
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}
