//! A new data key that is not (yet) a volume's: the key of a new snapshot
//! lineage, as `snapshot copy --key` makes one (AWS's CopySnapshot with
//! `KmsKeyId` generates a new data key under the destination key).
//!
//! The KMS generates the key wrapped under `key` and bound to an
//! encryption context the caller chooses (the lineage's
//! `{"envol:volume": "<uuid>"}`), then unwraps it once: the caller needs
//! GenerateDataKeyWithoutPlaintext and Decrypt on `key`, as `volume create`
//! does, and the copy it makes is proven restorable by its maker before
//! anything is uploaded. The plaintext key goes straight into a
//! [`DataKey`] (a locked page); it is never written anywhere.

use std::collections::BTreeMap;

use super::{EnvelopeError, KeyFailure, hint_for};
use crate::keys::{KeyError, KeyService};
use crate::volume::{DATA_KEY_LEN, DataKey};

/// A new data key, wrapped and in the clear.
pub struct NewDataKey {
    /// The master key's ARN, as the KMS resolved it.
    pub key_arn: String,
    /// The data key as the KMS wrapped it under `key_arn` and the context.
    pub wrapped_key: Vec<u8>,
    pub data_key: DataKey,
}

impl std::fmt::Debug for NewDataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDataKey")
            .field("key_arn", &self.key_arn)
            .finish_non_exhaustive()
    }
}

/// Generates a data key under `key` bound to `context`. `what` names the
/// thing it is for in errors (a snapshot's URL).
pub async fn generate_data_key<K: KeyService>(
    keys: &K,
    what: &str,
    key: &str,
    context: &BTreeMap<String, String>,
) -> Result<NewDataKey, EnvelopeError> {
    let failure = |action: &'static str, error: KeyError| {
        EnvelopeError::Key(Box::new(KeyFailure {
            volume: what.to_string(),
            action,
            key: key.to_string(),
            hint: hint_for(&error, key, &keys.describe()),
            error,
        }))
    };
    let wrapped = keys
        .generate_wrapped_key(key, context, DATA_KEY_LEN)
        .await
        .map_err(|e| failure("generate a data key", e))?;
    let plaintext = keys
        .unwrap_key(&wrapped.key_arn, &wrapped.blob, context)
        .await
        .map_err(|e| failure("unwrap the new data key", e))?;
    let data_key = DataKey::from_slice(&plaintext).map_err(|e| EnvelopeError::Volume {
        volume: what.to_string(),
        message: e.to_string(),
    })?;
    drop(plaintext);
    Ok(NewDataKey {
        key_arn: wrapped.key_arn,
        wrapped_key: wrapped.blob,
        data_key,
    })
}
