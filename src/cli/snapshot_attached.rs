//! `snapshot create` of a volume a server has attached: the volume is
//! frozen by that server through its control socket (the same one `envol
//! attach` finds), and read from the frozen view — through the session
//! for a file volume, from the RBD snapshot the server took for an `rbd:`
//! one. The S3 side, its credentials and the KMS call stay here.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use super::control::ControlArgs;
use crate::control::{self, Command, ReplyBody, SnapshotSession, TakenChanges};
use crate::envelope::{Attachers, VolumeAddress, store};
use crate::snapshot::create::describe_attachers;
use crate::snapshot::{AttachedVolumes, ChunkSource, SnapshotError, SnapshotUrl, SnapshotVolume};
use crate::volume::{Backend, CHUNK_SIZE, Changes, Superblock};

/// Default bound of the chunks a file volume's server copies aside for
/// one snapshot (`--copy-limit`).
pub const DEFAULT_COPY_LIMIT_MIB: u64 = 256;

/// Finds the server of an attached volume through its control socket.
pub struct ThroughControlSocket<'a> {
    pub control: &'a ControlArgs,
    /// Bytes.
    pub copy_limit: u64,
}

impl AttachedVolumes for ThroughControlSocket<'_> {
    fn through_server(
        &self,
        volume: &VolumeAddress,
        superblock: &Superblock,
        attachers: &Attachers,
    ) -> Result<Box<dyn SnapshotVolume>, SnapshotError> {
        let who = describe_attachers(attachers);
        let path = self
            .control
            .path()
            .map_err(|e| SnapshotError::failed(format!("{volume}: attached by {who}; {e}")))?;
        let uuid = superblock.uuid.to_string();
        let exports = match control::call(&path, Command::Status) {
            Ok(ReplyBody::Status { exports }) => exports,
            Ok(other) => {
                return Err(SnapshotError::failed(format!(
                    "{volume}: unexpected reply from the server at {}: {other:?}",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(SnapshotError::failed(format!(
                    "{volume}: attached by {who}, whose control socket cannot be reached ({e}); name it with --control PATH or ENVOL_CONTROL, as `envol serve` printed it"
                )));
            }
        };
        let Some(export) = exports.iter().find(|e| e.volume_uuid == uuid) else {
            return Err(SnapshotError::failed(format!(
                "{volume}: attached by {who}, but the server at {} does not serve it; name that server's control socket with --control PATH or ENVOL_CONTROL",
                path.display()
            )));
        };
        Ok(Box::new(ServerFrozen {
            path,
            uuid,
            export: export.name.clone(),
            volume: volume.clone(),
            data_offset: superblock.data_offset,
            copy_limit: self.copy_limit,
            session: Arc::new(Mutex::new(None)),
        }))
    }
}

/// The volume as its server freezes it.
struct ServerFrozen {
    path: PathBuf,
    uuid: String,
    export: String,
    volume: VolumeAddress,
    data_offset: u64,
    copy_limit: u64,
    /// The open session (shared with a file volume's chunk source).
    session: Arc<Mutex<Option<SnapshotSession>>>,
}

impl ServerFrozen {
    fn end(&mut self, success: bool) -> Result<(), SnapshotError> {
        let session = self
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match session {
            Some(session) => session.end(success).map_err(|e| {
                SnapshotError::failed(format!("{}: ending the snapshot: {e}", self.volume))
            }),
            None => Ok(()),
        }
    }
}

impl SnapshotVolume for ServerFrozen {
    fn freeze(
        &mut self,
        url: &SnapshotUrl,
        all_chunks: bool,
    ) -> Result<(Changes, Arc<dyn ChunkSource>), SnapshotError> {
        // Frozen already (a second freeze keeping every chunk): the first
        // one is given up first, its changes taken back.
        self.end(false)?;
        let (session, frozen) = SnapshotSession::begin(
            &self.path,
            &self.uuid,
            &url.to_string(),
            all_chunks,
            self.copy_limit,
        )
        .map_err(|e| SnapshotError::failed(format!("{}: cannot freeze it: {e}", self.volume)))?;
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = Some(session);
        let changes = match frozen.changes {
            TakenChanges::Exact { base, chunks } => Changes::Exact { base, chunks },
            TakenChanges::Unknown { reason } => Changes::Unknown { reason },
        };
        let source: Arc<dyn ChunkSource> = match frozen.store_snapshot {
            Some(name) => {
                let backend = store::open_store_snapshot(&self.volume, &name).map_err(|e| {
                    SnapshotError::failed(format!(
                        "{}: cannot open its RBD snapshot {name}: {e}",
                        self.volume
                    ))
                })?;
                Arc::new(StoreSnapshot {
                    backend,
                    data_offset: self.data_offset,
                })
            }
            None => Arc::new(ThroughSession(self.session.clone())),
        };
        Ok((changes, source))
    }

    fn frozen_by(&self) -> Option<String> {
        Some(format!(
            "its server (export {:?}, {})",
            self.export,
            self.path.display()
        ))
    }

    fn finish(&mut self, success: bool, _url: &SnapshotUrl) -> Result<(), SnapshotError> {
        self.end(success)
    }
}

/// A file volume's frozen view, read through the session.
struct ThroughSession(Arc<Mutex<Option<SnapshotSession>>>);

impl ChunkSource for ThroughSession {
    fn read_chunk(&self, index: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut session = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let session = session
            .as_mut()
            .ok_or_else(|| io::Error::other("the snapshot session has ended"))?;
        let bytes = session
            .read(index, len)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if bytes.len() as u64 != len {
            return Err(io::Error::other(format!(
                "the server sent {} bytes of chunk {index}, not {len}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// An `rbd:` volume's frozen view: the RBD snapshot its server took.
struct StoreSnapshot {
    backend: Arc<dyn Backend>,
    data_offset: u64,
}

impl ChunkSource for StoreSnapshot {
    fn read_chunk(&self, index: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.backend
            .read_at(self.data_offset + index * CHUNK_SIZE, &mut buf)?;
        Ok(buf)
    }
}
