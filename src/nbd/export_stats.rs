//! Per-export counters: what `envol status` shows (and what metrics will
//! read): clients, requests in flight, bytes read and written, attached
//! since. Kept in one place so that every reader sees the same numbers.
//!
//! The request path pays one relaxed atomic add per request for the bytes
//! and one add and one subtract for in-flight, on counters of the export
//! (not of the connection): cheap next to a request's system calls, and
//! exact, since every request of every connection counts once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::protocol::{Command, Request};

/// The live counters of one export.
#[derive(Debug)]
pub(crate) struct ExportStats {
    attached_since: SystemTime,
    clients: AtomicU64,
    in_flight: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// A moment's reading of an export's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportCounters {
    /// When the export was added to the server.
    pub attached_since: SystemTime,
    /// Connections in the transmission phase on this export.
    pub clients: u64,
    /// Requests read and not yet answered (their reply not yet written).
    pub in_flight: u64,
    /// Bytes of READ requests admitted (checked and passed to the device).
    pub bytes_read: u64,
    /// Bytes of WRITE requests admitted.
    pub bytes_written: u64,
}

impl ExportStats {
    pub(crate) fn new() -> Self {
        Self {
            attached_since: SystemTime::now(),
            clients: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        }
    }

    pub(crate) fn read(&self) -> ExportCounters {
        ExportCounters {
            attached_since: self.attached_since,
            clients: self.clients.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }

    /// Counts a request the loop has read: its bytes when it goes to the
    /// device (`admitted`), and in flight until the returned token drops
    /// (with its reply frame, once written or abandoned).
    pub(crate) fn request(self: &Arc<Self>, request: &Request, admitted: bool) -> InFlight {
        if admitted {
            let bytes = u64::from(request.length);
            match request.command() {
                Command::Read => self.bytes_read.fetch_add(bytes, Ordering::Relaxed),
                Command::Write => self.bytes_written.fetch_add(bytes, Ordering::Relaxed),
                _ => 0,
            };
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The number of clients, read in the same total order as
    /// [`ExportStats::client_arrived`] (see `served_export.rs`: detach and connect).
    pub(crate) fn clients(&self) -> u64 {
        self.clients.load(Ordering::SeqCst)
    }

    pub(crate) fn client_arrived(&self) {
        self.clients.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn client_left(&self) {
        self.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request in flight; travels with its reply frame.
pub(crate) struct InFlight(Arc<ExportStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
