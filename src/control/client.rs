//! The command line's side of the control socket: send one request, wait
//! for its reply (as long as it takes: a detach waits for clients).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use thiserror::Error;

use super::protocol::{Command, PROTOCOL_VERSION, Reply, ReplyBody, Request};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "no envol server at {0}: the control socket does not exist (is `envol serve` running? name its socket with --control PATH)"
    )]
    NoSocket(String),
    #[error("no envol server at {0}: nobody answers on that control socket (a stale socket)")]
    NobodyListening(String),
    #[error("{0}: permission denied (a control socket is for its server's user only)")]
    PermissionDenied(String),
    #[error("control socket {path}: {error}")]
    Io { path: String, error: io::Error },
    #[error("control socket {0}: the server closed the connection without answering")]
    NoReply(String),
    #[error("control socket {path}: unreadable reply: {error}")]
    BadReply { path: String, error: String },
    /// The server answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// Sends `command` to the server at `path`; its reply, or the server's
/// error as [`ClientError::Refused`].
pub fn call(path: &Path, command: Command) -> Result<ReplyBody, ClientError> {
    let stream = connect(path)?;
    let mut reader = BufReader::new(&stream);
    request(path, &mut (&stream), &mut reader, command)
}

/// Connects to the control socket at `path`.
pub(super) fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    let shown = path.display().to_string();
    UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket(shown),
        io::ErrorKind::ConnectionRefused => ClientError::NobodyListening(shown),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(shown),
        _ => ClientError::Io {
            path: shown,
            error: e,
        },
    })
}

/// Writes `command` as one line and reads the reply line.
pub(super) fn request<W: Write, R: BufRead>(
    path: &Path,
    writer: &mut W,
    reader: &mut R,
    command: Command,
) -> Result<ReplyBody, ClientError> {
    let shown = path.display().to_string();
    let io_error = |error: io::Error| ClientError::Io {
        path: shown.clone(),
        error,
    };
    let request = Request {
        version: PROTOCOL_VERSION,
        command,
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| io_error(io::Error::other(e)))?;
    line.push(b'\n');
    writer.write_all(&line).map_err(io_error)?;
    writer.flush().map_err(io_error)?;
    let mut reply = Vec::new();
    reader.read_until(b'\n', &mut reply).map_err(io_error)?;
    if reply.is_empty() {
        return Err(ClientError::NoReply(shown));
    }
    let reply: Reply = serde_json::from_slice(&reply).map_err(|e| ClientError::BadReply {
        path: shown.clone(),
        error: e.to_string(),
    })?;
    match reply.body {
        ReplyBody::Error { message } => Err(ClientError::Refused(message)),
        body => Ok(body),
    }
}
