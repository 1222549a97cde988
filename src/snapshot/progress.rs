//! Progress of a long upload or download: a bar with rate and ETA on a
//! terminal (indicatif), plain lines otherwise (a log or a CI run), on
//! stderr so that stdout stays the command's answer (a URL, JSON).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a plain progress line is printed, at most.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Counts bytes done out of a total.
pub struct Progress {
    what: String,
    total: u64,
    bar: Option<indicatif::ProgressBar>,
    plain: Mutex<Plain>,
}

struct Plain {
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// `what` ("uploading snap-…"), `total` bytes. A bar on a terminal;
    /// lines on anything else; nothing at all when `quiet`.
    pub fn new(what: impl Into<String>, total: u64, quiet: bool) -> Progress {
        let what = what.into();
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(what.clone());
            bar
        });
        let now = Instant::now();
        Progress {
            what,
            total,
            bar,
            plain: Mutex::new(Plain {
                done: 0,
                started: now,
                last_line: if quiet { far_future(now) } else { now },
            }),
        }
    }

    /// `bytes` more are done.
    pub fn add(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            return;
        }
        let Ok(mut p) = self.plain.lock() else {
            return;
        };
        p.done += bytes;
        let now = Instant::now();
        if now >= p.last_line && now.duration_since(p.last_line) >= LINE_EVERY {
            p.last_line = now;
            eprintln!(
                "{}",
                line(&self.what, p.done, self.total, p.started.elapsed())
            );
        }
    }

    /// Done: the bar is cleared (the command prints its result).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// `uploading snap-…: 512.0 MiB of 2.0 GiB (25%), 80.1 MiB/s`
fn line(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    let rate = mib(done) / elapsed.as_secs_f64().max(0.001);
    format!(
        "{what}: {:.1} MiB of {:.1} MiB ({pct}%), {rate:.1} MiB/s",
        mib(done),
        mib(total)
    )
}
