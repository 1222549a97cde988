//! The bytes of a volume's persisted change map (see
//! [`change_map`](super::change_map) for what it means and when it is
//! written).
//!
//! It lives in the header region no other part of the format uses, between
//! the second superblock copy and the data area — bytes 128 KiB .. 1 MiB,
//! all zeros (a hole) in every volume made before change tracking, and the
//! same bytes in an RBD image as in a file:
//!
//! ```text
//!  128 KiB          132 KiB                                    1 MiB
//!  ├── header ──────┼── bitmap (ceil(chunk count / 8) bytes) ──┤
//!
//!  header (4096 bytes):
//!     0  magic        8 bytes  "ENVOLCM\0"
//!     8  version      u32      1
//!    12  state        u8       1 open (attached read-write, maybe written),
//!                              2 closed (detached cleanly)
//!    13  kind         u8       0 exact since creation, 1 exact since `text`
//!                              (a snapshot URL), 2 unknown because `text`
//!    14  text length  u16      ≤ 1024
//!    16  volume uuid  16 bytes the superblock's: a stale record of another
//!                              volume (an RBD image reused by --force) is
//!                              never believed
//!    32  chunk size   u64      1 MiB
//!    40  chunk count  u64      chunks the bitmap covers (a grown volume
//!                              has more; its new chunks count as changed)
//!    48  bitmap bytes u64      bytes of bitmap the checksum covers: the
//!                              bitmap's length when closed and exact, else 0
//!    56  text         ≤ 1024 bytes, UTF-8
//!  4064  checksum     32 bytes SHA-256 of header bytes 0..4064, then the
//!                              covered bitmap bytes
//! ```
//!
//! Bit `i % 8` of bitmap byte `i / 8` is chunk `i`: set when the chunk may
//! differ from the base. The checksum binds the bitmap to the header, so a
//! close torn between the two (or a bitmap with a bad sector) reads as
//! damaged, never as a different set. Integers are little endian. The
//! decoder treats the bytes as hostile: every failure is a reason, never a
//! panic.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::volume::superblock::format::{COPY_SIZE, DATA_OFFSET};

/// Where the change map starts: right after the second superblock copy.
pub const CHANGE_MAP_OFFSET: u64 = 2 * COPY_SIZE as u64;
/// The header's size: one 4 KiB sector, so that marking the map open is a
/// single sector write.
pub const HEADER_LEN: usize = 4096;
/// Where the bitmap starts.
pub const BITMAP_OFFSET: u64 = CHANGE_MAP_OFFSET + HEADER_LEN as u64;
/// Chunks the region can track: 892 KiB of bitmap, 7,307,264 chunks, a
/// volume of almost 7 TiB at 1 MiB chunks.
pub const MAX_TRACKED_CHUNKS: u64 = (DATA_OFFSET - BITMAP_OFFSET) * 8;
/// Longest base URL or reason kept.
pub const MAX_TEXT_LEN: usize = 1024;

pub const MAGIC: [u8; 8] = *b"ENVOLCM\0";
pub const VERSION: u32 = 1;

const TEXT_AT: usize = 56;
const CHECKSUM_AT: usize = HEADER_LEN - 32;

/// Whether an attachment may have written since the record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// Marked before the first write of a read-write attachment: until a
    /// clean close rewrites it, the bitmap on disk proves nothing.
    Open,
    /// Written by a clean close, after every write had completed.
    Closed,
}

/// What the record says about the changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracking {
    /// Exact since `base` (a snapshot URL), or since creation (`None`).
    Exact { base: Option<String> },
    /// Not exact, for this one-line reason.
    Unknown { reason: String },
}

/// One change-map record: header fields and (closed and exact) bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: RecordState,
    pub tracking: Tracking,
    pub uuid: Uuid,
    pub chunk_size: u64,
    pub chunk_count: u64,
    /// `ceil(chunk_count / 8)` bytes when closed and exact; empty otherwise
    /// (nothing of it is written or checked).
    pub bitmap: Vec<u8>,
}

/// What a region holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// All zeros: made by an envol that had no change map.
    Absent,
    /// A valid record.
    Valid(Record),
    /// Not a usable record, for this reason (torn, bad checksum, newer
    /// version, bad field).
    Damaged(String),
}

/// Bitmap bytes for `chunk_count` chunks.
pub fn bitmap_len(chunk_count: u64) -> u64 {
    chunk_count.div_ceil(8)
}

/// A text cut to [`MAX_TEXT_LEN`] bytes at a character boundary (a
/// reason can be longer; a base URL never is: `restart_changes` refuses it).
fn clip(text: &str) -> &str {
    if text.len() <= MAX_TEXT_LEN {
        return text;
    }
    let mut end = MAX_TEXT_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Record {
    /// The header sector, its checksum covering `self.bitmap` (which must
    /// be empty unless closed and exact).
    pub fn encode_header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12] = match self.state {
            RecordState::Open => 1,
            RecordState::Closed => 2,
        };
        let (kind, text) = match &self.tracking {
            Tracking::Exact { base: None } => (0u8, ""),
            Tracking::Exact { base: Some(b) } => (1, clip(b)),
            Tracking::Unknown { reason } => (2, clip(reason)),
        };
        h[13] = kind;
        // clip() keeps it ≤ 1024: fits a u16.
        h[14..16].copy_from_slice(&(text.len() as u16).to_le_bytes());
        h[16..32].copy_from_slice(self.uuid.as_bytes());
        h[32..40].copy_from_slice(&self.chunk_size.to_le_bytes());
        h[40..48].copy_from_slice(&self.chunk_count.to_le_bytes());
        h[48..56].copy_from_slice(&(self.bitmap.len() as u64).to_le_bytes());
        h[TEXT_AT..TEXT_AT + text.len()].copy_from_slice(text.as_bytes());
        let sum = checksum(&h[..CHECKSUM_AT], &self.bitmap);
        h[CHECKSUM_AT..].copy_from_slice(&sum);
        h
    }

    /// Decodes a header, reading the bitmap it covers with `read_bitmap`
    /// (its length in bytes, validated against the region first).
    pub fn decode(
        header: &[u8; HEADER_LEN],
        read_bitmap: impl FnOnce(usize) -> std::io::Result<Vec<u8>>,
    ) -> Decoded {
        if header.iter().all(|&b| b == 0) {
            return Decoded::Absent;
        }
        let damaged = |why: &str| Decoded::Damaged(why.to_string());
        if header[0..8] != MAGIC {
            return damaged("its header is not a change map (torn or overwritten)");
        }
        let u32_at =
            |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
        let u64_at =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
        let version = u32_at(8);
        if version != VERSION {
            return Decoded::Damaged(format!(
                "its change map has format version {version} (this envol reads {VERSION}): made by a newer envol"
            ));
        }
        let covered = u64_at(48);
        if covered > DATA_OFFSET - BITMAP_OFFSET {
            return damaged("its change map header is damaged (bitmap length)");
        }
        let bitmap = if covered == 0 {
            Vec::new()
        } else {
            match read_bitmap(covered as usize) {
                Ok(b) if b.len() == covered as usize => b,
                Ok(_) => return damaged("its change map bitmap could not be read whole"),
                Err(e) => {
                    return Decoded::Damaged(format!("its change map bitmap cannot be read: {e}"));
                }
            }
        };
        if checksum(&header[..CHECKSUM_AT], &bitmap)[..] != header[CHECKSUM_AT..] {
            return damaged("its change map has a bad checksum (torn write or damaged sectors)");
        }
        let state = match header[12] {
            1 => RecordState::Open,
            2 => RecordState::Closed,
            s => return Decoded::Damaged(format!("its change map has an unknown state {s}")),
        };
        let text_len = usize::from(u16::from_le_bytes([header[14], header[15]]));
        if text_len > MAX_TEXT_LEN {
            return damaged("its change map header is damaged (text length)");
        }
        let Ok(text) = std::str::from_utf8(&header[TEXT_AT..TEXT_AT + text_len]) else {
            return damaged("its change map header is damaged (text not UTF-8)");
        };
        let tracking = match header[13] {
            0 => Tracking::Exact { base: None },
            1 => Tracking::Exact {
                base: Some(text.to_string()),
            },
            2 => Tracking::Unknown {
                reason: text.to_string(),
            },
            k => return Decoded::Damaged(format!("its change map has an unknown kind {k}")),
        };
        let uuid = Uuid::from_bytes(header[16..32].try_into().unwrap_or([0; 16]));
        let chunk_size = u64_at(32);
        let chunk_count = u64_at(40);
        let exact_and_closed =
            state == RecordState::Closed && matches!(tracking, Tracking::Exact { .. });
        let want = if exact_and_closed {
            bitmap_len(chunk_count)
        } else {
            0
        };
        if covered != want {
            return damaged("its change map header is damaged (bitmap length)");
        }
        Decoded::Valid(Record {
            state,
            tracking,
            uuid,
            chunk_size,
            chunk_count,
            bitmap,
        })
    }
}

fn checksum(header: &[u8], bitmap: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(header);
    h.update(bitmap);
    h.finalize().into()
}
