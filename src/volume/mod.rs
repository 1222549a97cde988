//! The volume layer: the plaintext view of one encrypted volume.
//!
//! It owns everything between "a byte range of the exported device" and "bytes
//! in the backing store": the on-disk format (superblock), the sector cipher
//! (`aes-xts-plain64`), the data key while the volume is open, and the
//! byte-addressed read / write / trim / write-zeroes / flush that the NBD
//! server calls through [`BlockDevice`]. It knows nothing of NBD, and nothing of
//! the KMS beyond storing the wrapped key and key ARN it is handed.
//!
//! # On-disk layout
//!
//! ```text
//!  offset 0        64 KiB       128 KiB  132 KiB   1 MiB                    1 MiB + size
//!  ├───────────────┼────────────┼────────┼─────────┼──────── data area ───────┤
//!  │ superblock A  │ superblock B│ change │ change  │ sector 0 │ sector 1 │ …  │
//!  │ (primary)     │ (secondary) │ map    │ map     │  XTS tweak = sector number │
//!  │               │             │ header │ bitmap  │                          │
//! ```
//!
//! Each superblock copy (≤ 64 KiB) holds magic, format version, a sequence
//! number, the volume's fields (uuid, size, sector size, cipher, data offset,
//! KMS key ARN, encryption context, wrapped data key, key check value,
//! creation time) and a SHA-256 checksum; see [`superblock::format`] for the
//! bytes and [`superblock::copies`] for the update.
//!
//! **Why two copies.** An update rewrites the copy with the older sequence
//! number, syncs, then rewrites the other. A crash in the middle, or a bad
//! sector under one copy, leaves the other valid; open takes the valid copy
//! with the highest sequence number. Both copies bad is a clear error.
//!
//! **The change map** (128 KiB .. 1 MiB, zeros in volumes made before it)
//! records which 1 MiB chunks of the data area were written since the last
//! snapshot, for incremental snapshots: marked open before an attachment's
//! first write, closed with a checksummed bitmap by a clean detach, so a
//! crash leaves it open (not trusted) rather than wrong. See
//! [`change_map`] for the order of writes and [`change_record`] for the
//! bytes.
//!
//! **The data area** is standard `aes-xts-plain64`: sector *n* (in units of
//! the volume's sector size, 4096 or 512, from 0 at the data offset) is
//! AES-256-XTS with tweak *n* as a 128-bit little-endian integer — exactly
//! dm-crypt's layout, so OpenSSL or `cryptsetup open --type plain` can read it
//! with the unwrapped key (no lock-in).
//!
//! # The zero-sector rule, and its cost
//!
//! A data-area sector whose *stored* bytes are all zero reads as plaintext
//! zeros; it is not decrypted. That is what lets a new volume be a sparse
//! file that reads as zeros (as a new EBS volume does), and lets TRIM and
//! WRITE_ZEROES punch holes or store zero bytes instead of encrypting zeros.
//! A genuine ciphertext sector is all zero with probability 2^-4096 at most.
//! The cost: anyone who can read the volume file sees *which* sectors were
//! never written or were discarded, as with dm-crypt and discards enabled.
//! Contents stay confidential; the usage pattern does not. Filling the data
//! area with random bytes at creation hides it, for those who need that.
//!
//! # Attachments
//!
//! A volume has one writer at a time: every backend claims its store for an
//! attachment ([`Backend::lock_attachment`]) — exclusively for a read-write
//! one, shared for a read-only one. A file does it with `flock`
//! ([`attachment`]), which the kernel drops when the process dies.
//!
//! # Concurrency
//!
//! No lock covers the whole volume. Reads take none; each write holds only
//! its own sector range (see [`range_lock`]) so that the read-modify-write of
//! a partial sector never loses a concurrent update to the same sector.

pub mod attachment;
pub mod backend;
pub mod buffer_pool;
pub mod change_map;
pub mod change_record;
pub mod cipher;
pub mod device;
pub mod encrypted_volume;
pub mod frozen_view;
pub mod grow;
pub mod hydrating_backend;
pub mod hydration_record;
pub mod key;
pub mod range_lock;
pub mod rbd;
pub mod reencryption;
mod started_ops;
pub mod superblock;
pub mod transition_cipher;
mod transition_state;
pub mod xts_engine;

// For tests, benchmarks and fuzzing only (`cfg(test)`, or the `testing`
// feature that the dev-dependency on this crate and the fuzz crate turn on):
// the release binary does not contain them.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(any(test, feature = "testing"))]
pub mod xts_mode_cipher;

#[cfg(test)]
mod ieee1619_vectors;

pub use attachment::{AttachMode, AttachmentError, Holder};
pub use backend::{Backend, Extent, FileBackend, FlushDone, IoBuf, IoBuffer, IoDone, MemBackend};
pub use change_map::{CHUNK_SIZE, Changes, StoredChanges, read_stored_changes};
pub use cipher::{CIPHER_ID, CipherError, SectorCipher};
pub use device::{Allocation, BlockDevice, BlockSizes, CpuExecutor};
pub use encrypted_volume::{MAX_REQUEST, Volume, VolumeError};
pub use frozen_view::{FrozenView, ViewUsage};
pub use grow::{GrowError, Grown, NewSize};
pub use hydrating_backend::{ChunkFetcher, HydratingBackend, Hydration};
pub use hydration_record::{HydrationRecord, HydrationSource};
pub use key::{DATA_KEY_LEN, DataKey, KEY_CHECK_LEN, KeyError};
pub use superblock::{
    COPY_SIZE, DATA_OFFSET, MAX_HOTZONE_SECTORS, Slot, Superblock, SuperblockError, SuperblockSet,
    create_volume_file, read_superblocks, read_superblocks_from, repair_superblock_to,
    volume_encryption_context, write_superblock, write_superblock_to,
};
pub use xts_engine::XtsEngine;
#[cfg(any(test, feature = "testing"))]
pub use xts_engine::XtsEngineAes08;
#[cfg(any(test, feature = "testing"))]
pub use xts_mode_cipher::XtsModeCipher;
