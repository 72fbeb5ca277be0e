//! A transform that misbehaves as its `mode` says:
//!
//! - `loop`: never returns (the deadline must stop it);
//! - `bomb`: allocates until the memory cap stops it;
//! - `trap`: panics;
//! - `garbage`: returns bytes that are not a batch;
//! - `probe`: tries to read a file, an environment variable, the clock and the network,
//!   and fails with what it found (`file: denied, env: absent, ...`);
//! - `poison`: panics on events whose `id` is divisible by `every`, passes the others;
//! - `bad-event`: reports events whose `id` is divisible by `every` as bad events;
//! - `slow`: sleeps `every` milliseconds per batch, then passes it.

use serde::Deserialize;
use weir_sdk::{Batch, PluginError, Transform};

#[derive(Deserialize)]
pub struct Config {
    pub mode: String,
    #[serde(default = "ten")]
    pub every: i64,
    #[serde(default)]
    pub env: String,
    #[serde(default)]
    pub file: String,
}

fn ten() -> i64 {
    10
}

pub struct Hostile(Config);

fn id_of(batch: &Batch, i: usize) -> Option<i64> {
    let (rel, event) = batch.events().nth(i)?;
    let col = rel.column_index("id")?;
    event
        .after
        .as_ref()
        .or(event.before.as_ref())?
        .get(col)?
        .as_i64()
}

fn probe(config: &Config) -> String {
    let file = match std::fs::read(&config.file) {
        Ok(_) => "allowed".to_string(),
        Err(e) => format!("denied ({e})"),
    };
    let env = match std::env::var(&config.env) {
        Ok(v) => format!("present ({v})"),
        Err(_) => "absent".to_string(),
    };
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let net = match std::net::TcpStream::connect("127.0.0.1:5432") {
        Ok(_) => "allowed".to_string(),
        Err(e) => format!("denied ({e})"),
    };
    format!("file: {file}, env: {env}, clock: {clock}, net: {net}")
}

impl Transform for Hostile {
    type Config = Config;

    fn init(config: Config) -> Result<Self, PluginError> {
        Ok(Hostile(config))
    }

    fn process(&mut self, batch: Batch) -> Result<Batch, PluginError> {
        match self.0.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("this plugin traps on purpose"),
            // Not MessagePack of a batch: the host must say so, not crash.
            "garbage" => Ok(unreachable_garbage()),
            "probe" => {
                report();
                Err(PluginError::Fatal(probe(&self.0)))
            }
            // Slow: sleeps `every` milliseconds per batch (needs the clock capability).
            "slow" => {
                std::thread::sleep(std::time::Duration::from_millis(self.0.every as u64));
                Ok(batch)
            }
            "poison" => {
                for i in 0..batch.events.len() {
                    if id_of(&batch, i).is_some_and(|id| id % self.0.every == 0) {
                        panic!("poisoned by event {i}");
                    }
                }
                Ok(batch)
            }
            "bad-event" => {
                for i in 0..batch.events.len() {
                    if id_of(&batch, i).is_some_and(|id| id % self.0.every == 0) {
                        return Err(PluginError::BadEvent {
                            index: i as u32,
                            message: "ids divisible by every".into(),
                        });
                    }
                }
                Ok(batch)
            }
            other => Err(PluginError::BadConfig(format!("unknown mode `{other}`"))),
        }
    }
}

/// Speaks through every channel a plugin has: stdout, stderr, the host log, metrics.
fn report() {
    println!("hostile probe on stdout");
    eprintln!("hostile probe on stderr");
    #[cfg(target_arch = "wasm32")]
    {
        use weir_sdk::guest;
        guest::log(
            guest::Level::Warn,
            "hostile probe through the host log",
            &[("mode", "probe")],
        );
        guest::counter_add("probes", 1, &[("kind", "all")]);
        guest::gauge_set("depth", 2.5, &[]);
        guest::histogram_record("latency_ms", 7.0, &[]);
    }
}

/// Garbage is produced below the SDK, which only ever encodes valid batches: this sets a
/// flag the export glue turns into invalid bytes.
fn unreachable_garbage() -> Batch {
    GARBAGE.with(|g| g.set(true));
    Batch::default()
}

thread_local! {
    static GARBAGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(target_arch = "wasm32")]
mod export {
    use super::*;
    use weir_sdk::guest::WitError;
    use weir_sdk::guest::transformer::exports::weir::plugin::transform::Guest;

    static STATE: std::sync::Mutex<Option<Hostile>> = std::sync::Mutex::new(None);

    struct Export;

    impl Guest for Export {
        fn init(config: String) -> Result<(), WitError> {
            *STATE.lock().unwrap() = Some(Hostile::init(weir_sdk::plugin::parse_config(&config)?)?);
            Ok(())
        }
        fn process(input: Vec<u8>) -> Result<Vec<u8>, WitError> {
            let batch = weir_sdk::guest::decode(&input)?;
            let mut state = STATE.lock().unwrap();
            let out = state.as_mut().unwrap().process(batch)?;
            if GARBAGE.with(|g| g.replace(false)) {
                return Ok(vec![0xc1, 0xff, 0x00]);
            }
            Ok(out.encode())
        }
    }

    weir_sdk::guest::transformer::__export_transformer_world!(Export);
}
