use super::evaluate::glob;
use super::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;

const ACCT: &str = "111122223333";
const OTHER: &str = "444455556666";
const ROOT: &str = "arn:aws:iam::111122223333:root";
const ALICE: &str = "arn:aws:iam::111122223333:user/alice";
const BOB: &str = "arn:aws:iam::111122223333:user/bob";
const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn req<'a>(
    principal: &'a str,
    action: &'a str,
    ec: &'a BTreeMap<String, String>,
) -> AccessRequest<'a> {
    let caller_account = principal.split(':').nth(4).unwrap_or(ACCT);
    AccessRequest {
        principal_arn: principal,
        // Unbound policies (all but the binding tests') ignore the id.
        principal_id: principal,
        secure_transport: false,
        account_id: ACCT,
        caller_account,
        action,
        resource_arn: KEY,
        encryption_context: ec,
    }
}

fn decide(policy: &str, principal: &str, action: &str, ec: &[(&str, &str)]) -> Decision {
    let ec = ctx(ec);
    Policy::parse(policy)
        .unwrap_or_else(|e| panic!("{e}: {policy}"))
        .evaluate(&req(principal, action, &ec))
}

/// A one-statement Allow policy with the given fragments.
fn allow(principal: &str, action: &str, extra: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{principal},"Action":{action},"Resource":"*"{extra}}}]}}"#
    )
}

fn cond_policy(condition: &str) -> String {
    allow(
        r#"{"AWS":"*"}"#,
        r#""kms:Decrypt""#,
        &format!(r#","Condition":{condition}"#),
    )
}

fn cond(condition: &str, ec: &[(&str, &str)]) -> Decision {
    decide(&cond_policy(condition), ALICE, "kms:Decrypt", ec)
}

use Decision::{Allow, ExplicitDeny, ImplicitDeny};

fn malformed_msg(policy: &str) -> String {
    match Policy::parse(policy) {
        Err(PolicyError::Malformed(m)) => m,
        Ok(_) => panic!("accepted: {policy}"),
    }
}

// ---- defaults -----------------------------------------------------------

#[test]
fn default_policy_allows_root_and_creator_only() {
    let text = default_key_policy(ACCT, ALICE);
    let p = Policy::parse(&text).unwrap();
    assert_eq!(p.version(), Some("2012-10-17"));
    assert_eq!(
        p.statement_ids(),
        [
            Some("Enable IAM User Permissions"),
            Some("Allow use of the key by its creator")
        ]
    );
    let ec = ctx(&[]);
    assert_eq!(
        p.evaluate(&req(ROOT, "kms:ScheduleKeyDeletion", &ec)),
        Allow
    );
    assert_eq!(p.evaluate(&req(ALICE, "kms:Decrypt", &ec)), Allow);
    assert_eq!(p.evaluate(&req(BOB, "kms:Decrypt", &ec)), ImplicitDeny);
    assert_eq!(
        p.evaluate(&req("arn:aws:iam::444455556666:root", "kms:Decrypt", &ec)),
        ImplicitDeny
    );
    assert_eq!(p.named_principals(), [ROOT, ALICE]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["Statement"][0]["Principal"]["AWS"], ROOT);
    assert_eq!(v["Statement"][0]["Action"], "kms:*");
    assert_eq!(v["Statement"][0]["Resource"], "*");
}

#[test]
fn default_policy_for_root_creator_has_one_statement() {
    for creator in [ROOT, ACCT] {
        let p = Policy::parse(&default_key_policy(ACCT, creator)).unwrap();
        assert_eq!(p.statement_ids(), [Some("Enable IAM User Permissions")]);
    }
}

#[test]
fn default_policy_escapes_odd_creator() {
    let creator = "arn:aws:iam::111122223333:user/we\"ird\\name";
    let text = default_key_policy(ACCT, creator);
    let p = Policy::parse(&text).unwrap();
    assert_eq!(p.evaluate(&req(creator, "kms:Encrypt", &ctx(&[]))), Allow);
}

// ---- actions ------------------------------------------------------------

#[test]
fn action_wildcards_case_insensitive() {
    let p = allow(r#"{"AWS":"*"}"#, r#""kms:Generate*""#, "");
    assert_eq!(decide(&p, ALICE, "kms:GenerateDataKey", &[]), Allow);
    assert_eq!(
        decide(&p, ALICE, "kms:GenerateDataKeyWithoutPlaintext", &[]),
        Allow
    );
    assert_eq!(decide(&p, ALICE, "KMS:generaterandom", &[]), Allow);
    assert_eq!(decide(&p, ALICE, "kms:Decrypt", &[]), ImplicitDeny);
    assert_eq!(decide(&p, ALICE, "kms:Generat", &[]), ImplicitDeny);

    let p = allow(r#"{"AWS":"*"}"#, r#"["kms:Decrypt","kms:?ncrypt"]"#, "");
    assert_eq!(decide(&p, ALICE, "kms:decrypt", &[]), Allow);
    assert_eq!(decide(&p, ALICE, "kms:Encrypt", &[]), Allow);
    assert_eq!(decide(&p, ALICE, "kms:ReEncrypt", &[]), ImplicitDeny);

    for all in [r#""*""#, r#""kms:*""#] {
        let p = allow(r#""*""#, all, "");
        assert_eq!(decide(&p, ALICE, "kms:PutKeyPolicy", &[]), Allow);
    }
    let p = allow(r#""*""#, r#""kms:*""#, "");
    assert_eq!(decide(&p, ALICE, "s3:GetObject", &[]), ImplicitDeny);
}

#[test]
fn not_action() {
    let p = r#"{"Statement":{"Effect":"Allow","Principal":"*","NotAction":["kms:Schedule*","kms:PutKeyPolicy"],"Resource":"*"}}"#;
    assert_eq!(decide(p, ALICE, "kms:Decrypt", &[]), Allow);
    assert_eq!(
        decide(p, ALICE, "kms:ScheduleKeyDeletion", &[]),
        ImplicitDeny
    );
    assert_eq!(decide(p, ALICE, "kms:putkeypolicy", &[]), ImplicitDeny);
}

// ---- resources ----------------------------------------------------------

#[test]
fn resources() {
    let mk = |r: &str| {
        format!(
            r#"{{"Statement":{{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":{r}}}}}"#
        )
    };
    assert_eq!(
        decide(&mk(&format!("\"{KEY}\"")), ALICE, "kms:Decrypt", &[]),
        Allow
    );
    assert_eq!(
        decide(
            &mk(r#""arn:aws:kms:*:111122223333:key/*""#),
            ALICE,
            "kms:Decrypt",
            &[]
        ),
        Allow
    );
    assert_eq!(
        decide(
            &mk(r#""arn:aws:kms:us-east-1:111122223333:key/other""#),
            ALICE,
            "kms:Decrypt",
            &[]
        ),
        ImplicitDeny
    );
    // Case-sensitive.
    assert_eq!(
        decide(
            &mk(&format!("\"{}\"", KEY.replace("abcd", "ABCD"))),
            ALICE,
            "kms:Decrypt",
            &[]
        ),
        ImplicitDeny
    );
    let p = r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","NotResource":"arn:aws:kms:*:*:key/1234*"}}"#;
    assert_eq!(decide(p, ALICE, "kms:Decrypt", &[]), ImplicitDeny);
}

// ---- principals ---------------------------------------------------------

#[test]
fn principal_forms() {
    let star = allow(r#""*""#, r#""kms:Decrypt""#, "");
    let aws_star = allow(r#"{"AWS":"*"}"#, r#""kms:Decrypt""#, "");
    for p in [&star, &aws_star] {
        assert_eq!(decide(p, ALICE, "kms:Decrypt", &[]), Allow);
        assert_eq!(
            decide(p, "arn:aws:iam::444455556666:user/eve", "kms:Decrypt", &[]),
            Allow
        );
    }

    let user = allow(&format!(r#"{{"AWS":"{ALICE}"}}"#), r#""kms:Decrypt""#, "");
    assert_eq!(decide(&user, ALICE, "kms:Decrypt", &[]), Allow);
    assert_eq!(decide(&user, BOB, "kms:Decrypt", &[]), ImplicitDeny);
    assert_eq!(decide(&user, ROOT, "kms:Decrypt", &[]), ImplicitDeny);
    assert_eq!(
        decide(
            &user,
            "arn:aws:iam::111122223333:user/Alice",
            "kms:Decrypt",
            &[]
        ),
        ImplicitDeny
    );

    let list = allow(
        &format!(r#"{{"AWS":["{ALICE}","{BOB}"]}}"#),
        r#""kms:Decrypt""#,
        "",
    );
    assert_eq!(decide(&list, BOB, "kms:Decrypt", &[]), Allow);
}

#[test]
fn account_principal_means_root_only() {
    for principal in [
        format!(r#"{{"AWS":"{ROOT}"}}"#),
        format!(r#"{{"AWS":"{ACCT}"}}"#),
    ] {
        let p = allow(&principal, r#""kms:*""#, "");
        assert_eq!(decide(&p, ROOT, "kms:Decrypt", &[]), Allow);
        // Deviation from AWS: no delegation to IAM users of the account.
        assert_eq!(decide(&p, ALICE, "kms:Decrypt", &[]), ImplicitDeny);
        assert_eq!(
            decide(&p, "arn:aws:iam::444455556666:root", "kms:Decrypt", &[]),
            ImplicitDeny
        );
    }
    let p = Policy::parse(&allow(
        &format!(r#"{{"AWS":["{ACCT}","{BOB}"]}}"#),
        r#""kms:*""#,
        "",
    ))
    .unwrap();
    assert_eq!(p.named_principals(), [ROOT, BOB]);
}

#[test]
fn foreign_principals_accepted_never_match() {
    let p = allow(r#"{"Service":"logs.amazonaws.com"}"#, r#""kms:*""#, "");
    assert_eq!(decide(&p, ALICE, "kms:Decrypt", &[]), ImplicitDeny);
    assert_eq!(decide(&p, ROOT, "kms:Decrypt", &[]), ImplicitDeny);
    let p = allow(
        r#"{"Service":["a.amazonaws.com"],"AWS":"arn:aws:iam::111122223333:user/alice"}"#,
        r#""kms:*""#,
        "",
    );
    assert_eq!(decide(&p, ALICE, "kms:Decrypt", &[]), Allow);
}

#[test]
fn not_principal() {
    let p = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}},{{"Effect":"Deny","NotPrincipal":{{"AWS":["{ROOT}","{ALICE}"]}},"Action":"kms:Decrypt","Resource":"*"}}]}}"#
    );
    assert_eq!(decide(&p, ALICE, "kms:Decrypt", &[]), Allow);
    assert_eq!(decide(&p, ROOT, "kms:Decrypt", &[]), Allow);
    assert_eq!(decide(&p, BOB, "kms:Decrypt", &[]), ExplicitDeny);
    assert_eq!(decide(&p, BOB, "kms:Encrypt", &[]), Allow);
}

// ---- evaluation ---------------------------------------------------------

#[test]
fn deny_wins_and_default_is_implicit_deny() {
    let p = format!(
        r#"{{"Version":"2012-10-17","Statement":[
                {{"Sid":"all","Effect":"Allow","Principal":{{"AWS":"*"}},"Action":"kms:*","Resource":"*"}},
                {{"Sid":"no-bob-decrypt","Effect":"Deny","Principal":{{"AWS":"{BOB}"}},"Action":["kms:Decrypt","kms:ReEncrypt*"],"Resource":"*"}}
            ]}}"#
    );
    assert_eq!(decide(&p, ALICE, "kms:Decrypt", &[]), Allow);
    assert_eq!(decide(&p, BOB, "kms:Decrypt", &[]), ExplicitDeny);
    assert_eq!(decide(&p, BOB, "kms:ReEncryptFrom", &[]), ExplicitDeny);
    assert_eq!(decide(&p, BOB, "kms:Encrypt", &[]), Allow);

    // Order does not matter.
    let p2 = r#"{"Statement":[
                {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*"},
                {"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*"}
            ]}"#;
    assert_eq!(decide(p2, ALICE, "kms:Decrypt", &[]), ExplicitDeny);

    let deny_only =
        r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*"}}"#;
    assert_eq!(decide(deny_only, ALICE, "kms:Decrypt", &[]), ImplicitDeny);
    assert_eq!(decide(deny_only, ALICE, "kms:Encrypt", &[]), ExplicitDeny);
}

// ---- conditions ---------------------------------------------------------

const VOL: &str = "kms:EncryptionContext:envol:volume";

#[test]
fn string_equals_on_encryption_context() {
    let c = format!(r#"{{"StringEquals":{{"{VOL}":"vol-1"}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "vol-1")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol-1"), ("x", "y")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol-2")]), ImplicitDeny);
    assert_eq!(cond(&c, &[("envol:volume", "VOL-1")]), ImplicitDeny);
    // Missing key: a positive operator does not match.
    assert_eq!(cond(&c, &[]), ImplicitDeny);
    assert_eq!(cond(&c, &[("other", "vol-1")]), ImplicitDeny);
    // List of values: any.
    let c = format!(r#"{{"StringEquals":{{"{VOL}":["vol-1","vol-2"]}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "vol-2")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol-3")]), ImplicitDeny);
}

#[test]
fn context_key_part_is_case_sensitive_prefix_is_not() {
    let c = r#"{"StringEquals":{"KMS:encryptioncontext:Dept":"it"}}"#;
    assert_eq!(cond(c, &[("Dept", "it")]), Allow);
    assert_eq!(cond(c, &[("dept", "it")]), ImplicitDeny);
}

#[test]
fn string_not_equals_and_missing_key() {
    let c = format!(r#"{{"StringNotEquals":{{"{VOL}":["vol-1","vol-2"]}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "vol-3")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol-1")]), ImplicitDeny);
    assert_eq!(cond(&c, &[("envol:volume", "vol-2")]), ImplicitDeny);
    // Missing key: a negated operator matches.
    assert_eq!(cond(&c, &[]), Allow);
}

#[test]
fn deny_unless_context_present() {
    // The AWS pattern: Deny when the context value is not the expected one (or missing).
    let p = format!(
        r#"{{"Statement":[
                {{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}},
                {{"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
                  "Condition":{{"StringNotEquals":{{"{VOL}":"vol-1"}}}}}}
            ]}}"#
    );
    assert_eq!(
        decide(&p, ALICE, "kms:Decrypt", &[("envol:volume", "vol-1")]),
        Allow
    );
    assert_eq!(
        decide(&p, ALICE, "kms:Decrypt", &[("envol:volume", "vol-9")]),
        ExplicitDeny
    );
    assert_eq!(decide(&p, ALICE, "kms:Decrypt", &[]), ExplicitDeny);
}

#[test]
fn string_like_and_not_like() {
    let c = format!(r#"{{"StringLike":{{"{VOL}":"vol-*-?"}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "vol-abc-1")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol--x")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol-abc-12")]), ImplicitDeny);
    assert_eq!(cond(&c, &[("envol:volume", "VOL-abc-1")]), ImplicitDeny);
    assert_eq!(cond(&c, &[]), ImplicitDeny);
    let c = format!(r#"{{"StringNotLike":{{"{VOL}":["tmp-*","scratch*"]}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "vol-1")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "tmp-1")]), ImplicitDeny);
    assert_eq!(cond(&c, &[("envol:volume", "scratch")]), ImplicitDeny);
    assert_eq!(cond(&c, &[]), Allow);
}

#[test]
fn string_equals_ignore_case() {
    let c = format!(r#"{{"StringEqualsIgnoreCase":{{"{VOL}":"Vol-ÄB"}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "vol-äb")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol-ab")]), ImplicitDeny);
    assert_eq!(cond(&c, &[]), ImplicitDeny);
    let c = format!(r#"{{"StringNotEqualsIgnoreCase":{{"{VOL}":"VOL-1"}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "vol-1")]), ImplicitDeny);
    assert_eq!(cond(&c, &[("envol:volume", "vol-2")]), Allow);
}

#[test]
fn if_exists_and_null() {
    let c = format!(r#"{{"StringEqualsIfExists":{{"{VOL}":"vol-1"}}}}"#);
    assert_eq!(cond(&c, &[]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol-1")]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "vol-2")]), ImplicitDeny);

    let c = format!(r#"{{"Null":{{"{VOL}":"true"}}}}"#);
    assert_eq!(cond(&c, &[]), Allow);
    assert_eq!(cond(&c, &[("envol:volume", "x")]), ImplicitDeny);
    let c = format!(r#"{{"Null":{{"{VOL}":false}}}}"#);
    assert_eq!(cond(&c, &[]), ImplicitDeny);
    assert_eq!(cond(&c, &[("envol:volume", "x")]), Allow);
    let c = r#"{"Null":{"kms:EncryptionContextKeys":"false"}}"#;
    assert_eq!(cond(c, &[]), ImplicitDeny);
    assert_eq!(cond(c, &[("a", "b")]), Allow);
}

#[test]
fn bool_operator_with_unknown_key() {
    // kms:GrantIsForAWSResource is never present here.
    let c = r#"{"Bool":{"kms:GrantIsForAWSResource":"true"}}"#;
    assert_eq!(cond(c, &[]), ImplicitDeny);
    let c = r#"{"Bool":{"kms:GrantIsForAWSResource":true}}"#;
    assert_eq!(cond(c, &[]), ImplicitDeny);
}

#[test]
fn unknown_condition_keys_are_absent() {
    assert_eq!(
        cond(r#"{"StringEquals":{"aws:SourceIp":"1.2.3.4"}}"#, &[]),
        ImplicitDeny
    );
    assert_eq!(
        cond(r#"{"StringNotEquals":{"kms:ViaService":"x"}}"#, &[]),
        Allow
    );
}

#[test]
fn caller_account_and_principal_arn() {
    let c = format!(r#"{{"StringEquals":{{"kms:CallerAccount":"{ACCT}"}}}}"#);
    assert_eq!(cond(&c, &[]), Allow);
    assert_eq!(
        decide(
            &cond_policy(&c),
            "arn:aws:iam::444455556666:user/eve",
            "kms:Decrypt",
            &[]
        ),
        ImplicitDeny
    );
    let c = format!(r#"{{"StringEquals":{{"aws:PrincipalAccount":"{OTHER}"}}}}"#);
    assert_eq!(
        decide(
            &cond_policy(&c),
            "arn:aws:iam::444455556666:user/eve",
            "kms:Decrypt",
            &[]
        ),
        Allow
    );
    let c = r#"{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::111122223333:user/a*"}}"#;
    assert_eq!(decide(&cond_policy(c), ALICE, "kms:Decrypt", &[]), Allow);
    assert_eq!(
        decide(&cond_policy(c), BOB, "kms:Decrypt", &[]),
        ImplicitDeny
    );
    let c = format!(r#"{{"ArnEquals":{{"aws:PrincipalArn":"{BOB}"}}}}"#);
    assert_eq!(decide(&cond_policy(&c), BOB, "kms:Decrypt", &[]), Allow);
    let c = format!(r#"{{"ArnNotEquals":{{"aws:PrincipalArn":"{BOB}"}}}}"#);
    assert_eq!(
        decide(&cond_policy(&c), BOB, "kms:Decrypt", &[]),
        ImplicitDeny
    );
    let c = r#"{"ArnNotLike":{"aws:PrincipalArn":"*:user/b*"}}"#;
    assert_eq!(decide(&cond_policy(c), ALICE, "kms:Decrypt", &[]), Allow);
    let c = format!(r#"{{"StringEquals":{{"aws:ResourceAccount":"{ACCT}"}}}}"#);
    assert_eq!(cond(&c, &[]), Allow);
    // Key names are case-insensitive.
    let c = format!(r#"{{"StringEquals":{{"KMS:CALLERACCOUNT":"{ACCT}"}}}}"#);
    assert_eq!(cond(&c, &[]), Allow);
}

#[test]
fn multiple_keys_and_operators_all_must_match() {
    let c = format!(
        r#"{{"StringEquals":{{"{VOL}":"vol-1","kms:EncryptionContext:tier":"gold"}},
                 "StringEquals":{{"{VOL}":"vol-1"}}}}"#
    );
    // A duplicate JSON key (the operator, here) makes the policy malformed:
    // serde_json would silently keep the last one.
    assert!(malformed_msg(&cond_policy(&c)).contains("duplicate key 'StringEquals'"));
    let c =
        format!(r#"{{"StringEquals":{{"{VOL}":"vol-1","kms:EncryptionContext:tier":"gold"}}}}"#);
    assert_eq!(
        cond(&c, &[("envol:volume", "vol-1"), ("tier", "gold")]),
        Allow
    );
    assert_eq!(
        cond(&c, &[("envol:volume", "vol-1"), ("tier", "silver")]),
        ImplicitDeny
    );
    assert_eq!(cond(&c, &[("envol:volume", "vol-1")]), ImplicitDeny);
    let c = format!(
        r#"{{"StringEquals":{{"{VOL}":"vol-1"}},"StringLike":{{"kms:EncryptionContext:tier":"g*"}},"StringNotEquals":{{"kms:CallerAccount":"{OTHER}"}}}}"#
    );
    assert_eq!(
        cond(&c, &[("envol:volume", "vol-1"), ("tier", "gold")]),
        Allow
    );
    assert_eq!(
        cond(&c, &[("envol:volume", "vol-1"), ("tier", "silver")]),
        ImplicitDeny
    );
    assert_eq!(
        cond(&c, &[("envol:volume", "vol-2"), ("tier", "gold")]),
        ImplicitDeny
    );
}

#[test]
fn for_any_value_on_context_keys() {
    let c = r#"{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":["envol:volume","app"]}}"#;
    assert_eq!(cond(c, &[("app", "1")]), Allow);
    assert_eq!(cond(c, &[("x", "1"), ("envol:volume", "v")]), Allow);
    assert_eq!(cond(c, &[("x", "1")]), ImplicitDeny);
    assert_eq!(cond(c, &[]), ImplicitDeny);
    let c = r#"{"ForAnyValue:StringLike":{"kms:EncryptionContextKeys":"envol:*"}}"#;
    assert_eq!(cond(c, &[("envol:volume", "v")]), Allow);
    assert_eq!(cond(c, &[("other", "v")]), ImplicitDeny);
    let c = r#"{"ForAnyValue:StringNotEquals":{"kms:EncryptionContextKeys":"envol:volume"}}"#;
    assert_eq!(cond(c, &[("envol:volume", "v")]), ImplicitDeny);
    assert_eq!(cond(c, &[("envol:volume", "v"), ("extra", "x")]), Allow);
    assert_eq!(cond(c, &[]), ImplicitDeny);
}

#[test]
fn for_all_values_on_context_keys() {
    let c = r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["envol:volume","app"]}}"#;
    assert_eq!(cond(c, &[("app", "1")]), Allow);
    assert_eq!(cond(c, &[("app", "1"), ("envol:volume", "v")]), Allow);
    assert_eq!(cond(c, &[("app", "1"), ("extra", "v")]), ImplicitDeny);
    // As AWS: an empty context satisfies ForAllValues.
    assert_eq!(cond(c, &[]), Allow);
    // The AWS idiom to require a non-empty context.
    let c = r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":"app"},"Null":{"kms:EncryptionContextKeys":"false"}}"#;
    assert_eq!(cond(c, &[]), ImplicitDeny);
    assert_eq!(cond(c, &[("app", "1")]), Allow);
    let c = r#"{"ForAllValues:StringNotLike":{"kms:EncryptionContextKeys":"secret*"}}"#;
    assert_eq!(cond(c, &[("a", "1"), ("b", "2")]), Allow);
    assert_eq!(cond(c, &[("a", "1"), ("secretx", "2")]), ImplicitDeny);
}

#[test]
fn plain_operator_on_multivalued_key() {
    let c = r#"{"StringEquals":{"kms:EncryptionContextKeys":"app"}}"#;
    assert_eq!(cond(c, &[("app", "1"), ("x", "2")]), Allow);
    assert_eq!(cond(c, &[("x", "2")]), ImplicitDeny);
    assert_eq!(cond(c, &[]), ImplicitDeny);
    let c = r#"{"StringNotEquals":{"kms:EncryptionContextKeys":"app"}}"#;
    assert_eq!(cond(c, &[("app", "1"), ("x", "2")]), ImplicitDeny);
    assert_eq!(cond(c, &[("x", "2")]), Allow);
    assert_eq!(cond(c, &[]), Allow);
}

#[test]
fn set_operators_on_single_valued_key() {
    let c = format!(r#"{{"ForAnyValue:StringEquals":{{"{VOL}":"v"}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "v")]), Allow);
    assert_eq!(cond(&c, &[]), ImplicitDeny);
    let c = format!(r#"{{"ForAllValues:StringEquals":{{"{VOL}":"v"}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "w")]), ImplicitDeny);
    assert_eq!(cond(&c, &[]), Allow);
}

#[test]
fn condition_values_of_other_json_types() {
    let c = format!(r#"{{"StringEquals":{{"{VOL}":12}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "12")]), Allow);
    let c = format!(r#"{{"StringEquals":{{"{VOL}":[true, "x"]}}}}"#);
    assert_eq!(cond(&c, &[("envol:volume", "true")]), Allow);
}

// ---- parsing / malformed ------------------------------------------------

#[test]
fn accepted_shapes() {
    // Single statement object, no Version, Id present, 2008 version.
    for p in [
        r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}"#,
        r#"{"Version":"2008-10-17","Id":"x","Statement":[{"Sid":"","Effect":"Allow","Principal":"*","Action":"*","Resource":["*"]}]}"#,
        r#"{"Statement":[{"Sid":"","Effect":"Allow","Principal":"*","Action":"*","Resource":"*"},{"Sid":"","Effect":"Deny","Principal":"*","Action":"*","Resource":"*"}]}"#,
    ] {
        Policy::parse(p).unwrap_or_else(|e| panic!("{e}: {p}"));
    }
}

#[test]
fn malformed_documents() {
    let base = |stmt: &str| format!(r#"{{"Version":"2012-10-17","Statement":[{stmt}]}}"#);
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "not valid JSON"),
        ("{".into(), "not valid JSON"),
        ("[]".into(), "not a JSON object"),
        ("\"x\"".into(), "not a JSON object"),
        ("{}".into(), "no Statement"),
        (r#"{"Statement":[]}"#.into(), "empty Statement"),
        (r#"{"Statement":"x"}"#.into(), "not an object"),
        (r#"{"Statement":[1]}"#.into(), "not an object"),
        (r#"{"Version":"2020-01-01","Statement":[]}"#.into(), "Version"),
        (r#"{"Version":2012,"Statement":[]}"#.into(), "Version"),
        (r#"{"Id":5,"Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}"#.into(), "Id"),
        (r#"{"Statment":[]}"#.into(), "unknown element 'Statment'"),
        (base(r#"{"Principal":"*","Action":"*","Resource":"*"}"#), "no Effect"),
        (base(r#"{"Effect":"allow","Principal":"*","Action":"*","Resource":"*"}"#), "invalid Effect 'allow'"),
        (base(r#"{"Effect":"Audit","Principal":"*","Action":"*","Resource":"*"}"#), "invalid Effect"),
        (base(r#"{"Effect":true,"Principal":"*","Action":"*","Resource":"*"}"#), "Effect is not a string"),
        (base(r#"{"Effect":"Allow","Action":"*","Resource":"*"}"#), "no Principal"),
        (base(r#"{"Effect":"Allow","Principal":"*","NotPrincipal":"*","Action":"*","Resource":"*"}"#), "both Principal and NotPrincipal"),
        (base(r#"{"Effect":"Allow","Principal":"alice","Action":"*","Resource":"*"}"#), "invalid principals"),
        (base(r#"{"Effect":"Allow","Principal":{"AWS":"alice"},"Action":"*","Resource":"*"}"#), "invalid principals"),
        (base(r#"{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::1:user/*"},"Action":"*","Resource":"*"}"#), "invalid principals"),
        (base(r#"{"Effect":"Allow","Principal":{"AWS":[]},"Action":"*","Resource":"*"}"#), "Principal"),
        (base(r#"{"Effect":"Allow","Principal":{},"Action":"*","Resource":"*"}"#), "invalid principals"),
        (base(r#"{"Effect":"Allow","Principal":{"Bogus":"x"},"Action":"*","Resource":"*"}"#), "unsupported principal type 'Bogus'"),
        (base(r#"{"Effect":"Allow","Principal":"*","Resource":"*"}"#), "no Action"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","NotAction":"*","Resource":"*"}"#), "both Action and NotAction"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"Decrypt","Resource":"*"}"#), "invalid action 'Decrypt'"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"kms:","Resource":"*"}"#), "invalid action"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":[],"Resource":"*"}"#), "Action"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":[1],"Resource":"*"}"#), "Action"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*"}"#), "no Resource"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"key/1"}"#), "invalid resource"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","NotResource":"*"}"#), "both Resource"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Extra":1}"#), "unknown element 'Extra'"),
        (base(r#"{"Sid":1,"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}"#), "Sid"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":[]}"#), "Condition that is not an object"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"NumericEquals":{"a":"1"}}}"#), "unsupported condition operator 'NumericEquals'"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"stringequals":{"a":"1"}}}"#), "unsupported condition operator"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"ForSomeValues:StringEquals":{"a":"1"}}}"#), "unsupported condition operator"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"NullIfExists":{"a":"true"}}}"#), "unsupported condition operator"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"StringEquals":"x"}}"#), "not an object"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"StringEquals":{}}}"#), "no condition keys"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"StringEquals":{"a":[]}}}"#), "condition whose value"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"StringEquals":{"a":{"b":"c"}}}}"#), "condition whose value"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"StringEquals":{"a":null}}}"#), "condition whose value"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"StringEquals":{"":"x"}}}"#), "empty condition key"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"Null":{"a":"maybe"}}}"#), "not true or false"),
        (base(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"Bool":{"a":"yes"}}}"#), "not true or false"),
        (
            base(r#"{"Sid":"a","Effect":"Allow","Principal":"*","Action":"*","Resource":"*"},{"Sid":"a","Effect":"Deny","Principal":"*","Action":"*","Resource":"*"}"#),
            "more than one statement with Sid 'a'",
        ),
    ];
    for (doc, expect) in cases {
        let msg = malformed_msg(&doc);
        assert!(
            msg.contains(expect),
            "{doc}\n  -> {msg}\n  expected to contain {expect:?}"
        );
    }
    let e = Policy::parse("{").unwrap_err();
    assert_eq!(e.aws_type(), "MalformedPolicyDocumentException");
    assert_eq!(e.message(), e.to_string());
}

#[test]
fn size_limit() {
    let stmt = r#"{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*"}"#;
    let mut doc = String::from(r#"{"Statement":["#);
    doc.push_str(stmt);
    let pad = MAX_POLICY_BYTES - doc.len() - 2;
    doc.push_str(&" ".repeat(pad));
    doc.push_str("]}");
    assert_eq!(doc.len(), MAX_POLICY_BYTES);
    Policy::parse(&doc).unwrap();
    doc.insert(doc.len() - 2, ' ');
    let msg = malformed_msg(&doc);
    assert!(msg.contains("limit is 32768 bytes"), "{msg}");
    assert!(Policy::parse(&"x".repeat(10 * 1024 * 1024)).is_err());
}

#[test]
fn error_messages_are_bounded() {
    let long = "A".repeat(5000);
    let doc = format!(
        r#"{{"Statement":{{"Effect":"{long}","Principal":"*","Action":"*","Resource":"*"}}}}"#
    );
    assert!(malformed_msg(&doc).len() < 200);
}

#[test]
fn glob_rules() {
    assert!(glob("*", ""));
    assert!(glob("*", "anything"));
    assert!(glob("a*b*c", "aXXbYYc"));
    assert!(glob("a*b*c", "abc"));
    assert!(!glob("a*b*c", "acb"));
    assert!(glob("?", "é"));
    assert!(!glob("?", ""));
    assert!(glob("**a", "a"));
    assert!(!glob("", "a"));
    assert!(glob("", ""));
    assert!(glob("a*", "a"));
    assert!(!glob("a?", "a"));
    // Pathological pattern stays fast (linear-ish backtracking).
    let text = "a".repeat(5000);
    let pat = format!("{}b", "a*".repeat(100));
    assert!(!glob(&pat, &text));
}

#[test]
fn garbage_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"Statement\"",
        "\"Effect\"",
        "\"Allow\"",
        "\"Deny\"",
        "\"Principal\"",
        "\"*\"",
        "\"AWS\"",
        "\"Action\"",
        "\"kms:*\"",
        "\"Resource\"",
        "\"Condition\"",
        "\"StringEquals\"",
        "\"ForAllValues:StringLike\"",
        "\"kms:EncryptionContext:a\"",
        "\"Null\"",
        "true",
        "1",
        "null",
        " ",
        "\"\\u0000\"",
        "\"é\"",
        "\"arn:aws:iam::111122223333:root\"",
        "\"111122223333\"",
    ];
    let good = default_key_policy(ACCT, ALICE);
    let ec = ctx(&[("a", "b")]);
    for i in 0..4000 {
        let doc: String = if i % 2 == 0 {
            (0..rng.gen_range(0..60))
                .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
                .collect()
        } else {
            let mut chars: Vec<char> = good.chars().collect();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..chars.len());
                chars[at] = PIECES[rng.gen_range(0..PIECES.len())]
                    .chars()
                    .next()
                    .unwrap_or(' ');
            }
            chars.into_iter().collect()
        };
        if let Ok(p) = Policy::parse(&doc) {
            let _ = p.evaluate(&req(ALICE, "kms:Decrypt", &ec));
            let _ = p.named_principals();
        }
    }
    // Deeply nested JSON is rejected, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Policy::parse(&deep).is_err());
    let deep = format!(
        r#"{{"Statement":{}1{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    assert!(Policy::parse(&deep).is_err());
}

// ---- duplicate keys -----------------------------------------------------

#[test]
fn duplicate_keys_anywhere_are_malformed() {
    let cases = [
        // Top level.
        r#"{"Version":"2012-10-17","Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}"#,
        // In a statement: the reader sees Deny, serde_json would keep Allow.
        r#"{"Statement":[{"Effect":"Deny","Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}]}"#,
        // In a principal.
        r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob","AWS":"*"},"Action":"*","Resource":"*"}]}"#,
        // In a condition block, and between condition operators.
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:a":"1","kms:EncryptionContext:a":"2"}}}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"},"Bool":{"aws:SecureTransport":"false"}}}]}"#,
    ];
    for doc in cases {
        let m = malformed_msg(doc);
        assert!(m.contains("duplicate key"), "{m}");
    }
    // The same keys in different objects are not duplicates.
    let ok = r#"{"Statement":[{"Sid":"a","Effect":"Allow","Principal":"*","Action":"*","Resource":"*"},{"Sid":"b","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*"}]}"#;
    assert!(Policy::parse(ok).is_ok());
}

// ---- principal ids ------------------------------------------------------

fn req_as<'a>(
    principal: &'a str,
    id: &'a str,
    action: &'a str,
    ec: &'a BTreeMap<String, String>,
) -> AccessRequest<'a> {
    AccessRequest {
        principal_id: id,
        ..req(principal, action, ec)
    }
}

fn bindings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    ctx(pairs)
}

#[test]
fn bound_policies_match_the_principal_id_not_just_the_arn() {
    let doc = format!(
        r#"{{"Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"{ROOT}"}},"Action":"kms:*","Resource":"*"}},
            {{"Effect":"Allow","Principal":{{"AWS":["{ALICE}","{BOB}"]}},"Action":"kms:Decrypt","Resource":"*"}}]}}"#
    );
    let parsed = Policy::parse(&doc).unwrap();
    // The core binds every named principal but the roots (which match by
    // account id): the root is named, and is told apart as a root.
    assert_eq!(parsed.named_principals(), [ROOT, ALICE, BOB]);
    let roots: Vec<String> = parsed
        .named_principals()
        .into_iter()
        .filter(|arn| document::root_arn_account(arn).is_some())
        .collect();
    assert_eq!(roots, [ROOT], "roots are not bound");
    let old_alice = "AIDAOLDALICE000000000";
    let new_alice = "AIDANEWALICE000000000";
    let bound = parsed.bind(bindings(&[(ALICE, old_alice)]));
    let ec = ctx(&[]);
    assert_eq!(
        bound.evaluate(&req_as(ALICE, old_alice, "kms:Decrypt", &ec)),
        Allow
    );
    // Same ARN, another principal: a user re-created under the old name.
    assert_eq!(
        bound.evaluate(&req_as(ALICE, new_alice, "kms:Decrypt", &ec)),
        ImplicitDeny
    );
    // The old id under another ARN is not alice either.
    assert_eq!(
        bound.evaluate(&req_as(BOB, old_alice, "kms:Decrypt", &ec)),
        ImplicitDeny
    );
    // An ARN without a binding (bob did not exist when it was put) matches nobody.
    assert_eq!(
        bound.evaluate(&req_as(BOB, "AIDABOB00000000000000", "kms:Decrypt", &ec)),
        ImplicitDeny
    );
    // The root matches by account, bound or not.
    assert_eq!(
        bound.evaluate(&req_as(ROOT, ACCT, "kms:Decrypt", &ec)),
        Allow
    );
    // aws:userid is the caller's unique id.
    let by_id = cond_policy(&format!(
        r#"{{"StringEquals":{{"aws:userid":"{old_alice}"}}}}"#
    ));
    let p = Policy::parse(&by_id).unwrap();
    assert_eq!(
        p.evaluate(&req_as(ALICE, old_alice, "kms:Decrypt", &ec)),
        Allow
    );
    assert_eq!(
        p.evaluate(&req_as(ALICE, new_alice, "kms:Decrypt", &ec)),
        ImplicitDeny
    );
}

// ---- aws:SecureTransport -------------------------------------------------

#[test]
fn secure_transport_is_true_only_over_tls() {
    let doc = r#"{"Statement":[
        {"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"},
        {"Effect":"Deny","Principal":"*","Action":"*","Resource":"*",
         "Condition":{"Bool":{"aws:SecureTransport":"false"}}}]}"#;
    let p = Policy::parse(doc).unwrap();
    let ec = ctx(&[]);
    let plain = req(ALICE, "kms:Decrypt", &ec);
    let tls = AccessRequest {
        secure_transport: true,
        ..plain
    };
    assert_eq!(p.evaluate(&plain), ExplicitDeny);
    assert_eq!(p.evaluate(&tls), Allow);
    // The key name is case-insensitive, the Bool value too.
    let allow_tls = cond_policy(r#"{"Bool":{"AWS:securetransport":"TRUE"}}"#);
    let p = Policy::parse(&allow_tls).unwrap();
    assert_eq!(p.evaluate(&plain), ImplicitDeny);
    assert_eq!(p.evaluate(&tls), Allow);
    // It is always present: Null says so.
    let present = cond_policy(r#"{"Null":{"aws:SecureTransport":"false"}}"#);
    assert_eq!(Policy::parse(&present).unwrap().evaluate(&plain), Allow);
}
