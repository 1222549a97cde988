//! The server side of the control socket: a Unix socket only the server's
//! user (and root) may use, one task per connection, one request at a
//! time per connection.
//!
//! Access is checked twice: the socket file is mode 0600 (in a directory
//! of the owner's, see `path.rs`), and every connection's peer uid
//! (`SO_PEERCRED`) must be the server's own or root's — whoever reaches
//! the socket through a more open directory or a passed descriptor is
//! still refused.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::framing::{read_line, send};
use super::handler::{Attacher, Controller};
use super::protocol::{Command, ReplyBody, parse_request};
use super::snapshot_session;
use crate::nbd::UnixEndpoint;

/// A bound control socket; its file goes when it is dropped.
pub struct ControlSocket {
    endpoint: UnixEndpoint,
}

impl ControlSocket {
    /// Binds `path` (its directory must exist), owner-only. A stale socket
    /// from a dead server is replaced; a live one is refused.
    pub async fn bind(path: &Path) -> io::Result<Self> {
        let endpoint = UnixEndpoint::bind(path).await?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { endpoint })
    }

    pub fn path(&self) -> &Path {
        self.endpoint.path()
    }

    /// Answers requests until `shutdown` resolves; requests being handled
    /// then are abandoned (a detach waiting for clients reopens its export).
    pub async fn serve<A: Attacher>(
        self,
        controller: Arc<Controller<A>>,
        shutdown: impl Future<Output = ()>,
    ) {
        let owner = rustix::process::geteuid().as_raw();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.endpoint.accept() => match accepted {
                    Ok(stream) => {
                        connections.spawn(connection(stream, controller.clone(), owner));
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a control connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

/// Whether the peer may use the socket: the server's own user, or root.
fn allowed(stream: &UnixStream, owner: u32) -> Result<(), String> {
    let uid = stream
        .peer_cred()
        .map_err(|e| format!("cannot tell who is connecting: {e}"))?
        .uid();
    if uid == owner || uid == 0 {
        return Ok(());
    }
    Err(format!(
        "permission denied: uid {uid} may not use this control socket (only uid {owner} and root)"
    ))
}

async fn connection<A: Attacher>(stream: UnixStream, controller: Arc<Controller<A>>, owner: u32) {
    let (read_half, mut write_half) = stream.into_split();
    let stream_check = read_half.as_ref();
    if let Err(refusal) = allowed(stream_check, owner) {
        warn!("control connection refused: {refusal}");
        let _ = send(&mut write_half, ReplyBody::error(refusal)).await;
        return;
    }
    let mut reader = BufReader::new(read_half);
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(message) => {
                // Framing is lost: answer and close.
                let _ = send(&mut write_half, ReplyBody::error(message)).await;
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let body = match parse_request(&line) {
            Err(message) => ReplyBody::error(message),
            Ok(Command::SnapshotBegin {
                volume_uuid,
                base,
                all_chunks,
                copy_limit,
            }) => {
                // The connection is the session's from here to its end.
                let begin = snapshot_session::Begin {
                    volume_uuid,
                    base,
                    all_chunks,
                    copy_limit,
                };
                snapshot_session::serve(&controller, begin, &mut reader, &mut write_half).await;
                return;
            }
            Ok(command) => {
                debug!(?command, "control request");
                // Only a detach waits on others (its export's clients), so
                // only a detach is given up with its client (an interrupted
                // `envol detach`: dropping the request reopens the export).
                // Every other request runs to its end, even for a client
                // that closed its sending side right after the request.
                let cancellable = matches!(command, Command::Detach { .. });
                let handling = controller.handle(command);
                if cancellable {
                    tokio::select! {
                        body = handling => body,
                        () = hung_up(&mut reader) => return,
                    }
                } else {
                    handling.await
                }
            }
        };
        if send(&mut write_half, body).await.is_err() {
            return;
        }
    }
}

/// Resolves when the client closes its side (or the connection fails);
/// never if it sends more (the next request waits its turn).
async fn hung_up<R: AsyncBufRead + Unpin>(reader: &mut R) {
    match reader.fill_buf().await {
        Ok([]) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}
