//! Where `snapshot create` reads a volume at its point in time: the
//! volume itself, opened and locked here (nobody has it attached: the
//! lock is the freeze), or a view its server froze for us (see
//! `control/snapshot_session.rs`; the command line wires that one, so
//! this layer knows no socket).

use std::io;
use std::sync::Arc;

use super::error::SnapshotError;
use super::url::SnapshotUrl;
use crate::volume::{CHUNK_SIZE, Changes, Volume};

/// Chunks of the volume as stored (ciphertext) at the point in time.
/// Blocking: called on blocking threads.
pub trait ChunkSource: Send + Sync {
    /// Chunk `index`, `len` bytes (the last one may be shorter than a
    /// chunk).
    fn read_chunk(&self, index: u64, len: u64) -> io::Result<Vec<u8>>;
}

/// A volume held still for a snapshot.
pub trait SnapshotVolume: Send {
    /// Freezes the volume for the snapshot `url`: the point in time.
    /// Returns the changes since the previous snapshot as of that point,
    /// and where to read. `all_chunks`: every chunk will be read (a
    /// snapshot comparing hashes), not only the changed ones. Called
    /// again, it abandons the earlier freeze and freezes anew.
    fn freeze(
        &mut self,
        url: &SnapshotUrl,
        all_chunks: bool,
    ) -> Result<(Changes, Arc<dyn ChunkSource>), SnapshotError>;

    /// Who froze it, to tell the user that the point in time has passed
    /// (`None`: the volume is locked here, nobody writes it).
    fn frozen_by(&self) -> Option<String>;

    /// The snapshot is complete (`success`: change tracking counts from
    /// `url` from now on) or abandoned (the changes are tracked again).
    /// Reads of the source have all finished.
    fn finish(&mut self, success: bool, url: &SnapshotUrl) -> Result<(), SnapshotError>;
}

/// A volume opened and locked by this process.
pub struct LockedVolume(pub Arc<Volume>);

impl ChunkSource for Volume {
    fn read_chunk(&self, index: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.read_stored(index * CHUNK_SIZE, &mut buf)?;
        Ok(buf)
    }
}

impl SnapshotVolume for LockedVolume {
    fn freeze(
        &mut self,
        _url: &SnapshotUrl,
        _all_chunks: bool,
    ) -> Result<(Changes, Arc<dyn ChunkSource>), SnapshotError> {
        Ok((self.0.changes(), self.0.clone()))
    }

    fn frozen_by(&self) -> Option<String> {
        None
    }

    fn finish(&mut self, success: bool, url: &SnapshotUrl) -> Result<(), SnapshotError> {
        if success && let Err(e) = self.0.restart_changes(&url.to_string()) {
            tracing::warn!(
                "could not restart change tracking from {url}: {e}; the next snapshot compares chunk hashes"
            );
        }
        Ok(())
    }
}
