//! Data-key re-encryption: rewriting every sector of a volume from its old
//! data key to a new one, crash-safe at every instant, while the volume
//! keeps serving reads and writes.
//!
//! # The state on disk
//!
//! The superblock (both copies, through the usual crash-safe update) holds
//! a [`Transition`]: the new key (wrapped, its ARN and key check value),
//! the watermark and the *hotzone* — the sectors the step in progress is
//! rewriting, with a digest of each one's old ciphertext. Sectors below the
//! watermark are under the new key, sectors past the hotzone under the old
//! one; a hotzone sector is under the old key exactly when its stored bytes
//! still have the recorded digest (LUKS2's "checksum" resilience: nothing is
//! copied aside, so no journal area is needed — there is none free between
//! the superblocks and the data area, which the change map fills).
//!
//! # One step
//!
//! 1. Lock the step's sector range (client writes to it wait; client reads
//!    of sectors at or above the watermark take the same locks).
//! 2. Flush (what the sectors hold must be durable before its digests are
//!    recorded); then on all cores, each core its share a piece at a time:
//!    read, digest each stored sector (its first 16 bytes: see
//!    [`hotzone_digest`]), and decrypt-with-old / encrypt-with-new every
//!    sector that is not all zeros (holes stay holes: the zero-sector rule).
//! 3. Write the superblock: watermark = the step's first sector, hotzone =
//!    the digests (older copy, sync, newer copy, sync).
//! 4. Write the new ciphertext (runs of non-zero sectors only), flush.
//! 5. Move the in-memory watermark past the step, unlock.
//!
//! A crash before (3) is durable leaves the previous state, whose hotzone
//! is the previous step's (all rewritten, so all "new" by digest). A crash
//! after it: each hotzone sector holds its old ciphertext (digest matches)
//! or its new one (it does not) — assuming, as dm-crypt and LUKS2 do, that
//! a sector is written atomically. Recovery at open rewrites the ones still
//! old, flushes, and records the watermark past the hotzone before anything
//! is served.
//!
//! The plaintext keys live only in the two engines of
//! [`TransitionCipher`]; completion drops the old one.

use std::io;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::volume::backend::Backend;
use crate::volume::cipher::SectorCipher;
use crate::volume::device::BlockDevice;
use crate::volume::encrypted_volume::{Volume, VolumeError, is_zero};
use crate::volume::key::{DataKey, KEY_CHECK_LEN};
use crate::volume::range_lock::RangeGuard;
use crate::volume::superblock::{
    Direction, HOTZONE_DIGEST_LEN, MAX_HOTZONE_SECTORS, Superblock, Transition, hotzone_digest,
    matches_hotzone_digest, write_superblock_to,
};
use crate::volume::transition_cipher::TransitionCipher;
use crate::volume::transition_state::{Keying, Reencryption, StepState};
use crate::volume::xts_engine::XtsEngine;

/// Below this many bytes a step transforms on the calling thread alone:
/// starting threads would cost more than they save.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// How much a step's thread reads before it transforms what it read: small
/// enough to stay in the core's cache, big enough that a read costs
/// little beyond its copy.
const PIECE_BYTES: usize = 256 * 1024;

/// How long the first step of a re-encryption begun on an attached volume
/// waits for the reads that started before it (they hold the single-key
/// cipher and no range lock): longer, and the step fails (resumable).
const PREDECESSOR_WAIT: Duration = Duration::from_secs(60);

/// How far a re-encryption is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Sectors under the new key (the watermark).
    pub done_sectors: u64,
    pub total_sectors: u64,
    pub sector_size: u64,
}

impl Progress {
    pub fn done_bytes(&self) -> u64 {
        self.done_sectors * self.sector_size
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_sectors * self.sector_size
    }

    pub fn is_complete(&self) -> bool {
        self.done_sectors >= self.total_sectors
    }
}

/// The new key of a re-encryption about to begin.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_arn: String,
    pub wrapped_key: Vec<u8>,
    pub key_check: [u8; KEY_CHECK_LEN],
}

/// `sb` with a re-encryption to `new` begun (watermark 0, no hotzone):
/// what the caller writes (crash-safely) before opening the volume with
/// [`Volume::open_in_transition`].
pub fn begin(sb: &Superblock, new: NewKey, started: u64) -> Superblock {
    let mut next = sb.clone();
    next.transition = Some(Transition {
        new_key_arn: new.key_arn,
        new_wrapped_key: new.wrapped_key,
        new_key_check: new.key_check,
        direction: Direction::Ascending,
        watermark: 0,
        started,
        hotzone: Vec::new(),
    });
    next
}

fn not_in_transition() -> VolumeError {
    VolumeError::NotInTransition
}

impl Volume {
    /// Opens a volume whose superblock records a re-encryption, with its
    /// old (`superblock.wrapped_key`) and new data keys, both checked
    /// against their key check values. An interrupted step (a hotzone) is
    /// recovered first — finished, flushed and recorded — so this writes
    /// when there is one: a read-only caller must refuse such a volume
    /// ([`VolumeError::HotzoneNeedsRecovery`]).
    pub fn open_in_transition(
        backend: impl Backend,
        superblock: &Superblock,
        old: DataKey,
        new: DataKey,
    ) -> Result<Volume, VolumeError> {
        superblock.validate()?;
        let t = superblock
            .transition
            .as_ref()
            .ok_or_else(not_in_transition)?;
        if !old.verify_check(&superblock.uuid, &superblock.key_check) {
            return Err(VolumeError::WrongKey);
        }
        if !new.verify_check(&superblock.uuid, &t.new_key_check) {
            return Err(VolumeError::WrongNewKey);
        }
        let cipher = Arc::new(TransitionCipher::new(
            &old,
            &new,
            superblock.sector_size as usize,
            t.watermark,
        )?);
        drop((old, new));
        let reencryption = Reencryption::new(cipher.clone());
        let volume = Volume::assemble(Arc::new(backend), superblock, cipher, Some(reencryption))?;
        volume.recover_hotzone()?;
        Ok(volume)
    }

    fn reencryption_state(&self) -> Result<Arc<Reencryption>, VolumeError> {
        self.keying()
            .reencryption
            .clone()
            .ok_or_else(not_in_transition)
    }

    /// Begins a re-encryption of this open (attached, read-write) volume
    /// to `new`, while it serves: checks both keys against their key
    /// check values, records the transition (watermark 0: every sector
    /// still under the old key) in both superblock copies, then swaps the
    /// volume's cipher for the two-key one. Requests from then on take
    /// range locks at the watermark as on a volume opened in transition;
    /// the first [`Self::reencrypt_step`] waits for the reads started
    /// before (see [`StepState::predecessor`]). `old` is the volume's
    /// current key (the caller unwrapped it again: the volume keeps only
    /// its key schedules).
    pub fn begin_reencryption(
        &self,
        old: DataKey,
        new: DataKey,
        new_key: NewKey,
        started: u64,
    ) -> Result<Progress, VolumeError> {
        if self.read_only() {
            return Err(VolumeError::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "volume is read-only",
            )));
        }
        let mut on_disk = self.superblock_guard();
        if on_disk.transition.is_some() || self.keying().reencryption.is_some() {
            return Err(VolumeError::InTransition);
        }
        if !old.verify_check(&on_disk.uuid, &on_disk.key_check) {
            return Err(VolumeError::WrongKey);
        }
        if !new.verify_check(&on_disk.uuid, &new_key.key_check) {
            return Err(VolumeError::WrongNewKey);
        }
        let cipher = Arc::new(TransitionCipher::new(
            &old,
            &new,
            self.sector_size as usize,
            0,
        )?);
        drop((old, new));
        let mut next = begin(&on_disk, new_key, started);
        write_superblock_to(&*self.backend, &mut next)?;
        let total = next.sectors();
        *on_disk = next;
        let mut keying = self.keying.write().unwrap_or_else(PoisonError::into_inner);
        let reencryption = Arc::new(Reencryption::new(cipher.clone()));
        let before = std::mem::replace(
            &mut *keying,
            Arc::new(Keying {
                cipher,
                reencryption: Some(reencryption.clone()),
            }),
        );
        drop(keying);
        drop(on_disk);
        reencryption
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .predecessor = Some(before);
        Ok(Progress {
            done_sectors: 0,
            total_sectors: total,
            sector_size: self.sector_size,
        })
    }

    /// How far the re-encryption is, or `None` on a volume without one.
    pub fn reencryption_progress(&self) -> Option<Progress> {
        let r = self.keying().reencryption.clone()?;
        Some(Progress {
            done_sectors: r.cipher.watermark(),
            total_sectors: self.superblock().sectors(),
            sector_size: self.sector_size,
        })
    }

    /// Finishes an interrupted step: every hotzone sector still holding its
    /// old ciphertext (by digest) is rewritten under the new key, flushed,
    /// and the watermark recorded past the hotzone.
    fn recover_hotzone(&self) -> Result<(), VolumeError> {
        let r = self.reencryption_state()?;
        let _steps = r.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.recover_hotzone_held(&r)
    }

    /// [`Self::recover_hotzone`], the step lock held by the caller.
    fn recover_hotzone_held(&self, r: &Reencryption) -> Result<(), VolumeError> {
        let Some(t) = self.superblock().transition else {
            return Err(not_in_transition());
        };
        if t.hotzone.is_empty() {
            return Ok(());
        }
        self.check_can_rewrite()?;
        let ss = self.sector_size as usize;
        let first = t.watermark;
        let end = first + t.hotzone.len() as u64;
        let (offset, len) = (first * self.sector_size, (end - first) * self.sector_size);
        self.changes.before_write(&*self.backend, offset, len)?;
        let mut buf = vec![0u8; t.hotzone.len() * ss];
        let result = (|| -> Result<(), VolumeError> {
            self.backend.read_at(self.backend_offset(first), &mut buf)?;
            let still_old: Vec<bool> = buf
                .chunks(ss)
                .zip(&t.hotzone)
                .map(|(sector, digest)| !is_zero(sector) && matches_hotzone_digest(sector, digest))
                .collect();
            r.cipher
                .with_old(|old| transform(old, r.cipher.new_key(), first, &mut buf, &still_old))
                .ok_or_else(|| io::Error::other("the old key is gone before recovery"))?;
            self.write_runs(first, &buf, &still_old)?;
            self.backend.flush()?;
            let mut on_disk = self.superblock_guard();
            let mut next = on_disk.clone();
            if let Some(nt) = next.transition.as_mut() {
                nt.watermark = end;
                nt.hotzone.clear();
            }
            write_superblock_to(&*self.backend, &mut next)?;
            *on_disk = next;
            drop(on_disk);
            r.cipher.advance(end);
            r.set_unrecovered(None);
            let recovered = still_old.iter().filter(|&&o| o).count();
            tracing::info!(
                recovered,
                hotzone = t.hotzone.len(),
                "re-encryption: interrupted step recovered"
            );
            Ok(())
        })();
        self.changes.after_write(offset, len, result.is_ok());
        result
    }

    /// A re-encryption rewrites sectors: refused on a read-only attachment.
    fn check_can_rewrite(&self) -> Result<(), VolumeError> {
        if self.read_only() {
            return Err(VolumeError::HotzoneNeedsRecovery);
        }
        Ok(())
    }

    /// Rewrites the next step of at most `max_bytes` (at least one
    /// sector, at most [`MAX_HOTZONE_SECTORS`]) under the new key, crash-
    /// safely (see the module docs), and returns the progress after it.
    /// Does nothing once every sector is under the new key.
    pub fn reencrypt_step(&self, max_bytes: u64) -> Result<Progress, VolumeError> {
        self.reencrypt_steps(max_bytes, max_bytes)
    }

    /// Rewrites the next stretch of at most `max_bytes` (at least one
    /// sector) in steps of at most `step_bytes` (at least one sector, at
    /// most [`MAX_HOTZONE_SECTORS`]), each as [`Self::reencrypt_step`]
    /// would, and returns the progress after them. Faster than the same
    /// steps one call at a time: a step is read and transformed while the
    /// one before is written.
    pub fn reencrypt_steps(
        &self,
        max_bytes: u64,
        step_bytes: u64,
    ) -> Result<Progress, VolumeError> {
        let r = self.reencryption_state()?;
        if self.read_only() {
            return Err(VolumeError::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "volume is read-only",
            )));
        }
        let mut st = r.state.lock().unwrap_or_else(PoisonError::into_inner);
        wait_for_predecessor(&mut st)?;
        // A step that failed part-way (online, the volume stays open)
        // may have rewritten some of its hotzone: finish it by digest, as
        // an open would, before anything else is rewritten.
        if st.failed_step {
            self.recover_hotzone_held(&r)?;
            st.failed_step = false;
        }
        let total = self.superblock().sectors();
        let first = r.cipher.watermark();
        if first < total {
            let max_sectors = (max_bytes / self.sector_size).max(1);
            let step = (step_bytes / self.sector_size).clamp(1, MAX_HOTZONE_SECTORS as u64);
            let end = (first + max_sectors).min(total);
            if let Err(e) = self.rewrite(&r, &mut st, first, end, step) {
                st.failed_step = true;
                return Err(e);
            }
        }
        drop(st);
        Ok(Progress {
            done_sectors: r.cipher.watermark(),
            total_sectors: total,
            sector_size: self.sector_size,
        })
    }

    /// Steps over sectors `[first, end)`, each at most `step` sectors,
    /// pipelined: while one step's new ciphertext
    /// is written and flushed (on a thread of its own: the kernel copies
    /// it into the page cache one writer at a time), the next is locked,
    /// read and transformed. The order on disk stays a single step's: a
    /// step's hotzone is recorded only after the one before is durable.
    fn rewrite(
        &self,
        r: &Reencryption,
        st: &mut StepState,
        first: u64,
        end: u64,
        step: u64,
    ) -> Result<(), VolumeError> {
        let mut ranges = (first..end)
            .step_by(usize::try_from(step).unwrap_or(MAX_HOTZONE_SECTORS))
            .map(|a| (a, (a + step).min(end)));
        let Some(range) = ranges.next() else {
            return Ok(());
        };
        let mut spare = std::mem::take(&mut st.spare);
        let mut current = self.prepare_step(r, range, std::mem::take(&mut st.buffer))?;
        std::thread::scope(|scope| {
            loop {
                if let Err(e) = self.record_hotzone(&current) {
                    self.release_step(current, false);
                    return Err(e);
                }
                // Until its writes are all durable, the step's sectors are
                // a mix of keys that the watermark does not tell.
                r.set_unrecovered(Some((current.first, current.end)));
                let writing = scope.spawn(move || {
                    let written = self
                        .write_runs(current.first, &current.buf, &current.holds_data)
                        .and_then(|()| self.backend.flush());
                    (current, written)
                });
                let next = ranges
                    .next()
                    .map(|range| self.prepare_step(r, range, std::mem::take(&mut spare)));
                let Ok((done, written)) = writing.join() else {
                    // A backend that panicked while writing: the step's
                    // range went with the thread; the next has written
                    // nothing.
                    self.changes.failed();
                    if let Some(Ok(p)) = next {
                        self.release_step(p, true);
                    }
                    return Err(io::Error::other("writing a re-encryption step panicked").into());
                };
                if written.is_ok() {
                    r.cipher.advance(done.end);
                    r.set_unrecovered(None);
                }
                let buffer = self.release_step(done, written.is_ok());
                if let Err(e) = written {
                    if let Some(Ok(p)) = next {
                        self.release_step(p, true);
                    }
                    return Err(e.into());
                }
                match next {
                    None => {
                        (st.buffer, st.spare) = (buffer, spare);
                        return Ok(());
                    }
                    Some(prepared) => {
                        spare = buffer;
                        current = prepared?;
                    }
                }
            }
        })
    }

    /// Locks the sectors of `range`, flushes, then reads, digests and
    /// transforms them into `buf`: everything of a step before its hotzone
    /// is recorded.
    fn prepare_step(
        &self,
        r: &Reencryption,
        (first, end): (u64, u64),
        mut buf: Vec<u8>,
    ) -> Result<PreparedStep<'_>, VolumeError> {
        let ss = self.sector_size as usize;
        let n = (end - first) as usize;
        let guard = self.locks.lock(first, end);
        let (offset, len) = (first * self.sector_size, (end - first) * self.sector_size);
        self.changes.before_write(&*self.backend, offset, len)?;
        buf.resize(n * ss, 0);
        let mut step = PreparedStep {
            first,
            end,
            _guard: guard,
            buf,
            digests: vec![[0u8; HOTZONE_DIGEST_LEN]; n],
            holds_data: vec![false; n],
        };
        // The digests must describe what is *durable*: a client's unsynced
        // write to these sectors (read from the cache) could otherwise be
        // lost in a crash that keeps the new superblock, and its sector
        // would then match neither key. The range lock keeps them
        // unchanged from here on.
        let read = self.backend.flush().and_then(|()| {
            r.cipher
                .with_old(|old| {
                    let new = r.cipher.new_key();
                    let PreparedStep {
                        buf,
                        digests,
                        holds_data,
                        ..
                    } = &mut step;
                    self.read_and_transform(old, new, first, buf, digests, holds_data)
                })
                .ok_or_else(|| io::Error::other("the old key is gone before the end"))?
        });
        match read {
            Ok(()) => Ok(step),
            Err(e) => {
                self.release_step(step, false);
                Err(e.into())
            }
        }
    }

    /// Records `step`'s hotzone: watermark = its first sector, its digests
    /// (both superblock copies, crash-safely).
    fn record_hotzone(&self, step: &PreparedStep<'_>) -> Result<(), VolumeError> {
        let mut on_disk = self.superblock_guard();
        let mut next = on_disk.clone();
        if let Some(t) = next.transition.as_mut() {
            t.watermark = step.first;
            t.hotzone = step.digests.clone();
        }
        write_superblock_to(&*self.backend, &mut next)?;
        *on_disk = next;
        Ok(())
    }

    /// Ends `step` (its range unlocked) and gives its buffer back.
    fn release_step(&self, step: PreparedStep<'_>, ok: bool) -> Vec<u8> {
        let ss = self.sector_size;
        self.changes
            .after_write(step.first * ss, (step.end - step.first) * ss, ok);
        step.buf
    }

    /// Reads the sectors from `first` into `buf`, records each stored
    /// sector's digest and whether it holds data (is not all zeros), and
    /// rewrites those from `old` to `new` in place. On up to all cores,
    /// each reading and transforming its own share a piece at a time, so a
    /// piece is transformed while it is still in that core's cache, and
    /// the copies out of the page cache run in parallel too.
    fn read_and_transform(
        &self,
        old: &XtsEngine,
        new: &XtsEngine,
        first: u64,
        buf: &mut [u8],
        digests: &mut [[u8; HOTZONE_DIGEST_LEN]],
        holds_data: &mut [bool],
    ) -> io::Result<()> {
        let ss = self.sector_size as usize;
        // A store across the network answers one big read faster than
        // many small ones in a row.
        let piece = if self.backend.is_asynchronous() {
            digests.len()
        } else {
            (PIECE_BYTES / ss).max(1)
        };
        let work = |first: u64,
                    buf: &mut [u8],
                    digests: &mut [[u8; HOTZONE_DIGEST_LEN]],
                    holds_data: &mut [bool]|
         -> io::Result<()> {
            let mut at = first;
            for ((b, d), h) in buf
                .chunks_mut(piece * ss)
                .zip(digests.chunks_mut(piece))
                .zip(holds_data.chunks_mut(piece))
            {
                self.backend.read_at(self.backend_offset(at), b)?;
                for ((digest, data), sector) in d.iter_mut().zip(h.iter_mut()).zip(b.chunks(ss)) {
                    *digest = hotzone_digest(sector);
                    *data = !is_zero(sector);
                }
                transform(old, new, at, b, h);
                at += d.len() as u64;
            }
            Ok(())
        };
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        if threads < 2 || buf.len() < PARALLEL_MIN_BYTES {
            return work(first, buf, digests, holds_data);
        }
        let per = digests.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let mut at = first;
            let shares = buf
                .chunks_mut(per * ss)
                .zip(digests.chunks_mut(per))
                .zip(holds_data.chunks_mut(per));
            let running: Vec<_> = shares
                .map(|((b, d), h)| {
                    let this = at;
                    at += d.len() as u64;
                    scope.spawn(move || work(this, b, d, h))
                })
                .collect();
            running.into_iter().try_for_each(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a re-encryption thread panicked")))
            })
        })
    }

    /// Writes the sectors of `buf` (from sector `first`) marked in
    /// `which`, one backend write per run of marked sectors.
    fn write_runs(&self, first: u64, buf: &[u8], which: &[bool]) -> io::Result<()> {
        let ss = self.sector_size as usize;
        for run in marked_runs(which) {
            self.backend.write_at(
                self.backend_offset(first + run.start as u64),
                &buf[run.start * ss..run.end * ss],
            )?;
        }
        Ok(())
    }

    /// Ends a re-encryption whose every sector is under the new key: the
    /// superblock names the new key alone (format version 1 again, both
    /// copies, crash-safely) and the old key's schedules are dropped
    /// (wiped). Returns the new superblock.
    pub fn finish_reencryption(&self) -> Result<Superblock, VolumeError> {
        let r = self.reencryption_state()?;
        let _steps = r.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut on_disk = self.superblock_guard();
        let total = on_disk.sectors();
        let done = r.cipher.watermark();
        if done < total {
            return Err(VolumeError::Io(io::Error::other(format!(
                "re-encryption not complete: {done} of {total} sectors"
            ))));
        }
        let mut next = on_disk.clone();
        if let Some(t) = next.transition.take() {
            next.key_arn = t.new_key_arn;
            next.wrapped_key = t.new_wrapped_key;
            next.key_check = t.new_key_check;
            write_superblock_to(&*self.backend, &mut next)?;
            *on_disk = next.clone();
        }
        r.cipher.retire_old();
        drop(on_disk);
        // Every sector is under the new key: requests need no range lock
        // at a watermark any more (the cipher, its old key retired, uses
        // the new key for every sector, a later grow's too).
        let mut keying = self.keying.write().unwrap_or_else(PoisonError::into_inner);
        *keying = Arc::new(Keying {
            cipher: r.cipher.clone(),
            reencryption: None,
        });
        Ok(next)
    }
}

/// A step read and transformed, its sectors locked, its hotzone not yet
/// recorded.
struct PreparedStep<'v> {
    first: u64,
    end: u64,
    _guard: RangeGuard<'v>,
    /// The sectors' new ciphertext (holes left as they are).
    buf: Vec<u8>,
    /// Each stored sector's digest, as read.
    digests: Vec<[u8; HOTZONE_DIGEST_LEN]>,
    /// Which sectors held data (not all zeros): those are written.
    holds_data: Vec<bool>,
}

/// Waits until no request holds the keying a re-encryption replaced (see
/// [`StepState::predecessor`]), then lets it go.
fn wait_for_predecessor(st: &mut StepState) -> Result<(), VolumeError> {
    let Some(before) = st.predecessor.take() else {
        return Ok(());
    };
    let deadline = Instant::now() + PREDECESSOR_WAIT;
    while Arc::strong_count(&before) > 1 {
        if Instant::now() >= deadline {
            st.predecessor = Some(before);
            return Err(VolumeError::Io(io::Error::other(
                "reads started before the re-encryption are still pending",
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Rewrites the sectors of `buf` (from sector `first`) marked in `which`
/// from `old` to `new`, in place, one cipher call per run.
fn transform(old: &XtsEngine, new: &XtsEngine, first: u64, buf: &mut [u8], which: &[bool]) {
    let ss = old.sector_size();
    for run in marked_runs(which) {
        let sector = first + run.start as u64;
        let bytes = &mut buf[run.start * ss..run.end * ss];
        old.decrypt_sectors(sector, bytes);
        new.encrypt_sectors(sector, bytes);
    }
}

/// The maximal runs of `true` in `which`, as index ranges, in order.
fn marked_runs(which: &[bool]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = i + which.get(i..)?.iter().position(|&m| m)?;
        let len = which[start..].iter().take_while(|&&m| m).count();
        i = start + len;
        Some(start..i)
    })
}

#[cfg(test)]
#[path = "reencryption_tests.rs"]
mod tests;
