use super::*;

fn ceph() -> CephOptions {
    CephOptions {
        conf: Some(PathBuf::from("/etc/ceph/test.conf")),
        id: Some("envol".into()),
        ..CephOptions::default()
    }
}

#[test]
fn rbd_addresses_carry_their_cluster() {
    let v = VolumeAddress::parse("rbd:pool/img", &ceph()).unwrap();
    assert_eq!(
        v,
        VolumeAddress::Rbd {
            image: RbdAddress {
                pool: "pool".into(),
                image: "img".into()
            },
            ceph: ceph(),
        }
    );
    assert_eq!(v.to_string(), "rbd:pool/img");
    assert_eq!(v.default_export_name(), "img");
    assert!(v.rbd_image().is_some());
}

#[test]
fn everything_else_is_a_path() {
    for s in [
        "vol.envol",
        "/srv/v/data.vol",
        "./rbd:pool/img",
        "rbd",
        "RBD:pool/img",
    ] {
        let v = VolumeAddress::parse(s, &ceph()).unwrap();
        assert_eq!(v, VolumeAddress::File(PathBuf::from(s)), "{s}");
        assert_eq!(v.to_string(), s);
        assert!(v.rbd_image().is_none());
    }
    let v = VolumeAddress::parse("./rbd:img.vol", &ceph()).unwrap();
    assert_eq!(v.default_export_name(), "rbd:img");
}

#[test]
fn a_bad_rbd_address_is_one_line_naming_it() {
    for s in [
        "rbd:",
        "rbd:pool",
        "rbd:/img",
        "rbd:pool/",
        "rbd:a/b/c",
        "rbd:p/i\0",
    ] {
        let e = VolumeAddress::parse(s, &ceph()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{s:?}")) && e.contains("expected rbd:POOL/IMAGE"),
            "{s}: {e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
}
