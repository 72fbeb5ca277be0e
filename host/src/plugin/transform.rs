//! Transform plugins and the chain that runs them in declared order.

use super::bindings::v0_1_0::transformer::weir::plugin::types::PluginError as WitError;
use super::bindings::v0_1_0::transformer::{Transformer, TransformerPre};
use super::bindings::v0_1_0::{self, TRANSFORM_EXPORT};
use super::call::{self, CallError, Common, Instance, Isolate, classify};
use super::engine::PluginEngine;
use super::error::{LoadError, PluginFailure};
use super::manifest::{OnError, PluginKind};
use super::state::PluginState;
use super::values;
use std::path::Path;
use wasmtime::Store;
use wasmtime::component::HasSelf;
use weir_sdk::Batch;

/// One loaded transform plugin.
pub struct TransformPlugin {
    common: Common,
    pre: TransformerPre<PluginState>,
    instance: Option<(Store<PluginState>, Transformer)>,
}

impl TransformPlugin {
    /// Loads, checks and initializes a transform from its manifest, with the pipeline's
    /// `config` overlaid on the manifest's defaults.
    pub fn load(
        engine: &PluginEngine,
        manifest_path: &Path,
        config: &toml::Table,
    ) -> Result<TransformPlugin, LoadError> {
        let (common, pre) = call::prepare(
            engine,
            manifest_path,
            PluginKind::Transform,
            TRANSFORM_EXPORT,
            config,
        )?
        .link(
            |linker| {
                v0_1_0::transformer::Transformer::add_to_linker::<_, HasSelf<PluginState>>(
                    linker,
                    |s| s,
                )
            },
            TransformerPre::new,
        )?;
        let label = common.label();
        let invalid = |message: String| LoadError::Invalid {
            plugin: label.clone(),
            message,
        };
        let mut plugin = TransformPlugin {
            common,
            pre,
            instance: None,
        };
        let limits = plugin.common.manifest.limits.clone();
        plugin.instance().map_err(|e| match e {
            CallError::Plugin(WitError::BadConfig(m)) => {
                invalid(format!("rejected its configuration: {m}"))
            }
            other => invalid(format!("failed to initialize: {}", other.describe(&limits))),
        })?;
        Ok(plugin)
    }

    /// The live instance, made (and initialized) when there is none.
    fn instance(&mut self) -> Result<&mut (Store<PluginState>, Transformer), CallError> {
        if self.instance.is_none() {
            let mut store = self.common.new_store()?;
            let bindings = self.pre.instantiate(&mut store).map_err(classify)?;
            store.set_epoch_deadline(self.common.deadline_ticks());
            bindings
                .weir_plugin_transform()
                .call_init(&mut store, &self.common.config_json)
                .map_err(classify)?
                .map_err(CallError::Plugin)?;
            self.instance = Some((store, bindings));
        }
        Ok(self.instance.as_mut().expect("made above"))
    }

    /// One call of `process`, with a deadline; a poisoned instance is dropped.
    pub fn call(&mut self, input: &Vec<u8>) -> Result<Vec<u8>, CallError> {
        let ticks = self.common.deadline_ticks();
        let result = self.instance().and_then(|(store, bindings)| {
            store.set_epoch_deadline(ticks);
            bindings
                .weir_plugin_transform()
                .call_process(&mut *store, input)
                .map_err(classify)?
                .map_err(CallError::Plugin)
        });
        if let Err(e) = &result
            && e.poisons_instance()
        {
            self.instance = None;
        }
        result
    }

    /// Runs one batch through the plugin, retrying transient failures.
    fn process(&mut self, batch: &Batch) -> Result<Batch, CallError> {
        let started = std::time::Instant::now();
        let input = batch.encode();
        let encoded = started.elapsed();
        let call_started = std::time::Instant::now();
        let (limits, label) = (self.common.manifest.limits.clone(), self.label());
        let out = call::retry_transient(&limits, &label, || self.call(&input))?;
        let called = call_started.elapsed();
        let decoded = Batch::decode(&out).map_err(|e| CallError::Malformed(e.to_string()));
        tracing::debug!(
            plugin = %self.label(),
            events = batch.events.len(),
            bytes_in = input.len(),
            bytes_out = out.len(),
            encode_us = encoded.as_micros() as u64,
            call_us = called.as_micros() as u64,
            decode_us = (call_started.elapsed() - called).as_micros() as u64,
            "Transform call."
        );
        decoded
    }

    /// Runs a batch under the plugin's failure policy. The output is passed on as the
    /// plugin returned it, checked ([`Batch::check`]) but not decoded: the next transform
    /// takes bytes, so only the chain's end decodes (a failure decodes the input, for
    /// the policy).
    fn apply_passing(&mut self, input: Passing) -> Result<Passing, PluginFailure> {
        let started = std::time::Instant::now();
        let (bytes, decoded) = match input {
            Passing::Decoded(batch) => (batch.encode(), Some(batch)),
            Passing::Encoded { bytes, .. } => (bytes, None),
        };
        let encoded = started.elapsed();
        let (limits, label) = (self.common.manifest.limits.clone(), self.label());
        let called = call::retry_transient(&limits, &label, || self.call(&bytes));
        let call_us = (started.elapsed() - encoded).as_micros() as u64;
        let checked = called.and_then(|out| match Batch::check(&out) {
            Ok(events) => Ok(Passing::Encoded { bytes: out, events }),
            Err(e) => Err(CallError::Malformed(e.to_string())),
        });
        tracing::debug!(
            plugin = %label,
            bytes_in = bytes.len(),
            encode_us = encoded.as_micros() as u64,
            call_us,
            check_us = (started.elapsed() - encoded).as_micros() as u64 - call_us,
            "Transform call."
        );
        let errored = checked.is_err();
        let result = checked.or_else(|e| {
            let batch = match decoded {
                Some(batch) => batch,
                // Checked when the previous transform returned it.
                None => Batch::decode(&bytes).map_err(|d| {
                    self.common
                        .failure(&Batch::default(), &CallError::Malformed(d.to_string()))
                })?,
            };
            match self.common.manifest.on_error {
                OnError::Fail => Err(self.common.failure(&batch, &e)),
                OnError::Skip | OnError::DeadLetter => {
                    let mut out = Batch::default();
                    call::isolate(self, batch, e, &mut out).map(|()| Passing::Decoded(out))
                }
            }
        });
        self.common.calls.record(started, errored, &result);
        result
    }

    /// Whether the plugin takes lists and structs (its manifest's `nested_types`).
    pub fn nested_types(&self) -> bool {
        self.common.manifest.nested_types
    }

    /// Runs a batch under the plugin's failure policy, in the form of values the plugin
    /// takes; what it returns is in PostgreSQL's text form.
    pub fn apply(&mut self, mut batch: Batch) -> Result<Batch, PluginFailure> {
        if self.nested_types() {
            values::nest(&mut batch);
        }
        let mut out = self
            .apply_passing(Passing::Decoded(batch))?
            .into_batch(self)?;
        values::flatten(&mut out);
        Ok(out)
    }
}

/// A batch between two transforms: decoded, or as the previous one returned it.
enum Passing {
    Decoded(Batch),
    Encoded { bytes: Vec<u8>, events: usize },
}

impl Passing {
    fn is_empty(&self) -> bool {
        match self {
            Passing::Decoded(batch) => batch.events.is_empty(),
            Passing::Encoded { events, .. } => *events == 0,
        }
    }

    /// The batch, decoded; `from` is the transform that returned it.
    fn into_batch(self, from: &TransformPlugin) -> Result<Batch, PluginFailure> {
        match self {
            Passing::Decoded(batch) => Ok(batch),
            Passing::Encoded { bytes, .. } => Batch::decode(&bytes).map_err(|e| {
                from.common
                    .failure(&Batch::default(), &CallError::Malformed(e.to_string()))
            }),
        }
    }
}

impl Instance for TransformPlugin {
    fn common(&self) -> &Common {
        &self.common
    }

    fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }
}

impl Isolate for TransformPlugin {
    type Out = Batch;

    fn attempt(&mut self, part: &Batch, out: &mut Batch) -> Result<(), CallError> {
        let done = self.process(part)?;
        append(out, done);
        Ok(())
    }
}

/// Appends `more` to `out`, re-indexing its events' relations.
fn append(out: &mut Batch, more: Batch) {
    let base = out.relations.len() as u32;
    out.relations.extend(more.relations);
    out.events.extend(more.events.into_iter().map(|mut e| {
        e.rel += base;
        e
    }));
}

/// Transforms in declared order.
#[derive(Default)]
pub struct TransformChain {
    plugins: Vec<TransformPlugin>,
}

impl TransformChain {
    pub fn new(plugins: Vec<TransformPlugin>) -> TransformChain {
        TransformChain { plugins }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn plugins(&self) -> &[TransformPlugin] {
        &self.plugins
    }

    /// Puts `plugin` in place of transform `index`; returns the one it replaces.
    pub fn replace(&mut self, index: usize, plugin: TransformPlugin) -> TransformPlugin {
        std::mem::replace(&mut self.plugins[index], plugin)
    }

    /// Runs a batch through every transform. Blocking: call it off the async threads.
    pub fn apply(&mut self, batch: Batch) -> Result<Batch, PluginFailure> {
        self.apply_from(0, batch)
    }

    /// Runs a batch through the transforms from position `first` on (a dead letter's
    /// replay starts where it failed).
    pub fn apply_from(&mut self, first: usize, batch: Batch) -> Result<Batch, PluginFailure> {
        let plugins = self.plugins.get_mut(first..).unwrap_or_default();
        if plugins.is_empty() || batch.events.is_empty() {
            return Ok(batch);
        }
        // The batch's values are in PostgreSQL's text form until a plugin that takes
        // nested types gets them, and back in it for a plugin that does not, and at the end.
        let (mut batch, mut nested) = (Passing::Decoded(batch), false);
        for i in 0..plugins.len() {
            let wants = plugins[i].nested_types();
            if wants != nested {
                let mut decoded = batch.into_batch(&plugins[i.saturating_sub(1)])?;
                match wants {
                    true => values::nest(&mut decoded),
                    false => values::flatten(&mut decoded),
                }
                (batch, nested) = (Passing::Decoded(decoded), wants);
            }
            batch = plugins[i].apply_passing(batch)?;
            if batch.is_empty() || i + 1 == plugins.len() {
                let mut out = batch.into_batch(&plugins[i])?;
                if nested {
                    values::flatten(&mut out);
                }
                return Ok(out);
            }
        }
        unreachable!("the last plugin returns")
    }
}
