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

type HmacSha256 = Hmac<Sha256>;

/// The only signing algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The credential-scope terminator.
pub const TERMINATOR: &str = "aws4_request";

/// How far the request time may be from `now`, either way, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

/// The longest excerpt of client-supplied text echoed in an error message.
const MAX_ECHO: usize = 64;

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

/// A bounded, printable excerpt of client-supplied text for an error message.
fn echo(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_ECHO)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(MAX_ECHO).is_some() {
        out.push_str("...");
    }
    out
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
            echo(algorithm)
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
                echo(part)
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
                echo(k.trim())
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
            echo(credential)
        )));
    };
    if access_key_id.is_empty() || scope_date.is_empty() || region.is_empty() || service.is_empty()
    {
        return Err(incomplete(format!(
            "Credential '{}' is malformed; expecting \"<AccessKeyId>/YYYYMMDD/<region>/<service>/aws4_request\".",
            echo(credential)
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
                echo(signed_headers)
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
                    echo(v)
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
                    echo(v)
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
                echo(name)
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
            echo(auth.scope_date),
            &amz_date[..8],
            amz_date
        )));
    }
    if auth.region != expected_region {
        return Err(invalid(format!(
            "Credential should be scoped to a valid region, not '{}'.",
            echo(auth.region)
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
            echo(auth.terminator)
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
mod tests {
    use super::*;
    use aws_sigv4::http_request::{
        PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
    };
    use aws_sigv4::sign::v4;
    use chrono::TimeZone;
    use rand::{Rng, SeedableRng};
    use std::borrow::Cow;
    use std::time::SystemTime;

    const SUITE_AKID: &str = "AKIDEXAMPLE";
    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// `(name, signed request)` from the AWS SigV4 test suite (AKIDEXAMPLE, 20150830T123600Z,
    /// us-east-1, service "service"), as shipped with the `aws-sigv4` crate.
    const SUITE: &[(&str, &str)] = &[
        (
            "get-header-key-duplicate",
            r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value2
My-Header1:value2
My-Header1:value1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea

"#,
        ),
        (
            "get-header-value-multiline",
            r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value1
  value2
     value3
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=cfd34249e4b1c8d6b91ef74165d41a32e5fab3306300901bb65a51a73575eefd

"#,
        ),
        (
            "get-header-value-order",
            r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value4
My-Header1:value1
My-Header1:value3
My-Header1:value2
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01

"#,
        ),
        (
            "get-header-value-trim",
            r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1: value1
My-Header2: "a   b   c"
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736

"#,
        ),
        (
            "get-relative-normalized",
            r#"GET /example/.. HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        ),
        (
            "get-relative-relative-normalized",
            r#"GET /example1/example2/../.. HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        ),
        (
            "get-slash-dot-slash-normalized",
            r#"GET /./ HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        ),
        (
            "get-slash-normalized",
            r#"GET // HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        ),
        (
            "get-slash-pointless-dot-normalized",
            r#"GET /./example HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5

"#,
        ),
        (
            "get-slashes-normalized",
            r#"GET //example// HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84

"#,
        ),
        (
            "get-space-normalized",
            r#"GET /example space/ HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741

"#,
        ),
        (
            "get-unreserved",
            r#"GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f

"#,
        ),
        (
            "get-utf8",
            r#"GET /ሴ HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85

"#,
        ),
        (
            "get-vanilla",
            r#"GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        ),
        (
            "get-vanilla-empty-query-key",
            r#"GET /?Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb

"#,
        ),
        (
            "get-vanilla-query",
            r#"GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        ),
        (
            "get-vanilla-query-order-encoded",
            r#"GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac

"#,
        ),
        (
            "get-vanilla-query-order-key-case",
            r#"GET /?Param2=value2&Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500

"#,
        ),
        (
            "get-vanilla-query-unreserved",
            r#"GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197

"#,
        ),
        (
            "get-vanilla-utf8-query",
            r#"GET /?ሴ=bar HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04

"#,
        ),
        (
            "get-vanilla-with-session-token",
            r#"GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8

"#,
        ),
        (
            "post-header-key-case",
            r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b

"#,
        ),
        (
            "post-header-key-sort",
            r#"POST / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c

"#,
        ),
        (
            "post-header-value-case",
            r#"POST / HTTP/1.1
Host:example.amazonaws.com
My-Header1:VALUE1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d

"#,
        ),
        (
            "post-sts-header-after",
            r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b

"#,
        ),
        (
            "post-sts-header-before",
            r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead

"#,
        ),
        (
            "post-vanilla",
            r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b

"#,
        ),
        (
            "post-vanilla-empty-query-value",
            r#"POST /?Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11

"#,
        ),
        (
            "post-vanilla-query",
            r#"POST /?Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11

"#,
        ),
        (
            "post-x-www-form-urlencoded",
            r#"POST / HTTP/1.1
Content-Type:application/x-www-form-urlencoded
Host:example.amazonaws.com
Content-Length:13
X-Amz-Date:20150830T123600Z
x-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b

Param1=value1"#,
        ),
        (
            "post-x-www-form-urlencoded-parameters",
            r#"POST / HTTP/1.1
Content-Type:application/x-www-form-urlencoded; charset=utf-8
Host:example.amazonaws.com
Content-Length:13
X-Amz-Date:20150830T123600Z
x-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=328d1b9eaadca9f5818ef05e8392801e091653bafec24fcab71e7344e7f51422

Param1=value1"#,
        ),
    ];

    /// A parsed test request: method, path, query, headers, body.
    struct Parsed {
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Parsed {
        fn req(&self) -> SignedRequest<'_> {
            SignedRequest {
                method: &self.method,
                path: &self.path,
                query: &self.query,
                headers: &self.headers,
                body: &self.body,
            }
        }
    }

    /// Parses the suite's `header-signed-request.txt` format (with folded header lines).
    fn parse_http(text: &str) -> Parsed {
        let (head, body) = text.split_once("\n\n").unwrap();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap();
        let (method, rest) = request_line.split_once(' ').unwrap();
        let target = rest.strip_suffix(" HTTP/1.1").unwrap();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                headers.last_mut().unwrap().1.push_str(line);
            } else {
                let (n, v) = line.split_once(':').unwrap();
                headers.push((n.to_string(), v.to_string()));
            }
        }
        Parsed {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn suite_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 8, 30, 12, 36, 0).unwrap()
    }

    fn suite_lookup(akid: &str) -> Option<Zeroizing<String>> {
        (akid == SUITE_AKID).then(|| Zeroizing::new(SUITE_SECRET.to_string()))
    }

    fn verify_suite(p: &Parsed) -> Result<Verified, AuthError> {
        verify(&p.req(), suite_time(), "us-east-1", "service", suite_lookup)
    }

    #[test]
    fn aws_test_suite_vectors_verify() {
        let mut checked = 0;
        for (name, text) in SUITE {
            let p = parse_http(text);
            let result = verify_suite(&p);
            if name.contains("session-token") || name.contains("sts-header") {
                // Session tokens are not supported: rejected like an unknown token.
                assert!(
                    matches!(result, Err(AuthError::UnrecognizedClient(_))),
                    "{name}: {result:?}"
                );
            } else {
                let v = result.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(v.access_key_id, SUITE_AKID);
                assert_eq!(v.region, "us-east-1");
                assert_eq!(v.service, "service");
                assert_eq!(v.signed_at, suite_time());
                checked += 1;
            }
        }
        assert!(checked >= 25, "only {checked} vectors checked");
    }

    #[test]
    fn aws_test_suite_vectors_fail_when_tampered() {
        for (name, text) in SUITE {
            if name.contains("session-token") || name.contains("sts-header") {
                continue;
            }
            let mut p = parse_http(text);
            p.body.push(b'x');
            assert!(
                matches!(verify_suite(&p), Err(AuthError::InvalidSignature(_))),
                "{name}"
            );
            let p = parse_http(text);
            let wrong = verify(&p.req(), suite_time(), "us-east-1", "service", |_| {
                Some(Zeroizing::new(
                    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz".to_string(),
                ))
            });
            assert!(
                matches!(wrong, Err(AuthError::InvalidSignature(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn canonical_uri_rules() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("//"), "/");
        assert_eq!(canonical_uri("/./"), "/");
        assert_eq!(canonical_uri("/example/.."), "/");
        assert_eq!(canonical_uri("/example1/example2/../.."), "/");
        assert_eq!(canonical_uri("/./example"), "/example");
        assert_eq!(canonical_uri("//example//"), "/example/");
        assert_eq!(canonical_uri("/../a"), "/a");
        assert_eq!(canonical_uri("a/b"), "/a/b");
        assert_eq!(canonical_uri("/a/b/."), "/a/b/");
        assert_eq!(canonical_uri("/example space/"), "/example%20space/");
        assert_eq!(canonical_uri("/\u{1234}"), "/%E1%88%B4");
        assert_eq!(
            canonical_uri("/test/@connections/JBDvjfGEIAMCERw%3D"),
            "/test/%40connections/JBDvjfGEIAMCERw%253D"
        );
        assert_eq!(
            canonical_uri("/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
            "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        );
    }

    #[test]
    fn canonical_query_rules() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(
            canonical_query("Param2=value2&Param1=value1"),
            "Param1=value1&Param2=value2"
        );
        assert_eq!(canonical_query("b=2&a"), "a=&b=2");
        assert_eq!(canonical_query("a=2&a=1"), "a=1&a=2");
        assert_eq!(canonical_query("a=x%20y"), "a=x%20y");
        assert_eq!(canonical_query("a=x+y"), "a=x%20y");
        assert_eq!(canonical_query("a=%2F&&"), "a=%2F");
        assert_eq!(canonical_query("%E1%88%B4=bar"), "%E1%88%B4=bar");
        assert_eq!(canonical_query("k=a=b"), "k=a%3Db");
        assert_eq!(canonical_query("B=1&a=2"), "B=1&a=2");
    }

    #[test]
    fn trim_all_rules() {
        assert_eq!(trim_all("  a   b  c "), "a b c");
        assert_eq!(trim_all("\"a   b   c\""), "\"a b c\"");
        assert_eq!(trim_all(""), "");
    }

    #[test]
    fn amz_date_is_strict() {
        assert!(parse_amz_date("20150830T123600Z").is_some());
        for bad in [
            "20150830T123600",
            "2015-08-30T12:36:00Z",
            "20151330T123600Z",
            "20150830T250000Z",
            "+0150830T123600Z",
            "20150830t123600Z",
            "",
            "2015083\u{e9}T12360Z",
        ] {
            assert!(parse_amz_date(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn signing_key_matches_aws_documentation_example() {
        // From AWS's "Examples of how to derive a signing key for Signature Version 4".
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        )
        .unwrap();
        assert_eq!(
            hex::encode(*key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    // ---- independent signer: the AWS SDK's own `aws-sigv4` ----------------

    const AKID: &str = "AKIAENVOLTEST0000001";
    const SECRET: &str = "envolTestSecretKey/0123456789abcdefghijklmnop";
    const REGION: &str = "us-east-1";
    const BODY: &[u8] = br#"{"KeyId":"alias/demo","CiphertextBlob":"AQID","EncryptionContext":{"envol:volume":"0f0e"}}"#;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 30, 0).unwrap()
    }

    fn lookup(akid: &str) -> Option<Zeroizing<String>> {
        (akid == AKID).then(|| Zeroizing::new(SECRET.to_string()))
    }

    fn kms_headers(target: &str) -> Vec<(String, String)> {
        vec![
            ("Host".into(), "127.0.0.1:4599".into()),
            ("Content-Type".into(), "application/x-amz-json-1.1".into()),
            ("X-Amz-Target".into(), format!("TrentService.{target}")),
            ("Content-Length".into(), BODY.len().to_string()),
            ("User-Agent".into(), "aws-sdk-rust/1.0 envol-test".into()),
        ]
    }

    struct SignOpts<'a> {
        akid: &'a str,
        secret: &'a str,
        token: Option<&'a str>,
        region: &'a str,
        service: &'a str,
        time: DateTime<Utc>,
        settings: SigningSettings,
    }

    impl Default for SignOpts<'_> {
        fn default() -> Self {
            SignOpts {
                akid: AKID,
                secret: SECRET,
                token: None,
                region: REGION,
                service: "kms",
                time: now(),
                settings: SigningSettings::default(),
            }
        }
    }

    /// Signs a POST with `aws-sigv4` and returns all headers to send.
    fn sdk_sign(
        opts: SignOpts<'_>,
        path_and_query: &str,
        mut headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Vec<(String, String)> {
        let identity = aws_credential_types::Credentials::new(
            opts.akid,
            opts.secret,
            opts.token.map(str::to_string),
            None,
            "envol-test",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(opts.region)
            .name(opts.service)
            .time(SystemTime::from(opts.time))
            .settings(opts.settings)
            .build()
            .unwrap()
            .into();
        let uri = format!("http://127.0.0.1:4599{path_and_query}");
        let signable = SignableRequest::new(
            "POST",
            uri,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
        let added: Vec<(String, String)> = instructions
            .headers()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        headers.extend(added);
        headers
    }

    fn kms_request(headers: &[(String, String)], body: &[u8]) -> Result<Verified, AuthError> {
        verify_at(headers, body, now())
    }

    fn verify_at(
        headers: &[(String, String)],
        body: &[u8],
        at: DateTime<Utc>,
    ) -> Result<Verified, AuthError> {
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers,
            body,
        };
        verify(&req, at, REGION, "kms", lookup)
    }

    fn signed_kms() -> Vec<(String, String)> {
        sdk_sign(SignOpts::default(), "/", kms_headers("Decrypt"), BODY)
    }

    fn set_header(headers: &mut [(String, String)], name: &str, value: &str) {
        let h = headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .unwrap();
        h.1 = value.to_string();
    }

    fn get_header<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn sdk_signed_kms_request_verifies() {
        let headers = signed_kms();
        let v = kms_request(&headers, BODY).unwrap();
        assert_eq!(
            v,
            Verified {
                access_key_id: AKID.into(),
                region: REGION.into(),
                service: "kms".into(),
                signed_at: now(),
            }
        );
        assert!(get_header(&headers, "authorization").contains("x-amz-target"));
    }

    #[test]
    fn sdk_signed_with_content_sha256_verifies_and_checks_it() {
        let opts = SignOpts {
            settings: {
                let mut s = SigningSettings::default();
                s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
                s
            },
            ..SignOpts::default()
        };
        let mut headers = sdk_sign(opts, "/", kms_headers("Encrypt"), BODY);
        kms_request(&headers, BODY).unwrap();
        // A claimed hash that is not the body's.
        set_header(&mut headers, "x-amz-content-sha256", &hex_sha256(b"other"));
        let e = kms_request(&headers, BODY).unwrap_err();
        assert!(matches!(e, AuthError::InvalidSignature(_)), "{e:?}");
        assert!(e.message().contains("x-amz-content-sha256"));
        set_header(&mut headers, "x-amz-content-sha256", "UNSIGNED-PAYLOAD");
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::InvalidSignature(_))
        ));
    }

    #[test]
    fn sdk_signed_path_and_query_verify() {
        for pq in [
            "/",
            "/a/b",
            "/a%20b/c%3Dd",
            "/x/./y/../z//",
            "/?b=2&a=1&a=0",
            "/p?q=hello%20world&empty=&k=%E1%88%B4",
        ] {
            let headers = sdk_sign(SignOpts::default(), pq, kms_headers("Decrypt"), BODY);
            let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
            let req = SignedRequest {
                method: "POST",
                path,
                query,
                headers: &headers,
                body: BODY,
            };
            verify(&req, now(), REGION, "kms", lookup).unwrap_or_else(|e| panic!("{pq}: {e:?}"));
            // Another path fails.
            let req = SignedRequest {
                path: "/other",
                ..req
            };
            assert!(matches!(
                verify(&req, now(), REGION, "kms", lookup),
                Err(AuthError::InvalidSignature(_))
            ));
        }
    }

    #[test]
    fn tampered_body_fails() {
        let headers = signed_kms();
        let mut body = BODY.to_vec();
        body[10] ^= 1;
        let e = kms_request(&headers, &body).unwrap_err();
        assert_eq!(
            e,
            AuthError::InvalidSignature(MSG_SIGNATURE_MISMATCH.into())
        );
        assert!(matches!(
            kms_request(&headers, b""),
            Err(AuthError::InvalidSignature(_))
        ));
    }

    #[test]
    fn tampered_signed_header_fails() {
        let mut headers = signed_kms();
        set_header(&mut headers, "x-amz-target", "TrentService.Encrypt");
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::InvalidSignature(_))
        ));
        let mut headers = signed_kms();
        set_header(&mut headers, "host", "evil.example:4599");
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::InvalidSignature(_))
        ));
        // Adding a second value to a signed header changes its canonical form.
        let mut headers = signed_kms();
        headers.push(("content-type".into(), "text/plain".into()));
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::InvalidSignature(_))
        ));
        // An unsigned, harmless header may be added or changed.
        let mut headers = signed_kms();
        set_header(&mut headers, "user-agent", "curl/8");
        headers.push(("accept".into(), "*/*".into()));
        kms_request(&headers, BODY).unwrap();
    }

    #[test]
    fn header_whitespace_and_case_are_canonicalised() {
        let mut headers = signed_kms();
        for (n, v) in headers.iter_mut() {
            *n = n.to_ascii_uppercase();
            if n == "CONTENT-TYPE" {
                *v = format!("  {v}  ");
            }
        }
        kms_request(&headers, BODY).unwrap();
    }

    #[test]
    fn wrong_secret_fails() {
        let opts = SignOpts {
            secret: "not-the-secret",
            ..SignOpts::default()
        };
        let headers = sdk_sign(opts, "/", kms_headers("Decrypt"), BODY);
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(e.aws_type(), "InvalidSignatureException");
        assert_eq!(e.http_status(), 400);
        assert!(!e.message().contains(SECRET));
        assert!(!e.message().contains("not-the-secret"));
    }

    #[test]
    fn error_never_contains_expected_signature() {
        let headers = signed_kms();
        let good_sig = get_header(&headers, "authorization")
            .rsplit("Signature=")
            .next()
            .unwrap()
            .to_string();
        let mut body = BODY.to_vec();
        body.push(b' ');
        // The expected signature of the tampered request is unknown to the client; make
        // sure no 64-hex string at all is echoed.
        let e = kms_request(&headers, &body).unwrap_err();
        assert!(!e.message().contains(&good_sig));
        assert!(!e.message().chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn tampered_date_fails() {
        // Same day, one second later: signature mismatch.
        let mut headers = signed_kms();
        set_header(&mut headers, "x-amz-date", "20260101T003001Z");
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::InvalidSignature(m)) if m == MSG_SIGNATURE_MISMATCH
        ));
        // Another day: the credential scope no longer matches.
        let mut headers = signed_kms();
        set_header(&mut headers, "x-amz-date", "20251231T235959Z");
        let e = kms_request(&headers, BODY).unwrap_err();
        assert!(matches!(e, AuthError::InvalidSignature(_)), "{e:?}");
        assert!(
            e.message()
                .starts_with("Date in Credential scope does not match"),
            "{e:?}"
        );
        // Garbage date.
        let mut headers = signed_kms();
        set_header(&mut headers, "x-amz-date", "yesterday");
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::IncompleteSignature(_))
        ));
    }

    #[test]
    fn wrong_region_and_service_fail() {
        let opts = SignOpts {
            region: "eu-west-1",
            ..SignOpts::default()
        };
        let headers = sdk_sign(opts, "/", kms_headers("Decrypt"), BODY);
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(
            e,
            AuthError::InvalidSignature(
                "Credential should be scoped to a valid region, not 'eu-west-1'.".into()
            )
        );
        let opts = SignOpts {
            service: "s3",
            ..SignOpts::default()
        };
        let headers = sdk_sign(opts, "/", kms_headers("Decrypt"), BODY);
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(
            e,
            AuthError::InvalidSignature(
                "Credential should be scoped to correct service: 'kms'.".into()
            )
        );
    }

    #[test]
    fn old_and_future_requests_expire() {
        let signed_at = now() - Duration::minutes(20);
        let opts = SignOpts {
            time: signed_at,
            ..SignOpts::default()
        };
        let headers = sdk_sign(opts, "/", kms_headers("Decrypt"), BODY);
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(
            e,
            AuthError::RequestExpired(
                "Signature expired: 20260101T001000Z is now earlier than 20260101T001500Z (20260101T003000Z - 15 min.)".into()
            )
        );
        assert_eq!(e.aws_type(), "InvalidSignatureException");
        assert_eq!(e.http_status(), 400);

        let opts = SignOpts {
            time: now() + Duration::minutes(20),
            ..SignOpts::default()
        };
        let headers = sdk_sign(opts, "/", kms_headers("Decrypt"), BODY);
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(
            e,
            AuthError::RequestExpired(
                "Signature not yet current: 20260101T005000Z is still later than 20260101T004500Z (20260101T003000Z + 15 min.)".into()
            )
        );

        // The window is inclusive: exactly 15 minutes either way is accepted.
        let headers = signed_kms();
        verify_at(&headers, BODY, now() + Duration::minutes(15)).unwrap();
        verify_at(&headers, BODY, now() - Duration::minutes(15)).unwrap();
        assert!(matches!(
            verify_at(
                &headers,
                BODY,
                now() + Duration::minutes(15) + Duration::seconds(1)
            ),
            Err(AuthError::RequestExpired(_))
        ));
    }

    #[test]
    fn unknown_access_key_is_unrecognized() {
        let opts = SignOpts {
            akid: "AKIAUNKNOWN000000000",
            ..SignOpts::default()
        };
        let headers = sdk_sign(opts, "/", kms_headers("Decrypt"), BODY);
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(e, AuthError::UnrecognizedClient(MSG_INVALID_TOKEN.into()));
        assert_eq!(e.aws_type(), "UnrecognizedClientException");
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn session_tokens_are_refused() {
        let opts = SignOpts {
            token: Some("FwoGZXIvYXdzEXAMPLETOKEN"),
            ..SignOpts::default()
        };
        let headers = sdk_sign(opts, "/", kms_headers("Decrypt"), BODY);
        assert!(
            headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("x-amz-security-token"))
        );
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(e, AuthError::UnrecognizedClient(MSG_INVALID_TOKEN.into()));
    }

    #[test]
    fn missing_authorization_is_missing_token() {
        let mut headers = signed_kms();
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(
            e,
            AuthError::MissingAuthenticationToken(MSG_MISSING_TOKEN.into())
        );
        assert_eq!(e.aws_type(), "MissingAuthenticationTokenException");
        assert_eq!(e.http_status(), 400);
        // An empty value is the same as none.
        headers.push(("Authorization".into(), "   ".into()));
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::MissingAuthenticationToken(_))
        ));
    }

    #[test]
    fn unsigned_target_is_refused() {
        let opts = SignOpts {
            settings: {
                let mut s = SigningSettings::default();
                s.excluded_headers = Some(vec![
                    Cow::Borrowed("authorization"),
                    Cow::Borrowed("user-agent"),
                    Cow::Borrowed("x-amz-target"),
                ]);
                s
            },
            ..SignOpts::default()
        };
        let headers = sdk_sign(opts, "/", kms_headers("Decrypt"), BODY);
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(
            e,
            AuthError::IncompleteSignature(
                "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.".into()
            )
        );
        assert_eq!(e.aws_type(), "IncompleteSignatureException");
    }

    /// Rewrites the Authorization header of a signed request.
    fn with_auth(f: impl Fn(&str, &str, &str) -> String) -> Vec<(String, String)> {
        let mut headers = signed_kms();
        let auth = get_header(&headers, "authorization").to_string();
        let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").unwrap();
        let mut cred = "";
        let mut sh = "";
        let mut sig = "";
        for part in rest.split(", ") {
            let (k, v) = part.split_once('=').unwrap();
            match k {
                "Credential" => cred = v,
                "SignedHeaders" => sh = v,
                "Signature" => sig = v,
                _ => unreachable!(),
            }
        }
        let new = f(cred, sh, sig);
        set_header(&mut headers, "authorization", &new);
        headers
    }

    #[test]
    fn authorization_header_layout_is_tolerated() {
        for f in [
            |c: &str, s: &str, g: &str| {
                format!("AWS4-HMAC-SHA256 Signature={g},SignedHeaders={s},Credential={c}")
            },
            |c: &str, s: &str, g: &str| {
                format!("  AWS4-HMAC-SHA256   Credential={c} ,  SignedHeaders={s} ,Signature={g}  ")
            },
            |c: &str, s: &str, g: &str| {
                format!(
                    "AWS4-HMAC-SHA256\tCredential={c}, SignedHeaders={s}, Signature={g}, Extra=1"
                )
            },
            |c: &str, s: &str, g: &str| {
                format!(
                    "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s}, Signature={}",
                    g.to_ascii_uppercase()
                )
            },
        ] {
            let headers = with_auth(f);
            kms_request(&headers, BODY)
                .unwrap_or_else(|e| panic!("{}: {e:?}", get_header(&headers, "authorization")));
        }
    }

    #[test]
    fn malformed_authorization_headers() {
        type Case = (fn(&str, &str, &str) -> String, &'static str);
        let cases: &[Case] = &[
            (
                |c, s, g| {
                    format!("AWS4-HMAC-SHA512 Credential={c}, SignedHeaders={s}, Signature={g}")
                },
                "Incomplete",
            ),
            (
                |c, s, g| {
                    format!(
                        "AWS4-ECDSA-P256-SHA256 Credential={c}, SignedHeaders={s}, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |_, _, _| "AWS AKIDEXAMPLE:qaNdqGsI6bq4Hi+9Gzovwyjbh0E=".to_string(),
                "Incomplete",
            ),
            (
                |_, _, _| "Bearer eyJhbGciOiJIUzI1NiJ9".to_string(),
                "Incomplete",
            ),
            (|_, _, _| "AWS4-HMAC-SHA256".to_string(), "Incomplete"),
            (
                |c, s, _| format!("AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s}"),
                "Incomplete",
            ),
            (
                |c, _, g| format!("AWS4-HMAC-SHA256 Credential={c}, Signature={g}"),
                "Incomplete",
            ),
            (
                |_, s, g| format!("AWS4-HMAC-SHA256 SignedHeaders={s}, Signature={g}"),
                "Incomplete",
            ),
            (
                |c, s, _| format!("AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s}, Signature="),
                "Incomplete",
            ),
            (
                |c, s, g| {
                    format!("AWS4-HMAC-SHA256 Credential {c}, SignedHeaders={s}, Signature={g}")
                },
                "Incomplete",
            ),
            (
                |c, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}, Credential={c}, SignedHeaders={s}, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |c, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}/extra, SignedHeaders={s}, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |_, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kms, SignedHeaders={s}, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |_, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential=/20260101/us-east-1/kms/aws4_request, SignedHeaders={s}, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |c, s, g| {
                    format!("AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s};, Signature={g}")
                },
                "Incomplete",
            ),
            (
                |c, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders=host x;{s}, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |c, _, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders=content-type;x-amz-date;x-amz-target, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |c, _, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders=host;x-amz-target, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |c, _, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders=host;x-amz-date, Signature={g}"
                    )
                },
                "Incomplete",
            ),
            (
                |_, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={AKID}/20260101/us-east-1/kms/aws5_request, SignedHeaders={s}, Signature={g}"
                    )
                },
                "Invalid",
            ),
            (
                |c, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s};x-missing, Signature={g}"
                    )
                },
                "Invalid",
            ),
            (
                |c, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s}, Signature={}",
                        &g[..62]
                    )
                },
                "Invalid",
            ),
            (
                |c, s, g| {
                    format!("AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s}, Signature={g}00")
                },
                "Invalid",
            ),
            (
                |c, s, g| {
                    format!(
                        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s}, Signature={}zz",
                        &g[..62]
                    )
                },
                "Invalid",
            ),
        ];
        for (f, kind) in cases {
            let headers = with_auth(f);
            let e = kms_request(&headers, BODY).unwrap_err();
            let ok = match *kind {
                "Incomplete" => matches!(e, AuthError::IncompleteSignature(_)),
                _ => matches!(e, AuthError::InvalidSignature(_)),
            };
            assert!(ok, "{}: {e:?}", get_header(&headers, "authorization"));
            assert_eq!(e.http_status(), 400);
        }
    }

    #[test]
    fn missing_parameters_are_all_named() {
        let mut headers = signed_kms();
        set_header(&mut headers, "authorization", "AWS4-HMAC-SHA256 Foo=bar");
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(
            e.message(),
            "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter."
        );
    }

    #[test]
    fn duplicate_authorization_or_date_headers_are_refused() {
        let mut headers = signed_kms();
        let auth = get_header(&headers, "authorization").to_string();
        headers.push(("authorization".into(), auth));
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::IncompleteSignature(_))
        ));
        let mut headers = signed_kms();
        headers.push(("X-AMZ-DATE".into(), "20260101T003000Z".into()));
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::IncompleteSignature(_))
        ));
    }

    #[test]
    fn missing_date_is_incomplete() {
        let mut headers = signed_kms();
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("x-amz-date"));
        let e = kms_request(&headers, BODY).unwrap_err();
        assert_eq!(
            e,
            AuthError::IncompleteSignature(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into()
            )
        );
    }

    /// A minimal signer built on this module's canonicalisation, for the `Date` header path
    /// (no SDK signs with `Date`).
    fn sign_with_date_header(date: &str, signed: &[&str]) -> Vec<(String, String)> {
        let mut headers = kms_headers("Decrypt");
        headers.push(("Date".into(), date.into()));
        let signed: Vec<String> = signed.iter().map(|s| s.to_string()).collect();
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: BODY,
        };
        let creq = canonical_request(&req, &signed, &hex_sha256(BODY)).unwrap();
        let t = DateTime::parse_from_rfc2822(date)
            .unwrap()
            .with_timezone(&Utc);
        let amz = format_amz_date(&t);
        let scope = format!("{}/{REGION}/kms/aws4_request", &amz[..8]);
        let sts = format!(
            "{ALGORITHM}\n{amz}\n{scope}\n{}",
            hex_sha256(creq.as_bytes())
        );
        let key = signing_key(SECRET, &amz[..8], REGION, "kms").unwrap();
        let sig = hex::encode(*hmac(&*key, sts.as_bytes()).unwrap());
        headers.push((
            "Authorization".into(),
            format!(
                "{ALGORITHM} Credential={AKID}/{scope}, SignedHeaders={}, Signature={sig}",
                signed.join(";")
            ),
        ));
        headers
    }

    #[test]
    fn date_header_fallback() {
        let headers = sign_with_date_header(
            "Thu, 01 Jan 2026 00:29:00 GMT",
            &["content-type", "date", "host", "x-amz-target"],
        );
        let v = kms_request(&headers, BODY).unwrap();
        assert_eq!(
            v.signed_at,
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 29, 0).unwrap()
        );
        // The Date header must be signed when it is the request time.
        let headers =
            sign_with_date_header("Thu, 01 Jan 2026 00:29:00 GMT", &["host", "x-amz-target"]);
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::IncompleteSignature(_))
        ));
        // An old Date expires like X-Amz-Date.
        let headers = sign_with_date_header(
            "Wed, 31 Dec 2025 23:00:00 GMT",
            &["date", "host", "x-amz-target"],
        );
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::RequestExpired(_))
        ));
        // An unparsable Date.
        let mut headers = sign_with_date_header(
            "Thu, 01 Jan 2026 00:29:00 GMT",
            &["date", "host", "x-amz-target"],
        );
        set_header(&mut headers, "date", "soon");
        assert!(matches!(
            kms_request(&headers, BODY),
            Err(AuthError::IncompleteSignature(_))
        ));
    }

    #[test]
    fn error_accessors_and_display() {
        let all = [
            AuthError::MissingAuthenticationToken("a".into()),
            AuthError::IncompleteSignature("b".into()),
            AuthError::InvalidSignature("c".into()),
            AuthError::UnrecognizedClient("d".into()),
            AuthError::RequestExpired("e".into()),
        ];
        let types: Vec<&str> = all.iter().map(AuthError::aws_type).collect();
        assert_eq!(
            types,
            [
                "MissingAuthenticationTokenException",
                "IncompleteSignatureException",
                "InvalidSignatureException",
                "UnrecognizedClientException",
                "InvalidSignatureException"
            ]
        );
        for (e, m) in all.iter().zip(["a", "b", "c", "d", "e"]) {
            assert_eq!(e.message(), m);
            assert_eq!(e.to_string(), m);
            assert_eq!(e.http_status(), 400);
        }
    }

    #[test]
    fn echoed_text_is_bounded_and_printable() {
        let mut headers = signed_kms();
        let long = format!("X{}\n\r\u{7}", "A".repeat(10_000));
        set_header(&mut headers, "authorization", &long);
        let e = kms_request(&headers, BODY).unwrap_err();
        assert!(e.message().len() < 300, "{}", e.message().len());
        assert!(!e.message().chars().any(char::is_control));
    }

    fn random_string(rng: &mut impl Rng, max: usize) -> String {
        const PIECES: &[&str] = &[
            "AWS4-HMAC-SHA256",
            " ",
            ",",
            "=",
            "/",
            ";",
            "Credential",
            "SignedHeaders",
            "Signature",
            "aws4_request",
            "us-east-1",
            "kms",
            "host",
            "x-amz-date",
            "20260101",
            "\t",
            "\u{0}",
            "\u{1234}",
            "é",
            "%",
            "..",
            "0123456789abcdef",
            "\r\n",
            "\u{10FFFF}",
            "'",
            "\"",
        ];
        let n = rng.gen_range(0..max);
        let mut s = String::new();
        for _ in 0..n {
            if rng.gen_bool(0.7) {
                s.push_str(PIECES[rng.gen_range(0..PIECES.len())]);
            } else {
                s.push(rng.r#gen::<char>());
            }
        }
        s
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let good = signed_kms();
        let good_auth = get_header(&good, "authorization").to_string();
        for i in 0..3000 {
            let mut headers = good.clone();
            let auth = if i % 2 == 0 {
                random_string(&mut rng, 40)
            } else {
                // Mutate the valid header: insert, delete or replace characters.
                let mut chars: Vec<char> = good_auth.chars().collect();
                for _ in 0..rng.gen_range(1..6) {
                    let at = rng.gen_range(0..=chars.len());
                    match rng.gen_range(0..3) {
                        0 => chars.insert(at, rng.r#gen::<char>()),
                        1 if at < chars.len() => {
                            chars.remove(at);
                        }
                        _ if at < chars.len() => chars[at] = rng.r#gen::<char>(),
                        _ => {}
                    }
                }
                chars.into_iter().collect()
            };
            set_header(&mut headers, "authorization", &auth);
            if i % 3 == 0 {
                set_header(&mut headers, "x-amz-date", &random_string(&mut rng, 5));
            }
            if i % 5 == 0 {
                headers.push(("date".into(), random_string(&mut rng, 8)));
            }
            let path = random_string(&mut rng, 6);
            let query = random_string(&mut rng, 6);
            let req = SignedRequest {
                method: "POST",
                path: &path,
                query: &query,
                headers: &headers,
                body: BODY,
            };
            let r = verify(&req, now(), REGION, "kms", lookup);
            assert!(r.is_err(), "random input verified: {auth:?}");
        }
    }
}
