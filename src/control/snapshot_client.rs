//! The command line's side of a snapshot session (see
//! `snapshot_session.rs`): begin (the freeze), read chunks, end. The
//! session lives as long as this connection: dropping it without
//! [`SnapshotSession::end`] abandons the snapshot, and the server gives
//! the changes it took back to change tracking.

use std::io::{self, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::client::{ClientError, connect, request};
use super::protocol::{Command, ReplyBody, TakenChanges};

/// What the server froze.
#[derive(Debug, Clone)]
pub struct Frozen {
    /// The export the volume is served as.
    pub export: String,
    pub changes: TakenChanges,
    /// An `rbd:` volume's view: the RBD snapshot to read.
    pub store_snapshot: Option<String>,
}

/// An open snapshot session.
pub struct SnapshotSession {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl SnapshotSession {
    /// Asks the server at `path` to freeze the volume `volume_uuid` for
    /// the snapshot `base`; returns once it is frozen.
    pub fn begin(
        path: &Path,
        volume_uuid: &str,
        base: &str,
        all_chunks: bool,
        copy_limit: u64,
    ) -> Result<(SnapshotSession, Frozen), ClientError> {
        let stream = connect(path)?;
        let reader = BufReader::new(stream.try_clone().map_err(|error| ClientError::Io {
            path: path.display().to_string(),
            error,
        })?);
        let mut session = SnapshotSession {
            path: path.to_path_buf(),
            stream,
            reader,
        };
        let reply = session.call(Command::SnapshotBegin {
            volume_uuid: volume_uuid.to_string(),
            base: base.to_string(),
            all_chunks,
            copy_limit,
        })?;
        match reply {
            ReplyBody::SnapshotFrozen {
                export,
                changes,
                store_snapshot,
            } => Ok((
                session,
                Frozen {
                    export,
                    changes,
                    store_snapshot,
                },
            )),
            other => Err(session.unexpected(&other)),
        }
    }

    /// Chunk `chunk` of the frozen view, at most `max_len` bytes.
    pub fn read(&mut self, chunk: u64, max_len: u64) -> Result<Vec<u8>, ClientError> {
        match self.call(Command::SnapshotRead { chunk })? {
            ReplyBody::SnapshotChunk { chunk: got, len } if got == chunk && len <= max_len => {
                let mut bytes = vec![0u8; len as usize];
                self.reader
                    .read_exact(&mut bytes)
                    .map_err(|error| self.io_error(error))?;
                Ok(bytes)
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// Ends the session: `success`, the snapshot is complete (change
    /// tracking counts from it); otherwise the server takes the changes
    /// back.
    pub fn end(mut self, success: bool) -> Result<(), ClientError> {
        match self.call(Command::SnapshotEnd { success })? {
            ReplyBody::SnapshotEnded { .. } => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    fn call(&mut self, command: Command) -> Result<ReplyBody, ClientError> {
        request(&self.path, &mut self.stream, &mut self.reader, command)
    }

    fn io_error(&self, error: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.display().to_string(),
            error,
        }
    }

    fn unexpected(&self, reply: &ReplyBody) -> ClientError {
        ClientError::BadReply {
            path: self.path.display().to_string(),
            error: format!("unexpected reply in a snapshot session: {reply:?}"),
        }
    }
}
