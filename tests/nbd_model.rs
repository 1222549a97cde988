//! Model-based test (issue 7 §2): random sequences of READ, WRITE (± FUA),
//! TRIM, WRITE_ZEROES (± NO_HOLE) and FLUSH at arbitrary offsets and
//! lengths — sub-sector, sector-crossing, large — issued concurrently over
//! four NBD connections to a real `envol serve`, against a 512-byte-sector
//! and a 4096-byte-sector volume, checked against an in-memory model of the
//! plaintext device.
//!
//! So that the model stays deterministic under concurrency, connection `c`
//! owns the byte region `[bound[c], bound[c+1])`. The region boundaries are
//! deliberately not sector-aligned, so neighbouring connections share the
//! boundary sectors, and the first `SHARED` bytes are a shared region where
//! connection `c` owns every 4th 37-byte chunk: many connections
//! read-modify-write the same sectors at once, each changing only its own
//! bytes — the range-locked RMW must lose none of them. Every read is
//! compared with the model as it is answered; at the end of each case the
//! whole device is read back and compared.
//!
//! The same cases (fewer of them) run against volumes on an asynchronous
//! store too (`volume::testing::LatencyBackend`: every read, write and
//! flush completes 1 ms late on a completion thread), served in-process:
//! the started-request path, with its range locks held until the store
//! completes, must match the model as the blocking path does.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use common::nbd::{TestServer, device_export, transmission_args, volume_on};
use common::raw::*;
use common::volume::{ADMIN, Fixture, MIB};
use envol::nbd::{Server, TransmissionLoop};
use envol::volume::testing::LatencyBackend;
use envol::volume::{DATA_OFFSET, MemBackend};

const SIZE: usize = 2 * MIB as usize;
const CONNS: usize = 4;
const SHARED: usize = 16 * 1024;
const CHUNK: usize = 37;
const CASES: u32 = 32;
const FLAG_NO_HOLE: u16 = 1 << 1;

/// The region of connection `c`; boundaries 777 bytes past a sector edge.
fn region(c: usize) -> (usize, usize) {
    let step = (SIZE - SHARED) / CONNS;
    let bound = |i: usize| match i {
        0 => SHARED,
        i if i == CONNS => SIZE,
        i => SHARED + i * step + 777,
    };
    (bound(c), bound(c + 1))
}

#[derive(Debug, Clone)]
enum Op {
    Read {
        at: u32,
        len: u32,
    },
    Write {
        at: u32,
        len: u32,
        fill: u8,
        fua: bool,
    },
    Trim {
        at: u32,
        len: u32,
        fua: bool,
    },
    Zeroes {
        at: u32,
        len: u32,
        no_hole: bool,
        fua: bool,
    },
    Flush,
    /// Write `len` bytes from byte `at` of the connection's `chunk`-th own
    /// chunk of the shared region.
    SharedWrite {
        chunk: u16,
        at: u8,
        len: u8,
        fill: u8,
    },
    SharedRead {
        chunk: u16,
    },
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..16, 1u32..1100, 1u32..9000, 1u32..150_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u32>(), len()).prop_map(|(at, len)| Op::Read { at, len }),
        4 => (any::<u32>(), len(), any::<u8>(), any::<bool>())
            .prop_map(|(at, len, fill, fua)| Op::Write { at, len, fill, fua }),
        1 => (any::<u32>(), len(), any::<bool>()).prop_map(|(at, len, fua)| Op::Trim { at, len, fua }),
        1 => (any::<u32>(), len(), any::<bool>(), any::<bool>())
            .prop_map(|(at, len, no_hole, fua)| Op::Zeroes { at, len, no_hole, fua }),
        1 => Just(Op::Flush),
        3 => (any::<u16>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(chunk, at, len, fill)| Op::SharedWrite { chunk, at, len, fill }),
        1 => any::<u16>().prop_map(|chunk| Op::SharedRead { chunk }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    seed: u8,
    conns: Vec<Vec<Op>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u8>(),
        proptest::collection::vec(proptest::collection::vec(op(), 1..30), CONNS),
    )
        .prop_map(|(seed, conns)| Case { seed, conns })
}

struct Client {
    raw: Raw,
    cookie: u64,
}

impl Client {
    fn attach(socket: &Path, export: &str) -> Client {
        let mut raw = Raw::connect(UnixStream::connect(socket).unwrap(), 0b11);
        raw.go(export, &[]);
        Client { raw, cookie: 0 }
    }

    /// One request, its reply checked for success; READ data returned.
    fn call(
        &mut self,
        kind: u16,
        flags: u16,
        off: usize,
        len: usize,
        payload: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.cookie += 1;
        let cookie = self.cookie;
        self.raw
            .request(kind, flags, cookie, off as u64, len as u32, payload);
        match self.raw.read_reply() {
            Reply::Simple {
                cookie: c,
                error: 0,
            } if c == cookie => {}
            other => {
                return Err(format!(
                    "command {kind} flags {flags:#x} at {off}+{len}: reply {other:?}"
                ));
            }
        }
        Ok(if kind == CMD_READ {
            self.raw.read_data(len)
        } else {
            Vec::new()
        })
    }
}

fn pattern(len: usize, fill: u8) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add((i / 7) as u8).wrapping_mul(13) ^ (i as u8))
        .collect()
}

/// Start and end of connection `c`'s `k`-th own chunk of the shared region.
fn shared_chunk(c: usize, k: u16) -> (usize, usize) {
    let own = SHARED.div_ceil(CHUNK).div_ceil(CONNS);
    let index = (usize::from(k) % own) * CONNS + c;
    let start = (index * CHUNK).min(SHARED);
    (start, (start + CHUNK).min(SHARED))
}

/// Runs connection `c`'s operations; returns its view of the device (only
/// its own bytes are meaningful).
fn run_connection(
    socket: &Path,
    export: &str,
    c: usize,
    ops: &[Op],
    mut model: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut cl = Client::attach(socket, export);
    let (lo, hi) = region(c);
    let span = hi - lo;
    let clip = |at: u32, len: u32| {
        let off = lo + at as usize % span;
        (off, (len as usize).min(hi - off))
    };
    let fua = |f: bool| if f { FLAG_FUA } else { 0 };
    for (i, op) in ops.iter().enumerate() {
        let ctx = |e: String| format!("connection {c} op {i} {op:?}: {e}");
        match *op {
            Op::Read { at, len } => {
                let (off, len) = clip(at, len);
                let got = cl.call(CMD_READ, 0, off, len, &[]).map_err(ctx)?;
                if got != model[off..off + len] {
                    let first = (0..len).find(|&j| got[j] != model[off + j]).unwrap_or(0);
                    return Err(ctx(format!(
                        "read {off}+{len} differs from the model first at byte {} (got {:#04x}, want {:#04x})",
                        off + first,
                        got[first],
                        model[off + first]
                    )));
                }
            }
            Op::Write {
                at,
                len,
                fill,
                fua: f,
            } => {
                let (off, len) = clip(at, len);
                let data = pattern(len, fill);
                cl.call(CMD_WRITE, fua(f), off, len, &data).map_err(ctx)?;
                model[off..off + len].copy_from_slice(&data);
            }
            Op::Trim { at, len, fua: f } => {
                let (off, len) = clip(at, len);
                cl.call(CMD_TRIM, fua(f), off, len, &[]).map_err(ctx)?;
                model[off..off + len].fill(0);
            }
            Op::Zeroes {
                at,
                len,
                no_hole,
                fua: f,
            } => {
                let (off, len) = clip(at, len);
                let flags = fua(f) | if no_hole { FLAG_NO_HOLE } else { 0 };
                cl.call(CMD_WRITE_ZEROES, flags, off, len, &[])
                    .map_err(ctx)?;
                model[off..off + len].fill(0);
            }
            Op::Flush => {
                cl.call(CMD_FLUSH, 0, 0, 0, &[]).map_err(ctx)?;
            }
            Op::SharedWrite {
                chunk,
                at,
                len,
                fill,
            } => {
                let (start, end) = shared_chunk(c, chunk);
                if start == end {
                    continue;
                }
                let off = start + usize::from(at) % (end - start);
                let len = (usize::from(len) % CHUNK + 1).min(end - off);
                let data = pattern(len, fill);
                cl.call(CMD_WRITE, 0, off, len, &data).map_err(ctx)?;
                model[off..off + len].copy_from_slice(&data);
            }
            Op::SharedRead { chunk } => {
                let (start, end) = shared_chunk(c, chunk);
                let got = cl.call(CMD_READ, 0, start, end - start, &[]).map_err(ctx)?;
                if got != model[start..end] {
                    return Err(ctx(format!(
                        "shared chunk {start}..{end} differs from the model"
                    )));
                }
            }
        }
    }
    // Replies to everything were read: DISC ends the connection cleanly.
    cl.raw.request(CMD_DISC, 0, 0, 0, 0, &[]);
    Ok(model)
}

fn run_case(socket: &Path, export: &str, case: &Case) -> Result<(), TestCaseError> {
    // A known starting point: the whole device written with this case's pattern.
    let mut model = pattern(SIZE, case.seed);
    let mut setup = Client::attach(socket, export);
    setup
        .call(CMD_WRITE, 0, 0, SIZE, &model)
        .map_err(TestCaseError::fail)?;

    let views: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = case
            .conns
            .iter()
            .enumerate()
            .map(|(c, ops)| {
                let start = model.clone();
                s.spawn(move || run_connection(socket, export, c, ops, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("connection thread panicked".into()))
            })
            .collect()
    });
    for (c, view) in views.into_iter().enumerate() {
        let view = view.map_err(TestCaseError::fail)?;
        let (lo, hi) = region(c);
        model[lo..hi].copy_from_slice(&view[lo..hi]);
        for k in 0..SHARED.div_ceil(CHUNK) {
            if k % CONNS == c {
                let (start, end) = (k * CHUNK, ((k + 1) * CHUNK).min(SHARED));
                model[start..end].copy_from_slice(&view[start..end]);
            }
        }
    }
    setup
        .call(CMD_FLUSH, 0, 0, 0, &[])
        .map_err(TestCaseError::fail)?;
    let got = setup
        .call(CMD_READ, 0, 0, SIZE, &[])
        .map_err(TestCaseError::fail)?;
    if let Some(i) = (0..SIZE).find(|&i| got[i] != model[i]) {
        return Err(TestCaseError::fail(format!(
            "after the case the device differs from the model first at byte {i} (got {:#04x}, want {:#04x})",
            got[i], model[i]
        )));
    }
    Ok(())
}

fn concurrent_random_operations_match_the_model(transmission: TransmissionLoop) {
    let fx = Fixture::new();
    let v512 = fx.create_volume("model512.vol", SIZE as u64, 512);
    let v4k = fx.create_volume("model4k.vol", SIZE as u64, 4096);
    let server = fx.serve_many(
        ADMIN,
        &[(&v512, None), (&v4k, None)],
        &transmission_args(transmission),
    );
    let t = std::time::Instant::now();
    for vol in [&v512, &v4k] {
        let config = Config {
            cases: CASES,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..Config::default()
        };
        // Deterministic: the same cases every run.
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let export = vol.export();
        let result = runner.run(&case(), |c| run_case(&server.socket, &export, &c));
        if let Err(e) = result {
            panic!(
                "{}-byte sectors: {e}\nserver stderr:\n{}",
                vol.sector_size,
                server.stderr()
            );
        }
    }
    eprintln!(
        "{} cases x {CONNS} connections on 512- and 4096-byte sectors match the model ({transmission:?} loop, {:?})",
        CASES,
        t.elapsed()
    );
    server.stop();
}

/// Cases run against the asynchronous store (each request waits out the
/// store's latency, so fewer than on files).
const ASYNC_CASES: u32 = 12;

fn asynchronous_store_matches_the_model(transmission: TransmissionLoop) {
    let exports = [512u32, 4096].map(|sector_size| {
        let store = LatencyBackend::new(
            MemBackend::new(DATA_OFFSET as usize + SIZE),
            std::time::Duration::from_millis(1),
        );
        let volume = volume_on(store, SIZE as u64, sector_size);
        device_export(
            &format!("latency{sector_size}"),
            std::sync::Arc::new(volume),
        )
    });
    let server = TestServer::start_server(
        Server::new(exports.to_vec())
            .unwrap()
            .with_transmission_loop(transmission),
    );
    let t = std::time::Instant::now();
    for export in ["latency512", "latency4096"] {
        let config = Config {
            cases: ASYNC_CASES,
            failure_persistence: None,
            max_shrink_iters: 50,
            ..Config::default()
        };
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(e) = runner.run(&case(), |c| run_case(&server.socket, export, &c)) {
            panic!("{export}: {e}");
        }
    }
    eprintln!(
        "{ASYNC_CASES} cases x {CONNS} connections on an asynchronous store match the model ({transmission:?} loop, {:?})",
        t.elapsed()
    );
    server.stop().unwrap();
}

// On both loops a plain connection can get (`threaded::*`, `async_loop::*`),
// chosen with `envol serve --transmission`.
crate::on_every_transmission_loop! {
    concurrent_random_operations_match_the_model,
    asynchronous_store_matches_the_model,
}
