//! The NBD server against real clients: libnbd's nbdinfo and nbdcopy,
//! qemu-io, the `nbd` crate, and a raw socket for error paths. Each test
//! runs the real server in-process over an in-memory device.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::nbd::{MemDevice, TestServer, export, run_tool};
use common::raw::*;
use envol::nbd::{Export, TransmissionLoop};
use envol::volume::BlockSizes;
use rand::RngCore;

const MIB: usize = 1024 * 1024;

fn two_exports(size: usize) -> (Arc<MemDevice>, Arc<MemDevice>, Vec<Export>) {
    let disk = MemDevice::new(size);
    let ro = MemDevice::new(MIB);
    let mut ro_export = export("ro", ro.clone());
    ro_export.read_only = true;
    let exports = vec![export("disk", disk.clone()), ro_export];
    (disk, ro, exports)
}

// ------------------------------------------------------------ real clients

fn nbdinfo_reports_size_block_sizes_and_lists_exports(transmission: TransmissionLoop) {
    let disk = MemDevice::with_sizes(
        3 * MIB,
        BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: 4 * MIB as u32,
        },
    );
    let server = TestServer::start_on(
        transmission,
        vec![
            export("disk", disk),
            Export {
                read_only: true,
                ..export("second", MemDevice::new(MIB))
            },
        ],
    );

    // The empty name is the default export: the first one.
    let out = run_tool("nbdinfo", &["--json", &server.uri("")]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &json["exports"][0];
    assert_eq!(e["export-size"], 3 * MIB);
    assert_eq!(e["block_size_minimum"], 512);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 4 * MIB);
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["can_multi_conn"], true);
    assert_eq!(e["can_flush"], true);
    assert_eq!(e["can_fua"], true);
    assert_eq!(e["can_trim"], true);
    assert_eq!(e["can_zero"], true);
    assert_eq!(json["structured"], true);

    let out = run_tool("nbdinfo", &["--json", &server.uri("second")]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["exports"][0]["export-size"], MIB);
    assert_eq!(json["exports"][0]["is_read_only"], true);
    assert_eq!(json["exports"][0]["description"], "test export second");

    let out = run_tool("nbdinfo", &["--list", "--json", &server.uri("")]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = json["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk", "second"]);
}

fn tcp_listener_and_printed_uris_work(transmission: TransmissionLoop) {
    let (_, _, exports) = two_exports(2 * MIB);
    let server = TestServer::start_on(transmission, exports);
    assert_eq!(server.uris.len(), 2, "{:?}", server.uris);
    assert!(server.uris[1].starts_with("nbd://127.0.0.1:"));
    for uri in &server.uris {
        let out = run_tool("nbdinfo", &["--json", uri]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["exports"][0]["export-size"], 2 * MIB, "{uri}");
        assert_eq!(json["exports"][0]["export-name"], "disk", "{uri}");
    }
    let tcp_uri = format!("nbd://{}/disk", server.tcp);
    run_tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x3c 0 8192",
            "-c",
            "read -P 0x3c 0 8192",
            &tcp_uri,
        ],
    );
}

fn nbdcopy_64mib_in_and_out_is_byte_identical(transmission: TransmissionLoop) {
    let (disk, _, exports) = two_exports(64 * MIB);
    let server = TestServer::start_on(transmission, exports);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let mut data = vec![0u8; 64 * MIB];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(&src, &data).unwrap();

    let uri = server.uri("disk");
    run_tool("nbdcopy", &[src.to_str().unwrap(), &uri]);
    assert!(disk.contents() == data, "device differs from the source");
    run_tool("nbdcopy", &[&uri, dst.to_str().unwrap()]);
    assert!(std::fs::read(&dst).unwrap() == data, "copy back differs");
}

fn qemu_io_write_read_zero_discard(transmission: TransmissionLoop) {
    let (disk, _, exports) = two_exports(4 * MIB);
    let server = TestServer::start_on(transmission, exports);
    let uri = server.uri("disk");
    let qemu_io = |cmds: &[&str]| {
        let mut args = vec!["-f", "raw"];
        for c in cmds {
            args.extend(["-c", c]);
        }
        args.push(&uri);
        let out = run_tool("qemu-io", &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("failed") && !text.contains("error") && !text.contains("Pattern"),
            "qemu-io reported a problem:\n{text}"
        );
        text
    };

    qemu_io(&["write -P 0xab 1000 5000", "read -P 0xab 1000 5000"]);
    assert!(disk.contents()[1000..6000].iter().all(|&b| b == 0xab));
    assert_eq!(disk.contents()[999], 0);

    // Zeroing (with and without permission to unmap) and discard read back
    // as zeros; neighbouring data is untouched.
    qemu_io(&[
        "write -P 0x11 0 196608",
        "write -z 0 65536",
        "write -z -u 65536 65536",
        "discard 131072 65536",
        "read -P 0 0 196608",
        "write -P 0x22 196608 4096",
        "read -P 0x22 196608 4096",
    ]);
    let c = disk.contents();
    assert!(c[..196608].iter().all(|&b| b == 0));
    assert!(c[196608..196608 + 4096].iter().all(|&b| b == 0x22));
}

fn nbd_crate_client_writes_and_reads_back(transmission: TransmissionLoop) {
    let (disk, _, exports) = two_exports(MIB);
    let server = TestServer::start_on(transmission, exports);
    let mut stream = server.connect();
    let info = nbd::client::handshake(&mut stream, b"disk").unwrap();
    assert_eq!(info.size, MIB as u64);
    assert!(!info.readonly);
    let mut client = nbd::client::NbdClient::new(&mut stream, &info);

    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    client.seek(SeekFrom::Start(8192)).unwrap();
    client.write_all(&data).unwrap();
    client.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    client.seek(SeekFrom::Start(8192)).unwrap();
    client.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(&disk.contents()[8192..8192 + 65536], &data[..]);
}

// ---------------------------------------------------------- raw protocol

/// Fixed newstyle client flags: C_FIXED_NEWSTYLE | C_NO_ZEROES.
const CLIENT_FLAGS: u32 = 0b11;

fn attach(server: &TestServer, name: &str) -> (Raw, u64, u16) {
    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    let (size, flags, _) = c.go(name, &[]);
    (c, size, flags)
}

fn unknown_option_is_unsupported_and_handshake_continues(transmission: TransmissionLoop) {
    let (_, _, exports) = two_exports(MIB);
    let server = TestServer::start_on(transmission, exports);
    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    for unknown in [0x1234u32, OPT_STARTTLS, 4, 11] {
        let r = c.option(unknown, b"some data the server must skip");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, REP_ERR_UNSUP, "option {unknown}");
    }
    // Malformed known options are ERR_INVALID, unknown exports ERR_UNKNOWN.
    assert_eq!(c.option(OPT_LIST, b"x")[0].kind, REP_ERR_INVALID);
    assert_eq!(c.option(OPT_GO, &[0, 0, 0, 9, 1])[0].kind, REP_ERR_INVALID);
    assert_eq!(
        c.option(OPT_INFO, &info_data("nope", &[]))[0].kind,
        REP_ERR_UNKNOWN
    );
    // An oversized option is skipped and answered TOO_BIG.
    let big = vec![0u8; 200 * 1024];
    assert_eq!(c.option(0x99, &big)[0].kind, REP_ERR_TOO_BIG);

    let list = c.option(OPT_LIST, &[]);
    let names: Vec<String> = list
        .iter()
        .filter(|r| r.kind == REP_SERVER)
        .map(|r| {
            let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
            String::from_utf8(r.data[4..4 + n].to_vec()).unwrap()
        })
        .collect();
    assert_eq!(names, ["disk", "ro"]);
    assert_eq!(list.last().unwrap().kind, REP_ACK);

    // INFO with name and block size requests, then GO.
    let r = c.option(OPT_INFO, &info_data("", &[1, 2, 3]));
    assert_eq!(r.last().unwrap().kind, REP_ACK);
    let infos: Vec<u16> = r
        .iter()
        .filter(|r| r.kind == REP_INFO)
        .map(|r| u16::from_be_bytes([r.data[0], r.data[1]]))
        .collect();
    assert!(infos.contains(&0) && infos.contains(&1) && infos.contains(&2) && infos.contains(&3));
    let name = r
        .iter()
        .find(|r| r.kind == REP_INFO && r.data[0..2] == [0, 1])
        .unwrap();
    assert_eq!(&name.data[2..], b"disk");

    let (size, flags, _) = c.go("disk", &[]);
    assert_eq!(size, MIB as u64);
    assert_ne!(flags & TFLAG_HAS_FLAGS, 0);
    assert_ne!(flags & TFLAG_CAN_MULTI_CONN, 0);
    assert_eq!(flags & TFLAG_READ_ONLY, 0);
    c.request(CMD_FLUSH, 0, 1, 0, 0, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 1,
            error: 0
        }
    );
}

#[test]
fn abort_is_acknowledged_then_closed() {
    let (_, _, exports) = two_exports(MIB);
    let server = TestServer::start(exports);
    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    assert_eq!(c.option(OPT_ABORT, &[])[0].kind, REP_ACK);
    assert!(c.is_closed());
}

#[test]
fn bad_client_flags_and_unknown_export_name_disconnect() {
    let (_, _, exports) = two_exports(MIB);
    let server = TestServer::start(exports);
    let mut c = Raw::connect(server.connect(), 0x80);
    assert!(c.is_closed());

    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    c.send_option(OPT_EXPORT_NAME, b"nope");
    assert!(c.is_closed());
}

fn export_name_honours_no_zeroes(transmission: TransmissionLoop) {
    let (_, _, exports) = two_exports(MIB);
    let server = TestServer::start_on(transmission, exports);
    for (flags, reply_len) in [(CLIENT_FLAGS, 10), (1, 134)] {
        let mut c = Raw::connect(server.connect(), flags);
        c.send_option(OPT_EXPORT_NAME, b"ro");
        let reply = c.read_data(reply_len);
        assert_eq!(
            u64::from_be_bytes(reply[0..8].try_into().unwrap()),
            MIB as u64
        );
        let tflags = u16::from_be_bytes([reply[8], reply[9]]);
        assert_ne!(tflags & TFLAG_READ_ONLY, 0);
        assert!(reply[10..].iter().all(|&b| b == 0));
        // Transmission starts right after: no stray padding bytes.
        c.request(CMD_READ, 0, 5, 0, 16, &[]);
        assert_eq!(
            c.read_reply(),
            Reply::Simple {
                cookie: 5,
                error: 0
            }
        );
        assert_eq!(c.read_data(16), vec![0; 16]);
    }
}

fn error_replies_keep_the_connection_usable(transmission: TransmissionLoop) {
    let (disk, _, exports) = two_exports(MIB);
    disk.fill(0, &[7; 512]);
    let server = TestServer::start_on(transmission, exports);
    let (mut c, size, _) = attach(&server, "disk");

    // Out-of-range READ: EINVAL, then the same connection still works.
    c.request(CMD_READ, 0, 1, size - 100, 512, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 1,
            error: EINVAL
        }
    );
    c.request(CMD_READ, 0, 2, 0, 512, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 2,
            error: 0
        }
    );
    assert_eq!(c.read_data(512), vec![7; 512]);

    // Unknown command: EINVAL.
    c.request(99, 0, 3, 0, 0, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 3,
            error: EINVAL
        }
    );
    // Unknown command flag: EINVAL.
    c.request(CMD_FLUSH, 0x4000, 4, 0, 0, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 4,
            error: EINVAL
        }
    );
    // WRITE past the end: ENOSPC (as the spec asks), its payload consumed.
    c.request(CMD_WRITE, 0, 5, size - 10, 20, &[9; 20]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 5,
            error: ENOSPC
        }
    );
    // READ above the maximum block size (32 MiB): EINVAL.
    c.request(CMD_READ, 0, 6, 0, 32 * MIB as u32 + 1, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 6,
            error: EINVAL
        }
    );
    // TRIM out of range: EINVAL. BLOCK_STATUS without a context: EINVAL.
    c.request(CMD_TRIM, 0, 7, size, 1, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 7,
            error: EINVAL
        }
    );
    c.request(CMD_BLOCK_STATUS, 0, 8, 0, 512, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 8,
            error: EINVAL
        }
    );
    // CACHE in range succeeds; out of range fails.
    c.request(CMD_CACHE, 0, 9, 0, 4096, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 9,
            error: 0
        }
    );
    c.request(CMD_CACHE, 0, 10, size, 4096, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 10,
            error: EINVAL
        }
    );

    // And a normal write + read still work on this connection.
    c.request(CMD_WRITE, FLAG_FUA, 11, 4096, 4, b"abcd");
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 11,
            error: 0
        }
    );
    c.request(CMD_READ, 0, 12, 4096, 4, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 12,
            error: 0
        }
    );
    assert_eq!(c.read_data(4), b"abcd");
}

fn read_only_export_refuses_writes_with_eperm(transmission: TransmissionLoop) {
    let (_, ro, exports) = two_exports(MIB);
    let server = TestServer::start_on(transmission, exports);
    let (mut c, _, flags) = attach(&server, "ro");
    assert_ne!(flags & TFLAG_READ_ONLY, 0);
    c.request(CMD_WRITE, 0, 1, 0, 8, &[1; 8]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 1,
            error: EPERM
        }
    );
    c.request(CMD_TRIM, 0, 2, 0, 4096, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 2,
            error: EPERM
        }
    );
    c.request(CMD_WRITE_ZEROES, 0, 3, 0, 4096, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 3,
            error: EPERM
        }
    );
    c.request(CMD_READ, 0, 4, 0, 8, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 4,
            error: 0
        }
    );
    assert_eq!(c.read_data(8), vec![0; 8]);
    assert!(ro.contents().iter().all(|&b| b == 0));
}

fn pipelined_requests_are_all_answered_with_matching_cookies(transmission: TransmissionLoop) {
    let (disk, _, exports) = two_exports(4 * MIB);
    let server = TestServer::start_on(transmission, exports);
    let (mut c, _, _) = attach(&server, "disk");
    const N: u64 = 64;
    const LEN: usize = 16384;
    let block = |i: u64| vec![(i as u8).wrapping_mul(3).wrapping_add(1); LEN];

    // 64 writes without waiting, then all their replies, in any order.
    for i in 0..N {
        c.request(
            CMD_WRITE,
            0,
            1000 + i,
            i * LEN as u64,
            LEN as u32,
            &block(i),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..N {
        match c.read_reply() {
            Reply::Simple { cookie, error: 0 } => assert!(seen.insert(cookie)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (1000..1000 + N).collect());

    // 64 reads in flight; each reply's data must be its own block.
    for i in 0..N {
        c.request(CMD_READ, 0, 2000 + i, i * LEN as u64, LEN as u32, &[]);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..N {
        match c.read_reply() {
            Reply::Simple { cookie, error: 0 } => {
                assert!(seen.insert(cookie));
                let data = c.read_data(LEN);
                assert_eq!(data, block(cookie - 2000), "cookie {cookie}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(disk.contents()[..LEN], block(0)[..]);
}

fn disc_closes_after_in_flight_replies(transmission: TransmissionLoop) {
    let (disk, _, exports) = two_exports(MIB);
    let server = TestServer::start_on(transmission, exports);
    let (mut c, _, _) = attach(&server, "disk");
    for i in 0..8u64 {
        c.request(CMD_WRITE, 0, i, i * 4096, 4096, &[0x5a; 4096]);
    }
    c.request(CMD_DISC, 0, 99, 0, 0, &[]);
    let mut cookies: Vec<u64> = (0..8)
        .map(|_| match c.read_reply() {
            Reply::Simple { cookie, error: 0 } => cookie,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    cookies.sort();
    assert_eq!(cookies, (0..8).collect::<Vec<_>>());
    assert!(c.is_closed(), "server must close after NBD_CMD_DISC");
    assert!(disk.contents()[..8 * 4096].iter().all(|&b| b == 0x5a));
}

fn bad_request_magic_disconnects_without_affecting_others(transmission: TransmissionLoop) {
    let (_, _, exports) = two_exports(MIB);
    let server = TestServer::start_on(transmission, exports);
    let (mut good, _, _) = attach(&server, "disk");
    let (mut bad, _, _) = attach(&server, "disk");
    bad.s.write_all(&[0u8; 28]).unwrap();
    assert!(bad.is_closed());

    // A client vanishing halfway through a WRITE payload.
    let (mut gone, _, _) = attach(&server, "disk");
    gone.request(CMD_WRITE, 0, 1, 0, 65536, &[1; 1000]);
    drop(gone);

    good.request(CMD_WRITE, 0, 1, 0, 3, b"xyz");
    assert_eq!(
        good.read_reply(),
        Reply::Simple {
            cookie: 1,
            error: 0
        }
    );
    good.request(CMD_READ, 0, 2, 0, 3, &[]);
    assert_eq!(
        good.read_reply(),
        Reply::Simple {
            cookie: 2,
            error: 0
        }
    );
    assert_eq!(good.read_data(3), b"xyz");
}

fn structured_replies_block_status_and_zeroes(transmission: TransmissionLoop) {
    let (disk, _, exports) = two_exports(MIB);
    disk.fill(0, &[3; 8192]);
    let server = TestServer::start_on(transmission, exports);
    let mut c = Raw::connect(server.connect(), CLIENT_FLAGS);
    // SET_META_CONTEXT before structured replies: invalid.
    let r = c.option(
        OPT_SET_META_CONTEXT,
        &meta_data("disk", &["base:allocation"]),
    );
    assert_eq!(r[0].kind, REP_ERR_INVALID);
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[])[0].kind, REP_ACK);
    let r = c.option(OPT_LIST_META_CONTEXT, &meta_data("disk", &[]));
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].kind, REP_META_CONTEXT);
    assert_eq!(&r[0].data[4..], b"base:allocation");
    let r = c.option(
        OPT_SET_META_CONTEXT,
        &meta_data("disk", &["base:allocation", "qemu:dirty-bitmap:x"]),
    );
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].kind, REP_META_CONTEXT);
    let context_id = u32::from_be_bytes(r[0].data[0..4].try_into().unwrap());
    let (size, _, _) = c.go("disk", &[3]);

    // READ: one OFFSET_DATA chunk, flagged DONE.
    c.request(CMD_READ, 0, 1, 4096, 100, &[]);
    match c.read_reply() {
        Reply::Chunk {
            cookie: 1,
            flags: 1,
            kind: 1,
            payload,
        } => {
            assert_eq!(u64::from_be_bytes(payload[0..8].try_into().unwrap()), 4096);
            assert_eq!(&payload[8..], &[3; 100]);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Out-of-range READ: an ERROR chunk with EINVAL and a message.
    c.request(CMD_READ, 0, 2, size, 512, &[]);
    match c.read_reply() {
        Reply::Chunk {
            cookie: 2,
            flags: 1,
            kind: 0x8001,
            payload,
        } => {
            assert_eq!(
                u32::from_be_bytes(payload[0..4].try_into().unwrap()),
                EINVAL
            );
            let n = u16::from_be_bytes([payload[4], payload[5]]) as usize;
            assert_eq!(payload.len(), 6 + n);
        }
        other => panic!("unexpected {other:?}"),
    }
    // BLOCK_STATUS: one descriptor, not longer than asked.
    c.request(CMD_BLOCK_STATUS, 0, 3, 0, 65536, &[]);
    match c.read_reply() {
        Reply::Chunk {
            cookie: 3,
            flags: 1,
            kind: 5,
            payload,
        } => {
            assert_eq!(
                u32::from_be_bytes(payload[0..4].try_into().unwrap()),
                context_id
            );
            assert_eq!(u32::from_be_bytes(payload[4..8].try_into().unwrap()), 65536);
            assert_eq!(payload.len(), 12);
        }
        other => panic!("unexpected {other:?}"),
    }
    // WRITE_ZEROES reads back as zeros.
    c.request(CMD_WRITE_ZEROES, 2, 4, 0, 4096, &[]);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 4,
            error: 0
        }
    );
    assert!(disk.contents()[..4096].iter().all(|&b| b == 0));
    assert!(disk.contents()[4096..8192].iter().all(|&b| b == 3));
}

fn shutdown_flushes_devices(transmission: TransmissionLoop) {
    let (disk, ro, exports) = two_exports(MIB);
    let server = TestServer::start_on(transmission, exports);
    let (mut c, _, _) = attach(&server, "disk");
    c.request(CMD_WRITE, 0, 1, 0, 4, b"data");
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 1,
            error: 0
        }
    );
    let socket = server.socket.clone();
    // The connection is idle: shutdown closes it and flushes the devices.
    server.stop().unwrap();
    assert!(disk.flushes.load(Ordering::SeqCst) >= 1);
    assert!(ro.flushes.load(Ordering::SeqCst) >= 1);
    assert!(c.is_closed());
    assert!(!socket.exists(), "socket file is removed at shutdown");
}

fn oversized_write_is_refused_and_its_payload_skipped(transmission: TransmissionLoop) {
    let small_max = MemDevice::with_sizes(
        4 * MIB,
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: MIB as u32,
        },
    );
    let server = TestServer::start_on(transmission, vec![export("disk", small_max.clone())]);
    let (mut c, _, _) = attach(&server, "disk");
    // Above the advertised maximum but within 2^25: EINVAL, payload skipped.
    let big = vec![1u8; 2 * MIB];
    c.request(CMD_WRITE, 0, 1, 0, big.len() as u32, &big);
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 1,
            error: EINVAL
        }
    );
    c.request(CMD_WRITE, 0, 2, 0, 2, b"ok");
    assert_eq!(
        c.read_reply(),
        Reply::Simple {
            cookie: 2,
            error: 0
        }
    );
    assert_eq!(&small_max.contents()[..3], b"ok\0");
    // Above 2^25 the spec lets the server treat it as denial of service.
    c.request(CMD_WRITE, 0, 3, 0, (32 * MIB + 1) as u32, &[]);
    assert!(c.is_closed());
}

// Every test that reaches the transmission phase runs on both loops a plain
// connection can get (`threaded::*`, `async_loop::*`). Handshake-only tests
// (`abort_is_acknowledged_then_closed` and
// `bad_client_flags_and_unknown_export_name_disconnect`) run once: no loop is involved before transmission.
crate::on_every_transmission_loop! {
    nbdinfo_reports_size_block_sizes_and_lists_exports,
    tcp_listener_and_printed_uris_work,
    nbdcopy_64mib_in_and_out_is_byte_identical,
    qemu_io_write_read_zero_discard,
    nbd_crate_client_writes_and_reads_back,
    unknown_option_is_unsupported_and_handshake_continues,
    export_name_honours_no_zeroes,
    error_replies_keep_the_connection_usable,
    read_only_export_refuses_writes_with_eperm,
    pipelined_requests_are_all_answered_with_matching_cookies,
    disc_closes_after_in_flight_replies,
    bad_request_magic_disconnects_without_affecting_others,
    structured_replies_block_status_and_zeroes,
    shutdown_flushes_devices,
    oversized_write_is_refused_and_its_payload_skipped,
}
