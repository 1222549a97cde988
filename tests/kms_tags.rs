//! Key tags (CreateKey's Tags, TagResource, UntagResource, ListResourceTags)
//! and the policy lock-out safety check (BypassPolicyLockoutSafetyCheck),
//! driven by the official `aws-sdk-kms` crate against a real `envol kms
//! serve` process.

mod common;

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::types::Tag;
use common::KmsServer;

fn code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("<no code>").to_string()
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().tag_key(k).tag_value(v).build().unwrap()
}

/// Every tag of a key, following NextMarker with pages of `limit`.
async fn all_tags(client: &aws_sdk_kms::Client, key: &str, limit: i32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..100 {
        let page = client
            .list_resource_tags()
            .key_id(key)
            .limit(limit)
            .set_marker(marker.clone())
            .send()
            .await
            .expect("ListResourceTags");
        assert!(page.tags().len() <= limit as usize);
        out.extend(
            page.tags()
                .iter()
                .map(|t| (t.tag_key().to_string(), t.tag_value().to_string())),
        );
        if !page.truncated() {
            assert!(page.next_marker().is_none());
            return out;
        }
        marker = Some(
            page.next_marker()
                .expect("NextMarker when truncated")
                .to_string(),
        );
    }
    panic!("ListResourceTags never stopped paging");
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_stored_listed_changed_and_removed() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let key = root
        .create_key()
        .tags(tag("team", "storage"))
        .tags(tag("cost-centre", "42"))
        .send()
        .await
        .expect("CreateKey with Tags");
    let key_id = key.key_metadata().unwrap().key_id().to_string();

    // CreateKey's tags are kept and listed (in tag-key order).
    assert_eq!(
        all_tags(&root, &key_id, 50).await,
        pairs(&[("cost-centre", "42"), ("team", "storage")])
    );

    // TagResource adds new tags and replaces the value of an existing one;
    // an empty value is allowed.
    root.tag_resource()
        .key_id(&key_id)
        .tags(tag("team", "platform"))
        .tags(tag("env", ""))
        .tags(tag("owner", "alice"))
        .tags(tag("a", "1"))
        .send()
        .await
        .expect("TagResource");
    let expected = pairs(&[
        ("a", "1"),
        ("cost-centre", "42"),
        ("env", ""),
        ("owner", "alice"),
        ("team", "platform"),
    ]);
    assert_eq!(all_tags(&root, &key_id, 50).await, expected);
    // Paged two at a time, through an alias too: the same five, once each.
    root.create_alias()
        .alias_name("alias/tagged")
        .target_key_id(&key_id)
        .send()
        .await
        .unwrap();
    assert_eq!(all_tags(&root, "alias/tagged", 2).await, expected);
    let first = root
        .list_resource_tags()
        .key_id(&key_id)
        .limit(2)
        .send()
        .await
        .unwrap();
    assert!(first.truncated());
    assert_eq!(first.tags().len(), 2);

    // UntagResource removes; a tag key the key does not have is ignored.
    root.untag_resource()
        .key_id(&key_id)
        .tag_keys("env")
        .tag_keys("a")
        .tag_keys("never-set")
        .send()
        .await
        .expect("UntagResource");
    assert_eq!(
        all_tags(&root, &key_id, 50).await,
        pairs(&[
            ("cost-centre", "42"),
            ("owner", "alice"),
            ("team", "platform")
        ])
    );

    // DescribeKey is unchanged by tags.
    let meta = root.describe_key().key_id(&key_id).send().await.unwrap();
    assert_eq!(meta.key_metadata().unwrap().key_id(), key_id);

    // A key of its own has its own tags.
    let other = root.create_key().send().await.unwrap();
    let other_id = other.key_metadata().unwrap().key_id().to_string();
    assert!(all_tags(&root, &other_id, 50).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tags_and_listing_parameters_are_refused_as_aws_does() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let key_id = root
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string();

    for bad in [
        tag("aws:reserved", "x"),
        tag(&"k".repeat(129), "x"),
        tag("ok", &"v".repeat(257)),
    ] {
        let e = root
            .tag_resource()
            .key_id(&key_id)
            .tags(bad.clone())
            .send()
            .await
            .expect_err("invalid tag accepted by TagResource");
        assert_eq!(code(&e.into_service_error()), "TagException", "{bad:?}");
        let e = root
            .create_key()
            .tags(bad.clone())
            .send()
            .await
            .expect_err("invalid tag accepted by CreateKey");
        assert_eq!(code(&e.into_service_error()), "TagException", "{bad:?}");
    }
    // The longest key and value AWS allows are fine.
    root.tag_resource()
        .key_id(&key_id)
        .tags(tag(&"k".repeat(128), &"v".repeat(256)))
        .send()
        .await
        .expect("128-character key, 256-character value");
    let e = root
        .untag_resource()
        .key_id(&key_id)
        .tag_keys("aws:reserved")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "TagException");

    // 50 tags per key: 49 more fit, the 51st is refused and nothing of the
    // refused request is stored.
    let mut req = root.tag_resource().key_id(&key_id);
    for i in 0..49 {
        req = req.tags(tag(&format!("t{i:02}"), "x"));
    }
    req.send().await.expect("50 tags");
    let e = root
        .tag_resource()
        .key_id(&key_id)
        .tags(tag("t98", "x"))
        .tags(tag("t99", "x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "LimitExceededException");
    let listed = all_tags(&root, &key_id, 7).await;
    assert_eq!(listed.len(), 50);
    assert!(!listed.iter().any(|(k, _)| k == "t98" || k == "t99"));
    // Replacing a value of an existing tag is not a new tag.
    root.tag_resource()
        .key_id(&key_id)
        .tags(tag("t00", "changed"))
        .send()
        .await
        .expect("replace at the quota");

    for limit in [0, 51] {
        let e = root
            .list_resource_tags()
            .key_id(&key_id)
            .limit(limit)
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            code(&e.into_service_error()),
            "ValidationException",
            "{limit}"
        );
    }
    let e = root
        .list_resource_tags()
        .key_id(&key_id)
        .marker("!!not-a-marker!!")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "InvalidMarkerException");
    let e = root
        .tag_resource()
        .key_id("11111111-2222-3333-4444-555555555555")
        .tags(tag("a", "b"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "NotFoundException");
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_operations_are_authorized_and_frozen_while_pending_deletion() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let bob = kms.client(&kms.add_user("bob"));
    let key_id = root
        .create_key()
        .tags(tag("team", "storage"))
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string();

    // bob is not in the key policy: every tag operation is refused.
    let e = bob
        .tag_resource()
        .key_id(&key_id)
        .tags(tag("a", "b"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDeniedException");
    let e = bob
        .untag_resource()
        .key_id(&key_id)
        .tag_keys("team")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDeniedException");
    let e = bob
        .list_resource_tags()
        .key_id(&key_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDeniedException");

    // A policy allowing bob only kms:ListResourceTags lets him list, not tag.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{}:root", kms.account_id)},
             "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": kms.user_arn("bob")},
             "Action": "kms:ListResourceTags", "Resource": "*"}
        ]
    })
    .to_string();
    root.put_key_policy()
        .key_id(&key_id)
        .policy(policy)
        .send()
        .await
        .unwrap();
    assert_eq!(
        all_tags(&bob, &key_id, 50).await,
        pairs(&[("team", "storage")])
    );
    let e = bob
        .tag_resource()
        .key_id(&key_id)
        .tags(tag("a", "b"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDeniedException");

    // Pending deletion: tags can be listed, not changed.
    root.schedule_key_deletion()
        .key_id(&key_id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let e = root
        .tag_resource()
        .key_id(&key_id)
        .tags(tag("a", "b"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "KMSInvalidStateException");
    let e = root
        .untag_resource()
        .key_id(&key_id)
        .tag_keys("team")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "KMSInvalidStateException");
    assert_eq!(
        all_tags(&root, &key_id, 50).await,
        pairs(&[("team", "storage")])
    );
    // Cancelled, the key (now Disabled) may be tagged again.
    root.cancel_key_deletion()
        .key_id(&key_id)
        .send()
        .await
        .unwrap();
    root.tag_resource()
        .key_id(&key_id)
        .tags(tag("a", "b"))
        .send()
        .await
        .expect("tagging a disabled key");
}

fn policy_allowing(account_id: &str, principal: &str, actions: &[&str]) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": principal},
             "Action": actions, "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{account_id}:root")},
             "Action": "kms:Decrypt", "Resource": "*"}
        ]
    })
    .to_string()
}

const LOCKOUT: &str =
    "The new key policy will not allow you to update the key policy in the future.";

#[tokio::test(flavor = "multi_thread")]
async fn put_key_policy_refuses_to_lock_the_caller_out_unless_bypassed() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let alice = kms.client(&kms.add_user("alice"));
    let alice_arn = kms.user_arn("alice");
    // alice creates the key: the default policy gives her kms:*.
    let key_id = alice
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string();

    // A policy under which alice keeps PutKeyPolicy is accepted.
    let keeps = policy_allowing(
        &kms.account_id,
        &alice_arn,
        &["kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:Encrypt"],
    );
    alice
        .put_key_policy()
        .key_id(&key_id)
        .policy(&keeps)
        .send()
        .await
        .expect("a policy that keeps PutKeyPolicy");

    // One that would lock her out is refused, and the old policy stays.
    let locks_out = policy_allowing(&kms.account_id, &alice_arn, &["kms:Encrypt"]);
    for bypass in [None, Some(false)] {
        let e = alice
            .put_key_policy()
            .key_id(&key_id)
            .policy(&locks_out)
            .set_bypass_policy_lockout_safety_check(bypass)
            .send()
            .await
            .expect_err("lock-out policy accepted");
        let e = e.into_service_error();
        assert_eq!(code(&e), "MalformedPolicyDocumentException");
        assert_eq!(e.message(), Some(LOCKOUT));
    }
    let got = alice.get_key_policy().key_id(&key_id).send().await.unwrap();
    assert_eq!(got.policy(), Some(keeps.as_str()));

    // With the bypass flag it is applied, and alice is then locked out.
    alice
        .put_key_policy()
        .key_id(&key_id)
        .policy(&locks_out)
        .bypass_policy_lockout_safety_check(true)
        .send()
        .await
        .expect("bypassed lock-out check");
    let e = alice
        .put_key_policy()
        .key_id(&key_id)
        .policy(&keeps)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDeniedException");

    // The account root may always repair a key policy, so the check never
    // stops the root, even with a policy that names only alice.
    let only_alice = policy_allowing(&kms.account_id, &alice_arn, &["kms:*"]);
    let only_alice =
        only_alice.replace(&format!("arn:aws:iam::{}:root", kms.account_id), &alice_arn);
    root.put_key_policy()
        .key_id(&key_id)
        .policy(&only_alice)
        .send()
        .await
        .expect("root is never locked out");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_key_refuses_a_policy_that_locks_the_creator_out_unless_bypassed() {
    let kms = KmsServer::start();
    let root = kms.client(&kms.root);
    let alice = kms.client(&kms.add_user("alice"));
    let alice_arn = kms.user_arn("alice");
    let locks_out = policy_allowing(
        &kms.account_id,
        &alice_arn,
        &["kms:Encrypt", "kms:DescribeKey"],
    );

    let before = alice.list_keys().send().await.unwrap().keys().len();
    let e = alice
        .create_key()
        .policy(&locks_out)
        .send()
        .await
        .expect_err("lock-out policy accepted by CreateKey");
    let e = e.into_service_error();
    assert_eq!(code(&e), "MalformedPolicyDocumentException");
    assert_eq!(e.message(), Some(LOCKOUT));
    // Nothing was created.
    assert_eq!(alice.list_keys().send().await.unwrap().keys().len(), before);

    let keeps = policy_allowing(&kms.account_id, &alice_arn, &["kms:*"]);
    alice
        .create_key()
        .policy(&keeps)
        .send()
        .await
        .expect("a policy that keeps PutKeyPolicy");
    let made = alice
        .create_key()
        .policy(&locks_out)
        .bypass_policy_lockout_safety_check(true)
        .send()
        .await
        .expect("bypassed lock-out check");
    let key_id = made.key_metadata().unwrap().key_id().to_string();
    let e = alice
        .put_key_policy()
        .key_id(&key_id)
        .policy(&keeps)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "AccessDeniedException");

    // The root passes the check whatever the policy says about it.
    root.create_key()
        .policy(&locks_out)
        .send()
        .await
        .expect("root is never locked out");
}
