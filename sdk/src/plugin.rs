//! The plugin side: what a transform or sink implements, and how it is tested natively.

use crate::Batch;
use serde::de::DeserializeOwned;
use std::fmt;

/// Why a plugin call failed. weir reacts to each kind differently (see `on_error` in the
/// plugin manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// The configuration is unusable: the pipeline does not start.
    BadConfig(String),
    /// One event cannot be processed; `index` is its position in the batch's events.
    BadEvent { index: u32, message: String },
    /// A temporary failure: weir retries the call.
    Transient(String),
    /// The plugin cannot go on.
    Fatal(String),
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::BadConfig(m) => write!(f, "bad config: {m}"),
            PluginError::BadEvent { index, message } => write!(f, "bad event {index}: {message}"),
            PluginError::Transient(m) => write!(f, "transient: {m}"),
            PluginError::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}

/// A transform plugin: one value per configured instance, fed batch after batch.
///
/// Export it with [`export_transform!`](crate::export_transform).
pub trait Transform: Sized + 'static {
    /// The plugin's configuration (the manifest's defaults overlaid with the pipeline's
    /// `config` table), read from JSON.
    type Config: DeserializeOwned;

    /// Builds the transform from its configuration.
    fn init(config: Self::Config) -> Result<Self, PluginError>;

    /// Transforms one batch: change, drop or add events (and relations).
    fn process(&mut self, batch: Batch) -> Result<Batch, PluginError>;
}

/// A sink plugin.
///
/// Export it with [`export_sink!`](crate::export_sink).
pub trait Sink: Sized + 'static {
    /// The plugin's configuration, read from JSON.
    type Config: DeserializeOwned;

    /// Builds the sink from its configuration.
    fn init(config: Self::Config) -> Result<Self, PluginError>;

    /// Delivers one batch; returns the highest `commit_lsn` durable so far (0 for none).
    fn write(&mut self, batch: Batch) -> Result<u64, PluginError>;

    /// Makes everything written durable; returns the durable `commit_lsn`.
    fn flush(&mut self) -> Result<u64, PluginError>;
}

/// Reads a plugin's configuration from the JSON weir passes to `init`.
pub fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, PluginError> {
    serde_json::from_str(json).map_err(|e| PluginError::BadConfig(e.to_string()))
}

/// Runs plugin logic natively, without WebAssembly: for plain `cargo test`.
pub mod testing {
    use super::*;
    use crate::{Column, Event, Op, Relation, Value};

    /// A relation for tests: columns as `(name, type name, key)`; common built-in type
    /// names get their PostgreSQL OIDs ([`crate::builtin_type_oid`]), others OID 0.
    pub fn relation(schema: &str, table: &str, columns: &[(&str, &str, bool)]) -> Relation {
        let oid = |t: &str| crate::builtin_type_oid(t).unwrap_or(0);
        Relation {
            id: 1,
            schema: schema.into(),
            table: table.into(),
            version: 1,
            columns: columns
                .iter()
                .map(|(name, ty, key)| Column::new(name, oid(ty), ty, *key))
                .collect(),
        }
    }

    /// An event for tests, in transaction 1 at commit LSN 1, position `seq`.
    pub fn event(
        op: Op,
        rel: u32,
        seq: u32,
        before: Option<Vec<Value>>,
        after: Option<Vec<Value>>,
    ) -> Event {
        Event {
            op,
            rel,
            commit_lsn: 1,
            seq,
            xid: 1,
            commit_ts: 0,
            before,
            after,
            unchanged: vec![],
        }
    }

    /// Initializes a transform from a JSON configuration, as weir would.
    pub fn transform<T: Transform>(config_json: &str) -> Result<T, PluginError> {
        T::init(parse_config(config_json)?)
    }

    /// Initializes a transform and runs one batch through it.
    pub fn run<T: Transform>(config_json: &str, batch: Batch) -> Result<Batch, PluginError> {
        // Through the wire format, as in the host, so layout mistakes show up here too.
        let batch =
            Batch::decode(&batch.encode()).map_err(|e| PluginError::Fatal(e.to_string()))?;
        let out = transform::<T>(config_json)?.process(batch)?;
        Batch::decode(&out.encode()).map_err(|e| PluginError::Fatal(e.to_string()))
    }

    /// Initializes a sink from a JSON configuration, as weir would.
    pub fn sink<S: Sink>(config_json: &str) -> Result<S, PluginError> {
        S::init(parse_config(config_json)?)
    }

    /// Delivers one batch to a sink through the wire format, with `committed` set to the
    /// batch's last `commit_lsn` (its last transaction complete), as weir does; returns
    /// what the sink reports durable.
    pub fn deliver<S: Sink>(sink: &mut S, mut batch: Batch) -> Result<u64, PluginError> {
        batch.committed = batch.events.iter().map(|e| e.commit_lsn).max().unwrap_or(0);
        let batch =
            Batch::decode(&batch.encode()).map_err(|e| PluginError::Fatal(e.to_string()))?;
        sink.write(batch)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Keeps what it is given; durable at once.
        struct Memory(Vec<(u64, u32)>);

        impl Sink for Memory {
            type Config = serde_json::Value;
            fn init(_: serde_json::Value) -> Result<Self, PluginError> {
                Ok(Memory(Vec::new()))
            }
            fn write(&mut self, batch: Batch) -> Result<u64, PluginError> {
                self.0
                    .extend(batch.events.iter().map(|e| (e.commit_lsn, e.seq)));
                Ok(batch.committed)
            }
            fn flush(&mut self) -> Result<u64, PluginError> {
                Ok(self.0.last().map_or(0, |e| e.0))
            }
        }

        #[test]
        fn a_sink_runs_natively_through_the_wire_format() {
            let mut batch = Batch::default();
            let rel = batch.push_relation(relation("public", "t", &[("id", "int4", true)]));
            for seq in 0..3 {
                batch.events.push(event(
                    Op::Insert,
                    rel,
                    seq,
                    None,
                    Some(vec![Value::Int(seq as i64)]),
                ));
            }
            let mut s = sink::<Memory>("{}").unwrap();
            assert_eq!(
                deliver(&mut s, batch).unwrap(),
                1,
                "committed: the last commit_lsn"
            );
            assert_eq!(s.0, vec![(1, 0), (1, 1), (1, 2)]);
        }
    }
}
