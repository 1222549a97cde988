//! Reusable byte buffers for the volume's I/O path.
//!
//! Every write needs a ciphertext buffer as large as the request (the
//! caller's plaintext must stay untouched), and unaligned reads need one for
//! the covering sectors. Allocating them per request costs a page-faulting
//! `mmap`/`munmap` pair for large requests (glibc serves ≥ 128 KiB that way)
//! or a `memset` of the whole request (`vec![0; n]`); a pool hands back a
//! buffer that already has its pages and needs no clearing, because every
//! byte of the slice handed out is overwritten (by `pread` or by the cipher)
//! before it is read.
//!
//! A request to an asynchronous store needs a buffer it owns (the store
//! fills or sends it after the call returned): [`BufferPool::take_owned`]
//! lends one that holds a share of the pool instead of a borrow.
//!
//! The lock is held only to push or pop a `Vec`, never across I/O or crypto.
//! Buffers hold ciphertext, or, for unaligned reads, plaintext the client is
//! about to receive anyway — the same exposure as freed heap memory.

use std::sync::{Arc, Mutex};

use crate::volume::backend::IoBuffer;

/// At most this many idle buffers are kept…
const MAX_IDLE: usize = 32;
/// …holding at most this many bytes together; larger surpluses are freed.
const MAX_IDLE_BYTES: usize = 64 << 20;

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// A bounded pool of byte buffers.
#[derive(Debug, Default)]
pub struct BufferPool {
    idle: Mutex<Idle>,
}

/// A buffer on loan from a [`BufferPool`]; goes back when dropped.
pub struct PooledBuf<'a> {
    pool: &'a BufferPool,
    buf: Vec<u8>,
    len: usize,
}

/// A buffer on loan from a shared [`BufferPool`], owning its share of the
/// pool, so it can travel with a started operation; goes back when dropped,
/// on whichever thread that is.
pub struct OwnedPooledBuf {
    pool: Arc<BufferPool>,
    buf: Vec<u8>,
    len: usize,
}

impl BufferPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer of exactly `len` bytes whose contents are unspecified (old
    /// data from an earlier request, or zeros where it had to grow).
    pub fn take(&self, len: usize) -> PooledBuf<'_> {
        PooledBuf {
            pool: self,
            buf: self.take_vec(len),
            len,
        }
    }

    /// Like [`take`](Self::take), for a buffer that must outlive the borrow.
    pub fn take_owned(self: &Arc<Self>, len: usize) -> OwnedPooledBuf {
        OwnedPooledBuf {
            pool: self.clone(),
            buf: self.take_vec(len),
            len,
        }
    }

    /// An idle buffer of at least `len` bytes, or a new one.
    fn take_vec(&self, len: usize) -> Vec<u8> {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            // The most recently returned buffer is the likeliest to be warm
            // in cache; prefer one that is already large enough.
            let pos = idle.buffers.iter().rposition(|b| b.len() >= len);
            let taken = match pos {
                Some(i) => Some(idle.buffers.swap_remove(i)),
                None => idle.buffers.pop(),
            };
            if let Some(b) = &taken {
                idle.bytes -= b.len();
            }
            taken
        };
        let mut buf = reused.unwrap_or_default();
        if buf.len() < len {
            // Only the growth is zero-filled, once per buffer.
            buf.resize(len, 0);
        }
        buf
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.buffers.len() < MAX_IDLE && idle.bytes + buf.len() <= MAX_IDLE_BYTES {
            idle.bytes += buf.len();
            idle.buffers.push(buf);
        }
        // Otherwise `buf` drops here: the pool never grows without bound.
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().buffers.len()
    }
}

impl PooledBuf<'_> {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl IoBuffer for OwnedPooledBuf {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for OwnedPooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized_exactly() {
        let pool = BufferPool::new();
        let ptr = {
            let mut b = pool.take(8192);
            assert_eq!(b.as_mut_slice().len(), 8192);
            b.as_mut_slice().as_ptr()
        };
        assert_eq!(pool.idle_count(), 1);
        // A smaller request gets the same allocation, cut to length.
        let mut b = pool.take(4096);
        assert_eq!(b.as_mut_slice().len(), 4096);
        assert_eq!(b.as_mut_slice().as_ptr(), ptr);
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn owned_buffers_come_back_from_other_threads() {
        let pool = Arc::new(BufferPool::new());
        let mut b = pool.take_owned(4096);
        assert_eq!(b.bytes_mut().len(), 4096);
        let ptr = b.bytes().as_ptr();
        std::thread::spawn(move || drop(b)).join().unwrap();
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(pool.take_owned(100).bytes().as_ptr(), ptr);
    }

    #[test]
    fn a_small_buffer_grows_when_needed() {
        let pool = BufferPool::new();
        drop(pool.take(16));
        let mut b = pool.take(1 << 20);
        assert_eq!(b.as_mut_slice().len(), 1 << 20);
    }

    #[test]
    fn idle_buffers_are_bounded() {
        let pool = BufferPool::new();
        let many: Vec<_> = (0..MAX_IDLE + 10).map(|_| pool.take(4096)).collect();
        drop(many);
        assert_eq!(pool.idle_count(), MAX_IDLE);
        let pool = BufferPool::new();
        let big: Vec<_> = (0..4).map(|_| pool.take(MAX_IDLE_BYTES / 2)).collect();
        drop(big);
        assert_eq!(pool.idle_count(), 2);
    }
}
