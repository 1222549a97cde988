//! The validated set of exports that connections negotiate against.

use std::sync::Arc;

use super::export::{Export, ExportError, check_export, valid_string};
use super::served_export::ServedExport;

/// A validated list of exports: a snapshot of what the server offers.
/// Never changed once built: attach and detach build a new one
/// (`registry.rs`), and each connection reads the current one only while
/// it negotiates.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExportSet {
    exports: Vec<Arc<ServedExport>>,
}

impl ExportSet {
    /// At least one export, every one valid and named once.
    pub(crate) fn new(exports: Vec<Export>) -> Result<Self, ExportError> {
        if exports.is_empty() {
            return Err(ExportError::Empty);
        }
        let mut set = Self::default();
        for export in exports {
            set = set.with(export, None)?;
        }
        Ok(set)
    }

    /// This set and `export` (valid, its name not yet used, not even by an
    /// export being detached).
    pub(crate) fn with(
        &self,
        export: Export,
        certified_description: Option<String>,
    ) -> Result<Self, ExportError> {
        check_export(&export)?;
        if self.exports.iter().any(|o| o.name == export.name) {
            return Err(ExportError::DuplicateName(export.name));
        }
        if certified_description
            .as_deref()
            .is_some_and(|d| !valid_string(d))
        {
            return Err(ExportError::BadDescription(export.name));
        }
        let mut exports = self.exports.clone();
        exports.push(Arc::new(ServedExport::new(export, certified_description)));
        Ok(Self { exports })
    }

    /// This set without the export `served`.
    pub(crate) fn without(&self, served: &Arc<ServedExport>) -> Self {
        let exports = self
            .exports
            .iter()
            .filter(|e| !Arc::ptr_eq(e, served))
            .cloned()
            .collect();
        Self { exports }
    }

    /// Sets what clients with a verified TLS client certificate see as the
    /// description of export `name`.
    pub(crate) fn set_certified_description(
        &mut self,
        name: &str,
        description: String,
    ) -> Result<(), ExportError> {
        let Some(i) = self.exports.iter().position(|e| e.name == name) else {
            return Err(ExportError::UnknownExport(name.to_string()));
        };
        if !valid_string(&description) {
            return Err(ExportError::BadDescription(name.to_string()));
        }
        self.exports[i] = Arc::new(self.exports[i].with_certified_description(description));
        Ok(())
    }

    /// Every export, those being detached included.
    pub(crate) fn all(&self) -> &[Arc<ServedExport>] {
        &self.exports
    }

    /// The exports clients may reach: not those being detached.
    pub(crate) fn open(&self) -> impl Iterator<Item = &Arc<ServedExport>> {
        self.exports.iter().filter(|e| !e.is_closing())
    }

    /// Looks an export up by the name a client sent; the empty name is the
    /// default export, i.e. the first one still open.
    pub(crate) fn find(&self, name: &[u8]) -> Option<&Arc<ServedExport>> {
        let mut open = self.open();
        if name.is_empty() {
            return open.next();
        }
        open.find(|e| e.name.as_bytes() == name)
    }

    /// The export named `name`, open or not.
    pub(crate) fn named(&self, name: &str) -> Option<&Arc<ServedExport>> {
        self.exports.iter().find(|e| e.name == name)
    }
}
