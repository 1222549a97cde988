//! `envol key list --kms-data`'s usage count (`kms::usage::key_usage`) on
//! a 64 MiB audit log (the default `--audit-max-size`; about 175,000
//! request lines over 50 keys and 40 days): reading the whole log (no
//! index, as on the first query) against a query with the index
//! (`audit-usage.json`) after 100 new lines (the time includes writing them).
//!
//! What it is for: the README says a query reads only what was written
//! since the last one; this shows what that saves.
//!
//! `cargo bench --bench audit_usage`.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use envol::kms::datadir::DataDir;
use envol::kms::usage::{USAGE_INDEX_FILE, key_usage};
use rand::{Rng, SeedableRng, rngs::StdRng};

const LOG_BYTES: u64 = 64 << 20;
const DAY_MS: i64 = 86_400_000;
const OPERATIONS: [&str; 5] = [
    "Decrypt",
    "Encrypt",
    "GenerateDataKeyWithoutPlaintext",
    "DescribeKey",
    "ReEncrypt",
];

fn line(rng: &mut StdRng, n: u64, now_ms: i64) -> String {
    let ms = now_ms - rng.gen_range(0..40 * DAY_MS);
    let time = chrono::DateTime::from_timestamp_millis(ms)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let key = rng.gen_range(0..50);
    let op = OPERATIONS[rng.gen_range(0..OPERATIONS.len())];
    format!(
        r#"{{"time":"{time}","request_id":"{n:032x}","principal":"arn:aws:iam::111122223333:user/host-a","source":"10.0.0.1:51234","operation":"{op}","key":"arn:aws:kms:us-east-1:111122223333:key/{key:08}-0000-0000-0000-000000000000","encryption_context":{{"envol:volume":"4f0c0000-0000-0000-0000-000000000000"}},"outcome":"success","error":null}}"#
    )
}

fn append(path: &Path, rng: &mut StdRng, from: u64, lines: u64, now_ms: i64) -> u64 {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("audit log");
    let mut w = BufWriter::new(file);
    for n in from..from + lines {
        writeln!(w, "{}", line(rng, n, now_ms)).expect("write");
    }
    w.flush().expect("flush");
    from + lines
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    let log = data.audit_log();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut rng = StdRng::seed_from_u64(16);
    let mut n = 0;
    while std::fs::metadata(&log).map_or(0, |m| m.len()) < LOG_BYTES {
        n = append(&log, &mut rng, n, 10_000, now_ms);
    }
    let index = dir.path().join(USAGE_INDEX_FILE);

    let mut g = c.benchmark_group("audit_usage");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(LOG_BYTES));
    g.bench_function("whole_log_64MiB", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&index);
            key_usage(&data, now_ms).expect("usage")
        })
    });
    g.throughput(Throughput::Elements(1));
    key_usage(&data, now_ms).expect("usage");
    g.bench_function("indexed_after_100_lines", |b| {
        b.iter(|| {
            n = append(&log, &mut rng, n, 100, now_ms);
            key_usage(&data, now_ms).expect("usage")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
