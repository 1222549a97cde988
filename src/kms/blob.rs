//! The ciphertext blob: what Encrypt and GenerateDataKey* hand out and
//! Decrypt takes back. Opaque to clients, but it names the master key and the
//! key version that sealed it, so Decrypt needs no KeyId and old versions keep
//! decrypting after a rotation.
//!
//! ```text
//! offset  size  field
//!      0     3  magic "EVK"
//!      3     1  format version (1)
//!      4    16  key id (UUID bytes)
//!     20     4  key version (u32, big endian)
//!     24    12  AES-GCM nonce (random)
//!     36     n  AES-256-GCM ciphertext of the plaintext
//!   36+n    16  GCM tag
//! ```
//!
//! Associated data = the first 24 bytes (so key id and version cannot be
//! swapped) followed by the canonical encryption context:
//! `u32 count`, then for each pair in byte-wise sorted key order
//! `u32 len(key) ‖ key ‖ u32 len(value) ‖ value` (all big endian, UTF-8).
//! Length prefixes make the encoding injective: `{"a":"bc"}` and `{"ab":"c"}`
//! authenticate differently. Any tampering, a wrong key, or a context that
//! differs in any byte fails the tag check.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use uuid::Uuid;
use zeroize::Zeroizing;

const MAGIC: &[u8; 3] = b"EVK";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 24;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Smallest well-formed blob: header, nonce, empty ciphertext, tag.
pub const MIN_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// AWS caps CiphertextBlob at 6144 bytes; so do we.
pub const MAX_LEN: usize = 6144;

/// The header of a parsed blob: which key version to decrypt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader {
    pub key_id: Uuid,
    pub key_version: u32,
}

/// Why a blob could not be used. Callers map every variant to
/// InvalidCiphertextException; the variants exist for tests and fuzzing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("ciphertext blob too short or too long")]
    Length,
    #[error("not an envol ciphertext blob")]
    Magic,
    #[error("unsupported ciphertext blob version {0}")]
    Version(u8),
    #[error("ciphertext failed authentication")]
    Authentication,
}

/// Canonical, injective encoding of an encryption context.
pub fn canonical_context(context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + context.len() * 16);
    out.extend_from_slice(&(context.len() as u32).to_be_bytes());
    for (k, v) in context {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Reads the header of a blob without decrypting it.
pub fn parse_header(blob: &[u8]) -> Result<BlobHeader, BlobError> {
    if blob.len() < MIN_LEN || blob.len() > MAX_LEN {
        return Err(BlobError::Length);
    }
    if &blob[..3] != MAGIC {
        return Err(BlobError::Magic);
    }
    if blob[3] != FORMAT_VERSION {
        return Err(BlobError::Version(blob[3]));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&blob[4..20]);
    let mut version = [0u8; 4];
    version.copy_from_slice(&blob[20..24]);
    Ok(BlobHeader {
        key_id: Uuid::from_bytes(id),
        key_version: u32::from_be_bytes(version),
    })
}

/// Seals `plaintext` under one master-key version's 256-bit material.
pub fn seal(
    header: BlobHeader,
    material: &[u8; 32],
    context: &BTreeMap<String, String>,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_LEN + plaintext.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(header.key_id.as_bytes());
    out.extend_from_slice(&header.key_version.to_be_bytes());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    let mut aad = out[..HEADER_LEN].to_vec();
    aad.extend_from_slice(&canonical_context(context));
    let cipher = Aes256Gcm::new(material.into());
    // Encryption with a valid 32-byte key and a plaintext far below GCM's
    // limit cannot fail; an error here would be a bug in aes-gcm.
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    out.extend_from_slice(&sealed);
    out
}

/// Opens a blob with the material of the version its header names.
pub fn open(
    blob: &[u8],
    material: &[u8; 32],
    context: &BTreeMap<String, String>,
) -> Result<Zeroizing<Vec<u8>>, BlobError> {
    parse_header(blob)?;
    let mut aad = blob[..HEADER_LEN].to_vec();
    aad.extend_from_slice(&canonical_context(context));
    let nonce = &blob[HEADER_LEN..HEADER_LEN + NONCE_LEN];
    let cipher = Aes256Gcm::new(material.into());
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: &blob[HEADER_LEN + NONCE_LEN..],
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| BlobError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_and_header() {
        let h = BlobHeader {
            key_id: Uuid::new_v4(),
            key_version: 7,
        };
        let m = [9u8; 32];
        let c = ctx(&[("envol:volume", "abc")]);
        let blob = seal(h, &m, &c, b"secret data key");
        assert_eq!(parse_header(&blob).unwrap(), h);
        assert_eq!(open(&blob, &m, &c).unwrap().as_slice(), b"secret data key");
    }

    #[test]
    fn context_is_exact_and_injective() {
        let h = BlobHeader {
            key_id: Uuid::new_v4(),
            key_version: 1,
        };
        let m = [1u8; 32];
        let blob = seal(h, &m, &ctx(&[("a", "bc")]), b"x");
        assert_eq!(
            open(&blob, &m, &ctx(&[("ab", "c")])),
            Err(BlobError::Authentication)
        );
        assert_eq!(
            open(&blob, &m, &ctx(&[("A", "bc")])),
            Err(BlobError::Authentication)
        );
        assert_eq!(open(&blob, &m, &ctx(&[])), Err(BlobError::Authentication));
        assert!(open(&blob, &m, &ctx(&[("a", "bc")])).is_ok());
    }

    #[test]
    fn tampering_any_byte_fails() {
        let h = BlobHeader {
            key_id: Uuid::new_v4(),
            key_version: 1,
        };
        let m = [3u8; 32];
        let c = ctx(&[]);
        let blob = seal(h, &m, &c, b"0123456789");
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 0x01;
            assert!(open(&t, &m, &c).is_err(), "flip at byte {i} went unnoticed");
        }
        assert!(open(&blob, &[4u8; 32], &c).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse_header(&junk);
            let _ = open(&junk, &[0u8; 32], &BTreeMap::new());
        }
    }
}
