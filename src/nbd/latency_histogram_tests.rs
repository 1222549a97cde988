use std::time::Duration;

use super::*;

#[test]
fn observations_land_in_their_bucket_and_read_cumulatively() {
    let h = LatencyHistogram::default();
    h.observe(Duration::from_micros(10)); // ≤ 25 µs
    h.observe(Duration::from_micros(25)); // ≤ 25 µs (bounds are inclusive)
    h.observe(Duration::from_micros(26)); // ≤ 50 µs
    h.observe(Duration::from_millis(3)); // ≤ 5 ms
    h.observe(Duration::from_secs(60)); // +Inf only
    let r = h.read();
    assert_eq!(r.count, 5);
    assert!(
        (r.sum_seconds - 60.003_061).abs() < 1e-9,
        "{}",
        r.sum_seconds
    );
    assert_eq!(r.buckets.len(), BOUNDS_NS.len());
    assert_eq!(r.buckets[0], (25e-6, 2));
    assert_eq!(r.buckets[1], (50e-6, 3));
    assert_eq!(r.buckets[6], (2.5e-3, 3));
    assert_eq!(r.buckets[7], (5e-3, 4));
    assert_eq!(r.buckets.last(), Some(&(10.0, 4)));
}
