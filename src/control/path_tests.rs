use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{beside_socket, for_tcp_under};

#[test]
fn beside_the_nbd_socket() {
    assert_eq!(
        beside_socket(Path::new("/run/envol/nbd.sock")),
        Path::new("/run/envol/nbd.sock.control")
    );
}

#[test]
fn per_tcp_address_in_a_private_runtime_directory() {
    let base = tempfile::tempdir().unwrap();
    let path = for_tcp_under("127.0.0.1:10809".parse().unwrap(), Some(base.path().into())).unwrap();
    assert_eq!(path, base.path().join("envol/nbd-127.0.0.1-10809.control"));
    let mode = std::fs::metadata(base.path().join("envol"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let v6 = for_tcp_under("[::1]:10809".parse().unwrap(), Some(base.path().into())).unwrap();
    assert_eq!(v6, base.path().join("envol/nbd-__1-10809.control"));
}

#[test]
fn a_runtime_directory_open_to_others_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("envol");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = for_tcp_under("127.0.0.1:10809".parse().unwrap(), Some(base.path().into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("closed to others"), "{err}");
}
