//! Key policy documents: parsing (as `PutKeyPolicy`/`CreateKey` validate them)
//! and evaluation (as every key operation authorises its caller).
//!
//! The language is the AWS IAM policy language as AWS KMS key policies use it.
//!
//! # Document
//!
//! * At most [`MAX_POLICY_BYTES`] (32 KiB, AWS's limit) of JSON text; an
//!   object with `Statement` (required: one statement object or a non-empty
//!   array of them), optional `Version` (`"2012-10-17"` or `"2008-10-17"`)
//!   and optional `Id` (string). Any other top-level element is rejected.
//! * A statement has `Effect` (`"Allow"` or `"Deny"`, exact case), exactly one
//!   of `Principal`/`NotPrincipal`, exactly one of `Action`/`NotAction`,
//!   exactly one of `Resource`/`NotResource`, and optionally `Sid` (string)
//!   and `Condition`. Any other element is rejected, and so are two
//!   statements with the same non-empty `Sid`.
//! * `Principal`: `"*"`, or an object whose `"AWS"` member is `"*"`, an
//!   account id (12 digits), or an ARN (`arn:…`), or a non-empty list of
//!   those. `Service`, `Federated` and `CanonicalUser` members are accepted
//!   (AWS allows them) but never match: envol has no such principals. Any
//!   other member, or any other value, is rejected.
//! * `Action` / `NotAction`: a string or non-empty list of strings, each
//!   `"*"` or `service:name` where the name may contain `*` (any run) and `?`
//!   (one character) wildcards; matched case-insensitively (`kms:*`,
//!   `kms:Generate*`, `KMS:decrypt`).
//! * `Resource` / `NotResource`: a string or non-empty list of strings, each
//!   `"*"` or an ARN pattern (`arn:…`, wildcards allowed), matched
//!   case-sensitively against the key ARN.
//! * `Condition`: `{ "<Operator>": { "<key>": value | [values] , … }, … }`.
//!   Values are strings (JSON numbers and booleans are taken as their text).
//!   Operators: `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//!   `StringNotEqualsIgnoreCase`, `StringLike`, `StringNotLike` (`*`/`?`
//!   wildcards, case-sensitive), `ArnEquals`, `ArnNotEquals`, `ArnLike`,
//!   `ArnNotLike` (as the String forms), `Bool`, and `Null`; each (except
//!   `Null`) may carry the `IfExists` suffix and the `ForAllValues:` or
//!   `ForAnyValue:` prefix. Any other operator is rejected.
//!
//! Everything rejected is a [`PolicyError::Malformed`], which the service
//! returns as `MalformedPolicyDocumentException` with the message.
//!
//! # Condition keys
//!
//! Condition key names are case-insensitive, except for the context-key part
//! of `kms:EncryptionContext:<context-key>`, which must match the encryption
//! context key exactly (case-sensitive, as the encryption context itself is).
//!
//! | key | value |
//! |---|---|
//! | `kms:EncryptionContext:<k>` | the request's encryption-context value for `k` (absent if `k` is not in the context) |
//! | `kms:EncryptionContextKeys` | the set of encryption-context keys (multi-valued; absent if the context is empty) |
//! | `kms:CallerAccount`, `aws:PrincipalAccount` | the caller's account id |
//! | `aws:PrincipalArn` | the caller's ARN |
//! | `aws:ResourceAccount` | the key's account id |
//!
//! Any other key (e.g. `kms:ViaService`, `aws:SourceIp`) is *absent*.
//!
//! # Condition semantics (as AWS)
//!
//! * Within one operator, every key must match; across operators, every
//!   operator must match. A statement without `Condition` has no condition.
//! * For a key that is present, a positive operator (`StringEquals`,
//!   `StringLike`, …) matches if the value matches *any* of the listed
//!   values; a negated operator (`StringNotEquals`, …) matches if the value
//!   matches *none* of them.
//! * For an absent key, a positive operator does not match and a negated
//!   operator does match. With `IfExists`, an absent key matches either way.
//! * `Null`: `"true"` matches if the key is absent, `"false"` if present.
//! * `Bool`: the key's value compared case-insensitively with `true`/`false`.
//! * `ForAnyValue:` matches if at least one of the key's values satisfies the
//!   operator (false for an absent/empty key); `ForAllValues:` matches if
//!   every value does (**true** for an absent/empty key, as AWS — pair it
//!   with a `Null` check to require a context). A single-valued key is a
//!   one-element set. A plain operator on the multi-valued
//!   `kms:EncryptionContextKeys` behaves as `ForAnyValue:` for positive
//!   operators and as its negation for negated ones.
//! * Policy variables (`${aws:username}`) are not expanded; they are literal text.
//!
//! # Principals
//!
//! `"*"` (or `{"AWS": "*"}`) matches every authenticated caller. An ARN
//! matches that exact principal ARN. `arn:aws:iam::<account>:root`, or the
//! bare `<account>` id, matches **only that account's root principal**
//! (`arn:aws:iam::<account>:root`). This deviates from AWS, where naming the
//! account delegates to the account's IAM policies (so any IAM user with an
//! IAM permission gets access): envol has no IAM policies to delegate to, so
//! users must be named in the key policy (or receive grants).
//!
//! # Evaluation
//!
//! A statement applies when its principal, action, resource and condition all
//! match. If any applicable statement is a Deny the result is
//! [`Decision::ExplicitDeny`]; otherwise if any applicable statement is an
//! Allow the result is [`Decision::Allow`]; otherwise
//! [`Decision::ImplicitDeny`].

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The largest key policy accepted, in bytes (AWS's limit: 32 KiB).
pub const MAX_POLICY_BYTES: usize = 32 * 1024;

/// Why a policy document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not a valid key policy; the message says why.
    #[error("{0}")]
    Malformed(String),
}

impl PolicyError {
    /// The `__type` AWS KMS returns for this error.
    pub fn aws_type(&self) -> &'static str {
        "MalformedPolicyDocumentException"
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        match self {
            PolicyError::Malformed(m) => m,
        }
    }
}

fn malformed(msg: impl Into<String>) -> PolicyError {
    PolicyError::Malformed(msg.into())
}

/// The outcome of evaluating a policy for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An Allow statement applies and no Deny statement does.
    Allow,
    /// A Deny statement applies.
    ExplicitDeny,
    /// No statement applies.
    ImplicitDeny,
}

/// What is being asked of a key.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The caller, e.g. `arn:aws:iam::111122223333:user/alice` or `arn:aws:iam::111122223333:root`.
    pub principal_arn: &'a str,
    /// The key's account id.
    pub account_id: &'a str,
    /// The caller's account id.
    pub caller_account: &'a str,
    /// The action, e.g. `kms:Decrypt`.
    pub action: &'a str,
    /// The key ARN.
    pub resource_arn: &'a str,
    /// The request's encryption context (empty if none).
    pub encryption_context: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PrincipalEntry {
    /// `"*"`: everyone.
    Any,
    /// An account id: that account's root principal only.
    Account(String),
    /// An ARN, matched exactly (an `…:root` ARN was turned into `Account`).
    Arn(String),
    /// A service/federated/canonical-user principal: never matches here.
    Foreign,
}

#[derive(Debug, Clone)]
struct Statement {
    sid: Option<String>,
    effect: Effect,
    principals: Vec<PrincipalEntry>,
    not_principal: bool,
    /// Lowercased action patterns.
    actions: Vec<String>,
    not_action: bool,
    resources: Vec<String>,
    not_resource: bool,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseOp {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Bool,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetOp {
    None,
    ForAnyValue,
    ForAllValues,
}

#[derive(Debug, Clone)]
struct Condition {
    base: BaseOp,
    negated: bool,
    if_exists: bool,
    set_op: SetOp,
    /// `(key, values)`: every key must match.
    entries: Vec<(String, Vec<String>)>,
}

/// A parsed, validated key policy.
#[derive(Debug, Clone)]
pub struct Policy {
    version: Option<String>,
    statements: Vec<Statement>,
}

fn string_or_list(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(malformed(format!(
                    "Policy contains a statement whose {what} is not a string or a list of strings."
                ))),
            })
            .collect(),
        _ => Err(malformed(format!(
            "Policy contains a statement whose {what} is not a string or a non-empty list of strings."
        ))),
    }
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:<partition>:iam::<account>:root` → the account id.
fn root_arn_account(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:")?;
    let mut parts = rest.splitn(5, ':');
    let _partition = parts.next()?;
    let service = parts.next()?;
    let region = parts.next()?;
    let account = parts.next()?;
    let resource = parts.next()?;
    (service == "iam" && region.is_empty() && resource == "root" && is_account_id(account))
        .then_some(account)
}

fn parse_principal_value(s: &str) -> Result<PrincipalEntry, PolicyError> {
    if s == "*" {
        Ok(PrincipalEntry::Any)
    } else if is_account_id(s) {
        Ok(PrincipalEntry::Account(s.to_string()))
    } else if let Some(acct) = root_arn_account(s) {
        Ok(PrincipalEntry::Account(acct.to_string()))
    } else if s.starts_with("arn:") && s.len() > 4 && !s.contains('*') && !s.contains('?') {
        Ok(PrincipalEntry::Arn(s.to_string()))
    } else {
        Err(malformed(format!(
            "Policy contains a statement with one or more invalid principals: '{}'.",
            excerpt(s)
        )))
    }
}

fn parse_principal(v: &Value) -> Result<Vec<PrincipalEntry>, PolicyError> {
    match v {
        Value::String(s) if s == "*" => Ok(vec![PrincipalEntry::Any]),
        Value::Object(map) if !map.is_empty() => {
            let mut out = Vec::new();
            for (k, v) in map {
                match k.as_str() {
                    "AWS" => {
                        for s in string_or_list(v, "Principal")? {
                            out.push(parse_principal_value(&s)?);
                        }
                    }
                    "Service" | "Federated" | "CanonicalUser" => {
                        string_or_list(v, "Principal")?;
                        out.push(PrincipalEntry::Foreign);
                    }
                    other => {
                        return Err(malformed(format!(
                            "Policy contains a statement with an unsupported principal type '{}'.",
                            excerpt(other)
                        )));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(malformed(
            "Policy contains a statement with one or more invalid principals.",
        )),
    }
}

fn valid_action(a: &str) -> bool {
    if a == "*" {
        return true;
    }
    match a.split_once(':') {
        Some((service, name)) => {
            !service.is_empty()
                && service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?' || b == b'-')
        }
        None => false,
    }
}

fn parse_operator(op: &str) -> Result<(BaseOp, bool, bool, SetOp), PolicyError> {
    let (set_op, rest) = if let Some(r) = op.strip_prefix("ForAnyValue:") {
        (SetOp::ForAnyValue, r)
    } else if let Some(r) = op.strip_prefix("ForAllValues:") {
        (SetOp::ForAllValues, r)
    } else {
        (SetOp::None, op)
    };
    let (if_exists, name) = match rest.strip_suffix("IfExists") {
        Some(n) => (true, n),
        None => (false, rest),
    };
    let (base, negated) = match name {
        "StringEquals" | "ArnEquals" => (BaseOp::StringEquals, false),
        "StringNotEquals" | "ArnNotEquals" => (BaseOp::StringEquals, true),
        "StringEqualsIgnoreCase" => (BaseOp::StringEqualsIgnoreCase, false),
        "StringNotEqualsIgnoreCase" => (BaseOp::StringEqualsIgnoreCase, true),
        "StringLike" | "ArnLike" => (BaseOp::StringLike, false),
        "StringNotLike" | "ArnNotLike" => (BaseOp::StringLike, true),
        "Bool" => (BaseOp::Bool, false),
        "Null" if !if_exists && set_op == SetOp::None => (BaseOp::Null, false),
        _ => {
            return Err(malformed(format!(
                "Policy contains a statement with an unsupported condition operator '{}'.",
                excerpt(op)
            )));
        }
    };
    Ok((base, negated, if_exists, set_op))
}

fn condition_values(v: &Value) -> Result<Vec<String>, PolicyError> {
    fn one(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
    let err = || {
        malformed(
            "Policy contains a condition whose value is not a string or a non-empty list of strings.",
        )
    };
    match v {
        Value::Array(items) if !items.is_empty() => {
            items.iter().map(|i| one(i).ok_or_else(err)).collect()
        }
        Value::Array(_) => Err(err()),
        other => one(other).map(|s| vec![s]).ok_or_else(err),
    }
}

fn parse_conditions(v: &Value) -> Result<Vec<Condition>, PolicyError> {
    let Value::Object(ops) = v else {
        return Err(malformed(
            "Policy contains a Condition that is not an object.",
        ));
    };
    let mut out = Vec::new();
    for (op, block) in ops {
        let (base, negated, if_exists, set_op) = parse_operator(op)?;
        let Value::Object(keys) = block else {
            return Err(malformed(format!(
                "Policy contains a condition operator '{}' whose value is not an object.",
                excerpt(op)
            )));
        };
        if keys.is_empty() {
            return Err(malformed(format!(
                "Policy contains a condition operator '{}' with no condition keys.",
                excerpt(op)
            )));
        }
        let mut entries = Vec::new();
        for (key, vals) in keys {
            if key.is_empty() {
                return Err(malformed("Policy contains an empty condition key."));
            }
            let values = condition_values(vals)?;
            if base == BaseOp::Null || base == BaseOp::Bool {
                for val in &values {
                    if !val.eq_ignore_ascii_case("true") && !val.eq_ignore_ascii_case("false") {
                        return Err(malformed(format!(
                            "Policy contains a '{}' condition whose value is not true or false.",
                            excerpt(op)
                        )));
                    }
                }
            }
            entries.push((key.clone(), values));
        }
        out.push(Condition {
            base,
            negated,
            if_exists,
            set_op,
            entries,
        });
    }
    Ok(out)
}

fn take_exclusive<'m>(
    map: &'m Map<String, Value>,
    positive: &str,
    negative: &str,
) -> Result<(&'m Value, bool), PolicyError> {
    match (map.get(positive), map.get(negative)) {
        (Some(v), None) => Ok((v, false)),
        (None, Some(v)) => Ok((v, true)),
        (Some(_), Some(_)) => Err(malformed(format!(
            "Policy contains a statement with both {positive} and {negative}."
        ))),
        (None, None) => Err(malformed(format!(
            "Policy contains a statement with no {positive} (or {negative})."
        ))),
    }
}

fn parse_statement(v: &Value) -> Result<Statement, PolicyError> {
    let Value::Object(map) = v else {
        return Err(malformed(
            "Policy contains a statement that is not an object.",
        ));
    };
    const KNOWN: &[&str] = &[
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    ];
    if let Some(k) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(malformed(format!(
            "Policy contains a statement with an unknown element '{}'.",
            excerpt(k)
        )));
    }
    let sid = match map.get("Sid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(malformed(
                "Policy contains a statement whose Sid is not a string.",
            ));
        }
    };
    let effect = match map.get("Effect") {
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        Some(Value::String(s)) => {
            return Err(malformed(format!(
                "Policy contains a statement with an invalid Effect '{}'; expected Allow or Deny.",
                excerpt(s)
            )));
        }
        Some(_) => {
            return Err(malformed(
                "Policy contains a statement whose Effect is not a string.",
            ));
        }
        None => return Err(malformed("Policy contains a statement with no Effect.")),
    };
    let (p, not_principal) = take_exclusive(map, "Principal", "NotPrincipal")?;
    let principals = parse_principal(p)?;
    let (a, not_action) = take_exclusive(map, "Action", "NotAction")?;
    let mut actions = Vec::new();
    for action in string_or_list(a, "Action")? {
        if !valid_action(&action) {
            return Err(malformed(format!(
                "Policy contains a statement with an invalid action '{}'.",
                excerpt(&action)
            )));
        }
        actions.push(action.to_ascii_lowercase());
    }
    let (r, not_resource) = take_exclusive(map, "Resource", "NotResource")?;
    let resources = string_or_list(r, "Resource")?;
    for res in &resources {
        if res != "*" && !res.starts_with("arn:") {
            return Err(malformed(format!(
                "Policy contains a statement with an invalid resource '{}'.",
                excerpt(res)
            )));
        }
    }
    let conditions = match map.get("Condition") {
        Some(c) => parse_conditions(c)?,
        None => Vec::new(),
    };
    Ok(Statement {
        sid,
        effect,
        principals,
        not_principal,
        actions,
        not_action,
        resources,
        not_resource,
        conditions,
    })
}

/// A bounded excerpt of policy text for an error message.
fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}

/// Matches `text` against `pattern` with `*` (any run, possibly empty) and `?` (one char).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn principal_matches(entry: &PrincipalEntry, req: &AccessRequest<'_>) -> bool {
    match entry {
        PrincipalEntry::Any => true,
        PrincipalEntry::Account(acct) => root_arn_account(req.principal_arn) == Some(acct.as_str()),
        PrincipalEntry::Arn(arn) => arn == req.principal_arn,
        PrincipalEntry::Foreign => false,
    }
}

/// The values of a condition key for a request: `None` if absent.
fn key_values(key: &str, req: &AccessRequest<'_>) -> Option<Vec<String>> {
    const EC_PREFIX: &str = "kms:encryptioncontext:";
    if key.len() > EC_PREFIX.len()
        && key.is_char_boundary(EC_PREFIX.len())
        && key[..EC_PREFIX.len()].eq_ignore_ascii_case(EC_PREFIX)
    {
        let ctx_key = &key[EC_PREFIX.len()..];
        return req.encryption_context.get(ctx_key).map(|v| vec![v.clone()]);
    }
    let lower = key.to_ascii_lowercase();
    match lower.as_str() {
        "kms:encryptioncontextkeys" => {
            if req.encryption_context.is_empty() {
                None
            } else {
                Some(req.encryption_context.keys().cloned().collect())
            }
        }
        "kms:calleraccount" | "aws:principalaccount" => Some(vec![req.caller_account.to_string()]),
        "aws:principalarn" => Some(vec![req.principal_arn.to_string()]),
        "aws:resourceaccount" => Some(vec![req.account_id.to_string()]),
        _ => None,
    }
}

/// Does one value match any of the condition's values under the (positive) base operator?
fn value_matches(base: BaseOp, value: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match base {
        BaseOp::StringEquals => p == value,
        BaseOp::StringEqualsIgnoreCase => p.to_lowercase() == value.to_lowercase(),
        BaseOp::StringLike => glob(p, value),
        BaseOp::Bool => p.eq_ignore_ascii_case(value),
        BaseOp::Null => false,
    })
}

fn entry_matches(
    cond: &Condition,
    key: &str,
    patterns: &[String],
    req: &AccessRequest<'_>,
) -> bool {
    let values = key_values(key, req);
    if cond.base == BaseOp::Null {
        // Validated at parse time: each pattern is true/false; any may match.
        let absent = values.is_none();
        return patterns
            .iter()
            .any(|p| p.eq_ignore_ascii_case("true") == absent);
    }
    let per_value = |v: &String| value_matches(cond.base, v, patterns) != cond.negated;
    match (cond.set_op, values) {
        (SetOp::ForAllValues, None) => true,
        (SetOp::ForAllValues, Some(vals)) => vals.iter().all(per_value),
        (SetOp::ForAnyValue, None) => cond.if_exists,
        (SetOp::ForAnyValue, Some(vals)) => vals.iter().any(per_value),
        (SetOp::None, None) => cond.if_exists || cond.negated,
        (SetOp::None, Some(vals)) => {
            // One value for a single-valued key. For the multi-valued
            // kms:EncryptionContextKeys: positive = some value matches,
            // negated = no value matches.
            let any = vals.iter().any(|v| value_matches(cond.base, v, patterns));
            any != cond.negated
        }
    }
}

impl Statement {
    fn applies(&self, req: &AccessRequest<'_>) -> bool {
        let principal = self.principals.iter().any(|p| principal_matches(p, req));
        if principal == self.not_principal {
            return false;
        }
        let action_lower = req.action.to_ascii_lowercase();
        let action = self.actions.iter().any(|a| glob(a, &action_lower));
        if action == self.not_action {
            return false;
        }
        let resource = self.resources.iter().any(|r| glob(r, req.resource_arn));
        if resource == self.not_resource {
            return false;
        }
        self.conditions.iter().all(|c| {
            c.entries
                .iter()
                .all(|(key, patterns)| entry_matches(c, key, patterns, req))
        })
    }
}

impl Policy {
    /// Parses and validates a key policy document.
    pub fn parse(json: &str) -> Result<Policy, PolicyError> {
        if json.len() > MAX_POLICY_BYTES {
            return Err(malformed(format!(
                "Policy is {} bytes; the limit is {MAX_POLICY_BYTES} bytes.",
                json.len()
            )));
        }
        let doc: Value = serde_json::from_str(json)
            .map_err(|e| malformed(format!("Policy is not valid JSON: {e}.")))?;
        let Value::Object(map) = doc else {
            return Err(malformed("Policy is not a JSON object."));
        };
        if let Some(k) = map
            .keys()
            .find(|k| !["Version", "Id", "Statement"].contains(&k.as_str()))
        {
            return Err(malformed(format!(
                "Policy contains an unknown element '{}'.",
                excerpt(k)
            )));
        }
        let version = match map.get("Version") {
            None => None,
            Some(Value::String(v)) if v == "2012-10-17" || v == "2008-10-17" => Some(v.clone()),
            Some(v) => {
                return Err(malformed(format!(
                    "Policy has an unsupported Version {}; use \"2012-10-17\".",
                    excerpt(&v.to_string())
                )));
            }
        };
        match map.get("Id") {
            None | Some(Value::String(_)) => {}
            Some(_) => return Err(malformed("Policy Id is not a string.")),
        }
        let statements = match map.get("Statement") {
            None => return Err(malformed("Policy has no Statement.")),
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(malformed("Policy has an empty Statement list."));
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(parse_statement)
                .collect::<Result<Vec<_>, _>>()?,
            Some(single) => vec![parse_statement(single)?],
        };
        let mut sids: Vec<&str> = Vec::new();
        for sid in statements.iter().filter_map(|s| s.sid.as_deref()) {
            if !sid.is_empty() && sids.contains(&sid) {
                return Err(malformed(format!(
                    "Policy contains more than one statement with Sid '{}'.",
                    excerpt(sid)
                )));
            }
            sids.push(sid);
        }
        Ok(Policy {
            version,
            statements,
        })
    }

    /// Decides whether the policy allows `req`.
    pub fn evaluate(&self, req: &AccessRequest<'_>) -> Decision {
        let mut allowed = false;
        for st in &self.statements {
            if st.applies(req) {
                match st.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }

    /// The policy's `Version`, if it has one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The `Sid`s of the statements, in order (`None` where a statement has none).
    pub fn statement_ids(&self) -> Vec<Option<&str>> {
        self.statements.iter().map(|s| s.sid.as_deref()).collect()
    }

    /// Every principal ARN the policy names (account ids as their root ARNs,
    /// `"*"` and service principals excluded), so the caller can check that
    /// they exist, as AWS does at `PutKeyPolicy`.
    pub fn named_principals(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for st in &self.statements {
            for p in &st.principals {
                let arn = match p {
                    PrincipalEntry::Account(a) => format!("arn:aws:iam::{a}:root"),
                    PrincipalEntry::Arn(a) => a.clone(),
                    PrincipalEntry::Any | PrincipalEntry::Foreign => continue,
                };
                if !out.contains(&arn) {
                    out.push(arn);
                }
            }
        }
        out
    }
}

/// The policy a new key gets when `CreateKey` has no `Policy`: the account's
/// root may do everything (`Sid` "Enable IAM User Permissions", as AWS), and so
/// may the key's creator when that is not the root.
pub fn default_key_policy(account_id: &str, creator_arn: &str) -> String {
    let root = format!("arn:aws:iam::{account_id}:root");
    let mut statements = vec![json!({
        "Sid": "Enable IAM User Permissions",
        "Effect": "Allow",
        "Principal": {"AWS": root},
        "Action": "kms:*",
        "Resource": "*"
    })];
    if creator_arn != root && creator_arn != account_id {
        statements.push(json!({
            "Sid": "Allow use of the key by its creator",
            "Effect": "Allow",
            "Principal": {"AWS": creator_arn},
            "Action": "kms:*",
            "Resource": "*"
        }));
    }
    let doc = json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": statements
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

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

        let deny_only = r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*"}}"#;
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
        // (Duplicate JSON key: the last one wins in serde_json; still valid.)
        let _ = cond(&c, &[("envol:volume", "vol-1")]);
        let c = format!(
            r#"{{"StringEquals":{{"{VOL}":"vol-1","kms:EncryptionContext:tier":"gold"}}}}"#
        );
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
        let c =
            r#"{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":["envol:volume","app"]}}"#;
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
        let c =
            r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["envol:volume","app"]}}"#;
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
}
