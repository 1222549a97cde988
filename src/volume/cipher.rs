//! The sector cipher: `aes-xts-plain64`, byte for byte as dm-crypt lays it out.
//!
//! Sector `n` of the data area (counted in the volume's sector size, 0 at the
//! data offset) is one XTS data unit, encrypted with AES-256-XTS under the
//! 64-byte key (first half: data key, second half: tweak key) and the tweak
//! `n` as a 128-bit little-endian integer. Anything that speaks standard XTS —
//! OpenSSL, Python `cryptography`, `cryptsetup open --type plain -c
//! aes-xts-plain64 -s 512` with a matching `--sector-size` — reads the data
//! area given the key. That is the no-lock-in promise, tested in
//! `xts_mode_cipher` (the reference cipher against OpenSSL and IEEE 1619)
//! and [`xts_engine`](super::xts_engine) (the engine `Volume` uses against
//! the reference).
//!
//! The cipher knows nothing about unused sectors; the zero-sector rule lives
//! in the volume, which decides what to hand the cipher.

/// The only cipher a superblock may name.
pub const CIPHER_ID: &str = "aes-xts-plain64";

/// Encrypts and decrypts whole sectors in place.
///
/// `first_sector` is the index of `buf`'s first sector; each further sector of
/// `buf` takes the next index. Implementations must be deterministic and
/// interchangeable: a faster implementation has to produce the same bytes.
pub trait SectorCipher: Send + Sync + 'static {
    /// Bytes per sector (the XTS data unit).
    fn sector_size(&self) -> usize;
    /// # Panics
    /// If `buf.len()` is not a multiple of the sector size (a caller bug).
    fn encrypt_sectors(&self, first_sector: u64, buf: &mut [u8]);
    /// # Panics
    /// If `buf.len()` is not a multiple of the sector size (a caller bug).
    fn decrypt_sectors(&self, first_sector: u64, buf: &mut [u8]);
    /// Encrypts `src` into `dst` (same length): what a write needs, without
    /// first copying the plaintext. The default copies, then encrypts in
    /// place; a faster engine reads `src` in its first pass instead.
    /// # Panics
    /// If the lengths differ or are not a multiple of the sector size.
    fn encrypt_sectors_to(&self, first_sector: u64, src: &[u8], dst: &mut [u8]) {
        dst.copy_from_slice(src);
        self.encrypt_sectors(first_sector, dst);
    }
}

/// Why a cipher could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("sector size {0} is not a positive multiple of the 16-byte AES block")]
    BadSectorSize(usize),
}
