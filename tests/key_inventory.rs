//! `envol key list` / `key describe`: key versions after rotations, the
//! monthly cost the price model gives, and uses counted from the audit log
//! after real Encrypt/Decrypt calls made with the aws-sdk-kms crate.

mod common;

use aws_sdk_kms::primitives::Blob;
use serde_json::Value;

use common::run_ok;
use common::volume::{ADMIN, Fixture, KEY_ALIAS};

fn json(fx: &Fixture, args: &[&str]) -> Value {
    let mut cmd = fx.envol_as(ADMIN, args);
    cmd.arg("--json").arg("--kms-data").arg(fx.kms.data());
    let out = run_ok(&mut cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("envol {args:?} --json: {e}\n{out}"))
}

fn key<'a>(list: &'a Value, key_id: &str) -> &'a Value {
    list["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["KeyId"] == key_id)
        .unwrap_or_else(|| panic!("{key_id} not in {list}"))
}

#[test]
fn list_reports_versions_cost_and_uses() {
    let fx = Fixture::new();
    let admin = fx.kms.client(&fx.admin);
    let id = fx.key_id().to_string();

    let list = json(&fx, &["key", "list"]);
    let demo = key(&list, &id);
    assert_eq!(demo["KeyVersions"], 1, "{demo}");
    assert_eq!(demo["MonthlyCostUSD"], 1);
    assert_eq!(demo["UsesLast30Days"], 0);
    assert_eq!(demo["LastUsed"], Value::Null);
    assert_eq!(demo["Aliases"][0], KEY_ALIAS);
    assert_eq!(list["TotalMonthlyCostUSD"], 1);

    // Two rotations: one by the CLI, one by the SDK's RotateKeyOnDemand.
    run_ok(&mut fx.envol_as(ADMIN, &["key", "rotate", KEY_ALIAS]));
    fx.rt
        .block_on(admin.rotate_key_on_demand().key_id(&id).send())
        .expect("RotateKeyOnDemand");
    // A second key, pending deletion: listed with its version, not charged.
    let doomed = fx.rt.block_on(async {
        let k = admin.create_key().send().await.expect("CreateKey");
        let id = k.key_metadata().unwrap().key_id().to_string();
        admin
            .schedule_key_deletion()
            .key_id(&id)
            .pending_window_in_days(7)
            .send()
            .await
            .expect("ScheduleKeyDeletion");
        id
    });
    // Three Encrypts and two Decrypts name the key; a failed Decrypt does not count.
    fx.rt.block_on(async {
        let mut blobs = Vec::new();
        for i in 0..3u8 {
            let out = admin
                .encrypt()
                .key_id(KEY_ALIAS)
                .plaintext(Blob::new(vec![i; 16]))
                .send()
                .await
                .expect("Encrypt");
            blobs.push(out.ciphertext_blob().unwrap().clone());
        }
        for blob in &blobs[..2] {
            admin
                .decrypt()
                .ciphertext_blob(blob.clone())
                .send()
                .await
                .expect("Decrypt");
        }
        let mut bad = blobs[2].clone().into_inner();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        admin
            .decrypt()
            .ciphertext_blob(Blob::new(bad))
            .send()
            .await
            .expect_err("a tampered blob does not decrypt");
    });

    let list = json(&fx, &["key", "list"]);
    let demo = key(&list, &id);
    assert_eq!(demo["KeyVersions"], 3, "{demo}");
    assert_eq!(demo["MonthlyCostUSD"], 3);
    assert_eq!(demo["UsesLast30Days"], 5, "{demo}");
    let last_used = demo["LastUsed"].as_str().expect("a last use");
    let last_used = chrono::DateTime::parse_from_rfc3339(last_used).unwrap();
    let age = chrono::Utc::now().signed_duration_since(last_used);
    assert!(age.num_minutes() < 10, "last use {last_used} is recent");
    let gone = key(&list, &doomed);
    assert_eq!(gone["KeyState"], "PendingDeletion");
    assert_eq!(gone["KeyVersions"], 1);
    assert_eq!(gone["MonthlyCostUSD"], 0);
    assert_eq!(gone["UsesLast30Days"], 0);
    assert_eq!(list["TotalMonthlyCostUSD"], 3);
    assert_eq!(list["UnpricedKeys"], 0);

    // More use moves the count (the index reads only the new lines).
    fx.rt.block_on(async {
        admin
            .generate_data_key_without_plaintext()
            .key_id(KEY_ALIAS)
            .number_of_bytes(32)
            .send()
            .await
            .expect("GenerateDataKeyWithoutPlaintext");
    });
    let list = json(&fx, &["key", "list"]);
    assert_eq!(key(&list, &id)["UsesLast30Days"], 6);

    // The table says the same, with the total.
    let mut cmd = fx.envol_as(ADMIN, &["key", "list"]);
    cmd.arg("--kms-data").arg(fx.kms.data());
    let table = run_ok(&mut cmd);
    eprintln!("key list:\n{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1..4], ["Enabled", "3", "$3"], "{row}");
    assert_eq!(cols[6], "6", "{row}");
    assert!(
        table.contains("Total: $3 a month for 2 keys with 4 key versions"),
        "{table}"
    );

    // Without the data directory: the same keys and cost, and how to get use.
    let table = run_ok(&mut fx.envol_as(ADMIN, &["key", "list"]));
    assert!(!table.contains("USES/30D"), "{table}");
    assert!(table.contains("Total: $3 a month"), "{table}");
    assert!(table.contains("give --kms-data DIR"), "{table}");
}

#[test]
fn describe_shows_versions_with_dates_and_the_current_one() {
    let fx = Fixture::new();
    run_ok(&mut fx.envol_as(ADMIN, &["key", "rotate", KEY_ALIAS]));
    run_ok(&mut fx.envol_as(ADMIN, &["key", "rotate", KEY_ALIAS]));
    let d = json(&fx, &["key", "describe", KEY_ALIAS]);
    let versions = d["Versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 3, "{d}");
    assert_eq!(d["KeyVersions"], 3);
    assert_eq!(d["MonthlyCostUSD"], 3);
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v["Version"], i + 1);
        let created = v["CreationDate"].as_str().expect("a creation date");
        chrono::DateTime::parse_from_rfc3339(created).unwrap();
        assert_eq!(v["Current"], i == 2, "{v}");
    }
    assert_eq!(versions[0]["RotationType"], Value::Null);
    assert_eq!(versions[1]["RotationType"], "ON_DEMAND");

    let mut cmd = fx.envol_as(ADMIN, &["key", "describe", KEY_ALIAS]);
    let text = run_ok(&mut cmd);
    eprintln!("key describe:\n{text}");
    assert!(text.contains("versions:    3 ($3 a month)"), "{text}");
    let current: Vec<&str> = text.lines().filter(|l| l.ends_with("current")).collect();
    assert_eq!(current.len(), 1, "{text}");
    assert!(current[0].trim_start().starts_with("3 "), "{text}");
}

#[test]
fn a_directory_without_an_audit_log_is_one_line() {
    let fx = Fixture::new();
    let empty = fx.path("not-a-kms");
    std::fs::create_dir(&empty).unwrap();
    let mut cmd = fx.envol_as(ADMIN, &["key", "list"]);
    let out = cmd.arg("--kms-data").arg(&empty).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("holds no audit log"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
