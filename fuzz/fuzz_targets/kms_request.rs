//! The KMS request path: headers + SigV4 + JSON body → answer, through the
//! very function the HTTP handler calls (`kms::http::request::respond`:
//! body bound, `sigv4::verify` with the service's credentials, the
//! method/path/Content-Type/X-Amz-Target checks, `Kms::handle`, AWS-shaped
//! errors), on one KMS per process (temp dir).
//!
//! Input, as text:
//!
//! ```text
//! POST /?query HTTP/1.1             <- or a raw HTTP/1.1 request (CRLF)
//! Header-Name: value
//! Authorization: SIGN alice        <- placeholder: the harness signs
//!
//! {"KeyId": "@KEY@", "CiphertextBlob": "@BLOB@"}
//! ```
//!
//! `Authorization: SIGN [alice]` is replaced by a valid SigV4 signature
//! (root's or alice's key) over the request as given, so the fuzzer
//! reaches every operation; any other Authorization header is verified as
//! is. In the body, `@KEY@` becomes the id of a key made at start-up
//! (`alias/fuzz` names it too) and `@BLOB@` a ciphertext blob under it
//! (context `{"purpose": "fuzz"}`).
//!
//! Invariants: no panic; a request not signed by the harness never
//! authenticates (its answer is a body-bound or authentication error); an
//! answer is a JSON object; an error has an HTTP status >= 400 and the same
//! AWS type in `x-amzn-errortype` and `__type`; no answer contains a secret
//! access key.
#![no_main]

use std::sync::{Arc, OnceLock};

use chrono::{TimeZone, Utc};
use envol::kms::clock::ManualClock;
use envol::kms::datadir::DataDir;
use envol::kms::http::request::respond;
use envol::kms::iam::AccessKey;
use envol::kms::sigv4::{SignedRequest, canonical_query, canonical_uri};
use envol::kms::{Kms, RequestContext};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const REGION: &str = "us-east-1";

struct World {
    kms: Kms,
    root: AccessKey,
    alice: AccessKey,
    key_id: String,
    blob: String,
    requests: std::sync::atomic::AtomicU64,
    audit_log: std::path::PathBuf,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // One data directory per process, under the temp dir; directories
        // of processes that are gone are removed.
        let base = std::env::temp_dir().join("envol-fuzz-kms");
        std::fs::create_dir_all(&base).unwrap();
        for entry in std::fs::read_dir(&base).unwrap().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !std::path::Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = DataDir::new(base.join(std::process::id().to_string()));
        let _ = std::fs::remove_dir_all(&dir.root);
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 11, 28, 19, 10, 0).unwrap(),
        ));
        let (kms, root) = Kms::init(&dir, REGION, clock).expect("kms init");
        let (_, alice) = kms.add_user("alice").expect("add alice");
        let ctx = RequestContext {
            principal: kms.root_principal(),
            request_id: "fuzz-setup".into(),
            source: None,
            secure_transport: false,
        };
        let created = kms
            .handle(&ctx, "CreateKey", br#"{"Description": "fuzz"}"#)
            .expect("CreateKey");
        let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
        let alias = format!(r#"{{"AliasName": "alias/fuzz", "TargetKeyId": "{key_id}"}}"#);
        kms.handle(&ctx, "CreateAlias", alias.as_bytes())
            .expect("CreateAlias");
        let encrypt = format!(
            r#"{{"KeyId": "{key_id}", "Plaintext": "AAECAwQFBgcICQoLDA0ODw==", "EncryptionContext": {{"purpose": "fuzz"}}}}"#
        );
        let sealed = kms
            .handle(&ctx, "Encrypt", encrypt.as_bytes())
            .expect("Encrypt");
        let blob = sealed["CiphertextBlob"].as_str().unwrap().to_string();
        World {
            kms,
            root,
            alice,
            key_id,
            blob,
            requests: Default::default(),
            audit_log: dir.audit_log(),
        }
    })
}

/// A request as parsed from the input.
struct Parsed {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// `Some(signer)` when the Authorization header was the placeholder.
    sign_as: Option<bool>,
}

fn parse(data: &[u8], w: &World) -> Option<Parsed> {
    let split = match data.windows(4).position(|p| p == b"\r\n\r\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => data
            .windows(2)
            .position(|p| p == b"\n\n")
            .map_or((data, &[][..]), |i| (&data[..i], &data[i + 2..])),
    };
    let head = std::str::from_utf8(split.0).ok()?;
    let mut lines = head.lines();
    // `METHOD TARGET [HTTP/1.1]`
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next().unwrap_or("POST");
    let target = request_line.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    let mut sign_as = None;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim_start().to_string();
        if name == "authorization" && value.starts_with("SIGN") {
            sign_as = Some(value.contains("alice"));
        } else {
            headers.push((name, value));
        }
    }
    let body = String::from_utf8_lossy(split.1)
        .replace("@KEY@", &w.key_id)
        .replace("@BLOB@", &w.blob)
        .into_bytes();
    Some(Parsed {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
        sign_as,
    })
}

/// AWS's "trimall": trim, and collapse runs of spaces to one.
fn trim_all(v: &str) -> String {
    let mut out = String::new();
    for c in v.trim().chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Adds a SigV4 Authorization header over every header of `r`, as an SDK
/// would (the server's verifier must agree with this independent signer).
fn sign(r: &mut Parsed, key: &AccessKey, now: &str) {
    if !r.headers.iter().any(|(n, _)| n == "host") {
        r.headers.push(("host".into(), "localhost:4599".into()));
    }
    if !r
        .headers
        .iter()
        .any(|(n, _)| n == "x-amz-date" || n == "date")
    {
        r.headers.push(("x-amz-date".into(), now.to_string()));
    }
    let date = r
        .headers
        .iter()
        .find(|(n, _)| n == "x-amz-date" || n == "date")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut names: Vec<String> = r.headers.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names.dedup();
    let mut creq = format!(
        "{}\n{}\n{}\n",
        r.method,
        canonical_uri(&r.path),
        canonical_query(&r.query)
    );
    for name in &names {
        let values: Vec<String> = r
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| trim_all(v))
            .collect();
        creq.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let signed = names.join(";");
    creq.push_str(&format!("\n{signed}\n{}", hex_sha256(&r.body)));
    let day = date.get(..8).unwrap_or("");
    let scope = format!("{day}/{REGION}/kms/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex_sha256(creq.as_bytes())
    );
    let mut k = hmac(format!("AWS4{}", &*key.secret_access_key).as_bytes(), day);
    for part in [REGION, "kms", "aws4_request"] {
        k = hmac(&k, part);
    }
    let signature = hex::encode(hmac(&k, &to_sign));
    r.headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            key.access_key_id
        ),
    ));
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Some(mut r) = parse(data, w) else {
        return;
    };
    let now = w.kms.clock().now();
    if let Some(alice) = r.sign_as {
        let key = if alice { &w.alice } else { &w.root };
        sign(&mut r, key, &now.format("%Y%m%dT%H%M%SZ").to_string());
    }

    // Keep the audit log (one line per request) from filling the disk.
    let n = w
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if n % 10_000 == 9_999
        && let Ok(f) = std::fs::OpenOptions::new().write(true).open(&w.audit_log)
    {
        let _ = f.set_len(0);
    }

    let signed = SignedRequest {
        method: &r.method,
        path: &r.path,
        query: &r.query,
        headers: &r.headers,
        body: &r.body,
    };
    let reply = respond(&w.kms, &signed, "fuzz", "fuzz", false);
    // Keep the shared key usable, so later inputs reach the same code.
    let operation = r
        .headers
        .iter()
        .find(|(n, _)| n == "x-amz-target")
        .and_then(|(_, v)| v.strip_prefix("TrentService."))
        .unwrap_or("");
    if reply.status == 200
        && matches!(
            operation,
            "ScheduleKeyDeletion" | "DisableKey" | "DeleteAlias" | "UpdateAlias"
        )
    {
        restore(w);
    }

    let body: serde_json::Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", reply.body));
    assert!(body.is_object(), "answer is not a JSON object: {body}");
    check_no_secret(w, &reply.body);
    for (_, value) in &reply.headers {
        check_no_secret(w, value);
    }
    let error_type = reply
        .headers
        .iter()
        .find(|(n, _)| *n == "x-amzn-errortype")
        .map(|(_, v)| v.as_str());
    if reply.status == 200 {
        assert!(error_type.is_none(), "a 200 answer with an error type");
    } else {
        assert!(reply.status >= 400, "status {}", reply.status);
        let error_type = error_type.expect("an error answer without x-amzn-errortype");
        assert!(!error_type.is_empty());
        assert_eq!(body["__type"].as_str(), Some(error_type));
    }
    if r.sign_as.is_none() {
        assert!(
            error_type.is_some_and(|t| REFUSED_UNAUTHENTICATED.contains(&t)),
            "a request the harness did not sign was answered {} {}",
            reply.status,
            reply.body
        );
    }
});

/// The answers a request without a valid signature can get: refused at the
/// body bound (checked first) or by authentication.
const REFUSED_UNAUTHENTICATED: &[&str] = &[
    "RequestEntityTooLargeException",
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
    "InvalidSignatureException",
    "UnrecognizedClientException",
    "RequestExpired",
];

/// Undoes what would starve later inputs: the fuzz key disabled, pending
/// deletion, or without its alias.
fn restore(w: &World) {
    let ctx = RequestContext {
        principal: w.kms.root_principal(),
        request_id: "fuzz-restore".into(),
        source: None,
        secure_transport: false,
    };
    let key = format!(r#"{{"KeyId": "{}"}}"#, w.key_id);
    let _ = w.kms.handle(&ctx, "CancelKeyDeletion", key.as_bytes());
    let _ = w.kms.handle(&ctx, "EnableKey", key.as_bytes());
    let alias = format!(
        r#"{{"AliasName": "alias/fuzz", "TargetKeyId": "{}"}}"#,
        w.key_id
    );
    if w.kms.handle(&ctx, "UpdateAlias", alias.as_bytes()).is_err() {
        let _ = w.kms.handle(&ctx, "CreateAlias", alias.as_bytes());
    }
}

fn check_no_secret(w: &World, text: &str) {
    for key in [&w.root, &w.alice] {
        assert!(
            !text.contains(key.secret_access_key.as_str()),
            "a secret access key in a response"
        );
    }
}
