//! Re-encryption of a snapshot's chunks from one data key to another: what
//! `volume restore --key` and `snapshot copy --key` do to every chunk (AWS's
//! CopySnapshot with `KmsKeyId`: a new data key, a new lineage).
//!
//! A chunk is the volume's data area *as stored*, so the transform is
//! sector by sector, with the volume's own rules:
//!
//! - **The zero-sector rule.** A stored sector that is all zero bytes is a
//!   hole (never written, trimmed, or zeroed) and reads as plaintext zeros
//!   without being decrypted (`volume` module docs). It stays all zeros
//!   under the new key, so a hole stays a hole (and a restored volume stays
//!   sparse, a copied chunk stays small to compress). Every other sector is
//!   decrypted under the old key and encrypted under the new one; runs of
//!   such sectors go to the cipher in one call.
//! - **The tweak is the sector's number in the data area** (`aes-xts-plain64`
//!   from the data area's start), so chunk *i* at byte offset
//!   `i · chunk_size` re-encrypts the same in any volume of the same layout.
//!
//! The keys stay in the XTS engines' locked pages (`XtsEngine`); the
//! plaintext exists only in the chunk buffer being transformed, which is
//! overwritten with the new ciphertext before it leaves this function.
//! A re-encrypted sector that came out all zero bytes would read back as a
//! hole; the chance is 2^-4096 per sector (as for any written sector).

use crate::volume::{CipherError, DataKey, SectorCipher, XtsEngine};

/// From one data key to another, for one sector size.
pub struct Rekey {
    from: XtsEngine,
    to: XtsEngine,
    sector_size: usize,
}

impl std::fmt::Debug for Rekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rekey")
            .field("sector_size", &self.sector_size)
            .finish_non_exhaustive()
    }
}

impl Rekey {
    pub fn new(from: &DataKey, to: &DataKey, sector_size: u32) -> Result<Rekey, CipherError> {
        let ss = sector_size as usize;
        Ok(Rekey {
            from: XtsEngine::new(from, ss)?,
            to: XtsEngine::new(to, ss)?,
            sector_size: ss,
        })
    }

    pub fn sector_size(&self) -> usize {
        self.sector_size
    }

    /// Re-encrypts, in place, the stored bytes of the data area at byte
    /// `offset` (sector-aligned; `chunk.len()` a multiple of the sector
    /// size, as every chunk of a manifest is). All-zero sectors are left
    /// as they are.
    pub fn reencrypt(&self, offset: u64, chunk: &mut [u8]) -> Result<(), RekeyError> {
        let ss = self.sector_size;
        if !offset.is_multiple_of(ss as u64) || !chunk.len().is_multiple_of(ss) {
            return Err(RekeyError::Unaligned {
                offset,
                len: chunk.len(),
                sector_size: ss,
            });
        }
        let first_sector = offset / ss as u64;
        let sectors = chunk.len() / ss;
        let mut i = 0;
        while i < sectors {
            if is_zero(&chunk[i * ss..(i + 1) * ss]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < sectors && !is_zero(&chunk[i * ss..(i + 1) * ss]) {
                i += 1;
            }
            let run = &mut chunk[start * ss..i * ss];
            let sector = first_sector + start as u64;
            self.from.decrypt_sectors(sector, run);
            self.to.encrypt_sectors(sector, run);
        }
        Ok(())
    }
}

/// A chunk that is not whole sectors (a manifest's checks rule it out; said
/// rather than panicking if a caller breaks that).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RekeyError {
    #[error(
        "cannot re-encrypt {len} bytes at offset {offset}: not whole {sector_size}-byte sectors"
    )]
    Unaligned {
        offset: u64,
        len: usize,
        sector_size: usize,
    },
}

/// Whether a stored sector is all zero bytes. Real ciphertext almost never
/// starts with 16 zero bytes, so the first word usually settles it.
fn is_zero(sector: &[u8]) -> bool {
    let (words, rest) = sector.as_chunks::<16>();
    rest.iter().all(|&b| b == 0) && words.iter().all(|w| u128::from_ne_bytes(*w) == 0)
}

#[cfg(test)]
#[path = "rekey_tests.rs"]
mod tests;
