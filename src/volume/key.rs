//! The volume's data key: the 64-byte AES-256-XTS key, held only in memory.
//!
//! A `DataKey` exists only in a valid shape: 64 bytes whose two halves differ
//! (XTS with equal data and tweak keys loses its security proof, and IEEE 1619
//! and the Linux kernel reject it). The bytes live in a [`LockedBox`]: a page
//! of their own, locked in memory where the system allows, excluded from core
//! dumps and wiped on drop; moving a `DataKey` moves only the pointer. The AES
//! key schedules derived from it (just as secret) get the same treatment in
//! the XTS engine.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::secret_memory::LockedBox;

/// Length of an `aes-xts-plain64` key: two AES-256 keys.
pub const DATA_KEY_LEN: usize = 64;

/// Length of the key check value stored in the superblock.
pub const KEY_CHECK_LEN: usize = 32;

/// Domain separation for the key check value, so the HMAC can never be
/// confused with any other use of the data key.
const KEY_CHECK_LABEL: &[u8] = b"envol key check v1";

/// Why bytes are not a usable data key. Never carries the bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a data key must be {DATA_KEY_LEN} bytes, got {0}")]
    WrongLength(usize),
    #[error("the two halves of the XTS data key are equal")]
    EqualHalves,
}

/// The plaintext data key of one volume.
#[derive(Clone)]
pub struct DataKey(LockedBox<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Takes a key as returned by the KMS (`Plaintext` of Decrypt or
    /// GenerateDataKey). The caller's copy is theirs to wipe; see `from_vec`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != DATA_KEY_LEN {
            return Err(KeyError::WrongLength(bytes.len()));
        }
        let mut key = LockedBox::new([0u8; DATA_KEY_LEN]);
        key.copy_from_slice(bytes);
        let (data_half, tweak_half) = key.split_at(DATA_KEY_LEN / 2);
        // Constant time: how far two halves of a key agree is itself a leak.
        if bool::from(data_half.ct_eq(tweak_half)) {
            return Err(KeyError::EqualHalves);
        }
        Ok(DataKey(key))
    }

    /// Like `from_slice`, and wipes the vector whatever the outcome.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(bytes);
        Self::from_slice(&bytes)
    }

    /// A fresh random key from the operating system's generator (for tests and
    /// for tools that wrap a locally made key; the product asks the KMS).
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
        loop {
            rand::rngs::OsRng.fill_bytes(bytes.as_mut_slice());
            // Equal halves from a CSPRNG happen with probability 2^-256;
            // the loop only keeps the invariant unconditional.
            if let Ok(key) = Self::from_slice(bytes.as_slice()) {
                return key;
            }
        }
    }

    /// The key bytes, for building the cipher and for handing the key to a
    /// KMS. Crate-internal so that no caller outside envol can print them.
    pub(crate) fn expose_secret(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }

    /// HMAC-SHA256(key = data key, "envol key check v1" || uuid bytes).
    ///
    /// Stored in the superblock so that opening with a wrong key (a wrapped
    /// key copied from another volume, a KMS returning something else) is
    /// detected before a single sector is decrypted into garbage — and without
    /// the value revealing anything about the key.
    pub fn key_check(&self, volume: &Uuid) -> [u8; KEY_CHECK_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.expose_secret().as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(KEY_CHECK_LABEL);
        mac.update(volume.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A 32-byte key for another purpose, derived from this one:
    /// HMAC-SHA256(key = data key, `label`). Each use has its own label (the
    /// snapshot manifest's is `envol snapshot manifest v1`), so the derived
    /// keys are independent of each other and of the XTS key; only holders
    /// of the data key can compute them, and they reveal nothing about it.
    /// The data key itself never leaves this type.
    pub fn derive_key(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.expose_secret().as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(label);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// Whether `expected` is this key's check value for `volume`, in constant time.
    pub fn verify_check(&self, volume: &Uuid, expected: &[u8; KEY_CHECK_LEN]) -> bool {
        let actual = Zeroizing::new(self.key_check(volume));
        bool::from(actual.as_slice().ct_eq(expected.as_slice()))
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_bytes() -> Vec<u8> {
        (0u8..64).collect()
    }

    #[test]
    fn wrong_lengths_are_refused() {
        for len in [0usize, 1, 32, 63, 65, 128] {
            assert_eq!(
                DataKey::from_slice(&vec![7u8; len]).unwrap_err(),
                KeyError::WrongLength(len)
            );
        }
    }

    #[test]
    fn equal_halves_are_refused() {
        let mut bytes = vec![0x5au8; 32];
        bytes.extend_from_slice(&[0x5au8; 32]);
        assert_eq!(DataKey::from_vec(bytes).unwrap_err(), KeyError::EqualHalves);
        // Halves that differ in a single bit are fine.
        let mut bytes = vec![0x5au8; 64];
        bytes[63] ^= 1;
        assert!(DataKey::from_vec(bytes).is_ok());
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key =
            DataKey::from_vec(vec![0xabu8; 32].into_iter().chain([0xcd; 32]).collect()).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "DataKey(<redacted>)");
        assert!(!shown.to_lowercase().contains("ab"));
    }

    #[test]
    fn key_check_binds_key_and_volume() {
        let key = DataKey::from_vec(sample_bytes()).unwrap();
        let other_key = DataKey::generate();
        let vol = Uuid::from_bytes([1; 16]);
        let other_vol = Uuid::from_bytes([2; 16]);
        let check = key.key_check(&vol);
        assert_eq!(check, key.key_check(&vol), "deterministic");
        assert!(key.verify_check(&vol, &check));
        assert!(!other_key.verify_check(&vol, &check));
        assert!(!key.verify_check(&other_vol, &check));
        let mut flipped = check;
        flipped[31] ^= 0x80;
        assert!(!key.verify_check(&vol, &flipped));
    }

    #[test]
    fn key_check_is_the_documented_hmac() {
        // Recompute with the hmac crate directly from the documented recipe.
        let bytes = sample_bytes();
        let vol = Uuid::from_bytes([9; 16]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes).unwrap();
        mac.update(b"envol key check v1");
        mac.update(&[9u8; 16]);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(DataKey::from_vec(bytes).unwrap().key_check(&vol), expected);
    }

    #[test]
    fn derived_keys_are_the_documented_hmac_and_differ_by_label() {
        let bytes = sample_bytes();
        let key = DataKey::from_vec(bytes.clone()).unwrap();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes).unwrap();
        mac.update(b"envol snapshot manifest v1");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(*key.derive_key(b"envol snapshot manifest v1"), expected);
        assert_ne!(*key.derive_key(b"another use"), expected);
        assert_ne!(
            *DataKey::generate().derive_key(b"envol snapshot manifest v1"),
            expected
        );
    }

    #[test]
    fn generated_keys_differ() {
        let a = DataKey::generate();
        let b = DataKey::generate();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
