//! Fetching a snapshot's chunks: the one pipeline behind every restore and
//! copy (same key or another), with the destination as a [`ChunkSink`].
//!
//! Chunks are fetched [`ObjectStore::concurrency`] at a time; each is
//! checked against the manifest (length and SHA-256: a mismatch or a
//! missing object fails naming the object and the chunk) before the sink
//! sees it. The first failure stops the rest: tasks not started are not
//! started, running ones are aborted and awaited (a write already running
//! on a blocking thread finishes), so the caller can clean up afterwards.
//!
//! Sinks: [`VolumeSink`] writes into a volume as stored (`write_stored`),
//! re-encrypted first if it has a [`Rekey`] (`volume restore [--key]`);
//! `copy::StoreSink` puts chunks into another place (`snapshot copy`).

use std::future::Future;
use std::sync::Arc;

use super::error::SnapshotError;
use super::manifest::{ChunkEntry, Manifest, sha256_hex};
use super::object_store::{ObjectErrorKind, ObjectStore};
use super::progress::Progress;
use super::rekey::Rekey;
use super::url::SnapshotUrl;
use crate::volume::Volume;

/// One chunk, fetched and checked against the manifest.
pub struct FetchedChunk {
    pub entry: ChunkEntry,
    /// Its byte offset in the data area.
    pub offset: u64,
    /// Its stored bytes (ciphertext under the snapshot's data key).
    pub bytes: Vec<u8>,
}

/// Where fetched chunks go.
pub trait ChunkSink: Send + Sync + 'static {
    /// Takes one checked chunk. Runs concurrently with the others; CPU work
    /// and blocking I/O belong on `spawn_blocking`.
    fn accept(
        self: Arc<Self>,
        chunk: FetchedChunk,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send;
}

/// Fetches `entries` of `snapshot` (whose authenticated manifest is
/// `manifest`), checks each and hands it to `sink`; `progress` counts
/// their stored bytes.
pub async fn fetch_chunks<S: ChunkSink>(
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
    manifest: &Manifest,
    entries: Vec<ChunkEntry>,
    progress: &Arc<Progress>,
    sink: Arc<S>,
) -> Result<(), SnapshotError> {
    let mut pending = entries.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < store.concurrency() {
            let Some(entry) = pending.next() else { break };
            let job = FetchJob {
                store: store.clone(),
                key: snapshot.place.chunk_key(entry.sha256()),
                snapshot: snapshot.id.to_string(),
                offset: entry.index() * manifest.chunk_size,
                len: manifest.chunk_len(entry.index()),
                entry,
            };
            let (sink, progress) = (sink.clone(), progress.clone());
            tasks.spawn(async move {
                let len = job.len;
                let chunk = job.run().await?;
                sink.accept(chunk).await?;
                progress.add(len);
                Ok::<(), SnapshotError>(())
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let failed = match done {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => SnapshotError::failed(format!("a chunk task failed: {e}")),
        };
        tasks.abort_all();
        // Wait for the aborted tasks to let go of the sink (a volume).
        while tasks.join_next().await.is_some() {}
        return Err(failed);
    }
    Ok(())
}

/// Fetches and checks one chunk of `snapshot` (a lazy restore's read of a
/// chunk not yet in the volume).
pub async fn fetch_chunk(
    store: &ObjectStore,
    snapshot: &SnapshotUrl,
    manifest: &Manifest,
    entry: ChunkEntry,
) -> Result<FetchedChunk, SnapshotError> {
    FetchJob {
        store: store.clone(),
        key: snapshot.place.chunk_key(entry.sha256()),
        snapshot: snapshot.id.to_string(),
        offset: entry.index() * manifest.chunk_size,
        len: manifest.chunk_len(entry.index()),
        entry,
    }
    .run()
    .await
}

/// One chunk to fetch and check.
struct FetchJob {
    store: ObjectStore,
    key: String,
    snapshot: String,
    entry: ChunkEntry,
    offset: u64,
    len: u64,
}

impl FetchJob {
    async fn run(self) -> Result<FetchedChunk, SnapshotError> {
        let index = self.entry.index();
        let object = self.store.url(&self.key);
        // A chunk is at most CHUNK_SIZE bytes: anything longer is damaged,
        // and refused before it is held whole.
        let limit = usize::try_from(self.len).unwrap_or(usize::MAX);
        let bytes = match self.store.get(&self.key, limit).await {
            Ok(b) => b,
            Err(e) if e.kind == ObjectErrorKind::TooLarge => {
                return Err(SnapshotError::failed(format!(
                    "chunk object {object} (chunk {index} of {}) is damaged: more than {} bytes, expected {}",
                    self.snapshot, self.len, self.len
                )));
            }
            Err(e) if e.kind == ObjectErrorKind::NotFound => {
                return Err(SnapshotError::failed(format!(
                    "chunk object {object} (chunk {index} of {}) is missing",
                    self.snapshot
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let (len, snapshot) = (self.len, self.snapshot);
        let expected = self.entry.sha256().to_string();
        let bytes = tokio::task::spawn_blocking(move || {
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
            Ok(bytes)
        })
        .await
        .map_err(|e| SnapshotError::failed(format!("a checking task failed: {e}")))??;
        Ok(FetchedChunk {
            entry: self.entry,
            offset: self.offset,
            bytes,
        })
    }
}

/// Writes chunks into a volume as stored: as they are (same key), or
/// re-encrypted under the volume's own data key first (`rekey`).
pub struct VolumeSink {
    volume: Arc<Volume>,
    rekey: Option<Rekey>,
}

impl VolumeSink {
    /// Same key: the chunks are the volume's ciphertext already.
    pub fn same_key(volume: Arc<Volume>) -> VolumeSink {
        VolumeSink {
            volume,
            rekey: None,
        }
    }

    /// Another key: `rekey` goes from the snapshot's data key to the volume's.
    pub fn rekeyed(volume: Arc<Volume>, rekey: Rekey) -> VolumeSink {
        VolumeSink {
            volume,
            rekey: Some(rekey),
        }
    }
}

impl ChunkSink for VolumeSink {
    async fn accept(self: Arc<Self>, chunk: FetchedChunk) -> Result<(), SnapshotError> {
        {
            tokio::task::spawn_blocking(move || {
                let FetchedChunk {
                    entry,
                    offset,
                    mut bytes,
                } = chunk;
                let index = entry.index();
                if let Some(rekey) = &self.rekey {
                    rekey
                        .reencrypt(offset, &mut bytes)
                        .map_err(|e| SnapshotError::failed(format!("chunk {index}: {e}")))?;
                }
                self.volume.write_stored(offset, &bytes).map_err(|e| {
                    SnapshotError::failed(format!(
                        "cannot write chunk {index} into the volume: {e}"
                    ))
                })
            })
            .await
            .map_err(|e| SnapshotError::failed(format!("a write task failed: {e}")))?
        }
    }
}
