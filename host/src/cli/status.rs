//! The periodic one-line status: events/s, lag and checkpoint.

use crate::stats::{Snapshot, Stats};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The running reporter; `finish` clears its line.
pub struct Reporter {
    stop: CancellationToken,
    terminal: bool,
}

impl Reporter {
    pub fn finish(self) {
        self.stop.cancel();
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Redraws a status line every second on a terminal; elsewhere logs it every 10 s
/// while there is activity.
pub fn spawn(stats: Arc<Stats>) -> Reporter {
    let terminal = std::io::stderr().is_terminal();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let period = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let span = tracing::Span::current();
    let task = async move {
        let mut last = (Instant::now(), Snapshot::default());
        let mut ticker = tokio::time::interval(period);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = (Instant::now(), stats.snapshot());
            let rate =
                (now.1.events_read - last.1.events_read) as f64 / (now.0 - last.0).as_secs_f64();
            let mut line = format!(
                "{:>9.0} events/s | {} events | lag {} | checkpoint {}",
                rate,
                now.1.events_read,
                bytesize::ByteSize(now.1.lag_bytes()).display().iec(),
                now.1.checkpoint
            );
            // A table being copied (the initial snapshot, a backfill) as a progress bar.
            if let Some(copy) = stats.copies().iter().find(|c| c.finished.is_none()) {
                line = format!("{} | {line}", progress_bar(copy));
            }
            if terminal {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            } else if now.1.events_read != last.1.events_read
                || now.1.checkpoint != last.1.checkpoint
            {
                tracing::info!(
                    events_per_s = rate as u64,
                    events = now.1.events_read,
                    batches = now.1.batches,
                    lag_bytes = now.1.lag_bytes(),
                    checkpoint = %now.1.checkpoint,
                    "Status."
                );
            }
            last = now;
        }
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
    Reporter { stop, terminal }
}

/// `public.t [#####.....] 52% 1.04M/2.00M rows 12s left`, or without an estimate
/// `public.t 1.04M rows`.
fn progress_bar(copy: &crate::stats::TableCopy) -> String {
    let millions = |n: u64| format!("{:.2}M", n as f64 / 1e6);
    match (copy.percent(), copy.estimated) {
        (Some(p), Some(e)) => {
            let filled = (p / 10.0).round() as usize;
            let left = copy
                .seconds_left()
                .map_or(String::new(), |s| format!(" {s:.0}s left"));
            format!(
                "{} {} [{}{}] {p:.0}% {}/{} rows{left}",
                copy.kind.name(),
                copy.table,
                "#".repeat(filled),
                ".".repeat(10 - filled.min(10)),
                millions(copy.rows),
                millions(e)
            )
        }
        _ => format!(
            "{} {} {} rows",
            copy.kind.name(),
            copy.table,
            millions(copy.rows)
        ),
    }
}
