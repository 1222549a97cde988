//! CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.
//!
//! A grant gives one grantee principal some operations on one key, optionally
//! only for requests whose encryption context satisfies a constraint (see
//! `grant.rs`). Who may do what:
//!
//! - CreateGrant: `kms:CreateGrant` by the key policy, or a grant that
//!   includes CreateGrant — then only for a grant with no more operations and
//!   an equally strict or stricter constraint than that grant (no escalation).
//! - ListGrants: `kms:ListGrants` on the key. RevokeGrant: `kms:RevokeGrant`
//!   by the key policy (grants cannot carry it).
//! - RetireGrant: the grant's retiring principal, its grantee if the grant
//!   includes RetireGrant, or the account root — never by key policy, as AWS.
//! - ListRetirableGrants is account-level (an IAM permission in AWS): a
//!   principal may list the grants it can retire; the root may list anyone's.
//!
//! A grant names its grantee and retiring principal by ARN (ListGrants shows
//! them so) but is bound to their unique ids when it is made: it serves
//! only those principals, not a user re-created later under the same name.
//!
//! Grants take effect at once (AWS's are eventually consistent; grant
//! tokens bridge the gap there, and are accepted and validated here).

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::audit::AuditNote;
use super::super::clock::aws_timestamp;
use super::super::core::{Binding, Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::grant::{self, Constraint, Constraints};
use super::super::iam;
use super::super::store::{GrantFilter, GrantRow, KeyRow, Store};
use super::request::{
    EncryptionContext, authorized_key_no_context, decode_marker, dry_run_error, encode_marker,
    page_limit,
};

/// AWS's limit on grants per key.
const MAX_GRANTS_PER_KEY: u64 = 50_000;

/// Principal ARNs (or service principals): 1-256 of `\w+=,.@:/-`.
fn validate_principal(member: &str, p: &str) -> Result<(), KmsError> {
    if p.is_empty()
        || p.len() > 256
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@:/-".contains(&b))
    {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must be 1-256 characters matching [\\w+=,.@:/-]+"
        )));
    }
    Ok(())
}

/// Grant names: 1-256 of `a-zA-Z0-9:/_-`.
fn validate_name(name: &str) -> Result<(), KmsError> {
    if name.is_empty()
        || name.len() > 256
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":/_-".contains(&b))
    {
        return Err(KmsError::validation(
            "1 validation error detected: Value at 'name' failed to satisfy constraint: Member must be 1-256 characters matching [a-zA-Z0-9:/_-]+",
        ));
    }
    Ok(())
}

/// Our grant ids are 64 hex characters; anything else cannot name a grant.
fn validate_grant_id(id: &str) -> Result<(), KmsError> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KmsError::new(
            ErrorKind::InvalidGrantId,
            "The grant ID is not valid.",
        ));
    }
    Ok(())
}

fn operations_of(g: &GrantRow) -> Result<Vec<String>, KmsError> {
    serde_json::from_str(&g.operations)
        .map_err(|e| KmsError::internal(format!("stored grant unreadable: {e}")))
}

/// The unique id of the principal `arn` names, for binding a grant to it.
/// A user of this account that does not exist is refused (a grant for it
/// could serve nobody but a user created later under that name); any other
/// principal (another account's, a service) binds to nothing and the grant
/// serves nobody, as before.
fn bind_principal(kms: &Kms, member: &str, arn: &str) -> Result<Option<String>, KmsError> {
    match kms.bind_principal(arn)? {
        Binding::Id(id) => Ok(Some(id)),
        Binding::Nobody => Ok(None),
        Binding::MissingUser => Err(KmsError::validation(format!(
            "1 validation error detected: Value at '{member}' names no existing user: {arn}"
        ))),
    }
}

fn grant_not_found(grant_id: &str) -> KmsError {
    KmsError::not_found(format!("Grant ID {grant_id} not found"))
}

/// The GrantListEntry AWS returns.
fn grant_entry(kms: &Kms, g: &GrantRow) -> Result<Value, KmsError> {
    let mut e = json!({
        "KeyId": kms.key_arn(&g.key_id),
        "GrantId": g.grant_id,
        "CreationDate": aws_timestamp(g.created_ms),
        "GranteePrincipal": g.grantee,
        "IssuingAccount": g.issuing_account,
        "Operations": operations_of(g)?,
    });
    if let Some(n) = &g.name {
        e["Name"] = json!(n);
    }
    if let Some(r) = &g.retiring {
        e["RetiringPrincipal"] = json!(r);
    }
    if let Some(c) = &g.constraints {
        let c: Value = serde_json::from_str(c)
            .map_err(|e| KmsError::internal(format!("stored grant unreadable: {e}")))?;
        e["Constraints"] = c;
    }
    Ok(e)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CreateGrantRequest {
    key_id: String,
    grantee_principal: String,
    retiring_principal: Option<String>,
    operations: Vec<String>,
    constraints: Option<Constraints>,
    grant_tokens: Option<Vec<String>>,
    name: Option<String>,
    dry_run: Option<bool>,
}

pub(super) fn create_grant(
    kms: &Kms,
    caller: &Caller<'_>,
    req: CreateGrantRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    grant::check_tokens(req.grant_tokens.as_deref())?;
    validate_principal("granteePrincipal", &req.grantee_principal)?;
    if let Some(r) = &req.retiring_principal {
        validate_principal("retiringPrincipal", r)?;
    }
    if let Some(n) = &req.name {
        validate_name(n)?;
    }
    let operations = grant::validate_operations(&req.operations)?;
    let constraint = req.constraints.unwrap_or_default().validate()?;
    let grantee_id = bind_principal(kms, "granteePrincipal", &req.grantee_principal)?;
    let retiring_id = match &req.retiring_principal {
        Some(r) => bind_principal(kms, "retiringPrincipal", r)?,
        None => None,
    };

    let key = kms.resolve_key(&req.key_id)?;
    note.key_arn = Some(key.arn.clone());
    // Through a grant, only a grant no wider than that grant.
    kms.authorize_with(
        caller,
        &key,
        "kms:CreateGrant",
        &EncryptionContext::new(),
        |parent_ops, parent_constraint| {
            operations.iter().all(|o| parent_ops.contains(o))
                && constraint.at_least_as_strict_as(parent_constraint)
        },
    )?;
    kms.require_not_pending_deletion(&key)?;
    if req.dry_run == Some(true) {
        return Err(dry_run_error());
    }

    let row = GrantRow {
        seq: 0,
        grant_id: grant::new_grant_id(),
        key_id: key.key_id.clone(),
        name: req.name,
        grantee: req.grantee_principal,
        retiring: req.retiring_principal,
        operations: serde_json::to_string(&operations)
            .map_err(|e| KmsError::internal(e.to_string()))?,
        constraints: constraint.to_json(),
        issuing_account: iam::root_arn(kms.account_id()),
        created_ms: kms.now_ms(),
        grantee_id,
        retiring_id,
    };
    // A named grant that already exists with the same parameters is returned
    // again rather than duplicated (AWS's idempotent CreateGrant).
    let existing = if row.name.is_some() {
        find_same(kms, &key, &row, &operations, &constraint)?
    } else {
        None
    };
    let grant_id = match existing {
        Some(id) => id,
        None => {
            kms.store.transaction(|tx| {
                if Store::count_grants(tx, &key.key_id)? >= MAX_GRANTS_PER_KEY {
                    return Err(KmsError::new(
                        ErrorKind::LimitExceeded,
                        format!("{} already has {MAX_GRANTS_PER_KEY} grants", key.arn),
                    ));
                }
                Store::insert_grant(tx, &row)
            })?;
            row.grant_id
        }
    };
    Ok(json!({ "GrantId": grant_id, "GrantToken": grant::token_for(&grant_id) }))
}

fn find_same(
    kms: &Kms,
    key: &KeyRow,
    row: &GrantRow,
    operations: &[String],
    constraint: &Constraint,
) -> Result<Option<String>, KmsError> {
    let same_grantee = GrantFilter {
        key_id: Some(&key.key_id),
        grantee: Some(&row.grantee),
        ..GrantFilter::default()
    };
    for g in kms.store.list_grants(same_grantee, 0, usize::MAX >> 1)? {
        let mut a = operations_of(&g)?;
        let mut b = operations.to_vec();
        a.sort();
        b.sort();
        // Same principals, not merely the same names: a grant for a user
        // since re-created is not this one.
        if g.name == row.name
            && g.grantee_id == row.grantee_id
            && g.retiring_id == row.retiring_id
            && g.retiring == row.retiring
            && a == b
            && Constraint::from_json(g.constraints.as_deref())? == *constraint
        {
            return Ok(Some(g.grant_id));
        }
    }
    Ok(None)
}

fn page(
    kms: &Kms,
    filter: GrantFilter<'_>,
    limit: Option<i64>,
    marker: Option<&str>,
) -> Result<Value, KmsError> {
    let limit = page_limit(limit)?;
    let after = match decode_marker(marker)? {
        None => 0,
        Some(m) => m
            .parse::<i64>()
            .map_err(|_| KmsError::new(ErrorKind::InvalidMarker, "Invalid marker"))?,
    };
    let mut rows = kms.store.list_grants(filter, after, limit + 1)?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let grants = rows
        .iter()
        .map(|g| grant_entry(kms, g))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = json!({ "Grants": grants, "Truncated": truncated });
    if truncated && let Some(last) = rows.last() {
        out["NextMarker"] = json!(encode_marker(&last.seq.to_string()));
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListGrantsRequest {
    key_id: String,
    limit: Option<i64>,
    marker: Option<String>,
    grant_id: Option<String>,
    grantee_principal: Option<String>,
}

pub(super) fn list_grants(
    kms: &Kms,
    caller: &Caller<'_>,
    req: ListGrantsRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:ListGrants", note)?;
    if let Some(id) = &req.grant_id {
        validate_grant_id(id)?;
    }
    if let Some(p) = &req.grantee_principal {
        validate_principal("granteePrincipal", p)?;
    }
    page(
        kms,
        GrantFilter {
            key_id: Some(&key.key_id),
            grant_id: req.grant_id.as_deref(),
            grantee: req.grantee_principal.as_deref(),
            ..GrantFilter::default()
        },
        req.limit,
        req.marker.as_deref(),
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListRetirableGrantsRequest {
    retiring_principal: String,
    limit: Option<i64>,
    marker: Option<String>,
}

pub(super) fn list_retirable_grants(
    kms: &Kms,
    caller: &Caller<'_>,
    req: ListRetirableGrantsRequest,
) -> Result<Value, KmsError> {
    validate_principal("retiringPrincipal", &req.retiring_principal)?;
    let is_root = kms.is_account_root(caller.principal);
    if !is_root && caller.principal.arn != req.retiring_principal {
        return Err(KmsError::new(
            ErrorKind::AccessDenied,
            format!(
                "User: {} is not authorized to perform: kms:ListRetirableGrants for retiring principal {}",
                caller.principal.arn, req.retiring_principal
            ),
        ));
    }
    // A user lists the grants retirable by *it*: not those made for an
    // earlier user of the same name.
    page(
        kms,
        GrantFilter {
            retiring: Some(&req.retiring_principal),
            retiring_id: (!is_root).then_some(caller.principal.id.as_str()),
            ..GrantFilter::default()
        },
        req.limit,
        req.marker.as_deref(),
    )
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct RetireGrantRequest {
    grant_token: Option<String>,
    key_id: Option<String>,
    grant_id: Option<String>,
    dry_run: Option<bool>,
}

pub(super) fn retire_grant(
    kms: &Kms,
    caller: &Caller<'_>,
    req: RetireGrantRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let grant = match (&req.grant_token, &req.key_id, &req.grant_id) {
        (Some(token), _, _) => {
            grant::check_token(token)?;
            let id = grant::grant_id_from_token(token).ok_or_else(|| {
                KmsError::new(
                    ErrorKind::InvalidGrantToken,
                    "The grant token is not valid.",
                )
            })?;
            let g = kms.store.grant(&id)?.ok_or_else(|| grant_not_found(&id))?;
            if let Some(given) = &req.grant_id
                && given != &g.grant_id
            {
                return Err(KmsError::new(
                    ErrorKind::InvalidGrantId,
                    "The grant ID does not match the grant token.",
                ));
            }
            if let Some(k) = &req.key_id
                && kms.resolve_key(k)?.key_id != g.key_id
            {
                return Err(KmsError::not_found(
                    "The key ID does not match the grant token.",
                ));
            }
            g
        }
        (None, Some(key_ref), Some(id)) => {
            let key = kms.resolve_key(key_ref)?;
            validate_grant_id(id)?;
            kms.store
                .grant(id)?
                .filter(|g| g.key_id == key.key_id)
                .ok_or_else(|| grant_not_found(id))?
        }
        _ => {
            return Err(KmsError::validation(
                "RetireGrant needs a GrantToken, or both KeyId and GrantId",
            ));
        }
    };
    note.key_arn = Some(kms.key_arn(&grant.key_id));
    let is_root = kms.is_account_root(caller.principal);
    let is_retiring = grant.retiring.as_deref() == Some(caller.principal.arn.as_str())
        && grant.retiring_id.as_deref() == Some(caller.principal.id.as_str());
    let is_grantee_with_retire = grant.grantee == caller.principal.arn
        && grant.grantee_id.as_deref() == Some(caller.principal.id.as_str())
        && operations_of(&grant)?.iter().any(|o| o == "RetireGrant");
    if !(is_root || is_retiring || is_grantee_with_retire) {
        return Err(KmsError::new(
            ErrorKind::AccessDenied,
            format!(
                "User: {} is not authorized to perform: kms:RetireGrant on grant {}: only its retiring principal, a grantee holding RetireGrant, or the account root may",
                caller.principal.arn, grant.grant_id
            ),
        ));
    }
    if req.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    if !kms.store.delete_grant(&grant.grant_id)? {
        return Err(grant_not_found(&grant.grant_id));
    }
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct RevokeGrantRequest {
    key_id: String,
    grant_id: String,
    dry_run: Option<bool>,
}

pub(super) fn revoke_grant(
    kms: &Kms,
    caller: &Caller<'_>,
    req: RevokeGrantRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:RevokeGrant", note)?;
    validate_grant_id(&req.grant_id)?;
    let grant = kms
        .store
        .grant(&req.grant_id)?
        .filter(|g| g.key_id == key.key_id)
        .ok_or_else(|| grant_not_found(&req.grant_id))?;
    if req.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    if !kms.store.delete_grant(&grant.grant_id)? {
        return Err(grant_not_found(&grant.grant_id));
    }
    Ok(json!({}))
}
