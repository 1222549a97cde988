//! Unit tests of `LockedBox`: the value round-trips, sits page-aligned in
//! its own mapping that the kernel reports as dump-excluded (and locked),
//! is dropped exactly once, and many boxes come and go cleanly.

use std::sync::Arc;

use super::*;

/// The `VmFlags` of the mapping that holds `addr`, from /proc/self/smaps.
/// (Holds, not starts at: the kernel merges neighbouring mappings whose
/// flags are equal, such as two boxes made by tests running in parallel.)
fn vm_flags_of_mapping_holding(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut in_mapping = false;
    for line in smaps.lines() {
        // A mapping's header starts with its range ("7f12a000-7f12b000 rw-p …");
        // its fields ("Size:", "VmFlags:", …) follow.
        if let Some(range) = line.split_whitespace().next()
            && let Some((start, end)) = range.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            in_mapping = (start..end).contains(&addr);
            continue;
        }
        if in_mapping && let Some(flags) = line.strip_prefix("VmFlags:") {
            return flags.split_whitespace().map(str::to_string).collect();
        }
    }
    panic!("no mapping holds {addr:#x} in /proc/self/smaps");
}

#[test]
fn contents_round_trip_and_can_be_changed() {
    let mut key = LockedBox::new([0x5au8; 64]);
    assert_eq!(*key, [0x5au8; 64]);
    key[63] = 1;
    assert_eq!(key[63], 1);
    assert_eq!(key[..63], [0x5au8; 63]);
}

#[test]
fn value_starts_a_page_of_its_own() {
    #[repr(align(64))]
    struct Aligned([u8; 100]);
    let page = rustix::param::page_size();
    let a = LockedBox::new(Aligned([1; 100]));
    let b = LockedBox::new(Aligned([2; 100]));
    let (pa, pb) = (&*a as *const _ as usize, &*b as *const _ as usize);
    assert_eq!(pa % page, 0);
    assert_eq!(pb % page, 0);
    assert_ne!(pa / page, pb / page, "two boxes share a page");
    assert_eq!((a.0[99], b.0[0]), (1, 2));
}

#[test]
fn a_value_larger_than_a_page_gets_whole_pages() {
    let page = rustix::param::page_size();
    let big = LockedBox::new([7u8; 10_000]);
    assert_eq!(big.len, 10_000usize.div_ceil(page) * page);
    assert!(big.iter().all(|&b| b == 7));
}

#[test]
fn the_kernel_reports_the_page_dump_excluded_and_locked() {
    let before = mlock_failures();
    let key = LockedBox::new([9u8; 32]);
    let flags = vm_flags_of_mapping_holding(&*key as *const _ as usize);
    assert!(
        flags.iter().any(|f| f == "dd"),
        "no MADV_DONTDUMP (dd): {flags:?}"
    );
    // Locked unless this process may not lock (then the failure was counted).
    if mlock_failures() == before {
        assert!(
            flags.iter().any(|f| f == "lo"),
            "not mlocked (lo): {flags:?}"
        );
    }
}

#[test]
fn drop_drops_the_value_exactly_once() {
    let shared = Arc::new(());
    let boxed = LockedBox::new((Arc::clone(&shared), [1u8; 32]));
    assert_eq!(Arc::strong_count(&shared), 2);
    let copy = boxed.clone();
    assert_eq!(Arc::strong_count(&shared), 3);
    drop(boxed);
    assert_eq!(Arc::strong_count(&shared), 2);
    assert_eq!(copy.1, [1u8; 32], "a clone is independent of the original");
    drop(copy);
    assert_eq!(Arc::strong_count(&shared), 1);
}

#[test]
fn many_boxes_come_and_go() {
    let page = rustix::param::page_size();
    // 256 alive at once (1 MiB locked at 4 KiB pages, well under the usual
    // 8 MiB RLIMIT_MEMLOCK), then 2,000 one after another.
    let alive: Vec<LockedBox<[u64; 4]>> = (0..256u64).map(|i| LockedBox::new([i; 4])).collect();
    let mut pages: Vec<usize> = alive
        .iter()
        .map(|b| &**b as *const _ as usize / page)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    assert_eq!(pages.len(), 256, "every box has its own page");
    for (i, b) in alive.iter().enumerate() {
        assert_eq!(**b, [i as u64; 4]);
    }
    drop(alive);
    for i in 0..2_000u64 {
        let b = LockedBox::new(i);
        assert_eq!(*b, i);
    }
}

#[test]
fn zero_sized_values_work() {
    let unit = LockedBox::new(());
    assert_eq!(unit.len, rustix::param::page_size());
    assert_eq!(*unit, ());
}

#[test]
fn debug_never_shows_the_contents() {
    let key = LockedBox::new([0xabu8; 32]);
    assert_eq!(format!("{key:?}"), "LockedBox(<redacted>)");
}

#[test]
fn boxes_cross_threads() {
    let key = Arc::new(LockedBox::new([3u8; 32]));
    let seen = std::thread::scope(|s| {
        let k = Arc::clone(&key);
        s.spawn(move || k[31]).join().unwrap()
    });
    assert_eq!(seen, 3);
}
