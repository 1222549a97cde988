//! The on-disk superblock: what a volume is and how its key is wrapped.
//!
//! Two copies, at `PRIMARY_OFFSET` (0) and `SECONDARY_OFFSET` (64 KiB), each
//! at most `COPY_SIZE` bytes and zero-padded to it. One copy:
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
//! 24+n  checksum     32 bytes SHA-256 of bytes 0 .. 24+n
//! ```
//!
//! Integers are little endian; `str` and `bytes` are a u32 length then the
//! bytes (`str` must be UTF-8). The decoder treats its input as hostile: every
//! length is checked against what is left before anything is allocated, and
//! every failure is a `SuperblockError`, never a panic.
//!
//! Why two copies with sequence numbers: an update overwrites the copy holding
//! the older sequence first and syncs before touching the other, so at every
//! instant at least one intact copy exists — a crash mid-write (a torn copy)
//! or a single corrupted sector loses at most the update in flight.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::volume::backend::{Backend, FileBackend};
use crate::volume::cipher::CIPHER_ID;
use crate::volume::key::KEY_CHECK_LEN;

pub const MAGIC: [u8; 8] = *b"ENVOLSB\0";
pub const FORMAT_VERSION: u32 = 1;
/// Room reserved for one copy, padding included.
pub const COPY_SIZE: usize = 64 * 1024;
pub const PRIMARY_OFFSET: u64 = 0;
pub const SECONDARY_OFFSET: u64 = COPY_SIZE as u64;
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
        };
        sb.validate()?;
        Ok(sb)
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
        if body.len() > MAX_BODY_LEN {
            return Err(invalid(format!(
                "encoded superblock is {} bytes, more than fits in a {COPY_SIZE}-byte copy",
                body.len() + HEADER_LEN + CHECKSUM_LEN
            )));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
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
        if version != FORMAT_VERSION {
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
        let sb = decode_body(sequence, body).map_err(|e| match e {
            SuperblockError::Truncated => invalid("a field runs past the end of the body"),
            other => other,
        })?;
        sb.validate()?;
        Ok(sb)
    }
}

fn decode_body(sequence: u64, body: &[u8]) -> Result<Superblock, SuperblockError> {
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

/// Which copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Primary,
    Secondary,
}

impl Slot {
    pub fn offset(self) -> u64 {
        match self {
            Slot::Primary => PRIMARY_OFFSET,
            Slot::Secondary => SECONDARY_OFFSET,
        }
    }

    fn other(self) -> Slot {
        match self {
            Slot::Primary => Slot::Secondary,
            Slot::Secondary => Slot::Primary,
        }
    }
}

/// Both copies as read, each decoded on its own.
#[derive(Debug, Clone)]
pub struct SuperblockSet {
    pub primary: Result<Superblock, SuperblockError>,
    pub secondary: Result<Superblock, SuperblockError>,
}

impl SuperblockSet {
    /// The valid copy with the highest sequence (the primary on a tie), or
    /// an error naming why each copy failed.
    pub fn best(&self) -> Result<&Superblock, SuperblockError> {
        self.best_slot().map(|(_, sb)| sb)
    }

    /// Like `best`, also saying which copy it is.
    pub fn best_slot(&self) -> Result<(Slot, &Superblock), SuperblockError> {
        match (&self.primary, &self.secondary) {
            (Ok(p), Ok(s)) if s.sequence > p.sequence => Ok((Slot::Secondary, s)),
            (Ok(p), _) => Ok((Slot::Primary, p)),
            (Err(_), Ok(s)) => Ok((Slot::Secondary, s)),
            (Err(p), Err(s)) => Err(SuperblockError::BothCopiesInvalid {
                primary: Box::new(p.clone()),
                secondary: Box::new(s.clone()),
            }),
        }
    }

    /// The copy an update must overwrite first: an invalid one, else the one
    /// with the older sequence; on a tie, alternate by the new sequence's
    /// parity so that wear and the "last written" role move between copies.
    fn first_to_write(&self, new_sequence: u64) -> Slot {
        match (&self.primary, &self.secondary) {
            (Err(_), _) => Slot::Primary,
            (_, Err(_)) => Slot::Secondary,
            (Ok(p), Ok(s)) if p.sequence < s.sequence => Slot::Primary,
            (Ok(p), Ok(s)) if s.sequence < p.sequence => Slot::Secondary,
            _ if new_sequence.is_multiple_of(2) => Slot::Primary,
            _ => Slot::Secondary,
        }
    }

    fn highest_valid_sequence(&self) -> Option<u64> {
        [&self.primary, &self.secondary]
            .into_iter()
            .filter_map(|c| c.as_ref().ok().map(|sb| sb.sequence))
            .max()
    }
}

/// Reads and decodes both copies from a backend. I/O errors become the
/// copies' errors; the caller decides with `best()`.
pub fn read_superblocks_from(backend: &dyn Backend) -> SuperblockSet {
    let read_copy = |slot: Slot| -> Result<Superblock, SuperblockError> {
        let size = backend.size()?;
        let available = size.saturating_sub(slot.offset()).min(COPY_SIZE as u64) as usize;
        if available == 0 {
            return Err(SuperblockError::Truncated);
        }
        let mut buf = vec![0u8; available];
        backend.read_at(slot.offset(), &mut buf)?;
        Superblock::decode(&buf)
    };
    SuperblockSet {
        primary: read_copy(Slot::Primary),
        secondary: read_copy(Slot::Secondary),
    }
}

/// Reads and decodes both copies from a volume file or device.
pub fn read_superblocks(file: &File) -> SuperblockSet {
    match file.try_clone() {
        Ok(dup) => read_superblocks_from(&FileBackend::new(dup)),
        Err(e) => {
            let e = SuperblockError::from(e);
            SuperblockSet {
                primary: Err(e.clone()),
                secondary: Err(e),
            }
        }
    }
}

fn padded(sb: &Superblock) -> Result<Vec<u8>, SuperblockError> {
    let mut bytes = sb.encode()?;
    // Padding overwrites whatever a longer earlier copy left behind.
    bytes.resize(COPY_SIZE, 0);
    Ok(bytes)
}

/// Crash-safe update: bumps `sb.sequence` past every valid copy, writes the
/// copy holding the older (or an invalid) superblock, syncs, then writes the
/// other and syncs. A crash at any point leaves a valid copy: the old one
/// until the first sync, the new one after it.
pub fn write_superblock_to(
    backend: &dyn Backend,
    sb: &mut Superblock,
) -> Result<(), SuperblockError> {
    write_superblock_steps(backend, sb, false)
}

/// `write_superblock_to` on a volume file or device.
pub fn write_superblock(file: &File, sb: &mut Superblock) -> Result<(), SuperblockError> {
    write_superblock_to(&FileBackend::new(file.try_clone()?), sb)
}

/// The update, optionally stopping after the first copy (a simulated crash).
fn write_superblock_steps(
    backend: &dyn Backend,
    sb: &mut Superblock,
    stop_after_first: bool,
) -> Result<(), SuperblockError> {
    let current = read_superblocks_from(backend);
    let base = current
        .highest_valid_sequence()
        .unwrap_or(0)
        .max(sb.sequence);
    let new_sequence = base
        .checked_add(1)
        .ok_or_else(|| invalid("sequence number exhausted"))?;
    let mut next = sb.clone();
    next.sequence = new_sequence;
    let bytes = padded(&next)?;
    let first = current.first_to_write(new_sequence);
    backend.write_at(first.offset(), &bytes)?;
    backend.flush()?;
    *sb = next;
    if stop_after_first {
        return Ok(());
    }
    backend.write_at(first.other().offset(), &bytes)?;
    backend.flush()?;
    Ok(())
}

/// Creates a new volume file: refuses an existing path unless `force` (then
/// truncates it), mode 0600, both copies written with `sb`'s sequence, the
/// data area left sparse by `set_len`, file and directory entry synced.
pub fn create_volume_file(
    path: &Path,
    sb: &Superblock,
    force: bool,
) -> Result<File, SuperblockError> {
    let bytes = padded(sb)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            SuperblockError::Io(Arc::new(io::Error::new(
                e.kind(),
                format!("{} already exists (use force to overwrite)", path.display()),
            )))
        } else {
            e.into()
        }
    })?;
    if force {
        // An overwritten file keeps its old mode; a volume file is 0600.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(&bytes)?;
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&bytes, SECONDARY_OFFSET)?;
    }
    file.set_len(sb.required_backend_size())?;
    file.sync_all()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The new directory entry is durable only once the directory is synced.
    File::open(parent)?.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::backend::MemBackend;
    use rand::{Rng, RngCore, SeedableRng};

    fn sample() -> Superblock {
        let uuid = Uuid::from_bytes([0x42; 16]);
        Superblock::new(
            uuid,
            10 << 20,
            4096,
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                .to_string(),
            vec![0xc7; 184],
            [0x11; 32],
            1_700_000_000,
        )
        .unwrap()
    }

    fn reseal(bytes: &mut [u8]) {
        // Recompute the checksum after a deliberate edit, so the test reaches
        // the field validation behind it.
        let body_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
        let end = HEADER_LEN + body_len;
        let sum = Sha256::digest(&bytes[..end]);
        bytes[end..end + 32].copy_from_slice(&sum);
    }

    #[test]
    fn encode_decode_round_trip() {
        let sb = sample();
        let bytes = sb.encode().unwrap();
        assert_eq!(&bytes[..8], b"ENVOLSB\0");
        assert_eq!(Superblock::decode(&bytes).unwrap(), sb);
        // Padding after the copy is ignored.
        let mut padded = bytes.clone();
        padded.resize(COPY_SIZE, 0);
        assert_eq!(Superblock::decode(&padded).unwrap(), sb);
        assert_eq!(
            sb.encryption_context,
            BTreeMap::from([(
                "envol:volume".to_string(),
                "42424242-4242-4242-4242-424242424242".to_string()
            )])
        );
    }

    #[test]
    fn every_truncation_is_truncated_and_every_bit_flip_is_caught() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    Superblock::decode(&bytes[..len]),
                    Err(SuperblockError::Truncated) | Err(SuperblockError::Invalid(_))
                ),
                "length {len}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(Superblock::decode(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for len in 0..200 {
            for _ in 0..50 {
                let mut buf = vec![0u8; len];
                rng.fill_bytes(&mut buf);
                let _ = Superblock::decode(&buf);
                // With a valid header, so the decoder gets further in.
                if len >= 24 {
                    buf[..8].copy_from_slice(&MAGIC);
                    buf[8..12].copy_from_slice(&1u32.to_le_bytes());
                    let body = rng.gen_range(0..(len as u32));
                    buf[20..24].copy_from_slice(&body.to_le_bytes());
                    let _ = Superblock::decode(&buf);
                    if (body as usize) + HEADER_LEN + 32 <= len {
                        reseal(&mut buf);
                        let _ = Superblock::decode(&buf);
                    }
                }
            }
        }
        // Random megabytes too.
        for _ in 0..20 {
            let mut buf = vec![0u8; rng.gen_range(0..COPY_SIZE * 2)];
            rng.fill_bytes(&mut buf);
            assert!(Superblock::decode(&buf).is_err());
        }
    }

    #[test]
    fn hostile_lengths_inside_a_sealed_body_are_invalid() {
        let mut bytes = sample().encode().unwrap();
        // The cipher id's length field is at 24 + 16 + 8 + 4.
        let at = HEADER_LEN + 28;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut bytes);
        assert!(matches!(
            Superblock::decode(&bytes),
            Err(SuperblockError::Invalid(_))
        ));
    }

    #[test]
    fn header_errors_are_typed() {
        let good = sample().encode().unwrap();
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            Superblock::decode(&b),
            Err(SuperblockError::BadMagic)
        ));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            Superblock::decode(&b),
            Err(SuperblockError::UnsupportedVersion(2))
        ));
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            Superblock::decode(&b),
            Err(SuperblockError::BadChecksum)
        ));
        let mut b = good.clone();
        b[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Superblock::decode(&b),
            Err(SuperblockError::Invalid(_))
        ));
    }

    #[test]
    fn field_rules_are_enforced_on_decode() {
        // Bytes a buggy or hostile writer could leave, sealed with a valid
        // checksum so that only the field rules can reject them.
        let check = |edit: &dyn Fn(&mut Superblock)| -> SuperblockError {
            let mut sb = sample();
            edit(&mut sb);
            Superblock::decode(&encode_unchecked(&sb)).unwrap_err()
        };
        assert!(matches!(
            check(&|sb| sb.cipher = "aes-cbc-essiv:sha256".into()),
            SuperblockError::UnknownCipher(c) if c == "aes-cbc-essiv:sha256"
        ));
        assert!(matches!(
            check(&|sb| sb.sector_size = 1024),
            SuperblockError::Invalid(_)
        ));
        assert!(matches!(
            check(&|sb| sb.size = 0),
            SuperblockError::Invalid(_)
        ));
        assert!(matches!(
            check(&|sb| sb.size = 4097),
            SuperblockError::Invalid(_)
        ));
        assert!(matches!(
            check(&|sb| sb.data_offset = 4096),
            SuperblockError::Invalid(_)
        ));
        assert!(matches!(
            check(&|sb| sb.data_offset = (1 << 20) + 512),
            SuperblockError::Invalid(_)
        ));
        assert!(matches!(
            check(&|sb| sb.size = u64::MAX - 4095),
            SuperblockError::Invalid(_)
        ));
        assert!(matches!(
            check(&|sb| sb.key_arn.clear()),
            SuperblockError::Invalid(_)
        ));
        assert!(matches!(
            check(&|sb| sb.wrapped_key.clear()),
            SuperblockError::Invalid(_)
        ));
        assert!(matches!(
            check(&|sb| sb.uuid = Uuid::from_bytes([1; 16])),
            SuperblockError::Invalid(m) if m.contains("encryption context")
        ));
        // 512-byte sectors are fine.
        let mut sb = sample();
        sb.sector_size = 512;
        sb.size = 512 * 3;
        assert_eq!(Superblock::decode(&sb.encode().unwrap()).unwrap(), sb);
    }

    /// Encodes without validation (test-only), to produce bytes a buggy or
    /// hostile writer could leave on disk.
    fn encode_unchecked(sb: &Superblock) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&sb.sequence.to_le_bytes());
        // Rebuild the body by hand from sb's fields.
        let mut body = Vec::new();
        body.extend_from_slice(sb.uuid.as_bytes());
        body.extend_from_slice(&sb.size.to_le_bytes());
        body.extend_from_slice(&sb.sector_size.to_le_bytes());
        put_bytes(&mut body, sb.cipher.as_bytes()).unwrap();
        body.extend_from_slice(&sb.data_offset.to_le_bytes());
        put_bytes(&mut body, sb.key_arn.as_bytes()).unwrap();
        put_len(&mut body, sb.encryption_context.len()).unwrap();
        for (k, v) in &sb.encryption_context {
            put_bytes(&mut body, k.as_bytes()).unwrap();
            put_bytes(&mut body, v.as_bytes()).unwrap();
        }
        put_bytes(&mut body, &sb.wrapped_key).unwrap();
        body.extend_from_slice(&sb.key_check);
        body.extend_from_slice(&sb.created.to_le_bytes());
        put_len(&mut bytes, body.len()).unwrap();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&[0u8; 32]);
        reseal(&mut bytes);
        bytes
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        let mut sb = sample();
        sb.sector_size = 1000;
        assert!(sb.encode().is_err());
        let mut sb = sample();
        sb.wrapped_key = vec![1; COPY_SIZE];
        assert!(matches!(sb.encode(), Err(SuperblockError::Invalid(m)) if m.contains("fits")));
    }

    fn mem_volume(sb: &Superblock) -> MemBackend {
        let b = MemBackend::new(2 << 20);
        let bytes = padded(sb).unwrap();
        b.write_at(PRIMARY_OFFSET, &bytes).unwrap();
        b.write_at(SECONDARY_OFFSET, &bytes).unwrap();
        b
    }

    #[test]
    fn corrupted_primary_opens_from_secondary() {
        let b = mem_volume(&sample());
        b.write_at(100, &[0xee; 8]).unwrap();
        let set = read_superblocks_from(&b);
        assert!(matches!(set.primary, Err(SuperblockError::BadChecksum)));
        let (slot, best) = set.best_slot().unwrap();
        assert_eq!(slot, Slot::Secondary);
        assert_eq!(*best, sample());
    }

    #[test]
    fn both_corrupted_is_a_clear_error() {
        let b = mem_volume(&sample());
        b.write_at(100, &[0xee; 8]).unwrap();
        b.write_at(SECONDARY_OFFSET, b"NOTENVOL").unwrap();
        let err = read_superblocks_from(&b).best().unwrap_err();
        assert_eq!(
            err.to_string(),
            "both superblock copies are invalid: primary: bad checksum; secondary: bad magic (not an envol volume)"
        );
        // An empty (all-zero) device says so too.
        let empty = MemBackend::new(1 << 20);
        let msg = read_superblocks_from(&empty)
            .best()
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("both superblock copies are invalid: primary: bad magic"));
        // A file too short for either copy: truncated, not a panic.
        let tiny = MemBackend::new(10);
        tiny.write_at(0, &sample().encode().unwrap()[..10]).unwrap();
        let msg = read_superblocks_from(&tiny).best().unwrap_err().to_string();
        assert_eq!(
            msg,
            "both superblock copies are invalid: primary: truncated; secondary: truncated"
        );
    }

    #[test]
    fn higher_sequence_wins() {
        let b = mem_volume(&sample());
        let mut newer = sample();
        newer.sequence = 9;
        newer.key_arn = "arn:aws:kms:us-east-1:111122223333:key/other".into();
        b.write_at(SECONDARY_OFFSET, &padded(&newer).unwrap())
            .unwrap();
        assert_eq!(*read_superblocks_from(&b).best().unwrap(), newer);
    }

    #[test]
    fn update_alternates_copies_and_keeps_both_equal() {
        let b = mem_volume(&sample());
        let mut sb = sample();
        let mut firsts = Vec::new();
        for round in 0..4u64 {
            let before = read_superblocks_from(&b);
            let expected_first = before.first_to_write(sb.sequence + 1);
            firsts.push(expected_first);
            sb.key_arn = format!("arn:aws:kms:us-east-1:111122223333:key/round-{round}");
            write_superblock_to(&b, &mut sb).unwrap();
            assert_eq!(sb.sequence, 2 + round);
            let set = read_superblocks_from(&b);
            assert_eq!(set.primary.as_ref().unwrap(), &sb);
            assert_eq!(set.secondary.as_ref().unwrap(), &sb);
        }
        assert_eq!(
            firsts,
            vec![
                Slot::Primary,
                Slot::Secondary,
                Slot::Primary,
                Slot::Secondary
            ]
        );
    }

    #[test]
    fn torn_second_write_leaves_first_copy_with_new_sequence() {
        let b = mem_volume(&sample());
        let mut sb = sample();
        sb.key_arn = "arn:aws:kms:us-east-1:111122223333:key/new".into();
        write_superblock_steps(&b, &mut sb, true).unwrap();
        assert_eq!(sb.sequence, 2);
        // The crash tore the second copy: its first 100 bytes are new, the
        // rest old. (Sequence 2 is even, so the primary went first.)
        let new_bytes = sb.encode().unwrap();
        b.write_at(SECONDARY_OFFSET, &new_bytes[..100]).unwrap();
        let set = read_superblocks_from(&b);
        assert!(set.secondary.is_err());
        let (slot, best) = set.best_slot().unwrap();
        assert_eq!(slot, Slot::Primary);
        assert_eq!(best, &sb);
        // The next update repairs the torn copy first and moves on.
        let mut again = best.clone();
        write_superblock_to(&b, &mut again).unwrap();
        assert_eq!(again.sequence, 3);
        let set = read_superblocks_from(&b);
        assert_eq!(set.primary.unwrap().sequence, 3);
        assert_eq!(set.secondary.unwrap().sequence, 3);
    }

    #[test]
    fn torn_first_write_leaves_old_copy() {
        let b = mem_volume(&sample());
        let mut sb = sample();
        sb.key_arn = "arn:aws:kms:us-east-1:111122223333:key/new".into();
        // Crash during the first write: the primary (first for sequence 2)
        // is half new, half old.
        let mut next = sb.clone();
        next.sequence = 2;
        b.write_at(PRIMARY_OFFSET, &next.encode().unwrap()[..150])
            .unwrap();
        let set = read_superblocks_from(&b);
        let (slot, best) = set.best_slot().unwrap();
        assert_eq!(slot, Slot::Secondary);
        assert_eq!(*best, sample());
    }

    #[test]
    fn create_volume_file_layout_and_refusal() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.envol");
        let sb = sample();
        let file = create_volume_file(&path, &sb, false).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), DATA_OFFSET + sb.size);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Sparse: only the two superblock copies are allocated.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let set = read_superblocks(&file);
        assert_eq!(set.primary.as_ref().unwrap(), &sb);
        assert_eq!(set.secondary.as_ref().unwrap(), &sb);
        drop(file);

        let err = create_volume_file(&path, &sb, false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut smaller = sample();
        smaller.size = 4096;
        let file = create_volume_file(&path, &smaller, true).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), DATA_OFFSET + 4096);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let mut updated = read_superblocks(&file).best().unwrap().clone();
        assert_eq!(updated, smaller);
        write_superblock(&file, &mut updated).unwrap();
        assert_eq!(read_superblocks(&file).best().unwrap().sequence, 2);
    }

    #[test]
    fn random_damage_to_both_copies_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let b = mem_volume(&sample());
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..(2 * COPY_SIZE as u64 - 8));
                let mut junk = [0u8; 8];
                rng.fill_bytes(&mut junk);
                b.write_at(at, &junk).unwrap();
            }
            let set = read_superblocks_from(&b);
            match set.best() {
                Ok(sb) => assert_eq!(*sb, sample()),
                Err(e) => assert!(e.to_string().starts_with("both superblock copies")),
            }
        }
    }
}
