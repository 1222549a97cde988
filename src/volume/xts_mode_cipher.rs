//! `aes-xts-plain64` on the `xts-mode` crate: the reference sector cipher.
//!
//! Simple and slow (one AES block per call), so `Volume` uses the
//! [`XtsEngine`](super::xts_engine::XtsEngine) instead; this one is the
//! yardstick. Its tests check it against the IEEE 1619 vectors and OpenSSL,
//! the engine's tests check the engine against it, and the benchmark
//! measures what the engine buys. Compiled only for tests, benchmarks and
//! fuzzing (`cfg(test)` or the `testing` feature): the product never uses it.

use aes::Aes256;
use aes::cipher::KeyInit;
use xts_mode::{Xts128, get_tweak_default};

use crate::volume::cipher::{CIPHER_ID, CipherError, SectorCipher};
use crate::volume::key::DataKey;

/// `aes-xts-plain64` on the `xts-mode` crate: the reference implementation.
///
/// Holds only the two AES-256 key schedules (wiped on drop through the `aes`
/// crate's `zeroize` feature), never the raw key.
pub struct XtsModeCipher {
    xts: Xts128<Aes256>,
    sector_size: usize,
}

impl XtsModeCipher {
    pub fn new(key: &DataKey, sector_size: usize) -> Result<Self, CipherError> {
        if sector_size == 0 || !sector_size.is_multiple_of(16) {
            return Err(CipherError::BadSectorSize(sector_size));
        }
        let (data_key, tweak_key) = key.expose_secret().split_at(32);
        // Both halves are exactly 32 bytes, the one length AES-256 accepts.
        let data_cipher = Aes256::new_from_slice(data_key)
            .unwrap_or_else(|_| unreachable!("half of a 64-byte key is 32 bytes"));
        let tweak_cipher = Aes256::new_from_slice(tweak_key)
            .unwrap_or_else(|_| unreachable!("half of a 64-byte key is 32 bytes"));
        Ok(XtsModeCipher {
            xts: Xts128::new(data_cipher, tweak_cipher),
            sector_size,
        })
    }

    fn check_len(&self, buf: &[u8]) {
        assert!(
            buf.len().is_multiple_of(self.sector_size),
            "sector cipher given {} bytes, not a multiple of the {}-byte sector",
            buf.len(),
            self.sector_size
        );
    }
}

impl SectorCipher for XtsModeCipher {
    fn sector_size(&self) -> usize {
        self.sector_size
    }

    fn encrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        self.check_len(buf);
        // u128 sector numbers: sector u64::MAX followed by more sectors is
        // still a well-defined tweak, never an overflow.
        self.xts.encrypt_area(
            buf,
            self.sector_size,
            u128::from(first_sector),
            get_tweak_default,
        );
    }

    fn decrypt_sectors(&self, first_sector: u64, buf: &mut [u8]) {
        self.check_len(buf);
        self.xts.decrypt_area(
            buf,
            self.sector_size,
            u128::from(first_sector),
            get_tweak_default,
        );
    }
}

impl std::fmt::Debug for XtsModeCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XtsModeCipher")
            .field("cipher", &CIPHER_ID)
            .field("sector_size", &self.sector_size)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::ieee1619_vectors::{KEY, VECTORS};

    fn unhex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2));
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn ieee_key() -> DataKey {
        DataKey::from_vec(unhex(KEY)).unwrap()
    }

    fn pattern_512() -> Vec<u8> {
        (0..512).map(|i| (i % 256) as u8).collect()
    }

    #[test]
    fn ieee1619_vectors_10_to_14() {
        let cipher = XtsModeCipher::new(&ieee_key(), 512).unwrap();
        for (number, sector, ciphertext) in VECTORS {
            let expected = unhex(ciphertext);
            let mut buf = pattern_512();
            cipher.encrypt_sectors(sector, &mut buf);
            assert_eq!(hex(&buf), hex(&expected), "vector {number} encrypt");
            cipher.decrypt_sectors(sector, &mut buf);
            assert_eq!(buf, pattern_512(), "vector {number} decrypt");
        }
    }

    #[test]
    fn multi_sector_call_equals_sector_by_sector() {
        // Vectors 10 and 11 are sectors 0xff and 0xffff; a run starting at
        // 0xff must give vector 10 in its first sector and treat every
        // following sector as its own data unit with the next tweak.
        let cipher = XtsModeCipher::new(&ieee_key(), 512).unwrap();
        let mut run: Vec<u8> = (0..3).flat_map(|_| pattern_512()).collect();
        cipher.encrypt_sectors(0xff, &mut run);
        assert_eq!(hex(&run[..512]), VECTORS[0].2);
        for i in 0..3u64 {
            let mut one = pattern_512();
            cipher.encrypt_sectors(0xff + i, &mut one);
            assert_eq!(&run[i as usize * 512..][..512], &one[..]);
        }
    }

    #[test]
    fn round_trip_both_sector_sizes_and_extreme_sector_numbers() {
        let key = DataKey::generate();
        for sector_size in [512usize, 4096] {
            let cipher = XtsModeCipher::new(&key, sector_size).unwrap();
            assert_eq!(cipher.sector_size(), sector_size);
            let plain: Vec<u8> = (0..sector_size * 3).map(|i| (i * 7 + 3) as u8).collect();
            for first in [0u64, 1, 1 << 32, u64::MAX - 2, u64::MAX] {
                let mut buf = plain.clone();
                cipher.encrypt_sectors(first, &mut buf);
                assert_ne!(buf, plain);
                // Identical plaintext sectors must not give identical ciphertext.
                assert_ne!(buf[..sector_size], buf[sector_size..2 * sector_size]);
                cipher.decrypt_sectors(first, &mut buf);
                assert_eq!(buf, plain, "sector size {sector_size}, first {first}");
            }
        }
    }

    #[test]
    fn sector_number_is_a_128_bit_tweak_past_u64_max() {
        // The run starting at u64::MAX continues with tweak 2^64, which must
        // differ from tweak 0 (no 64-bit wrap-around).
        let cipher = XtsModeCipher::new(&DataKey::generate(), 512).unwrap();
        let mut run = vec![0x11u8; 1024];
        cipher.encrypt_sectors(u64::MAX, &mut run);
        let mut at_zero = vec![0x11u8; 512];
        cipher.encrypt_sectors(0, &mut at_zero);
        assert_ne!(&run[512..], &at_zero[..]);
    }

    #[test]
    fn bad_sector_sizes_are_refused() {
        let key = DataKey::generate();
        for size in [0usize, 15, 100, 4095] {
            assert_eq!(
                XtsModeCipher::new(&key, size).unwrap_err(),
                CipherError::BadSectorSize(size)
            );
        }
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn partial_sector_buffer_is_a_bug() {
        let cipher = XtsModeCipher::new(&DataKey::generate(), 512).unwrap();
        cipher.encrypt_sectors(0, &mut [0u8; 700]);
    }

    #[test]
    fn debug_shows_no_key_material() {
        let cipher = XtsModeCipher::new(&ieee_key(), 4096).unwrap();
        let shown = format!("{cipher:?}");
        assert!(shown.contains("aes-xts-plain64"));
        assert!(!shown.contains("2718"));
    }

    /// Independent implementation: OpenSSL's EVP aes-256-xts, driven through
    /// Python's `cryptography` package (part of the base image). `openssl enc`
    /// itself refuses XTS ("enc XTS ciphers not supported" in OpenSSL 3), so
    /// the CLI cannot be the oracle. This test fails — never skips — when the
    /// oracle is missing.
    fn openssl_xts_encrypt(key: &[u8], sector: u64, plain: &[u8]) -> Vec<u8> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let script = "import sys\n\
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
            key = bytes.fromhex(sys.argv[1]); tweak = bytes.fromhex(sys.argv[2])\n\
            e = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()\n\
            sys.stdout.buffer.write(e.update(sys.stdin.buffer.read()) + e.finalize())\n";
        // plain64: the 16-byte tweak is the sector number, little endian.
        let tweak = u128::from(sector).to_le_bytes();
        let mut child = Command::new("python3")
            .args(["-c", script, &hex(key), &hex(&tweak)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with the cryptography package (OpenSSL) must be installed");
        child.stdin.take().unwrap().write_all(plain).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "OpenSSL XTS oracle failed");
        out.stdout
    }

    #[test]
    fn matches_openssl_aes_256_xts_plain64() {
        let key = DataKey::generate();
        for sector_size in [512usize, 4096] {
            let cipher = XtsModeCipher::new(&key, sector_size).unwrap();
            for sector in [0u64, 1, 7, 0x1234_5678_9abc, u64::MAX] {
                let plain: Vec<u8> = (0..sector_size)
                    .map(|i| (i as u64 ^ sector) as u8)
                    .collect();
                let mut ours = plain.clone();
                cipher.encrypt_sectors(sector, &mut ours);
                let theirs = openssl_xts_encrypt(key.expose_secret(), sector, &plain);
                assert_eq!(
                    hex(&ours),
                    hex(&theirs),
                    "size {sector_size} sector {sector}"
                );
            }
        }
    }

    #[test]
    fn openssl_oracle_reproduces_ieee_vector_10() {
        // Guards the oracle itself: if it disagreed with IEEE 1619 the
        // comparison above would prove nothing.
        let theirs = openssl_xts_encrypt(&unhex(KEY), 0xff, &pattern_512());
        assert_eq!(hex(&theirs), VECTORS[0].2);
    }
}
