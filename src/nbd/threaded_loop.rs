//! The transmission phase on a socket, on blocking threads: the fast path,
//! taken by every Unix-socket and TCP connection, plain or TLS (unless the
//! server was given [`TransmissionLoop::Async`](super::TransmissionLoop)).
//! On TLS the socket is read and written through the connection's
//! [`TlsSession`] (`tls_session.rs`); everything else is the same.
//!
//! ```text
//!            ┌───────────── reader thread (one per connection) ─────────────┐
//!  socket ──▶│ header → validate → (payload) → budget                        │
//!            │   small and cached? ── yes: device call here ──▶ reply batch ─┼─┐
//!            │        │ no                                                   │ │
//!            └────────┼──────────────────────────────────────────────────────┘ │
//!                     ▼ job queue                                              │
//!        server workers: device call ── reply ──▶ channel ◀────── batch ───────┘
//!                                                   │
//!                        writer thread: every ready reply in one writev ──▶ socket
//! ```
//!
//! Why threads and not the async loop of `async_loop.rs`: on a few cores the cost of a small request is
//! dominated by hand-offs between threads — the reactor waking a worker,
//! the worker waking the writer — not by the device call, which for a
//! cached 4 KiB read is a `preadv2` and a microsecond of AES. Here the
//! reader answers such requests itself (`RWF_NOWAIT` makes sure it never
//! waits for a disk: data not in the page cache goes to a worker), queues
//! their replies in a batch, and hands the whole batch to the writer when it
//! is about to block on the socket. Slow requests (reads that miss the
//! cache, flush, trim, zeroing, block status) and large writes (over
//! [`INLINE_WRITE_MAX`](super::commands::INLINE_WRITE_MAX)) go to the
//! server's shared workers, so a slow disk never stalls the reader and a
//! stream of big writes is encrypted on other cores while the reader takes
//! in the next payload.
//!
//! On an asynchronous device (a volume on a Ceph image) nothing waits in
//! a thread: the reader *starts* READ, FLUSH and small whole-sector WRITEs
//! itself, a worker starts other WRITEs (it encrypts first), and the thread
//! that completes a request sends its reply itself when the socket is free
//! and takes it at once, else through the writer thread
//! ([`CommandContext::start`], `ReplyOutput::send_now`); only TRIM,
//! WRITE_ZEROES and BLOCK_STATUS still occupy a worker for their duration.
//!
//! The rules of `transmission.rs` hold as in the async loop: a WRITE's
//! payload is read in full before the next header, so framing survives any
//! rejection; on DISC or EOF in-flight requests finish and their replies
//! are written before the socket closes.
//!
//! Memory is bounded twice: per connection by [`IN_FLIGHT_BYTES`], and
//! across the listener's connections by its in-flight budget (`limits.rs`).
//! A request holds its share of both from before its payload is read until
//! its reply is written. When either is spent the reader stops reading:
//! first it hands its own batch on (some of what is spent may sit in it, so
//! it never waits for itself), then it waits for its own budget, then,
//! parked, in line for the listener's — there it may wait for other
//! connections' replies to drain.
//!
//! The request deadline is two socket options, set once per connection: a
//! read that gets nothing for that long in the middle of a request
//! (`SO_RCVTIMEO`), or a reply write that can send nothing for that long
//! (`SO_SNDTIMEO`), ends the connection as
//! [`Stalled`](TransmissionError::Stalled), which gives its budgets back.
//! Between requests a read that times out just waits again: an idle
//! connection is never closed. Server shutdown stops the reader by shutting
//! the socket's read side, and after [`SHUTDOWN_GRACE`] the write side too.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::commands::{CommandContext, INLINE_WRITE_MAX, Reply, ReplyData};
use super::export_stats::InFlight;
use super::handshake::Negotiated;
use super::limits::{ConnectionLimits, ServerPermit};
use super::protocol::{self as p, Command, REQUEST_HEADER_LEN, Request};
use super::read_ahead::{READ_AHEAD_MIN, ReadAhead};
use super::tls_session::{Received, TlsSession};
use super::transmission::{
    Admission, End, IN_FLIGHT_BYTES, SHUTDOWN_GRACE, Stop, TransmissionError, admit, conclude,
    discarded, is_stall,
};
use super::workers::{Job, PooledBuf, Shared};

/// The reader's socket buffer: many small requests per `recv`.
const READ_BUFFER: usize = 256 * 1024;
/// The reader hands its batch to the writer once it holds this many
/// replies or bytes, even if more requests are waiting, so replies keep
/// flowing while a long burst is being served.
const BATCH_FRAMES: usize = 64;
const BATCH_BYTES: usize = 1 << 20;
/// Largest batch the reader writes itself while more requests wait for it
/// (measured: writing 1 MiB READ replies there cost ~20 % of sequential
/// read throughput, as the copy into the socket no longer overlapped with
/// the next decryption; batches of 4 KiB replies gain from skipping the
/// hand-off).
const DIRECT_WRITE_MAX: usize = 128 * 1024;
/// Replies per `writev` (two slices each; Linux takes at most 1024).
const FRAMES_PER_WRITE: usize = 512;

/// A connected plain stream socket, in blocking mode.
#[derive(Debug)]
pub(crate) enum PlainSocket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl PlainSocket {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Unix(s) => Self::Unix(s.try_clone()?),
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.shutdown(how),
            Self::Tcp(s) => s.shutdown(how),
        }
    }

    /// `SO_RCVTIMEO`: a blocking read that gets nothing for this long
    /// fails with `WouldBlock`.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_read_timeout(timeout),
            Self::Tcp(s) => s.set_read_timeout(timeout),
        }
    }

    /// `SO_SNDTIMEO`: a blocking write that can send nothing for this long
    /// fails with `WouldBlock`.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_write_timeout(timeout),
            Self::Tcp(s) => s.set_write_timeout(timeout),
        }
    }
}

impl Read for &PlainSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PlainSocket::Unix(s) => (&*s).read(buf),
            PlainSocket::Tcp(s) => (&*s).read(buf),
        }
    }
}

impl Write for &PlainSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PlainSocket::Unix(s) => (&*s).write(buf),
            PlainSocket::Tcp(s) => (&*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            PlainSocket::Unix(s) => (&*s).write_vectored(bufs),
            PlainSocket::Tcp(s) => (&*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reader's view of a shared socket. `SO_RCVTIMEO` is set once, to the
/// request deadline, so a read that gets nothing for that long fails with
/// `WouldBlock`: mid-request that is the client stalling (the same "no
/// progress for the deadline" as `SO_SNDTIMEO` on the write side); between
/// requests [`Reader::wait_for_request`] just waits again. No system call
/// beyond the reads themselves.
///
/// On a TLS connection it reads through the session (`tls_session.rs`),
/// which keeps the same rules: a timed-out read has consumed nothing.
struct SocketReader {
    socket: Arc<PlainSocket>,
    tls: Option<(Arc<TlsSession>, Received)>,
}

impl Read for SocketReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => (&*self.socket).read(buf),
            Some((session, received)) => session.read(&*self.socket, received, buf),
        }
    }
}

/// A socket an async accept loop produced, taken over by blocking threads.
pub(crate) trait IntoPlainSocket {
    fn into_plain_socket(self) -> io::Result<PlainSocket>;
}

impl IntoPlainSocket for tokio::net::UnixStream {
    fn into_plain_socket(self) -> io::Result<PlainSocket> {
        let s = self.into_std()?;
        s.set_nonblocking(false)?;
        widen_send_buffer(&s);
        Ok(PlainSocket::Unix(s))
    }
}

impl IntoPlainSocket for tokio::net::TcpStream {
    fn into_plain_socket(self) -> io::Result<PlainSocket> {
        let s = self.into_std()?;
        s.set_nonblocking(false)?;
        widen_send_buffer(&s);
        Ok(PlainSocket::Tcp(s))
    }
}

/// Asks for a send buffer that holds a few large READ replies (the kernel
/// caps it at `net.core.wmem_max`): with the default ~208 KiB the writer
/// sleeps and is woken several times for every MiB it sends.
fn widen_send_buffer(socket: impl std::os::fd::AsFd) {
    const SEND_BUFFER: usize = 4 << 20;
    if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(socket, SEND_BUFFER) {
        debug!(error = %e, "could not widen the socket send buffer");
    }
}

/// Serves requests on `socket` (through `tls` when the client started TLS)
/// until DISC, client close, error or server shutdown; the blocking work
/// runs on this connection's own threads, and this future only waits for
/// them (and for shutdown).
pub(crate) async fn serve(
    socket: PlainSocket,
    tls: Option<TlsSession>,
    negotiated: Negotiated,
    mut stop: Stop,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
) -> Result<(), TransmissionError> {
    let control = socket.try_clone()?;
    let (done_tx, mut done) = oneshot::channel();
    std::thread::Builder::new()
        .name("envol-nbd-conn".into())
        .spawn(move || {
            let _ = done_tx.send(serve_blocking(socket, tls, negotiated, shared, limits));
        })?;
    tokio::select! {
        r = &mut done => return finished(r),
        _ = stop.requested() => {}
    }
    // Stop reading; requests already read finish and are answered.
    let _ = control.shutdown(Shutdown::Read);
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut done).await {
        Ok(r) => finished(r),
        Err(_) => {
            warn!("nbd client did not take its replies within the shutdown grace period");
            let _ = control.shutdown(Shutdown::Both);
            finished(done.await)
        }
    }
}

fn finished(
    r: Result<Result<(), TransmissionError>, oneshot::error::RecvError>,
) -> Result<(), TransmissionError> {
    r.unwrap_or_else(|_| Err(io::Error::other("nbd connection thread panicked").into()))
}

/// What a request holds until its reply is written: its share of this
/// connection's [`Budget`] and of its listener's, and its place among its
/// export's requests in flight.
type Held = (Permit, ServerPermit, InFlight);

/// A reply with what its request holds.
type Frame = super::transmission::Frame<Held>;

pub(super) fn serve_blocking(
    socket: PlainSocket,
    tls: Option<TlsSession>,
    negotiated: Negotiated,
    shared: Arc<Shared>,
    limits: ConnectionLimits,
) -> Result<(), TransmissionError> {
    // A reply the client takes nothing of for this long ends the
    // connection (and gives its budget back to everyone else); so does a
    // request that stops arriving half-way. Set once: no system call per
    // read or write.
    socket.set_write_timeout(Some(limits.request_timeout))?;
    socket.set_read_timeout(Some(limits.request_timeout))?;
    let socket = Arc::new(socket);
    let tls = tls.map(Arc::new);
    let (replies, rx) = mpsc::channel::<Vec<Frame>>();
    let output = Arc::new(ReplyOutput {
        socket: socket.clone(),
        tls: tls.clone(),
        lock: Mutex::new(Unsent::default()),
        // A TLS reply is sealed first: that is CPU work for the writer
        // thread, not for whoever completed the request.
        send_now_max: if tls.is_some() {
            0
        } else {
            send_now_max(&socket)
        },
        failed: AtomicBool::new(false),
        stalled: AtomicBool::new(false),
    });
    let writer = {
        let output = output.clone();
        std::thread::Builder::new()
            .name("envol-nbd-reply".into())
            .spawn(move || write_replies(&output, &rx))?
    };
    let cmd = Arc::new(CommandContext::for_negotiated(&negotiated, &shared));
    let read_ahead = (!cmd.asynchronous && cmd.device.contents_generation().is_some())
        .then(|| Arc::new(ReadAhead::default()));
    let mut reader = Reader {
        input: BufReader::with_capacity(
            READ_BUFFER,
            SocketReader {
                socket: socket.clone(),
                tls: tls.clone().map(|t| (t, Received::new())),
            },
        ),
        cmd,
        shared,
        replies,
        budget: Arc::new(Budget::new(IN_FLIGHT_BYTES)),
        limits,
        batch: Vec::new(),
        batch_bytes: 0,
        output: output.clone(),
        writes: Arc::new(WriteLane::default()),
        read_ahead,
    };
    let ended = reader.run();
    // Our sender goes; the writer ends once the workers' replies for this
    // connection are written.
    drop(reader);
    let mut written = writer
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("nbd reply writer panicked")));
    if output.stalled.load(Ordering::Acquire) {
        // The reader may have met the stall on a batch of its own.
        written = Err(io::ErrorKind::TimedOut.into());
    }
    if let Some(tls) = tls.filter(|_| !output.failed.load(Ordering::Acquire)) {
        // Every writer is done: the end of the stream, authenticated.
        let _ = tls.close(&*socket);
    }
    let _ = socket.shutdown(Shutdown::Write);
    conclude(ended, written)
}

/// What the reader does after handing its batch on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Waits: for the client's next bytes, or for budget.
    Wait,
    /// Serves requests it has already read.
    MoreWork,
}

struct Reader {
    input: BufReader<SocketReader>,
    cmd: Arc<CommandContext>,
    shared: Arc<Shared>,
    replies: mpsc::Sender<Vec<Frame>>,
    budget: Arc<Budget>,
    limits: ConnectionLimits,
    /// Replies of requests answered on this thread, not yet handed on.
    batch: Vec<Frame>,
    batch_bytes: usize,
    output: Arc<ReplyOutput>,
    writes: Arc<WriteLane>,
    /// On a plain device that counts its contents' changes.
    read_ahead: Option<Arc<ReadAhead>>,
}

impl Reader {
    fn run(&mut self) -> Result<End, TransmissionError> {
        let ended = loop {
            if self.input.buffer().len() < REQUEST_HEADER_LEN {
                // About to wait for the client: let it have what is ready.
                self.hand_on(Next::Wait);
            }
            if self.output.failed.load(Ordering::Acquire) {
                break Ok(End::WriterGone);
            }
            match self.serve_one() {
                Ok(true) => {}
                Ok(false) => break Ok(End::Client),
                Err(e) => break Err(e),
            }
            if self.batch.len() >= BATCH_FRAMES || self.batch_bytes >= BATCH_BYTES {
                self.hand_on(Next::MoreWork);
            }
        };
        self.hand_on(Next::Wait);
        ended
    }

    /// Reads and answers (or dispatches) one request; `false` once the
    /// client is done.
    fn serve_one(&mut self) -> Result<bool, TransmissionError> {
        if self.input.buffer().is_empty() && !self.wait_for_request()? {
            debug!("nbd client closed the connection without NBD_CMD_DISC");
            return Ok(false);
        }
        // A request has started arriving: from here every read that gets
        // nothing for the deadline ends the connection.
        let mut header = [0u8; REQUEST_HEADER_LEN];
        match self.input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                debug!("nbd client closed the connection in the middle of a request header");
                return Ok(false);
            }
            Err(e) => return Err(TransmissionError::from_io(e)),
        }
        let Some(admission) = admit(&self.cmd, &header)? else {
            return Ok(false);
        };
        if let Some(len) = admission.to_discard() {
            self.discard(len).map_err(TransmissionError::from_io)?;
        }
        let Admission {
            request,
            rejected,
            payload_len,
            cost,
            in_flight,
        } = admission;

        let (own, listener) = self.acquire(cost);
        let permit = (own, listener, in_flight);

        if let Some((errno, message)) = rejected {
            let head = self.cmd.rejection_frame(&request, errno, message);
            self.push(head, None, permit);
            return Ok(true);
        }

        let mut payload = None;
        if payload_len > 0 {
            if self.input.buffer().len() < payload_len as usize {
                self.hand_on(Next::Wait);
            }
            // Bounded by the advertised maximum (validated). Not cleared:
            // the read overwrites every byte of it. (Our wait for budget
            // above counts against no deadline: only a read that gets
            // nothing does.)
            let mut buf = self.cmd.buffers.take(payload_len as usize);
            self.read_payload(buf.as_mut_slice())
                .map_err(TransmissionError::from_io)?;
            payload = Some(buf);
        }

        if request.command() == Command::Read
            && request.length >= READ_AHEAD_MIN
            && let Some(data) = self.read_ahead(&request)
        {
            let (head, data) = self.cmd.read_reply(&request, data);
            self.push(head, data, permit);
            return Ok(true);
        }

        if self.cmd.is_started(&request) {
            self.start(request, payload, permit);
            return Ok(true);
        }

        let inline = catch_unwind(AssertUnwindSafe(|| {
            self.cmd.try_execute_inline(&request, &mut payload)
        }));
        match inline {
            Ok(None) => self.dispatch(request, payload, permit),
            Ok(Some(result)) => {
                let (head, data) = self.cmd.settle(&request, Ok(result));
                self.push(head, data, permit);
            }
            Err(panic) => {
                let (head, data) = self.cmd.settle(&request, Err(panic));
                self.push(head, data, permit);
            }
        }
        Ok(true)
    }

    /// For a large READ (`read_ahead.rs`): the data a read-ahead already
    /// read for exactly its range, if still valid; and, when it continues
    /// the READ before and the client waits for nothing else (it will
    /// send its next request only after this reply), read-aheads of the
    /// ranges after it, started before this READ is served so that the
    /// decryptions overlap.
    fn read_ahead(&mut self, request: &Request) -> Option<PooledBuf> {
        let ahead = self.read_ahead.clone()?;
        let continued = ahead.continues(request.offset);
        let ready = ahead.take(
            request.offset,
            request.length,
            self.cmd.device.contents_generation(),
        );
        if continued && self.nothing_else_waits() {
            let planned = ahead.plan(request.offset, request.length, self.cmd.size);
            ahead.start(planned, &self.shared, &self.cmd.device);
        }
        ready
    }

    /// Whether no other request is waiting to be served: none buffered
    /// here, none in ciphertext received and not yet decrypted (TLS), no
    /// bytes in the socket (`FIONREAD`: one system call, asked only for a
    /// large READ that continues the one before).
    fn nothing_else_waits(&self) -> bool {
        if self.input.buffer().len() >= REQUEST_HEADER_LEN {
            return false;
        }
        let source = self.input.get_ref();
        if source.tls.as_ref().is_some_and(|(_, r)| r.has_ciphertext()) {
            return false;
        }
        rustix::io::ioctl_fionread(&*source.socket).is_ok_and(|n| n == 0)
    }

    /// Between requests: waits, as long as the client likes, for the next
    /// request's first bytes (the read timeout only wakes us to wait
    /// again). `false` once the client has closed.
    fn wait_for_request(&mut self) -> Result<bool, TransmissionError> {
        loop {
            match self.input.fill_buf() {
                Ok(buffered) => return Ok(!buffered.is_empty()),
                Err(e) if is_stall(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TransmissionError::from_io(e)),
            }
        }
    }

    /// Takes `cost` of this connection's budget and of its listener's. When
    /// either is spent, the batch goes out first (some of what is spent may
    /// sit in it), then the reader waits: for its own budget, then in line
    /// for the listener's.
    fn acquire(&mut self, cost: u32) -> (Permit, ServerPermit) {
        if let Some(own) = self.budget.try_acquire(cost) {
            if let Some(server) = self.limits.budget.try_acquire(cost) {
                return (own, server);
            }
            self.hand_on(Next::Wait);
            return (own, self.limits.budget.acquire_blocking(cost));
        }
        self.hand_on(Next::Wait);
        let own = self.budget.acquire(cost);
        (own, self.limits.budget.acquire_blocking(cost))
    }

    /// Fills `buf` with payload: first what the socket buffer holds, then
    /// straight from the socket. (`BufReader::read_exact` would refill its
    /// own buffer and copy every remaining byte a second time.)
    fn read_payload(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let buffered = self.input.buffer();
        let n = buffered.len().min(buf.len());
        buf[..n].copy_from_slice(&buffered[..n]);
        self.input.consume(n);
        if n < buf.len() {
            self.input.get_mut().read_exact(&mut buf[n..])?;
        }
        Ok(())
    }

    /// Reads and drops `len` payload bytes of a refused WRITE.
    fn discard(&mut self, len: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.input).take(len), &mut io::sink())?;
        discarded(copied, len)
    }

    fn push(&mut self, head: Vec<u8>, data: Option<ReplyData>, permit: Held) {
        self.batch_bytes += head.len() + data.as_ref().map_or(0, |d| d.as_slice().len());
        self.batch.push(Frame::new(head, data, permit));
    }

    /// Sends the batch. When this thread is about to wait anyway, or the
    /// batch is small, it writes the batch itself if no one else is writing
    /// (no hand-off at all). A large batch while more requests are waiting
    /// goes to the writer thread, whose copy into the socket then overlaps
    /// with this thread serving those requests.
    fn hand_on(&mut self, next: Next) {
        if self.batch.is_empty() {
            return;
        }
        let direct = next == Next::Wait || self.batch_bytes <= DIRECT_WRITE_MAX;
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        if let Some(mut guard) = direct.then(|| self.output.try_lock()).flatten() {
            // A failure is recorded in `output`; the loop sees it.
            let _ = self.output.write(&mut guard, &batch);
            return;
        }
        // Fails only once the writer is gone; the replies have nowhere to go.
        let _ = self.replies.send(batch);
    }

    /// Starts a READ or FLUSH on an asynchronous device right here: starting
    /// costs next to nothing (the device queues it and returns), so a
    /// hand-off would only add latency. So is a small WRITE of whole
    /// sectors (at most [`INLINE_WRITE_MAX`] bytes): encrypting it takes
    /// about a microsecond, less than waking a worker. Other WRITEs are
    /// started by a worker, because starting them means encrypting much —
    /// CPU work that would hold up reading the next requests — or, for a
    /// partial sector, a blocking read-modify-write. Either way the
    /// device's completion sends the reply, with the request's permits:
    /// itself when it can ([`ReplyOutput::send_now`]), else through the
    /// writer thread.
    fn start(&mut self, request: Request, payload: Option<PooledBuf>, permit: Held) {
        let replies = self.replies.clone();
        let output = self.output.clone();
        let send = move |(head, data): Reply| {
            let frame = Frame::new(head, data, permit);
            if let Err(unsent) = output.send_now(frame) {
                // To the writer: the frame, or (empty) a wake-up to finish
                // what `send_now` left. Fails only once the writer is gone;
                // the reply has nowhere to go.
                let _ = replies.send(unsent.into_iter().collect());
            }
        };
        let sector = u64::from(self.cmd.sizes.preferred.max(1));
        let small_whole_sectors = request.length <= INLINE_WRITE_MAX
            && request.offset.is_multiple_of(sector)
            && u64::from(request.length).is_multiple_of(sector);
        if request.command() == Command::Write && !small_whole_sectors {
            let cmd = self.cmd.clone();
            self.shared
                .submit_blocking(Box::new(move || cmd.start(&request, payload, send)));
        } else {
            self.cmd.start(&request, payload, send);
        }
    }

    /// Queues a request for the server's workers (waiting while the queue is
    /// full); the worker sends its reply to the writer.
    fn dispatch(&mut self, request: Request, payload: Option<PooledBuf>, permit: Held) {
        let cmd = self.cmd.clone();
        let replies = self.replies.clone();
        let in_lane = request.command() == Command::Write && request.flags & p::CMD_FLAG_FUA == 0;
        let job: Job = Box::new(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| cmd.execute(&request, payload)));
            let (head, data) = cmd.settle(&request, outcome);
            let _ = replies.send(vec![Frame::new(head, data, permit)]);
        });
        if in_lane {
            self.writes.submit(&self.shared, job);
        } else {
            self.shared.submit_blocking(job);
        }
    }
}

/// The WRITEs of one connection that go to the workers (large, without
/// FUA), performed one at a time in arrival order by whichever worker
/// holds the lane. Buffered writes to one file serialize on its inode lock
/// anyway; sending them to every worker at once only adds lock contention
/// and thread switches (measured: 1 MiB sequential writes ~10–25 % faster
/// with writes in a lane). Reads that miss the cache, FUA writes and
/// everything else still use all the workers.
#[derive(Default)]
struct WriteLane {
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    queued: VecDeque<Job>,
    /// A worker is draining `queued`.
    running: bool,
}

impl WriteLane {
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`; starts a worker on the lane unless one is on it.
    fn submit(self: &Arc<Self>, shared: &Shared, job: Job) {
        {
            let mut state = self.lock();
            state.queued.push_back(job);
            if state.running {
                return;
            }
            state.running = true;
        }
        let lane = self.clone();
        shared.submit_blocking(Box::new(move || lane.drain()));
    }

    /// Runs queued jobs until none is left.
    fn drain(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                match state.queued.pop_front() {
                    Some(job) => job,
                    None => {
                        state.running = false;
                        return;
                    }
                }
            };
            // Jobs answer their own panics; this keeps the lane running
            // whatever happens.
            let _ = catch_unwind(AssertUnwindSafe(job));
        }
    }
}

/// The socket's write side, shared by the reader (which writes its own
/// batches when no one else is writing), the threads that complete started
/// requests (which send their own reply when no one else is writing and
/// the socket takes it at once: [`ReplyOutput::send_now`]) and the writer
/// thread (which writes everything else). Whoever holds the lock writes
/// whole frames, so frames never interleave; a frame a non-blocking send
/// left half-written is finished, before anything else, by the next holder.
struct ReplyOutput {
    socket: Arc<PlainSocket>,
    /// Replies are sealed in this session first (a TLS connection).
    tls: Option<Arc<TlsSession>>,
    lock: Mutex<Unsent>,
    /// See [`SEND_NOW_MAX`].
    send_now_max: usize,
    /// Set by the first failed write (client gone or not reading); from
    /// then on replies are dropped and the reader stops.
    failed: AtomicBool,
    /// The failure was the client taking nothing within the request
    /// deadline (`SO_SNDTIMEO`), not the client leaving.
    stalled: AtomicBool,
}

/// The tail of a frame that [`ReplyOutput::send_now`] could send only in
/// part (the socket buffer filled up): it must go out before any other
/// frame. Empty almost always.
#[derive(Default)]
struct Unsent(Vec<u8>);

/// The largest reply [`ReplyOutput::send_now`] tries (a 1 MiB READ with
/// its header), when the socket's send buffer holds four of them; with a
/// smaller buffer, a quarter of it. The tail of a send the socket takes
/// only in part is copied, so a reply the buffer could rarely take whole
/// (`net.core.wmem_max` is 208 KiB on many systems, against the 4 MiB
/// asked for) goes to the writer thread instead.
const SEND_NOW_MAX: usize = 1 << 20 | 4096;

fn send_now_max(socket: &PlainSocket) -> usize {
    rustix::net::sockopt::socket_send_buffer_size(socket).map_or(0, |b| (b / 4).min(SEND_NOW_MAX))
}

impl ReplyOutput {
    fn try_lock(&self) -> Option<MutexGuard<'_, Unsent>> {
        match self.lock.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Unsent> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `frames` with as few `writev`s as possible, after the tail a
    /// partial [`send_now`](Self::send_now) left; the guard proves the
    /// caller holds the lock. A failure marks the output failed and shuts
    /// the socket down, which also wakes the reader if it waits for the
    /// client.
    fn write(&self, locked: &mut MutexGuard<'_, Unsent>, frames: &[Frame]) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            locked.0.clear();
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut out = &*self.socket;
        let unsent = std::mem::take(&mut locked.0);
        let written = if unsent.is_empty() {
            Ok(())
        } else {
            write_all_vectored(&mut out, &mut [IoSlice::new(&unsent)])
        };
        let written = written.and_then(|()| {
            frames.chunks(FRAMES_PER_WRITE).try_for_each(|chunk| {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunk.len() * 2);
                for f in chunk {
                    slices.push(IoSlice::new(&f.head));
                    if let Some(d) = &f.data {
                        slices.push(IoSlice::new(d.as_slice()));
                    }
                }
                match &self.tls {
                    None => write_all_vectored(&mut out, &mut slices),
                    Some(tls) => tls.write_all(out, &mut slices),
                }
            })
        });
        if let Err(e) = &written {
            self.fail(e);
        }
        written
    }

    fn fail(&self, e: &io::Error) {
        if is_stall(e) {
            self.stalled.store(true, Ordering::Release);
        }
        self.failed.store(true, Ordering::Release);
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// Sends one reply from the calling thread — the one that completed
    /// the request — when no one else is writing and nothing is left over,
    /// without blocking (`MSG_DONTWAIT`): no hand-off to the writer thread,
    /// whose wake-up cost more CPU than the send (measured: context
    /// switches were the largest item in the server's profile). Hands the
    /// frame back, untouched, when it must go to the writer: the socket is
    /// busy or full, or the reply is large. A send the socket takes only
    /// in part keeps the rest as [`Unsent`] and returns `Err(None)`: the
    /// caller must wake the writer (an empty batch) to finish it.
    fn send_now(&self, frame: Frame) -> Result<(), Option<Frame>> {
        let len = frame.head.len() + frame.data.as_ref().map_or(0, |d| d.as_slice().len());
        if len > self.send_now_max {
            return Err(Some(frame));
        }
        let Some(mut guard) = self.try_lock() else {
            return Err(Some(frame));
        };
        if !guard.0.is_empty() {
            return Err(Some(frame));
        }
        if self.failed.load(Ordering::Acquire) {
            // As the writer does: replies of a dead connection are dropped.
            return Ok(());
        }
        let data = frame.data.as_ref().map_or(&[][..], |d| d.as_slice());
        let sent = rustix::net::sendmsg(
            &*self.socket,
            &[IoSlice::new(&frame.head), IoSlice::new(data)],
            &mut rustix::net::SendAncillaryBuffer::default(),
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        );
        match sent {
            Ok(n) if n == len => Ok(()),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Err(Some(frame)),
            Ok(n) => {
                let mut rest = Vec::with_capacity(len - n);
                if n < frame.head.len() {
                    rest.extend_from_slice(&frame.head[n..]);
                    rest.extend_from_slice(data);
                } else {
                    rest.extend_from_slice(&data[n - frame.head.len()..]);
                }
                guard.0 = rest;
                Err(None)
            }
            Err(e) => {
                self.fail(&e.into());
                Ok(())
            }
        }
    }
}

impl std::os::fd::AsFd for PlainSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Unix(s) => s.as_fd(),
            Self::Tcp(s) => s.as_fd(),
        }
    }
}

/// The writer thread: writes every reply that is ready, until every sender
/// is gone. Frames drop once written (or once writing failed): buffers go
/// back to the pool, budget is freed.
fn write_replies(output: &ReplyOutput, frames: &mpsc::Receiver<Vec<Frame>>) -> io::Result<()> {
    let mut result = Ok(());
    while let Ok(mut pending) = frames.recv() {
        while let Ok(more) = frames.try_recv() {
            pending.extend(more);
        }
        if result.is_ok() {
            result = output.write(&mut output.lock(), &pending);
        }
    }
    result
}

fn write_all_vectored(out: &mut impl Write, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A connection's in-flight byte budget, for blocking threads.
struct Budget {
    state: Mutex<BudgetState>,
    freed: Condvar,
}

struct BudgetState {
    left: u32,
    /// Whether the reader waits: only then does giving back wake anyone
    /// (a notify is a system call even with no one waiting).
    waiting: bool,
}

/// A share of a [`Budget`], given back when dropped.
struct Permit {
    budget: Arc<Budget>,
    amount: u32,
}

impl Budget {
    fn new(total: u32) -> Self {
        Self {
            state: Mutex::new(BudgetState {
                left: total,
                waiting: false,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_acquire(self: &Arc<Self>, amount: u32) -> Option<Permit> {
        let mut state = self.lock();
        (state.left >= amount).then(|| {
            state.left -= amount;
            Permit {
                budget: self.clone(),
                amount,
            }
        })
    }

    /// Waits until `amount` (at most the total) is free. Only the
    /// connection's reader acquires, so there is at most one waiter.
    fn acquire(self: &Arc<Self>, amount: u32) -> Permit {
        let mut state = self.lock();
        while state.left < amount {
            state.waiting = true;
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.waiting = false;
        state.left -= amount;
        Permit {
            budget: self.clone(),
            amount,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        state.left += self.amount;
        if state.waiting {
            self.budget.freed.notify_one();
        }
    }
}

#[cfg(test)]
#[path = "threaded_loop_tests.rs"]
mod tests;
