//! Transform plugins and the chain that runs them in declared order.

use super::bindings::v0_1_0::transformer::weir::plugin::types::PluginError as WitError;
use super::bindings::v0_1_0::transformer::{Transformer, TransformerPre};
use super::bindings::v0_1_0::{self, TRANSFORM_EXPORT};
use super::engine::{EPOCH_TICK, PluginEngine};
use super::manifest::{Manifest, OnError, PluginKind};
use super::state::{PluginMetrics, PluginState};
use super::{LoadError, PluginFailure};
use std::path::Path;
use std::sync::{Arc, Mutex};
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker};
use weir_sdk::Batch;

/// How many times a transient failure is retried before it counts as a failure.
const TRANSIENT_RETRIES: u32 = 3;

/// What one call produced.
#[derive(Debug)]
pub enum CallError {
    /// The call ran past its deadline.
    Deadline,
    /// The instance tried to grow its memory past the cap.
    Memory,
    /// The guest trapped (a panic, an unreachable, a bad access).
    Trap(String),
    /// The plugin returned an error.
    Plugin(WitError),
    /// The plugin returned bytes that are not a valid batch.
    Malformed(String),
}

impl CallError {
    /// The instance cannot be trusted after this: make a new one.
    fn poisons_instance(&self) -> bool {
        matches!(
            self,
            CallError::Deadline | CallError::Memory | CallError::Trap(_)
        )
    }

    fn describe(&self, limits: &super::manifest::Limits) -> String {
        match self {
            CallError::Deadline => format!(
                "ran past its {} deadline",
                humantime::format_duration(limits.call_timeout)
            ),
            CallError::Memory => {
                format!(
                    "tried to use more than its {} memory limit",
                    bytesize::ByteSize(limits.memory).display().iec()
                )
            }
            CallError::Trap(m) => format!("trapped: {m}"),
            CallError::Plugin(WitError::BadConfig(m)) => format!("bad config: {m}"),
            CallError::Plugin(WitError::BadEvent(b)) => {
                format!("bad event {}: {}", b.index, b.message)
            }
            CallError::Plugin(WitError::Transient(m)) => format!("transient failure: {m}"),
            CallError::Plugin(WitError::Fatal(m)) => format!("failed: {m}"),
            CallError::Malformed(m) => format!("returned a malformed batch: {m}"),
        }
    }
}

fn classify(e: wasmtime::Error) -> CallError {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => CallError::Deadline,
            _ => CallError::Trap(format!("{trap}")),
        };
    }
    let message = format!("{e:#}");
    if message.contains("forcing trap when growing memory")
        || message.contains("memory growth failure")
    {
        CallError::Memory
    } else {
        CallError::Trap(message)
    }
}

/// One loaded transform plugin.
pub struct TransformPlugin {
    manifest: Manifest,
    pre: TransformerPre<PluginState>,
    engine: PluginEngine,
    config_json: String,
    instance: Option<(Store<PluginState>, Transformer)>,
    metrics: Arc<Mutex<PluginMetrics>>,
    /// Events dropped under `on_error = "skip"`.
    skipped: u64,
}

impl TransformPlugin {
    /// Loads, checks and initializes a transform from its manifest, with the pipeline's
    /// `config` overlaid on the manifest's defaults.
    pub fn load(
        engine: &PluginEngine,
        manifest_path: &Path,
        config: &toml::Table,
    ) -> Result<TransformPlugin, LoadError> {
        let (manifest, manifest_file) = Manifest::load(manifest_path)?;
        let label = manifest.label();
        let invalid = |message: String| LoadError::Invalid {
            plugin: label.clone(),
            message,
        };
        if manifest.kind != PluginKind::Transform {
            return Err(invalid(
                "is a sink, not a transform: list it as a [[sink]] with type = \"plugin\"".into(),
            ));
        }
        if manifest.api != "0.1.0" {
            return Err(invalid(format!(
                "was built for weir:plugin@{}, this weir runs 0.1.0: rebuild it against weir-sdk for 0.1.0",
                manifest.api
            )));
        }
        if manifest.on_error == OnError::DeadLetter {
            return Err(invalid(
                "on_error = \"dead-letter\" is not available yet: use \"fail\" or \"skip\"".into(),
            ));
        }
        let wasm_path = manifest.wasm_path(&manifest_file);
        let wasm = std::fs::read(&wasm_path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", wasm_path.display())))?;
        if let Some(expected) = &manifest.sha256 {
            use sha2::Digest;
            let actual: String = sha2::Sha256::digest(&wasm)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(invalid(format!(
                    "{} has sha256 {actual}, the manifest says {expected}",
                    wasm_path.display()
                )));
            }
        }
        let component = engine
            .load(&wasm_path, &wasm)
            .map_err(|e| invalid(e.to_string()))?;
        let exports: Vec<String> = component
            .component_type()
            .exports(engine.engine())
            .map(|(name, _)| name.to_owned())
            .collect();
        if !exports.iter().any(|e| e == TRANSFORM_EXPORT) {
            return Err(invalid(format!(
                "does not export {TRANSFORM_EXPORT} (it exports: {}); is it a weir transform built for API 0.1.0?",
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            )));
        }
        let mut linker: Linker<PluginState> = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| invalid(format!("{e:#}")))?;
        v0_1_0::transformer::Transformer::add_to_linker::<PluginState, HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(TransformerPre::new)
            .map_err(|e| invalid(format!("cannot be linked: {e:#}")))?;

        let mut merged = manifest.config.clone();
        for (k, v) in config {
            merged.insert(k.clone(), v.clone());
        }
        let config_json = serde_json::to_string(&merged).expect("TOML tables serialize as JSON");
        let mut plugin = TransformPlugin {
            manifest,
            pre,
            engine: engine.clone(),
            config_json,
            instance: None,
            metrics: Arc::default(),
            skipped: 0,
        };
        let limits = plugin.manifest.limits.clone();
        plugin.instance().map_err(|e| match e {
            CallError::Plugin(WitError::BadConfig(m)) => {
                invalid(format!("rejected its configuration: {m}"))
            }
            other => invalid(format!("failed to initialize: {}", other.describe(&limits))),
        })?;
        Ok(plugin)
    }

    /// `name@version`.
    pub fn label(&self) -> String {
        self.manifest.label()
    }

    /// One line: label, policy, limits and grants.
    pub fn describe(&self) -> String {
        let m = &self.manifest;
        let caps = &m.capabilities;
        let mut grants: Vec<String> = caps.env.iter().map(|e| format!("env {e}")).collect();
        grants.extend(caps.dirs.iter().map(|d| {
            format!(
                "dir {} as {}{}",
                d.host.display(),
                d.guest,
                if d.writable { " (writable)" } else { "" }
            )
        }));
        if caps.clock {
            grants.push("clock".into());
        }
        if caps.random {
            grants.push("random".into());
        }
        format!(
            "{} (on_error {:?}, memory {}, call timeout {}, grants: {})",
            m.label(),
            m.on_error,
            bytesize::ByteSize(m.limits.memory).display().iec(),
            humantime::format_duration(m.limits.call_timeout),
            if grants.is_empty() {
                "nothing".to_string()
            } else {
                grants.join(", ")
            }
        )
        .replace("on_error Fail", "on_error fail")
        .replace("on_error Skip", "on_error skip")
    }

    /// Events dropped so far under `on_error = "skip"`.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn on_error(&self) -> OnError {
        self.manifest.on_error
    }

    /// What the plugin reported through the metrics host functions.
    pub fn metrics(&self) -> PluginMetrics {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn deadline_ticks(&self) -> u64 {
        (self.manifest.limits.call_timeout.as_millis() as u64)
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            .max(1)
    }

    /// The live instance, made (and initialized) when there is none.
    fn instance(&mut self) -> Result<&mut (Store<PluginState>, Transformer), CallError> {
        if self.instance.is_none() {
            let state = PluginState::new(&self.manifest, self.metrics.clone())
                .map_err(|e| CallError::Trap(e.to_string()))?;
            let mut store = Store::new(self.engine.engine(), state);
            store.limiter(|s| &mut s.limits);
            store.set_epoch_deadline(self.deadline_ticks());
            let bindings = self.pre.instantiate(&mut store).map_err(classify)?;
            store.set_epoch_deadline(self.deadline_ticks());
            bindings
                .weir_plugin_transform()
                .call_init(&mut store, &self.config_json)
                .map_err(classify)?
                .map_err(CallError::Plugin)?;
            self.instance = Some((store, bindings));
        }
        Ok(self.instance.as_mut().expect("made above"))
    }

    /// One call of `process`, with a deadline; a poisoned instance is dropped.
    pub fn call(&mut self, input: &Vec<u8>) -> Result<Vec<u8>, CallError> {
        let ticks = self.deadline_ticks();
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
        let mut attempt = 0;
        loop {
            let call_started = std::time::Instant::now();
            match self.call(&input) {
                Ok(out) => {
                    let called = call_started.elapsed();
                    let decoded =
                        Batch::decode(&out).map_err(|e| CallError::Malformed(e.to_string()));
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
                    return decoded;
                }
                Err(CallError::Plugin(WitError::Transient(m))) if attempt < TRANSIENT_RETRIES => {
                    attempt += 1;
                    tracing::warn!(plugin = %self.label(), attempt, error = %m, "Transient plugin failure; retrying.");
                    std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a batch under the plugin's failure policy.
    pub fn apply(&mut self, batch: Batch) -> Result<Batch, PluginFailure> {
        match self.process(&batch) {
            Ok(out) => Ok(out),
            Err(e) => match self.manifest.on_error {
                OnError::Fail | OnError::DeadLetter => Err(self.failure(&batch, &e)),
                OnError::Skip => {
                    let mut out = Batch::default();
                    self.isolate(batch, e, &mut out)?;
                    Ok(out)
                }
            },
        }
    }

    /// Finds the events that fail by splitting the batch, drops them, and appends the
    /// output of the rest to `out`.
    fn isolate(
        &mut self,
        batch: Batch,
        error: CallError,
        out: &mut Batch,
    ) -> Result<(), PluginFailure> {
        if batch.events.is_empty() {
            return Ok(());
        }
        if batch.events.len() == 1 {
            self.skipped += 1;
            let (rel, event) = batch.events().next().expect("one event");
            tracing::warn!(
                plugin = %self.label(),
                table = %rel.qualified_name(),
                lsn = %crate::Lsn(event.commit_lsn),
                seq = event.seq,
                error = %error.describe(&self.manifest.limits),
                "Skipped an event the plugin cannot process (on_error = \"skip\")."
            );
            return Ok(());
        }
        let halves = match &error {
            CallError::Plugin(WitError::BadEvent(bad))
                if (bad.index as usize) < batch.events.len() =>
            {
                let i = bad.index as usize;
                let (mut rest, bad_one) = split(batch, i, i + 1);
                let after = rest.events.split_off(i);
                let tail = Batch {
                    v: rest.v,
                    relations: rest.relations.clone(),
                    events: after,
                };
                [rest, bad_one, tail]
            }
            _ => {
                let mid = batch.events.len() / 2;
                let (first, second) = split(batch, mid, mid);
                [first, second, Batch::default()]
            }
        };
        for part in halves {
            if part.events.is_empty() {
                continue;
            }
            match self.process(&part) {
                Ok(done) => append(out, done),
                Err(e) => self.isolate(part, e, out)?,
            }
        }
        Ok(())
    }

    fn failure(&self, batch: &Batch, error: &CallError) -> PluginFailure {
        let mut tables: Vec<String> = batch.events().map(|(r, _)| r.qualified_name()).collect();
        tables.sort();
        tables.dedup();
        let lsns = batch.events.iter().map(|e| e.commit_lsn);
        PluginFailure {
            plugin: self.manifest.name.clone(),
            version: self.manifest.version.clone(),
            tables: tables.join(", "),
            first_lsn: crate::Lsn(lsns.clone().min().unwrap_or(0)),
            last_lsn: crate::Lsn(lsns.max().unwrap_or(0)),
            message: error.describe(&self.manifest.limits),
        }
    }
}

/// Splits a batch's events into `[..a]`+`[b..]` and `[a..b]` (or, with `a == b`, into
/// `[..a]` and `[a..]`), each with the relations.
fn split(mut batch: Batch, a: usize, b: usize) -> (Batch, Batch) {
    let relations = batch.relations.clone();
    if a == b {
        let second = batch.events.split_off(a);
        return (
            batch,
            Batch {
                v: weir_sdk::LAYOUT_VERSION,
                relations,
                events: second,
            },
        );
    }
    let tail = batch.events.split_off(b);
    let middle = batch.events.split_off(a);
    batch.events.extend(tail);
    (
        batch,
        Batch {
            v: weir_sdk::LAYOUT_VERSION,
            relations,
            events: middle,
        },
    )
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

    /// Runs a batch through every transform. Blocking: call it off the async threads.
    pub fn apply(&mut self, mut batch: Batch) -> Result<Batch, PluginFailure> {
        for plugin in &mut self.plugins {
            if batch.events.is_empty() {
                break;
            }
            batch = plugin.apply(batch)?;
        }
        Ok(batch)
    }
}
