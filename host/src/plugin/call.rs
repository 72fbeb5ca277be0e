//! What transforms and sinks share: loading a component from its manifest, a store per
//! instance, calls with a deadline and retries, and the failure policy that isolates the
//! events a plugin cannot process and sets them aside.

use super::bindings::v0_1_0::transformer::weir::plugin::types::PluginError as WitError;
use super::dead_letter::{DeadLetter, DeadLetters, Stage};
use super::engine::{EPOCH_TICK, PluginEngine};
use super::error::{LoadError, PluginFailure};
use super::manifest::{Limits, Manifest, OnError, PluginKind};
use super::state::{MemoryExhausted, PluginMetrics, PluginState};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::Store;
use wasmtime::component::{Component, Linker};
use weir_sdk::Batch;

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
    /// The plugin returned something that is not valid (a malformed batch, an LSN it was
    /// never given).
    Malformed(String),
    /// A sink instance was lost with changes it had not made durable: only a restart
    /// from the checkpoint delivers them again.
    Lost(String),
}

impl CallError {
    /// The instance cannot be trusted after this: make a new one.
    pub(crate) fn poisons_instance(&self) -> bool {
        matches!(
            self,
            CallError::Deadline | CallError::Memory | CallError::Trap(_)
        )
    }

    pub(crate) fn describe(&self, limits: &Limits) -> String {
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
            CallError::Malformed(m) => format!("returned a malformed result: {m}"),
            CallError::Lost(m) => m.clone(),
        }
    }
}

/// Sorts a wasmtime error into what the policy needs to know.
pub(crate) fn classify(e: wasmtime::Error) -> CallError {
    // Checked first: a growth the cap refused traps, and carries the cap's own error.
    if e.downcast_ref::<MemoryExhausted>().is_some() {
        return CallError::Memory;
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => CallError::Deadline,
            _ => CallError::Trap(format!("{trap}")),
        };
    }
    CallError::Trap(format!("{e:#}"))
}

/// Runs `call` until it succeeds or fails with something other than `transient`,
/// retrying transient failures with a doubling backoff (100 ms, at most 10 s).
pub(crate) fn retry_transient<T>(
    limits: &Limits,
    label: &str,
    mut call: impl FnMut() -> Result<T, CallError>,
) -> Result<T, CallError> {
    let mut attempt = 0;
    loop {
        match call() {
            Err(CallError::Plugin(WitError::Transient(m)))
                if attempt < limits.transient_retries =>
            {
                attempt += 1;
                let backoff =
                    Duration::from_millis(100 << (attempt - 1).min(7)).min(Duration::from_secs(10));
                tracing::warn!(plugin = %label, attempt, backoff = %humantime::format_duration(backoff), error = %m, "Transient plugin failure; retrying.");
                std::thread::sleep(backoff);
            }
            other => return other,
        }
    }
}

/// A checked, compiled and linkable plugin, before its bindings are made.
pub(crate) struct Prepared {
    pub common: Common,
    pub component: Arc<Component>,
    pub linker: Linker<PluginState>,
}

impl Prepared {
    /// Links the world's own imports with `add` and pre-instantiates with `pre`.
    pub fn link<P>(
        self,
        add: impl FnOnce(&mut Linker<PluginState>) -> wasmtime::Result<()>,
        pre: impl FnOnce(wasmtime::component::InstancePre<PluginState>) -> wasmtime::Result<P>,
    ) -> Result<(Common, P), LoadError> {
        let Prepared {
            common,
            component,
            mut linker,
        } = self;
        let invalid = |message: String| LoadError::Invalid {
            plugin: common.label(),
            message,
        };
        add(&mut linker).map_err(|e| invalid(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(pre)
            .map_err(|e| invalid(format!("cannot be linked: {e:#}")))?;
        Ok((common, pre))
    }
}

/// Reads the manifest, checks kind, API version and hash, compiles (or loads from the
/// cache) the component, checks that it exports `export`, and links WASI and wasi:http
/// (both limited to the manifest's grants).
pub(crate) fn prepare(
    engine: &PluginEngine,
    manifest_path: &Path,
    kind: PluginKind,
    export: &str,
    config: &toml::Table,
) -> Result<Prepared, LoadError> {
    let (manifest, manifest_file) = super::manifest::Manifest::load(manifest_path)?;
    let label = manifest.label();
    let invalid = |message: String| LoadError::Invalid {
        plugin: label.clone(),
        message,
    };
    if manifest.kind != kind {
        return Err(invalid(match kind {
            PluginKind::Transform => {
                "is a sink, not a transform: list it as a [[sink]] with type = \"plugin\"".into()
            }
            PluginKind::Sink => "is a transform, not a sink: list it as a [[transform]]".into(),
        }));
    }
    if manifest.api != "0.1.0" {
        return Err(invalid(format!(
            "was built for weir:plugin@{}, this weir runs 0.1.0: rebuild it against weir-sdk for 0.1.0",
            manifest.api
        )));
    }
    let wasm_path = manifest.wasm_path(&manifest_file);
    let wasm = std::fs::read(&wasm_path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", wasm_path.display())))?;
    let actual: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&wasm)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    if let Some(expected) = &manifest.sha256 {
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
    if !exports.iter().any(|e| e == export) {
        return Err(invalid(format!(
            "does not export {export} (it exports: {}); is it a weir {} built for API 0.1.0?",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            },
            match kind {
                PluginKind::Transform => "transform",
                PluginKind::Sink => "sink",
            }
        )));
    }
    let mut linker: Linker<PluginState> = Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| invalid(format!("{e:#}")))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
        .map_err(|e| invalid(format!("{e:#}")))?;

    let mut merged = manifest.config.clone();
    for (k, v) in config {
        merged.insert(k.clone(), v.clone());
    }
    let config_json = serde_json::to_string(&merged).expect("TOML tables serialize as JSON");
    Ok(Prepared {
        common: Common {
            manifest,
            engine: engine.clone(),
            config_json,
            metrics: Arc::default(),
            calls: Arc::default(),
            skipped: 0,
            dead_lettered: 0,
            dead_letters: None,
            sha256: actual,
        },
        component,
        linker,
    })
}

/// The state every plugin keeps beside its instance.
pub struct Common {
    pub manifest: Manifest,
    pub engine: PluginEngine,
    pub config_json: String,
    pub metrics: Arc<Mutex<PluginMetrics>>,
    /// Calls, their time and failures (shared with the metrics endpoint).
    pub calls: Arc<crate::stats::CallStats>,
    /// Events dropped under `on_error = "skip"`.
    pub skipped: u64,
    /// Events written aside under `on_error = "dead-letter"`.
    pub dead_lettered: u64,
    /// Where `dead-letter` writes, with this plugin's place in the pipeline.
    pub dead_letters: Option<(DeadLetters, Stage)>,
    /// SHA-256 of the component (hex).
    pub sha256: String,
}

impl Common {
    pub fn label(&self) -> String {
        self.manifest.label()
    }

    /// A fresh store: the manifest's grants, memory cap and a deadline for the first call.
    pub fn new_store(&self) -> Result<Store<PluginState>, CallError> {
        let state = PluginState::new(&self.manifest, self.metrics.clone())
            .map_err(|e| CallError::Trap(e.to_string()))?;
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        Ok(store)
    }

    pub fn deadline_ticks(&self) -> u64 {
        (self.manifest.limits.call_timeout.as_millis() as u64)
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            .max(1)
    }

    /// The error that stops the pipeline: plugin, version, tables and LSN range.
    pub fn failure(&self, batch: &Batch, error: &CallError) -> PluginFailure {
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

    /// Deals with one event that fails on its own: dropped under `skip`, written aside
    /// (durably, before the checkpoint can pass it) under `dead-letter`.
    pub fn set_aside(&mut self, event: Batch, error: &CallError) -> Result<(), PluginFailure> {
        let message = error.describe(&self.manifest.limits);
        let (rel, e) = event.events().next().expect("one event");
        let (table, lsn, seq) = (rel.qualified_name(), crate::Lsn(e.commit_lsn), e.seq);
        match self.manifest.on_error {
            OnError::Skip => {
                self.skipped += 1;
                tracing::warn!(plugin = %self.label(), %table, %lsn, seq, error = %message,
                    "Skipped an event the plugin cannot process (on_error = \"skip\").");
                Ok(())
            }
            OnError::DeadLetter => {
                let Some((dead_letters, stage)) = &self.dead_letters else {
                    return Err(self.failure(&event, error));
                };
                let letter = DeadLetter::new(&self.manifest, *stage, &message, event.clone());
                let key = dead_letters
                    .write_blocking(&letter)
                    .map_err(|e| PluginFailure {
                        message: format!(
                            "{message}, and writing it to the dead-letter location failed: {e}"
                        ),
                        ..self.failure(&event, error)
                    })?;
                self.dead_lettered += 1;
                tracing::warn!(plugin = %self.label(), %table, %lsn, seq, error = %message, dead_letter = %key,
                    "Wrote an event the plugin cannot process to the dead-letter location (on_error = \"dead-letter\").");
                Ok(())
            }
            OnError::Fail => Err(self.failure(&event, error)),
        }
    }
}

/// What every loaded plugin answers, transform or sink: its identity, policy and
/// counters, from the state they share.
pub trait Instance {
    fn common(&self) -> &Common;
    fn common_mut(&mut self) -> &mut Common;

    /// Gives `on_error = "dead-letter"` its location; `stage` names the plugin's place
    /// in the pipeline (replay resumes there).
    fn set_dead_letters(&mut self, dead_letters: DeadLetters, stage: Stage) {
        self.common_mut().dead_letters = Some((dead_letters, stage));
    }

    /// Where the plugin counts its calls (kept across runs and reloads by the
    /// pipeline's stats).
    fn set_call_stats(&mut self, calls: Arc<crate::stats::CallStats>) {
        self.common_mut().calls = calls;
    }

    /// The plugin's name, without its version.
    fn name(&self) -> &str {
        &self.common().manifest.name
    }

    /// `name@version`.
    fn label(&self) -> String {
        self.common().label()
    }

    /// One line: label, policy, limits and grants.
    fn describe(&self) -> String {
        describe(&self.common().manifest)
    }

    fn on_error(&self) -> OnError {
        self.common().manifest.on_error
    }

    /// Events dropped so far under `on_error = "skip"`.
    fn skipped(&self) -> u64 {
        self.common().skipped
    }

    /// Events written so far to the dead-letter location.
    fn dead_lettered(&self) -> u64 {
        self.common().dead_lettered
    }

    /// What the plugin reported through the host's metrics interface.
    fn metrics(&self) -> PluginMetrics {
        let metrics = self.common().metrics.lock();
        metrics.unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Logs what the plugin set aside during the run.
    fn report(&self) {
        if self.skipped() > 0 {
            tracing::warn!(plugin = %self.label(), events = self.skipped(), "Events skipped by on_error = \"skip\" in this run.");
        }
        if self.dead_lettered() > 0 {
            tracing::warn!(plugin = %self.label(), events = self.dead_lettered(), "Events written to the dead-letter location in this run; see `weir dead-letter list`.");
        }
    }
}

/// A plugin whose failing events can be isolated by calling it on parts of a batch.
pub(crate) trait Isolate: Instance {
    /// What the successful parts produce (a transform's output batch; nothing for a sink).
    type Out;
    /// Runs the plugin on `part` (with retries), adding its result to `out`.
    fn attempt(&mut self, part: &Batch, out: &mut Self::Out) -> Result<(), CallError>;
}

/// Finds the events of `batch` that fail by splitting it (at the reported bad event, or
/// in halves), sets each aside under the policy, and runs the rest.
pub(crate) fn isolate<P: Isolate>(
    plugin: &mut P,
    batch: Batch,
    error: CallError,
    out: &mut P::Out,
) -> Result<(), PluginFailure> {
    if batch.events.is_empty() {
        return Ok(());
    }
    if let CallError::Lost(_) = error {
        // Changes a lost instance held are gone with it: only a restart resends them.
        return Err(plugin.common_mut().failure(&batch, &error));
    }
    if batch.events.len() == 1 {
        return plugin.common_mut().set_aside(batch, &error);
    }
    let committed = batch.committed;
    let parts = match &error {
        CallError::Plugin(WitError::BadEvent(bad)) if (bad.index as usize) < batch.events.len() => {
            let i = bad.index as usize;
            let (mut rest, bad_one) = split(batch, i, i + 1);
            let after = rest.events.split_off(i);
            let tail = Batch {
                relations: rest.relations.clone(),
                events: after,
                ..Batch::default()
            };
            [rest, bad_one, tail]
        }
        _ => {
            let mid = batch.events.len() / 2;
            let (first, second) = split(batch, mid, mid);
            [first, second, Batch::default()]
        }
    };
    // Only the last part may tell a sink which transactions are complete: the events of
    // the parts after one are still to come.
    let last = parts.iter().rposition(|p| !p.events.is_empty());
    for (i, mut part) in parts.into_iter().enumerate() {
        if part.events.is_empty() {
            continue;
        }
        part.committed = if Some(i) == last { committed } else { 0 };
        if let Err(e) = plugin.attempt(&part, out) {
            isolate(plugin, part, e, out)?;
        }
    }
    Ok(())
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
                relations,
                events: second,
                ..Batch::default()
            },
        );
    }
    let tail = batch.events.split_off(b);
    let middle = batch.events.split_off(a);
    batch.events.extend(tail);
    (
        batch,
        Batch {
            relations,
            events: middle,
            ..Batch::default()
        },
    )
}

/// One line for `weir validate`: label, policy, limits and grants.
pub(crate) fn describe(manifest: &Manifest) -> String {
    let caps = &manifest.capabilities;
    let mut grants: Vec<String> = caps.env.iter().map(|e| format!("env {e}")).collect();
    grants.extend(caps.dirs.iter().map(|d| {
        format!(
            "dir {} as {}{}",
            d.host.display(),
            d.guest,
            if d.writable { " (writable)" } else { "" }
        )
    }));
    grants.extend(caps.http.iter().map(|h| format!("http {h}")));
    if caps.clock {
        grants.push("clock".into());
    }
    if caps.random {
        grants.push("random".into());
    }
    format!(
        "{} (on_error {}, memory {}, call timeout {}, grants: {})",
        manifest.label(),
        manifest.on_error.as_str(),
        bytesize::ByteSize(manifest.limits.memory).display().iec(),
        humantime::format_duration(manifest.limits.call_timeout),
        if grants.is_empty() {
            "nothing".to_string()
        } else {
            grants.join(", ")
        }
    )
}
