//! The volume's side of a snapshot taken while it is attached (issue 14,
//! item 1): one point in time, while writes keep flowing.
//!
//! - A store without snapshots of its own (a file): [`Volume::freeze`]
//!   drains the writes in flight, holds new ones back for the instant it
//!   takes to restart change tracking, and hands out a
//!   [`FrozenView`] kept by copy-before-write
//!   ([`frozen_view`](crate::volume::frozen_view)).
//! - A store with snapshots (an RBD image, asynchronous: its started
//!   writes cannot be held at a gate): [`Volume::snapshot_store`] restarts
//!   change tracking and then has the store take a snapshot, which librbd
//!   makes consistent with every write it completed before.
//!
//! Both restart change tracking *first*: a write completing in between is
//! in the new set (and, for RBD, perhaps in the snapshot too: uploaded
//! again next time, never missed).

use std::io;
use std::sync::Arc;

use super::Volume;
use crate::volume::change_map::{CHUNK_SIZE, Changes, chunk_count};
use crate::volume::device::BlockDevice;
use crate::volume::frozen_view::FrozenView;

impl Volume {
    /// Whether snapshots of this attached volume are store snapshots
    /// ([`snapshot_store`](Self::snapshot_store)) rather than a frozen
    /// view ([`freeze`](Self::freeze)).
    pub fn snapshots_in_store(&self) -> bool {
        self.backend.is_asynchronous()
    }

    /// Freezes the volume for a snapshot: at one instant, with no write in
    /// flight, change tracking restarts from `base` (the new snapshot's
    /// URL) and the view starts. The view keeps the chunks the taken
    /// changes name, or every chunk with `all_chunks` or when the changes
    /// are not exact. Copies are bounded by `copy_limit` bytes. Returns
    /// the changes taken (give them back with [`thaw`](Self::thaw) if the
    /// snapshot fails).
    pub fn freeze(
        &self,
        base: &str,
        all_chunks: bool,
        copy_limit: u64,
    ) -> io::Result<(Changes, Arc<FrozenView>)> {
        // Stored chunks under two keys would make a snapshot no key reads.
        self.check_single_key()?;
        if self.snapshots_in_store() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this volume's store takes snapshots of its own",
            ));
        }
        // The size at the freeze: a grow while the view lives adds chunks
        // the snapshot does not hold.
        let size = BlockDevice::size(self);
        let chunk_len = move |c: u64| size.saturating_sub(c * CHUNK_SIZE).min(CHUNK_SIZE);
        self.freezer.freeze(chunk_len, copy_limit, || {
            let taken = self.restart_changes(base)?;
            let needed = match (&taken, all_chunks) {
                (Changes::Exact { chunks, .. }, false) => chunks.clone(),
                _ => (0..chunk_count(size)).collect(),
            };
            Ok((taken, needed))
        })
    }

    /// Chunk `chunk` of the data area as stored when `view` was frozen;
    /// each chunk once.
    pub fn read_frozen(&self, view: &FrozenView, chunk: u64) -> io::Result<Vec<u8>> {
        view.read(&*self.backend, self.data_offset, chunk)
    }

    /// Ends `view`. With `give_back` (the snapshot failed), the changes
    /// it took are tracked again, so the next snapshot misses none.
    pub fn thaw(&self, view: &Arc<FrozenView>, give_back: Option<Changes>) {
        self.freezer.thaw(view);
        if let Some(taken) = give_back {
            self.merge_changes(taken);
        }
    }

    /// For a store with snapshots: restarts change tracking from `base`,
    /// then takes the store snapshot `name`. Returns the changes taken.
    /// If the store snapshot fails, they are given back.
    pub fn snapshot_store(&self, base: &str, name: &str) -> io::Result<Changes> {
        self.check_single_key()?;
        let taken = self.restart_changes(base)?;
        if let Err(e) = self.backend.create_store_snapshot(name) {
            self.merge_changes(taken);
            return Err(e);
        }
        Ok(taken)
    }

    /// The names of the store's own snapshots.
    pub fn store_snapshots(&self) -> io::Result<Vec<String>> {
        self.backend.store_snapshots()
    }

    /// Removes the store snapshot `name` (gone already is fine).
    pub fn remove_store_snapshot(&self, name: &str) -> io::Result<()> {
        self.backend.remove_store_snapshot(name)
    }
}
