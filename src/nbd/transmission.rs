//! The transmission phase: many requests in flight, replies out of order.
//!
//! ```text
//!            ┌──────────── reader (this task) ────────────┐
//!  socket ──▶│ header → validate → (payload) → permit      │
//!            └──────┬───────────────────────────┬──────────┘
//!                   │ job queue (bounded)        │ early error reply
//!                   ▼                            ▼
//!       worker: device call ── Frame ───▶ mpsc ───▶ writer task ──▶ socket
//! ```
//!
//! * The reader is the only thing reading the socket; it reads a WRITE's
//!   payload fully before reading the next header, so the byte stream never
//!   loses its framing — even for requests it rejects.
//! * Device calls are synchronous and may be slow (file I/O, crypto), so each
//!   runs on the server's fixed pool of worker threads ([`Shared`]);
//!   independent requests proceed in parallel. The reader waits only for
//!   budget or for room in the job queue, never for a worker.
//! * READ data and WRITE payloads live in buffers from the server's pool,
//!   reused without clearing (each is overwritten before it is sent or
//!   applied) and returned once the reply is written.
//! * Each reply is encoded into one [`Frame`] and handed to a single writer
//!   task, so frames never interleave on the wire.
//! * Memory is bounded per connection by a semaphore of
//!   [`IN_FLIGHT_BYTES`] permits: a request holds permits for its buffer
//!   (payload or read data) plus a fixed overhead from before its payload
//!   is read until its reply has been written. A client that sends faster
//!   than replies drain simply stops being read.
//! * The reply channel closes when the reader and every in-flight request
//!   have dropped their sender; the writer then flushes and shuts the socket
//!   down. That is exactly the `NBD_CMD_DISC` rule: finish outstanding
//!   requests, send their replies, close.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{debug, warn};

use super::handshake::{BASE_ALLOCATION_ID, Negotiated};
use super::protocol::{self as p, Command, ProtocolError, REQUEST_HEADER_LEN, Request};
use super::workers::{PooledBuf, Shared};
use crate::volume::{Allocation, BlockDevice, BlockSizes};

/// Per-connection cap on bytes buffered for in-flight requests.
pub const IN_FLIGHT_BYTES: u32 = 64 * 1024 * 1024;
/// What every request costs against [`IN_FLIGHT_BYTES`] on top of its
/// buffer, so that a flood of zero-length requests is bounded too
/// (at most 64 MiB / 4 KiB = 16384 in flight).
const REQUEST_OVERHEAD: u32 = 4096;
/// A WRITE whose payload we refuse is still read and discarded, to keep the
/// stream in sync; beyond this size (and beyond the advertised maximum) we
/// hard-disconnect instead, which the spec allows for payloads above 2^25.
const DISCARD_LIMIT: u32 = 1 << 25;
/// Most descriptors one BLOCK_STATUS reply carries (the spec suggests at
/// most 2^20; fewer keeps each reply, and what a flood of them can buffer,
/// small: 128 KiB). A client asks again for the rest, as it must anyway.
const MAX_STATUS_DESCRIPTORS: usize = 1 << 14;
/// After server shutdown, how long in-flight replies may take to drain to a
/// client before the connection is dropped anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a transmission phase ended other than by DISC or the client leaving.
#[derive(Debug, Error)]
pub enum TransmissionError {
    #[error("i/o during transmission: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("write payload of {0} bytes exceeds what this server accepts")]
    PayloadTooLarge(u32),
}

/// How the reader loop ended.
enum End {
    /// `NBD_CMD_DISC`, or the client closed its side.
    Client,
    /// The server is shutting down.
    Shutdown,
    /// The writer stopped (client no longer reads, or a write failed).
    WriterGone,
}

/// One reply, encoded, ready for the writer. Holding the permit until the
/// frame is written is what bounds buffered memory.
struct Frame {
    head: Vec<u8>,
    data: Option<PooledBuf>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// What a request's device task needs, shared by the reader and all tasks.
/// Its `replies` sender is the writer's lifeline: the writer finishes when
/// the last `Arc<Context>` is gone.
struct Context {
    device: Arc<dyn BlockDevice>,
    size: u64,
    sizes: BlockSizes,
    read_only: bool,
    /// The device zeroes fast when allowed to punch (`NBD_CMD_FLAG_FAST_ZERO`).
    fast_zero: bool,
    structured: bool,
    base_allocation: bool,
    replies: mpsc::UnboundedSender<Frame>,
    shared: Arc<Shared>,
}

impl Context {
    /// An error reply. With structured replies negotiated we must not use a
    /// simple reply for READ and should prefer structured errors anyway,
    /// since they carry a message for the user.
    fn error_frame(&self, cookie: u64, errno: u32, message: &str) -> Vec<u8> {
        if self.structured {
            p::encode_structured_error(cookie, errno, message)
        } else {
            p::encode_simple_reply(cookie, errno).to_vec()
        }
    }

    fn send(&self, head: Vec<u8>, data: Option<PooledBuf>, permit: Option<OwnedSemaphorePermit>) {
        // A send only fails once the writer is gone, i.e. the connection is
        // being torn down; the reply has nowhere to go then.
        let _ = self.replies.send(Frame {
            head,
            data,
            _permit: permit,
        });
    }

    fn send_error(&self, cookie: u64, errno: u32, message: &str) {
        self.send(self.error_frame(cookie, errno, message), None, None);
    }
}

/// Serves requests on `stream` until DISC, client close, error or shutdown.
pub(crate) async fn serve<S>(
    stream: S,
    negotiated: Negotiated,
    mut shutdown: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> Result<(), TransmissionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_replies(
        BufWriter::with_capacity(256 * 1024, write_half),
        rx,
    ));

    let device = negotiated.export.device.clone();
    let ctx = Arc::new(Context {
        size: device.size(),
        sizes: device.block_sizes(),
        read_only: negotiated.export.is_read_only(),
        fast_zero: device.fast_zero(),
        structured: negotiated.structured_replies,
        base_allocation: negotiated.base_allocation,
        device,
        replies: tx,
        shared,
    });
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES as usize));
    let mut reader = BufReader::with_capacity(256 * 1024, read_half);

    let ended = loop {
        let next = tokio::select! {
            biased;
            _ = shutdown_requested(&mut shutdown) => break Ok(End::Shutdown),
            _ = ctx.replies.closed() => break Ok(End::WriterGone),
            next = read_request(&mut reader, &ctx, &budget) => next,
        };
        match next {
            Ok(Some(incoming)) => dispatch(&ctx, incoming).await,
            Ok(None) => break Ok(End::Client),
            Err(e) => break Err(e),
        }
    };
    // Our sender goes; the writer drains what in-flight requests still send.
    drop(ctx);
    drop(reader);

    let drained = match ended {
        Ok(End::WriterGone) => {
            writer.abort();
            Ok(())
        }
        Ok(End::Shutdown) => drain_within(&mut writer, SHUTDOWN_GRACE).await,
        _ => {
            tokio::select! {
                r = &mut writer => joined(r),
                _ = shutdown_requested(&mut shutdown) => drain_within(&mut writer, SHUTDOWN_GRACE).await,
            }
        }
    };
    ended.map(|_| ())?;
    drained
}

/// A parsed request, with its payload if it is a WRITE we accepted.
struct Incoming {
    request: Request,
    payload: Option<PooledBuf>,
    permit: Option<OwnedSemaphorePermit>,
    /// Set when validation failed: the request is answered with this errno
    /// and never reaches the device.
    rejected: Option<(u32, &'static str)>,
}

/// Reads the next request (header and payload). `Ok(None)` means the
/// client is done: it sent DISC or closed the connection.
async fn read_request<R>(
    reader: &mut R,
    ctx: &Context,
    budget: &Arc<Semaphore>,
) -> Result<Option<Incoming>, TransmissionError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; REQUEST_HEADER_LEN];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            debug!("nbd client closed the connection without NBD_CMD_DISC");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let request = Request::parse(&header)?;
    let command = request.command();
    if command == Command::Disc {
        return Ok(None);
    }
    let rejected = validate(ctx, &request);
    let payload_len = if command == Command::Write {
        request.length
    } else {
        0
    };

    if payload_len > 0 && rejected.is_some() {
        if payload_len > DISCARD_LIMIT.max(ctx.sizes.maximum) {
            return Err(TransmissionError::PayloadTooLarge(payload_len));
        }
        let copied = tokio::io::copy(
            &mut (&mut *reader).take(u64::from(payload_len)),
            &mut tokio::io::sink(),
        )
        .await?;
        if copied < u64::from(payload_len) {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        return Ok(Some(Incoming {
            request,
            payload: None,
            permit: None,
            rejected,
        }));
    }

    // READ buffers its data until the reply is written; WRITE its payload;
    // BLOCK_STATUS up to its largest reply.
    let buffered = match command {
        Command::Read | Command::Write if rejected.is_none() => request.length,
        Command::BlockStatus if rejected.is_none() => {
            u32::try_from(MAX_STATUS_DESCRIPTORS * 8).unwrap_or(u32::MAX)
        }
        _ => 0,
    };
    let cost = buffered
        .saturating_add(REQUEST_OVERHEAD)
        .min(IN_FLIGHT_BYTES);
    let permit = budget
        .clone()
        .acquire_many_owned(cost)
        .await
        .map_err(|_| io::Error::other("request budget closed"))?;

    let payload = if payload_len > 0 {
        // Bounded by the advertised maximum: validate() rejected more.
        // Not cleared: the read overwrites every byte of it.
        let mut buf = ctx.shared.buffers().take(payload_len as usize);
        reader.read_exact(buf.as_mut_slice()).await?;
        Some(buf)
    } else {
        None
    };
    Ok(Some(Incoming {
        request,
        payload,
        permit: Some(permit),
        rejected,
    }))
}

/// Checks a request against the export before anything touches the device.
fn validate(ctx: &Context, r: &Request) -> Option<(u32, &'static str)> {
    use Command::*;
    let command = r.command();
    let allowed_flags = match command {
        Read if ctx.structured => p::CMD_FLAG_FUA | p::CMD_FLAG_DF,
        WriteZeroes => p::CMD_FLAG_FUA | p::CMD_FLAG_NO_HOLE | p::CMD_FLAG_FAST_ZERO,
        BlockStatus => p::CMD_FLAG_FUA | p::CMD_FLAG_REQ_ONE,
        // FUA is accepted on every command: the spec requires it once
        // SEND_FUA is advertised, and it is harmless on the others.
        _ => p::CMD_FLAG_FUA,
    };
    if let Unknown(_) = command {
        return Some((p::EINVAL, "unknown command"));
    }
    if r.flags & !allowed_flags != 0 {
        return Some((p::EINVAL, "command flag not valid for this command"));
    }
    if matches!(command, Write | Trim | WriteZeroes) && ctx.read_only {
        return Some((p::EPERM, "export is read-only"));
    }
    if command == BlockStatus {
        if !ctx.base_allocation {
            return Some((p::EINVAL, "no metadata context was negotiated"));
        }
        if r.length == 0 {
            return Some((p::EINVAL, "zero-length block status"));
        }
    }
    if matches!(command, Read | Write) && r.length > ctx.sizes.maximum {
        return Some((p::EINVAL, "request larger than the maximum block size"));
    }
    let in_range = matches!(
        command,
        Read | Write | Trim | Cache | WriteZeroes | BlockStatus
    );
    if in_range
        && r.offset
            .checked_add(u64::from(r.length))
            .is_none_or(|end| end > ctx.size)
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
    let mask = u64::from(ctx.sizes.minimum).saturating_sub(1);
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
        && (r.flags & p::CMD_FLAG_NO_HOLE != 0 || !ctx.fast_zero)
    {
        return Some((p::ENOTSUP, "fast zeroing is not possible for this request"));
    }
    None
}

/// Answers a rejected request at once, or queues an accepted one for the
/// server's workers (waiting while the queue is full).
async fn dispatch(ctx: &Arc<Context>, incoming: Incoming) {
    let Incoming {
        request,
        payload,
        permit,
        rejected,
    } = incoming;
    let cookie = request.cookie;
    if let Some((errno, message)) = rejected {
        debug!(
            cookie,
            kind = request.kind,
            errno,
            message,
            "nbd request rejected"
        );
        ctx.send_error(cookie, errno, message);
        return;
    }
    let job_ctx = ctx.clone();
    let job = Box::new(move || {
        let ctx = job_ctx;
        // A panicking device must not leave the client waiting forever for
        // this cookie: turn it into EIO.
        let outcome = catch_unwind(AssertUnwindSafe(|| execute(&ctx, &request, payload)));
        match outcome {
            Ok(Ok((head, data))) => ctx.send(head, data, permit),
            Ok(Err(e)) => {
                let errno = errno_of(&e);
                debug!(cookie, kind = request.kind, errno, error = %e, "nbd request failed");
                ctx.send(ctx.error_frame(cookie, errno, &e.to_string()), None, permit);
            }
            Err(_) => {
                warn!(
                    cookie,
                    kind = request.kind,
                    "device panicked serving nbd request"
                );
                ctx.send(
                    ctx.error_frame(cookie, p::EIO, "internal error"),
                    None,
                    permit,
                );
            }
        }
    });
    ctx.shared.submit(job).await;
}

/// Performs one validated request on the device and encodes its reply.
fn execute(
    ctx: &Context,
    r: &Request,
    payload: Option<PooledBuf>,
) -> io::Result<(Vec<u8>, Option<PooledBuf>)> {
    let fua = r.flags & p::CMD_FLAG_FUA != 0;
    let ok = || Ok((p::encode_simple_reply(r.cookie, 0).to_vec(), None));
    let dev = &*ctx.device;
    match r.command() {
        Command::Read => {
            // Bounded by the maximum block size (validated). Not cleared:
            // read_at fills every byte or fails (and then it is not sent).
            let mut buf = ctx.shared.buffers().take(r.length as usize);
            if !buf.is_empty() {
                dev.read_at(r.offset, buf.as_mut_slice())?;
            }
            Ok(match (ctx.structured, buf.is_empty()) {
                // An OFFSET_DATA chunk must carry at least one byte.
                (true, true) => (p::encode_structured_none(r.cookie).to_vec(), None),
                (true, false) => (
                    p::encode_offset_data_header(r.cookie, r.offset, r.length),
                    Some(buf),
                ),
                (false, _) => (p::encode_simple_reply(r.cookie, 0).to_vec(), Some(buf)),
            })
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
        Command::Disc | Command::Unknown(_) => Err(io::Error::from(io::ErrorKind::InvalidInput)),
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

/// The writer task: writes frames in arrival order, batching flushes.
async fn write_replies<W>(
    mut out: BufWriter<W>,
    mut frames: mpsc::UnboundedReceiver<Frame>,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while let Some(frame) = frames.recv().await {
        write_frame(&mut out, frame).await?;
        // Flush only when nothing else is ready, so bursts of small replies
        // share a syscall.
        while let Ok(frame) = frames.try_recv() {
            write_frame(&mut out, frame).await?;
        }
        out.flush().await?;
    }
    out.shutdown().await
}

async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut BufWriter<W>,
    frame: Frame,
) -> io::Result<()> {
    out.write_all(&frame.head).await?;
    if let Some(data) = &frame.data {
        out.write_all(data.as_slice()).await?;
    }
    Ok(())
}

async fn drain_within(
    writer: &mut tokio::task::JoinHandle<io::Result<()>>,
    grace: Duration,
) -> Result<(), TransmissionError> {
    match tokio::time::timeout(grace, &mut *writer).await {
        Ok(r) => joined(r),
        Err(_) => {
            warn!("nbd client did not take its replies within the shutdown grace period");
            writer.abort();
            Ok(())
        }
    }
}

fn joined(r: Result<io::Result<()>, tokio::task::JoinError>) -> Result<(), TransmissionError> {
    match r {
        Ok(Ok(())) => Ok(()),
        // The client stopped reading or went away: nothing left to serve.
        Ok(Err(e)) if is_disconnect(&e) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(io::Error::other(e).into()),
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// Resolves once shutdown is requested; never, if the server side is gone
/// without requesting it.
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
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
