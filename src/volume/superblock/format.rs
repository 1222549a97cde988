//! The byte format of one superblock copy, and the rules its fields obey.
//!
//! A copy is at most `COPY_SIZE` bytes (zero-padded to it on disk; where
//! the two copies live and how they are updated is [`super::copies`]):
//!
//! ```text
//!  0  magic        8 bytes  "ENVOLSB\0"
//!  8  version      u32      1
//! 12  sequence     u64      bumped by every update
//! 20  body length  u32      n
//! 24  body         n bytes  the fields, in this order:
//!       volume uuid        16 bytes
//!       size               u64   bytes of the data area, a multiple of the sector size
//!       sector size        u32   4096 or 512
//!       cipher id          str   "aes-xts-plain64"
//!       data offset        u64   1 MiB
//!       KMS key ARN        str   as the KMS named it at wrap time
//!       encryption context u32 count, then (str key, str value), keys ascending
//!       wrapped data key   bytes opaque KMS ciphertext
//!       key check value    32 bytes
//!       creation time      u64   unix seconds
//!     version 2 only (a data-key re-encryption in progress), then:
//!       new KMS key ARN    str
//!       new wrapped key    bytes
//!       new key check      32 bytes
//!       direction          u8    1: ascending (the only one)
//!       watermark          u64   sectors below it are under the new key
//!       started            u64   unix seconds
//!       hotzone count      u32   h ≤ MAX_HOTZONE_SECTORS
//!       hotzone digests    h × 16 bytes: SHA-256 (first 16 bytes) of the
//!                          old ciphertext of sectors watermark .. watermark+h
//! 24+n  checksum     32 bytes SHA-256 of bytes 0 .. 24+n
//! ```
//!
//! Version 1 is written whenever no re-encryption is in progress, so a
//! volume is readable by older envol again once one completes; version 2
//! is written only while one is, so an older envol (which knows only 1)
//! refuses such a volume ("unsupported superblock format version 2")
//! instead of reading half of its sectors with the wrong key.
//!
//! Integers are little endian; `str` and `bytes` are a u32 length then the
//! bytes (`str` must be UTF-8). The decoder treats its input as hostile: every
//! length is checked against what is left before anything is allocated, and
//! every failure is a `SuperblockError`, never a panic.
//!
//! Nothing here touches a backend: encode and decode work on byte slices.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::volume::cipher::CIPHER_ID;
use crate::volume::key::KEY_CHECK_LEN;

pub const MAGIC: [u8; 8] = *b"ENVOLSB\0";
pub const FORMAT_VERSION: u32 = 1;
/// The version of a superblock that records a re-encryption in progress.
pub const TRANSITION_FORMAT_VERSION: u32 = 2;
/// Bytes of a hotzone sector's digest (see [`hotzone_digest`]): enough to
/// tell the old ciphertext from anything else, small enough that a hotzone
/// of `MAX_HOTZONE_SECTORS` fits in a copy beside the rest (32 KiB).
pub const HOTZONE_DIGEST_LEN: usize = 16;
/// Most sectors one re-encryption step rewrites (and records digests of).
pub const MAX_HOTZONE_SECTORS: usize = 2048;
/// Room reserved for one copy, padding included.
pub const COPY_SIZE: usize = 64 * 1024;
/// Where the data area starts: past both copies, 1 MiB-aligned as dm-crypt
/// and partitioning tools like it.
pub const DATA_OFFSET: u64 = 1 << 20;
/// The encryption-context key naming the volume a data key belongs to.
pub const CONTEXT_VOLUME_KEY: &str = "envol:volume";

const HEADER_LEN: usize = 8 + 4 + 8 + 4;
const CHECKSUM_LEN: usize = 32;
const MAX_BODY_LEN: usize = COPY_SIZE - HEADER_LEN - CHECKSUM_LEN;

/// Why a superblock copy cannot be used. Carries no secret: superblocks
/// hold only the wrapped (encrypted) key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SuperblockError {
    #[error("bad magic (not an envol volume)")]
    BadMagic,
    #[error("unsupported superblock format version {0}")]
    UnsupportedVersion(u32),
    #[error("bad checksum")]
    BadChecksum,
    #[error("truncated")]
    Truncated,
    #[error("unknown cipher {0:?} (only aes-xts-plain64 is supported)")]
    UnknownCipher(String),
    #[error("invalid superblock: {0}")]
    Invalid(String),
    #[error("both superblock copies are invalid: primary: {primary}; secondary: {secondary}")]
    BothCopiesInvalid {
        primary: Box<SuperblockError>,
        secondary: Box<SuperblockError>,
    },
    #[error("{0}")]
    Io(Arc<io::Error>),
}

impl From<io::Error> for SuperblockError {
    fn from(e: io::Error) -> Self {
        SuperblockError::Io(Arc::new(e))
    }
}

fn invalid(why: impl Into<String>) -> SuperblockError {
    SuperblockError::Invalid(why.into())
}

/// One decoded, validated superblock copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Bumped by every update; the higher valid copy wins.
    pub sequence: u64,
    pub uuid: Uuid,
    /// Size of the data area (what clients see), in bytes.
    pub size: u64,
    pub sector_size: u32,
    pub cipher: String,
    pub data_offset: u64,
    pub key_arn: String,
    pub encryption_context: BTreeMap<String, String>,
    pub wrapped_key: Vec<u8>,
    pub key_check: [u8; KEY_CHECK_LEN],
    /// Unix seconds.
    pub created: u64,
    /// A data-key re-encryption in progress (format version 2), or none.
    pub transition: Option<Transition>,
}

/// Which way a re-encryption walks the data area. Only ascending exists;
/// it is recorded so that a later format can add another without
/// misreading this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ascending,
}

impl Direction {
    fn code(self) -> u8 {
        match self {
            Direction::Ascending => 1,
        }
    }

    fn from_code(code: u8) -> Result<Direction, SuperblockError> {
        match code {
            1 => Ok(Direction::Ascending),
            other => Err(invalid(format!("unknown re-encryption direction {other}"))),
        }
    }
}

/// A data-key re-encryption in progress: the new key (the superblock's own
/// `key_arn` / `wrapped_key` / `key_check` stay the old key's until it
/// completes), the watermark, and the hotzone being rewritten.
///
/// Sector `n` is under the new key when `n < watermark`, under the old key
/// when `n >= watermark + hotzone.len()`, and in between (the hotzone) under
/// the old key exactly when its stored bytes' digest is `hotzone[n -
/// watermark]` (LUKS2's "checksum" resilience). An all-zero stored sector
/// is a hole under either key (the zero-sector rule).
#[derive(Clone, PartialEq, Eq)]
pub struct Transition {
    pub new_key_arn: String,
    pub new_wrapped_key: Vec<u8>,
    pub new_key_check: [u8; KEY_CHECK_LEN],
    pub direction: Direction,
    /// In sectors.
    pub watermark: u64,
    /// Unix seconds when the re-encryption began.
    pub started: u64,
    pub hotzone: Vec<[u8; HOTZONE_DIGEST_LEN]>,
}

/// Digests are not secrets, but a page of them in every debug print helps
/// nobody: the count says enough.
impl std::fmt::Debug for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transition")
            .field("new_key_arn", &self.new_key_arn)
            .field("direction", &self.direction)
            .field("watermark", &self.watermark)
            .field("started", &self.started)
            .field("hotzone_sectors", &self.hotzone.len())
            .finish_non_exhaustive()
    }
}

/// The hotzone digest of one stored sector: its first 16 bytes.
///
/// A digest only has to tell a sector's old ciphertext from what a crash
/// can leave in its place — its new ciphertext, or a client's write under
/// the new key (sectors are written atomically; see the module docs of
/// `volume::reencryption`). Those begin with a different XTS block: one AES
/// block under a different key and tweak, equal to the old one with
/// probability 2⁻¹²⁸, the odds of two truncated hashes colliding. Hashing
/// the whole sector (SHA-256, as envol did first) bought nothing more and
/// was 40 % of a re-encryption's CPU. It is no defence against whoever can
/// write the disk, and never was: such a writer can change anything.
pub fn hotzone_digest(stored_sector: &[u8]) -> [u8; HOTZONE_DIGEST_LEN] {
    let mut d = [0u8; HOTZONE_DIGEST_LEN];
    let n = stored_sector.len().min(HOTZONE_DIGEST_LEN);
    d[..n].copy_from_slice(&stored_sector[..n]);
    d
}

/// Whether a stored sector still holds the old ciphertext `digest` was
/// recorded of: by [`hotzone_digest`], or by the truncated SHA-256 that
/// envol recorded before it (a hotzone an earlier version left behind is
/// recovered the same way). Either matches anything else with probability
/// 2⁻¹²⁸.
pub fn matches_hotzone_digest(stored_sector: &[u8], digest: &[u8; HOTZONE_DIGEST_LEN]) -> bool {
    if hotzone_digest(stored_sector) == *digest {
        return true;
    }
    let full = Sha256::digest(stored_sector);
    full[..HOTZONE_DIGEST_LEN] == digest[..]
}

/// `{"envol:volume": "<uuid, hyphenated lowercase>"}`: the context every wrap
/// of this volume's key uses, so a wrapped key moved to another volume's
/// superblock does not unwrap there.
pub fn volume_encryption_context(uuid: &Uuid) -> BTreeMap<String, String> {
    BTreeMap::from([(
        CONTEXT_VOLUME_KEY.to_string(),
        uuid.hyphenated().to_string(),
    )])
}

impl Superblock {
    /// A superblock for a new volume: sequence 1, `aes-xts-plain64`, data at
    /// `DATA_OFFSET`, the standard encryption context.
    pub fn new(
        uuid: Uuid,
        size: u64,
        sector_size: u32,
        key_arn: String,
        wrapped_key: Vec<u8>,
        key_check: [u8; KEY_CHECK_LEN],
        created: u64,
    ) -> Result<Self, SuperblockError> {
        let sb = Superblock {
            sequence: 1,
            uuid,
            size,
            sector_size,
            cipher: CIPHER_ID.to_string(),
            data_offset: DATA_OFFSET,
            key_arn,
            encryption_context: volume_encryption_context(&uuid),
            wrapped_key,
            key_check,
            created,
            transition: None,
        };
        sb.validate()?;
        Ok(sb)
    }

    /// Sectors in the data area.
    pub fn sectors(&self) -> u64 {
        self.size / u64::from(self.sector_size)
    }

    /// Bytes a file or device must have to hold this volume.
    pub fn required_backend_size(&self) -> u64 {
        self.data_offset.saturating_add(self.size)
    }

    /// The rules every superblock obeys, checked on decode and before encode
    /// so that nothing is ever written that open would refuse.
    pub fn validate(&self) -> Result<(), SuperblockError> {
        if self.cipher != CIPHER_ID {
            return Err(SuperblockError::UnknownCipher(self.cipher.clone()));
        }
        if self.sector_size != 512 && self.sector_size != 4096 {
            return Err(invalid(format!(
                "sector size {} (must be 512 or 4096)",
                self.sector_size
            )));
        }
        let sector = u64::from(self.sector_size);
        if self.size == 0 || !self.size.is_multiple_of(sector) {
            return Err(invalid(format!(
                "size {} is not a positive multiple of the sector size {}",
                self.size, self.sector_size
            )));
        }
        if self.data_offset < DATA_OFFSET || !self.data_offset.is_multiple_of(4096) {
            return Err(invalid(format!(
                "data offset {} (must be at least {DATA_OFFSET} and 4096-aligned)",
                self.data_offset
            )));
        }
        if self.data_offset.checked_add(self.size).is_none() {
            return Err(invalid("data offset + size overflows"));
        }
        if self.key_arn.is_empty() {
            return Err(invalid("empty KMS key ARN"));
        }
        if self.wrapped_key.is_empty() {
            return Err(invalid("empty wrapped data key"));
        }
        let expected = self.uuid.hyphenated().to_string();
        if self.encryption_context.get(CONTEXT_VOLUME_KEY) != Some(&expected) {
            return Err(invalid(format!(
                "encryption context does not name this volume ({CONTEXT_VOLUME_KEY} = {expected})"
            )));
        }
        if let Some(t) = &self.transition {
            if t.new_key_arn.is_empty() || t.new_wrapped_key.is_empty() {
                return Err(invalid("re-encryption without a new key"));
            }
            if t.hotzone.len() > MAX_HOTZONE_SECTORS {
                return Err(invalid(format!(
                    "re-encryption hotzone of {} sectors (at most {MAX_HOTZONE_SECTORS})",
                    t.hotzone.len()
                )));
            }
            let end = t.watermark.checked_add(t.hotzone.len() as u64);
            if end.is_none_or(|end| end > self.sectors()) {
                return Err(invalid(format!(
                    "re-encryption watermark {} + hotzone {} beyond the volume's {} sectors",
                    t.watermark,
                    t.hotzone.len(),
                    self.sectors()
                )));
            }
        }
        Ok(())
    }

    /// One copy's bytes (not padded). Fails if the superblock breaks a rule
    /// or does not fit in `COPY_SIZE`.
    pub fn encode(&self) -> Result<Vec<u8>, SuperblockError> {
        self.validate()?;
        let mut body = Vec::new();
        body.extend_from_slice(self.uuid.as_bytes());
        body.extend_from_slice(&self.size.to_le_bytes());
        body.extend_from_slice(&self.sector_size.to_le_bytes());
        put_bytes(&mut body, self.cipher.as_bytes())?;
        body.extend_from_slice(&self.data_offset.to_le_bytes());
        put_bytes(&mut body, self.key_arn.as_bytes())?;
        put_len(&mut body, self.encryption_context.len())?;
        for (k, v) in &self.encryption_context {
            put_bytes(&mut body, k.as_bytes())?;
            put_bytes(&mut body, v.as_bytes())?;
        }
        put_bytes(&mut body, &self.wrapped_key)?;
        body.extend_from_slice(&self.key_check);
        body.extend_from_slice(&self.created.to_le_bytes());
        let version = match &self.transition {
            None => FORMAT_VERSION,
            Some(t) => {
                put_bytes(&mut body, t.new_key_arn.as_bytes())?;
                put_bytes(&mut body, &t.new_wrapped_key)?;
                body.extend_from_slice(&t.new_key_check);
                body.push(t.direction.code());
                body.extend_from_slice(&t.watermark.to_le_bytes());
                body.extend_from_slice(&t.started.to_le_bytes());
                put_len(&mut body, t.hotzone.len())?;
                for d in &t.hotzone {
                    body.extend_from_slice(d);
                }
                TRANSITION_FORMAT_VERSION
            }
        };
        if body.len() > MAX_BODY_LEN {
            return Err(invalid(format!(
                "encoded superblock is {} bytes, more than fits in a {COPY_SIZE}-byte copy",
                body.len() + HEADER_LEN + CHECKSUM_LEN
            )));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        put_len(&mut out, body.len())?;
        out.extend_from_slice(&body);
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        Ok(out)
    }

    /// Decodes one copy from the start of `bytes` (trailing padding ignored).
    pub fn decode(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
        let mut r = Reader::new(bytes);
        if r.take(8)? != MAGIC {
            return Err(SuperblockError::BadMagic);
        }
        // Version before checksum: a future format may checksum differently,
        // and "unsupported version" is the useful message then.
        let version = r.u32()?;
        if version != FORMAT_VERSION && version != TRANSITION_FORMAT_VERSION {
            return Err(SuperblockError::UnsupportedVersion(version));
        }
        let sequence = r.u64()?;
        let body_len = r.u32()? as usize;
        if body_len > MAX_BODY_LEN {
            return Err(invalid(format!(
                "body length {body_len} exceeds the {COPY_SIZE}-byte copy"
            )));
        }
        let body = r.take(body_len)?;
        let stored = r.take(CHECKSUM_LEN)?;
        let computed = Sha256::digest(&bytes[..HEADER_LEN + body_len]);
        if computed.as_slice() != stored {
            return Err(SuperblockError::BadChecksum);
        }
        // The checksum matched, so a malformed body was written that way:
        // report it as invalid rather than as truncation.
        let sb = decode_body(sequence, version, body).map_err(|e| match e {
            SuperblockError::Truncated => invalid("a field runs past the end of the body"),
            other => other,
        })?;
        sb.validate()?;
        Ok(sb)
    }
}

fn decode_body(sequence: u64, version: u32, body: &[u8]) -> Result<Superblock, SuperblockError> {
    let mut r = Reader::new(body);
    let uuid = Uuid::from_bytes(r.array::<16>()?);
    let size = r.u64()?;
    let sector_size = r.u32()?;
    let cipher = r.string("cipher id")?;
    let data_offset = r.u64()?;
    let key_arn = r.string("key ARN")?;
    let pairs = r.u32()?;
    let mut encryption_context = BTreeMap::new();
    let mut last: Option<String> = None;
    for _ in 0..pairs {
        // Each pair takes at least 8 bytes, so a huge count runs out of
        // input (Truncated) long before it costs anything.
        let k = r.string("encryption context key")?;
        let v = r.string("encryption context value")?;
        if last.as_ref().is_some_and(|prev| *prev >= k) {
            return Err(invalid("encryption context keys not strictly ascending"));
        }
        last = Some(k.clone());
        encryption_context.insert(k, v);
    }
    let wrapped_key = r.bytes()?.to_vec();
    let key_check = r.array::<KEY_CHECK_LEN>()?;
    let created = r.u64()?;
    let transition = if version == TRANSITION_FORMAT_VERSION {
        Some(decode_transition(&mut r)?)
    } else {
        None
    };
    if !r.is_empty() {
        return Err(invalid("trailing bytes after the last field"));
    }
    Ok(Superblock {
        sequence,
        uuid,
        size,
        sector_size,
        cipher,
        data_offset,
        key_arn,
        encryption_context,
        wrapped_key,
        key_check,
        created,
        transition,
    })
}

fn decode_transition(r: &mut Reader<'_>) -> Result<Transition, SuperblockError> {
    let new_key_arn = r.string("new key ARN")?;
    let new_wrapped_key = r.bytes()?.to_vec();
    let new_key_check = r.array::<KEY_CHECK_LEN>()?;
    let direction = Direction::from_code(r.array::<1>()?[0])?;
    let watermark = r.u64()?;
    let started = r.u64()?;
    let count = r.u32()? as usize;
    if count > MAX_HOTZONE_SECTORS {
        return Err(invalid(format!(
            "re-encryption hotzone of {count} sectors (at most {MAX_HOTZONE_SECTORS})"
        )));
    }
    let mut hotzone = Vec::with_capacity(count);
    for _ in 0..count {
        hotzone.push(r.array::<HOTZONE_DIGEST_LEN>()?);
    }
    Ok(Transition {
        new_key_arn,
        new_wrapped_key,
        new_key_check,
        direction,
        watermark,
        started,
        hotzone,
    })
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), SuperblockError> {
    let len = u32::try_from(len).map_err(|_| invalid("field too long"))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), SuperblockError> {
    put_len(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SuperblockError> {
        if n > self.rest.len() {
            return Err(SuperblockError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SuperblockError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, SuperblockError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SuperblockError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], SuperblockError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self, what: &str) -> Result<String, SuperblockError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| invalid(format!("{what} is not UTF-8")))
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
