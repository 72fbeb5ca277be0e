//! Loading plugins for a pipeline: the engine they share, the dead-letter location, and
//! the transform chain in declared order.

use super::call::Instance;
use super::dead_letter::{DeadLetters, Stage};
use super::engine::PluginEngine;
use super::error::LoadError;
use super::manifest::OnError;
use super::transform::{TransformChain, TransformPlugin};
use crate::config::{PipelineConfig, SinkConfig};
use crate::stats::{Component, Stats};
use std::sync::Arc;

/// What plugins share: the engine (made when any plugin is configured) and the
/// dead-letter location (when the pipeline has one).
#[derive(Clone)]
pub struct Plugins {
    pub engine: Option<PluginEngine>,
    pub dead_letters: Option<DeadLetters>,
    /// Where plugins count their calls (none outside a pipeline run).
    pub stats: Option<Arc<Stats>>,
}

impl Plugins {
    pub fn setup(config: &PipelineConfig) -> Result<Plugins, LoadError> {
        let any = !config.transforms.is_empty()
            || config
                .sinks
                .iter()
                .any(|s| matches!(s, SinkConfig::Plugin(_)));
        let engine = match any {
            true => Some(
                PluginEngine::new(PluginEngine::default_cache_dir()).map_err(|e| {
                    LoadError::Invalid {
                        plugin: "engine".into(),
                        message: e.to_string(),
                    }
                })?,
            ),
            false => None,
        };
        let dead_letters = match config.state_url() {
            Some(url) => Some(DeadLetters::open(url, &config.source.slot)?),
            None => None,
        };
        Ok(Plugins {
            engine,
            dead_letters,
            stats: None,
        })
    }
}

/// Loads the transform chain of `config` (blocking: compiling can take seconds).
pub fn load_chain(
    config: &PipelineConfig,
    plugins: &Plugins,
) -> Result<Option<TransformChain>, LoadError> {
    if plugins.engine.is_none() || config.transforms.is_empty() {
        return Ok(None);
    }
    let mut chain = Vec::new();
    for i in 0..config.transforms.len() {
        let plugin = load_transform(config, plugins, i)?;
        tracing::info!(plugin = %plugin.label(), on_error = plugin.on_error().as_str(), "Transform loaded.");
        chain.push(plugin);
    }
    Ok(Some(TransformChain::new(chain)))
}

/// Loads transform `i` of `config` (blocking), with its dead-letter stage.
pub fn load_transform(
    config: &PipelineConfig,
    plugins: &Plugins,
    i: usize,
) -> Result<TransformPlugin, LoadError> {
    let engine = plugins
        .engine
        .as_ref()
        .expect("an engine is made when a transform is configured");
    let t = &config.transforms[i];
    let mut plugin = TransformPlugin::load(engine, &t.plugin, &t.config)?;
    if let Some(stats) = &plugins.stats {
        plugin.set_call_stats(stats.component(Component::Plugin, plugin.name()));
    }
    if plugin.on_error() == OnError::DeadLetter {
        let Some(d) = &plugins.dead_letters else {
            return Err(no_dead_letter_location(plugin.label()));
        };
        plugin.set_dead_letters(d.clone(), Stage::Transform(i));
    }
    Ok(plugin)
}

/// A plugin set to dead-letter in a pipeline that has nowhere to put them.
pub fn no_dead_letter_location(plugin: String) -> LoadError {
    LoadError::Invalid {
        plugin,
        message: "has on_error = \"dead-letter\" but the pipeline has no place for dead letters: add a parquet sink or [state] url".into(),
    }
}
