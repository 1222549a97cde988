//! Talking to a running `envol serve` through its control socket, and
//! the NBD clients the control-socket tests hold and query: shared by
//! `control_socket.rs` and `volume_grow.rs`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::volume::{Fixture, output_with_timeout, run_ok};

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The control socket a server on NBD socket `socket` has by default.
pub fn control_of(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".control");
    PathBuf::from(p)
}

/// `envol ARGS... --control PATH` (AWS settings of the fixture only: the
/// control commands need none).
pub fn envol_control(fx: &Fixture, control: &Path, args: &[&str]) -> Command {
    let mut cmd = fx.envol(args);
    cmd.arg("--control").arg(control);
    cmd
}

pub fn status(fx: &Fixture, control: &Path) -> Vec<Value> {
    let out = run_ok(&mut envol_control(fx, control, &["status", "--json"]));
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    json["exports"].as_array().expect("exports").clone()
}

pub fn export<'a>(exports: &'a [Value], name: &str) -> &'a Value {
    exports
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no export {name} in {exports:?}"))
}

/// Polls status (bounded) until `check` holds for export `name`.
pub fn wait_status(
    fx: &Fixture,
    control: &Path,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let exports = status(fx, control);
        if exports.iter().any(|e| e["name"] == name && check(e)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "export {name} never {what}: {exports:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One NBD connection held open by libnbd (tests/python/nbd_holder.py),
/// driven line by line.
pub struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    pub fn connect(uri: &str) -> Holder {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/nbd_holder.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with libnbd's nbd module (python3-libnbd)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut h = Holder {
            child,
            stdin,
            stdout,
        };
        assert_eq!(h.line(), "connected");
        h
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    pub fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }

    pub fn ok(&mut self, command: &str) {
        assert_eq!(self.ask(command), "ok", "{command}");
    }

    pub fn quit(mut self) {
        assert_eq!(self.ask("quit"), "bye");
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nbdinfo_size(uri: &str) -> Result<u64, String> {
    let out = output_with_timeout(Command::new("nbdinfo").args(["--size", uri]), TIMEOUT);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

/// The `nbd+unix://` URI `envol attach` printed for `name`.
pub fn attached_uri(stdout: &str, name: &str) -> String {
    stdout
        .split_whitespace()
        .find(|w| w.starts_with(&format!("nbd+unix:///{name}?")))
        .unwrap_or_else(|| panic!("no URI for {name} in {stdout}"))
        .to_string()
}
