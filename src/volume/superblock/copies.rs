//! The two superblock copies: reading both and picking the newest valid
//! one, the crash-safe update, and creating a volume file.
//!
//! Two copies, at `PRIMARY_OFFSET` (0) and `SECONDARY_OFFSET` (64 KiB), each
//! one [`format`](super::format) copy zero-padded to `COPY_SIZE`.
//!
//! Why two copies with sequence numbers: an update overwrites the copy holding
//! the older sequence first and syncs before touching the other, so at every
//! instant at least one intact copy exists — a crash mid-write (a torn copy)
//! or a single corrupted sector loses at most the update in flight.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use crate::volume::attachment::{AttachMode, lock_attachment};
use crate::volume::backend::{Backend, FileBackend};
use crate::volume::change_map::new_volume_record;
use crate::volume::change_record::CHANGE_MAP_OFFSET;
use crate::volume::superblock::format::{COPY_SIZE, Superblock, SuperblockError};

pub const PRIMARY_OFFSET: u64 = 0;
pub const SECONDARY_OFFSET: u64 = COPY_SIZE as u64;

/// Which copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Primary,
    Secondary,
}

impl Slot {
    pub fn offset(self) -> u64 {
        match self {
            Slot::Primary => PRIMARY_OFFSET,
            Slot::Secondary => SECONDARY_OFFSET,
        }
    }

    fn other(self) -> Slot {
        match self {
            Slot::Primary => Slot::Secondary,
            Slot::Secondary => Slot::Primary,
        }
    }
}

/// `primary copy (offset 0)`: which copy, and where to look at it.
impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Primary => f.write_str("primary copy (offset 0)"),
            Slot::Secondary => f.write_str("secondary copy (offset 64 KiB)"),
        }
    }
}

/// Both copies as read, each decoded on its own.
#[derive(Debug, Clone)]
pub struct SuperblockSet {
    pub primary: Result<Superblock, SuperblockError>,
    pub secondary: Result<Superblock, SuperblockError>,
}

impl SuperblockSet {
    /// The valid copy with the highest sequence (the primary on a tie), or
    /// an error naming why each copy failed.
    pub fn best(&self) -> Result<&Superblock, SuperblockError> {
        self.best_slot().map(|(_, sb)| sb)
    }

    /// Like `best`, also saying which copy it is.
    pub fn best_slot(&self) -> Result<(Slot, &Superblock), SuperblockError> {
        match (&self.primary, &self.secondary) {
            (Ok(p), Ok(s)) if s.sequence > p.sequence => Ok((Slot::Secondary, s)),
            (Ok(p), _) => Ok((Slot::Primary, p)),
            (Err(_), Ok(s)) => Ok((Slot::Secondary, s)),
            (Err(p), Err(s)) => Err(SuperblockError::BothCopiesInvalid {
                primary: Box::new(p.clone()),
                secondary: Box::new(s.clone()),
            }),
        }
    }

    /// The one invalid copy beside a valid one, and why it is invalid:
    /// what [`repair_superblock_to`] rewrites. `None` when both are valid,
    /// or both invalid (nothing to repair from).
    pub fn damaged(&self) -> Option<(Slot, &SuperblockError)> {
        match (&self.primary, &self.secondary) {
            (Err(e), Ok(_)) => Some((Slot::Primary, e)),
            (Ok(_), Err(e)) => Some((Slot::Secondary, e)),
            _ => None,
        }
    }

    /// The copy an update must overwrite first: an invalid one, else the one
    /// with the older sequence; on a tie, alternate by the new sequence's
    /// parity so that wear and the "last written" role move between copies.
    fn first_to_write(&self, new_sequence: u64) -> Slot {
        match (&self.primary, &self.secondary) {
            (Err(_), _) => Slot::Primary,
            (_, Err(_)) => Slot::Secondary,
            (Ok(p), Ok(s)) if p.sequence < s.sequence => Slot::Primary,
            (Ok(p), Ok(s)) if s.sequence < p.sequence => Slot::Secondary,
            _ if new_sequence.is_multiple_of(2) => Slot::Primary,
            _ => Slot::Secondary,
        }
    }

    fn highest_valid_sequence(&self) -> Option<u64> {
        [&self.primary, &self.secondary]
            .into_iter()
            .filter_map(|c| c.as_ref().ok().map(|sb| sb.sequence))
            .max()
    }
}

/// Reads and decodes both copies from a backend. I/O errors become the
/// copies' errors; the caller decides with `best()`.
pub fn read_superblocks_from(backend: &dyn Backend) -> SuperblockSet {
    let read_copy = |slot: Slot| -> Result<Superblock, SuperblockError> {
        let size = backend.size()?;
        let available = size.saturating_sub(slot.offset()).min(COPY_SIZE as u64) as usize;
        if available == 0 {
            return Err(SuperblockError::Truncated);
        }
        let mut buf = vec![0u8; available];
        backend.read_at(slot.offset(), &mut buf)?;
        Superblock::decode(&buf)
    };
    SuperblockSet {
        primary: read_copy(Slot::Primary),
        secondary: read_copy(Slot::Secondary),
    }
}

/// Reads and decodes both copies from a volume file or device.
pub fn read_superblocks(file: &File) -> SuperblockSet {
    match file.try_clone() {
        Ok(dup) => read_superblocks_from(&FileBackend::new(dup)),
        Err(e) => {
            let e = SuperblockError::from(e);
            SuperblockSet {
                primary: Err(e.clone()),
                secondary: Err(e),
            }
        }
    }
}

fn padded(sb: &Superblock) -> Result<Vec<u8>, SuperblockError> {
    let mut bytes = sb.encode()?;
    // Padding overwrites whatever a longer earlier copy left behind.
    bytes.resize(COPY_SIZE, 0);
    Ok(bytes)
}

/// Crash-safe update: bumps `sb.sequence` past every valid copy, writes the
/// copy holding the older (or an invalid) superblock, syncs, then writes the
/// other and syncs. A crash at any point leaves a valid copy: the old one
/// until the first sync, the new one after it.
pub fn write_superblock_to(
    backend: &dyn Backend,
    sb: &mut Superblock,
) -> Result<(), SuperblockError> {
    write_superblock_steps(backend, sb, false)
}

/// Rewrites the invalid copy of `set` (as read from `backend`) from the
/// valid one, through the same crash-safe update as every other change:
/// the invalid copy first, sync, then the valid one, both with the next
/// sequence number. A power loss at any point leaves the valid copy or a
/// newer one. Returns the superblock now on disk, or `None` when there was
/// nothing to repair. The caller must hold the attachment exclusively.
pub fn repair_superblock_to(
    backend: &dyn Backend,
    set: &SuperblockSet,
) -> Result<Option<Superblock>, SuperblockError> {
    if set.damaged().is_none() {
        return Ok(None);
    }
    let mut sb = set.best()?.clone();
    write_superblock_to(backend, &mut sb)?;
    Ok(Some(sb))
}

/// `write_superblock_to` on a volume file or device.
pub fn write_superblock(file: &File, sb: &mut Superblock) -> Result<(), SuperblockError> {
    write_superblock_to(&FileBackend::new(file.try_clone()?), sb)
}

/// The update, optionally stopping after the first copy (a simulated crash).
fn write_superblock_steps(
    backend: &dyn Backend,
    sb: &mut Superblock,
    stop_after_first: bool,
) -> Result<(), SuperblockError> {
    let current = read_superblocks_from(backend);
    let base = current
        .highest_valid_sequence()
        .unwrap_or(0)
        .max(sb.sequence);
    let new_sequence = base
        .checked_add(1)
        .ok_or_else(|| SuperblockError::Invalid("sequence number exhausted".into()))?;
    let mut next = sb.clone();
    next.sequence = new_sequence;
    let bytes = padded(&next)?;
    let first = current.first_to_write(new_sequence);
    backend.write_at(first.offset(), &bytes)?;
    backend.flush()?;
    *sb = next;
    if stop_after_first {
        return Ok(());
    }
    backend.write_at(first.other().offset(), &bytes)?;
    backend.flush()?;
    Ok(())
}

/// Creates a new volume file: refuses an existing path unless `force` (then
/// truncates it, unless it is attached: the file is locked for a read-write
/// attachment before anything is written), mode 0600, both copies written with `sb`'s sequence, the
/// data area left sparse by `set_len`, file and directory entry synced.
pub fn create_volume_file(
    path: &Path,
    sb: &Superblock,
    force: bool,
) -> Result<File, SuperblockError> {
    let bytes = padded(sb)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    if force {
        // Not `truncate` here: an attached volume must be refused before
        // its first byte is lost, so the lock comes before the truncation.
        options.create(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            SuperblockError::Io(Arc::new(io::Error::new(
                e.kind(),
                format!("{} already exists (use force to overwrite)", path.display()),
            )))
        } else {
            e.into()
        }
    })?;
    // Held until the caller drops the file: nobody attaches a half-written
    // volume either.
    lock_attachment(&file, AttachMode::ReadWrite).map_err(io::Error::from)?;
    if force {
        // A block device cannot be truncated (O_TRUNC ignores it too).
        if file.metadata()?.is_file() {
            file.set_len(0)?;
        }
        // An overwritten file keeps its old mode; a volume file is 0600.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(&bytes)?;
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&bytes, SECONDARY_OFFSET)?;
        // A new volume's changes are tracked from its creation.
        file.write_all_at(&new_volume_record(sb), CHANGE_MAP_OFFSET)?;
    }
    file.set_len(sb.required_backend_size())?;
    file.sync_all()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The new directory entry is durable only once the directory is synced.
    File::open(parent)?.sync_all()?;
    Ok(file)
}

#[cfg(test)]
#[path = "copies_tests.rs"]
mod tests;
