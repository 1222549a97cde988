//! The last step of every attach `envol serve` makes: a volume whose lazy
//! restore (`volume restore --lazy`) is still running is opened with a
//! fetcher for its snapshot's chunks, and hydrates in the background while
//! it is served.

use crate::envelope::{PreparedAttachment, VolumeAddress};
use crate::snapshot::lazy;
use crate::snapshot::object_store::DEFAULT_CONCURRENCY;
use crate::volume::Volume;

/// Completes `prepared` (the volume `address`) off the runtime's threads
/// (locking, and for rbd:, opening the image wait for storage).
pub(crate) async fn complete(
    address: &VolumeAddress,
    prepared: PreparedAttachment,
) -> Result<Volume, String> {
    let fetcher = match prepared.hydration() {
        None => None,
        Some(record) => Some(
            lazy::open_fetcher(record, prepared.data_key(), DEFAULT_CONCURRENCY)
                .await
                .map_err(|e| {
                    format!(
                        "{address}: it is being restored from {} and cannot be served without it: {e}",
                        record.header.source.snapshot
                    )
                })?,
        ),
    };
    let (volume, hydration) = tokio::task::spawn_blocking(move || match fetcher {
        None => prepared.complete().map(|v| (v, None)),
        Some(fetcher) => prepared.complete_hydrating(fetcher),
    })
    .await
    .map_err(|e| format!("attach failed: {e}"))?
    .map_err(|e| e.to_string())?;
    if let Some(h) = &hydration {
        match hydrate_workers() {
            0 => tracing::info!(
                "lazy restore from {}: background hydration is off ({WORKERS_VAR}=0); chunks are fetched as they are read or written",
                h.source()
            ),
            n => lazy::hydrate_in_background(h, n),
        }
    }
    Ok(volume)
}

/// Chunks fetched at once in the background, per volume: as many as a
/// restore fetches at once, unless the environment says otherwise (0: only
/// on demand, e.g. to leave a slow link to the clients' reads).
const WORKERS_VAR: &str = "ENVOL_HYDRATE_WORKERS";

fn hydrate_workers() -> usize {
    let Ok(value) = std::env::var(WORKERS_VAR) else {
        return DEFAULT_CONCURRENCY;
    };
    match value.parse::<usize>() {
        Ok(n) if n <= 256 => n,
        _ => {
            tracing::warn!(
                "{WORKERS_VAR}={value:?} is not a number from 0 to 256; using {DEFAULT_CONCURRENCY}"
            );
            DEFAULT_CONCURRENCY
        }
    }
}
