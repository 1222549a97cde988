//! [`MemDevice`]: a byte-addressed [`BlockDevice`] in memory, for the NBD
//! server's tests and fuzz targets.
//!
//! Reads are "cached" (answered by `try_read_at`) everywhere but in every
//! third 4 KiB block, so that a server answers some reads on the
//! connection's own thread and hands the others to its workers, and the
//! tests cover both paths.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::volume::device::{BlockDevice, BlockSizes};

/// Bytes in memory, counting flushes. Trim and write-zeroes store zeros.
#[derive(Debug)]
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
    sizes: BlockSizes,
    /// Calls to `flush` so far.
    pub flushes: AtomicUsize,
}

impl MemDevice {
    /// What [`MemDevice::new`] advertises: any byte range, 4 KiB preferred,
    /// requests up to 32 MiB.
    pub const DEFAULT_SIZES: BlockSizes = BlockSizes {
        minimum: 1,
        preferred: 4096,
        maximum: 32 * 1024 * 1024,
    };

    /// `size` zero bytes with [`DEFAULT_SIZES`](Self::DEFAULT_SIZES).
    pub fn new(size: usize) -> Arc<Self> {
        Self::with_sizes(size, Self::DEFAULT_SIZES)
    }

    /// `size` zero bytes advertising `sizes`.
    pub fn with_sizes(size: usize, sizes: BlockSizes) -> Arc<Self> {
        Arc::new(Self {
            data: RwLock::new(vec![0; size]),
            sizes,
            flushes: AtomicUsize::new(0),
        })
    }

    /// A copy of every byte.
    pub fn contents(&self) -> Vec<u8> {
        self.data().clone()
    }

    /// Sets bytes directly, bypassing the device interface.
    ///
    /// # Panics
    /// If the range runs past the end (a test bug).
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        self.data_mut()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    // A panic in another test thread leaves the bytes as usable as before.
    fn data(&self) -> RwLockReadGuard<'_, Vec<u8>> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn data_mut(&self) -> RwLockWriteGuard<'_, Vec<u8>> {
        self.data.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<Range<usize>> {
        let size = self.data().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "out of range")),
        }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data().len() as u64
    }

    fn block_sizes(&self) -> BlockSizes {
        self.sizes
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data()[r]);
        Ok(())
    }

    /// "Cached" everywhere but in every third 4 KiB block (see the module
    /// docs).
    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if (offset / 4096) % 3 == 2 {
            return Ok(false);
        }
        self.read_at(offset, buf).map(|()| true)
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let r = self.range(offset, data.len() as u64)?;
        self.data_mut()[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_punch: bool) -> io::Result<()> {
        let r = self.range(offset, len)?;
        self.data_mut()[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written_and_refuses_out_of_range() {
        let d = MemDevice::new(3 * 4096);
        d.write_at(4000, &[7; 200], false).unwrap();
        let mut buf = [0u8; 200];
        d.read_at(4000, &mut buf).unwrap();
        assert_eq!(buf, [7; 200]);
        d.write_zeroes(4050, 10, true).unwrap();
        assert_eq!(
            d.contents()[4049..4061],
            [7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        for (offset, len) in [(3 * 4096, 1), (3 * 4096 - 1, 2), (u64::MAX, 2)] {
            let err = d.write_zeroes(offset, len, false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{offset}+{len}");
        }
        d.flush().unwrap();
        assert_eq!(d.flushes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn every_third_block_is_uncached() {
        let d = MemDevice::new(6 * 4096);
        d.fill(2 * 4096, &[9; 4096]);
        let mut buf = [0u8; 4096];
        let cached: Vec<bool> = (0..6u64)
            .map(|block| d.try_read_at(block * 4096, &mut buf).unwrap())
            .collect();
        assert_eq!(cached, [true, true, false, true, true, false]);
        d.read_at(2 * 4096, &mut buf).unwrap();
        assert_eq!(buf, [9; 4096]);
    }
}
