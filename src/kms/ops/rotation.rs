//! EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
//! RotateKeyOnDemand, ListKeyRotations: the API over `rotation.rs`.
//!
//! Automatic rotation is a schedule stored on the key (period in days and
//! the next rotation date); the clock-driven sweep performs it. As in AWS,
//! the schedule can be changed only while the key is Enabled, and a key
//! pending deletion reports rotation as disabled (its schedule is kept and
//! comes back if the deletion is cancelled).

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::audit::AuditNote;
use super::super::clock::aws_timestamp;
use super::super::core::{Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::key_state::KeyState;
use super::super::rotation::{DAY_MS, RotationKind, next_rotation_after};
use super::super::store::Store;
use super::request::{
    KeyIdRequest, authorized_key_no_context, decode_marker, encode_marker, page_limit,
};

const DEFAULT_PERIOD_DAYS: i64 = 365;
const MIN_PERIOD_DAYS: i64 = 90;
const MAX_PERIOD_DAYS: i64 = 2560;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct EnableKeyRotationRequest {
    key_id: String,
    rotation_period_in_days: Option<i64>,
}

pub(super) fn enable_key_rotation(
    kms: &Kms,
    caller: &Caller<'_>,
    req: EnableKeyRotationRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let period = req.rotation_period_in_days.unwrap_or(DEFAULT_PERIOD_DAYS);
    if !(MIN_PERIOD_DAYS..=MAX_PERIOD_DAYS).contains(&period) {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{period}' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value between {MIN_PERIOD_DAYS} and {MAX_PERIOD_DAYS}"
        )));
    }
    let mut key =
        authorized_key_no_context(kms, caller, &req.key_id, "kms:EnableKeyRotation", note)?;
    kms.require_enabled(&key)?;
    let now = kms.now_ms();
    key.next_rotation_ms = Some(match (key.rotation_period_days, key.next_rotation_ms) {
        // Already rotating: keep the schedule's anchor (the last rotation or
        // the day rotation was enabled) and apply the new period from it; an
        // anchor more than a period ago makes the rotation due now.
        (Some(old), Some(next)) => {
            let anchor = next - old * DAY_MS;
            (anchor + period * DAY_MS).max(now)
        }
        _ => next_rotation_after(now, now, period),
    });
    key.rotation_period_days = Some(period);
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({}))
}

pub(super) fn disable_key_rotation(
    kms: &Kms,
    caller: &Caller<'_>,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let mut key =
        authorized_key_no_context(kms, caller, &req.key_id, "kms:DisableKeyRotation", note)?;
    kms.require_enabled(&key)?;
    key.rotation_period_days = None;
    key.next_rotation_ms = None;
    kms.store.transaction(|tx| Store::update_key(tx, &key))?;
    Ok(json!({}))
}

pub(super) fn get_key_rotation_status(
    kms: &Kms,
    caller: &Caller<'_>,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let key =
        authorized_key_no_context(kms, caller, &req.key_id, "kms:GetKeyRotationStatus", note)?;
    // On-demand rotations here complete inside the request, so none is ever
    // in progress and OnDemandRotationStartDate is never reported.
    let mut out = json!({ "KeyId": key.arn, "KeyRotationEnabled": false });
    if key.state != KeyState::PendingDeletion
        && let (Some(period), Some(next)) = (key.rotation_period_days, key.next_rotation_ms)
    {
        out["KeyRotationEnabled"] = json!(true);
        out["RotationPeriodInDays"] = json!(period);
        out["NextRotationDate"] = aws_timestamp(next);
    }
    Ok(out)
}

pub(super) fn rotate_key_on_demand(
    kms: &Kms,
    caller: &Caller<'_>,
    req: KeyIdRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:RotateKeyOnDemand", note)?;
    kms.require_enabled(&key)?;
    kms.rotate(&key.key_id, RotationKind::OnDemand)?;
    Ok(json!({ "KeyId": key.arn }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListKeyRotationsRequest {
    key_id: String,
    limit: Option<i64>,
    marker: Option<String>,
    include_key_material: Option<String>,
}

pub(super) fn list_key_rotations(
    kms: &Kms,
    caller: &Caller<'_>,
    req: ListKeyRotationsRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let limit = page_limit(req.limit)?;
    match req.include_key_material.as_deref() {
        None | Some("ROTATIONS_ONLY") => {}
        Some("ALL_KEY_MATERIAL") => {
            return Err(KmsError::new(
                ErrorKind::UnsupportedOperation,
                "IncludeKeyMaterial ALL_KEY_MATERIAL applies to imported key material, which this KMS does not support",
            ));
        }
        Some(other) => {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value '{other}' at 'includeKeyMaterial' failed to satisfy constraint: Member must satisfy enum value set: [ALL_KEY_MATERIAL, ROTATIONS_ONLY]"
            )));
        }
    }
    let after = match decode_marker(req.marker.as_deref())? {
        None => 0,
        Some(m) => m
            .parse::<u32>()
            .map_err(|_| KmsError::new(ErrorKind::InvalidMarker, "Invalid marker"))?,
    };
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:ListKeyRotations", note)?;
    let newest = kms
        .store
        .newest_version(&key.key_id)?
        .map(|v| v.version)
        .unwrap_or(0);
    let mut rows = kms.store.list_rotations(&key.key_id, after, limit + 1)?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let rotations: Vec<Value> = rows
        .iter()
        .map(|v| {
            json!({
                "KeyId": key.key_id,
                "RotationDate": aws_timestamp(v.created_ms),
                "RotationType": v.rotation_type,
                "KeyMaterialState": if v.version == newest { "CURRENT" } else { "NON_CURRENT" },
            })
        })
        .collect();
    let mut out = json!({ "Rotations": rotations, "Truncated": truncated });
    if truncated && let Some(last) = rows.last() {
        out["NextMarker"] = json!(encode_marker(&last.version.to_string()));
    }
    Ok(out)
}
