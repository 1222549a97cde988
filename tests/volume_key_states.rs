//! Volumes follow their key through rotation, disabling and deletion, and a
//! re-wrap interrupted by `kill -9` never leaves a volume that cannot open.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::tools::qemu_io;
use common::volume::{ADMIN, Fixture, MIB, run_ok};
use envol::envelope::{self, NewVolume};
use envol::keys::KeyErrorKind;
use envol::keys::embedded::EmbeddedKeys;
use envol::kms::Kms;
use envol::kms::clock::ManualClock;
use envol::kms::datadir::DataDir;
use serde_json::json;

#[test]
fn rotation_rewrap_disable_enable() {
    let fx = Fixture::new();
    let vol = fx.create_volume("life.vol", 8 * MIB, 4096);
    assert_eq!(fx.info_json(&vol.path)["key_version"], 1);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["write -P 0x77 0 300000"]);
    server.stop();

    let admin = fx.kms.client(&fx.admin);
    fx.rt.block_on(async {
        for _ in 0..3 {
            admin
                .rotate_key_on_demand()
                .key_id(&fx.key_arn)
                .send()
                .await
                .unwrap();
        }
    });
    // Wrapped under version 1, attaches after three rotations.
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["read -P 0x77 0 300000"]);
    server.stop();

    run_ok(&mut fx.envol_as(ADMIN, &["volume", "rewrap", vol.path.to_str().unwrap()]));
    assert_eq!(fx.info_json(&vol.path)["key_version"], 4);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["read -P 0x77 0 300000"]);
    server.stop();

    run_ok(&mut fx.envol_as(ADMIN, &["key", "disable", "alias/DemoKey"]));
    let out = fx.serve_refused(ADMIN, &vol);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DisabledException"), "{stderr}");
    assert!(
        stderr.contains("envol key enable"),
        "names the way out: {stderr}"
    );

    run_ok(&mut fx.envol_as(ADMIN, &["key", "enable", "alias/DemoKey"]));
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["read -P 0x77 0 300000"]);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_key_makes_the_volume_unrecoverable() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap(),
    ));
    let (kms, _) = Kms::init(
        &DataDir::new(tmp.path().join("kms")),
        "us-east-1",
        clock.clone(),
    )
    .unwrap();
    let keys = EmbeddedKeys::as_root(Arc::new(kms));
    let key = keys.call("CreateKey", json!({})).unwrap();
    let arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    let path = envelope::VolumeAddress::from(tmp.path().join("doomed.vol"));
    envelope::create(
        &keys,
        NewVolume {
            volume: &path,
            size: 4 * MIB,
            sector_size: 4096,
            key: &arn,
            force: false,
        },
    )
    .await
    .unwrap();
    envelope::attach(&keys, &path, false)
        .await
        .expect("attaches");

    keys.call(
        "ScheduleKeyDeletion",
        json!({"KeyId": arn, "PendingWindowInDays": 7}),
    )
    .unwrap();
    let err = envelope::attach(&keys, &path, false).await.err().unwrap();
    assert!(err.to_string().contains("pending deletion"), "{err}");

    clock.advance(chrono::Duration::days(7));
    let err = envelope::attach(&keys, &path, false).await.err().unwrap();
    let text = err.to_string();
    match &err {
        envelope::EnvelopeError::Key(f) => assert_eq!(f.error.kind, KeyErrorKind::NotFound),
        other => panic!("expected a key error, got {other}"),
    }
    assert!(text.contains("was deleted"), "{text}");
    assert!(text.contains("unreadable"), "{text}");
}

#[test]
fn kill_9_during_rewraps_never_breaks_the_volume() {
    let fx = Fixture::new();
    let vol = fx.create_volume("crash.vol", 4 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["write -P 0x21 8192 8192"]);
    server.stop();

    let mut killed = 0;
    for i in 0..40u64 {
        let mut cmd = fx.envol_as(ADMIN, &["volume", "rewrap", vol.path.to_str().unwrap()]);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kill over the command's lifetime (start-up, KMS calls,
        // the two superblock writes).
        std::thread::sleep(Duration::from_millis((i * 7919) % 60));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            killed += 1;
        }
        let _ = child.wait();
        let info = fx.info_json(&vol.path);
        let valid = ["primary", "secondary"]
            .iter()
            .filter(|c| info["superblocks"][**c]["valid"] == true)
            .count();
        assert!(valid >= 1, "iteration {i}: {info}");
    }
    assert!(killed > 0, "some rewraps must have been interrupted");
    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.first_uri(),
        &["read -P 0x21 8192 8192", "read -P 0 0 8192"],
    );
    server.stop();
}
