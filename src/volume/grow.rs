//! Growing a volume: a larger data area, recorded crash-safely.
//!
//! Two steps, in this order, each durable before the next:
//!
//! 1. the store grows ([`Backend::grow_to`]: a file's `set_len`, an RBD
//!    image's resize), then a flush makes the new length durable (a file's
//!    size is metadata that `fdatasync` persists);
//! 2. both superblock copies get the new size through the usual crash-safe
//!    update (older copy, sync, the other, sync).
//!
//! A crash after (1) and before (2) leaves a store larger than its
//! superblock says, which opens as the old size ([`Volume::open`]
//! needs the store to be *at least* the superblock's size); a crash inside
//! (2) leaves one copy old and one new, and open takes the newest valid one.
//! So every crash leaves a volume that opens, at the old size or the new.
//!
//! The new sectors are holes (never written), which read as zeros by the
//! zero-sector rule: nothing is encrypted or written in the data area.
//!
//! The superblock is authenticated by its SHA-256 only, not under the data
//! key (the key check value covers the uuid, not the size), so growing
//! needs neither the data key nor the KMS — as whoever can write a volume's
//! store can already destroy it, a size field needs no more protection than
//! the store's own permissions (file mode, Ceph caps).
//!
//! [`Volume::open`]: super::Volume::open

use std::io;

use crate::volume::backend::Backend;
use crate::volume::change_map::chunk_count;
use crate::volume::change_record::MAX_TRACKED_CHUNKS;
use crate::volume::superblock::{Superblock, SuperblockError, write_superblock_to};

/// The size a grow asks for: an absolute size, or so many bytes more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewSize {
    /// The data area's new size in bytes.
    To(u64),
    /// Bytes to add to the current size.
    Plus(u64),
}

impl NewSize {
    /// The absolute size this asks for, given the volume's current size.
    pub fn resolve(self, current: u64) -> Result<u64, GrowError> {
        match self {
            NewSize::To(size) => Ok(size),
            NewSize::Plus(more) => current.checked_add(more).ok_or(GrowError::TooLarge),
        }
    }
}

impl std::fmt::Display for NewSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NewSize::To(size) => write!(f, "{size}"),
            NewSize::Plus(more) => write!(f, "+{more}"),
        }
    }
}

/// Why a volume was not grown. One line each; nothing was changed unless
/// the variant says so.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error(
        "refusing to shrink the volume from {current} to {requested} bytes (shrinking loses data; only growing is supported)"
    )]
    Shrink { current: u64, requested: u64 },
    #[error("size {requested} is not a multiple of the volume's sector size ({sector_size} bytes)")]
    NotSectorMultiple { requested: u64, sector_size: u32 },
    #[error("the requested size is too large")]
    TooLarge,
    #[error("the volume is attached read-only: growing needs a read-write attachment")]
    ReadOnly,
    #[error("this device cannot grow")]
    Unsupported,
    #[error("cannot grow the store: {0} (nothing changed)")]
    Store(io::Error),
    #[error(
        "the store grew but its new size is not recorded: {0} (the volume still opens at its old size; run the grow again)"
    )]
    Superblock(SuperblockError),
}

/// What a grow did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub old_size: u64,
    pub new_size: u64,
    /// The volume now has more chunks than change tracking covers: its
    /// snapshots compare chunk hashes from now on.
    pub beyond_change_tracking: bool,
}

impl Grown {
    /// Nothing to do: the volume already has the size asked for.
    pub fn unchanged(&self) -> bool {
        self.old_size == self.new_size
    }
}

/// Checks a grow of the volume `sb` describes to `requested` bytes:
/// `Ok(false)` when it already has that size (a no-op), `Ok(true)` when it
/// grows, an error for a shrink, a size not a multiple of the sector size
/// or one whose store would overflow.
pub fn check_new_size(sb: &Superblock, requested: u64) -> Result<bool, GrowError> {
    if requested < sb.size {
        return Err(GrowError::Shrink {
            current: sb.size,
            requested,
        });
    }
    if !requested.is_multiple_of(u64::from(sb.sector_size)) {
        return Err(GrowError::NotSectorMultiple {
            requested,
            sector_size: sb.sector_size,
        });
    }
    if sb.data_offset.checked_add(requested).is_none() {
        return Err(GrowError::TooLarge);
    }
    Ok(requested > sb.size)
}

/// Grows the volume whose newest superblock is `sb` on `backend` to
/// `requested` bytes of data area: the store first (made durable), then
/// both superblock copies. Returns the superblock now on disk. The caller
/// holds the volume's exclusive attachment (no other writer updates the
/// superblock meanwhile).
pub fn grow_store(
    backend: &dyn Backend,
    sb: &Superblock,
    requested: u64,
) -> Result<(Superblock, Grown), GrowError> {
    let grows = check_new_size(sb, requested)?;
    let grown = Grown {
        old_size: sb.size,
        new_size: requested,
        beyond_change_tracking: chunk_count(requested) > MAX_TRACKED_CHUNKS
            && chunk_count(sb.size) <= MAX_TRACKED_CHUNKS,
    };
    if !grows {
        return Ok((sb.clone(), grown));
    }
    let mut next = sb.clone();
    next.size = requested;
    backend
        .grow_to(next.required_backend_size())
        .and_then(|()| backend.flush())
        .map_err(GrowError::Store)?;
    write_superblock_to(backend, &mut next).map_err(GrowError::Superblock)?;
    Ok((next, grown))
}

#[cfg(test)]
#[path = "grow_tests.rs"]
mod tests;
