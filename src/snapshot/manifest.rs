//! A snapshot's manifest: what the snapshot is, and proof that it was made
//! by a holder of the volume's data key.
//!
//! One JSON object per snapshot, at `PREFIX/snap-ID/manifest`, written last
//! (a snapshot exists once its manifest does). It carries everything a
//! restore needs on any host: the volume's uuid, size, sector size, cipher
//! and data offset; the master key's ARN, the data key wrapped by it and the
//! wrap's encryption context; the parent snapshot; the chunk size; and the
//! **full** list of the volume's non-zero chunks as `[index, sha256 hex]`
//! (not a delta from the parent: deleting any snapshot leaves every other
//! one restorable by itself). `objects_added` and `bytes_added` say what
//! this snapshot uploaded that was not already in the place.
//!
//! **Authentication.** `mac` is HMAC-SHA256 under
//! `mac_key = HMAC-SHA256(data key, "envol snapshot manifest v1")`
//! ([`crate::volume::DataKey::derive_key`]) over the manifest's *canonical
//! bytes*: the compact JSON serialization of every field but `mac`, in the
//! order of [`Manifest`]'s fields, with the encryption context's keys sorted
//! (as envol writes it; [`Manifest::canonical_bytes`]). A reader parses the
//! stored JSON, serializes the parsed values the same way and checks the
//! MAC in constant time, so whitespace is irrelevant but every value is
//! covered. Only a holder of the data key — someone the key policy lets
//! Decrypt the wrapped key — can compute it: a changed chunk list, size or
//! parent in a modified bucket is refused rather than restored. The chunk
//! objects are bound through their SHA-256, which the restore checks.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use super::url::SnapshotId;
use crate::volume::DataKey;

/// The version of this format; a reader refuses others.
pub const MANIFEST_FORMAT: u32 = 1;
/// The label of the MAC key's derivation from the data key.
pub const MAC_KEY_LABEL: &[u8] = b"envol snapshot manifest v1";
/// The largest manifest a reader accepts (a 64 TiB volume in 1 MiB chunks,
/// every chunk written, is ~5 GiB of JSON; far beyond that something is
/// wrong). Bounds the memory a hostile bucket can make a reader use.
pub const MAX_MANIFEST_BYTES: usize = 256 << 20;

/// A chunk of the snapshot: its index in the data area (chunk *i* is bytes
/// `[i·chunk_size, (i+1)·chunk_size)`, the last one cut at the volume's
/// size) and the SHA-256 of its stored bytes, lowercase hex — which is also
/// its object's name, `PREFIX/chunks/<sha256>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry(pub u64, pub String);

impl ChunkEntry {
    pub fn index(&self) -> u64 {
        self.0
    }
    pub fn sha256(&self) -> &str {
        &self.1
    }
}

/// The manifest, field by field in the order they are serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// `snap-` and 16 hex digits.
    pub id: String,
    /// RFC 3339, UTC, seconds.
    pub created: String,
    pub volume_uuid: String,
    /// Bytes of the data area.
    pub size: u64,
    pub sector_size: u32,
    pub cipher: String,
    /// Where the data area starts in the volume.
    pub data_offset: u64,
    pub key_arn: String,
    /// The data key as the KMS wrapped it, base64.
    pub wrapped_key: String,
    pub encryption_context: BTreeMap<String, String>,
    /// The snapshot this one was made as an increment of, in the same place.
    pub parent: Option<String>,
    pub chunk_size: u64,
    /// Every non-zero chunk, ascending by index.
    pub chunks: Vec<ChunkEntry>,
    /// Chunk objects this snapshot uploaded (not already in the place).
    pub objects_added: u64,
    /// Their bytes.
    pub bytes_added: u64,
    /// HMAC-SHA256, hex; empty while unsealed (then left out of the JSON).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

/// Why a manifest is refused. One line; never any key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON of envol's manifest format: {0}")]
    Parse(String),
    #[error(
        "the manifest has format {0}; this envol reads format {MANIFEST_FORMAT} (made by a newer envol?)"
    )]
    Unsupported(u32),
    #[error("the manifest is invalid: {0}")]
    Invalid(String),
    #[error(
        "the manifest's authentication does not match: it was modified, or was not made with this volume's data key"
    )]
    BadMac,
    #[error("the manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
}

fn invalid(why: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(why.into())
}

impl Manifest {
    /// The bytes the MAC covers: compact JSON of every field but `mac`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let unsealed = Manifest {
            mac: String::new(),
            ..self.clone()
        };
        serde_json::to_vec(&unsealed)
            .unwrap_or_else(|_| unreachable!("strings, numbers and maps always serialize"))
    }

    fn mac_with(&self, key: &DataKey) -> Hmac<Sha256> {
        let mac_key = key.derive_key(MAC_KEY_LABEL);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(mac_key.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(&self.canonical_bytes());
        mac
    }

    /// Computes and sets `mac` under `key` (the volume's data key).
    pub fn seal(&mut self, key: &DataKey) {
        self.mac = hex::encode(self.mac_with(key).finalize().into_bytes());
    }

    /// Checks `mac` under `key`, in constant time.
    pub fn verify(&self, key: &DataKey) -> Result<(), ManifestError> {
        let tag = hex::decode(&self.mac).map_err(|_| ManifestError::BadMac)?;
        self.mac_with(key)
            .verify_slice(&tag)
            .map_err(|_| ManifestError::BadMac)
    }

    /// What is stored: pretty JSON and a newline (people read manifests).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .unwrap_or_else(|_| unreachable!("strings, numbers and maps always serialize"));
        bytes.push(b'\n');
        bytes
    }

    /// Parses and checks the structure (not the MAC: that needs the key,
    /// see [`Self::verify`]). `id` is the snapshot the manifest was fetched
    /// as: a manifest copied under another snapshot's name is refused.
    pub fn parse(bytes: &[u8], id: &SnapshotId) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        // The format first, so a newer manifest says so rather than failing
        // on a field this reader does not know.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let format: Format = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Parse(one_line(&e.to_string())))?;
        if format.format != MANIFEST_FORMAT {
            return Err(ManifestError::Unsupported(format.format));
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Parse(one_line(&e.to_string())))?;
        m.check(id)?;
        Ok(m)
    }

    fn check(&self, id: &SnapshotId) -> Result<(), ManifestError> {
        if self.id != id.as_str() {
            return Err(invalid(format!(
                "it names snapshot {:?}, but is stored as {id}",
                self.id
            )));
        }
        self.volume_uuid()?;
        self.wrapped_key()?;
        if let Some(parent) = &self.parent
            && SnapshotId::parse(parent).is_none()
        {
            return Err(invalid(format!("parent {parent:?} is not a snapshot id")));
        }
        if self.sector_size != 512 && self.sector_size != 4096 {
            return Err(invalid(format!("sector size {}", self.sector_size)));
        }
        let sector = u64::from(self.sector_size);
        if self.size == 0 || !self.size.is_multiple_of(sector) {
            return Err(invalid(format!(
                "size {} is not a positive multiple of the sector size",
                self.size
            )));
        }
        if self.chunk_size == 0
            || !self.chunk_size.is_multiple_of(sector)
            || self.chunk_size > (64 << 20)
        {
            return Err(invalid(format!(
                "chunk size {} (must be a multiple of the sector size, at most 64 MiB)",
                self.chunk_size
            )));
        }
        let count = self.chunk_count();
        let mut previous: Option<u64> = None;
        for c in &self.chunks {
            if c.index() >= count {
                return Err(invalid(format!(
                    "chunk {} is beyond the volume's {count} chunks",
                    c.index()
                )));
            }
            if previous.is_some_and(|p| p >= c.index()) {
                return Err(invalid("chunk indices are not strictly ascending"));
            }
            previous = Some(c.index());
            if !is_sha256_hex(c.sha256()) {
                return Err(invalid(format!(
                    "chunk {}: {:?} is not a SHA-256 in lowercase hex",
                    c.index(),
                    c.sha256()
                )));
            }
        }
        Ok(())
    }

    /// Chunks in the data area, the last one possibly short.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size.max(1))
    }

    /// Bytes of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = index.saturating_mul(self.chunk_size);
        self.size.saturating_sub(start).min(self.chunk_size)
    }

    pub fn volume_uuid(&self) -> Result<Uuid, ManifestError> {
        Uuid::parse_str(&self.volume_uuid)
            .map_err(|_| invalid(format!("volume uuid {:?}", self.volume_uuid)))
    }

    pub fn wrapped_key(&self) -> Result<Vec<u8>, ManifestError> {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(&self.wrapped_key)
            .map_err(|_| invalid("the wrapped key is not base64"))?;
        if key.is_empty() {
            return Err(invalid("the wrapped key is empty"));
        }
        Ok(key)
    }

    /// The stored bytes of all its chunks (what a full restore downloads).
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| self.chunk_len(c.index())).sum()
    }
}

/// 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SHA-256 of `bytes`, lowercase hex: a chunk's name.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(bytes))
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
