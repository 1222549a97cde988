//! [`CrashBackend`]: an in-memory store with a volatile write cache that
//! can lose power.
//!
//! It keeps written-but-unsynced data apart from synced data, and can "lose
//! power" after a chosen number of mutating operations. What survives is
//! decided afterwards ([`PowerLoss`]): nothing unsynced, a torn last write
//! (some of its atomic units land, some do not), or any subset of the
//! unsynced writes' atomic units (a disk cache that reorders). A grow
//! (`grow_to`) is cached like a write: only a flush makes the new length
//! durable.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::volume::attachment::{AttachMode, AttachmentError};
use crate::volume::backend::Backend;

/// What survives a power loss of a [`CrashBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerLoss {
    /// Only what was synced.
    DropUnsynced,
    /// What was synced, plus a random subset of the atomic units of the
    /// last unsynced write (the write in flight when power went).
    TearLast { seed: u64 },
    /// What was synced, plus, in issue order, a random subset of the atomic
    /// units of every unsynced write: a write cache that flushes in any
    /// order and is cut off at any point.
    Reorder { seed: u64 },
}

/// One unsynced write (a punch is a write of zeros).
#[derive(Debug, Clone)]
struct Unsynced {
    offset: u64,
    data: Vec<u8>,
}

#[derive(Debug)]
struct CrashState {
    /// What a power loss keeps for sure.
    synced: Vec<u8>,
    /// What reads see: `synced` plus every unsynced write.
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
    /// Mutating operations (write, punch, grow, flush) started so far.
    ops: u64,
    /// Power goes during mutating operation number `crash_at` (0-based):
    /// that operation and everything after it fail with EIO.
    crash_at: Option<u64>,
    dead: bool,
}

/// An in-memory backend with a volatile write cache that can lose power.
///
/// Writes and punches go to the cache (reads see them at once); `flush`
/// makes them durable. [`CrashBackend::crash_after`] arms a power loss:
/// the n-th mutating operation from then on is cut off (a write in
/// progress is recorded as unsynced, so it may land torn) and every later
/// call fails with EIO. [`CrashBackend::power_loss`] then gives the image a
/// restart would find.
#[derive(Debug, Clone)]
pub struct CrashBackend {
    state: Arc<Mutex<CrashState>>,
    /// The device's atomic write unit: a torn write lands in whole units.
    atomic: usize,
}

fn power_lost() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "beyond the end of the backend",
    )
}

impl CrashBackend {
    /// A zeroed, fully synced store of `size` bytes whose writes tear in
    /// units of `atomic` bytes (e.g. 512 or 4096).
    pub fn new(size: usize, atomic: usize) -> Self {
        Self::from_image(vec![0; size], atomic)
    }

    /// A store whose synced contents are `image` (e.g. what a power loss left).
    pub fn from_image(image: Vec<u8>, atomic: usize) -> Self {
        CrashBackend {
            state: Arc::new(Mutex::new(CrashState {
                current: image.clone(),
                synced: image,
                unsynced: Vec::new(),
                ops: 0,
                crash_at: None,
                dead: false,
            })),
            atomic: atomic.max(1),
        }
    }

    // A panic inside a test leaves the state consistent enough to inspect.
    fn state(&self) -> MutexGuard<'_, CrashState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Power goes during the `n`-th mutating operation from now (0: the next one).
    pub fn crash_after(&self, n: u64) {
        let mut s = self.state();
        s.crash_at = Some(s.ops + n);
    }

    /// Mutating operations (write, punch, grow, flush) started so far.
    pub fn ops(&self) -> u64 {
        self.state().ops
    }

    /// Whether the armed power loss has happened.
    pub fn is_dead(&self) -> bool {
        self.state().dead
    }

    /// Unsynced writes waiting in the cache.
    pub fn unsynced_writes(&self) -> usize {
        self.state().unsynced.len()
    }

    /// Loses power now (if it has not gone already) and returns the image a
    /// restart finds. The backend stays dead.
    pub fn power_loss(&self, how: PowerLoss) -> Vec<u8> {
        let mut s = self.state();
        s.dead = true;
        let mut image = s.synced.clone();
        let (keep_all_but_last, mut rng) = match how {
            PowerLoss::DropUnsynced => return image,
            PowerLoss::TearLast { seed } => (false, StdRng::seed_from_u64(seed)),
            PowerLoss::Reorder { seed } => (true, StdRng::seed_from_u64(seed)),
        };
        let n = s.unsynced.len();
        for (i, w) in s.unsynced.iter().enumerate() {
            if !keep_all_but_last && i + 1 != n {
                continue;
            }
            // Units are aligned to the device, not to the write.
            let start = w.offset as usize;
            let end = start + w.data.len();
            let mut unit = start - start % self.atomic;
            // Past a length that was never synced nothing lands: a file's
            // data beyond its durable size is lost with the size.
            let end = end.min(image.len());
            if start >= end {
                continue;
            }
            while unit < end {
                let lo = unit.max(start);
                let hi = (unit + self.atomic).min(end);
                if rng.gen_bool(0.5) {
                    image[lo..hi].copy_from_slice(&w.data[lo - start..hi - start]);
                }
                unit += self.atomic;
            }
        }
        image
    }

    /// Starts a mutating operation: fails if power is gone or goes now.
    fn begin(s: &mut CrashState) -> Result<(), ()> {
        if s.dead {
            return Err(());
        }
        let op = s.ops;
        s.ops += 1;
        if s.crash_at == Some(op) {
            s.dead = true;
            return Err(());
        }
        Ok(())
    }

    fn range(len_total: usize, offset: u64, len: usize) -> io::Result<Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        if end > len_total {
            return Err(out_of_range());
        }
        Ok(start..end)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state();
        let r = Self::range(s.current.len(), offset, data.len())?;
        if s.dead {
            return Err(power_lost());
        }
        let op = s.ops;
        s.ops += 1;
        // Recorded even when power goes during this very write: it may have
        // reached the cache, partly, and is unsynced like any other.
        s.current[r].copy_from_slice(data);
        s.unsynced.push(Unsynced {
            offset,
            data: data.to_vec(),
        });
        if s.crash_at == Some(op) {
            s.dead = true;
            return Err(power_lost());
        }
        Ok(())
    }
}

impl Backend for CrashBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.state();
        if s.dead {
            return Err(power_lost());
        }
        let r = Self::range(s.current.len(), offset, buf.len())?;
        buf.copy_from_slice(&s.current[r]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        let mut s = self.state();
        Self::begin(&mut s).map_err(|()| power_lost())?;
        let pending = std::mem::take(&mut s.unsynced);
        let len = s.current.len().max(s.synced.len());
        s.synced.resize(len, 0);
        for w in pending {
            let start = w.offset as usize;
            s.synced[start..start + w.data.len()].copy_from_slice(&w.data);
        }
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        self.write(offset, &vec![0; len])
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.state().current.len() as u64)
    }

    /// A mutating operation like a write: the new length is in the cache
    /// (reads and writes see it) until a flush makes it durable; a power
    /// loss before then finds the old length.
    fn grow_to(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        let mut s = self.state();
        Self::begin(&mut s).map_err(|()| power_lost())?;
        if s.current.len() < len {
            s.current.resize(len, 0);
        }
        Ok(())
    }

    /// A simulated disk inside one test: nobody else can attach it.
    fn lock_attachment(&self, _mode: AttachMode) -> Result<(), AttachmentError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_are_lost_synced_ones_kept() {
        let b = CrashBackend::new(4096, 512);
        b.write_at(0, &[1; 512]).unwrap();
        b.flush().unwrap();
        b.write_at(512, &[2; 512]).unwrap();
        let mut buf = [0u8; 1024];
        b.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[512..], &[2; 512], "reads see the cache");
        let img = b.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(&img[..512], &[1; 512]);
        assert_eq!(&img[512..1024], &[0; 512]);
        assert!(b.read_at(0, &mut buf).is_err(), "dead after power loss");
    }

    #[test]
    fn crash_cuts_an_operation_and_tears_in_units() {
        let b = CrashBackend::new(8192, 512);
        b.crash_after(1);
        b.write_at(0, &[1; 512]).unwrap();
        // The second operation is the one power goes during.
        assert!(b.write_at(1024, &[7; 4096]).is_err());
        assert!(b.is_dead());
        assert!(b.flush().is_err());
        let mut landed = [0usize; 2];
        for seed in 0..64 {
            let img = b.power_loss(PowerLoss::TearLast { seed });
            assert_eq!(&img[..512], &[0; 512], "not the earlier unsynced write");
            for unit in img[1024..1024 + 4096].chunks(512) {
                assert!(unit == [7; 512] || unit == [0; 512], "units are atomic");
                landed[usize::from(unit[0] == 7)] += 1;
            }
        }
        assert!(landed[0] > 0 && landed[1] > 0, "{landed:?}");
        let img = b.power_loss(PowerLoss::Reorder { seed: 3 });
        assert!(img[..512] == [1; 512] || img[..512] == [0; 512]);
    }
}
