//! Time, injected. The service core never reads the system clock directly:
//! signatures expire, deletion windows pass and rotations fall due according
//! to a `Clock`, so tests can move time forward days in a microsecond instead
//! of shipping a production flag that shortens windows.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that tests set and advance by hand.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(start))
    }
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Milliseconds since the epoch, the store's time unit.
pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// AWS's JSON timestamp: seconds since the epoch as a number.
pub fn aws_timestamp(ms: i64) -> serde_json::Value {
    serde_json::json!(ms as f64 / 1000.0)
}
