//! CreateAlias, UpdateAlias, DeleteAlias, ListAliases.
//!
//! An alias names one key; changing the alias's target is how users move a
//! workload to a new key without touching its configuration.

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::audit::AuditNote;
use super::super::clock::aws_timestamp;
use super::super::core::{Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::store::{AliasRow, KeyRow};
use super::request::{EncryptionContext, decode_marker, encode_marker, page_limit};

/// AWS's rules: `alias/` + 1-250 of `A-Za-z0-9/_-`, not `alias/aws/` in
/// any case (`alias/AWS/x` too): that prefix is AWS-managed keys', and AWS
/// refuses it with NotAuthorizedException.
fn validate_alias_name(name: &str) -> Result<(), KmsError> {
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(KmsError::validation(format!(
            "Alias must start with the prefix \"alias/\": {name:?}"
        )));
    };
    if rest.is_empty()
        || name.len() > 256
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
    {
        return Err(KmsError::new(
            ErrorKind::InvalidAliasName,
            format!("Alias name {name:?} must be alias/ followed by 1-250 of A-Z a-z 0-9 / _ -"),
        ));
    }
    if rest
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("aws/"))
    {
        return Err(KmsError::new(
            ErrorKind::NotAuthorized,
            "Cannot create, update or delete an alias with the prefix 'alias/aws/' (any case): it is reserved for AWS managed keys.",
        ));
    }
    Ok(())
}

/// The alias named `name`, or AWS's NotFoundException for it.
fn existing_alias(kms: &Kms, name: &str) -> Result<AliasRow, KmsError> {
    kms.store.alias(name)?.ok_or_else(|| {
        KmsError::not_found(format!("Alias '{}' is not found.", kms.alias_arn(name)))
    })
}

/// An alias's target must be a key id or key ARN, never another alias.
fn resolve_target(kms: &Kms, target: &str) -> Result<KeyRow, KmsError> {
    if target.starts_with("alias/") || target.contains(":alias/") {
        return Err(KmsError::validation(
            "TargetKeyId must be a key id or key ARN, not an alias",
        ));
    }
    kms.resolve_key(target)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CreateAliasRequest {
    alias_name: String,
    target_key_id: String,
}

pub(super) fn create_alias(
    kms: &Kms,
    caller: &Caller<'_>,
    req: CreateAliasRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    validate_alias_name(&req.alias_name)?;
    let key = resolve_target(kms, &req.target_key_id)?;
    note.key_arn = Some(key.arn.clone());
    kms.authorize(caller, &key, "kms:CreateAlias", &EncryptionContext::new())?;
    kms.require_not_pending_deletion(&key)?;
    if !kms
        .store
        .insert_alias(&req.alias_name, &key.key_id, kms.now_ms())?
    {
        return Err(KmsError::new(
            ErrorKind::AlreadyExists,
            format!(
                "An alias with the name {} already exists",
                kms.alias_arn(&req.alias_name)
            ),
        ));
    }
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct UpdateAliasRequest {
    alias_name: String,
    target_key_id: String,
}

pub(super) fn update_alias(
    kms: &Kms,
    caller: &Caller<'_>,
    req: UpdateAliasRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    validate_alias_name(&req.alias_name)?;
    let alias = existing_alias(kms, &req.alias_name)?;
    let new_key = resolve_target(kms, &req.target_key_id)?;
    note.key_arn = Some(new_key.arn.clone());
    // Moving an alias needs permission on both the old and the new key.
    if let Some(old_key) = kms.store.key(&alias.key_id)? {
        kms.authorize(
            caller,
            &old_key,
            "kms:UpdateAlias",
            &EncryptionContext::new(),
        )?;
    }
    kms.authorize(
        caller,
        &new_key,
        "kms:UpdateAlias",
        &EncryptionContext::new(),
    )?;
    kms.require_not_pending_deletion(&new_key)?;
    kms.store
        .update_alias(&req.alias_name, &new_key.key_id, kms.now_ms())?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct DeleteAliasRequest {
    alias_name: String,
}

pub(super) fn delete_alias(
    kms: &Kms,
    caller: &Caller<'_>,
    req: DeleteAliasRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    validate_alias_name(&req.alias_name)?;
    let alias = existing_alias(kms, &req.alias_name)?;
    if let Some(key) = kms.store.key(&alias.key_id)? {
        note.key_arn = Some(key.arn.clone());
        kms.authorize(caller, &key, "kms:DeleteAlias", &EncryptionContext::new())?;
    }
    kms.store.delete_alias(&req.alias_name)?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListAliasesRequest {
    key_id: Option<String>,
    limit: Option<i64>,
    marker: Option<String>,
}

/// Like ListKeys, an account-level listing open to every principal of the
/// account (envol has no IAM policies to restrict it).
pub(super) fn list_aliases(
    kms: &Kms,
    _caller: &Caller<'_>,
    req: ListAliasesRequest,
) -> Result<Value, KmsError> {
    let limit = page_limit(req.limit)?;
    let after = decode_marker(req.marker.as_deref())?;
    let key_id = match req.key_id.as_deref() {
        Some(k) => Some(kms.resolve_key(k)?.key_id),
        None => None,
    };
    let mut rows = kms
        .store
        .list_aliases(key_id.as_deref(), after.as_deref(), limit + 1)?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let aliases: Vec<Value> = rows
        .iter()
        .map(|a| {
            json!({
                "AliasName": a.name,
                "AliasArn": kms.alias_arn(&a.name),
                "TargetKeyId": a.key_id,
                "CreationDate": aws_timestamp(a.created_ms),
                "LastUpdatedDate": aws_timestamp(a.updated_ms),
            })
        })
        .collect();
    let mut out = json!({ "Aliases": aliases, "Truncated": truncated });
    if truncated && let Some(last) = rows.last() {
        out["NextMarker"] = json!(encode_marker(&last.name));
    }
    Ok(out)
}
