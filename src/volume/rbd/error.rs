//! What can go wrong reaching an image, and the error of a fenced server.

use std::io;

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
    /// `ENOENT` opening an image.
    #[error("{0} does not exist")]
    NoImage(String),
    /// `ENOENT` opening a pool.
    #[error("Ceph pool {0:?} does not exist")]
    NoPool(String),
    /// Creating over an existing image without `force`.
    #[error("{0} already exists (--force reuses it)")]
    Exists(String),
    /// Reusing (`--force`) an image another server has attached.
    #[error(
        "{image} is attached read-write by Ceph client {}: --force does not take a volume from its writer",
        holders.join(", ")
    )]
    InUse { image: String, holders: Vec<String> },
    /// A take-over refused: the holder still has its watch on the image.
    #[error(
        "{image} is attached read-write by Ceph client {holder}, which is alive (its watch on the image is current): --take-over waits until it has been gone for Ceph's watch timeout; --force fences it at once"
    )]
    HolderAlive { image: String, holder: String },
}

impl RbdError {
    /// `what` failed with librbd's `errno`.
    pub(super) fn ceph(what: impl Into<String>, errno: i32) -> RbdError {
        RbdError::Ceph {
            what: what.into(),
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

/// `EBLOCKLISTED`: Ceph's name for `ESHUTDOWN`, what the OSDs answer a
/// client on the blocklist.
pub const EBLOCKLISTED: i32 = 108;

/// An operation refused because Ceph blocklisted this client: another
/// server broke this one's lock (a take-over) and fenced it. Nothing it
/// writes reaches the image any more. Carried inside an [`io::Error`] (find
/// it with [`is_fenced`]); its errno is `ESHUTDOWN`.
#[derive(Debug, thiserror::Error)]
#[error(
    "this server was fenced: another server took {image} over and Ceph blocklisted this client ({client}) (ESHUTDOWN)"
)]
pub struct Fenced {
    pub image: String,
    pub client: String,
}

impl Fenced {
    /// The errno Ceph reports for it.
    pub const ERRNO: i32 = EBLOCKLISTED;
}

/// Whether `e` says this server was fenced.
pub fn is_fenced(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Fenced>())
}
