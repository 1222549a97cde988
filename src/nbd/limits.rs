//! What a stranger can hold of a server: the limits every connection is
//! served under, and the listener-wide in-flight budget both transmission
//! loops draw on.
//!
//! * [`MAX_INFLIGHT_BYTES`]: bytes buffered for in-flight requests across
//!   all connections of one listener (on top of each connection's own
//!   [`IN_FLIGHT_BYTES`](super::IN_FLIGHT_BYTES)). Requests wait for it;
//!   nothing fails. The Unix socket and TCP each have a budget of their
//!   own, as each has its own connection count: TCP strangers that hold
//!   theirs (a client taking a few bytes of replies now and then is never
//!   cut off) cannot make the socket's owner wait.
//! * [`MAX_CONNECTIONS`]: connections per listener (Unix socket, TCP); more
//!   are closed at accept. Counting each listener apart keeps the owner's
//!   Unix-socket client in when TCP strangers fill their share.
//! * [`REQUEST_TIMEOUT`]: how long a request that has started arriving may
//!   stall (threaded loop: no bytes for that long; async loop: not complete
//!   within it), and how long a reply may wait for the client to take any
//!   of it. An idle connection between requests is never timed
//!   out.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default cap, per listener, on bytes buffered for in-flight requests.
pub const MAX_INFLIGHT_BYTES: u64 = 256 * 1024 * 1024;
/// Default cap on connections per listener. With the threaded loop's two
/// threads and two descriptors per connection, 256 per listener is at most
/// 1,024 connection threads and about 1,024 descriptors for both listeners
/// together — far above what one volume's clients use (the kernel client
/// opens one connection per `-C`, qemu one or a few), far below what
/// exhausts a host.
pub const MAX_CONNECTIONS: usize = 256;
/// Default request deadline (see the module documentation).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The limits a [`Server`](super::Server) serves under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_inflight: u64,
    pub(crate) max_connections: usize,
    pub(crate) request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inflight: MAX_INFLIGHT_BYTES,
            max_connections: MAX_CONNECTIONS,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// What a connection's transmission loop needs of the limits.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    pub(crate) budget: Arc<ServerBudget>,
    pub(crate) request_timeout: Duration,
}

impl ConnectionLimits {
    /// Limits with a budget of their own: one per listener, shared by its
    /// connections (clones share it).
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            budget: Arc::new(ServerBudget::new(limits.max_inflight)),
            request_timeout: limits.request_timeout,
        }
    }
}

/// A listener's in-flight budget: a fair (first come, first served)
/// semaphore of bytes, taken by async tasks and blocking threads alike.
/// A request asks for at most the whole budget, so the largest one still
/// proceeds once the others have drained.
#[derive(Debug)]
pub(crate) struct ServerBudget {
    bytes: Arc<Semaphore>,
    total: u32,
}

/// A share of the [`ServerBudget`], given back when dropped.
pub(crate) type ServerPermit = OwnedSemaphorePermit;

impl ServerBudget {
    /// A budget of `total` bytes (clamped to what a semaphore holds, and to
    /// at least one byte).
    pub(crate) fn new(total: u64) -> Self {
        let total = u32::try_from(total).unwrap_or(u32::MAX).max(1);
        Self {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// What a request costing `cost` takes: never more than the total.
    fn share(&self, cost: u32) -> u32 {
        cost.min(self.total)
    }

    pub(crate) fn try_acquire(&self, cost: u32) -> Option<ServerPermit> {
        self.bytes
            .clone()
            .try_acquire_many_owned(self.share(cost))
            .ok()
    }

    /// Waits for `cost` bytes (queued behind earlier waiters).
    pub(crate) async fn acquire(&self, cost: u32) -> ServerPermit {
        match self
            .bytes
            .clone()
            .acquire_many_owned(self.share(cost))
            .await
        {
            Ok(p) => p,
            // Never closed: we own the only handle that could close it.
            Err(_) => std::future::pending().await,
        }
    }

    /// [`ServerBudget::acquire`] from a blocking thread (outside any
    /// runtime): parks the thread until the permit is granted.
    pub(crate) fn acquire_blocking(&self, cost: u32) -> ServerPermit {
        block_on(self.acquire(cost))
    }
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives `future` on this thread, parking between polls. Only for futures
/// woken from other threads (a semaphore's), which need no reactor.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// The descriptors a server can hold at once for connections in
/// transmission: two per connection (the threaded loop's socket and its
/// clone for the writer) on each of `listeners` listeners capped at
/// `max_connections`. For the caller that owns the process (the CLI) to
/// size `RLIMIT_NOFILE` by at start-up: the library never changes process
/// limits, as other servers in the same process budget against them too.
pub fn descriptors_needed(max_connections: usize, listeners: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(listeners as u64)
        .saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_fairly_and_a_large_request_still_proceeds() {
        let budget = Arc::new(ServerBudget::new(100));
        let a = budget.try_acquire(60).expect("free");
        assert!(budget.try_acquire(60).is_none());
        // Larger than the whole budget: clamped, so it waits for everything
        // to drain instead of forever.
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.acquire_blocking(1000).num_permits())
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.join().unwrap(), 100);
        assert!(budget.try_acquire(100).is_some());
    }
}
