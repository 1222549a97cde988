//! Shared by the NBD fuzz targets: an in-memory device (as in
//! `tests/common/nbd.rs`), exports, a runtime, and a duplex-pipe driver.

use std::io;
use std::sync::{Arc, OnceLock, RwLock};

use envol::nbd::Export;
use envol::volume::{BlockDevice, BlockSizes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A byte-addressed device in memory.
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
    sizes: BlockSizes,
}

impl MemDevice {
    pub fn new(size: usize, minimum: u32) -> Arc<Self> {
        Arc::new(Self {
            data: RwLock::new(vec![0; size]),
            sizes: BlockSizes {
                minimum,
                preferred: 4096,
                maximum: 32 * 1024 * 1024,
            },
        })
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
        let size = self.data.read().unwrap().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "out of range")),
        }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().unwrap().len() as u64
    }
    fn block_sizes(&self) -> BlockSizes {
        self.sizes
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.read().unwrap()[r]);
        Ok(())
    }
    /// "Cached" but for every third 4 KiB block, so the threaded loop both
    /// answers reads itself and hands some to its workers.
    fn try_read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        if (offset / 4096) % 3 == 2 {
            return Ok(false);
        }
        self.read_at(offset, buf).map(|()| true)
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let r = self.range(offset, data.len() as u64)?;
        self.data.write().unwrap()[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_punch: bool) -> io::Result<()> {
        let r = self.range(offset, len)?;
        self.data.write().unwrap()[r].fill(0);
        Ok(())
    }
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
