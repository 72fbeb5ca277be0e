//! weir: PostgreSQL change data capture into Parquet and Iceberg.
//!
//! The data flow, one module per stage:
//!
//! ```text
//! source      replication slot (pgoutput) -> canonical change events   source/
//! batch       events -> bounded MessagePack-ready batches               batch.rs
//! stages      one path for every batch: transforms, then every sink     stages.rs
//! transforms  sandboxed WebAssembly components, in declared order        plugin/
//! sinks       batches -> Parquet, Iceberg and sink components           sink/
//! checkpoint  durable position, stored with the output                  checkpoint.rs
//! storage     object stores, fsync, weir's state files                  storage.rs
//! pipeline    the loop that ties them together                          pipeline.rs
//! ```
//!
//! See `docs/ARCHITECTURE.md` for the rule each stage keeps.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let config = weir::config::PipelineConfig::load("pipeline.toml".as_ref())?;
//! let options = weir::pipeline::RunOptions { until_caught_up: true, ..Default::default() };
//! let summary = weir::pipeline::run(&config, options, Arc::default()).await?;
//! println!("{} events, checkpoint {:?}", summary.events, summary.checkpoint);
//! # Ok(()) }
//! ```

pub mod audit;
pub mod backfill;
pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod error;
pub mod ledger;
pub mod lsn;
pub mod metrics;
pub mod pgtemp;
pub mod pipeline;
pub mod plugin;
pub mod replay;
pub mod sink;
pub mod source;
pub mod stages;
pub mod stats;
pub mod storage;
pub mod supervisor;
pub mod verify;

pub use lsn::Lsn;
