//! Read-ahead for a client that reads a device in order with one request
//! in flight, on a plain device (not an asynchronous store): while the
//! connection's reader answers one READ, a worker reads and decrypts the
//! range right after it, so the next READ finds its plaintext ready.
//!
//! Why: `nbdcopy` to a pipe or a character device (`/dev/null`) copies
//! synchronously — a BLOCK_STATUS, then a READ of 256 KiB, then the next —
//! so every request waits for the one before, and each READ's decryption
//! (a quarter of the server's time on it) sat on that critical path while
//! the second core idled. With the next range decrypted on a worker during
//! the reply, the client's turn-around and the BLOCK_STATUS round trip,
//! the reader only copies it into the socket.
//!
//! Only what cannot go stale is reused: the device's
//! [`contents_generation`](crate::volume::BlockDevice::contents_generation)
//! is read before the read-ahead reads, and its data is used only if the
//! generation has not moved when the READ for it arrives: any write, trim
//! or zeroing stored meanwhile — on any connection — throws it away. (A
//! write whose reply the client has seen has moved it on; one still in
//! flight races the READ, which may then see either.) The read-ahead reads
//! only what is in memory (`try_read_at`): it never waits for a disk, and
//! a miss just leaves the READ to the usual path.
//!
//! At most [`DEPTH`] ranges per connection, each at most
//! [`READ_AHEAD_MAX`] bytes, taken in order by the next READs, and all
//! dropped by a READ of anything else.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::workers::{BufferPool, PooledBuf, Shared};
use crate::volume::BlockDevice;

/// READs of at least this many bytes that continue the last one start a
/// read-ahead (smaller ones are cheaper to decrypt than to hand off).
pub(crate) const READ_AHEAD_MIN: u32 = 128 * 1024;
/// …and of at most this many (the buffers a connection may hold unasked).
pub(crate) const READ_AHEAD_MAX: u32 = 1 << 20;
/// Ranges read ahead of the client. One is not enough: the worker gets a
/// range only as the READ before it is answered, and waking it, reading
/// and decrypting 256 KiB took longer than the client's turn-around and
/// its next BLOCK_STATUS (measured: the reader still waited for it on
/// most READs). Two keep it a whole request ahead.
const DEPTH: usize = 2;

/// A connection's read-ahead.
#[derive(Default)]
pub(crate) struct ReadAhead {
    slot: Mutex<Slot>,
    /// A read-ahead that was running has finished.
    finished: Condvar,
}

#[derive(Default)]
struct Slot {
    /// Where the last READ ended: a READ that starts there continues it.
    next: Option<u64>,
    /// In the order the client will ask for them.
    ahead: VecDeque<Entry>,
    /// Tells read-aheads apart: one whose ticket is no longer here was
    /// given up, and its result is dropped.
    tickets: u64,
}

struct Entry {
    range: (u64, u32),
    ticket: u64,
    state: State,
}

enum State {
    /// Waiting for a worker: a READ that wants it takes it back rather
    /// than wait behind other jobs.
    Queued,
    /// A worker is reading it (memory only: it finishes soon).
    Running,
    Ready {
        generation: u64,
        data: PooledBuf,
    },
}

/// A read-ahead to hand to a worker ([`ReadAhead::run`]).
pub(crate) struct Planned {
    range: (u64, u32),
    ticket: u64,
}

impl Slot {
    fn entry(&mut self, ticket: u64) -> Option<&mut Entry> {
        self.ahead.iter_mut().find(|e| e.ticket == ticket)
    }
}

impl ReadAhead {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a READ at `offset` continues the last one.
    pub(crate) fn continues(&self, offset: u64) -> bool {
        self.lock().next == Some(offset)
    }

    /// The read-ahead's data for a READ of `len` bytes at `offset`, if one
    /// read exactly that range and the device's contents have not changed
    /// since (`generation` is the device's now). Waits for a read-ahead of
    /// that range that is running. A READ of any other range drops every
    /// read-ahead (the client went elsewhere). Also notes where this READ
    /// ends.
    pub(crate) fn take(&self, offset: u64, len: u32, generation: Option<u64>) -> Option<PooledBuf> {
        let mut slot = self.lock();
        slot.next = offset.checked_add(u64::from(len));
        loop {
            match slot.ahead.front() {
                None => return None,
                Some(e) if e.range != (offset, len) => {
                    slot.ahead.clear();
                    return None;
                }
                Some(Entry {
                    state: State::Running,
                    ..
                }) => {
                    slot = self.finished.wait(slot).unwrap_or_else(|p| p.into_inner());
                }
                Some(_) => break,
            }
        }
        match slot.ahead.pop_front().map(|e| e.state) {
            Some(State::Ready {
                generation: then,
                data,
            }) if generation == Some(then) => Some(data),
            _ => None,
        }
    }

    /// For a READ of `len` bytes at `offset` that [continues](Self::continues)
    /// the one before: the next ranges of the same length right after it
    /// (up to [`DEPTH`], within `size`) not yet read ahead, queued to be
    /// [run](Self::run) by workers.
    pub(crate) fn plan(&self, offset: u64, len: u32, size: u64) -> Vec<Planned> {
        let mut planned = Vec::new();
        if !(READ_AHEAD_MIN..=READ_AHEAD_MAX).contains(&len) {
            return planned;
        }
        let mut slot = self.lock();
        let mut start = offset;
        for _ in 0..DEPTH {
            let Some(next) = start.checked_add(u64::from(len)) else {
                break;
            };
            start = next;
            if start
                .checked_add(u64::from(len))
                .is_none_or(|end| end > size)
            {
                break;
            }
            if slot.ahead.iter().any(|e| e.range == (start, len)) {
                continue;
            }
            slot.tickets += 1;
            let ticket = slot.tickets;
            slot.ahead.push_back(Entry {
                range: (start, len),
                ticket,
                state: State::Queued,
            });
            planned.push(Planned {
                range: (start, len),
                ticket,
            });
        }
        planned
    }

    /// Reads a planned range, on a worker: the device's generation first,
    /// then the data if it is all in memory. Gives up at once if the
    /// range was taken back while queued; drops its data if it was given
    /// up while running.
    pub(crate) fn run(
        &self,
        planned: Planned,
        device: &dyn BlockDevice,
        buffers: &Arc<BufferPool>,
    ) {
        let Planned { range, ticket } = planned;
        match self.lock().entry(ticket) {
            Some(e) if matches!(e.state, State::Queued) => e.state = State::Running,
            _ => return,
        }
        let generation = device.contents_generation();
        let mut data = buffers.take(range.1 as usize);
        // A panicking device must not leave the entry running: the READ
        // for this range would wait for it for ever.
        let read = generation.is_some()
            && matches!(
                catch_unwind(AssertUnwindSafe(
                    || device.try_read_at(range.0, data.as_mut_slice())
                )),
                Ok(Ok(true))
            );
        let mut slot = self.lock();
        match (generation, read) {
            (Some(generation), true) => {
                if let Some(e) = slot.entry(ticket) {
                    e.state = State::Ready { generation, data };
                }
            }
            _ => slot.ahead.retain(|e| e.ticket != ticket),
        }
        self.finished.notify_all();
    }

    /// Queues `planned` on the server's workers.
    pub(crate) fn start(
        self: &Arc<Self>,
        planned: Vec<Planned>,
        shared: &Shared,
        device: &Arc<dyn BlockDevice>,
    ) {
        for p in planned {
            let me = self.clone();
            let buffers = shared.buffers().clone();
            let device = device.clone();
            shared.submit_blocking(Box::new(move || me.run(p, &*device, &buffers)));
        }
    }
}

#[cfg(test)]
#[path = "read_ahead_tests.rs"]
mod tests;
