//! The lazy-restore record of a volume (see `volume::hydration_record`):
//! written by `volume restore --lazy` before anything else can open the
//! new volume, read by `volume info`.

use super::{EnvelopeError, Store, VolumeAddress, read_copies, vol_err};
use crate::volume::{AttachMode, HydrationRecord, Superblock};

/// Writes `record` behind the data area of the new volume `volume`
/// (locked meanwhile; nobody else may have it yet): from now on it opens
/// only for a server that fetches its missing chunks.
pub fn begin_hydration(
    volume: &VolumeAddress,
    make: impl FnOnce(&Superblock) -> HydrationRecord,
) -> Result<HydrationRecord, EnvelopeError> {
    let store = Store::open(volume, AttachMode::ReadWrite).map_err(|e| vol_err(volume, e))?;
    store
        .lock_attachment(AttachMode::ReadWrite)
        .map_err(|e| vol_err(volume, e))?;
    let (_, sb) = read_copies(volume, store.backend())?;
    let record = make(&sb);
    record
        .write(store.backend(), &sb)
        .map_err(|e| vol_err(volume, format!("cannot write its lazy-restore record: {e}")))?;
    Ok(record)
}

/// The volume's lazy-restore record, if its restore is still running (no
/// lock, no key: for `volume info`).
pub fn inspect_hydration(volume: &VolumeAddress) -> Result<Option<HydrationRecord>, EnvelopeError> {
    let store = Store::open(volume, AttachMode::ReadOnly).map_err(|e| vol_err(volume, e))?;
    let (_, sb) = read_copies(volume, store.backend())?;
    HydrationRecord::load(store.backend(), &sb).map_err(|e| vol_err(volume, e))
}
