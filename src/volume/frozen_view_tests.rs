use super::*;
use crate::volume::backend::MemBackend;

const MIB: u64 = CHUNK_SIZE;
/// Data area at 4 KiB into the store, 3 chunks of it.
const DATA: u64 = 4096;

fn store() -> MemBackend {
    let b = MemBackend::new((DATA + 3 * MIB) as usize);
    for c in 0..3u64 {
        b.write_at(DATA + c * MIB, &vec![b'A' + c as u8; MIB as usize])
            .unwrap();
    }
    b
}

/// A write as the volume makes it: through the gate, then to the store.
fn write(f: &Freezer, b: &MemBackend, offset: u64, byte: u8, len: u64) {
    let _pass = f.enter_write(b, DATA, offset, len);
    b.write_at(DATA + offset, &vec![byte; len as usize])
        .unwrap();
}

fn freeze(f: &Freezer, chunks: Vec<u64>, limit: u64) -> Arc<FrozenView> {
    f.freeze(|_| MIB, limit, || Ok(((), chunks))).unwrap().1
}

#[test]
fn a_written_chunk_reads_as_it_was_at_the_freeze() {
    let (f, b) = (Freezer::default(), store());
    let view = freeze(&f, vec![0, 1], 8 * MIB);
    // Straddles chunks 0 and 1, and touches chunk 2 (not needed).
    write(&f, &b, MIB - 10, b'z', 20);
    write(&f, &b, 2 * MIB, b'z', 1);
    assert_eq!(view.usage().copied_bytes, 2 * MIB);
    assert!(view.read(&b, DATA, 0).unwrap().iter().all(|&x| x == b'A'));
    assert!(view.read(&b, DATA, 1).unwrap().iter().all(|&x| x == b'B'));
    assert_eq!(
        view.usage(),
        ViewUsage {
            chunks_left: 0,
            copied_bytes: 0
        }
    );
    // Each chunk once; a chunk not needed is refused.
    assert!(view.read(&b, DATA, 0).is_err());
    assert!(view.read(&b, DATA, 2).is_err());
    // The volume itself has the new bytes.
    let mut now = vec![0u8; 20];
    b.read_at(DATA + MIB - 10, &mut now).unwrap();
    assert!(now.iter().all(|&x| x == b'z'));
}

#[test]
fn a_chunk_read_before_any_write_is_not_copied() {
    let (f, b) = (Freezer::default(), store());
    let view = freeze(&f, vec![0], 8 * MIB);
    assert!(view.read(&b, DATA, 0).unwrap().iter().all(|&x| x == b'A'));
    write(&f, &b, 0, b'z', 4096);
    assert_eq!(
        view.usage(),
        ViewUsage {
            chunks_left: 0,
            copied_bytes: 0
        }
    );
}

#[test]
fn exceeding_the_copy_limit_fails_the_snapshot_not_the_write() {
    let (f, b) = (Freezer::default(), store());
    let view = freeze(&f, vec![0, 1, 2], MIB);
    write(&f, &b, 0, b'z', 1);
    write(&f, &b, MIB, b'y', 1);
    let err = view.read(&b, DATA, 2).unwrap_err().to_string();
    assert!(err.contains("copy-aside limit"), "{err}");
    assert_eq!(view.usage().copied_bytes, 0, "copies freed at once");
    let mut byte = [0u8];
    b.read_at(DATA + MIB, &mut byte).unwrap();
    assert_eq!(byte, [b'y'], "the write went through");
}

#[test]
fn one_view_at_a_time_and_thaw_frees_it() {
    let (f, b) = (Freezer::default(), store());
    let view = freeze(&f, vec![0, 1], 8 * MIB);
    let again = f.freeze(|_| MIB, 8 * MIB, || Ok(((), vec![0])));
    assert_eq!(
        again.err().map(|e| e.kind()),
        Some(io::ErrorKind::AlreadyExists)
    );
    write(&f, &b, 0, b'z', 1);
    assert_eq!(view.usage().copied_bytes, MIB);
    f.thaw(&view);
    assert_eq!(
        view.usage(),
        ViewUsage {
            chunks_left: 0,
            copied_bytes: 0
        }
    );
    assert!(view.read(&b, DATA, 1).is_err());
    // Writes no longer copy; a new view may start.
    write(&f, &b, MIB, b'z', 1);
    let next = freeze(&f, vec![1], 8 * MIB);
    assert!(next.read(&b, DATA, 1).unwrap().starts_with(b"z"));
}

#[test]
fn freezing_waits_for_the_writes_in_flight() {
    let f = Arc::new(Freezer::default());
    let b = Arc::new(store());
    let pass_taken = Arc::new(std::sync::Barrier::new(2));
    let writer = {
        let (f, b, pass_taken) = (f.clone(), b.clone(), pass_taken.clone());
        std::thread::spawn(move || {
            let _pass = f.enter_write(&*b, DATA, 0, 1);
            pass_taken.wait();
            std::thread::sleep(std::time::Duration::from_millis(200));
            b.write_at(DATA, b"w").unwrap();
        })
    };
    pass_taken.wait();
    // Frozen only once the write in flight is stored: the view has it.
    let view = freeze(&f, vec![0], 8 * MIB);
    assert!(view.read(&*b, DATA, 0).unwrap().starts_with(b"wA"));
    writer.join().unwrap();
}
