//! `envol volume reencrypt` (issue 15) against the real KMS: a new data
//! key from the KMS, every written sector rewritten under it, holes left
//! holes, the old wrapped key gone. Checked from outside envol: the data
//! area decrypts with the new key (unwrapped by the KMS, decrypted by
//! OpenSSL through Python) and not with the old one. A caller the key
//! policy refuses cannot start; a key disabled mid-way stops it in one
//! line, the volume still serves (both halves) once the key is enabled
//! again, and running the command again resumes where it stopped.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::tools::qemu_io;
use common::volume::{
    ADMIN, DATA_OFFSET, Fixture, MIB, Vol, assert_one_clean_line, output_with_timeout, run_fails,
    run_ok,
};
use common::xts_oracle::openssl_decrypt;

/// The data area's bytes `[from, from + len)` as stored.
fn stored(vol: &Vol, from: u64, len: u64) -> Vec<u8> {
    let raw = vol.read_raw();
    raw[(DATA_OFFSET + from) as usize..(DATA_OFFSET + from + len) as usize].to_vec()
}

/// `[from, from + len)` of the data area decrypts to `fill` bytes under
/// `key`, by OpenSSL.
fn decrypts_to(key: &[u8], vol: &Vol, from: u64, len: u64, fill: u8) -> bool {
    let ss = u64::from(vol.sector_size);
    let plain = openssl_decrypt(key, ss as usize, from / ss, &stored(vol, from, len));
    plain.iter().all(|&b| b == fill)
}

fn reencrypt_args(vol: &Vol) -> Vec<&str> {
    vec!["volume", "reencrypt", vol.path.to_str().unwrap(), "--quiet"]
}

#[test]
fn every_written_sector_moves_to_a_new_key_that_openssl_reads_and_holes_stay_holes() {
    let fx = Fixture::new();
    for ss in [4096u32, 512] {
        let vol = fx.create_volume(&format!("rotate-{ss}.vol"), 16 * MIB, ss);
        let server = fx.serve(ADMIN, &vol);
        qemu_io(
            server.first_uri(),
            &[
                "write -P 0x11 0 4M",
                "write -P 0x22 8M 2M",
                "write -P 0x33 15M 1M",
            ],
        );
        server.stop();
        let old_key = fx.unwrap_data_key(&vol);
        let before = fx.info_json(&vol.path);
        assert!(decrypts_to(&old_key, &vol, 0, MIB, 0x11));

        let out = run_ok(&mut fx.envol_as(ADMIN, &reencrypt_args(&vol)));
        assert!(out.contains("Re-encrypted"), "{out}");
        let after = fx.info_json(&vol.path);
        assert_eq!(
            after["key_arn"], before["key_arn"],
            "same master key by default"
        );
        assert_ne!(after["wrapped_key"], before["wrapped_key"]);
        assert_eq!(after["reencryption"], serde_json::Value::Null, "{after}");
        for copy in ["primary", "secondary"] {
            assert_eq!(after["superblocks"][copy]["valid"], true, "{after}");
        }
        let new_key = fx.unwrap_data_key(&vol);
        assert_ne!(new_key, old_key);
        for (from, len, fill) in [
            (0, 4 * MIB, 0x11),
            (8 * MIB, 2 * MIB, 0x22),
            (15 * MIB, MIB, 0x33),
        ] {
            assert!(
                decrypts_to(&new_key, &vol, from, len, fill),
                "ss {ss} at {from}: new key"
            );
            assert!(
                !decrypts_to(&old_key, &vol, from, len, fill),
                "ss {ss} at {from}: old key"
            );
            // Not one sector of it decrypts under the old key.
            let under_old = openssl_decrypt(
                &old_key,
                ss as usize,
                from / u64::from(ss),
                &stored(&vol, from, len),
            );
            assert!(
                under_old
                    .chunks(ss as usize)
                    .all(|s| s.iter().any(|&b| b != fill)),
                "ss {ss}: a sector still decrypts under the old key"
            );
        }
        // Never-written sectors are still holes: zeros as stored.
        assert!(
            stored(&vol, 4 * MIB, 4 * MIB).iter().all(|&b| b == 0),
            "ss {ss}"
        );
        assert!(
            stored(&vol, 10 * MIB, 5 * MIB).iter().all(|&b| b == 0),
            "ss {ss}"
        );
        // And it serves, under the new key.
        let server = fx.serve(ADMIN, &vol);
        qemu_io(
            server.first_uri(),
            &[
                "read -P 0x11 0 4M",
                "read -P 0 4M 4M",
                "read -P 0x22 8M 2M",
                "read -P 0x33 15M 1M",
            ],
        );
        server.stop();
    }
}

#[test]
fn a_caller_the_key_policy_refuses_cannot_start_and_nothing_changes() {
    let fx = Fixture::new();
    let vol = fx.create_volume("guarded.vol", 8 * MIB, 4096);
    fx.add_user("mallory");
    let head = std::fs::read(&vol.path).unwrap()[..DATA_OFFSET as usize].to_vec();
    let (_, stderr) = run_fails(&mut fx.envol_as("mallory", &reencrypt_args(&vol)));
    assert_one_clean_line("refused reencrypt", &stderr);
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    assert_eq!(
        std::fs::read(&vol.path).unwrap()[..DATA_OFFSET as usize],
        head[..],
        "superblocks and change map unchanged"
    );
}

#[test]
fn a_disabled_key_stops_it_in_one_line_and_it_resumes_after_enabling() {
    let fx = Fixture::new();
    let vol = fx.create_volume("paused.vol", 32 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.first_uri(),
        &["write -P 0x44 0 12M", "write -P 0x55 20M 12M"],
    );
    server.stop();
    let old_key = fx.unwrap_data_key(&vol);

    // 4 MiB/s: about eight seconds for the whole volume.
    let mut args = reencrypt_args(&vol);
    args.extend(["--max-rate", "4M"]);
    let child = fx
        .envol_as(ADMIN, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = fx.info_json(&vol.path);
        if info["reencryption"]["done_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let admin = fx.kms.client(&fx.admin);
    let key = fx.key_arn.clone();
    fx.rt.block_on(async {
        admin.disable_key().key_id(&key).send().await.unwrap();
    });
    let stopped_at = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "it ran on with the key disabled: {stderr}"
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(5),
        "stopped only after {:?}",
        stopped_at.elapsed()
    );
    assert_one_clean_line("stopped by a disabled key", &stderr);
    assert!(
        stderr.contains("DisabledException") && stderr.contains("resumes"),
        "{stderr}"
    );

    // Part done, part not: info says so.
    let info = fx.info_json(&vol.path);
    let done = info["reencryption"]["done_bytes"].as_u64().unwrap();
    assert!(done > 0 && done < 32 * MIB, "{info}");
    let text = run_ok(&mut fx.envol(&["volume", "info", vol.path.to_str().unwrap()]));
    assert!(
        text.contains("re-encrypting:") && text.contains("ETA"),
        "{text}"
    );

    // Still disabled: a retry stops at once, in one line.
    let (_, stderr) = run_fails(&mut fx.envol_as(ADMIN, &reencrypt_args(&vol)));
    assert_one_clean_line("retry with the key disabled", &stderr);
    assert!(stderr.contains("disabled"), "{stderr}");

    fx.rt.block_on(async {
        admin.enable_key().key_id(&key).send().await.unwrap();
    });
    // In transition, the volume serves both halves, and takes writes on
    // both sides of the watermark.
    let server = fx.serve(ADMIN, &vol);
    qemu_io(
        server.first_uri(),
        &[
            "read -P 0x44 0 12M",
            "read -P 0 12M 8M",
            "read -P 0x55 20M 12M",
            "write -P 0x66 1M 64k",
            "write -P 0x77 30M 64k",
        ],
    );
    server.stop();

    let out = output_with_timeout(
        &mut fx.envol_as(ADMIN, &reencrypt_args(&vol)),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("resumed at"), "{stdout}");
    let new_key = fx.unwrap_data_key(&vol);
    assert!(decrypts_to(&new_key, &vol, 0, MIB, 0x44));
    assert!(decrypts_to(&new_key, &vol, MIB, 64 * 1024, 0x66));
    assert!(decrypts_to(&new_key, &vol, 30 * MIB, 64 * 1024, 0x77));
    assert!(decrypts_to(&new_key, &vol, 31 * MIB, MIB, 0x55));
    assert!(!decrypts_to(&old_key, &vol, 31 * MIB, MIB, 0x55));
    assert!(stored(&vol, 12 * MIB, 8 * MIB).iter().all(|&b| b == 0));
}

#[test]
fn a_killed_run_resumes_and_loses_nothing() {
    let fx = Fixture::new();
    let vol = fx.create_volume("killed.vol", 16 * MIB, 512);
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["write -P 0x5c 0 16M"]);
    server.stop();
    let mut args = reencrypt_args(&vol);
    args.extend(["--max-rate", "2M"]);
    let mut child = fx
        .envol_as(ADMIN, &args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fx.info_json(&vol.path)["reencryption"]["done_bytes"]
        .as_u64()
        .unwrap_or(0)
        < 2 * MIB
    {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Serve first (recovers any interrupted step), then resume.
    let server = fx.serve(ADMIN, &vol);
    qemu_io(server.first_uri(), &["read -P 0x5c 0 16M"]);
    server.stop();
    let out = run_ok(&mut fx.envol_as(ADMIN, &reencrypt_args(&vol)));
    assert!(out.contains("resumed at"), "{out}");
    let key = fx.unwrap_data_key(&vol);
    assert!(decrypts_to(&key, &vol, 0, 16 * MIB, 0x5c));
}
