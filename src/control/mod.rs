//! The control socket of a running `envol serve`: attach a volume, detach
//! one, list the exports with their counters — without restarting the
//! server or touching the other exports' clients.
//!
//! | file | owns |
//! |---|---|
//! | `protocol.rs` | the wire format: a versioned JSON request per line, a JSON reply per line |
//! | `handler.rs` | what each command does ([`Controller`]: one `match`); the volume behind each export |
//! | `framing.rs` | the server's request and reply lines |
//! | `listener.rs` | the server's socket: owner-only, peer uid checked, one task per connection |
//! | `client.rs` | the command line's side: one request, its reply |
//! | `snapshot_client.rs` | the command line's side of a snapshot session |
//! | `path.rs` | the default socket path, from `serve`'s listeners |
//! | `reencryption_job.rs` | a re-encryption running in the server: progress, outcome |
//! | `active_snapshot.rs` | a snapshot session as the controller keeps it |
//! | `metrics.rs` | snapshot and re-encryption progress for `--metrics` |
//! | `snapshot_session.rs` | a snapshot of an attached volume: freeze, chunk reads, end (the connection is the session) |
//!
//! A new command (snapshots, re-encryption, grow) is a variant of
//! [`Command`], a variant of [`ReplyBody`] for its answer, and one arm in
//! [`Controller::handle`]. Below this module: the NBD server (its export
//! registry) and, through the [`Attacher`] the command line gives, the
//! envelope layer.

mod active_snapshot;
mod client;
mod framing;
mod handler;
mod listener;
mod metrics;
pub mod path;
mod protocol;
mod reencryption_job;
mod snapshot_client;
mod snapshot_session;

pub use client::{ClientError, call};
pub use handler::{Attacher, Attachment, Controller, Planned, UriMaker};
pub use listener::ControlSocket;
pub use metrics::TaskMetrics;
pub use protocol::{
    Command, ExportInfo, MAX_REQUEST_LEN, NewDataKey, PROTOCOL_VERSION, ReencryptionInfo, Reply,
    ReplyBody, Request, SnapshotSessionInfo, TakeOverMode, TakenChanges, VolumeInfo, parse_request,
};
pub use reencryption_job::ReencryptionJob;
pub use snapshot_client::{Frozen, SnapshotSession};
pub use snapshot_session::STORE_SNAPSHOT_PREFIX;
