//! A sink that appends each event as a JSON line to `/out/events.jsonl` (a directory its
//! manifest grants) and keeps its position in `/out/position`: the last complete
//! transaction written and the file length at that point, replaced atomically.
//!
//! With `resume = true` it is exactly once: on start it cuts the file back to the
//! position and tells weir (from the first `flush`) what it already holds. Without, it
//! appends whatever it is given (at least once). With
//! `buffer = true` it holds events in memory until `flush`. `reject` makes any event
//! with that text value a bad event; `trap` makes the component panic on it. `delay_ms`
//! makes every write that long (a slow destination).

use serde::Deserialize;
use std::fs::{self, OpenOptions};
use std::io::Write;
use weir_sdk::{Batch, PluginError, Sink, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub resume: bool,
    #[serde(default)]
    pub buffer: bool,
    #[serde(default)]
    pub reject: Option<String>,
    #[serde(default)]
    pub trap: Option<String>,
    #[serde(default)]
    pub delay_ms: u64,
}

pub struct Recorder {
    config: Config,
    /// Lines not yet written (with `buffer`), each with its commit LSN.
    held: Vec<(u64, String)>,
    /// Complete transactions written, and the file length after them.
    position: (u64, u64),
    /// Highest commit LSN written.
    written: u64,
    /// Highest commit LSN weir said is complete.
    committed: u64,
}

const EVENTS: &str = "/out/events.jsonl";
const POSITION: &str = "/out/position";

fn io(e: std::io::Error) -> PluginError {
    PluginError::Transient(format!("recorder file: {e}"))
}

impl Sink for Recorder {
    type Config = Config;

    fn init(config: Config) -> Result<Self, PluginError> {
        let mut position = (0, 0);
        if config.resume {
            // No position yet (a first flush killed before it wrote one) means nothing
            // is known to weir as held.
            if let Ok(text) = fs::read_to_string(POSITION) {
                let mut parts = text.split_whitespace().map(|p| p.parse::<u64>());
                if let (Some(Ok(lsn)), Some(Ok(len))) = (parts.next(), parts.next()) {
                    position = (lsn, len);
                }
            }
            // Whatever was written past the position is not known to weir: drop it.
            match OpenOptions::new().write(true).open(EVENTS) {
                Ok(file) => file.set_len(position.1).map_err(io)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(Recorder {
            config,
            held: Vec::new(),
            position,
            written: position.0,
            committed: position.0,
        })
    }

    fn write(&mut self, batch: Batch) -> Result<u64, PluginError> {
        if self.config.delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.config.delay_ms));
        }
        // All or nothing: a failed write must not have taken any of the batch.
        let mut lines = Vec::with_capacity(batch.events.len());
        for (i, (rel, e)) in batch.events().enumerate() {
            let values = e.after.as_ref().or(e.before.as_ref());
            let text = |want: &Option<String>| {
                want.as_ref().is_some_and(|w| {
                    values.is_some_and(|v| v.iter().any(|x| x.as_str() == Some(w.as_str())))
                })
            };
            if text(&self.config.trap) {
                panic!("recorder told to trap on event {i}");
            }
            if text(&self.config.reject) {
                return Err(PluginError::BadEvent {
                    index: i as u32,
                    message: "rejected by configuration".into(),
                });
            }
            let row: Vec<serde_json::Value> = values
                .map(|v| v.iter().map(json).collect())
                .unwrap_or_default();
            let line = serde_json::json!({
                "lsn": e.commit_lsn, "seq": e.seq, "op": e.op.code(),
                "table": rel.qualified_name(), "row": row,
            });
            lines.push((e.commit_lsn, line.to_string()));
        }
        self.held.extend(lines);
        self.committed = self.committed.max(batch.committed);
        if self.config.buffer {
            return Ok(self.position.0);
        }
        self.write_held()?;
        Ok(self.written)
    }

    fn flush(&mut self) -> Result<u64, PluginError> {
        self.write_held()?;
        Ok(self.position.0)
    }
}

impl Recorder {
    fn write_held(&mut self) -> Result<(), PluginError> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(EVENTS)
            .map_err(io)?;
        let mut len = file.metadata().map_err(io)?.len();
        let mut complete_len = None;
        for (lsn, line) in self.held.drain(..) {
            file.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
            len += line.len() as u64 + 1;
            self.written = self.written.max(lsn);
            if lsn <= self.committed {
                complete_len = Some(len);
            }
        }
        file.sync_all().map_err(io)?;
        let complete_len = match complete_len {
            Some(l) => l,
            // Nothing new is complete, unless every earlier line was.
            None if self.written <= self.committed => len,
            None => self.position.1,
        };
        if self.committed > self.position.0 {
            self.position = (self.committed, complete_len);
            fs::write(
                "/out/position.tmp",
                format!("{} {}", self.position.0, self.position.1),
            )
            .map_err(io)?;
            fs::rename("/out/position.tmp", POSITION).map_err(io)?;
        }
        Ok(())
    }
}

fn json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(s) => s.clone().into(),
        Value::Bytes(b) => b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into(),
        Value::List(_) | Value::Struct(_) => weir_sdk::json::value(v),
    }
}

#[cfg(target_arch = "wasm32")]
weir_sdk::export_sink!(Recorder);
