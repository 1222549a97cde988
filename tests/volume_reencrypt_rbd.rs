//! `envol volume reencrypt` of an `rbd:` volume (issue 15) behaves as for
//! a file: the image's data area ends up under the new data key (checked
//! on `rbd export`'s bytes with OpenSSL, not envol), never-written
//! objects stay zeros, and the volume serves under the new key. Needs the
//! test cluster (`CEPH_CONF`, `ENVOL_TEST_RBD_POOL`: scripts/test.sh).

mod common;

use common::ceph::{Ceph, TestImage};
use common::tools::qemu_io;
use common::volume::{ADMIN, DATA_OFFSET, Fixture, MIB, run_ok};
use common::xts_oracle::openssl_decrypt;

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

    let exported = fx.path("exported.img");
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
    for (from, len, fill) in [(0, 4 * MIB, 0x3au8), (12 * MIB, 2 * MIB, 0x3b)] {
        let first = from / 4096;
        let new = openssl_decrypt(&new_key, 4096, first, area(from, len));
        assert!(new.iter().all(|&b| b == fill), "new key at {from}");
        let old = openssl_decrypt(&old_key, 4096, first, area(from, len));
        assert!(
            old.chunks(4096).all(|s| s.iter().any(|&b| b != fill)),
            "old key at {from}"
        );
    }
    assert!(
        area(4 * MIB, 8 * MIB).iter().all(|&b| b == 0),
        "holes stay zeros"
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
