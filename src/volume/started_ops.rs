//! [`StartedOps`]: counts a volume's started (asynchronous) operations, so
//! that the volume is never taken apart while one of them is still in the
//! store.
//!
//! A started operation's completion runs on the store's thread (librbd's
//! callback thread) and needs pieces of the volume there: the cipher to
//! decrypt a read, the backend to start FUA's flush. If the volume could
//! be dropped while such a completion is pending, the completion would be
//! left holding the last reference to those pieces, and they would be
//! dropped on the store's thread — the image closed from inside librbd's
//! own callback, the key schedules wiped after the server said the keys
//! were gone. Instead every started operation holds an [`OpToken`], and the
//! volume's `Drop` waits (bounded) until every token is gone; each
//! completion drops its pieces of the volume before its token.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a dropped volume waits for its started operations. A store
/// that answers nothing for this long (librbd gives up on an unreachable
/// cluster well before: see the RBD backend's operation timeout) is not
/// waited for any more; the volume is dropped anyway, and whatever the
/// pending completions still hold goes with the last of them.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// The count of operations started and not yet completed.
#[derive(Default)]
pub(crate) struct StartedOps {
    count: Mutex<usize>,
    idle: Condvar,
}

/// One started operation; dropping it (when the completion has run, or
/// has been dropped unrun) ends the operation.
pub(crate) struct OpToken {
    ops: Arc<StartedOps>,
}

impl StartedOps {
    /// Counts one more operation until the token is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> OpToken {
        *self.lock() += 1;
        OpToken { ops: self.clone() }
    }

    /// Waits until no operation is pending, at most `limit`; returns how
    /// many still are.
    pub(crate) fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut count = self.lock();
        while *count > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            count = self
                .idle
                .wait_timeout(count, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // Nothing panics while holding it; poisoning is tolerated anyway.
        self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OpToken {
    /// A token for a follow-up operation (FUA's flush), counted on its own:
    /// taken while this one is still held, so the count never touches zero
    /// between the two.
    pub(crate) fn another(&self) -> OpToken {
        self.ops.start()
    }
}

impl Drop for OpToken {
    fn drop(&mut self) {
        let mut count = self.ops.lock();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.ops.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_every_token_and_gives_up_at_the_limit() {
        let ops = Arc::new(StartedOps::default());
        assert_eq!(ops.wait_idle(Duration::ZERO), 0);
        let first = ops.start();
        let second = first.another();
        assert_eq!(ops.wait_idle(Duration::ZERO), 2);
        drop(first);
        assert_eq!(ops.wait_idle(Duration::from_millis(20)), 1);
        let waiter = {
            let ops = ops.clone();
            std::thread::spawn(move || ops.wait_idle(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(second);
        assert_eq!(waiter.join().ok(), Some(0));
    }
}
