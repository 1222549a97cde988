//! A frozen view of a volume that keeps being written: what a snapshot of
//! an attached file volume reads (issue 14, item 1).
//!
//! [`Freezer`] sits on the write path of every [`Volume`](super::Volume)
//! (writes, trims, write-zeroes, stored writes). Each write holds its
//! *gate* shared for its whole length, so freezing — which takes the gate
//! exclusively — waits for the writes in flight and holds new ones back
//! for as long as it takes to restart change tracking: that instant is the
//! snapshot's point in time. Every write acknowledged before it is in the
//! view; none started after it is.
//!
//! From then on the view is kept by **copy-before-write**: the first write
//! to a chunk the snapshot still has to read first copies that chunk's
//! stored bytes aside (in memory), and the snapshot reads the copy instead
//! of the volume. Chunks the snapshot has read, or does not need, cost a
//! write nothing but one flag load. The copies are bounded
//! (`copy_limit`): a write that would exceed the bound *fails the
//! snapshot* (every later read of the view says why), never the write.
//!
//! Why memory and not a file beside the volume: the copies only live while
//! an upload runs, a chunk leaves memory as soon as the snapshot has read
//! it, and the bound makes the worst case explicit; a file would need its
//! own space accounting, clean-up after a crash and encryption questions
//! (it would hold ciphertext, but outside the volume's own lock).
//!
//! Chunk states, under one mutex with a condition variable: *pending*
//! (needed, untouched), *busy* (being copied by a writer or read by the
//! snapshot: others wait), *copied* (its bytes are aside); a chunk not in
//! the table is not needed, or already read. A writer and the snapshot
//! never read a chunk's stored bytes while a write to it is under way:
//! the writer copies before writing, and the snapshot marks it busy
//! before reading, which holds back the writer's copy (and so its write).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use crate::volume::backend::Backend;
use crate::volume::change_map::CHUNK_SIZE;

/// The write side of a volume's freezing: one per volume.
#[derive(Default)]
pub(crate) struct Freezer {
    /// Shared by every write for its length; exclusive while freezing.
    gate: RwLock<()>,
    /// Whether a view is active (a fast check on every write).
    active: AtomicBool,
    view: Mutex<Option<Arc<FrozenView>>>,
}

/// A write's pass through the gate: freezing waits until it is dropped.
pub(crate) type WritePass<'a> = RwLockReadGuard<'a, ()>;

impl Freezer {
    /// Enters the gate for a write of data-area bytes `[offset,
    /// offset+len)` and, if a view is active, copies aside the chunks it
    /// covers that the view still needs. Never fails the write: a copy
    /// that cannot be made fails the view instead.
    pub(crate) fn enter_write(
        &self,
        backend: &dyn Backend,
        data_offset: u64,
        offset: u64,
        len: u64,
    ) -> WritePass<'_> {
        let pass = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        // Set only under the exclusive gate: stable while the pass is held
        // (a view may end meanwhile; then the copies are merely wasted).
        if len > 0 && self.active.load(Ordering::Acquire) {
            let view = self.lock_view().clone();
            if let Some(view) = view {
                let first = offset / CHUNK_SIZE;
                let last = (offset + len - 1) / CHUNK_SIZE;
                for chunk in first..=last {
                    view.copy_before_write(backend, data_offset, chunk);
                }
            }
        }
        pass
    }

    /// Runs `at_the_instant` with every write drained and held back; it
    /// returns its result and the chunks the view must keep. Then starts
    /// that view, chunk `c` being `chunk_len(c)` bytes, with copies bounded
    /// by `copy_limit` bytes. Refused while another view is active.
    pub(crate) fn freeze<T>(
        &self,
        chunk_len: impl Fn(u64) -> u64,
        copy_limit: u64,
        at_the_instant: impl FnOnce() -> io::Result<(T, Vec<u64>)>,
    ) -> io::Result<(T, Arc<FrozenView>)> {
        let _exclusive = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let mut slot = self.lock_view();
        if slot.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a snapshot of this volume is already being taken",
            ));
        }
        let (taken, chunks) = at_the_instant()?;
        let pending = chunks
            .into_iter()
            .map(|c| (c, State::Pending { len: chunk_len(c) }))
            .collect();
        let view = Arc::new(FrozenView {
            state: Mutex::new(Table {
                chunks: pending,
                copied_bytes: 0,
                failed: None,
            }),
            changed: Condvar::new(),
            copy_limit,
        });
        *slot = Some(view.clone());
        self.active.store(true, Ordering::Release);
        Ok((taken, view))
    }

    /// Ends `view` (if it is the active one): writes stop copying, and the
    /// copies still held are freed.
    pub(crate) fn thaw(&self, view: &Arc<FrozenView>) {
        let mut slot = self.lock_view();
        if slot.as_ref().is_some_and(|v| Arc::ptr_eq(v, view)) {
            *slot = None;
            self.active.store(false, Ordering::Release);
        }
        drop(slot);
        view.release();
    }

    fn lock_view(&self) -> MutexGuard<'_, Option<Arc<FrozenView>>> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum State {
    Pending { len: u64 },
    Busy,
    Copied(Vec<u8>),
}

struct Table {
    chunks: HashMap<u64, State>,
    copied_bytes: u64,
    /// Why the view can no longer be read, once it cannot.
    failed: Option<String>,
}

/// The volume's stored chunks as they were at the freeze.
pub struct FrozenView {
    state: Mutex<Table>,
    changed: Condvar,
    copy_limit: u64,
}

/// How many chunks a view still holds for its snapshot, and how much of it
/// is copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewUsage {
    pub chunks_left: u64,
    pub copied_bytes: u64,
}

impl FrozenView {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Table>) -> MutexGuard<'a, Table> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn usage(&self) -> ViewUsage {
        let table = self.lock();
        ViewUsage {
            chunks_left: table.chunks.len() as u64,
            copied_bytes: table.copied_bytes,
        }
    }

    /// A writer's part: copies `chunk` aside if the view still needs it
    /// as it is.
    fn copy_before_write(&self, backend: &dyn Backend, data_offset: u64, chunk: u64) {
        let mut table = self.lock();
        loop {
            match table.chunks.get(&chunk) {
                None | Some(State::Copied(_)) => return,
                Some(State::Busy) => table = self.wait(table),
                Some(&State::Pending { len }) => {
                    if table.failed.is_some() {
                        table.chunks.remove(&chunk);
                        return;
                    }
                    if table.copied_bytes + len > self.copy_limit {
                        table.failed = Some(format!(
                            "the writes during the snapshot needed more than {} MiB of copies (the copy-aside limit); the writes went on, the snapshot stopped",
                            self.copy_limit >> 20
                        ));
                        table.chunks.clear();
                        table.copied_bytes = 0;
                        self.changed.notify_all();
                        return;
                    }
                    table.chunks.insert(chunk, State::Busy);
                    table.copied_bytes += len;
                    drop(table);
                    let copy = read_chunk(backend, data_offset, chunk, len);
                    table = self.lock();
                    match copy {
                        Ok(bytes) if table.failed.is_none() => {
                            table.chunks.insert(chunk, State::Copied(bytes));
                        }
                        Ok(_) => {
                            table.chunks.remove(&chunk);
                        }
                        Err(e) => {
                            table.failed = Some(format!("copying chunk {chunk} aside failed: {e}"));
                            table.chunks.clear();
                            table.copied_bytes = 0;
                        }
                    }
                    self.changed.notify_all();
                    return;
                }
            }
        }
    }

    /// The snapshot's part: chunk `chunk` as stored at the freeze (once:
    /// the view forgets it then).
    pub(crate) fn read(
        &self,
        backend: &dyn Backend,
        data_offset: u64,
        chunk: u64,
    ) -> io::Result<Vec<u8>> {
        let mut table = self.lock();
        loop {
            if let Some(reason) = &table.failed {
                return Err(io::Error::other(reason.clone()));
            }
            match table.chunks.get(&chunk) {
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "chunk {chunk} is not in this snapshot's view (not needed, or already read)"
                        ),
                    ));
                }
                Some(State::Busy) => table = self.wait(table),
                Some(State::Copied(_)) => {
                    if let Some(State::Copied(bytes)) = table.chunks.remove(&chunk) {
                        table.copied_bytes -= bytes.len() as u64;
                        self.changed.notify_all();
                        return Ok(bytes);
                    }
                }
                Some(&State::Pending { len }) => {
                    table.chunks.insert(chunk, State::Busy);
                    drop(table);
                    let bytes = read_chunk(backend, data_offset, chunk, len);
                    table = self.lock();
                    table.chunks.remove(&chunk);
                    self.changed.notify_all();
                    return bytes;
                }
            }
        }
    }

    /// Frees every copy and wakes any waiter: the view is over.
    fn release(&self) {
        let mut table = self.lock();
        table.chunks.clear();
        table.copied_bytes = 0;
        table
            .failed
            .get_or_insert_with(|| "the snapshot ended".into());
        self.changed.notify_all();
    }
}

fn read_chunk(
    backend: &dyn Backend,
    data_offset: u64,
    chunk: u64,
    len: u64,
) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len as usize];
    backend.read_at(data_offset + chunk * CHUNK_SIZE, &mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
#[path = "frozen_view_tests.rs"]
mod tests;
