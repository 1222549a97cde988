//! The work the clock schedules: keys whose deletion window has passed are
//! destroyed, then keys whose automatic rotation is due get their new
//! version. `Kms::sweep` runs it on every request (so nobody ever uses a key
//! past its window, to the millisecond), when a data directory is opened, and
//! from the server's periodic sweep (so an idle KMS keeps time too).

use super::audit::AuditNote;
use super::core::Kms;
use super::error::KmsError;
use super::store::Store;

impl Kms {
    /// Destroys the keys past their deletion window, then rotates the keys
    /// due for automatic rotation.
    pub fn sweep(&self) -> Result<(), KmsError> {
        self.destroy_due_keys()?;
        self.rotate_due_keys()?;
        Ok(())
    }

    /// Destroys every key whose deletion window has passed: material, versions,
    /// aliases, tags, grants. Returns the ARNs destroyed (each is audited).
    pub fn destroy_due_keys(&self) -> Result<Vec<String>, KmsError> {
        let due = self.store.keys_due_for_deletion(self.now_ms())?;
        let mut destroyed = Vec::new();
        for key_id in due {
            self.store
                .transaction(|tx| Store::delete_key(tx, &key_id))?;
            let arn = self.key_arn(&key_id);
            self.audit(
                &uuid::Uuid::new_v4().to_string(),
                None,
                Some("envol-kms"),
                "DeleteKey",
                &AuditNote {
                    key_arn: Some(arn.clone()),
                    ..AuditNote::default()
                },
                None,
            );
            tracing::info!("destroyed {arn}: its deletion window has passed");
            destroyed.push(arn);
        }
        if !destroyed.is_empty() {
            self.store.checkpoint()?;
        }
        Ok(destroyed)
    }
}
