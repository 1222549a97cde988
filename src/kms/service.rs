//! The service's front: `Kms::open` and `Kms::handle`.
//!
//! `Kms::handle(request, operation, body)` is the whole API: the HTTP layer
//! authenticates a request and calls it; `envol up` embeds it and calls it
//! in-process; tests and the fuzzer call it directly. It runs the scheduled
//! key work that fell due, dispatches to the operation (`ops`), and writes
//! one audit line per request, whatever the outcome.
//!
//! Layering: `http` → `service` → `ops` → `core` → `store`. Nothing below
//! imports anything above it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use chrono::SecondsFormat;

use super::audit::{AuditNote, AuditRecord, Rotation};
use super::clock::Clock;
use super::datadir::DataDir;
use super::error::KmsError;
use super::iam::Principal;
use super::metrics::KmsMetrics;
use super::ops;

use super::core::Caller;
pub use super::core::{DEFAULT_ON_DEMAND_ROTATION_LIMIT, Kms, ServiceError, validate_region};

/// Who is asking, where from and how: the HTTP layer fills this in after
/// SigV4.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub principal: Principal,
    pub request_id: String,
    pub source: Option<String>,
    /// Whether the request came over TLS (the `aws:SecureTransport`
    /// condition key): a fact about the transport, set by whoever received
    /// the request.
    pub secure_transport: bool,
}

impl Kms {
    /// Opens an initialised data directory (see `Kms::load` for the checks)
    /// and does the scheduled work that fell due while nothing was running.
    pub fn open(dir: &DataDir, clock: Arc<dyn Clock>) -> Result<Kms, ServiceError> {
        let kms = Kms::load(dir, clock)?;
        kms.sweep()?;
        Ok(kms)
    }

    /// Runs one KMS operation for an authenticated caller and audits it.
    pub fn handle(
        &self,
        request: &RequestContext,
        operation: &str,
        body: &[u8],
    ) -> Result<Value, KmsError> {
        // Deletion windows and rotation schedules are enforced on every
        // request, to the millisecond: a key past its window is gone, and a
        // key due for rotation has its new version, before anyone uses it.
        if let Err(e) = self.sweep() {
            tracing::error!("scheduled key work: {e}");
        }
        let mut note = AuditNote::default();
        let caller = Caller {
            principal: &request.principal,
            secure_transport: request.secure_transport,
        };
        let started = Instant::now();
        let result = ops::dispatch(self, &caller, operation, body, &mut note);
        self.requests.record(
            ops::operation_label(operation),
            result.as_ref().err().map_or("ok", |e| e.kind.aws_type()),
            Some(started.elapsed()),
        );
        self.audit(
            &request.request_id,
            Some(&request.principal.arn),
            request.source.as_deref(),
            operation,
            &note,
            result.as_ref().err().map(|e| e.kind.aws_type()),
        );
        result
    }

    /// Audits a request that never reached an operation (authentication
    /// failed, body too large, ...).
    pub fn audit_rejected(
        &self,
        request_id: &str,
        source: Option<&str>,
        operation: &str,
        error: &KmsError,
    ) {
        self.requests
            .record(ops::operation_label(operation), error.kind.aws_type(), None);
        self.audit(
            request_id,
            None,
            source,
            operation,
            &AuditNote::default(),
            Some(error.kind.aws_type()),
        );
    }

    /// Audits a request refused before anyone was authenticated (bad or
    /// missing signature, unknown access key, oversized or stalled body).
    /// These cost a stranger nothing, so they are rate-limited in the log:
    /// the first of each interval is written, the rest counted into a
    /// summary line (see `audit`).
    pub fn audit_unauthenticated(
        &self,
        request_id: &str,
        source: Option<&str>,
        operation: &str,
        error: &KmsError,
    ) {
        self.requests
            .record(ops::operation_label(operation), error.kind.aws_type(), None);
        let rec = AuditRecord {
            time: self.audit_time(),
            request_id,
            principal: None,
            source,
            operation,
            key: None,
            destination_key: None,
            encryption_context: None,
            outcome: "failure",
            error: Some(error.kind.aws_type()),
        };
        if let Err(e) = self.audit_log().record_unauthenticated(&rec) {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    /// Writes the summary of unauthenticated failures counted so far: when
    /// their interval is over, or at once with `now_regardless` (shutdown).
    pub fn flush_audit_summary(&self, now_regardless: bool) {
        let time = self.audit_time();
        if let Err(e) = self
            .audit_log()
            .flush_unauthenticated(&time, now_regardless)
        {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    /// The KMS's Prometheus metrics (requests by operation and outcome,
    /// latency by operation, keys by state), as a collector to register
    /// (`Registry::register_collector`).
    pub fn metrics(self: &Arc<Self>) -> KmsMetrics {
        KmsMetrics {
            requests: self.requests.clone(),
            keys: self.clone(),
        }
    }

    /// Sets when the audit log rotates (`--audit-max-size`, `--audit-keep`).
    pub fn set_audit_rotation(&self, rotation: Rotation) {
        self.audit_log().set_rotation(rotation);
    }

    fn audit_time(&self) -> String {
        self.clock()
            .now()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}
