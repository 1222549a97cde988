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
            format!("AWS4-HMAC-SHA256\tCredential={c}, SignedHeaders={s}, Signature={g}, Extra=1")
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
            |c, s, g| format!("AWS4-HMAC-SHA512 Credential={c}, SignedHeaders={s}, Signature={g}"),
            "Incomplete",
        ),
        (
            |c, s, g| {
                format!("AWS4-ECDSA-P256-SHA256 Credential={c}, SignedHeaders={s}, Signature={g}")
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
            |c, s, g| format!("AWS4-HMAC-SHA256 Credential {c}, SignedHeaders={s}, Signature={g}"),
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
                format!("AWS4-HMAC-SHA256 Credential={c}/extra, SignedHeaders={s}, Signature={g}")
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
            |c, s, g| format!("AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s};, Signature={g}"),
            "Incomplete",
        ),
        (
            |c, s, g| {
                format!("AWS4-HMAC-SHA256 Credential={c}, SignedHeaders=host x;{s}, Signature={g}")
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
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .into()
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
    let headers = sign_with_date_header("Thu, 01 Jan 2026 00:29:00 GMT", &["host", "x-amz-target"]);
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
