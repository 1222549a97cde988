//! What the connections of one server share for serving requests: a fixed
//! pool of worker threads for device calls, and a pool of request/reply
//! buffers.
//!
//! # Workers
//!
//! Device calls are synchronous and may be slow (file I/O, crypto), so they
//! never run on the async reactor. Instead of a `spawn_blocking` per request
//! (which grows tokio's blocking pool to hundreds of threads under load and
//! spends the CPU on scheduling them), a server starts a fixed number of
//! threads once — about one per core — fed by a bounded job queue. A
//! connection's reader waits (asynchronously) for room in the queue, never
//! for a worker, and workers never wait for a reader, so a queue full of
//! slow jobs delays requests but cannot deadlock. A job that panics is the
//! job's business (it catches the panic to answer the client); the worker
//! survives regardless. Workers exit once the last handle to the pool is
//! dropped and the queue is drained.
//!
//! # Buffers
//!
//! READ and WRITE data lives in [`PooledBuf`]s: power-of-two sized
//! allocations kept, when idle, in per-size free lists whose total is
//! capped ([`MAX_IDLE_BYTES`]); a returned buffer that does not fit evicts
//! idle buffers of other sizes, so a workload's sizes replace the last
//! one's. A reused buffer is not cleared: every byte
//! a request exposes is overwritten first (by the socket read of a WRITE
//! payload, or by the device's `read_at`). A buffer holds plaintext
//! the client sent or is about to receive — the same exposure as freed heap
//! memory in the previous design.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::warn;

use crate::volume::{CpuExecutor, IoBuffer};

/// A unit of work for a worker thread.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Jobs queued beyond those running before senders wait. Each connection's
/// in-flight budget already bounds its jobs; this bounds the queue for all
/// connections together.
const QUEUE_DEPTH: usize = 1024;

/// Idle buffers kept by a server, in bytes, across all sizes…
pub(crate) const MAX_IDLE_BYTES: usize = 64 << 20;
/// …and at most this many of one size.
const MAX_IDLE_PER_CLASS: usize = 256;
/// The smallest buffer handed out; smaller requests share this size class.
const MIN_CLASS_SHIFT: u32 = 12;
/// Size classes: 4 KiB .. 2^(12+CLASSES-1) bytes (beyond: not pooled).
const CLASSES: usize = 14;

/// The server-wide engine: worker threads and buffers.
pub(crate) struct Shared {
    jobs: mpsc::Sender<Job>,
    workers: usize,
    buffers: Arc<BufferPool>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Starts `workers` threads (at least 1).
    pub(crate) fn new(workers: usize) -> Self {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("envol-nbd-{i}"))
                .spawn(move || work(&rx));
            if let Err(e) = spawned {
                // With at least one worker the server still makes progress;
                // with none, submit() answers every job by running it on a
                // blocking-pool thread instead.
                warn!(error = %e, "could not start an nbd worker thread");
            }
        }
        Self {
            jobs: tx,
            workers,
            buffers: Arc::new(BufferPool::default()),
        }
    }

    /// About one worker per core, at least two; `ENVOL_NBD_WORKERS` (a
    /// positive number) overrides.
    pub(crate) fn with_default_workers() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let n = std::env::var("ENVOL_NBD_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(cores.max(2));
        Self::new(n)
    }

    /// Queues `job` for a worker, waiting while the queue is full.
    pub(crate) async fn submit(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job).await {
            // No worker is left to take it (none could be started): run it
            // off the reactor anyway rather than leave a request unanswered.
            tokio::task::spawn_blocking(job);
        }
    }

    /// Queues `job` from a thread outside the async runtime, blocking while
    /// the queue is full.
    pub(crate) fn submit_blocking(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.jobs.blocking_send(job) {
            // No worker is left: run it here rather than leave a request
            // unanswered.
            job();
        }
    }

    pub(crate) fn buffers(&self) -> &Arc<BufferPool> {
        &self.buffers
    }
}

/// The workers take the CPU work of started reads (their decryption) off
/// the store's completion thread. Called from that thread, so it never
/// waits: with the queue full, the work runs where it was handed in.
impl CpuExecutor for Shared {
    fn execute(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        match self.jobs.try_send(work) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(work) | mpsc::error::TrySendError::Closed(work),
            ) => work(),
        }
    }
}

fn work(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = {
            // Only the receiving is under the lock; poisoning is harmless
            // here (nothing panics while holding it) but tolerated anyway.
            let mut rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.blocking_recv()
        };
        let Some(job) = job else { return };
        // Jobs catch their own panics to answer the client; this only keeps
        // the worker alive whatever happens.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            warn!("nbd worker job panicked");
        }
    }
}

/// Idle buffers by size class.
#[derive(Default)]
pub(crate) struct BufferPool {
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    classes: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
}

/// A buffer of `len` bytes on loan from a [`BufferPool`] (or a plain
/// allocation when too large to pool); goes back when dropped.
pub(crate) struct PooledBuf {
    buf: Vec<u8>,
    len: usize,
    pool: Option<Arc<BufferPool>>,
}

fn class_of(len: usize) -> Option<usize> {
    let size = len.max(1 << MIN_CLASS_SHIFT).checked_next_power_of_two()?;
    let class = (size.trailing_zeros() - MIN_CLASS_SHIFT) as usize;
    (class < CLASSES).then_some(class)
}

impl BufferPool {
    /// A buffer of exactly `len` bytes whose contents are unspecified (an
    /// earlier request's data, or zeros when freshly allocated).
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let Some(class) = class_of(len) else {
            return PooledBuf {
                buf: vec![0; len],
                len,
                pool: None,
            };
        };
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let taken = idle.classes[class].pop();
            if let Some(b) = &taken {
                idle.bytes -= b.len();
            }
            taken
        };
        // A fresh buffer is zeroed once (calloc: for large sizes, untouched
        // zero pages); a reused one is not cleared.
        let buf = reused.unwrap_or_else(|| vec![0; 1 << (class as u32 + MIN_CLASS_SHIFT)]);
        PooledBuf {
            buf,
            len,
            pool: Some(self.clone()),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let Some(class) = class_of(buf.len()) else {
            return;
        };
        // Freed after the lock is released (a large free may unmap).
        let mut evicted = Vec::new();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.classes[class].len() >= MAX_IDLE_PER_CLASS {
            return; // `buf` is freed: the pool never grows without bound.
        }
        // A buffer just used is likelier to be wanted again than one idle
        // since an earlier workload: without this, 64 MiB of 4 MiB buffers
        // from a fill kept every 1 MiB read of the next workload allocating
        // (and zeroing) a fresh buffer. Larger classes go first.
        while idle.bytes + buf.len() > MAX_IDLE_BYTES {
            let Some(victim) = (0..CLASSES)
                .rev()
                .find(|&c| c != class && !idle.classes[c].is_empty())
            else {
                break;
            };
            if let Some(old) = idle.classes[victim].pop() {
                idle.bytes -= old.len();
                evicted.push(old);
            }
        }
        if idle.bytes + buf.len() <= MAX_IDLE_BYTES {
            idle.bytes += buf.len();
            idle.classes[class].push(buf);
        }
        drop(idle);
        drop(evicted);
    }

    #[cfg(test)]
    fn idle(&self) -> (usize, usize) {
        let idle = self.idle.lock().unwrap();
        (idle.classes.iter().map(Vec::len).sum(), idle.bytes)
    }
}

impl PooledBuf {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A READ buffer travels through an asynchronous device as an
/// [`IoBuf`](crate::volume::IoBuf) and comes back in the reply.
impl IoBuffer for PooledBuf {
    fn bytes(&self) -> &[u8] {
        self.as_slice()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn buffers_are_reused_by_size_class() {
        let pool = Arc::new(BufferPool::default());
        let ptr = {
            let mut b = pool.take(1 << 20);
            assert_eq!(b.as_mut_slice().len(), 1 << 20);
            b.as_slice().as_ptr()
        };
        assert_eq!(pool.idle(), (1, 1 << 20));
        // Same class (1 MiB), cut to length.
        let b = pool.take(1000 * 1024);
        assert_eq!(b.as_slice().len(), 1000 * 1024);
        assert_eq!(b.as_slice().as_ptr(), ptr);
        assert_eq!(pool.idle(), (0, 0));
        // Tiny and empty requests share the smallest class.
        let tiny = pool.take(0);
        assert!(tiny.is_empty());
        drop((b, tiny));
        assert_eq!(pool.idle(), (2, (1 << 20) + 4096));
    }

    #[test]
    fn idle_buffers_are_capped_and_huge_ones_not_pooled() {
        let pool = Arc::new(BufferPool::default());
        let many: Vec<_> = (0..MAX_IDLE_PER_CLASS + 10)
            .map(|_| pool.take(4096))
            .collect();
        drop(many);
        assert_eq!(pool.idle().0, MAX_IDLE_PER_CLASS);
        let pool = Arc::new(BufferPool::default());
        let big: Vec<_> = (0..6).map(|_| pool.take(16 << 20)).collect();
        drop(big);
        assert_eq!(pool.idle(), (4, MAX_IDLE_BYTES));
        let huge = pool.take(64 << 20);
        assert_eq!(huge.as_slice().len(), 64 << 20);
        drop(huge);
        assert_eq!(pool.idle().1, MAX_IDLE_BYTES);
    }

    #[test]
    fn a_new_size_evicts_idle_buffers_of_another() {
        let pool = Arc::new(BufferPool::default());
        // A fill's 4 MiB buffers take the whole idle budget…
        let fill: Vec<_> = (0..16).map(|_| pool.take(4 << 20)).collect();
        drop(fill);
        assert_eq!(pool.idle(), (16, MAX_IDLE_BYTES));
        // …and a 1 MiB buffer returned after it is kept all the same.
        let ptr = pool.take(1 << 20).as_slice().as_ptr();
        assert_eq!(pool.idle(), (16, MAX_IDLE_BYTES - (3 << 20)));
        assert_eq!(pool.take(1 << 20).as_slice().as_ptr(), ptr, "reused");
        // A class never evicts its own buffers to make room.
        let pool = Arc::new(BufferPool::default());
        let big: Vec<_> = (0..5).map(|_| pool.take(16 << 20)).collect();
        drop(big);
        assert_eq!(pool.idle(), (4, MAX_IDLE_BYTES));
    }

    #[tokio::test]
    async fn workers_survive_panics_and_stop_with_the_pool() {
        let shared = Shared::new(2);
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..100 {
            let done = done.clone();
            let tx = tx.clone();
            shared
                .submit(Box::new(move || {
                    if i % 10 == 0 {
                        panic!("job {i}");
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(());
                }))
                .await;
        }
        drop(tx);
        while rx.recv().await.is_some() {}
        assert_eq!(done.load(Ordering::SeqCst), 90);
        drop(shared);
    }
}
