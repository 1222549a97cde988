//! The control socket of `envol serve`: `envol attach`, `detach`,
//! `status` on a running server (issue 16.1), with real `envol serve`
//! processes and real NBD clients (libnbd through a held connection,
//! nbdcopy, nbdinfo, fio).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ceph::TestImage;
use common::control::{
    Holder, TIMEOUT, attached_uri, control_of, envol_control, export, nbdinfo_size, status,
    wait_status,
};
use common::volume::{
    ADMIN, Fixture, MIB, assert_one_clean_line, fio_write_then_verify, output_with_timeout,
    require_tool, run_fails, run_ok,
};
use serde_json::Value;

/// Attaching a second volume to a running server: the first export's
/// clients (a held connection, and fio writing and verifying) go on
/// without an error; the new export takes an nbdcopy and gives it back;
/// status shows both, the bytes of the copy exactly.
#[test]
fn attach_a_second_volume_while_the_first_is_written() {
    require_tool("nbdcopy", "libnbd-bin");
    require_tool("fio", "fio");
    let fx = Fixture::new();
    let a = fx.create_volume("a.envol", 64 * MIB, 4096);
    let b = fx.create_volume("b.envol", 16 * MIB, 4096);
    let server = fx.serve(ADMIN, &a);
    let control = control_of(&server.socket);
    assert!(
        server
            .banner
            .contains(&format!("control: {}", control.display()))
            || control.exists(),
        "{}",
        server.banner
    );
    let a_uri = server.uri("a").to_string();

    let mut holder = Holder::connect(&a_uri);
    holder.ok("write 0 1048576 0x11");
    let fio = {
        let dir = fx.dir.path().to_path_buf();
        let uri = a_uri.clone();
        std::thread::spawn(move || {
            fio_write_then_verify(
                &dir,
                &uri,
                &[
                    "--name=first",
                    "--rw=randwrite",
                    "--bs=64k",
                    "--offset=16M",
                    "--size=32M",
                    "--iodepth=8",
                    "--verify=crc32c",
                ],
                TIMEOUT,
            )
        })
    };
    wait_status(&fx, &control, "a", "had a client", |e| {
        e["clients"].as_u64() >= Some(1)
    });

    let out = run_ok(&mut envol_control(
        &fx,
        &control,
        &["attach", b.path.to_str().unwrap()],
    ));
    assert!(
        out.contains(&format!("attached {} as export b", b.path.display())),
        "{out}"
    );
    let b_uri = attached_uri(&out, "b");
    assert_eq!(nbdinfo_size(&b_uri).unwrap(), 16 * MIB);

    // A known copy in and out: the counters count exactly its bytes.
    let data: Vec<u8> = (0..16 * MIB).map(|i| (i * 7 % 251) as u8 + 1).collect();
    let src = fx.path("copy-in.raw");
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(&b_uri));
    let after_write = status(&fx, &control);
    assert_eq!(export(&after_write, "b")["bytes_written"], 16 * MIB);
    let back = fx.path("copy-out.raw");
    run_ok(Command::new("nbdcopy").arg(&b_uri).arg(&back));
    assert!(
        std::fs::read(&back).unwrap() == data,
        "nbdcopy out differs from nbdcopy in"
    );

    // The first export's client never noticed.
    holder.ok("read 0 1048576 0x11");
    holder.ok("write 1048576 65536 0x12");
    fio.join().expect("fio on the first export failed");

    let exports = status(&fx, &control);
    assert_eq!(exports.len(), 2, "{exports:?}");
    let (ea, eb) = (export(&exports, "a"), export(&exports, "b"));
    assert_eq!(eb["bytes_read"], 16 * MIB);
    assert_eq!(eb["bytes_written"], 16 * MIB);
    assert_eq!(eb["clients"], 0);
    assert_eq!(eb["size"], 16 * MIB);
    assert_eq!(eb["volume"], b.path.to_str().unwrap());
    assert_eq!(eb["volume_uuid"], b.uuid.as_str());
    assert_eq!(eb["key_arn"], fx.key_arn.as_str());
    assert_eq!(eb["state"], "attached");
    assert_eq!(ea["clients"], 1, "the holder: {ea}");
    assert_eq!(ea["in_flight"], 0);
    // The holder's 1 MiB + 64 KiB, and fio's 32 MiB at least once.
    assert!(
        ea["bytes_written"].as_u64().unwrap() >= 33 * MIB + 64 * 1024,
        "{ea}"
    );
    assert!(ea["bytes_read"].as_u64().unwrap() >= MIB, "{ea}");
    assert!(
        ea["attached_since"].as_str().unwrap().ends_with('Z'),
        "{ea}"
    );

    let text = run_ok(&mut envol_control(&fx, &control, &["status"]));
    assert!(
        text.contains(&format!(
            "b: {} (attached, read-write, {} bytes)",
            b.path.display(),
            16 * MIB
        )),
        "{text}"
    );
    holder.quit();
    server.stop();
}

/// `envol detach` waits for the export's client (held), refusing new
/// connections meanwhile; once the client leaves it finishes, and the
/// volume can at once be served elsewhere. Attaching it back while the
/// other server holds it is refused, naming the holder.
#[test]
fn detach_waits_for_the_client_then_releases_the_volume() {
    let fx = Fixture::new();
    let a = fx.create_volume("a.envol", 16 * MIB, 4096);
    let b = fx.create_volume("b.envol", 16 * MIB, 4096);
    let server = fx.serve_many(ADMIN, &[(&a, None), (&b, None)], &[]);
    let control = control_of(&server.socket);
    let mut holder = Holder::connect(server.uri("b"));
    holder.ok("write 0 65536 0x22");

    let mut detach = envol_control(&fx, &control, &["detach", "b"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_status(&fx, &control, "b", "detaching", |e| {
        e["state"] == "detaching"
    });
    // Held: the client is still connected, so the detach cannot be done.
    assert!(
        detach.try_wait().unwrap().is_none(),
        "detach returned with a client connected"
    );
    assert!(
        nbdinfo_size(server.uri("b")).is_err(),
        "a new client reached a detaching export"
    );
    assert_eq!(nbdinfo_size(server.uri("a")).unwrap(), 16 * MIB);
    holder.ok("read 0 65536 0x22");
    holder.ok("write 65536 65536 0x23");
    holder.quit();

    let deadline = Instant::now() + TIMEOUT;
    let status_code = loop {
        if let Some(s) = detach.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "detach did not finish after the client left"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    detach
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status_code.success(), "{out}");
    assert_eq!(out.trim(), "detached b");
    let exports = status(&fx, &control);
    assert_eq!(exports.len(), 1, "{exports:?}");

    // Released: another server takes it at once, with what was written.
    let second = fx.serve(ADMIN, &b);
    let mut check = Holder::connect(second.first_uri());
    check.ok("read 0 65536 0x22");
    check.ok("read 65536 65536 0x23");
    check.quit();

    // Held by the second server: the first cannot attach it back.
    let (_, stderr) = run_fails(&mut envol_control(
        &fx,
        &control,
        &["attach", b.path.to_str().unwrap()],
    ));
    assert_one_clean_line("attach of a held volume", &stderr);
    assert!(
        stderr.contains(&format!("pid {} (", second.pid())),
        "{stderr}"
    );
    assert_eq!(
        nbdinfo_size(server.uri("a")).unwrap(),
        16 * MIB,
        "the first server goes on"
    );
    second.stop();
    server.stop();
}

/// `envol detach --force`: what the clients wrote is flushed, their
/// requests get `ESHUTDOWN` (the NBD soft disconnect) — a client that then
/// disconnects ends the detach at once, one that stays is cut off after
/// the eviction grace — and the volumes are released.
#[test]
fn forced_detach_answers_eshutdown_and_releases_the_volume() {
    let fx = Fixture::new();
    let a = fx.create_volume("a.envol", 16 * MIB, 4096);
    let b = fx.create_volume("b.envol", 16 * MIB, 4096);
    let server = fx.serve_many(ADMIN, &[(&a, None), (&b, None)], &[]);
    let control = control_of(&server.socket);

    // A client that leaves when told.
    let mut holder = Holder::connect(server.uri("b"));
    holder.ok("write 0 65536 0x33");
    let detach = envol_control(&fx, &control, &["detach", "b", "--force"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_status(&fx, &control, "b", "evicting", |e| e["state"] == "evicting");
    let answer = holder.ask("write 65536 65536 0x34");
    assert!(
        answer.starts_with("error ESHUTDOWN "),
        "ESHUTDOWN expected: {answer}"
    );
    holder.quit();
    let out = detach.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "detached b (1 client(s) disconnected)"
    );

    // A client that stays: cut off once the grace is over.
    let mut stays = Holder::connect(server.uri("a"));
    stays.ok("write 0 65536 0x66");
    let out = run_ok(&mut envol_control(
        &fx,
        &control,
        &["detach", "a", "--force"],
    ));
    assert_eq!(out.trim(), "detached a (1 client(s) disconnected)");
    let answer = stays.ask("read 0 65536 0x66");
    assert!(
        answer.starts_with("error"),
        "a cut-off client's request: {answer}"
    );
    drop(stays);
    assert!(status(&fx, &control).is_empty());
    assert_eq!(
        run_ok(&mut envol_control(&fx, &control, &["status"])).trim(),
        "no exports"
    );

    // Released, with what was written before the detach.
    let second = fx.serve_many(ADMIN, &[(&a, None), (&b, None)], &[]);
    let mut check = Holder::connect(second.uri("b"));
    check.ok("read 0 65536 0x33");
    check.quit();
    let mut check = Holder::connect(second.uri("a"));
    check.ok("read 0 65536 0x66");
    check.quit();
    second.stop();
    server.stop();
}

/// Refusals are one line and change nothing: a volume whose key policy
/// does not let the server's user in, a missing file, a volume already
/// attached here, an unknown export; malformed, unknown and other-version
/// requests on the wire get an error reply, and the server goes on.
#[test]
fn refusals_are_one_line_and_the_server_keeps_serving() {
    let fx = Fixture::new();
    let a = fx.create_volume("a.envol", 16 * MIB, 4096);
    let server = fx.serve(ADMIN, &a);
    let control = control_of(&server.socket);

    // A key only alice may use, and a volume under it.
    fx.add_user("alice");
    run_ok(&mut fx.envol_as("alice", &["key", "create", "--alias", "alias/AliceKey"]));
    let secret = fx.path("alice.envol");
    run_ok(&mut fx.envol_as(
        "alice",
        &[
            "volume",
            "create",
            secret.to_str().unwrap(),
            "--size",
            "16777216",
            "--key",
            "alias/AliceKey",
        ],
    ));
    let (_, stderr) = run_fails(&mut envol_control(
        &fx,
        &control,
        &["attach", secret.to_str().unwrap()],
    ));
    assert_one_clean_line("attach refused by the key policy", &stderr);
    assert!(stderr.contains("AccessDenied"), "{stderr}");

    let (_, stderr) = run_fails(&mut envol_control(
        &fx,
        &control,
        &["attach", "nowhere.envol"],
    ));
    assert_one_clean_line("attach of a missing file", &stderr);
    let (_, stderr) = run_fails(&mut envol_control(
        &fx,
        &control,
        &["attach", a.path.to_str().unwrap()],
    ));
    assert_one_clean_line("attach twice", &stderr);
    assert!(
        stderr.contains("already attached here, as export \"a\""),
        "{stderr}"
    );
    let (_, stderr) = run_fails(&mut envol_control(&fx, &control, &["detach", "nosuch"]));
    assert_one_clean_line("detach of an unknown export", &stderr);

    let mut wire = UnixStream::connect(&control).unwrap();
    let mut replies = BufReader::new(wire.try_clone().unwrap());
    for (request, expect) in [
        ("not json at all", "malformed request"),
        (
            r#"{"version":99,"command":"status"}"#,
            "unsupported control protocol version 99",
        ),
        (
            r#"{"version":1,"command":"frobnicate"}"#,
            "malformed request",
        ),
        (r#"{"version":1,"command":"detach"}"#, "malformed request"),
        (r#"{"version":1,"command":"status"}"#, r#""reply":"status""#),
    ] {
        writeln!(wire, "{request}").unwrap();
        let mut reply = String::new();
        replies.read_line(&mut reply).unwrap();
        let json: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
        assert_eq!(json["version"], 1, "{reply}");
        assert!(reply.contains(expect), "{request} → {reply}");
    }
    assert_eq!(status(&fx, &control).len(), 1);
    assert_eq!(nbdinfo_size(server.uri("a")).unwrap(), 16 * MIB);
    server.stop();
}

/// Only the server's user (and root) may use the control socket: another
/// uid is refused by the file's mode and, with the directory and socket
/// opened up, by the peer-uid check. A stale socket from a killed server
/// is replaced; a live one is refused.
#[test]
fn other_users_are_refused_and_a_stale_socket_is_replaced() {
    require_tool("setpriv", "util-linux");
    let fx = Fixture::new();
    let a = fx.create_volume("a.envol", 16 * MIB, 4096);
    let dir = fx.path("run");
    std::fs::create_dir(&dir).unwrap();
    let socket = dir.join("nbd.sock");
    let server = fx.serve_on(ADMIN, &a, &socket);
    let control = control_of(&socket);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    let as_nobody = || {
        let client = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.strerror); sys.exit(0)
# The server answers a stranger before reading anything, and closes.
try:
    s.sendall(b'{"version":1,"command":"status"}\n')
except BrokenPipeError:
    pass
print(s.makefile().readline().strip())
"#;
        let out = output_with_timeout(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .args(["/usr/bin/python3", "-c", client])
                .arg(&control),
            TIMEOUT,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Every directory on the way is traversable for the second check.
    let mut open_up = vec![dir.clone()];
    let mut p = dir.parent();
    while let Some(d) = p {
        open_up.push(d.to_path_buf());
        p = d.parent();
    }
    let said = as_nobody();
    assert!(
        said.starts_with("connect:"),
        "nobody reached the socket: {said}"
    );
    for d in &open_up {
        let m = std::fs::metadata(d).unwrap().permissions().mode();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(m | 0o011)).unwrap();
    }
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let said = as_nobody();
    assert!(said.contains("\"reply\":\"error\""), "{said}");
    assert!(said.contains("permission denied: uid 65534"), "{said}");
    assert!(!said.contains("exports"), "{said}");

    // A live control socket is not taken.
    let other = fx.create_volume("other.envol", 16 * MIB, 4096);
    let out = fx
        .serve_command(
            ADMIN,
            &[(&other, None)],
            &fx.fresh_socket_path(),
            &["--control", control.to_str().unwrap()],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_clean_line("serve on a live control socket", &stderr);
    assert!(
        stderr.contains("another server is listening there"),
        "{stderr}"
    );

    // A killed server leaves its sockets; the next one replaces them.
    let pid = server.pid();
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    drop(server);
    assert!(
        control.exists(),
        "the killed server's control socket is gone"
    );
    let server = fx.serve_on(ADMIN, &a, &socket);
    assert_eq!(status(&fx, &control).len(), 1);
    server.stop();
    assert!(
        !control.exists(),
        "a stopped server leaves its control socket"
    );
}

/// An `rbd:` volume attached to and detached from a running server: its
/// exclusive lock is taken at attach, refused to a second server while
/// attached (naming the holder's Ceph client), released at detach, and the
/// volume can be attached back at once.
#[test]
fn rbd_volume_attach_and_detach() {
    let fx = Fixture::new();
    let a = fx.create_volume("a.envol", 16 * MIB, 4096);
    let image = TestImage::new("control");
    let spec = format!("rbd:{}", image.spec());
    let rbd = fx.create_volume_at(&spec, 16 * MIB, 4096);
    let name = rbd.export();
    let server = fx.serve(ADMIN, &a);
    let control = control_of(&server.socket);

    let out = run_ok(&mut envol_control(
        &fx,
        &control,
        &["attach", &format!("{spec}=disk")],
    ));
    assert!(
        out.contains(&format!("attached {spec} as export disk")),
        "{out}"
    );
    let uri = attached_uri(&out, "disk");
    let mut holder = Holder::connect(&uri);
    holder.ok("write 0 65536 0x44");
    holder.ok("flush");
    let exports = status(&fx, &control);
    assert_eq!(export(&exports, "disk")["volume"], spec.as_str());
    assert_eq!(export(&exports, "disk")["bytes_written"], 65536);

    // Held here: another server is refused, told who holds it.
    let out = fx.serve_refused(ADMIN, &rbd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_clean_line("second server of an attached rbd volume", &stderr);
    assert!(
        stderr.contains("already attached read-write by Ceph client"),
        "{stderr}"
    );
    holder.quit();

    let out = run_ok(&mut envol_control(&fx, &control, &["detach", "disk"]));
    assert_eq!(out.trim(), "detached disk");
    // Released: another server takes it at once.
    let second = fx.serve(ADMIN, &rbd);
    let mut check = Holder::connect(second.uri(&name));
    check.ok("read 0 65536 0x44");
    check.quit();
    second.stop();
    // And back here.
    let out = run_ok(&mut envol_control(&fx, &control, &["attach", &spec]));
    let mut check = Holder::connect(&attached_uri(&out, &name));
    check.ok("read 0 65536 0x44");
    check.quit();
    server.stop();
}

/// Interrupting an `envol detach` that waits for a client gives the
/// detach up: the export is open to new clients again, and its client
/// never noticed.
#[test]
fn an_interrupted_detach_reopens_the_export() {
    let fx = Fixture::new();
    let a = fx.create_volume("a.envol", 16 * MIB, 4096);
    let server = fx.serve(ADMIN, &a);
    let control = control_of(&server.socket);
    let mut holder = Holder::connect(server.uri("a"));
    holder.ok("write 0 65536 0x55");
    let mut detach = envol_control(&fx, &control, &["detach", "a"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_status(&fx, &control, "a", "detaching", |e| {
        e["state"] == "detaching"
    });
    assert!(nbdinfo_size(server.uri("a")).is_err());
    let _ = Command::new("kill")
        .args(["-INT", &detach.id().to_string()])
        .status();
    let _ = detach.wait();
    wait_status(&fx, &control, "a", "reopened", |e| e["state"] == "attached");
    assert_eq!(nbdinfo_size(server.uri("a")).unwrap(), 16 * MIB);
    holder.ok("read 0 65536 0x55");
    holder.quit();
    server.stop();
}
