//! The on-disk superblock: what a volume is and how its key is wrapped.
//!
//! Two concerns, one file each, dependencies one way (`copies` uses
//! `format`, never the reverse):
//!
//! * [`format`]: the bytes of one copy — magic, version, sequence, the
//!   volume's fields, the checksum — and the rules every superblock obeys.
//!   Pure: bytes in, [`Superblock`] or [`SuperblockError`] out.
//! * [`copies`]: the two copies on a backend — reading both and picking the
//!   newest valid one, the crash-safe update that rewrites them one at a
//!   time with a sync between (and repairs an invalid copy from the valid
//!   one), and creating a new volume file.

pub mod copies;
pub mod format;

#[cfg(test)]
mod test_sample;

pub use copies::{
    PRIMARY_OFFSET, SECONDARY_OFFSET, Slot, SuperblockSet, create_volume_file, read_superblocks,
    read_superblocks_from, repair_superblock_to, write_superblock, write_superblock_to,
};
pub use format::{
    CONTEXT_VOLUME_KEY, COPY_SIZE, DATA_OFFSET, Direction, FORMAT_VERSION, HOTZONE_DIGEST_LEN,
    MAGIC, MAX_HOTZONE_SECTORS, Superblock, SuperblockError, TRANSITION_FORMAT_VERSION, Transition,
    hotzone_digest, matches_hotzone_digest, volume_encryption_context,
};
