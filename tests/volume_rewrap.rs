//! `envol volume rewrap`: volumes follow their key. The data key is
//! re-wrapped (ReEncrypt) under the newest version of its key or under
//! another key; the data area is untouched and still reads back.

mod common;

use common::tools::qemu_io;
use common::volume::{ADMIN, Fixture, MIB, run_fails, run_ok};

#[test]
fn rewrap_to_another_key_and_to_the_newest_version() {
    let fx = Fixture::new();
    let vol = fx.create_volume("moving.vol", 16 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["write -P 0x3c 4000 70000"]);
    server.stop();
    let data_before = vol.read_raw()[MIB as usize..].to_vec();

    // A second key, made by myadmin (so its default policy allows myadmin).
    let admin = fx.kms.client(&fx.admin);
    let other_arn = fx.rt.block_on(async {
        let k = admin.create_key().send().await.unwrap();
        let meta = k.key_metadata().unwrap();
        admin
            .create_alias()
            .alias_name("alias/Other")
            .target_key_id(meta.key_id())
            .send()
            .await
            .unwrap();
        meta.arn().unwrap().to_string()
    });

    let before = fx.info_json(&vol.path);
    let out = run_ok(&mut fx.envol_as(
        ADMIN,
        &[
            "volume",
            "rewrap",
            vol.path.to_str().unwrap(),
            "--key",
            "alias/Other",
        ],
    ));
    assert!(out.contains(&other_arn), "{out}");
    let after = fx.info_json(&vol.path);
    assert_eq!(after["key_arn"], other_arn.as_str());
    assert_ne!(after["wrapped_key"], before["wrapped_key"]);
    assert_eq!(after["uuid"], before["uuid"]);
    assert_eq!(after["encryption_context"], before["encryption_context"]);
    let seq_before = before["superblocks"]["primary"]["sequence"]
        .as_u64()
        .unwrap();
    for copy in ["primary", "secondary"] {
        assert_eq!(after["superblocks"][copy]["valid"], true, "{after}");
        assert!(after["superblocks"][copy]["sequence"].as_u64().unwrap() > seq_before);
    }
    assert_eq!(
        vol.read_raw()[MIB as usize..],
        data_before[..],
        "the data area is untouched"
    );

    // The old key no longer matters to this volume: disable it, still attaches.
    fx.rt.block_on(async {
        admin
            .disable_key()
            .key_id(&fx.key_arn)
            .send()
            .await
            .unwrap();
    });
    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.first_uri(),
        &["read -P 0x3c 4000 70000", "read -P 0 0 4000"],
    );
    server.stop();

    // Rotate the new key, then re-wrap under its newest version.
    fx.rt.block_on(async {
        admin
            .rotate_key_on_demand()
            .key_id(&other_arn)
            .send()
            .await
            .unwrap();
    });
    assert_eq!(after["key_version"], 1);
    run_ok(&mut fx.envol_as(ADMIN, &["volume", "rewrap", vol.path.to_str().unwrap()]));
    let rotated = fx.info_json(&vol.path);
    assert_eq!(rotated["key_arn"], other_arn.as_str());
    assert_eq!(rotated["key_version"], 2, "{rotated}");
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["read -P 0x3c 4000 70000"]);
    server.stop();
}

#[test]
fn rewrap_refused_leaves_the_superblock_unchanged() {
    let fx = Fixture::new();
    let vol = fx.create_volume("stays.vol", 8 * MIB, 4096);
    let before = std::fs::read(&vol.path).unwrap()[..2 * 64 * 1024].to_vec();
    // A key myadmin may not use: created by root, default policy = root only.
    let root = fx.kms.client(&fx.kms.root);
    let foreign = fx.rt.block_on(async {
        root.create_key()
            .send()
            .await
            .unwrap()
            .key_metadata()
            .unwrap()
            .arn()
            .unwrap()
            .to_string()
    });
    let (_, stderr) = run_fails(&mut fx.envol_as(
        ADMIN,
        &[
            "volume",
            "rewrap",
            vol.path.to_str().unwrap(),
            "--key",
            &foreign,
        ],
    ));
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    assert_eq!(
        std::fs::read(&vol.path).unwrap()[..2 * 64 * 1024],
        before[..],
        "a refused rewrap writes nothing"
    );
}
