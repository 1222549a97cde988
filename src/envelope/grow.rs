//! Growing a volume that no server has attached (`envol volume grow`).
//!
//! The grow itself is the volume layer's ([`crate::volume::grow`]: the
//! store first, made durable, then both superblock copies). What this adds
//! is the attachment: like `rewrap`, a grow is a writer that reads, changes
//! and writes the superblock, so it takes the volume's exclusive
//! attachment before it reads what it rewrites — and a volume attached
//! elsewhere is refused with the holder's refusal, which the caller can
//! take as its cue to ask the holding server instead.
//!
//! No KMS call: the superblock is authenticated by its checksum, not under
//! the data key, so the data key is not needed (see `volume::grow`).

use crate::volume::{AttachMode, AttachmentError, Grown, NewSize, grow::grow_store};

use super::{EnvelopeError, Store, VolumeAddress, read_copies, vol_err};

/// Why a volume was not grown here.
#[derive(Debug, thiserror::Error)]
pub enum GrowRefusal {
    /// Another attachment holds the volume (a server, most likely): the
    /// grow belongs to it. The message names the holder.
    #[error("{0}")]
    Attached(EnvelopeError),
    #[error("{0}")]
    Failed(EnvelopeError),
}

/// Grows a volume that is not attached anywhere: locks it exclusively
/// (refused with [`GrowRefusal::Attached`] when another attachment holds
/// it), reads its superblock under the lock, grows it. A size equal to the
/// current one changes nothing.
pub fn grow(volume: &VolumeAddress, size: NewSize) -> Result<Grown, GrowRefusal> {
    let failed = |e: EnvelopeError| GrowRefusal::Failed(e);
    let store = Store::open(volume, AttachMode::ReadWrite)
        .map_err(|e| failed(vol_err(volume, format!("cannot grow: {e}"))))?;
    match store.lock_attachment(AttachMode::ReadWrite) {
        Ok(()) => {}
        Err(e @ (AttachmentError::InUse { .. } | AttachmentError::InUseByClient { .. })) => {
            return Err(GrowRefusal::Attached(vol_err(volume, e)));
        }
        Err(e) => return Err(failed(vol_err(volume, format!("cannot grow: {e}")))),
    }
    let (_, superblock) = read_copies(volume, store.backend()).map_err(failed)?;
    // The data area would grow over a lazy restore's record.
    match crate::volume::HydrationRecord::load(store.backend(), &superblock) {
        Ok(None) => {}
        Ok(Some(record)) => {
            return Err(failed(vol_err(
                volume,
                format!("cannot grow: {}", super::still_hydrating(&record)),
            )));
        }
        Err(e) => return Err(failed(vol_err(volume, format!("cannot grow: {e}")))),
    }
    let requested = size
        .resolve(superblock.size)
        .map_err(|e| failed(vol_err(volume, e)))?;
    let (_, grown) = grow_store(store.backend(), &superblock, requested)
        .map_err(|e| failed(vol_err(volume, e)))?;
    Ok(grown)
}
