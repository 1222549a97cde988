//! What an open volume keeps of a data-key re-encryption in progress: the
//! cipher that picks the key by sector, and what the steps share. The
//! steps themselves are [`reencryption`](super::reencryption); the volume
//! (`encrypted_volume`) holds this state and reads its watermark.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use crate::volume::cipher::SectorCipher;
use crate::volume::transition_cipher::TransitionCipher;

/// The cipher a request uses, and the re-encryption it belongs to. Swapped
/// as a whole (never edited) when a re-encryption begins on an attached
/// volume or ends: a request takes one `Arc<Keying>` when it starts and
/// uses that one throughout, so it never mixes two.
pub(super) struct Keying {
    pub(super) cipher: Arc<dyn SectorCipher>,
    pub(super) reencryption: Option<Arc<Reencryption>>,
}

impl std::fmt::Debug for Keying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keying")
            .field("in_transition", &self.reencryption.is_some())
            .finish_non_exhaustive()
    }
}

/// The re-encryption state of an open volume.
#[derive(Debug)]
pub struct Reencryption {
    pub(super) cipher: Arc<TransitionCipher>,
    /// Steps run one at a time (the superblock they update is the
    /// volume's own, under the lock a grow takes too); the step buffer is
    /// reused, so a step allocates nothing.
    pub(super) state: Mutex<StepState>,
    /// Sectors `[first, end)` of a step whose hotzone is recorded and whose
    /// writes are under way — or failed part-way on a volume that stays
    /// open: some of them may hold new ciphertext while the watermark says
    /// old, so requests to them fail until the step is recovered (a read
    /// would decrypt with the wrong key, and a write under the old key
    /// would later be taken for new ciphertext by the digest check).
    pub(super) unrecovered: Mutex<Option<(u64, u64)>>,
}

impl Reencryption {
    pub(super) fn new(cipher: Arc<TransitionCipher>) -> Self {
        Self {
            cipher,
            state: Mutex::new(StepState {
                buffer: Vec::new(),
                spare: Vec::new(),
                predecessor: None,
                failed_step: false,
            }),
            unrecovered: Mutex::new(None),
        }
    }

    pub(super) fn set_unrecovered(&self, range: Option<(u64, u64)>) {
        *self
            .unrecovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = range;
    }

    /// `Err` if a request of sectors `[first, end)` reaches a failed step
    /// not yet recovered.
    pub(super) fn check_recovered(&self, first: u64, end: u64) -> io::Result<()> {
        match *self
            .unrecovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some((a, b)) if first < b && a < end => Err(io::Error::other(
                "a data-key re-encryption step over these sectors failed and is not recovered yet",
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
pub(super) struct StepState {
    /// A step's buffer, and the next one's (steps are pipelined).
    pub(super) buffer: Vec<u8>,
    pub(super) spare: Vec<u8>,
    /// The keying replaced when this re-encryption began on an attached
    /// volume: reads that started before took no range lock and decrypt
    /// with its single key, so the first step waits until none holds it
    /// any more (its last `Arc` is this one), then drops it.
    pub(super) predecessor: Option<Arc<Keying>>,
    /// The last step failed: its hotzone may be part rewritten, so the
    /// next one recovers it first.
    pub(super) failed_step: bool,
}
