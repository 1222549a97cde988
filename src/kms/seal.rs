//! Sealing at rest: everything secret the KMS stores (master-key material,
//! access-key secrets) is encrypted with AES-256-GCM under the *root key*, a
//! 32-byte random key kept in a 0600 file beside the database.
//!
//! Each sealed value is bound to what it is (purpose and identity, e.g.
//! `key-material|<key id>|<version>`) through the associated data, so a
//! sealed value copied onto another row does not unseal there.
//! Format: `nonce (12) ‖ ciphertext ‖ tag (16)`.
//!
//! The root key, its expanded AES-GCM key schedule and every unsealed
//! master-key material live in locked pages ([`LockedBox`]): never swapped
//! where the system allows, excluded from core dumps, wiped on drop.

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::secret_memory::LockedBox;

/// One master-key version's unsealed AES-256 material, for the duration of
/// one operation.
pub type KeyMaterial = LockedBox<[u8; 32]>;

/// Fresh random material for a new master key or key version.
pub fn generate_material() -> KeyMaterial {
    let mut material = LockedBox::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(material.as_mut());
    material
}

/// The root key. Never logged, never printed; in a locked page, wiped on drop.
pub struct RootKey {
    bytes: LockedBox<[u8; 32]>,
    /// Expanded once: the KMS seals and unseals on every request.
    cipher: LockedBox<Aes256Gcm>,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(..)")
    }
}

/// A sealed value failed to open: wrong root key or a tampered database.
#[derive(Debug, thiserror::Error)]
#[error("sealed value failed authentication (wrong root key or tampered store)")]
pub struct UnsealError;

impl RootKey {
    pub fn generate() -> Self {
        Self::from_locked(generate_material())
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let mut locked = LockedBox::new([0u8; 32]);
        locked.copy_from_slice(bytes);
        Some(Self::from_locked(locked))
    }

    fn from_locked(bytes: LockedBox<[u8; 32]>) -> Self {
        let cipher = LockedBox::new(Aes256Gcm::new((&*bytes).into()));
        RootKey { bytes, cipher }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Cannot fail for a 32-byte key and small plaintexts.
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: purpose.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub fn unseal(&self, purpose: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        if sealed.len() < 12 + 16 {
            return Err(UnsealError);
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed[..12]),
                Payload {
                    msg: &sealed[12..],
                    aad: purpose.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| UnsealError)
    }

    /// Unseals master-key material straight into a locked page, so that it
    /// never sits in an ordinary heap buffer.
    pub fn unseal_material(
        &self,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<KeyMaterial, UnsealError> {
        const LEN: usize = 32;
        if sealed.len() != 12 + LEN + 16 {
            return Err(UnsealError);
        }
        let (nonce, rest) = sealed.split_at(12);
        let (ciphertext, tag) = rest.split_at(LEN);
        let mut out = LockedBox::new([0u8; LEN]);
        out.copy_from_slice(ciphertext);
        // aes-gcm checks the tag before it decrypts: on failure `out` holds
        // only ciphertext (and is wiped when it drops, like any LockedBox).
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                purpose.as_bytes(),
                out.as_mut_slice(),
                Tag::from_slice(tag),
            )
            .map(|()| out)
            .map_err(|_| UnsealError)
    }
}

/// Associated data for a master-key version's material.
pub fn material_purpose(key_id: &str, version: u32) -> String {
    format!("envol-kms|key-material|{key_id}|{version}")
}

/// Associated data for an access key's secret.
pub fn secret_purpose(access_key_id: &str) -> String {
    format!("envol-kms|access-key-secret|{access_key_id}")
}

/// Associated data of the canary that tells whether a root key belongs to a store.
pub const CANARY_PURPOSE: &str = "envol-kms|root-key-canary";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_purpose_and_key() {
        let k = RootKey::generate();
        let s = k.seal("a", b"material");
        assert_eq!(k.unseal("a", &s).unwrap().as_slice(), b"material");
        assert!(k.unseal("b", &s).is_err());
        assert!(RootKey::generate().unseal("a", &s).is_err());
        assert!(k.unseal("a", &s[..10]).is_err());
    }

    #[test]
    fn material_unseals_in_place_and_only_with_its_purpose() {
        let k = RootKey::generate();
        let material = generate_material();
        let s = k.seal("m", &*material);
        assert_eq!(*k.unseal_material("m", &s).unwrap(), *material);
        assert!(k.unseal_material("other", &s).is_err());
        assert!(RootKey::generate().unseal_material("m", &s).is_err());
        assert!(k.unseal_material("m", &s[..s.len() - 1]).is_err());
        let short = k.seal("m", b"sixteen byte key");
        assert!(
            k.unseal_material("m", &short).is_err(),
            "wrong length accepted"
        );
        let mut flipped = s.clone();
        flipped[20] ^= 1;
        assert!(k.unseal_material("m", &flipped).is_err());
    }

    #[test]
    fn a_root_key_round_trips_through_its_bytes() {
        let k = RootKey::generate();
        let again = RootKey::from_bytes(k.as_bytes()).unwrap();
        assert_eq!(
            again.unseal("p", &k.seal("p", b"x")).unwrap().as_slice(),
            b"x"
        );
        assert!(RootKey::from_bytes(&[1u8; 31]).is_none());
        assert!(RootKey::from_bytes(&[1u8; 33]).is_none());
    }
}
