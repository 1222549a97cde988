//! `envol up`: one command brings up an embedded KMS, a default key and
//! volume, served over NBD; a second run reuses all of it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::envol;
use common::tools::qemu_io;

struct Up {
    child: Child,
    uri: String,
    output: String,
}

fn start(data: &std::path::Path) -> Up {
    let mut child = envol()
        .args(["up", "--size", "64M", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
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
    let first = start(&data);
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

    let second = start(&data);
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
