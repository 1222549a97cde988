//! A snapshot session of an attached volume, as the controller keeps it
//! (by export name) for `status` and the metrics; the session itself is
//! `snapshot_session.rs`.

use std::sync::Arc;

use crate::volume::FrozenView;

pub(super) struct ActiveSnapshot {
    pub base: String,
    /// A file volume's frozen view (none for a store snapshot).
    pub view: Option<Arc<FrozenView>>,
}
