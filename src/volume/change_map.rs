//! Change tracking: which data-area chunks were written since the last
//! snapshot, kept with the volume so that the next snapshot uploads only
//! those (issue 14, "Incremental").
//!
//! # The interface the snapshot layer uses
//!
//! [`CHUNK_SIZE`], [`Changes`], and five methods of
//! [`Volume`](super::Volume): `changes`, `restart_changes`,
//! `merge_changes`, `read_stored`, `write_stored` (in
//! `encrypted_volume.rs`, which owns the volume's fields; they delegate the
//! bookkeeping to [`ChangeMap`] here). One deviation from the first draft
//! of the interface: a volume larger than change tracking covers
//! ([`MAX_TRACKED_CHUNKS`](super::change_record::MAX_TRACKED_CHUNKS)
//! chunks, ~7 TiB) stays `Unknown` even after `restart_changes`.
//!
//! # How it stays exact, or says it is not
//!
//! In memory: one bit per chunk in atomic words. Every write, trim,
//! write-zeroes and stored write sets its chunks' bits (`fetch_or`) before
//! it is issued and again when it completes, so a restart racing it finds
//! it in the old set, the new set, or both — never neither. That is the
//! whole cost on the hot path, plus one relaxed-enough flag load.
//!
//! On disk ([`change_record`](super::change_record) has the bytes): before
//! the *first* write of a read-write attachment reaches the store, the
//! record is marked **open** and flushed (once per attachment, not per
//! write). A clean close — the volume dropped after its started operations
//! drained, no write or flush having failed — writes the bitmap, then the
//! header marked **closed** with a checksum over both, and flushes. At the
//! next open a record that is open, torn, of another volume, or fails its
//! checksum is `Unknown` until the next `restart_changes`.
//!
//! Why that order never misses a change: a data write can reach the store
//! only after "open" is durable (the flush in between), and "closed" is
//! written only after every write has completed, with every bit they set.
//! A crash anywhere between leaves "open" (or a torn close, which fails the
//! checksum): `Unknown`. Data writes still in a volatile cache when the
//! close is flushed are flushed with it, and their bits are already in the
//! bitmap either way. A fenced RBD client can write neither data nor the
//! close (the store refuses both), so its record stays open for the next
//! attachment to see. Read-only attachments never write the record.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::volume::backend::Backend;
use crate::volume::change_record::{
    BITMAP_OFFSET, CHANGE_MAP_OFFSET, Decoded, HEADER_LEN, MAX_TEXT_LEN, MAX_TRACKED_CHUNKS,
    Record, RecordState, Tracking, bitmap_len,
};
use crate::volume::superblock::format::Superblock;

/// Bytes of the data area per snapshot chunk (chunk i = data-area bytes
/// [i*CHUNK_SIZE, (i+1)*CHUNK_SIZE), the last one cut at the volume size).
pub const CHUNK_SIZE: u64 = 1 << 20;

/// What change tracking can say about a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Every chunk that may differ from `base` is in `chunks` (ascending indices);
    /// the others are byte-for-byte what they were when `base` was taken.
    /// `base`: the snapshot URL given to the last `restart_changes`, or None when
    /// tracking started at volume creation (then `chunks` = every chunk written since).
    Exact {
        base: Option<String>,
        chunks: Vec<u64>,
    },
    /// Tracking cannot vouch for the changes; `reason` is one line for the user
    /// ("the volume was not detached cleanly (crash or kill) since …", "made by an
    /// older envol", "larger than change tracking covers", …).
    Unknown { reason: String },
}

/// Chunks of a data area of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

/// The reason for a volume made before change tracking.
pub const NO_RECORD_REASON: &str = "made by an older envol (no change map)";

/// "since creation" or "since SNAPSHOT".
fn since(base: &Option<String>) -> String {
    match base {
        None => "since the volume was created".into(),
        Some(b) => format!("since {b}"),
    }
}

/// The record a new volume starts with: closed, exact since creation,
/// nothing written (its bitmap all zero).
pub fn new_volume_record(sb: &Superblock) -> Vec<u8> {
    let count = chunk_count(sb.size);
    let record = if count > MAX_TRACKED_CHUNKS {
        Record {
            state: RecordState::Closed,
            tracking: Tracking::Unknown {
                reason: too_large_reason(count),
            },
            uuid: sb.uuid,
            chunk_size: CHUNK_SIZE,
            chunk_count: count,
            bitmap: Vec::new(),
        }
    } else {
        Record {
            state: RecordState::Closed,
            tracking: Tracking::Exact { base: None },
            uuid: sb.uuid,
            chunk_size: CHUNK_SIZE,
            chunk_count: count,
            bitmap: vec![0; bitmap_len(count) as usize],
        }
    };
    let mut bytes = record.encode_header().to_vec();
    bytes.extend_from_slice(&record.bitmap);
    bytes
}

fn too_large_reason(count: u64) -> String {
    format!(
        "the volume ({count} chunks of 1 MiB) is larger than change tracking covers ({MAX_TRACKED_CHUNKS} chunks)"
    )
}

/// What a volume's record says, read without opening the volume (no key
/// needed: `volume info`). `Exact` here is the record's word as of its last
/// clean close; an attached volume's record is open (`Unknown`), and says
/// which base it is tracking against in `open_since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChanges {
    pub changes: Changes,
    /// For a record marked open: what it was exact against before this
    /// attachment began (`since …`), to show while a server has it.
    pub open_since: Option<String>,
}

/// Reads the record of the volume `sb` describes from `backend`.
pub fn read_stored_changes(backend: &dyn Backend, sb: &Superblock) -> StoredChanges {
    let loaded = load(backend, sb);
    StoredChanges {
        changes: loaded.changes(),
        open_since: loaded.open_since,
    }
}

/// A record as loaded: its tracking, and the chunks (set bits).
struct Loaded {
    tracking: Tracking,
    chunk_count: u64,
    bits: Vec<u64>,
    open_since: Option<String>,
}

impl Loaded {
    fn unknown(chunk_count: u64, reason: String) -> Self {
        Loaded {
            tracking: Tracking::Unknown { reason },
            chunk_count,
            bits: Vec::new(),
            open_since: None,
        }
    }

    fn changes(&self) -> Changes {
        match &self.tracking {
            Tracking::Unknown { reason } => Changes::Unknown {
                reason: reason.clone(),
            },
            Tracking::Exact { base } => Changes::Exact {
                base: base.clone(),
                chunks: chunks_of(self.bits.iter().copied(), self.chunk_count),
            },
        }
    }
}

/// The set chunk indices of bitmap words, below `count`.
fn chunks_of(words: impl Iterator<Item = u64>, count: u64) -> Vec<u64> {
    let mut chunks = Vec::new();
    for (w, mut word) in words.enumerate() {
        while word != 0 {
            let chunk = w as u64 * 64 + u64::from(word.trailing_zeros());
            if chunk >= count {
                return chunks;
            }
            chunks.push(chunk);
            word &= word - 1;
        }
    }
    chunks
}

/// Reads and judges the record of the volume `sb` describes.
fn load(backend: &dyn Backend, sb: &Superblock) -> Loaded {
    let count = chunk_count(sb.size);
    if count > MAX_TRACKED_CHUNKS {
        return Loaded::unknown(count, too_large_reason(count));
    }
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = backend.read_at(CHANGE_MAP_OFFSET, &mut header) {
        return Loaded::unknown(count, format!("its change map cannot be read: {e}"));
    }
    let decoded = Record::decode(&header, |len| {
        let mut bitmap = vec![0u8; len];
        backend.read_at(BITMAP_OFFSET, &mut bitmap)?;
        Ok(bitmap)
    });
    let record = match decoded {
        Decoded::Absent => return Loaded::unknown(count, NO_RECORD_REASON.into()),
        Decoded::Damaged(why) => return Loaded::unknown(count, why),
        Decoded::Valid(r) => r,
    };
    if record.uuid != sb.uuid {
        return Loaded::unknown(
            count,
            "its change map belongs to another volume (the store was reused)".into(),
        );
    }
    if record.chunk_size != CHUNK_SIZE {
        return Loaded::unknown(
            count,
            format!(
                "its change map uses {}-byte chunks, not {CHUNK_SIZE}",
                record.chunk_size
            ),
        );
    }
    if record.state == RecordState::Open {
        let (reason, open_since) = match &record.tracking {
            Tracking::Exact { base } => (
                format!(
                    "the volume was not detached cleanly (crash or kill) {}",
                    since(base)
                ),
                Some(since(base)),
            ),
            Tracking::Unknown { reason } => (reason.clone(), None),
        };
        let mut loaded = Loaded::unknown(count, reason);
        loaded.open_since = open_since;
        return loaded;
    }
    let Tracking::Exact { base } = record.tracking else {
        return Loaded::unknown(count, tracking_reason(&record.tracking));
    };
    if record.chunk_count > count {
        return Loaded::unknown(
            count,
            "the volume is smaller than when its changes were recorded".into(),
        );
    }
    // Bit i % 8 of byte i / 8 is chunk i: little-endian words.
    let mut bits = vec![0u64; count.div_ceil(64) as usize];
    for (word, bytes) in bits.iter_mut().zip(record.bitmap.chunks(8)) {
        let mut le = [0u8; 8];
        le[..bytes.len()].copy_from_slice(bytes);
        *word = u64::from_le_bytes(le);
    }
    // Bits past the recorded chunks mean nothing (a stray bit cannot be
    // checksummed into meaning by a newer writer; cleared anyway).
    for chunk in
        record.chunk_count..(bits.len() as u64 * 64).min(bitmap_len(record.chunk_count) * 8)
    {
        bits[(chunk / 64) as usize] &= !(1 << (chunk % 64));
    }
    // Chunks added by growing the volume are new since the base.
    for chunk in record.chunk_count..count {
        bits[(chunk / 64) as usize] |= 1 << (chunk % 64);
    }
    Loaded {
        tracking: Tracking::Exact { base },
        chunk_count: count,
        bits,
        open_since: None,
    }
}

fn tracking_reason(t: &Tracking) -> String {
    match t {
        Tracking::Unknown { reason } => reason.clone(),
        Tracking::Exact { base } => since(base),
    }
}

/// State changed only under the lock (never on the hot path).
struct Guarded {
    tracking: Tracking,
}

/// A volume's change tracking while it is open.
pub(crate) struct ChangeMap {
    uuid: Uuid,
    /// The chunks the bitmap tracks: the volume's when it was opened.
    chunk_count: u64,
    /// The volume's chunks now: more than `chunk_count` once it grew while
    /// open. The chunks beyond the bitmap are reported changed, always
    /// (their writes are not tracked until the next open, whose record,
    /// written with `chunk_count`, counts them changed again).
    size_chunks: AtomicU64,
    /// One bit per chunk; empty when the volume is too large to track.
    words: Box<[AtomicU64]>,
    guarded: Mutex<Guarded>,
    /// Whether the record on disk can no longer vouch for a wrong set: it
    /// was durably marked open by this attachment, or it was already not
    /// exact when loaded (absent, open, torn, unknown — a crash leaves it
    /// that way, so there is nothing to mark). Read without the lock on
    /// the hot path; set under it.
    marked_open: AtomicBool,
    /// Something the close must record happened: the record was marked
    /// open, or a restart or merge changed what it says.
    changed: AtomicBool,
    /// A write or flush failed: the close must not vouch for the set.
    failed: AtomicBool,
}

impl std::fmt::Debug for ChangeMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeMap")
            .field("chunk_count", &self.chunk_count)
            .field("marked_open", &self.marked_open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `PermissionDenied` for a read-only attachment's attempt to change it.
fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "volume is read-only")
}

impl ChangeMap {
    /// Loads the record of the volume `sb` describes (reads only).
    pub(crate) fn load(backend: &dyn Backend, sb: &Superblock) -> ChangeMap {
        let loaded = load(backend, sb);
        let tracked = loaded.chunk_count <= MAX_TRACKED_CHUNKS;
        let vouches = matches!(loaded.tracking, Tracking::Exact { .. });
        let words: Box<[AtomicU64]> = if tracked {
            let mut bits = loaded.bits;
            bits.resize(loaded.chunk_count.div_ceil(64) as usize, 0);
            bits.into_iter().map(AtomicU64::new).collect()
        } else {
            Box::new([])
        };
        ChangeMap {
            uuid: sb.uuid,
            chunk_count: loaded.chunk_count,
            size_chunks: AtomicU64::new(loaded.chunk_count),
            words,
            guarded: Mutex::new(Guarded {
                tracking: loaded.tracking,
            }),
            marked_open: AtomicBool::new(!vouches),
            changed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Guarded> {
        self.guarded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tracked(&self) -> bool {
        !self.words.is_empty()
    }

    /// Sets the bits of the chunks covering data-area bytes
    /// `[offset, offset + len)`, `len > 0`, in range.
    pub(crate) fn note(&self, offset: u64, len: u64) {
        if len == 0 || !self.tracked() {
            return;
        }
        let first = offset / CHUNK_SIZE;
        let last = ((offset + len - 1) / CHUNK_SIZE).min(self.chunk_count - 1);
        let mut chunk = first;
        while chunk <= last {
            let word = chunk / 64;
            let upto = last.min(word * 64 + 63);
            let lo = chunk % 64;
            let hi = upto % 64;
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            // Relaxed: all that matters is that every bit lands in the
            // word's single modification order, before or after a
            // restart's swap of that word; nothing else is published by it.
            self.words[word as usize].fetch_or(mask, Ordering::Relaxed);
            chunk = upto + 1;
        }
    }

    /// Before a write of `[offset, offset + len)` is issued: marks the
    /// record open (the first time) and notes the chunks. An error means the
    /// write must not be issued.
    pub(crate) fn before_write(
        &self,
        backend: &dyn Backend,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        if !self.marked_open.load(Ordering::Acquire) {
            self.mark_open(backend)?;
        }
        self.note(offset, len);
        Ok(())
    }

    /// After a write of `[offset, offset + len)` completed (or failed: it
    /// may have landed in part): notes the chunks again, for a restart that
    /// ran while it was in flight.
    pub(crate) fn after_write(&self, offset: u64, len: u64, ok: bool) {
        self.note(offset, len);
        if !ok {
            self.failed.store(true, Ordering::SeqCst);
        }
    }

    /// A write or flush failed: the set is not vouched for at close.
    pub(crate) fn failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Marks the record open and flushes it, once per attachment.
    fn mark_open(&self, backend: &dyn Backend) -> io::Result<()> {
        let guarded = self.lock();
        if self.marked_open.load(Ordering::Acquire) {
            return Ok(());
        }
        let record = Record {
            state: RecordState::Open,
            tracking: guarded.tracking.clone(),
            uuid: self.uuid,
            chunk_size: CHUNK_SIZE,
            chunk_count: self.chunk_count,
            bitmap: Vec::new(),
        };
        let marked = backend
            .write_at(CHANGE_MAP_OFFSET, &record.encode_header())
            .and_then(|()| backend.flush());
        if let Err(e) = marked {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot mark the change map open: {e}"),
            ));
        }
        self.changed.store(true, Ordering::SeqCst);
        self.marked_open.store(true, Ordering::Release);
        Ok(())
    }

    /// The changes so far.
    pub(crate) fn changes(&self) -> Changes {
        let guarded = self.lock();
        let changes = match &guarded.tracking {
            Tracking::Unknown { reason } => Changes::Unknown {
                reason: reason.clone(),
            },
            Tracking::Exact { base } => Changes::Exact {
                base: base.clone(),
                chunks: chunks_of(
                    self.words.iter().map(|w| w.load(Ordering::Relaxed)),
                    self.chunk_count,
                ),
            },
        };
        self.with_grown_chunks(changes)
    }

    /// The volume grew to `size` bytes while open: the chunks past the
    /// bitmap are changed from now on (see `size_chunks`). Called after
    /// the new size is on disk, before a request can reach the new chunks.
    pub(crate) fn grown(&self, size: u64) {
        self.size_chunks
            .fetch_max(chunk_count(size), Ordering::SeqCst);
    }

    /// `changes` with the chunks the volume grew by while open (beyond
    /// the bitmap): all changed, or `Unknown` past what tracking covers.
    fn with_grown_chunks(&self, changes: Changes) -> Changes {
        let size_chunks = self.size_chunks.load(Ordering::SeqCst);
        if size_chunks <= self.chunk_count {
            return changes;
        }
        match changes {
            Changes::Exact { .. } if size_chunks > MAX_TRACKED_CHUNKS => Changes::Unknown {
                reason: too_large_reason(size_chunks),
            },
            Changes::Exact { base, mut chunks } => {
                chunks.extend(self.chunk_count..size_chunks);
                Changes::Exact { base, chunks }
            }
            unknown => unknown,
        }
    }

    /// `Volume::restart_changes`; `read_only` refuses it.
    pub(crate) fn restart(
        &self,
        backend: &dyn Backend,
        base: &str,
        read_only: bool,
    ) -> io::Result<Changes> {
        if read_only {
            return Err(read_only_error());
        }
        if base.len() > MAX_TEXT_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a change-tracking base is at most {MAX_TEXT_LEN} bytes, not {}",
                    base.len()
                ),
            ));
        }
        // Open before the set changes: a crash from here on is Unknown.
        if !self.marked_open.load(Ordering::Acquire) {
            self.mark_open(backend)?;
        }
        let mut guarded = self.lock();
        let old: Vec<u64> = self
            .words
            .iter()
            .map(|w| w.swap(0, Ordering::Relaxed))
            .collect();
        let earlier = match &guarded.tracking {
            Tracking::Unknown { reason } => Changes::Unknown {
                reason: reason.clone(),
            },
            Tracking::Exact { base } => Changes::Exact {
                base: base.clone(),
                chunks: chunks_of(old.into_iter(), self.chunk_count),
            },
        };
        if self.tracked() {
            guarded.tracking = Tracking::Exact {
                base: Some(base.to_string()),
            };
        }
        self.changed.store(true, Ordering::SeqCst);
        Ok(self.with_grown_chunks(earlier))
    }

    /// `Volume::merge_changes`.
    pub(crate) fn merge(&self, backend: &dyn Backend, earlier: Changes, read_only: bool) {
        if read_only {
            // Nothing of a read-only attachment is persisted, and it cannot
            // have restarted anything to give back.
            return;
        }
        if !self.marked_open.load(Ordering::Acquire)
            && let Err(e) = self.mark_open(backend)
        {
            tracing::warn!("change tracking: {e}; the changes given back are kept in memory only");
            self.failed();
        }
        let mut guarded = self.lock();
        self.changed.store(true, Ordering::SeqCst);
        if matches!(guarded.tracking, Tracking::Unknown { .. }) {
            return;
        }
        match earlier {
            Changes::Unknown { reason } => guarded.tracking = Tracking::Unknown { reason },
            Changes::Exact { base, mut chunks } => {
                // The chunks a grow added are reported changed anyway.
                let size_chunks = self.size_chunks.load(Ordering::SeqCst);
                chunks.retain(|&c| c < self.chunk_count || c >= size_chunks);
                if let Some(beyond) = chunks.iter().find(|&&c| c >= self.chunk_count) {
                    guarded.tracking = Tracking::Unknown {
                        reason: format!(
                            "changes given back name chunk {beyond}, beyond the volume's {}",
                            self.chunk_count
                        ),
                    };
                    return;
                }
                for c in chunks {
                    self.words[(c / 64) as usize].fetch_or(1 << (c % 64), Ordering::Relaxed);
                }
                guarded.tracking = Tracking::Exact { base };
            }
        }
    }

    /// The clean close: once every started operation has completed, writes
    /// the bitmap and the closed header (checksummed together) and flushes.
    /// Does nothing if nothing changed (no write to an exact record, no
    /// restart or merge), and
    /// refuses if a write or flush failed (the record stays as it is:
    /// open, or not exact anyway).
    pub(crate) fn close(&self, backend: &dyn Backend) -> io::Result<()> {
        // Writes to a record that vouched for something marked it open
        // (and `changed`); writes to one that did not leave it as it is:
        // not exact, as they are.
        if !self.changed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(io::Error::other(
                "a write or flush failed: the change map stays marked open",
            ));
        }
        let guarded = self.lock();
        let exact = matches!(guarded.tracking, Tracking::Exact { .. });
        let bitmap = if exact {
            let mut bytes = Vec::with_capacity(bitmap_len(self.chunk_count) as usize);
            for w in self.words.iter() {
                bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            bytes.truncate(bitmap_len(self.chunk_count) as usize);
            bytes
        } else {
            Vec::new()
        };
        let record = Record {
            state: RecordState::Closed,
            tracking: guarded.tracking.clone(),
            uuid: self.uuid,
            chunk_size: CHUNK_SIZE,
            chunk_count: self.chunk_count,
            bitmap,
        };
        // One flush for both: the checksum binds them, so a close torn
        // between the bitmap and the header is damaged, not wrong.
        if !record.bitmap.is_empty() {
            backend.write_at(BITMAP_OFFSET, &record.bitmap)?;
        }
        backend.write_at(CHANGE_MAP_OFFSET, &record.encode_header())?;
        backend.flush()
    }
}

#[cfg(test)]
#[path = "change_map_tests.rs"]
mod tests;
