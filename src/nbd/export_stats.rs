//! Per-export counters: what `envol status` shows and what the Prometheus
//! metrics read (`metrics.rs`): clients and connections, requests in
//! flight, and per command the requests, bytes and latency; errors by
//! errno. Kept in one place so that every reader sees the same numbers.
//!
//! The request path only ever touches this export's own atomics, through
//! fixed arrays indexed by command and errno — no map lookup, no lock, no
//! allocation: at admission one relaxed add for the request, one for its
//! bytes and one for in-flight; when its reply is written (the
//! [`InFlight`] token drops) one clock read, a bucket add, a sum add and
//! the in-flight subtract. Relaxed atomics are exact (every request of
//! every connection counts once); they only need not be read in the same
//! instant as each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use super::latency_histogram::{LatencyHistogram, LatencyReading};
use super::protocol::{self as p, Command, Request};

/// The commands counted apart, in the order of [`COMMAND_NAMES`]; an
/// unknown command counts as `other`. (`NBD_CMD_DISC` is no request: it
/// ends the connection and is never counted.)
const COMMANDS: usize = 8;

/// The `command` label of each counted command.
pub const COMMAND_NAMES: [&str; COMMANDS] = [
    "read",
    "write",
    "flush",
    "trim",
    "write_zeroes",
    "block_status",
    "cache",
    "other",
];

fn command_index(command: Command) -> usize {
    match command {
        Command::Read => 0,
        Command::Write => 1,
        Command::Flush => 2,
        Command::Trim => 3,
        Command::WriteZeroes => 4,
        Command::BlockStatus => 5,
        Command::Cache => 6,
        Command::Disc | Command::Unknown(_) => 7,
    }
}

/// The NBD errors a reply can carry (the spec's list), in the order of
/// [`ERRNO_NAMES`]; anything else (no such reply is sent today) as `other`.
const ERRNOS: usize = 9;

/// The `errno` label of each counted error.
pub const ERRNO_NAMES: [&str; ERRNOS] = [
    "EPERM",
    "EIO",
    "ENOMEM",
    "EINVAL",
    "ENOSPC",
    "EOVERFLOW",
    "ENOTSUP",
    "ESHUTDOWN",
    "other",
];

fn errno_index(errno: u32) -> usize {
    match errno {
        p::EPERM => 0,
        p::EIO => 1,
        p::ENOMEM => 2,
        p::EINVAL => 3,
        p::ENOSPC => 4,
        p::EOVERFLOW => 5,
        p::ENOTSUP => 6,
        p::ESHUTDOWN => 7,
        _ => 8,
    }
}

/// What one command has cost an export.
#[derive(Debug, Default)]
struct CommandStats {
    requests: AtomicU64,
    bytes: AtomicU64,
    latency: LatencyHistogram,
}

/// The live counters of one export.
#[derive(Debug)]
pub(crate) struct ExportStats {
    attached_since: SystemTime,
    clients: AtomicU64,
    connections: AtomicU64,
    in_flight: AtomicU64,
    commands: [CommandStats; COMMANDS],
    errors: [AtomicU64; ERRNOS],
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

/// Everything the metrics show of one export, read at one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportMetrics {
    pub counters: ExportCounters,
    /// Connections that reached transmission on this export, ever.
    pub connections: u64,
    /// Per command, in the order of [`COMMAND_NAMES`].
    pub commands: Vec<CommandMetrics>,
    /// Error replies, in the order of [`ERRNO_NAMES`].
    pub errors: Vec<u64>,
}

/// One command's share of an [`ExportMetrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct CommandMetrics {
    /// Requests read (admitted or refused).
    pub requests: u64,
    /// Bytes of the admitted requests (`length`: for READ and WRITE the
    /// data, for TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS the range).
    pub bytes: u64,
    /// From the header read to the reply written (or abandoned).
    pub latency: LatencyReading,
}

impl ExportStats {
    pub(crate) fn new() -> Self {
        Self {
            attached_since: SystemTime::now(),
            clients: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            commands: Default::default(),
            errors: Default::default(),
        }
    }

    pub(crate) fn read(&self) -> ExportCounters {
        ExportCounters {
            attached_since: self.attached_since,
            clients: self.clients.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            bytes_read: self.commands[0].bytes.load(Ordering::Relaxed),
            bytes_written: self.commands[1].bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn read_metrics(&self) -> ExportMetrics {
        ExportMetrics {
            counters: self.read(),
            connections: self.connections.load(Ordering::Relaxed),
            commands: self
                .commands
                .iter()
                .map(|c| CommandMetrics {
                    requests: c.requests.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    latency: c.latency.read(),
                })
                .collect(),
            errors: self
                .errors
                .iter()
                .map(|e| e.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Counts a request the loop has read: the request, its bytes when it
    /// goes to the device (`admitted`), and in flight until the returned
    /// token drops (with its reply frame, once written or abandoned), which
    /// also records its latency.
    pub(crate) fn request(self: &Arc<Self>, request: &Request, admitted: bool) -> InFlight {
        let command = command_index(request.command());
        let stats = &self.commands[command];
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if admitted {
            stats
                .bytes
                .fetch_add(u64::from(request.length), Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self.clone(),
            command_and_start: (command as u64) << START_BITS | now_ns(),
        }
    }

    /// Counts an error reply (refused before the device, or the device's
    /// error, or an internal one).
    pub(crate) fn failed(&self, errno: u32) {
        self.errors[errno_index(errno)].fetch_add(1, Ordering::Relaxed);
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

    /// Counts a connection that was let in (the export was not closing).
    pub(crate) fn connection_served(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where request start times count from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Bits of [`InFlight::command_and_start`] that hold the start time: 2^61
/// ns is 73 years of uptime; the 3 above hold the command index (< 8).
const START_BITS: u32 = 61;
const START_MASK: u64 = (1 << START_BITS) - 1;

/// Nanoseconds since [`EPOCH`].
fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX) & START_MASK
}

/// One request in flight; travels with its reply frame.
pub(crate) struct InFlight {
    stats: Arc<ExportStats>,
    /// The command's index and when the request was admitted, in one word:
    /// the token is moved with every reply frame, and an `Instant` plus an
    /// index would triple its size.
    command_and_start: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let command = (self.command_and_start >> START_BITS) as usize;
        let start = self.command_and_start & START_MASK;
        let elapsed = Duration::from_nanos(now_ns().saturating_sub(start));
        self.stats.commands[command].latency.observe(elapsed);
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
