//! The one small interface between the NBD server and whatever it exports.
//!
//! The NBD layer speaks only this trait; the volume layer (superblock, sector
//! cipher, backing store) implements it. Calls are synchronous and may block
//! (file I/O, CPU-bound crypto): the NBD server makes them on blocking
//! threads, never on its async reactor — a connection's own reader thread
//! for what cannot wait on a disk ([`BlockDevice::try_read_at`], small
//! writes), its fixed pool of worker threads for the rest, which also lets
//! requests proceed in parallel.
//!
//! A device on an asynchronous store (a Ceph image: every request takes
//! milliseconds, and many must be in flight at once) says so with
//! [`BlockDevice::is_asynchronous`]; the server then *starts* reads, writes
//! and flushes ([`BlockDevice::start_read`] and its siblings) with owned
//! buffers and a completion, instead of parking a worker thread on each
//! one. Every other device keeps the blocking calls: the defaults of the
//! `start_*` methods run them inline.
//!
//! Errors are `std::io::Error`; the NBD layer maps their kind/raw OS error to an
//! NBD errno (EINVAL for out of range, ENOSPC, EIO, EPERM, ...).

use std::io;
use std::sync::Arc;

use crate::volume::backend::{FlushDone, IoBuf, IoDone};
use crate::volume::grow::{GrowError, Grown, NewSize};

/// Threads a started operation's completion may hand CPU work to, instead
/// of doing it on the store's completion thread (which librbd has one of,
/// shared by every request). The device layer knows nothing of who runs
/// it: the NBD server passes its worker pool.
pub trait CpuExecutor: Send + Sync + 'static {
    /// Runs `work` soon, on another thread when one can take it. Never
    /// waits for room: when none can, it runs `work` right here.
    fn execute(&self, work: Box<dyn FnOnce() + Send + 'static>);
}

/// Block sizes a device asks its clients to honour (NBD_INFO_BLOCK_SIZE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest request granularity the device accepts (1 if it handles
    /// any byte range, e.g. by read-modify-write).
    pub minimum: u32,
    /// Size that performs best (no read-modify-write), e.g. the sector size.
    pub preferred: u32,
    /// Largest single request payload.
    pub maximum: u32,
}

/// The allocation status of one run of a device's bytes, as NBD's
/// `base:allocation` metadata context reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Length of the run in bytes.
    pub len: u64,
    /// Not allocated in the backing store (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Known to read as zeros (`NBD_STATE_ZERO`).
    pub zero: bool,
}

/// A byte-addressed device; its size changes only by growing.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes, as exported.
    fn size(&self) -> u64;
    fn block_sizes(&self) -> BlockSizes;
    /// Read exactly `buf.len()` bytes at `offset`. Out of range: `InvalidInput`.
    /// On success every byte of `buf` must have been written: the NBD layer
    /// hands in reused buffers without clearing them.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Like [`read_at`](Self::read_at) if that needs no waiting for
    /// storage (the data is in memory); `Ok(false)`, with `buf` unspecified,
    /// when it would. Lets the NBD server answer cached reads on the
    /// connection's own thread instead of a worker's. The default says
    /// `false` every time, which is always correct.
    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let _ = (offset, buf);
        Ok(false)
    }
    /// A count that moves on once each write, trim or zeroing of the
    /// device has stored its data — before the call returns, or the
    /// started operation's completion runs — so a caller may reuse data it
    /// read earlier exactly while the count has not moved since it began
    /// reading (the NBD server's read-ahead). `None`, the default: the
    /// device keeps no count, and nothing read earlier may be reused.
    fn contents_generation(&self) -> Option<u64> {
        None
    }
    /// Write all of `data` at `offset`; with `fua`, durable before returning.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;
    /// Make every write that has returned durable.
    fn flush(&self) -> io::Result<()>;
    /// Discard a range: it reads back as zeros afterwards.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Zero a range. With `may_punch`, holes may be punched (NBD without NO_HOLE).
    fn write_zeroes(&self, offset: u64, len: u64, may_punch: bool) -> io::Result<()>;
    /// Allocation of `[offset, offset+len)` as consecutive runs starting at
    /// `offset`. The runs may cover less than `len` (the caller asks again
    /// for the rest) but never more. The default knows nothing about
    /// allocation and reports one allocated run of unknown content, which is
    /// always a truthful answer.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Allocation>> {
        let _ = offset;
        Ok(vec![Allocation {
            len,
            hole: false,
            zero: false,
        }])
    }
    /// Whether `write_zeroes(.., may_punch: true)` costs clearly less than
    /// writing the same range (it deallocates instead of writing), so NBD
    /// can honour `NBD_CMD_FLAG_FAST_ZERO`. The default says no, which makes
    /// fast-zero requests fail at once with ENOTSUP, as the spec asks.
    fn fast_zero(&self) -> bool {
        false
    }
    /// Whether the device refuses writes.
    fn read_only(&self) -> bool {
        false
    }
    /// Grows the device (durably) to the size asked for; a smaller size is
    /// refused. Later calls to [`size`](Self::size) see the new size;
    /// requests already admitted were within the old one. Blocking. The
    /// default cannot grow.
    fn grow(&self, size: NewSize) -> Result<Grown, GrowError> {
        let _ = size;
        Err(GrowError::Unsupported)
    }
    /// Whether [`start_read`](Self::start_read),
    /// [`start_write`](Self::start_write) and
    /// [`start_flush`](Self::start_flush) return at once and complete later,
    /// on another thread (a store with its own queue and completion thread).
    /// `false` (the default): they are the blocking calls, run inline, and
    /// the NBD server keeps calling the blocking methods on its workers.
    fn is_asynchronous(&self) -> bool {
        false
    }
    /// Starts reading `buf.bytes().len()` bytes at `offset` into `buf`;
    /// `done` gets the buffer back with the outcome, exactly once, on any
    /// thread (possibly this one, before the call returns). On success every
    /// byte of the buffer has been written.
    fn start_read(&self, offset: u64, mut buf: IoBuf, done: IoDone) {
        let result = self.read_at(offset, buf.bytes_mut());
        done(buf, result)
    }
    /// Like [`start_read`](Self::start_read), but the CPU work of finishing
    /// the read (decrypting it) is handed to `cpu` once the store has
    /// completed it, so `done` runs on one of `cpu`'s threads (or wherever
    /// `start_read` would run it, for a failed read). The default ignores
    /// `cpu`: a device with nothing to finish starts a plain read.
    fn start_read_on(&self, offset: u64, buf: IoBuf, done: IoDone, cpu: Arc<dyn CpuExecutor>) {
        let _ = cpu;
        self.start_read(offset, buf, done)
    }
    /// Starts writing all of `data` at `offset` (with `fua`, durable before
    /// `done` runs); `done` gets the buffer back with the outcome, exactly
    /// once, on any thread (possibly this one).
    fn start_write(&self, offset: u64, data: IoBuf, fua: bool, done: IoDone) {
        let result = self.write_at(offset, data.bytes(), fua);
        done(data, result)
    }
    /// Starts making every write that has completed durable; `done` gets
    /// the outcome, exactly once, on any thread (possibly this one).
    fn start_flush(&self, done: FlushDone) {
        done(self.flush())
    }
}
