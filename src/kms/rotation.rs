//! Key rotation: new versions of a master key's material.
//!
//! Rotation never re-encrypts anything. A new version is fresh random
//! material; Encrypt and GenerateDataKey* seal with the newest version, and
//! Decrypt opens a blob with the version its header names, so every
//! ciphertext ever made keeps decrypting while new ones use new material.
//!
//! A version is added in one transaction together with the key's next
//! rotation date (automatic rotation), so a crash leaves either both or
//! neither, and the version number is computed inside that transaction so
//! two concurrent rotations cannot collide. Automatic rotation is driven by
//! the injected clock from `Kms::sweep` (`schedule.rs`: every request, start-up, and the
//! server's periodic sweep). As in AWS, a disabled key or a key pending
//! deletion keeps its schedule but is not rotated; once it is enabled again
//! an overdue rotation happens at the next sweep.

use std::sync::atomic::Ordering;

use super::audit::AuditNote;
use super::core::Kms;
use super::error::{ErrorKind, KmsError};
use super::key_state::KeyState;
use super::store::{KeyRow, Store, VersionRow};

/// One day in the store's time unit (milliseconds).
pub(super) const DAY_MS: i64 = 86_400_000;

/// Why a version was made (ListKeyRotations' RotationType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RotationKind {
    Automatic,
    OnDemand,
}

impl RotationKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RotationKind::Automatic => "AUTOMATIC",
            RotationKind::OnDemand => "ON_DEMAND",
        }
    }
}

/// The rotation date after one falling due at `due`: one period later, but
/// never in the past (a key disabled for years rotates once, not N times).
pub(super) fn next_rotation_after(due_ms: i64, now_ms: i64, period_days: i64) -> i64 {
    let period = period_days.saturating_mul(DAY_MS);
    let next = due_ms.saturating_add(period);
    if next <= now_ms {
        now_ms.saturating_add(period)
    } else {
        next
    }
}

impl Kms {
    /// Sets how many on-demand rotations a key may have (AWS: 10).
    pub fn set_on_demand_rotation_limit(&self, limit: u32) {
        self.on_demand_rotation_limit
            .store(limit, Ordering::Relaxed);
    }

    pub fn on_demand_rotation_limit(&self) -> u32 {
        self.on_demand_rotation_limit.load(Ordering::Relaxed)
    }

    /// Adds a version to `key_id`. For `Automatic`, only if the key is still
    /// Enabled and due (re-checked inside the transaction) and the schedule
    /// moves on; for `OnDemand`, the key must be Enabled and under its
    /// on-demand limit, and the schedule is left alone (as AWS). Returns the
    /// new version, or `None` if an automatic rotation was no longer due.
    pub(super) fn rotate(&self, key_id: &str, kind: RotationKind) -> Result<Option<u32>, KmsError> {
        let now = self.now_ms();
        let material = super::seal::generate_material();
        let limit = self.on_demand_rotation_limit();
        self.store.transaction(|tx| {
            let Some(mut key) = Store::key_in(tx, key_id)? else {
                return Err(KmsError::not_found(format!(
                    "Key '{}' does not exist",
                    self.key_arn(key_id)
                )));
            };
            match kind {
                RotationKind::Automatic => {
                    let (Some(period), Some(due)) =
                        (key.rotation_period_days, key.next_rotation_ms)
                    else {
                        return Ok(None);
                    };
                    if key.state != KeyState::Enabled || due > now {
                        return Ok(None);
                    }
                    key.next_rotation_ms = Some(next_rotation_after(due, now, period));
                    Store::update_key(tx, &key)?;
                }
                RotationKind::OnDemand => {
                    self.require_enabled(&key)?;
                    if Store::count_rotations(tx, key_id, kind.as_str())? >= limit {
                        return Err(on_demand_limit_error(&key, limit));
                    }
                }
            }
            let version = Store::max_version(tx, key_id)? + 1;
            Store::insert_version(
                tx,
                key_id,
                &VersionRow {
                    version,
                    sealed_material: self.seal_material(key_id, version, &material),
                    created_ms: now,
                    rotation_type: Some(kind.as_str().to_string()),
                },
            )?;
            Ok(Some(version))
        })
    }

    /// Rotates every Enabled key whose automatic rotation is due; each
    /// rotation is audited as operation "RotateKey". Returns the ARNs rotated.
    pub fn rotate_due_keys(&self) -> Result<Vec<String>, KmsError> {
        let due = self.store.keys_due_for_rotation(self.now_ms())?;
        let mut rotated = Vec::new();
        for key_id in due {
            let Some(version) = self.rotate(&key_id, RotationKind::Automatic)? else {
                continue;
            };
            let arn = self.key_arn(&key_id);
            self.audit(
                &uuid::Uuid::new_v4().to_string(),
                None,
                Some("envol-kms"),
                "RotateKey",
                &AuditNote {
                    key_arn: Some(arn.clone()),
                    ..AuditNote::default()
                },
                None,
            );
            tracing::info!("rotated {arn}: version {version} (automatic rotation)");
            rotated.push(arn);
        }
        Ok(rotated)
    }
}

fn on_demand_limit_error(key: &KeyRow, limit: u32) -> KmsError {
    KmsError::new(
        ErrorKind::LimitExceeded,
        format!(
            "{} has reached its limit of {limit} on-demand rotations.",
            key.arn
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_rotation_never_lies_in_the_past() {
        assert_eq!(next_rotation_after(0, 0, 90), 90 * DAY_MS);
        assert_eq!(next_rotation_after(0, 10, 90), 90 * DAY_MS);
        // Overdue by more than a period (key was disabled): one period from now.
        assert_eq!(next_rotation_after(0, 400 * DAY_MS, 90), 490 * DAY_MS);
    }
}
