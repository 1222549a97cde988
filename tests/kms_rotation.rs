//! Key rotation. Over the wire with the official SDK for on-demand rotation,
//! its limit, ListKeyRotations and GetKeyRotationStatus; through the service
//! core with an injected clock for automatic rotation (no waiting 90 days).
//! Throughout: blobs made before any number of rotations still decrypt, and
//! new blobs name the newest version.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_kms::primitives::Blob;
use base64::Engine;
use chrono::{Duration, TimeZone, Utc};
use common::{KmsServer, call_as_root, create_key_arn, error_code};
use envol::kms::Kms;
use envol::kms::blob::parse_header;
use envol::kms::clock::{Clock, ManualClock};
use envol::kms::datadir::DataDir;
use serde_json::{Value, json};

fn version_of(blob: &[u8]) -> u32 {
    parse_header(blob).expect("a well-formed blob").key_version
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_rotation_over_the_wire() {
    let kms = KmsServer::start();
    let c = kms.client(&kms.root);
    let arn = create_key_arn(&c).await;
    let encrypt = |n: u8| {
        c.encrypt()
            .key_id(&arn)
            .plaintext(Blob::new(vec![n; 16]))
            .encryption_context("envol:volume", "v1")
            .send()
    };
    let decrypt = |b: Blob| {
        c.decrypt()
            .ciphertext_blob(b)
            .encryption_context("envol:volume", "v1")
            .send()
    };
    let first = encrypt(0).await.unwrap().ciphertext_blob().unwrap().clone();
    assert_eq!(version_of(first.as_ref()), 1);

    let status = c
        .get_key_rotation_status()
        .key_id(&arn)
        .send()
        .await
        .unwrap();
    assert!(!status.key_rotation_enabled(), "rotation is off by default");
    assert_eq!(status.key_id(), Some(arn.as_str()));

    // The default limit is AWS's: ten on-demand rotations per key.
    let mut blobs = vec![first];
    for i in 1..=10u8 {
        let r = c.rotate_key_on_demand().key_id(&arn).send().await.unwrap();
        assert_eq!(r.key_id(), Some(arn.as_str()));
        let b = encrypt(i).await.unwrap().ciphertext_blob().unwrap().clone();
        assert_eq!(version_of(b.as_ref()), u32::from(i) + 1, "newest version");
        blobs.push(b);
    }
    let e = c
        .rotate_key_on_demand()
        .key_id(&arn)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "LimitExceededException");

    // Every blob, made under every version, still decrypts to its plaintext.
    for (i, b) in blobs.into_iter().enumerate() {
        let p = decrypt(b).await.unwrap();
        assert_eq!(p.plaintext().unwrap().as_ref(), &[i as u8; 16][..]);
    }

    // ListKeyRotations, paged three at a time.
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page = c
            .list_key_rotations()
            .key_id(&arn)
            .limit(3)
            .set_marker(marker)
            .send()
            .await
            .unwrap();
        for r in page.rotations() {
            assert_eq!(r.rotation_type().map(|t| t.as_str()), Some("ON_DEMAND"));
            assert!(r.rotation_date().is_some());
            assert!(arn.ends_with(r.key_id().unwrap()));
            seen.push(r.clone());
        }
        if !page.truncated() {
            break;
        }
        marker = page.next_marker().map(str::to_string);
    }
    assert_eq!(
        seen.len(),
        10,
        "one entry per rotation, none for the original"
    );

    // Automatic rotation settings over the wire.
    let e = c
        .enable_key_rotation()
        .key_id(&arn)
        .rotation_period_in_days(89)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ValidationException");
    c.enable_key_rotation().key_id(&arn).send().await.unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(&arn)
        .send()
        .await
        .unwrap();
    assert!(s.key_rotation_enabled());
    assert_eq!(s.rotation_period_in_days(), Some(365), "default period");
    let next = s.next_rotation_date().unwrap().secs();
    let expected = Utc::now().timestamp() + 365 * 86400;
    assert!(
        (next - expected).abs() < 120,
        "next rotation {next} vs {expected}"
    );
    c.disable_key_rotation().key_id(&arn).send().await.unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(&arn)
        .send()
        .await
        .unwrap();
    assert!(!s.key_rotation_enabled());
    assert!(s.next_rotation_date().is_none());

    // A disabled key can be neither rotated nor have its schedule changed.
    c.disable_key().key_id(&arn).send().await.unwrap();
    let e = c
        .rotate_key_on_demand()
        .key_id(&arn)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "DisabledException");
    let e = c
        .enable_key_rotation()
        .key_id(&arn)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "DisabledException");
}

fn blob_version(v: &Value) -> u32 {
    let b = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap();
    version_of(&b)
}

/// A service core on a temporary data directory (kept alive by `_tmp`).
struct Core {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    clock: Arc<ManualClock>,
    kms: Kms,
}

fn core() -> Core {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("kms"));
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let (kms, _) = Kms::init(&dir, "us-east-1", clock.clone()).unwrap();
    Core {
        _tmp: tmp,
        dir,
        clock,
        kms,
    }
}

fn new_key(kms: &Kms) -> String {
    call_as_root(kms, "CreateKey", json!({})).unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn automatic_rotation_follows_the_injected_clock() {
    let Core {
        _tmp,
        dir,
        clock,
        kms,
    } = core();
    let key = new_key(&kms);
    let ctx: BTreeMap<&str, &str> = [("envol:volume", "v")].into();
    let gen_blob = |kms: &Kms| {
        call_as_root(
            kms,
            "GenerateDataKeyWithoutPlaintext",
            json!({"KeyId": key, "NumberOfBytes": 64, "EncryptionContext": ctx}),
        )
        .unwrap()["CiphertextBlob"]
            .clone()
    };
    let decrypt = |kms: &Kms, blob: &Value| {
        call_as_root(
            kms,
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
        )
    };
    let old = gen_blob(&kms);
    assert_eq!(blob_version(&old), 1);

    call_as_root(
        &kms,
        "EnableKeyRotation",
        json!({"KeyId": key, "RotationPeriodInDays": 90}),
    )
    .unwrap();
    let s = call_as_root(&kms, "GetKeyRotationStatus", json!({"KeyId": key})).unwrap();
    assert_eq!(s["KeyRotationEnabled"], true);
    assert_eq!(s["RotationPeriodInDays"], 90);
    let start = clock.now().timestamp();
    assert_eq!(
        s["NextRotationDate"].as_f64().unwrap() as i64,
        start + 90 * 86400
    );

    clock.advance(Duration::days(90) - Duration::seconds(1));
    assert_eq!(blob_version(&gen_blob(&kms)), 1, "not yet due");
    clock.advance(Duration::seconds(1));
    let newer = gen_blob(&kms);
    assert_eq!(blob_version(&newer), 2, "rotated when due; Encrypt uses it");
    decrypt(&kms, &old).expect("a version-1 blob still decrypts");
    decrypt(&kms, &newer).unwrap();
    let s = call_as_root(&kms, "GetKeyRotationStatus", json!({"KeyId": key})).unwrap();
    assert_eq!(
        s["NextRotationDate"].as_f64().unwrap() as i64,
        start + 180 * 86400,
        "the schedule moves on by one period"
    );
    let r = call_as_root(&kms, "ListKeyRotations", json!({"KeyId": key})).unwrap();
    let rotations = r["Rotations"].as_array().unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0]["RotationType"], "AUTOMATIC");
    assert_eq!(
        rotations[0]["RotationDate"].as_f64().unwrap() as i64,
        start + 90 * 86400
    );

    // Disabled: the schedule is kept but nothing rotates.
    call_as_root(&kms, "DisableKey", json!({"KeyId": key})).unwrap();
    clock.advance(Duration::days(200));
    assert!(kms.rotate_due_keys().unwrap().is_empty());
    call_as_root(&kms, "EnableKey", json!({"KeyId": key})).unwrap();
    // Re-enabled after the due date: one rotation at the next request, not two.
    let after = gen_blob(&kms);
    assert_eq!(blob_version(&after), 3);
    let s = call_as_root(&kms, "GetKeyRotationStatus", json!({"KeyId": key})).unwrap();
    assert_eq!(
        s["NextRotationDate"].as_f64().unwrap() as i64,
        clock.now().timestamp() + 90 * 86400
    );
    for b in [&old, &newer, &after] {
        decrypt(&kms, b).unwrap();
    }

    // Pending deletion: reported as not rotating, and not rotated.
    call_as_root(
        &kms,
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 30}),
    )
    .unwrap();
    let s = call_as_root(&kms, "GetKeyRotationStatus", json!({"KeyId": key})).unwrap();
    assert_eq!(s["KeyRotationEnabled"], false);
    clock.advance(Duration::days(29));
    assert!(kms.rotate_due_keys().unwrap().is_empty());
    // Cancelled: the schedule comes back.
    call_as_root(&kms, "CancelKeyDeletion", json!({"KeyId": key})).unwrap();
    let s = call_as_root(&kms, "GetKeyRotationStatus", json!({"KeyId": key})).unwrap();
    assert_eq!(s["KeyRotationEnabled"], true);

    let audit = std::fs::read_to_string(dir.audit_log()).unwrap();
    let automatic = audit
        .lines()
        .filter(|l| l.contains("\"operation\":\"RotateKey\""))
        .count();
    assert_eq!(automatic, 2, "each automatic rotation is audited");
    assert!(audit.contains("\"operation\":\"EnableKeyRotation\""));
}

#[test]
fn due_rotations_happen_at_start_up_and_survive_reopening() {
    let Core { _tmp, dir, kms, .. } = core();
    let key = new_key(&kms);
    call_as_root(
        &kms,
        "EnableKeyRotation",
        json!({"KeyId": key, "RotationPeriodInDays": 100}),
    )
    .unwrap();
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    drop(kms);
    let later = Arc::new(ManualClock::new(start + Duration::days(101)));
    let kms = Kms::open(&dir, later).unwrap();
    assert_eq!(kms.check_integrity().unwrap(), 2, "rotated while opening");
    let r = call_as_root(&kms, "ListKeyRotations", json!({"KeyId": key})).unwrap();
    assert_eq!(r["Rotations"].as_array().unwrap().len(), 1);
}

#[test]
fn on_demand_limit_is_configurable_and_leaves_the_schedule_alone() {
    let Core {
        _tmp, clock, kms, ..
    } = core();
    kms.set_on_demand_rotation_limit(2);
    let key = new_key(&kms);
    call_as_root(
        &kms,
        "EnableKeyRotation",
        json!({"KeyId": key, "RotationPeriodInDays": 90}),
    )
    .unwrap();
    let before = call_as_root(&kms, "GetKeyRotationStatus", json!({"KeyId": key})).unwrap();
    clock.advance(Duration::days(1));
    call_as_root(&kms, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap();
    call_as_root(&kms, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap();
    assert_eq!(
        call_as_root(&kms, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap_err(),
        "LimitExceededException"
    );
    let after = call_as_root(&kms, "GetKeyRotationStatus", json!({"KeyId": key})).unwrap();
    assert_eq!(before["NextRotationDate"], after["NextRotationDate"]);
    // Automatic rotations do not count against the on-demand limit.
    clock.advance(Duration::days(90));
    assert_eq!(kms.rotate_due_keys().unwrap().len(), 1);
    let r = call_as_root(&kms, "ListKeyRotations", json!({"KeyId": key, "Limit": 2})).unwrap();
    assert_eq!(r["Truncated"], true);
    let rest = call_as_root(
        &kms,
        "ListKeyRotations",
        json!({"KeyId": key, "Marker": r["NextMarker"]}),
    )
    .unwrap();
    let types: Vec<&Value> = r["Rotations"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["Rotations"].as_array().unwrap())
        .map(|e| &e["RotationType"])
        .collect();
    assert_eq!(types, vec!["ON_DEMAND", "ON_DEMAND", "AUTOMATIC"]);
    assert_eq!(rest["Rotations"][0]["KeyMaterialState"], "CURRENT");
    assert_eq!(r["Rotations"][0]["KeyMaterialState"], "NON_CURRENT");
    assert_eq!(
        call_as_root(
            &kms,
            "EnableKeyRotation",
            json!({"KeyId": key, "RotationPeriodInDays": 2561})
        )
        .unwrap_err(),
        "ValidationException"
    );
}

/// `envol key rotate` and `envol key enable-rotation`, as a user runs them.
#[tokio::test(flavor = "multi_thread")]
async fn envol_key_rotate_and_enable_rotation() {
    let kms = KmsServer::start();
    let c = kms.client(&kms.root);
    let arn = create_key_arn(&c).await;
    let home = tempfile::tempdir().unwrap();
    let key_cmd = |args: &[&str]| {
        let mut cmd = common::envol();
        cmd.arg("key")
            .args(args)
            .args(["--endpoint", &kms.endpoint])
            .env("HOME", home.path())
            .env("AWS_ACCESS_KEY_ID", &kms.root.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &kms.root.secret)
            .env("AWS_REGION", common::REGION)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL_KMS");
        cmd.output().unwrap()
    };
    let out = key_cmd(&["rotate", &arn, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["KeyId"], arn.as_str());
    let out = key_cmd(&["enable-rotation", &arn, "--period-days", "120", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["KeyRotationEnabled"], true);
    assert_eq!(v["RotationPeriodInDays"], 120);
    let out = key_cmd(&["enable-rotation", &arn, "--period-days", "30"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ValidationException"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");

    let rotations = c.list_key_rotations().key_id(&arn).send().await.unwrap();
    assert_eq!(rotations.rotations().len(), 1);
}
