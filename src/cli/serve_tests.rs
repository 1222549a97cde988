use super::*;

fn split(arg: &str) -> Result<VolumeArg, CliError> {
    let ceph = CephArgs {
        ceph_conf: None,
        ceph_id: "admin".into(),
        ceph_op_timeout: Duration::from_secs(30),
    };
    split_volume_arg(arg, &ceph)
}

#[test]
fn rbd_specs_split_into_image_name_and_mode() {
    for (arg, image, name, read_only) in [
        ("rbd:pool/img", "img", "img", false),
        ("rbd:pool/img:ro", "img", "img", true),
        ("rbd:pool/img=disk", "img", "disk", false),
        ("rbd:pool/img=disk:ro", "img", "disk", true),
    ] {
        let v = split(arg).unwrap();
        let rbd = v
            .volume
            .rbd_image()
            .unwrap_or_else(|| panic!("{arg}: not rbd"));
        assert_eq!(
            (rbd.pool.as_str(), rbd.image.as_str()),
            ("pool", image),
            "{arg}"
        );
        assert_eq!((v.name.as_str(), v.read_only), (name, read_only), "{arg}");
    }
}

#[test]
fn file_specs_are_unchanged_and_dot_slash_rbd_is_a_file() {
    let v = split("./rbd:pool/img.vol=x:ro").unwrap();
    assert_eq!(
        v.volume,
        VolumeAddress::File(PathBuf::from("./rbd:pool/img.vol"))
    );
    assert_eq!((v.name.as_str(), v.read_only), ("x", true));
    let v = split("/srv/data.vol").unwrap();
    assert_eq!(
        v.volume,
        VolumeAddress::File(PathBuf::from("/srv/data.vol"))
    );
    assert_eq!((v.name.as_str(), v.read_only), ("data", false));
}

#[test]
fn bad_rbd_specs_are_one_line() {
    for arg in [
        "rbd:pool:ro",
        "rbd:=x",
        "rbd:pool/=x",
        "rbd:/img:ro",
        "rbd:pool/img=",
    ] {
        let e = split(arg)
            .err()
            .unwrap_or_else(|| panic!("{arg} accepted"))
            .0;
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.contains("expected rbd:POOL/IMAGE") || e.contains("the export name is empty"),
            "{arg}: {e}"
        );
    }
}
