//! `volume restore SNAPSHOT --to VOLUME [--key KEY]`: a new volume with the
//! snapshot's content, under the same key (the same data key; the chunks
//! are copied as they are stored, never decrypted) or, with `--key`, under
//! a new data key generated under KEY (every chunk re-encrypted: see
//! [`super::rekey`]; a new lineage, as AWS's CopySnapshot with KmsKeyId).
//! Both go through one fetch-and-verify pipeline ([`super::fetch`]) into
//! one sink, with or without the re-encryption.
//!
//! 1. The manifest is fetched; its wrapped data key is unwrapped by the KMS
//!    (Decrypt under the manifest's encryption context: a caller the key
//!    policy refuses cannot restore) and the manifest's MAC checked with the
//!    key derived from it, in constant time. Nothing is created before.
//! 2. The new volume is created (a file or an RBD image; refused if it
//!    exists) with a new uuid and the same data key, re-wrapped by the KMS
//!    into the new uuid's context (`envelope::create_with_existing_key`);
//!    under `--key`, as `volume create` makes one (`envelope::create`: a
//!    new data key under KEY), and its data key taken from the attach
//!    before the volume consumes it, for the re-encryption.
//! 3. The chunks are fetched `concurrency` at a time, each checked against
//!    the manifest's SHA-256 (a mismatch names the object) and written as
//!    stored (`Volume::write_stored`), re-encrypted first under `--key`;
//!    chunks the manifest does not list stay holes (zeros), as do all-zero
//!    sectors inside a chunk.
//! 4. Flushed; under the same key change tracking restarts from the
//!    snapshot, so the new volume's next snapshot to that place is an
//!    increment of it (under `--key` it cannot be: see [`seal`]).
//!
//! Any failure after step 2 removes the partly restored volume, as `volume
//! create` removes what it made, and says so.

use std::sync::Arc;

use super::catalog;
use super::error::SnapshotError;
use super::fetch::{self, VolumeSink};
use super::manifest::Manifest;
use super::object_store::ObjectStore;
use super::progress::Progress;
use super::rekey::Rekey;
use super::url::SnapshotUrl;
use crate::envelope::{self, AttachOptions, EnvelopeError, ExistingKey, NewVolume, VolumeAddress};
use crate::keys::KeyService;
use crate::volume::{BlockDevice, DataKey, Superblock, Volume};

/// What `restore` made.
#[derive(Debug, Clone)]
pub struct Restored {
    pub superblock: Superblock,
    pub manifest: Manifest,
}

/// A snapshot's manifest, authenticated, and its data key: the first step
/// of every restore or copy. A caller the key policy refuses gets the KMS's
/// refusal; a modified manifest is refused.
pub async fn open_snapshot<K: KeyService>(
    keys: &K,
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
) -> Result<(Manifest, DataKey), SnapshotError> {
    store.check_bucket().await?;
    let manifest = catalog::fetch_manifest(store, snapshot).await?;
    let wrapped = manifest
        .wrapped_key()
        .map_err(|e| catalog::manifest_error(snapshot, e))?;
    let data_key = envelope::unwrap_existing_key(
        keys,
        &snapshot.to_string(),
        ExistingKey {
            key_arn: &manifest.key_arn,
            wrapped_key: &wrapped,
            encryption_context: &manifest.encryption_context,
        },
    )
    .await?;
    manifest
        .verify(&data_key)
        .map_err(|e| catalog::manifest_error(snapshot, e))?;
    Ok((manifest, data_key))
}

/// Restores `snapshot` into the new volume `target`, under the same key.
pub async fn restore<K: KeyService>(
    keys: &K,
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
    target: &VolumeAddress,
    quiet: bool,
) -> Result<Restored, SnapshotError> {
    restore_with(keys, store, snapshot, target, None, quiet).await
}

/// Restores `snapshot` into the new volume `target`: under the snapshot's
/// data key (`new_key: None`), or under a new data key generated under
/// `new_key` (`volume restore --key`: every chunk re-encrypted, a new
/// lineage; the caller needs GenerateDataKeyWithoutPlaintext and Decrypt
/// on that key, as for `volume create`, besides Decrypt on the snapshot's).
pub async fn restore_with<K: KeyService>(
    keys: &K,
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
    target: &VolumeAddress,
    new_key: Option<&str>,
    quiet: bool,
) -> Result<Restored, SnapshotError> {
    // A restore makes a new volume, never overwrites one (checked again,
    // atomically, when it is created; this is for the clearer message).
    if let VolumeAddress::File(path) = target
        && path.exists()
    {
        return Err(already_exists(target));
    }
    let (manifest, data_key) = open_snapshot(keys, store, snapshot).await?;
    let superblock = match new_key {
        None => create_same_key(keys, snapshot, target, &manifest, &data_key).await?,
        Some(key) => envelope::create(
            keys,
            NewVolume {
                volume: target,
                size: manifest.size,
                sector_size: manifest.sector_size,
                key,
                force: false,
            },
        )
        .await
        .map_err(|e| never_overwrite(e, target))?,
    };
    // The volume exists from here: a failure removes it again.
    let filled = match open_sink(keys, target, data_key, new_key.is_some(), &manifest).await {
        Ok((volume, sink)) => {
            let filled = fill(sink, store, snapshot, &manifest, quiet).await;
            let sealed = match filled {
                Ok(()) => seal(&volume, snapshot, new_key.is_none()),
                Err(e) => Err(e),
            };
            release(volume).await;
            sealed
        }
        Err(e) => Err(e),
    };
    if let Err(e) = filled {
        return Err(removed_after(e, target, "the partly restored volume"));
    }
    Ok(Restored {
        superblock,
        manifest,
    })
}

/// Attaches the new volume read-write and makes the sink the chunks go to:
/// as stored (same key), or re-encrypted from the snapshot's data key to
/// the volume's own (taken from the attach before the volume consumes it).
async fn open_sink<K: KeyService>(
    keys: &K,
    target: &VolumeAddress,
    snapshot_key: DataKey,
    rekeyed: bool,
    manifest: &Manifest,
) -> Result<(Arc<Volume>, VolumeSink), SnapshotError> {
    let prepared = envelope::prepare_attach(keys, target, AttachOptions::default()).await?;
    let rekey = match rekeyed {
        false => None,
        true => Some(
            Rekey::new(&snapshot_key, prepared.data_key(), manifest.sector_size)
                .map_err(|e| SnapshotError::failed(format!("{target}: {e}")))?,
        ),
    };
    drop(snapshot_key);
    let volume = Arc::new(prepared.complete()?);
    let sink = match rekey {
        None => VolumeSink::same_key(volume.clone()),
        Some(rekey) => VolumeSink::rekeyed(volume.clone(), rekey),
    };
    Ok((volume, sink))
}

/// Flushed; under the same key, change tracking restarted from the
/// snapshot (the next snapshot there is an increment of it). Under a new
/// key the restored chunks stay tracked as changes since the volume's
/// creation: a new lineage shares no chunk with the old one, so its first
/// snapshot is a full one wherever it goes.
fn seal(volume: &Volume, snapshot: &SnapshotUrl, same_key: bool) -> Result<(), SnapshotError> {
    volume
        .flush()
        .map_err(|e| SnapshotError::failed(format!("cannot flush the restored volume: {e}")))?;
    if same_key {
        volume.restart_changes(&snapshot.to_string()).map_err(|e| {
            SnapshotError::failed(format!(
                "cannot start the restored volume's change tracking from {snapshot}: {e}"
            ))
        })?;
    }
    Ok(())
}

/// Drops the last handle on the volume (closing it, releasing its lock),
/// once writes still running on blocking threads after a failure have let
/// go of theirs (an aborted task cannot stop a write already started).
async fn release(volume: Arc<Volume>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while Arc::strong_count(&volume) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(volume);
}

/// Fetches, checks and writes every chunk of `manifest` through `sink`.
pub async fn fill(
    sink: VolumeSink,
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
    manifest: &Manifest,
    quiet: bool,
) -> Result<(), SnapshotError> {
    let progress = Arc::new(Progress::new(
        format!("restoring {}", snapshot.id),
        manifest.stored_bytes(),
        quiet,
    ));
    fetch::fetch_chunks(
        store,
        snapshot,
        manifest,
        manifest.chunks.clone(),
        &progress,
        Arc::new(sink),
    )
    .await?;
    progress.finish();
    Ok(())
}

/// A restore makes a new volume, never overwrites one: no `--force` to offer.
/// The restore's new volume `target` under the snapshot's own data key
/// (`data_key`, unwrapped from the manifest): its wrapped key and
/// encryption context as the manifest has them, so nothing is re-wrapped.
pub(super) async fn create_same_key<K: KeyService>(
    keys: &K,
    snapshot: &SnapshotUrl,
    target: &VolumeAddress,
    manifest: &Manifest,
    data_key: &DataKey,
) -> Result<Superblock, SnapshotError> {
    let wrapped = manifest
        .wrapped_key()
        .map_err(|e| catalog::manifest_error(snapshot, e))?;
    envelope::create_with_existing_key(
        keys,
        target,
        manifest.size,
        manifest.sector_size,
        ExistingKey {
            key_arn: &manifest.key_arn,
            wrapped_key: &wrapped,
            encryption_context: &manifest.encryption_context,
        },
        data_key,
    )
    .await
    .map_err(|e| never_overwrite(e, target))
}

/// A restore that failed after creating `target` (`what` names it in the
/// message): removes the volume again and says whether that worked.
pub(super) fn removed_after(
    e: impl std::fmt::Display,
    target: &VolumeAddress,
    what: &str,
) -> SnapshotError {
    let removed = match envelope::remove_volume(target) {
        Ok(()) => format!(" ({what} {target} was removed)"),
        Err(r) => format!(" (and {what} could not be removed: {r})"),
    };
    SnapshotError::failed(format!("{e}{removed}"))
}

pub(super) fn already_exists(target: &VolumeAddress) -> SnapshotError {
    SnapshotError::failed(format!(
        "{target}: already exists; a restore makes a new volume (choose another --to)"
    ))
}

/// The envelope's refusal of an existing volume (found atomically as an
/// `rbd:` image is made), said the restore's way.
fn never_overwrite(e: EnvelopeError, target: &VolumeAddress) -> SnapshotError {
    match e {
        EnvelopeError::Exists { .. } => already_exists(target),
        other => other.into(),
    }
}
