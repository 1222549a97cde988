//! Envelope encryption: where a volume meets its master key.
//!
//! `create` asks the key service for a new data key, wrapped under a master
//! key and bound to the volume by the encryption context
//! `{"envol:volume": "<uuid>"}`, and writes it into a new volume's
//! superblock. `attach` reads the superblock, has the key service unwrap the
//! data key (the KMS decides, by key policy, whether this caller may),
//! checks it against the superblock's key check value, and opens the volume.
//! Once the key service has agreed, attaching locks the volume (one writer,
//! or any number of readers; see `volume::attachment`), and a read-write
//! attach rewrites a superblock copy found invalid from the valid one.
//! The plaintext data key is never on disk: it lives in a locked page
//! (`volume::DataKey`, a `secret_memory::LockedBox`: mlocked, left out of
//! core dumps, wiped on drop) inside the open volume, and before that only
//! for a moment in the key service's zeroizing reply buffer.
//!
//! A volume is a file or an RBD image ([`VolumeAddress`]); which one matters
//! only where it is opened or created ([`store`]): everything else goes
//! through the `Backend` trait.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::keys::{KeyError, KeyService};
use crate::volume::change_map::new_volume_record;
use crate::volume::change_record::CHANGE_MAP_OFFSET;
use crate::volume::rbd::{self, RbdBackend};
use crate::volume::superblock::Transition;
use crate::volume::{
    self, AttachMode, Backend, COPY_SIZE, DATA_KEY_LEN, DATA_OFFSET, DataKey, Slot, Superblock,
    SuperblockSet, Volume, volume_encryption_context,
};

pub mod grow;
pub mod hydrate;
pub mod lineage;
pub mod reencrypt;
pub mod store;

pub use store::{RBD_PREFIX, Store, VolumeAddress};

/// Why a volume could not be created or attached. One line each, naming the
/// volume, and for key problems the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// `volume`: as the user wrote it (a path, or `rbd:POOL/IMAGE`).
    #[error("{}", volume_message(.volume, .message))]
    Volume { volume: String, message: String },
    #[error("{0}")]
    Key(Box<KeyFailure>),
    /// `volume create` of a volume that exists, without `force`. Typed, so
    /// that a caller that never overwrites (a restore) can say it its way.
    #[error("{volume}: already exists: refusing to overwrite it (use --force)")]
    Exists { volume: String },
}

/// `VOLUME: MESSAGE`, unless the message names an RBD volume itself: the
/// RBD backend's errors are sentences about their image (`rbd:POOL/IMAGE
/// is already attached read-write by Ceph client …`), said once.
fn volume_message(volume: &str, message: &str) -> String {
    if volume.starts_with(RBD_PREFIX) && message.contains(volume) {
        message.to_string()
    } else {
        format!("{volume}: {message}")
    }
}

/// The key service refused (or could not be reached for) a volume's key.
#[derive(Debug)]
pub struct KeyFailure {
    /// The volume as the user wrote it.
    pub volume: String,
    pub action: &'static str,
    pub key: String,
    pub error: KeyError,
    pub hint: String,
}

impl std::fmt::Display for KeyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: cannot {} with key {}: {}{}",
            self.volume, self.action, self.key, self.error, self.hint
        )
    }
}

fn vol_err(volume: &VolumeAddress, message: impl std::fmt::Display) -> EnvelopeError {
    EnvelopeError::Volume {
        volume: volume.to_string(),
        message: message.to_string(),
    }
}

/// Puts what was being done in front of a volume error's message.
fn with_action(e: EnvelopeError, action: &str) -> EnvelopeError {
    match e {
        EnvelopeError::Volume { volume, message } => EnvelopeError::Volume {
            volume,
            message: format!("{action}: {message}"),
        },
        other => other,
    }
}

fn hint_for(error: &KeyError, key: &str, describe: &str) -> String {
    use crate::keys::KeyErrorKind::*;
    match error.kind {
        AccessDenied => " (the key policy does not allow this caller)".into(),
        // Hints say who can act, not what to type: the caller of `serve` is
        // usually not allowed to manage the key.
        Disabled => format!(
            " (the key is disabled: ask a principal allowed kms:EnableKey on it to run `envol key enable {key}`)"
        ),
        InvalidState => format!(
            " (the key is pending deletion: a principal allowed kms:CancelKeyDeletion and kms:EnableKey on it can restore it with `envol key cancel-deletion {key}`, then `envol key enable {key}`)"
        ),
        NotFound => " (the key does not exist, or was deleted: its volumes are unreadable)".into(),
        InvalidCiphertext => {
            " (the wrapped key does not belong to this volume, or the superblock was altered)"
                .into()
        }
        // The key client's message already names the KMS it could not reach.
        Unreachable if error.message.contains(describe) => String::new(),
        Unreachable => format!(" (cannot reach {describe})"),
        Credentials => format!(" (check the credentials used for {describe})"),
        Other => String::new(),
    }
}

/// Parameters of a new volume.
#[derive(Debug, Clone)]
pub struct NewVolume<'a> {
    pub volume: &'a VolumeAddress,
    pub size: u64,
    pub sector_size: u32,
    pub key: &'a str,
    pub force: bool,
}

/// Creates a volume (a file, or an RBD image) whose data key is wrapped
/// under `key`. An existing one is refused unless `force`, and even then
/// while it is attached.
pub async fn create<K: KeyService>(
    keys: &K,
    spec: NewVolume<'_>,
) -> Result<Superblock, EnvelopeError> {
    create_with(keys, spec, KeySource::Generate).await
}

/// A data key that exists already, as a snapshot's manifest holds it:
/// wrapped by `key_arn` under `encryption_context` (the context of the
/// volume it was made for).
#[derive(Debug, Clone, Copy)]
pub struct ExistingKey<'a> {
    pub key_arn: &'a str,
    pub wrapped_key: &'a [u8],
    pub encryption_context: &'a BTreeMap<String, String>,
}

/// Has the key service unwrap an existing data key (Decrypt: the key
/// policy decides, as for an attach). `what` names it in errors (a
/// snapshot's URL). Nothing is checked against a superblock: the caller
/// proves the key by what it authenticates (a snapshot's manifest).
pub async fn unwrap_existing_key<K: KeyService>(
    keys: &K,
    what: &str,
    existing: ExistingKey<'_>,
) -> Result<DataKey, EnvelopeError> {
    let plaintext = keys
        .unwrap_key(
            existing.key_arn,
            existing.wrapped_key,
            existing.encryption_context,
        )
        .await
        .map_err(|error| {
            EnvelopeError::Key(Box::new(KeyFailure {
                volume: what.to_string(),
                action: "unwrap the data key",
                key: existing.key_arn.to_string(),
                hint: hint_for(&error, existing.key_arn, &keys.describe()),
                error,
            }))
        })?;
    DataKey::from_slice(&plaintext).map_err(|e| EnvelopeError::Volume {
        volume: what.to_string(),
        message: e.to_string(),
    })
}

/// Creates a volume (refused if it exists) whose data key is `existing`
/// (`data_key`, already unwrapped by the caller): same master key, same
/// data key, a new uuid. The key service re-wraps the data key from the
/// old encryption context to the new volume's (ReEncrypt: the plaintext
/// does not travel), and the result is unwrapped once and checked against
/// `data_key`, which proves the new volume attachable before anything is
/// written into it. Ciphertext copied from the old volume (a same-key
/// snapshot restore) then reads as it did there.
pub async fn create_with_existing_key<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    size: u64,
    sector_size: u32,
    existing: ExistingKey<'_>,
    data_key: &DataKey,
) -> Result<Superblock, EnvelopeError> {
    let spec = NewVolume {
        volume,
        size,
        sector_size,
        key: existing.key_arn,
        force: false,
    };
    create_with(keys, spec, KeySource::Existing { existing, data_key }).await
}

/// Where a new volume's data key comes from.
#[derive(Clone, Copy)]
enum KeySource<'a> {
    /// A new one from the KMS, under `NewVolume::key`.
    Generate,
    /// An existing one, re-wrapped for the new volume.
    Existing {
        existing: ExistingKey<'a>,
        data_key: &'a DataKey,
    },
}

async fn create_with<K: KeyService>(
    keys: &K,
    spec: NewVolume<'_>,
    source: KeySource<'_>,
) -> Result<Superblock, EnvelopeError> {
    let volume = spec.volume;
    if spec.sector_size != 512 && spec.sector_size != 4096 {
        return Err(vol_err(
            volume,
            format!("sector size must be 512 or 4096, not {}", spec.sector_size),
        ));
    }
    if spec.size == 0 || !spec.size.is_multiple_of(u64::from(spec.sector_size)) {
        return Err(vol_err(
            volume,
            format!(
                "size {} is not a positive multiple of the sector size {}",
                spec.size, spec.sector_size
            ),
        ));
    }
    match volume {
        VolumeAddress::File(path) => create_file(keys, &spec, source, path).await,
        VolumeAddress::Rbd { image, ceph } => create_rbd(keys, &spec, source, ceph, image).await,
    }
}

/// The refusal of an existing volume without `--force`.
fn exists_without_force(volume: &VolumeAddress) -> EnvelopeError {
    EnvelopeError::Exists {
        volume: volume.to_string(),
    }
}

/// A volume file: refused if it exists (unless `force`, and even then
/// while attached) before the KMS is asked for anything.
async fn create_file<K: KeyService>(
    keys: &K,
    spec: &NewVolume<'_>,
    source: KeySource<'_>,
    path: &std::path::Path,
) -> Result<Superblock, EnvelopeError> {
    let volume = spec.volume;
    let exists = path.exists();
    if exists && !spec.force {
        return Err(exists_without_force(volume));
    }
    if exists {
        // An attached volume is refused before the KMS is asked for anything
        // (the file is locked again, and checked again, as it is written).
        // Read-only is enough to take a file's lock, and works on a file
        // the caller may not write (the write then fails clearly).
        let store = Store::open(volume, AttachMode::ReadOnly).map_err(|e| vol_err(volume, e))?;
        store
            .lock_attachment(AttachMode::ReadWrite)
            .map_err(|e| with_action(vol_err(volume, e), "refusing to overwrite it"))?;
    }
    let sb = new_superblock(keys, spec, source).await?;
    volume::create_volume_file(path, &sb, spec.force).map_err(|e| match exists {
        // Most likely the truncation or a write failed; an open or lock
        // failure (a race with another process) would have left it intact.
        true => vol_err(
            volume,
            format!("overwriting it failed part-way (the old volume may be lost): {e}; rerun with --force"),
        ),
        false => vol_err(volume, e),
    })?;
    Ok(sb)
}

/// An RBD image. A new image is made (and locked) before the KMS is asked
/// for a data key: creating it is what finds an existing one, atomically
/// in Ceph, so no data key is generated for an image that is refused, and
/// nobody attaches it half-written. If anything fails after that, the
/// image this call made is removed again. With `force`, an existing image
/// is checked not to be attached read-write before the KMS is asked (and
/// locked again as it is taken); once its superblocks or data are being
/// overwritten, a failure leaves the old volume lost, and says so.
async fn create_rbd<K: KeyService>(
    keys: &K,
    spec: &NewVolume<'_>,
    source: KeySource<'_>,
    ceph: &rbd::CephOptions,
    image: &rbd::RbdAddress,
) -> Result<Superblock, EnvelopeError> {
    let volume = spec.volume;
    let image_size = DATA_OFFSET.saturating_add(spec.size);
    match RbdBackend::create(ceph, image, image_size, false) {
        Ok(backend) => {
            let made = async {
                let sb = new_superblock(keys, spec, source).await?;
                write_image(&backend, &sb, false).map_err(|e| vol_err(volume, e))?;
                Ok(sb)
            }
            .await;
            // Closed (its lock released) before the image can be removed.
            drop(backend);
            made.map_err(|e| remove_made_image(e, ceph, image))
        }
        Err(rbd::RbdError::Exists(_)) if !spec.force => Err(exists_without_force(volume)),
        Err(rbd::RbdError::Exists(_)) => {
            // Refused, naming the holder, while another server has it
            // attached read-write; the check's own client is closed again
            // (its lock released) before the image is taken below.
            let store =
                Store::open(volume, AttachMode::ReadWrite).map_err(|e| vol_err(volume, e))?;
            store
                .lock_attachment(AttachMode::ReadWrite)
                .map_err(|e| with_action(vol_err(volume, e), "refusing to overwrite it"))?;
            drop(store);
            let sb = new_superblock(keys, spec, source).await?;
            let backend =
                RbdBackend::create(ceph, image, image_size, true).map_err(|e| match e {
                    rbd::RbdError::InUse { .. } => {
                        with_action(vol_err(volume, e), "refusing to overwrite it")
                    }
                    e => vol_err(
                        volume,
                        format!("overwriting it failed (the old volume may be damaged): {e}; rerun with --force"),
                    ),
                })?;
            write_image(&backend, &sb, true).map_err(|e| {
                vol_err(
                    volume,
                    format!("overwriting it failed part-way (the old volume is lost): {e}; rerun with --force"),
                )
            })?;
            Ok(sb)
        }
        Err(e) => Err(vol_err(volume, e)),
    }
}

/// `error`, after removing the image a failed create made (said too if
/// that fails: the user must remove it by hand).
fn remove_made_image(
    error: EnvelopeError,
    ceph: &rbd::CephOptions,
    image: &rbd::RbdAddress,
) -> EnvelopeError {
    match RbdBackend::remove(ceph, image) {
        Ok(()) => error,
        Err(e) => {
            let rm = format!("rbd rm {}/{}", image.pool, image.image);
            match error {
                EnvelopeError::Volume { volume, message } => EnvelopeError::Volume {
                    volume,
                    message: format!(
                        "{message} (and the image made for it could not be removed: {e}; remove it with `{rm}`)"
                    ),
                },
                // Refused before any image was made: nothing to add.
                exists @ EnvelopeError::Exists { .. } => exists,
                EnvelopeError::Key(mut failure) => {
                    failure.hint.push_str(&format!(
                        " (and the image made for the volume could not be removed: {e}; remove it with `{rm}`)"
                    ));
                    EnvelopeError::Key(failure)
                }
            }
        }
    }
}

/// A new volume's superblock: a new data key from the KMS, wrapped under
/// `spec.key` and bound to a new uuid.
async fn new_superblock<K: KeyService>(
    keys: &K,
    spec: &NewVolume<'_>,
    source: KeySource<'_>,
) -> Result<Superblock, EnvelopeError> {
    let volume = spec.volume;
    let uuid = Uuid::new_v4();
    let context = volume_encryption_context(&uuid);
    if let KeySource::Existing { existing, data_key } = source {
        return rewrapped_superblock(keys, spec, uuid, existing, data_key).await;
    }
    let wrapped = keys
        .generate_wrapped_key(spec.key, &context, DATA_KEY_LEN)
        .await
        .map_err(|e| key_failure(volume, "generate a data key", spec.key, e, keys))?;
    // Unwrap once to record the key check value: it lets every later attach
    // prove the key it got is this volume's key. It also proves, before any
    // data is written, that the creator can attach what it created.
    let plaintext = keys
        .unwrap_key(&wrapped.key_arn, &wrapped.blob, &context)
        .await
        .map_err(|e| key_failure(volume, "unwrap the new data key", spec.key, e, keys))?;
    let data_key = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
    drop(plaintext);
    Superblock::new(
        uuid,
        spec.size,
        spec.sector_size,
        wrapped.key_arn,
        wrapped.blob,
        data_key.key_check(&uuid),
        now_unix_seconds(),
    )
    .map_err(|e| vol_err(volume, e))
}

/// A new volume's superblock for an existing data key: re-wrapped from
/// its old context into the new uuid's, unwrapped once to prove it is the
/// same key.
async fn rewrapped_superblock<K: KeyService>(
    keys: &K,
    spec: &NewVolume<'_>,
    uuid: Uuid,
    existing: ExistingKey<'_>,
    data_key: &DataKey,
) -> Result<Superblock, EnvelopeError> {
    let volume = spec.volume;
    let context = volume_encryption_context(&uuid);
    let wrapped = keys
        .rewrap_key(
            existing.key_arn,
            existing.wrapped_key,
            existing.key_arn,
            existing.encryption_context,
            &context,
        )
        .await
        .map_err(|e| {
            key_failure(
                volume,
                "re-wrap the data key for the new volume",
                existing.key_arn,
                e,
                keys,
            )
        })?;
    let plaintext = keys
        .unwrap_key(&wrapped.key_arn, &wrapped.blob, &context)
        .await
        .map_err(|e| key_failure(volume, "unwrap the re-wrapped data key", spec.key, e, keys))?;
    let rewrapped = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
    drop(plaintext);
    let key_check = data_key.key_check(&uuid);
    if !rewrapped.verify_check(&uuid, &key_check) {
        return Err(vol_err(
            volume,
            "the key service re-wrapped a different data key; nothing was written",
        ));
    }
    Superblock::new(
        uuid,
        spec.size,
        spec.sector_size,
        wrapped.key_arn,
        wrapped.blob,
        key_check,
        now_unix_seconds(),
    )
    .map_err(|e| vol_err(volume, e))
}

fn now_unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes a volume this process made and no longer has open (a failed
/// restore's): the file, or the RBD image.
pub fn remove_volume(volume: &VolumeAddress) -> Result<(), EnvelopeError> {
    match volume {
        VolumeAddress::File(path) => std::fs::remove_file(path).map_err(|e| vol_err(volume, e)),
        VolumeAddress::Rbd { image, ceph } => {
            RbdBackend::remove(ceph, image).map_err(|e| vol_err(volume, e))
        }
    }
}

/// Writes `sb`'s volume onto an image made (or, `reused`, taken) for it,
/// locked for the writing (a second lock by the same client is a no-op):
/// the data area reads as zeros (a reused image's old ciphertext is
/// zeroed, as a file is truncated), then both superblock copies are
/// written and flushed.
fn write_image(backend: &RbdBackend, sb: &Superblock, reused: bool) -> Result<(), String> {
    backend
        .lock_attachment(AttachMode::ReadWrite)
        .map_err(|e| e.to_string())?;
    if reused {
        backend
            .punch_hole(DATA_OFFSET, sb.size)
            .map_err(|e| format!("cannot zero the old data area: {e}"))?;
    }
    let mut bytes = sb.encode().map_err(|e| e.to_string())?;
    // Padding overwrites whatever a longer earlier copy left behind.
    bytes.resize(COPY_SIZE, 0);
    for slot in [Slot::Primary, Slot::Secondary] {
        backend
            .write_at(slot.offset(), &bytes)
            .map_err(|e| format!("cannot write the {slot}: {e}"))?;
    }
    // A new volume's changes are tracked from its creation (this also
    // replaces a reused image's old record).
    backend
        .write_at(CHANGE_MAP_OFFSET, &new_volume_record(sb))
        .map_err(|e| format!("cannot write the change map: {e}"))?;
    backend.flush().map_err(|e| e.to_string())
}

/// Reads both superblock copies of a volume (no KMS involved). Takes no
/// attachment lock: it changes nothing, so it works on an attached volume
/// too (and cannot get in the way of an attach).
pub fn inspect(volume: &VolumeAddress) -> Result<SuperblockSet, EnvelopeError> {
    let store = Store::open(volume, AttachMode::ReadOnly).map_err(|e| vol_err(volume, e))?;
    Ok(volume::read_superblocks_from(store.backend()))
}

/// What `volume info` shows of a volume, read without its key and
/// without a lock: both superblock copies, and what its change map says
/// (`None` when no superblock copy is valid).
pub struct Inspection {
    pub copies: SuperblockSet,
    pub changes: Option<volume::StoredChanges>,
}

/// [`inspect`], and the change map too (one open of the store).
pub fn inspect_with_changes(volume: &VolumeAddress) -> Result<Inspection, EnvelopeError> {
    let store = Store::open(volume, AttachMode::ReadOnly).map_err(|e| vol_err(volume, e))?;
    let copies = volume::read_superblocks_from(store.backend());
    let changes = copies
        .best()
        .ok()
        .map(|sb| volume::read_stored_changes(store.backend(), sb));
    Ok(Inspection { copies, changes })
}

/// Who has a volume attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachers {
    /// A file's holders, as `/proc/locks` shows them (best effort: empty
    /// when nobody, or when `/proc` does not say).
    Processes(Vec<volume::Holder>),
    /// An RBD image's exclusive-lock owners (read-write attachments), by
    /// Ceph client address.
    CephClients(Vec<String>),
}

impl Attachers {
    pub fn is_empty(&self) -> bool {
        match self {
            Attachers::Processes(h) => h.is_empty(),
            Attachers::CephClients(c) => c.is_empty(),
        }
    }
}

/// Who has a volume attached (no lock taken).
pub fn attached_by(volume: &VolumeAddress) -> Result<Attachers, EnvelopeError> {
    match volume {
        VolumeAddress::File(path) => {
            let file = std::fs::File::open(path).map_err(|e| vol_err(volume, e))?;
            Ok(Attachers::Processes(volume::attachment::holders(&file)))
        }
        VolumeAddress::Rbd { image, ceph } => rbd::attached_by(ceph, image)
            .map(Attachers::CephClients)
            .map_err(|e| vol_err(volume, e)),
    }
}

/// A volume opened for an attachment in `mode`, with both superblock
/// copies as last read, and the newest valid one.
struct OpenedVolume {
    store: Store,
    copies: SuperblockSet,
    superblock: Superblock,
}

impl OpenedVolume {
    /// Opens a volume (read-write unless `mode` is read-only) and reads its
    /// superblock copies. Not locked yet: see [`Self::lock`].
    fn open(volume: &VolumeAddress, mode: AttachMode) -> Result<OpenedVolume, EnvelopeError> {
        let store = Store::open(volume, mode).map_err(|e| vol_err(volume, e))?;
        let (copies, superblock) = read_copies(volume, store.backend())?;
        Ok(OpenedVolume {
            store,
            copies,
            superblock,
        })
    }

    /// Locks the volume for an attachment in `mode` (refused, naming the
    /// holder, when another attachment conflicts; the lock lives as long as
    /// the store), then reads the superblock copies again: under the
    /// lock, no other writer is in the middle of updating them.
    fn lock(self, volume: &VolumeAddress, mode: AttachMode) -> Result<OpenedVolume, EnvelopeError> {
        self.store
            .lock_attachment(mode)
            .map_err(|e| vol_err(volume, e))?;
        let (copies, superblock) = read_copies(volume, self.store.backend())?;
        Ok(OpenedVolume {
            store: self.store,
            copies,
            superblock,
        })
    }
}

fn read_copies(
    volume: &VolumeAddress,
    backend: &dyn Backend,
) -> Result<(SuperblockSet, Superblock), EnvelopeError> {
    let copies = volume::read_superblocks_from(backend);
    let superblock = copies.best().map_err(|e| vol_err(volume, e))?.clone();
    Ok((copies, superblock))
}

/// One copy invalid, the other valid: a writer rewrites the invalid one
/// from the valid one (crash-safely), a reader only says so. Returns the
/// superblock to use. The valid copy has already proved itself by
/// unwrapping to the key its key check value names.
fn repair_damaged_copy(
    volume: &VolumeAddress,
    opened: &OpenedVolume,
    mode: AttachMode,
) -> Superblock {
    let Some((slot, why)) = opened.copies.damaged() else {
        return opened.superblock.clone();
    };
    if mode == AttachMode::ReadOnly {
        tracing::warn!(
            "{volume}: superblock {slot} is invalid ({why}); attached read-only from the other copy, not repaired (a read-write attach repairs it)"
        );
        return opened.superblock.clone();
    }
    tracing::warn!(
        "{volume}: superblock {slot} is invalid ({why}); rewriting it from the other copy"
    );
    match volume::repair_superblock_to(opened.store.backend(), &opened.copies) {
        Ok(Some(sb)) => {
            tracing::info!(
                "{volume}: superblock repaired: both copies valid at sequence {}",
                sb.sequence
            );
            sb
        }
        Ok(None) => opened.superblock.clone(),
        // The valid copy is still there (the update never overwrites it
        // before the other is synced): serve from it, and say so.
        Err(e) => {
            tracing::warn!(
                "{volume}: could not repair the superblock {slot}: {e}; serving from the other copy"
            );
            volume::read_superblocks_from(opened.store.backend())
                .best()
                .cloned()
                .unwrap_or_else(|_| opened.superblock.clone())
        }
    }
}

/// Unwraps the new data key of a re-encryption in progress and checks it.
async fn unwrap_new_key<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    sb: &Superblock,
    t: &Transition,
) -> Result<DataKey, EnvelopeError> {
    let plaintext = keys
        .unwrap_key(&t.new_key_arn, &t.new_wrapped_key, &sb.encryption_context)
        .await
        .map_err(|e| key_failure(volume, "unwrap the new data key", &t.new_key_arn, e, keys))?;
    let key = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
    drop(plaintext);
    if !key.verify_check(&sb.uuid, &t.new_key_check) {
        return Err(vol_err(volume, volume::VolumeError::WrongNewKey));
    }
    Ok(key)
}

/// A refusal (or failure) of the key service, with the hint for the user.
fn key_failure<K: KeyService>(
    volume: &VolumeAddress,
    action: &'static str,
    key: &str,
    error: KeyError,
    keys: &K,
) -> EnvelopeError {
    EnvelopeError::Key(Box::new(KeyFailure {
        volume: volume.to_string(),
        action,
        key: key.to_string(),
        hint: hint_for(&error, key, &keys.describe()),
        error,
    }))
}

/// How to attach a volume, beyond [`attach`]'s read-only flag.
#[derive(Default)]
pub struct AttachOptions {
    pub read_only: bool,
    /// Take an RBD image's exclusive lock from its holder (see
    /// [`rbd::TakeOver`]); the holder's client is blocklisted. Refused for
    /// a file (its lock dies with its holder) and for a read-only attach.
    pub take_over: Option<rbd::TakeOver>,
    /// Called once if another server fences this one off an RBD image
    /// (its client blocklisted): nothing this attachment writes reaches
    /// the image any more. Unused for a file.
    pub on_fenced: Option<Box<dyn Fn() + Send + Sync>>,
}

/// Opens a volume for serving: unwraps its data key through `keys`, locks
/// the volume (exclusively unless `read_only`; refused, naming the holder,
/// when another attachment conflicts), and repairs an invalid superblock
/// copy if attaching read-write. The lock lasts as long as the returned
/// volume.
pub async fn attach<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    read_only: bool,
) -> Result<Volume, EnvelopeError> {
    attach_with(
        keys,
        volume,
        AttachOptions {
            read_only,
            ..AttachOptions::default()
        },
    )
    .await
}

/// [`attach`], with a take-over of an RBD image and a fencing hook.
pub async fn attach_with<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    options: AttachOptions,
) -> Result<Volume, EnvelopeError> {
    prepare_attach(keys, volume, options).await?.complete()
}

/// A volume opened, its data key unwrapped and checked, not yet taken over
/// nor locked: the first half of an attach. A server attaching several
/// volumes prepares them all before it completes any, so that a volume the
/// key policy refuses stops the server before it has fenced anybody off
/// another one (a take-over cannot be undone).
pub struct PreparedAttachment {
    volume: VolumeAddress,
    mode: AttachMode,
    unlocked: OpenedVolume,
    data_key: DataKey,
    /// The new data key of a re-encryption in progress, checked.
    new_data_key: Option<DataKey>,
    take_over: Option<rbd::TakeOver>,
    on_fenced: Option<Box<dyn Fn() + Send + Sync>>,
    /// A lazy restore still in progress (read before the lock: for the
    /// caller to find its source; read again under the lock).
    hydration: Option<volume::HydrationRecord>,
}

/// Opens `volume`, and has the key service unwrap its data key (checked
/// against the superblock's key check value). Changes nothing: no lock is
/// taken or broken (see [`PreparedAttachment::complete`]).
pub async fn prepare_attach<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    options: AttachOptions,
) -> Result<PreparedAttachment, EnvelopeError> {
    let read_only = options.read_only;
    let mode = if read_only {
        AttachMode::ReadOnly
    } else {
        AttachMode::ReadWrite
    };
    if options.take_over.is_some() {
        check_take_over(volume, read_only)?;
    }
    // The key policy decides first, as AWS authorizes before it looks at
    // state: a caller it refuses learns nothing of who has the volume
    // attached. So the superblock is read, and the key unwrapped, before
    // the lock; under the lock the superblock is read again and must be the
    // same volume with the same key.
    let unlocked = OpenedVolume::open(volume, mode)?;
    let sb = &unlocked.superblock;
    let plaintext = keys
        .unwrap_key(&sb.key_arn, &sb.wrapped_key, &sb.encryption_context)
        .await
        .map_err(|e| key_failure(volume, "unwrap the data key", &sb.key_arn, e, keys))?;
    let data_key = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
    drop(plaintext);
    if !data_key.verify_check(&sb.uuid, &sb.key_check) {
        return Err(vol_err(volume, volume::VolumeError::WrongKey));
    }
    let new_data_key = match &sb.transition {
        None => None,
        Some(t) => {
            if read_only && !t.hotzone.is_empty() {
                return Err(vol_err(volume, volume::VolumeError::HotzoneNeedsRecovery));
            }
            Some(unwrap_new_key(keys, volume, sb, t).await?)
        }
    };
    let hydration = volume::HydrationRecord::load(unlocked.store.backend(), &unlocked.superblock)
        .map_err(|e| vol_err(volume, e))?;
    Ok(PreparedAttachment {
        hydration,
        volume: volume.clone(),
        mode,
        unlocked,
        data_key,
        new_data_key,
        take_over: options.take_over,
        on_fenced: options.on_fenced,
    })
}

impl PreparedAttachment {
    /// The unwrapped data key, checked against the superblock: for what
    /// must be derived from it before [`Self::complete`] hands it to the
    /// volume (a snapshot manifest's MAC key). It never leaves `DataKey`.
    pub fn data_key(&self) -> &DataKey {
        &self.data_key
    }

    /// The superblock as read before the lock (the volume's uuid, size,
    /// key): for a snapshot of a volume another server has attached.
    pub fn superblock(&self) -> &volume::Superblock {
        &self.unlocked.superblock
    }

    /// The lazy restore still in progress on this volume, if any: a
    /// server passes its source to [`Self::complete_hydrating`].
    pub fn hydration(&self) -> Option<&volume::HydrationRecord> {
        self.hydration.as_ref()
    }

    /// Takes the volume over if asked (blocklisting its holder), locks it
    /// (refused, naming the holder, when another attachment conflicts),
    /// checks it is still the volume whose key was unwrapped, repairs an
    /// invalid superblock copy if read-write, and opens it. A volume whose
    /// lazy restore is still running is refused: only a server that
    /// fetches its missing chunks may open it ([`Self::complete_hydrating`]).
    pub fn complete(self) -> Result<Volume, EnvelopeError> {
        Ok(self.complete_with(None)?.0)
    }

    /// [`Self::complete`] for a volume whose lazy restore is still running:
    /// missing chunks come from `fetcher`. Returns the hydration state for
    /// background hydration (`None` if the restore completed meanwhile).
    pub fn complete_hydrating(
        self,
        fetcher: Arc<dyn volume::ChunkFetcher>,
    ) -> Result<(Volume, Option<Arc<volume::Hydration>>), EnvelopeError> {
        self.complete_with(Some(fetcher))
    }

    fn complete_with(
        self,
        fetcher: Option<Arc<dyn volume::ChunkFetcher>>,
    ) -> Result<(Volume, Option<Arc<volume::Hydration>>), EnvelopeError> {
        let volume = &self.volume;
        let mode = self.mode;
        let data_key = self.data_key;
        let uuid = self.unlocked.superblock.uuid;
        if let (Some(policy), Store::Rbd(backend)) = (self.take_over, &self.unlocked.store) {
            // Only a caller the key policy lets use the volume may fence its
            // holder: the break comes after the unwrap.
            match backend.take_over(policy) {
                Ok(Some(holder)) => tracing::warn!(
                    "{volume}: took the volume over from {holder} (its Ceph client is blocklisted: it can write nothing more)"
                ),
                Ok(None) => {
                    tracing::info!("{volume}: nobody held the volume; nothing to take over")
                }
                Err(e) => return Err(with_action(vol_err(volume, e), "cannot take over")),
            }
        }
        let opened = self.unlocked.lock(volume, mode)?;
        // A re-wrap in between changes the wrapped key, not the data key; a
        // `create --force` in between is another volume.
        let now = &opened.superblock;
        let new_key_matches = match (&now.transition, &self.new_data_key) {
            (None, _) => true,
            (Some(t), Some(new)) => new.verify_check(&now.uuid, &t.new_key_check),
            (Some(_), None) => false,
        };
        if now.uuid != uuid || !data_key.verify_check(&now.uuid, &now.key_check) || !new_key_matches
        {
            return Err(vol_err(
                volume,
                "the volume was replaced (or its data key changed) while it was being attached: try again",
            ));
        }
        if mode == AttachMode::ReadOnly
            && now
                .transition
                .as_ref()
                .is_some_and(|t| !t.hotzone.is_empty())
        {
            return Err(vol_err(volume, volume::VolumeError::HotzoneNeedsRecovery));
        }
        // Repair only from a copy whose key proved to be the volume's key.
        let sb = repair_damaged_copy(volume, &opened, mode);
        if let (Some(on_fenced), Store::Rbd(backend)) = (self.on_fenced, &opened.store) {
            backend.on_fenced(on_fenced);
        }
        let record = volume::HydrationRecord::load(opened.store.backend(), &sb)
            .map_err(|e| vol_err(volume, e))?;
        if let Some(record) = record {
            let Some(fetcher) = fetcher else {
                return Err(vol_err(volume, still_hydrating(&record)));
            };
            if mode == AttachMode::ReadOnly || sb.transition.is_some() {
                return Err(vol_err(
                    volume,
                    format!(
                        "{}; until then it is served read-write only",
                        still_hydrating(&record)
                    ),
                ));
            }
            let (opened_volume, hydration) = opened
                .store
                .into_hydrating_volume(&sb, data_key, record, fetcher)
                .map_err(|e| vol_err(volume, e))?;
            return Ok((opened_volume, Some(hydration)));
        }
        let opened_volume = match (sb.transition.is_some(), self.new_data_key) {
            (true, Some(new)) => opened.store.into_transition_volume(&sb, data_key, new),
            _ => opened.store.into_volume(&sb, data_key),
        }
        .map_err(|e| vol_err(volume, e))?;
        Ok((
            opened_volume.with_read_only(mode == AttachMode::ReadOnly),
            None,
        ))
    }
}

/// Why a volume whose lazy restore is running cannot be opened here.
pub(crate) fn still_hydrating(record: &volume::HydrationRecord) -> String {
    let (fetched, total) = record.progress();
    format!(
        "it is still being restored from {} ({fetched} of {total} chunks fetched): serve it (envol serve) to finish the restore",
        record.header.source.snapshot
    )
}

/// A take-over is for a writer of an RBD image: a file's lock is dropped
/// by the kernel when its holder dies, and a reader takes nobody's place.
fn check_take_over(volume: &VolumeAddress, read_only: bool) -> Result<(), EnvelopeError> {
    if volume.rbd_image().is_none() {
        return Err(vol_err(
            volume,
            "--take-over applies to rbd: volumes only (a file's lock is released when its holder dies)",
        ));
    }
    if read_only {
        return Err(vol_err(
            volume,
            "--take-over is for a read-write attachment, not a read-only one",
        ));
    }
    Ok(())
}

/// The outcome of a re-wrap.
#[derive(Debug)]
pub struct Rewrapped {
    pub old_key_arn: String,
    pub superblock: Superblock,
}

/// Re-wraps a volume's data key under the newest version of its key, or
/// under another key (ReEncrypt): the data area is not touched. The new
/// wrapped key is unwrapped and checked against the key check value *before*
/// the superblock changes, so a re-wrap never leaves a volume its owner
/// cannot attach; the superblock update itself is crash-safe (older copy
/// first, sync, then the other).
pub async fn rewrap<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    new_key: Option<&str>,
) -> Result<Rewrapped, EnvelopeError> {
    // A writer that reads, changes and writes the superblock: locked
    // before the read that the change is based on.
    let opened = OpenedVolume::open(volume, AttachMode::ReadWrite)?
        .lock(volume, AttachMode::ReadWrite)
        .map_err(|e| with_action(e, "cannot re-wrap"))?;
    let mut sb = opened.superblock;
    if sb.transition.is_some() {
        return Err(vol_err(
            volume,
            "cannot re-wrap: a data-key re-encryption is in progress; finish it first (`envol volume reencrypt`)",
        ));
    }
    let old_key_arn = sb.key_arn.clone();
    let destination = new_key.unwrap_or(&old_key_arn).to_string();
    let wrapped = keys
        .rewrap_key(
            &old_key_arn,
            &sb.wrapped_key,
            &destination,
            &sb.encryption_context,
            &sb.encryption_context,
        )
        .await
        .map_err(|e| key_failure(volume, "re-wrap the data key", &destination, e, keys))?;
    let plaintext = keys
        .unwrap_key(&wrapped.key_arn, &wrapped.blob, &sb.encryption_context)
        .await
        .map_err(|e| {
            key_failure(
                volume,
                "unwrap the re-wrapped data key (superblock unchanged)",
                &wrapped.key_arn,
                e,
                keys,
            )
        })?;
    let data_key = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
    drop(plaintext);
    if !data_key.verify_check(&sb.uuid, &sb.key_check) {
        return Err(vol_err(
            volume,
            "the re-wrapped key does not match the volume's key check value; superblock unchanged",
        ));
    }
    sb.key_arn = wrapped.key_arn;
    sb.wrapped_key = wrapped.blob;
    volume::write_superblock_to(opened.store.backend(), &mut sb).map_err(|e| vol_err(volume, e))?;
    Ok(Rewrapped {
        old_key_arn,
        superblock: sb,
    })
}

#[cfg(test)]
mod tests;
