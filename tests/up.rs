//! `envol up`: one command brings up an embedded KMS, a default key and
//! volume, served over NBD; a second run reuses all of it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::envol;
use common::tools::{qemu_io, soft_open_file_limit, with_open_file_limit};

struct Up {
    child: Child,
    uri: String,
    output: String,
}

/// The `envol up` command line: data in `data`, HOME and the AWS files in
/// `home`, both listeners on ephemeral loopback ports (tests run in
/// parallel).
fn up_command(data: &Path, home: &Path) -> Command {
    let mut c = envol();
    c.args([
        "up",
        "--size",
        "64M",
        "--listen",
        "127.0.0.1:0",
        "--kms-listen",
        "127.0.0.1:0",
        "--data",
    ])
    .arg(data)
    .env("HOME", home)
    .env("AWS_SHARED_CREDENTIALS_FILE", home.join(".aws/credentials"))
    .env("AWS_CONFIG_FILE", home.join(".aws/config"));
    c
}

/// [`up_command`], started; returns once it prints where it serves.
fn start(data: &Path, home: &Path) -> Up {
    let mut child = up_command(data, home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = String::new();
    let mut uri = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        output.push_str(&line);
        output.push('\n');
        if uri.is_none() {
            uri = line
                .split_whitespace()
                .find(|w| w.starts_with("nbd+unix://"))
                .map(str::to_string);
        }
        if line.starts_with("Stop with Ctrl-C") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Up {
        child,
        uri: uri.unwrap_or_else(|| panic!("no nbd+unix URI in:\n{output}")),
        output,
    }
}

fn stop(mut up: Up) {
    Command::new("kill")
        .args(["-INT", &up.child.id().to_string()])
        .status()
        .unwrap();
    let status = up.child.wait().unwrap();
    assert!(status.success(), "envol up exited with {status}");
}

#[test]
fn up_creates_everything_once_and_reuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("envol");
    let first = start(&data, tmp.path());
    assert!(
        first
            .output
            .contains("Created master key alias/envol-default"),
        "{}",
        first.output
    );
    assert!(first.output.contains("Created volume"), "{}", first.output);
    assert!(
        first.output.contains("nbd-client"),
        "how to attach: {}",
        first.output
    );
    qemu_io(
        &first.uri,
        &["read -P 0 0 1M", "write -P 0x5a 12345 100000"],
    );
    stop(first);

    let second = start(&data, tmp.path());
    assert!(
        !second.output.contains("Created"),
        "second run reuses: {}",
        second.output
    );
    qemu_io(&second.uri, &["read -P 0x5a 12345 100000"]);
    stop(second);

    let vol = std::fs::read(data.join("volumes/default.vol")).unwrap();
    assert_eq!(vol.len() as u64, (64 << 20) + (1 << 20));
    // The pattern went through the cipher: 100000 bytes of 0x5a are not on disk.
    assert!(!vol.windows(4096).any(|w| w.iter().all(|&b| b == 0x5a)));
}

/// The AWS CLI with only the profile files under `home` (no ambient AWS
/// settings), as a newcomer would run it right after `envol up`.
fn aws(home: &Path, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new("aws");
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .args(["--profile", "envol-up", "--output", "json"])
        .env("HOME", home)
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join(".aws/credentials"))
        .env("AWS_CONFIG_FILE", home.join(".aws/config"))
        .output()
        .expect("the AWS CLI (`aws`) must be installed: pip install awscli");
    assert!(
        out.status.success(),
        "aws {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The default key's id, as `aws kms list-keys --profile envol-up` lists it.
fn default_key_listed(home: &Path) -> String {
    let key = aws(
        home,
        &["kms", "describe-key", "--key-id", "alias/envol-default"],
    );
    let id = key["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let keys = aws(home, &["kms", "list-keys"]);
    let listed: Vec<&str> = keys["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["KeyId"].as_str())
        .collect();
    assert!(listed.contains(&id.as_str()), "{id} not in {listed:?}");
    id
}

#[test]
fn up_writes_a_profile_the_aws_cli_uses_and_never_prints_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let data = home.join("envol");
    let first = start(&data, home);
    let credentials = std::fs::read_to_string(home.join(".aws/credentials")).unwrap();
    let secret = credentials
        .lines()
        .find_map(|l| l.strip_prefix("aws_secret_access_key = "))
        .unwrap_or_else(|| panic!("no secret in {credentials}"))
        .to_string();
    assert_eq!(secret.len(), 40);
    assert!(!first.output.contains(&secret), "{}", first.output);
    assert!(
        !first.output.contains("aws_secret_access_key"),
        "{}",
        first.output
    );
    assert!(
        first.output.contains("--profile envol-up"),
        "{}",
        first.output
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(home.join(".aws/credentials"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let config = std::fs::read_to_string(home.join(".aws/config")).unwrap();
    assert!(config.contains("[profile envol-up]"), "{config}");
    assert!(
        config.contains("endpoint_url = http://127.0.0.1:"),
        "{config}"
    );
    let id = default_key_listed(home);
    stop(first);

    // A second run (another ephemeral port): the secret is not printed again
    // and the rewritten profile follows the new endpoint.
    let second = start(&data, home);
    assert!(!second.output.contains(&secret), "{}", second.output);
    assert!(
        !second.output.contains("aws_secret_access_key"),
        "{}",
        second.output
    );
    assert_eq!(default_key_listed(home), id);
    stop(second);
}

#[test]
fn up_refuses_a_busy_kms_port_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = envol()
        .args([
            "up",
            "--size",
            "4M",
            "--listen",
            "127.0.0.1:0",
            "--kms-listen",
            &addr,
            "--data",
        ])
        .arg(tmp.path().join("envol"))
        .env("HOME", tmp.path())
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            tmp.path().join(".aws/credentials"),
        )
        .env("AWS_CONFIG_FILE", tmp.path().join(".aws/config"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("--kms-listen none"),
        "{stderr}"
    );
    // With the API off, `up` runs and writes no profile.
    let mut child = envol()
        .args([
            "up",
            "--size",
            "4M",
            "--listen",
            "127.0.0.1:0",
            "--kms-listen",
            "none",
            "--data",
        ])
        .arg(tmp.path().join("envol"))
        .env("HOME", tmp.path())
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            tmp.path().join(".aws/credentials"),
        )
        .env("AWS_CONFIG_FILE", tmp.path().join(".aws/config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut output = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        output.push_str(&line);
        output.push('\n');
        if line.starts_with("Stop with Ctrl-C") {
            break;
        }
    }
    assert!(!output.contains("envol-up"), "{output}");
    assert!(!tmp.path().join(".aws/credentials").exists());
    stop(Up {
        child,
        uri: String::new(),
        output,
    });
}

/// Two `envol up` on one data directory: the second is refused in one line
/// naming the first's pid, before it binds or rewrites the profile; the
/// first keeps serving.
#[test]
fn second_up_on_the_same_data_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("envol");
    let first = start(&data, tmp.path());
    let config = std::fs::read_to_string(tmp.path().join(".aws/config")).unwrap();
    let out = common::volume::output_with_timeout(
        up_command(&data, tmp.path()).env_remove("ENVOL_LOG"),
        std::time::Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second up ran: {stderr}");
    common::volume::assert_one_clean_line("second up", &stderr);
    assert!(
        stderr.contains(&format!(
            "already attached read-write by pid {} (",
            first.child.id()
        )) && stderr.contains("default.vol")
            && stderr.contains(" up "),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("nbd+unix://"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join(".aws/config")).unwrap(),
        config,
        "the refused up rewrote the profile"
    );
    qemu_io(&first.uri, &["write -P 0x21 0 4k", "read -P 0x21 0 4k"]);
    stop(first);
}

/// `up` raises the soft open-file limit once, at start, to what both its
/// servers need — the NBD socket and TCP listeners at the default 256
/// places each (two descriptors per connection), the embedded KMS's 512
/// connections, and 64 more — before the KMS sizes its connection cap by
/// that limit, so the KMS keeps its 512 (it lowers its cap, with a
/// warning, when the limit leaves no room for it).
#[test]
fn up_raises_the_open_file_limit_for_nbd_and_the_kms_before_either_serves() {
    const NEEDED: u64 = 2 * 2 * 256 + 512 + 64;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("envol");
    let log = tmp.path().join("up.log");
    let mut child = with_open_file_limit(&up_command(&data, tmp.path()), 200, 4096)
        .env_remove("ENVOL_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ready = false;
    for line in lines.map_while(Result::ok) {
        if line.starts_with("Stop with Ctrl-C") {
            ready = true;
            break;
        }
    }
    let soft = ready.then(|| soft_open_file_limit(child.id()));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(ready && status.success(), "envol up: {status}\n{stderr}");
    eprintln!("envol up under a soft open-file limit of 200: raised to {soft:?}");
    assert_eq!(soft, Some(NEEDED), "{stderr}");
    assert!(
        !stderr.contains("lowered") && !stderr.contains("open-file limit is below"),
        "{stderr}"
    );
}
