//! The KMS operations, one file per family: keys, aliases, cryptography,
//! key states, rotation, grants, key policies. Each operation parses its own typed request (AWS member
//! names, PascalCase), checks the key policy, and returns the response
//! document AWS would.

mod aliases;
mod crypto;
mod grants;
mod keys;
mod lifecycle;
mod policies;
mod rotation;

use std::collections::BTreeMap;

use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use zeroize::Zeroizing;

use super::error::{ErrorKind, KmsError};
use super::iam::Principal;
use super::service::{AuditNote, Kms};

/// Operations AWS KMS has that envol does not implement (yet): they answer
/// UnsupportedOperationException rather than "unknown operation".
const NOT_IMPLEMENTED: &[&str] = &[
    "ConnectCustomKeyStore",
    "CreateCustomKeyStore",
    "DeleteCustomKeyStore",
    "DeleteImportedKeyMaterial",
    "DeriveSharedSecret",
    "DescribeCustomKeyStores",
    "DisconnectCustomKeyStore",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "GetParametersForImport",
    "GetPublicKey",
    "ImportKeyMaterial",
    "ListKeyPolicies",
    "ListResourceTags",
    "ReplicateKey",
    "Sign",
    "TagResource",
    "UntagResource",
    "UpdateCustomKeyStore",
    "UpdateKeyDescription",
    "UpdatePrimaryRegion",
    "Verify",
    "VerifyMac",
];

/// Runs `operation` for `caller`.
pub(super) fn dispatch(
    kms: &Kms,
    caller: &Principal,
    operation: &str,
    body: &[u8],
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    match operation {
        "CreateKey" => keys::create_key(kms, caller, parse(body)?, note),
        "DescribeKey" => keys::describe_key(kms, caller, parse(body)?, note),
        "ListKeys" => keys::list_keys(kms, caller, parse(body)?),
        "CreateAlias" => aliases::create_alias(kms, caller, parse(body)?, note),
        "UpdateAlias" => aliases::update_alias(kms, caller, parse(body)?, note),
        "DeleteAlias" => aliases::delete_alias(kms, caller, parse(body)?, note),
        "ListAliases" => aliases::list_aliases(kms, caller, parse(body)?),
        "Encrypt" => crypto::encrypt(kms, caller, parse(body)?, note),
        "Decrypt" => crypto::decrypt(kms, caller, parse(body)?, note),
        "GenerateDataKey" => crypto::generate_data_key(kms, caller, parse(body)?, note, true),
        "GenerateDataKeyWithoutPlaintext" => {
            crypto::generate_data_key(kms, caller, parse(body)?, note, false)
        }
        "GenerateRandom" => crypto::generate_random(parse(body)?),
        "EnableKey" => lifecycle::enable_key(kms, caller, parse(body)?, note),
        "DisableKey" => lifecycle::disable_key(kms, caller, parse(body)?, note),
        "ScheduleKeyDeletion" => lifecycle::schedule_key_deletion(kms, caller, parse(body)?, note),
        "CancelKeyDeletion" => lifecycle::cancel_key_deletion(kms, caller, parse(body)?, note),
        "ReEncrypt" => crypto::re_encrypt(kms, caller, parse(body)?, note),
        "EnableKeyRotation" => rotation::enable_key_rotation(kms, caller, parse(body)?, note),
        "DisableKeyRotation" => rotation::disable_key_rotation(kms, caller, parse(body)?, note),
        "GetKeyRotationStatus" => {
            rotation::get_key_rotation_status(kms, caller, parse(body)?, note)
        }
        "RotateKeyOnDemand" => rotation::rotate_key_on_demand(kms, caller, parse(body)?, note),
        "ListKeyRotations" => rotation::list_key_rotations(kms, caller, parse(body)?, note),
        "CreateGrant" => grants::create_grant(kms, caller, parse(body)?, note),
        "ListGrants" => grants::list_grants(kms, caller, parse(body)?, note),
        "ListRetirableGrants" => grants::list_retirable_grants(kms, caller, parse(body)?),
        "RetireGrant" => grants::retire_grant(kms, caller, parse(body)?, note),
        "RevokeGrant" => grants::revoke_grant(kms, caller, parse(body)?, note),
        "GetKeyPolicy" => policies::get_key_policy(kms, caller, parse(body)?, note),
        "PutKeyPolicy" => policies::put_key_policy(kms, caller, parse(body)?, note),
        op if NOT_IMPLEMENTED.contains(&op) => Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            format!("{op} is not supported by this KMS yet"),
        )),
        op => Err(KmsError::new(
            ErrorKind::UnknownOperation,
            format!("unknown operation {op:?}"),
        )),
    }
}

/// Parses a request body. An empty body is an empty object, as AWS treats it.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, KmsError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        // serde_json's messages describe the offending token and position,
        // and may quote it: that is the caller's own input, sent back to the
        // caller only (the audit log records the error type alone).
        KmsError::new(
            ErrorKind::Serialization,
            format!("invalid request body: {e}"),
        )
    })
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

pub(super) type Context = BTreeMap<String, String>;

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
pub(super) fn check_context(ctx: &Context) -> Result<(), KmsError> {
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
