//! Volumes on Ceph RBD: the same bytes as a volume file, in an RBD image.
//!
//! - [`RbdAddress`]: `rbd:POOL/IMAGE` (the `rbd:` prefix is parsed by the
//!   caller; this is `POOL/IMAGE`).
//! - [`CephOptions`]: which cluster and which client (`--ceph-conf` /
//!   `CEPH_CONF`, `--ceph-id`, default `admin`), and the deadline of every
//!   Ceph operation.
//! - [`RbdBackend`]: one open image, a [`Backend`](crate::volume::Backend)
//!   whose reads, writes and flushes are librbd aio (many in flight), whose
//!   read-write attachment holds the image's exclusive lock, and which a
//!   [`take_over`](RbdBackend::take_over) by another server fences.
//!
//! librbd is loaded at run time ([`ffi`], the crate's second `unsafe`
//! exception); where it is absent every call fails with
//! [`RbdError::NotInstalled`].
//!
//! Layout: `address` and `error` are plain types; `ffi` owns the C
//! handles; `cluster` connects; `backend` is the volume's view. Each file
//! uses only those listed before it.

mod address;
mod backend;
mod cluster;
mod error;
#[allow(unsafe_code)]
mod ffi;

pub use address::RbdAddress;
pub use backend::{RbdBackend, TakeOver, attached_by};
pub use cluster::{CephOptions, DEFAULT_OP_TIMEOUT};
pub use error::{EBLOCKLISTED, Fenced, RbdError, is_fenced};

/// Ends the process with `status` at once, without the C++ static
/// destructors that crash while librados clients are still open (a fenced
/// server's are).
pub fn exit_immediately(status: i32) -> ! {
    ffi::exit_immediately(status)
}

/// Whether librados and librbd can be loaded on this machine.
pub fn librbd_installed() -> bool {
    ffi::installed()
}
