//! Dependencies in `src/` run one way: no two files take names from each
//! other, directly or around a loop (`scripts/import_cycles.py`). The check
//! is proved able to fail on a small tree that has a circle of each kind it
//! must see: a `use` of the parent's item, and a path written out in code.

use std::path::Path;
use std::process::Command;

fn check(src: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/import_cycles.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn no_two_files_of_src_import_from_each_other() {
    let (ok, text) = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(ok, "import circles in src/:\n{text}");
    assert!(text.contains("0 circle(s)"), "{text}");
}

#[test]
fn the_check_finds_circles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |rel: &str, body: &str| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    write("lib.rs", "pub mod cli;\npub mod kms;\npub mod nbd;\n");
    // A child using its parent's item while the parent calls the child.
    write(
        "cli/mod.rs",
        "mod serve;\npub struct CliError;\npub fn run() { serve::run() }\n",
    );
    write("cli/serve.rs", "use super::CliError;\npub fn run() {}\n");
    // Two siblings around a loop of three, one edge a written-out path.
    write("kms/mod.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("kms/a.rs", "use super::b::B;\npub struct A;\n");
    write(
        "kms/b.rs",
        "pub struct B;\nfn f() { let _ = crate::kms::c::C; }\n",
    );
    write(
        "kms/c.rs",
        "use crate::kms::a::{A, self as _};\npub struct C;\n",
    );
    // One-way dependencies and a test module that imports back: no circle.
    write("nbd/mod.rs", "mod x;\nmod y;\npub use x::X;\n");
    write("nbd/x.rs", "use super::y::Y;\npub struct X(Y);\n");
    write(
        "nbd/y.rs",
        "pub struct Y;\n#[cfg(test)]\nmod tests {\n    use super::super::x::X;\n}\n",
    );

    let (ok, text) = check(src);
    assert!(!ok, "circles not found:\n{text}");
    assert!(text.contains("2 circle(s)"), "{text}");
    for f in [
        "cli/mod.rs",
        "cli/serve.rs",
        "kms/a.rs",
        "kms/b.rs",
        "kms/c.rs",
    ] {
        assert!(text.contains(f), "{f} missing from:\n{text}");
    }
    assert!(!text.contains("nbd/"), "a one-way tree reported:\n{text}");
}
