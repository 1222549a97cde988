//! [`FaultyBackend`]: wraps another backend and fails chosen operations on
//! chosen byte ranges with a chosen OS error (EIO, ENOSPC, ...).

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use crate::volume::attachment::{AttachMode, AttachmentError};
use crate::volume::backend::{Backend, Extent};

/// Which backend call a [`Fault`] hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Read,
    Write,
    Punch,
    Flush,
}

/// Fail `op` on any call touching `range` (backend offsets; ignored for
/// flush) with OS error `errno`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub op: FaultOp,
    pub range: Range<u64>,
    pub errno: i32,
}

/// The faults a [`FaultyBackend`] injects; change them at any time.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Fault>>,
    /// Calls failed so far.
    injected: std::sync::atomic::AtomicU64,
}

impl Faults {
    pub fn add(&self, fault: Fault) {
        self.rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    pub fn clear(&self) {
        self.rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub fn injected(&self) -> u64 {
        self.injected.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check(&self, op: FaultOp, offset: u64, len: u64) -> io::Result<()> {
        let rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        let end = offset.saturating_add(len.max(1));
        for f in rules.iter() {
            let hits = f.op == op
                && (op == FaultOp::Flush || (offset < f.range.end && f.range.start < end));
            if hits {
                self.injected
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(f.errno));
            }
        }
        Ok(())
    }
}

/// A backend that fails chosen calls, passing the rest to `inner`.
#[derive(Debug, Clone)]
pub struct FaultyBackend<B> {
    inner: Arc<B>,
    faults: Arc<Faults>,
}

impl<B: Backend> FaultyBackend<B> {
    pub fn new(inner: B) -> Self {
        FaultyBackend {
            inner: Arc::new(inner),
            faults: Arc::new(Faults::default()),
        }
    }

    /// The switchboard, shared with every clone.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }
}

impl<B: Backend> Backend for FaultyBackend<B> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.faults.check(FaultOp::Read, offset, buf.len() as u64)?;
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults
            .check(FaultOp::Write, offset, data.len() as u64)?;
        self.inner.write_at(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.faults.check(FaultOp::Flush, 0, 0)?;
        self.inner.flush()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.faults.check(FaultOp::Punch, offset, len)?;
        self.inner.punch_hole(offset, len)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn grow_to(&self, len: u64) -> io::Result<()> {
        self.inner.grow_to(len)
    }

    fn lock_attachment(&self, mode: AttachMode) -> Result<(), AttachmentError> {
        self.inner.lock_attachment(mode)
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.extents(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_hit_only_their_range_and_op() {
        let b = FaultyBackend::new(crate::volume::backend::MemBackend::new(4096));
        b.faults().add(Fault {
            op: FaultOp::Write,
            range: 1000..2000,
            errno: 5,
        });
        b.write_at(0, &[1; 1000]).unwrap();
        assert_eq!(
            b.write_at(1999, &[1; 2]).unwrap_err().raw_os_error(),
            Some(5)
        );
        b.read_at(1000, &mut [0; 10]).unwrap();
        b.flush().unwrap();
        assert_eq!(b.faults().injected(), 1);
        b.faults().clear();
        b.write_at(1999, &[1; 2]).unwrap();
    }
}
