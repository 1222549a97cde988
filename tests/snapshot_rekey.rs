//! Restore under another key (`volume restore --key`) and `snapshot copy
//! [--key]`, end to end: real `envol` processes, the real KMS with key
//! policies, the test run's radosgw (`tests/common/s3.rs`; these tests fail,
//! never skip, without it), qemu-io writes, nbdcopy reads back, the AWS CLI
//! to look at and tamper with the buckets.
//!
//! What they show: a restore under another key is a new lineage — `volume
//! info` names the new key, the wrapped key is not the old one, the data
//! reads back the same, every stored sector is different ciphertext and
//! holes stay holes — and a user the old key allows but the new one does not
//! cannot attach it; a tampered chunk fails the re-encrypting restore naming
//! the object, leaving nothing behind; a copy into another bucket restores
//! the same content with and without `--key`, a second same-key copy uploads
//! nothing (content-addressed) and names the first as its parent, a `--key`
//! copy is under the new key; a user no key policy names can neither copy nor
//! restore under another key; bad URLs and a missing destination bucket
//! are one line each.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::nbd::run_tool;
use common::s3::{S3, fixture_with_bucket};
use common::tools::qemu_io;
use common::volume::{
    ADMIN, DATA_OFFSET, Fixture, MIB, Vol, assert_one_clean_line, output_with_timeout, run_fails,
    run_ok,
};
use serde_json::Value;

/// A KMS with two keys (the fixture's, and `other_key`, both created by
/// myadmin), radosgw with a bucket of this test's, and an S3 profile.
struct Env {
    fx: Fixture,
    s3: S3,
    bucket: String,
    other_key: String,
}

impl Env {
    fn new() -> Env {
        let (fx, s3, bucket) = fixture_with_bucket("envol-rekey");
        let admin = fx.kms.client(&fx.admin);
        let other_key = fx
            .rt
            .block_on(async { common::kms::create_key_arn(&admin).await });
        Env {
            fx,
            s3,
            bucket,
            other_key,
        }
    }

    /// `envol ARGS` with the KMS (as `profile`) and the S3 flags.
    fn envol_as(&self, profile: &str, args: &[&str]) -> Command {
        let mut cmd = self.fx.envol_as(profile, args);
        cmd.args(self.s3.envol_args());
        cmd
    }

    /// `envol ARGS --json` as myadmin, parsed (5 minutes at most).
    fn json(&self, args: &[&str]) -> Value {
        let mut cmd = self.envol_as(ADMIN, args);
        cmd.arg("--json");
        let out = output_with_timeout(&mut cmd, Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "envol {args:?} failed ({}):\n{stderr}",
            out.status
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("envol {args:?} --json: {e}\n{stderr}"))
    }

    fn snapshot(&self, vol: &Vol, place: &str) -> Value {
        self.json(&[
            "snapshot",
            "create",
            vol.path.to_str().unwrap(),
            "--to",
            place,
        ])
    }

    /// `volume restore URL --to DIR/FILE [--key KEY]` as myadmin.
    fn restore(&self, url: &str, file: &str, key: Option<&str>, like: &Vol) -> Vol {
        let target = self.fx.path(file);
        let mut args = vec!["volume", "restore", url, "--to", target.to_str().unwrap()];
        if let Some(k) = key {
            args.extend(["--key", k]);
        }
        let v = self.json(&args);
        Vol {
            path: target,
            uuid: v["uuid"].as_str().unwrap().to_string(),
            size: like.size,
            sector_size: like.sector_size,
        }
    }

    fn write(&self, vol: &Vol, cmds: &[String]) {
        let server = self.fx.serve(ADMIN, vol);
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(server.first_uri(), &cmds);
        server.stop();
    }

    /// The whole volume as a client reads it (nbdcopy).
    fn read_all(&self, vol: &Vol) -> Vec<u8> {
        let server = self.fx.serve(ADMIN, vol);
        let dst = self.fx.path(&format!("{}.img", vol.export()));
        std::fs::File::create(&dst).unwrap();
        run_tool("nbdcopy", &[server.first_uri(), dst.to_str().unwrap()]);
        server.stop();
        let bytes = std::fs::read(&dst).unwrap();
        std::fs::remove_file(&dst).unwrap();
        bytes
    }

    /// Adds an Allow statement for user `name` and `actions` to `key`'s policy.
    fn allow(&self, key: &str, name: &str, actions: &[&str]) {
        let admin = self.fx.kms.client(&self.fx.admin);
        let user = self.fx.kms.user_arn(name);
        self.fx
            .rt
            .block_on(common::allow_in_key_policy(&admin, key, &user, actions));
    }

    /// Keys of the objects in the bucket under `prefix`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.s3
            .list(bucket, prefix)
            .into_iter()
            .map(|o| o.key)
            .collect()
    }
}

/// What the volume should read as: zeros with qemu-io `write -P` fills.
struct Expected(Vec<u8>);

impl Expected {
    fn fill(&mut self, pattern: u8, offset: u64, len: u64) -> String {
        self.0[offset as usize..(offset + len) as usize].fill(pattern);
        format!("write -P {pattern} {offset} {len}")
    }
}

fn sector(raw: &[u8], data_offset: u64) -> &[u8] {
    &raw[(DATA_OFFSET + data_offset) as usize..(DATA_OFFSET + data_offset + 4096) as usize]
}

/// `volume restore --key`: the new key in `volume info`, a new wrapped key,
/// the same content, new ciphertext, holes kept; the old key's user cannot
/// attach it; a tampered chunk fails the restore naming the object.
#[test]
fn restore_under_another_key_is_a_new_lineage() {
    let env = Env::new();
    let size = 16 * MIB;
    let vol = env.fx.create_volume("src.vol", size, 4096);
    let mut data = Expected(vec![0; size as usize]);
    // Two whole chunks, and one 4 KiB sector in the middle of a third: the
    // rest of that chunk is holes (stored zeros) inside a stored chunk.
    let cmds = vec![
        data.fill(0x5a, 0, 2 * MIB),
        data.fill(0xa5, 9 * MIB + 8192, 4096),
    ];
    env.write(&vol, &cmds);
    let s = env.snapshot(&vol, &format!("s3://{}/src", env.bucket));
    let url = s["url"].as_str().unwrap().to_string();
    assert_eq!(s["chunks"].as_u64(), Some(3), "{s}");

    let r = env.restore(&url, "rekeyed.vol", Some(&env.other_key), &vol);
    let info = env.fx.info_json(&r.path);
    let old_info = env.fx.info_json(&vol.path);
    assert_eq!(
        info["key_arn"],
        env.other_key.as_str(),
        "volume info names the new key"
    );
    assert_ne!(info["wrapped_key"], old_info["wrapped_key"]);
    assert_ne!(r.uuid, vol.uuid);
    assert!(
        env.read_all(&r) == data.0,
        "the volume restored under another key reads differently from what was written"
    );
    // Every stored sector is new ciphertext; holes stayed holes.
    let (old_raw, new_raw) = (vol.read_raw(), r.read_raw());
    for at in [0, MIB, 2 * MIB - 4096, 9 * MIB + 8192] {
        let (o, n) = (sector(&old_raw, at), sector(&new_raw, at));
        assert!(o.iter().any(|&b| b != 0) && n.iter().any(|&b| b != 0));
        assert_ne!(o, n, "sector at {at} was copied, not re-encrypted");
    }
    for at in [9 * MIB, 9 * MIB + 4096, 9 * MIB + 12288, 10 * MIB - 4096] {
        assert!(
            sector(&new_raw, at).iter().all(|&b| b == 0),
            "the hole at {at} was filled"
        );
    }

    // A user the old key allows (it can attach the source) but the new key
    // does not name cannot attach the restored volume.
    env.fx.add_user("olduser");
    env.allow(&env.fx.key_arn, "olduser", &["kms:Decrypt"]);
    env.fx.serve("olduser", &vol).stop();
    let out = env.fx.serve_refused("olduser", &r);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_clean_line("old key's user attaching the rekeyed volume", &stderr);
    assert!(
        stderr.contains("AccessDeniedException") && stderr.contains(&env.other_key),
        "{stderr}"
    );

    // A tampered chunk: the re-encrypting restore fails naming it, and
    // removes what it created.
    let chunk = env
        .keys(&env.bucket, "src/chunks/")
        .into_iter()
        .next()
        .unwrap();
    let scratch = env.fx.path("scratch");
    let mut bytes = env.s3.get(&env.bucket, &chunk, &scratch);
    bytes[100] ^= 0x80;
    env.s3.put(&env.bucket, &chunk, &bytes, &scratch);
    let target = env.fx.path("tampered.vol");
    let (_, stderr) = run_fails(&mut env.envol_as(
        ADMIN,
        &[
            "volume",
            "restore",
            &url,
            "--to",
            target.to_str().unwrap(),
            "--key",
            &env.other_key,
        ],
    ));
    assert_one_clean_line("tampered chunk, rekeyed restore", &stderr);
    assert!(
        stderr.contains(&format!("s3://{}/{chunk}", env.bucket)) && stderr.contains("damaged"),
        "the error names the object: {stderr}"
    );
    assert!(stderr.contains("was removed"), "{stderr}");
    assert!(!target.exists(), "the partly restored volume is removed");
}

/// `snapshot copy` into another bucket, with and without `--key`: each copy
/// restores to the same content; the same-key copy shares chunks and
/// lineage, the `--key` copy is a new lineage under the new key; a user no
/// key policy names cannot copy, or restore under another key.
#[test]
fn copies_to_another_bucket_restore_equal_with_and_without_key() {
    let env = Env::new();
    let size = 8 * MIB;
    let vol = env.fx.create_volume("c.vol", size, 512);
    let mut data = Expected(vec![0; size as usize]);
    let cmds = vec![
        data.fill(0x31, MIB, MIB),
        data.fill(0x32, 4 * MIB + 512, 1536),
        data.fill(0x33, 7 * MIB, MIB),
    ];
    env.write(&vol, &cmds);
    let s = env.snapshot(&vol, &format!("s3://{}/a", env.bucket));
    let url = s["url"].as_str().unwrap().to_string();
    let chunks = s["chunks"].as_u64().unwrap();
    assert_eq!(chunks, 3, "{s}");
    let dest_bucket = env.s3.new_bucket("envol-rekey-dst");
    let dest = format!("s3://{dest_bucket}/copies");

    // Same key: every chunk uploaded once; a second copy uploads nothing,
    // and names the first as its parent.
    let c1 = env.json(&["snapshot", "copy", &url, "--to", &dest]);
    assert_eq!(c1["rekeyed"], false);
    assert_eq!(c1["key_arn"], env.fx.key_arn.as_str());
    assert_eq!(c1["objects_added"].as_u64(), Some(chunks), "{c1}");
    assert_eq!(c1["volume_uuid"], vol.uuid.as_str());
    assert_eq!(c1["parent"], Value::Null);
    let c1_url = c1["url"].as_str().unwrap().to_string();
    assert!(c1_url.starts_with(&format!("{dest}/snap-")), "{c1_url}");
    assert_ne!(c1["id"], s["id"]);
    let c2 = env.json(&["snapshot", "copy", &url, "--to", &dest]);
    assert_eq!(c2["objects_added"].as_u64(), Some(0), "{c2}");
    assert_eq!(c2["parent"], c1["id"]);
    let dest_chunks = env.keys(&dest_bucket, "copies/chunks/");
    assert_eq!(dest_chunks.len() as u64, chunks);
    let src_chunks: Vec<String> = env
        .keys(&env.bucket, "a/chunks/")
        .into_iter()
        .map(|k| k.replace("a/chunks/", "copies/chunks/"))
        .collect();
    assert_eq!(
        dest_chunks, src_chunks,
        "a same-key copy holds the same chunk objects"
    );

    // Another key: a new lineage, every chunk re-encrypted.
    let c3 = env.json(&[
        "snapshot",
        "copy",
        &url,
        "--to",
        &dest,
        "--key",
        &env.other_key,
    ]);
    assert_eq!(c3["rekeyed"], true);
    assert_eq!(c3["key_arn"], env.other_key.as_str());
    assert_eq!(c3["objects_added"].as_u64(), Some(chunks), "{c3}");
    assert_eq!(c3["parent"], Value::Null);
    assert_ne!(c3["volume_uuid"], vol.uuid.as_str(), "a new lineage");
    assert_eq!(
        env.keys(&dest_bucket, "copies/chunks/").len() as u64,
        2 * chunks,
        "the re-encrypted chunks are new objects"
    );
    let c3_url = c3["url"].as_str().unwrap().to_string();
    let described = run_ok(&mut {
        let mut cmd = env.fx.envol(&["snapshot", "describe", &c3_url]);
        cmd.args(env.s3.envol_args());
        cmd
    });
    assert!(described.contains(&env.other_key), "{described}");
    assert!(
        env.keys(&dest_bucket, "copies/")
            .iter()
            .all(|k| !k.ends_with("in-progress")),
        "no in-progress marker is left"
    );

    // Each copy restores to what was written, under its own key.
    let r1 = env.restore(&c1_url, "c1.vol", None, &vol);
    assert!(
        env.read_all(&r1) == data.0,
        "same-key copy restores differently"
    );
    assert_eq!(
        env.fx.info_json(&r1.path)["key_arn"],
        env.fx.key_arn.as_str()
    );
    let r3 = env.restore(&c3_url, "c3.vol", None, &vol);
    assert!(
        env.read_all(&r3) == data.0,
        "--key copy restores differently"
    );
    assert_eq!(
        env.fx.info_json(&r3.path)["key_arn"],
        env.other_key.as_str()
    );

    // A user no key policy names: cannot copy (with or without --key) nor
    // restore under another key; nothing appears in the destination.
    env.fx.add_user("mallory");
    let before = env.keys(&dest_bucket, "");
    for key in [None, Some(env.other_key.as_str())] {
        let mut args = vec!["snapshot", "copy", url.as_str(), "--to", dest.as_str()];
        args.extend(key.map(|k| ["--key", k]).into_iter().flatten());
        let (_, stderr) = run_fails(&mut env.envol_as("mallory", &args));
        assert_one_clean_line("refused copy", &stderr);
        assert!(
            stderr.contains("AccessDeniedException") && stderr.contains(&url),
            "{stderr}"
        );
    }
    assert_eq!(
        env.keys(&dest_bucket, ""),
        before,
        "a refused copy wrote something"
    );
    let target: PathBuf = env.fx.path("stolen.vol");
    let (_, stderr) = run_fails(&mut env.envol_as(
        "mallory",
        &[
            "volume",
            "restore",
            &url,
            "--to",
            target.to_str().unwrap(),
            "--key",
            &env.other_key,
        ],
    ));
    assert_one_clean_line("refused rekeyed restore", &stderr);
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");
    assert!(!target.exists());

    // Bad input: one line each, nothing written.
    for (args, says) in [
        (
            vec!["snapshot", "copy", "s3://abc/x", "--to", dest.as_str()],
            "is not a snapshot",
        ),
        (
            vec![
                "snapshot",
                "copy",
                url.as_str(),
                "--to",
                "s3://Bad_Bucket/x",
            ],
            "not a valid bucket name",
        ),
        (
            vec!["snapshot", "copy", url.as_str(), "--to", c1_url.as_str()],
            "names a snapshot",
        ),
        (
            vec![
                "snapshot",
                "copy",
                url.as_str(),
                "--to",
                "s3://envol-no-such-bucket-h5/x",
            ],
            "does not exist",
        ),
    ] {
        let (_, stderr) = run_fails(&mut env.envol_as(ADMIN, &args));
        assert_one_clean_line("bad copy", &stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(env.keys(&dest_bucket, ""), before);
}
