//! Attach and the attachment lock, in one process with the KMS core
//! in-process: each attach opens its own file description, so attaches
//! conflict here exactly as between processes. A key service that acts
//! while "the KMS" is unwrapping simulates what another process does in
//! that window.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use zeroize::Zeroizing;

use super::*;
use crate::keys::WrappedKey;
use crate::keys::embedded::EmbeddedKeys;
use crate::kms::Kms;
use crate::kms::clock::SystemClock;
use crate::kms::datadir::DataDir;

type Hook = Box<dyn FnOnce() + Send>;

/// The embedded KMS, plus something to do (once) while a key is unwrapped.
struct Racing {
    keys: EmbeddedKeys,
    during_unwrap: Mutex<Option<Hook>>,
}

impl KeyService for Racing {
    async fn generate_wrapped_key(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
        bytes: usize,
    ) -> Result<WrappedKey, KeyError> {
        self.keys.generate_wrapped_key(key, context, bytes).await
    }

    async fn unwrap_key(
        &self,
        key: &str,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let hook = self.during_unwrap.lock().ok().and_then(|mut h| h.take());
        if let Some(hook) = hook {
            hook();
        }
        self.keys.unwrap_key(key, blob, context).await
    }

    async fn rewrap_key(
        &self,
        source: &str,
        blob: &[u8],
        destination: &str,
        source_context: &BTreeMap<String, String>,
        destination_context: &BTreeMap<String, String>,
    ) -> Result<WrappedKey, KeyError> {
        self.keys
            .rewrap_key(
                source,
                blob,
                destination,
                source_context,
                destination_context,
            )
            .await
    }

    fn describe(&self) -> String {
        self.keys.describe()
    }
}

struct Setup {
    dir: tempfile::TempDir,
    keys: Racing,
    key_arn: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (kms, _) = Kms::init(
            &DataDir::new(dir.path().join("kms")),
            "us-east-1",
            Arc::new(SystemClock),
        )
        .unwrap();
        let keys = EmbeddedKeys::as_root(Arc::new(kms));
        let key = keys.call("CreateKey", json!({})).unwrap();
        let key_arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
        Setup {
            dir,
            keys: Racing {
                keys,
                during_unwrap: Mutex::new(None),
            },
            key_arn,
        }
    }

    async fn volume(&self, name: &str) -> VolumeAddress {
        let path = VolumeAddress::from(self.dir.path().join(name));
        create(
            &self.keys,
            NewVolume {
                volume: &path,
                size: 1 << 20,
                sector_size: 4096,
                key: &self.key_arn,
                force: false,
            },
        )
        .await
        .unwrap();
        path
    }

    fn during_next_unwrap(&self, hook: impl FnOnce() + Send + 'static) {
        *self.keys.during_unwrap.lock().unwrap() = Some(Box::new(hook));
    }
}

/// The file of a volume file's address.
fn file_of(volume: &VolumeAddress) -> std::path::PathBuf {
    match volume {
        VolumeAddress::File(path) => path.clone(),
        other => panic!("{other} is not a file"),
    }
}

fn message(result: Result<Volume, EnvelopeError>) -> String {
    match result {
        Ok(_) => panic!("attached"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn one_writer_or_many_readers_in_one_process_too() {
    let s = Setup::new();
    let path = s.volume("v.envol").await;
    let writer = attach(&s.keys, &path, false).await.unwrap();
    let pid = std::process::id();
    for read_only in [false, true] {
        let msg = message(attach(&s.keys, &path, read_only).await);
        assert!(
            msg.contains(&format!("already attached read-write by pid {pid} (")),
            "{msg}"
        );
    }
    let msg = match rewrap(&s.keys, &path, None).await {
        Ok(_) => panic!("re-wrapped an attached volume"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(": cannot re-wrap: already attached"), "{msg}");
    drop(writer);

    let a = attach(&s.keys, &path, true).await.unwrap();
    let b = attach(&s.keys, &path, true).await.unwrap();
    let msg = message(attach(&s.keys, &path, false).await);
    assert!(msg.contains("already attached read-only by pid"), "{msg}");
    drop((a, b));
    rewrap(&s.keys, &path, None).await.unwrap();
    attach(&s.keys, &path, false).await.unwrap();
}

/// `create --force` (here: another volume copied over this one) between
/// the unwrap and the lock: the key no longer belongs to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_volume_replaced_during_the_unwrap_is_refused() {
    let s = Setup::new();
    let path = s.volume("v.envol").await;
    let other = s.volume("other.envol").await;
    let (other, target) = (file_of(&other), file_of(&path));
    s.during_next_unwrap(move || {
        std::fs::copy(&other, &target).unwrap();
    });
    let msg = message(attach(&s.keys, &path, false).await);
    assert!(
        msg.ends_with("the volume was replaced (or its data key changed) while it was being attached: try again"),
        "{msg}"
    );
    // The next attach sees the volume as it is now.
    attach(&s.keys, &path, false).await.unwrap();
}

/// A superblock update between the unwrap and the lock (as a re-wrap makes
/// one) keeps the data key: the attach goes ahead with the new superblock.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_superblock_updated_during_the_unwrap_is_fine() {
    let s = Setup::new();
    let path = s.volume("v.envol").await;
    let target = file_of(&path);
    s.during_next_unwrap(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        let mut sb = volume::read_superblocks(&file).best().unwrap().clone();
        volume::write_superblock(&file, &mut sb).unwrap();
    });
    let attached = attach(&s.keys, &path, false).await.unwrap();
    assert_eq!(attached.superblock().sequence, 2);
}
