//! The audit log: one JSON line per request, appended to `DIR/audit.log`.
//!
//! A line records who asked for what on which key and how it ended — never a
//! plaintext, key, secret or signature. Lines are written with one `write`
//! call on an O_APPEND file so concurrent writers (threads, or the CLI and
//! the server) never interleave within a line.
//!
//! Two bounds keep a stranger from filling the disk through it:
//!
//! - **Rotation by size.** Before a line would take `audit.log` past
//!   [`Rotation::max_bytes`], it becomes `audit.log.1` (`.1` becomes `.2`,
//!   and so on; the oldest past [`Rotation::keep`] is deleted), and a new
//!   `audit.log` begins. The log never holds more than `keep + 1` files.
//! - **Unauthenticated failures are counted, not each written.** Requests
//!   refused before anyone is authenticated (bad signature, unknown access
//!   key, oversized or stalled body) cost a stranger nothing to send. The
//!   first in each [`UNAUTHENTICATED_SUMMARY_INTERVAL`] is written in full;
//!   the rest are counted and written as one summary line (count, error
//!   types, source addresses) when the interval is over, or at shutdown.
//!   Every authenticated request is still written, each on its own line.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::datadir::open_private_append;

/// What an operation tells the audit log beyond the request itself: the
/// operation fills it in as it learns which key it acts on, and the
/// dispatcher writes it, whatever the outcome.
#[derive(Debug, Default)]
pub struct AuditNote {
    pub key_arn: Option<String>,
    /// The second key of a two-key operation (ReEncrypt's destination).
    pub destination_key_arn: Option<String>,
    pub encryption_context: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub principal: Option<&'a str>,
    pub source: Option<&'a str>,
    pub operation: &'a str,
    pub key: Option<&'a str>,
    /// The second key of a two-key operation (ReEncrypt's destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<&'a BTreeMap<String, String>>,
    pub outcome: &'static str,
    pub error: Option<&'a str>,
}

/// When the log rotates, and how many old files it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The most one file may hold (a single longer line still gets a file).
    pub max_bytes: u64,
    /// Rotated files kept beside the current one (`audit.log.1` is the
    /// newest); 0 keeps none.
    pub keep: usize,
}

/// Default `--audit-max-size`.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default `--audit-keep`.
pub const DEFAULT_KEEP: usize = 4;
/// The smallest `--audit-max-size` accepted: a few lines.
pub const MIN_MAX_BYTES: u64 = 4096;

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// How often unauthenticated failures are summarised (the first of each
/// interval is written in full).
pub const UNAUTHENTICATED_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Distinct source addresses a summary names; the rest count as "other".
const MAX_SUMMARY_SOURCES: usize = 16;

/// The summary line of unauthenticated failures counted in one interval.
/// It carries a request line's fields too (the last request counted, no
/// principal, no key), so every line of the log has the same core shape.
#[derive(Debug, Serialize)]
struct UnauthenticatedSummary<'a> {
    time: &'a str,
    request_id: &'a str,
    principal: Option<&'a str>,
    source: Option<&'a str>,
    operation: &'static str,
    key: Option<&'a str>,
    /// `"unauthenticated-summary"`.
    outcome: &'static str,
    error: Option<&'a str>,
    summary: &'static str,
    /// The time of the first failure counted.
    since: &'a str,
    count: u64,
    /// By AWS error type.
    errors: &'a BTreeMap<String, u64>,
    /// By source IP address.
    sources: &'a BTreeMap<String, u64>,
}

/// Unauthenticated failures counted since the last line about them.
#[derive(Debug, Default)]
struct Tally {
    /// When the current interval began (its first failure, written in full).
    interval_began: Option<Instant>,
    count: u64,
    since: Option<String>,
    last_request_id: String,
    errors: BTreeMap<String, u64>,
    sources: BTreeMap<String, u64>,
}

impl Tally {
    fn count(&mut self, rec: &AuditRecord<'_>) {
        self.count += 1;
        self.since.get_or_insert_with(|| rec.time.clone());
        self.last_request_id.clear();
        self.last_request_id.push_str(rec.request_id);
        *self
            .errors
            .entry(rec.error.unwrap_or("-").to_string())
            .or_default() += 1;
        let ip = source_ip(rec.source);
        let key = if self.sources.contains_key(&ip) || self.sources.len() < MAX_SUMMARY_SOURCES {
            ip
        } else {
            "other".to_string()
        };
        *self.sources.entry(key).or_default() += 1;
    }

    fn interval_over(&self, now: Instant) -> bool {
        self.interval_began
            .is_none_or(|t| now.duration_since(t) >= UNAUTHENTICATED_SUMMARY_INTERVAL)
    }

    /// The summary line of what was counted, and a fresh tally; `None` if
    /// nothing was.
    fn take_summary(&mut self, time: &str) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        let since = self.since.take().unwrap_or_default();
        let line = serde_json::to_vec(&UnauthenticatedSummary {
            time,
            request_id: &self.last_request_id,
            principal: None,
            source: None,
            operation: "-",
            key: None,
            outcome: "unauthenticated-summary",
            error: None,
            summary: "unauthenticated requests refused",
            since: &since,
            count: self.count,
            errors: &self.errors,
            sources: &self.sources,
        });
        self.count = 0;
        self.errors.clear();
        self.sources.clear();
        line.ok()
    }
}

/// A source's address without its port (`127.0.0.1:5123` → `127.0.0.1`).
fn source_ip(source: Option<&str>) -> String {
    match source {
        Some(s) => s
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| s.to_string()),
        None => "-".to_string(),
    }
}

#[derive(Debug)]
struct Writer {
    path: PathBuf,
    file: File,
    rotation: Rotation,
    unauthenticated: Tally,
}

impl Writer {
    /// Appends one line, rotating first if it would not fit.
    fn append(&mut self, mut line: Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        // The file's own length, not a count of ours: the CLI appends too.
        let len = self.follow_path()?;
        if len > 0 && len + line.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)
    }

    /// Reopens `audit.log` if another process (a CLI command doing the
    /// scheduled key work) rotated it away from under this one, so lines
    /// keep going to the current file, not to `audit.log.1`. Returns the
    /// length of the file lines now go to (from the same `fstat` that
    /// identifies it: one line costs one `fstat` and one `stat`).
    fn follow_path(&mut self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let ours = self.file.metadata()?;
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if current.is_none_or(|m| m.dev() != ours.dev() || m.ino() != ours.ino()) {
            self.file = open_private_append(&self.path)?;
            return Ok(self.file.metadata()?.len());
        }
        Ok(ours.len())
    }

    /// `audit.log` → `audit.log.1` → … → `audit.log.<keep>` (dropped past
    /// that), then a new `audit.log`. Each step is a rename, so a crash
    /// midway loses no line, at worst leaves a gap in the numbering.
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.rotation.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            match std::fs::remove_file(numbered(self.rotation.keep)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for n in (1..self.rotation.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = open_private_append(&self.path)?;
        Ok(())
    }
}

#[derive(Debug)]
pub struct AuditLog {
    writer: Mutex<Writer>,
}

impl AuditLog {
    /// Opens (or creates) the log, rotating with the default bounds.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        Ok(AuditLog {
            writer: Mutex::new(Writer {
                path: path.to_path_buf(),
                file: open_private_append(path)?,
                rotation: Rotation::default(),
                unauthenticated: Tally::default(),
            }),
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes when the log rotates (`--audit-max-size`, `--audit-keep`).
    pub fn set_rotation(&self, rotation: Rotation) {
        self.writer().rotation = rotation;
    }

    /// Appends one record. A failure to audit is reported to the caller,
    /// who decides (the service logs it; it does not hide it).
    pub fn record(&self, rec: &AuditRecord<'_>) -> std::io::Result<()> {
        let line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        self.writer().append(line)
    }

    /// Records a request refused before authentication: in full if it is
    /// the first of its interval (after the previous interval's summary),
    /// otherwise only counted.
    pub fn record_unauthenticated(&self, rec: &AuditRecord<'_>) -> std::io::Result<()> {
        let now = Instant::now();
        let mut w = self.writer();
        if !w.unauthenticated.interval_over(now) {
            w.unauthenticated.count(rec);
            return Ok(());
        }
        // Serialised only now: a flood is nearly all counted, not written,
        // and counting must stay cheap.
        let line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        w.unauthenticated.interval_began = Some(now);
        if let Some(summary) = w.unauthenticated.take_summary(&rec.time) {
            w.append(summary)?;
        }
        w.append(line)
    }

    /// Writes the summary of unauthenticated failures counted so far, if
    /// there are any and their interval is over (or `now_regardless`, at
    /// shutdown). `time` stamps the line.
    pub fn flush_unauthenticated(&self, time: &str, now_regardless: bool) -> std::io::Result<()> {
        let mut w = self.writer();
        let now = Instant::now();
        if !now_regardless && !w.unauthenticated.interval_over(now) {
            return Ok(());
        }
        match w.unauthenticated.take_summary(time) {
            Some(summary) => {
                w.unauthenticated.interval_began = Some(now);
                w.append(summary)
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
