//! Serving a volume while its restore is still running (`volume restore
//! --lazy`, then `envol serve`): a [`Backend`] wrapper, below the cipher,
//! that puts a chunk into the store the first time anything touches it.
//!
//! Chunks are the volume's ciphertext as stored, so hydration is a store
//! concern: "a read of a chunk not yet in the store fetches it into the
//! store first" — nbdkit's filter model. The volume layer knows nothing of
//! snapshots: the fetching is an injected [`ChunkFetcher`] (the snapshot
//! layer implements it over S3), so dependencies still run one way.
//!
//! # The rules
//!
//! - A read, write, trim or zeroing of data-area bytes first makes sure
//!   every chunk it touches is in the store ([`Hydration::ensure`]). A
//!   partial write needs the rest of its chunk, so a write fetches first
//!   too (fetch-then-write): one rule for every request.
//! - Putting a chunk in: under the chunk's lock, if its bit is still clear,
//!   fetch it, write it, **flush**, write its bit (one byte), and only then
//!   set it in memory. So a bit on disk always means its chunk is durable
//!   (never zeros for data: a chunk whose bit did not reach the disk is
//!   fetched again). Requests check the bit in memory, so a client write
//!   to a chunk is issued only after the chunk's bit was written; the bit
//!   needs no flush of its own, because a client write is durable only
//!   once the client's FLUSH (or FUA) returns, and that flush of the store
//!   makes the earlier bit durable with it. A crash before it may lose the
//!   unflushed write — which a disk's volatile cache may do too, and NBD
//!   allows — but never a flushed one: after a crash no chunk holding a
//!   flushed client write is fetched again (snapshot data never overwrites
//!   it). One flush per chunk, not two.
//! - A failed fetch (a tampered or missing object, the store unreachable)
//!   fails the request (EIO to the client, not zeros) and is logged once
//!   per chunk; the next request for it tries again.
//! - Background hydration is the same [`Hydration::ensure`], called for
//!   every missing chunk by the snapshot layer with bounded concurrency.
//!   When the last bit is set, [`Hydration::complete`] clears the record.
//! - A volume that is hydrating does not grow (the record lies where the
//!   data area would grow) and is not asynchronous (an S3 fetch blocks, so
//!   requests go through the blocking path).

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::volume::attachment::{AttachMode, AttachmentError};
use crate::volume::backend::{Backend, Extent};
use crate::volume::change_map::CHUNK_SIZE;
use crate::volume::hydration_record::{HydrationRecord, bitmap_offset};
use crate::volume::superblock::format::Superblock;

/// Where a hydrating volume's chunks come from. Blocking: called on the
/// threads that serve requests, and by background hydration.
pub trait ChunkFetcher: Send + Sync {
    /// Chunk `index` as stored (`len` bytes, checked against what the
    /// snapshot recorded), or `None` when the snapshot has no data there
    /// (it reads as zeros). An error is one line naming the chunk.
    fn fetch(&self, index: u64, len: u64) -> io::Result<Option<Vec<u8>>>;
}

/// Chunk locks: enough stripes that unrelated chunks rarely wait on each
/// other's fetch.
const STRIPES: usize = 1024;

/// The shared state of one hydrating volume: its store, the record, the
/// source. Shared by the volume's backend and background hydration.
pub struct Hydration {
    inner: Box<dyn Backend>,
    fetcher: Arc<dyn ChunkFetcher>,
    superblock: Superblock,
    data_offset: u64,
    chunks: u64,
    /// In memory: set only once durable on disk.
    present: Vec<AtomicU64>,
    fetched: AtomicU64,
    complete: AtomicBool,
    /// The bitmap bytes as written (a byte is written whole, under this lock).
    on_disk: Mutex<Vec<u8>>,
    stripes: Vec<Mutex<()>>,
    /// Chunks whose failure was logged (once each).
    logged: Mutex<HashSet<u64>>,
    source: String,
}

impl Hydration {
    /// Hydration of the volume `sb` on `inner` from `fetcher`, starting
    /// from `record` (as loaded from `inner`).
    pub fn new(
        inner: Box<dyn Backend>,
        sb: &Superblock,
        record: HydrationRecord,
        fetcher: Arc<dyn ChunkFetcher>,
    ) -> Arc<Hydration> {
        let chunks = record.header.size.div_ceil(CHUNK_SIZE);
        let present: Vec<AtomicU64> = (0..chunks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        let mut fetched = 0;
        for i in 0..chunks {
            if record.bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                present[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::Relaxed);
                fetched += 1;
            }
        }
        Arc::new(Hydration {
            inner,
            fetcher,
            superblock: sb.clone(),
            data_offset: sb.data_offset,
            chunks,
            present,
            fetched: AtomicU64::new(fetched),
            complete: AtomicBool::new(false),
            on_disk: Mutex::new(record.bitmap),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            logged: Mutex::new(HashSet::new()),
            source: record.header.source.snapshot,
        })
    }

    /// The snapshot it hydrates from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Chunks in the store, and all of them.
    pub fn progress(&self) -> (u64, u64) {
        (self.fetched.load(Ordering::Acquire), self.chunks)
    }

    /// Whether the record has been cleared: a plain volume now.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Whether chunk `index` is in the store.
    pub fn is_present(&self, index: u64) -> bool {
        self.present[(index / 64) as usize].load(Ordering::Acquire) & (1 << (index % 64)) != 0
    }

    /// Chunks not yet in the store, ascending.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.chunks).filter(|&i| !self.is_present(i)).collect()
    }

    /// The chunks `[offset, offset+len)` of the store touches, if any
    /// (store offsets; the header region and beyond touch none).
    fn chunks_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let start = offset.max(self.data_offset);
        let end = offset
            .saturating_add(len)
            .min(self.data_offset + self.superblock.size);
        if end <= start {
            return 0..0;
        }
        (start - self.data_offset) / CHUNK_SIZE..(end - self.data_offset).div_ceil(CHUNK_SIZE)
    }

    fn all_present(&self, offset: u64, len: u64) -> bool {
        self.is_complete() || self.chunks_of(offset, len).all(|i| self.is_present(i))
    }

    /// Makes sure every chunk `[offset, offset+len)` touches is in the store.
    fn ensure_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.is_complete() {
            return Ok(());
        }
        for i in self.chunks_of(offset, len) {
            self.ensure(i)?;
        }
        Ok(())
    }

    /// Puts chunk `index` into the store if it is not there yet (see the
    /// module's rules for the order of writes).
    pub fn ensure(&self, index: u64) -> io::Result<()> {
        if index >= self.chunks || self.is_present(index) {
            return Ok(());
        }
        let _chunk = self.stripes[(index as usize) % STRIPES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_present(index) {
            return Ok(());
        }
        let start = index * CHUNK_SIZE;
        let len = (self.superblock.size - start).min(CHUNK_SIZE);
        let fetched = self.fetcher.fetch(index, len).and_then(|bytes| {
            if let Some(bytes) = bytes {
                if bytes.len() as u64 != len {
                    return Err(io::Error::other(format!(
                        "chunk {index}: {} bytes fetched, expected {len}",
                        bytes.len()
                    )));
                }
                self.inner.write_at(self.data_offset + start, &bytes)?;
                self.inner.flush()?;
            }
            self.persist(index)
        });
        if let Err(e) = fetched {
            let first = self
                .logged
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(index);
            if first {
                tracing::error!(
                    "lazy restore from {}: cannot fetch chunk {index}: {e}",
                    self.source
                );
            }
            return Err(io::Error::other(format!(
                "chunk {index} is not restored yet and could not be fetched from {}: {e}",
                self.source
            )));
        }
        self.present[(index / 64) as usize].fetch_or(1 << (index % 64), Ordering::AcqRel);
        self.fetched.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Sets chunk `index`'s bit on disk. Not flushed here: see the
    /// module's rules for why the client's next flush is soon enough.
    fn persist(&self, index: u64) -> io::Result<()> {
        let mut bitmap = self.on_disk.lock().unwrap_or_else(PoisonError::into_inner);
        let byte = (index / 8) as usize;
        bitmap[byte] |= 1 << (index % 8);
        self.inner.write_at(
            bitmap_offset(&self.superblock) + byte as u64,
            &bitmap[byte..=byte],
        )
    }

    /// Every chunk is in the store: clears the record (the volume is a
    /// plain one from the next open) and stops checking. `Ok(false)` while
    /// chunks are still missing.
    pub fn complete(&self) -> io::Result<bool> {
        if self.is_complete() {
            return Ok(true);
        }
        if (0..self.chunks).any(|i| !self.is_present(i)) {
            return Ok(false);
        }
        HydrationRecord::clear(&*self.inner, &self.superblock)?;
        self.complete.store(true, Ordering::Release);
        Ok(true)
    }
}

/// The hydrating volume's store: every request that touches a chunk not
/// yet in the store puts it there first.
pub struct HydratingBackend(pub Arc<Hydration>);

impl Backend for HydratingBackend {
    fn is_asynchronous(&self) -> bool {
        false
    }

    fn restore_progress(&self) -> Option<(u64, u64)> {
        (!self.0.is_complete()).then(|| self.0.progress())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.ensure_range(offset, buf.len() as u64)?;
        self.0.inner.read_at(offset, buf)
    }

    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if !self.0.all_present(offset, buf.len() as u64) {
            return Ok(false);
        }
        self.0.inner.try_read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.ensure_range(offset, data.len() as u64)?;
        self.0.inner.write_at(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.0.inner.flush()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.ensure_range(offset, len)?;
        self.0.inner.punch_hole(offset, len)
    }

    fn size(&self) -> io::Result<u64> {
        self.0.inner.size()
    }

    fn grow_to(&self, len: u64) -> io::Result<()> {
        if self.0.is_complete() {
            return self.0.inner.grow_to(len);
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the volume is still being restored from {} (lazily): it can grow once that is complete",
                self.0.source
            ),
        ))
    }

    /// Chunks not in the store yet are data, whatever the store says.
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        if !self.0.all_present(offset, len) {
            return Ok(if len == 0 {
                Vec::new()
            } else {
                vec![Extent {
                    offset,
                    len,
                    hole: false,
                }]
            });
        }
        self.0.inner.extents(offset, len)
    }

    fn lock_attachment(&self, mode: AttachMode) -> Result<(), AttachmentError> {
        self.0.inner.lock_attachment(mode)
    }

    fn create_store_snapshot(&self, name: &str) -> io::Result<()> {
        if !self.0.is_complete() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the volume is still being restored lazily: its store has chunks still to fetch",
            ));
        }
        self.0.inner.create_store_snapshot(name)
    }

    fn remove_store_snapshot(&self, name: &str) -> io::Result<()> {
        self.0.inner.remove_store_snapshot(name)
    }

    fn store_snapshots(&self) -> io::Result<Vec<String>> {
        self.0.inner.store_snapshots()
    }
}

#[cfg(test)]
#[path = "hydrating_backend_tests.rs"]
mod tests;
