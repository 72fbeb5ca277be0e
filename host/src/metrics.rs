//! The operations endpoint: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (streaming, and not falling behind).

use crate::config::{MetricsConfig, PipelineConfig};
use crate::stats::Stats;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
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

struct State {
    stats: Arc<Stats>,
    slot: String,
    ready_max_lag: Duration,
}

/// Starts listening (an address already in use is an error now, not later).
pub async fn serve(
    config: &MetricsConfig,
    pipeline: &PipelineConfig,
    stats: Arc<Stats>,
) -> anyhow::Result<Endpoint> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen {}: {e}", config.listen))?;
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
            "weir serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

/// Seconds between now and the commit of the last durable change (0 when nothing waits).
fn lag_seconds(stats: &Stats) -> f64 {
    let s = stats.snapshot();
    if s.lag_bytes() == 0 || s.durable_commit_ts == 0 {
        return 0.0;
    }
    let now = chrono::Utc::now().timestamp_micros();
    ((now - s.durable_commit_ts).max(0) as f64) / 1e6
}

fn ready(state: &State) -> Result<(), String> {
    if !state.stats.connected() {
        return Err("the replication stream is not connected".into());
    }
    let lag = lag_seconds(&state.stats);
    if lag > state.ready_max_lag.as_secs_f64() {
        return Err(format!(
            "the last durable change is {lag:.0}s old (ready_max_lag {}s)",
            state.ready_max_lag.as_secs()
        ));
    }
    Ok(())
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
    let events: Family<Vec<(String, String)>, Counter> = Family::default();
    for ((table, op), n) in stats.written() {
        events
            .get_or_create(&vec![("table".into(), table), ("op".into(), op.into())])
            .inc_by(n);
    }
    registry.register(
        "events_written",
        "Change events written to the sinks, by table and op",
        events,
    );
    let counter = |v: u64| {
        let c: Counter<u64, AtomicU64> = Counter::default();
        c.inc_by(v);
        c
    };
    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    registry.register(
        "events_read",
        "Change events read from the source",
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
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String does not fail");
    out
}
