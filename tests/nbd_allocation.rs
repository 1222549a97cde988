//! Honest `base:allocation` block status and FAST_ZERO on a real volume
//! served by `envol serve`: `nbdinfo --map` sees holes where nothing was
//! written (or where TRIM punched), data elsewhere; fast zeroing succeeds
//! when it may punch and fails at once with ENOTSUP when it may not.

mod common;

use common::nbd::{run_tool, transmission_args};
use common::raw::*;
use common::volume::*;
use envol::nbd::TransmissionLoop;

const STATE_HOLE_ZERO: u64 = 3;
const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
const ENOTSUP: u32 = 95;

/// `nbdinfo --map --json`, as (offset, length, type) with neighbours of the
/// same type merged (clients may split extents at request boundaries).
fn map(uri: &str) -> Vec<(u64, u64, u64)> {
    let out = run_tool("nbdinfo", &["--map", "--json", uri]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("nbdinfo --map --json: {e}"));
    let mut merged: Vec<(u64, u64, u64)> = Vec::new();
    for e in v.as_array().expect("a JSON array of extents") {
        let (o, l, t) = (
            e["offset"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            e["type"].as_u64().unwrap(),
        );
        match merged.last_mut() {
            Some(last) if last.2 == t && last.0 + last.1 == o => last.1 += l,
            _ => merged.push((o, l, t)),
        }
    }
    merged
}

fn qemu_io(uri: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = run_tool("qemu-io", &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("failed") && !text.contains("Pattern"),
        "qemu-io {cmds:?}: {text}"
    );
}

fn nbdinfo_map_shows_holes_and_data_and_trim_makes_a_hole_again(transmission: TransmissionLoop) {
    let fx = Fixture::new();
    let vol = fx.create_volume("map.envol", 64 * MIB, 4096);
    let server = fx.serve_many(ADMIN, &[(&vol, None)], &transmission_args(transmission));
    let uri = server.uri("map").to_string();

    // A fresh volume is one hole that reads as zeros.
    assert_eq!(map(&uri), vec![(0, 64 * MIB, STATE_HOLE_ZERO)]);

    qemu_io(&uri, &["write -P 0xab 4M 1M"]);
    assert_eq!(
        map(&uri),
        vec![
            (0, 4 * MIB, STATE_HOLE_ZERO),
            (4 * MIB, MIB, 0),
            (5 * MIB, 59 * MIB, STATE_HOLE_ZERO),
        ]
    );

    // TRIM punches it out again (and it reads as zeros).
    qemu_io(&uri, &["discard 4M 1M", "read -P 0 4M 1M"]);
    assert_eq!(map(&uri), vec![(0, 64 * MIB, STATE_HOLE_ZERO)]);

    // Partial trim of a written range: only the trimmed middle is a hole.
    qemu_io(&uri, &["write -P 0x5c 8M 1M", "discard 8448k 256k"]);
    assert_eq!(
        map(&uri),
        vec![
            (0, 8 * MIB, STATE_HOLE_ZERO),
            (8 * MIB, 256 * 1024, 0),
            (8 * MIB + 256 * 1024, 256 * 1024, STATE_HOLE_ZERO),
            (8 * MIB + 512 * 1024, 512 * 1024, 0),
            (9 * MIB, 55 * MIB, STATE_HOLE_ZERO),
        ]
    );
    server.stop();
}

/// Requests over a raw socket with structured replies and base:allocation.
fn attach_structured(server: &VolumeServer, name: &str) -> (Raw, u16) {
    let s = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
    let mut c = Raw::connect(s, 0b11);
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[])[0].kind, REP_ACK);
    let r = c.option(OPT_SET_META_CONTEXT, &meta_data(name, &["base:allocation"]));
    assert_eq!(r[0].kind, REP_META_CONTEXT);
    let (_, flags, _) = c.go(name, &[]);
    (c, flags)
}

fn expect_done(c: &mut Raw, cookie: u64) {
    match c.read_reply() {
        Reply::Simple {
            cookie: k,
            error: 0,
        } if k == cookie => {}
        Reply::Chunk {
            cookie: k,
            flags: 1,
            kind: 0,
            ..
        } if k == cookie => {}
        other => panic!("cookie {cookie}: expected success, got {other:?}"),
    }
}

fn expect_error(c: &mut Raw, cookie: u64, errno: u32) {
    match c.read_reply() {
        Reply::Simple { cookie: k, error } if k == cookie => assert_eq!(error, errno),
        Reply::Chunk {
            cookie: k,
            kind: 0x8001,
            payload,
            ..
        } if k == cookie => {
            assert_eq!(u32::from_be_bytes(payload[0..4].try_into().unwrap()), errno)
        }
        other => panic!("cookie {cookie}: expected error {errno}, got {other:?}"),
    }
}

/// (length, flags) descriptors of one BLOCK_STATUS reply.
fn block_status(c: &mut Raw, cookie: u64, offset: u64, len: u32) -> Vec<(u32, u32)> {
    c.request(CMD_BLOCK_STATUS, 0, cookie, offset, len, &[]);
    match c.read_reply() {
        Reply::Chunk {
            cookie: k,
            flags: 1,
            kind: 5,
            payload,
        } if k == cookie => payload[4..]
            .chunks(8)
            .map(|d| {
                (
                    u32::from_be_bytes(d[0..4].try_into().unwrap()),
                    u32::from_be_bytes(d[4..8].try_into().unwrap()),
                )
            })
            .collect(),
        other => panic!("block status: {other:?}"),
    }
}

fn read(c: &mut Raw, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    c.request(CMD_READ, 0, cookie, offset, len, &[]);
    match c.read_reply() {
        Reply::Chunk {
            cookie: k,
            kind: 1,
            payload,
            ..
        } if k == cookie => payload[8..].to_vec(),
        other => panic!("read: {other:?}"),
    }
}

fn fast_zero_punches_or_fails_fast_without_writing(transmission: TransmissionLoop) {
    let fx = Fixture::new();
    let vol = fx.create_volume("fz.envol", 8 * MIB, 4096);
    let server = fx.serve_many(ADMIN, &[(&vol, None)], &transmission_args(transmission));
    let (mut c, flags) = attach_structured(&server, "fz");
    assert_ne!(flags & TFLAG_SEND_FAST_ZERO, 0, "SEND_FAST_ZERO advertised");

    let m = MIB as u32;
    c.request(CMD_WRITE, 0, 1, MIB, m, &vec![0x11; m as usize]);
    expect_done(&mut c, 1);
    assert_eq!(block_status(&mut c, 2, MIB, m), vec![(m, 0)]);

    // FAST_ZERO with NO_HOLE would have to write: ENOTSUP, nothing changed.
    c.request(
        CMD_WRITE_ZEROES,
        CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
        3,
        MIB,
        m,
        &[],
    );
    expect_error(&mut c, 3, ENOTSUP);
    assert!(read(&mut c, 4, MIB, m).iter().all(|&b| b == 0x11));

    // FAST_ZERO alone punches: zeros, and a hole.
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 5, MIB, m / 2, &[]);
    expect_done(&mut c, 5);
    assert!(read(&mut c, 6, MIB, m / 2).iter().all(|&b| b == 0));
    assert!(
        read(&mut c, 7, MIB + MIB / 2, m / 2)
            .iter()
            .all(|&b| b == 0x11)
    );
    assert_eq!(
        block_status(&mut c, 8, MIB, m),
        vec![(m / 2, 3), (m / 2, 0)]
    );

    // Plain WRITE_ZEROES with NO_HOLE still works (stores zero sectors,
    // which read as zeros but are not holes).
    c.request(
        CMD_WRITE_ZEROES,
        CMD_FLAG_NO_HOLE,
        9,
        MIB + MIB / 2,
        m / 2,
        &[],
    );
    expect_done(&mut c, 9);
    assert!(read(&mut c, 10, MIB, m).iter().all(|&b| b == 0));
    assert_eq!(
        block_status(&mut c, 11, MIB, m),
        vec![(m / 2, 3), (m / 2, 0)]
    );
    // REQ_ONE: exactly one descriptor, not longer than asked: the hole
    // [0, 1.5 MiB) (never written, then punched).
    c.request(CMD_BLOCK_STATUS, 1 << 3, 12, 0, 8 * m, &[]);
    match c.read_reply() {
        Reply::Chunk { payload, .. } => {
            assert_eq!(payload.len(), 12);
            assert_eq!(&payload[4..12], &[0, 0x18, 0, 0, 0, 0, 0, 3]);
        }
        other => panic!("{other:?}"),
    }
    drop(c);
    server.stop();
}

// Each test on both loops a plain connection can get (`threaded::*`,
// `async_loop::*`), chosen with `envol serve --transmission`.
crate::on_every_transmission_loop! {
    nbdinfo_map_shows_holes_and_data_and_trim_makes_a_hole_again,
    fast_zero_punches_or_fails_fast_without_writing,
}
