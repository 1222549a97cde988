//! What the NBD request path pays for its per-export metrics: counting a
//! request (request, bytes, in flight) at admission and recording its
//! latency when the reply is done, against what it paid before the
//! metrics (bytes and in-flight only, no clock reads), and against
//! nothing. A scrape's reading of all counters is measured too (it runs
//! once per scrape, not per request).
//!
//! `cargo bench --bench request_metrics`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use envol::nbd::benchmarking::RequestRecording;
use envol::nbd::protocol::{Command, Request};

/// The counters as they were before the metrics (`export_stats.rs` at the
/// commit before them): bytes by READ/WRITE, in flight, an `Arc` clone
/// per request for the in-flight token.
#[derive(Default)]
struct Before {
    in_flight: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

struct BeforeToken(Arc<Before>);

impl Drop for BeforeToken {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Before {
    fn request(self: &Arc<Self>, request: &Request) -> BeforeToken {
        let bytes = u64::from(request.length);
        match request.command() {
            Command::Read => self.bytes_read.fetch_add(bytes, Ordering::Relaxed),
            Command::Write => self.bytes_written.fetch_add(bytes, Ordering::Relaxed),
            _ => 0,
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        BeforeToken(self.clone())
    }
}

fn write_4k() -> Request {
    let mut header = [0u8; 28];
    header[0..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
    header[6..8].copy_from_slice(&1u16.to_be_bytes()); // NBD_CMD_WRITE
    header[16..24].copy_from_slice(&(1u64 << 20).to_be_bytes());
    header[24..28].copy_from_slice(&4096u32.to_be_bytes());
    Request::parse(&header).expect("a valid header")
}

fn bench(c: &mut Criterion) {
    let request = write_4k();
    let mut group = c.benchmark_group("per_request");
    let before = Arc::new(Before::default());
    group.bench_function("before_metrics", |b| {
        b.iter(|| drop(before.request(black_box(&request))))
    });
    let now = RequestRecording::default();
    group.bench_function("with_metrics", |b| {
        b.iter(|| now.admitted_and_answered(black_box(&request)))
    });
    group.bench_function("error_reply", |b| b.iter(|| now.failed(black_box(5))));
    group.finish();
    c.bench_function("scrape_read_one_export", |b| {
        b.iter(|| black_box(now.read()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
