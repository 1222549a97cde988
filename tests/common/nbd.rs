//! Test support: an in-memory device, an in-process server on a Unix socket
//! in a temp dir, and a runner for real client tools that fails loudly when a
//! tool is missing.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread::JoinHandle;

use envol::nbd::{Export, Listeners, Server, TransmissionLoop};
use envol::volume::{Backend, BlockDevice, DataKey, Superblock, Volume};

/// The in-memory device every server test exports (every third 4 KiB block
/// "uncached", so reads take both the inline and the worker path).
pub use envol::volume::testing::MemDevice;

/// A fresh volume of `size` bytes and `sector_size`-byte sectors on
/// `backend` (an in-memory or test store), opened with a new data key —
/// no KMS and no superblock on the store, for serving in-process.
pub fn volume_on(backend: impl Backend, size: u64, sector_size: u32) -> Volume {
    let key = DataKey::generate();
    let uuid = uuid::Uuid::new_v4();
    let sb = Superblock::new(
        uuid,
        size,
        sector_size,
        "arn:aws:kms:us-east-1:111122223333:key/test".into(),
        vec![1, 2, 3],
        key.key_check(&uuid),
        0,
    )
    .unwrap();
    Volume::open(backend, &sb, key).unwrap()
}

/// Exports any device (such as a [`volume_on`] volume) as `name`.
pub fn device_export(name: &str, device: Arc<dyn BlockDevice>) -> Export {
    Export {
        name: name.to_string(),
        description: format!("test export {name}"),
        device,
        read_only: false,
    }
}

pub fn export(name: &str, device: Arc<MemDevice>) -> Export {
    Export {
        name: name.to_string(),
        description: format!("test export {name}"),
        device,
        read_only: false,
    }
}

/// The real server, in-process on its own runtime, on a Unix socket in a
/// fresh temp dir. Stopped (gracefully) on drop or by [`TestServer::stop`].
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The TCP listener's bound address (127.0.0.1, a free port).
    pub tcp: std::net::SocketAddr,
    /// `Listeners::uris` for the first export, as the CLI would print them.
    pub uris: Vec<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    pub fn start(exports: Vec<Export>) -> Self {
        Self::start_server(Server::new(exports).unwrap())
    }

    /// Serves plain connections with the given transmission loop.
    pub fn start_on(transmission: TransmissionLoop, exports: Vec<Export>) -> Self {
        Self::start_server(
            Server::new(exports)
                .unwrap()
                .with_transmission_loop(transmission),
        )
    }

    /// Serves an already configured server (TLS, handshake timeout, ...).
    pub fn start_server(server: Server) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let tcp = Some(([127, 0, 0, 1], 0).into());
                let listeners = Listeners::bind(Some(&path), tcp).await?;
                let first = server.exports()[0].name.clone();
                ready_tx
                    .send((listeners.tcp_addr().unwrap(), listeners.uris(&first)))
                    .unwrap();
                server
                    .serve(listeners, async {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        });
        let (tcp, uris) = ready_rx.recv().expect("server failed to bind");
        Self {
            dir,
            socket,
            tcp,
            uris,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `nbd+unix:///NAME?socket=PATH`
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    pub fn connect(&self) -> std::os::unix::net::UnixStream {
        std::os::unix::net::UnixStream::connect(&self.socket).unwrap()
    }

    /// Graceful shutdown; returns what `Server::serve` returned.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// `envol serve` arguments selecting `transmission` for plain connections.
/// (Its exhaustive match makes a new loop a compile error here: add it to
/// [`on_every_transmission_loop!`] too.)
pub fn transmission_args(transmission: TransmissionLoop) -> [&'static str; 2] {
    match transmission {
        TransmissionLoop::Threaded => ["--transmission", "threaded"],
        TransmissionLoop::Async => ["--transmission", "async"],
    }
}

/// Instantiates each named test — a `fn(TransmissionLoop)` in the calling
/// file — once per loop that can serve a plain connection, as
/// `threaded::NAME` and `async_loop::NAME`, so conformance holds for both
/// and a failure names the loop.
#[macro_export]
macro_rules! on_every_transmission_loop {
    ($($test:ident),+ $(,)?) => {
        mod threaded {
            $(
                #[test]
                fn $test() {
                    super::$test(envol::nbd::TransmissionLoop::Threaded)
                }
            )+
        }
        mod async_loop {
            $(
                #[test]
                fn $test() {
                    super::$test(envol::nbd::TransmissionLoop::Async)
                }
            )+
        }
    };
}

/// Inside `impl BlockDevice for W`, where `W` wraps a device as `self.0`:
/// the named blocking methods, forwarded to the wrapped device unchanged,
/// so a test device writes out only the methods it changes.
#[macro_export]
macro_rules! forward_block_device {
    ($($method:ident),+ $(,)?) => {
        $( $crate::forward_block_device!(@one $method); )+
    };
    (@one size) => {
        fn size(&self) -> u64 {
            self.0.size()
        }
    };
    (@one block_sizes) => {
        fn block_sizes(&self) -> envol::volume::BlockSizes {
            self.0.block_sizes()
        }
    };
    (@one read_at) => {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.0.read_at(offset, buf)
        }
    };
    (@one write_at) => {
        fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
            self.0.write_at(offset, data, fua)
        }
    };
    (@one flush) => {
        fn flush(&self) -> std::io::Result<()> {
            self.0.flush()
        }
    };
    (@one trim) => {
        fn trim(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.0.trim(offset, len)
        }
    };
    (@one write_zeroes) => {
        fn write_zeroes(&self, offset: u64, len: u64, may_punch: bool) -> std::io::Result<()> {
            self.0.write_zeroes(offset, len, may_punch)
        }
    };
}

/// Runs a real client tool. A missing tool FAILS the test with the package
/// to install: these tests exist to prove interoperability, so skipping
/// would hide exactly what they are for.
pub fn run_tool(program: &str, args: &[&str]) -> Output {
    let package = match program {
        "nbdinfo" | "nbdcopy" | "nbdsh" | "nbdfuse" => "libnbd-bin",
        "qemu-io" | "qemu-img" | "qemu-nbd" => "qemu-utils",
        _ => "the package providing it",
    };
    let output = match Command::new(program).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed; this test needs it as a real NBD client. \
             Install it with: apt-get install -y {package}"
        ),
        Err(e) => panic!("cannot run `{program}`: {e}"),
    };
    assert!(
        output.status.success(),
        "`{program} {}` failed with {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}
