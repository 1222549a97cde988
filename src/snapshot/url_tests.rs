use super::*;

const ID: &str = "snap-0123456789abcdef";

#[test]
fn places_and_their_keys() {
    let p = Place::parse("s3://backups/volumes/db").unwrap();
    assert_eq!(p.bucket, "backups");
    assert_eq!(p.prefix, "volumes/db");
    assert_eq!(p.to_string(), "s3://backups/volumes/db");
    assert_eq!(p.chunks_prefix(), "volumes/db/chunks/");
    assert_eq!(p.chunk_key("ab12"), "volumes/db/chunks/ab12");
    let id = SnapshotId::parse(ID).unwrap();
    assert_eq!(p.manifest_key(&id), format!("volumes/db/{ID}/manifest"));
    assert_eq!(
        p.in_progress_key(&id),
        format!("volumes/db/{ID}/in-progress")
    );
    assert_eq!(
        p.snapshot(id.clone()).to_string(),
        format!("s3://backups/volumes/db/{ID}")
    );

    let root = Place::parse("s3://backups/").unwrap();
    assert_eq!(root.prefix, "");
    assert_eq!(root.to_string(), "s3://backups");
    assert_eq!(root.chunk_key("ab"), "chunks/ab");
    assert_eq!(root.manifest_key(&id), format!("{ID}/manifest"));
}

#[test]
fn snapshot_urls_round_trip() {
    for url in [format!("s3://b-1.x/{ID}"), format!("s3://bkt/a/b/c/{ID}")] {
        let s = SnapshotUrl::parse(&url).unwrap();
        assert_eq!(s.to_string(), url);
        assert_eq!(s.id.as_str(), ID);
    }
    let s = SnapshotUrl::parse(&format!("s3://bkt/p/{ID}/")).unwrap();
    assert_eq!(s.manifest_key(), format!("p/{ID}/manifest"));
}

#[test]
fn snapshot_objects_are_recognised_only_in_their_place() {
    let p = Place::parse("s3://bkt/p").unwrap();
    let key = format!("p/{ID}/manifest");
    let (id, name) = p.snapshot_object(&key).unwrap();
    assert_eq!((id.as_str(), name), (ID, "manifest"));
    assert!(p.snapshot_object("p/chunks/abcd").is_none());
    assert!(p.snapshot_object(&format!("p/q/{ID}/manifest")).is_none());
    assert!(p.snapshot_object(&format!("{ID}/manifest")).is_none());
    assert!(p.snapshot_object("p/snap-XYZ/manifest").is_none());
}

#[test]
fn generated_ids_parse_and_differ() {
    let a = SnapshotId::generate();
    let b = SnapshotId::generate();
    assert_ne!(a, b);
    assert_eq!(SnapshotId::parse(a.as_str()), Some(a));
}

#[test]
fn bad_urls_are_one_line_each() {
    let cases = [
        ("backups/volumes", "not an s3:// URL"),
        ("https://backups/x", "not an s3:// URL"),
        ("s3://", "no bucket"),
        ("s3:///x", "no bucket"),
        ("s3://Backups", "not a valid bucket name"),
        ("s3://ab", "not a valid bucket name"),
        ("s3://-abc", "not a valid bucket name"),
        ("s3://a_b_c", "not a valid bucket name"),
        ("s3://bkt//x", "empty"),
        ("s3://bkt/a/../b", "`..`"),
        ("s3://bkt/a\nb", "contains"),
        ("s3://bkt/chunks", "`chunks`"),
    ];
    for (url, why) in cases {
        let e = Place::parse(url).unwrap_err().to_string();
        assert!(e.contains(why), "{url}: {e}");
        assert!(!e.contains('\n') || url.contains('\n'), "{e}");
        assert!(e.starts_with(&format!("{url:?}")), "{e}");
    }
    let e = Place::parse(&format!("s3://bkt/p/{ID}")).unwrap_err();
    assert!(e.to_string().contains("names a snapshot"), "{e}");
    for url in [
        "s3://bkt/p",
        "s3://bkt/p/snap-0123",
        "s3://bkt/snap-0123456789ABCDEF",
    ] {
        let e = SnapshotUrl::parse(url).unwrap_err();
        assert!(e.to_string().contains("is not a snapshot"), "{e}");
    }
}
