//! GetKeyPolicy, PutKeyPolicy.

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::error::{ErrorKind, KmsError};
use super::super::iam::Principal;
use super::super::policy::Policy;
use super::super::service::{AuditNote, Kms};
use super::super::store::Store;
use super::Context;

/// Symmetric keys have exactly one policy, named "default".
fn check_policy_name(name: Option<&str>) -> Result<(), KmsError> {
    match name {
        None | Some("default") => Ok(()),
        Some(other) => Err(KmsError::not_found(format!(
            "No such policy exists: {other:?} (keys have one policy, \"default\")"
        ))),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct GetKeyPolicyRequest {
    key_id: String,
    policy_name: Option<String>,
}

pub(super) fn get_key_policy(
    kms: &Kms,
    caller: &Principal,
    req: GetKeyPolicyRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let key = kms.resolve_key(&req.key_id)?;
    note.key_arn = Some(key.arn.clone());
    kms.authorize(caller, &key, "kms:GetKeyPolicy", &Context::new())?;
    check_policy_name(req.policy_name.as_deref())?;
    Ok(json!({ "Policy": key.policy, "PolicyName": "default" }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct PutKeyPolicyRequest {
    key_id: String,
    policy_name: Option<String>,
    policy: String,
    #[allow(dead_code)]
    bypass_policy_lockout_safety_check: Option<bool>,
}

pub(super) fn put_key_policy(
    kms: &Kms,
    caller: &Principal,
    req: PutKeyPolicyRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let mut key = kms.resolve_key(&req.key_id)?;
    note.key_arn = Some(key.arn.clone());
    kms.authorize(caller, &key, "kms:PutKeyPolicy", &Context::new())?;
    check_policy_name(req.policy_name.as_deref())?;
    kms.require_not_pending_deletion(&key)?;
    Policy::parse(&req.policy)
        .map_err(|e| KmsError::new(ErrorKind::MalformedPolicyDocument, e.to_string()))?;
    key.policy = req.policy;
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({}))
}
