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
