//! Where a server's control socket is when `--control` does not say.
//!
//! - With an NBD Unix socket (`--socket PATH`): `PATH.control`, beside it
//!   (the NBD socket's directory is already where its owner keeps the
//!   plaintext volume's door).
//! - Otherwise, per TCP address: `RUNTIME/envol/nbd-ADDR-PORT.control`,
//!   RUNTIME being `$XDG_RUNTIME_DIR`, or `/run` for root; for anyone else
//!   without it, `/tmp/envol-UID/`. The directory is created 0700 and must
//!   be the user's own and closed to others.
//!
//! So `envol serve VOLUME` (TCP 127.0.0.1:10809, the default) and
//! `envol attach`/`detach`/`status` without `--control` meet at
//! `RUNTIME/envol/nbd-127.0.0.1-10809.control`.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Beside an NBD Unix socket.
pub fn beside_socket(nbd_socket: &Path) -> PathBuf {
    let mut path = nbd_socket.as_os_str().to_owned();
    path.push(".control");
    PathBuf::from(path)
}

/// For a server listening on TCP `addr` only; creates the runtime
/// directory if need be.
pub fn for_tcp(addr: SocketAddr) -> io::Result<PathBuf> {
    for_tcp_under(addr, std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
}

/// [`for_tcp`] with `XDG_RUNTIME_DIR` given.
fn for_tcp_under(addr: SocketAddr, xdg_runtime_dir: Option<PathBuf>) -> io::Result<PathBuf> {
    let ip = addr.ip().to_string().replace(':', "_");
    Ok(runtime_dir(xdg_runtime_dir)?.join(format!("nbd-{ip}-{}.control", addr.port())))
}

/// The user's own private directory for control sockets.
fn runtime_dir(xdg_runtime_dir: Option<PathBuf>) -> io::Result<PathBuf> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = match xdg_runtime_dir {
        Some(base) if base.is_absolute() => base.join("envol"),
        _ if uid == 0 => PathBuf::from("/run/envol"),
        _ => PathBuf::from(format!("/tmp/envol-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", dir.display()),
            ));
        }
    }
    // Not followed if a symlink: someone else's directory must not pass.
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: not a directory of uid {uid} closed to others (mode 0700); give --control PATH",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
