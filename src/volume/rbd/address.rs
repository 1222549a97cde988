//! `rbd:POOL/IMAGE`: which image of which pool.

use std::fmt;

use super::error::RbdError;

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
