//! Volumes on Ceph RBD: the same bytes as a volume file, in an RBD image.
//!
//! SKELETON (issue 13, being built): the public surface other layers code
//! against. Bodies are filled in by the RBD backend work; signatures change
//! only with a reason.
//!
//! - [`RbdAddress`]: `rbd:POOL/IMAGE` (the `rbd:` prefix is parsed by the
//!   caller; this is `POOL/IMAGE`).
//! - [`CephOptions`]: which cluster and which client (`--ceph-conf` /
//!   `CEPH_CONF`, `--ceph-id`, default `admin`).
//! - [`RbdBackend`]: one open image, a [`Backend`](crate::volume::Backend).
//!   librbd is loaded at run time; where it is absent every call fails with
//!   [`RbdError::NotInstalled`].

use std::fmt;
use std::path::PathBuf;

use crate::volume::attachment::AttachMode;

/// Which Ceph cluster, as which client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CephOptions {
    /// A ceph.conf; `None`: librados's own search (`CEPH_CONF`, then
    /// /etc/ceph/ceph.conf, ...).
    pub conf: Option<PathBuf>,
    /// Client id without `client.` (Ceph's `--id`); `None` means `admin`.
    pub id: Option<String>,
}

/// An image in a pool: `POOL/IMAGE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RbdAddress {
    pub pool: String,
    pub image: String,
}

impl RbdAddress {
    /// Parses `POOL/IMAGE` (both non-empty, no further `/`, no NUL).
    pub fn parse(s: &str) -> Result<RbdAddress, RbdError> {
        let bad = || RbdError::Address(s.to_string());
        let (pool, image) = s.split_once('/').ok_or_else(bad)?;
        if pool.is_empty() || image.is_empty() || image.contains('/') || s.contains('\0') {
            return Err(bad());
        }
        Ok(RbdAddress {
            pool: pool.to_string(),
            image: image.to_string(),
        })
    }
}

impl fmt::Display for RbdAddress {
    /// `rbd:POOL/IMAGE`, as the user wrote it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rbd:{}/{}", self.pool, self.image)
    }
}

/// What can go wrong reaching an image. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum RbdError {
    #[error("librbd is not installed: apt-get install librbd1")]
    NotInstalled,
    #[error("{0:?} is not an RBD address: expected rbd:POOL/IMAGE")]
    Address(String),
    #[error("{what}: {source}")]
    Ceph {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// One open RBD image.
#[derive(Debug)]
pub struct RbdBackend {
    _private: (),
}

impl RbdBackend {
    /// Opens an existing image (`ReadOnly`: librbd's read-only open).
    pub fn open(
        ceph: &CephOptions,
        address: &RbdAddress,
        mode: AttachMode,
    ) -> Result<RbdBackend, RbdError> {
        let _ = (ceph, address, mode);
        Err(RbdError::NotInstalled)
    }

    /// Creates the image with `size` bytes (features layering,
    /// exclusive-lock, object-map, fast-diff) and opens it read-write.
    /// An existing image is refused unless `force` (then it is reused:
    /// resized to `size`, its superblocks overwritten by the caller).
    pub fn create(
        ceph: &CephOptions,
        address: &RbdAddress,
        size: u64,
        force: bool,
    ) -> Result<RbdBackend, RbdError> {
        let _ = (ceph, address, size, force);
        Err(RbdError::NotInstalled)
    }

    /// Whether the image exists.
    pub fn exists(ceph: &CephOptions, address: &RbdAddress) -> Result<bool, RbdError> {
        let _ = (ceph, address);
        Err(RbdError::NotInstalled)
    }
}

fn not_built() -> std::io::Error {
    std::io::Error::other(RbdError::NotInstalled.to_string())
}

impl crate::volume::Backend for RbdBackend {
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> std::io::Result<()> {
        Err(not_built())
    }
    fn write_at(&self, _offset: u64, _data: &[u8]) -> std::io::Result<()> {
        Err(not_built())
    }
    fn flush(&self) -> std::io::Result<()> {
        Err(not_built())
    }
    fn punch_hole(&self, _offset: u64, _len: u64) -> std::io::Result<()> {
        Err(not_built())
    }
    fn size(&self) -> std::io::Result<u64> {
        Err(not_built())
    }
    fn lock_attachment(
        &self,
        _mode: AttachMode,
    ) -> Result<(), crate::volume::attachment::AttachmentError> {
        Err(crate::volume::attachment::AttachmentError::Lock(not_built()))
    }
}
