//! The shared wasmtime engine: epoch ticker and the compiled-component cache.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances: the resolution of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A component that could not be compiled or loaded.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    #[error("{path}: not a WebAssembly component weir can run: {message}")]
    Compile { path: PathBuf, message: String },
}

/// One engine for every plugin of a process.
#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
}

impl PluginEngine {
    /// An engine with epoch interruption, caching compiled components in `cache_dir`.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<PluginEngine, EngineError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| EngineError::Engine(e.to_string()))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| EngineError::Engine(e.to_string()))?;
        Ok(PluginEngine { engine, cache_dir })
    }

    /// The default cache directory: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir/components`,
    /// else `~/.cache/weir/components`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("weir").join("components"))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The cache file for a component: its content hash and the engine's compatibility.
    fn cache_file(&self, wasm: &[u8]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut engine_hash = std::hash::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let content: String = Sha256::digest(wasm)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(dir.join(format!("{content}-{:016x}.cwasm", engine_hash.finish())))
    }

    /// Compiles a component, or loads it compiled from the cache.
    pub fn load(&self, path: &Path, wasm: &[u8]) -> Result<Arc<Component>, EngineError> {
        let compile_err = |e: wasmtime::Error| EngineError::Compile {
            path: path.into(),
            message: format!("{e:#}"),
        };
        let cache = self.cache_file(wasm);
        if let Some(file) = &cache
            && file.exists()
        {
            match deserialize(&self.engine, file) {
                Ok(component) => return Ok(Arc::new(component)),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "Compiled component unusable; compiling again.")
                }
            }
        }
        let started = std::time::Instant::now();
        let compiled = self
            .engine
            .precompile_component(wasm)
            .map_err(compile_err)?;
        tracing::info!(plugin = %path.display(), ms = started.elapsed().as_millis() as u64, "Compiled the component.");
        if let Some(file) = &cache {
            if let Err(e) = write_atomically(file, &compiled) {
                tracing::warn!(file = %file.display(), error = %e, "Could not cache the compiled component.");
            } else if let Ok(component) = deserialize(&self.engine, file) {
                return Ok(Arc::new(component));
            }
        }
        Component::new(&self.engine, wasm)
            .map(Arc::new)
            .map_err(compile_err)
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `precompile_component` of an engine with the same
    // compatibility hash (it is in the file name), atomically, into weir's own cache
    // directory, and is never modified in place.
    unsafe { Component::deserialize_file(engine, file) }
}

fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().expect("cache file has a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), bytes)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}
