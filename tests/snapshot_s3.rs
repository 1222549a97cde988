//! Snapshots in S3 end to end: real `envol` processes, the real KMS, the
//! test run's radosgw (`tests/common/s3.rs`: started by scripts/test.sh;
//! these tests fail, never skip, without it), real NBD clients (qemu-io
//! writes, nbdcopy reads back) and the AWS CLI to count and tamper with
//! what is in the bucket.
//!
//! What they show: a snapshot stores only the chunks written; the next one
//! uploads only what changed (object count and bytes checked in the
//! bucket); each restores to exactly what was written at its point in
//! time, on a file and on an rbd: image; after a crash the next snapshot
//! says change tracking is unavailable and compares hashes, missing
//! nothing; a changed chunk or manifest is refused, naming it, and the
//! partly restored volume is removed; deleting a snapshot in the middle
//! keeps the others restorable, and deleting all leaves no object; a
//! create killed mid-upload leaves nothing listed and its re-run uploads
//! less; radosgw going away mid-upload is one clear line after the
//! retries, and the re-run after it is back completes; a user the key
//! policy refuses cannot restore; bad URLs and a missing bucket are one
//! line each.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ceph::{Ceph, TestImage};
use common::nbd::run_tool;
use common::s3::{S3, fixture_with_bucket};
use common::tools::qemu_io;
use common::volume::{
    ADMIN, Fixture, MIB, Vol, assert_one_clean_line, output_with_timeout, run_fails, run_ok,
};

/// A KMS with a key, radosgw with a bucket of this test's, and an AWS
/// profile for each.
struct Env {
    fx: Fixture,
    s3: S3,
    bucket: String,
}

impl Env {
    fn new() -> Env {
        let (fx, s3, bucket) = fixture_with_bucket("envol-snap");
        Env { fx, s3, bucket }
    }

    /// `s3://BUCKET/PREFIX`.
    fn place(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// `envol ARGS` with the KMS (as `profile`) and the S3 flags.
    fn envol_as(&self, profile: &str, args: &[&str]) -> Command {
        self.envol_as_at(profile, args, &self.s3)
    }

    /// [`Self::envol_as`] with another S3 endpoint.
    fn envol_as_at(&self, profile: &str, args: &[&str], s3: &S3) -> Command {
        let mut cmd = self.fx.envol_as(profile, args);
        cmd.args(s3.envol_args());
        cmd
    }

    /// `envol ARGS` with only the S3 flags (list, describe, delete).
    fn envol_s3(&self, args: &[&str]) -> Command {
        let mut cmd = self.fx.envol(args);
        cmd.args(self.s3.envol_args());
        cmd
    }

    /// `snapshot create VOLUME --to PLACE --json`: its JSON and stderr.
    fn snapshot(&self, vol: &Vol, place: &str) -> (serde_json::Value, String) {
        let mut cmd = self.envol_as(
            ADMIN,
            &[
                "snapshot",
                "create",
                vol.path.to_str().unwrap(),
                "--to",
                place,
                "--json",
            ],
        );
        let out = output_with_timeout(&mut cmd, Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "snapshot create failed ({}):\n{stderr}",
            out.status
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("snapshot create --json: {e}\n{stderr}"));
        (v, stderr)
    }

    /// `volume restore URL --to TARGET` as myadmin; the new volume.
    fn restore(&self, url: &str, target: &str, like: &Vol) -> Vol {
        let out = run_ok(
            &mut self.envol_as(ADMIN, &["volume", "restore", url, "--to", target, "--json"]),
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["size"].as_u64(), Some(like.size), "{out}");
        Vol {
            path: PathBuf::from(target),
            uuid: v["uuid"].as_str().unwrap().to_string(),
            size: like.size,
            sector_size: like.sector_size,
        }
    }

    /// qemu-io commands on the served volume (the server stopped cleanly after).
    fn write(&self, vol: &Vol, cmds: &[&str]) {
        let server = self.fx.serve(ADMIN, vol);
        qemu_io(server.first_uri(), cmds);
        server.stop();
    }

    /// The whole volume as a client reads it (nbdcopy).
    fn read_all(&self, vol: &Vol, name: &str) -> Vec<u8> {
        let server = self.fx.serve(ADMIN, vol);
        let dst = self.fx.path(name);
        std::fs::File::create(&dst).unwrap();
        run_tool("nbdcopy", &[server.first_uri(), dst.to_str().unwrap()]);
        server.stop();
        std::fs::read(&dst).unwrap()
    }

    /// Objects under `prefix` of the bucket.
    fn objects(&self, prefix: &str) -> Vec<common::s3::Listed> {
        self.s3.list(&self.bucket, prefix)
    }
}

/// What a volume should read as: zeros, with `fill(pattern, offset, len)`s applied.
struct Expected(Vec<u8>);

impl Expected {
    fn new(size: u64) -> Expected {
        Expected(vec![0; size as usize])
    }
    /// The same fill as qemu-io's `write -P PATTERN OFFSET LEN`.
    fn fill(&mut self, pattern: u8, offset: u64, len: u64) -> String {
        self.0[offset as usize..(offset + len) as usize].fill(pattern);
        format!("write -P {pattern} {offset} {len}")
    }
}

fn num(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field} in {v}"))
}

/// Two snapshots of a file volume, the second incremental by change
/// tracking; each restores to what was written at its time; a restored
/// volume's next snapshot is an increment of the one it came from; delete
/// in the middle, then all.
#[test]
fn incremental_snapshots_restore_what_was_written() {
    let env = Env::new();
    let size = 64 * MIB;
    let vol = env.fx.create_volume("a.vol", size, 4096);
    let place = env.place("vols/a");

    // Data A: 8 MiB at 0 and 4 MiB at 40 MiB: 12 chunks written.
    let mut a = Expected::new(size);
    let cmds = [a.fill(0x11, 0, 8 * MIB), a.fill(0x22, 40 * MIB, 4 * MIB)];
    env.write(&vol, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    let (s1, stderr1) = env.snapshot(&vol, &place);
    eprintln!("snapshot 1: {s1}\n{stderr1}");
    let url1 = s1["url"].as_str().unwrap().to_string();
    assert!(url1.starts_with(&format!("{place}/snap-")), "{url1}");
    assert_eq!(
        s1["method"], "change-tracking",
        "a new volume tracks from creation"
    );
    assert_eq!(num(&s1, "chunks"), 12);
    assert_eq!(
        num(&s1, "chunks_read"),
        12,
        "only the chunks ever written are read"
    );
    assert_eq!(num(&s1, "objects_added"), 12);
    assert_eq!(num(&s1, "bytes_added"), 12 * MIB);
    let chunks = env.objects("vols/a/chunks/");
    assert_eq!(chunks.len(), 12, "{chunks:?}");
    assert!(chunks.iter().all(|o| o.size == MIB));
    assert!(
        !env.objects("vols/a/")
            .iter()
            .any(|o| o.key.ends_with("in-progress")),
        "the in-progress marker is gone once the snapshot is complete"
    );

    // Data B: one chunk rewritten, 4 KiB in a chunk never written before.
    let mut b = Expected(a.0.clone());
    let cmds = [b.fill(0x33, 2 * MIB, MIB), b.fill(0x44, 50 * MIB, 4096)];
    env.write(&vol, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    let (s2, stderr2) = env.snapshot(&vol, &place);
    eprintln!("snapshot 2: {s2}\n{stderr2}");
    let url2 = s2["url"].as_str().unwrap().to_string();
    assert_eq!(s2["method"], "change-tracking");
    assert_eq!(s2["parent"], s1["id"]);
    assert_eq!(num(&s2, "chunks"), 13);
    assert_eq!(
        num(&s2, "chunks_read"),
        2,
        "only the changed chunks are read"
    );
    assert_eq!(num(&s2, "objects_added"), 2);
    assert_eq!(num(&s2, "bytes_added"), 2 * MIB);
    assert_eq!(env.objects("vols/a/chunks/").len(), 14);
    assert!(
        !stderr2.contains("change tracking unavailable"),
        "{stderr2}"
    );

    // `list` and `describe` say the same.
    let listed: serde_json::Value = serde_json::from_str(&run_ok(
        &mut env.envol_s3(&["snapshot", "list", &place, "--json"]),
    ))
    .unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["url"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [url1.as_str(), url2.as_str()]);
    let described = run_ok(&mut env.envol_s3(&["snapshot", "describe", &url2]));
    assert!(
        described.contains(&format!("parent:      {}", s1["id"].as_str().unwrap())),
        "{described}"
    );
    assert!(described.contains("13 of 64"), "{described}");

    // Each restores to what was written at its time.
    let r1 = env.restore(&url1, env.fx.path("r1.vol").to_str().unwrap(), &vol);
    let r2 = env.restore(&url2, env.fx.path("r2.vol").to_str().unwrap(), &vol);
    assert_ne!(r1.uuid, vol.uuid, "a restored volume is a new volume");
    assert!(
        env.read_all(&r1, "r1.img") == a.0,
        "restore of snapshot 1 differs from data A"
    );
    assert!(
        env.read_all(&r2, "r2.img") == b.0,
        "restore of snapshot 2 differs from data B"
    );
    let info = env.fx.info_json(&r2.path);
    assert_eq!(info["key_arn"], env.fx.key_arn.as_str());

    // The restored volume's next snapshot here is an increment of snapshot 2.
    let (s3, _) = env.snapshot(&r2, &place);
    assert_eq!(s3["method"], "change-tracking");
    assert_eq!(s3["parent"], s2["id"]);
    assert_eq!(num(&s3, "chunks_read"), 0);
    assert_eq!(num(&s3, "objects_added"), 0);
    assert_eq!(num(&s3, "chunks"), 13);

    // Delete the middle one: the others still restore.
    let out = run_ok(&mut env.envol_s3(&["snapshot", "delete", &url2, "--json"]));
    let deleted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        num(&deleted, "chunks_deleted"),
        0,
        "snapshot 3 still uses them: {out}"
    );
    let url3 = s3["url"].as_str().unwrap();
    let r3 = env.restore(url3, env.fx.path("r3.vol").to_str().unwrap(), &vol);
    assert!(env.read_all(&r3, "r3.img") == b.0);
    // Snapshot 1 alone, after snapshot 3 is gone too: its chunks only.
    let out = run_ok(&mut env.envol_s3(&["snapshot", "delete", url3, "--json"]));
    let deleted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(num(&deleted, "chunks_deleted"), 2, "{out}");
    assert_eq!(env.objects("vols/a/chunks/").len(), 12);
    let r1b = env.restore(&url1, env.fx.path("r1b.vol").to_str().unwrap(), &vol);
    assert!(env.read_all(&r1b, "r1b.img") == a.0);
    run_ok(&mut env.envol_s3(&["snapshot", "delete", &url1]));
    assert_eq!(
        env.objects("vols/a/"),
        vec![],
        "no object left after deleting all"
    );
    let out = run_ok(&mut env.envol_s3(&["snapshot", "list", &place]));
    assert!(out.contains("no snapshots in"), "{out}");
}

/// A snapshot after a crash (the server killed while attached, with
/// writes) says change tracking is unavailable, compares every chunk's
/// hash, uploads only what changed, and misses nothing.
#[test]
fn after_a_crash_the_next_snapshot_compares_hashes() {
    let env = Env::new();
    let size = 32 * MIB;
    let vol = env.fx.create_volume("c.vol", size, 4096);
    let place = env.place("crash");
    let mut a = Expected::new(size);
    let cmds = [a.fill(0x51, 0, 4 * MIB)];
    env.write(&vol, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    let (s1, _) = env.snapshot(&vol, &place);
    assert_eq!(num(&s1, "objects_added"), 4);

    // Writes, then kill -9 of the server that made them.
    let server = env.fx.serve(ADMIN, &vol);
    let cmd = a.fill(0x52, 9 * MIB, 8192);
    qemu_io(server.first_uri(), &[&cmd]);
    let pid = server.pid();
    drop(server); // SIGKILL
    eprintln!("killed envol serve {pid}");

    let (s2, stderr) = env.snapshot(&vol, &place);
    assert!(
        stderr.contains("change tracking unavailable") && stderr.contains("comparing chunk hashes"),
        "the fallback is said on stderr:\n{stderr}"
    );
    assert_eq!(s2["method"], "hash-compare");
    assert_eq!(num(&s2, "chunks_read"), 32, "every chunk is read");
    assert_eq!(
        num(&s2, "objects_added"),
        1,
        "only the changed chunk is uploaded"
    );
    assert_eq!(num(&s2, "chunks"), 5);
    assert_eq!(s2["parent"], s1["id"]);
    let r = env.restore(
        s2["url"].as_str().unwrap(),
        env.fx.path("r.vol").to_str().unwrap(),
        &vol,
    );
    assert!(
        env.read_all(&r, "r.img") == a.0,
        "the restore misses the write made before the crash"
    );

    // Tracking is exact again from snapshot 2 on.
    let (s3, stderr) = env.snapshot(&vol, &place);
    assert_eq!(s3["method"], "change-tracking", "{stderr}");
    assert_eq!(num(&s3, "chunks_read"), 0);
}

/// An rbd: volume snapshots the same way, and restores into an rbd: image
/// and into a file alike.
#[test]
fn rbd_volume_snapshot_restores_to_an_image_and_a_file() {
    let env = Env::new();
    let size = 16 * MIB;
    let image = TestImage::new("snap-src");
    let vol = env
        .fx
        .create_volume_at(&format!("rbd:{}", image.spec()), size, 4096);
    let place = env.place("rbd");
    let mut a = Expected::new(size);
    let cmds = [a.fill(0x61, MIB, 3 * MIB), a.fill(0x62, 15 * MIB, 512)];
    env.write(&vol, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    let (s1, _) = env.snapshot(&vol, &place);
    assert_eq!(num(&s1, "chunks"), 4);
    assert_eq!(num(&s1, "objects_added"), 4);
    let url = s1["url"].as_str().unwrap();

    let target = TestImage::new("snap-dst");
    let on_rbd = env.restore(url, &format!("rbd:{}", target.spec()), &vol);
    let on_file = env.restore(url, env.fx.path("f.vol").to_str().unwrap(), &vol);
    assert!(
        env.read_all(&on_rbd, "rbd.img") == a.0,
        "rbd: restore differs"
    );
    assert!(
        env.read_all(&on_file, "file.img") == a.0,
        "file restore differs"
    );
    // An existing image is refused the restore's way (no --force to offer)
    // and left as it was.
    let (_, stderr) = run_fails(&mut env.envol_as(
        ADMIN,
        &[
            "volume",
            "restore",
            url,
            "--to",
            &format!("rbd:{}", target.spec()),
        ],
    ));
    assert_one_clean_line("existing rbd: target", &stderr);
    assert!(
        stderr.contains("already exists; a restore makes a new volume")
            && !stderr.contains("--force"),
        "{stderr}"
    );
    assert!(
        env.read_all(&on_rbd, "rbd-again.img") == a.0,
        "the existing image is untouched"
    );
    // Another increment on the image.
    let cmd = a.fill(0x63, 8 * MIB, 4096);
    env.write(&vol, &[&cmd]);
    let (s2, _) = env.snapshot(&vol, &place);
    assert_eq!(s2["method"], "change-tracking");
    assert_eq!(num(&s2, "objects_added"), 1);
}

/// A changed chunk object fails the restore naming it; a changed manifest
/// is refused; neither leaves a volume behind.
#[test]
fn tampered_chunk_or_manifest_is_refused() {
    let env = Env::new();
    let size = 8 * MIB;
    let vol = env.fx.create_volume("t.vol", size, 4096);
    let mut a = Expected::new(size);
    let cmds = [a.fill(0x71, 0, 2 * MIB)];
    env.write(&vol, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    let (s1, _) = env.snapshot(&vol, &env.place("t"));
    let url = s1["url"].as_str().unwrap();
    let id = s1["id"].as_str().unwrap();
    let scratch = env.fx.path("scratch");
    let manifest_key = format!("t/{id}/manifest");
    let original = env.s3.get(&env.bucket, &manifest_key, &scratch);

    // The manifest: swap the two chunks' hashes (both objects exist).
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let h0 = m["chunks"][0][1].clone();
    m["chunks"][0][1] = m["chunks"][1][1].clone();
    m["chunks"][1][1] = h0;
    env.s3.put(
        &env.bucket,
        &manifest_key,
        &serde_json::to_vec(&m).unwrap(),
        &scratch,
    );
    let target = env.fx.path("m.vol");
    let (_, stderr) = run_fails(&mut env.envol_as(
        ADMIN,
        &["volume", "restore", url, "--to", target.to_str().unwrap()],
    ));
    assert_one_clean_line("tampered manifest", &stderr);
    assert!(stderr.contains("authentication does not match"), "{stderr}");
    assert!(
        !target.exists(),
        "nothing is created for a refused manifest"
    );
    env.s3.put(&env.bucket, &manifest_key, &original, &scratch);

    // A chunk: one byte changed.
    let chunk = m["chunks"][1][1].as_str().unwrap().to_string();
    let chunk_key = format!("t/chunks/{chunk}");
    let mut bytes = env.s3.get(&env.bucket, &chunk_key, &scratch);
    bytes[4096] ^= 1;
    env.s3.put(&env.bucket, &chunk_key, &bytes, &scratch);
    let target = env.fx.path("c.vol");
    let (_, stderr) = run_fails(&mut env.envol_as(
        ADMIN,
        &["volume", "restore", url, "--to", target.to_str().unwrap()],
    ));
    assert_one_clean_line("tampered chunk", &stderr);
    assert!(
        stderr.contains(&format!("s3://{}/{chunk_key}", env.bucket)) && stderr.contains("damaged"),
        "the error names the object: {stderr}"
    );
    assert!(stderr.contains("was removed"), "{stderr}");
    assert!(!target.exists(), "the partly restored volume is removed");

    // A chunk grown past the chunk size: refused by its length before it is
    // held whole, naming the object.
    bytes.resize(3 * MIB as usize, 0x5a);
    env.s3.put(&env.bucket, &chunk_key, &bytes, &scratch);
    let target = env.fx.path("g.vol");
    let (_, stderr) = run_fails(&mut env.envol_as(
        ADMIN,
        &["volume", "restore", url, "--to", target.to_str().unwrap()],
    ));
    assert_one_clean_line("oversized chunk", &stderr);
    assert!(
        stderr.contains(&format!("s3://{}/{chunk_key}", env.bucket))
            && stderr.contains("damaged: more than"),
        "the error names the object: {stderr}"
    );
    assert!(!target.exists(), "the partly restored volume is removed");
}

/// A user the key policy does not name cannot snapshot or restore: the
/// KMS refuses the unwrap, and nothing is created.
#[test]
fn a_user_the_key_policy_refuses_cannot_snapshot_or_restore() {
    let env = Env::new();
    let vol = env.fx.create_volume("p.vol", 4 * MIB, 4096);
    env.write(&vol, &["write -P 0x7a 0 1M"]);
    let (s1, _) = env.snapshot(&vol, &env.place("p"));
    let url = s1["url"].as_str().unwrap();
    env.fx.add_user("mallory");
    let target = env.fx.path("stolen.vol");
    let (_, stderr) = run_fails(&mut env.envol_as(
        "mallory",
        &["volume", "restore", url, "--to", target.to_str().unwrap()],
    ));
    assert_one_clean_line("refused restore", &stderr);
    assert!(
        stderr.contains("AccessDeniedException") && stderr.contains(url),
        "{stderr}"
    );
    assert!(!target.exists());
    let (_, stderr) = run_fails(&mut env.envol_as(
        "mallory",
        &[
            "snapshot",
            "create",
            vol.path.to_str().unwrap(),
            "--to",
            &env.place("p"),
        ],
    ));
    assert_one_clean_line("refused create", &stderr);
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");
}

/// Bad URLs, a missing bucket or snapshot, an existing target and an
/// attached volume: one line each.
#[test]
fn bad_urls_missing_buckets_and_attached_volumes_are_one_line() {
    let env = Env::new();
    let vol = env.fx.create_volume("b.vol", 4 * MIB, 4096);
    let v = vol.path.to_str().unwrap();
    let no_snap = env.place("x/snap-0000000000000000");
    let fresh = env.fx.path("fresh.vol").to_str().unwrap().to_string();
    let cases: Vec<(Command, &str)> = vec![
        (
            env.envol_as(ADMIN, &["snapshot", "create", v, "--to", "backups/x"]),
            "not an s3:// URL",
        ),
        (
            env.envol_as(ADMIN, &["snapshot", "create", v, "--to", "s3://Bad_Bucket"]),
            "not a valid bucket name",
        ),
        (
            env.envol_as(
                ADMIN,
                &[
                    "snapshot",
                    "create",
                    v,
                    "--to",
                    "s3://no-such-bucket-envol/x",
                ],
            ),
            "does not exist",
        ),
        (
            env.envol_as(ADMIN, &["snapshot", "create", v, "--to", &no_snap]),
            "names a snapshot",
        ),
        (
            env.envol_as(
                ADMIN,
                &["volume", "restore", &env.place("x"), "--to", "/tmp/x.vol"],
            ),
            "is not a snapshot",
        ),
        (
            env.envol_s3(&["snapshot", "describe", &no_snap]),
            "no such snapshot",
        ),
        (
            env.envol_s3(&["snapshot", "delete", &no_snap]),
            "no such snapshot",
        ),
        (
            env.envol_s3(&["snapshot", "list", "s3://no-such-bucket-envol"]),
            "does not exist",
        ),
        (
            env.envol_as(ADMIN, &["volume", "restore", &no_snap, "--to", &fresh]),
            "no such snapshot",
        ),
    ];
    for (mut cmd, expected) in cases {
        let (_, stderr) = run_fails(&mut cmd);
        assert_one_clean_line(expected, &stderr);
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
    }

    // An existing target is refused, and left alone.
    env.write(&vol, &["write -P 0x7b 0 1M"]);
    let (s1, _) = env.snapshot(&vol, &env.place("b"));
    let before = std::fs::read(&vol.path).unwrap();
    let (_, stderr) = run_fails(&mut env.envol_as(
        ADMIN,
        &["volume", "restore", s1["url"].as_str().unwrap(), "--to", v],
    ));
    assert_one_clean_line("existing target", &stderr);
    assert!(
        stderr.contains("already exists; a restore makes a new volume"),
        "{stderr}"
    );
    assert!(
        std::fs::read(&vol.path).unwrap() == before,
        "the existing volume is untouched"
    );

    // An attached volume whose server's control socket is not the default
    // one (it serves on --socket): one line naming the holder and
    // --control (tests/snapshot_attached.rs takes it through the server).
    let server = env.fx.serve(ADMIN, &vol);
    let (_, stderr) =
        run_fails(&mut env.envol_as(ADMIN, &["snapshot", "create", v, "--to", &env.place("b")]));
    assert_one_clean_line("attached volume", &stderr);
    assert!(
        stderr.contains(&format!("pid {}", server.pid())) && stderr.contains("--control"),
        "{stderr}"
    );
    server.stop();
}

/// A volume of `chunks` chunks, each written with its own pattern.
fn patterned_volume(env: &Env, name: &str, chunks: u64) -> (Vol, Expected) {
    let vol = env.fx.create_volume(name, chunks * MIB, 4096);
    let mut e = Expected::new(chunks * MIB);
    let cmds: Vec<String> = (0..chunks)
        .map(|i| e.fill((i % 250 + 1) as u8, i * MIB, MIB))
        .collect();
    env.write(&vol, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    (vol, e)
}

/// `snapshot create` running in the background, its stderr to a file.
fn spawn_create(env: &Env, s3: &S3, vol: &Vol, place: &str, extra: &[&str], log: &str) -> Child {
    let mut cmd = env.envol_as_at(
        ADMIN,
        &[
            "snapshot",
            "create",
            vol.path.to_str().unwrap(),
            "--to",
            place,
            "--json",
        ],
        s3,
    );
    cmd.args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.fx.path(log)).unwrap());
    cmd.spawn().unwrap()
}

/// Waits (bounded) until at least `n` chunk objects are under `prefix`,
/// while `child` (logging to `log`) uploads them.
fn wait_for_chunks(env: &Env, prefix: &str, n: usize, child: &mut Child, log: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = env.objects(prefix).len();
        if have >= n {
            return have;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the create exited ({status}) before {n} chunks were uploaded:\n{}",
                std::fs::read_to_string(env.fx.path(log)).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {n} chunks uploaded in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) for a child to exit.
fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kill -9` of a create in the middle of its upload: no snapshot is
/// listed; the re-run completes, uploading only what the first did not,
/// and removes the dead upload's marker.
#[test]
fn a_killed_create_lists_nothing_and_its_rerun_uploads_less() {
    let env = Env::new();
    let (vol, expected) = patterned_volume(&env, "k.vol", 40);
    let place = env.place("k");
    let mut child = spawn_create(
        &env,
        &env.s3,
        &vol,
        &place,
        &["--concurrency", "1"],
        "k.log",
    );
    let had = wait_for_chunks(&env, "k/chunks/", 5, &mut child, "k.log");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let uploaded = env.objects("k/chunks/").len();
    eprintln!("killed the create after {had}+ chunks; {uploaded} chunk objects in the bucket");
    assert!(uploaded < 40, "the create finished before it was killed");

    let out = run_ok(&mut env.envol_s3(&["snapshot", "list", &place]));
    assert!(
        out.contains("no snapshots in"),
        "an interrupted snapshot is not listed: {out}"
    );
    assert!(
        env.objects("k/")
            .iter()
            .any(|o| o.key.ends_with("/in-progress")),
        "the interrupted upload's marker stays"
    );

    let (s, _) = env.snapshot(&vol, &place);
    assert_eq!(num(&s, "chunks"), 40);
    assert_eq!(
        num(&s, "objects_added"),
        40 - uploaded as u64,
        "the re-run uploads only what is missing"
    );
    assert!(
        !env.objects("k/")
            .iter()
            .any(|o| o.key.ends_with("/in-progress")),
        "the dead upload's marker is removed by the re-run"
    );
    let r = env.restore(
        s["url"].as_str().unwrap(),
        env.fx.path("kr.vol").to_str().unwrap(),
        &vol,
    );
    assert!(env.read_all(&r, "kr.img") == expected.0);
}

/// A radosgw of this test's own (the cluster's other users keep theirs),
/// on a free port, in the foreground of a child process.
struct OwnRadosgw {
    child: Child,
    port: u16,
}

impl OwnRadosgw {
    fn start(dir: &std::path::Path, port: u16) -> OwnRadosgw {
        let ceph = Ceph::from_env();
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("radosgw")
            .arg("--conf")
            .arg(&ceph.conf)
            .args(["--id", "rgw.r", "-f"])
            .arg(format!("--rgw-frontends=beast endpoint=127.0.0.1:{port}"))
            .arg(format!("--rgw-data={}", dir.display()))
            .arg(format!("--pid-file={}/rgw.pid", dir.display()))
            .arg(format!("--admin-socket={}/rgw.asok", dir.display()))
            .arg(format!("--log-file={}/rgw.log", dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "radosgw must be installed (Debian package radosgw; scripts/test.sh installs it)",
            );
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "radosgw on port {port} did not come up in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        OwnRadosgw { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRadosgw {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// radosgw killed in the middle of an upload: the create fails after its
/// retries with one line naming the endpoint; with radosgw back, the same
/// command completes and uploads only what was missing.
#[test]
fn radosgw_gone_mid_upload_is_one_line_and_the_rerun_completes() {
    let env = Env::new();
    let (vol, expected) = patterned_volume(&env, "g.vol", 40);
    let place = env.place("g");
    let port = free_port();
    let rgw_dir = env.fx.path("rgw");
    let mut rgw = OwnRadosgw::start(&rgw_dir, port);
    let endpoint = rgw.endpoint();
    let own = env.s3.at(&endpoint);
    let mut child = spawn_create(&env, &own, &vol, &place, &["--concurrency", "1"], "g.log");
    wait_for_chunks(&env, "g/chunks/", 5, &mut child, "g.log");
    rgw.kill();
    let started = Instant::now();
    let status = wait_child(&mut child, Duration::from_secs(120));
    let stderr = std::fs::read_to_string(env.fx.path("g.log")).unwrap();
    eprintln!(
        "create failed after {:?} ({status}): {stderr}",
        started.elapsed()
    );
    assert!(!status.success());
    assert_one_clean_line("radosgw gone", &stderr);
    assert!(
        stderr.contains(&endpoint) && stderr.contains("after 5 attempts"),
        "{stderr}"
    );
    let uploaded = env.objects("g/chunks/").len();
    assert!(uploaded < 40);

    let rgw = OwnRadosgw::start(&rgw_dir, port);
    let mut cmd = env.envol_as_at(
        ADMIN,
        &[
            "snapshot",
            "create",
            vol.path.to_str().unwrap(),
            "--to",
            &place,
            "--json",
        ],
        &env.s3.at(&rgw.endpoint()),
    );
    let s: serde_json::Value = serde_json::from_str(&run_ok(&mut cmd)).unwrap();
    assert_eq!(num(&s, "objects_added"), 40 - uploaded as u64);
    let r = env.restore(
        s["url"].as_str().unwrap(),
        env.fx.path("gr.vol").to_str().unwrap(),
        &vol,
    );
    assert!(env.read_all(&r, "gr.img") == expected.0);
}
