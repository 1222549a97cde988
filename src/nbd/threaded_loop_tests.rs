//! Unit tests of the threaded loop's parts: the write lane, vectored
//! writes and the budget.

use super::*;
use std::sync::atomic::AtomicUsize;

#[test]
fn budget_waits_for_what_is_given_back() {
    let budget = Arc::new(Budget::new(100));
    let a = budget.try_acquire(60).expect("free");
    assert!(budget.try_acquire(60).is_none());
    let waiter = {
        let budget = budget.clone();
        std::thread::spawn(move || budget.acquire(100).amount)
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!waiter.is_finished());
    drop(a);
    assert_eq!(waiter.join().unwrap(), 100);
    assert!(budget.try_acquire(100).is_some());
}

#[test]
fn write_lane_runs_jobs_one_at_a_time_in_order_past_panics() {
    let shared = Shared::new(4);
    let lane = Arc::new(WriteLane::default());
    let log = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    for i in 0..200usize {
        let (log, running, done_tx) = (log.clone(), running.clone(), done_tx.clone());
        lane.submit(
            &shared,
            Box::new(move || {
                assert_eq!(
                    running.fetch_add(1, Ordering::SeqCst),
                    0,
                    "alone in the lane"
                );
                std::thread::yield_now();
                log.lock().unwrap().push(i);
                running.fetch_sub(1, Ordering::SeqCst);
                done_tx.send(()).unwrap();
                if i % 50 == 7 {
                    panic!("job {i}");
                }
            }),
        );
    }
    for _ in 0..200 {
        done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the lane kept running");
    }
    assert_eq!(*log.lock().unwrap(), (0..200).collect::<Vec<_>>());
}

#[test]
fn vectored_writes_survive_short_writes() {
    /// Takes at most 3 bytes per call.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let parts: [&[u8]; 4] = [b"head", b"", b"payload-bytes", b"x"];
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut out = Trickle(Vec::new());
    write_all_vectored(&mut out, &mut slices).unwrap();
    assert_eq!(out.0, b"headpayload-bytesx");
}
