//! The key policy document: the JSON model and its validation, as
//! `PutKeyPolicy` and `CreateKey` check a policy before storing it.
//! Nothing here decides access; `evaluate` does, over these types.
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
//! * No object anywhere in the document may repeat a key (`serde_json`
//!   would keep the last, while `GetKeyPolicy` shows the text with both).
//!
//! # Principal ids
//!
//! A parsed policy names principals by ARN. The service *binds* it
//! ([`Policy::bind`]) to the unique ids those principals had when the
//! policy was put; a bound policy's ARN entries match only a caller with
//! that ARN **and** that id, and an ARN without a binding matches nobody.
//! (An unbound policy, as `parse` returns it, matches ARNs alone: the
//! service never evaluates one.)
//!
//! Everything rejected is a [`PolicyError::Malformed`], which the service
//! returns as `MalformedPolicyDocumentException` with the message.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::super::excerpt::excerpt;
use super::strict_json;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PrincipalEntry {
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
pub(super) struct Statement {
    pub(super) sid: Option<String>,
    pub(super) effect: Effect,
    pub(super) principals: Vec<PrincipalEntry>,
    pub(super) not_principal: bool,
    /// Lowercased action patterns.
    pub(super) actions: Vec<String>,
    pub(super) not_action: bool,
    pub(super) resources: Vec<String>,
    pub(super) not_resource: bool,
    pub(super) conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BaseOp {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Bool,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SetOp {
    None,
    ForAnyValue,
    ForAllValues,
}

#[derive(Debug, Clone)]
pub(super) struct Condition {
    pub(super) base: BaseOp,
    pub(super) negated: bool,
    pub(super) if_exists: bool,
    pub(super) set_op: SetOp,
    /// `(key, values)`: every key must match.
    pub(super) entries: Vec<(String, Vec<String>)>,
}

/// A parsed, validated key policy.
#[derive(Debug, Clone)]
pub struct Policy {
    version: Option<String>,
    pub(super) statements: Vec<Statement>,
    /// ARN → unique id, once bound (see the module documentation).
    pub(super) bindings: Option<BTreeMap<String, String>>,
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
pub fn root_arn_account(arn: &str) -> Option<&str> {
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

impl Policy {
    /// Parses and validates a key policy document.
    pub fn parse(json: &str) -> Result<Policy, PolicyError> {
        if json.len() > MAX_POLICY_BYTES {
            return Err(malformed(format!(
                "Policy is {} bytes; the limit is {MAX_POLICY_BYTES} bytes.",
                json.len()
            )));
        }
        let doc: Value = strict_json::parse(json)
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
            bindings: None,
        })
    }

    /// The policy bound to principal ids: `bindings` maps each ARN the
    /// policy names to the unique id of the principal it named when the
    /// policy was put. ARNs missing from it match nobody.
    pub fn bind(mut self, bindings: BTreeMap<String, String>) -> Policy {
        self.bindings = Some(bindings);
        self
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
