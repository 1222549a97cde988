//! What several operations share: request members (base64 blobs, encryption
//! contexts, a bare KeyId), AWS's paging (Limit, Marker), common checks, and
//! the preamble of every operation on one key: resolve the KeyId, note the
//! key for the audit log, authorize the action.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use super::super::audit::AuditNote;
use super::super::core::{Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::store::KeyRow;

/// The request of operations that take only a KeyId (EnableKey, DisableKey,
/// CancelKeyDeletion, DisableKeyRotation, GetKeyRotationStatus, ...).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct KeyIdRequest {
    pub(super) key_id: String,
}

/// The preamble of an operation on one key: resolves `key_ref` (any of
/// AWS's four forms), records the key in the audit note (so even a refused
/// request says which key it was for), then authorizes `action` with
/// `context` by key policy and grants. A caller the policy refuses learns
/// nothing more about the key.
pub(super) fn authorized_key(
    kms: &Kms,
    caller: &Caller<'_>,
    key_ref: &str,
    action: &str,
    context: &EncryptionContext,
    note: &mut AuditNote,
) -> Result<KeyRow, KmsError> {
    let key = kms.resolve_key(key_ref)?;
    note.key_arn = Some(key.arn.clone());
    kms.authorize(caller, &key, action, context)?;
    Ok(key)
}

/// `authorized_key` for actions that see no encryption context.
pub(super) fn authorized_key_no_context(
    kms: &Kms,
    caller: &Caller<'_>,
    key_ref: &str,
    action: &str,
    note: &mut AuditNote,
) -> Result<KeyRow, KmsError> {
    authorized_key(
        kms,
        caller,
        key_ref,
        action,
        &EncryptionContext::new(),
        note,
    )
}

/// A base64 blob member (CiphertextBlob, Plaintext), decoded; zeroized on drop
/// because it may be a plaintext.
#[derive(Default)]
pub(super) struct Blob(pub Zeroizing<Vec<u8>>);

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(|v| Blob(Zeroizing::new(v)))
            .map_err(|_| serde::de::Error::custom("blob member is not valid base64"))
    }
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An encryption context: the non-secret key-value pairs bound to a
/// ciphertext, which Decrypt must be given again.
pub(super) type EncryptionContext = BTreeMap<String, String>;

/// AWS's Limit member: 1-1000, default 100 (ListKeys, ListAliases).
pub(super) fn page_limit(limit: Option<i64>) -> Result<usize, KmsError> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n as usize),
        Some(n) => Err(KmsError::validation(format!(
            "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 1000"
        ))),
    }
}

/// Markers are opaque to clients: ours are base64 of the last item returned.
pub(super) fn decode_marker(marker: Option<&str>) -> Result<Option<String>, KmsError> {
    let Some(m) = marker else { return Ok(None) };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(m)
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
        .map(Some)
        .ok_or_else(|| KmsError::new(ErrorKind::InvalidMarker, "Invalid marker"))
}

pub(super) fn encode_marker(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

/// Validates an encryption context as AWS does (non-empty keys, bounded size).
pub(super) fn check_context(ctx: &EncryptionContext) -> Result<(), KmsError> {
    let total: usize = ctx.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > 8192 {
        return Err(KmsError::validation(
            "encryption context is larger than 8192 bytes",
        ));
    }
    if ctx.keys().any(|k| k.is_empty()) {
        return Err(KmsError::validation(
            "encryption context keys must not be empty",
        ));
    }
    Ok(())
}

/// Only the symmetric algorithm exists for symmetric keys.
pub(super) fn check_algorithm(alg: Option<&str>) -> Result<(), KmsError> {
    match alg {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(other) => Err(KmsError::new(
            ErrorKind::InvalidKeyUsage,
            format!("encryption algorithm {other} is not valid for a SYMMETRIC_DEFAULT key"),
        )),
    }
}

/// DryRunOperationException: every check passed, nothing was done.
pub(super) fn dry_run_error() -> KmsError {
    KmsError::new(
        ErrorKind::DryRunOperation,
        "The request would have succeeded, but the DryRun option is set.",
    )
}
