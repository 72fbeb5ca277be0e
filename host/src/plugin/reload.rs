//! Hot reload of transforms: when a transform's component, manifest or its `config` in the
//! pipeline file changes on disk, on SIGHUP, or on `weir reload`, the new version is
//! compiled and initialized off the hot path and handed to the pipeline, which swaps it
//! in between two batches. A version that fails to load is logged and counted; the one
//! running goes on.

use super::call::Instance;
use super::loader::{Plugins, load_transform};
use super::manifest::{Manifest, ManifestError};
use super::transform::TransformPlugin;
use crate::config::PipelineConfig;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// A new version of transform `index`, loaded and initialized.
pub struct Swap {
    pub index: usize,
    pub plugin: TransformPlugin,
}

/// Why a reload check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed.
    Files,
    /// SIGHUP.
    Signal,
    /// `weir reload` (a `weir.reload` message in the WAL).
    Command,
}

/// Counts of reload outcomes in this run.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    pub swapped: AtomicU64,
    pub failed: AtomicU64,
}

/// The pipeline's end of the reloader.
pub struct Reloader {
    swaps: mpsc::UnboundedReceiver<Swap>,
    triggers: mpsc::UnboundedSender<Trigger>,
    pub counts: Arc<ReloadCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reloader {
    /// Starts watching the pipeline file (and through it the transforms' manifests and
    /// components) every `poll` when `watch`, and SIGHUP always.
    pub fn start(
        pipeline_file: PathBuf,
        config: &PipelineConfig,
        plugins: Plugins,
        watch: bool,
        poll: Duration,
    ) -> Reloader {
        let (swap_tx, swaps) = mpsc::unbounded_channel();
        let (triggers, mut trigger_rx) = mpsc::unbounded_channel();
        let counts = Arc::new(ReloadCounts::default());
        let mut state = Watched::new(&pipeline_file, config);
        let task_counts = counts.clone();
        let task = tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                let trigger = tokio::select! {
                    _ = tick.tick(), if watch => {
                        if !state.files_changed() {
                            continue;
                        }
                        Trigger::Files
                    }
                    Some(()) = next_hangup(&mut hangup) => Trigger::Signal,
                    t = trigger_rx.recv() => match t {
                        Some(t) => t,
                        None => return,
                    },
                };
                state.check(trigger, &plugins, &swap_tx, &task_counts).await;
            }
        });

        Reloader {
            swaps,
            triggers,
            counts,
            task,
        }
    }

    /// A new transform version ready to be swapped in, if any.
    pub fn ready(&mut self) -> Option<Swap> {
        self.swaps.try_recv().ok()
    }

    /// Asks for a reload check (from a `weir.reload` marker).
    pub fn request(&self, trigger: Trigger) {
        let _ = self.triggers.send(trigger);
    }
}

/// The next SIGHUP (never, when the handler could not be installed).
async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// What the reloader knows of the files it watches.
struct Watched {
    pipeline_file: PathBuf,
    /// Modification times of the pipeline file and every manifest and component.
    mtimes: Vec<(PathBuf, Option<SystemTime>)>,
    /// Per transform: the fingerprint of the version running, and of the last version
    /// tried (a broken one is not retried until its files change again).
    running: Vec<String>,
    tried: Vec<String>,
}

impl Watched {
    fn new(pipeline_file: &Path, config: &PipelineConfig) -> Watched {
        let running: Vec<String> = (0..config.transforms.len())
            .map(|i| fingerprint(config, i).unwrap_or_default())
            .collect();
        let mut w = Watched {
            pipeline_file: pipeline_file.to_path_buf(),
            mtimes: Vec::new(),
            tried: running.clone(),
            running,
        };
        w.mtimes = w.current_mtimes(config);
        w
    }

    fn current_mtimes(&self, config: &PipelineConfig) -> Vec<(PathBuf, Option<SystemTime>)> {
        let mut paths = vec![self.pipeline_file.clone()];
        for t in &config.transforms {
            match Manifest::load(&t.plugin) {
                Ok((manifest, file)) => {
                    paths.push(manifest.wasm_path(&file));
                    paths.push(file);
                }
                // Watched even while it does not load: fixing it is a change.
                Err(_) if t.plugin.is_dir() => {
                    paths.push(t.plugin.join(super::manifest::MANIFEST_FILE))
                }
                Err(_) => paths.push(t.plugin.clone()),
            }
        }
        paths
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
                (p, m)
            })
            .collect()
    }

    fn files_changed(&self) -> bool {
        self.mtimes
            .iter()
            .any(|(p, m)| std::fs::metadata(p).and_then(|m| m.modified()).ok() != *m)
    }

    /// Loads every transform whose version changed and hands it over.
    async fn check(
        &mut self,
        trigger: Trigger,
        plugins: &Plugins,
        swaps: &mpsc::UnboundedSender<Swap>,
        counts: &ReloadCounts,
    ) {
        let config = match PipelineConfig::load(&self.pipeline_file) {
            Ok(c) => c,
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(?trigger, error = %e, "Reload refused: the pipeline file does not load; the running transforms go on.");
                self.mtimes = self.refreshed_mtimes();
                return;
            }
        };
        self.mtimes = self.current_mtimes(&config);
        if config.transforms.len() != self.running.len() {
            tracing::warn!(
                ?trigger,
                "Reload skipped: transforms were added or removed, which takes a restart; the running ones go on."
            );
            return;
        }
        // Every changed transform loads, or none is swapped: one edit of the pipeline
        // file takes effect whole.
        let mut ready = Vec::new();
        let mut failed = false;
        for index in 0..config.transforms.len() {
            let print = match fingerprint(&config, index) {
                Ok(p) => p,
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(transform = index, error = %e, "Reload failed: the old version keeps running.");
                    failed = true;
                    continue;
                }
            };
            let unchanged = print == self.running[index];
            let broken_again = print == self.tried[index] && trigger == Trigger::Files;
            if unchanged || broken_again {
                continue;
            }
            self.tried[index] = print.clone();
            let (config, plugins) = (config.clone(), plugins.clone());
            let loaded = crate::error::blocking("loading a transform", move || {
                load_transform(&config, &plugins, index)
            })
            .await;
            match loaded
                .map_err(super::error::LoadError::from)
                .and_then(|l| l)
            {
                Ok(plugin) => ready.push((index, print, plugin)),
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(transform = index, error = %e, "Reload failed: the old version keeps running.");
                    failed = true;
                }
            }
        }
        if failed && !ready.is_empty() {
            tracing::warn!(
                loaded = ready.len(),
                "The other transforms of this change loaded but are not swapped in alone: fix the failing one and the whole change applies."
            );
            return;
        }
        for (index, print, plugin) in ready {
            tracing::info!(transform = index, plugin = %plugin.label(), "New transform version loaded; it takes over at the next batch boundary between transactions.");
            self.running[index] = print;
            if swaps.send(Swap { index, plugin }).is_err() {
                return;
            }
        }
    }

    /// The same files, at their current times (after a failure: the next edit is noticed,
    /// and nothing is retried until then).
    fn refreshed_mtimes(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        self.mtimes
            .iter()
            .map(|(p, _)| {
                let m = std::fs::metadata(p).and_then(|m| m.modified()).ok();
                (p.clone(), m)
            })
            .collect()
    }
}

/// What identifies a transform's version: its manifest, its component and its `config`.
fn fingerprint(config: &PipelineConfig, index: usize) -> Result<String, FingerprintError> {
    let t = &config.transforms[index];
    let (manifest, file) = Manifest::load(&t.plugin)?;
    let wasm = manifest.wasm_path(&file);
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| FingerprintError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut hash = Sha256::new();
    hash.update(read(&file)?);
    hash.update(read(&wasm)?);
    hash.update(t.config.to_string());
    Ok(format!("{:x}", hash.finalize()))
}

/// A transform's files could not be read to tell its version.
#[derive(Debug, thiserror::Error)]
enum FingerprintError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
