//! Key policy evaluation: whether a parsed [`Policy`] allows one request
//! (principal, action, key, encryption context), as every key operation
//! authorises its caller. Parsing and validation are in `document`; this
//! file only reads the validated model.
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
//! | `aws:userid` | the caller's unique id (`AIDA…`; the account id for the root) |
//! | `aws:SecureTransport` | `true` if the request came over TLS, else `false` (Bool) |
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
//! matches that exact principal ARN — in a bound policy (as the service
//! always evaluates) only if the caller also has the unique id the ARN was
//! bound to when the policy was put, so a user re-created under an old
//! name matches none of the old one's statements. `arn:aws:iam::<account>:root`, or the
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

use std::collections::BTreeMap;

use super::document::{
    BaseOp, Condition, Effect, Policy, PrincipalEntry, SetOp, Statement, root_arn_account,
};

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
    /// The caller's unique id (`AIDA…`, or the account id for the root).
    pub principal_id: &'a str,
    /// Whether the request came over TLS (`aws:SecureTransport`).
    pub secure_transport: bool,
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

/// Matches `text` against `pattern` with `*` (any run, possibly empty) and `?` (one char).
pub(super) fn glob(pattern: &str, text: &str) -> bool {
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

fn principal_matches(
    entry: &PrincipalEntry,
    req: &AccessRequest<'_>,
    bindings: Option<&BTreeMap<String, String>>,
) -> bool {
    match entry {
        PrincipalEntry::Any => true,
        PrincipalEntry::Account(acct) => root_arn_account(req.principal_arn) == Some(acct.as_str()),
        PrincipalEntry::Arn(arn) => {
            arn == req.principal_arn
                && bindings.is_none_or(|b| b.get(arn).is_some_and(|id| id == req.principal_id))
        }
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
        "aws:userid" => Some(vec![req.principal_id.to_string()]),
        "aws:securetransport" => Some(vec![req.secure_transport.to_string()]),
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
    fn applies(
        &self,
        req: &AccessRequest<'_>,
        bindings: Option<&BTreeMap<String, String>>,
    ) -> bool {
        let principal = self
            .principals
            .iter()
            .any(|p| principal_matches(p, req, bindings));
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
    /// Decides whether the policy allows `req`.
    pub fn evaluate(&self, req: &AccessRequest<'_>) -> Decision {
        let mut allowed = false;
        for st in &self.statements {
            if st.applies(req, self.bindings.as_ref()) {
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
}
