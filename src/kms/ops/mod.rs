//! The KMS operations, one file per family: keys, aliases, cryptography,
//! key states, rotation, grants, key policies, tags. Each operation parses
//! its own typed request (AWS member names, PascalCase), checks the key
//! policy, and returns the response document AWS would.
//!
//! This file is the operation table: it names every operation and parses
//! request bodies. What several operations share (request members, paging,
//! the resolve → audit → authorize preamble) lives in `request.rs`; the
//! operation files import it and the core, never this file.

mod aliases;
mod crypto;
mod grants;
mod keys;
mod lifecycle;
mod policies;
mod request;
mod rotation;
mod tags;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::audit::AuditNote;
use super::core::{Caller, Kms};
use super::error::{ErrorKind, KmsError};

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
    "ReplicateKey",
    "Sign",
    "UpdateCustomKeyStore",
    "UpdateKeyDescription",
    "UpdatePrimaryRegion",
    "Verify",
    "VerifyMac",
];

/// The operations `dispatch` implements: with [`NOT_IMPLEMENTED`], the
/// names the metrics label requests with (keep it in step with the match
/// below; `ops_tests.rs` dispatches every name here).
const IMPLEMENTED: &[&str] = &[
    "CreateKey",
    "DescribeKey",
    "ListKeys",
    "CreateAlias",
    "UpdateAlias",
    "DeleteAlias",
    "ListAliases",
    "Encrypt",
    "Decrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateRandom",
    "EnableKey",
    "DisableKey",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "ReEncrypt",
    "EnableKeyRotation",
    "DisableKeyRotation",
    "GetKeyRotationStatus",
    "RotateKeyOnDemand",
    "ListKeyRotations",
    "CreateGrant",
    "ListGrants",
    "ListRetirableGrants",
    "RetireGrant",
    "RevokeGrant",
    "GetKeyPolicy",
    "PutKeyPolicy",
    "TagResource",
    "UntagResource",
    "ListResourceTags",
];

/// The metrics label of a requested operation: its name if this KMS knows
/// it, `unknown` otherwise (the name is the client's input: labels must
/// come from a fixed set).
pub(super) fn operation_label(operation: &str) -> &'static str {
    IMPLEMENTED
        .iter()
        .chain(NOT_IMPLEMENTED)
        .find(|known| **known == operation)
        .copied()
        .unwrap_or("unknown")
}

/// Runs `operation` for `caller`; what it learns for the audit log goes to `note`.
pub(super) fn dispatch(
    kms: &Kms,
    caller: &Caller<'_>,
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
        "TagResource" => tags::tag_resource(kms, caller, parse(body)?, note),
        "UntagResource" => tags::untag_resource(kms, caller, parse(body)?, note),
        "ListResourceTags" => tags::list_resource_tags(kms, caller, parse(body)?, note),
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

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
