//! What goes wrong with plugins: one that cannot be used, and a batch one could not
//! process.

use super::manifest::ManifestError;
use crate::error::{ErrorKind, HostPanic};
use crate::storage::StorageError;

/// A plugin that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("plugin {plugin} {message}")]
    Invalid { plugin: String, message: String },
    #[error("the dead-letter location: {0}")]
    DeadLetters(#[from] StorageError),
    #[error(transparent)]
    Panic(#[from] HostPanic),
}

impl LoadError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            LoadError::Manifest(_) | LoadError::Invalid { .. } => ErrorKind::Plugin,
            LoadError::DeadLetters(e) => e.kind(),
            LoadError::Panic(_) => ErrorKind::Internal,
        }
    }
}

/// A batch a plugin could not process under its failure policy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}@{version} {message} (tables {tables}, LSN {first_lsn} to {last_lsn})")]
pub struct PluginFailure {
    pub plugin: String,
    pub version: String,
    pub tables: String,
    pub first_lsn: crate::Lsn,
    pub last_lsn: crate::Lsn,
    pub message: String,
}
