//! Change tracking (issue 14's incremental snapshots) through real
//! processes: `envol volume create`, `envol serve` written to by qemu-io,
//! stopped cleanly (SIGTERM) or killed (`kill -9`), and `envol volume info`
//! (text and `--json`) reading the change map without the key — for a
//! volume file and an `rbd:` image of the test cluster (`CEPH_CONF`,
//! `ENVOL_TEST_RBD_POOL`; fails, never skips, without it).

mod common;

use common::ceph::TestImage;
use common::tools::qemu_io;
use common::volume::{ADMIN, Fixture, MIB, Vol, require_tool, run_ok};

fn info_text(fx: &Fixture, vol: &Vol) -> String {
    run_ok(&mut fx.envol(&["volume", "info", vol.path.to_str().unwrap()]))
}

fn changes_line(info: &str) -> &str {
    info.lines()
        .find(|l| l.trim_start().starts_with("changes:"))
        .unwrap_or_else(|| panic!("no changes: line in volume info:\n{info}"))
}

/// The `changes` object of `volume info --json`.
fn changes_json(fx: &Fixture, vol: &Vol) -> serde_json::Value {
    fx.info_json(&vol.path)["changes"].clone()
}

/// Writes with qemu-io through a server of `vol`, then stops it cleanly.
fn serve_write_stop(fx: &Fixture, vol: &Vol, writes: &[&str]) {
    serve_with_write_stop(fx, vol, &[], writes)
}

/// [`serve_write_stop`] with more `serve` arguments.
fn serve_with_write_stop(fx: &Fixture, vol: &Vol, serve_args: &[&str], writes: &[&str]) {
    let server = fx.serve_many(ADMIN, &[(vol, None)], serve_args);
    qemu_io(server.first_uri(), writes);
    server.stop();
}

/// What every volume goes through: exact since creation, the chunks the
/// served writes touched after clean stops (across several serves), the
/// attached server named while it runs, and Unknown after a `kill -9` of a
/// server that wrote.
fn tracks_changes_across_serves(fx: &Fixture, vol: &Vol) {
    require_tool("qemu-io", "qemu-utils");
    let info = info_text(fx, vol);
    assert_eq!(
        changes_line(&info),
        "  changes:     since creation: 0 chunks (0 B)",
        "{info}"
    );

    // 4 KiB at 0 (chunk 0); 64 KiB across the 5 MiB boundary (chunks 4, 5).
    serve_write_stop(
        fx,
        vol,
        &["write -P 0x11 0 4096", "write -P 0x22 5210112 65536"],
    );
    let json = changes_json(fx, vol);
    assert_eq!(json["exact"], true, "{json}");
    assert_eq!(json["base"], serde_json::Value::Null, "{json}");
    assert_eq!(json["chunks"], 3, "{json}");
    assert_eq!(json["bytes"], 3 * MIB, "{json}");

    // A second serve adds a trim (chunk 9) and a rewrite of chunk 0: the
    // record survives the restart and grows by one chunk.
    serve_write_stop(
        fx,
        vol,
        &["discard 9437184 1048576", "write -P 0x33 512 512"],
    );
    let info = info_text(fx, vol);
    assert_eq!(
        changes_line(&info),
        "  changes:     since creation: 4 chunks (4 MiB)",
        "{info}"
    );

    // While a server that wrote has it, the record is open: info says the
    // server tracks it.
    let server = fx.serve(ADMIN, vol);
    qemu_io(server.first_uri(), &["write -P 0x44 2097152 4096"]);
    let info = info_text(fx, vol);
    assert_eq!(
        changes_line(&info),
        "  changes:     tracked by the attached server (since the volume was created); recorded when it detaches cleanly",
        "{info}"
    );
    let json = changes_json(fx, vol);
    assert_eq!(json["exact"], false, "{json}");
    assert_eq!(json["tracked_by_attached_server"], true, "{json}");
    // kill -9 (VolumeServer's drop): the record stays open.
    drop(server);
    // A killed server's Ceph client keeps an image's exclusive lock (and
    // `info` names it) until a take-over breaks it; a file's lock goes
    // with the process.
    let rbd = vol.path.to_str().is_some_and(|p| p.starts_with("rbd:"));
    if !rbd {
        let info = info_text(fx, vol);
        assert_eq!(
            changes_line(&info),
            "  changes:     unknown (the volume was not detached cleanly (crash or kill) since the volume was created): the next snapshot compares chunk hashes",
            "{info}"
        );
    }
    // A clean serve after the crash does not make it exact again (only a
    // snapshot's restart does).
    let take_over: &[&str] = if rbd {
        &["--take-over", "--force"]
    } else {
        &[]
    };
    serve_with_write_stop(fx, vol, take_over, &["write -P 0x55 0 4096"]);
    let json = changes_json(fx, vol);
    assert_eq!(json["exact"], false, "{json}");
    assert_eq!(json["tracked_by_attached_server"], false, "{json}");
    assert!(
        json["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not detached cleanly")),
        "{json}"
    );
}

#[test]
fn a_volume_file_keeps_its_change_map_across_serves() {
    let fx = Fixture::new();
    let vol = fx.create_volume("vol.img", 16 * MIB, 4096);
    tracks_changes_across_serves(&fx, &vol);
}

#[test]
fn an_rbd_volume_keeps_its_change_map_across_serves() {
    let fx = Fixture::new();
    let image = TestImage::new("changes");
    let vol = fx.create_volume_at(&format!("rbd:{}", image.spec()), 16 * MIB, 4096);
    tracks_changes_across_serves(&fx, &vol);
}

#[test]
fn a_read_only_serve_leaves_the_change_map_alone() {
    require_tool("qemu-io", "qemu-utils");
    let fx = Fixture::new();
    let vol = fx.create_volume("ro.img", 8 * MIB, 4096);
    serve_write_stop(&fx, &vol, &["write -P 0x11 1048576 4096"]);
    let region = |v: &Vol| v.read_raw()[128 * 1024..MIB as usize].to_vec();
    let before = region(&vol);
    let reader = fx.serve_many(ADMIN, &[(&vol, None)], &["--read-only"]);
    common::tools::qemu_io_with(&["-r"], reader.first_uri(), &["read -P 0x11 1048576 4096"]);
    let info = info_text(&fx, &vol);
    assert_eq!(
        changes_line(&info),
        "  changes:     since creation: 1 chunk (1 MiB)",
        "{info}"
    );
    drop(reader); // kill -9: a reader has nothing to close
    assert_eq!(
        region(&vol),
        before,
        "a read-only serve wrote the change map"
    );
    assert_eq!(changes_json(&fx, &vol)["chunks"], 1);
}
