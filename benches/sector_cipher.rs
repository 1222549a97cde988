//! Sector-cipher throughput: envol's XTS engine (on `aes` 0.9 and on `aes`
//! 0.8), the `xts-mode` reference, and OpenSSL's aes-256-xts, over the same
//! buffers, 512- and 4096-byte sectors, 256 KiB and 1 MiB per call.
//!
//! `cargo bench --bench sector_cipher` prints GB/s (criterion's "thrpt",
//! decimal units with `-- --noplot`; see `scripts/bench.sh` for the volume
//! benchmark). OpenSSL is driven the way dm-crypt and qemu drive a sector
//! cipher: one context keyed once, the IV (the plain64 tweak) reset per sector.
//!
//! `XtsEngineAes08` and `XtsModeCipher` exist only with envol's `testing`
//! feature, which the dev-dependency on envol itself turns on for benches.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use envol::volume::{DataKey, SectorCipher, XtsEngine, XtsEngineAes08, XtsModeCipher};
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

/// OpenSSL's EVP aes-256-xts as a `SectorCipher`. The context is not `Sync`,
/// so the bench builds one per direction and drives it through `&mut`.
struct OpenSsl {
    key: Vec<u8>,
    sector_size: usize,
}

impl OpenSsl {
    fn ctx(&self, encrypt: bool) -> CipherCtx {
        let mut ctx = CipherCtx::new().unwrap();
        if encrypt {
            ctx.encrypt_init(Some(Cipher::aes_256_xts()), Some(&self.key), None)
                .unwrap();
        } else {
            ctx.decrypt_init(Some(Cipher::aes_256_xts()), Some(&self.key), None)
                .unwrap();
        }
        ctx
    }

    fn run(&self, ctx: &mut CipherCtx, encrypt: bool, first: u64, buf: &mut [u8]) {
        for (i, sector) in buf.chunks_exact_mut(self.sector_size).enumerate() {
            let iv = (u128::from(first) + i as u128).to_le_bytes();
            if encrypt {
                ctx.encrypt_init(None, None, Some(&iv)).unwrap();
            } else {
                ctx.decrypt_init(None, None, Some(&iv)).unwrap();
            }
            let n = sector.len();
            ctx.cipher_update_inplace(sector, n).unwrap();
        }
    }
}

const BUFS: [usize; 2] = [256 << 10, 1 << 20];
const SECTORS: [usize; 2] = [512, 4096];

fn bench(c: &mut Criterion) {
    // Raw bytes, because OpenSSL needs them and `DataKey` keeps its own
    // private (the bench is outside the crate).
    let raw: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    let key = DataKey::from_slice(&raw).expect("random halves differ");

    for direction in ["encrypt", "decrypt"] {
        let encrypt = direction == "encrypt";
        for ss in SECTORS {
            let mut group = c.benchmark_group(format!("{direction}/sector_{ss}"));
            let engine = XtsEngine::new(&key, ss).unwrap();
            let engine08 = XtsEngineAes08::new(&key, ss).unwrap();
            let reference = XtsModeCipher::new(&key, ss).unwrap();
            let openssl = OpenSsl {
                key: raw.clone(),
                sector_size: ss,
            };
            let mut ctx = openssl.ctx(encrypt);

            for len in BUFS {
                let mut buf: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                // Same bytes from every contender, or the race means nothing.
                let mut a = buf.clone();
                let mut b = buf.clone();
                engine.encrypt_sectors(12345, &mut a);
                let mut enc_ctx = openssl.ctx(true);
                openssl.run(&mut enc_ctx, true, 12345, &mut b);
                assert_eq!(a, b, "OpenSSL and envol disagree");

                group.throughput(Throughput::BytesDecimal(len as u64));
                let mut run = |name: &str, f: &mut dyn FnMut(&mut [u8])| {
                    group.bench_function(BenchmarkId::new(name, len), |bench| {
                        bench.iter(|| f(&mut buf))
                    });
                };
                let sc = |c: &dyn SectorCipher, buf: &mut [u8]| {
                    if encrypt {
                        c.encrypt_sectors(1 << 20, buf)
                    } else {
                        c.decrypt_sectors(1 << 20, buf)
                    }
                };
                run("envol-aes0.9", &mut |buf| sc(&engine, buf));
                run("envol-aes0.8", &mut |buf| sc(&engine08, buf));
                run("openssl", &mut |buf| {
                    openssl.run(&mut ctx, encrypt, 1 << 20, buf)
                });
                run("xts-mode", &mut |buf| sc(&reference, buf));
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
