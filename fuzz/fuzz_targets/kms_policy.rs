//! The key-policy parser and evaluator: `Policy::parse` + `evaluate`.
//!
//! Input: `[principal|action|resource|context-key|context-value] NUL`
//! (optional: one extra request made of the input's own strings), then the
//! policy document.
//!
//! Invariants: no panic; evaluation is deterministic; the accessors work on
//! any parsed policy; a parsed policy with a Deny-everything statement
//! added still parses and denies every request explicitly.
#![no_main]

use std::collections::BTreeMap;

use envol::kms::policy::{AccessRequest, Decision, MAX_POLICY_BYTES, Policy};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const ACCOUNT: &str = "111122223333";
const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const PRINCIPALS: [&str; 4] = [
    "arn:aws:iam::111122223333:root",
    "arn:aws:iam::111122223333:user/alice",
    "arn:aws:iam::444455556666:user/mallory",
    "arn:aws:iam::111122223333:user/S3DemoUser",
];
const ACTIONS: [&str; 5] = [
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:CreateGrant",
    "kms:PutKeyPolicy",
];

fuzz_target!(|data: &[u8]| {
    let (control, doc) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let Ok(doc) = std::str::from_utf8(doc) else {
        return;
    };
    let control = String::from_utf8_lossy(control);
    let mut fields = control.split('|');
    let mut next = || fields.next().unwrap_or("");
    let (principal, action, resource, ctx_key, ctx_value) =
        (next(), next(), next(), next(), next());

    let contexts = [
        BTreeMap::new(),
        BTreeMap::from([(
            "envol:volume".into(),
            "0b9e2f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into(),
        )]),
        BTreeMap::from([(ctx_key.to_string(), ctx_value.to_string())]),
    ];
    let mut requests = Vec::new();
    for p in PRINCIPALS {
        for a in ACTIONS {
            for c in &contexts {
                requests.push(request(p, a, KEY, c));
            }
        }
    }
    let own_account = principal.split(':').nth(4).unwrap_or("");
    requests.push(AccessRequest {
        principal_arn: principal,
        principal_id: principal,
        secure_transport: doc.len() % 2 == 0,
        account_id: ACCOUNT,
        caller_account: own_account,
        action,
        resource_arn: resource,
        encryption_context: &contexts[2],
    });

    let Ok(policy) = Policy::parse(doc) else {
        return;
    };
    assert!(doc.len() <= MAX_POLICY_BYTES);
    let _ = (
        policy.version(),
        policy.statement_ids(),
        policy.named_principals(),
    );
    // Bound to ids (as the service evaluates it): every ARN to itself, so
    // the requests above (whose id is their ARN) see the same decisions.
    let bound = policy.clone().bind(
        policy
            .named_principals()
            .into_iter()
            .map(|a| (a.clone(), a))
            .collect(),
    );
    let decisions: Vec<Decision> = requests.iter().map(|r| policy.evaluate(r)).collect();
    let bound_decisions: Vec<Decision> = requests.iter().map(|r| bound.evaluate(r)).collect();
    assert_eq!(decisions, bound_decisions, "binding each ARN to itself changed a decision");
    let again: Vec<Decision> = requests.iter().map(|r| policy.evaluate(r)).collect();
    assert_eq!(decisions, again, "evaluation is not deterministic");

    // An explicit Deny of everything wins over whatever the policy allows.
    let mut value: Value = serde_json::from_str(doc).unwrap();
    let deny = json!({"Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*"});
    match value.get_mut("Statement") {
        Some(Value::Array(list)) => list.push(deny),
        Some(single) => *single = json!([single.take(), deny]),
        None => unreachable!("parsed without Statement"),
    }
    let denied = value.to_string();
    if denied.len() <= MAX_POLICY_BYTES {
        let denied = Policy::parse(&denied).expect("adding a Deny statement keeps it valid");
        for r in &requests {
            assert_eq!(denied.evaluate(r), Decision::ExplicitDeny, "{r:?}");
        }
    }
});

fn request<'a>(
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    context: &'a BTreeMap<String, String>,
) -> AccessRequest<'a> {
    AccessRequest {
        principal_arn: principal,
        principal_id: principal,
        secure_transport: false,
        account_id: ACCOUNT,
        caller_account: principal.split(':').nth(4).unwrap_or(""),
        action,
        resource_arn: resource,
        encryption_context: context,
    }
}
