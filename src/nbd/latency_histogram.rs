//! A latency histogram the request path can record into without a lock:
//! fixed bucket bounds, one relaxed atomic add for the bucket and one for
//! the sum per observation. (prometheus-client's own `Histogram` takes a
//! mutex per observation, which every connection of an export would
//! contend on.) Buckets are stored per bucket, not cumulatively; the
//! scrape adds them up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds: from 25 µs (a cached 4 KiB
/// request over a Unix socket) to 10 s (a request that waited on a stalled
/// store); slower ones land in the implicit `+Inf` bucket.
pub(crate) const BOUNDS_NS: [u64; 16] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// `BOUNDS_NS.len()` buckets and the `+Inf` one.
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// A moment's reading of a [`LatencyHistogram`], in Prometheus's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyReading {
    pub count: u64,
    pub sum_seconds: f64,
    /// `(upper bound in seconds, observations at or below it)`, cumulative,
    /// without the `+Inf` bucket (that is `count`).
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // 16 bounds: a linear scan is a few compares of one cache line.
        let bucket = BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BOUNDS_NS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> LatencyReading {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(BOUNDS_NS.len());
        for (bound, bucket) in BOUNDS_NS.iter().zip(&self.buckets) {
            cumulative = cumulative.saturating_add(bucket.load(Ordering::Relaxed));
            buckets.push((*bound as f64 / 1e9, cumulative));
        }
        let count =
            cumulative.saturating_add(self.buckets[BOUNDS_NS.len()].load(Ordering::Relaxed));
        LatencyReading {
            count,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

#[cfg(test)]
#[path = "latency_histogram_tests.rs"]
mod tests;
