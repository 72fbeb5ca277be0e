//! The position a verify compares at: a snapshot of the source exported by a temporary
//! slot (the tables exactly as of its consistent point), and the wait until a sink holds
//! every transaction before it.

use super::VerifyError;
use crate::batch::CommitPos;
use crate::config::SourceConfig;
use crate::lsn::Lsn;
use crate::source::{Control, SourceInfo, sql_err};
use pgwire_replication::ReplicationClient;
use std::time::{Duration, Instant};

/// An exported snapshot of the source and where it stands in the WAL.
pub struct At {
    /// The exporting session: the snapshot can be imported while it stays idle, and its
    /// temporary slot goes when it closes.
    _session: ReplicationClient,
    /// Every transaction committed before this LSN is in the snapshot, none after.
    pub lsn: Lsn,
    pub snapshot: String,
}

/// Exports a snapshot through a temporary slot (the pipeline's own slot is not touched).
pub async fn export(
    control: &Control,
    source: &SourceConfig,
    info: &SourceInfo,
) -> Result<At, VerifyError> {
    let name = format!("weir_verify_{}", std::process::id());
    let (session, lsn, snapshot) = control
        .create_temporary_slot_exporting(source, info, &name)
        .await
        .map_err(|e| VerifyError::Snapshot(e.to_string()))?;
    Ok(At {
        _session: session,
        lsn,
        snapshot,
    })
}

/// Whether a sink holds every transaction committed before `at`.
pub enum Wait {
    Ready,
    /// Not yet: ask again.
    Later,
}

/// Decides from the sink's position and the pipeline's slot whether the sink holds
/// every transaction before `at`: its own position is past it, or the slot's confirmed
/// position is (weir confirms only what every sink holds), or the pipeline is stopped
/// and no transaction lies between the sink's position and `at`.
pub async fn ready(
    control: &Control,
    source: &SourceConfig,
    sink: &str,
    held: Option<CommitPos>,
    at: Lsn,
) -> Result<Wait, VerifyError> {
    if held.is_some_and(|h| h.end_lsn >= at) {
        return Ok(Wait::Ready);
    }
    let row = control
        .client
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&source.slot],
        )
        .await
        .map_err(|e| VerifyError::Snapshot(sql_err("reading the slot")(e).to_string()))?;
    let Some(row) = row else {
        return Err(VerifyError::Usage(format!(
            "the pipeline's slot `{}` does not exist: run the pipeline first",
            source.slot
        )));
    };
    let active: bool = row.get(0);
    let confirmed: Option<String> = row.get(1);
    if confirmed
        .and_then(|c| c.parse::<Lsn>().ok())
        .is_some_and(|c| c >= at)
    {
        return Ok(Wait::Ready);
    }
    if active {
        return Ok(Wait::Later);
    }
    let behind = transactions_between(control, source, held, at).await?;
    match behind {
        None => Ok(Wait::Later),
        Some(0) => Ok(Wait::Ready),
        Some(n) => Err(VerifyError::Behind {
            sink: sink.to_owned(),
            held: held.map_or(Lsn::ZERO, |h| h.end_lsn),
            at,
            transactions: n,
            bytes: at.0.saturating_sub(held.map_or(0, |h| h.end_lsn.0)),
        }),
    }
}

/// How many transactions of the publication commit after `held` and before `at`, read
/// from the stopped pipeline's slot without consuming it; `None` when the slot was
/// taken in the meantime (the pipeline started).
async fn transactions_between(
    control: &Control,
    source: &SourceConfig,
    held: Option<CommitPos>,
    at: Lsn,
) -> Result<Option<u64>, VerifyError> {
    let rows = control
        .client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL, \
             'proto_version', '1', 'publication_names', $3)",
            &[&source.slot, &at.to_string(), &source.publication],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        // 55006: object in use (the pipeline took the slot).
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
            return Ok(None);
        }
        Err(e) => {
            return Err(VerifyError::Snapshot(
                sql_err("reading the stopped pipeline's slot")(e).to_string(),
            ));
        }
    };
    let after = held.map_or(0, |h| h.commit_lsn.0);
    let count = rows
        .iter()
        .filter_map(|r| {
            let data: &[u8] = r.get(0);
            // Commit: 'C', flags, commit LSN, end LSN, timestamp.
            (data.first() == Some(&b'C') && data.len() >= 10)
                .then(|| u64::from_be_bytes(data[2..10].try_into().unwrap_or_default()))
        })
        .filter(|&lsn| lsn > after && lsn < at.0)
        .count();
    Ok(Some(count as u64))
}

/// Waits until [`ready`] says so, nudging the WAL now and then so that an idle server
/// sends the keepalive that lets a running pipeline confirm its position.
pub async fn wait(
    control: &Control,
    source: &SourceConfig,
    sink: &str,
    mut held: impl AsyncFnMut() -> Result<Option<CommitPos>, VerifyError>,
    at: Lsn,
    timeout: Duration,
) -> Result<(), VerifyError> {
    let started = Instant::now();
    let mut last_nudge = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let position = held().await?;
        if let Wait::Ready = ready(control, source, sink, position, at).await? {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(VerifyError::Lagging {
                sink: sink.to_owned(),
                held: position.map_or(Lsn::ZERO, |h| h.end_lsn),
                at,
                waited: timeout,
            });
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(sink, held = %position.map_or(Lsn::ZERO, |h| h.end_lsn), at = %at, "Waiting for the sink to pass the verify position.");
        }
        if last_nudge.elapsed() >= Duration::from_secs(1) {
            last_nudge = Instant::now();
            let _ = control
                .client
                .execute(
                    "SELECT pg_logical_emit_message(false, 'weir.verify', '')",
                    &[],
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
