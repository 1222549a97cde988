//! Process crashes (issue 7 §4): `kill -9` of `envol serve` under a
//! pipelined write workload, and of `envol kms serve` under CreateKey /
//! RotateKeyOnDemand / CreateGrant churn. Nothing acknowledged is lost.
//!
//! A killed process loses no data it handed to the kernel: envol serve
//! replies to a WRITE only after its `pwrite` returned, so every
//! *acknowledged* write — flushed or not — must be readable after a restart
//! (only power loss can drop unflushed writes; `volume_power_loss.rs`
//! simulates that), so that is what is checked, which covers the
//! acknowledged-and-flushed writes. A write still in flight may or may not
//! have landed — or landed in part: Linux stops a buffered `pwrite` between
//! pages when SIGKILL arrives, and NBD promises nothing for unacknowledged
//! writes. So each 512-byte sector of its slot must hold the acknowledged
//! bytes or the new ones.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use common::kms::{Creds, envol, parse_account, parse_creds, sdk_client, spawn_kms_serve};
use common::raw::{CMD_FLUSH, CMD_READ, CMD_WRITE, FLAG_FUA, Raw};
use common::volume::{ADMIN, Fixture, MIB, tagged_slot};

const SERVE_CYCLES: u64 = 100;
const VOL_SIZE: usize = MIB as usize;
/// Slots are 1000 bytes: unaligned, crossing 512-byte sector boundaries, so
/// most writes are read-modify-writes.
const SLOT: usize = 1000;
const SLOTS: usize = VOL_SIZE / SLOT;
const MAX_IN_FLIGHT: usize = 16;

/// The volume's cipher sector size: the unit in which an interrupted write
/// may land partially.
const SECTOR: usize = 512;

/// The bytes a write of `tag` puts in a slot; a tag of 0 is the zeros of a
/// new volume.
fn slot_bytes(tag: u64) -> Vec<u8> {
    tagged_slot(tag, SLOT)
}

#[derive(Default)]
struct Tracker {
    /// Per slot: the last acknowledged tag (survives any kill).
    acked: Vec<u64>,
    /// Slots whose in-flight write was cut short by a kill: the bytes found
    /// there (sector by sector old or new), which stand until the next
    /// acknowledged write to the slot.
    torn: HashMap<usize, Vec<u8>>,
    /// Per slot: the tag of a write sent and not yet answered.
    in_flight: Vec<Option<u64>>,
    /// cookie → (slot, tag) for writes, or None for a FLUSH.
    pending: HashMap<u64, Option<(usize, u64)>>,
    /// Counts for the report: acknowledged writes, with FUA, without FUA,
    /// and how many of the latter an acknowledged FLUSH covered.
    acked_writes: u64,
    fua_writes: u64,
    plain_writes: u64,
    flushed_plain: u64,
    /// FLUSH cookie → `plain_writes` when it was sent.
    flush_covers: HashMap<u64, u64>,
}

/// Reads one simple reply: (cookie, error), or None once the server is gone.
fn read_simple_reply(s: &mut UnixStream) -> Option<(u64, u32)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x67446698);
    Some((
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
    ))
}

/// Writes pipelined until the server dies; records what was acknowledged.
fn workload(
    socket: &std::path::Path,
    export: &str,
    tracker: Arc<Mutex<Tracker>>,
    cycle: u64,
    seed: u64,
    attached: std::sync::mpsc::Sender<()>,
) {
    let mut raw = Raw::connect(UnixStream::connect(socket).unwrap(), 0b11);
    raw.go(export, &[]);
    // The kill is timed from here: it must land in the workload, not the handshake.
    attached.send(()).unwrap();
    let mut sender = raw.s.try_clone().unwrap();
    let mut receiver = raw.s;
    let stop = Arc::new(AtomicBool::new(false));
    let slots_free = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));

    let rx = {
        let tracker = tracker.clone();
        let stop = stop.clone();
        let slots_free = slots_free.clone();
        std::thread::spawn(move || {
            while let Some((cookie, error)) = read_simple_reply(&mut receiver) {
                assert_eq!(error, 0, "request {cookie} failed with errno {error}");
                let mut t = tracker.lock().unwrap();
                match t
                    .pending
                    .remove(&cookie)
                    .expect("reply to an unknown cookie")
                {
                    Some((slot, tag)) => {
                        t.acked[slot] = tag;
                        t.torn.remove(&slot);
                        t.in_flight[slot] = None;
                        t.acked_writes += 1;
                        if tag & 1 == 1 {
                            // FUA (odd tags).
                            t.fua_writes += 1;
                        } else {
                            t.plain_writes += 1;
                        }
                    }
                    None => {
                        let covered = t.flush_covers.remove(&cookie).unwrap_or(0);
                        t.flushed_plain = t.flushed_plain.max(covered);
                    }
                }
                drop(t);
                let (n, cv) = &*slots_free;
                *n.lock().unwrap() -= 1;
                cv.notify_one();
            }
            stop.store(true, Ordering::SeqCst);
            let (_, cv) = &*slots_free;
            cv.notify_all();
        })
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let mut cookie = 0u64;
    while !stop.load(Ordering::SeqCst) {
        {
            let (n, cv) = &*slots_free;
            let mut n = n.lock().unwrap();
            while *n >= MAX_IN_FLIGHT && !stop.load(Ordering::SeqCst) {
                n = cv.wait_timeout(n, Duration::from_millis(50)).unwrap().0;
            }
            *n += 1;
        }
        cookie += 1;
        let mut t = tracker.lock().unwrap();
        let msg = if rng.gen_ratio(1, 12) {
            t.pending.insert(cookie, None);
            let covers = t.plain_writes;
            t.flush_covers.insert(cookie, covers);
            request(CMD_FLUSH, 0, cookie, 0, &[])
        } else {
            // One write in flight per slot, so the slot's outcome is
            // "acknowledged value or the one in flight", nothing else.
            let slot = loop {
                let s = rng.gen_range(0..SLOTS);
                if t.in_flight[s].is_none() {
                    break s;
                }
            };
            let fua = rng.gen_bool(0.3);
            let tag = (cycle << 40 | cookie << 1) | u64::from(fua);
            t.in_flight[slot] = Some(tag);
            t.pending.insert(cookie, Some((slot, tag)));
            let flags = if fua { FLAG_FUA } else { 0 };
            request(
                CMD_WRITE,
                flags,
                cookie,
                (slot * SLOT) as u64,
                &slot_bytes(tag),
            )
        };
        drop(t);
        if sender.write_all(&msg).is_err() {
            break;
        }
    }
    rx.join().unwrap();
}

fn request(kind: u16, flags: u16, cookie: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(28 + payload.len());
    m.extend_from_slice(&0x25609513u32.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// Whether every sector-aligned piece of `slot` holds either the old or the
/// new bytes (a write interrupted between sectors).
fn sector_wise_old_or_new(slot: usize, got: &[u8], old: &[u8], new: &[u8]) -> bool {
    let start = slot * SLOT;
    let mut i = 0;
    while i < SLOT {
        let abs = start + i;
        let end = ((abs / SECTOR + 1) * SECTOR - start).min(SLOT);
        let piece = &got[i..end];
        if piece != &old[i..end] && piece != &new[i..end] {
            return false;
        }
        i = end;
    }
    true
}

/// Reads the whole device and checks every slot against what was
/// acknowledged (or the write in flight to it).
fn verify(socket: &std::path::Path, export: &str, t: &mut Tracker, cycle: u64) {
    let mut raw = Raw::connect(UnixStream::connect(socket).unwrap(), 0b11);
    raw.go(export, &[]);
    raw.request(CMD_READ, 0, 1, 0, VOL_SIZE as u32, &[]);
    let (cookie, error) = read_simple_reply(&mut raw.s).expect("read reply");
    assert_eq!((cookie, error), (1, 0));
    let data = raw.read_data(VOL_SIZE);
    for slot in 0..SLOTS {
        let got = &data[slot * SLOT..(slot + 1) * SLOT];
        let acked = t.acked[slot];
        let old = t
            .torn
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| slot_bytes(acked));
        if got == old.as_slice() {
            continue;
        }
        match t.in_flight[slot] {
            Some(tag) if got == slot_bytes(tag) => {
                t.acked[slot] = tag;
                t.torn.remove(&slot);
            }
            Some(tag) if sector_wise_old_or_new(slot, got, &old, &slot_bytes(tag)) => {
                t.torn.insert(slot, got.to_vec());
            }
            in_flight => panic!(
                "cycle {cycle}: slot {slot} holds neither its acknowledged write {acked:#x} nor the one in flight {in_flight:x?}, sector by sector"
            ),
        }
    }
    t.in_flight.iter_mut().for_each(|f| *f = None);
    t.pending.clear();
    t.flush_covers.clear();
}

#[test]
fn kill_9_of_serve_loses_no_acknowledged_write() {
    let fx = Fixture::new();
    let vol = fx.create_volume("killed.vol", VOL_SIZE as u64, SECTOR as u32);
    let export = vol.export();
    let tracker = Arc::new(Mutex::new(Tracker {
        acked: vec![0; SLOTS],
        in_flight: vec![None; SLOTS],
        ..Tracker::default()
    }));
    let mut rng = StdRng::seed_from_u64(7);
    let t0 = Instant::now();
    for cycle in 1..=SERVE_CYCLES {
        let server = fx.serve(ADMIN, &vol);
        // The volume opened (superblock and key); what the last cycle was
        // told is there.
        verify(&server.socket, &export, &mut tracker.lock().unwrap(), cycle);
        let socket = server.socket.clone();
        let (attached_tx, attached) = std::sync::mpsc::channel();
        let worker = {
            let tracker = tracker.clone();
            let export = export.clone();
            let seed = rng.r#gen();
            std::thread::spawn(move || {
                workload(&socket, &export, tracker, cycle, seed, attached_tx)
            })
        };
        attached.recv().expect("the workload attached");
        std::thread::sleep(Duration::from_millis(rng.gen_range(2..60)));
        // VolumeServer's drop is SIGKILL and wait.
        drop(server);
        worker.join().unwrap();
    }
    let server = fx.serve(ADMIN, &vol);
    let mut t = tracker.lock().unwrap();
    verify(&server.socket, &export, &mut t, SERVE_CYCLES + 1);
    eprintln!(
        "{SERVE_CYCLES} kill -9 cycles: {} writes acknowledged ({} of them flushed or FUA), none lost ({:?})",
        t.acked_writes,
        t.fua_writes + t.flushed_plain,
        t0.elapsed()
    );
    assert!(
        t.acked_writes > SERVE_CYCLES * 5,
        "too little work to prove anything"
    );
    assert!(t.fua_writes > 0 && t.flushed_plain > 0);
    drop(t);
    server.stop();
}

// ---------------------------------------------------------------------------
// KMS

const KMS_CYCLES: usize = 8;

struct KmsProcess {
    child: Child,
    endpoint: String,
}

fn start_kms(data: &std::path::Path) -> KmsProcess {
    let (child, endpoint) = spawn_kms_serve(data);
    KmsProcess { child, endpoint }
}

/// What the churn was told succeeded.
#[derive(Default)]
struct Acked {
    /// key id → on-demand rotations acknowledged.
    keys: Vec<(String, u32)>,
    /// (key id, ciphertext blob, plaintext)
    blobs: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// (key id, grant id)
    grants: Vec<(String, String)>,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One churning client: `role` 0 creates keys (and encrypts under each),
/// 1 rotates acknowledged keys (and encrypts under the new version), 2
/// creates grants. Stops at the first transport error (the kill).
fn churn(
    endpoint: String,
    creds: Creds,
    grantee: String,
    acked: Arc<Mutex<Acked>>,
    role: u32,
    seed: u64,
) {
    let client = sdk_client(&endpoint, &creds, None);
    let mut rng = StdRng::seed_from_u64(seed);
    block_on(async move {
        loop {
            let plaintext: Vec<u8> = (0..rng.gen_range(1..200)).map(|_| rng.r#gen()).collect();
            let pick = |rng: &mut StdRng, a: &Acked| -> Option<String> {
                let ok: Vec<&String> = a
                    .keys
                    .iter()
                    .filter(|(_, r)| *r < 8)
                    .map(|(k, _)| k)
                    .collect();
                (!ok.is_empty()).then(|| ok[rng.gen_range(0..ok.len())].clone())
            };
            let key = match role {
                0 => {
                    let Ok(out) = client.create_key().send().await else {
                        return;
                    };
                    let id = out.key_metadata().unwrap().key_id().to_string();
                    acked.lock().unwrap().keys.push((id.clone(), 0));
                    id
                }
                1 => {
                    let Some(id) = pick(&mut rng, &acked.lock().unwrap()) else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    if client
                        .rotate_key_on_demand()
                        .key_id(&id)
                        .send()
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut a = acked.lock().unwrap();
                    if let Some(k) = a.keys.iter_mut().find(|(k, _)| *k == id) {
                        k.1 += 1;
                    }
                    id
                }
                _ => {
                    let Some(id) = pick(&mut rng, &acked.lock().unwrap()) else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let Ok(out) = client
                        .create_grant()
                        .key_id(&id)
                        .grantee_principal(&grantee)
                        .operations(aws_sdk_kms::types::GrantOperation::Decrypt)
                        .send()
                        .await
                    else {
                        return;
                    };
                    let grant = out.grant_id().unwrap().to_string();
                    acked.lock().unwrap().grants.push((id, grant));
                    continue;
                }
            };
            let Ok(out) = client
                .encrypt()
                .key_id(&key)
                .plaintext(aws_sdk_kms::primitives::Blob::new(plaintext.clone()))
                .send()
                .await
            else {
                return;
            };
            let blob = out.ciphertext_blob().unwrap().as_ref().to_vec();
            acked.lock().unwrap().blobs.push((key, blob, plaintext));
        }
    });
}

#[test]
fn kill_9_of_kms_serve_keeps_every_acknowledged_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kms");
    let out = envol()
        .args(["kms", "init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = parse_creds(&String::from_utf8_lossy(&out.stdout));
    let account = parse_account(&String::from_utf8_lossy(&out.stdout));
    let out = envol()
        .args(["kms", "user", "add", "grantee", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let grantee = format!("arn:aws:iam::{account}:user/grantee");

    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = StdRng::seed_from_u64(11);
    let mut checked_versions = 0;
    for cycle in 0..KMS_CYCLES {
        let mut kms = start_kms(&data);
        let workers: Vec<_> = (0..3)
            .map(|role| {
                let (e, c, g, a) = (
                    kms.endpoint.clone(),
                    root.clone(),
                    grantee.clone(),
                    acked.clone(),
                );
                let seed = rng.r#gen();
                std::thread::spawn(move || churn(e, c, g, a, role, seed))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..600)));
        kms.child.kill().unwrap(); // SIGKILL
        kms.child.wait().unwrap();
        for w in workers {
            w.join().unwrap();
        }

        // The store is consistent: every key version unseals.
        let out = envol()
            .args(["kms", "check", "--data"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cycle {cycle}: kms check failed after kill -9:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        checked_versions = said
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("unexpected kms check output: {said}"));

        // It restarts, and everything acknowledged is there.
        let kms = start_kms(&data);
        let client = sdk_client(&kms.endpoint, &root, None);
        let a = acked.lock().unwrap();
        block_on(async {
            for (key, _) in &a.keys {
                let d = client.describe_key().key_id(key).send().await;
                assert!(
                    d.is_ok(),
                    "cycle {cycle}: acknowledged key {key} is gone: {d:?}"
                );
            }
            for (key, blob, plaintext) in &a.blobs {
                let out = client
                    .decrypt()
                    .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob.clone()))
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!("cycle {cycle}: blob under {key} no longer decrypts: {e:?}")
                    });
                assert_eq!(out.plaintext().unwrap().as_ref(), &plaintext[..]);
                assert!(out.key_id().unwrap().ends_with(key.as_str()));
            }
            for (key, grant) in &a.grants {
                let list = client
                    .list_grants()
                    .key_id(key)
                    .limit(1000)
                    .send()
                    .await
                    .unwrap();
                assert!(
                    list.grants()
                        .iter()
                        .any(|g| g.grant_id() == Some(grant.as_str())),
                    "cycle {cycle}: acknowledged grant {grant} on {key} is gone"
                );
            }
        });
        let rotations: u32 = a.keys.iter().map(|(_, r)| r).sum();
        assert!(
            checked_versions >= a.keys.len() + rotations as usize,
            "cycle {cycle}: {checked_versions} key versions, but {} keys and {rotations} rotations were acknowledged",
            a.keys.len()
        );
        drop(a);
        let mut kms = kms;
        kms.child.kill().unwrap();
        kms.child.wait().unwrap();
    }
    let a = acked.lock().unwrap();
    eprintln!(
        "{KMS_CYCLES} kill -9 cycles of kms serve: {} keys, {} rotations, {} grants, {} blobs acknowledged, all intact; kms check: {checked_versions} key versions unseal",
        a.keys.len(),
        a.keys.iter().map(|(_, r)| r).sum::<u32>(),
        a.grants.len(),
        a.blobs.len()
    );
    assert!(!a.keys.is_empty() && !a.blobs.is_empty() && !a.grants.is_empty());
}
