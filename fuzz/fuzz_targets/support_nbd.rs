//! Shared by the NBD fuzz targets: the in-memory device (the one
//! `tests/common/nbd.rs` uses), exports, a runtime, and a duplex-pipe driver.

use std::sync::{Arc, OnceLock};

use envol::nbd::Export;
use envol::volume::BlockSizes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The in-memory device the server tests export too (every third 4 KiB
/// block "uncached", so the threaded loop both answers reads itself and
/// hands some to its workers).
pub use envol::volume::testing::MemDevice;

/// A device of `size` bytes whose smallest request granularity is `minimum`.
pub fn device(size: usize, minimum: u32) -> Arc<MemDevice> {
    MemDevice::with_sizes(
        size,
        BlockSizes {
            minimum,
            ..MemDevice::DEFAULT_SIZES
        },
    )
}

pub fn export(name: &str, device: Arc<MemDevice>, read_only: bool) -> Export {
    Export {
        name: name.to_string(),
        description: format!("fuzz export {name}"),
        device,
        read_only,
    }
}

/// One current-thread runtime per process (device calls still go to its
/// blocking pool).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Plays `input` as the client over a duplex pipe (then closes the
/// client's sending side) while `server` runs on the other end; returns
/// the server's result and everything it sent.
pub async fn drive<F, Fut, T>(input: &[u8], server: F) -> (T, Vec<u8>)
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (client, server_end) = tokio::io::duplex(256 * 1024);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let send = async {
        // The server may stop reading early (hard disconnect): ignore that.
        let _ = to_server.write_all(input).await;
        let _ = to_server.shutdown().await;
        drop(to_server);
    };
    let receive = async {
        let mut out = Vec::new();
        let _ = from_server.read_to_end(&mut out).await;
        out
    };
    let (result, (), out) = tokio::join!(server(server_end), send, receive);
    (result, out)
}

/// Plays `input` as the client over a Unix socket pair (then shuts the
/// client's sending side) while `server` runs on the other end on this
/// thread; returns the server's result and everything it sent.
#[allow(dead_code)] // nbd_requests only; nbd_handshake shares this file
pub fn drive_blocking<T>(
    input: &[u8],
    server: impl FnOnce(std::os::unix::net::UnixStream) -> T,
) -> (T, Vec<u8>) {
    use std::io::{Read, Write};
    let (client, server_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut to_server = client.try_clone().unwrap();
    let input = input.to_vec();
    let sender = std::thread::spawn(move || {
        // The server may stop reading early (hard disconnect): ignore that.
        let _ = to_server.write_all(&input);
        let _ = to_server.shutdown(std::net::Shutdown::Write);
    });
    let receiver = std::thread::spawn(move || {
        let mut from_server = client;
        let mut out = Vec::new();
        let _ = from_server.read_to_end(&mut out);
        out
    });
    let result = server(server_end);
    let _ = sender.join();
    (result, receiver.join().unwrap())
}
