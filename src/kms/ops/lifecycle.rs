//! Key states: EnableKey, DisableKey, ScheduleKeyDeletion, CancelKeyDeletion.
//!
//! ```text
//!   Enabled ──DisableKey──▶ Disabled ──EnableKey──▶ Enabled
//!      │                       │
//!      └──ScheduleKeyDeletion──┴──▶ PendingDeletion ──window passes──▶ destroyed
//!                                        │
//!                                        └──CancelKeyDeletion──▶ Disabled
//! ```
//!
//! A disabled key refuses every cryptographic operation (DisabledException);
//! a key pending deletion refuses them with KMSInvalidStateException. Once the
//! window has passed, `Kms::destroy_due_keys` deletes the key's material,
//! versions and aliases: every ciphertext under it becomes undecryptable.

use chrono::Duration;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::clock::aws_timestamp;
use super::super::error::{ErrorKind, KmsError};
use super::super::iam::Principal;
use super::super::service::{AuditNote, Kms};
use super::super::store::Store;
use super::Context;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct KeyIdRequest {
    key_id: String,
}

fn set_state(
    kms: &Kms,
    caller: &Principal,
    key_id: &str,
    action: &str,
    state: &str,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let mut key = kms.resolve_key(key_id)?;
    note.key_arn = Some(key.arn.clone());
    kms.authorize(caller, &key, action, &Context::new())?;
    kms.require_not_pending_deletion(&key)?;
    key.state = state.to_string();
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({}))
}

pub(super) fn enable_key(
    kms: &Kms,
    caller: &Principal,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    set_state(kms, caller, &req.key_id, "kms:EnableKey", "Enabled", note)
}

pub(super) fn disable_key(
    kms: &Kms,
    caller: &Principal,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    set_state(kms, caller, &req.key_id, "kms:DisableKey", "Disabled", note)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ScheduleKeyDeletionRequest {
    key_id: String,
    pending_window_in_days: Option<i64>,
}

pub(super) fn schedule_key_deletion(
    kms: &Kms,
    caller: &Principal,
    req: ScheduleKeyDeletionRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let days = req.pending_window_in_days.unwrap_or(30);
    if !(7..=30).contains(&days) {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30"
        )));
    }
    let mut key = kms.resolve_key(&req.key_id)?;
    note.key_arn = Some(key.arn.clone());
    kms.authorize(caller, &key, "kms:ScheduleKeyDeletion", &Context::new())?;
    if key.state == "PendingDeletion" {
        return Err(KmsError::new(
            ErrorKind::InvalidState,
            format!("{} is pending deletion.", key.arn),
        ));
    }
    let when = kms.clock().now() + Duration::days(days);
    key.state = "PendingDeletion".into();
    key.deletion_date_ms = Some(when.timestamp_millis());
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({
        "KeyId": key.arn,
        "DeletionDate": aws_timestamp(when.timestamp_millis()),
        "KeyState": "PendingDeletion",
        "PendingWindowInDays": days,
    }))
}

pub(super) fn cancel_key_deletion(
    kms: &Kms,
    caller: &Principal,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let mut key = kms.resolve_key(&req.key_id)?;
    note.key_arn = Some(key.arn.clone());
    kms.authorize(caller, &key, "kms:CancelKeyDeletion", &Context::new())?;
    if key.state != "PendingDeletion" {
        return Err(KmsError::new(
            ErrorKind::InvalidState,
            format!("{} is not pending deletion.", key.arn),
        ));
    }
    // As AWS: a cancelled deletion leaves the key Disabled, so nothing
    // starts using it again by surprise.
    key.state = "Disabled".into();
    key.deletion_date_ms = None;
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({ "KeyId": key.arn }))
}
