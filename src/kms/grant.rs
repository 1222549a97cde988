//! Grants: delegated permissions on one key for one grantee principal.
//!
//! A key policy says who may do what with a key; a grant adds "this
//! principal may also do these operations with this key", optionally only
//! when the request's encryption context satisfies a constraint. EBS attaches
//! volumes this way: the volume service holds a grant for exactly one
//! volume's context instead of a broad policy statement.
//!
//! This module is the grant *model*: the operation names a grant may carry,
//! constraints and how they match, and the grant-token format. Storage is in
//! `store.rs`; the API (CreateGrant, ListGrants, ...) in `ops/grants.rs`;
//! authorization (policy OR grant, explicit deny wins) in `service.rs`.
//!
//! Matching follows AWS: constraints apply only to operations that take an
//! encryption context; in a constraint the context *keys* compare
//! case-insensitively and the values case-sensitively.
//!
//! An empty constraint map (`"EncryptionContextEquals": {}`) is refused
//! with ValidationException. AWS's API reference does not say what it
//! means; read literally, "equals {}" would admit only requests without a
//! context, and envol used to store it as *no constraint at all* — a grant
//! meant to be narrow that allowed every context. Refusing it leaves no
//! reading to get wrong. A stored constraint that is empty (written by
//! hand, or by a future bug) is unreadable and matches nothing. (Grants an
//! older envol made with `{}` were stored with no constraint at all, the
//! same row as a grant made without one: nothing tells them apart, so
//! schema migration cannot narrow them; `ListGrants` shows them without
//! `Constraints`, and they should be revoked and re-made.)

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, KmsError};

/// The operations AWS lets a grant carry (GrantOperation).
pub const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
];

/// Operations to which an encryption-context constraint does not apply.
const UNCONSTRAINED: &[&str] = &["DescribeKey", "RetireGrant", "CreateGrant", "GetPublicKey"];

/// AWS's limits on a constraint: at most 8 pairs, values at most 384 characters.
const MAX_CONSTRAINT_PAIRS: usize = 8;
const MAX_CONSTRAINT_VALUE: usize = 384;

/// GrantConstraints: at most one of the two members, and not an empty map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Constraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
}

/// One constraint in its effective form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    None,
    Equals(BTreeMap<String, String>),
    Subset(BTreeMap<String, String>),
}

/// Context keys compare case-insensitively in grant constraints.
fn fold(ctx: &BTreeMap<String, String>) -> BTreeMap<String, &str> {
    ctx.iter()
        .map(|(k, v)| (k.to_lowercase(), v.as_str()))
        .collect()
}

impl Constraints {
    /// Validates a CreateGrant request's constraints and returns the effective one.
    pub fn validate(&self) -> Result<Constraint, KmsError> {
        let eq = self.encryption_context_equals.clone();
        let sub = self.encryption_context_subset.clone();
        for (member, m) in [
            ("encryptionContextEquals", &eq),
            ("encryptionContextSubset", &sub),
        ] {
            if m.as_ref().is_some_and(BTreeMap::is_empty) {
                return Err(KmsError::validation(format!(
                    "1 validation error detected: Value at 'constraints.{member}' failed to satisfy constraint: Member must have at least 1 entry (an empty constraint would constrain nothing)"
                )));
            }
        }
        for m in eq.iter().chain(sub.iter()) {
            if m.len() > MAX_CONSTRAINT_PAIRS {
                return Err(KmsError::validation(format!(
                    "a grant constraint may hold at most {MAX_CONSTRAINT_PAIRS} encryption context pairs"
                )));
            }
            if m.keys().any(|k| k.is_empty())
                || m.values().any(|v| v.chars().count() > MAX_CONSTRAINT_VALUE)
            {
                return Err(KmsError::validation(format!(
                    "grant constraint keys must not be empty and values must be at most {MAX_CONSTRAINT_VALUE} characters"
                )));
            }
        }
        match (eq, sub) {
            (Some(_), Some(_)) => Err(KmsError::validation(
                "specify only one of EncryptionContextEquals and EncryptionContextSubset",
            )),
            (Some(e), None) => Ok(Constraint::Equals(e)),
            (None, Some(s)) => Ok(Constraint::Subset(s)),
            (None, None) => Ok(Constraint::None),
        }
    }
}

impl Constraint {
    pub fn to_json(&self) -> Option<String> {
        let c = match self {
            Constraint::None => return None,
            Constraint::Equals(m) => Constraints {
                encryption_context_equals: Some(m.clone()),
                encryption_context_subset: None,
            },
            Constraint::Subset(m) => Constraints {
                encryption_context_equals: None,
                encryption_context_subset: Some(m.clone()),
            },
        };
        serde_json::to_string(&c).ok()
    }

    /// Reads a stored constraint. One that does not parse or would not be
    /// accepted today (an empty map, say) is an error: the grant it belongs
    /// to authorizes nothing.
    pub fn from_json(text: Option<&str>) -> Result<Constraint, KmsError> {
        let Some(text) = text else {
            return Ok(Constraint::None);
        };
        let c: Constraints = serde_json::from_str(text)
            .map_err(|e| KmsError::internal(format!("stored grant constraint unreadable: {e}")))?;
        c.validate().map_err(|e| {
            KmsError::internal(format!("stored grant constraint invalid: {}", e.message))
        })
    }

    /// Does a request's encryption context satisfy this constraint?
    pub fn matches(&self, context: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::None => true,
            Constraint::Equals(want) => fold(want) == fold(context),
            Constraint::Subset(want) => {
                let have = fold(context);
                fold(want)
                    .iter()
                    .all(|(k, v)| have.get(k).is_some_and(|h| h == v))
            }
        }
    }

    /// Is `self` at least as strict as `parent`? (A grant made through a
    /// grant's CreateGrant permission may not loosen its constraint.)
    pub fn at_least_as_strict_as(&self, parent: &Constraint) -> bool {
        match (parent, self) {
            (Constraint::None, _) => true,
            (_, Constraint::None) => false,
            (Constraint::Equals(p), Constraint::Equals(c)) => fold(p) == fold(c),
            (Constraint::Equals(_), Constraint::Subset(_)) => false,
            // Every context the child admits contains the parent's pairs.
            (Constraint::Subset(p), Constraint::Subset(c) | Constraint::Equals(c)) => {
                let c = fold(c);
                fold(p)
                    .iter()
                    .all(|(k, v)| c.get(k).is_some_and(|h| h == v))
            }
        }
    }
}

/// Whether a grant with `operations` and `constraint` allows `operation`
/// (an AWS operation name, e.g. "Decrypt") with `context`.
pub fn allows(
    operations: &[String],
    constraint: &Constraint,
    operation: &str,
    context: &BTreeMap<String, String>,
) -> bool {
    operations.iter().any(|o| o == operation)
        && (UNCONSTRAINED.contains(&operation) || constraint.matches(context))
}

/// Validates a CreateGrant Operations list: non-empty, known names, no repeats.
pub fn validate_operations(ops: &[String]) -> Result<Vec<String>, KmsError> {
    if ops.is_empty() {
        return Err(KmsError::validation(
            "1 validation error detected: Value at 'operations' failed to satisfy constraint: Member must have at least 1 item",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for o in ops {
        if !GRANT_OPERATIONS.contains(&o.as_str()) {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value '{o}' at 'operations' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                GRANT_OPERATIONS.join(", ")
            )));
        }
        if !out.contains(o) {
            out.push(o.clone());
        }
    }
    Ok(out)
}

/// Grant ids look like AWS's: 64 lowercase hex characters.
pub fn new_grant_id() -> String {
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

const TOKEN_PREFIX: &str = "envol-grant-token-v1:";

/// The token for a grant: opaque to clients, base64 of the grant id. Our
/// grants are consistent at once, so a token only names its grant.
pub fn token_for(grant_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{grant_id}"))
}

/// The grant id inside a token we issued, if it is one.
pub fn grant_id_from_token(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    s.strip_prefix(TOKEN_PREFIX).map(str::to_string)
}

/// AWS's limits on one grant token.
const MAX_TOKEN_LEN: usize = 8192;
const MAX_TOKENS: usize = 10;

/// Checks one token's shape: 1-8192 characters of the base64 alphabets.
pub fn check_token(token: &str) -> Result<(), KmsError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(KmsError::validation(format!(
            "a grant token must be 1-{MAX_TOKEN_LEN} characters"
        )));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=-_".contains(&b))
    {
        return Err(KmsError::new(
            ErrorKind::InvalidGrantToken,
            "The grant token is not valid.",
        ));
    }
    Ok(())
}

/// Checks a GrantTokens member. Our grants take effect at once, so a
/// well-formed token that we did not issue (or whose grant is gone) is
/// accepted and ignored, as a token for an already-consistent grant is in AWS.
pub fn check_tokens(tokens: Option<&[String]>) -> Result<(), KmsError> {
    let Some(tokens) = tokens else { return Ok(()) };
    if tokens.len() > MAX_TOKENS {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to {MAX_TOKENS}"
        )));
    }
    tokens.iter().try_for_each(|t| check_token(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn subset_and_equals() {
        let sub = Constraint::Subset(ctx(&[("envol:volume", "v1")]));
        assert!(sub.matches(&ctx(&[("envol:volume", "v1")])));
        assert!(sub.matches(&ctx(&[("envol:volume", "v1"), ("x", "y")])));
        assert!(
            sub.matches(&ctx(&[("ENVOL:Volume", "v1")])),
            "keys fold case"
        );
        assert!(
            !sub.matches(&ctx(&[("envol:volume", "V1")])),
            "values do not"
        );
        assert!(!sub.matches(&ctx(&[("envol:volume", "v2")])));
        assert!(!sub.matches(&ctx(&[])));
        let eq = Constraint::Equals(ctx(&[("a", "1")]));
        assert!(eq.matches(&ctx(&[("a", "1")])));
        assert!(!eq.matches(&ctx(&[("a", "1"), ("b", "2")])));
        assert!(Constraint::None.matches(&ctx(&[("q", "r")])));
    }

    #[test]
    fn empty_constraints_are_refused_not_dropped() {
        let empty_equals = Constraints {
            encryption_context_equals: Some(BTreeMap::new()),
            encryption_context_subset: None,
        };
        let empty_subset = Constraints {
            encryption_context_equals: None,
            encryption_context_subset: Some(BTreeMap::new()),
        };
        for c in [&empty_equals, &empty_subset] {
            assert_eq!(c.validate().unwrap_err().kind, ErrorKind::Validation);
        }
        // No member at all is no constraint, as before.
        assert_eq!(Constraints::default().validate().unwrap(), Constraint::None);
        // Stored empty constraints are unreadable: the grant matches nothing.
        for text in [
            r#"{"EncryptionContextEquals":{}}"#,
            r#"{"EncryptionContextSubset":{}}"#,
        ] {
            assert_eq!(
                Constraint::from_json(Some(text)).unwrap_err().kind,
                ErrorKind::Internal
            );
        }
        assert_eq!(Constraint::from_json(None).unwrap(), Constraint::None);
    }

    #[test]
    fn constraints_skip_management_operations() {
        let ops = vec!["DescribeKey".to_string(), "Decrypt".to_string()];
        let c = Constraint::Equals(ctx(&[("a", "1")]));
        assert!(allows(&ops, &c, "DescribeKey", &ctx(&[])));
        assert!(!allows(&ops, &c, "Decrypt", &ctx(&[])));
        assert!(!allows(&ops, &c, "Encrypt", &ctx(&[("a", "1")])));
    }

    #[test]
    fn strictness() {
        let p = Constraint::Subset(ctx(&[("a", "1")]));
        assert!(Constraint::Subset(ctx(&[("a", "1"), ("b", "2")])).at_least_as_strict_as(&p));
        assert!(Constraint::Equals(ctx(&[("a", "1")])).at_least_as_strict_as(&p));
        assert!(!Constraint::None.at_least_as_strict_as(&p));
        assert!(!Constraint::Subset(ctx(&[("b", "2")])).at_least_as_strict_as(&p));
        let e = Constraint::Equals(ctx(&[("a", "1")]));
        assert!(!Constraint::Subset(ctx(&[("a", "1")])).at_least_as_strict_as(&e));
    }

    #[test]
    fn tokens() {
        let id = new_grant_id();
        assert_eq!(id.len(), 64);
        let t = token_for(&id);
        check_token(&t).unwrap();
        assert_eq!(grant_id_from_token(&t).as_deref(), Some(id.as_str()));
        assert_eq!(grant_id_from_token("AQpAM2Rh"), None);
        assert_eq!(
            check_token("not a token!").unwrap_err().kind,
            ErrorKind::InvalidGrantToken
        );
        assert_eq!(check_token("").unwrap_err().kind, ErrorKind::Validation);
        let many: Vec<String> = (0..11).map(|_| t.clone()).collect();
        assert_eq!(
            check_tokens(Some(&many)).unwrap_err().kind,
            ErrorKind::Validation
        );
    }

    #[test]
    fn operations_are_validated() {
        assert!(validate_operations(&[]).is_err());
        assert!(validate_operations(&["Decrypt".into(), "Frobnicate".into()]).is_err());
        assert_eq!(
            validate_operations(&["Decrypt".into(), "Decrypt".into()]).unwrap(),
            vec!["Decrypt".to_string()]
        );
    }
}
