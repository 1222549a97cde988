//! The persisted state of a lazy restore (`volume restore --lazy`): where
//! the volume's chunks come from and which of them are already in the
//! store. See [`hydrating_backend`](super::hydrating_backend) for how it is
//! used and why the order of writes never serves zeros for data or lets
//! snapshot data overwrite a client's write.
//!
//! # Where it lives: behind the data area
//!
//! ```text
//!  0 … 1 MiB      superblocks, change map (full: no room here)
//!  1 MiB … +size  data area
//!  R = round_up(1 MiB + size, 4 KiB):
//!    R            header block (4 KiB): magic, JSON fields, SHA-256
//!    R + 4 KiB    bitmap, one bit per chunk (1 = in the store), 4 KiB-rounded
//! ```
//!
//! The header region before the data area is fully used by the change map,
//! and a sidecar (a second file, a second RBD image) would be one more
//! thing to create, find, remove and keep in step for both kinds of store.
//! The store's tail is reached through the same [`Backend`] for a file and
//! an `rbd:` image, so one code path serves both; it costs a store a few
//! KiB longer than its data area (`volume restore --lazy` grows it there;
//! the rest of envol only ever checks the store is *at least* that large).
//! A grow would move the data area over it, so a volume that is still
//! hydrating refuses to grow (and every attach without hydration refuses
//! it: see `envelope`).
//!
//! # Why it is crash-safe
//!
//! Bits only ever go from 0 to 1, and each is written (one byte, in place)
//! only after the chunk's bytes are durable in the store (a flush in
//! between); it becomes durable with the next flush of the store. A torn write of the bitmap leaves each byte old or new — both
//! a subset of the truth — so a crash can only forget a fetched chunk
//! (fetched again: harmless, no client wrote it, see the backend), never
//! claim one that is not there. The header is written once, with a
//! checksum; a damaged header is an error (the volume is refused, never
//! served as zeros). When every bit is set the header is zeroed and
//! flushed first, then the region discarded: the volume is a plain one.

use std::io;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::volume::backend::Backend;
use crate::volume::change_map::CHUNK_SIZE;
use crate::volume::superblock::format::Superblock;

const MAGIC: &[u8; 8] = b"ENVHYDR1";
/// The header block.
pub const HEADER_BLOCK: u64 = 4096;
const ALIGN: u64 = 4096;
const CHECKSUM_LEN: usize = 32;
/// magic, u32 length, JSON, …, checksum at the end of the block.
const MAX_JSON: usize = HEADER_BLOCK as usize - 8 - 4 - CHECKSUM_LEN;

/// Where a hydrating volume's chunks come from (no secret in here: the
/// snapshot's URL and how to reach its object store; credentials come from
/// the usual AWS chain of whoever serves it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HydrationSource {
    /// `s3://BUCKET/PREFIX/snap-ID`.
    pub snapshot: String,
    /// `--endpoint-url` given to the restore, if any.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// `--s3-profile` given to the restore, if any.
    #[serde(default)]
    pub profile: Option<String>,
    /// `--s3-region` given to the restore, if any.
    #[serde(default)]
    pub region: Option<String>,
}

/// The header's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HydrationHeader {
    pub version: u32,
    /// The volume it belongs to: a record of another volume is refused.
    pub volume_uuid: String,
    /// The data area's size when the record was made (a volume that is
    /// hydrating never grows).
    pub size: u64,
    pub chunk_size: u64,
    pub source: HydrationSource,
}

/// A volume's hydration record as read from its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HydrationRecord {
    pub header: HydrationHeader,
    /// One bit per chunk, chunk i at byte i/8, bit i%8: 1 = in the store.
    pub bitmap: Vec<u8>,
}

/// Chunks of a data area of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

/// Where the record starts for `sb`.
pub fn record_offset(sb: &Superblock) -> u64 {
    sb.required_backend_size().div_ceil(ALIGN) * ALIGN
}

/// Where the bitmap starts.
pub fn bitmap_offset(sb: &Superblock) -> u64 {
    record_offset(sb) + HEADER_BLOCK
}

/// The store size a record for `sb` needs.
pub fn record_end(sb: &Superblock) -> u64 {
    let bitmap = chunk_count(sb.size).div_ceil(8);
    bitmap_offset(sb) + bitmap.div_ceil(ALIGN).max(1) * ALIGN
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl HydrationRecord {
    /// A new record for `sb`: chunks in `present` (those the snapshot has
    /// no data for, or none) already count as in the store.
    pub fn new(sb: &Superblock, source: HydrationSource, present: impl Fn(u64) -> bool) -> Self {
        let chunks = chunk_count(sb.size);
        let mut bitmap = vec![0u8; chunks.div_ceil(8) as usize];
        for i in 0..chunks {
            if present(i) {
                bitmap[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        HydrationRecord {
            header: HydrationHeader {
                version: 1,
                volume_uuid: sb.uuid.to_string(),
                size: sb.size,
                chunk_size: CHUNK_SIZE,
                source,
            },
            bitmap,
        }
    }

    /// Chunks in the store, and all of them.
    pub fn progress(&self) -> (u64, u64) {
        let total = chunk_count(self.header.size);
        let fetched = (0..total)
            .filter(|&i| self.bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .count() as u64;
        (fetched, total)
    }

    /// Writes the record (bitmap first, then the header) behind `sb`'s data
    /// area, growing the store to hold it, and flushes.
    pub fn write(&self, backend: &dyn Backend, sb: &Superblock) -> io::Result<()> {
        backend.grow_to(record_end(sb))?;
        backend.write_at(bitmap_offset(sb), &self.bitmap)?;
        backend.flush()?;
        let json = serde_json::to_vec(&self.header).map_err(|e| invalid(e.to_string()))?;
        if json.len() > MAX_JSON {
            return Err(invalid(format!(
                "the hydration record's fields are {} bytes, at most {MAX_JSON} fit",
                json.len()
            )));
        }
        let mut block = vec![0u8; HEADER_BLOCK as usize];
        block[..8].copy_from_slice(MAGIC);
        block[8..12].copy_from_slice(&(json.len() as u32).to_le_bytes());
        block[12..12 + json.len()].copy_from_slice(&json);
        let sum = Sha256::digest(&block[..HEADER_BLOCK as usize - CHECKSUM_LEN]);
        block[HEADER_BLOCK as usize - CHECKSUM_LEN..].copy_from_slice(&sum);
        backend.write_at(record_offset(sb), &block)?;
        backend.flush()
    }

    /// The record behind `sb`'s data area: `None` for a plain volume (a
    /// store no longer than it needs, or a zeroed header). A damaged
    /// header, or one of another volume or size, is an error.
    pub fn load(backend: &dyn Backend, sb: &Superblock) -> io::Result<Option<HydrationRecord>> {
        let at = record_offset(sb);
        if backend.size()? < at + HEADER_BLOCK {
            return Ok(None);
        }
        let mut block = vec![0u8; HEADER_BLOCK as usize];
        backend.read_at(at, &mut block)?;
        if block[..8].iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let damaged = |why: &str| {
            invalid(format!(
                "its lazy-restore (hydration) record is damaged: {why}; the volume cannot be served (restore it again)"
            ))
        };
        if &block[..8] != MAGIC {
            return Err(damaged("unknown magic"));
        }
        let sum = Sha256::digest(&block[..HEADER_BLOCK as usize - CHECKSUM_LEN]);
        if sum.as_slice() != &block[HEADER_BLOCK as usize - CHECKSUM_LEN..] {
            return Err(damaged("checksum mismatch"));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&block[8..12]);
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_JSON {
            return Err(damaged("field length out of range"));
        }
        let header: HydrationHeader = serde_json::from_slice(&block[12..12 + len])
            .map_err(|_| damaged("unreadable fields"))?;
        if header.version != 1 {
            return Err(damaged(&format!("version {}", header.version)));
        }
        if header.volume_uuid != sb.uuid.to_string()
            || header.size != sb.size
            || header.chunk_size != CHUNK_SIZE
        {
            return Err(damaged("it belongs to another volume or size"));
        }
        if backend.size()? < record_end(sb) {
            return Err(damaged("the store ends inside its bitmap"));
        }
        let mut bitmap = vec![0u8; chunk_count(sb.size).div_ceil(8) as usize];
        backend.read_at(bitmap_offset(sb), &mut bitmap)?;
        Ok(Some(HydrationRecord { header, bitmap }))
    }

    /// Hydration is complete: the header is zeroed and flushed (from then
    /// on the volume is a plain one), then the record's region discarded.
    pub fn clear(backend: &dyn Backend, sb: &Superblock) -> io::Result<()> {
        backend.write_at(record_offset(sb), &[0u8; HEADER_BLOCK as usize])?;
        backend.flush()?;
        let at = record_offset(sb);
        backend.punch_hole(at, record_end(sb) - at)?;
        backend.flush()
    }
}
