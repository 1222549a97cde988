//! The monthly price of keys, at the model envol shows operators before
//! they create or rotate keys: AWS KMS's published $1 a month per customer
//! managed key, and $1 a month per rotated key version (each rotation keeps
//! the old material, so a key with n versions costs n dollars). A key
//! pending deletion costs nothing: AWS does not charge for keys scheduled
//! for deletion (if the deletion is cancelled, the key is charged again).

use super::key_state::KeyState;

/// US dollars a month for each version of a key's material.
pub const USD_PER_KEY_VERSION_MONTH: u64 = 1;

/// A key's monthly cost in US dollars: `versions` counts the original
/// material and one per rotation.
pub fn monthly_cost_usd(state: KeyState, versions: u64) -> u64 {
    match state {
        KeyState::PendingDeletion => 0,
        KeyState::Enabled | KeyState::Disabled => versions * USD_PER_KEY_VERSION_MONTH,
    }
}

#[cfg(test)]
#[path = "price_tests.rs"]
mod tests;
