//! `envol volume reencrypt` of an `rbd:` volume (issue 15) behaves as for
//! a file: the image's data area ends up under the new data key (checked
//! on `rbd export`'s bytes with OpenSSL, not envol), never-written
//! objects stay zeros, and the volume serves under the new key — offline,
//! and online inside the server that has the image attached while a
//! client writes. Needs the test cluster (`CEPH_CONF`,
//! `ENVOL_TEST_RBD_POOL`: scripts/test.sh).

mod common;

use std::process::Stdio;

use common::ceph::{Ceph, TestImage};
use common::control::control_of;
use common::tools::qemu_io;
use common::volume::{ADMIN, DATA_OFFSET, Fixture, MIB, run_ok};
use common::xts_oracle::openssl_decrypt;

/// `area(from, len)` of the exported image decrypts to `fill` under `new`
/// and never under `old`.
fn check_export(
    image: &TestImage,
    fx: &Fixture,
    new_key: &[u8],
    old_key: &[u8],
    written: &[(u64, u64, u8)],
    holes: (u64, u64),
) {
    let exported = fx.path("exported.img");
    let _ = std::fs::remove_file(&exported);
    Ceph::run(image.ceph.rbd(&[
        "export",
        "--no-progress",
        &image.spec(),
        exported.to_str().unwrap(),
    ]));
    let raw = std::fs::read(&exported).unwrap();
    let area = |from: u64, len: u64| {
        &raw[(DATA_OFFSET + from) as usize..(DATA_OFFSET + from + len) as usize]
    };
    for &(from, len, fill) in written {
        let first = from / 4096;
        let new = openssl_decrypt(new_key, 4096, first, area(from, len));
        assert!(new.iter().all(|&b| b == fill), "new key at {from}");
        let old = openssl_decrypt(old_key, 4096, first, area(from, len));
        assert!(
            old.chunks(4096).all(|s| s.iter().any(|&b| b != fill)),
            "old key at {from}"
        );
    }
    assert!(
        area(holes.0, holes.1).iter().all(|&b| b == 0),
        "holes stay zeros"
    );
}

#[test]
fn an_attached_rbd_volume_moves_to_a_new_data_key_online() {
    let fx = Fixture::new();
    let image = TestImage::new("reencrypt-online");
    let address = format!("rbd:{}", image.spec());
    let vol = fx.create_volume_at(&address, 32 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["write -P 0x3a 0 8M"]);
    let old_key = fx.unwrap_data_key(&vol);
    let control = control_of(&server.socket);
    let child = fx
        .envol_as(
            ADMIN,
            &[
                "volume",
                "reencrypt",
                &address,
                "--quiet",
                "--max-rate",
                "8M",
                "--control",
                control.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A client writing on while it runs (ahead of the watermark, and
    // behind it by the time the second write comes).
    qemu_io(server.first_uri(), &["write -P 0x3b 24M 4M"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    qemu_io(server.first_uri(), &["write -P 0x3c 2M 1M"]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("online"), "{stdout}");
    qemu_io(
        server.first_uri(),
        &[
            "read -P 0x3a 0 2M",
            "read -P 0x3c 2M 1M",
            "read -P 0x3a 3M 5M",
            "read -P 0x3b 24M 4M",
        ],
    );
    server.stop();
    let new_key = fx.unwrap_data_key(&vol);
    assert_ne!(new_key, old_key);
    check_export(
        &image,
        &fx,
        &new_key,
        &old_key,
        &[
            (0, 2 * MIB, 0x3a),
            (2 * MIB, MIB, 0x3c),
            (3 * MIB, 5 * MIB, 0x3a),
            (24 * MIB, 4 * MIB, 0x3b),
        ],
        (8 * MIB, 16 * MIB),
    );
}

#[test]
fn an_rbd_volume_moves_to_a_new_data_key() {
    let fx = Fixture::new();
    let image = TestImage::new("reencrypt");
    let address = format!("rbd:{}", image.spec());
    let vol = fx.create_volume_at(&address, 16 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.first_uri(),
        &["write -P 0x3a 0 4M", "write -P 0x3b 12M 2M"],
    );
    server.stop();
    let old_key = fx.unwrap_data_key(&vol);
    let before = fx.info_json(&vol.path);

    let out = run_ok(&mut fx.envol_as(ADMIN, &["volume", "reencrypt", &address, "--quiet"]));
    assert!(out.contains("Re-encrypted"), "{out}");
    let after = fx.info_json(&vol.path);
    assert_ne!(after["wrapped_key"], before["wrapped_key"]);
    assert_eq!(after["reencryption"], serde_json::Value::Null, "{after}");
    let new_key = fx.unwrap_data_key(&vol);
    assert_ne!(new_key, old_key);

    check_export(
        &image,
        &fx,
        &new_key,
        &old_key,
        &[(0, 4 * MIB, 0x3a), (12 * MIB, 2 * MIB, 0x3b)],
        (4 * MIB, 8 * MIB),
    );

    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.first_uri(),
        &[
            "read -P 0x3a 0 4M",
            "read -P 0 4M 8M",
            "read -P 0x3b 12M 2M",
        ],
    );
    server.stop();
}
