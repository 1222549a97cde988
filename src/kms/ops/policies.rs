//! GetKeyPolicy, PutKeyPolicy.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::audit::AuditNote;
use super::super::core::{Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::policy::Policy;
use super::super::store::Store;
use super::request::authorized_key_no_context;

/// A key policy as CreateKey and PutKeyPolicy accept it: parsed (malformed
/// JSON, duplicate keys and unknown principals refused), bound to the ids its
/// principals have now — a user re-created later under a name the policy
/// uses is another principal — and passed through AWS's lock-out safety
/// check: a new key policy under which the caller could no longer call
/// PutKeyPolicy is refused, unless the caller says
/// BypassPolicyLockoutSafetyCheck (and means it). envol's account root may
/// always change a key policy, so for the root the check always passes.
/// Returns the principal bindings to store beside the policy text.
pub(super) fn accepted_policy(
    kms: &Kms,
    caller: &Caller<'_>,
    policy_text: &str,
    key_arn: &str,
    bypass: Option<bool>,
) -> Result<BTreeMap<String, String>, KmsError> {
    let parsed = Policy::parse(policy_text)
        .map_err(|e| KmsError::new(ErrorKind::MalformedPolicyDocument, e.to_string()))?;
    let principals = kms.bind_policy_principals(&parsed)?;
    let bound = parsed.bind(principals.clone());
    if bypass == Some(true) || kms.could_put_key_policy(&bound, caller, key_arn) {
        return Ok(principals);
    }
    Err(KmsError::new(
        ErrorKind::MalformedPolicyDocument,
        "The new key policy will not allow you to update the key policy in the future.",
    ))
}

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
    caller: &Caller<'_>,
    req: GetKeyPolicyRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:GetKeyPolicy", note)?;
    check_policy_name(req.policy_name.as_deref())?;
    Ok(json!({ "Policy": key.policy, "PolicyName": "default" }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct PutKeyPolicyRequest {
    key_id: String,
    policy_name: Option<String>,
    policy: String,
    bypass_policy_lockout_safety_check: Option<bool>,
}

pub(super) fn put_key_policy(
    kms: &Kms,
    caller: &Caller<'_>,
    req: PutKeyPolicyRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let mut key = authorized_key_no_context(kms, caller, &req.key_id, "kms:PutKeyPolicy", note)?;
    check_policy_name(req.policy_name.as_deref())?;
    kms.require_not_pending_deletion(&key)?;
    let policy_principals = accepted_policy(
        kms,
        caller,
        &req.policy,
        &key.arn,
        req.bypass_policy_lockout_safety_check,
    )?;
    key.policy = req.policy;
    key.policy_principals = policy_principals;
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({}))
}
