//! AWS Signature Version 4 request *verification* (the server side).
//!
//! This module is pure and synchronous: the HTTP layer collects the request
//! (method, raw path, raw query, every header as received, the whole body)
//! into a [`SignedRequest`] and calls [`verify`] with the current time, the
//! region and service this KMS answers for, and a function that looks up the
//! secret access key for an access key id. On success it returns who signed
//! the request ([`Verified`]); on failure an [`AuthError`] whose
//! [`aws_type`](AuthError::aws_type), [`http_status`](AuthError::http_status)
//! and [`message`](AuthError::message) are what the HTTP layer puts on the
//! wire (`{"__type": <aws_type>, "message": <message>}`).
//!
//! # What is accepted
//!
//! * Only the `Authorization` header form of SigV4 with algorithm
//!   `AWS4-HMAC-SHA256`:
//!   `AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/REGION/SERVICE/aws4_request,
//!   SignedHeaders=a;b;c, Signature=<64 hex>`. The components may come in any
//!   order, separated by commas with any amount of surrounding whitespace;
//!   unknown `key=value` components are ignored. Presigned URLs (query-string
//!   authentication, `X-Amz-Signature=` in the query) are **not** supported:
//!   such a request has no `Authorization` header and is rejected as
//!   `MissingAuthenticationToken`. SigV4a (`AWS4-ECDSA-P256-SHA256`) and
//!   SigV2 are rejected as `IncompleteSignature`.
//! * The request time comes from `X-Amz-Date` (ISO 8601 basic format,
//!   `YYYYMMDDTHHMMSSZ`), or, when that header is absent, from `Date` (RFC
//!   1123 / RFC 2822). The date in the credential scope must equal the date
//!   part of the request time. The request time must be within
//!   [`MAX_CLOCK_SKEW_SECS`] (15 minutes) of `now`, in either direction.
//! * The credential scope must name `expected_region`, `expected_service`
//!   and the terminator `aws4_request`.
//! * `SignedHeaders` must include `host`, the date header that was used
//!   (`x-amz-date` or `date`), and — a hardening beyond what AWS enforces, but
//!   which every AWS SDK and the AWS CLI satisfy since they sign all headers —
//!   `x-amz-target` and `x-amz-content-sha256` whenever those headers are
//!   present (so a captured request cannot be replayed as another operation).
//! * `X-Amz-Content-SHA256`, when present, must equal the hex SHA-256 of the
//!   body (so `UNSIGNED-PAYLOAD` is refused). The payload hash in the
//!   canonical request is always computed from the body itself.
//! * `X-Amz-Security-Token` (temporary/session credentials from STS) is not
//!   supported: envol has no STS. A request carrying one is rejected as
//!   `UnrecognizedClient` ("The security token included in the request is
//!   invalid."), which is what AWS answers for a token it does not know.
//!
//! # Canonical request
//!
//! As in AWS's SigV4 documentation and the AWS SDK signers, for a non-S3
//! service:
//!
//! * method as received;
//! * canonical URI: the raw path with empty, `.` and `..` segments removed
//!   (RFC 3986 §5.2.4; a trailing slash is kept; an empty path is `/`), then
//!   every byte outside the RFC 3986 unreserved set (`A-Z a-z 0-9 - _ . ~`)
//!   and `/` is percent-encoded. Because the raw path is already encoded on
//!   the wire, an escape such as `%3D` becomes `%253D` ("double encoding"),
//!   exactly as the SDKs compute it;
//! * canonical query: the raw query split on `&`, each piece split on the
//!   first `=` (a missing value is the empty value), each name and value
//!   decoded (`application/x-www-form-urlencoded` rules, as the Rust SDK
//!   signer does) and re-encoded with the unreserved set, then sorted by
//!   encoded name, then encoded value; pieces joined with `&`, an empty value
//!   written as `name=`;
//! * canonical headers: for each name in `SignedHeaders`, in that order, the
//!   lowercase name, `:`, and the values of every request header with that
//!   name (names compared case-insensitively), each trimmed with runs of
//!   spaces collapsed to one space, joined by `,` in the order received;
//!   every line ends with `\n`;
//! * the signed-header list; the hex SHA-256 of the body.
//!
//! String to sign: `AWS4-HMAC-SHA256\n<amz-date>\n<scope>\n<hex SHA-256 of
//! the canonical request>`. Signing key: HMAC-SHA256 chain `"AWS4" + secret`
//! → date → region → service → `aws4_request`. The provided signature is
//! hex-decoded and compared with the computed one in constant time
//! ([`subtle::ConstantTimeEq`]). The secret, the derived keys and the expected
//! signature never appear in an error; derived keys are zeroized on drop.
//!
//! # Headers
//!
//! [`SignedRequest::headers`] holds every header of the request as
//! `(name, value)` pairs, in the order received, names in any case, a name
//! repeated once per value. Values should be the header bytes as text
//! (`HeaderValue::to_str`, or a lossy conversion: a signed header whose
//! bytes are not text then simply fails verification). Over HTTP/2 the HTTP
//! layer must supply the `:authority` pseudo-header as `host`.
//!
//! # Errors
//!
//! AWS's JSON-protocol services (KMS among them) name their authentication
//! errors as follows, all with HTTP status 400:
//!
//! | variant | `__type` |
//! |---|---|
//! | [`AuthError::MissingAuthenticationToken`] | `MissingAuthenticationTokenException` |
//! | [`AuthError::IncompleteSignature`] | `IncompleteSignatureException` |
//! | [`AuthError::InvalidSignature`] | `InvalidSignatureException` |
//! | [`AuthError::UnrecognizedClient`] | `UnrecognizedClientException` |
//! | [`AuthError::RequestExpired`] | `InvalidSignatureException` (message "Signature expired: …") |
//!
//! A too-old or too-new request is reported by KMS (and DynamoDB, Kinesis,
//! Secrets Manager …) as `InvalidSignatureException` with the message
//! "Signature expired: 20260101T000000Z is now earlier than 20260101T001500Z
//! (20260101T003000Z - 15 min.)"; the AWS SDKs recognise that `__type` as a
//! clock-skew error and retry with a corrected clock. The separate variant
//! lets callers log or count expiry on its own.

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::excerpt::excerpt;

type HmacSha256 = Hmac<Sha256>;

/// The only signing algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The credential-scope terminator.
pub const TERMINATOR: &str = "aws4_request";

/// How far the request time may be from `now`, either way, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

/// Everything but the RFC 3986 unreserved characters is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Like [`UNRESERVED`] but keeps `/` (for the canonical URI).
const UNRESERVED_AND_SLASH: &AsciiSet = &UNRESERVED.remove(b'/');

const MSG_SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
const MSG_INVALID_TOKEN: &str = "The security token included in the request is invalid.";
const MSG_MISSING_TOKEN: &str = "Missing Authentication Token";

/// A request as received, to be verified.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The HTTP method, as received (e.g. `POST`).
    pub method: &'a str,
    /// The raw request path as received (still percent-encoded), without the query.
    pub path: &'a str,
    /// The raw query string as received, without the leading `?` (empty if none).
    pub query: &'a str,
    /// Every header, in the order received; names in any case; a name repeats once per value.
    pub headers: &'a [(String, String)],
    /// The whole request body.
    pub body: &'a [u8],
}

/// Who signed a request that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key id from the credential scope.
    pub access_key_id: String,
    /// The region from the credential scope (equal to the expected region).
    pub region: String,
    /// The service from the credential scope (equal to the expected service).
    pub service: String,
    /// The request time that was signed (`X-Amz-Date` or `Date`).
    pub signed_at: DateTime<Utc>,
}

/// Why a request did not authenticate. Each carries the message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header at all.
    #[error("{0}")]
    MissingAuthenticationToken(String),
    /// The `Authorization` header or the date headers are malformed or incomplete.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The signature, its scope or the payload hash does not match.
    #[error("{0}")]
    InvalidSignature(String),
    /// Unknown access key id, or a session token (not supported).
    #[error("{0}")]
    UnrecognizedClient(String),
    /// The request time is more than [`MAX_CLOCK_SKEW_SECS`] away from now.
    #[error("{0}")]
    RequestExpired(String),
}

impl AuthError {
    /// The `__type` an AWS JSON-protocol service returns for this error.
    pub fn aws_type(&self) -> &'static str {
        match self {
            AuthError::MissingAuthenticationToken(_) => "MissingAuthenticationTokenException",
            AuthError::IncompleteSignature(_) => "IncompleteSignatureException",
            AuthError::InvalidSignature(_) => "InvalidSignatureException",
            AuthError::UnrecognizedClient(_) => "UnrecognizedClientException",
            // KMS reports "Signature expired: ..." as InvalidSignatureException.
            AuthError::RequestExpired(_) => "InvalidSignatureException",
        }
    }

    /// The HTTP status code to answer with.
    pub fn http_status(&self) -> u16 {
        400
    }

    /// The message for the client (never contains a secret or the expected signature).
    pub fn message(&self) -> &str {
        match self {
            AuthError::MissingAuthenticationToken(m)
            | AuthError::IncompleteSignature(m)
            | AuthError::InvalidSignature(m)
            | AuthError::UnrecognizedClient(m)
            | AuthError::RequestExpired(m) => m,
        }
    }
}

fn incomplete(msg: impl Into<String>) -> AuthError {
    AuthError::IncompleteSignature(msg.into())
}

fn invalid(msg: impl Into<String>) -> AuthError {
    AuthError::InvalidSignature(msg.into())
}

/// The values of every header named `name` (ASCII case-insensitive), in order.
fn header_values<'h>(
    headers: &'h [(String, String)],
    name: &'h str,
) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The single value of header `name`, `Ok(None)` if absent, an error if repeated.
fn single_header<'h>(
    headers: &'h [(String, String)],
    name: &'h str,
    display: &str,
) -> Result<Option<&'h str>, AuthError> {
    let mut it = header_values(headers, name);
    let first = it.next();
    if it.next().is_some() {
        return Err(incomplete(format!(
            "The request contains more than one '{display}' header."
        )));
    }
    Ok(first)
}

/// The parts of a parsed `Authorization` header.
struct AuthHeader<'a> {
    access_key_id: &'a str,
    scope_date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: Vec<String>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<AuthHeader<'_>, AuthError> {
    let value = value.trim();
    let (algorithm, rest) = match value.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&value[..i], value[i..].trim_start()),
        None => (value, ""),
    };
    if algorithm != ALGORITHM {
        return Err(incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'. The Authorization header must use {ALGORITHM}.",
            excerpt(algorithm)
        )));
    }

    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(incomplete(format!(
                "'{}' not a valid key=value pair (missing equal-sign) in Authorization header.",
                excerpt(part)
            )));
        };
        let slot = match k.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => continue,
        };
        if slot.is_some() {
            return Err(incomplete(format!(
                "Authorization header contains '{}' more than once.",
                excerpt(k.trim())
            )));
        }
        *slot = Some(v.trim());
    }

    let mut missing = String::new();
    for (name, v) in [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed_headers),
    ] {
        if v.is_none_or(str::is_empty) {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(incomplete(missing.trim_end()));
    };
    if !missing.is_empty() {
        return Err(incomplete(missing.trim_end()));
    }

    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, scope_date, region, service, terminator] = parts[..] else {
        return Err(incomplete(format!(
            "Credential '{}' is malformed; expecting \"<AccessKeyId>/YYYYMMDD/<region>/<service>/aws4_request\".",
            excerpt(credential)
        )));
    };
    if access_key_id.is_empty() || scope_date.is_empty() || region.is_empty() || service.is_empty()
    {
        return Err(incomplete(format!(
            "Credential '{}' is malformed; expecting \"<AccessKeyId>/YYYYMMDD/<region>/<service>/aws4_request\".",
            excerpt(credential)
        )));
    }

    let mut names = Vec::new();
    for name in signed_headers.split(';') {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            return Err(incomplete(format!(
                "SignedHeaders '{}' is malformed; expecting lowercase header names separated by ';'.",
                excerpt(signed_headers)
            )));
        }
        names.push(name.to_ascii_lowercase());
    }

    Ok(AuthHeader {
        access_key_id,
        scope_date,
        region,
        service,
        terminator,
        signed_headers: names,
        signature,
    })
}

/// Parses `YYYYMMDDTHHMMSSZ` strictly.
fn parse_amz_date(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    if !b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit) {
        return None;
    }
    NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|n| n.and_utc())
}

fn format_amz_date(t: &DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Which header carried the request time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DateSource {
    XAmzDate,
    Date,
}

fn request_time(headers: &[(String, String)]) -> Result<(DateTime<Utc>, DateSource), AuthError> {
    if let Some(v) = single_header(headers, "x-amz-date", "X-Amz-Date")? {
        let v = v.trim();
        return parse_amz_date(v)
            .map(|t| (t, DateSource::XAmzDate))
            .ok_or_else(|| {
                incomplete(format!(
                    "Date must be in ISO-8601 'basic format'. Got '{}'. See http://en.wikipedia.org/wiki/ISO_8601",
                    excerpt(v)
                ))
            });
    }
    if let Some(v) = single_header(headers, "date", "Date")? {
        let v = v.trim();
        return DateTime::parse_from_rfc2822(v)
            .map(|t| (t.with_timezone(&Utc), DateSource::Date))
            .map_err(|_| {
                incomplete(format!(
                    "Date header '{}' is not a valid RFC 1123 date.",
                    excerpt(v)
                ))
            });
    }
    Err(incomplete(
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
    ))
}

/// Trims and collapses runs of spaces to one (AWS's "trimall").
fn trim_all(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut prev_space = false;
    for c in v.trim().chars() {
        if c == ' ' {
            if !prev_space {
                out.push(' ');
            }
            prev_space = true;
        } else {
            out.push(c);
            prev_space = false;
        }
    }
    out
}

/// Removes empty, `.` and `..` segments (as the AWS SDK signers do for non-S3 services).
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = ["/", "/.", "/..", "/./", "/../"]
        .iter()
        .any(|t| path.ends_with(t))
        || (path == "." || path == "..");
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

/// The canonical URI of a raw (encoded) request path.
pub fn canonical_uri(raw_path: &str) -> String {
    utf8_percent_encode(&normalize_path(raw_path), UNRESERVED_AND_SLASH).to_string()
}

fn form_decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_decode(plus_as_space.as_bytes())
        .decode_utf8_lossy()
        .into_owned()
}

/// The canonical query string of a raw query (without `?`).
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                utf8_percent_encode(&form_decode(k), UNRESERVED).to_string(),
                utf8_percent_encode(&form_decode(v), UNRESERVED).to_string(),
            )
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Zeroizing<[u8; 32]>, AuthError> {
    let mut mac = HmacSha256::new_from_slice(key)
        .map_err(|_| invalid("Unable to compute the request signature."))?;
    mac.update(data);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

/// Derives the SigV4 signing key for `secret`, `date` (YYYYMMDD), `region`, `service`.
fn signing_key(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
) -> Result<Zeroizing<[u8; 32]>, AuthError> {
    let mut k_secret = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k_secret.extend_from_slice(b"AWS4");
    k_secret.extend_from_slice(secret.as_bytes());
    let k_date = hmac(&k_secret, date.as_bytes())?;
    let k_region = hmac(&*k_date, region.as_bytes())?;
    let k_service = hmac(&*k_region, service.as_bytes())?;
    hmac(&*k_service, TERMINATOR.as_bytes())
}

/// Builds the canonical request. `signed` are lowercase header names.
fn canonical_request(
    req: &SignedRequest<'_>,
    signed: &[String],
    payload_hash: &str,
) -> Result<String, AuthError> {
    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed {
        let values: Vec<String> = header_values(req.headers, name).map(trim_all).collect();
        if values.is_empty() {
            return Err(invalid(format!(
                "Header '{}' is listed in SignedHeaders but is not present in the request.",
                excerpt(name)
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Verifies the SigV4 signature of `req`.
///
/// `now` is the server's clock; `expected_region` and `expected_service`
/// (normally `"kms"`) must match the credential scope; `lookup_secret` maps
/// an access key id to its secret access key (`None` if unknown). Checks run
/// in this order, so the first failure decides the error: `Authorization`
/// present → header well-formed → date headers → required signed headers →
/// scope date, region, service, terminator → clock skew → no session token →
/// known access key → `X-Amz-Content-SHA256` → signature.
pub fn verify<F>(
    req: &SignedRequest<'_>,
    now: DateTime<Utc>,
    expected_region: &str,
    expected_service: &str,
    lookup_secret: F,
) -> Result<Verified, AuthError>
where
    F: FnOnce(&str) -> Option<Zeroizing<String>>,
{
    let authorization = match single_header(req.headers, "authorization", "Authorization")? {
        Some(v) if !v.trim().is_empty() => v,
        _ => {
            return Err(AuthError::MissingAuthenticationToken(
                MSG_MISSING_TOKEN.to_string(),
            ));
        }
    };
    let auth = parse_authorization(authorization)?;
    let (signed_at, date_source) = request_time(req.headers)?;
    let amz_date = format_amz_date(&signed_at);

    // Headers that must be covered by the signature.
    let is_signed = |n: &str| auth.signed_headers.iter().any(|s| s == n);
    if !is_signed("host") {
        return Err(incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let date_header = match date_source {
        DateSource::XAmzDate => ("x-amz-date", "X-Amz-Date"),
        DateSource::Date => ("date", "Date"),
    };
    let mut required = vec![date_header];
    for (name, display) in [
        ("x-amz-target", "X-Amz-Target"),
        ("x-amz-content-sha256", "X-Amz-Content-SHA256"),
    ] {
        if header_values(req.headers, name).next().is_some() {
            required.push((name, display));
        }
    }
    for (name, display) in required {
        if !is_signed(name) {
            return Err(incomplete(format!(
                "'{display}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
    }

    // Credential scope.
    if auth.scope_date != &amz_date[..8] {
        return Err(invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{}'.",
            excerpt(auth.scope_date),
            &amz_date[..8],
            amz_date
        )));
    }
    if auth.region != expected_region {
        return Err(invalid(format!(
            "Credential should be scoped to a valid region, not '{}'.",
            excerpt(auth.region)
        )));
    }
    if auth.service != expected_service {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: '{expected_service}'."
        )));
    }
    if auth.terminator != TERMINATOR {
        return Err(invalid(format!(
            "Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{}'.",
            excerpt(auth.terminator)
        )));
    }

    // Clock skew.
    let skew = Duration::seconds(MAX_CLOCK_SKEW_SECS);
    let minutes = MAX_CLOCK_SKEW_SECS / 60;
    if signed_at < now - skew {
        return Err(AuthError::RequestExpired(format!(
            "Signature expired: {} is now earlier than {} ({} - {minutes} min.)",
            amz_date,
            format_amz_date(&(now - skew)),
            format_amz_date(&now)
        )));
    }
    if signed_at > now + skew {
        return Err(AuthError::RequestExpired(format!(
            "Signature not yet current: {} is still later than {} ({} + {minutes} min.)",
            amz_date,
            format_amz_date(&(now + skew)),
            format_amz_date(&now)
        )));
    }

    // Identity.
    if header_values(req.headers, "x-amz-security-token")
        .next()
        .is_some()
    {
        return Err(AuthError::UnrecognizedClient(MSG_INVALID_TOKEN.to_string()));
    }
    let Some(secret) = lookup_secret(auth.access_key_id) else {
        return Err(AuthError::UnrecognizedClient(MSG_INVALID_TOKEN.to_string()));
    };

    // Payload.
    let payload_hash = hex_sha256(req.body);
    if let Some(claimed) =
        single_header(req.headers, "x-amz-content-sha256", "X-Amz-Content-SHA256")?
        && !claimed.trim().eq_ignore_ascii_case(&payload_hash)
    {
        return Err(invalid(
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        ));
    }

    // Signature.
    let creq = canonical_request(req, &auth.signed_headers, &payload_hash)?;
    let scope = format!(
        "{}/{}/{}/{TERMINATOR}",
        auth.scope_date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex_sha256(creq.as_bytes())
    );
    let key = signing_key(&secret, auth.scope_date, auth.region, auth.service)?;
    let expected = hmac(&*key, string_to_sign.as_bytes())?;
    let provided = match hex::decode(auth.signature) {
        Ok(p) if p.len() == 32 => p,
        _ => return Err(invalid(MSG_SIGNATURE_MISMATCH)),
    };
    if !bool::from(expected.as_slice().ct_eq(&provided)) {
        return Err(invalid(MSG_SIGNATURE_MISMATCH));
    }

    Ok(Verified {
        access_key_id: auth.access_key_id.to_string(),
        region: auth.region.to_string(),
        service: auth.service.to_string(),
        signed_at,
    })
}

#[cfg(test)]
mod tests;
