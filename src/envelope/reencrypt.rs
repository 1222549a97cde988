//! `volume reencrypt`: a new data key for a volume, every sector rewritten
//! under it — by the command itself holding the volume's exclusive
//! attachment ([`reencrypt`]), or, when a server has the volume attached
//! ([`ReencryptRefusal::Attached`]), inside that server while it serves
//! ([`new_key_for_server`] on the caller's side, [`begin_online`] and
//! [`run_online`] in the server).
//!
//! The KMS decides, as for every key operation: a new data key comes from
//! GenerateDataKeyWithoutPlaintext under the volume's key (or `--key`),
//! and is unwrapped once with Decrypt to record its key check value — so
//! the caller needs both on the new key, and Decrypt on the old one. While
//! it runs, the new wrapped key is unwrapped again every
//! [`KEY_RECHECK`]: a key disabled (or a policy revoked) meanwhile stops
//! the re-encryption within that time, in one line, leaving a volume that
//! serves both halves and resumes where it stopped.
//!
//! Online, both sides ask the KMS: the caller (its own credentials) for
//! Decrypt on the current key and GenerateDataKeyWithoutPlaintext and
//! Decrypt on the new one — so a caller the key policy refuses cannot
//! start it — and the server (its credentials) unwraps both keys again to
//! use them, and checks the new one against the caller's key check value.
//!
//! Resuming: the transition is in the superblock (see
//! `volume::reencryption`), so running the command again continues from
//! the watermark. An attach (`serve`, `up`) of a volume in transition
//! recovers an interrupted step and serves it with both keys, but does not
//! continue the re-encryption by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    EnvelopeError, OpenedVolume, VolumeAddress, key_failure, now_unix_seconds, repair_damaged_copy,
    unwrap_new_key, vol_err, with_action,
};
use crate::keys::KeyService;
use crate::volume::reencryption::{self, NewKey, Progress};
use crate::volume::superblock::Transition;
use crate::volume::{
    self, AttachMode, AttachmentError, DATA_KEY_LEN, DataKey, KEY_CHECK_LEN, MAX_HOTZONE_SECTORS,
    Superblock,
};

/// How often a running re-encryption asks the KMS again for the new key.
pub const KEY_RECHECK: Duration = Duration::from_secs(2);

/// Hotzone steps asked of the volume in one call (8 MiB each with
/// 4096-byte sectors).
const STEPS_PER_CALL: u64 = 8;

/// What the caller chose.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReencryptOptions<'a> {
    /// The master key for the new data key (default: the volume's key).
    pub key: Option<&'a str>,
    /// Bytes per second at most (default: as fast as it goes).
    pub max_rate: Option<u64>,
}

/// Default `--max-rate` of a re-encryption inside a server (clients keep
/// their share: see the README's measurement); offline runs unthrottled.
pub const ONLINE_DEFAULT_RATE: u64 = 64 << 20;

/// Why a volume was not re-encrypted here.
#[derive(Debug, thiserror::Error)]
pub enum ReencryptRefusal {
    /// Another attachment holds the volume (a server, most likely): the
    /// re-encryption belongs to it. The message names the holder.
    #[error("{0}")]
    Attached(EnvelopeError),
    #[error("{0}")]
    Failed(EnvelopeError),
}

impl From<EnvelopeError> for ReencryptRefusal {
    fn from(e: EnvelopeError) -> Self {
        ReencryptRefusal::Failed(e)
    }
}

/// The new data key a caller asks a server to re-encrypt to: wrapped (the
/// caller generated it), and its key check value (the caller unwrapped it).
#[derive(Debug, Clone)]
pub struct WrappedNewKey {
    pub key_arn: String,
    pub wrapped_key: Vec<u8>,
    pub key_check: [u8; KEY_CHECK_LEN],
}

/// The outcome of a completed re-encryption.
#[derive(Debug)]
pub struct Reencrypted {
    pub old_key_arn: String,
    /// The superblock now on disk: the new key alone.
    pub superblock: Superblock,
    /// Where it started: 0, or the watermark of an interrupted run.
    pub resumed_at: u64,
}

/// Re-encrypts `volume` under a new data key (or resumes an interrupted
/// re-encryption), calling `progress` after every step. Holds the volume's
/// exclusive attachment throughout.
pub async fn reencrypt<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    options: ReencryptOptions<'_>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Reencrypted, ReencryptRefusal> {
    let unlocked = OpenedVolume::open(volume, AttachMode::ReadWrite)?;
    match unlocked.store.lock_attachment(AttachMode::ReadWrite) {
        Ok(()) => {}
        Err(e @ (AttachmentError::InUse { .. } | AttachmentError::InUseByClient { .. })) => {
            return Err(ReencryptRefusal::Attached(vol_err(volume, e)));
        }
        Err(e) => return Err(with_action(vol_err(volume, e), "cannot re-encrypt").into()),
    }
    // Under the lock: no other writer is in the middle of updating them.
    let (copies, superblock) = super::read_copies(volume, unlocked.store.backend())?;
    let opened = OpenedVolume {
        store: unlocked.store,
        copies,
        superblock,
    };
    // Chunks still to fetch would arrive under the old key.
    if let Some(record) = volume::HydrationRecord::load(opened.store.backend(), &opened.superblock)
        .map_err(|e| vol_err(volume, e))?
    {
        return Err(vol_err(
            volume,
            format!("cannot re-encrypt: {}", super::still_hydrating(&record)),
        )
        .into());
    }
    let sb = opened.superblock.clone();
    let old_key_arn = sb.key_arn.clone();
    let plaintext = keys
        .unwrap_key(&sb.key_arn, &sb.wrapped_key, &sb.encryption_context)
        .await
        .map_err(|e| key_failure(volume, "unwrap the data key", &sb.key_arn, e, keys))?;
    let old = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
    drop(plaintext);
    if !old.verify_check(&sb.uuid, &sb.key_check) {
        return Err(vol_err(volume, volume::VolumeError::WrongKey).into());
    }
    let sb = repair_damaged_copy(volume, &opened, AttachMode::ReadWrite);
    let (sb, new) = match &sb.transition {
        Some(t) => {
            check_resume_key(volume, t, options.key)?;
            let new = unwrap_new_key(keys, volume, &sb, t).await?;
            (sb, new)
        }
        None => begin(keys, volume, &opened, &sb, options.key).await?,
    };
    let t = sb
        .transition
        .clone()
        .ok_or_else(|| vol_err(volume, "the re-encryption did not begin"))?;
    let volume_handle = Arc::new(
        opened
            .store
            .into_transition_volume(&sb, old, new)
            .map_err(|e| vol_err(volume, e))?,
    );
    let resumed_at = t.watermark * u64::from(sb.sector_size);
    run_steps(
        keys,
        volume,
        &volume_handle,
        &sb,
        &t,
        options,
        progress,
        None,
    )
    .await?;
    let v = volume_handle.clone();
    let done = tokio::task::spawn_blocking(move || v.finish_reencryption())
        .await
        .map_err(|e| vol_err(volume, e))?
        .map_err(|e| vol_err(volume, e))?;
    // The last reference: the volume closes (its change map too) and the
    // old key's schedules are already gone.
    drop(volume_handle);
    Ok(Reencrypted {
        old_key_arn,
        superblock: done,
        resumed_at,
    })
}

/// `--key` when resuming: only the key the re-encryption began with.
fn check_resume_key(
    volume: &VolumeAddress,
    t: &Transition,
    key: Option<&str>,
) -> Result<(), EnvelopeError> {
    match key {
        Some(key) if key != t.new_key_arn => Err(vol_err(
            volume,
            format!(
                "a re-encryption to {} is in progress: run `envol volume reencrypt` without --key to resume it",
                t.new_key_arn
            ),
        )),
        _ => Ok(()),
    }
}

/// The caller's side of an online re-encryption, under the caller's own
/// KMS credentials: proves Decrypt on the volume's current key, and
/// returns a new data key (GenerateDataKeyWithoutPlaintext under `key` or
/// the volume's, unwrapped once with Decrypt for its key check value) —
/// or `None` when a re-encryption is in progress (resumed: Decrypt on its
/// new key proved instead). `sb` is the superblock as read without a lock.
pub async fn new_key_for_server<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    sb: &Superblock,
    key: Option<&str>,
) -> Result<Option<WrappedNewKey>, EnvelopeError> {
    let plaintext = keys
        .unwrap_key(&sb.key_arn, &sb.wrapped_key, &sb.encryption_context)
        .await
        .map_err(|e| key_failure(volume, "unwrap the data key", &sb.key_arn, e, keys))?;
    let old = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
    drop(plaintext);
    if !old.verify_check(&sb.uuid, &sb.key_check) {
        return Err(vol_err(volume, volume::VolumeError::WrongKey));
    }
    drop(old);
    if let Some(t) = &sb.transition {
        check_resume_key(volume, t, key)?;
        unwrap_new_key(keys, volume, sb, t).await?;
        return Ok(None);
    }
    let (wrapped, new) = generate_new_key(keys, volume, sb, key).await?;
    Ok(Some(WrappedNewKey {
        key_arn: wrapped.key_arn,
        key_check: new.key_check(&sb.uuid),
        wrapped_key: wrapped.blob,
    }))
}

/// The server's side, first half: begins the re-encryption of the open
/// volume `handle` to `new` (the caller's key, unwrapped again here with
/// the server's own credentials and checked against the caller's key
/// check value), or, with `new` absent, checks there is one in progress
/// to resume. Returns where it starts, in bytes.
pub async fn begin_online<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    handle: &Arc<volume::Volume>,
    new: Option<WrappedNewKey>,
) -> Result<u64, EnvelopeError> {
    let sb = handle.superblock();
    let sector = u64::from(sb.sector_size);
    // Chunks still to be fetched would arrive under the old key, behind
    // the watermark as well as ahead of it.
    if let Some((fetched, total)) = handle.restore_progress() {
        return Err(vol_err(
            volume,
            format!(
                "cannot re-encrypt: it is still being restored ({fetched} of {total} chunks fetched); re-encrypt once the restore is done"
            ),
        ));
    }
    match (&sb.transition, new) {
        (Some(t), None) => match handle.reencryption_progress() {
            Some(p) => Ok(p.done_bytes()),
            None => Ok(t.watermark * sector),
        },
        (Some(t), Some(_)) => Err(vol_err(
            volume,
            format!(
                "a re-encryption to {} is already in progress: run `envol volume reencrypt` without --key to resume it",
                t.new_key_arn
            ),
        )),
        (None, None) => Err(vol_err(
            volume,
            "no re-encryption is in progress to resume (the request named no new key)",
        )),
        (None, Some(new)) => {
            let plaintext = keys
                .unwrap_key(&sb.key_arn, &sb.wrapped_key, &sb.encryption_context)
                .await
                .map_err(|e| key_failure(volume, "unwrap the data key", &sb.key_arn, e, keys))?;
            let old = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
            drop(plaintext);
            let plaintext = keys
                .unwrap_key(&new.key_arn, &new.wrapped_key, &sb.encryption_context)
                .await
                .map_err(|e| {
                    key_failure(volume, "unwrap the new data key", &new.key_arn, e, keys)
                })?;
            let new_key = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
            drop(plaintext);
            let v = handle.clone();
            let record = NewKey {
                key_arn: new.key_arn,
                wrapped_key: new.wrapped_key,
                key_check: new.key_check,
            };
            tokio::task::spawn_blocking(move || {
                v.begin_reencryption(old, new_key, record, now_unix_seconds())
            })
            .await
            .map_err(|e| vol_err(volume, e))?
            .map_err(|e| vol_err(volume, e))?;
            Ok(0)
        }
    }
}

/// The server's side, second half: steps until every sector of `handle`
/// is under the new key (at most `max_rate` bytes/s, the new key asked
/// for again every [`KEY_RECHECK`], `stop` checked between steps), then
/// ends the transition. Returns the superblock naming the new key alone.
pub async fn run_online<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    handle: &Arc<volume::Volume>,
    max_rate: Option<u64>,
    progress: &mut (dyn FnMut(Progress) + Send),
    stop: &(dyn Fn() -> bool + Send + Sync),
) -> Result<Superblock, EnvelopeError> {
    let sb = handle.superblock();
    let t = sb
        .transition
        .clone()
        .ok_or_else(|| vol_err(volume, volume::VolumeError::NotInTransition))?;
    let options = ReencryptOptions {
        key: None,
        max_rate,
    };
    run_steps(keys, volume, handle, &sb, &t, options, progress, Some(stop)).await?;
    let v = handle.clone();
    tokio::task::spawn_blocking(move || v.finish_reencryption())
        .await
        .map_err(|e| vol_err(volume, e))?
        .map_err(|e| vol_err(volume, e))
}

/// A new data key from the KMS under `key` (default: the volume's): the
/// wrapped key, and the key itself (unwrapped once).
async fn generate_new_key<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    sb: &Superblock,
    key: Option<&str>,
) -> Result<(crate::keys::WrappedKey, DataKey), EnvelopeError> {
    let target = key.unwrap_or(&sb.key_arn);
    let wrapped = keys
        .generate_wrapped_key(target, &sb.encryption_context, DATA_KEY_LEN)
        .await
        .map_err(|e| key_failure(volume, "generate a new data key", target, e, keys))?;
    let plaintext = keys
        .unwrap_key(&wrapped.key_arn, &wrapped.blob, &sb.encryption_context)
        .await
        .map_err(|e| key_failure(volume, "unwrap the new data key", target, e, keys))?;
    let new = DataKey::from_slice(&plaintext).map_err(|e| vol_err(volume, e))?;
    drop(plaintext);
    Ok((wrapped, new))
}

/// A new data key from the KMS under `key` (default: the volume's),
/// unwrapped once for its key check value, and the superblock recording
/// the re-encryption to it, written crash-safely.
async fn begin<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    opened: &OpenedVolume,
    sb: &Superblock,
    key: Option<&str>,
) -> Result<(Superblock, DataKey), EnvelopeError> {
    let (wrapped, new) = generate_new_key(keys, volume, sb, key).await?;
    let mut next = reencryption::begin(
        sb,
        NewKey {
            key_arn: wrapped.key_arn,
            wrapped_key: wrapped.blob,
            key_check: new.key_check(&sb.uuid),
        },
        now_unix_seconds(),
    );
    volume::write_superblock_to(opened.store.backend(), &mut next)
        .map_err(|e| vol_err(volume, e))?;
    Ok((next, new))
}

/// Steps until every sector is under the new key, at most `max_rate`
/// bytes per second, asking the KMS for the new key every
/// [`KEY_RECHECK`]; between steps, `stop` (if given) ends it early.
#[allow(clippy::too_many_arguments)]
async fn run_steps<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    handle: &Arc<volume::Volume>,
    sb: &Superblock,
    t: &Transition,
    options: ReencryptOptions<'_>,
    progress: &mut (dyn FnMut(Progress) + Send),
    stop: Option<&(dyn Fn() -> bool + Send + Sync)>,
) -> Result<(), EnvelopeError> {
    let sector = u64::from(sb.sector_size);
    // Several hotzone steps per call: the volume pipelines the steps of
    // one call (a step is read and transformed while the one before is
    // written), and a stop request still waits at most this long.
    let hotzone = MAX_HOTZONE_SECTORS as u64 * sector;
    let largest = STEPS_PER_CALL * hotzone;
    // A throttled run takes steps of about a quarter second's worth, so
    // that the rate holds over short spans too.
    let step_bytes = match options.max_rate {
        Some(rate) => (rate / 4).clamp(sector, largest),
        None => largest,
    };
    let started = Instant::now();
    let mut last_check = Instant::now();
    let mut bytes_this_run = 0u64;
    loop {
        if stop.is_some_and(|stop| stop()) {
            return Err(vol_err(
                volume,
                "re-encryption stopped (the volume is being detached); `envol volume reencrypt` resumes it",
            ));
        }
        let v = handle.clone();
        let before = v
            .reencryption_progress()
            .map(|p| p.done_bytes())
            .unwrap_or(0);
        let p = tokio::task::spawn_blocking(move || v.reencrypt_steps(step_bytes, hotzone))
            .await
            .map_err(|e| vol_err(volume, e))?
            .map_err(|e| {
                vol_err(
                    volume,
                    format!(
                        "re-encryption stopped ({e}); run `envol volume reencrypt` again to resume"
                    ),
                )
            })?;
        progress(p);
        if p.is_complete() {
            return Ok(());
        }
        bytes_this_run += p.done_bytes().saturating_sub(before);
        if let Some(rate) = options.max_rate.filter(|&r| r > 0) {
            let due = Duration::from_secs_f64(bytes_this_run as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if last_check.elapsed() >= KEY_RECHECK {
            last_check = Instant::now();
            let checked = keys
                .unwrap_key(&t.new_key_arn, &t.new_wrapped_key, &sb.encryption_context)
                .await;
            if let Err(e) = checked {
                return Err(key_failure(
                    volume,
                    "continue the re-encryption (stopped; `envol volume reencrypt` resumes it)",
                    &t.new_key_arn,
                    e,
                    keys,
                ));
            }
        }
    }
}
