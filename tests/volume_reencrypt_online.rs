//! Online re-encryption (issue 15): `envol volume reencrypt` of a volume a
//! server has attached runs inside that server, through its control
//! socket, while clients read and write. Real processes throughout: the
//! KMS (`kms serve`), `envol serve`, fio's nbd engine and qemu-io as
//! clients, OpenSSL (through Python) as the independent decryption.
//!
//! - under fio verify writers, every written sector ends under a new key
//!   that OpenSSL reads, holes stay holes, `status` showed the progress;
//! - a caller the key policy refuses cannot start it (its own KMS calls
//!   come first), and the server starts nothing;
//! - a disabled key stops it in one line; enabled again, it resumes;
//! - `kill -9` of the server in the middle, 10 cycles under fio writers:
//!   each restart recovers, `reencrypt` again resumes from where it was,
//!   and every write fio had acknowledged verifies.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::control::{control_of, export, status};
use common::tools::qemu_io;
use common::volume::{
    ADMIN, DATA_OFFSET, Fixture, MIB, Vol, assert_one_clean_line, output_with_timeout,
    require_tool, run_fails,
};
use common::xts_oracle::openssl_decrypt;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

fn stored(vol: &Vol, from: u64, len: u64) -> Vec<u8> {
    let raw = vol.read_raw();
    raw[(DATA_OFFSET + from) as usize..(DATA_OFFSET + from + len) as usize].to_vec()
}

fn decrypts_to(key: &[u8], vol: &Vol, from: u64, len: u64, fill: u8) -> bool {
    let ss = u64::from(vol.sector_size);
    let plain = openssl_decrypt(key, ss as usize, from / ss, &stored(vol, from, len));
    plain.iter().all(|&b| b == fill)
}

/// `envol volume reencrypt VOL --quiet --control C EXTRA...` as `profile`.
fn reencrypt(fx: &Fixture, profile: &str, vol: &Vol, control: &Path, extra: &[&str]) -> Command {
    let mut args = vec![
        "volume",
        "reencrypt",
        vol.path.to_str().unwrap(),
        "--quiet",
        "--control",
        control.to_str().unwrap(),
    ];
    args.extend(extra);
    fx.envol_as(profile, &args)
}

/// The export's `reencryption` in `status`, once `check` holds (bounded).
fn wait_reencryption(
    fx: &Fixture,
    control: &Path,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let exports = status(fx, control);
        let r = export(&exports, name)["reencryption"].clone();
        if check(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "never {what}: {exports:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn running_past(bytes: u64) -> impl Fn(&Value) -> bool {
    move |r| r["state"] == "running" && r["done_bytes"].as_u64().unwrap_or(0) > bytes
}

/// fio (nbd engine) sequential writes of `[offset, offset + size)` with
/// crc32c verify blocks; `verify_only` reads them back and checks.
fn fio_region(dir: &Path, uri: &str, name: &str, offset: u64, size: u64, verify_only: bool) {
    let mut c = Command::new("fio");
    c.current_dir(dir)
        .args(["--ioengine=nbd", &format!("--uri={uri}")])
        .arg(format!("--name={name}"))
        .args(["--rw=write", "--bs=64k", "--iodepth=8", "--verify=crc32c"])
        .arg(format!("--offset={offset}"))
        .arg(format!("--size={size}"));
    if verify_only {
        c.arg("--verify_only");
    }
    let out = output_with_timeout(&mut c, TIMEOUT);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{c:?} failed:\n{text}");
    assert!(!text.contains("verify: bad"), "{text}");
}

/// fio random writers over `[offset, offset + size)` until killed or its
/// server goes: load at the moment of a kill (their writes in flight are
/// not acknowledged, so not checked).
fn fio_churn(dir: &Path, uri: &str, offset: u64, size: u64) -> Child {
    Command::new("fio")
        .current_dir(dir)
        .args(["--ioengine=nbd", &format!("--uri={uri}")])
        .args(["--name=churn", "--rw=randwrite", "--bs=4k", "--iodepth=16"])
        .args(["--verify=crc32c", "--time_based", "--runtime=60"])
        .arg(format!("--offset={offset}"))
        .arg(format!("--size={size}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fio")
}

fn fio_dir(fx: &Fixture) -> PathBuf {
    let dir = fx.path("fio");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn online_under_fio_writers_every_sector_moves_to_a_new_key_and_holes_stay_holes() {
    require_tool("fio", "fio");
    let fx = Fixture::new();
    let vol = fx.create_volume("online.vol", 64 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let control = control_of(&server.socket);
    let name = vol.export();
    qemu_io(server.first_uri(), &["write -P 0x44 0 16M"]);
    let old_key = fx.unwrap_data_key(&vol);

    // 8 MiB/s: the fio writers below run while it does.
    let child = reencrypt(&fx, ADMIN, &vol, &control, &["--max-rate", "8M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = wait_reencryption(&fx, &control, &name, "progressed", running_past(0));
    assert_eq!(seen["total_bytes"].as_u64(), Some(64 * MIB), "{seen}");
    // `volume info` of the attached volume shows it too (from the
    // superblock the server updates each step).
    let info = fx.info_json(&vol.path);
    assert!(
        info["reencryption"]["total_bytes"].as_u64() == Some(64 * MIB),
        "{info}"
    );
    let dir = fio_dir(&fx);
    // Writers on both sides of the watermark while it moves.
    fio_region(&dir, server.first_uri(), "low", 4 * MIB, 4 * MIB, false);
    fio_region(&dir, server.first_uri(), "high", 40 * MIB, 8 * MIB, false);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("online"), "{stdout}");
    let done = wait_reencryption(&fx, &control, &name, "done", |r| r["state"] == "done");
    assert_eq!(done["done_bytes"].as_u64(), Some(64 * MIB), "{done}");
    // Still served, every write there.
    fio_region(&dir, server.first_uri(), "low", 4 * MIB, 4 * MIB, true);
    fio_region(&dir, server.first_uri(), "high", 40 * MIB, 8 * MIB, true);
    qemu_io(
        server.first_uri(),
        &["read -P 0x44 0 4M", "read -P 0x44 8M 8M"],
    );
    let exports = status(&fx, &control);
    let info = fx.info_json(&vol.path);
    assert!(info["reencryption"].is_null(), "{info}");
    assert_eq!(export(&exports, &name)["key_arn"], info["key_arn"]);
    server.stop();

    let new_key = fx.unwrap_data_key(&vol);
    assert_ne!(new_key, old_key);
    assert!(decrypts_to(&new_key, &vol, 0, 4 * MIB, 0x44));
    assert!(decrypts_to(&new_key, &vol, 8 * MIB, 8 * MIB, 0x44));
    assert!(!decrypts_to(&old_key, &vol, 8 * MIB, 8 * MIB, 0x44));
    // Never written: still holes (zeros), not encrypted zeros.
    assert!(stored(&vol, 16 * MIB, 24 * MIB).iter().all(|&b| b == 0));
}

#[test]
fn a_caller_the_key_policy_refuses_cannot_start_it_in_the_server() {
    let fx = Fixture::new();
    let vol = fx.create_volume("guarded.vol", 8 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let control = control_of(&server.socket);
    fx.add_user("mallory");
    let head = std::fs::read(&vol.path).unwrap()[..DATA_OFFSET as usize / 2].to_vec();
    let (_, stderr) = run_fails(&mut reencrypt(&fx, "mallory", &vol, &control, &[]));
    assert_one_clean_line("refused online reencrypt", &stderr);
    assert!(stderr.contains("AccessDenied"), "{stderr}");
    let exports = status(&fx, &control);
    assert!(
        export(&exports, &vol.export())["reencryption"].is_null(),
        "{exports:?}"
    );
    assert!(fx.info_json(&vol.path)["reencryption"].is_null());
    assert_eq!(
        std::fs::read(&vol.path).unwrap()[..DATA_OFFSET as usize / 2],
        head[..],
        "superblocks unchanged"
    );
    server.stop();
}

#[test]
fn a_disabled_key_stops_it_online_in_one_line_and_it_resumes_after_enabling() {
    let fx = Fixture::new();
    let vol = fx.create_volume("paused.vol", 32 * MIB, 4096);
    let server = fx.serve(ADMIN, &vol);
    let control = control_of(&server.socket);
    let name = vol.export();
    qemu_io(
        server.first_uri(),
        &["write -P 0x44 0 12M", "write -P 0x55 20M 12M"],
    );
    let child = reencrypt(&fx, ADMIN, &vol, &control, &["--max-rate", "4M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_reencryption(&fx, &control, &name, "progressed", running_past(0));
    let admin = fx.kms.client(&fx.admin);
    let key = fx.key_arn.clone();
    fx.rt.block_on(async {
        admin.disable_key().key_id(&key).send().await.unwrap();
    });
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it ran on with the key disabled");
    assert_one_clean_line("stopped online by a disabled key", &stderr);
    assert!(
        stderr.contains("DisabledException") && stderr.contains("resumes"),
        "{stderr}"
    );
    let stopped = export(&status(&fx, &control), &name)["reencryption"].clone();
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let at = stopped["done_bytes"].as_u64().unwrap();
    assert!(at > 0 && at < 32 * MIB, "{stopped}");
    // Clients keep both halves meanwhile.
    qemu_io(
        server.first_uri(),
        &[
            "read -P 0x44 0 12M",
            "read -P 0x55 20M 12M",
            "write -P 0x66 1M 64k",
        ],
    );

    fx.rt.block_on(async {
        admin.enable_key().key_id(&key).send().await.unwrap();
    });
    // Two resume requests at once (straight to the control socket, so they
    // arrive together, while the server's own KMS calls of the first are
    // under way): one resumes it, the other follows or is told to; never a
    // second stepping task beside the first.
    let replies = resume_twice_at_once(&control, &vol);
    let resumed = replies
        .iter()
        .filter(|r| r["reply"] == "reencrypt_started" && r["already_running"] == false)
        .count();
    assert_eq!(resumed, 1, "{replies:?}");
    assert!(
        replies.iter().all(|r| r["reply"] == "reencrypt_started"
            || r["message"]
                .as_str()
                .is_some_and(|m| m.contains("being begun"))),
        "{replies:?}"
    );
    let out = output_with_timeout(
        &mut reencrypt(&fx, ADMIN, &vol, &control, &["--max-rate", "64M"]),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("following") || stdout.contains("complete"),
        "{stdout}"
    );
    qemu_io(
        server.first_uri(),
        &["read -P 0x66 1M 64k", "read -P 0x55 20M 12M"],
    );
    server.stop();
    let new_key = fx.unwrap_data_key(&vol);
    assert!(decrypts_to(&new_key, &vol, 2 * MIB, 10 * MIB, 0x44));
    assert!(decrypts_to(&new_key, &vol, 20 * MIB, 12 * MIB, 0x55));
}

/// Sends the same resume request (`reencrypt`, no new key, 64 MiB/s) on two
/// control connections at once and returns both replies.
fn resume_twice_at_once(control: &Path, vol: &Vol) -> Vec<Value> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let request = serde_json::json!({
        "version": 1,
        "command": "reencrypt",
        "volume": vol.path.to_str().unwrap(),
        "max_rate": 64 * MIB,
    })
    .to_string()
        + "\n";
    let mut streams: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(control).unwrap())
        .collect();
    for s in &mut streams {
        s.write_all(request.as_bytes()).unwrap();
    }
    streams
        .into_iter()
        .map(|s| {
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap()
        })
        .collect()
}

/// Kill cycles of the server in the middle of an online re-encryption.
const KILL_CYCLES: u64 = 10;

#[test]
fn kill_9_of_the_server_mid_reencryption_under_fio_resumes_and_loses_nothing() {
    require_tool("fio", "fio");
    let fx = Fixture::new();
    let vol = fx.create_volume("killed.vol", 64 * MIB, 4096);
    let name = vol.export();
    let dir = fio_dir(&fx);
    let region = |cycle: u64| (cycle * 4 * MIB, 2 * MIB);
    let mut progress = Vec::new();
    for cycle in 0..KILL_CYCLES {
        let server = fx.serve(ADMIN, &vol);
        let control = control_of(&server.socket);
        let uri = server.first_uri().to_string();
        // Everything fio was told was written, before every earlier kill.
        for earlier in 0..cycle {
            let (offset, size) = region(earlier);
            fio_region(&dir, &uri, &format!("c{earlier}"), offset, size, true);
        }
        let mut child = reencrypt(&fx, ADMIN, &vol, &control, &["--max-rate", "2M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let since = progress.last().copied().unwrap_or(0);
        wait_reencryption(&fx, &control, &name, "resumed", |r| {
            r["state"] == "running" && r["done_bytes"].as_u64().unwrap_or(0) >= since
        });
        let mut churn = fio_churn(&dir, &uri, 48 * MIB, 16 * MIB);
        let (offset, size) = region(cycle);
        fio_region(&dir, &uri, &format!("c{cycle}"), offset, size, false);
        std::thread::sleep(Duration::from_millis(200 + 97 * cycle));
        let r = export(&status(&fx, &control), &name)["reencryption"].clone();
        assert_eq!(r["state"], "running", "cycle {cycle}: {r}");
        let done = r["done_bytes"].as_u64().unwrap();
        assert!(done < 64 * MIB, "cycle {cycle}: completed before the kill");
        progress.push(done);
        drop(server); // SIGKILL, and waits for it
        let _ = churn.wait();
        let _ = child.wait();
        let _ = child.kill();
    }
    assert!(
        progress.windows(2).all(|w| w[1] >= w[0])
            && progress[KILL_CYCLES as usize - 1] > progress[0],
        "it resumed, never went back: {progress:?}"
    );
    // The last restart: it runs to its end; every region still verifies.
    let server = fx.serve(ADMIN, &vol);
    let control = control_of(&server.socket);
    let out = output_with_timeout(
        &mut reencrypt(&fx, ADMIN, &vol, &control, &["--max-rate", "1G"]),
        TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for cycle in 0..KILL_CYCLES {
        let (offset, size) = region(cycle);
        fio_region(
            &dir,
            server.first_uri(),
            &format!("c{cycle}"),
            offset,
            size,
            true,
        );
    }
    server.stop();
    assert!(fx.info_json(&vol.path)["reencryption"].is_null());
    eprintln!(
        "{KILL_CYCLES} kill -9 cycles mid online re-encryption: watermark at each kill {progress:?} bytes; every acknowledged fio region verified after each restart"
    );
}
