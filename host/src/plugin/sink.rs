//! Sink plugins: components of the `sink-plugin` world that deliver batches somewhere of
//! their own, beside the native sinks.
//!
//! The host keeps what the checkpoint needs: the transactions it has delivered to the
//! plugin, in order, and the last one the plugin has reported durable. The slot never
//! moves past that. After `init`, weir calls `flush` once: a sink that knows what its
//! destination already holds returns that `commit_lsn` and weir does not deliver those
//! transactions again (exactly once); a sink that returns 0 gets, after a restart,
//! whatever the slot resends (at least once, each event keyed by `commit_lsn` and `seq`).

use super::bindings::v0_1_0::sink::{SinkPlugin as SinkBindings, SinkPluginPre};
use super::bindings::v0_1_0::transformer::weir::plugin::types::PluginError as WitError;
use super::bindings::v0_1_0::{self, SINK_EXPORT};
use super::call::{self, CallError, Common, Instance, Isolate, classify};
use super::engine::PluginEngine;
use super::error::{LoadError, PluginFailure};
use super::manifest::{OnError, PluginKind};
use super::state::PluginState;
use crate::batch::CommitPos;
use crate::batch::Position;
use crate::lsn::Lsn;
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime::component::HasSelf;
use weir_sdk::Batch;

/// One loaded sink plugin.
pub struct SinkPlugin {
    common: Common,
    pre: SinkPluginPre<PluginState>,
    instance: Option<(Store<PluginState>, SinkBindings)>,
    /// Whole transactions delivered and not yet reported durable, in commit order.
    pending: VecDeque<CommitPos>,
    /// The last transaction the plugin has reported durable (with every earlier one).
    durable: Option<CommitPos>,
    /// Events at or before this commit are not delivered again (what the destination
    /// held at start).
    skip_through: u64,
    /// The highest commit LSN of events the plugin has accepted.
    delivered: u64,
    /// The highest commit LSN the plugin has reported durable.
    reported: u64,
    flush_interval: Duration,
    last_flush: Instant,
    /// Bytes of the batches the plugin accepted (MessagePack).
    bytes_out: u64,
}

impl SinkPlugin {
    /// Loads, checks and initializes a sink, then asks it what is already durable.
    pub fn load(
        engine: &PluginEngine,
        manifest_path: &Path,
        config: &toml::Table,
        flush_interval: Duration,
    ) -> Result<SinkPlugin, LoadError> {
        let mut plugin = SinkPlugin::prepare(engine, manifest_path, config, flush_interval)?;
        plugin.start()?;
        Ok(plugin)
    }

    /// Loads, checks, compiles and links a sink without calling it.
    pub fn prepare(
        engine: &PluginEngine,
        manifest_path: &Path,
        config: &toml::Table,
        flush_interval: Duration,
    ) -> Result<SinkPlugin, LoadError> {
        let (common, pre) =
            call::prepare(engine, manifest_path, PluginKind::Sink, SINK_EXPORT, config)?.link(
                |linker| {
                    v0_1_0::sink::SinkPlugin::add_to_linker::<_, HasSelf<PluginState>>(
                        linker,
                        |s| s,
                    )
                },
                SinkPluginPre::new,
            )?;
        Ok(SinkPlugin {
            common,
            pre,
            instance: None,
            pending: VecDeque::new(),
            durable: None,
            skip_through: 0,
            delivered: 0,
            reported: 0,
            flush_interval,
            last_flush: Instant::now(),
            bytes_out: 0,
        })
    }

    /// Instantiates and initializes the sink, then asks it (with `flush`) what its
    /// destination already holds.
    fn start(&mut self) -> Result<(), LoadError> {
        let limits = self.common.manifest.limits.clone();
        let label = self.common.label();
        let invalid = |message: String| LoadError::Invalid {
            plugin: label.clone(),
            message,
        };
        let held = self
            .instance()
            .map(|_| ())
            .and_then(|()| self.call_flush())
            .map_err(|e| match e {
                CallError::Plugin(WitError::BadConfig(m)) => {
                    invalid(format!("rejected its configuration: {m}"))
                }
                other => invalid(format!("failed to initialize: {}", other.describe(&limits))),
            })?;
        if held > 0 {
            tracing::info!(plugin = %self.label(), durable = %Lsn(held), "Sink plugin resumes after what its destination holds.");
            self.skip_through = held;
            self.delivered = held;
            self.reported = held;
            // The commit record starts at `held`: streaming from there resends that
            // transaction at most, and `skip_through` drops it.
            self.durable = Some(CommitPos {
                commit_lsn: Lsn(held),
                end_lsn: Lsn(held),
            });
        }
        Ok(())
    }

    /// The last transaction durable at the destination.
    pub fn durable(&self) -> Option<CommitPos> {
        self.durable
    }

    fn instance(&mut self) -> Result<&mut (Store<PluginState>, SinkBindings), CallError> {
        if self.instance.is_none() {
            let mut store = self.common.new_store()?;
            let bindings = self.pre.instantiate(&mut store).map_err(classify)?;
            store.set_epoch_deadline(self.common.deadline_ticks());
            bindings
                .weir_plugin_sink()
                .call_init(&mut store, &self.common.config_json)
                .map_err(classify)?
                .map_err(CallError::Plugin)?;
            self.instance = Some((store, bindings));
        }
        Ok(self.instance.as_mut().expect("made above"))
    }

    /// Drops a poisoned instance. What it had not made durable is gone with it, so the
    /// pipeline must resend it: that is a failure unless nothing was pending.
    fn after_call<T>(&mut self, result: Result<T, CallError>) -> Result<T, CallError> {
        if let Err(e) = &result
            && e.poisons_instance()
        {
            self.instance = None;
            if self.reported < self.delivered {
                return Err(CallError::Lost(format!(
                    "{}; the instance held changes up to {} it had not made durable, so the pipeline stops and resends them from the checkpoint on restart",
                    e.describe(&self.common.manifest.limits),
                    Lsn(self.delivered)
                )));
            }
        }
        result
    }

    fn call_write(&mut self, input: &Vec<u8>) -> Result<u64, CallError> {
        let ticks = self.common.deadline_ticks();
        let result = self.instance().and_then(|(store, bindings)| {
            store.set_epoch_deadline(ticks);
            bindings
                .weir_plugin_sink()
                .call_write(&mut *store, input)
                .map_err(classify)?
                .map_err(CallError::Plugin)
        });
        self.after_call(result)
    }

    fn call_flush(&mut self) -> Result<u64, CallError> {
        let ticks = self.common.deadline_ticks();
        let result = self.instance().and_then(|(store, bindings)| {
            store.set_epoch_deadline(ticks);
            bindings
                .weir_plugin_sink()
                .call_flush(&mut *store)
                .map_err(classify)?
                .map_err(CallError::Plugin)
        });
        self.after_call(result)
    }

    /// Records what the plugin reports durable, after a call that delivered events up to
    /// `upto`, and moves `durable` up to the last whole transaction it covers.
    fn advance(&mut self, reported: u64, upto: u64) -> Result<(), CallError> {
        let delivered = self.delivered.max(upto);
        if reported > delivered {
            return Err(CallError::Malformed(format!(
                "reported {} durable, past the last transaction it was given ({})",
                Lsn(reported),
                Lsn(delivered)
            )));
        }
        self.delivered = delivered;
        self.reported = self.reported.max(reported);
        self.settle();
        Ok(())
    }

    /// Pending transactions at or before what is reported durable are durable; when
    /// everything accepted is durable, all of them are (the rest had no events here).
    fn settle(&mut self) {
        let all = self.reported >= self.delivered;
        while let Some(next) = self.pending.front()
            && (all || next.commit_lsn.0 <= self.reported)
        {
            self.durable = self.pending.pop_front();
        }
    }

    /// One `write` call with retries, then the durable position it reports.
    fn write_part(&mut self, part: &Batch) -> Result<(), CallError> {
        let input = part.encode();
        let upto = part.events.iter().map(|e| e.commit_lsn).max().unwrap_or(0);
        let (limits, label) = (self.common.manifest.limits.clone(), self.label());
        let reported = call::retry_transient(&limits, &label, || self.call_write(&input))?;
        self.bytes_out += input.len() as u64;
        self.advance(reported, upto)
    }

    /// Bytes of the batches the plugin accepted (MessagePack) since the last call.
    pub fn take_bytes_out(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_out)
    }

    /// Delivers a batch (blocking: call it off the async threads). Events the
    /// destination already held at start are left out.
    pub fn write(&mut self, batch: Batch, position: &Position) -> Result<(), PluginFailure> {
        let started = Instant::now();
        let mut errored = false;
        let result = self.write_counted(batch, position, &mut errored);
        self.common.calls.record(started, errored, &result);
        result
    }

    fn write_counted(
        &mut self,
        mut batch: Batch,
        position: &Position,
        errored: &mut bool,
    ) -> Result<(), PluginFailure> {
        if batch
            .events
            .first()
            .is_some_and(|e| e.commit_lsn <= self.skip_through)
        {
            let skip = self.skip_through;
            batch.retain(|_, e| e.commit_lsn > skip);
        }
        if self.common.manifest.nested_types {
            super::values::nest(&mut batch);
        }
        batch.committed = position
            .last_commit
            .map_or(0, |c| c.commit_lsn.0)
            .max(self.skip_through);
        if batch.events.is_empty() {
            self.settle();
        } else if let Err(e) = self.write_part(&batch) {
            *errored = true;
            match (self.common.manifest.on_error, &e) {
                (OnError::Fail, _) | (_, CallError::Lost(_)) => {
                    return Err(self.common.failure(&batch, &e));
                }
                (OnError::Skip | OnError::DeadLetter, _) => {
                    call::isolate(self, batch, e, &mut ())?;
                }
            }
        }
        // The batch's transactions count as delivered only now that all of it is: while
        // parts of it were being isolated, a report covering what was handed over so far
        // said nothing about the parts still to come.
        if let Some(last) = position.last_commit
            && last.commit_lsn.0 > self.skip_through
            && self.pending.back().is_none_or(|p| *p < last)
            && self.durable.is_none_or(|d| d < last)
        {
            self.pending.push_back(last);
        }
        self.settle();
        if !self.pending.is_empty() && self.last_flush.elapsed() >= self.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Asks the plugin to make everything written durable.
    pub fn flush(&mut self) -> Result<(), PluginFailure> {
        self.last_flush = Instant::now();
        if self.pending.is_empty() {
            return Ok(());
        }
        let (limits, label) = (self.common.manifest.limits.clone(), self.label());
        let started = Instant::now();
        let result = call::retry_transient(&limits, &label, || self.call_flush())
            .and_then(|reported| self.advance(reported, 0));
        let result = result.map_err(|e| PluginFailure {
            plugin: self.common.manifest.name.clone(),
            version: self.common.manifest.version.clone(),
            tables: "-".into(),
            first_lsn: self.pending.front().map_or(Lsn::ZERO, |p| p.commit_lsn),
            last_lsn: self.pending.back().map_or(Lsn::ZERO, |p| p.commit_lsn),
            message: format!("flush {}", e.describe(&limits)),
        });
        self.common.calls.record(started, false, &result);
        result
    }

    /// Delivers events set aside earlier (a dead-letter replay): no skipping of what the
    /// checkpoint covers, and a flush before it returns.
    pub fn replay(&mut self, batch: &Batch) -> Result<(), PluginFailure> {
        let limits = self.common.manifest.limits.clone();
        let label = self.label();
        let input = batch.encode();
        call::retry_transient(&limits, &label, || self.call_write(&input))
            .and_then(|_| call::retry_transient(&limits, &label, || self.call_flush()))
            .map(|_| ())
            .map_err(|e| self.common.failure(batch, &e))
    }
}

impl Instance for SinkPlugin {
    fn common(&self) -> &Common {
        &self.common
    }

    fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }
}

impl Isolate for SinkPlugin {
    type Out = ();

    fn attempt(&mut self, part: &Batch, _: &mut ()) -> Result<(), CallError> {
        self.write_part(part)
    }
}
