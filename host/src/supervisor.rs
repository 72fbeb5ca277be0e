//! What keeps a pipeline running: the retry supervisor (a transient failure is retried
//! from the checkpoint with backoff; a permanent one stops at once with its kind) and the
//! slot-lag monitor.

use crate::config::{PipelineConfig, RetryConfig, SlotLagPolicy};
use crate::pipeline::{PipelineError, RunOptions, RunSummary};
use crate::source::Control;
use crate::stats::Stats;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Every 10 s, reads the WAL the slot retains (for `weir_slot_retained_wal_bytes`) and
/// applies `max_slot_lag`: an error in the log, or (policy `stop`) a clean stop whose
/// reason goes in `over_limit`.
pub fn slot_watch(
    config: &PipelineConfig,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    over_limit: Arc<std::sync::Mutex<Option<String>>>,
) -> tokio::task::JoinHandle<()> {
    let (url, slot) = (config.source.url.clone(), config.source.slot.clone());
    let (limit, policy) = (config.source.max_slot_lag, config.source.slot_lag_policy);
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut control = None;
            let mut alerted = false;
            loop {
                if control.is_none() {
                    control = Control::connect(&url).await.ok();
                }
                if let Some(c) = &control {
                    match retained_wal(c, &slot).await {
                        Ok(Some(retained)) => {
                            stats.set_retained_wal(retained);
                            match limit.filter(|max| retained > *max) {
                                Some(max) => {
                                    let text =
                                        |b: u64| bytesize::ByteSize(b).display().iec().to_string();
                                    let reason = format!(
                                        "replication slot `{slot}` retains {} of WAL, over max_slot_lag {}: the server keeps that WAL until weir confirms it",
                                        text(retained),
                                        text(max)
                                    );
                                    if policy == SlotLagPolicy::Stop {
                                        tracing::error!(
                                            "{reason}; stopping (slot_lag_policy = \"stop\"). Find what holds weir back (weir status, /metrics), or drop the slot with `weir slot drop` to free the WAL and take a new snapshot."
                                        );
                                        *over_limit.lock().unwrap_or_else(|e| e.into_inner()) =
                                            Some(format!("stopped: {reason}"));
                                        shutdown.cancel();
                                        return;
                                    }
                                    if !alerted {
                                        tracing::error!(
                                            "{reason} (slot_lag_policy = \"alert\": weir goes on)"
                                        );
                                        alerted = true;
                                    }
                                }
                                None => alerted = false,
                            }
                        }
                        Ok(None) => {}
                        Err(_) => control = None,
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        },
        span,
    ))
}

/// The WAL `slot` retains on the server, in bytes (none: no such slot).
async fn retained_wal(control: &Control, slot: &str) -> Result<Option<u64>, tokio_postgres::Error> {
    let row = control
        .client
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, Option<i64>>(0).unwrap_or(0).max(0) as u64))
}

/// Runs the pipeline; once it has streamed, a transient failure (see
/// [`PipelineError::is_transient`]) makes it wait and run again from its
/// checkpoint, with exponential backoff and jitter, up to `[retry] attempts` failures in
/// a row. A first run that fails stops at once with its error: that is a setup problem.
pub async fn run_with_retries(
    config: &PipelineConfig,
    options: &RunOptions,
    stats: &Arc<Stats>,
) -> Result<RunSummary, PipelineError> {
    let retry = &config.retry;
    let mut failures = 0u32;
    let mut events = 0;
    let mut options = options.clone();
    loop {
        let streamed_before = stats.streaming_runs();
        let result = crate::pipeline::run(config, options.clone(), stats.clone()).await;
        // --new-slot accepts the gap it was given for, once: a run retried (only after
        // streaming, so with its new slot made) stops again at a slot lost later.
        options.new_slot = false;
        stats.disconnected();
        let streamed = stats.streaming_runs() > streamed_before;
        let error = match result {
            Ok(summary) if summary.again && !options.shutdown.is_cancelled() => {
                failures = 0;
                events = stats.snapshot().events;
                continue;
            }
            Ok(mut summary) => {
                summary.events += events;
                return Ok(summary);
            }
            Err(e) => e,
        };
        events = stats.snapshot().events;
        let ever_streamed = stats.streaming_runs() > 0;
        if !error.is_transient() && ever_streamed && !options.shutdown.is_cancelled() {
            tracing::error!(kind = %error.kind(), error = %error, "Permanent failure: stopping without retrying (nothing past the checkpoint was acknowledged).");
        }
        if !error.is_transient() || !ever_streamed || options.shutdown.is_cancelled() {
            return Err(error);
        }
        failures = if streamed { 1 } else { failures + 1 };
        if retry.attempts > 0 && failures > retry.attempts {
            tracing::error!(
                attempts = retry.attempts,
                "Giving up after failed attempts in a row."
            );
            return Err(error);
        }
        let delay = backoff(retry, failures);
        stats.set_retrying(Some(error.to_string()));
        tracing::warn!(
            error = %error,
            attempt = failures,
            max_attempts = retry.attempts,
            retry_in_ms = delay.as_millis() as u64,
            "Transient failure: reconnecting and resuming from the checkpoint (nothing past it was acknowledged)."
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = options.shutdown.cancelled() => return Err(error),
        }
        stats.add_reconnect();
    }
}

/// `initial_backoff * 2^(attempt-1)`, capped at `max_backoff`, minus up to a quarter of
/// it at random (so pipelines that lost the same server do not return in step).
fn backoff(retry: &RetryConfig, attempt: u32) -> std::time::Duration {
    let base = retry
        .initial_backoff
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(retry.max_backoff);
    let jitter = rand::random::<f64>() * 0.25;
    base.mul_f64(1.0 - jitter)
}
