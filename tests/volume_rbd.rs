//! `rbd:POOL/IMAGE` volumes end to end: real `envol` processes, real NBD
//! clients (nbdcopy, qemu-io, fio), the real Ceph cluster of the test run
//! (`tests/common/ceph.rs`: `CEPH_CONF` and `ENVOL_TEST_RBD_POOL`, started
//! by scripts/test.sh; these tests fail, never skip, without it). Each test
//! has its own image.
//!
//! What they show: an image holds only ciphertext (no plaintext in any
//! RADOS object), in exactly a volume file's layout (`rbd export` decrypts
//! with OpenSSL and serves as a file; `rbd import` of a volume file serves
//! as an image); TRIM and WRITE_ZEROES read back zeros; one writer, named
//! when a second is refused; `--take-over --force` fences the old server,
//! which exits with one line; bad addresses are one line.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::ceph::{Ceph, TestImage};
use common::nbd::run_tool;
use common::tools::qemu_io;
use common::volume::{
    ADMIN, DATA_OFFSET, Fixture, KEY_ALIAS, MIB, Vol, VolumeServer, assert_one_clean_line,
    fio_write_then_verify, output_with_timeout, require_tool, run_fails,
};
use common::xts_oracle::openssl_decrypt;
use rand::RngCore;

/// How long a fenced server may take to notice and exit.
const FENCED_EXIT: Duration = Duration::from_secs(20);

/// An envol volume on a new image of the test cluster (removed when the
/// image is dropped).
fn rbd_volume(fx: &Fixture, prefix: &str, size: u64) -> (TestImage, Vol) {
    let image = TestImage::new(prefix);
    let vol = fx.create_volume_at(&format!("rbd:{}", image.spec()), size, 4096);
    (image, vol)
}

/// What `rbd ARGS` / `rados ARGS` printed; fails the test if they fail.
fn rbd(ceph: &Ceph, args: &[&str]) -> Vec<u8> {
    Ceph::run(ceph.rbd(args)).stdout
}

fn rados(ceph: &Ceph, args: &[&str]) -> Vec<u8> {
    Ceph::run(ceph.rados(args)).stdout
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

/// Writes `data` at offset 0 of the export with nbdcopy.
fn nbd_write(fx: &Fixture, uri: &str, data: &[u8], name: &str) {
    let src = fx.path(name);
    std::fs::write(&src, data).unwrap();
    run_tool("nbdcopy", &[src.to_str().unwrap(), uri]);
}

/// The whole export, read with nbdcopy.
fn nbd_read(fx: &Fixture, uri: &str, name: &str) -> Vec<u8> {
    let dst = fx.path(name);
    std::fs::File::create(&dst).unwrap();
    run_tool("nbdcopy", &[uri, dst.to_str().unwrap()]);
    std::fs::read(&dst).unwrap()
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn create_info_serve_round_trip_holds_only_ciphertext_in_rados() {
    require_tool("nbdcopy", "libnbd-bin");
    let fx = Fixture::new();
    let (image, vol) = rbd_volume(&fx, "trip", 16 * MIB);
    let ceph = &image.ceph;
    let address = vol.path.to_str().unwrap().to_string();

    let info = common::volume::run_ok(&mut fx.envol(&["volume", "info", &address]));
    assert!(info.starts_with(&format!("volume {address}\n")), "{info}");
    assert!(
        info.contains(&format!("  uuid:        {}", vol.uuid)),
        "{info}"
    );
    assert!(info.contains("  cipher:      aes-xts-plain64"), "{info}");
    assert!(info.contains("  attached:    no"), "{info}");
    // The image is exactly the file layout's size: superblocks, then data.
    let rbd_info: serde_json::Value =
        serde_json::from_slice(&rbd(ceph, &["info", "--format", "json", &image.spec()])).unwrap();
    assert_eq!(rbd_info["size"].as_u64(), Some(DATA_OFFSET + vol.size));

    let server = fx.serve(ADMIN, &vol);
    let uri = server.first_uri().to_string();
    let marker = b"ENVOL-PLAINTEXT-MARKER-never-in-ceph:";
    let mut data = random_bytes(8 * MIB as usize);
    for at in (0..data.len() - 4096).step_by(64 * 1024) {
        data[at..at + marker.len()].copy_from_slice(marker);
    }
    nbd_write(&fx, &uri, &data, "in.bin");
    let back = nbd_read(&fx, &uri, "out.bin");
    assert!(
        back[..data.len()] == data[..],
        "nbdcopy read back different bytes"
    );
    assert!(back[data.len()..].iter().all(|&b| b == 0));

    // While served, info names the writer by its Ceph client.
    let info = common::volume::run_ok(&mut fx.envol(&["volume", "info", &address]));
    assert!(
        info.contains("  attached:    read-write by Ceph client "),
        "{info}"
    );
    let json = fx.info_json(&vol.path);
    assert_eq!(json["path"], address.as_str());
    assert_eq!(
        json["attached_by"].as_array().map(Vec::len),
        Some(1),
        "{json}"
    );
    server.stop();

    // Read-only, once the writer is gone: the same bytes, and no writes.
    let reader = fx.serve_many(ADMIN, &[(&vol, None)], &["--read-only"]);
    let back = nbd_read(&fx, reader.first_uri(), "ro.bin");
    assert!(
        back[..data.len()] == data[..],
        "the :ro serve read other bytes"
    );
    let refused = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4096", reader.first_uri()])
        .output()
        .expect("qemu-io must be installed (Debian package qemu-utils)");
    let said = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    // The export says read-only, so qemu will not even open it to write.
    assert!(
        !refused.status.success() && said.contains("Permission denied"),
        "a read-only export was opened for writing: {said}"
    );
    assert!(!said.contains("wrote"), "{said}");
    reader.stop();

    // Every RADOS object of the image (data, header, object map, id):
    // ciphertext only.
    let prefix = rbd_info["block_name_prefix"].as_str().unwrap().to_string();
    let id = prefix.trim_start_matches("rbd_data.").to_string();
    let name_object = format!("rbd_id.{}", image.image);
    let listing = String::from_utf8(rados(ceph, &["-p", &image.pool, "ls"])).unwrap();
    let objects: Vec<&str> = listing
        .lines()
        .filter(|o| {
            o.ends_with(&format!(".{id}")) || o.contains(&format!(".{id}.")) || *o == name_object
        })
        .collect();
    assert!(
        objects.iter().filter(|o| o.starts_with(&prefix)).count() >= 3,
        "{prefix}: {listing}"
    );
    eprintln!("{} RADOS objects of the image checked", objects.len());
    let dir = fx.path("objects");
    std::fs::create_dir(&dir).unwrap();
    for object in &objects {
        let file = dir.join(object);
        rados(
            ceph,
            &["-p", &image.pool, "get", object, file.to_str().unwrap()],
        );
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !find(&bytes, marker),
            "plaintext marker in RADOS object {object}"
        );
        assert!(
            !find(&bytes, &data[4096..4096 + 64]),
            "plaintext in {object}"
        );
    }
}

/// `rbd export` of an envol image is a volume file: OpenSSL decrypts its
/// data area with the data key to what was written, and `envol serve FILE`
/// reads the same data. `rbd import` of a volume file is an image that
/// `envol serve rbd:` reads the same.
#[test]
fn rbd_export_and_import_are_volume_files() {
    require_tool("nbdcopy", "libnbd-bin");
    let fx = Fixture::new();
    let size = 8 * MIB;
    let data = random_bytes(4 * MIB as usize);

    // Image -> file.
    let (image, vol) = rbd_volume(&fx, "export", size);
    let ceph = &image.ceph;
    let server = fx.serve(ADMIN, &vol);
    nbd_write(&fx, server.first_uri(), &data, "in.bin");
    server.stop();
    let exported = fx.path("exported.vol");
    rbd(
        ceph,
        &[
            "export",
            "--no-progress",
            &image.spec(),
            exported.to_str().unwrap(),
        ],
    );
    let raw = std::fs::read(&exported).unwrap();
    assert_eq!(raw.len() as u64, DATA_OFFSET + size);
    let key = fx.unwrap_data_key(&vol);
    let start = DATA_OFFSET as usize;
    let plain = openssl_decrypt(&key, 4096, 0, &raw[start..start + data.len()]);
    assert!(
        plain == data,
        "OpenSSL decrypted something else from rbd export"
    );
    let file_vol = Vol {
        path: exported,
        ..vol.clone()
    };
    let server = fx.serve(ADMIN, &file_vol);
    let back = nbd_read(&fx, server.first_uri(), "file.bin");
    assert!(
        back[..data.len()] == data[..],
        "serve FILE of rbd export differs"
    );
    server.stop();

    // File -> image.
    let file = fx.create_volume("made-as-file.vol", size, 4096);
    let other = random_bytes(3 * MIB as usize + 4096);
    let server = fx.serve(ADMIN, &file);
    nbd_write(&fx, server.first_uri(), &other, "other.bin");
    server.stop();
    let target = TestImage::new("import");
    let source = file.path.to_str().unwrap();
    rbd(ceph, &["import", "--no-progress", source, &target.spec()]);
    let imported = Vol {
        path: format!("rbd:{}", target.spec()).into(),
        ..file.clone()
    };
    let server = fx.serve(ADMIN, &imported);
    let back = nbd_read(&fx, server.first_uri(), "imported.bin");
    assert!(
        back[..other.len()] == other[..],
        "serve rbd: of rbd import differs"
    );
    server.stop();
}

/// qemu-io: unaligned writes read back; TRIM and WRITE_ZEROES of small
/// ranges (below librbd's discard granularity) and of a large one read
/// back as zeros, with the bytes around them intact.
#[test]
fn unaligned_writes_trim_and_write_zeroes_read_back() {
    let fx = Fixture::new();
    let (_image, vol) = rbd_volume(&fx, "qio", 16 * MIB);
    let server = fx.serve(ADMIN, &vol);
    let uri = server.first_uri().to_string();
    qemu_io(
        &uri,
        &[
            "write -P 0xab 1000 5000",
            "read -P 0xab 1000 5000",
            "write -P 0x5a 65536 4194304",
            // Small ranges: one sector, half a sector, 512 bytes unaligned.
            "discard 65536 4096",
            "write -z 73728 2048",
            "write -z 80000 512",
            // A large one.
            "discard 1048576 2097152",
            "write -z 3145728 1048576",
        ],
    );
    // A fresh connection reads everything back.
    qemu_io(
        &uri,
        &[
            "read -P 0 0 1000",
            "read -P 0xab 1000 5000",
            "read -P 0 65536 4096",
            "read -P 0x5a 69632 4096",
            "read -P 0 73728 2048",
            "read -P 0x5a 75776 4224",
            "read -P 0 80000 512",
            "read -P 0x5a 80512 968064",
            "read -P 0 1048576 3145728",
            "read -P 0x5a 4194304 65536",
        ],
    );
    server.stop();
}

/// fio's verify on one export: 4 jobs x QD32 of random writes in their own
/// regions, crc32c in every block, then a verify-only pass on new
/// connections.
#[test]
fn fio_verifies_four_jobs_at_queue_depth_32() {
    require_tool("fio", "fio");
    let fx = Fixture::new();
    let (_image, vol) = rbd_volume(&fx, "fio", 32 * MIB);
    let server = fx.serve(ADMIN, &vol);
    let uri = server.first_uri().to_string();
    fio_write_then_verify(
        fx.dir.path(),
        &uri,
        &[
            "--name=rbd",
            "--rw=randwrite",
            "--bsrange=4k-64k",
            "--iodepth=32",
            "--numjobs=4",
            "--size=4M",
            "--offset_increment=8M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--randseed=13",
            "--group_reporting",
        ],
        Duration::from_secs(120),
    );
    server.stop();
}

/// One writer: a second writable serve is refused naming the holder's Ceph
/// client (the one `volume info` shows), and so is a read-only one beside
/// the writer, as for a file. Plain `--take-over` of a live holder is
/// refused too; `--take-over --force` takes the volume, and the old server,
/// on its next write, exits with one line — its write is not in the image.
#[test]
fn one_writer_and_take_over_fences_the_old_server() {
    require_tool("nbdcopy", "libnbd-bin");
    let fx = Fixture::new();
    let (_image, vol) = rbd_volume(&fx, "fence", 8 * MIB);
    let address = vol.path.to_str().unwrap().to_string();
    let mut first = fx.serve(ADMIN, &vol);
    let before = random_bytes(MIB as usize);
    nbd_write(&fx, first.first_uri(), &before, "before.bin");

    let info = common::volume::run_ok(&mut fx.envol(&["volume", "info", &address]));
    let holder = info
        .lines()
        .find_map(|l| l.strip_prefix("  attached:    read-write by Ceph client "))
        .unwrap_or_else(|| panic!("no holder in:\n{info}"))
        .to_string();
    let refused = fx.serve_refused(ADMIN, &vol);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_one_clean_line("second writer", &stderr);
    assert!(
        stderr.contains(&address) && stderr.contains(&holder),
        "{stderr}"
    );
    // Nor does a re-wrap or a forced re-create get past the writer.
    let (_, stderr) = run_fails(&mut fx.envol_as(ADMIN, &["volume", "rewrap", &address]));
    assert_one_clean_line("rewrap of an attached image", &stderr);
    assert!(
        stderr.contains("cannot re-wrap") && stderr.contains(&holder),
        "{stderr}"
    );
    let create = |force: bool| {
        let mut args = vec![
            "volume", "create", &address, "--size", "1M", "--key", KEY_ALIAS,
        ];
        if force {
            args.push("--force");
        }
        run_fails(&mut fx.envol_as(ADMIN, &args)).1
    };
    let stderr = create(false);
    assert_one_clean_line("create of an existing image", &stderr);
    assert!(
        stderr.contains("already exists: refusing to overwrite it (use --force)"),
        "{stderr}"
    );
    let stderr = create(true);
    assert_one_clean_line("create --force of an attached image", &stderr);
    assert!(
        stderr.contains("refusing to overwrite it") && stderr.contains(&holder),
        "{stderr}"
    );

    // A caller the key policy refuses learns nothing of the holder.
    fx.add_user("stranger");
    let refused = fx.serve_refused("stranger", &vol);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_one_clean_line("serve by a stranger", &stderr);
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");
    assert!(!stderr.contains(&holder), "{stderr}");
    let ro = Vol {
        path: format!("{address}:ro").into(),
        ..vol.clone()
    };
    let refused = fx.serve_refused(ADMIN, &ro);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_one_clean_line("reader beside a writer", &stderr);
    assert!(stderr.contains(&holder), "{stderr}");

    // Plain --take-over: the holder is alive (its watch is there).
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(ADMIN, &[(&vol, None)], &socket, &["--take-over"]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "took over from a live holder: {stderr}"
    );
    assert_one_clean_line("take-over of a live holder", &stderr);
    assert!(stderr.contains(&holder), "{stderr}");

    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(ADMIN, &[(&vol, None)], &socket, &["--take-over", "--force"]);
    let second = VolumeServer::spawn(&mut cmd, socket, &[vol.export()]);
    // The old server's next write fails; it exits with one line.
    let late = vec![0xeeu8; 4096];
    let late_file = fx.path("late.bin");
    std::fs::write(&late_file, &late).unwrap();
    let fenced_at = std::time::Instant::now();
    let _ = Command::new("nbdcopy")
        .args([late_file.to_str().unwrap(), first.first_uri()])
        .output();
    let status = first
        .wait_exit(FENCED_EXIT)
        .expect("the fenced server did not exit");
    // Exit status 1, as for any error: not 0, and not a crash on the way out.
    assert_eq!(status.code(), Some(1), "the fenced server: {status}");
    eprintln!(
        "the fenced server exited {:?} after its late write was sent",
        fenced_at.elapsed()
    );
    let said = first.stderr();
    eprintln!("the fenced server said:\n{said}");
    // Beside its INFO log of attaches, one line: why it exits.
    let news: Vec<&str> = said.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(
        news,
        [format!(
            "envol: fenced: another server took over {address}; exiting"
        )],
        "{said}"
    );
    // The new server has every acknowledged write, and not the late one.
    let back = nbd_read(&fx, second.first_uri(), "after.bin");
    assert!(back[..before.len()] == before[..], "acknowledged data lost");
    second.stop();
    let out = common::volume::run_ok(&mut fx.envol_as(ADMIN, &["volume", "rewrap", &address]));
    assert!(
        out.contains(&format!("Re-wrapped the data key of {address}")),
        "{out}"
    );
    // Unattached, --force makes a new volume of the image: a new key, and
    // the old ciphertext zeroed.
    let out = common::volume::run_ok(&mut fx.envol_as(
        ADMIN,
        &[
            "volume", "create", &address, "--size", "4M", "--key", KEY_ALIAS, "--force",
        ],
    ));
    assert_ne!(common::volume::parse_uuid(&out), vol.uuid, "{out}");
    let renewed = Vol {
        size: 4 * MIB,
        ..vol.clone()
    };
    let server = fx.serve(ADMIN, &renewed);
    let back = nbd_read(&fx, server.first_uri(), "renewed.bin");
    assert_eq!(back.len() as u64, 4 * MIB);
    assert!(back.iter().all(|&b| b == 0), "create --force left old data");
    server.stop();
}

/// `serve --take-over` of several volumes fences nobody unless it can
/// serve them all: every volume is opened and its key unwrapped before any
/// holder's lock is broken, so a second volume that is refused (here: a
/// missing image) leaves the first one's server serving.
#[test]
fn take_over_of_several_volumes_is_all_or_nothing() {
    require_tool("nbdcopy", "libnbd-bin");
    let fx = Fixture::new();
    let (_image, vol) = rbd_volume(&fx, "allornot", 4 * MIB);
    let first = fx.serve(ADMIN, &vol);
    let missing = Vol {
        path: format!("rbd:{}", TestImage::new("allornot-missing").spec()).into(),
        ..vol.clone()
    };
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(
        ADMIN,
        &[(&vol, None), (&missing, None)],
        &socket,
        &["--take-over", "--force"],
    );
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served a missing image: {stderr}");
    assert_one_clean_line("take-over with a missing second volume", &stderr);
    assert!(
        stderr.contains(&format!("{} does not exist", missing.path.display())),
        "{stderr}"
    );
    // Not fenced: the first server still writes, and reads back, its image
    // (a blocklisted client's writes fail, and it exits).
    let data = random_bytes(MIB as usize);
    nbd_write(&fx, first.first_uri(), &data, "after.bin");
    let back = nbd_read(&fx, first.first_uri(), "back.bin");
    assert!(
        back[..data.len()] == data[..],
        "the first server lost its volume"
    );
    let info =
        common::volume::run_ok(&mut fx.envol(&["volume", "info", &vol.path.to_string_lossy()]));
    assert!(
        info.contains("  attached:    read-write by Ceph client "),
        "{info}"
    );
}

/// A create the KMS refuses leaves no image behind (the image is made
/// before the data key is asked for, and removed again); a forced
/// re-create the KMS refuses leaves the old volume as it was, and is not
/// called a refusal to overwrite.
#[test]
fn failed_creates_leave_no_image_and_keep_the_old_volume() {
    let fx = Fixture::new();
    let fresh = TestImage::new("nokey");
    let address = format!("rbd:{}", fresh.spec());
    let create = |address: &str, force: bool| {
        let mut args = vec![
            "volume",
            "create",
            address,
            "--size",
            "1M",
            "--key",
            "alias/no-such-key",
        ];
        if force {
            args.push("--force");
        }
        run_fails(&mut fx.envol_as(ADMIN, &args)).1
    };
    let stderr = create(&address, false);
    assert_one_clean_line("create under a missing key", &stderr);
    assert!(stderr.contains("cannot generate a data key"), "{stderr}");
    let images = String::from_utf8(rbd(&fresh.ceph, &["ls", &fresh.pool])).unwrap();
    assert!(
        !images.lines().any(|l| l == fresh.image),
        "the failed create left {} behind: {images}",
        fresh.image
    );

    let (_image, vol) = rbd_volume(&fx, "keepold", 4 * MIB);
    let old = vol.path.to_str().unwrap().to_string();
    let stderr = create(&old, true);
    assert_one_clean_line("create --force under a missing key", &stderr);
    assert!(stderr.contains("cannot generate a data key"), "{stderr}");
    assert!(!stderr.contains("refusing to overwrite"), "{stderr}");
    let info = common::volume::run_ok(&mut fx.envol(&["volume", "info", &old]));
    assert!(
        info.contains(&format!("  uuid:        {}", vol.uuid)),
        "{info}"
    );
}

/// A server killed with `kill -9` keeps the image's lock: a plain `serve`
/// is refused naming it. Once Ceph sees it gone (its watch expired: 5 s on
/// the test cluster, 30 s by Ceph's default), `serve --take-over` takes the
/// volume without --force, and every write the dead server acknowledged is
/// there.
/// A server fenced off one of its volumes closes the others before it
/// exits: their locks are released, so a plain `serve` (no --take-over)
/// gets them at once.
#[test]
fn a_fenced_server_releases_its_other_volumes() {
    require_tool("nbdcopy", "libnbd-bin");
    let fx = Fixture::new();
    let (_one, taken) = rbd_volume(&fx, "fenced-one", 4 * MIB);
    let (_two, other) = rbd_volume(&fx, "fenced-other", 4 * MIB);
    let mut first = fx.serve_many(ADMIN, &[(&taken, None), (&other, None)], &[]);
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(
        ADMIN,
        &[(&taken, None)],
        &socket,
        &["--take-over", "--force"],
    );
    let second = VolumeServer::spawn(&mut cmd, socket, &[taken.export()]);
    let late = fx.path("late.bin");
    std::fs::write(&late, vec![0xeeu8; 4096]).unwrap();
    let _ = Command::new("nbdcopy")
        .args([late.to_str().unwrap(), first.first_uri()])
        .output();
    let status = first
        .wait_exit(FENCED_EXIT)
        .expect("the fenced server did not exit");
    assert_eq!(status.code(), Some(1), "the fenced server: {status}");
    let said = first.stderr();
    let news: Vec<&str> = said.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(
        news,
        [format!(
            "envol: fenced: another server took over {}; exiting",
            taken.path.display()
        )],
        "{said}"
    );
    let address = other.path.to_str().unwrap();
    let info = common::volume::run_ok(&mut fx.envol(&["volume", "info", address]));
    assert!(info.contains("  attached:    no"), "{info}");
    let third = fx.serve(ADMIN, &other);
    third.stop();
    second.stop();
}

#[test]
fn take_over_after_the_holder_died() {
    require_tool("nbdcopy", "libnbd-bin");
    let fx = Fixture::new();
    let (image, vol) = rbd_volume(&fx, "dead", 8 * MIB);
    let mut first = fx.serve(ADMIN, &vol);
    let data = random_bytes(2 * MIB as usize);
    nbd_write(&fx, first.first_uri(), &data, "in.bin");
    let _ = Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status();
    assert!(first.wait_exit(Duration::from_secs(10)).is_some());

    let refused = fx.serve_refused(ADMIN, &vol);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_one_clean_line("serve beside a dead holder", &stderr);
    assert!(
        stderr.contains("already attached read-write by Ceph client"),
        "{stderr}"
    );

    // Ceph's view of the holder: its watch on the image, until it expires.
    let dead_at = std::time::Instant::now();
    loop {
        let status: serde_json::Value = serde_json::from_slice(&rbd(
            &image.ceph,
            &["status", "--format", "json", &image.spec()],
        ))
        .unwrap();
        if status["watchers"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            dead_at.elapsed() < Duration::from_secs(90),
            "the dead server's watch did not expire: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "the dead holder's watch expired after {:?}",
        dead_at.elapsed()
    );
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(ADMIN, &[(&vol, None)], &socket, &["--take-over"]);
    let second = VolumeServer::spawn(&mut cmd, socket, &[vol.export()]);
    let back = nbd_read(&fx, second.first_uri(), "back.bin");
    assert!(back[..data.len()] == data[..], "acknowledged writes lost");
    assert!(
        second.stderr().contains("took the volume over from"),
        "{}",
        second.stderr()
    );
    second.stop();
}

/// Bad addresses, a missing image, and a take-over of a file are refused
/// with one line naming what was wrong.
#[test]
fn bad_addresses_missing_images_and_file_take_over_are_one_line() {
    let fx = Fixture::new();
    for bad in ["rbd:", "rbd:pool", "rbd:pool/", "rbd:a/b/c"] {
        for args in [
            vec!["volume", "info", bad],
            vec!["serve", bad, "--socket", "/nonexistent/s.sock"],
        ] {
            let (_, stderr) = run_fails(&mut fx.envol(&args));
            assert_one_clean_line(bad, &stderr);
            assert!(
                stderr.contains(&format!(
                    "{bad:?} is not an RBD address: expected rbd:POOL/IMAGE"
                )),
                "{stderr}"
            );
        }
    }
    // Taken too literally, each of these would be an image that "does not
    // exist"; they are refused as what they are, before Ceph or the KMS.
    for (bad, says) in [
        (
            "rbd:p/img:ro=name",
            "ambiguous volume argument: expected rbd:POOL/IMAGE[=NAME][:ro]",
        ),
        (
            "rbd:p/img=a=b",
            "ambiguous volume argument: expected rbd:POOL/IMAGE[=NAME][:ro]",
        ),
        ("rbd:p/img@snap", "snapshots are not volumes"),
    ] {
        let (_, stderr) =
            run_fails(&mut fx.envol(&["serve", bad, "--socket", "/nonexistent/s.sock"]));
        assert_one_clean_line(bad, &stderr);
        assert!(stderr.starts_with(&format!("envol: {bad}: ")), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // A reader takes nobody's place: refused before the KMS is reached
    // (this process has no KMS to reach).
    for args in [
        vec![
            "serve",
            "rbd:p/img:ro",
            "--take-over",
            "--socket",
            "/nonexistent/s.sock",
        ],
        vec![
            "serve",
            "rbd:p/img",
            "--read-only",
            "--take-over",
            "--socket",
            "/nonexistent/s.sock",
        ],
    ] {
        let (_, stderr) = run_fails(&mut fx.envol(&args));
        assert_one_clean_line("read-only take-over", &stderr);
        assert!(
            stderr.contains("--take-over is for read-write attachments"),
            "{stderr}"
        );
    }
    let missing = format!("rbd:{}", TestImage::new("missing").spec());
    let (_, stderr) = run_fails(&mut fx.envol(&["volume", "info", &missing]));
    assert_one_clean_line("missing image", &stderr);
    assert_eq!(
        stderr.trim_end(),
        format!("envol: {missing} does not exist"),
        "{stderr}"
    );
    // Serving one is refused the same way, before anything listens.
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.envol_as(
        ADMIN,
        &["serve", &missing, "--socket", socket.to_str().unwrap()],
    );
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim_end(),
        format!("envol: {missing} does not exist")
    );
    assert!(!socket.exists());

    let file = fx.create_volume("plain.vol", MIB, 4096);
    let socket = fx.fresh_socket_path();
    let mut cmd = fx.serve_command(ADMIN, &[(&file, None)], &socket, &["--take-over"]);
    let out = output_with_timeout(&mut cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_one_clean_line("take-over of a file", &stderr);
    assert!(
        stderr.contains("--take-over applies to rbd: volumes only"),
        "{stderr}"
    );
    assert!(!Path::new(&socket).exists());
}
