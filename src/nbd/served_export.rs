//! One export while a server offers it: the [`Export`] itself, its
//! counters, and where it stands in its life — open, closing (a detach
//! waits for its clients), evicted (a forced detach: requests get
//! `ESHUTDOWN`, connections are told to stop).
//!
//! Closing and connecting meet without a lock: a connection that has
//! negotiated the export first counts itself a client, then looks whether
//! the export is closing (and if so leaves again); a detach first marks the
//! export closing, then waits for its clients to reach zero. Both sides use
//! sequentially consistent operations, so either the connection sees the
//! mark or the detach sees the client — never neither.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, watch};

use super::export::Export;
use super::export_stats::ExportStats;

pub(crate) struct ServedExport {
    export: Export,
    /// What clients authenticated by a verified TLS client certificate are
    /// shown instead of the export's own description.
    certified_description: Option<String>,
    pub(crate) stats: Arc<ExportStats>,
    closing: AtomicBool,
    evicted: AtomicBool,
    /// Tells the export's connections to stop (forced detach).
    evict: watch::Sender<bool>,
    /// Woken each time a client leaves.
    left: Notify,
}

impl Deref for ServedExport {
    type Target = Export;
    fn deref(&self) -> &Export {
        &self.export
    }
}

impl std::fmt::Debug for ServedExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedExport")
            .field("export", &self.export)
            .field("closing", &self.is_closing())
            .finish()
    }
}

impl ServedExport {
    pub(crate) fn new(export: Export, certified_description: Option<String>) -> Self {
        Self {
            export,
            certified_description,
            stats: Arc::new(ExportStats::new()),
            closing: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: watch::channel(false).0,
            left: Notify::new(),
        }
    }

    pub(crate) fn export(&self) -> &Export {
        &self.export
    }

    pub(crate) fn with_certified_description(&self, description: String) -> Self {
        Self::new(self.export.clone(), Some(description))
    }

    /// The description as a client sees it: `certified` clients get the
    /// certified description where there is one.
    pub(crate) fn description(&self, certified: bool) -> &str {
        match (certified, &self.certified_description) {
            (true, Some(text)) => text,
            _ => &self.export.description,
        }
    }

    /// Counts a connection that negotiated this export as its client, or
    /// `None` if the export started closing meanwhile.
    pub(crate) fn connect(self: &Arc<Self>) -> Option<Client> {
        self.stats.client_arrived();
        let client = Client(self.clone());
        if self.closing.load(Ordering::SeqCst) {
            return None; // `client` leaves again as it drops.
        }
        self.stats.connection_served();
        Some(client)
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Marks the export closing; `false` if it already was.
    pub(crate) fn close(&self) -> bool {
        !self.closing.swap(true, Ordering::SeqCst)
    }

    /// Undoes [`close`](Self::close) (a detach given up before it evicted
    /// anyone).
    pub(crate) fn reopen(&self) {
        self.closing.store(false, Ordering::SeqCst);
    }

    /// From now on every request gets `ESHUTDOWN`, and the connections are
    /// told to stop reading (they answer what they hold, then close).
    pub(crate) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.evict.send_replace(true);
    }

    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Resolves (to `true`) once the export is evicted.
    pub(crate) fn eviction(&self) -> watch::Receiver<bool> {
        self.evict.subscribe()
    }

    /// Resolves once no client is left (call after [`close`](Self::close),
    /// so that none can arrive).
    pub(crate) async fn clients_gone(&self) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            // Registered before the count is read: a client leaving in
            // between still wakes us.
            left.as_mut().enable();
            if self.stats.clients() == 0 {
                return;
            }
            left.await;
        }
    }
}

/// A connection in transmission on an export; leaves when dropped.
pub(crate) struct Client(Arc<ServedExport>);

impl Drop for Client {
    fn drop(&mut self) {
        self.0.stats.client_left();
        self.0.left.notify_waiters();
    }
}
