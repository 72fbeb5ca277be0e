//! End-to-end tests: the real `weir` binary against a real PostgreSQL, output read back by
//! DuckDB. Run with `scripts/test.sh` (it installs DuckDB for Python).
//!
//! - `streaming`: every kind of change, several tables, transactions, replica identities,
//!   transactions larger than a batch, idle slots.
//! - `snapshot`: the initial snapshot and its hand-over to streaming.
//! - `types`: every built-in type read back against PostgreSQL's rendering; TOAST.
//! - `s3`: Parquet output on a real S3-compatible server, exactly once across kill -9.
//! - `iceberg`: Iceberg tables through the SQLite catalog, read back with PyIceberg:
//!   exactly once across kill -9, schema evolution, `weir lake`, and on S3.
//! - `mirror`: Iceberg mirror tables (position deletes, the primary-key index) read by
//!   PyIceberg.
//! - `recovery`: restart from the checkpoint, SIGTERM, and `kill -9` during writes.
//! - `faults`: the replication connection cut and the server restarted mid-stream.
//! - `bad_input`: each user mistake prints one line naming the fix and changes nothing.
//! - `cli`: `weir validate` and the example configurations.
//! - `plugins`: built-in plugins in pipelines, hostile plugins, failure policies.
//! - `sinks`: sink plugins (webhook, a file sink exactly once across kill -9), failure
//!   policies of sinks and dead-letter list and replay.
//! - `reload`: transforms swapped mid-stream (file watch, `weir reload`, SIGHUP), a broken
//!   replacement leaving the old version running.
//! - `tooling`: `weir plugin new`, `build`, `test` and `inspect` on scaffolded crates.
//! - `languages`: the Python and JavaScript example plugins, built and run in a pipeline.
//! - `first_hour`: defects a new user hit, each pinned: checks before anything is created,
//!   lag and readiness, closed pipes, log spans, config messages.
//! - `operations`: `/metrics`, `/healthz`, `/readyz` during a run, and `weir status`.
//! - `verify`: `weir verify` against the source while it is written, and planted damage.
//! - `conformance`: every built-in plugin as a component against its native logic.
//! - `spark`: Apache Spark (PySpark, local mode) rebuilds the current state from the
//!   Parquet changelog with one Spark SQL query.

mod harness;

mod bad_input;
mod cli;
mod conformance;
mod delta;
mod faults;
mod first_hour;
mod iceberg;
mod languages;
mod mirror;
mod operations;
mod plugins;
mod projection;
mod recovery;
mod reload;
mod s3;
mod sinks;
mod snapshot;
mod spark;
mod streaming;
mod tls;
mod tooling;
mod types;
mod verify;
