//! How much each key was used, counted from the audit log: the last
//! cryptographic operation that named it, and how many there were in the
//! last 30 days (`envol key list`).
//!
//! AWS KMS itself has no API for this — usage is what CloudTrail, a reader
//! of the log, reports — so it is read where the log is, in the data
//! directory, not asked of the server.
//!
//! The log can hold up to `(keep + 1) × max size` (320 MiB by default), so
//! it is not read again on every query. A small index beside it,
//! `audit-usage.json` (0600), keeps per file what has been counted: per key
//! its last use and its uses per UTC day, and how far the file was read.
//! Rotated files never change again (rotation is a rename: the same inode)
//! and the current one only grows, so a query reads only the lines written
//! since the last one. A file is recognised by device, inode and a hash of
//! its first line, so a reused inode is not mistaken for a file already
//! counted. The index is a cache: if it is unreadable it is rebuilt.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::datadir::{AUDIT_FILE, DataDir};

/// The index beside the audit log.
pub const USAGE_INDEX_FILE: &str = "audit-usage.json";

/// The window `uses` counts: today (UTC) and the 29 days before it.
pub const USAGE_WINDOW_DAYS: i64 = 30;

const DAY_MS: i64 = 86_400_000;

/// What counts as a use of a key: the operations that encrypt or decrypt
/// with it (what AWS bills per request), when they succeeded. ReEncrypt
/// uses both its source and its destination key.
const CRYPTOGRAPHIC_OPERATIONS: &[&str] = &[
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
];

/// The index's format version; another is rebuilt from the log.
const INDEX_VERSION: u32 = 1;

/// How many leading bytes of a file identify it (its first line's start:
/// a time stamp and a request id, unique per line).
const HEAD_BYTES: usize = 256;

/// One key's use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// When a cryptographic operation last named the key (Unix ms).
    pub last_used_ms: Option<i64>,
    /// Cryptographic operations that named it in the window.
    pub uses_in_window: u64,
}

/// Usage of every key the log names, by key ARN.
#[derive(Debug, Clone, Default)]
pub struct UsageReport {
    pub keys: BTreeMap<String, KeyUsage>,
    /// The time of the oldest line the log still holds (Unix ms): counts
    /// start there if that is inside the window (older files were rotated
    /// away). `None`: the log is empty.
    pub log_starts_ms: Option<i64>,
}

impl UsageReport {
    pub fn of(&self, key_arn: &str) -> KeyUsage {
        self.keys.get(key_arn).copied().unwrap_or_default()
    }
}

/// Why the log could not be read. One line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot read the audit log {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no audit log (is it a KMS data directory?)")]
    NoLog(PathBuf),
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct KeyTally {
    last_ms: i64,
    /// Uses per UTC day (days since the epoch).
    days: BTreeMap<i64, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileTally {
    dev: u64,
    ino: u64,
    /// SHA-256 (hex) of the file's first bytes.
    head: String,
    /// Bytes counted: always the end of a complete line.
    counted: u64,
    first_line_ms: Option<i64>,
    keys: BTreeMap<String, KeyTally>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    files: Vec<FileTally>,
}

/// The fields of an audit line that usage needs.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    destination_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    outcome: Option<Cow<'a, str>>,
}

fn parse_time_ms(time: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Reads the usage of every key from the audit log of `data` as of
/// `now_ms`, updating the index beside it. A failure to write the index
/// is logged (the answer is still right; the next query reads more).
pub fn key_usage(data: &DataDir, now_ms: i64) -> Result<UsageReport, UsageError> {
    let files = log_files(&data.root)?;
    if files.is_empty() {
        return Err(UsageError::NoLog(data.root.clone()));
    }
    let index_path = data.root.join(USAGE_INDEX_FILE);
    let old = read_index(&index_path);
    let mut tallies = Vec::with_capacity(files.len());
    for path in &files {
        let read_err = |source| UsageError::Read {
            path: path.clone(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            // Rotated away between the listing and now: its lines are in
            // the next file's place, counted when it is reached.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(e)),
        };
        tallies.push(count_file(file, &old).map_err(read_err)?);
    }
    let oldest_day = now_ms.div_euclid(DAY_MS) - USAGE_WINDOW_DAYS;
    for t in &mut tallies {
        for k in t.keys.values_mut() {
            k.days.retain(|day, _| *day > oldest_day);
        }
    }
    let report = report(&tallies, now_ms);
    let index = Index {
        version: INDEX_VERSION,
        files: tallies,
    };
    if let Err(e) = write_index(&index_path, &index) {
        tracing::warn!(
            "cannot update the usage index {}: {e} (the next query reads the whole audit log again)",
            index_path.display()
        );
    }
    Ok(report)
}

/// `audit.log.N … audit.log.1, audit.log`: oldest first.
fn log_files(dir: &Path) -> Result<Vec<PathBuf>, UsageError> {
    let entries = fs::read_dir(dir).map_err(|source| UsageError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut numbered = Vec::new();
    let mut current = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == AUDIT_FILE {
            current = Some(entry.path());
        } else if let Some(n) = name
            .strip_prefix(AUDIT_FILE)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u32>().ok())
        {
            numbered.push((n, entry.path()));
        }
    }
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    files.extend(current);
    Ok(files)
}

fn read_index(path: &Path) -> Index {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Index::default(),
        Err(e) => {
            tracing::warn!(
                "cannot read the usage index {}: {e}; counting from the audit log",
                path.display()
            );
            return Index::default();
        }
    };
    match serde_json::from_slice::<Index>(&text) {
        Ok(index) if index.version == INDEX_VERSION => index,
        _ => {
            tracing::warn!(
                "the usage index {} is not one this envol wrote; counting from the audit log",
                path.display()
            );
            Index::default()
        }
    }
}

/// Written whole to a new file, then renamed over the old one: a reader
/// never sees half an index.
fn write_index(path: &Path, index: &Index) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_vec(index).map_err(std::io::Error::other)?;
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn head_hash(file: &mut File) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(HEAD_BYTES);
    Read::by_ref(file)
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)?;
    // Only the first line: a file shorter than HEAD_BYTES grows, and must
    // still be recognised.
    let first_line = match head.iter().position(|b| *b == b'\n') {
        Some(end) => &head[..end],
        None => &head[..0],
    };
    Ok(hex::encode(Sha256::digest(first_line)))
}

/// Counts one file, from where the index left it if it knows the file.
fn count_file(mut file: File, old: &Index) -> std::io::Result<FileTally> {
    let meta = file.metadata()?;
    let head = head_hash(&mut file)?;
    let known = old.files.iter().find(|t| {
        t.dev == meta.dev() && t.ino == meta.ino() && t.head == head && t.counted <= meta.len()
    });
    let mut tally = match known {
        Some(t) => t.clone(),
        None => FileTally {
            dev: meta.dev(),
            ino: meta.ino(),
            head,
            counted: 0,
            first_line_ms: None,
            keys: BTreeMap::new(),
        },
    };
    file.seek(SeekFrom::Start(tally.counted))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        // A line still being written (no newline yet) is counted next time.
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        tally.counted += n as u64;
        count_line(&mut tally, &line);
    }
    Ok(tally)
}

fn count_line(tally: &mut FileTally, line: &[u8]) {
    // A line that is not an audit record (none should be) counts as nothing.
    let Ok(rec) = serde_json::from_slice::<Line<'_>>(line) else {
        return;
    };
    let Some(ms) = rec.time.as_deref().and_then(parse_time_ms) else {
        return;
    };
    tally.first_line_ms.get_or_insert(ms);
    let is_use = rec.outcome.as_deref() == Some("success")
        && rec
            .operation
            .as_deref()
            .is_some_and(|op| CRYPTOGRAPHIC_OPERATIONS.contains(&op));
    if !is_use {
        return;
    }
    for key in [rec.key.as_deref(), rec.destination_key.as_deref()]
        .into_iter()
        .flatten()
    {
        let k = tally.keys.entry(key.to_string()).or_default();
        k.last_ms = k.last_ms.max(ms);
        *k.days.entry(ms.div_euclid(DAY_MS)).or_default() += 1;
    }
}

fn report(tallies: &[FileTally], now_ms: i64) -> UsageReport {
    let today = now_ms.div_euclid(DAY_MS);
    let mut out = UsageReport {
        keys: BTreeMap::new(),
        log_starts_ms: tallies.iter().filter_map(|t| t.first_line_ms).min(),
    };
    for t in tallies {
        for (arn, k) in &t.keys {
            let usage = out.keys.entry(arn.clone()).or_default();
            usage.last_used_ms = usage.last_used_ms.max(Some(k.last_ms));
            usage.uses_in_window += k
                .days
                .range(today - USAGE_WINDOW_DAYS + 1..=today)
                .map(|(_, n)| n)
                .sum::<u64>();
        }
    }
    out
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
