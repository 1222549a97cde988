//! Serving while restoring (`volume restore --lazy`, then `envol serve`)
//! end to end: real `envol` processes, the real KMS, the test run's
//! radosgw (`tests/common/s3.rs`; these tests fail, never skip, without
//! it), fio verifying over NBD, qemu-io, and the AWS CLI to tamper with
//! the bucket.
//!
//! What they show: the restore returns before any chunk is fetched and
//! `volume info` shows how many are in; a server answers at once, its
//! reads of chunks not yet fetched return the snapshot's data (fio
//! verify_only of what fio wrote before the snapshot, with background
//! hydration off, so every read is an on-demand fetch); writes into chunks
//! not yet fetched stick — read back, after a restart, after hydration
//! completed and the volume became a plain one; a `kill -9` mid-hydration
//! loses nothing flushed and the restart carries on; a tampered chunk
//! fails its read with EIO (never zeros), with one log line; a volume still
//! hydrating cannot be opened by anything that would not fetch.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ceph::TestImage;
use common::control::control_of;
use common::s3::{S3, fixture_with_bucket};
use common::volume::{
    ADMIN, Fixture, MIB, Vol, VolumeServer, assert_one_clean_line, output_with_timeout, run_fails,
    run_ok,
};

struct Env {
    fx: Fixture,
    s3: S3,
    bucket: String,
}

impl Env {
    fn new() -> Env {
        let (fx, s3, bucket) = fixture_with_bucket("envol-lazy");
        Env { fx, s3, bucket }
    }

    fn envol_s3(&self, args: &[&str]) -> Command {
        let mut cmd = self.fx.envol_as(ADMIN, args);
        cmd.args(self.s3.envol_args());
        cmd
    }

    /// `envol serve VOL` with background hydration workers `workers`
    /// (`None`: the default).
    fn serve(&self, vol: &Vol, workers: Option<&str>) -> VolumeServer {
        let socket = self.fx.fresh_socket_path();
        let mut cmd = self.fx.serve_command(ADMIN, &[(vol, None)], &socket, &[]);
        if let Some(w) = workers {
            cmd.env("ENVOL_HYDRATE_WORKERS", w);
        }
        cmd.env("ENVOL_LOG", "info");
        VolumeServer::spawn(&mut cmd, socket, &[vol.export()])
    }

    /// `snapshot create VOL --to s3://BUCKET/PREFIX`: its URL and id.
    fn snapshot(&self, vol: &Vol, prefix: &str) -> (String, String) {
        let place = format!("s3://{}/{prefix}", self.bucket);
        let out = run_ok(&mut self.envol_s3(&[
            "snapshot",
            "create",
            vol.path.to_str().unwrap(),
            "--to",
            &place,
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            v["url"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    }

    /// `volume restore URL --to DIR/NAME --lazy`, which must return before
    /// fetching anything.
    fn restore_lazy(&self, url: &str, name: &str, like: &Vol) -> Vol {
        self.restore_lazy_to(url, self.fx.path(name).to_str().unwrap(), like)
    }

    /// [`Self::restore_lazy`] into a file path or `rbd:POOL/IMAGE`.
    fn restore_lazy_to(&self, url: &str, target: &str, like: &Vol) -> Vol {
        let out = run_ok(
            &mut self.envol_s3(&["volume", "restore", url, "--to", target, "--lazy", "--json"]),
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        Vol {
            path: target.into(),
            uuid: v["uuid"].as_str().unwrap().to_string(),
            size: like.size,
            sector_size: like.sector_size,
        }
    }

    /// `volume info --json`'s lazy_restore: (fetched, total), or `None`
    /// for a plain volume.
    fn progress(&self, vol: &Vol) -> Option<(u64, u64)> {
        let info = self.fx.info_json(&vol.path);
        let l = &info["lazy_restore"];
        if l.is_null() {
            return None;
        }
        Some((
            l["chunks_fetched"].as_u64().unwrap(),
            l["chunks"].as_u64().unwrap(),
        ))
    }

    /// Waits (up to 120 s) for the volume's hydration to complete.
    fn wait_hydrated(&self, vol: &Vol, server: &VolumeServer) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.progress(vol).is_some() {
            assert!(
                Instant::now() < deadline,
                "hydration did not complete within 120 s: {:?}\nserver stderr:\n{}",
                self.progress(vol),
                server.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// qemu-io commands that must all succeed (no failed read or write, no
/// pattern mismatch).
fn qemu_io_ok(uri: &str, cmds: &[&str]) {
    let text = qemu_io_text(uri, cmds);
    assert!(
        !text.contains("failed") && !text.contains("error"),
        "qemu-io {cmds:?}:\n{text}"
    );
}

fn qemu_io_text(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = output_with_timeout(c.arg(uri), Duration::from_secs(120));
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// fio over NBD at `uri`: the job with crc32c verify headers, writing
/// (and verifying) or only verifying what is there.
fn fio(dir: &Path, uri: &str, name: &str, offset: u64, size: u64, verify_only: bool) {
    let mut c = Command::new("fio");
    c.current_dir(dir).args([
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        &format!("--name={name}"),
        "--rw=randwrite",
        "--bs=16k",
        "--iodepth=8",
        "--randrepeat=1",
        &format!("--offset={offset}"),
        &format!("--size={size}"),
        "--verify=crc32c",
        "--verify_fatal=1",
    ]);
    if verify_only {
        c.arg("--verify_only");
    }
    let out = output_with_timeout(&mut c, Duration::from_secs(180));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{c:?} failed:\n{text}");
    assert!(!text.contains("verify: bad"), "{text}");
    assert!(
        text.contains(if verify_only { "READ:" } else { "WRITE:" }),
        "fio did no I/O:\n{text}"
    );
}

/// A 32 MiB volume: fio jobs A (0–12 MiB) and B (12–20 MiB), 0x33 over
/// 20–24 MiB, nothing beyond (8 chunks the snapshot does not store).
fn source(env: &Env) -> Vol {
    let vol = env.fx.create_volume("src.vol", 32 * MIB, 4096);
    let server = env.serve(&vol, None);
    let dir = env.fx.dir.path();
    fio(dir, server.first_uri(), "a", 0, 12 * MIB, false);
    fio(dir, server.first_uri(), "b", 12 * MIB, 8 * MIB, false);
    qemu_io_ok(
        server.first_uri(),
        &[&format!("write -P 0x33 {} {}", 20 * MIB, 4 * MIB)],
    );
    server.stop();
    vol
}

#[test]
fn serve_during_hydration_reads_the_snapshot_and_writes_stick() {
    let env = Env::new();
    let src = source(&env);
    let (url, _) = env.snapshot(&src, "lazy");
    let vol = env.restore_lazy(&url, "restored.vol", &src);
    assert_eq!(
        env.progress(&vol),
        Some((8, 32)),
        "nothing fetched yet; the 8 chunks the snapshot has no data for count as in"
    );

    // Only on-demand fetches: every read below is of a chunk not fetched.
    let server = env.serve(&vol, Some("0"));
    let dir = env.fx.dir.path();
    fio(dir, server.first_uri(), "a", 0, 12 * MIB, true);
    assert_eq!(env.progress(&vol), Some((8 + 12, 32)), "job A's chunks");
    // A write into a chunk not fetched yet (21 MiB + 512 KiB, 8 KiB): its
    // chunk is fetched first, the rest of it is the snapshot's.
    let at = 21 * MIB + 512 * 1024;
    qemu_io_ok(server.first_uri(), &[&format!("write -P 0x77 {at} 8192")]);
    let check_written = |uri: &str| {
        qemu_io_ok(
            uri,
            &[
                &format!("read -P 0x33 {} {}", 21 * MIB, 512 * 1024),
                &format!("read -P 0x77 {at} 8192"),
                &format!("read -P 0x33 {} {}", at + 8192, 22 * MIB - at - 8192),
                &format!("read -P 0 {} {}", 24 * MIB, 8 * MIB),
            ],
        )
    };
    check_written(server.first_uri());
    assert_eq!(env.progress(&vol), Some((8 + 12 + 1, 32)));
    let info = run_ok(
        &mut env
            .fx
            .envol(&["volume", "info", vol.path.to_str().unwrap()]),
    );
    assert!(
        info.contains("restoring:   21 of 32 chunks fetched") && info.contains(&url),
        "{info}"
    );
    server.stop();

    // Restarted with background hydration: it completes, and the record
    // goes; everything is still there.
    let server = env.serve(&vol, None);
    env.wait_hydrated(&vol, &server);
    check_written(server.first_uri());
    fio(dir, server.first_uri(), "b", 12 * MIB, 8 * MIB, true);
    let log = server.stderr();
    assert!(log.contains("complete (32 chunks)"), "{log}");
    server.stop();

    // A plain volume now: served without any fetch, content unchanged.
    let server = env.serve(&vol, Some("0"));
    check_written(server.first_uri());
    fio(dir, server.first_uri(), "a", 0, 12 * MIB, true);
    assert!(
        !server.stderr().contains("lazy restore"),
        "{}",
        server.stderr()
    );
    server.stop();
}

/// The same on an rbd: image: the record lives behind the image's data
/// area, reached through librbd like the rest.
#[test]
fn an_rbd_image_serves_while_it_hydrates() {
    let env = Env::new();
    let src = source(&env);
    let (url, _) = env.snapshot(&src, "rbd");
    let image = TestImage::new("lazy-dst");
    let vol = env.restore_lazy_to(&url, &format!("rbd:{}", image.spec()), &src);
    assert_eq!(env.progress(&vol), Some((8, 32)));
    let server = env.serve(&vol, Some("0"));
    let dir = env.fx.dir.path();
    fio(dir, server.first_uri(), "b", 12 * MIB, 8 * MIB, true);
    qemu_io_ok(
        server.first_uri(),
        &[&format!("write -P 0x55 {} 4096", 2 * MIB)],
    );
    assert_eq!(env.progress(&vol), Some((8 + 8 + 1, 32)));
    server.stop();
    let server = env.serve(&vol, None);
    env.wait_hydrated(&vol, &server);
    server.stop();
    let server = env.serve(&vol, Some("0"));
    fio(dir, server.first_uri(), "b", 12 * MIB, 8 * MIB, true);
    qemu_io_ok(
        server.first_uri(),
        &[
            &format!("read -P 0x55 {} 4096", 2 * MIB),
            &format!("read -P 0x33 {} {}", 20 * MIB, 4 * MIB),
            &format!("read -P 0 {} {}", 24 * MIB, 8 * MIB),
        ],
    );
    server.stop();
}

#[test]
fn kill_9_mid_hydration_then_restart_continues() {
    let env = Env::new();
    let src = source(&env);
    let (url, _) = env.snapshot(&src, "kill");
    let vol = env.restore_lazy(&url, "killed.vol", &src);

    let mut server = env.serve(&vol, Some("0"));
    // Flushed writes into chunks not fetched yet, and reads of others.
    qemu_io_ok(
        server.first_uri(),
        &[
            &format!("write -P 0x91 {} 4096", 3 * MIB + 4096),
            &format!("write -P 0x92 {} {}", 22 * MIB, MIB),
            &format!("read -P 0x33 {} 4096", 23 * MIB),
            "flush",
        ],
    );
    let fetched = env.progress(&vol).expect("still hydrating").0;
    assert_eq!(fetched, 8 + 3, "{:?}", env.progress(&vol));
    // Background hydration running when it dies.
    drop(server);
    server = env.serve(&vol, Some("1"));
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    let after_kill = env.progress(&vol);

    let server = env.serve(&vol, None);
    env.wait_hydrated(&vol, &server);
    let uri = server.first_uri();
    qemu_io_ok(
        uri,
        &[
            &format!("read -P 0x91 {} 4096", 3 * MIB + 4096),
            &format!("read -P 0x92 {} {}", 22 * MIB, MIB),
            &format!("read -P 0x33 {} {}", 20 * MIB, 2 * MIB),
            &format!("read -P 0x33 {} {}", 23 * MIB, MIB),
            &format!("read -P 0 {} {}", 24 * MIB, 8 * MIB),
        ],
    );
    let dir = env.fx.dir.path();
    fio(dir, uri, "b", 12 * MIB, 8 * MIB, true);
    server.stop();
    eprintln!("progress after kill -9: {after_kill:?}");
}

#[test]
fn a_tampered_chunk_fails_its_read_with_eio_and_one_log_line() {
    let env = Env::new();
    let vol = env.fx.create_volume("t.vol", 8 * MIB, 4096);
    let server = env.serve(&vol, None);
    qemu_io_ok(
        server.first_uri(),
        &[&format!("write -P 0x44 0 {}", 4 * MIB)],
    );
    server.stop();
    let (url, id) = env.snapshot(&vol, "t");
    let restored = env.restore_lazy(&url, "t2.vol", &vol);

    // Nothing but a server that fetches may open it.
    let (_, stderr) = run_fails(&mut env.envol_s3(&[
        "snapshot",
        "create",
        restored.path.to_str().unwrap(),
        "--to",
        &format!("s3://{}/t", env.bucket),
    ]));
    assert_one_clean_line("snapshot of a hydrating volume", &stderr);
    assert!(stderr.contains("still being restored"), "{stderr}");
    let (_, stderr) = run_fails(&mut env.fx.envol(&[
        "volume",
        "grow",
        restored.path.to_str().unwrap(),
        "--size",
        "+8M",
    ]));
    assert_one_clean_line("offline grow of a hydrating volume", &stderr);
    assert!(stderr.contains("still being restored"), "{stderr}");
    let (_, stderr) = run_fails(&mut env.fx.envol_as(
        ADMIN,
        &["volume", "reencrypt", restored.path.to_str().unwrap(), "-q"],
    ));
    assert_one_clean_line("re-encryption of a hydrating volume", &stderr);
    assert!(stderr.contains("still being restored"), "{stderr}");

    // Chunk 2's object: one byte changed.
    let scratch = env.fx.path("scratch");
    let manifest = env
        .s3
        .get(&env.bucket, &format!("t/{id}/manifest"), &scratch);
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let entry = m["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0].as_u64() == Some(2))
        .unwrap();
    let key = format!("t/chunks/{}", entry[1].as_str().unwrap());
    let mut bytes = env.s3.get(&env.bucket, &key, &scratch);
    bytes[4096] ^= 1;
    env.s3.put(&env.bucket, &key, &bytes, &scratch);

    let server = env.serve(&restored, Some("0"));
    // Online too: the server that fills it refuses to re-encrypt it (chunks
    // fetched later would arrive under the old key), in one line.
    let control = control_of(&server.socket);
    let (_, stderr) = run_fails(&mut env.fx.envol_as(
        ADMIN,
        &[
            "volume",
            "reencrypt",
            restored.path.to_str().unwrap(),
            "-q",
            "--control",
            control.to_str().unwrap(),
        ],
    ));
    assert_one_clean_line("online re-encryption of a hydrating volume", &stderr);
    assert!(stderr.contains("still being restored"), "{stderr}");
    for _ in 0..2 {
        let text = qemu_io_text(
            server.first_uri(),
            &[&format!("read -P 0x44 {} 4096", 2 * MIB)],
        );
        assert!(text.contains("Input/output error"), "{text}");
    }
    // The other chunks read as written; the tampered one is not in.
    qemu_io_ok(
        server.first_uri(),
        &[
            &format!("read -P 0x44 0 {}", 2 * MIB),
            &format!("read -P 0x44 {} {}", 3 * MIB, MIB),
        ],
    );
    let log = server.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("chunk 2")).collect();
    assert_eq!(lines.len(), 1, "one line for the damaged chunk:\n{log}");
    assert!(
        lines[0].contains("damaged") && lines[0].contains(&key),
        "{log}"
    );
    assert_eq!(env.progress(&restored), Some((4 + 3, 8)));
    server.stop();
}
