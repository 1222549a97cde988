//! CreateKey, DescribeKey, ListKeys.

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::audit::AuditNote;
use super::super::clock::aws_timestamp;
use super::super::core::{Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::grant;
use super::super::key_state::KeyState;
use super::super::policy;
use super::super::store::{KeyRow, Store, VersionRow};
use super::policies::accepted_policy;
use super::request::{authorized_key_no_context, decode_marker, encode_marker, page_limit};
use super::tags::{Tag, store_tags, validate_tags};

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CreateKeyRequest {
    description: Option<String>,
    policy: Option<String>,
    key_usage: Option<String>,
    key_spec: Option<String>,
    customer_master_key_spec: Option<String>,
    origin: Option<String>,
    multi_region: Option<bool>,
    tags: Option<Vec<Tag>>,
    bypass_policy_lockout_safety_check: Option<bool>,
}

/// The KeyMetadata structure AWS returns from CreateKey and DescribeKey.
pub(super) fn key_metadata(kms: &Kms, k: &KeyRow) -> Value {
    let mut m = json!({
        "AWSAccountId": kms.account_id(),
        "KeyId": k.key_id,
        "Arn": k.arn,
        "CreationDate": aws_timestamp(k.created_ms),
        "Enabled": k.state == KeyState::Enabled,
        "Description": k.description,
        "KeyUsage": k.key_usage,
        "KeyState": k.state.as_str(),
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": k.key_spec,
        "KeySpec": k.key_spec,
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": false,
    });
    if let Some(d) = k.deletion_date_ms {
        m["DeletionDate"] = aws_timestamp(d);
    }
    m
}

pub(super) fn create_key(
    kms: &Kms,
    caller: &Caller<'_>,
    req: CreateKeyRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let usage = req.key_usage.as_deref().unwrap_or("ENCRYPT_DECRYPT");
    if usage != "ENCRYPT_DECRYPT" {
        return Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            format!("KeyUsage {usage} is not supported: this KMS makes ENCRYPT_DECRYPT keys"),
        ));
    }
    let spec = match (
        req.key_spec.as_deref(),
        req.customer_master_key_spec.as_deref(),
    ) {
        (Some(a), Some(b)) if a != b => {
            return Err(KmsError::validation(
                "KeySpec and CustomerMasterKeySpec disagree",
            ));
        }
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => "SYMMETRIC_DEFAULT",
    };
    if spec != "SYMMETRIC_DEFAULT" {
        return Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            format!("KeySpec {spec} is not supported: this KMS makes SYMMETRIC_DEFAULT keys"),
        ));
    }
    if let Some(origin) = req.origin.as_deref()
        && origin != "AWS_KMS"
    {
        return Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            format!("Origin {origin} is not supported"),
        ));
    }
    if req.multi_region == Some(true) {
        return Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            "multi-Region keys are not supported",
        ));
    }
    let description = req.description.unwrap_or_default();
    if description.chars().count() > 8192 {
        return Err(KmsError::validation(
            "Description must be at most 8192 characters",
        ));
    }
    let key_id = uuid::Uuid::new_v4().to_string();
    let arn = kms.key_arn(&key_id);
    let policy_text = match req.policy {
        Some(p) => p,
        None => policy::default_key_policy(kms.account_id(), &caller.principal.arn),
    };
    // Bound to the ids of the principals it names now (the default policy:
    // the creator's).
    let policy_principals = accepted_policy(
        kms,
        caller,
        &policy_text,
        &arn,
        req.bypass_policy_lockout_safety_check,
    )?;
    let tags = req.tags.unwrap_or_default();
    validate_tags(&tags)?;

    let now = kms.now_ms();
    let row = KeyRow {
        key_id: key_id.clone(),
        arn,
        description,
        key_usage: usage.to_string(),
        key_spec: spec.to_string(),
        state: KeyState::Enabled,
        created_ms: now,
        policy: policy_text,
        deletion_date_ms: None,
        rotation_period_days: None,
        next_rotation_ms: None,
        creator: caller.principal.arn.clone(),
        policy_principals,
    };
    let material = crate::kms::seal::generate_material();
    let version = VersionRow {
        version: 1,
        sealed_material: kms.seal_material(&key_id, 1, &material),
        created_ms: now,
        rotation_type: None,
    };
    // Key, first version and tags land together or not at all.
    kms.store.transaction(|tx| {
        Store::insert_key(tx, &row)?;
        Store::insert_version(tx, &key_id, &version)?;
        store_tags(tx, &key_id, &row.arn, &tags)
    })?;
    note.key_arn = Some(row.arn.clone());
    Ok(json!({ "KeyMetadata": key_metadata(kms, &row) }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct DescribeKeyRequest {
    key_id: String,
    grant_tokens: Option<Vec<String>>,
}

pub(super) fn describe_key(
    kms: &Kms,
    caller: &Caller<'_>,
    req: DescribeKeyRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    grant::check_tokens(req.grant_tokens.as_deref())?;
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:DescribeKey", note)?;
    Ok(json!({ "KeyMetadata": key_metadata(kms, &key) }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListKeysRequest {
    limit: Option<i64>,
    marker: Option<String>,
}

/// ListKeys is an account-level call: envol has no IAM policies, so every
/// authenticated principal of the account may list key ids (not use them).
pub(super) fn list_keys(
    kms: &Kms,
    _caller: &Caller<'_>,
    req: ListKeysRequest,
) -> Result<Value, KmsError> {
    let limit = page_limit(req.limit)?;
    let after = decode_marker(req.marker.as_deref())?;
    let mut rows = kms.store.list_keys(after.as_deref(), limit + 1)?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let keys: Vec<Value> = rows
        .iter()
        .map(|k| json!({ "KeyId": k.key_id, "KeyArn": k.arn }))
        .collect();
    let mut out = json!({ "Keys": keys, "Truncated": truncated });
    if truncated && let Some(last) = rows.last() {
        out["NextMarker"] = json!(encode_marker(&last.key_id));
    }
    Ok(out)
}
