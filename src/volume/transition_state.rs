//! What an open volume keeps of a data-key re-encryption in progress: the
//! cipher that picks the key by sector, and what the steps share. The
//! steps themselves are [`reencryption`](super::reencryption); the volume
//! (`encrypted_volume`) holds this state and reads its watermark.

use std::sync::{Arc, Mutex};

use crate::volume::transition_cipher::TransitionCipher;

/// The re-encryption state of an open volume.
#[derive(Debug)]
pub struct Reencryption {
    pub(super) cipher: Arc<TransitionCipher>,
    /// Steps run one at a time (the superblock they update is the
    /// volume's own, under the lock a grow takes too); the step buffer is
    /// reused, so a step allocates nothing.
    pub(super) state: Mutex<StepState>,
}

#[derive(Debug)]
pub(super) struct StepState {
    pub(super) buffer: Vec<u8>,
}
