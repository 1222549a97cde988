//! Where a volume lives, and the one place that opens it.
//!
//! A volume is a file (or block device) or an RBD image; the user writes a
//! path, or `rbd:POOL/IMAGE`. [`VolumeAddress`] is that choice, and
//! [`Store::open`] turns it into a [`Backend`]: everything else in the
//! envelope (superblocks, keys, the attachment lock) goes through the
//! `Backend` trait and does not care which.

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use crate::volume::rbd::{CephOptions, RbdAddress, RbdBackend, RbdError};
use crate::volume::{AttachMode, AttachmentError, Backend, DataKey, FileBackend, Superblock};
use crate::volume::{ChunkFetcher, HydratingBackend, Hydration, HydrationRecord};
use crate::volume::{Volume, VolumeError};
use std::sync::Arc;

/// The prefix that makes an argument an RBD image rather than a file. A
/// file whose name starts with it is written `./rbd:…`.
pub const RBD_PREFIX: &str = "rbd:";

/// A volume file (or block device), or an image in a Ceph cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeAddress {
    File(PathBuf),
    Rbd {
        image: RbdAddress,
        /// Which cluster, as which client.
        ceph: CephOptions,
    },
}

impl VolumeAddress {
    /// `rbd:POOL/IMAGE` (reached through `ceph`), or else a path. Only a
    /// malformed `rbd:` address is an error; whether a path exists is for
    /// whoever opens it.
    pub fn parse(s: &str, ceph: &CephOptions) -> Result<VolumeAddress, RbdError> {
        match s.strip_prefix(RBD_PREFIX) {
            Some(rest) => Ok(VolumeAddress::Rbd {
                image: RbdAddress::parse(rest).map_err(|_| RbdError::Address(s.to_string()))?,
                ceph: ceph.clone(),
            }),
            None => Ok(VolumeAddress::File(PathBuf::from(s))),
        }
    }

    /// The RBD image, if this is one.
    pub fn rbd_image(&self) -> Option<&RbdAddress> {
        match self {
            VolumeAddress::Rbd { image, .. } => Some(image),
            VolumeAddress::File(_) => None,
        }
    }

    /// The default NBD export name: a file's stem, an image's name.
    pub fn default_export_name(&self) -> String {
        match self {
            VolumeAddress::File(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            VolumeAddress::Rbd { image, .. } => image.image.clone(),
        }
    }
}

impl From<PathBuf> for VolumeAddress {
    fn from(path: PathBuf) -> VolumeAddress {
        VolumeAddress::File(path)
    }
}

impl From<&Path> for VolumeAddress {
    fn from(path: &Path) -> VolumeAddress {
        VolumeAddress::File(path.to_path_buf())
    }
}

impl fmt::Display for VolumeAddress {
    /// As the user wrote it: the path, or `rbd:POOL/IMAGE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeAddress::File(path) => write!(f, "{}", path.display()),
            VolumeAddress::Rbd { image, .. } => write!(f, "{image}"),
        }
    }
}

/// An open volume store, not yet wrapped in a [`Volume`].
#[derive(Debug)]
pub enum Store {
    File(FileBackend),
    Rbd(RbdBackend),
}

/// Why a store could not be opened: a file's or Ceph's own error, one line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Rbd(#[from] RbdError),
}

impl Store {
    /// Opens an existing volume for an attachment in `mode` (a file
    /// read-write unless `mode` is read-only; an image likewise through
    /// librbd). Takes no attachment lock: see [`Self::lock_attachment`].
    pub fn open(address: &VolumeAddress, mode: AttachMode) -> Result<Store, StoreError> {
        match address {
            VolumeAddress::File(path) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(mode == AttachMode::ReadWrite)
                    .open(path)?;
                Ok(Store::File(FileBackend::new(file)))
            }
            VolumeAddress::Rbd { image, ceph } => {
                Ok(Store::Rbd(RbdBackend::open(ceph, image, mode)?))
            }
        }
    }

    /// The store as the backend-agnostic rest of the code sees it.
    pub fn backend(&self) -> &dyn Backend {
        match self {
            Store::File(b) => b,
            Store::Rbd(b) => b,
        }
    }

    pub fn lock_attachment(&self, mode: AttachMode) -> Result<(), AttachmentError> {
        self.backend().lock_attachment(mode)
    }

    /// The open volume on this store (the store, and its attachment lock,
    /// now live as long as the volume).
    pub fn into_volume(self, superblock: &Superblock, key: DataKey) -> Result<Volume, VolumeError> {
        match self {
            Store::File(b) => Volume::open(b, superblock, key),
            Store::Rbd(b) => Volume::open(b, superblock, key),
        }
    }

    /// Opens the volume of `superblock` as it hydrates from `fetcher`
    /// (a lazy restore in progress: see `volume::hydrating_backend`), with
    /// the shared state background hydration drives.
    pub fn into_hydrating_volume(
        self,
        superblock: &Superblock,
        key: DataKey,
        record: HydrationRecord,
        fetcher: Arc<dyn ChunkFetcher>,
    ) -> Result<(Volume, Arc<Hydration>), VolumeError> {
        let inner: Box<dyn Backend> = match self {
            Store::File(b) => Box::new(b),
            Store::Rbd(b) => Box::new(b),
        };
        let hydration = Hydration::new(inner, superblock, record, fetcher);
        let volume = Volume::open(HydratingBackend(hydration.clone()), superblock, key)?;
        Ok((volume, hydration))
    }

    /// Opens the volume of a superblock that records a data-key
    /// re-encryption, with its old and new keys (an interrupted step is
    /// recovered first: see [`Volume::open_in_transition`]).
    pub fn into_transition_volume(
        self,
        superblock: &Superblock,
        old: DataKey,
        new: DataKey,
    ) -> Result<Volume, VolumeError> {
        match self {
            Store::File(b) => Volume::open_in_transition(b, superblock, old, new),
            Store::Rbd(b) => Volume::open_in_transition(b, superblock, old, new),
        }
    }
}

/// Opens the store snapshot `name` of the volume at `address`, read-only:
/// the view of an attached `rbd:` volume that its server froze. A file
/// has no store snapshots.
pub fn open_store_snapshot(
    address: &VolumeAddress,
    name: &str,
) -> Result<std::sync::Arc<dyn Backend>, StoreError> {
    match address {
        VolumeAddress::File(path) => Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("{}: a file volume has no store snapshots", path.display()),
        ))),
        VolumeAddress::Rbd { image, ceph } => Ok(std::sync::Arc::new(RbdBackend::open_snapshot(
            ceph, image, name,
        )?)),
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
