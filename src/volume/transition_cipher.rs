//! The sector cipher of a volume whose data key is being replaced: sectors
//! below the watermark are under the new key, the others under the old one.
//!
//! Every read, write and read-modify-write of the volume goes through
//! [`SectorCipher`], so choosing the key here, by sector number, is all the
//! volume's I/O paths need to serve a volume in transition. The watermark
//! moves up only after a re-encryption step's sectors are rewritten and
//! flushed, while the step holds their range lock (see
//! [`reencryption`](super::reencryption)): a request that holds the range
//! lock of a sector at or above the watermark sees its key stay put.
//!
//! When the re-encryption completes, [`TransitionCipher::retire_old`] drops
//! the old key's schedules (wiped on drop, as every engine's are): from
//! then on every sector is under the new key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::volume::cipher::{CipherError, SectorCipher};
use crate::volume::key::DataKey;
use crate::volume::xts_engine::XtsEngine;

/// Two engines and the watermark between them.
#[derive(Debug)]
pub struct TransitionCipher {
    /// `None` once the re-encryption completed (see `retire_old`).
    old: RwLock<Option<XtsEngine>>,
    new: XtsEngine,
    /// In sectors: `[0, watermark)` is under the new key.
    watermark: AtomicU64,
    sector_size: usize,
}

impl TransitionCipher {
    pub fn new(
        old: &DataKey,
        new: &DataKey,
        sector_size: usize,
        watermark: u64,
    ) -> Result<Self, CipherError> {
        Ok(TransitionCipher {
            old: RwLock::new(Some(XtsEngine::new(old, sector_size)?)),
            new: XtsEngine::new(new, sector_size)?,
            watermark: AtomicU64::new(watermark),
            sector_size,
        })
    }

    /// Sectors below this are under the new key.
    pub fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// Moves the watermark up to `to` (never down): the caller has
    /// rewritten every sector below it under the new key, durably.
    pub fn advance(&self, to: u64) {
        self.watermark.fetch_max(to, Ordering::AcqRel);
    }

    /// The new key's engine.
    pub fn new_key(&self) -> &XtsEngine {
        &self.new
    }

    /// Runs `f` with the old key's engine, or returns `None` once retired.
    pub fn with_old<R>(&self, f: impl FnOnce(&XtsEngine) -> R) -> Option<R> {
        let old = self.old.read().unwrap_or_else(PoisonError::into_inner);
        old.as_ref().map(f)
    }

    /// Drops (and so wipes) the old key's schedules. Only once every sector
    /// is under the new key: a later request for a sector above the
    /// watermark would otherwise get the new key.
    pub fn retire_old(&self) {
        let mut old = self.old.write().unwrap_or_else(PoisonError::into_inner);
        *old = None;
    }

    /// How many of the `n` sectors from `first` lie below the watermark.
    fn below(&self, first: u64, n: usize) -> usize {
        let w = self.watermark();
        w.saturating_sub(first).min(n as u64) as usize
    }

    /// Applies `new_op` to the part of `buf` below the watermark and
    /// `old_op` to the rest (the new key's once the old one is retired).
    fn split(&self, first: u64, buf: &mut [u8], op: impl Fn(&XtsEngine, u64, &mut [u8])) {
        let n = buf.len() / self.sector_size;
        let k = self.below(first, n);
        let (low, high) = buf.split_at_mut(k * self.sector_size);
        if !low.is_empty() {
            op(&self.new, first, low);
        }
        if !high.is_empty() {
            let at = first + k as u64;
            if self.with_old(|old| op(old, at, &mut *high)).is_none() {
                op(&self.new, at, high);
            }
        }
    }
}

impl SectorCipher for TransitionCipher {
    fn sector_size(&self) -> usize {
        self.sector_size
    }

    fn encrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        self.split(first_sector, buf, |c, s, b| c.encrypt_sectors(s, b));
    }

    fn decrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        self.split(first_sector, buf, |c, s, b| c.decrypt_sectors(s, b));
    }

    fn encrypt_sectors_to(&self, first_sector: u64, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "encrypt_sectors_to: lengths differ");
        let n = dst.len() / self.sector_size;
        let k = self.below(first_sector, n) * self.sector_size;
        let (src_low, src_high) = src.split_at(k);
        let (dst_low, dst_high) = dst.split_at_mut(k);
        if !dst_low.is_empty() {
            self.new.encrypt_sectors_to(first_sector, src_low, dst_low);
        }
        if !dst_high.is_empty() {
            let at = first_sector + (k / self.sector_size) as u64;
            let done = self.with_old(|old| old.encrypt_sectors_to(at, src_high, &mut *dst_high));
            if done.is_none() {
                self.new.encrypt_sectors_to(at, src_high, dst_high);
            }
        }
    }
}

#[cfg(test)]
#[path = "transition_cipher_tests.rs"]
mod tests;
