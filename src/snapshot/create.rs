//! `snapshot create`: of a volume nobody has attached, or through the
//! server that has it attached.
//!
//! The key policy decides first, as for `serve` (the data key is unwrapped
//! here either way: the manifest's MAC key derives from it). A volume
//! nobody has attached is then attached read-write through the envelope
//! (the exclusive lock keeps every writer out while the snapshot is taken,
//! so the volume *is* the point in time); an attached one is frozen by its
//! server ([`AttachedVolumes`], `source.rs`), which from then on keeps the
//! view of that instant while writes go on. Then:
//!
//! 1. The place is listed once: the chunk objects already there, the
//!    complete snapshots, the uploads in progress.
//! 2. The **parent** is found: the snapshot change tracking counts from
//!    (its base URL, if it is in this place and authentic), else the latest
//!    snapshot of the same volume uuid in the place whose manifest verifies
//!    under this volume's key.
//! 3. The chunks to read: with exact change tracking from the parent, only
//!    the changed ones (the others are the parent's entries, unchanged);
//!    tracking since creation with no parent, only the chunks ever written;
//!    otherwise every chunk, compared by hash ("change tracking
//!    unavailable: REASON; comparing chunk hashes" — it never misses a
//!    change).
//! 4. The `in-progress` marker is written, then each chunk is read as
//!    stored (ciphertext), hashed, and uploaded unless a chunk object of
//!    that hash is already in the place (content addressing: an increment,
//!    a resumed upload or two volumes with the same stored chunk upload it
//!    once). All-zero chunks (never written, or trimmed) are not stored.
//!    Reads, hashes and uploads run `concurrency` at a time.
//! 5. The manifest is written (sealed with the data key's MAC key), the
//!    marker deleted, and change tracking restarted from the new snapshot.
//!    A failure before the manifest leaves no snapshot (the marker and any
//!    uploaded chunks stay, for the next run to reuse).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::catalog::{self, Inventory};
use super::error::SnapshotError;
use super::manifest::{ChunkEntry, MANIFEST_FORMAT, Manifest, sha256_hex};
use super::object_store::ObjectStore;
use super::progress::Progress;
use super::source::{ChunkSource, LockedVolume, SnapshotVolume};
use super::url::{Place, SnapshotId, SnapshotUrl};
use crate::envelope::{self, AttachOptions, Attachers, VolumeAddress};
use crate::keys::KeyService;
use crate::volume::{CHUNK_SIZE, Changes, DataKey, Superblock};

/// The most an `in-progress` marker (a few fields of JSON) is read for.
const MARKER_LIMIT: usize = 64 << 10;

/// How the chunks to upload were chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Only the chunks change tracking names were read.
    ChangeTracking,
    /// Every chunk was read and compared by hash, for `reason`.
    HashCompare { reason: String },
    /// No earlier snapshot of this volume in the place: every chunk read.
    Full,
}

/// What `create` made.
#[derive(Debug, Clone)]
pub struct Created {
    pub url: SnapshotUrl,
    pub manifest: Manifest,
    pub method: Method,
    /// Chunks read from the volume.
    pub chunks_read: u64,
}

/// Reaches the server that has a volume attached, to freeze it there (the
/// command line's control-socket client).
pub trait AttachedVolumes {
    /// The volume `volume` (this superblock), attached by `attachers`, as
    /// its server can freeze it; a clear error if that server cannot be
    /// reached.
    fn through_server(
        &self,
        volume: &VolumeAddress,
        superblock: &Superblock,
        attachers: &Attachers,
    ) -> Result<Box<dyn SnapshotVolume>, SnapshotError>;
}

/// Takes a snapshot of `volume` into `place`: of the volume itself if
/// nobody has it attached (locked here meanwhile), else through the
/// server that has (`servers`).
pub async fn create<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    place: &Place,
    store: &ObjectStore,
    quiet: bool,
    servers: &dyn AttachedVolumes,
) -> Result<Created, SnapshotError> {
    // The key policy decides first, attached or not.
    let prepared = envelope::prepare_attach(keys, volume, AttachOptions::default()).await?;
    let attachers = envelope::attached_by(volume)?;
    // Derived before the volume takes the key: the manifest's MAC key.
    let data_key = prepared.data_key().clone();
    let sb = prepared.superblock().clone();
    let mut source: Box<dyn SnapshotVolume> = if attachers.is_empty() {
        Box::new(LockedVolume(Arc::new(prepared.complete()?)))
    } else {
        drop(prepared);
        servers.through_server(volume, &sb, &attachers)?
    };
    store.check_bucket().await?;
    let inv = catalog::inventory(store, place).await?;
    let id = SnapshotId::generate();
    let url = place.snapshot(id.clone());
    let (changes, chunks) = source.freeze(&url, false)?;
    let base = match &changes {
        Changes::Exact { base, .. } => base.clone(),
        Changes::Unknown { .. } => None,
    };
    let parent = match find_parent(store, place, &inv, &sb.uuid, base.as_deref(), &data_key).await {
        Ok(p) => p,
        Err(e) => {
            source.finish(false, &url)?;
            return Err(e);
        }
    };
    let (mut changes, mut chunks) = (changes, chunks);
    if !matches!(
        choose(&changes, parent.as_ref(), 0).1,
        Method::ChangeTracking
    ) && matches!(changes, Changes::Exact { .. })
    {
        // The freeze kept the changed chunks only; this snapshot reads
        // them all: frozen again, keeping every chunk.
        drop(chunks);
        (changes, chunks) = source.freeze(&url, true)?;
    }
    if let Some(by) = source.frozen_by()
        && !quiet
    {
        eprintln!(
            "{volume}: frozen by {by}: the snapshot holds every write acknowledged before this line, none sent after; writes go on while it uploads"
        );
    }
    let taken = take(
        TakeArgs {
            volume,
            place,
            store,
            quiet,
            sb: &sb,
            inv: &inv,
            id: &id,
            url: &url,
            changes: &changes,
            parent: parent.as_ref(),
        },
        chunks,
        &data_key,
    )
    .await;
    drop(data_key);
    match taken {
        Ok(created) => {
            // Complete from here on: what follows only tidies up.
            if let Err(e) = source.finish(true, &url) {
                tracing::warn!("{url}: the snapshot is complete, but ending it failed: {e}");
            }
            if let Err(e) = store.delete(&url.in_progress_key()).await {
                tracing::warn!(
                    "{url}: the snapshot is complete, but its in-progress marker stays: {e}"
                );
            }
            remove_stale_markers(store, place, &created.1, &sb.uuid, &id).await;
            Ok(created.0)
        }
        Err(e) => {
            if let Err(end) = source.finish(false, &url) {
                tracing::warn!("{url}: ending the failed snapshot failed too: {end}");
            }
            Err(e)
        }
    }
}

/// Which chunks to read, and why, given the changes at the point in time
/// and the parent found; `chunk_count` chunks in all.
fn choose(changes: &Changes, parent: Option<&Parent>, chunk_count: u64) -> (Vec<u64>, Method) {
    let all = || (0..chunk_count).collect::<Vec<u64>>();
    match (changes, parent) {
        (
            Changes::Exact {
                base: Some(b),
                chunks,
            },
            Some(p),
        ) if *b == p.url.to_string() => (chunks.clone(), Method::ChangeTracking),
        (Changes::Exact { base: None, chunks }, None) => (chunks.clone(), Method::ChangeTracking),
        (Changes::Unknown { reason }, Some(_)) => (
            all(),
            Method::HashCompare {
                reason: reason.clone(),
            },
        ),
        (Changes::Exact { base, .. }, Some(p)) => (
            all(),
            Method::HashCompare {
                reason: format!(
                    "it counts from {}, not from {}, the latest snapshot of this volume here",
                    base.as_deref().unwrap_or("the volume's creation"),
                    p.url
                ),
            },
        ),
        (_, None) => (all(), Method::Full),
    }
}

/// What [`take`] works from.
struct TakeArgs<'a> {
    volume: &'a VolumeAddress,
    place: &'a Place,
    store: &'a ObjectStore,
    quiet: bool,
    sb: &'a Superblock,
    inv: &'a Inventory,
    id: &'a SnapshotId,
    url: &'a SnapshotUrl,
    changes: &'a Changes,
    parent: Option<&'a Parent>,
}

/// Uploads the chunks and writes the manifest; the snapshot and the
/// place's inventory just before the manifest.
async fn take(
    args: TakeArgs<'_>,
    source: Arc<dyn ChunkSource>,
    data_key: &DataKey,
) -> Result<(Created, Inventory), SnapshotError> {
    let TakeArgs {
        volume,
        place,
        store,
        quiet,
        sb,
        inv,
        id,
        url,
        changes,
        parent,
    } = args;
    let url = url.clone();
    let chunk_count = sb.size.div_ceil(CHUNK_SIZE);
    let (to_read, method) = choose(changes, parent, chunk_count);
    if let Method::HashCompare { reason } = &method {
        tracing::warn!("{volume}: change tracking unavailable: {reason}; comparing chunk hashes");
    }
    // Entries not read are the parent's (change tracking vouches for them).
    let mut entries: BTreeMap<u64, String> = match (&method, parent) {
        (Method::ChangeTracking, Some(p)) => p
            .manifest
            .chunks
            .iter()
            .map(|c| (c.index(), c.sha256().to_string()))
            .collect(),
        _ => BTreeMap::new(),
    };

    let marker = json!({
        "volume_uuid": sb.uuid.to_string(),
        "started": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    store
        .put(&url.in_progress_key(), marker.to_string().into_bytes())
        .await?;

    let total: u64 = to_read.iter().map(|&i| chunk_len(sb.size, i)).sum();
    let progress = Arc::new(Progress::new(format!("uploading {id}"), total, quiet));
    let known: Arc<Mutex<HashSet<String>>> =
        Arc::new(Mutex::new(inv.chunks.keys().cloned().collect()));
    let mut added = (0u64, 0u64);
    let chunks_read = to_read.len() as u64;
    let mut pending = to_read.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < store.concurrency() {
            let Some(index) = pending.next() else { break };
            let job = ChunkJob {
                source: source.clone(),
                store: store.clone(),
                place: place.clone(),
                known: known.clone(),
                progress: progress.clone(),
                index,
                len: chunk_len(sb.size, index),
            };
            tasks.spawn(job.run());
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let done =
            done.map_err(|e| SnapshotError::failed(format!("an upload task failed: {e}")))?;
        let (index, hash, uploaded) = match done {
            Ok(d) => d,
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        };
        match hash {
            Some(h) => entries.insert(index, h),
            None => entries.remove(&index),
        };
        if let Some(bytes) = uploaded {
            added.0 += 1;
            added.1 += bytes;
        }
    }
    progress.finish();

    // A concurrent `snapshot delete` that listed the place before the
    // marker existed may have collected a chunk this snapshot reuses: the
    // manifest is written only if every chunk it names is there.
    let now = catalog::inventory(store, place).await?;
    if let Some((index, hash)) = entries.iter().find(|(_, h)| !now.chunks.contains_key(*h)) {
        return Err(SnapshotError::failed(format!(
            "{url}: chunk {index} ({}) disappeared from the place during the upload (a `snapshot delete` at the same time?); run the command again",
            store.url(&place.chunk_key(hash))
        )));
    }

    let mut manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: id.to_string(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        volume_uuid: sb.uuid.to_string(),
        size: sb.size,
        sector_size: sb.sector_size,
        cipher: sb.cipher.clone(),
        data_offset: sb.data_offset,
        key_arn: sb.key_arn.clone(),
        wrapped_key: {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&sb.wrapped_key)
        },
        encryption_context: sb.encryption_context.clone(),
        parent: parent.map(|p| p.url.id.to_string()),
        chunk_size: CHUNK_SIZE,
        chunks: entries.into_iter().map(|(i, h)| ChunkEntry(i, h)).collect(),
        objects_added: added.0,
        bytes_added: added.1,
        mac: String::new(),
    };
    manifest.seal(data_key);
    store.put(&url.manifest_key(), manifest.to_bytes()).await?;
    Ok((
        Created {
            url,
            manifest,
            method,
            chunks_read,
        },
        now,
    ))
}

/// The parent snapshot and its (authentic) manifest.
struct Parent {
    url: SnapshotUrl,
    manifest: Manifest,
}

/// Change tracking's base if it is a snapshot in this place whose manifest
/// verifies; else the newest snapshot of the volume `uuid` here that does.
async fn find_parent(
    store: &ObjectStore,
    place: &Place,
    inv: &Inventory,
    uuid: &uuid::Uuid,
    base: Option<&str>,
    key: &DataKey,
) -> Result<Option<Parent>, SnapshotError> {
    if let Some(base) = base.and_then(|b| SnapshotUrl::parse(b).ok())
        && base.place == *place
        && inv.manifests.contains_key(&base.id)
        && let Some(p) = authentic(store, base, key).await?
    {
        return Ok(Some(p));
    }
    // Manifests are written last and never rewritten: the newest object is
    // the newest snapshot.
    let mut newest_first: Vec<(&SnapshotId, _)> = inv.manifests.iter().collect();
    newest_first.sort_by_key(|(_, object)| std::cmp::Reverse(object.last_modified));
    for (id, _) in newest_first {
        let url = place.snapshot(id.clone());
        let manifest = catalog::fetch_manifest(store, &url).await?;
        if manifest.volume_uuid != uuid.to_string() {
            continue;
        }
        if let Some(p) = authentic(store, url, key).await? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The snapshot's manifest if it verifies under `key` (a warning if not:
/// such a snapshot is never a parent).
async fn authentic(
    store: &ObjectStore,
    url: SnapshotUrl,
    key: &DataKey,
) -> Result<Option<Parent>, SnapshotError> {
    let manifest = catalog::fetch_manifest(store, &url).await?;
    match manifest.verify(key) {
        Ok(()) => Ok(Some(Parent { url, manifest })),
        Err(e) => {
            tracing::warn!("{url}: not used as the parent: {e}");
            Ok(None)
        }
    }
}

/// Markers of earlier, interrupted uploads of the same volume: nobody else
/// can be snapshotting it (this process holds its exclusive lock, or its
/// server's one snapshot session), so they are dead, and would hold back
/// chunk collection forever.
async fn remove_stale_markers(
    store: &ObjectStore,
    place: &Place,
    inv: &Inventory,
    uuid: &uuid::Uuid,
    ours: &SnapshotId,
) {
    for id in inv.in_progress.keys().filter(|id| *id != ours) {
        let key = place.in_progress_key(id);
        // A marker is a small JSON object; anything bigger is not ours.
        let Ok(bytes) = store.get(&key, MARKER_LIMIT).await else {
            continue;
        };
        let same_volume = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| v["volume_uuid"] == uuid.to_string().as_str());
        if same_volume && let Err(e) = store.delete(&key).await {
            tracing::warn!("cannot remove the marker of an interrupted upload: {e}");
        }
    }
}

/// Who has a volume attached, for messages: pids or Ceph clients.
pub fn describe_attachers(attachers: &Attachers) -> String {
    let who: Vec<String> = match attachers {
        Attachers::Processes(holders) => holders
            .iter()
            .map(|h| match &h.command {
                Some(c) => format!("pid {} ({c}, {})", h.pid, h.mode.describe()),
                None => format!("pid {} ({})", h.pid, h.mode.describe()),
            })
            .collect(),
        Attachers::CephClients(clients) => clients
            .iter()
            .map(|c| format!("Ceph client {c} (read-write)"))
            .collect(),
    };
    who.join(", ")
}

/// Bytes of chunk `index` of a data area of `size` bytes.
fn chunk_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index.saturating_mul(CHUNK_SIZE))
        .min(CHUNK_SIZE)
}

/// One chunk: read as stored, hashed, uploaded if new.
struct ChunkJob {
    source: Arc<dyn ChunkSource>,
    store: ObjectStore,
    place: Place,
    known: Arc<Mutex<HashSet<String>>>,
    progress: Arc<Progress>,
    index: u64,
    len: u64,
}

/// (index, its hash or None when all zeros, Some(bytes) if uploaded)
type ChunkDone = (u64, Option<String>, Option<u64>);

impl ChunkJob {
    async fn run(self) -> Result<ChunkDone, SnapshotError> {
        let (source, index, len) = (self.source.clone(), self.index, self.len);
        let read = tokio::task::spawn_blocking(move || {
            let buf = source.read_chunk(index, len)?;
            let hash = (!buf.iter().all(|&b| b == 0)).then(|| sha256_hex(&buf));
            Ok::<_, std::io::Error>((buf, hash))
        })
        .await
        .map_err(|e| SnapshotError::failed(format!("a read task failed: {e}")))?;
        let (buf, hash) = read.map_err(|e| {
            SnapshotError::failed(format!("cannot read chunk {index} of the volume: {e}"))
        })?;
        let Some(hash) = hash else {
            self.progress.add(len);
            return Ok((index, None, None));
        };
        let fresh = self
            .known
            .lock()
            .map(|mut k| k.insert(hash.clone()))
            .unwrap_or(true);
        let mut uploaded = None;
        if fresh {
            self.store.put(&self.place.chunk_key(&hash), buf).await?;
            uploaded = Some(len);
        }
        self.progress.add(len);
        Ok((index, Some(hash), uploaded))
    }
}
