//! [`LatencyBackend`]: an asynchronous store for tests — a network store in
//! miniature. Every read, write and flush, started or blocking, completes
//! after a fixed delay on one completion thread (as librbd's callbacks run
//! on its own thread), where the operation is performed on the wrapped
//! backend and the completion runs. It counts the operations in flight and
//! remembers the most there ever were at once, and it can be *held*: while
//! held nothing completes, so a test can see exactly what a server has
//! started and that it has not answered anything the store has not done.
//! It also records on which thread each of its handles was dropped, so a
//! test can tell that a volume was closed by its owner, not by a completion
//! on the store's thread.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use crate::volume::attachment::{AttachMode, AttachmentError};
use crate::volume::backend::{Backend, Extent, FlushDone, IoBuf, IoDone, MemBackend};

/// One delayed operation: performs itself and runs its completion.
type Operation = Box<dyn FnOnce() + Send + 'static>;

/// An operation waiting for its time.
struct Pending {
    due: Instant,
    /// Ties broken by start order, so equal delays complete in order.
    seq: u64,
    operation: Operation,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed: `BinaryHeap` pops the greatest, we want the earliest.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Default)]
struct Queue {
    pending: BinaryHeap<Pending>,
    next_seq: u64,
    held: bool,
    /// Every handle is gone: complete what is left at once, then exit.
    stopping: bool,
}

/// What the handles and the completion thread share.
#[derive(Default)]
struct Clock {
    queue: Mutex<Queue>,
    changed: Condvar,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
}

impl Clock {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The completion thread: runs each operation once it is due (and the
    /// clock is not held), until every handle is gone and nothing is left.
    fn run(&self) {
        loop {
            let operation = {
                let mut queue = self.queue();
                loop {
                    let now = Instant::now();
                    let free = !queue.held || queue.stopping;
                    match queue.pending.peek() {
                        Some(next) if free && (next.due <= now || queue.stopping) => {
                            break queue.pending.pop().map(|p| p.operation);
                        }
                        Some(next) if free => {
                            let wait = next.due - now;
                            queue = self
                                .changed
                                .wait_timeout(queue, wait)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                        None if queue.stopping => return,
                        _ => {
                            queue = self
                                .changed
                                .wait(queue)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                }
            };
            if let Some(operation) = operation {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                // A completion that panics is the caller's bug; the store
                // keeps completing the others.
                let _ = catch_unwind(AssertUnwindSafe(operation));
            }
        }
    }
}

/// Stops the completion thread when the last handle goes.
struct Handle {
    clock: Arc<Clock>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.clock.queue().stopping = true;
        self.clock.changed.notify_all();
    }
}

/// A backend whose reads, writes and flushes complete `delay` after they
/// start, on a completion thread; `is_asynchronous() == true`. Clones
/// share the store, the clock and the counters.
pub struct LatencyBackend<B = MemBackend> {
    inner: Arc<B>,
    delay: Duration,
    handle: Arc<Handle>,
    /// Names of the threads handles were dropped on ("?" if unnamed).
    drops: Arc<Mutex<Vec<String>>>,
}

/// The completion thread's name, as [`LatencyBackend::dropped_on`] reports it.
pub const COMPLETION_THREAD: &str = "latency-backend";

impl<B> Drop for LatencyBackend<B> {
    fn drop(&mut self) {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?").to_string();
        self.drops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name);
    }
}

// Not derived: that would ask for `B: Clone`, and clones share `inner`.
impl<B> Clone for LatencyBackend<B> {
    fn clone(&self) -> Self {
        LatencyBackend {
            inner: self.inner.clone(),
            delay: self.delay,
            handle: self.handle.clone(),
            drops: self.drops.clone(),
        }
    }
}

impl<B> std::fmt::Debug for LatencyBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyBackend")
            .field("delay", &self.delay)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> LatencyBackend<B> {
    /// Wraps `inner`; starts the completion thread.
    ///
    /// # Panics
    /// If the thread cannot be started (a test environment problem).
    pub fn new(inner: B, delay: Duration) -> Self {
        let clock = Arc::new(Clock::default());
        let worker = clock.clone();
        std::thread::Builder::new()
            .name(COMPLETION_THREAD.into())
            .spawn(move || worker.run())
            .expect("cannot start the latency backend's completion thread");
        LatencyBackend {
            inner: Arc::new(inner),
            delay,
            handle: Arc::new(Handle { clock }),
            drops: Arc::default(),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Schedules `operation` to run `delay` from now.
    fn schedule(&self, operation: Operation) {
        let clock = &self.handle.clock;
        let now = clock.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        clock.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut queue = clock.queue();
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.pending.push(Pending {
            due: Instant::now() + self.delay,
            seq,
            operation,
        });
        drop(queue);
        clock.changed.notify_all();
    }

    /// Runs `operation` as a delayed operation and waits for its outcome:
    /// the blocking calls cost the same delay as the started ones.
    fn blocking<T: Send + 'static>(
        &self,
        operation: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.schedule(Box::new(move || {
            let _ = tx.send(operation());
        }));
        rx.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the latency backend's operation was dropped",
            ))
        })
    }
}

impl<B> LatencyBackend<B> {
    /// Holds every completion until [`release`](Self::release).
    pub fn hold(&self) {
        self.handle.clock.queue().held = true;
    }

    /// Lets held (and later) operations complete as they fall due.
    pub fn release(&self) {
        self.handle.clock.queue().held = false;
        self.handle.clock.changed.notify_all();
    }

    /// The names of the threads on which this store's other handles (a
    /// volume's, say) were dropped so far, in order; "?" for an unnamed
    /// thread, [`COMPLETION_THREAD`] for the store's own.
    pub fn dropped_on(&self) -> Vec<String> {
        self.drops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Operations started and not completed.
    pub fn in_flight(&self) -> usize {
        self.handle.clock.in_flight.load(Ordering::SeqCst)
    }

    /// The most operations there ever were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.handle.clock.max_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets the maximum (sets it to what is in flight now).
    pub fn reset_max_in_flight(&self) {
        let clock = &self.handle.clock;
        clock
            .max_in_flight
            .store(clock.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Reads, writes and flushes completed so far (performed on the inner
    /// backend, successfully or not), in that order.
    pub fn completed(&self) -> (u64, u64, u64) {
        let clock = &self.handle.clock;
        (
            clock.reads.load(Ordering::SeqCst),
            clock.writes.load(Ordering::SeqCst),
            clock.flushes.load(Ordering::SeqCst),
        )
    }
}

impl<B: Backend> Backend for LatencyBackend<B> {
    fn is_asynchronous(&self) -> bool {
        true
    }

    fn start_read(&self, offset: u64, mut buf: IoBuf, done: IoDone) {
        let (inner, clock) = (self.inner.clone(), self.handle.clock.clone());
        self.schedule(Box::new(move || {
            let result = inner.read_at(offset, buf.bytes_mut());
            clock.reads.fetch_add(1, Ordering::SeqCst);
            done(buf, result)
        }));
    }

    fn start_write(&self, offset: u64, data: IoBuf, done: IoDone) {
        let (inner, clock) = (self.inner.clone(), self.handle.clock.clone());
        self.schedule(Box::new(move || {
            let result = inner.write_at(offset, data.bytes());
            clock.writes.fetch_add(1, Ordering::SeqCst);
            done(data, result)
        }));
    }

    fn start_flush(&self, done: FlushDone) {
        let (inner, clock) = (self.inner.clone(), self.handle.clock.clone());
        self.schedule(Box::new(move || {
            let result = inner.flush();
            clock.flushes.fetch_add(1, Ordering::SeqCst);
            done(result)
        }));
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (inner, clock) = (self.inner.clone(), self.handle.clock.clone());
        let len = buf.len();
        let bytes = self.blocking(move || {
            let mut bytes = vec![0u8; len];
            let result = inner.read_at(offset, &mut bytes);
            clock.reads.fetch_add(1, Ordering::SeqCst);
            result.map(|()| bytes)
        })?;
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let (inner, clock) = (self.inner.clone(), self.handle.clock.clone());
        let data = data.to_vec();
        self.blocking(move || {
            let result = inner.write_at(offset, &data);
            clock.writes.fetch_add(1, Ordering::SeqCst);
            result
        })
    }

    fn flush(&self) -> io::Result<()> {
        let (inner, clock) = (self.inner.clone(), self.handle.clock.clone());
        self.blocking(move || {
            let result = inner.flush();
            clock.flushes.fetch_add(1, Ordering::SeqCst);
            result
        })
    }

    // Metadata calls: not delayed (they are not what this backend models).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn grow_to(&self, len: u64) -> io::Result<()> {
        self.inner.grow_to(len)
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.inner.extents(offset, len)
    }

    fn lock_attachment(&self, mode: AttachMode) -> Result<(), AttachmentError> {
        self.inner.lock_attachment(mode)
    }
}

#[cfg(test)]
#[path = "latency_backend_tests.rs"]
mod tests;
