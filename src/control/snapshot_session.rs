//! A snapshot of an attached volume, taken through its server: the
//! server's side (the snapshot itself — S3, manifest, the data key's MAC —
//! stays with `envol snapshot create`, under its own credentials and the
//! key policy's say).
//!
//! ```text
//! → {"version":1,"command":"snapshot_begin","volume_uuid":"…","base":"s3://…/snap-ID","copy_limit":268435456}
//! ← {"version":1,"reply":"snapshot_frozen","export":"db","changes":{"tracking":"exact",…},"store_snapshot":null}
//! → {"version":1,"command":"snapshot_read","chunk":7}
//! ← {"version":1,"reply":"snapshot_chunk","chunk":7,"len":1048576}  + 1048576 raw bytes
//! → {"version":1,"command":"snapshot_end","success":true}
//! ← {"version":1,"reply":"snapshot_ended","success":true}
//! ```
//!
//! `snapshot_begin` turns the connection into the session: the freeze
//! happens before the reply, so the reply is the point in time. A file
//! volume is frozen in place (a frozen view, copy-before-write) and read
//! chunk by chunk through the session; an `rbd:` volume gets an RBD
//! snapshot the client opens itself, removed when the session ends. A
//! session that ends in any other way than `snapshot_end` with success —
//! the client killed, its upload failed — gives the changes it took back
//! to change tracking, so the next snapshot misses none; and the copies
//! (or the RBD snapshot) go with it.

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncWriteExt};
use tracing::{info, warn};

use super::active_snapshot::ActiveSnapshot;
use super::framing::{read_line, send};
use super::handler::{Attacher, Controller};
use super::protocol::{Command, ReplyBody, TakenChanges, parse_request};
use crate::volume::{Changes, FrozenView, Volume};

/// Prefix of the RBD snapshots a session makes: a leftover of a killed
/// server is recognised and removed by the next session on the image.
pub const STORE_SNAPSHOT_PREFIX: &str = "envol-attached-";

/// What `snapshot_begin` asked for.
pub(super) struct Begin {
    pub volume_uuid: String,
    pub base: String,
    pub all_chunks: bool,
    pub copy_limit: u64,
}

/// How the volume is held still for the snapshot.
enum Frozen {
    View(Arc<FrozenView>),
    StoreSnapshot(String),
}

/// Serves the session that `begin` opens on this connection, to its end.
pub(super) async fn serve<A, R, W>(
    controller: &Controller<A>,
    begin: Begin,
    reader: &mut R,
    writer: &mut W,
) where
    A: Attacher,
    R: AsyncBufRead + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let (name, volume) = match controller.volume_by_uuid(&begin.volume_uuid) {
        Ok(found) => found,
        Err(message) => {
            let _ = send(writer, ReplyBody::error(message)).await;
            return;
        }
    };
    let as_view = !volume.snapshots_in_store();
    // Registered before the freeze, so that a second session on the same
    // export is refused before it freezes anything.
    if let Err(message) = controller.snapshot_started(
        &name,
        ActiveSnapshot {
            base: begin.base.clone(),
            view: None,
        },
    ) {
        let _ = send(writer, ReplyBody::error(message)).await;
        release(volume).await;
        return;
    }
    let started = std::time::Instant::now();
    let frozen = freeze(&volume, &begin, as_view).await;
    let took = started.elapsed();
    let (taken, frozen) = match frozen {
        Ok(f) => f,
        Err(message) => {
            controller.snapshot_ended(&name);
            let _ = send(writer, ReplyBody::error(message)).await;
            release(volume).await;
            return;
        }
    };
    if let Frozen::View(v) = &frozen {
        controller.snapshot_viewing(&name, v.clone());
    }
    // How long the freeze took, writes held back for part of it (file
    // volumes: draining those in flight and restarting change tracking).
    info!(export = %name, base = %begin.base, freeze_us = took.as_micros() as u64, "frozen for a snapshot");
    let reply = ReplyBody::SnapshotFrozen {
        export: name.clone(),
        changes: match &taken {
            Changes::Exact { base, chunks } => TakenChanges::Exact {
                base: base.clone(),
                chunks: chunks.clone(),
            },
            Changes::Unknown { reason } => TakenChanges::Unknown {
                reason: reason.clone(),
            },
        },
        store_snapshot: match &frozen {
            Frozen::View(_) => None,
            Frozen::StoreSnapshot(s) => Some(s.clone()),
        },
    };
    let ended = if send(writer, reply).await.is_ok() {
        session(&volume, &frozen, reader, writer).await
    } else {
        None
    };
    let success = ended == Some(true);
    // Ended: the view's copies freed (or the RBD snapshot removed), and
    // unless it succeeded the changes given back.
    let volume_for_end = volume.clone();
    let closed = tokio::task::spawn_blocking(move || {
        end(&volume_for_end, &frozen, (!success).then_some(taken));
    })
    .await;
    if let Err(e) = closed {
        warn!(export = %name, "ending the snapshot session failed: {e}");
    }
    controller.snapshot_ended(&name);
    // Answered once the session is over: a client may begin the next.
    if let Some(success) = ended {
        let _ = send(writer, ReplyBody::SnapshotEnded { success }).await;
    }
    info!(export = %name, success, "snapshot session ended");
    release(volume).await;
}

/// Freezes `volume` as `begin` asks: a frozen view, or a store snapshot.
async fn freeze(
    volume: &Arc<Volume>,
    begin: &Begin,
    as_view: bool,
) -> Result<(Changes, Frozen), String> {
    let volume = volume.clone();
    let base = begin.base.clone();
    let (all_chunks, copy_limit) = (begin.all_chunks, begin.copy_limit);
    let store_snapshot = format!(
        "{STORE_SNAPSHOT_PREFIX}{}",
        base.rsplit('/').next().unwrap_or_default()
    );
    tokio::task::spawn_blocking(move || {
        if as_view {
            let (taken, view) = volume
                .freeze(&base, all_chunks, copy_limit)
                .map_err(|e| format!("cannot freeze the volume: {e}"))?;
            return Ok((taken, Frozen::View(view)));
        }
        for leftover in volume
            .store_snapshots()
            .map_err(|e| format!("cannot list the volume's RBD snapshots: {e}"))?
            .iter()
            .filter(|s| s.starts_with(STORE_SNAPSHOT_PREFIX))
        {
            // Nobody else takes these (one session per export, one
            // server per image): a killed server's leftover.
            warn!("removing RBD snapshot {leftover}, left by an interrupted snapshot");
            volume
                .remove_store_snapshot(leftover)
                .map_err(|e| format!("cannot remove the leftover RBD snapshot {leftover}: {e}"))?;
        }
        let taken = volume
            .snapshot_store(&base, &store_snapshot)
            .map_err(|e| format!("cannot take an RBD snapshot of the volume: {e}"))?;
        Ok((taken, Frozen::StoreSnapshot(store_snapshot)))
    })
    .await
    .map_err(|e| format!("freezing failed: {e}"))?
}

/// Answers the session's requests; how `snapshot_end` ended it (`None`:
/// the connection ended first).
async fn session<R, W>(
    volume: &Arc<Volume>,
    frozen: &Frozen,
    reader: &mut R,
    writer: &mut W,
) -> Option<bool>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWriteExt + Unpin,
{
    loop {
        let line = match read_line(reader).await {
            Ok(Some(line)) => line,
            Ok(None) => return None,
            Err(message) => {
                let _ = send(writer, ReplyBody::error(message)).await;
                return None;
            }
        };
        let reply = match parse_request(&line) {
            Ok(Command::SnapshotEnd { success }) => return Some(success),
            Ok(Command::SnapshotRead { chunk }) => match frozen {
                Frozen::View(view) => {
                    let (volume, view) = (volume.clone(), view.clone());
                    let read =
                        tokio::task::spawn_blocking(move || volume.read_frozen(&view, chunk)).await;
                    match read {
                        Ok(Ok(bytes)) => {
                            let header = ReplyBody::SnapshotChunk {
                                chunk,
                                len: bytes.len() as u64,
                            };
                            if send(writer, header).await.is_err()
                                || writer.write_all(&bytes).await.is_err()
                                || writer.flush().await.is_err()
                            {
                                return None;
                            }
                            continue;
                        }
                        Ok(Err(e)) => ReplyBody::error(format!("chunk {chunk}: {e}")),
                        Err(e) => ReplyBody::error(format!("chunk {chunk}: the read failed: {e}")),
                    }
                }
                Frozen::StoreSnapshot(name) => ReplyBody::error(format!(
                    "this volume's view is the RBD snapshot {name}: read it there"
                )),
            },
            Ok(_) => ReplyBody::error(
                "during a snapshot session only snapshot_read and snapshot_end are answered",
            ),
            Err(message) => ReplyBody::error(message),
        };
        if send(writer, reply).await.is_err() {
            return None;
        }
    }
}

/// Ends the freeze; `give_back`: the changes to track again (failure).
fn end(volume: &Volume, frozen: &Frozen, give_back: Option<Changes>) {
    match frozen {
        Frozen::View(view) => volume.thaw(view, give_back),
        Frozen::StoreSnapshot(name) => {
            if let Err(e) = volume.remove_store_snapshot(name) {
                warn!("cannot remove RBD snapshot {name}: {e}; the next snapshot removes it");
            }
            if let Some(taken) = give_back {
                volume.merge_changes(taken);
            }
        }
    }
}

/// Lets the volume go off the runtime's threads: if it was detached
/// meanwhile, this is the last reference, and closing it waits for storage.
async fn release(volume: Arc<Volume>) {
    let _ = tokio::task::spawn_blocking(move || drop(volume)).await;
}
