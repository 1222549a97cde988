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
//! | `tls.rs` | [`TlsConfig`]: rustls server configuration (aws-lc-rs provider), client-certificate verification |
//! | `tls_session.rs` | a TLS session in transmission shared by a connection's blocking threads: decrypt on the reader, seal on the writer, the mutex never held across a system call |
//! | `threaded_loop.rs` | the request loop for every socket, plain or TLS: a blocking reader per connection that answers cached requests itself, batched replies |
//! | `async_loop.rs` | the request loop on any async stream (TLS connections, plain ones on request, in-memory tests): every device call on the workers |
//! | `transmission.rs` | the rules both loops share: admission of a request header (and discarding a refused payload), the in-flight budget, reply frames, how a connection's end is judged, the shutdown grace |
//! | `commands.rs` | what each command means: validation against the export, the device call, the reply; which requests may run without a hand-off |
//! | `workers.rs` | the server's fixed pool of worker threads (device calls) and its buffer pool |
//! | `unix_endpoint.rs` | a Unix socket listener that replaces only a stale socket and removes its own file |
//! | `limits.rs` | what a stranger can hold: the limits' defaults, the listeners' in-flight budgets both loops draw on, the open-file limit the connection caps need |
//! | `export.rs` | [`Export`], what makes one valid, transmission flags |
//! | `export_set.rs` | the validated set of exports a connection negotiates against (one snapshot) |
//! | `served_export.rs` | an export while served: its life (open, closing, evicted) and its clients |
//! | `export_stats.rs` | per-export counters (clients, connections, in flight; per command requests, bytes, latency; errors by errno): what status and metrics read |
//! | `latency_histogram.rs` | a lock-free fixed-bucket latency histogram the request path records into |
//! | `metrics.rs` | the Prometheus collector: reads the exports' counters at scrape time |
//! | `registry.rs` | the exports of a running server: attach, detach (wait or evict, flush, release), status |
//! | `protocol.rs` | constants and typed parse/encode of every fixed-size message |
//! | `fuzzing.rs` | hidden test-support entry points: handshake and transmission on an in-memory stream (for `fuzz/`) |
//!
//! Only `protocol.rs` knows byte layouts, and only `commands.rs` calls the
//! device. Dependencies run one way: `server.rs` picks a loop; each loop
//! uses `transmission.rs`, `commands.rs` and `workers.rs`; neither loop
//! knows the other.
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
//! Each server has a fixed pool of worker threads for device calls (about
//! one per core, at least two; `ENVOL_NBD_WORKERS` overrides the count,
//! e.g. for a backing store that blocks on a slow disk), fed by a bounded
//! job queue, and a pool of request/reply buffers (idle buffers capped at
//! 64 MiB) reused without clearing. Many requests of one connection are
//! served in parallel and answered in completion order, each reply matched
//! by its cookie.
//!
//! A connection (Unix socket or TCP, plain or TLS) is handed, after
//! its handshake, to two blocking threads of its own (`threaded_loop.rs`): a
//! reader that parses requests and performs the ones that cannot make it
//! wait for a disk — READs whose data is in the page cache (`preadv2`
//! with `RWF_NOWAIT`), WRITEs up to 64 KiB, BLOCK_STATUS — right there,
//! and a writer for the replies of everything else, which runs on the
//! workers. The reader writes its own batch of replies when it is about
//! to wait for the client anyway; so a cached request costs no thread
//! hand-off at all, which on a few cores is what small requests cost
//! most. On a TLS connection the two threads share the rustls session
//! (`tls_session.rs`): the reader decrypts, whoever writes a batch seals
//! it, and neither holds the session's lock across a system call. The
//! async loop of `async_loop.rs` (one tokio task reads, every device call
//! goes to the workers, one writer task sends; tokio-rustls for TLS) is
//! kept for comparison. Either way frames never interleave, and a per-connection budget
//! of [`IN_FLIGHT_BYTES`] bounds buffered payloads and replies: when it is
//! spent the reader simply stops reading, which pushes back on the client
//! through TCP/Unix flow control. On top of that, a budget per listener
//! ([`MAX_INFLIGHT_BYTES`], [`Server::with_max_inflight`]) bounds what all
//! of its connections together buffer: a request waits its turn for it,
//! first come first served. The Unix socket and TCP have one each, so
//! strangers holding the TCP budget cannot make the socket's owner wait. [`Server::with_transmission_loop`]
//! (`envol serve --transmission async`) serves connections with the
//! async loop instead, for comparison; the conformance tests run against both.
//!
//! # Limits
//!
//! Besides the budgets: each listener serves at most [`MAX_CONNECTIONS`]
//! connections ([`Server::with_max_connections`]; the Unix socket and TCP
//! counted apart, so TCP strangers cannot lock the socket's owner out), and
//! closes more right after accept. A request that has started arriving may
//! not stall for [`REQUEST_TIMEOUT`] (threaded loop: no bytes for that
//! long; async loop: not complete within it)
//! ([`Server::with_request_timeout`]), and a reply the client takes none of
//! for that long ends the connection, which gives its budget back; an idle
//! connection between requests is never timed out. With the threaded
//! loop's two threads per connection, threads are bounded by twice the cap.
//!
//! Connections share nothing but the `Arc`'d device and the server's
//! workers and buffers, so a client that vanishes mid-request affects no
//! one else (its pending device calls finish and their replies are
//! dropped). All connections to an export call the same device, so a FLUSH
//! on one covers writes made on all of them, which is why `CAN_MULTI_CONN`
//! is advertised.
//!
//! Exports can change while the server runs ([`Server::attach`],
//! [`Server::detach`]): the handshake reads the current set once per
//! option, the request path never (a connection holds its own export), so
//! a change touches no other export's connections. Detach closes the
//! export to new clients, waits for its clients or (forced) evicts them —
//! every request then gets `ESHUTDOWN` (the spec's soft disconnect), and
//! after [`EVICTION_GRACE`] connections still open stop as at shutdown —
//! flushes, and drops the device once nothing holds it.
//! Per-export counters ([`ExportCounters`]: clients, in flight, bytes) are
//! relaxed atomics on the request path, read by [`Server::status`].
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

mod async_loop;
#[doc(hidden)]
pub mod benchmarking;
mod commands;
mod export;
mod export_set;
mod export_stats;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod latency_histogram;
mod limits;
mod metrics;
pub mod protocol;
mod read_ahead;
mod registry;
mod served_export;
mod server;
mod threaded_loop;
mod tls;
mod tls_session;
mod transmission;
mod unix_endpoint;
mod workers;

pub use commands::errno_of;
pub use export::{Export, ExportError};
pub use export_stats::{COMMAND_NAMES, CommandMetrics, ERRNO_NAMES, ExportCounters, ExportMetrics};
pub use handshake::{HandshakeError, MAX_OPTION_DATA};
pub use latency_histogram::LatencyReading;
pub use limits::{MAX_CONNECTIONS, MAX_INFLIGHT_BYTES, REQUEST_TIMEOUT, descriptors_needed};
pub use metrics::ServerMetrics;
pub use registry::{DetachError, Detached, ExportStatus};
pub use server::{HANDSHAKE_TIMEOUT, Listeners, Server, TransmissionLoop, run};
pub use tls::{TlsConfig, TlsError, TlsMode};
pub use transmission::{EVICTION_GRACE, IN_FLIGHT_BYTES, SHUTDOWN_GRACE, TransmissionError};
pub use unix_endpoint::UnixEndpoint;
