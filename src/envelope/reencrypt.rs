//! `volume reencrypt`: a new data key for a volume, every sector rewritten
//! under it, by the command itself holding the volume's exclusive
//! attachment (a volume attached by a server is refused, naming it).
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
use crate::volume::{self, AttachMode, DATA_KEY_LEN, DataKey, MAX_HOTZONE_SECTORS, Superblock};

/// How often a running re-encryption asks the KMS again for the new key.
pub const KEY_RECHECK: Duration = Duration::from_secs(2);

/// What the caller chose.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReencryptOptions<'a> {
    /// The master key for the new data key (default: the volume's key).
    pub key: Option<&'a str>,
    /// Bytes per second at most (default: as fast as it goes).
    pub max_rate: Option<u64>,
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
) -> Result<Reencrypted, EnvelopeError> {
    let opened = OpenedVolume::open(volume, AttachMode::ReadWrite)?
        .lock(volume, AttachMode::ReadWrite)
        .map_err(|e| with_action(e, "cannot re-encrypt"))?;
    // Chunks still to fetch would arrive under the old key.
    if let Some(record) = volume::HydrationRecord::load(opened.store.backend(), &opened.superblock)
        .map_err(|e| vol_err(volume, e))?
    {
        return Err(vol_err(
            volume,
            format!("cannot re-encrypt: {}", super::still_hydrating(&record)),
        ));
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
        return Err(vol_err(volume, volume::VolumeError::WrongKey));
    }
    let sb = repair_damaged_copy(volume, &opened, AttachMode::ReadWrite);
    let (sb, new) = match &sb.transition {
        Some(t) => {
            if let Some(key) = options.key
                && key != t.new_key_arn
            {
                return Err(vol_err(
                    volume,
                    format!(
                        "a re-encryption to {} is in progress: run `envol volume reencrypt` without --key to resume it",
                        t.new_key_arn
                    ),
                ));
            }
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
    run_steps(keys, volume, &volume_handle, &sb, &t, options, progress).await?;
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
/// [`KEY_RECHECK`].
async fn run_steps<K: KeyService>(
    keys: &K,
    volume: &VolumeAddress,
    handle: &Arc<volume::Volume>,
    sb: &Superblock,
    t: &Transition,
    options: ReencryptOptions<'_>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), EnvelopeError> {
    let sector = u64::from(sb.sector_size);
    let largest = MAX_HOTZONE_SECTORS as u64 * sector;
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
        let v = handle.clone();
        let before = v
            .reencryption_progress()
            .map(|p| p.done_bytes())
            .unwrap_or(0);
        let p = tokio::task::spawn_blocking(move || v.reencrypt_step(step_bytes))
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
