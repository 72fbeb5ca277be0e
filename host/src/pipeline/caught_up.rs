//! `--until-caught-up`: the point the run stops at.

use crate::batch::{Marker, Position, Signal};
use crate::lsn::Lsn;
use crate::source::{Control, SourceError};

/// The point `--until-caught-up` waits for: the server's flushed WAL position when the
/// run started. Every transaction committed before then ends at or before it.
#[derive(Debug, Clone)]
pub(super) struct CaughtUp {
    target: Lsn,
    /// A logical message written after the mark, when the stream will pass it (the slot
    /// existed before): reaching it proves every earlier message (a backfill request)
    /// was seen, which a keepalive position alone does not.
    marker: Option<String>,
    seen: bool,
}

impl CaughtUp {
    pub async fn mark(control: &Control, slot_exists: bool) -> Result<CaughtUp, SourceError> {
        let target = control.current_wal_flush_lsn().await?;
        let id = format!("{:x}", chrono::Utc::now().timestamp_micros());
        // The message also lets the stream reach the mark at once when the server is
        // otherwise idle and its last record is incomplete.
        let signal = Signal::CaughtUp { id: id.clone() };
        let marker = match control.emit(&signal).await {
            Ok(_) => slot_exists.then_some(id),
            Err(e) => {
                tracing::debug!(error = %e, "No marker message; waiting for keepalives instead.");
                None
            }
        };
        Ok(CaughtUp {
            target,
            marker,
            seen: false,
        })
    }

    /// The slot was made after the mark: the stream never passes the marker.
    pub fn slot_recreated(&mut self) {
        self.marker = None;
    }

    pub fn observe(&mut self, markers: &[Marker]) {
        let ours = |m: &Marker| matches!(&m.signal, Signal::CaughtUp { id } if Some(id) == self.marker.as_ref());
        if markers.iter().any(ours) {
            self.seen = true;
        }
    }

    pub fn reached(&self, position: &Position) -> bool {
        !position.in_tx
            && match self.marker {
                Some(_) => self.seen,
                None => position.delivered_through() >= self.target,
            }
    }
}
