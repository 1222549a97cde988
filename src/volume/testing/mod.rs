//! Test support: simulated power loss, injected faults, an in-memory device.
//!
//! Compiled only for tests, benchmarks and fuzzing (`cfg(test)` or the
//! `testing` feature), never into the product. Integration tests and fuzz
//! targets put a [`Volume`](super::Volume) on these backends, or serve the
//! device over NBD. All are cheap handles (`Clone` or `Arc` shares the
//! state), so a test keeps one handle while the volume or server owns
//! another.
//!
//! * [`CrashBackend`]: an in-memory store whose writes sit in a volatile
//!   cache until synced, and which can lose power mid-operation.
//! * [`FaultyBackend`]: wraps another backend and fails chosen operations on
//!   chosen byte ranges with a chosen OS error.
//! * [`LatencyBackend`]: an asynchronous store whose operations complete
//!   after a delay on a completion thread, counting how many are in flight
//!   (the Ceph-like store the asynchronous paths are tested against).
//! * [`MemDevice`]: a [`BlockDevice`](super::BlockDevice) in memory, the one
//!   the NBD server tests and fuzz targets export.

pub mod crash_backend;
pub mod faulty_backend;
pub mod latency_backend;
pub mod mem_device;

pub use crash_backend::{CrashBackend, PowerLoss};
pub use faulty_backend::{Fault, FaultOp, Faults, FaultyBackend};
pub use latency_backend::{COMPLETION_THREAD, LatencyBackend};
pub use mem_device::MemDevice;

use super::backend::Backend;
use super::change_map::new_volume_record;
use super::change_record::CHANGE_MAP_OFFSET;
use super::superblock::{COPY_SIZE, SECONDARY_OFFSET, Superblock};

/// A new volume's bytes on `backend`, as `volume create` lays them out:
/// both superblock copies and the change record, flushed.
pub fn format_new_volume(backend: &dyn Backend, sb: &Superblock) {
    let mut bytes = sb.encode().unwrap();
    bytes.resize(COPY_SIZE, 0);
    backend.write_at(0, &bytes).unwrap();
    backend.write_at(SECONDARY_OFFSET, &bytes).unwrap();
    backend
        .write_at(CHANGE_MAP_OFFSET, &new_volume_record(sb))
        .unwrap();
    backend.flush().unwrap();
}
