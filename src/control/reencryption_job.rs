//! A re-encryption running inside the server (started through the control
//! socket): its progress, read by `status` and by the metrics at any time,
//! and how it ended. The steps themselves run in a task of their own (the
//! envelope layer's `run_online`, through the [`Attacher`](super::Attacher)),
//! which reports here after each step; a caller that disconnects does not
//! stop it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::protocol::ReencryptionInfo;

/// How a job ended, or that it has not.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Running,
    Done,
    /// Stopped with this message (a key refused, an I/O error, a detach):
    /// the volume stays in transition, and a new request resumes it.
    Stopped(String),
}

#[derive(Debug)]
pub struct ReencryptionJob {
    new_key_arn: String,
    done: AtomicU64,
    total: AtomicU64,
    /// Where this run began, and when: the rate is this run's own.
    start_done: u64,
    started: Instant,
    outcome: Mutex<Outcome>,
    stop: AtomicBool,
}

impl ReencryptionJob {
    pub fn new(new_key_arn: String, done: u64, total: u64) -> Self {
        Self {
            new_key_arn,
            done: AtomicU64::new(done),
            total: AtomicU64::new(total),
            start_done: done,
            started: Instant::now(),
            outcome: Mutex::new(Outcome::Running),
            stop: AtomicBool::new(false),
        }
    }

    /// After a step: bytes under the new key, of all.
    pub fn record(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Release);
        self.total.store(total, Ordering::Release);
    }

    /// The run ended: completed, or stopped with `Err(message)`.
    pub fn finish(&self, result: Result<(), String>) {
        *self.lock() = match result {
            Ok(()) => {
                self.done
                    .store(self.total.load(Ordering::Acquire), Ordering::Release);
                Outcome::Done
            }
            Err(message) => Outcome::Stopped(message),
        };
    }

    pub fn is_running(&self) -> bool {
        *self.lock() == Outcome::Running
    }

    /// Asks the run to stop after its current step (the export is being
    /// detached).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn new_key_arn(&self) -> &str {
        &self.new_key_arn
    }

    /// Bytes done and in all.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Acquire),
            self.total.load(Ordering::Acquire),
        )
    }

    /// What `status` shows: progress, this run's rate, the time left at it.
    pub fn info(&self) -> ReencryptionInfo {
        let (done, total) = self.bytes();
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            (done.saturating_sub(self.start_done) as f64 / elapsed) as u64
        } else {
            0
        };
        let (state, message) = match &*self.lock() {
            Outcome::Running => ("running", None),
            Outcome::Done => ("done", None),
            Outcome::Stopped(m) => ("stopped", Some(m.clone())),
        };
        ReencryptionInfo {
            state: state.to_string(),
            new_key_arn: self.new_key_arn.clone(),
            done_bytes: done,
            total_bytes: total,
            rate_bytes_per_sec: rate,
            eta_seconds: (state == "running" && rate > 0)
                .then(|| total.saturating_sub(done) / rate),
            message,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
