//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers), `/readyz` (streaming, every sink and plugin healthy, and not falling behind)
//! and `/status` (the live state as JSON, read by `weir status`).

use crate::config::{MetricsConfig, PipelineConfig};
use crate::stats::{Component, Snapshot, Stats, TableCopy};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The running endpoint; stops when dropped.
pub struct Endpoint {
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The live state `/status` serves and `weir status` reads: one shape for both sides.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// `streaming`, `retrying` or `starting`.
    pub state: String,
    /// Why the last run stopped, while weir waits to run again.
    pub retrying_after: Option<String>,
    pub ready: bool,
    /// Why `/readyz` answers 503.
    pub not_ready: Option<String>,
    pub checkpoint_lsn: String,
    pub server_wal_lsn: String,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// Commit time (RFC 3339) of the last change read.
    pub last_commit: Option<String>,
    /// Commit time (RFC 3339) of the last change made durable.
    pub last_durable_commit: Option<String>,
    pub events_read: u64,
    pub events_written: u64,
    pub batches: u64,
    pub reconnects: u64,
    pub components: Vec<ComponentStatus>,
    /// Tables whose existing rows this process copies or copied (initial snapshot and
    /// backfills).
    #[serde(default)]
    pub copies: Vec<CopyStatus>,
}

/// One table's copy of its existing rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyStatus {
    pub table: String,
    /// `initial` (the initial snapshot) or `backfill`.
    pub kind: String,
    pub rows: u64,
    /// The catalog's estimate when it started (`pg_class.reltuples`), if any.
    pub estimated_rows: Option<u64>,
    pub rows_per_s: f64,
    pub percent: Option<f64>,
    pub seconds_left: Option<f64>,
    pub done: bool,
}

impl From<&TableCopy> for CopyStatus {
    fn from(c: &TableCopy) -> CopyStatus {
        CopyStatus {
            table: c.table.clone(),
            kind: c.kind.name().to_string(),
            rows: c.rows,
            estimated_rows: c.estimated,
            rows_per_s: c.rows_per_s(),
            percent: c.percent(),
            seconds_left: c.seconds_left(),
            done: c.finished.is_some(),
        }
    }
}

/// The calls of one plugin or sink, and its health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// `plugin` or `sink`.
    pub kind: String,
    pub name: String,
    pub calls: u64,
    pub errors: u64,
    pub seconds: f64,
    pub bytes: u64,
    pub healthy: bool,
    /// Why its last call failed, while it is failing.
    pub error: Option<String>,
}

/// Why the pipeline is not ready (`/readyz` answers 503).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotReady {
    #[error("the replication stream is not connected")]
    Disconnected,
    #[error("the replication stream is not connected (retrying after: {0})")]
    Retrying(String),
    #[error("{kind} {name} is failing: {error}")]
    Failing {
        kind: &'static str,
        name: String,
        error: String,
    },
    #[error("the oldest change not yet durable is {lag:.0}s old (ready_max_lag {max}s)")]
    Behind { lag: f64, max: u64 },
}

struct State {
    stats: Arc<Stats>,
    slot: String,
    ready_max_lag: Duration,
}

/// The metrics address cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {listen}: {source}")]
pub struct ListenError {
    pub listen: String,
    #[source]
    source: std::io::Error,
}

/// Starts listening (an address already in use is an error now, not later).
pub async fn serve(
    config: &MetricsConfig,
    pipeline: &PipelineConfig,
    stats: Arc<Stats>,
) -> Result<Endpoint, ListenError> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ListenError {
            listen: config.listen.clone(),
            source,
        })?;
    tracing::info!(listen = %config.listen, "Metrics at /metrics, health at /healthz and /readyz.");
    let state = Arc::new(State {
        stats,
        slot: pipeline.source.slot.clone(),
        ready_max_lag: config.ready_max_lag,
    });
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &state)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(Endpoint { server })
}

fn respond(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(
                "content-type",
                if req.uri().path() == "/metrics" {
                    "application/openmetrics-text; version=1.0.0; charset=utf-8"
                } else {
                    "text/plain; charset=utf-8"
                },
            )
            .body(Full::new(Bytes::from(body)))
            .expect("a response with a valid header")
    };
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, render(state)),
        "/status" => reply(
            StatusCode::OK,
            serde_json::to_string(&status(state)).expect("a status report serializes"),
        ),
        "/healthz" => reply(StatusCode::OK, "ok\n".into()),
        "/readyz" => match ready(state) {
            Ok(()) => reply(StatusCode::OK, "ready\n".into()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "weir serves /metrics, /healthz, /readyz and /status\n".into(),
        ),
    }
}

/// The age of the oldest change read but not yet durable (0 when nothing waits).
fn lag_seconds(stats: &Stats) -> f64 {
    stats.lag_seconds()
}

fn ready(state: &State) -> Result<(), NotReady> {
    if !state.stats.connected() {
        return Err(match state.stats.retrying() {
            Some(why) => NotReady::Retrying(why),
            None => NotReady::Disconnected,
        });
    }
    for (kind, name, calls) in state.stats.components() {
        if let Some(error) = calls.failing() {
            return Err(NotReady::Failing {
                kind: kind_name(kind),
                name,
                error,
            });
        }
    }
    let lag = lag_seconds(&state.stats);
    if lag > state.ready_max_lag.as_secs_f64() {
        return Err(NotReady::Behind {
            lag,
            max: state.ready_max_lag.as_secs(),
        });
    }
    Ok(())
}

fn kind_name(kind: Component) -> &'static str {
    match kind {
        Component::Plugin => "plugin",
        Component::Sink => "sink",
    }
}

/// A commit time (µs since the Unix epoch) in RFC 3339, or none.
fn timestamp(micros: i64) -> Option<String> {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) if micros > 0 => Some(t.to_rfc3339()),
        _ => None,
    }
}

/// The live state, for `weir status`.
fn status(state: &State) -> StatusReport {
    let stats = &state.stats;
    let s = stats.snapshot();
    let ready = ready(state);
    let components = stats
        .components()
        .into_iter()
        .map(|(kind, name, c)| ComponentStatus {
            kind: kind_name(kind).to_string(),
            name,
            calls: c.calls(),
            errors: c.errors(),
            seconds: c.seconds(),
            bytes: c.bytes(),
            healthy: c.failing().is_none(),
            error: c.failing(),
        })
        .collect();
    let total = |counts: Vec<((String, &str), u64)>| counts.iter().map(|(_, n)| n).sum::<u64>();
    StatusReport {
        state: match (stats.connected(), stats.retrying()) {
            (true, _) => "streaming",
            (false, Some(_)) => "retrying",
            (false, None) => "starting",
        }
        .to_string(),
        retrying_after: stats.retrying(),
        ready: ready.is_ok(),
        not_ready: ready.err().map(|e| e.to_string()),
        checkpoint_lsn: s.checkpoint.to_string(),
        server_wal_lsn: s.server_wal_end.to_string(),
        lag_bytes: s.lag_bytes(),
        lag_seconds: lag_seconds(stats),
        last_commit: timestamp(stats.last_commit_ts()),
        last_durable_commit: timestamp(s.durable_commit_ts),
        events_read: total(stats.read()),
        events_written: total(stats.written()),
        batches: s.batches,
        reconnects: stats.reconnects(),
        components,
        copies: stats.copies().iter().map(CopyStatus::from).collect(),
    }
}

type Labels = Vec<(&'static str, String)>;

/// Registers, for the plugins or the sinks, their calls, time, errors and health, and
/// (with a help text for it) the bytes they wrote.
fn register_components(
    registry: &mut Registry,
    stats: &Stats,
    kind: Component,
    what: (&str, &str, &str, &str),
    bytes_written: Option<&str>,
) {
    let label = kind_name(kind);
    let calls: Family<Labels, Counter> = Family::default();
    let seconds: Family<Labels, Counter<f64, AtomicU64>> = Family::default();
    let errors: Family<Labels, Counter> = Family::default();
    let healthy: Family<Labels, Gauge> = Family::default();
    let bytes: Family<Labels, Counter> = Family::default();
    let applied: Family<Labels, Counter> = Family::default();
    for (k, name, c) in stats.components() {
        if k != kind {
            continue;
        }
        let labels = vec![(label, name.clone())];
        calls.get_or_create(&labels).inc_by(c.calls());
        seconds.get_or_create(&labels).inc_by(c.seconds());
        errors.get_or_create(&labels).inc_by(c.errors());
        healthy
            .get_or_create(&labels)
            .set(i64::from(c.failing().is_none()));
        bytes.get_or_create(&labels).inc_by(c.bytes());
        for (what, rows) in c.applied() {
            let labels = vec![(label, name.clone()), ("op", what.to_string())];
            applied.get_or_create(&labels).inc_by(rows);
        }
    }
    if kind == Component::Sink {
        registry.register(
            "sink_rows_applied",
            "Rows a postgres sink applied, by op: upsert (inserted or updated), delete (deleted or marked deleted), set_aside (refused by the target, skipped or dead-lettered)",
            applied,
        );
    }
    registry.register(format!("{label}_calls"), what.0, calls);
    registry.register(format!("{label}_call_seconds"), what.1, seconds);
    registry.register(format!("{label}_errors"), what.2, errors);
    registry.register(format!("{label}_healthy"), what.3, healthy);
    if let Some(help) = bytes_written {
        registry.register(format!("{label}_bytes_written"), help, bytes);
    }
}

/// The metrics, read from the live counters at each scrape.
fn render(state: &State) -> String {
    let stats = &state.stats;
    let s = stats.snapshot();
    let mut registry = Registry::with_prefix_and_labels(
        "weir",
        [(
            std::borrow::Cow::Borrowed("slot"),
            std::borrow::Cow::Owned(state.slot.clone()),
        )]
        .into_iter(),
    );
    register_events(&mut registry, stats);
    register_components(
        &mut registry,
        stats,
        Component::Plugin,
        (
            "Calls into each plugin (transform batches, sink writes and flushes)",
            "Time spent in each plugin's calls",
            "Plugin calls that failed, in part (events set aside by on_error) or whole",
            "1 unless the plugin's last call failed and stopped the pipeline",
        ),
        None,
    );
    register_components(
        &mut registry,
        stats,
        Component::Sink,
        (
            "Writes and flushes of each sink",
            "Time spent writing and flushing each sink",
            "Writes and flushes that failed",
            "1 unless the sink's last write or flush failed",
        ),
        Some(
            "Bytes of output each sink completed (Parquet and Iceberg files; for plugin sinks, the MessagePack batches they accepted)",
        ),
    );
    registry.register(
        "batch_duration_seconds",
        "Time from a batch's arrival from the source to its delivery to every sink",
        stats.batch_seconds.0.clone(),
    );
    register_throughput(&mut registry, stats, &s);
    register_replication(&mut registry, stats, &s);
    register_copies(&mut registry, stats);
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String does not fail");
    out
}

fn counter(v: u64) -> Counter<u64, AtomicU64> {
    let c: Counter<u64, AtomicU64> = Counter::default();
    c.inc_by(v);
    c
}

fn gauge(v: i64) -> Gauge {
    let g: Gauge = Gauge::default();
    g.set(v);
    g
}

/// Change events written and read, by table and op.
fn register_events(registry: &mut Registry, stats: &Stats) {
    let per_table = |counts: Vec<((String, &'static str), u64)>| {
        let family: Family<Labels, Counter> = Family::default();
        for ((table, op), n) in counts {
            family
                .get_or_create(&vec![("table", table), ("op", op.into())])
                .inc_by(n);
        }
        family
    };
    registry.register(
        "events_written",
        "Change events written to the sinks, by table and op",
        per_table(stats.written()),
    );
    registry.register(
        "events_read",
        "Change events read from the source, by table and op",
        per_table(stats.read()),
    );
}

/// The copies of tables' existing rows: rows, the estimate, time left, done.
fn register_copies(registry: &mut Registry, stats: &Stats) {
    let copies = stats.copies();
    if copies.is_empty() {
        return;
    }
    let labels = |c: &TableCopy| -> Labels {
        vec![("table", c.table.clone()), ("kind", c.kind.name().into())]
    };
    let (rows, estimated, left, done) = (
        Family::<Labels, Counter>::default(),
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
    );
    for c in &copies {
        rows.get_or_create(&labels(c)).inc_by(c.rows);
        if let Some(e) = c.estimated {
            estimated.get_or_create(&labels(c)).set(e as i64);
        }
        if let Some(secs) = c.seconds_left() {
            left.get_or_create(&labels(c)).set(secs.ceil() as i64);
        }
        done.get_or_create(&labels(c))
            .set(i64::from(c.finished.is_some()));
    }
    registry.register(
        "snapshot_rows",
        "Existing rows copied by the initial snapshot (kind initial) or a backfill, by table",
        rows,
    );
    registry.register(
        "snapshot_rows_estimated",
        "The catalog's row estimate (pg_class.reltuples) when the table's copy started",
        estimated,
    );
    registry.register(
        "snapshot_seconds_left",
        "Estimated seconds until the table's copy ends, at its rate so far",
        left,
    );
    registry.register("snapshot_done", "1 once the table's copy has ended", done);
}

/// Events decoded, bytes read, batches and reconnects.
fn register_throughput(registry: &mut Registry, stats: &Stats, s: &Snapshot) {
    registry.register(
        "events_decoded",
        "Change events decoded from the replication stream (ahead of the sinks by at most the queued batches)",
        counter(s.events),
    );
    registry.register(
        "bytes_read",
        "Bytes of row data read from the source",
        counter(stats.bytes_in()),
    );
    registry.register("batches", "Batches processed", counter(s.batches));
    registry.register(
        "reconnects",
        "Runs started again after a transient failure",
        counter(stats.reconnects()),
    );
}

/// Where replication stands: lag, positions, retained WAL and the connection.
fn register_replication(registry: &mut Registry, stats: &Stats, s: &Snapshot) {
    registry.register(
        "replication_lag_bytes",
        "Server WAL position minus the checkpoint (the confirmed flush position)",
        gauge(s.lag_bytes() as i64),
    );
    let lag: Gauge<f64, AtomicU64> = Gauge::default();
    lag.set(lag_seconds(stats));
    registry.register(
        "replication_lag_seconds",
        "Now minus the commit time of the last durable change, while changes wait",
        lag,
    );
    registry.register(
        "checkpoint_lsn",
        "The checkpoint, as a number",
        gauge(s.checkpoint.0 as i64),
    );
    let durable: Gauge<f64, AtomicU64> = Gauge::default();
    durable.set(s.durable_commit_ts as f64 / 1e6);
    registry.register(
        "durable_commit_timestamp_seconds",
        "Commit time of the last change made durable (Unix seconds; 0 before the first)",
        durable,
    );
    registry.register(
        "server_wal_lsn",
        "The server's WAL position last seen, as a number",
        gauge(s.server_wal_end.0 as i64),
    );
    registry.register(
        "slot_retained_wal_bytes",
        "WAL the replication slot keeps on the server",
        gauge(stats.retained_wal() as i64),
    );
    registry.register(
        "connected",
        "1 while the replication stream is up",
        gauge(stats.connected() as i64),
    );
}
