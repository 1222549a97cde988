//! A master key's state, as AWS names it.
//!
//! ```text
//!   Enabled ──DisableKey──▶ Disabled ──EnableKey──▶ Enabled
//!      │                       │
//!      └──ScheduleKeyDeletion──┴──▶ PendingDeletion ──window passes──▶ destroyed
//!                                        │
//!                                        └──CancelKeyDeletion──▶ Disabled
//! ```
//!
//! The store keeps a state as its AWS name (`Enabled`, ...), the same text
//! envol has always written, so no database migration is needed; a name this
//! build does not know is refused when read, never guessed.

use std::fmt;
use std::str::FromStr;

/// The states envol's symmetric keys go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    /// The AWS name (KeyMetadata.KeyState), also the stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key state {0:?} (this envol knows Enabled, Disabled, PendingDeletion)")]
pub struct UnknownKeyState(pub String);

impl FromStr for KeyState {
    type Err = UnknownKeyState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Enabled" => Ok(KeyState::Enabled),
            "Disabled" => Ok(KeyState::Disabled),
            "PendingDeletion" => Ok(KeyState::PendingDeletion),
            other => Err(UnknownKeyState(other.to_string())),
        }
    }
}

#[cfg(test)]
#[path = "key_state_tests.rs"]
mod tests;
