//! The audit log: one JSON line per request, appended to `DIR/audit.log`.
//!
//! A line records who asked for what on which key and how it ended — never a
//! plaintext, key, secret or signature. Lines are written with one `write`
//! call on an O_APPEND file so concurrent writers (threads, or the CLI and
//! the server) never interleave within a line.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use super::datadir::open_private_append;

/// What an operation tells the audit log beyond the request itself: the
/// operation fills it in as it learns which key it acts on, and the
/// dispatcher writes it, whatever the outcome.
#[derive(Debug, Default)]
pub struct AuditNote {
    pub key_arn: Option<String>,
    /// The second key of a two-key operation (ReEncrypt's destination).
    pub destination_key_arn: Option<String>,
    pub encryption_context: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub principal: Option<&'a str>,
    pub source: Option<&'a str>,
    pub operation: &'a str,
    pub key: Option<&'a str>,
    /// The second key of a two-key operation (ReEncrypt's destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context: Option<&'a BTreeMap<String, String>>,
    pub outcome: &'static str,
    pub error: Option<&'a str>,
}

#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        Ok(AuditLog {
            file: Mutex::new(open_private_append(path)?),
        })
    }

    /// Appends one record. A failure to audit is reported to the caller,
    /// who decides (the service logs it; it does not hide it).
    pub fn record(&self, rec: &AuditRecord<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)
    }
}
