//! `volume restore SNAPSHOT --to VOLUME`: a new volume with the snapshot's
//! content, under the same key (the same data key; the chunks are copied
//! as they are stored, never decrypted).
//!
//! 1. The manifest is fetched; its wrapped data key is unwrapped by the KMS
//!    (Decrypt under the manifest's encryption context: a caller the key
//!    policy refuses cannot restore) and the manifest's MAC checked with the
//!    key derived from it, in constant time. Nothing is created before.
//! 2. The new volume is created (a file or an RBD image; refused if it
//!    exists) with a new uuid and the same data key, re-wrapped by the KMS
//!    into the new uuid's context (`envelope::create_with_existing_key`).
//! 3. The chunks are fetched `concurrency` at a time, each checked against
//!    the manifest's SHA-256 (a mismatch names the object) and written as
//!    stored (`Volume::write_stored`); chunks the manifest does not list
//!    stay holes (zeros).
//! 4. Flushed; change tracking restarts from the snapshot, so the new
//!    volume's next snapshot to that place is an increment of it.
//!
//! Any failure after step 2 removes the partly restored volume, as `volume
//! create` removes what it made, and says so.

use std::sync::Arc;

use super::catalog;
use super::error::SnapshotError;
use super::manifest::{ChunkEntry, Manifest, sha256_hex};
use super::object_store::{ObjectErrorKind, ObjectStore};
use super::progress::Progress;
use super::url::SnapshotUrl;
use crate::envelope::{self, ExistingKey, VolumeAddress};
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
    // A restore makes a new volume, never overwrites one (checked again,
    // atomically, when it is created; this is for the clearer message).
    if let VolumeAddress::File(path) = target
        && path.exists()
    {
        return Err(SnapshotError::failed(format!(
            "{target}: already exists; a restore makes a new volume (choose another --to)"
        )));
    }
    let (manifest, data_key) = open_snapshot(keys, store, snapshot).await?;
    let wrapped = manifest
        .wrapped_key()
        .map_err(|e| catalog::manifest_error(snapshot, e))?;
    let superblock = envelope::create_with_existing_key(
        keys,
        target,
        manifest.size,
        manifest.sector_size,
        ExistingKey {
            key_arn: &manifest.key_arn,
            wrapped_key: &wrapped,
            encryption_context: &manifest.encryption_context,
        },
        &data_key,
    )
    .await?;
    drop(data_key);
    // The volume exists from here: a failure removes it again.
    let filled = match envelope::attach(keys, target, false).await {
        Ok(volume) => {
            let volume = Arc::new(volume);
            let filled = fill_and_seal(&volume, store, snapshot, &manifest, quiet).await;
            release(volume).await;
            filled
        }
        Err(e) => Err(e.into()),
    };
    if let Err(e) = filled {
        let removed = match envelope::remove_volume(target) {
            Ok(()) => format!(" (the partly restored volume {target} was removed)"),
            Err(r) => format!(" (and the partly restored volume could not be removed: {r})"),
        };
        return Err(SnapshotError::failed(format!("{e}{removed}")));
    }
    Ok(Restored {
        superblock,
        manifest,
    })
}

/// Every chunk written, flushed, change tracking restarted from the snapshot.
async fn fill_and_seal(
    volume: &Arc<Volume>,
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
    manifest: &Manifest,
    quiet: bool,
) -> Result<(), SnapshotError> {
    fill(volume, store, snapshot, manifest, quiet).await?;
    volume
        .flush()
        .map_err(|e| SnapshotError::failed(format!("cannot flush the restored volume: {e}")))?;
    volume.restart_changes(&snapshot.to_string()).map_err(|e| {
        SnapshotError::failed(format!(
            "cannot start the restored volume's change tracking from {snapshot}: {e}"
        ))
    })?;
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

/// Fetches, checks and writes every chunk of `manifest` into `volume`.
pub async fn fill(
    volume: &Arc<Volume>,
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
    let mut pending = manifest.chunks.iter().cloned();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < store.concurrency() {
            let Some(entry) = pending.next() else { break };
            let job = FetchJob {
                volume: volume.clone(),
                store: store.clone(),
                key: snapshot.place.chunk_key(entry.sha256()),
                snapshot: snapshot.id.to_string(),
                offset: entry.index() * manifest.chunk_size,
                len: manifest.chunk_len(entry.index()),
                progress: progress.clone(),
                entry,
            };
            tasks.spawn(job.run());
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let done =
            done.map_err(|e| SnapshotError::failed(format!("a restore task failed: {e}")))?;
        if let Err(e) = done {
            tasks.abort_all();
            // Wait for the aborted tasks to let go of the volume.
            while tasks.join_next().await.is_some() {}
            return Err(e);
        }
    }
    progress.finish();
    Ok(())
}

struct FetchJob {
    volume: Arc<Volume>,
    store: ObjectStore,
    key: String,
    snapshot: String,
    entry: ChunkEntry,
    offset: u64,
    len: u64,
    progress: Arc<Progress>,
}

impl FetchJob {
    async fn run(self) -> Result<(), SnapshotError> {
        let index = self.entry.index();
        let object = self.store.url(&self.key);
        let bytes = match self.store.get(&self.key).await {
            Ok(b) => b,
            Err(e) if e.kind == ObjectErrorKind::NotFound => {
                return Err(SnapshotError::failed(format!(
                    "chunk object {object} (chunk {index} of {}) is missing",
                    self.snapshot
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let (volume, offset, expected, len) = (
            self.volume.clone(),
            self.offset,
            self.entry.1.clone(),
            self.len,
        );
        let snapshot = self.snapshot.clone();
        tokio::task::spawn_blocking(move || {
            if bytes.len() as u64 != len {
                return Err(SnapshotError::failed(format!(
                    "chunk object {object} (chunk {index} of {snapshot}) is damaged: {} bytes, expected {len}",
                    bytes.len()
                )));
            }
            let actual = sha256_hex(&bytes);
            if actual != expected {
                return Err(SnapshotError::failed(format!(
                    "chunk object {object} (chunk {index} of {snapshot}) is damaged: its SHA-256 is {actual}"
                )));
            }
            volume.write_stored(offset, &bytes).map_err(|e| {
                SnapshotError::failed(format!("cannot write chunk {index} into the volume: {e}"))
            })
        })
        .await
        .map_err(|e| SnapshotError::failed(format!("a write task failed: {e}")))??;
        self.progress.add(self.len);
        Ok(())
    }
}
