//! `snapshot copy SNAPSHOT --to s3://BUCKET/PREFIX [--key KEY]`: a snapshot
//! into another place (another bucket, prefix or store), under the same
//! data key or, with `--key`, under a new one (AWS's CopySnapshot, with
//! `KmsKeyId`).
//!
//! 1. The source is opened as a restore opens it: manifest fetched, its
//!    data key unwrapped (KMS Decrypt: a caller the key policy refuses
//!    cannot copy), its MAC checked. Nothing is written before.
//! 2. **Same key** (same lineage): the chunks are copied as they are,
//!    verified on the way (SHA-256), and only those the destination does
//!    not hold yet (content-addressed: a second copy of a later snapshot
//!    of the same volume uploads only what changed). The new manifest is
//!    the source's with a new id, the same volume uuid, wrapped key and
//!    encryption context, sealed under the same data key.
//!    **`--key KEY`** (a new lineage): the KMS generates a new data key
//!    under KEY (GenerateDataKeyWithoutPlaintext + Decrypt on KEY, as
//!    `volume create`), bound to a new lineage uuid, which the manifest
//!    carries as its `volume_uuid` (AWS gives copies a volume id of their
//!    own too); every chunk is decrypted and re-encrypted under it
//!    ([`Rekey`]: holes stay holes), hashed again and uploaded; the manifest
//!    is sealed under the new data key.
//! 3. The parent, kept simple: under `--key`, none (the copy is the first
//!    snapshot of its lineage). Under the same key, the newest snapshot
//!    already in the destination of the same volume, authenticated by the
//!    same data key, and not newer than the source (an earlier copy of the
//!    same lineage): the field is informational — every manifest lists all
//!    its chunks — but it keeps `describe` honest about the chain.
//! 4. `created` is the source's (the point in time the data is from);
//!    `objects_added` / `bytes_added` are what this copy uploaded.
//!
//! As `snapshot create` does, an `in-progress` marker is written first
//! (chunk collection in the destination leaves chunks alone while it is
//! there) and deleted after the manifest; a copy that fails removes its
//! marker, a killed one leaves it for `snapshot delete URL`. A copy
//! re-run after a failure skips the chunks the first run uploaded (same
//! key); under `--key` each run has its own new data key, so it uploads
//! again (the first run's chunks are collected by the next `delete` there).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::catalog;
use super::error::SnapshotError;
use super::fetch::{self, ChunkSink, FetchedChunk};
use super::manifest::{ChunkEntry, Manifest, sha256_hex};
use super::object_store::ObjectStore;
use super::progress::Progress;
use super::rekey::Rekey;
use super::restore::open_snapshot;
use super::url::{Place, SnapshotId, SnapshotUrl};
use crate::envelope::lineage::{NewDataKey, generate_data_key};
use crate::keys::KeyService;
use crate::volume::{DataKey, volume_encryption_context};

/// What `copy` made.
#[derive(Debug, Clone)]
pub struct Copied {
    pub url: SnapshotUrl,
    pub manifest: Manifest,
    /// Whether the chunks were re-encrypted under a new data key.
    pub rekeyed: bool,
}

/// The source and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct CopyRequest<'a> {
    pub source_store: &'a ObjectStore,
    pub source: &'a SnapshotUrl,
    pub destination_store: &'a ObjectStore,
    pub destination: &'a Place,
    /// `--key`: a new lineage under this key; `None`: the same data key.
    pub new_key: Option<&'a str>,
    pub quiet: bool,
}

/// Copies a snapshot; see the module docs.
pub async fn copy<K: KeyService>(
    keys: &K,
    request: CopyRequest<'_>,
) -> Result<Copied, SnapshotError> {
    let (source_manifest, source_key) =
        open_snapshot(keys, request.source_store, request.source).await?;
    let dest_store = request.destination_store;
    let place = request.destination;
    dest_store.check_bucket().await?;
    let id = SnapshotId::generate();
    let url = place.snapshot(id.clone());

    // The new lineage's key, before anything is written: a caller KEY's
    // policy refuses is refused with nothing to clean up.
    let (lineage, rekey) = match request.new_key {
        None => (None, None),
        Some(key) => {
            let uuid = Uuid::new_v4();
            let context = volume_encryption_context(&uuid);
            let new = generate_data_key(keys, &url.to_string(), key, &context).await?;
            let rekey = Rekey::new(&source_key, &new.data_key, source_manifest.sector_size)
                .map_err(|e| SnapshotError::failed(format!("{}: {e}", request.source)))?;
            (Some(Lineage { uuid, context, new }), Some(rekey))
        }
    };

    let inventory = catalog::inventory(dest_store, place).await?;
    let present: HashSet<String> = inventory.chunks.keys().cloned().collect();
    let marker = serde_json::json!({
        "volume_uuid": match &lineage {
            Some(l) => l.uuid.to_string(),
            None => source_manifest.volume_uuid.clone(),
        },
        "copy_of": request.source.to_string(),
    });
    dest_store
        .put(&url.in_progress_key(), marker.to_string().into_bytes())
        .await?;

    let written = async {
        let mut manifest = source_manifest.clone();
        manifest.id = id.to_string();
        manifest.mac = String::new();
        let to_fetch: Vec<ChunkEntry> = match &lineage {
            None => {
                manifest.parent = same_lineage_parent(
                    dest_store,
                    place,
                    &inventory,
                    &source_manifest,
                    &source_key,
                )
                .await?;
                // Content-addressed: what the destination holds is not fetched.
                source_manifest
                    .chunks
                    .iter()
                    .filter(|c| !present.contains(c.sha256()))
                    .cloned()
                    .collect()
            }
            Some(l) => {
                use base64::Engine;
                manifest.volume_uuid = l.uuid.to_string();
                manifest.key_arn = l.new.key_arn.clone();
                manifest.wrapped_key =
                    base64::engine::general_purpose::STANDARD.encode(&l.new.wrapped_key);
                manifest.encryption_context = l.context.clone();
                manifest.parent = None;
                source_manifest.chunks.clone()
            }
        };
        let sink = Arc::new(StoreSink {
            store: dest_store.clone(),
            place: place.clone(),
            rekey,
            state: Mutex::new(SinkState {
                present,
                ..SinkState::default()
            }),
        });
        let progress = Arc::new(Progress::new(
            format!("copying {} to {place}", request.source.id),
            to_fetch
                .iter()
                .map(|c| source_manifest.chunk_len(c.index()))
                .sum(),
            request.quiet,
        ));
        fetch::fetch_chunks(
            request.source_store,
            request.source,
            &source_manifest,
            to_fetch,
            &progress,
            sink.clone(),
        )
        .await?;
        progress.finish();
        let state = sink.take_state();
        if lineage.is_some() {
            manifest.chunks = state
                .entries
                .into_iter()
                .map(|(index, sha)| ChunkEntry(index, sha))
                .collect();
        }
        manifest.objects_added = state.objects_added;
        manifest.bytes_added = state.bytes_added;
        match &lineage {
            Some(l) => manifest.seal(&l.new.data_key),
            None => manifest.seal(&source_key),
        }
        dest_store
            .put(&url.manifest_key(), manifest.to_bytes())
            .await?;
        Ok::<Manifest, SnapshotError>(manifest)
    }
    .await;

    // The marker goes either way: after the manifest (complete), or after a
    // failure (nothing running any more; uploaded chunks nobody references
    // are collected by the next `delete` there).
    let unmarked = dest_store.delete(&url.in_progress_key()).await;
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let note = match unmarked {
                Ok(()) => String::new(),
                Err(d) => format!(
                    " (its marker could not be removed: {d}; `envol snapshot delete {url}` removes it)"
                ),
            };
            return Err(SnapshotError::failed(format!(
                "copy of {} to {place} failed: {e}{note}",
                request.source
            )));
        }
    };
    if let Err(e) = unmarked {
        tracing::warn!(
            "{url}: complete, but its in-progress marker could not be removed ({e}); chunk collection in {place} waits while it is there"
        );
    }
    Ok(Copied {
        url,
        manifest,
        rekeyed: lineage.is_some(),
    })
}

/// A new lineage: its uuid, encryption context and data key.
struct Lineage {
    uuid: Uuid,
    context: BTreeMap<String, String>,
    new: NewDataKey,
}

/// The newest snapshot in `place` of the same volume that the same data
/// key authenticates and that is not newer than the source: an earlier
/// copy of the same lineage (see the module docs). Manifests that do not
/// authenticate are passed over.
async fn same_lineage_parent(
    store: &ObjectStore,
    place: &Place,
    inventory: &catalog::Inventory,
    source: &Manifest,
    key: &DataKey,
) -> Result<Option<String>, SnapshotError> {
    let mut best: Option<Manifest> = None;
    for id in inventory.manifests.keys() {
        let manifest = catalog::fetch_manifest(store, &place.snapshot(id.clone())).await?;
        if manifest.volume_uuid != source.volume_uuid
            || manifest.created > source.created
            || best.as_ref().is_some_and(|b| b.created >= manifest.created)
            || manifest.verify(key).is_err()
        {
            continue;
        }
        best = Some(manifest);
    }
    Ok(best.map(|m| m.id))
}

/// Puts chunks into a place: as they are, or re-encrypted (`rekey`) and
/// named by their new SHA-256. A chunk the place holds, or that this copy
/// already put, is not put again.
struct StoreSink {
    store: ObjectStore,
    place: Place,
    rekey: Option<Rekey>,
    state: Mutex<SinkState>,
}

#[derive(Default)]
struct SinkState {
    /// Chunks in the place (before the copy, and put by it).
    present: HashSet<String>,
    /// The copy's chunk list, by index (re-encrypted copies only).
    entries: BTreeMap<u64, String>,
    objects_added: u64,
    bytes_added: u64,
}

impl StoreSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // A panic while holding it is a bug elsewhere; the state is counters
        // and sets, still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_state(&self) -> SinkState {
        std::mem::take(&mut *self.lock())
    }
}

impl ChunkSink for StoreSink {
    async fn accept(self: Arc<Self>, chunk: FetchedChunk) -> Result<(), SnapshotError> {
        {
            let index = chunk.entry.index();
            let (sha, bytes) = match &self.rekey {
                None => (chunk.entry.sha256().to_string(), chunk.bytes),
                Some(_) => {
                    let sink = self.clone();
                    tokio::task::spawn_blocking(move || {
                        let FetchedChunk {
                            offset, mut bytes, ..
                        } = chunk;
                        if let Some(rekey) = &sink.rekey {
                            rekey.reencrypt(offset, &mut bytes).map_err(|e| {
                                SnapshotError::failed(format!("chunk {index}: {e}"))
                            })?;
                        }
                        Ok::<_, SnapshotError>((sha256_hex(&bytes), bytes))
                    })
                    .await
                    .map_err(|e| {
                        SnapshotError::failed(format!("a re-encryption task failed: {e}"))
                    })??
                }
            };
            // Claimed before the upload, so two equal chunks are put once.
            let new = self.lock().present.insert(sha.clone());
            if new {
                let len = bytes.len() as u64;
                self.store.put(&self.place.chunk_key(&sha), bytes).await?;
                let mut state = self.lock();
                state.objects_added += 1;
                state.bytes_added += len;
            }
            if self.rekey.is_some() {
                self.lock().entries.insert(index, sha);
            }
            Ok(())
        }
    }
}
