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
mod error;
pub mod loader;
pub mod manifest;
pub mod reload;
pub mod sink;
pub mod state;
pub mod transform;
pub mod values;

pub(crate) use call::describe as describe_manifest;
pub use call::{CallError, Instance};
pub use dead_letter::{DeadLetter, DeadLetterError, DeadLetters, Stage};
pub use engine::PluginEngine;
pub use manifest::{Manifest, ManifestError, OnError};
pub use sink::SinkPlugin;
pub use transform::{TransformChain, TransformPlugin};

pub use error::{LoadError, PluginFailure};
pub use loader::{Plugins, load_chain, load_transform};
