//! The control protocol: one JSON request per line, one JSON reply per
//! line, both carrying `"version"`. A request names its `"command"`; a
//! reply its kind (`"reply"`). Adding a command is one variant here and
//! one arm in `handler.rs`.
//!
//! ```text
//! → {"version":1,"command":"attach","volume":"/srv/db.vol=db:ro"}
//! ← {"version":1,"reply":"attached","export":{"name":"db",...},"uris":["nbd+unix:///db?socket=..."]}
//! → {"version":1,"command":"detach","name":"db","force":false}
//! ← {"version":1,"reply":"detached","name":"db","forced":false,"clients_at_start":1}
//! → {"version":1,"command":"reencrypt","volume":"/srv/db.vol","new_key":{...},"max_rate":null}
//! ← {"version":1,"reply":"reencrypt_started","name":"db",...}
//! → {"version":1,"command":"status"}
//! ← {"version":1,"reply":"status","exports":[{...}]}
//! ← {"version":1,"reply":"error","message":"..."}
//! ```

use serde::{Deserialize, Serialize};

/// The version this build speaks. A request with another one is answered
/// with an error naming both.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line the server reads.
pub const MAX_REQUEST_LEN: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Attach `volume` — `VOLUME[=NAME][:ro]` as `envol serve` takes it, a
    /// file given by its absolute path — and export it.
    Attach {
        volume: String,
        #[serde(default)]
        take_over: Option<TakeOverMode>,
    },
    /// Detach export `name`: wait for its clients, or (`force`) flush it
    /// and close their connections.
    Detach {
        name: String,
        #[serde(default)]
        force: bool,
    },
    /// Every export with its counters.
    Status,
    /// Freeze the attached volume `volume_uuid` for a snapshot whose URL
    /// is `base` (change tracking restarts from it). The session is this
    /// connection's: [`Command::SnapshotRead`] and [`Command::SnapshotEnd`]
    /// follow on it, and if it closes first the snapshot failed (the taken
    /// changes are given back). See `snapshot_session.rs`.
    SnapshotBegin {
        volume_uuid: String,
        base: String,
        /// Keep every chunk (a snapshot comparing chunk hashes), not only
        /// the changed ones.
        #[serde(default)]
        all_chunks: bool,
        /// Most bytes of chunks copied aside before writes; more fails
        /// the snapshot, never a write.
        copy_limit: u64,
    },
    /// One chunk of the frozen view: answered with
    /// [`ReplyBody::SnapshotChunk`] and then `len` raw bytes.
    SnapshotRead { chunk: u64 },
    /// The snapshot is complete (`success`), or abandoned.
    SnapshotEnd { success: bool },
    /// Grow an attached volume (named as attached: a file's path, or
    /// `rbd:POOL/IMAGE`) to `size` bytes, or by `size` bytes with `add`.
    Grow {
        volume: String,
        size: u64,
        #[serde(default)]
        add: bool,
    },
    /// Re-encrypt an attached volume (named as for [`Command::Grow`])
    /// under `new_key`, in the background while it serves; without
    /// `new_key`, resume the re-encryption in progress. `status` shows the
    /// progress; the reply comes once it has begun.
    Reencrypt {
        volume: String,
        #[serde(default)]
        new_key: Option<NewDataKey>,
        /// Bytes per second at most (default: the server's online default).
        #[serde(default)]
        max_rate: Option<u64>,
    },
}

/// A new data key the caller generated (under its own KMS credentials)
/// for a re-encryption: wrapped, so never secret on the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDataKey {
    pub key_arn: String,
    /// Base64.
    pub wrapped_key: String,
    /// Hex: the key check value the caller computed from its unwrap.
    pub key_check: String,
}

/// `envol attach --take-over [--force]` for an `rbd:` volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TakeOverMode {
    IfHolderDead,
    Force,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub version: u32,
    #[serde(flatten)]
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ReplyBody {
    Attached {
        export: ExportInfo,
        /// Where clients reach it, one URI per listener.
        uris: Vec<String>,
    },
    Detached {
        name: String,
        forced: bool,
        /// Clients connected when the detach began.
        clients_at_start: u64,
    },
    Status {
        exports: Vec<ExportInfo>,
    },
    /// The volume is frozen: the snapshot's point in time has passed.
    SnapshotFrozen {
        export: String,
        /// The changes since the previous snapshot, as of the freeze.
        changes: TakenChanges,
        /// An `rbd:` volume: the RBD snapshot of the image that holds the
        /// view (the client reads it itself); none for a file volume,
        /// whose chunks are read with [`Command::SnapshotRead`].
        store_snapshot: Option<String>,
    },
    /// Followed by `len` bytes: the chunk as stored (ciphertext).
    SnapshotChunk {
        chunk: u64,
        len: u64,
    },
    SnapshotEnded {
        success: bool,
    },
    Grown {
        name: String,
        volume: String,
        old_size: u64,
        new_size: u64,
        beyond_change_tracking: bool,
    },
    ReencryptStarted {
        name: String,
        volume: String,
        new_key_arn: String,
        /// Bytes already under the new key (a resumed re-encryption).
        resumed_at: u64,
        total_bytes: u64,
        /// It was running already (another caller started it): this
        /// request started nothing.
        already_running: bool,
    },
    Error {
        message: String,
    },
}

impl ReplyBody {
    pub fn error(message: impl Into<String>) -> Self {
        Self::Error {
            message: message.into(),
        }
    }
}

/// One export as `envol status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportInfo {
    pub name: String,
    /// The volume's address (a path or `rbd:POOL/IMAGE`).
    pub volume: String,
    pub volume_uuid: String,
    /// The master key that wraps its data key.
    pub key_arn: String,
    pub size: u64,
    pub read_only: bool,
    /// `attached`; `detaching` while a detach waits for its clients;
    /// `evicting` while a forced detach answers their requests `ESHUTDOWN`.
    pub state: String,
    pub clients: u64,
    pub in_flight: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// RFC 3339, UTC.
    pub attached_since: String,
    /// A snapshot being taken through this server, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSessionInfo>,
    /// A re-encryption run inside the server: running, or how the last
    /// one ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reencryption: Option<Box<ReencryptionInfo>>,
}

/// A re-encryption inside the server, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReencryptionInfo {
    /// `running`, `done`, or `stopped` (see `message`; resumable).
    pub state: String,
    pub new_key_arn: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// This run's average.
    pub rate_bytes_per_sec: u64,
    pub eta_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Change tracking's answer at a snapshot's freeze (`volume::Changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tracking", rename_all = "snake_case")]
pub enum TakenChanges {
    Exact {
        base: Option<String>,
        chunks: Vec<u64>,
    },
    Unknown {
        reason: String,
    },
}

/// A snapshot being taken through the server, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSessionInfo {
    pub base: String,
    /// Chunks the snapshot has still to read (file volumes).
    pub chunks_left: u64,
    /// Bytes copied aside for it, held in the server's memory.
    pub copied_bytes: u64,
}

/// The volume behind an export: what the NBD layer does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub volume: String,
    pub volume_uuid: String,
    pub key_arn: String,
}

/// A request line as the server reads it: the version is checked before
/// the rest, so that a client of another version learns that rather than
/// a parse error.
pub fn parse_request(line: &[u8]) -> Result<Command, String> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let versioned: Versioned = serde_json::from_slice(line).map_err(|e| {
        format!("malformed request (expected one JSON object with \"version\" per line): {e}")
    })?;
    if versioned.version != PROTOCOL_VERSION {
        return Err(format!(
            "unsupported control protocol version {} (this server speaks {PROTOCOL_VERSION})",
            versioned.version
        ));
    }
    let request: Request =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    Ok(request.command)
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
