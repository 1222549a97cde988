//! The NBD transmission phase (request stream → device calls → replies),
//! driven against a 256 KiB in-memory device over an in-memory pipe.
//!
//! Input: one configuration byte (bit 0 structured replies, bit 1
//! base:allocation, bit 2 read-only, bit 3 minimum block size 512, bit 4
//! the threaded loop of plain sockets over a Unix socket pair instead of
//! the async loop over an in-memory pipe), then
//! the client's request stream as sent on the wire (seeds are captured
//! from real clients).
//!
//! Invariants: no panic, no hang; the reply stream parses completely:
//! every reply has a known magic, answers a request that was sent (as far
//! as the stream could be followed), each request is finished at most
//! once, READ data has the length asked for, and structured replies come
//! only when negotiated.
#![no_main]

use std::collections::{HashMap, HashSet};

use envol::nbd::fuzzing;
use envol::nbd::protocol as p;
use libfuzzer_sys::fuzz_target;

#[path = "support_nbd.rs"]
mod support;

const DEVICE_SIZE: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&config, wire)) = data.split_first() else {
        return;
    };
    let structured = config & 1 != 0;
    let base_allocation = config & 2 != 0;
    let minimum = if config & 8 != 0 { 512 } else { 1 };
    let device = support::device(DEVICE_SIZE, minimum);
    let export = support::export("disk", device, config & 4 != 0);
    let out = if config & 16 != 0 {
        support::drive_blocking(wire, |s| {
            fuzzing::threaded_transmission(s, export, structured, base_allocation)
        })
        .1
    } else {
        support::runtime()
            .block_on(support::drive(wire, |s| {
                fuzzing::transmission(s, export, structured, base_allocation)
            }))
            .1
    };
    let (sent, complete, reused) = requests(wire);
    check_replies(&out, &sent, complete, &reused, structured);
});

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// The requests in `wire` by cookie (command, length), as far as the
/// server can have read them, whether that list is certainly complete (the
/// stream ended cleanly, at DISC or at a bad magic), and the cookies used
/// more than once (real clients reuse a cookie once it is answered; with
/// the whole stream sent at once, their replies cannot be told apart).
fn requests(mut wire: &[u8]) -> (HashMap<u64, (u16, u32)>, bool, HashSet<u64>) {
    let mut sent = HashMap::new();
    let mut reused = HashSet::new();
    loop {
        if wire.len() < p::REQUEST_HEADER_LEN || be32(wire) != p::REQUEST_MAGIC {
            return (sent, true, reused);
        }
        let command = be16(&wire[6..]);
        let cookie = be64(&wire[8..]);
        let length = be32(&wire[24..]);
        wire = &wire[p::REQUEST_HEADER_LEN..];
        if command == p::CMD_DISC {
            return (sent, true, reused);
        }
        if sent.insert(cookie, (command, length)).is_some() {
            reused.insert(cookie);
        }
        if command == p::CMD_WRITE {
            // Payloads up to 32 MiB are read (even refused ones); larger
            // ones are a hard disconnect.
            if length as usize > wire.len() || length >= 1 << 25 {
                return (sent, false, reused);
            }
            wire = &wire[length as usize..];
        }
    }
}

fn check_replies(
    mut out: &[u8],
    sent: &HashMap<u64, (u16, u32)>,
    complete: bool,
    reused: &HashSet<u64>,
    structured: bool,
) {
    let mut done = HashSet::new();
    while !out.is_empty() {
        assert!(out.len() >= 4, "truncated reply magic");
        match be32(out) {
            p::SIMPLE_REPLY_MAGIC => {
                assert!(out.len() >= 16, "truncated simple reply");
                let error = be32(&out[4..]);
                let cookie = be64(&out[8..]);
                if reused.contains(&cookie) {
                    return;
                }
                let Some(&(command, length)) = sent.get(&cookie) else {
                    assert!(!complete, "simple reply to unknown cookie {cookie}");
                    return;
                };
                assert!(done.insert(cookie), "cookie {cookie} answered twice");
                out = &out[16..];
                if command == p::CMD_READ && error == 0 {
                    assert!(
                        !structured,
                        "READ data in a simple reply after structured replies"
                    );
                    assert!(out.len() >= length as usize, "short READ data");
                    out = &out[length as usize..];
                }
            }
            p::STRUCTURED_REPLY_MAGIC => {
                assert!(structured, "structured reply without negotiation");
                assert!(out.len() >= 20, "truncated structured reply");
                let flags = be16(&out[4..]);
                let cookie = be64(&out[8..]);
                let length = be32(&out[16..]) as usize;
                if reused.contains(&cookie) {
                    return;
                }
                if !sent.contains_key(&cookie) {
                    assert!(!complete, "structured reply to unknown cookie {cookie}");
                    return;
                }
                assert!(!done.contains(&cookie), "chunk after the final one");
                assert!(out.len() >= 20 + length, "truncated structured chunk");
                if flags & p::REPLY_FLAG_DONE != 0 {
                    done.insert(cookie);
                }
                out = &out[20 + length..];
            }
            magic => panic!("unknown reply magic {magic:#x}"),
        }
    }
}
