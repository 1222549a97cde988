//! The NBD server layer: serves [`BlockDevice`](crate::volume::BlockDevice)s
//! to Network Block Device clients (the Linux kernel's `nbd-client`, qemu,
//! libnbd's `nbdcopy`/`nbdinfo`/`nbdfuse`, ...), following the NBD project's
//! `doc/proto.md`.
//!
//! # Layering
//!
//! This layer knows the wire protocol and nothing about encryption or
//! storage: it speaks only the synchronous `BlockDevice` trait, and the
//! command line builds [`Export`]s from volumes and hands them to a
//! [`Server`]. Inside, one file per responsibility, top to bottom:
//!
//! | file | owns |
//! |---|---|
//! | `server.rs` | [`Listeners`] (Unix socket, TCP), the accept loop, per-connection lifecycle, graceful shutdown |
//! | `handshake.rs` | the fixed newstyle handshake state machine and its options |
//! | `transmission.rs` | the request loop: validation, parallel device calls, the reply writer |
//! | `export.rs` | [`Export`] and validation of the export set; transmission flags |
//! | `protocol.rs` | constants and typed parse/encode of every fixed-size message |
//!
//! Only `protocol.rs` knows byte layouts, and only `transmission.rs` calls
//! the device.
//!
//! # Handshake
//!
//! Fixed newstyle only (oldstyle has been obsolete since nbd 3.10). The
//! server sends `NBDMAGIC`, `IHAVEOPT` and the handshake flags
//! `FIXED_NEWSTYLE | NO_ZEROES`; the client answers with its flags (unknown
//! bits close the connection, as the spec requires); then the client sends
//! options until one of them ends negotiation:
//!
//! ```text
//! SendGreeting → AwaitClientFlags → Haggling ─┬─ EXPORT_NAME / GO → transmission
//!                                    ▲   │    └─ ABORT → close
//!                                    └───┘ LIST, INFO, STRUCTURED_REPLY,
//!                                          {LIST,SET}_META_CONTEXT, anything
//!                                          else → NBD_REP_ERR_UNSUP
//! ```
//!
//! `NBD_OPT_INFO`/`GO` report the export (size, flags), and on request its
//! name, description and block sizes (GO sends block sizes unasked).
//! Structured replies and the `base:allocation` metadata context are
//! supported; TLS (`STARTTLS`) is not yet, so it is refused with
//! `ERR_UNSUP`. The whole handshake must finish within
//! [`HANDSHAKE_TIMEOUT`].
//!
//! # Concurrency
//!
//! One tokio task per connection reads requests; every device call runs on
//! the blocking pool (`spawn_blocking`), so many requests of one connection
//! are served in parallel and answered in completion order, each reply
//! matched by its cookie. Replies go through a channel to one writer task
//! per connection, so frames never interleave. A per-connection budget of
//! [`IN_FLIGHT_BYTES`] bounds buffered payloads: when it is spent the
//! reader simply stops reading, which pushes back on the client through
//! TCP/Unix flow control. Connections share nothing but the `Arc`'d device,
//! so a client that vanishes mid-request affects no one else (its pending
//! device calls finish and their replies are dropped). All connections to an
//! export call the same device, so a FLUSH on one covers writes made on all
//! of them, which is why `CAN_MULTI_CONN` is advertised.
//!
//! Shutdown: the future given to [`Server::serve`] resolving stops the
//! accept loop; connections still negotiating are dropped; connections in
//! transmission stop reading, finish their in-flight requests and send the
//! replies (within a grace period), then close; finally every device is
//! flushed.
//!
//! Errors a device returns become NBD errors on that request only (see
//! [`errno_of`]); the connection stays usable. Protocol violations that
//! leave the byte stream unframeable (a bad request magic) are hard
//! disconnects, as the spec allows.

mod export;
mod handshake;
pub mod protocol;
mod server;
mod transmission;

pub use export::{Export, ExportError};
pub use handshake::{HandshakeError, MAX_OPTION_DATA};
pub use server::{HANDSHAKE_TIMEOUT, Listeners, Server, run};
pub use transmission::{IN_FLIGHT_BYTES, SHUTDOWN_GRACE, TransmissionError, errno_of};
