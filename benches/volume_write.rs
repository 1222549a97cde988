//! The volume's write path per request, in memory (no storage latency to
//! hide small costs): `Volume::write_at` of 4 KiB and 512 B aligned writes
//! and 64 KiB writes at random offsets of a 256 MiB volume, and `trim` of
//! 4 KiB — encryption, range lock, buffer pool, change tracking, the copy
//! into the store.
//!
//! What it is for: the change map (issue 14) costs a flag load and an
//! atomic OR per chunk word at issue and at completion of every write; run
//! this bench on the commit before it with `-- --save-baseline before`
//! and after it with `-- --baseline before` (same target directory) to see
//! that cost (README: "Change tracking").
//!
//! `cargo bench --bench volume_write`. Uses only the volume's public
//! interface, so the same file runs on older commits.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use envol::volume::{BlockDevice, DATA_OFFSET, DataKey, MemBackend, Superblock, Volume};
use rand::{Rng, SeedableRng, rngs::StdRng};

const SIZE: u64 = 256 << 20;

fn volume() -> Volume {
    let key = DataKey::generate();
    let uuid = uuid::Uuid::new_v4();
    let sb = Superblock::new(
        uuid,
        SIZE,
        4096,
        "arn:aws:kms:us-east-1:111122223333:key/bench".into(),
        vec![1, 2, 3],
        key.key_check(&uuid),
        0,
    )
    .expect("superblock");
    let backend = MemBackend::new((DATA_OFFSET + SIZE) as usize);
    Volume::open(backend, &sb, key).expect("volume")
}

fn writes(c: &mut Criterion) {
    let v = volume();
    let mut g = c.benchmark_group("volume_write");
    for len in [512usize, 4096, 65536] {
        let data = vec![0x5au8; len];
        let mut rng = StdRng::seed_from_u64(len as u64);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("write_at", len), &len, |b, &len| {
            b.iter(|| {
                let slots = (SIZE - len as u64) / len as u64;
                let offset = rng.gen_range(0..slots) * len as u64;
                v.write_at(black_box(offset), black_box(&data), false)
                    .expect("write");
            })
        });
    }
    let mut rng = StdRng::seed_from_u64(7);
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("trim/4096", |b| {
        b.iter(|| {
            let offset = rng.gen_range(0..SIZE / 4096) * 4096;
            v.trim(black_box(offset), 4096).expect("trim");
        })
    });
    g.finish();
}

criterion_group!(benches, writes);
criterion_main!(benches);
