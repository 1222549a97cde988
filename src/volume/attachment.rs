//! One writer per volume: the attachment lock on a volume file.
//!
//! A volume attached read-write by two servers is two file systems writing
//! over each other. A file-backed volume is therefore locked for as long as
//! it is attached: exclusively by a writer (`serve`, `up`, `volume rewrap`,
//! `volume create --force`), shared by a read-only attachment, so readers
//! may share a volume with each other but never with a writer.
//!
//! The lock is `flock(2)`, taken without blocking. It belongs to the open
//! file description, not to the process: a `close` of some other descriptor
//! of the same file (which silently drops a process-associated POSIX `fcntl`
//! lock) leaves it alone, and the kernel releases it when the last
//! descriptor goes — on detach, on exit, and at once on `kill -9`. Nothing
//! is written to disk, so there is no stale lock file to clean up after a
//! crash. The lock is advisory: it binds every envol process, not other
//! programs that open the file.
//!
//! Who holds a refused lock is looked up afterwards, best effort, in
//! `/proc/locks` (pid, by the file's device and inode) and
//! `/proc/PID/cmdline` (what that process serves). The lock never depends
//! on that lookup: when it finds nothing, the refusal just says so.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

use rustix::fs::FlockOperation;

/// How a volume is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Read-only: shares the volume with other read-only attachments.
    ReadOnly,
    /// Read-write: the volume is this attachment's alone.
    ReadWrite,
}

impl AttachMode {
    /// `read-only` or `read-write`, as messages and `volume info` say it.
    pub fn describe(self) -> &'static str {
        match self {
            AttachMode::ReadOnly => "read-only",
            AttachMode::ReadWrite => "read-write",
        }
    }
}

/// A process holding a volume's attachment lock, as `/proc/locks` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub mode: AttachMode,
    /// Its command line (one line, shortened), when `/proc` lets us read it.
    pub command: Option<String>,
}

/// Why a volume could not be locked for an attachment.
#[derive(Debug)]
pub enum AttachmentError {
    /// Another attachment conflicts; `holders` is who, as far as `/proc`
    /// tells (possibly nobody found).
    InUse {
        wanted: AttachMode,
        holders: Vec<Holder>,
    },
    /// Another client of a network store (a Ceph RBD image) holds its
    /// exclusive lock; `holders` are their addresses as the store names
    /// them (`127.0.0.1:0/3405213671`).
    InUseByClient {
        wanted: AttachMode,
        image: String,
        holders: Vec<String>,
    },
    /// The lock itself failed (e.g. a file system without `flock`).
    Lock(io::Error),
}

impl fmt::Display for AttachmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachmentError::Lock(e) => write!(f, "cannot lock the volume for attaching: {e}"),
            AttachmentError::InUseByClient {
                wanted,
                image,
                holders,
            } => {
                write!(
                    f,
                    "{image} is already attached read-write by Ceph client {}",
                    holders.join(", ")
                )?;
                f.write_str(match wanted {
                    AttachMode::ReadWrite => {
                        ": a volume has one writer at a time (to fail over from a dead server: serve --take-over)"
                    }
                    AttachMode::ReadOnly => {
                        ": a read-only attachment cannot share it with a writer"
                    }
                })
            }
            AttachmentError::InUse { wanted, holders } => {
                if holders.is_empty() {
                    f.write_str("already attached by another process (not found in /proc/locks)")?;
                } else {
                    let mode = if holders.iter().any(|h| h.mode == AttachMode::ReadWrite) {
                        AttachMode::ReadWrite
                    } else {
                        AttachMode::ReadOnly
                    };
                    write!(f, "already attached {} by ", mode.describe())?;
                    for (i, h) in holders.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "pid {}", h.pid)?;
                        if let Some(command) = &h.command {
                            write!(f, " ({command})")?;
                        }
                    }
                }
                f.write_str(match wanted {
                    AttachMode::ReadWrite => {
                        ": a volume has one writer at a time, and no readers beside it"
                    }
                    AttachMode::ReadOnly => {
                        ": a read-only attachment cannot share it with a writer"
                    }
                })
            }
        }
    }
}

impl std::error::Error for AttachmentError {}

impl From<AttachmentError> for io::Error {
    fn from(e: AttachmentError) -> io::Error {
        let kind = match &e {
            AttachmentError::InUse { .. } | AttachmentError::InUseByClient { .. } => {
                io::ErrorKind::ResourceBusy
            }
            AttachmentError::Lock(inner) => inner.kind(),
        };
        io::Error::new(kind, e.to_string())
    }
}

/// Locks `file` for an attachment in `mode`, without waiting. The lock lasts
/// as long as `file`'s open file description: until it (and every `dup` or
/// `try_clone` of it) is closed, or the process dies.
pub fn lock_attachment(file: &File, mode: AttachMode) -> Result<(), AttachmentError> {
    let operation = match mode {
        AttachMode::ReadOnly => FlockOperation::NonBlockingLockShared,
        AttachMode::ReadWrite => FlockOperation::NonBlockingLockExclusive,
    };
    let attempt = || loop {
        match rustix::fs::flock(file, operation) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other,
        }
    };
    match attempt() {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holders = holders(file);
            // The holder may have let go between the refusal and the lookup
            // (it was exiting): one more try before blaming nobody.
            if holders.is_empty() && attempt().is_ok() {
                return Ok(());
            }
            Err(AttachmentError::InUse {
                wanted: mode,
                holders,
            })
        }
        Err(e) => Err(AttachmentError::Lock(e.into())),
    }
}

/// How often [`holders`] reads /proc/locks before it concludes nobody
/// holds the file.
const LOCKS_READS: usize = 3;

/// Who holds an attachment lock on `file`, best effort: the `flock` entries
/// of `/proc/locks` for its device and inode. Empty when `/proc` is missing or says nothing.
pub fn holders(file: &File) -> Vec<Holder> {
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    let dev = (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev()));
    // The kernel renders /proc/locks a page per read(): when other locks
    // come and go between two reads, a line can be skipped. A holder that
    // is there is found again on a later read.
    let mut entries: Vec<LockEntry> = Vec::new();
    for _ in 0..LOCKS_READS {
        let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
            return Vec::new();
        };
        entries = locks.lines().filter_map(parse_lock_line).collect();
        if entries.iter().any(|e| e.inode == meta.ino()) {
            break;
        }
    }
    let on_inode = |same_dev: bool| {
        entries
            .iter()
            .filter(|e| e.inode == meta.ino() && (!same_dev || e.dev == dev))
            .collect::<Vec<_>>()
    };
    // Some file systems (overlayfs, btrfs subvolumes) show a different
    // device in /proc/locks than stat does: fall back to the inode alone.
    let mut found = on_inode(true);
    if found.is_empty() {
        found = on_inode(false);
    }
    let mut out: Vec<Holder> = Vec::new();
    for e in found {
        // This process may be named too: one `serve` given the same file
        // twice holds it through one descriptor and is refused through the
        // other.
        if out.iter().any(|h| h.pid == e.pid) {
            continue;
        }
        out.push(Holder {
            pid: e.pid,
            mode: e.mode,
            command: command_line(e.pid),
        });
    }
    out
}

/// One granted `FLOCK` line of `/proc/locks`.
#[derive(Debug, PartialEq, Eq)]
struct LockEntry {
    pid: u32,
    mode: AttachMode,
    dev: (u32, u32),
    inode: u64,
}

/// `1: FLOCK  ADVISORY  WRITE 2618 fe:00:10010703 0 EOF`; waiters (`1: ->
/// FLOCK …`), POSIX and OFD locks are not ours and are skipped.
fn parse_lock_line(line: &str) -> Option<LockEntry> {
    let mut fields = line.split_whitespace().skip(1);
    if fields.next()? != "FLOCK" {
        return None;
    }
    fields.next()?; // ADVISORY / MANDATORY
    let mode = match fields.next()? {
        "WRITE" => AttachMode::ReadWrite,
        "READ" => AttachMode::ReadOnly,
        _ => return None,
    };
    let pid: u32 = fields.next()?.parse().ok()?;
    let mut id = fields.next()?.split(':');
    let major = u32::from_str_radix(id.next()?, 16).ok()?;
    let minor = u32::from_str_radix(id.next()?, 16).ok()?;
    let inode: u64 = id.next()?.parse().ok()?;
    Some(LockEntry {
        pid,
        mode,
        dev: (major, minor),
        inode,
    })
}

/// Longest command line quoted in a refusal.
const COMMAND_MAX: usize = 160;

/// `/proc/PID/cmdline` as one printable line, shortened.
fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| {
            String::from_utf8_lossy(w)
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        })
        .collect();
    if words.is_empty() {
        return None;
    }
    let line = words.join(" ");
    Some(if line.chars().count() > COMMAND_MAX {
        let short: String = line.chars().take(COMMAND_MAX).collect();
        format!("{short}…")
    } else {
        line
    })
}

#[cfg(test)]
#[path = "attachment_tests.rs"]
mod tests;
