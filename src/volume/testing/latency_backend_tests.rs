use super::*;

use std::sync::mpsc::RecvTimeoutError;

const DELAY: Duration = Duration::from_millis(2);

#[test]
fn started_operations_overlap_and_complete_after_the_delay() {
    let b = LatencyBackend::new(MemBackend::new(1 << 20), DELAY);
    assert!(b.is_asynchronous());
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    // Held while starting: a loaded machine may pause this loop for longer
    // than the delay, and the overlap must not depend on timing.
    b.hold();
    for i in 0..50u64 {
        let tx = tx.clone();
        b.start_write(
            i * 4096,
            Box::new(vec![i as u8 + 1; 4096]),
            Box::new(move |_, r| tx.send(r).unwrap()),
        );
    }
    assert_eq!(b.in_flight(), 50, "starting a write must not wait for it");
    b.release();
    for _ in 0..50 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    }
    assert!(started.elapsed() >= DELAY);
    assert_eq!(b.max_in_flight(), 50, "every write was in flight at once");
    assert_eq!(b.in_flight(), 0);
    assert_eq!(b.completed(), (0, 50, 0));
    let mut back = vec![0u8; 4096];
    b.read_at(49 * 4096, &mut back).unwrap();
    assert_eq!(back, vec![50u8; 4096]);
}

#[test]
fn held_operations_do_not_complete_until_released() {
    let b = LatencyBackend::new(MemBackend::new(4096), DELAY);
    b.hold();
    let (tx, rx) = mpsc::channel();
    b.start_flush(Box::new(move |r| tx.send(r).unwrap()));
    assert!(
        matches!(
            rx.recv_timeout(Duration::from_millis(100)),
            Err(RecvTimeoutError::Timeout)
        ),
        "a held flush completed"
    );
    assert_eq!((b.in_flight(), b.completed().2), (1, 0));
    b.release();
    rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!((b.in_flight(), b.completed().2), (0, 1));
}

#[test]
fn errors_come_back_through_the_completion() {
    let b = LatencyBackend::new(MemBackend::new(4096), DELAY);
    let (tx, rx) = mpsc::channel();
    b.start_read(
        4000,
        Box::new(vec![0u8; 200]),
        Box::new(move |_, r| tx.send(r).unwrap()),
    );
    let err = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert!(b.read_at(4000, &mut [0u8; 200]).is_err());
}

#[test]
fn dropping_the_last_handle_completes_what_is_pending() {
    let b = LatencyBackend::new(MemBackend::new(4096), Duration::from_secs(3600));
    let (tx, rx) = mpsc::channel();
    b.start_write(
        0,
        Box::new(vec![1u8; 16]),
        Box::new(move |_, r| tx.send(r).unwrap()),
    );
    drop(b);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a pending completion was lost when the backend was dropped")
        .unwrap();
}
