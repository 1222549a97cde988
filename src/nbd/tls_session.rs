//! A TLS session shared by a connection's blocking threads, so that a TLS
//! connection runs on the same low-hand-off design as a plain one
//! (`threaded_loop.rs`): one reader thread decrypting requests, and
//! whichever thread holds the connection's output lock encrypting replies.
//!
//! rustls keeps both directions in one [`ServerConnection`], which cannot
//! be split, so it sits behind a mutex — but no thread ever holds that
//! mutex across a system call: the reader receives ciphertext with the
//! mutex free and takes it only to hand the bytes to rustls and decrypt;
//! a writer takes it only to encrypt a chunk of replies into a buffer of
//! its own, and sends that with the mutex free. So a client that does not
//! read its replies cannot stop the reader, nor the other way round.
//! Records go out in the order rustls sealed them (their sequence numbers)
//! because sealing and sending both happen under the connection's output
//! lock, which every writer holds for a whole batch.
//!
//! Measured against the async loop that served TLS before (tokio-rustls,
//! whose split halves serialize on one lock too, plus a task hand-off per
//! request and per reply): see the README's performance section.

use std::io::{self, IoSlice, Read, Write};
use std::sync::{Mutex, MutexGuard};

use tokio_rustls::rustls::ServerConnection;

/// Ciphertext sealed per turn of the connection's mutex (rustls stops
/// taking plaintext once this much is waiting to be sent): four full
/// records plus their overhead, so a 1 MiB reply takes ~16 turns and the
/// reader gets the mutex between them.
const SEAL_CHUNK: usize = 64 * 1024 + 4 * 64;

/// Ciphertext read from the socket per `read` call (rustls then takes it
/// a record at a time).
const RECEIVE_BUFFER: usize = 256 * 1024;

/// The TLS state of one connection in transmission.
pub(crate) struct TlsSession {
    conn: Mutex<ServerConnection>,
    /// The writers' ciphertext buffer, kept between calls so a reply does
    /// not allocate one (only the holder of the output lock takes it).
    sealed: Mutex<Vec<u8>>,
}

/// The reader thread's own ciphertext buffer: what it received and rustls
/// has not taken yet.
pub(crate) struct Received {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Received {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0; RECEIVE_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// Whether ciphertext received from the socket still waits to be
    /// decrypted (more of the client's requests, or of one).
    pub(crate) fn has_ciphertext(&self) -> bool {
        self.start < self.end
    }
}

impl TlsSession {
    /// Takes over a session whose handshake is done.
    pub(crate) fn new(mut conn: ServerConnection) -> Self {
        conn.set_buffer_limit(Some(SEAL_CHUNK));
        Self {
            conn: Mutex::new(conn),
            sealed: Mutex::new(Vec::with_capacity(SEAL_CHUNK + 1024)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads decrypted bytes into `buf`, receiving from `socket` as needed
    /// (the mutex free while it waits). `Ok(0)`: the client closed, with
    /// close_notify or without (at a request boundary the reader treats
    /// both as the client leaving; mid-request as a short read). Errors of
    /// `socket` (its read timeout included) come back as they are, before
    /// anything was consumed, so a timed-out read may simply be retried.
    pub(crate) fn read(
        &self,
        mut socket: impl Read,
        received: &mut Received,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if received.start < received.end {
                let mut conn = self.lock();
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                let mut pending = &received.buf[received.start..received.end];
                received.start += conn.read_tls(&mut pending)?;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                continue;
            }
            {
                // Plaintext left from the handshake or the last records.
                let mut conn = self.lock();
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
            }
            let n = socket.read(&mut received.buf)?;
            if n == 0 {
                return Ok(0);
            }
            received.start = 0;
            received.end = n;
        }
    }

    /// Encrypts `slices` and writes them to `socket`, a chunk at a time.
    /// The caller must hold the connection's output lock for the whole
    /// call (see the module comment: that keeps records in order).
    pub(crate) fn write_all(
        &self,
        mut socket: impl Write,
        mut slices: &mut [IoSlice<'_>],
    ) -> io::Result<()> {
        IoSlice::advance_slices(&mut slices, 0);
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            sealed.clear();
            let taken = {
                let mut conn = self.lock();
                let taken = if slices.is_empty() {
                    0
                } else {
                    conn.writer().write_vectored(slices)?
                };
                while conn.wants_write() {
                    conn.write_tls(&mut *sealed)?;
                }
                taken
            };
            IoSlice::advance_slices(&mut slices, taken);
            if !sealed.is_empty() {
                socket.write_all(&sealed)?;
            } else if taken == 0 && !slices.is_empty() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            if slices.is_empty() {
                return Ok(());
            }
        }
    }

    /// Sends close_notify (anything still sealed goes first). The caller
    /// must hold the output lock, or be the last writer.
    pub(crate) fn close(&self, socket: impl Write) -> io::Result<()> {
        self.lock().send_close_notify();
        self.write_all(socket, &mut [])
    }
}
