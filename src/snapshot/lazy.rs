//! Lazy restore, the EBS way: `volume restore SNAPSHOT --to VOLUME --lazy`
//! makes the volume and returns at once; `envol serve VOLUME` serves it
//! straight away — a read of a chunk not yet in the volume fetches it
//! first, writes go to the volume — while the rest is fetched in the
//! background. `volume info` shows how far it got.
//!
//! The volume layer does the serving side (`volume::hydrating_backend`:
//! the order of writes that keeps it crash-safe, and the persisted record
//! of which chunks are in); this file is the snapshot's side of it: the
//! [`ChunkFetcher`] over S3 (each chunk checked against the authenticated
//! manifest, as every restore does), the restore that writes the record,
//! and the background hydration.
//!
//! Same key only: the volume's data key is the snapshot's, so a fetched
//! chunk is written as stored, and the server can authenticate the
//! manifest with the key it already unwrapped (no extra KMS call). A lazy
//! restore under `--key` would re-encrypt on every fetch; not offered.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::catalog;
use super::error::SnapshotError;
use super::fetch;
use super::manifest::{ChunkEntry, Manifest};
use super::object_store::{ObjectStore, S3Options};
use super::restore::{Restored, already_exists, create_same_key, open_snapshot, removed_after};
use super::url::SnapshotUrl;
use crate::envelope::{self, AttachOptions, VolumeAddress};
use crate::keys::KeyService;
use crate::volume::{
    BlockDevice, CHUNK_SIZE, ChunkFetcher, DataKey, Hydration, HydrationRecord, HydrationSource,
};

/// A snapshot's chunks, fetched from its object store on request and
/// checked against its authenticated manifest. It runs its own small
/// runtime: it is called from whatever thread serves a request (blocking),
/// and must never wait on a runtime that thread may be part of.
pub struct S3ChunkFetcher {
    runtime: Option<tokio::runtime::Runtime>,
    store: ObjectStore,
    snapshot: SnapshotUrl,
    manifest: Arc<Manifest>,
    entries: HashMap<u64, ChunkEntry>,
}

impl Drop for S3ChunkFetcher {
    fn drop(&mut self) {
        // Dropped wherever the volume is: never block there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl ChunkFetcher for S3ChunkFetcher {
    fn fetch(&self, index: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(entry) = self.entries.get(&index).cloned() else {
            return Ok(None);
        };
        if self.manifest.chunk_len(index) != len {
            return Err(io::Error::other(format!(
                "chunk {index}: the snapshot's chunk is {} bytes, the volume's {len}",
                self.manifest.chunk_len(index)
            )));
        }
        let Some(runtime) = &self.runtime else {
            return Err(io::Error::other("the fetcher is shut down"));
        };
        let (store, snapshot, manifest) = (
            self.store.clone(),
            self.snapshot.clone(),
            self.manifest.clone(),
        );
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let fetched = fetch::fetch_chunk(&store, &snapshot, &manifest, entry).await;
            let _ = tx.send(fetched);
        });
        match rx.recv() {
            Ok(Ok(chunk)) => Ok(Some(chunk.bytes)),
            Ok(Err(e)) => Err(io::Error::other(e.to_string())),
            Err(_) => Err(io::Error::other("the fetch was abandoned")),
        }
    }
}

/// The source of a lazy restore, as `volume restore --lazy` records it.
pub fn source_of(snapshot: &SnapshotUrl, options: &S3Options) -> HydrationSource {
    HydrationSource {
        snapshot: snapshot.to_string(),
        endpoint_url: options.endpoint_url.clone(),
        profile: options.profile.clone(),
        region: options.region.clone(),
    }
}

/// The fetcher for a volume hydrating from `record`'s snapshot, whose
/// data key is `data_key`: the manifest is fetched and authenticated with
/// it (a modified manifest, or one of another volume size, is refused).
/// `concurrency`: S3 requests in flight at once.
pub async fn open_fetcher(
    record: &HydrationRecord,
    data_key: &DataKey,
    concurrency: usize,
) -> Result<Arc<S3ChunkFetcher>, SnapshotError> {
    let source = &record.header.source;
    let snapshot = SnapshotUrl::parse(&source.snapshot).map_err(SnapshotError::from)?;
    let options = S3Options {
        endpoint_url: source.endpoint_url.clone(),
        profile: source.profile.clone(),
        region: source.region.clone(),
        concurrency,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("envol-fetch")
        .enable_all()
        .build()
        .map_err(|e| SnapshotError::failed(format!("cannot start the fetch runtime: {e}")))?;
    let url = snapshot.clone();
    let opened = runtime
        .spawn(async move {
            let store = ObjectStore::connect(&options, &url.place.bucket).await?;
            store.check_bucket().await?;
            let manifest = catalog::fetch_manifest(&store, &url).await?;
            Ok::<_, SnapshotError>((store, manifest))
        })
        .await;
    let (store, manifest) = match opened {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            runtime.shutdown_background();
            return Err(e);
        }
        Err(e) => {
            runtime.shutdown_background();
            return Err(SnapshotError::failed(format!(
                "the manifest fetch failed: {e}"
            )));
        }
    };
    let checked = manifest
        .verify(data_key)
        .map_err(|e| catalog::manifest_error(&snapshot, e))
        .and_then(|()| {
            if manifest.size != record.header.size || manifest.chunk_size != CHUNK_SIZE {
                Err(SnapshotError::failed(format!(
                    "{snapshot} is {} bytes in chunks of {}; the volume restoring from it is {} bytes in chunks of {CHUNK_SIZE}",
                    manifest.size, manifest.chunk_size, record.header.size
                )))
            } else {
                Ok(())
            }
        });
    if let Err(e) = checked {
        runtime.shutdown_background();
        return Err(e);
    }
    let entries = manifest
        .chunks
        .iter()
        .map(|e| (e.index(), e.clone()))
        .collect();
    Ok(Arc::new(S3ChunkFetcher {
        runtime: Some(runtime),
        store,
        snapshot,
        manifest: Arc::new(manifest),
        entries,
    }))
}

/// `volume restore --lazy`: the new volume `target` under the snapshot's
/// key, with its hydration record (every chunk the snapshot has data for
/// still to fetch), change tracking counting from the snapshot. No chunk is
/// fetched: `envol serve` does that. A failure removes the new volume.
pub async fn restore_lazy<K: KeyService>(
    keys: &K,
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
    target: &VolumeAddress,
    options: &S3Options,
) -> Result<Restored, SnapshotError> {
    if let VolumeAddress::File(path) = target
        && path.exists()
    {
        return Err(already_exists(target));
    }
    let (manifest, data_key) = open_snapshot(keys, store, snapshot).await?;
    if manifest.chunk_size != CHUNK_SIZE {
        return Err(SnapshotError::failed(format!(
            "{snapshot} has chunks of {} bytes; a lazy restore needs {CHUNK_SIZE}",
            manifest.chunk_size
        )));
    }
    let superblock = create_same_key(keys, snapshot, target, &manifest, &data_key).await?;
    drop(data_key);
    // The volume exists from here: a failure removes it again.
    if let Err(e) = prepare(keys, snapshot, target, &manifest, options).await {
        return Err(removed_after(e, target, "the new volume"));
    }
    Ok(Restored {
        superblock,
        manifest,
    })
}

/// The record first (from then on the volume opens only for a server that
/// fetches), then change tracking restarted from the snapshot through a
/// hydrating open — no chunk is touched.
async fn prepare<K: KeyService>(
    keys: &K,
    snapshot: &SnapshotUrl,
    target: &VolumeAddress,
    manifest: &Manifest,
    options: &S3Options,
) -> Result<(), SnapshotError> {
    let listed: std::collections::HashSet<u64> =
        manifest.chunks.iter().map(|e| e.index()).collect();
    let source = source_of(snapshot, options);
    let record = envelope::hydrate::begin_hydration(target, |sb| {
        HydrationRecord::new(sb, source, |i| !listed.contains(&i))
    })?;
    let prepared = envelope::prepare_attach(keys, target, AttachOptions::default()).await?;
    let fetcher = open_fetcher(&record, prepared.data_key(), options.concurrency).await?;
    let (volume, hydration) = prepared.complete_hydrating(fetcher)?;
    volume
        .restart_changes(&snapshot.to_string())
        .and_then(|_| volume.flush())
        .map_err(|e| {
            SnapshotError::failed(format!(
                "cannot start the restored volume's change tracking from {snapshot}: {e}"
            ))
        })?;
    // A snapshot with no data at all is restored already.
    if let Some(h) = hydration {
        h.complete()
            .map_err(|e| SnapshotError::failed(format!("cannot finish the restore: {e}")))?;
    }
    Ok(())
}

/// Fetches every chunk still missing, `workers` at a time, on threads of
/// its own, until all are in (then the record is cleared: a plain volume)
/// or the volume is closed. Chunks that fail are tried again every 30 s.
pub fn hydrate_in_background(hydration: &Arc<Hydration>, workers: usize) {
    let (fetched, total) = hydration.progress();
    tracing::info!(
        "lazy restore from {}: {fetched} of {total} chunks in the volume; fetching the rest in the background",
        hydration.source()
    );
    let weak = Arc::downgrade(hydration);
    let workers = workers.max(1);
    if let Err(e) = std::thread::Builder::new()
        .name("envol-hydrate".into())
        .spawn(move || hydrate(weak, workers))
    {
        tracing::error!(
            "cannot start background hydration: {e}; chunks are fetched as they are read"
        );
    }
}

const RETRY_AFTER: Duration = Duration::from_secs(30);

fn hydrate(weak: Weak<Hydration>, workers: usize) {
    loop {
        let Some(missing) = weak.upgrade().map(|h| h.missing()) else {
            return;
        };
        let cursor = AtomicUsize::new(0);
        let failed = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while let Some(&index) = missing.get(cursor.fetch_add(1, Ordering::Relaxed)) {
                        // The volume was closed: stop.
                        let Some(h) = weak.upgrade() else { return };
                        if h.ensure(index).is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let Some(h) = weak.upgrade() else { return };
        match h.complete() {
            Ok(true) => {
                tracing::info!(
                    "lazy restore from {}: complete ({} chunks); the volume is a plain one now",
                    h.source(),
                    h.progress().1
                );
                return;
            }
            Ok(false) => tracing::warn!(
                "lazy restore from {}: {} chunks could not be fetched; trying again in {} s",
                h.source(),
                failed.load(Ordering::Relaxed),
                RETRY_AFTER.as_secs()
            ),
            Err(e) => tracing::warn!(
                "lazy restore from {}: cannot clear its record: {e}; trying again in {} s",
                h.source(),
                RETRY_AFTER.as_secs()
            ),
        }
        drop(h);
        let until = std::time::Instant::now() + RETRY_AFTER;
        while std::time::Instant::now() < until {
            if weak.strong_count() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
