//! An idle `envol serve` stops promptly on SIGTERM and on SIGINT (issue 11:
//! the target is 200 ms; it used to take 1.0–1.8 s), exits 0 and removes
//! its socket. "Idle" both before any client came and after clients of
//! both transmission loops attached and left. The busy case — in-flight
//! requests answered before the server stops — is covered by
//! `nbd_robustness`'s `shutdown_answers_what_was_sent_and_never_hangs` and
//! `volume_serve`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nbd::transmission_args;
use common::raw::*;
use common::volume::{ADMIN, Drained, Fixture, MIB, Vol, spawn_drained};
use envol::nbd::TransmissionLoop;
use rustix::process::{Pid, Signal, kill_process};

/// Generous for a loaded 2-core machine running other tests; the measured
/// figure is printed (`--nocapture`) and is what the 200 ms target is about.
const STOP_BOUND: Duration = Duration::from_secs(1);

/// A running `envol serve`, with its stderr collected for diagnostics.
struct Serve {
    child: Child,
    socket: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Serve {
    /// Starts `envol serve` and waits until it printed its URI.
    fn start(fx: &Fixture, vol: &Vol, extra: &[&str]) -> Serve {
        let socket = fx.fresh_socket_path();
        let Drained {
            child,
            stderr,
            lines,
            ..
        } = spawn_drained(&mut fx.serve_command(ADMIN, &[(vol, None)], &socket, extra));
        let serve = Serve {
            child,
            socket,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("nbd+unix://") => break,
                Ok(_) => {}
                Err(_) => panic!(
                    "envol serve did not print its URI within 60 s\nstderr:\n{}",
                    serve.stderr()
                ),
            }
        }
        serve
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Sends `signal`; returns how long the process took to exit, after
    /// checking that it exited 0 and removed its socket.
    fn stop_with(mut self, signal: Signal) -> Duration {
        let pid = Pid::from_raw(self.child.id() as i32).expect("a child has a pid");
        let sent = Instant::now();
        kill_process(pid, signal).expect("signal envol serve");
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for envol serve") {
                break status;
            }
            if sent.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "envol serve still running 20 s after {signal:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let took = sent.elapsed();
        assert!(
            status.success(),
            "envol serve exited with {status} after {signal:?} (expected 0)\nstderr:\n{}",
            self.stderr()
        );
        assert!(
            !self.socket.exists(),
            "envol serve left its socket {} behind",
            self.socket.display()
        );
        took
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client that attaches, writes, reads back and disconnects with DISC.
fn visit(socket: &Path) {
    let s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    let mut c = Raw::connect(s, 0b11);
    c.go("", &[]);
    c.request(CMD_WRITE, FLAG_FUA, 1, 0, 4096, &[0x5a; 4096]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 1,
            error: 0
        }
    );
    c.request(CMD_READ, 0, 2, 0, 4096, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 2,
            error: 0
        }
    );
    assert_eq!(c.read_data(4096), vec![0x5a; 4096]);
    c.request(CMD_DISC, 0, 3, 0, 0, &[]);
    assert!(c.is_closed(), "DISC closes the connection");
}

fn assert_prompt(what: &str, took: Duration) {
    eprintln!("{what}: exited {took:?} after the signal");
    assert!(
        took < STOP_BOUND,
        "{what}: exited {took:?} after the signal (bound {STOP_BOUND:?}, target 200 ms)"
    );
}

#[test]
fn idle_serve_stops_promptly_on_sigterm_and_sigint() {
    let fx = Fixture::new();
    let vol = fx.create_volume("idle.vol", 4 * MIB, 4096);

    for signal in [Signal::TERM, Signal::INT] {
        let serve = Serve::start(&fx, &vol, &[]);
        assert_prompt(&format!("never used, {signal:?}"), serve.stop_with(signal));
    }

    // Idle again after clients came and went, on either loop: their
    // connection threads and tasks must not hold the exit up.
    for transmission in [TransmissionLoop::Threaded, TransmissionLoop::Async] {
        for signal in [Signal::TERM, Signal::INT] {
            let serve = Serve::start(&fx, &vol, &transmission_args(transmission));
            visit(&serve.socket);
            visit(&serve.socket);
            assert_prompt(
                &format!("after clients of the {transmission:?} loop left, {signal:?}"),
                serve.stop_with(signal),
            );
        }
    }

    // A client attached but idle (as the kernel's nbd-client sits between
    // requests) has nothing in flight: it must not hold the exit up either,
    // and it sees the connection close.
    for transmission in [TransmissionLoop::Threaded, TransmissionLoop::Async] {
        for signal in [Signal::TERM, Signal::INT] {
            let serve = Serve::start(&fx, &vol, &transmission_args(transmission));
            visit(&serve.socket);
            let s = std::os::unix::net::UnixStream::connect(&serve.socket).expect("connect");
            let mut idle = Raw::connect(s, 0b11);
            idle.go("", &[]);
            assert_prompt(
                &format!("with an idle client on the {transmission:?} loop, {signal:?}"),
                serve.stop_with(signal),
            );
            assert!(idle.is_closed(), "the idle client's connection was closed");
        }
    }
}
