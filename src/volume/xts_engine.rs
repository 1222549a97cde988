//! The fast `aes-xts-plain64` engine: the sector cipher `Volume` uses.
//!
//! Same bytes as the reference `xts_mode_cipher::XtsModeCipher` (the
//! property tests below prove it), but shaped for throughput:
//!
//! - **Many blocks per AES call.** `xts-mode` hands the AES backend one block
//!   at a time, so the CPU's pipelined AES units (8 blocks in flight with
//!   AES-NI, 4 per instruction with VAES-512) sit mostly idle. Here a chunk of
//!   up to [`CHUNK_BLOCKS`] blocks (4 KiB: one 4096-byte sector, or eight
//!   512-byte sectors) goes to the backend at once, which is ≥ 64 blocks, the
//!   batch the VAES-512 backend needs to run at full speed.
//! - **Cheap tweaks.** Tweak *j* of a sector is `E_k2(n)·x^j` in GF(2^128).
//!   Doubling block by block is one long dependency chain; instead the first
//!   [`LANES`] tweaks are doubled serially and every further one is
//!   `T[j] = T[j-8]·x^8`, eight independent chains the CPU overlaps. The
//!   sector-number encryptions of a chunk's sectors also go to AES in one call.
//! - **XOR passes over `u128` lanes**, which the compiler turns into vector
//!   loads and XORs; tweaks and data of one chunk stay in L1.
//! - **Encrypt into another buffer** in the same passes (`encrypt_sectors_to`):
//!   a write never copies the plaintext first.
//!
//! The AES implementation is a type parameter: [`XtsEngine`] (the default)
//! uses the `aes` 0.9 crate, which picks VAES-512, VAES-256 or AES-NI at run
//! time; `XtsEngineAes08` uses `aes` 0.8 (AES-NI, 8 blocks per batch), kept
//! so the benchmark can show what the newer backend buys (compiled only for
//! tests, benchmarks and fuzzing). Both hold only key schedules, which the
//! `aes` crates wipe on drop (`zeroize` feature); the engine keeps the two
//! schedules in a [`LockedBox`] (a locked page excluded from core dumps,
//! wiped again on drop), one pointer away from the hot path.
//!
//! No `unsafe`: blocks are `[u8; 16]` views from `as_chunks_mut`, handed to
//! the crates through their safe slice conversions.

use crate::secret_memory::LockedBox;
use crate::volume::cipher::{CipherError, SectorCipher};
use crate::volume::key::DataKey;

/// Blocks processed per AES call: 4 KiB of data plus 4 KiB of tweaks, which
/// fit in L1 together, and four full VAES-512 batches of 64 blocks.
pub const CHUNK_BLOCKS: usize = 256;

/// Independent tweak chains (see the module docs).
pub const LANES: usize = 8;

/// One AES-256 key schedule that en/decrypts many 16-byte blocks per call.
pub trait AesBlocks: Send + Sync + 'static {
    fn new(key: &[u8; 32]) -> Self;
    fn encrypt(&self, blocks: &mut [[u8; 16]]);
    fn decrypt(&self, blocks: &mut [[u8; 16]]);
    /// Runs one chunk of XTS (tweaks, XOR, AES, XOR) with this key.
    fn xts_chunk(&self, dir: Direction, chunk: Chunk<'_>) -> u128 {
        chunk.run(|blocks| match dir {
            Direction::Encrypt => self.encrypt(blocks),
            Direction::Decrypt => self.decrypt(blocks),
        })
    }
}

/// One chunk of XTS work: up to [`CHUNK_BLOCKS`] blocks, whole sectors or a
/// piece of one large sector.
pub struct Chunk<'a> {
    blocks: &'a mut [[u8; 16]],
    /// Where the first XOR pass reads from, if not `blocks` itself.
    src: Option<&'a [[u8; 16]]>,
    /// The encrypted initial tweak of each sector in the chunk (or the
    /// running tweak of a large sector's piece).
    initial: &'a [[u8; 16]],
    /// Blocks per entry of `initial`.
    run_blocks: usize,
    tweaks: &'a mut [u128; CHUNK_BLOCKS],
}

impl Chunk<'_> {
    /// Fills the tweaks, XORs, applies `aes` to all blocks at once, XORs
    /// again; returns the tweak after the last block (for a large sector's
    /// next piece). Inlined into the AES backend's closure, so these loops
    /// are compiled with the backend's target features (AVX-512 with VAES).
    #[inline(always)]
    fn run(self, aes: impl FnOnce(&mut [[u8; 16]])) -> u128 {
        let len = self.blocks.len();
        let tweaks = &mut self.tweaks[..len];
        let mut next = 0;
        for (t0, out) in self.initial.iter().zip(tweaks.chunks_mut(self.run_blocks)) {
            next = fill_tweaks(u128::from_le_bytes(*t0), out);
        }
        match self.src {
            Some(src) => xor_into(self.blocks, src, tweaks),
            None => xor_in_place(self.blocks, tweaks),
        }
        aes(self.blocks);
        xor_in_place(self.blocks, tweaks);
        next
    }
}

impl AesBlocks for aes09::Aes256 {
    fn new(key: &[u8; 32]) -> Self {
        <aes09::Aes256 as aes09::cipher::KeyInit>::new(key.into())
    }

    fn encrypt(&self, blocks: &mut [[u8; 16]]) {
        use aes09::cipher::{Array, BlockCipherEncrypt};
        self.encrypt_blocks(Array::cast_slice_from_core_mut(blocks));
    }

    fn decrypt(&self, blocks: &mut [[u8; 16]]) {
        use aes09::cipher::{Array, BlockCipherDecrypt};
        self.decrypt_blocks(Array::cast_slice_from_core_mut(blocks));
    }

    fn xts_chunk(&self, dir: Direction, chunk: Chunk<'_>) -> u128 {
        use aes09::cipher::{BlockCipherDecrypt, BlockCipherEncrypt};
        let mut next = 0;
        let job = InBackend {
            chunk,
            next: &mut next,
        };
        // The backend calls `job` from inside its `#[target_feature]`
        // function (VAES-512, VAES-256 or AES-NI, picked at run time).
        match dir {
            Direction::Encrypt => self.encrypt_with_backend(job),
            Direction::Decrypt => self.decrypt_with_backend(job),
        }
        next
    }
}

/// A [`Chunk`] handed to an `aes` 0.9 backend as its closure.
struct InBackend<'a, 'b> {
    chunk: Chunk<'a>,
    next: &'b mut u128,
}

impl aes09::cipher::BlockSizeUser for InBackend<'_, '_> {
    type BlockSize = aes09::cipher::consts::U16;
}

/// Feeds `blocks` to a backend in its natural batch (`ParBlocksSize`, 64
/// for VAES-512), the remainder block by block.
macro_rules! par_batches {
    ($backend:ident, $blocks:expr, $par:ident, $one:ident) => {{
        use aes09::cipher::{Array, typenum::Unsigned};
        let blocks = Array::cast_slice_from_core_mut($blocks);
        let n = B::ParBlocksSize::USIZE;
        let mut groups = blocks.chunks_exact_mut(n);
        for group in &mut groups {
            let group: &mut Array<_, B::ParBlocksSize> = group
                .try_into()
                .unwrap_or_else(|_| unreachable!("chunks_exact yields whole batches"));
            $backend.$par(group.into());
        }
        for block in groups.into_remainder() {
            $backend.$one(block.into());
        }
    }};
}

impl aes09::cipher::BlockCipherEncClosure for InBackend<'_, '_> {
    #[inline(always)]
    fn call<B: aes09::cipher::BlockCipherEncBackend<BlockSize = Self::BlockSize>>(
        self,
        backend: &B,
    ) {
        *self.next = self
            .chunk
            .run(|blocks| par_batches!(backend, blocks, encrypt_par_blocks, encrypt_block));
    }
}

impl aes09::cipher::BlockCipherDecClosure for InBackend<'_, '_> {
    #[inline(always)]
    fn call<B: aes09::cipher::BlockCipherDecBackend<BlockSize = Self::BlockSize>>(
        self,
        backend: &B,
    ) {
        *self.next = self
            .chunk
            .run(|blocks| par_batches!(backend, blocks, decrypt_par_blocks, decrypt_block));
    }
}

// `aes` 0.8 as an engine backend exists only to be compared with 0.9 in
// the benchmark and the equivalence tests.
#[cfg(any(test, feature = "testing"))]
impl AesBlocks for aes::Aes256 {
    fn new(key: &[u8; 32]) -> Self {
        <aes::Aes256 as aes::cipher::KeyInit>::new(key.into())
    }

    fn encrypt(&self, blocks: &mut [[u8; 16]]) {
        use aes::cipher::{BlockEncrypt, consts::U16, inout::InOutBuf};
        let (blocks, _) = InOutBuf::from(blocks.as_flattened_mut()).into_chunks::<U16>();
        self.encrypt_blocks_inout(blocks);
    }

    fn decrypt(&self, blocks: &mut [[u8; 16]]) {
        use aes::cipher::{BlockDecrypt, consts::U16, inout::InOutBuf};
        let (blocks, _) = InOutBuf::from(blocks.as_flattened_mut()).into_chunks::<U16>();
        self.decrypt_blocks_inout(blocks);
    }
}

/// `aes-xts-plain64` over any [`AesBlocks`]; see the module docs.
pub struct XtsEngineOn<A: AesBlocks> {
    keys: LockedBox<KeySchedules<A>>,
    sector_size: usize,
}

/// The expanded AES keys: as secret as the data key they come from.
struct KeySchedules<A> {
    data: A,
    tweak: A,
}

/// The default engine: `aes` 0.9 (VAES-512 / VAES-256 / AES-NI at run time).
pub type XtsEngine = XtsEngineOn<aes09::Aes256>;

/// The same engine on `aes` 0.8 (AES-NI only), for comparison (tests,
/// benchmarks and fuzzing only: `cfg(test)` or the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub type XtsEngineAes08 = XtsEngineOn<aes::Aes256>;

/// `t · x` in GF(2^128) with XTS's little-endian bit order.
#[inline(always)]
fn mul_x(t: u128) -> u128 {
    let carry = t >> 127;
    (t << 1) ^ (0u128.wrapping_sub(carry) & 0x87)
}

/// `t · x^8`: shift a byte out and fold it back with x^128 = x^7 + x^2 + x + 1.
#[inline(always)]
fn mul_x8(t: u128) -> u128 {
    let h = t >> 120;
    (t << 8) ^ h ^ (h << 1) ^ (h << 2) ^ (h << 7)
}

/// Writes `t0·x^0, t0·x^1, …` into `out` and returns the next tweak.
#[inline(always)]
fn fill_tweaks(t0: u128, out: &mut [u128]) -> u128 {
    let head = out.len().min(LANES);
    let mut t = t0;
    for slot in &mut out[..head] {
        *slot = t;
        t = mul_x(t);
    }
    if out.len() <= LANES {
        return t;
    }
    // Split into 64-bit halves, lane-parallel (structure of arrays): every
    // step below is the same shift or XOR on all eight lanes, which the
    // compiler turns into vector instructions (one ZMM per half with
    // AVX-512), where `u128` arithmetic stays scalar (shld per tweak).
    let (first, rest) = out.split_at_mut(LANES);
    let mut lo = [0u64; LANES];
    let mut hi = [0u64; LANES];
    for ((l, h), t) in lo.iter_mut().zip(hi.iter_mut()).zip(first.iter()) {
        *l = *t as u64;
        *h = (*t >> 64) as u64;
    }
    for chunk in rest.chunks_mut(LANES) {
        for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
            // ·x^8: shift the 128-bit lane left a byte, fold the byte that
            // fell out back in with x^128 = x^7 + x^2 + x + 1.
            let out_byte = *h >> 56;
            *h = (*h << 8) | (*l >> 56);
            *l = (*l << 8) ^ out_byte ^ (out_byte << 1) ^ (out_byte << 2) ^ (out_byte << 7);
        }
        for ((slot, l), h) in chunk.iter_mut().zip(lo.iter()).zip(hi.iter()) {
            *slot = u128::from(*l) | (u128::from(*h) << 64);
        }
    }
    // The last LANES tweaks written, each times x^8, continue the sequence;
    // the one after the last written is the one LANES back, times x^8.
    mul_x8(out[out.len() - LANES])
}

#[inline(always)]
fn xor_in_place(blocks: &mut [[u8; 16]], tweaks: &[u128]) {
    for (b, t) in blocks.iter_mut().zip(tweaks) {
        *b = (u128::from_le_bytes(*b) ^ t).to_le_bytes();
    }
}

#[inline(always)]
fn xor_into(dst: &mut [[u8; 16]], src: &[[u8; 16]], tweaks: &[u128]) {
    for ((d, s), t) in dst.iter_mut().zip(src).zip(tweaks) {
        *d = (u128::from_le_bytes(*s) ^ t).to_le_bytes();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

impl<A: AesBlocks> XtsEngineOn<A> {
    pub fn new(key: &DataKey, sector_size: usize) -> Result<Self, CipherError> {
        if sector_size == 0 || !sector_size.is_multiple_of(16) {
            return Err(CipherError::BadSectorSize(sector_size));
        }
        let (data_key, tweak_key) = key.expose_secret().split_at(32);
        let half = |k: &[u8]| -> [u8; 32] {
            k.try_into()
                .unwrap_or_else(|_| unreachable!("half of a 64-byte key is 32 bytes"))
        };
        // The 32-byte copies live on this stack frame only for the key
        // schedule; wipe them before returning.
        let mut dk = zeroize::Zeroizing::new(half(data_key));
        let mut tk = zeroize::Zeroizing::new(half(tweak_key));
        let engine = XtsEngineOn {
            keys: LockedBox::new(KeySchedules {
                data: A::new(&dk),
                tweak: A::new(&tk),
            }),
            sector_size,
        };
        zeroize::Zeroize::zeroize(&mut *dk);
        zeroize::Zeroize::zeroize(&mut *tk);
        Ok(engine)
    }

    fn blocks<'a>(&self, buf: &'a mut [u8]) -> &'a mut [[u8; 16]] {
        assert!(
            buf.len().is_multiple_of(self.sector_size),
            "sector cipher given {} bytes, not a multiple of the {}-byte sector",
            buf.len(),
            self.sector_size
        );
        // A multiple of the sector size is a multiple of 16: no remainder.
        buf.as_chunks_mut::<16>().0
    }

    /// XTS over whole sectors of `blocks`, starting at sector `first`.
    /// With `src`, the first XOR pass reads from it instead of `blocks`
    /// (which then only receives output).
    fn run(&self, first: u64, blocks: &mut [[u8; 16]], src: Option<&[[u8; 16]]>, dir: Direction) {
        let bps = self.sector_size / 16;
        // One deref of the locked box per call, not per chunk.
        let keys = &*self.keys;
        let mut tweaks = [0u128; CHUNK_BLOCKS];
        let mut initial = [[0u8; 16]; CHUNK_BLOCKS];
        let mut sector = u128::from(first);
        let mut done = 0;
        if bps <= CHUNK_BLOCKS {
            // Several whole sectors per chunk; their initial tweaks are
            // encrypted together.
            let per_chunk = CHUNK_BLOCKS / bps;
            for chunk in blocks.chunks_mut(per_chunk * bps) {
                let n = chunk.len() / bps;
                let len = chunk.len();
                for (i, t) in initial[..n].iter_mut().enumerate() {
                    // plain64: the sector number as a 128-bit LE integer.
                    *t = sector.wrapping_add(i as u128).to_le_bytes();
                }
                keys.tweak.encrypt(&mut initial[..n]);
                let job = Chunk {
                    blocks: chunk,
                    src: src.map(|s| &s[done..done + len]),
                    initial: &initial[..n],
                    run_blocks: bps,
                    tweaks: &mut tweaks,
                };
                keys.data.xts_chunk(dir, job);
                done += len;
                sector = sector.wrapping_add(n as u128);
            }
        } else {
            // Sectors larger than a chunk: each in pieces, the tweak
            // sequence carried across them.
            for sector_blocks in blocks.chunks_mut(bps) {
                let mut t = [sector.to_le_bytes()];
                keys.tweak.encrypt(&mut t);
                for chunk in sector_blocks.chunks_mut(CHUNK_BLOCKS) {
                    let len = chunk.len();
                    let job = Chunk {
                        blocks: chunk,
                        src: src.map(|s| &s[done..done + len]),
                        initial: &t,
                        run_blocks: len,
                        tweaks: &mut tweaks,
                    };
                    t = [keys.data.xts_chunk(dir, job).to_le_bytes()];
                    done += len;
                }
                sector = sector.wrapping_add(1);
            }
        }
    }
}

impl<A: AesBlocks> SectorCipher for XtsEngineOn<A> {
    fn sector_size(&self) -> usize {
        self.sector_size
    }

    fn encrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        let blocks = self.blocks(buf);
        self.run(first_sector, blocks, None, Direction::Encrypt);
    }

    fn decrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        let blocks = self.blocks(buf);
        self.run(first_sector, blocks, None, Direction::Decrypt);
    }

    fn encrypt_sectors_to(&self, first_sector: u64, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "encrypt_sectors_to: lengths differ");
        let blocks = self.blocks(dst);
        let src = src.as_chunks::<16>().0;
        self.run(first_sector, blocks, Some(src), Direction::Encrypt);
    }
}

impl<A: AesBlocks> std::fmt::Debug for XtsEngineOn<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XtsEngine")
            .field("cipher", &crate::volume::cipher::CIPHER_ID)
            .field("sector_size", &self.sector_size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::ieee1619_vectors::{KEY, VECTORS};
    use crate::volume::xts_mode_cipher::XtsModeCipher;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn pattern_512() -> Vec<u8> {
        (0..512).map(|i| (i % 256) as u8).collect()
    }

    fn check_ieee<A: AesBlocks>() {
        let key = DataKey::from_vec(unhex(KEY)).unwrap();
        let engine = XtsEngineOn::<A>::new(&key, 512).unwrap();
        for (number, sector, ciphertext) in VECTORS {
            let mut buf = pattern_512();
            engine.encrypt_sectors(sector, &mut buf);
            assert_eq!(hex::encode(&buf), ciphertext, "vector {number} encrypt");
            let mut out = vec![0u8; 512];
            engine.encrypt_sectors_to(sector, &pattern_512(), &mut out);
            assert_eq!(out, buf, "vector {number} encrypt_sectors_to");
            engine.decrypt_sectors(sector, &mut buf);
            assert_eq!(buf, pattern_512(), "vector {number} decrypt");
        }
    }

    #[test]
    fn ieee1619_vectors_10_to_14_aes09() {
        check_ieee::<aes09::Aes256>();
    }

    #[test]
    fn ieee1619_vectors_10_to_14_aes08() {
        check_ieee::<aes::Aes256>();
    }

    #[test]
    fn ieee_vectors_inside_a_multi_sector_run() {
        // Vector 10 is sector 0xff: in a 20-sector run starting at 0xf0 it is
        // the 16th sector, in the second 8-sector chunk.
        let key = DataKey::from_vec(unhex(KEY)).unwrap();
        let engine = XtsEngine::new(&key, 512).unwrap();
        let mut run: Vec<u8> = (0..20).flat_map(|_| pattern_512()).collect();
        engine.encrypt_sectors(0xf0, &mut run);
        assert_eq!(hex::encode(&run[15 * 512..16 * 512]), VECTORS[0].2);
    }

    #[test]
    fn mul_x8_is_eight_doublings_and_tweak_chains_match_serial() {
        let mut rng = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        for _ in 0..1000 {
            rng = rng.wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15) ^ (rng >> 61);
            let serial = (0..8).fold(rng, |t, _| mul_x(t));
            assert_eq!(mul_x8(rng), serial);
        }
        for len in [1usize, 7, 8, 9, 16, 31, 32, 255, 256] {
            let mut out = vec![0u128; len];
            let next = fill_tweaks(rng, &mut out);
            let mut t = rng;
            for (j, got) in out.iter().enumerate() {
                assert_eq!(*got, t, "len {len} tweak {j}");
                t = mul_x(t);
            }
            assert_eq!(next, t, "len {len} next");
        }
    }

    #[test]
    fn bad_sector_sizes_are_refused() {
        let key = DataKey::generate();
        for size in [0usize, 15, 100, 4095] {
            assert_eq!(
                XtsEngine::new(&key, size).unwrap_err(),
                CipherError::BadSectorSize(size)
            );
        }
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn partial_sector_buffer_is_a_bug() {
        let engine = XtsEngine::new(&DataKey::generate(), 512).unwrap();
        engine.decrypt_sectors(0, &mut [0u8; 700]);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = DataKey::from_vec(unhex(KEY)).unwrap();
        let shown = format!("{:?}", XtsEngine::new(&key, 4096).unwrap());
        assert!(shown.contains("aes-xts-plain64") && shown.contains("4096"));
        assert!(!shown.contains("2718"));
    }

    fn key_strategy() -> impl Strategy<Value = DataKey> {
        proptest::collection::vec(any::<u8>(), 64)
            .prop_filter_map("equal halves", |k| DataKey::from_vec(k).ok())
    }

    /// Sector numbers biased towards the edges (0, 2^32, 2^64−1) where
    /// carries and wrap-around would show, plus uniformly random ones.
    fn sector_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0u64..64).prop_map(|d| u64::MAX - d),
            (0u64..64),
            (0u64..64).prop_map(|d| (1u64 << 32) - 32 + d),
        ]
    }

    fn equivalent<A: AesBlocks>(
        key: &DataKey,
        sector_size: usize,
        first: u64,
        data: &[u8],
    ) -> Result<(), TestCaseError> {
        let reference = XtsModeCipher::new(key, sector_size).unwrap();
        let engine = XtsEngineOn::<A>::new(key, sector_size).unwrap();
        let mut expected = data.to_vec();
        reference.encrypt_sectors(first, &mut expected);
        let mut ours = data.to_vec();
        engine.encrypt_sectors(first, &mut ours);
        prop_assert_eq!(&ours, &expected, "encrypt in place");
        let mut to = vec![0u8; data.len()];
        engine.encrypt_sectors_to(first, data, &mut to);
        prop_assert_eq!(&to, &expected, "encrypt into another buffer");
        engine.decrypt_sectors(first, &mut ours);
        prop_assert_eq!(&ours[..], data, "decrypt");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Byte-identical to `xts-mode` for random keys, both sector sizes
        /// the format allows (plus sizes that exercise the chunking edges:
        /// one block, a sector bigger than a chunk), sector numbers up to
        /// 2^64−1 and runs of up to 40 sectors (several chunks).
        #[test]
        fn identical_to_xts_mode(
            key in key_strategy(),
            sector_size in prop_oneof![Just(512usize), Just(4096), Just(16), Just(8192), Just(1040)],
            first in sector_strategy(),
            sectors in 1usize..40,
            seed in any::<u64>(),
        ) {
            let len = (sector_size * sectors).min(1 << 18) / sector_size * sector_size;
            let data: Vec<u8> = (0..len as u64)
                .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed).rotate_left(17) as u8)
                .collect();
            equivalent::<aes09::Aes256>(&key, sector_size, first, &data)?;
            equivalent::<aes::Aes256>(&key, sector_size, first, &data)?;
        }
    }
}
