//! TagResource, UntagResource, ListResourceTags, and the tag rules CreateKey
//! shares.
//!
//! Tags are the caller's own labels on a key (cost centre, owner, ...): a
//! key has at most 50, each a key of 1-128 characters (not starting with
//! `aws:`, which AWS reserves) and a value of 0-256 characters. Tagging a
//! key again with the same tag key replaces its value. A key pending deletion
//! keeps its tags, which may still be listed but not changed, as AWS.
//! Tags do not change what DescribeKey returns (AWS leaves them out too).

use serde::Deserialize;
use serde_json::{Value, json};

use super::super::audit::AuditNote;
use super::super::core::{Caller, Kms};
use super::super::error::{ErrorKind, KmsError};
use super::super::store::Store;
use super::request::{authorized_key_no_context, decode_marker, encode_marker};

/// AWS's quota of tags per key.
pub(super) const MAX_TAGS_PER_KEY: u64 = 50;
const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;
/// ListResourceTags' Limit: 1-50, default 50.
const MAX_LIST_LIMIT: i64 = 50;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Tag {
    pub(super) tag_key: String,
    pub(super) tag_value: String,
}

fn tag_error(message: impl Into<String>) -> KmsError {
    KmsError::new(ErrorKind::Tag, message)
}

fn validate_tag_key(key: &str) -> Result<(), KmsError> {
    let n = key.chars().count();
    if n == 0 || n > MAX_TAG_KEY_CHARS {
        return Err(tag_error(format!(
            "Tag keys must be 1-{MAX_TAG_KEY_CHARS} characters (got {n})"
        )));
    }
    if key.starts_with("aws:") {
        return Err(tag_error(
            "Tag keys starting with aws: are reserved for AWS",
        ));
    }
    Ok(())
}

/// Checks tags as AWS does, before anything is stored.
pub(super) fn validate_tags(tags: &[Tag]) -> Result<(), KmsError> {
    if tags.len() as u64 > MAX_TAGS_PER_KEY {
        return Err(KmsError::new(
            ErrorKind::LimitExceeded,
            format!("A key may have at most {MAX_TAGS_PER_KEY} tags"),
        ));
    }
    for t in tags {
        validate_tag_key(&t.tag_key)?;
        let n = t.tag_value.chars().count();
        if n > MAX_TAG_VALUE_CHARS {
            return Err(tag_error(format!(
                "Tag values must be at most {MAX_TAG_VALUE_CHARS} characters (got {n})"
            )));
        }
    }
    Ok(())
}

/// Stores `tags` on a key inside `tx`, replacing values of existing tag
/// keys, and refuses the whole change if the key would pass the quota.
pub(super) fn store_tags(
    tx: &rusqlite::Transaction<'_>,
    key_id: &str,
    key_arn: &str,
    tags: &[Tag],
) -> Result<(), KmsError> {
    for t in tags {
        Store::insert_tag(tx, key_id, &t.tag_key, &t.tag_value)?;
    }
    if Store::count_tags(tx, key_id)? > MAX_TAGS_PER_KEY {
        return Err(KmsError::new(
            ErrorKind::LimitExceeded,
            format!("{key_arn} would have more than {MAX_TAGS_PER_KEY} tags"),
        ));
    }
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct TagResourceRequest {
    key_id: String,
    tags: Option<Vec<Tag>>,
}

pub(super) fn tag_resource(
    kms: &Kms,
    caller: &Caller<'_>,
    req: TagResourceRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let Some(tags) = req.tags else {
        return Err(KmsError::validation(
            "1 validation error detected: Value null at 'tags' failed to satisfy constraint: Member must not be null",
        ));
    };
    validate_tags(&tags)?;
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:TagResource", note)?;
    kms.require_not_pending_deletion(&key)?;
    kms.store
        .transaction(|tx| store_tags(tx, &key.key_id, &key.arn, &tags))?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct UntagResourceRequest {
    key_id: String,
    tag_keys: Option<Vec<String>>,
}

pub(super) fn untag_resource(
    kms: &Kms,
    caller: &Caller<'_>,
    req: UntagResourceRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let Some(tag_keys) = req.tag_keys else {
        return Err(KmsError::validation(
            "1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: Member must not be null",
        ));
    };
    for k in &tag_keys {
        validate_tag_key(k)?;
    }
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:UntagResource", note)?;
    kms.require_not_pending_deletion(&key)?;
    kms.store
        .transaction(|tx| Store::delete_tags(tx, &key.key_id, &tag_keys))?;
    Ok(json!({}))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListResourceTagsRequest {
    key_id: String,
    limit: Option<i64>,
    marker: Option<String>,
}

pub(super) fn list_resource_tags(
    kms: &Kms,
    caller: &Caller<'_>,
    req: ListResourceTagsRequest,
    note: &mut AuditNote,
) -> Result<Value, KmsError> {
    let limit = match req.limit {
        None => MAX_LIST_LIMIT as usize,
        Some(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n as usize,
        Some(n) => {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: Member must have value between 1 and {MAX_LIST_LIMIT}"
            )));
        }
    };
    let after = decode_marker(req.marker.as_deref())?;
    let key = authorized_key_no_context(kms, caller, &req.key_id, "kms:ListResourceTags", note)?;
    let mut rows = kms
        .store
        .list_tags(&key.key_id, after.as_deref(), limit + 1)?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let tags: Vec<Value> = rows
        .iter()
        .map(|t| json!({ "TagKey": t.key, "TagValue": t.value }))
        .collect();
    let mut out = json!({ "Tags": tags, "Truncated": truncated });
    if truncated && let Some(last) = rows.last() {
        out["NextMarker"] = json!(encode_marker(&last.key));
    }
    Ok(out)
}
