use super::*;

/// A change made to a manifest.
type Change = Box<dyn Fn(&mut Manifest)>;

const ID: &str = "snap-00112233aabbccdd";

fn sample() -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        id: ID.into(),
        created: "2026-12-02T07:00:00Z".into(),
        volume_uuid: "0b6e9f5c-7d1f-4a8e-9c1d-2f3e4a5b6c7d".into(),
        size: 5 << 20,
        sector_size: 4096,
        cipher: "aes-xts-plain64".into(),
        data_offset: 1 << 20,
        key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
        wrapped_key: "AAECAw==".into(),
        encryption_context: BTreeMap::from([(
            "envol:volume".to_string(),
            "0b6e9f5c-7d1f-4a8e-9c1d-2f3e4a5b6c7d".to_string(),
        )]),
        parent: None,
        chunk_size: 1 << 20,
        chunks: vec![
            ChunkEntry(0, sha256_hex(b"a")),
            ChunkEntry(4, sha256_hex(b"b")),
        ],
        objects_added: 2,
        bytes_added: 2 << 20,
        mac: String::new(),
    }
}

fn id() -> SnapshotId {
    SnapshotId::parse(ID).unwrap()
}

#[test]
fn sealed_manifest_round_trips_and_verifies() {
    let key = DataKey::generate();
    let mut m = sample();
    m.seal(&key);
    assert_eq!(m.mac.len(), 64);
    let parsed = Manifest::parse(&m.to_bytes(), &id()).unwrap();
    assert_eq!(parsed, m);
    parsed.verify(&key).unwrap();
    assert_eq!(
        parsed.verify(&DataKey::generate()),
        Err(ManifestError::BadMac)
    );
    // The canonical bytes leave the mac out, and do not depend on it.
    let canonical = String::from_utf8(m.canonical_bytes()).unwrap();
    assert!(!canonical.contains("\"mac\""), "{canonical}");
    assert!(
        canonical.starts_with("{\"format\":1,\"id\":"),
        "{canonical}"
    );
}

#[test]
fn the_mac_is_the_documented_hmac() {
    let key = DataKey::generate();
    let mut m = sample();
    m.seal(&key);
    let mac_key = key.derive_key(b"envol snapshot manifest v1");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(mac_key.as_slice()).unwrap();
    mac.update(&m.canonical_bytes());
    assert_eq!(m.mac, hex::encode(mac.finalize().into_bytes()));
}

#[test]
fn every_changed_value_breaks_the_mac() {
    let key = DataKey::generate();
    let mut sealed = sample();
    sealed.seal(&key);
    let changes: Vec<Change> = vec![
        Box::new(|m| m.size += 4096),
        Box::new(|m| m.chunks[1].1 = sha256_hex(b"c")),
        Box::new(|m| m.chunks.pop().map(|_| ()).unwrap_or(())),
        Box::new(|m| m.parent = Some("snap-ffffffffffffffff".into())),
        Box::new(|m| m.key_arn.push('x')),
        Box::new(|m| m.created = "2027-01-01T00:00:00Z".into()),
        Box::new(|m| m.bytes_added += 1),
    ];
    for change in changes {
        let mut m = sealed.clone();
        change(&mut m);
        let reparsed = Manifest::parse(&m.to_bytes(), &id()).unwrap();
        assert_eq!(reparsed.verify(&key), Err(ManifestError::BadMac));
    }
    // Whitespace is not a value: still verifies.
    let compact = serde_json::to_vec(&sealed).unwrap();
    Manifest::parse(&compact, &id())
        .unwrap()
        .verify(&key)
        .unwrap();
}

#[test]
fn bad_manifests_are_refused_in_one_line() {
    let other = SnapshotId::parse("snap-ffffffffffffffff").unwrap();
    let e = Manifest::parse(&sample().to_bytes(), &other).unwrap_err();
    assert!(
        e.to_string().contains("stored as snap-ffffffffffffffff"),
        "{e}"
    );

    let mut newer = serde_json::to_value(sample()).unwrap();
    newer["format"] = 2.into();
    newer["something_new"] = true.into();
    let e = Manifest::parse(&serde_json::to_vec(&newer).unwrap(), &id()).unwrap_err();
    assert_eq!(e, ManifestError::Unsupported(2));

    let broken: Vec<(&str, Change)> = vec![
        ("beyond", Box::new(|m| m.chunks[1].0 = 5)),
        ("ascending", Box::new(|m| m.chunks[1].0 = 0)),
        ("SHA-256", Box::new(|m| m.chunks[0].1 = "ABC".into())),
        ("sector size", Box::new(|m| m.sector_size = 1024)),
        ("chunk size", Box::new(|m| m.chunk_size = 1000)),
        ("volume uuid", Box::new(|m| m.volume_uuid = "nope".into())),
        ("base64", Box::new(|m| m.wrapped_key = "!!".into())),
        ("parent", Box::new(|m| m.parent = Some("../x".into()))),
    ];
    for (why, change) in broken {
        let mut m = sample();
        change(&mut m);
        let e = Manifest::parse(&m.to_bytes(), &id())
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{why}: {e}");
        assert!(!e.contains('\n'));
    }
    let e = Manifest::parse(b"{not json", &id()).unwrap_err();
    assert!(matches!(e, ManifestError::Parse(_)), "{e}");
}

#[test]
fn chunk_lengths_cut_at_the_volume_size() {
    let mut m = sample();
    m.size = (5 << 20) + 4096;
    assert_eq!(m.chunk_count(), 6);
    assert_eq!(m.chunk_len(0), 1 << 20);
    assert_eq!(m.chunk_len(5), 4096);
    assert_eq!(m.chunk_len(6), 0);
}
