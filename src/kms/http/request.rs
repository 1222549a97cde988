//! One KMS request, from its HTTP parts to its HTTP answer, without the
//! transport: the body bound, SigV4 verification, access key → principal,
//! the `POST /` + Content-Type + `X-Amz-Target` checks, `Kms::handle`, and
//! AWS's JSON error shape.
//!
//! The axum handler (`kms/http.rs`) and the `kms_request` fuzz target both
//! call [`respond`], so what is fuzzed is what is served. This file does no
//! I/O of its own beyond what the core does (SQLite, the audit log).

use serde_json::json;

use super::super::error::{ErrorKind, KmsError};
use super::super::service::{Kms, RequestContext};
use super::super::sigv4::{self, AuthError, SignedRequest};

/// Largest request body accepted. AWS KMS requests are small: the biggest
/// members are a 4 KiB plaintext, a 6 KiB ciphertext or a 32 KiB policy.
pub const MAX_BODY: usize = 256 * 1024;

const TARGET_PREFIX: &str = "TrentService.";
/// The media type of every request and answer (AWS JSON 1.1).
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The answer to one request, ready for any transport to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status: 200, or the error kind's AWS status.
    pub status: u16,
    /// Lowercase header names with their values: `content-type`,
    /// `x-amzn-requestid`, and for an error `x-amzn-errortype`.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body: the operation's result, or `{"__type", "message"}`.
    pub body: String,
}

impl Reply {
    fn ok(request_id: &str, body: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            headers: vec![
                ("content-type", CONTENT_TYPE.to_string()),
                ("x-amzn-requestid", request_id.to_string()),
            ],
            body: body.to_string(),
        }
    }

    fn error(request_id: &str, err: &KmsError) -> Reply {
        Reply {
            status: err.kind.http_status(),
            headers: vec![
                ("content-type", CONTENT_TYPE.to_string()),
                ("x-amzn-requestid", request_id.to_string()),
                ("x-amzn-errortype", err.kind.aws_type().to_string()),
            ],
            body: json!({ "__type": err.kind.aws_type(), "message": err.message }).to_string(),
        }
    }
}

/// Answers one request. `request.headers` carry lowercase names; the body
/// is refused past [`MAX_BODY`]. `request_id` names the request in the
/// answer and the audit log; `source` is the peer's address;
/// `secure_transport` says whether the request came over TLS (the
/// `aws:SecureTransport` condition key).
///
/// Blocking: verification and the operation touch SQLite and do crypto, so
/// an async caller runs this on a blocking thread.
pub fn respond(
    kms: &Kms,
    request: &SignedRequest<'_>,
    request_id: &str,
    source: &str,
    secure_transport: bool,
) -> Reply {
    match answer(kms, request, request_id, source, secure_transport) {
        Ok(value) => Reply::ok(request_id, &value),
        // The core audited it.
        Err(Refusal::Core(e)) => Reply::error(request_id, &e),
        Err(Refusal::Early(e)) => refuse(kms, request.headers, request_id, source, &e),
        Err(Refusal::Unauthenticated(e)) => {
            refuse_unauthenticated(kms, request.headers, request_id, source, &e)
        }
    }
}

/// Answers a request whose body could not be read whole because it is
/// larger than [`MAX_BODY`] (a transport stops reading there).
pub fn refuse_oversized(
    kms: &Kms,
    headers: &[(String, String)],
    request_id: &str,
    source: &str,
) -> Reply {
    refuse_unauthenticated(kms, headers, request_id, source, &body_too_large())
}

/// Answers a request whose body could not be read (the client went away
/// mid-body, or its chunked encoding was broken).
pub fn refuse_unreadable_body(
    kms: &Kms,
    headers: &[(String, String)],
    request_id: &str,
    source: &str,
    error: &dyn std::fmt::Display,
) -> Reply {
    let err = KmsError::new(
        ErrorKind::Serialization,
        format!("the request body could not be read: {error}"),
    );
    refuse_unauthenticated(kms, headers, request_id, source, &err)
}

/// Answers a request whose body did not arrive whole within `deadline` (a
/// transport stops waiting there and closes the connection).
pub fn refuse_slow_body(
    kms: &Kms,
    headers: &[(String, String)],
    request_id: &str,
    source: &str,
    deadline: std::time::Duration,
) -> Reply {
    let err = KmsError::new(
        ErrorKind::RequestTimeout,
        format!(
            "the request body did not arrive within {} s",
            deadline.as_secs_f64()
        ),
    );
    refuse_unauthenticated(kms, headers, request_id, source, &err)
}

/// Answers a request whose handling failed outright (the thread running
/// [`respond`] died).
pub fn refuse_internal(
    kms: &Kms,
    headers: &[(String, String)],
    request_id: &str,
    source: &str,
) -> Reply {
    let err = KmsError::internal("request handler failed");
    refuse(kms, headers, request_id, source, &err)
}

/// Why a request got no result: refused before anyone was authenticated
/// (audited here, rate-limited), refused before the core (audited here), or
/// by the core (which audits its own).
enum Refusal {
    Unauthenticated(KmsError),
    Early(KmsError),
    Core(KmsError),
}

fn answer(
    kms: &Kms,
    request: &SignedRequest<'_>,
    request_id: &str,
    source: &str,
    secure_transport: bool,
) -> Result<serde_json::Value, Refusal> {
    if request.body.len() > MAX_BODY {
        return Err(Refusal::Unauthenticated(body_too_large()));
    }
    let principal = std::cell::RefCell::new(None);
    let lookup = |akid: &str| match kms.credentials(akid) {
        Ok(Some((p, secret))) => {
            *principal.borrow_mut() = Some(p);
            Some(secret)
        }
        _ => None,
    };
    let verified = sigv4::verify(request, kms.clock().now(), kms.region(), "kms", lookup);
    if let Err(e) = verified {
        return Err(Refusal::Unauthenticated(auth_error(&e)));
    }
    let Some(principal) = principal.into_inner() else {
        return Err(Refusal::Unauthenticated(KmsError::new(
            ErrorKind::UnrecognizedClient,
            "The security token included in the request is invalid.",
        )));
    };
    if request.method != "POST" || request.path != "/" {
        return Err(Refusal::Early(KmsError::new(
            ErrorKind::UnknownOperation,
            "requests must be POST / with an X-Amz-Target header",
        )));
    }
    let content_type = header(request.headers, "content-type").unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(CONTENT_TYPE)
        && !media.eq_ignore_ascii_case("application/x-amz-json-1.0")
    {
        return Err(Refusal::Early(KmsError::new(
            ErrorKind::Serialization,
            format!("Content-Type must be {CONTENT_TYPE}"),
        )));
    }
    let Some(operation) = target_operation(request.headers) else {
        return Err(Refusal::Early(KmsError::new(
            ErrorKind::UnknownOperation,
            "missing or malformed X-Amz-Target header (expected TrentService.<Operation>)",
        )));
    };
    let ctx = RequestContext {
        principal,
        request_id: request_id.to_string(),
        source: Some(source.to_string()),
        secure_transport,
    };
    kms.handle(&ctx, operation, request.body)
        .map_err(Refusal::Core)
}

/// Audits a request refused before it reached the core, and renders the error.
fn refuse(
    kms: &Kms,
    headers: &[(String, String)],
    request_id: &str,
    source: &str,
    err: &KmsError,
) -> Reply {
    let operation = target_operation(headers).unwrap_or("-");
    kms.audit_rejected(request_id, Some(source), operation, err);
    Reply::error(request_id, err)
}

/// Audits a request refused before authentication (counted, not each
/// written: see `kms/audit.rs`), and renders the error.
fn refuse_unauthenticated(
    kms: &Kms,
    headers: &[(String, String)],
    request_id: &str,
    source: &str,
    err: &KmsError,
) -> Reply {
    let operation = target_operation(headers).unwrap_or("-");
    kms.audit_unauthenticated(request_id, Some(source), operation, err);
    Reply::error(request_id, err)
}

fn body_too_large() -> KmsError {
    KmsError::new(
        ErrorKind::RequestEntityTooLarge,
        format!("request body exceeds {MAX_BODY} bytes"),
    )
}

fn auth_error(e: &AuthError) -> KmsError {
    let kind = match e {
        AuthError::MissingAuthenticationToken(_) => ErrorKind::MissingAuthenticationToken,
        AuthError::IncompleteSignature(_) => ErrorKind::IncompleteSignature,
        AuthError::InvalidSignature(_) => ErrorKind::InvalidSignature,
        AuthError::UnrecognizedClient(_) => ErrorKind::UnrecognizedClient,
        AuthError::RequestExpired(_) => ErrorKind::RequestExpired,
    };
    KmsError::new(kind, e.message().to_string())
}

/// The first value of a header (names are lowercase).
fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The operation named by X-Amz-Target, if the header is well formed.
fn target_operation(headers: &[(String, String)]) -> Option<&str> {
    let op = header(headers, "x-amz-target")?.strip_prefix(TARGET_PREFIX)?;
    if op.is_empty() || op.len() > 64 || !op.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(op)
}
