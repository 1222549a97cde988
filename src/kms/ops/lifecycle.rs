//! Key states: EnableKey, DisableKey, ScheduleKeyDeletion, CancelKeyDeletion
//! (the state machine is drawn in `key_state.rs`).
//!
//! A disabled key refuses every cryptographic operation (DisabledException);
//! a key pending deletion refuses them with KMSInvalidStateException. Once the
//! window has passed, `Kms::destroy_due_keys` (`schedule.rs`) deletes the key's material,
//! versions and aliases: every ciphertext under it becomes undecryptable.

use chrono::Duration;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::audit::AuditNote;
use super::super::clock::aws_timestamp;
use super::super::core::pending_deletion;
use super::super::core::{Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::key_state::KeyState;
use super::super::store::Store;
use super::request::{KeyIdRequest, authorized_key_no_context};

fn set_state(
    kms: &Kms,
    caller: &Caller<'_>,
    key_id: &str,
    action: &str,
    state: KeyState,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let mut key = authorized_key_no_context(kms, caller, key_id, action, note)?;
    kms.require_not_pending_deletion(&key)?;
    key.state = state;
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({}))
}

pub(super) fn enable_key(
    kms: &Kms,
    caller: &Caller<'_>,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    set_state(
        kms,
        caller,
        &req.key_id,
        "kms:EnableKey",
        KeyState::Enabled,
        note,
    )
}

pub(super) fn disable_key(
    kms: &Kms,
    caller: &Caller<'_>,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    set_state(
        kms,
        caller,
        &req.key_id,
        "kms:DisableKey",
        KeyState::Disabled,
        note,
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ScheduleKeyDeletionRequest {
    key_id: String,
    pending_window_in_days: Option<i64>,
}

pub(super) fn schedule_key_deletion(
    kms: &Kms,
    caller: &Caller<'_>,
    req: ScheduleKeyDeletionRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let days = req.pending_window_in_days.unwrap_or(30);
    if !(7..=30).contains(&days) {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30"
        )));
    }
    let mut key =
        authorized_key_no_context(kms, caller, &req.key_id, "kms:ScheduleKeyDeletion", note)?;
    if key.state == KeyState::PendingDeletion {
        return Err(pending_deletion(&key));
    }
    let when = kms.clock().now() + Duration::days(days);
    key.state = KeyState::PendingDeletion;
    key.deletion_date_ms = Some(when.timestamp_millis());
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({
        "KeyId": key.arn,
        "DeletionDate": aws_timestamp(when.timestamp_millis()),
        "KeyState": KeyState::PendingDeletion.as_str(),
        "PendingWindowInDays": days,
    }))
}

pub(super) fn cancel_key_deletion(
    kms: &Kms,
    caller: &Caller<'_>,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let mut key =
        authorized_key_no_context(kms, caller, &req.key_id, "kms:CancelKeyDeletion", note)?;
    if key.state != KeyState::PendingDeletion {
        return Err(KmsError::new(
            ErrorKind::InvalidState,
            format!("{} is not pending deletion.", key.arn),
        ));
    }
    // As AWS: a cancelled deletion leaves the key Disabled, so nothing
    // starts using it again by surprise.
    key.state = KeyState::Disabled;
    key.deletion_date_ms = None;
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({ "KeyId": key.arn }))
}
