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
//! | `tls.rs` | [`TlsConfig`]: rustls server configuration (ring provider), client-certificate verification |
//! | `transmission.rs` | the request loop: validation, parallel device calls, the reply writer |
//! | `workers.rs` | the server's fixed pool of worker threads (device calls) and its buffer pool |
//! | `export.rs` | [`Export`] and validation of the export set; transmission flags |
//! | `protocol.rs` | constants and typed parse/encode of every fixed-size message |
//! | `fuzzing.rs` | hidden test-support entry points: handshake and transmission on an in-memory stream (for `fuzz/`) |
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
//!                                    ▲   │    ├─ ABORT → close
//!                                    │   │    └─ STARTTLS → TLS handshake ─┐
//!                                    └───┘ LIST, INFO, STRUCTURED_REPLY,   │
//!                                    ▲     {LIST,SET}_META_CONTEXT, anything│
//!                                    │     else → NBD_REP_ERR_UNSUP         │
//!                                    └──── Haggling over TLS (no greeting, ◀┘
//!                                          option state forgotten)
//! ```
//!
//! `NBD_OPT_INFO`/`GO` report the export (size, flags), and on request its
//! name, description and block sizes (GO sends block sizes unasked).
//! Structured replies and the `base:allocation` metadata context are
//! supported. The whole handshake, TLS included, must finish within
//! [`HANDSHAKE_TIMEOUT`] (or [`Server::with_handshake_timeout`]); once in
//! transmission a client may idle as long as it likes (the kernel does).
//!
//! # TLS
//!
//! Without a [`TlsConfig`] the server is in the spec's NOTLS mode
//! (`STARTTLS` → `ERR_UNSUP`). With one ([`Server::with_tls`]):
//! [`TlsMode::Require`] is FORCEDTLS — before TLS every option but
//! `STARTTLS` and `ABORT` gets `NBD_REP_ERR_TLS_REQD`, `EXPORT_NAME` and a
//! client without fixed newstyle (which cannot do TLS) are disconnected;
//! [`TlsMode::Optional`] serves plaintext clients too and upgrades those
//! that ask. With a client CA, clients must present a certificate that
//! chains to it (webpki verification). After the TLS handshake, haggling
//! continues over TLS with no new greeting and nothing remembered from
//! before (structured replies, meta contexts), as the spec requires; the
//! transmission phase then runs on the TLS stream, and its end (DISC)
//! sends close_notify before closing.
//!
//! # Block status and zeroing
//!
//! `NBD_CMD_BLOCK_STATUS` for `base:allocation` asks the device
//! ([`BlockDevice::block_status`](crate::volume::BlockDevice::block_status)):
//! for a volume, holes in the backing file (SEEK_HOLE/SEEK_DATA) are
//! `HOLE|ZERO` (the zero-sector rule makes them read as zeros) and the rest
//! is data (status 0, always truthful). Runs are clipped to the request,
//! merged, and capped per reply (the client asks again for the rest).
//! `SEND_FAST_ZERO` is advertised with `SEND_WRITE_ZEROES`; a
//! `WRITE_ZEROES` with `FAST_ZERO` proceeds only when it may punch (no
//! `NO_HOLE`) on a device that says punching is cheap
//! ([`BlockDevice::fast_zero`](crate::volume::BlockDevice::fast_zero));
//! otherwise it is answered `ENOTSUP` before anything is touched.
//!
//! # Concurrency
//!
//! One tokio task per connection reads requests; every device call runs on
//! a fixed pool of worker threads (about one per core, at least two;
//! `ENVOL_NBD_WORKERS` overrides the count, e.g. for a backing store that
//! blocks on a slow disk) created once per [`Server`] and shared by all its connections, fed by a
//! bounded job queue — so many requests of one connection are served in
//! parallel and answered in completion order, each reply matched by its
//! cookie, without a thread per request. READ/WRITE data lives in buffers
//! from a server-wide pool (idle buffers capped at 64 MiB), reused without
//! clearing. Replies go through a channel to one writer task
//! per connection, so frames never interleave. A per-connection budget of
//! [`IN_FLIGHT_BYTES`] bounds buffered payloads: when it is spent the
//! reader simply stops reading, which pushes back on the client through
//! TCP/Unix flow control. Connections share nothing but the `Arc`'d device
//! and the server's workers and buffers, so a client that vanishes mid-request affects no one else (its pending
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
//! [`errno_of`]); the connection stays usable. Requests that break the
//! rules (unknown command or flag, out of range, over the maximum size,
//! not aligned to the advertised minimum block size) get EINVAL/ENOSPC/
//! EPERM without reaching the device, and a refused WRITE's payload is
//! read and dropped so framing survives. Protocol violations that leave
//! the byte stream unframeable (a bad request magic, a payload above 32
//! MiB) are hard disconnects, as the spec allows; a WRITE whose payload
//! never fully arrives is never applied (payloads are read in full before
//! the device is called).

mod commands;
mod export;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
pub mod protocol;
mod server;
mod threaded;
mod tls;
mod transmission;
mod workers;

pub use commands::errno_of;
pub use export::{Export, ExportError};
pub use handshake::{HandshakeError, MAX_OPTION_DATA};
pub use server::{HANDSHAKE_TIMEOUT, Listeners, Server, run};
pub use tls::{TlsConfig, TlsError, TlsMode};
pub use transmission::{IN_FLIGHT_BYTES, SHUTDOWN_GRACE, TransmissionError};
