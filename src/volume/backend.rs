//! Storage backends: where a volume's bytes (superblock and ciphertext) live.
//!
//! The trait is deliberately small — positional read and write, flush, punch,
//! size, an allocation query, and the attachment lock — so a file, a block device, or later a
//! remote store fits behind it. Every method takes `&self` and no backend
//! holds a lock across I/O: the volume above runs many requests at once and
//! does its own (range) locking where it needs it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FallocateFlags, SeekFrom};

use crate::volume::attachment::{self, AttachMode, AttachmentError};

/// A byte range of the backend and whether it is a hole (reads as zeros
/// without occupying storage) or data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub hole: bool,
}

/// A byte buffer whose ownership travels with a started operation
/// ([`Backend::start_read`], [`Backend::start_write`]) and comes back with
/// its outcome: an asynchronous store (librbd) reads into or writes from it
/// after the call has returned, so it cannot be a borrowed slice.
pub trait IoBuffer: Send + 'static {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl IoBuffer for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// An owned buffer of a started operation.
pub type IoBuf = Box<dyn IoBuffer>;

/// Receives a started read's or write's buffer back with its outcome,
/// exactly once, on any thread — for an asynchronous backend, one of its
/// callback threads, so it must not block there.
pub type IoDone = Box<dyn FnOnce(IoBuf, io::Result<()>) + Send + 'static>;

/// Receives a started flush's outcome, exactly once, on any thread.
pub type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// Extents built in order, as a backend's `extents` finds them: empty
/// ranges are skipped and a range that continues the last one with the
/// same kind extends it.
#[derive(Debug, Default)]
pub(crate) struct ExtentList(Vec<Extent>);

impl ExtentList {
    /// Appends `[offset, end)`, a hole or data.
    pub(crate) fn push(&mut self, offset: u64, end: u64, hole: bool) {
        if end <= offset {
            return;
        }
        match self.0.last_mut() {
            Some(last) if last.hole == hole && last.offset + last.len == offset => {
                last.len += end - offset
            }
            _ => self.0.push(Extent {
                offset,
                len: end - offset,
                hole,
            }),
        }
    }

    pub(crate) fn into_vec(self) -> Vec<Extent> {
        self.0
    }
}

/// A fixed-size, byte-addressed store.
pub trait Backend: Send + Sync + 'static {
    /// Whether [`start_read`](Self::start_read),
    /// [`start_write`](Self::start_write) and
    /// [`start_flush`](Self::start_flush) return at once and complete
    /// later (a network store with its own queue, where a request takes
    /// milliseconds and many must be in flight). `false` (the default):
    /// they run the blocking call on the caller's thread.
    fn is_asynchronous(&self) -> bool {
        false
    }
    /// Starts reading `buf.bytes().len()` bytes at `offset` into `buf`;
    /// `done` gets the buffer back with the outcome.
    fn start_read(&self, offset: u64, mut buf: IoBuf, done: IoDone) {
        let result = self.read_at(offset, buf.bytes_mut());
        done(buf, result)
    }
    /// Starts writing all of `data` at `offset`; `done` gets the buffer
    /// back with the outcome.
    fn start_write(&self, offset: u64, data: IoBuf, done: IoDone) {
        let result = self.write_at(offset, data.bytes());
        done(data, result)
    }
    /// Starts a flush of every write completed before the call.
    fn start_flush(&self, done: FlushDone) {
        done(self.flush())
    }
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Like [`read_at`](Self::read_at), but only if every byte is already
    /// in memory (the page cache): `Ok(false)` when the read would have to
    /// wait for storage, leaving `buf` unspecified. The default never knows,
    /// so it always says `false`; callers then do a blocking `read_at`
    /// where blocking is fine.
    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let _ = (offset, buf);
        Ok(false)
    }
    /// Write all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every completed write durable (fdatasync for a file).
    fn flush(&self) -> io::Result<()>;
    /// Deallocate `[offset, offset+len)`; it reads back as zeros afterwards.
    /// A backend that cannot deallocate writes zeros instead.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Makes the store at least `len` bytes long; the new bytes read as
    /// zeros (holes where the store has them). Never shrinks. Not durable
    /// until [`flush`](Self::flush). The default grows nothing: enough when
    /// the store is already that large, `Unsupported` otherwise.
    fn grow_to(&self, len: u64) -> io::Result<()> {
        let size = self.size()?;
        if size >= len {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("this store is {size} bytes and cannot grow to {len}"),
        ))
    }
    /// The data and hole extents covering `[offset, offset+len)`, in order,
    /// clipped to that range. The default knows no holes: one data extent.
    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(if len == 0 {
            Vec::new()
        } else {
            vec![Extent {
                offset,
                len,
                hole: false,
            }]
        })
    }
    /// Claims the store for an attachment in `mode`, for as long as this
    /// backend lives: one read-write attachment, or any number of
    /// read-only ones, never both. Refused at once (never waits) with the
    /// holder named where the store can tell. Every backend decides how: a
    /// file takes an `flock` ([`attachment`](crate::volume::attachment)); a
    /// network store would take its own exclusive lock.
    fn lock_attachment(&self, mode: AttachMode) -> Result<(), AttachmentError>;
    /// Takes a snapshot of the whole store named `name`, consistent with
    /// every write completed before the call (a Ceph RBD snapshot); for a
    /// snapshot of an attached volume. Stores without snapshots say
    /// `Unsupported` (the default).
    fn create_store_snapshot(&self, name: &str) -> io::Result<()> {
        let _ = name;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this store has no snapshots of its own",
        ))
    }
    /// Removes the store snapshot `name`; one that is not there is not an
    /// error.
    fn remove_store_snapshot(&self, name: &str) -> io::Result<()> {
        let _ = name;
        Ok(())
    }
    /// The names of the store's own snapshots (none by default).
    fn store_snapshots(&self) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Whether all of `[offset, offset+len)` is a hole.
    fn is_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        Ok(self.extents(offset, len)?.iter().all(|e| e.hole))
    }
    /// While a lazy restore still fills this store (`hydrating_backend.rs`):
    /// its chunks fetched and in all. `None` for every other store: what
    /// must not start on a volume some of whose chunks are still to come
    /// under its current key (a re-encryption) asks here.
    fn restore_progress(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Zero bytes written at a time when a range must be zero-filled: large
/// enough to be efficient, small enough not to allocate the range.
const ZERO_CHUNK: usize = 1 << 20;

/// Writes zeros over `[offset, offset+len)` through `write` in bounded chunks.
pub(crate) fn write_zero_range(
    mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let zeros = vec![0u8; usize::try_from(len).map_or(ZERO_CHUNK, |l| l.min(ZERO_CHUNK))];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(zeros.len(), |r| r.min(zeros.len()));
        write(offset + done, &zeros[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// A regular file or block device, accessed with `pread`/`pwrite` so that
/// concurrent requests never share (or fight over) a file position.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    /// Cleared once the kernel or filesystem turns `RWF_NOWAIT` down, so
    /// `try_read_at` stops asking.
    nowait: AtomicBool,
}

impl FileBackend {
    pub fn new(file: File) -> Self {
        FileBackend {
            file,
            nowait: AtomicBool::new(true),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn into_file(self) -> File {
        self.file
    }

    /// `lseek(SEEK_DATA)` from `from`: `None` when there is no data at or
    /// after it (ENXIO). The returned position is the only state used, so the
    /// file position it moves is irrelevant to positional I/O.
    fn next_data(&self, from: u64) -> io::Result<Option<u64>> {
        match rustix::fs::seek(&self.file, SeekFrom::Data(from)) {
            Ok(pos) => Ok(Some(pos)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn next_hole(&self, from: u64) -> io::Result<u64> {
        Ok(rustix::fs::seek(&self.file, SeekFrom::Hole(from))?)
    }
}

impl Backend for FileBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// `preadv2(RWF_NOWAIT)`: the kernel copies what the page cache holds
    /// and answers EAGAIN (or a short count) instead of starting I/O.
    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if !self.nowait.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let want = buf.len();
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        loop {
            let mut slices = [io::IoSliceMut::new(buf)];
            return match rustix::io::preadv2(&self.file, &mut slices, offset, flags) {
                // Short: partly cached, or the end of the file; the blocking
                // read sorts out which.
                Ok(n) => Ok(n == want),
                Err(rustix::io::Errno::AGAIN) => Ok(false),
                Err(rustix::io::Errno::INTR) => continue,
                // Kernels before 4.14, or files that cannot do NOWAIT.
                Err(
                    rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::NOSYS,
                ) => {
                    self.nowait.store(false, Ordering::Relaxed);
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            };
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// `flock` on this backend's open file description: released when the
    /// backend (and every clone of its descriptor) is dropped, or the
    /// process dies.
    fn lock_attachment(&self, mode: AttachMode) -> Result<(), AttachmentError> {
        attachment::lock_attachment(&self.file, mode)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // KEEP_SIZE: punching the tail must not shrink the volume file.
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) => Ok(()),
            // tmpfs before 3.5, some FUSE and network filesystems: no holes,
            // but zeros are just as correct, only not sparse.
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
                write_zero_range(|o, z| self.file.write_all_at(z, o), offset, len)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn size(&self) -> io::Result<u64> {
        let meta = self.file.metadata()?;
        if meta.is_file() {
            Ok(meta.len())
        } else {
            // A block device reports length 0 in its metadata; its end does not lie.
            Ok(rustix::fs::seek(&self.file, SeekFrom::End(0))?)
        }
    }

    /// A regular file grows by `set_len` (a hole, no data written); a
    /// block device cannot be grown from here: its owner grows it (LVM,
    /// the cloud's disk), then the volume takes the space.
    fn grow_to(&self, len: u64) -> io::Result<()> {
        let size = self.size()?;
        if size >= len {
            return Ok(());
        }
        if self.file.metadata()?.is_file() {
            return self.file.set_len(len);
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the block device is {size} bytes and the volume needs {len}: grow the device first"
            ),
        ))
    }

    fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(len);
        let mut out = ExtentList::default();
        let mut push = |offset: u64, end: u64, hole: bool| out.push(offset, end, hole);
        let mut pos = offset;
        while pos < end {
            let data = match self.next_data(pos) {
                Ok(d) => d,
                // Filesystems without SEEK_DATA: everything is data.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    push(pos, end, false);
                    break;
                }
                Err(e) => return Err(e),
            };
            match data {
                None => {
                    push(pos, end, true);
                    break;
                }
                Some(data_start) => {
                    let data_start = data_start.max(pos);
                    push(pos, data_start.min(end), true);
                    if data_start >= end {
                        break;
                    }
                    let hole_start = self.next_hole(data_start)?.min(end);
                    push(data_start, hole_start, false);
                    pos = hole_start;
                }
            }
        }
        Ok(out.into_vec())
    }
}

/// An in-memory backend for tests: a growable-once byte vector whose holes
/// are simply zeros (it reports no holes).
#[derive(Debug)]
pub struct MemBackend {
    bytes: RwLock<Vec<u8>>,
}

impl MemBackend {
    pub fn new(size: usize) -> Self {
        MemBackend {
            bytes: RwLock::new(vec![0; size]),
        }
    }

    /// A copy of everything stored, for inspecting ciphertext at rest.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().map(|b| b.clone()).unwrap_or_default()
    }

    fn range(len_total: usize, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        if end > len_total {
            return Err(out_of_range());
        }
        Ok(start..end)
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "beyond the end of the backend",
    )
}

fn poisoned() -> io::Error {
    io::Error::other("memory backend lock poisoned")
}

impl Backend for MemBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = self.bytes.read().map_err(|_| poisoned())?;
        let r = Self::range(bytes.len(), offset, buf.len())?;
        buf.copy_from_slice(&bytes[r]);
        Ok(())
    }

    /// Memory never waits.
    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        self.read_at(offset, buf).map(|()| true)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut bytes = self.bytes.write().map_err(|_| poisoned())?;
        let r = Self::range(bytes.len(), offset, data.len())?;
        bytes[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Memory belongs to this process alone: no other attachment can reach it.
    fn lock_attachment(&self, _mode: AttachMode) -> Result<(), AttachmentError> {
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        let mut bytes = self.bytes.write().map_err(|_| poisoned())?;
        let r = Self::range(bytes.len(), offset, len)?;
        bytes[r].fill(0);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes.read().map_err(|_| poisoned())?.len() as u64)
    }

    fn grow_to(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        let mut bytes = self.bytes.write().map_err(|_| poisoned())?;
        if bytes.len() < len {
            bytes.resize(len, 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn sparse_file(len: u64) -> (tempfile::TempDir, FileBackend) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("backend"))
            .unwrap();
        file.set_len(len).unwrap();
        (dir, FileBackend::new(file))
    }

    #[test]
    fn file_backend_reads_writes_and_punches() {
        let (_dir, b) = sparse_file(4 << 20);
        assert_eq!(b.size().unwrap(), 4 << 20);
        let data = vec![0xa5u8; 1 << 20];
        b.write_at(1 << 20, &data).unwrap();
        b.flush().unwrap();
        let mut back = vec![0u8; 1 << 20];
        b.read_at(1 << 20, &mut back).unwrap();
        assert_eq!(back, data);
        let blocks_before = b.file().metadata().unwrap().blocks();
        b.punch_hole(1 << 20, 1 << 20).unwrap();
        b.read_at(1 << 20, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0));
        assert!(b.file().metadata().unwrap().blocks() < blocks_before);
        assert_eq!(b.size().unwrap(), 4 << 20, "KEEP_SIZE");
    }

    #[test]
    fn file_try_read_serves_the_page_cache_only() {
        let (_dir, b) = sparse_file(1 << 20);
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        b.write_at(4096, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        // Just written: in the page cache, unless this kernel or file
        // system cannot do RWF_NOWAIT at all (then it never says yes).
        if !b.try_read_at(4096, &mut back).unwrap() {
            assert!(
                !b.nowait.load(Ordering::Relaxed),
                "a refused try must come from missing RWF_NOWAIT support"
            );
            return;
        }
        assert_eq!(back, data);
        // Written back and dropped from the cache: the try must decline
        // instead of waiting for the disk, and the blocking read still works.
        // POSIX_FADV_DONTNEED is advice: a page still under writeback or
        // locked by the kernel at that instant stays cached (seen on a busy
        // CI machine), so ask again, a bounded number of times, until the
        // pages are gone.
        let mut declined = false;
        for _ in 0..100 {
            b.flush().unwrap();
            rustix::fs::fadvise(b.file(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
            back.fill(0);
            if !b.try_read_at(4096, &mut back).unwrap() {
                declined = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            declined,
            "a read of pages dropped from the cache was served"
        );
        b.read_at(4096, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn file_backend_reports_holes_and_data() {
        let (_dir, b) = sparse_file(8 << 20);
        assert!(b.is_hole(0, 8 << 20).unwrap());
        b.write_at(2 << 20, &vec![1u8; 1 << 20]).unwrap();
        assert!(b.is_hole(0, 2 << 20).unwrap());
        assert!(!b.is_hole(2 << 20, 4096).unwrap());
        assert!(!b.is_hole(0, 4 << 20).unwrap());
        assert!(b.is_hole(3 << 20, 5 << 20).unwrap());
        let ext = b.extents(1 << 20, 3 << 20).unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    offset: 1 << 20,
                    len: 1 << 20,
                    hole: true
                },
                Extent {
                    offset: 2 << 20,
                    len: 1 << 20,
                    hole: false
                },
                Extent {
                    offset: 3 << 20,
                    len: 1 << 20,
                    hole: true
                },
            ]
        );
        // Extents tile the asked range exactly.
        let ext = b.extents(12345, 5_000_000).unwrap();
        assert_eq!(ext.first().unwrap().offset, 12345);
        let total: u64 = ext.iter().map(|e| e.len).sum();
        assert_eq!(total, 5_000_000);
    }

    #[test]
    fn mem_backend_bounds() {
        let b = MemBackend::new(100);
        b.write_at(90, &[1; 10]).unwrap();
        assert!(b.write_at(91, &[1; 10]).is_err());
        assert!(b.read_at(u64::MAX, &mut [0; 1]).is_err());
        b.punch_hole(95, 5).unwrap();
        let mut buf = [9u8; 10];
        b.read_at(90, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn zero_range_writes_in_chunks() {
        let b = MemBackend::new(3 * ZERO_CHUNK + 10);
        b.write_at(0, &vec![7u8; 3 * ZERO_CHUNK + 10]).unwrap();
        write_zero_range(|o, z| b.write_at(o, z), 5, 3 * ZERO_CHUNK as u64).unwrap();
        let snap = b.snapshot();
        assert!(snap[..5].iter().all(|&x| x == 7));
        assert!(snap[5..5 + 3 * ZERO_CHUNK].iter().all(|&x| x == 0));
        assert!(snap[5 + 3 * ZERO_CHUNK..].iter().all(|&x| x == 7));
    }
}
