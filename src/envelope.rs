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

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::keys::{KeyError, KeyService};
use crate::volume::{
    self, AttachMode, Backend, DATA_KEY_LEN, DataKey, FileBackend, Superblock, SuperblockSet,
    Volume, volume_encryption_context,
};

/// Why a volume could not be created or attached. One line each, naming the
/// volume, and for key problems the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("{path}: {message}")]
    Volume { path: PathBuf, message: String },
    #[error("{0}")]
    Key(Box<KeyFailure>),
}

/// The key service refused (or could not be reached for) a volume's key.
#[derive(Debug)]
pub struct KeyFailure {
    pub path: PathBuf,
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
            self.path.display(),
            self.action,
            self.key,
            self.error,
            self.hint
        )
    }
}

fn vol_err(path: &Path, message: impl std::fmt::Display) -> EnvelopeError {
    EnvelopeError::Volume {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Puts what was being done in front of a volume error's message.
fn with_action(e: EnvelopeError, action: &str) -> EnvelopeError {
    match e {
        EnvelopeError::Volume { path, message } => EnvelopeError::Volume {
            path,
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
    pub path: &'a Path,
    pub size: u64,
    pub sector_size: u32,
    pub key: &'a str,
    pub force: bool,
}

/// Creates a volume file whose data key is wrapped under `key`.
pub async fn create<K: KeyService>(
    keys: &K,
    spec: NewVolume<'_>,
) -> Result<Superblock, EnvelopeError> {
    let path = spec.path;
    if spec.sector_size != 512 && spec.sector_size != 4096 {
        return Err(vol_err(
            path,
            format!("sector size must be 512 or 4096, not {}", spec.sector_size),
        ));
    }
    if spec.size == 0 || !spec.size.is_multiple_of(u64::from(spec.sector_size)) {
        return Err(vol_err(
            path,
            format!(
                "size {} is not a positive multiple of the sector size {}",
                spec.size, spec.sector_size
            ),
        ));
    }
    if path.exists() && !spec.force {
        return Err(vol_err(
            path,
            "already exists: refusing to overwrite it (use --force)",
        ));
    }
    if spec.force && path.exists() {
        // An attached volume is refused before the KMS is asked for anything
        // (`create_volume_file` checks again, holding the lock as it writes).
        let file = std::fs::File::open(path).map_err(|e| vol_err(path, e))?;
        FileBackend::new(file)
            .lock_attachment(AttachMode::ReadWrite)
            .map_err(|e| with_action(vol_err(path, e), "refusing to overwrite it"))?;
    }
    let uuid = Uuid::new_v4();
    let context = volume_encryption_context(&uuid);
    let wrapped = keys
        .generate_wrapped_key(spec.key, &context, DATA_KEY_LEN)
        .await
        .map_err(|e| key_failure(path, "generate a data key", spec.key, e, keys))?;
    // Unwrap once to record the key check value: it lets every later attach
    // prove the key it got is this volume's key. It also proves, before any
    // data is written, that the creator can attach what it created.
    let plaintext = keys
        .unwrap_key(&wrapped.key_arn, &wrapped.blob, &context)
        .await
        .map_err(|e| key_failure(path, "unwrap the new data key", spec.key, e, keys))?;
    let data_key = DataKey::from_slice(&plaintext).map_err(|e| vol_err(path, e))?;
    drop(plaintext);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sb = Superblock::new(
        uuid,
        spec.size,
        spec.sector_size,
        wrapped.key_arn,
        wrapped.blob,
        data_key.key_check(&uuid),
        created,
    )
    .map_err(|e| vol_err(path, e))?;
    volume::create_volume_file(path, &sb, spec.force).map_err(|e| match spec.force {
        true => with_action(vol_err(path, e), "refusing to overwrite it"),
        false => vol_err(path, e),
    })?;
    Ok(sb)
}

/// Reads both superblock copies of a volume file (no KMS involved). Takes
/// no attachment lock: it changes nothing, so it works on an attached
/// volume too (and cannot get in the way of an attach).
pub fn inspect(path: &Path) -> Result<SuperblockSet, EnvelopeError> {
    let file = std::fs::File::open(path).map_err(|e| vol_err(path, e))?;
    Ok(volume::read_superblocks(&file))
}

/// Who has a volume file attached, as `/proc/locks` shows it (best effort,
/// no lock taken: empty when nobody, or when `/proc` does not say).
pub fn attached_by(path: &Path) -> Result<Vec<volume::Holder>, EnvelopeError> {
    let file = std::fs::File::open(path).map_err(|e| vol_err(path, e))?;
    Ok(volume::attachment::holders(&file))
}

/// A volume file opened for an attachment in `mode`, with both superblock
/// copies as last read, and the newest valid one.
struct OpenedFile {
    backend: FileBackend,
    copies: SuperblockSet,
    superblock: Superblock,
}

impl OpenedFile {
    /// Opens a volume file (read-write unless `mode` is read-only) and
    /// reads its superblock copies. Not locked yet: see [`Self::lock`].
    fn open(path: &Path, mode: AttachMode) -> Result<OpenedFile, EnvelopeError> {
        let file = OpenOptions::new()
            .read(true)
            .write(mode == AttachMode::ReadWrite)
            .open(path)
            .map_err(|e| vol_err(path, e))?;
        let backend = FileBackend::new(file);
        let (copies, superblock) = read_copies(path, &backend)?;
        Ok(OpenedFile {
            backend,
            copies,
            superblock,
        })
    }

    /// Locks the file for an attachment in `mode` (refused, naming the
    /// holder, when another attachment conflicts; the lock lives as long as
    /// the backend), then reads the superblock copies again: under the
    /// lock, no other writer is in the middle of updating them.
    fn lock(self, path: &Path, mode: AttachMode) -> Result<OpenedFile, EnvelopeError> {
        self.backend
            .lock_attachment(mode)
            .map_err(|e| vol_err(path, e))?;
        let (copies, superblock) = read_copies(path, &self.backend)?;
        Ok(OpenedFile {
            backend: self.backend,
            copies,
            superblock,
        })
    }
}

fn read_copies(
    path: &Path,
    backend: &FileBackend,
) -> Result<(SuperblockSet, Superblock), EnvelopeError> {
    let copies = volume::read_superblocks_from(backend);
    let superblock = copies.best().map_err(|e| vol_err(path, e))?.clone();
    Ok((copies, superblock))
}

/// One copy invalid, the other valid: a writer rewrites the invalid one
/// from the valid one (crash-safely), a reader only says so. Returns the
/// superblock to use. The valid copy has already proved itself by
/// unwrapping to the key its key check value names.
fn repair_damaged_copy(path: &Path, opened: &OpenedFile, mode: AttachMode) -> Superblock {
    let Some((slot, why)) = opened.copies.damaged() else {
        return opened.superblock.clone();
    };
    if mode == AttachMode::ReadOnly {
        tracing::warn!(
            "{}: superblock {slot} is invalid ({why}); attached read-only from the other copy, not repaired (a read-write attach repairs it)",
            path.display()
        );
        return opened.superblock.clone();
    }
    tracing::warn!(
        "{}: superblock {slot} is invalid ({why}); rewriting it from the other copy",
        path.display()
    );
    match volume::repair_superblock_to(&opened.backend, &opened.copies) {
        Ok(Some(sb)) => {
            tracing::info!(
                "{}: superblock repaired: both copies valid at sequence {}",
                path.display(),
                sb.sequence
            );
            sb
        }
        Ok(None) => opened.superblock.clone(),
        // The valid copy is still there (the update never overwrites it
        // before the other is synced): serve from it, and say so.
        Err(e) => {
            tracing::warn!(
                "{}: could not repair the superblock {slot}: {e}; serving from the other copy",
                path.display()
            );
            volume::read_superblocks_from(&opened.backend)
                .best()
                .cloned()
                .unwrap_or_else(|_| opened.superblock.clone())
        }
    }
}

/// A refusal (or failure) of the key service, with the hint for the user.
fn key_failure<K: KeyService>(
    path: &Path,
    action: &'static str,
    key: &str,
    error: KeyError,
    keys: &K,
) -> EnvelopeError {
    EnvelopeError::Key(Box::new(KeyFailure {
        path: path.to_path_buf(),
        action,
        key: key.to_string(),
        hint: hint_for(&error, key, &keys.describe()),
        error,
    }))
}

/// Opens a volume for serving: unwraps its data key through `keys`, locks
/// the volume (exclusively unless `read_only`; refused, naming the holder,
/// when another attachment conflicts), and repairs an invalid superblock
/// copy if attaching read-write. The lock lasts as long as the returned
/// volume.
pub async fn attach<K: KeyService>(
    keys: &K,
    path: &Path,
    read_only: bool,
) -> Result<Volume, EnvelopeError> {
    let mode = if read_only {
        AttachMode::ReadOnly
    } else {
        AttachMode::ReadWrite
    };
    // The key policy decides first, as AWS authorizes before it looks at
    // state: a caller it refuses learns nothing of who has the volume
    // attached. So the superblock is read, and the key unwrapped, before
    // the lock; under the lock the superblock is read again and must be the
    // same volume with the same key.
    let unlocked = OpenedFile::open(path, mode)?;
    let sb = &unlocked.superblock;
    let plaintext = keys
        .unwrap_key(&sb.key_arn, &sb.wrapped_key, &sb.encryption_context)
        .await
        .map_err(|e| key_failure(path, "unwrap the data key", &sb.key_arn, e, keys))?;
    let data_key = DataKey::from_slice(&plaintext).map_err(|e| vol_err(path, e))?;
    drop(plaintext);
    if !data_key.verify_check(&sb.uuid, &sb.key_check) {
        return Err(vol_err(path, volume::VolumeError::WrongKey));
    }
    let uuid = sb.uuid;
    let opened = unlocked.lock(path, mode)?;
    // A re-wrap in between changes the wrapped key, not the data key; a
    // `create --force` in between is another volume.
    let now = &opened.superblock;
    if now.uuid != uuid || !data_key.verify_check(&now.uuid, &now.key_check) {
        return Err(vol_err(
            path,
            "the volume was replaced while it was being attached: try again",
        ));
    }
    // Repair only from a copy whose key proved to be the volume's key.
    let sb = repair_damaged_copy(path, &opened, mode);
    let volume = Volume::open(opened.backend, &sb, data_key).map_err(|e| vol_err(path, e))?;
    Ok(volume.with_read_only(read_only))
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
    path: &Path,
    new_key: Option<&str>,
) -> Result<Rewrapped, EnvelopeError> {
    // A writer that reads, changes and writes the superblock: locked
    // before the read that the change is based on.
    let opened = OpenedFile::open(path, AttachMode::ReadWrite)?
        .lock(path, AttachMode::ReadWrite)
        .map_err(|e| with_action(e, "cannot re-wrap"))?;
    let mut sb = opened.superblock;
    let old_key_arn = sb.key_arn.clone();
    let destination = new_key.unwrap_or(&old_key_arn).to_string();
    let wrapped = keys
        .rewrap_key(
            &old_key_arn,
            &sb.wrapped_key,
            &destination,
            &sb.encryption_context,
        )
        .await
        .map_err(|e| key_failure(path, "re-wrap the data key", &destination, e, keys))?;
    let plaintext = keys
        .unwrap_key(&wrapped.key_arn, &wrapped.blob, &sb.encryption_context)
        .await
        .map_err(|e| {
            key_failure(
                path,
                "unwrap the re-wrapped data key (superblock unchanged)",
                &wrapped.key_arn,
                e,
                keys,
            )
        })?;
    let data_key = DataKey::from_slice(&plaintext).map_err(|e| vol_err(path, e))?;
    drop(plaintext);
    if !data_key.verify_check(&sb.uuid, &sb.key_check) {
        return Err(vol_err(
            path,
            "the re-wrapped key does not match the volume's key check value; superblock unchanged",
        ));
    }
    sb.key_arn = wrapped.key_arn;
    sb.wrapped_key = wrapped.blob;
    volume::write_superblock_to(&opened.backend, &mut sb).map_err(|e| vol_err(path, e))?;
    Ok(Rewrapped {
        old_key_arn,
        superblock: sb,
    })
}

#[cfg(test)]
#[path = "envelope_tests.rs"]
mod tests;
