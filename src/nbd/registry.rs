//! The exports of a running server, changeable while it serves: attach
//! adds one, detach closes one, waits for its clients (or evicts them),
//! flushes it and lets its device go.
//!
//! The current [`ExportSet`] sits behind a lock that only the handshake
//! reads (once per option) and only attach and detach write: the request
//! path never touches it — a connection in transmission holds its own
//! export, and connections of other exports never notice a change.

use std::io;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use thiserror::Error;

use super::export::{Export, ExportError};
use super::export_set::ExportSet;
use super::export_stats::{ExportCounters, ExportMetrics};
use super::served_export::ServedExport;
use crate::volume::BlockDevice;

/// How often a detach looks whether the last references to the device
/// (a connection's worker finishing, a handshake reading the old set) are
/// gone.
const RELEASE_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
pub(crate) struct ExportRegistry {
    current: RwLock<Arc<ExportSet>>,
}

/// What `envol status` shows of one export.
#[derive(Debug, Clone)]
pub struct ExportStatus {
    pub name: String,
    pub size: u64,
    pub read_only: bool,
    /// A detach is waiting for its clients.
    pub detaching: bool,
    /// A forced detach: its clients' requests get `ESHUTDOWN`.
    pub evicting: bool,
    pub counters: ExportCounters,
}

/// How a detach ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// Clients connected when the detach began.
    pub clients_at_start: u64,
    /// `--force`: connections were closed.
    pub evicted: bool,
    /// When the export was attached (so a caller can say for how long).
    pub attached_since: SystemTime,
}

#[derive(Debug, Error)]
pub enum DetachError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("export {name:?}: flush failed: {error}; the export stays attached")]
    Flush { name: String, error: io::Error },
    #[error(
        "export {name:?} was detached, but its device is still in use after {secs} s; it is released when the last user lets go"
    )]
    StillInUse { name: String, secs: u64 },
}

impl ExportRegistry {
    pub(crate) fn new(set: ExportSet) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// The exports as they are now. (A poisoned lock only means a writer
    /// panicked between building a set and storing it: the stored set is
    /// whole either way.)
    pub(crate) fn snapshot(&self) -> Arc<ExportSet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(
        &self,
        change: impl FnOnce(&ExportSet) -> Result<ExportSet, ExportError>,
    ) -> Result<(), ExportError> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(change(&current)?);
        Ok(())
    }

    /// Adds `export`; its name must not be in use (not even by an export
    /// being detached).
    pub(crate) fn attach(
        &self,
        export: Export,
        certified_description: Option<String>,
    ) -> Result<(), ExportError> {
        self.replace(|set| set.with(export, certified_description))
    }

    pub(crate) fn set_certified_description(
        &self,
        name: &str,
        description: String,
    ) -> Result<(), ExportError> {
        self.replace(|set| {
            let mut set = set.clone();
            set.set_certified_description(name, description)?;
            Ok(set)
        })
    }

    pub(crate) fn status(&self) -> Vec<ExportStatus> {
        self.snapshot()
            .all()
            .iter()
            .map(|e| ExportStatus {
                name: e.name.clone(),
                size: e.device.size(),
                read_only: e.is_read_only(),
                detaching: e.is_closing(),
                evicting: e.is_evicted(),
                counters: e.stats.read(),
            })
            .collect()
    }

    /// Every export's metrics, those being detached included.
    pub(crate) fn metrics(&self) -> Vec<(String, ExportMetrics)> {
        self.snapshot()
            .all()
            .iter()
            .map(|e| (e.name.clone(), e.stats.read_metrics()))
            .collect()
    }

    /// Detaches export `name`: no new connections from now on; then either
    /// waits for its clients to leave, or (`force`) flushes it and evicts
    /// them (requests get `ESHUTDOWN`; connections still open after the
    /// eviction grace close once their in-flight replies are sent);
    /// flushes it; removes it; and drops the
    /// device once nothing else holds it (for a volume: its lock released,
    /// its key wiped), on a blocking thread.
    ///
    /// Dropping the returned future while it waits for clients (the
    /// operator gave up) reopens the export as it was. `release_deadline`:
    /// how long to wait, after the last client left, for every other
    /// reference to the device to go (a handshake still reading the old
    /// set, a connection draining its replies).
    pub(crate) async fn detach(
        &self,
        name: &str,
        force: bool,
        release_deadline: Duration,
    ) -> Result<Detached, DetachError> {
        let served = self
            .snapshot()
            .named(name)
            .cloned()
            .ok_or_else(|| ExportError::UnknownExport(name.to_string()))?;
        if !served.close() {
            return Err(ExportError::Detaching(name.to_string()).into());
        }
        let mut closing = Closing(Some(served.clone()));
        let clients_at_start = served.stats.clients();
        if force {
            // What clients were told is written is durable before they are
            // cut off.
            if let Err(error) = flush(&served.device).await {
                return Err(DetachError::Flush {
                    name: name.to_string(),
                    error,
                });
            }
            closing.keep();
            served.evict();
        }
        served.clients_gone().await;
        closing.keep();
        // The clients' last requests (and any that raced the eviction).
        if let Err(error) = flush(&served.device).await {
            tracing::warn!(export = %name, error = %error, "flush at detach failed");
        }
        let detached = Detached {
            clients_at_start,
            evicted: force,
            attached_since: served.stats.read().attached_since,
        };
        self.replace(|set| Ok(set.without(&served)))?;
        release(served, release_deadline)
            .await
            .map_err(|()| DetachError::StillInUse {
                name: name.to_string(),
                secs: release_deadline.as_secs(),
            })?;
        Ok(detached)
    }

    /// Every export's device, for a flush at shutdown.
    pub(crate) fn devices(&self) -> Vec<(String, Arc<dyn BlockDevice>)> {
        self.snapshot()
            .all()
            .iter()
            .map(|e| (e.name.clone(), e.device.clone()))
            .collect()
    }
}

/// Reopens an export whose detach was given up while only waiting.
struct Closing(Option<Arc<ServedExport>>);

impl Closing {
    /// The detach goes through from here, whatever happens to its caller.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(served) = self.0.take() {
            served.reopen();
        }
    }
}

async fn flush(device: &Arc<dyn BlockDevice>) -> io::Result<()> {
    let device = device.clone();
    tokio::task::spawn_blocking(move || device.flush())
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Waits until `served` is the last reference to the export and to its
/// device, then drops both on a blocking thread (closing a volume may
/// wait for storage). `Err` if others still hold it at the deadline; it is
/// then dropped by whoever lets go last.
async fn release(served: Arc<ServedExport>, within: Duration) -> Result<(), ()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = Arc::strong_count(&served) == 1 && Arc::strong_count(&served.device) == 1;
        if last {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(());
        }
        tokio::time::sleep(RELEASE_POLL).await;
    }
    let _ = tokio::task::spawn_blocking(move || drop(served)).await;
    Ok(())
}
