//! What each transmission command means, whatever carries the bytes:
//! checking a request against the export, performing it on the device and
//! encoding its reply. Both transmission loops — the async one
//! (`async_loop.rs`, for TLS and in-memory streams) and the threaded one
//! for plain sockets (`threaded_loop.rs`) — call only this to touch the device.
//!
//! A request reaches the device one of two ways: [`CommandContext::execute`]
//! (and its inline variant) makes the blocking call and returns the reply;
//! [`CommandContext::start`], for READ, WRITE and FLUSH on an asynchronous
//! device, starts the operation and returns at once, and the device's
//! completion — on whatever thread the device completes on — encodes the
//! reply and hands it to the loop's `send`, exactly once.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::export_stats::ExportStats;
use super::handshake::{BASE_ALLOCATION_ID, Negotiated};
use super::protocol::{self as p, Command, Request};
use super::served_export::ServedExport;
use super::workers::{BufferPool, PooledBuf, Shared};
use crate::volume::{Allocation, BlockDevice, BlockSizes, CpuExecutor, IoBuf};

/// Most descriptors one BLOCK_STATUS reply carries (the spec suggests at
/// most 2^20; fewer keeps each reply, and what a flood of them can buffer,
/// small: 128 KiB). A client asks again for the rest, as it must anyway.
pub(crate) const MAX_STATUS_DESCRIPTORS: usize = 1 << 14;

/// Largest WRITE a connection's own thread performs itself (see
/// [`CommandContext::try_execute_inline`]). Small writes cost less than
/// waking a worker; large ones are better off on a worker, where their
/// encryption and page-cache copy overlap with the reader taking in the
/// next payload (measured: 1 MiB writes inline ran ~20 % slower).
pub(crate) const INLINE_WRITE_MAX: u32 = 64 * 1024;

/// Started READs up to this size are decrypted on the device's completion
/// thread, larger ones on the server's workers (`read_cpu`). A 4 KiB
/// decryption takes about a microsecond, far less than waking a worker
/// for it (measured with the reply sent from the same thread, 4 KiB QD32
/// random reads on an RBD volume: 3.5 → 1.8 context switches per request,
/// server CPU per GiB 18.1–19.1 → 14.0–15.8 s); a 1 MiB one holds up every
/// other completion of the store for a quarter of a millisecond, which is
/// why large reads go to the workers.
pub(crate) const COMPLETION_DECRYPT_MAX: u32 = 64 * 1024;

/// A request's encoded reply: the header (simple reply, structured chunk
/// header or whole structured reply) and, for READ, the data that follows.
pub(crate) type Reply = (Vec<u8>, Option<ReplyData>);

/// A READ reply's data: a buffer of the server's pool that a blocking read
/// filled, or the buffer a started read came back with (one of the pool's
/// too, boxed for its trip through the device).
pub(crate) enum ReplyData {
    Pooled(PooledBuf),
    Started(IoBuf),
}

impl ReplyData {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Pooled(buf) => buf.as_slice(),
            Self::Started(buf) => buf.bytes(),
        }
    }
}

/// The reply to a request that succeeded without data.
fn ok_reply(cookie: u64) -> Reply {
    (p::encode_simple_reply(cookie, 0).to_vec(), None)
}

/// An error reply, counted in the export's errors. With structured replies
/// negotiated we must not use a simple reply for READ and should prefer
/// structured errors anyway, since they carry a message for the user.
fn error_frame(
    stats: &ExportStats,
    structured: bool,
    cookie: u64,
    errno: u32,
    message: &str,
) -> Vec<u8> {
    stats.failed(errno);
    if structured {
        p::encode_structured_error(cookie, errno, message)
    } else {
        p::encode_simple_reply(cookie, errno).to_vec()
    }
}

/// The reply for a device error.
fn failure_reply(stats: &ExportStats, structured: bool, r: &Request, e: &io::Error) -> Reply {
    let errno = errno_of(e);
    tracing::debug!(cookie = r.cookie, kind = r.kind, errno, error = %e, "nbd request failed");
    (
        error_frame(stats, structured, r.cookie, errno, &e.to_string()),
        None,
    )
}

/// The reply carrying a READ's data.
fn read_reply(structured: bool, r: &Request, data: ReplyData) -> Reply {
    match (structured, data.as_slice().is_empty()) {
        // An OFFSET_DATA chunk must carry at least one byte.
        (true, true) => (p::encode_structured_none(r.cookie).to_vec(), None),
        (true, false) => (
            p::encode_offset_data_header(r.cookie, r.offset, r.length),
            Some(data),
        ),
        (false, _) => (p::encode_simple_reply(r.cookie, 0).to_vec(), Some(data)),
    }
}

/// A started request's way back to its client. It answers exactly once:
/// with the device's outcome when the completion runs, or — should the
/// completion be dropped without running (a device that panicked while
/// starting, or lost the request) — with EIO, so the client never waits for
/// ever on a cookie.
struct Answer<F: FnOnce(Reply)> {
    send: Option<F>,
    request: Request,
    structured: bool,
    stats: Arc<ExportStats>,
}

impl<F: FnOnce(Reply)> Answer<F> {
    fn finish(mut self, outcome: io::Result<Reply>) {
        let reply = outcome
            .unwrap_or_else(|e| failure_reply(&self.stats, self.structured, &self.request, &e));
        if let Some(send) = self.send.take() {
            send(reply);
        }
    }
}

impl<F: FnOnce(Reply)> Drop for Answer<F> {
    fn drop(&mut self) {
        if let Some(send) = self.send.take() {
            let r = &self.request;
            tracing::warn!(
                cookie = r.cookie,
                kind = r.kind,
                "device dropped a started nbd request without completing it"
            );
            send((
                error_frame(
                    &self.stats,
                    self.structured,
                    r.cookie,
                    p::EIO,
                    "internal error",
                ),
                None,
            ));
        }
    }
}

/// What a connection knows about its export and the options it negotiated.
pub(crate) struct CommandContext {
    /// The export: its counters, and whether a forced detach evicted it.
    pub(crate) export: Arc<ServedExport>,
    pub(crate) device: Arc<dyn BlockDevice>,
    pub(crate) size: u64,
    pub(crate) sizes: BlockSizes,
    pub(crate) read_only: bool,
    /// The device zeroes fast when allowed to punch (`NBD_CMD_FLAG_FAST_ZERO`).
    pub(crate) fast_zero: bool,
    pub(crate) structured: bool,
    pub(crate) base_allocation: bool,
    pub(crate) buffers: Arc<BufferPool>,
    /// READ, WRITE and FLUSH are [started](Self::start), not executed.
    pub(crate) asynchronous: bool,
    /// Where a started READ is decrypted: the server's workers
    /// ([`BlockDevice::start_read_on`]).
    pub(crate) read_cpu: Arc<dyn CpuExecutor>,
}

impl CommandContext {
    pub(crate) fn for_negotiated(n: &Negotiated, shared: &Arc<Shared>) -> Self {
        let device = n.export.device.clone();
        let buffers = shared.buffers().clone();
        // Started reads are decrypted on the workers, not on the store's
        // completion thread (librbd has one, shared by every connection: a
        // 1 MiB decryption there delays every other completion while the
        // workers idle). Measured on a one-OSD cluster, fio over NBD, 2
        // rounds: 1 MiB QD16 reads 290–296 MiB/s against 204–220, 4 KiB
        // QD32 random reads 3.8–4.5k IOPS against 2.4–3.4k, about the same
        // server CPU per GiB (docs/design.md).
        let read_cpu: Arc<dyn CpuExecutor> = shared.clone();
        Self {
            export: n.export.clone(),
            read_cpu,
            size: device.size(),
            sizes: device.block_sizes(),
            fast_zero: device.fast_zero(),
            read_only: n.export.is_read_only(),
            structured: n.structured_replies,
            base_allocation: n.base_allocation,
            asynchronous: device.is_asynchronous(),
            device,
            buffers,
        }
    }

    /// An error reply, counted in the export's errors. With structured
    /// replies negotiated we must not use a simple reply for READ and
    /// should prefer structured errors anyway, since they carry a message
    /// for the user.
    pub(crate) fn error_frame(&self, cookie: u64, errno: u32, message: &str) -> Vec<u8> {
        error_frame(&self.export.stats, self.structured, cookie, errno, message)
    }

    /// The reply to a request refused before it reached the device.
    pub(crate) fn rejection_frame(&self, r: &Request, errno: u32, message: &str) -> Vec<u8> {
        tracing::debug!(
            cookie = r.cookie,
            kind = r.kind,
            errno,
            message,
            "nbd request rejected"
        );
        self.error_frame(r.cookie, errno, message)
    }

    /// The reply for a device call's outcome, as `catch_unwind` returns it:
    /// its own reply, its error as an NBD error, or — a panicking device
    /// must not leave the client waiting forever for this cookie — EIO.
    pub(crate) fn settle(
        &self,
        r: &Request,
        outcome: std::thread::Result<io::Result<Reply>>,
    ) -> Reply {
        match outcome {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => failure_reply(&self.export.stats, self.structured, r, &e),
            Err(_) => {
                tracing::warn!(
                    cookie = r.cookie,
                    kind = r.kind,
                    "device panicked serving nbd request"
                );
                (self.error_frame(r.cookie, p::EIO, "internal error"), None)
            }
        }
    }

    /// Checks a request against the export before anything touches the device.
    pub(crate) fn validate(&self, r: &Request) -> Option<(u32, &'static str)> {
        use Command::*;
        let command = r.command();
        let allowed_flags = match command {
            Read if self.structured => p::CMD_FLAG_FUA | p::CMD_FLAG_DF,
            WriteZeroes => p::CMD_FLAG_FUA | p::CMD_FLAG_NO_HOLE | p::CMD_FLAG_FAST_ZERO,
            BlockStatus => p::CMD_FLAG_FUA | p::CMD_FLAG_REQ_ONE,
            // FUA is accepted on every command: the spec requires it once
            // SEND_FUA is advertised, and it is harmless on the others.
            _ => p::CMD_FLAG_FUA,
        };
        // A forced detach: the spec's soft disconnect answers every
        // request ESHUTDOWN until the client leaves.
        if self.export.is_evicted() {
            return Some((p::ESHUTDOWN, "the export is being detached"));
        }
        if let Unknown(_) = command {
            return Some((p::EINVAL, "unknown command"));
        }
        if r.flags & !allowed_flags != 0 {
            return Some((p::EINVAL, "command flag not valid for this command"));
        }
        if matches!(command, Write | Trim | WriteZeroes) && self.read_only {
            return Some((p::EPERM, "export is read-only"));
        }
        if command == BlockStatus {
            if !self.base_allocation {
                return Some((p::EINVAL, "no metadata context was negotiated"));
            }
            if r.length == 0 {
                return Some((p::EINVAL, "zero-length block status"));
            }
        }
        if matches!(command, Read | Write) && r.length > self.sizes.maximum {
            return Some((p::EINVAL, "request larger than the maximum block size"));
        }
        let in_range = matches!(
            command,
            Read | Write | Trim | Cache | WriteZeroes | BlockStatus
        );
        if in_range
            && r.offset
                .checked_add(u64::from(r.length))
                .is_none_or(|end| end > self.size)
        {
            // The spec asks for ENOSPC on writes past the end and EINVAL on
            // everything else.
            return Some(if matches!(command, Write | WriteZeroes) {
                (p::ENOSPC, "request beyond the end of the export")
            } else {
                (p::EINVAL, "request beyond the end of the export")
            });
        }
        // Alignment to the advertised minimum is enforced for data transfers;
        // TRIM may legitimately be rounded by the device instead.
        // The minimum is a power of two (checked when the export set was
        // built), so a mask tests alignment.
        let mask = u64::from(self.sizes.minimum).saturating_sub(1);
        if matches!(command, Read | Write | WriteZeroes)
            && (r.offset & mask != 0 || u64::from(r.length) & mask != 0)
        {
            return Some((p::EINVAL, "request not aligned to the minimum block size"));
        }
        // FAST_ZERO: answer ENOTSUP at once, before touching anything, unless
        // the zeroing can deallocate (NO_HOLE forbids that: the range would
        // have to be written, which is no faster than a WRITE).
        if command == WriteZeroes
            && r.flags & p::CMD_FLAG_FAST_ZERO != 0
            && (r.flags & p::CMD_FLAG_NO_HOLE != 0 || !self.fast_zero)
        {
            return Some((p::ENOTSUP, "fast zeroing is not possible for this request"));
        }
        None
    }

    /// Performs a validated request right here if that cannot make the
    /// caller wait for storage: a READ whose data is all in memory (the
    /// device's [`try_read_at`](BlockDevice::try_read_at)), or a WRITE of at
    /// most [`INLINE_WRITE_MAX`] bytes without FUA (it lands in the page
    /// cache), or a BLOCK_STATUS (a metadata lookup) or CACHE (nothing).
    /// `None` hands the request back, payload untouched, for a worker to
    /// [`execute`](Self::execute) — everything that flushes, punches,
    /// zeroes or waits for a disk to read data goes there.
    ///
    /// This is what lets a connection's own thread answer cached requests
    /// without waking a worker: for small requests the hand-off costs more
    /// than the request, and a cached read of any size is fastest where the
    /// data is decrypted in the cache it was just copied into (measured:
    /// 1 MiB reads inline took ~35 % less CPU per GiB than on a worker).
    pub(crate) fn try_execute_inline(
        &self,
        r: &Request,
        payload: &mut Option<PooledBuf>,
    ) -> Option<io::Result<Reply>> {
        if self.asynchronous && r.command() != Command::Cache {
            // A store across the network answers nothing from memory, and
            // even its metadata (block status) is a round trip: what is not
            // started goes to a worker.
            return None;
        }
        match r.command() {
            Command::Read if r.length > 0 => {
                let mut buf = self.buffers.take(r.length as usize);
                match self.device.try_read_at(r.offset, buf.as_mut_slice()) {
                    Ok(true) => Some(Ok(read_reply(self.structured, r, ReplyData::Pooled(buf)))),
                    Ok(false) => None,
                    Err(e) => Some(Err(e)),
                }
            }
            Command::Write if r.length <= INLINE_WRITE_MAX && r.flags & p::CMD_FLAG_FUA == 0 => {
                let data = payload.take()?;
                Some(
                    self.device
                        .write_at(r.offset, data.as_slice(), false)
                        .map(|()| ok_reply(r.cookie)),
                )
            }
            // SEEK_DATA/SEEK_HOLE on the backing file: file-system metadata,
            // cached once the file has been used at all; and CACHE does
            // nothing. Copy tools ask for block status before nearly every
            // read they issue, so a hand-off here costs a round trip each.
            Command::BlockStatus | Command::Cache => Some(self.execute(r, None)),
            _ => None,
        }
    }

    /// The reply to READ `r` carrying `data`, read for it elsewhere (a
    /// read-ahead).
    pub(crate) fn read_reply(&self, r: &Request, data: PooledBuf) -> Reply {
        read_reply(self.structured, r, ReplyData::Pooled(data))
    }

    /// Whether `r` is [started](Self::start) rather than executed: READ,
    /// WRITE and FLUSH on an asynchronous device.
    pub(crate) fn is_started(&self, r: &Request) -> bool {
        self.asynchronous && matches!(r.command(), Command::Read | Command::Write | Command::Flush)
    }

    /// Starts a validated READ, WRITE (with its payload) or FLUSH on an
    /// asynchronous device and returns: `send` gets the encoded reply
    /// exactly once, from the device's completion — on the device's
    /// completion thread, or on this one if the device completes at once
    /// (it must therefore never block on this thread's progress). A device
    /// that panics while starting, or drops the request, gets its client
    /// EIO. Anything else is executed here (callers send only those three).
    pub(crate) fn start(
        &self,
        r: &Request,
        payload: Option<PooledBuf>,
        send: impl FnOnce(Reply) + Send + 'static,
    ) {
        let request = *r;
        let structured = self.structured;
        let answer = Answer {
            send: Some(send),
            request,
            structured,
            stats: self.export.stats.clone(),
        };
        let dev = &*self.device;
        let started = catch_unwind(AssertUnwindSafe(|| match r.command() {
            Command::Read if r.length > 0 => {
                // Bounded by the maximum block size (validated). Not
                // cleared: a read fills every byte or fails (and then it is
                // not sent).
                let buf: IoBuf = Box::new(self.buffers.take(r.length as usize));
                let done: crate::volume::IoDone = Box::new(move |buf, result| {
                    answer.finish(
                        result.map(|()| read_reply(structured, &request, ReplyData::Started(buf))),
                    )
                });
                if r.length <= COMPLETION_DECRYPT_MAX {
                    dev.start_read(r.offset, buf, done);
                } else {
                    dev.start_read_on(r.offset, buf, done, self.read_cpu.clone());
                }
            }
            Command::Write if r.length > 0 => {
                let Some(data) = payload else {
                    return answer.finish(Err(io::Error::other("write payload missing")));
                };
                let fua = r.flags & p::CMD_FLAG_FUA != 0;
                dev.start_write(
                    r.offset,
                    Box::new(data),
                    fua,
                    Box::new(move |_, result| {
                        answer.finish(result.map(|()| ok_reply(request.cookie)))
                    }),
                );
            }
            Command::Flush => dev.start_flush(Box::new(move |result| {
                answer.finish(result.map(|()| ok_reply(request.cookie)))
            })),
            _ => answer.finish(self.execute(r, payload)),
        }));
        if started.is_err() {
            // `answer` went down with the panic and told the client (EIO).
            tracing::warn!(
                cookie = r.cookie,
                kind = r.kind,
                "device panicked starting nbd request"
            );
        }
    }

    /// Performs one validated request on the device and encodes its reply.
    pub(crate) fn execute(&self, r: &Request, payload: Option<PooledBuf>) -> io::Result<Reply> {
        let fua = r.flags & p::CMD_FLAG_FUA != 0;
        let ok = || Ok((p::encode_simple_reply(r.cookie, 0).to_vec(), None));
        let dev = &*self.device;
        match r.command() {
            Command::Read => {
                // Bounded by the maximum block size (validated). Not cleared:
                // read_at fills every byte or fails (and then it is not sent).
                let mut buf = self.buffers.take(r.length as usize);
                if !buf.is_empty() {
                    dev.read_at(r.offset, buf.as_mut_slice())?;
                }
                Ok(read_reply(self.structured, r, ReplyData::Pooled(buf)))
            }
            Command::Write => {
                if let Some(data) = payload.filter(|d| !d.is_empty()) {
                    dev.write_at(r.offset, data.as_slice(), fua)?;
                }
                ok()
            }
            Command::Flush => {
                dev.flush()?;
                ok()
            }
            Command::Trim => {
                if r.length > 0 {
                    dev.trim(r.offset, u64::from(r.length))?;
                    if fua {
                        dev.flush()?;
                    }
                }
                ok()
            }
            Command::WriteZeroes => {
                if r.length > 0 {
                    let may_punch = r.flags & p::CMD_FLAG_NO_HOLE == 0;
                    dev.write_zeroes(r.offset, u64::from(r.length), may_punch)?;
                    if fua {
                        dev.flush()?;
                    }
                }
                ok()
            }
            // A hint; the range was validated, there is no cache to warm.
            Command::Cache => ok(),
            Command::BlockStatus => {
                // In range and non-zero (validated).
                let runs = dev.block_status(r.offset, u64::from(r.length))?;
                let req_one = r.flags & p::CMD_FLAG_REQ_ONE != 0;
                let descriptors = status_descriptors(&runs, r.length, req_one);
                Ok((
                    p::encode_block_status(r.cookie, BASE_ALLOCATION_ID, &descriptors),
                    None,
                ))
            }
            // Filtered out by read_request / validate.
            Command::Disc | Command::Unknown(_) => {
                Err(io::Error::from(io::ErrorKind::InvalidInput))
            }
        }
    }
}

/// Turns a device's allocation runs into `base:allocation` descriptors for
/// a request of `length` bytes: zero-length runs dropped, everything
/// clipped to the request (a device may not extend it), neighbours with
/// the same status merged, at most [`MAX_STATUS_DESCRIPTORS`] (one with
/// REQ_ONE). Never empty: a device that reports nothing usable gets the
/// always-true answer "allocated, contents unknown" for the whole range.
fn status_descriptors(runs: &[Allocation], length: u32, req_one: bool) -> Vec<(u32, u32)> {
    let limit = if req_one { 1 } else { MAX_STATUS_DESCRIPTORS };
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut left = length;
    for run in runs {
        if left == 0 {
            break;
        }
        let len = u32::try_from(run.len).unwrap_or(u32::MAX).min(left);
        if len == 0 {
            continue;
        }
        let mut flags = 0;
        if run.hole {
            flags |= p::STATE_HOLE;
        }
        if run.zero {
            flags |= p::STATE_ZERO;
        }
        left -= len;
        let full = out.len() == limit;
        match out.last_mut() {
            Some((last_len, last_flags)) if *last_flags == flags => *last_len += len,
            _ if full => break,
            _ => out.push((len, flags)),
        }
    }
    if out.is_empty() {
        out.push((length, 0));
    }
    out
}

/// Maps a device error to the NBD error value clients understand.
pub fn errno_of(e: &io::Error) -> u32 {
    use io::ErrorKind::*;
    const ENOSPC_RAW: i32 = 28;
    const EFBIG_RAW: i32 = 27;
    const EDQUOT_RAW: i32 = 122;
    match e.kind() {
        InvalidInput => p::EINVAL,
        PermissionDenied | ReadOnlyFilesystem => p::EPERM,
        // The spec asks for EDQUOT and EFBIG to be reported as ENOSPC.
        StorageFull | QuotaExceeded | FileTooLarge => p::ENOSPC,
        _ => match e.raw_os_error() {
            Some(ENOSPC_RAW | EFBIG_RAW | EDQUOT_RAW) => p::ENOSPC,
            _ => p::EIO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(len: u64, hole: bool) -> Allocation {
        Allocation {
            len,
            hole,
            zero: hole,
        }
    }

    #[test]
    fn descriptors_merge_clip_and_never_come_back_empty() {
        let runs = [
            run(0, false),
            run(4096, true),
            run(4096, true),
            run(8192, false),
        ];
        assert_eq!(
            status_descriptors(&runs, 10000, false),
            vec![(8192, p::STATE_HOLE | p::STATE_ZERO), (1808, 0)]
        );
        assert_eq!(
            status_descriptors(&runs, 20000, true),
            vec![(8192, p::STATE_HOLE | p::STATE_ZERO)]
        );
        // A run longer than u32 (or than asked) is clipped to the request.
        assert_eq!(
            status_descriptors(&[run(1 << 40, true)], 512, false),
            vec![(512, 3)]
        );
        assert_eq!(status_descriptors(&[], 512, false), vec![(512, 0)]);
        assert_eq!(
            status_descriptors(&[run(0, true)], 512, true),
            vec![(512, 0)]
        );
    }

    #[test]
    fn descriptors_are_capped() {
        let runs: Vec<Allocation> = (0..MAX_STATUS_DESCRIPTORS + 10)
            .map(|i| run(512, i % 2 == 0))
            .collect();
        let d = status_descriptors(&runs, u32::MAX, false);
        assert_eq!(d.len(), MAX_STATUS_DESCRIPTORS);
        assert!(d.iter().all(|&(len, _)| len == 512));
    }
}
