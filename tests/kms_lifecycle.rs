//! Key states and crypto-shredding. Over the wire with the official SDK for
//! enable/disable/schedule/cancel; through the service core with an injected
//! clock for the deletion window itself (no waiting days, no test-only flag).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use common::{KmsServer, call_as_root, create_key_arn, error_code};
use envol::kms::Kms;
use envol::kms::clock::ManualClock;
use envol::kms::datadir::DataDir;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn disable_enable_schedule_cancel_over_the_wire() {
    let kms = KmsServer::start();
    let c = kms.client(&kms.root);
    let arn = create_key_arn(&c).await;
    let blob = c
        .encrypt()
        .key_id(&arn)
        .plaintext(aws_sdk_kms::primitives::Blob::new(b"x".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob()
        .unwrap()
        .clone();
    let decrypt = || c.decrypt().ciphertext_blob(blob.clone()).send();

    c.disable_key().key_id(&arn).send().await.unwrap();
    assert_eq!(
        error_code(&decrypt().await.unwrap_err()),
        "DisabledException"
    );
    let e = c
        .generate_data_key()
        .key_id(&arn)
        .number_of_bytes(64)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "DisabledException");
    let d = c.describe_key().key_id(&arn).send().await.unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state().unwrap().as_str(),
        "Disabled"
    );
    assert!(!d.key_metadata().unwrap().enabled());

    c.enable_key().key_id(&arn).send().await.unwrap();
    decrypt().await.expect("enabled again");

    let e = c
        .schedule_key_deletion()
        .key_id(&arn)
        .pending_window_in_days(3)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ValidationException");
    let s = c
        .schedule_key_deletion()
        .key_id(&arn)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert_eq!(s.key_state().unwrap().as_str(), "PendingDeletion");
    assert_eq!(s.pending_window_in_days(), Some(7));
    let when = s.deletion_date().unwrap().secs();
    let expected = Utc::now().timestamp() + 7 * 86400;
    assert!(
        (when - expected).abs() < 120,
        "deletion date {when} vs {expected}"
    );
    assert_eq!(
        error_code(&decrypt().await.unwrap_err()),
        "KMSInvalidStateException"
    );
    let e = c.enable_key().key_id(&arn).send().await.unwrap_err();
    assert_eq!(error_code(&e), "KMSInvalidStateException");
    let d = c.describe_key().key_id(&arn).send().await.unwrap();
    assert!(d.key_metadata().unwrap().deletion_date().is_some());

    c.cancel_key_deletion().key_id(&arn).send().await.unwrap();
    let d = c.describe_key().key_id(&arn).send().await.unwrap();
    assert_eq!(
        d.key_metadata().unwrap().key_state().unwrap().as_str(),
        "Disabled"
    );
    assert!(d.key_metadata().unwrap().deletion_date().is_none());
    c.enable_key().key_id(&arn).send().await.unwrap();
    decrypt().await.expect("restored");
}

#[test]
fn deletion_window_passes_and_the_key_is_shredded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("kms"));
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let (kms, _) = Kms::init(&dir, "us-east-1", clock.clone()).unwrap();

    let key = call_as_root(&kms, "CreateKey", json!({})).unwrap();
    let key_id = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    call_as_root(
        &kms,
        "CreateAlias",
        json!({"AliasName": "alias/doomed", "TargetKeyId": key_id}),
    )
    .unwrap();
    let ctx: BTreeMap<&str, &str> = [("envol:volume", "v")].into();
    let blob = call_as_root(
        &kms,
        "GenerateDataKeyWithoutPlaintext",
        json!({"KeyId": "alias/doomed", "NumberOfBytes": 64, "EncryptionContext": ctx}),
    )
    .unwrap()["CiphertextBlob"]
        .clone();
    let decrypt = |kms: &Kms| {
        call_as_root(
            kms,
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
        )
    };
    decrypt(&kms).unwrap();

    call_as_root(
        &kms,
        "ScheduleKeyDeletion",
        json!({"KeyId": key_id, "PendingWindowInDays": 7}),
    )
    .unwrap();
    clock.advance(Duration::days(7) - Duration::seconds(1));
    assert_eq!(decrypt(&kms).unwrap_err(), "KMSInvalidStateException");
    let d = call_as_root(&kms, "DescribeKey", json!({"KeyId": key_id})).unwrap();
    assert_eq!(d["KeyMetadata"]["KeyState"], "PendingDeletion");

    clock.advance(Duration::seconds(1));
    // The window has passed: the key, its material and its alias are gone.
    assert_eq!(decrypt(&kms).unwrap_err(), "NotFoundException");
    assert_eq!(
        call_as_root(&kms, "DescribeKey", json!({"KeyId": key_id})).unwrap_err(),
        "NotFoundException"
    );
    assert_eq!(
        call_as_root(&kms, "DescribeKey", json!({"KeyId": "alias/doomed"})).unwrap_err(),
        "NotFoundException"
    );
    let aliases = call_as_root(&kms, "ListAliases", json!({})).unwrap();
    assert_eq!(aliases["Aliases"].as_array().unwrap().len(), 0);
    assert_eq!(kms.check_integrity().unwrap(), 0, "no key versions remain");
    let audit = std::fs::read_to_string(dir.audit_log()).unwrap();
    assert!(
        audit.contains("\"operation\":\"DeleteKey\""),
        "destruction is audited"
    );
}

#[test]
fn keys_past_their_window_are_destroyed_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("kms"));
    let start = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let (kms, _) = Kms::init(&dir, "us-east-1", Arc::new(ManualClock::new(start))).unwrap();
    let doomed =
        call_as_root(&kms, "CreateKey", json!({})).unwrap()["KeyMetadata"]["KeyId"].clone();
    let kept = call_as_root(&kms, "CreateKey", json!({})).unwrap()["KeyMetadata"]["KeyId"].clone();
    call_as_root(
        &kms,
        "ScheduleKeyDeletion",
        json!({"KeyId": doomed, "PendingWindowInDays": 30}),
    )
    .unwrap();
    drop(kms);

    let later = Arc::new(ManualClock::new(start + Duration::days(31)));
    let kms = Kms::open(&dir, later).unwrap();
    assert_eq!(
        kms.check_integrity().unwrap(),
        1,
        "only the kept key's version remains"
    );
    let keys = call_as_root(&kms, "ListKeys", json!({})).unwrap();
    let ids: Vec<&Value> = keys["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["KeyId"])
        .collect();
    assert_eq!(ids, vec![&kept]);
}
