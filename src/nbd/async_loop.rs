//! The transmission phase on any async stream, on tokio tasks: connections
//! (plain or on tokio-rustls) when the server is told to
//! ([`TransmissionLoop::Async`](super::TransmissionLoop)), and in-memory
//! streams (fuzzing). Many requests in
//! flight, replies out of order; the rules it applies (admission, budget,
//! frames, how a connection ends) are `transmission.rs`'s.
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
//!   budget (its own or its listener's) or for room in the job queue,
//!   never for a worker.
//! * On an asynchronous device READ and FLUSH are started by the reader
//!   and WRITE by a worker, and the device's completion sends the reply
//!   (see `CommandContext::start`): no thread waits for the store.
//! * READ data and WRITE payloads live in buffers from the server's pool,
//!   reused without clearing (each is overwritten before it is sent or
//!   applied) and returned once the reply is written.
//! * Each reply is encoded into one [`Frame`] and handed to a single writer
//!   task, so frames never interleave on the wire.
//! * Memory is bounded twice: per connection by a semaphore of
//!   [`IN_FLIGHT_BYTES`] permits, and across the listener's connections by
//!   its in-flight budget (`limits.rs`: a fair semaphore, shared with the
//!   threaded loop's connections on the same listener). A request holds
//!   permits of both for its buffer (payload or read data) plus a fixed
//!   overhead from before its payload is read until its reply has been
//!   written. A client that sends faster than replies drain simply stops
//!   being read; a request may also wait its turn on the listener's budget
//!   while other connections' replies drain.
//! * The request deadline: once a request's first byte is in, its header
//!   (and a refused payload) must be complete within it, and an accepted
//!   payload within it from when the budgets are granted (timers around the
//!   reads). The writer goes through a [`StallLimit`]: a write or flush
//!   that makes no progress for that long fails. Either way the connection
//!   ends as [`Stalled`](TransmissionError::Stalled) and gives its budgets
//!   back. A connection idle between requests is never timed out.
//! * The reply channel closes when the reader and every in-flight request
//!   have dropped their sender; the writer then flushes and shuts the socket
//!   down. That is exactly the `NBD_CMD_DISC` rule: finish outstanding
//!   requests, send their replies, close.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    BufWriter,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep, timeout};
use tracing::{debug, warn};

use super::commands::{CommandContext, Reply, ReplyData};
use super::export_stats::InFlight;
use super::handshake::Negotiated;
use super::limits::{ConnectionLimits, ServerPermit};
use super::protocol::{Command, REQUEST_HEADER_LEN, Request};
use super::transmission::{
    Admission, End, IN_FLIGHT_BYTES, SHUTDOWN_GRACE, Stop, TransmissionError, admit, conclude,
    discarded,
};
use super::workers::{PooledBuf, Shared};

/// What a request holds until its reply is written: its share of this
/// connection's budget and of its listener's (rejected requests hold
/// none), and its place among its export's requests in flight.
type Held = (Option<(OwnedSemaphorePermit, ServerPermit)>, InFlight);

/// A reply with what its request holds.
type Frame = super::transmission::Frame<Held>;

/// What a request's device task needs, shared by the reader and all tasks.
/// Its `replies` sender is the writer's lifeline: the writer finishes when
/// the last `Arc<Context>` is gone.
struct Context {
    cmd: CommandContext,
    replies: mpsc::UnboundedSender<Frame>,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
}

impl Context {
    fn send(&self, head: Vec<u8>, data: Option<ReplyData>, permit: Held) {
        // A send only fails once the writer is gone, i.e. the connection is
        // being torn down; the reply has nowhere to go then.
        let _ = self.replies.send(Frame::new(head, data, permit));
    }
}

/// Serves requests on `stream` until DISC, client close, error or shutdown.
pub(crate) async fn serve<S>(
    stream: S,
    negotiated: Negotiated,
    mut stop: Stop,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
) -> Result<(), TransmissionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_replies(
        BufWriter::with_capacity(
            256 * 1024,
            StallLimit::new(write_half, limits.request_timeout),
        ),
        rx,
    ));

    let ctx = Arc::new(Context {
        cmd: CommandContext::for_negotiated(&negotiated, &shared),
        replies: tx,
        shared,
        limits,
    });
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES as usize));
    let mut reader = BufReader::with_capacity(256 * 1024, read_half);

    let ended = loop {
        let next = tokio::select! {
            biased;
            _ = stop.requested() => break Ok(End::Shutdown),
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

    let written = match ended {
        // The writer has ended (its receiver is gone): learn why.
        Ok(End::WriterGone) => joined(writer.await),
        Ok(End::Shutdown) => drain_within(&mut writer, SHUTDOWN_GRACE).await,
        _ => {
            tokio::select! {
                r = &mut writer => joined(r),
                _ = stop.requested() => drain_within(&mut writer, SHUTDOWN_GRACE).await,
            }
        }
    };
    conclude(ended, written)
}

/// A parsed request, with its payload if it is a WRITE we accepted.
struct Incoming {
    request: Request,
    payload: Option<PooledBuf>,
    permit: Held,
    /// Set when validation failed: the request is answered with this errno
    /// and never reaches the device.
    rejected: Option<(u32, &'static str)>,
}

/// Reads the next request (header and payload). `Ok(None)` means the
/// client is done: it sent DISC or closed the connection.
///
/// Waiting for a request's first byte takes as long as the client likes;
/// from there the rest of its header (and a refused payload) must arrive
/// within the request deadline, and an accepted payload within the
/// deadline from when we are ready for it (after waiting for budget).
async fn read_request<R>(
    reader: &mut R,
    ctx: &Context,
    budget: &Arc<Semaphore>,
) -> Result<Option<Incoming>, TransmissionError>
where
    R: AsyncBufRead + Unpin,
{
    if reader.fill_buf().await?.is_empty() {
        debug!("nbd client closed the connection without NBD_CMD_DISC");
        return Ok(None);
    }
    let deadline = ctx.limits.request_timeout;
    let mut header = [0u8; REQUEST_HEADER_LEN];
    match timeout(deadline, reader.read_exact(&mut header)).await {
        Err(_) => return Err(TransmissionError::Stalled),
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            debug!("nbd client closed the connection in the middle of a request header");
            return Ok(None);
        }
        Ok(Err(e)) => return Err(e.into()),
    }
    let Some(admission) = admit(&ctx.cmd, &header)? else {
        return Ok(None);
    };
    if let Some(len) = admission.to_discard() {
        let (mut rest, mut sink) = ((&mut *reader).take(len), tokio::io::sink());
        let copied = timeout(deadline, tokio::io::copy(&mut rest, &mut sink))
            .await
            .map_err(|_| TransmissionError::Stalled)??;
        discarded(copied, len)?;
        return Ok(Some(Incoming {
            request: admission.request,
            payload: None,
            permit: (None, admission.in_flight),
            rejected: admission.rejected,
        }));
    }
    let Admission {
        request,
        rejected,
        payload_len,
        cost,
        in_flight,
    } = admission;

    let own = budget
        .clone()
        .acquire_many_owned(cost)
        .await
        .map_err(|_| io::Error::other("request budget closed"))?;
    let permit = (own, ctx.limits.budget.acquire(cost).await);

    let payload = if payload_len > 0 {
        // Bounded by the advertised maximum: validate() rejected more.
        // Not cleared: the read overwrites every byte of it.
        let mut buf = ctx.cmd.buffers.take(payload_len as usize);
        timeout(deadline, reader.read_exact(buf.as_mut_slice()))
            .await
            .map_err(|_| TransmissionError::Stalled)??;
        Some(buf)
    } else {
        None
    };
    Ok(Some(Incoming {
        request,
        payload,
        permit: (Some(permit), in_flight),
        rejected,
    }))
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
    if let Some((errno, message)) = rejected {
        let head = ctx.cmd.rejection_frame(&request, errno, message);
        // Its budget goes back at once, as before counting in flight.
        let (_budget, in_flight) = permit;
        ctx.send(head, None, (None, in_flight));
        return;
    }
    if ctx.cmd.is_started(&request) {
        // As in the threaded loop: READ and FLUSH are started right here
        // (the device returns at once), a WRITE — encryption, CPU work — on
        // a worker; the device's completion sends the reply. The completion
        // holds only what the reply needs (the writer's sender and the
        // budgets), never the connection's context: through it, it would
        // hold the device, and a completion still pending in the store when
        // the connection ends could drop the volume's last reference on the
        // store's own thread.
        let replies = ctx.replies.clone();
        let send = move |(head, data): Reply| {
            // Fails only once the writer is gone: nowhere to send it then.
            let _ = replies.send(Frame::new(head, data, permit));
        };
        if request.command() == Command::Write {
            let job_ctx = ctx.clone();
            let job = Box::new(move || job_ctx.cmd.start(&request, payload, send));
            ctx.shared.submit(job).await;
        } else {
            ctx.cmd.start(&request, payload, send);
        }
        return;
    }
    let job_ctx = ctx.clone();
    let job = Box::new(move || {
        let ctx = job_ctx;
        let outcome = catch_unwind(AssertUnwindSafe(|| ctx.cmd.execute(&request, payload)));
        let (head, data) = ctx.cmd.settle(&request, outcome);
        ctx.send(head, data, permit);
    });
    ctx.shared.submit(job).await;
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
) -> io::Result<()> {
    match tokio::time::timeout(grace, &mut *writer).await {
        Ok(r) => joined(r),
        Err(_) => {
            warn!("nbd client did not take its replies within the shutdown grace period");
            writer.abort();
            Ok(())
        }
    }
}

/// A writer that fails with `TimedOut` once a write (or flush) has made no
/// progress for `limit`: a client that stops taking its replies gives its
/// share of the budgets back instead of holding it for ever.
struct StallLimit<W> {
    inner: W,
    limit: Duration,
    /// Armed when the inner writer last returned `Pending`.
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl<W> StallLimit<W> {
    fn new(inner: W, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// Passes `poll` through, timing how long it stays `Pending`.
    fn guard<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.armed = false;
            return poll;
        }
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(Instant::now() + self.limit);
        }
        ready!(self.timer.as_mut().poll(cx));
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallLimit<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, poll)
    }
}

/// What the writer task reported; a panic in it is an error like any other.
fn joined(r: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    r.unwrap_or_else(|e| Err(io::Error::other(e)))
}
