//! `Volume`: the plaintext, byte-addressed view of one encrypted volume.
//!
//! Client offset `x` is stored at backend offset `data_offset + x`, in sector
//! `x / sector_size` of the data area, encrypted as that sector. Requests of
//! any alignment are served: whole sectors go straight through the cipher,
//! partial edge sectors are read-modify-written under a per-range lock.
//!
//! On an asynchronous backend (a Ceph image) reads, writes and flushes can
//! also be *started* ([`BlockDevice::start_read`] and its siblings): a read
//! fetches the covering sectors and decrypts them once the backend has
//! completed it — on the backend's callback thread, or on the caller's CPU
//! threads when it names some ([`BlockDevice::start_read_on`]); a write
//! encrypts on the calling thread into a ciphertext buffer of its own and
//! holds its sector range until the backend completes it; FUA is that
//! write, then a started flush. Everything else (trim, zeroing, block
//! status) stays blocking. Every started operation is counted
//! ([`StartedOps`]): a volume being dropped waits for them, so no
//! completion is ever left holding the last piece of it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use uuid::Uuid;

use crate::volume::backend::{
    Backend, Extent, FlushDone, IoBuf, IoBuffer, IoDone, write_zero_range,
};
use crate::volume::buffer_pool::BufferPool;
use crate::volume::change_map::{ChangeMap, Changes};
use crate::volume::cipher::{CipherError, SectorCipher};
use crate::volume::device::{Allocation, BlockDevice, BlockSizes, CpuExecutor};
use crate::volume::frozen_view::Freezer;
use crate::volume::grow::{GrowError, Grown, NewSize, grow_store};
use crate::volume::key::DataKey;
use crate::volume::range_lock::{OwnedRangeGuard, RangeLocks};
use crate::volume::started_ops::{DRAIN_LIMIT, OpToken, StartedOps};
use crate::volume::superblock::{Superblock, SuperblockError};
use crate::volume::transition_state::{Keying, Reencryption};
use crate::volume::xts_engine::XtsEngine;

/// Largest request the device advertises (NBD_INFO_BLOCK_SIZE maximum).
pub const MAX_REQUEST: u32 = 32 << 20;

/// Why a volume could not be opened. Never names the key.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("wrong data key: it does not match the volume's key check value")]
    WrongKey,
    #[error("wrong new data key: it does not match the re-encryption's key check value")]
    WrongNewKey,
    #[error("a data-key re-encryption is in progress on this volume: it opens only with both keys")]
    InTransition,
    #[error("no data-key re-encryption is in progress on this volume")]
    NotInTransition,
    #[error(
        "a re-encryption step was interrupted: attach the volume read-write (or run `envol volume reencrypt`) once to recover it"
    )]
    HotzoneNeedsRecovery,
    #[error(transparent)]
    Superblock(#[from] SuperblockError),
    #[error(transparent)]
    Cipher(#[from] CipherError),
    #[error("backing store is {have} bytes, the volume needs {need}")]
    BackendTooSmall { need: u64, have: u64 },
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// An open volume: backend + superblock + sector cipher.
pub struct Volume {
    /// Shared so that a started write with FUA can start its flush from
    /// the write's completion (through a `Weak`: a completion never keeps
    /// the store open).
    pub(super) backend: Arc<dyn Backend>,
    /// The cipher (and the re-encryption in progress, if any): replaced
    /// as a whole when a re-encryption begins or ends on the open volume.
    /// A request clones the `Arc` once and keeps it until it is done (a
    /// started read, into its completion).
    pub(super) keying: RwLock<Arc<Keying>>,
    uuid: Uuid,
    /// The superblock as on disk: it changes when the volume grows (the
    /// lock also serializes grows).
    superblock: Mutex<Superblock>,
    /// The data area's size: grows while open (`grow`), never shrinks; a
    /// request is checked against the size when it arrives.
    size: AtomicU64,
    pub(super) sector_size: u64,
    data_offset: u64,
    read_only: bool,
    /// Shared so that a started write's guard can live in its completion.
    pub(super) locks: Arc<RangeLocks>,
    /// Ciphertext buffers for writes and unaligned reads, reused so the
    /// steady state allocates nothing per request (shared: a started
    /// request's buffer travels with it).
    buffers: Arc<BufferPool>,
    /// Started operations not yet completed: `Drop` waits for them.
    started: Arc<StartedOps>,
    /// Which chunks were written since the last snapshot (shared: a
    /// started write notes its chunks again when it completes).
    pub(super) changes: Arc<ChangeMap>,
    /// Every write passes its gate; a snapshot of the attached volume
    /// freezes it (see [`frozen_view`](crate::volume::frozen_view)).
    pub(crate) freezer: Freezer,
    /// [`BlockDevice::contents_generation`]: moved on by every write,
    /// zeroing and stored write once its data is stored (shared: a
    /// started write moves it on from its completion). A re-encryption
    /// rewrites ciphertext only, and leaves it.
    generation: Arc<AtomicU64>,
}

impl Drop for Volume {
    /// Waits for the started operations first, so that the backend (and
    /// the cipher's key schedules) are released here, on the thread that
    /// drops the volume, and never by a completion on the store's thread.
    /// Then, if every operation completed, closes the change map cleanly
    /// (a read-only attachment never writes it).
    fn drop(&mut self) {
        let pending = self.started.wait_idle(DRAIN_LIMIT);
        if pending > 0 {
            tracing::warn!(
                pending,
                "volume dropped with operations still pending in its store; its change map stays marked open"
            );
            return;
        }
        if !self.read_only
            && let Err(e) = self.changes.close(&*self.backend)
        {
            tracing::warn!(
                "change tracking: not closed cleanly ({e}); the next snapshot compares chunk hashes"
            );
        }
    }
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("uuid", &self.uuid)
            .field("size", &self.size.load(Ordering::Acquire))
            .field("sector_size", &self.sector_size)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

fn invalid_input(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

/// Decrypts stored sectors in place, applying the zero-sector rule: a
/// sector stored as all zero bytes (a hole, or zeroed) is plaintext zeros
/// and is left alone. Runs of real ciphertext go to the cipher in one call.
/// A trailing partial sector (never handed in by the volume) is left alone.
fn decrypt_stored(cipher: &dyn SectorCipher, first_sector: u64, buf: &mut [u8]) {
    let ss = cipher.sector_size();
    let n = buf.len() / ss;
    let mut i = 0;
    while i < n {
        if is_zero(&buf[i * ss..(i + 1) * ss]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && !is_zero(&buf[i * ss..(i + 1) * ss]) {
            i += 1;
        }
        cipher.decrypt_sectors(first_sector + start as u64, &mut buf[start * ss..i * ss]);
    }
}

/// Whether a stored sector is all zero bytes (the zero-sector rule).
///
/// Real ciphertext is almost never zero in its first 16 bytes, so that one
/// comparison settles the common case; only (nearly) zero sectors pay for
/// the full scan, done as OR-folds over 64-byte groups of `u128`s that the
/// compiler vectorises, with an early exit per group.
pub(super) fn is_zero(bytes: &[u8]) -> bool {
    let (blocks, rest) = bytes.as_chunks::<16>();
    if !rest.iter().all(|&b| b == 0) {
        return false;
    }
    let Some(head) = blocks.first() else {
        return true;
    };
    if u128::from_ne_bytes(*head) != 0 {
        return false;
    }
    blocks.chunks(4).all(|group| {
        group
            .iter()
            .fold(0u128, |acc, b| acc | u128::from_ne_bytes(*b))
            == 0
    })
}

impl Volume {
    /// Opens the volume that `superblock` describes on `backend` with the
    /// unwrapped data key. The key is checked against the superblock's key
    /// check value first (`WrongKey`), then consumed: only its AES key
    /// schedules stay in memory, and the key bytes are wiped when it drops.
    pub fn open(
        backend: impl Backend,
        superblock: &Superblock,
        key: DataKey,
    ) -> Result<Volume, VolumeError> {
        superblock.validate()?;
        if superblock.transition.is_some() {
            return Err(VolumeError::InTransition);
        }
        if !key.verify_check(&superblock.uuid, &superblock.key_check) {
            return Err(VolumeError::WrongKey);
        }
        let cipher = XtsEngine::new(&key, superblock.sector_size as usize)?;
        drop(key);
        Self::assemble(Arc::new(backend), superblock, Arc::new(cipher), None)
    }

    /// A volume of `superblock` on `backend` that encrypts with `cipher`;
    /// the keys were checked by the caller.
    pub(super) fn assemble(
        backend: Arc<dyn Backend>,
        superblock: &Superblock,
        cipher: Arc<dyn SectorCipher>,
        reencryption: Option<Reencryption>,
    ) -> Result<Volume, VolumeError> {
        let need = superblock.required_backend_size();
        let have = backend.size()?;
        if have < need {
            return Err(VolumeError::BackendTooSmall { need, have });
        }
        let changes = ChangeMap::load(&*backend, superblock);
        let keying = Keying {
            cipher,
            reencryption: reencryption.map(Arc::new),
        };
        Ok(Volume {
            backend,
            keying: RwLock::new(Arc::new(keying)),
            uuid: superblock.uuid,
            superblock: Mutex::new(superblock.clone()),
            size: AtomicU64::new(superblock.size),
            sector_size: u64::from(superblock.sector_size),
            data_offset: superblock.data_offset,
            read_only: false,
            locks: Arc::new(RangeLocks::new()),
            buffers: Arc::new(BufferPool::new()),
            started: Arc::new(StartedOps::default()),
            changes: Arc::new(changes),
            freezer: Freezer::default(),
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// While a re-encryption is in progress, a read of sectors `[first,
    /// end)` that reaches the watermark holds their range lock, so that no
    /// step rewrites them (and moves the watermark past them) between the
    /// fetch and the decryption. Sectors below the watermark never change
    /// key again: reads of them take no lock, as on any other volume.
    fn read_guard(&self, keying: &Keying, first: u64, end: u64) -> Option<OwnedRangeGuard> {
        let r = keying.reencryption.as_ref()?;
        (end > r.cipher.watermark()).then(|| self.locks.lock_owned(first, end))
    }

    /// `Other` while a re-encryption is in progress: stored (ciphertext)
    /// reads and writes would mix two keys.
    pub(super) fn check_single_key(&self) -> io::Result<()> {
        let sectors = self.size.load(Ordering::Acquire) / self.sector_size;
        match &self.keying().reencryption {
            Some(r) if r.cipher.watermark() < sectors => Err(io::Error::other(
                "a data-key re-encryption is in progress: finish it (envol volume reencrypt) first",
            )),
            _ => Ok(()),
        }
    }

    /// The cipher and re-encryption requests use now.
    pub(super) fn keying(&self) -> Arc<Keying> {
        self.keying
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The superblock, locked: re-encryption steps update it through the
    /// same lock as a grow, so neither overwrites the other's change.
    pub(super) fn superblock_guard(&self) -> std::sync::MutexGuard<'_, Superblock> {
        self.lock_superblock()
    }

    /// Refuse (or allow) writes, trims and zeroing from now on.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// While a lazy restore still fills the volume: chunks fetched and in
    /// all (see [`Backend::restore_progress`]).
    pub fn restore_progress(&self) -> Option<(u64, u64)> {
        self.backend.restore_progress()
    }

    /// The superblock as now on disk (a copy: a grow changes it).
    pub fn superblock(&self) -> Superblock {
        self.lock_superblock().clone()
    }

    fn lock_superblock(&self) -> std::sync::MutexGuard<'_, Superblock> {
        self.superblock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    pub fn sector_size(&self) -> u32 {
        self.sector_size as u32
    }

    /// Grows the open volume (see [`grow`](crate::volume::grow) for the
    /// order of steps and why a crash anywhere leaves a volume that
    /// opens): the store, then both superblock copies, then the size that
    /// requests are checked against — so a request beyond the old end is
    /// served only once the new size is durable. Requests in flight are
    /// not disturbed: they are within the old size. Blocking I/O (syncs):
    /// call it off an async runtime's threads.
    pub fn grow(&self, size: NewSize) -> Result<Grown, GrowError> {
        if self.read_only {
            return Err(GrowError::ReadOnly);
        }
        let mut superblock = self.lock_superblock();
        let requested = size.resolve(superblock.size)?;
        let (now, grown) = grow_store(&*self.backend, &superblock, requested)?;
        *superblock = now;
        self.changes.grown(grown.new_size);
        self.size.fetch_max(grown.new_size, Ordering::Release);
        Ok(grown)
    }

    /// Which parts of `[offset, offset+len)` are holes in the backing store
    /// (they read as zeros), in volume coordinates, for NBD BLOCK_STATUS
    /// (`base:allocation`). Ranges stored as zero bytes without being holes
    /// are reported as data.
    pub fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut extents = self.backend.extents(self.data_offset + offset, len)?;
        for e in &mut extents {
            e.offset -= self.data_offset;
        }
        Ok(extents)
    }

    /// `InvalidInput` unless `[offset, offset+len)` lies within the volume.
    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size.load(Ordering::Acquire) => Ok(()),
            Some(_) => Err(invalid_input("request beyond the end of the volume")),
            None => Err(invalid_input("request offset + length overflows")),
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "volume is read-only",
            ))
        } else {
            Ok(())
        }
    }

    /// The sectors `[first, end)` that cover a byte range of `len > 0`.
    fn covering_sectors(&self, offset: u64, len: u64) -> (u64, u64) {
        let ss = self.sector_size;
        (offset / ss, (offset + len).div_ceil(ss))
    }

    pub(super) fn backend_offset(&self, sector: u64) -> u64 {
        self.data_offset + sector * self.sector_size
    }

    fn len_usize(&self, sectors: u64) -> io::Result<usize> {
        usize::try_from(sectors * self.sector_size)
            .map_err(|_| invalid_input("request too large for this platform"))
    }

    /// Decrypts stored sectors in place, applying the zero-sector rule: a
    /// sector stored as all zero bytes (a hole, or zeroed) is plaintext
    /// zeros and is left alone. Runs of real ciphertext go to the cipher in
    /// one call.
    fn decrypt_stored(&self, keying: &Keying, first_sector: u64, buf: &mut [u8]) {
        decrypt_stored(&*keying.cipher, first_sector, buf);
    }

    /// Reads and decrypts whole sectors `[first, first + buf.len()/ss)`.
    fn read_sectors(&self, keying: &Keying, first: u64, buf: &mut [u8]) -> io::Result<()> {
        self.backend.read_at(self.backend_offset(first), buf)?;
        self.decrypt_stored(keying, first, buf);
        Ok(())
    }

    /// A plaintext read of any alignment, fetching ciphertext with `fetch`
    /// (backend offset, buffer) — a blocking read, or a try that may say
    /// `false` (then nothing is decrypted and `false` is returned).
    fn read_with(
        &self,
        offset: u64,
        buf: &mut [u8],
        fetch: impl FnOnce(u64, &mut [u8]) -> io::Result<bool>,
    ) -> io::Result<bool> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(true);
        }
        let ss = self.sector_size;
        let (first, end_sector) = self.covering_sectors(offset, buf.len() as u64);
        let keying = self.keying();
        let _guard = self.read_guard(&keying, first, end_sector);
        check_recovered(&keying, first, end_sector)?;
        if offset.is_multiple_of(ss) && (buf.len() as u64).is_multiple_of(ss) {
            // Aligned: decrypt in the caller's buffer, no copy.
            if !fetch(self.backend_offset(first), buf)? {
                return Ok(false);
            }
            self.decrypt_stored(&keying, first, buf);
            return Ok(true);
        }
        let mut pooled = self.buffers.take(self.len_usize(end_sector - first)?);
        let sectors = pooled.as_mut_slice();
        if !fetch(self.backend_offset(first), sectors)? {
            return Ok(false);
        }
        self.decrypt_stored(&keying, first, sectors);
        let skip = (offset - first * ss) as usize;
        buf.copy_from_slice(&sectors[skip..skip + buf.len()]);
        Ok(true)
    }

    /// Fills `buf` — the sectors covering `[offset, offset + data.len())`,
    /// `data` not empty and in range — with their new ciphertext: aligned
    /// data is encrypted straight from `data` (one pass, no plaintext
    /// copy); partial edge sectors are read and decrypted first, then
    /// overlaid. The caller holds the range lock.
    fn seal(&self, offset: u64, data: &[u8], buf: &mut [u8]) -> io::Result<()> {
        let ss = self.sector_size;
        let (first, end_sector) = self.covering_sectors(offset, data.len() as u64);
        let span = buf.len();
        let head = (offset - first * ss) as usize;
        let tail_partial = !(offset + data.len() as u64).is_multiple_of(ss);
        let ss_usize = ss as usize;
        // Taken under the range lock: a re-encryption step moves the
        // watermark past these sectors only under it too.
        let keying = self.keying();
        check_recovered(&keying, first, end_sector)?;
        if head == 0 && !tail_partial {
            keying.cipher.encrypt_sectors_to(first, data, buf);
            return Ok(());
        }
        if head != 0 {
            self.read_sectors(&keying, first, &mut buf[..ss_usize])?;
        }
        if tail_partial && (end_sector - 1 > first || head == 0) {
            self.read_sectors(&keying, end_sector - 1, &mut buf[span - ss_usize..])?;
        }
        buf[head..head + data.len()].copy_from_slice(data);
        keying.cipher.encrypt_sectors(first, buf);
        Ok(())
    }

    /// Encrypts `data` (non-empty, in range) into the covering sectors
    /// and writes them, under their range lock: held from the read of the
    /// edge sectors until the write-back, and taken by aligned writes too:
    /// an aligned write racing a read-modify-write of the same sector would
    /// otherwise be undone by the stale write-back.
    fn seal_and_write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let (first, end_sector) = self.covering_sectors(offset, data.len() as u64);
        let span = self.len_usize(end_sector - first)?;
        let _guard = self.locks.lock(first, end_sector);
        let mut pooled = self.buffers.take(span);
        let buf = pooled.as_mut_slice();
        self.seal(offset, data, buf)?;
        self.backend.write_at(self.backend_offset(first), buf)
    }

    /// Sets bytes `[at, at+len)` of sector `sector` to zero by
    /// read-modify-write. The caller holds the range lock.
    fn zero_within_sector(&self, sector: u64, at: usize, len: usize) -> io::Result<()> {
        let mut pooled = self.buffers.take(self.sector_size as usize);
        let buf = pooled.as_mut_slice();
        let keying = self.keying();
        check_recovered(&keying, sector, sector + 1)?;
        self.read_sectors(&keying, sector, buf)?;
        buf[at..at + len].fill(0);
        keying.cipher.encrypt_sectors(sector, buf);
        self.backend.write_at(self.backend_offset(sector), buf)
    }

    /// Zeroes a byte range: whole sectors are punched (or stored as zero
    /// bytes, which the zero-sector rule reads as zeros), partial edge
    /// sectors are read-modify-written.
    fn zero_range(&self, offset: u64, len: u64, punch: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let _pass = self
            .freezer
            .enter_write(&*self.backend, self.data_offset, offset, len);
        self.changes.before_write(&*self.backend, offset, len)?;
        let result = self.zero_range_tracked(offset, len, punch);
        self.changes.after_write(offset, len, result.is_ok());
        self.generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// [`zero_range`](Self::zero_range) of a checked, non-empty range whose
    /// chunks are noted.
    fn zero_range_tracked(&self, offset: u64, len: u64, punch: bool) -> io::Result<()> {
        let ss = self.sector_size;
        let end = offset + len;
        let (first, end_sector) = self.covering_sectors(offset, len);
        let _guard = self.locks.lock(first, end_sector);

        let whole_first = offset.div_ceil(ss);
        let whole_end = end / ss;
        if whole_first < whole_end {
            let at = self.backend_offset(whole_first);
            let bytes = (whole_end - whole_first) * ss;
            if punch {
                self.backend.punch_hole(at, bytes)?;
            } else {
                write_zero_range(|o, z| self.backend.write_at(o, z), at, bytes)?;
            }
        }
        let mut partial = Vec::with_capacity(2);
        if !offset.is_multiple_of(ss) {
            partial.push(first);
        }
        if !end.is_multiple_of(ss) && !partial.contains(&(end_sector - 1)) {
            partial.push(end_sector - 1);
        }
        for sector in partial {
            let sector_start = sector * ss;
            let from = offset.max(sector_start) - sector_start;
            let to = end.min(sector_start + ss) - sector_start;
            self.zero_within_sector(sector, from as usize, (to - from) as usize)?;
        }
        Ok(())
    }
}

/// `Err` if sectors `[first, end)` reach a re-encryption step that failed
/// part-way and is not recovered yet (see
/// [`Reencryption`](crate::volume::transition_state::Reencryption)).
fn check_recovered(keying: &Keying, first: u64, end: u64) -> io::Result<()> {
    keying
        .reencryption
        .as_ref()
        .map_or(Ok(()), |r| r.check_recovered(first, end))
}

/// Change tracking and the stored (ciphertext) view, for snapshots: see
/// [`change_map`](crate::volume::change_map) for the design.
impl Volume {
    /// The changes since the last restart (or creation).
    pub fn changes(&self) -> Changes {
        self.changes.changes()
    }

    /// Atomically: returns the changes so far and starts an empty set whose base is
    /// `base` (a snapshot URL, ≤ 1 KiB). Writes that complete after this returns are
    /// in the new set; a write in flight across the call may be in both (never in
    /// neither). After this, `changes()` is `Exact { base: Some(base), chunks: [] }`
    /// (+ later writes), even if it was Unknown before — except on a volume larger
    /// than change tracking covers, which stays `Unknown`.
    ///
    /// Call it at the snapshot's point in time: a write that completes
    /// while it runs may be in the returned set only. The record is marked
    /// open first (so a crash from here on makes the set `Unknown`); a
    /// read-only volume refuses (`PermissionDenied`).
    pub fn restart_changes(&self, base: &str) -> io::Result<Changes> {
        self.changes.restart(&*self.backend, base, self.read_only)
    }

    /// Gives changes back after a snapshot failed: the union is tracked again
    /// (Unknown stays Unknown). The base becomes `earlier`'s.
    pub fn merge_changes(&self, earlier: Changes) {
        self.changes.merge(&*self.backend, earlier, self.read_only)
    }

    /// `InvalidInput` unless `[offset, offset + len)` is sector-aligned
    /// and within the volume.
    fn check_stored_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_range(offset, len)?;
        if !offset.is_multiple_of(self.sector_size) || !len.is_multiple_of(self.sector_size) {
            return Err(invalid_input(
                "stored reads and writes must be sector-aligned",
            ));
        }
        Ok(())
    }

    /// Reads the data area as stored (ciphertext; all-zero sectors are holes/zeros),
    /// `offset`/`buf.len()` relative to the data area, sector-aligned.
    pub fn read_stored(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_single_key()?;
        self.check_stored_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.backend.read_at(self.data_offset + offset, buf)
    }

    /// Writes ciphertext as stored (same-key restore): sector-aligned; all-zero
    /// sectors become holes (punch), like TRIM; tracked as a change.
    pub fn write_stored(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        self.check_single_key()?;
        self.check_stored_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        let _pass = self
            .freezer
            .enter_write(&*self.backend, self.data_offset, offset, len);
        self.changes.before_write(&*self.backend, offset, len)?;
        let result = self.write_stored_tracked(offset, data);
        self.changes.after_write(offset, len, result.is_ok());
        self.generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// [`write_stored`](Self::write_stored) of a checked, non-empty range
    /// whose chunks are noted: runs of all-zero sectors are punched, the
    /// runs between them written as they are, under the range's lock (a
    /// concurrent read-modify-write never writes back older bytes).
    fn write_stored_tracked(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let ss = self.sector_size as usize;
        let (first, end_sector) = self.covering_sectors(offset, data.len() as u64);
        let _guard = self.locks.lock(first, end_sector);
        let sectors = data.len() / ss;
        let mut i = 0;
        while i < sectors {
            let zero = is_zero(&data[i * ss..(i + 1) * ss]);
            let start = i;
            while i < sectors && is_zero(&data[i * ss..(i + 1) * ss]) == zero {
                i += 1;
            }
            let at = self.data_offset + offset + (start * ss) as u64;
            if zero {
                self.backend.punch_hole(at, ((i - start) * ss) as u64)?;
            } else {
                self.backend.write_at(at, &data[start * ss..i * ss])?;
            }
        }
        Ok(())
    }
}

/// What a started read's completion needs to finish it: decrypt the stored
/// sectors and, for an unaligned read, copy the wanted bytes out.
struct ReadFinish {
    keying: Arc<Keying>,
    /// During a re-encryption: the read's sectors, held until decrypted.
    _guard: Option<OwnedRangeGuard>,
    first_sector: u64,
    /// The caller's buffer, when the sectors were read into one of ours
    /// (an unaligned read), and where in ours its bytes start.
    unaligned: Option<(IoBuf, usize)>,
    /// Declared last, so dropped last: the volume may be taken apart only
    /// once the cipher above is released (run or dropped unrun).
    _token: OpToken,
}

impl ReadFinish {
    /// Decrypts `stored` (what the backend read, with its outcome) and
    /// hands the caller's buffer to `done`. Releases its hold on the
    /// volume before `done` runs.
    fn run(self, mut stored: IoBuf, result: io::Result<()>, done: IoDone) {
        let ReadFinish {
            keying,
            _guard,
            first_sector,
            unaligned,
            _token,
        } = self;
        let result =
            result.map(|()| decrypt_stored(&*keying.cipher, first_sector, stored.bytes_mut()));
        drop(_guard);
        drop(keying);
        drop(_token);
        let Some((mut buf, skip)) = unaligned else {
            return done(stored, result);
        };
        let result = result.and_then(|()| {
            let len = buf.bytes().len();
            let wanted = stored.bytes().get(skip..skip + len).ok_or_else(|| {
                io::Error::other("the backend returned a read buffer of another size")
            })?;
            buf.bytes_mut().copy_from_slice(wanted);
            Ok(())
        });
        drop(stored);
        done(buf, result)
    }
}

/// What a started write's completion holds until the backend is done.
struct WriteFinish {
    /// The written sectors stay locked until the backend completed them.
    _guard: OwnedRangeGuard,
    /// Where the write's chunks are noted again once it completed, and
    /// the write's volume range `(offset, len)`.
    changes: Arc<ChangeMap>,
    /// The volume's contents generation, moved on once the write is done.
    generation: Arc<AtomicU64>,
    range: (u64, u64),
    /// For FUA: the backend, to start the flush (a `Weak`: only the
    /// volume owns the store).
    flush_on: Option<Weak<dyn Backend>>,
    /// Declared last, so dropped last (see [`ReadFinish`]).
    token: OpToken,
}

impl WriteFinish {
    fn run(self, data: IoBuf, result: io::Result<()>, done: IoDone) {
        let WriteFinish {
            _guard,
            changes,
            generation,
            range: (offset, len),
            flush_on,
            token,
        } = self;
        // Noted again before anybody hears of it: a restart that ran while
        // it was in flight finds it in the new set.
        changes.after_write(offset, len, result.is_ok());
        generation.fetch_add(1, Ordering::AcqRel);
        let flush_changes = (result.is_ok() && flush_on.is_some()).then_some(changes);
        // Written (or failed): the range may be overwritten again; the
        // flush that FUA adds does not need it.
        drop(_guard);
        match (result, flush_on, flush_changes) {
            (Ok(()), Some(backend), Some(changes)) => {
                flush_then(&backend, changes, token, data, done)
            }
            (result, _, _) => {
                drop(token);
                done(data, result)
            }
        }
    }
}

/// FUA's second half: starts a flush on the backend, if it is still open,
/// and hands `data` back to `done` with the flush's outcome. The backend is
/// upgraded only while `token` holds the volume open, and released before
/// it, so the volume's own reference is always the last.
fn flush_then(
    backend: &Weak<dyn Backend>,
    changes: Arc<ChangeMap>,
    token: OpToken,
    data: IoBuf,
    done: IoDone,
) {
    match backend.upgrade() {
        Some(backend) => {
            let flush_token = token.another();
            backend.start_flush(Box::new(move |result| {
                if result.is_err() {
                    changes.failed();
                }
                drop(changes);
                drop(flush_token);
                done(data, result)
            }));
            drop(backend);
            drop(token);
        }
        None => {
            drop(changes);
            drop(token);
            done(
                data,
                Err(io::Error::other(
                    "the volume was closed before its FUA flush",
                )),
            )
        }
    }
}

impl Volume {
    /// [`BlockDevice::start_read`], decrypting where `cpu` says (on the
    /// backend's completion thread when `None`).
    fn start_read_via(
        &self,
        offset: u64,
        mut buf: IoBuf,
        done: IoDone,
        cpu: Option<Arc<dyn CpuExecutor>>,
    ) {
        if !self.backend.is_asynchronous() {
            let result = self.read_at(offset, buf.bytes_mut());
            return done(buf, result);
        }
        let len = buf.bytes().len();
        if let Err(e) = self.check_range(offset, len as u64) {
            return done(buf, Err(e));
        }
        if len == 0 {
            return done(buf, Ok(()));
        }
        let ss = self.sector_size;
        let (first, end_sector) = self.covering_sectors(offset, len as u64);
        let keying = self.keying();
        let guard = self.read_guard(&keying, first, end_sector);
        if let Err(e) = check_recovered(&keying, first, end_sector) {
            return done(buf, Err(e));
        }
        let aligned = offset.is_multiple_of(ss) && (len as u64).is_multiple_of(ss);
        let (target, unaligned): (IoBuf, _) = if aligned {
            (buf, None)
        } else {
            let span = match self.len_usize(end_sector - first) {
                Ok(span) => span,
                Err(e) => return done(buf, Err(e)),
            };
            let skip = (offset - first * ss) as usize;
            (Box::new(self.buffers.take_owned(span)), Some((buf, skip)))
        };
        let finish = ReadFinish {
            _guard: guard,
            keying,
            first_sector: first,
            unaligned,
            _token: self.started.start(),
        };
        self.backend.start_read(
            self.backend_offset(first),
            target,
            Box::new(move |stored, result| match cpu {
                // Failed reads have nothing to decrypt: answered at once.
                Some(cpu) if result.is_ok() => {
                    cpu.execute(Box::new(move || finish.run(stored, result, done)))
                }
                _ => finish.run(stored, result, done),
            }),
        )
    }
}

impl BlockDevice for Volume {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn grow(&self, size: NewSize) -> Result<Grown, GrowError> {
        Volume::grow(self, size)
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            // Any byte range works (read-modify-write), so clients need not
            // align; aligned requests avoid the extra read.
            minimum: 1,
            preferred: self.sector_size as u32,
            maximum: MAX_REQUEST,
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_with(offset, buf, |at, stored| {
            self.backend.read_at(at, stored).map(|()| true)
        })
        .map(|_| ())
    }

    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        self.read_with(offset, buf, |at, stored| {
            self.backend.try_read_at(at, stored)
        })
    }

    fn contents_generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        if !data.is_empty() {
            let len = data.len() as u64;
            let pass = self
                .freezer
                .enter_write(&*self.backend, self.data_offset, offset, len);
            self.changes.before_write(&*self.backend, offset, len)?;
            let written = self.seal_and_write(offset, data);
            self.changes.after_write(offset, len, written.is_ok());
            self.generation.fetch_add(1, Ordering::AcqRel);
            drop(pass);
            written?;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn is_asynchronous(&self) -> bool {
        self.backend.is_asynchronous()
    }

    /// Fetches the covering sectors with the backend's `start_read` and
    /// decrypts them in its completion, on the backend's callback thread.
    /// Aligned reads land in the caller's buffer; unaligned ones in a
    /// pooled buffer of the covering sectors, copied out after decryption.
    /// No range lock: as for blocking reads, a read racing a write of the
    /// same bytes may see either.
    fn start_read(&self, offset: u64, buf: IoBuf, done: IoDone) {
        self.start_read_via(offset, buf, done, None)
    }

    /// As [`start_read`](Self::start_read), but the decryption (and the
    /// copy of an unaligned read) runs on `cpu`: what the NBD server uses,
    /// because the store's one callback thread, decrypting for every
    /// connection, was measured slower (docs/design.md: 1 MiB reads ~30 %,
    /// 4 KiB random reads ~25 %) while the workers idled.
    fn start_read_on(&self, offset: u64, buf: IoBuf, done: IoDone, cpu: Arc<dyn CpuExecutor>) {
        self.start_read_via(offset, buf, done, Some(cpu))
    }

    /// Encrypts on this thread (a worker's, or the connection reader's for
    /// small writes) into a pooled ciphertext buffer that travels with the
    /// backend write; partial edge sectors are read first with blocking
    /// reads (read-modify-write). The sector range stays locked until the
    /// backend has completed the write, so an overlapping read-modify-write
    /// cannot write back bytes older than this write. With `fua`, the write
    /// is followed by a started flush and `done` runs after that.
    fn start_write(&self, offset: u64, data: IoBuf, fua: bool, done: IoDone) {
        if !self.backend.is_asynchronous() {
            let result = self.write_at(offset, data.bytes(), fua);
            return done(data, result);
        }
        let len = data.bytes().len();
        let checked = self
            .check_writable()
            .and_then(|()| self.check_range(offset, len as u64));
        if let Err(e) = checked {
            return done(data, Err(e));
        }
        if len == 0 {
            return if fua {
                self.start_flush(Box::new(move |result| done(data, result)))
            } else {
                done(data, Ok(()))
            };
        }
        let (first, end_sector) = self.covering_sectors(offset, len as u64);
        let span = match self.len_usize(end_sector - first) {
            Ok(span) => span,
            Err(e) => return done(data, Err(e)),
        };
        if let Err(e) = self
            .changes
            .before_write(&*self.backend, offset, len as u64)
        {
            return done(data, Err(e));
        }
        let guard = self.locks.lock_owned(first, end_sector);
        let mut ciphertext = self.buffers.take_owned(span);
        if let Err(e) = self.seal(offset, data.bytes(), ciphertext.bytes_mut()) {
            self.changes.after_write(offset, len as u64, false);
            return done(data, Err(e));
        }
        let finish = WriteFinish {
            _guard: guard,
            changes: self.changes.clone(),
            generation: self.generation.clone(),
            range: (offset, len as u64),
            flush_on: fua.then(|| Arc::downgrade(&self.backend)),
            token: self.started.start(),
        };
        self.backend.start_write(
            self.backend_offset(first),
            Box::new(ciphertext),
            Box::new(move |ciphertext, result| {
                drop(ciphertext);
                finish.run(data, result, done)
            }),
        );
    }

    fn start_flush(&self, done: FlushDone) {
        let token = self.started.start();
        let changes = self.changes.clone();
        self.backend.start_flush(Box::new(move |result| {
            if result.is_err() {
                changes.failed();
            }
            drop(changes);
            drop(token);
            done(result)
        }))
    }

    fn flush(&self) -> io::Result<()> {
        let result = self.backend.flush();
        if result.is_err() {
            self.changes.failed();
        }
        result
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_punch: bool) -> io::Result<()> {
        self.zero_range(offset, len, may_punch)
    }

    /// Holes in the backing file (SEEK_HOLE/SEEK_DATA) are holes that read
    /// as zeros, by the zero-sector rule. Sectors stored as zero bytes
    /// without being holes are reported as data of unknown content: finding
    /// them would mean reading the range, and status 0 is always truthful.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Allocation>> {
        // The inherent method (backend extents in volume coordinates).
        let extents = Volume::block_status(self, offset, len)?;
        Ok(extents
            .into_iter()
            .map(|e| Allocation {
                len: e.len,
                hole: e.hole,
                zero: e.hole,
            })
            .collect())
    }

    /// Zeroing with permission to punch deallocates whole sectors and
    /// encrypts nothing (a backend that cannot punch stores zero bytes,
    /// still without encryption); only partial edge sectors are
    /// read-modify-written.
    fn fast_zero(&self) -> bool {
        true
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

#[cfg(test)]
#[path = "encrypted_volume_async_tests.rs"]
mod async_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::backend::{FileBackend, MemBackend};
    use crate::volume::superblock::{DATA_OFFSET, create_volume_file, read_superblocks};
    use crate::volume::xts_mode_cipher::XtsModeCipher;
    use std::os::unix::fs::MetadataExt;

    const SIZE: u64 = 4 << 20;

    fn superblock(key: &DataKey, sector_size: u32) -> Superblock {
        sized_superblock(key, SIZE, sector_size)
    }

    /// A superblock for a test volume of `size` bytes under `key`, with a
    /// fresh UUID (also the asynchronous tests' fixture).
    pub(super) fn sized_superblock(key: &DataKey, size: u64, sector_size: u32) -> Superblock {
        let uuid = Uuid::new_v4();
        Superblock::new(
            uuid,
            size,
            sector_size,
            "arn:aws:kms:us-east-1:111122223333:key/test".into(),
            vec![1, 2, 3],
            key.key_check(&uuid),
            0,
        )
        .unwrap()
    }

    struct FileVolume {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        volume: Volume,
        key: DataKey,
    }

    fn file_volume(sector_size: u32) -> FileVolume {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let key = DataKey::generate();
        let sb = superblock(&key, sector_size);
        let file = create_volume_file(&path, &sb, false).unwrap();
        let sb = read_superblocks(&file).best().unwrap().clone();
        let volume = Volume::open(FileBackend::new(file), &sb, key.clone()).unwrap();
        FileVolume {
            _dir: dir,
            path,
            volume,
            key,
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    fn read(v: &Volume, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xeeu8; len];
        v.read_at(offset, &mut buf).unwrap();
        buf
    }

    #[test]
    fn try_read_matches_read_at_for_any_alignment() {
        for ss in [512u32, 4096] {
            let key = DataKey::generate();
            let sb = superblock(&key, ss);
            let backend = MemBackend::new((DATA_OFFSET + SIZE) as usize);
            let v = Volume::open(backend, &sb, key).unwrap();
            v.write_at(0, &pattern(300_000, 7), false).unwrap();
            for (off, len) in [
                (0u64, 4096usize),
                (1000, 5000),
                (4095, 2),
                (8192, 65536),
                (77, 12293),
            ] {
                let mut tried = vec![0xeeu8; len];
                assert!(
                    v.try_read_at(off, &mut tried).unwrap(),
                    "memory never waits"
                );
                assert_eq!(tried, read(&v, off, len), "ss {ss} at {off}+{len}");
            }
            let mut beyond = vec![0u8; 2];
            assert_eq!(
                v.try_read_at(SIZE - 1, &mut beyond).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn new_volume_reads_zeros() {
        for ss in [512, 4096] {
            let fv = file_volume(ss);
            assert_eq!(fv.volume.size(), SIZE);
            assert!(read(&fv.volume, 0, SIZE as usize).iter().all(|&b| b == 0));
            assert!(read(&fv.volume, 1000, 5000).iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn unaligned_writes_and_reads_both_sector_sizes() {
        for ss in [512u32, 4096] {
            let fv = file_volume(ss);
            let v = &fv.volume;
            // A model of the plaintext, checked after each write.
            let mut model = vec![0u8; SIZE as usize];
            let cases: [(u64, usize); 9] = [
                (1000, 5000),
                (0, 1),
                (4095, 2),
                (511, 1),
                (8192, 8192),
                (12345, 100_000),
                (SIZE - 3, 3),
                (SIZE - 4096, 4096),
                (77, 4096 * 3 + 5),
            ];
            for (i, (off, len)) in cases.into_iter().enumerate() {
                let data = pattern(len, i as u8);
                v.write_at(off, &data, i % 2 == 0).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&data);
                assert_eq!(read(v, off, len), data, "ss {ss} case {i}");
                // The neighbourhood is intact too.
                let lo = off.saturating_sub(5000);
                let hi = (off + len as u64 + 5000).min(SIZE);
                assert_eq!(
                    read(v, lo, (hi - lo) as usize),
                    model[lo as usize..hi as usize],
                    "ss {ss} case {i} neighbourhood"
                );
            }
            assert_eq!(read(v, 0, SIZE as usize), model);
        }
    }

    #[test]
    fn data_survives_reopen_and_matches_standard_xts_layout() {
        use std::os::unix::fs::FileExt;
        let fv = file_volume(4096);
        let data = pattern(4096, 9);
        fv.volume.write_at(3 * 4096, &data, true).unwrap();
        let FileVolume {
            _dir,
            path,
            volume,
            key,
        } = fv;
        drop(volume);
        // Raw sector 3 of the data area decrypts with a fresh cipher at tweak 3.
        let file = std::fs::File::open(&path).unwrap();
        let mut raw = vec![0u8; 4096];
        file.read_exact_at(&mut raw, DATA_OFFSET + 3 * 4096)
            .unwrap();
        XtsModeCipher::new(&key, 4096)
            .unwrap()
            .decrypt_sectors(3, &mut raw);
        assert_eq!(raw, data);
        // And the volume reopens.
        let sb = read_superblocks(&file).best().unwrap().clone();
        let v = Volume::open(FileBackend::new(file), &sb, key).unwrap();
        assert_eq!(read(&v, 3 * 4096, 4096), data);
    }

    #[test]
    fn marker_never_appears_at_rest() {
        let fv = file_volume(512);
        let marker = b"ENVOL-PLAINTEXT-MARKER-0123456789";
        let mut data = Vec::new();
        while data.len() < 64 * 1024 {
            data.extend_from_slice(marker);
        }
        fv.volume.write_at(777, &data, false).unwrap();
        fv.volume.write_at(200_000, marker, false).unwrap();
        fv.volume.flush().unwrap();
        let raw = std::fs::read(&fv.path).unwrap();
        assert!(
            !raw.windows(marker.len()).any(|w| w == marker),
            "plaintext found in the volume file"
        );
        assert!(!raw.windows(16).any(|w| w == &marker[..16]));
        assert_eq!(read(&fv.volume, 200_000, marker.len()), marker);
    }

    #[test]
    fn concurrent_sub_sector_writes_lose_nothing() {
        for ss in [512u32, 4096] {
            let fv = file_volume(ss);
            let v = &fv.volume;
            // Three sectors starting mid-sector; thread t owns every 8th
            // 13-byte chunk, so every sector is shared by all threads.
            let base = u64::from(ss) / 2;
            let region = 3 * ss as usize;
            let chunk = 13usize;
            // About 1500 writes per thread whatever the sector size.
            let per_round = region.div_ceil(chunk).div_ceil(8);
            let rounds = (1500 / per_round).clamp(2, 255) as u8;
            std::thread::scope(|s| {
                for t in 0..8usize {
                    s.spawn(move || {
                        for round in 1..=rounds {
                            for (k, start) in (0..region).step_by(chunk).enumerate() {
                                if k % 8 != t {
                                    continue;
                                }
                                let len = chunk.min(region - start);
                                let value = round.wrapping_mul(8).wrapping_add(t as u8);
                                v.write_at(base + start as u64, &vec![value; len], false)
                                    .unwrap();
                            }
                        }
                    });
                }
            });
            let got = read(v, base, region);
            for (k, start) in (0..region).step_by(chunk).enumerate() {
                let t = (k % 8) as u8;
                let want = rounds.wrapping_mul(8).wrapping_add(t);
                let len = chunk.min(region - start);
                assert!(
                    got[start..start + len].iter().all(|&b| b == want),
                    "ss {ss}: chunk {k} lost its last update"
                );
            }
            assert_eq!(v.locks.held_count(), 0);
        }
    }

    #[test]
    fn trim_reads_zeros_and_punches_a_hole() {
        let fv = file_volume(4096);
        let v = &fv.volume;
        let mb = 1 << 20;
        v.write_at(0, &pattern(3 * mb, 3), true).unwrap();
        let blocks_before = std::fs::metadata(&fv.path).unwrap().blocks();
        // Trim [1 MiB + 100, 2 MiB + 100): whole sectors punched, edges RMW.
        v.trim(mb as u64 + 100, mb as u64).unwrap();
        assert!(read(v, mb as u64 + 100, mb).iter().all(|&b| b == 0));
        let p = pattern(3 * mb, 3);
        assert_eq!(read(v, 0, mb + 100), p[..mb + 100]);
        assert_eq!(read(v, 2 * mb as u64 + 100, mb - 100), p[2 * mb + 100..]);
        let blocks_after = std::fs::metadata(&fv.path).unwrap().blocks();
        assert!(
            blocks_after + 1000 < blocks_before,
            "no hole: {blocks_before} -> {blocks_after} blocks"
        );
        let status = v.block_status(mb as u64 + 4096, mb as u64 - 4096).unwrap();
        assert_eq!(
            status,
            vec![Extent {
                offset: mb as u64 + 4096,
                len: mb as u64 - 4096,
                hole: true
            }]
        );
        assert!(!v.block_status(0, 4096).unwrap()[0].hole);
    }

    #[test]
    fn write_zeroes_with_and_without_punch() {
        for ss in [512u32, 4096] {
            let fv = file_volume(ss);
            let v = &fv.volume;
            let len = 256 * 1024;
            for (may_punch, off) in [(true, 10_000u64), (false, 600_000u64)] {
                v.write_at(off - 1000, &pattern(len + 2000, 5), false)
                    .unwrap();
                v.write_zeroes(off, len as u64, may_punch).unwrap();
                assert!(
                    read(v, off, len).iter().all(|&b| b == 0),
                    "punch {may_punch}"
                );
                assert_eq!(read(v, off - 1000, 1000), pattern(len + 2000, 5)[..1000]);
                assert_eq!(
                    read(v, off + len as u64, 1000),
                    pattern(len + 2000, 5)[len + 1000..]
                );
            }
            // NO_HOLE: the zeroed sectors are stored (as zero bytes), not holes.
            let inner = 600_000u64.div_ceil(u64::from(ss)) * u64::from(ss);
            assert!(!v.block_status(inner, u64::from(ss)).unwrap()[0].hole);
            // Sub-sector zeroing inside one sector.
            v.write_at(5, &[0xffu8; 100], false).unwrap();
            v.write_zeroes(10, 20, true).unwrap();
            let got = read(v, 5, 100);
            assert!(got[..5].iter().all(|&b| b == 0xff));
            assert!(got[5..25].iter().all(|&b| b == 0));
            assert!(got[25..].iter().all(|&b| b == 0xff));
        }
    }

    #[test]
    fn wrong_key_is_refused() {
        let key = DataKey::generate();
        let sb = superblock(&key, 4096);
        let backend = MemBackend::new((DATA_OFFSET + SIZE) as usize);
        let err = Volume::open(backend, &sb, DataKey::generate()).unwrap_err();
        assert!(matches!(err, VolumeError::WrongKey));
        assert!(err.to_string().contains("wrong data key"));
    }

    #[test]
    fn too_small_backend_is_refused() {
        let key = DataKey::generate();
        let sb = superblock(&key, 4096);
        let backend = MemBackend::new(DATA_OFFSET as usize);
        assert!(matches!(
            Volume::open(backend, &sb, key),
            Err(VolumeError::BackendTooSmall { .. })
        ));
    }

    #[test]
    fn out_of_range_is_invalid_input() {
        let key = DataKey::generate();
        let sb = superblock(&key, 512);
        let v = Volume::open(MemBackend::new((DATA_OFFSET + SIZE) as usize), &sb, key).unwrap();
        let kind = |r: io::Result<()>| r.unwrap_err().kind();
        let mut buf = [0u8; 10];
        assert_eq!(
            kind(v.read_at(SIZE - 5, &mut buf)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(v.read_at(u64::MAX - 2, &mut buf)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(v.write_at(SIZE, &[1], false)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(v.write_at(u64::MAX, &[1], true)),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(kind(v.trim(SIZE - 1, 2)), io::ErrorKind::InvalidInput);
        assert_eq!(kind(v.trim(1, u64::MAX)), io::ErrorKind::InvalidInput);
        assert_eq!(
            kind(v.write_zeroes(SIZE + 1, 0, false)),
            io::ErrorKind::InvalidInput
        );
        assert!(v.block_status(SIZE, 1).is_err());
        // The exact end and empty requests at the end are fine.
        v.read_at(SIZE - 10, &mut buf).unwrap();
        v.read_at(SIZE, &mut []).unwrap();
        v.write_at(SIZE - 1, &[1], false).unwrap();
        v.trim(SIZE, 0).unwrap();
    }

    #[test]
    fn read_only_refuses_changes() {
        let key = DataKey::generate();
        let sb = superblock(&key, 4096);
        let v = Volume::open(MemBackend::new((DATA_OFFSET + SIZE) as usize), &sb, key)
            .unwrap()
            .with_read_only(true);
        assert!(v.read_only());
        let kind = |r: io::Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(v.write_at(0, &[1], false)),
            io::ErrorKind::PermissionDenied
        );
        assert_eq!(kind(v.trim(0, 4096)), io::ErrorKind::PermissionDenied);
        assert_eq!(
            kind(v.write_zeroes(0, 1, false)),
            io::ErrorKind::PermissionDenied
        );
        v.flush().unwrap();
        assert_eq!(read(&v, 0, 10), vec![0; 10]);
    }

    #[test]
    fn block_sizes_and_debug() {
        let fv = file_volume(512);
        assert_eq!(
            fv.volume.block_sizes(),
            BlockSizes {
                minimum: 1,
                preferred: 512,
                maximum: 32 << 20
            }
        );
        let shown = format!("{:?}", fv.volume);
        assert!(shown.contains("Volume") && shown.contains("512"));
    }

    #[test]
    fn zero_sector_rule_applies_to_stored_zero_bytes() {
        // A sector whose stored bytes are all zero reads as zeros even though
        // decrypting zeros would give noise.
        let key = DataKey::generate();
        let sb = superblock(&key, 4096);
        let backend = MemBackend::new((DATA_OFFSET + SIZE) as usize);
        let v = Volume::open(backend, &sb, key).unwrap();
        v.write_at(0, &[7u8; 8192], false).unwrap();
        v.write_zeroes(4096, 4096, false).unwrap();
        assert_eq!(read(&v, 0, 4096), vec![7u8; 4096]);
        assert_eq!(read(&v, 4096, 4096), vec![0u8; 4096]);
    }
}

/// Snapshots of the volume while it stays attached: a frozen view (file
/// stores) or a store snapshot (RBD). A child module so that it reaches
/// the volume's fields without widening them.
#[path = "attached_snapshot.rs"]
mod attached_snapshot;
