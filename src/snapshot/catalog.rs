//! What a place holds, and the commands that only read or remove:
//! `snapshot list`, `describe`, `delete` (with the collection of chunks no
//! remaining snapshot references).
//!
//! None of these needs the data key: listing and describing show what the
//! manifests say (unauthenticated — a restore verifies), and deleting is a
//! matter of the bucket's permissions, as AWS's DeleteSnapshot is of EC2's.
//!
//! **Collection (GC).** After a manifest is deleted, every chunk object
//! that no remaining manifest in the place references is deleted — unless
//! a snapshot is being written there (an `in-progress` marker exists):
//! an upload in flight may be about to reference a chunk that looks
//! unreferenced now (a chunk it found in the place and did not upload
//! again), so nothing is collected while one runs, and the command says
//! which marker held it back. A marker left by a killed `create` is removed
//! by the next successful `create` of the same volume in the place, or by
//! `snapshot delete` of that snapshot's URL.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::error::SnapshotError;
use super::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError, is_sha256_hex};
use super::object_store::{ObjectErrorKind, ObjectInfo, ObjectStore};
use super::url::{IN_PROGRESS_NAME, MANIFEST_NAME, Place, SnapshotId, SnapshotUrl};

/// Every object of a place that envol wrote, by kind (one listing).
#[derive(Debug, Default)]
pub struct Inventory {
    /// Chunk objects by SHA-256 hex.
    pub chunks: HashMap<String, ObjectInfo>,
    /// Complete snapshots: their manifest objects.
    pub manifests: BTreeMap<SnapshotId, ObjectInfo>,
    /// Snapshots being written (or whose writer died).
    pub in_progress: BTreeMap<SnapshotId, ObjectInfo>,
}

/// Lists the place once.
pub async fn inventory(store: &ObjectStore, place: &Place) -> Result<Inventory, SnapshotError> {
    let mut inv = Inventory::default();
    let chunks_prefix = place.chunks_prefix();
    for object in store.list(&place.key_prefix()).await? {
        if let Some(hash) = object.key.strip_prefix(&chunks_prefix) {
            if is_sha256_hex(hash) {
                inv.chunks.insert(hash.to_string(), object);
            }
            continue;
        }
        match place.snapshot_object(&object.key) {
            Some((id, MANIFEST_NAME)) => {
                inv.manifests.insert(id, object);
            }
            Some((id, IN_PROGRESS_NAME)) => {
                inv.in_progress.insert(id, object);
            }
            _ => {}
        }
    }
    Ok(inv)
}

/// A snapshot's manifest, parsed and checked for shape (not authenticated:
/// see [`Manifest::verify`]). A missing one is "no such snapshot".
pub async fn fetch_manifest(
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
) -> Result<Manifest, SnapshotError> {
    let bytes = match store
        .get(&snapshot.manifest_key(), MAX_MANIFEST_BYTES)
        .await
    {
        Ok(bytes) => bytes,
        Err(e) if e.kind == ObjectErrorKind::NotFound => {
            return Err(SnapshotError::failed(format!(
                "{snapshot}: no such snapshot at {} (no manifest: it was never completed, or was deleted)",
                store.describe()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    Manifest::parse(&bytes, &snapshot.id).map_err(|error| manifest_error(snapshot, error))
}

pub fn manifest_error(snapshot: &SnapshotUrl, error: ManifestError) -> SnapshotError {
    SnapshotError::Manifest {
        snapshot: snapshot.to_string(),
        error,
    }
}

/// One complete snapshot, as `list` shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub url: SnapshotUrl,
    pub manifest: Manifest,
}

/// The complete snapshots of a place, oldest first (by creation time). A
/// manifest that cannot be read is reported, not skipped silently.
pub async fn list(store: &ObjectStore, place: &Place) -> Result<Vec<Listed>, SnapshotError> {
    store.check_bucket().await?;
    let inv = inventory(store, place).await?;
    let mut listed = Vec::with_capacity(inv.manifests.len());
    for id in inv.manifests.keys() {
        let url = place.snapshot(id.clone());
        let manifest = fetch_manifest(store, &url).await?;
        listed.push(Listed { url, manifest });
    }
    listed.sort_by(|a, b| (&a.manifest.created, &a.url.id).cmp(&(&b.manifest.created, &b.url.id)));
    Ok(listed)
}

/// What `delete` did.
#[derive(Debug, Clone, Default)]
pub struct Deleted {
    /// Whether a manifest was deleted (false: only an unfinished upload's marker).
    pub manifest: bool,
    pub chunks_deleted: u64,
    pub bytes_deleted: u64,
    /// Chunks still referenced by other snapshots.
    pub chunks_kept: u64,
    /// Uploads whose marker kept unreferenced chunks from being collected.
    pub held_by: Vec<SnapshotId>,
}

/// Deletes a snapshot (its manifest, and the marker of an unfinished
/// upload of that id), then the chunks no remaining snapshot references.
pub async fn delete(store: &ObjectStore, snapshot: &SnapshotUrl) -> Result<Deleted, SnapshotError> {
    store.check_bucket().await?;
    let place = &snapshot.place;
    let before = inventory(store, place).await?;
    let has_manifest = before.manifests.contains_key(&snapshot.id);
    let has_marker = before.in_progress.contains_key(&snapshot.id);
    if !has_manifest && !has_marker {
        return Err(SnapshotError::failed(format!(
            "{snapshot}: no such snapshot at {}",
            store.describe()
        )));
    }
    if has_manifest {
        store.delete(&snapshot.manifest_key()).await?;
    }
    if has_marker {
        store.delete(&snapshot.in_progress_key()).await?;
    }
    let mut done = Deleted {
        manifest: has_manifest,
        ..Deleted::default()
    };
    collect(store, place, &mut done).await?;
    Ok(done)
}

/// Deletes the chunks of `place` that no manifest references, unless an
/// upload is in progress there.
async fn collect(
    store: &ObjectStore,
    place: &Place,
    done: &mut Deleted,
) -> Result<(), SnapshotError> {
    // Listed again after the deletes: the state the collection acts on.
    let inv = inventory(store, place).await?;
    let mut referenced = BTreeSet::new();
    for id in inv.manifests.keys() {
        let manifest = fetch_manifest(store, &place.snapshot(id.clone())).await?;
        referenced.extend(manifest.chunks.into_iter().map(|c| c.1));
    }
    let unreferenced: Vec<(&String, &ObjectInfo)> = inv
        .chunks
        .iter()
        .filter(|(hash, _)| !referenced.contains(*hash))
        .collect();
    done.chunks_kept = (inv.chunks.len() - unreferenced.len()) as u64;
    if !inv.in_progress.is_empty() {
        done.held_by = inv.in_progress.keys().cloned().collect();
        return Ok(());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (hash, object) in unreferenced {
        let store = store.clone();
        let key = place.chunk_key(hash);
        let size = object.size;
        tasks.spawn(async move { store.delete(&key).await.map(|()| size) });
    }
    while let Some(result) = tasks.join_next().await {
        let size =
            result.map_err(|e| SnapshotError::failed(format!("a delete task failed: {e}")))??;
        done.chunks_deleted += 1;
        done.bytes_deleted += size;
    }
    Ok(())
}
