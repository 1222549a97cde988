//! Sealing at rest: everything secret the KMS stores (master-key material,
//! access-key secrets) is encrypted with AES-256-GCM under the *root key*, a
//! 32-byte random key kept in a 0600 file beside the database.
//!
//! Each sealed value is bound to what it is (purpose and identity, e.g.
//! `key-material|<key id>|<version>`) through the associated data, so a
//! sealed value copied onto another row does not unseal there.
//! Format: `nonce (12) ‖ ciphertext ‖ tag (16)`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

/// The root key. Never logged, never printed; zeroized on drop.
pub struct RootKey(Zeroizing<[u8; 32]>);

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
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        RootKey(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(RootKey(Zeroizing::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        // Cannot fail for a 32-byte key and small plaintexts.
        let ct = cipher
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
        let cipher = Aes256Gcm::new(self.0.as_ref().into());
        cipher
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
}
