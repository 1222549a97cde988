//! Parsers for the flags that several commands share, so that one kind of
//! flag reads the same everywhere: a duration is `30s`, `500ms` or `2m` on
//! every command (`envol serve --request-timeout`, `envol kms serve
//! --header-timeout`, `envol up --kms-idle-timeout`), and a connection cap
//! is a whole number of at least 1. clap calls these; the libraries below
//! take `Duration`s and counts.

use std::time::Duration;

/// The longest a duration flag may say: a day. Every timeout envol has is
/// a bound on what a stranger may hold; longer would be no bound at all.
const MAX_DURATION_SECS: f64 = 86_400.0;

/// A duration: a number with a unit (`30s`, `500ms`, `1.5s`, `2m`) or,
/// as the KMS flags once took, a bare number of seconds (`10`, `0.5`).
/// More than zero, at most a day.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {s:?}: use e.g. 30s, 500ms or 2m (at most a day)");
    let t = s.trim();
    let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(invalid()),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= MAX_DURATION_SECS)
        .map(Duration::from_secs_f64)
        .filter(|d| !d.is_zero())
        .ok_or_else(invalid)
}

/// A connection cap: a whole number of at least 1.
pub fn parse_connections(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("invalid connection count {s:?}: use a whole number of at least 1"))
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
