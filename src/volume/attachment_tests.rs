//! The attachment lock within one process: each `File::open` is its own
//! open file description, so two opens conflict exactly as two processes
//! do. (Processes, `kill -9` and the command line named in a refusal are
//! tested with real `envol serve`s in tests/volume_attach.rs.)

use super::*;

fn volume_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.envol");
    std::fs::write(&path, b"not really a volume").unwrap();
    (dir, path)
}

fn open(path: &std::path::Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

#[test]
fn one_writer_no_readers_beside_it() {
    let (_dir, path) = volume_file();
    let writer = open(&path);
    lock_attachment(&writer, AttachMode::ReadWrite).unwrap();
    for mode in [AttachMode::ReadWrite, AttachMode::ReadOnly] {
        let err = lock_attachment(&open(&path), mode).unwrap_err();
        let AttachmentError::InUse { wanted, holders } = &err else {
            panic!("{err}");
        };
        assert_eq!(*wanted, mode);
        // This process holds it, and /proc/locks says so.
        assert_eq!(holders.len(), 1, "{err}");
        assert_eq!(holders[0].pid, std::process::id());
        assert_eq!(holders[0].mode, AttachMode::ReadWrite);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "already attached read-write by pid {} (",
                std::process::id()
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
    // A dup of the writer's descriptor closing does not release the lock
    // (a POSIX fcntl lock would be gone now).
    drop(writer.try_clone().unwrap());
    assert!(lock_attachment(&open(&path), AttachMode::ReadOnly).is_err());
    // Closing the writer does.
    drop(writer);
    lock_attachment(&open(&path), AttachMode::ReadWrite).unwrap();
}

#[test]
fn readers_share_but_keep_a_writer_out() {
    let (_dir, path) = volume_file();
    let a = open(&path);
    let b = open(&path);
    lock_attachment(&a, AttachMode::ReadOnly).unwrap();
    lock_attachment(&b, AttachMode::ReadOnly).unwrap();
    let err = lock_attachment(&open(&path), AttachMode::ReadWrite).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("already attached read-only by pid "),
        "{msg}"
    );
    assert!(msg.ends_with("no readers beside it"), "{msg}");
    drop(a);
    assert!(lock_attachment(&open(&path), AttachMode::ReadWrite).is_err());
    drop(b);
    lock_attachment(&open(&path), AttachMode::ReadWrite).unwrap();
}

#[test]
fn proc_locks_lines() {
    assert_eq!(
        parse_lock_line("1: FLOCK  ADVISORY  WRITE 2618 fe:00:10010703 0 EOF"),
        Some(LockEntry {
            pid: 2618,
            mode: AttachMode::ReadWrite,
            dev: (254, 0),
            inode: 10010703
        })
    );
    assert_eq!(
        parse_lock_line("12: FLOCK  ADVISORY  READ 7 00:2a:99 0 EOF"),
        Some(LockEntry {
            pid: 7,
            mode: AttachMode::ReadOnly,
            dev: (0, 42),
            inode: 99
        })
    );
    // Waiters, POSIX and OFD locks, and garbage are not holders.
    for line in [
        "1: -> FLOCK  ADVISORY  WRITE 2619 fe:00:10010703 0 EOF",
        "2: POSIX  ADVISORY  WRITE 2618 fe:00:10010703 0 EOF",
        "3: OFDLCK ADVISORY  READ  -1 fe:00:10010703 0 EOF",
        "4: FLOCK  ADVISORY  WRITE x fe:00:1 0 EOF",
        "5: FLOCK  ADVISORY  WRITE 1 fe:00",
        "",
    ] {
        assert_eq!(parse_lock_line(line), None, "{line:?}");
    }
}

#[test]
fn own_command_line_is_one_printable_line() {
    let line = command_line(std::process::id()).expect("/proc/self/cmdline");
    assert!(!line.is_empty());
    assert!(line.chars().all(|c| !c.is_control()), "{line:?}");
    assert!(line.chars().count() <= COMMAND_MAX + 1, "{line:?}");
    assert_eq!(command_line(u32::MAX), None);
}
