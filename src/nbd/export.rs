//! Exports: what the server offers by name, and what makes one valid.

use std::sync::Arc;

use thiserror::Error;

use super::protocol::{
    MAX_STRING_LEN, TFLAG_CAN_MULTI_CONN, TFLAG_HAS_FLAGS, TFLAG_READ_ONLY, TFLAG_SEND_CACHE,
    TFLAG_SEND_DF, TFLAG_SEND_FAST_ZERO, TFLAG_SEND_FLUSH, TFLAG_SEND_FUA, TFLAG_SEND_TRIM,
    TFLAG_SEND_WRITE_ZEROES,
};
use crate::volume::{BlockDevice, BlockSizes};

/// One named device the server offers.
#[derive(Clone)]
pub struct Export {
    /// Name clients ask for (`nbd+unix:///NAME?socket=...`). The first
    /// export is also the default export, reached with the empty name.
    pub name: String,
    /// Shown by `nbdinfo` and `NBD_OPT_LIST`; may be empty.
    pub description: String,
    pub device: Arc<dyn BlockDevice>,
    /// Refuse writes even if the device accepts them.
    pub read_only: bool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.device.size())
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// Why a set of exports cannot be served.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("no exports given")]
    Empty,
    #[error("export name {0:?} is used twice")]
    DuplicateName(String),
    #[error("export name {0:?} is not a valid NBD string (no NUL, at most 4096 bytes)")]
    BadName(String),
    #[error("description of export {0:?} is longer than 4096 bytes or contains NUL")]
    BadDescription(String),
    #[error("no export named {0:?}")]
    UnknownExport(String),
    #[error("export {0:?} is already being detached")]
    Detaching(String),
    #[error("export {name:?} has invalid block sizes {sizes:?}: {reason}")]
    BadBlockSizes {
        name: String,
        sizes: BlockSizes,
        reason: &'static str,
    },
}

/// One export's name, description and block sizes, as the protocol needs them.
pub(crate) fn check_export(e: &Export) -> Result<(), ExportError> {
    if !valid_string(&e.name) {
        return Err(ExportError::BadName(e.name.clone()));
    }
    if !valid_string(&e.description) {
        return Err(ExportError::BadDescription(e.name.clone()));
    }
    check_block_sizes(e.device.block_sizes()).map_err(|reason| ExportError::BadBlockSizes {
        name: e.name.clone(),
        sizes: e.device.block_sizes(),
        reason,
    })
}

impl Export {
    /// Whether writes are refused, by configuration or by the device.
    pub fn is_read_only(&self) -> bool {
        self.read_only || self.device.read_only()
    }

    /// Transmission flags as sent in `NBD_INFO_EXPORT` / after EXPORT_NAME.
    ///
    /// `CAN_MULTI_CONN` is honest: every connection to an export calls the
    /// same device object, so a FLUSH on any connection covers writes made
    /// through all of them. `SEND_DF` is only legal once structured replies
    /// are on; we always send a READ as a single chunk, so DF costs nothing.
    /// `SEND_FAST_ZERO` is advertised with `SEND_WRITE_ZEROES` whatever the
    /// device can do: the spec lets a server that cannot zero fast answer
    /// every fast-zero request with a quick ENOTSUP, which is still useful
    /// to the client (it learns to skip pre-zeroing).
    pub(crate) fn transmission_flags(&self, structured_replies: bool) -> u16 {
        let mut flags =
            TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_CACHE | TFLAG_CAN_MULTI_CONN;
        if self.is_read_only() {
            flags |= TFLAG_READ_ONLY;
        } else {
            flags |=
                TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO;
        }
        if structured_replies {
            flags |= TFLAG_SEND_DF;
        }
        flags
    }
}

/// NBD strings: UTF-8 (guaranteed by `String`), no NUL, at most 4096 bytes.
pub(crate) fn valid_string(s: &str) -> bool {
    s.len() <= MAX_STRING_LEN && !s.contains('\0')
}

/// The constraints `doc/proto.md` puts on advertised block sizes; a device
/// that breaks them would make well-behaved clients misbehave.
fn check_block_sizes(s: BlockSizes) -> Result<(), &'static str> {
    if !s.minimum.is_power_of_two() || s.minimum > 65536 {
        return Err("minimum must be a power of two no larger than 64 KiB");
    }
    if !s.preferred.is_power_of_two() || s.preferred < s.minimum.max(512) {
        return Err("preferred must be a power of two at least max(minimum, 512)");
    }
    if s.maximum < s.preferred {
        return Err("maximum must be at least preferred");
    }
    Ok(())
}
