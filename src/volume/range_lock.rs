//! Exclusive locks on ranges of sectors.
//!
//! A sub-sector write is a read-modify-write of the whole sector; two of them
//! on the same sector at once would each write back the other's old bytes and
//! one update would be lost. Every write therefore holds its sector range for
//! the read-modify-write-back, and waits only for writes whose ranges overlap
//! its own: writes to other sectors proceed in parallel. The table lock is
//! held for a scan of the (short) list of ranges in flight, never across I/O.
//!
//! A write to an asynchronous store holds its range until the store
//! completes it, on the store's completion thread, long after the call that
//! started it has returned: it takes an [`OwnedRangeGuard`] (the table is
//! shared through an `Arc`), which moves into the completion.
//!
//! Not fair: a waiter may be overtaken by later, non-overlapping requests —
//! acceptable with NBD's bounded number of requests in flight.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// The set of sector ranges currently held.
#[derive(Debug, Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, u64)>>,
    released: Condvar,
}

/// Holds `[start, end)` until dropped.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    start: u64,
    end: u64,
}

/// Holds `[start, end)` until dropped, on whichever thread drops it.
#[derive(Debug)]
pub struct OwnedRangeGuard {
    locks: Arc<RangeLocks>,
    start: u64,
    end: u64,
}

impl RangeLocks {
    pub fn new() -> Self {
        Self::default()
    }

    // The list is consistent after any panic (a push or a swap_remove either
    // happened or not), so a poisoned lock is safe to keep using.
    fn table(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until no held range overlaps `[start, end)`, then holds it.
    pub fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        self.acquire(start, end);
        RangeGuard {
            locks: self,
            start,
            end,
        }
    }

    /// Like [`lock`](Self::lock), with a guard that owns a share of the
    /// table, so it can outlive this borrow (and move to another thread).
    pub fn lock_owned(self: &Arc<Self>, start: u64, end: u64) -> OwnedRangeGuard {
        self.acquire(start, end);
        OwnedRangeGuard {
            locks: self.clone(),
            start,
            end,
        }
    }

    fn acquire(&self, start: u64, end: u64) {
        let mut held = self.table();
        while held.iter().any(|&(s, e)| s < end && start < e) {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.push((start, end));
    }

    fn release(&self, start: u64, end: u64) {
        let mut held = self.table();
        if let Some(i) = held.iter().position(|&r| r == (start, end)) {
            held.swap_remove(i);
        }
        drop(held);
        // Waiters re-check their own overlap; wake them all.
        self.released.notify_all();
    }

    /// Ranges held right now (for tests and diagnostics).
    pub fn held_count(&self) -> usize {
        self.table().len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.locks.release(self.start, self.end);
    }
}

impl Drop for OwnedRangeGuard {
    fn drop(&mut self) {
        self.locks.release(self.start, self.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn disjoint_ranges_do_not_wait() {
        let locks = RangeLocks::new();
        let a = locks.lock(0, 10);
        let b = locks.lock(10, 20);
        let c = locks.lock(100, 101);
        assert_eq!(locks.held_count(), 3);
        drop((a, b, c));
        assert_eq!(locks.held_count(), 0);
    }

    #[test]
    fn overlapping_range_waits_for_release() {
        let locks = RangeLocks::new();
        let inside = AtomicBool::new(false);
        let got_it = AtomicBool::new(false);
        std::thread::scope(|s| {
            let guard = locks.lock(5, 15);
            inside.store(true, Ordering::SeqCst);
            s.spawn(|| {
                let _g = locks.lock(14, 30);
                // The first holder must have let go by now.
                assert!(!inside.load(Ordering::SeqCst));
                got_it.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(!got_it.load(Ordering::SeqCst), "overlap was not excluded");
            inside.store(false, Ordering::SeqCst);
            drop(guard);
        });
        assert!(got_it.load(Ordering::SeqCst));
    }

    #[test]
    fn owned_guard_is_released_on_another_thread() {
        let locks = Arc::new(RangeLocks::new());
        let guard = locks.lock_owned(3, 7);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let locks = locks.clone();
            std::thread::spawn(move || {
                let _g = locks.lock(6, 8);
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "an overlapping range was granted while the owned guard was held"
        );
        // The guard moves to (and drops on) a thread that did not take it,
        // as a completion on a store's callback thread does.
        std::thread::spawn(move || drop(guard)).join().unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the waiter was not woken by the release");
        waiter.join().unwrap();
        assert_eq!(locks.held_count(), 0);
    }

    #[test]
    fn mutual_exclusion_under_contention() {
        let locks = RangeLocks::new();
        let in_range = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (locks, in_range) = (&locks, &in_range);
                s.spawn(move || {
                    for i in 0..500u64 {
                        let start = (t + i) % 4;
                        let _g = locks.lock(start, start + 2);
                        // Ranges [k, k+2) all overlap sector 1 or 2 with a
                        // neighbour; count holders of sector 2 when we hold it.
                        if start <= 2 && 2 < start + 2 {
                            assert_eq!(in_range.fetch_add(1, Ordering::SeqCst), 0);
                            in_range.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(locks.held_count(), 0);
    }
}
