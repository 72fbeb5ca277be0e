//! WebAssembly plugins: the engine, manifests, per-version bindings, sandboxed instances
//! and the transform chain.
//!
//! Every plugin runs in its own store with a memory cap and a deadline on each call, and
//! sees nothing of the host (files, environment, network, clocks, randomness) beyond what
//! its manifest grants. A trap, a deadline or a memory overrun is an error naming the
//! plugin, its version, the tables and the LSN range, never a crash and never a lost event.

pub mod bindings;
mod call;
pub mod dead_letter;
pub mod engine;
pub mod manifest;
pub mod sink;
pub mod state;
pub mod transform;

pub use call::CallError;
pub(crate) use call::describe as describe_manifest;
pub use dead_letter::{DeadLetter, DeadLetters};
pub use engine::PluginEngine;
pub use manifest::{Manifest, ManifestError, OnError};
pub use sink::SinkPlugin;
pub use transform::{TransformChain, TransformPlugin};

/// A plugin that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("plugin {plugin} {message}")]
    Invalid { plugin: String, message: String },
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
