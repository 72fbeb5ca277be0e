//! weir: PostgreSQL change data capture into Parquet.
//!
//! The data flow, one module per stage:
//!
//! ```text
//! source      replication slot (pgoutput) -> canonical change events   source/
//! batch       events -> bounded MessagePack-ready batches               batch.rs
//! transforms  sandboxed WebAssembly components, in declared order        plugin/
//! sinks       batches -> Parquet changelog files and sink components    sink/
//! checkpoint  durable position, stored with the output                  checkpoint.rs
//! pipeline    the loop that ties them together                          pipeline.rs
//! ```
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

pub mod backfill;
pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod dead_letters;
pub mod lsn;
pub mod metrics;
pub mod pgtemp;
pub mod pipeline;
pub mod plugin;
pub mod reload;
pub mod sink;
pub mod source;
pub mod stats;

pub use lsn::Lsn;
