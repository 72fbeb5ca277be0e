//! Batching: change events grouped into [`Batch`]es bounded by events, bytes and delay.
//!
//! A batch prefers to end at a transaction boundary, so that sinks can make it durable
//! and move the checkpoint: once a bound is reached, a batch that holds a completed
//! transaction waits for the open one to commit (up to twice the bounds). A batch that
//! holds only part of one transaction is cut at the bounds: waiting would not bring a
//! boundary closer. Such a transaction spans several batches; they say so
//! ([`Position::in_tx`]) and no checkpoint is taken until its last batch. Batches of a huge
//! transaction are therefore no larger than any other.

use crate::config::{BatchConfig, TableName};
use crate::lsn::Lsn;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;
use weir_sdk::{Batch, Event, Relation};

/// A transaction's position: its commit record and the end of that record.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct CommitPos {
    /// LSN of the commit record (the events' `commit_lsn`).
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: where streaming resumes.
    pub end_lsn: Lsn,
}

/// Where the stream stands after a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// The last transaction whose every event is in this batch or an earlier one.
    pub last_commit: Option<CommitPos>,
    /// The batch ends inside a transaction (its remaining events follow).
    pub in_tx: bool,
    /// The server's WAL position from its last keepalive, when nothing was in flight.
    /// Everything before it has been delivered.
    pub idle_wal_end: Lsn,
}

impl Position {
    /// The transaction a flush may make durable up to, given what is durable already:
    /// none inside a transaction or before any commit (a checkpoint names whole
    /// transactions only), and never behind `durable` (a backfill chunk may have moved
    /// it past the stream's commits).
    pub fn flush_point(&self, durable: Option<CommitPos>) -> Option<CommitPos> {
        match (self.in_tx, self.last_commit) {
            (false, Some(last)) => Some(last.max(durable.unwrap_or(last))),
            _ => None,
        }
    }

    /// At the end of a batch, for a sink that commits on an interval: whether to commit
    /// now (outside a transaction, with something `pending`, once the interval is `due`).
    /// A sink with nothing pending holds everything up to the last commit: `durable`
    /// moves there.
    pub fn commit_now(&self, durable: &mut Option<CommitPos>, pending: bool, due: bool) -> bool {
        if self.in_tx {
            return false;
        }
        if !pending {
            *durable = (*durable).max(self.last_commit);
        }
        pending && due
    }

    /// The position from which nothing delivered so far remains unsent by the server.
    pub fn delivered_through(&self) -> Lsn {
        let commit = self.last_commit.map_or(Lsn::ZERO, |c| c.end_lsn);
        if self.in_tx {
            commit
        } else {
            commit.max(self.idle_wal_end)
        }
    }
}

/// A batch with the stream position after it.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    pub batch: Batch,
    pub position: Position,
    /// Bytes of row data (an estimate of the batch's size).
    pub bytes: u64,
    /// weir's own logical messages in the stream (backfill requests and watermarks), at
    /// their place among the events.
    pub markers: Vec<Marker>,
    /// The transforms (`name@version#sha256`, comma-separated) this batch went through.
    pub transforms: Option<std::sync::Arc<str>>,
}

/// One of weir's own non-transactional logical messages, between transactions, at its
/// place among the batch's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// Index in `batch.events` of the first event after it.
    pub at: usize,
    pub lsn: Lsn,
    pub signal: Signal,
}

/// What weir tells a running pipeline through the WAL (a logical message with a `weir.`
/// prefix), parsed once where the source decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// `weir snapshot --table`: backfill this table's rows.
    BackfillRequest(TableName),
    /// A backfill chunk's low or high watermark.
    Watermark { edge: Edge, chunk: String },
    /// `weir reload` for the pipeline of this slot.
    Reload { slot: String },
    /// The mark `--until-caught-up` waits for.
    CaughtUp { id: String },
    /// A captured table gained columns (the decoder saw its new relation): existing rows
    /// hold a default PostgreSQL sent no change for.
    ColumnsAdded {
        table: TableName,
        columns: Vec<String>,
    },
}

/// Which end of a backfill chunk a watermark is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Low,
    High,
}

impl Signal {
    const BACKFILL: &str = "weir.backfill";
    const WATERMARK: &str = "weir.watermark";
    const RELOAD: &str = "weir.reload";
    const CAUGHT_UP: &str = "weir.caught-up";
    const COLUMNS_ADDED: &str = "weir.columns-added";

    /// The message's prefix and content, as written into the WAL.
    pub fn message(&self) -> (&'static str, String) {
        match self {
            Signal::BackfillRequest(table) => (Self::BACKFILL, table.to_string()),
            Signal::Watermark { edge, chunk } => {
                let edge = match edge {
                    Edge::Low => "low",
                    Edge::High => "high",
                };
                (Self::WATERMARK, format!("{edge}:{chunk}"))
            }
            Signal::Reload { slot } => (Self::RELOAD, slot.clone()),
            Signal::CaughtUp { id } => (Self::CAUGHT_UP, id.clone()),
            Signal::ColumnsAdded { table, columns } => (
                Self::COLUMNS_ADDED,
                serde_json::json!([table.to_string(), columns]).to_string(),
            ),
        }
    }

    /// The signal a message carries: `None` for a prefix that is not weir's, `Err` for
    /// one of weir's prefixes with content it cannot read.
    pub fn parse(prefix: &str, content: &str) -> Option<Result<Signal, MalformedSignal>> {
        let signal = match prefix {
            Self::BACKFILL => content.parse().map(Signal::BackfillRequest).ok(),
            Self::WATERMARK => match content.split_once(':') {
                Some(("low", chunk)) => Some((Edge::Low, chunk)),
                Some(("high", chunk)) => Some((Edge::High, chunk)),
                _ => None,
            }
            .map(|(edge, chunk)| Signal::Watermark {
                edge,
                chunk: chunk.to_owned(),
            }),
            Self::RELOAD => Some(Signal::Reload {
                slot: content.to_owned(),
            }),
            Self::CAUGHT_UP => Some(Signal::CaughtUp {
                id: content.to_owned(),
            }),
            Self::COLUMNS_ADDED => serde_json::from_str::<(String, Vec<String>)>(content)
                .ok()
                .and_then(|(table, columns)| {
                    let table = table.parse().ok()?;
                    Some(Signal::ColumnsAdded { table, columns })
                }),
            _ => return None,
        };
        Some(signal.ok_or_else(|| MalformedSignal {
            prefix: prefix.to_owned(),
            content: content.to_owned(),
        }))
    }
}

/// A message with one of weir's prefixes whose content weir cannot read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed {prefix} message `{content}`")]
pub struct MalformedSignal {
    pub prefix: String,
    pub content: String,
}

/// Accumulates events into batches.
pub struct Batcher {
    config: BatchConfig,
    current: Batch,
    bytes: u64,
    /// (relation id, schema version) to index in `current.relations`.
    rel_index: HashMap<(u32, u32), u32>,
    position: Position,
    /// When the oldest event of the current batch arrived.
    started: Option<Instant>,
    /// Transactions that ended inside the current batch.
    commits: usize,
    markers: Vec<Marker>,
}

impl Batcher {
    pub fn new(config: BatchConfig) -> Batcher {
        Batcher {
            config,
            current: Batch::default(),
            bytes: 0,
            rel_index: HashMap::new(),
            position: Position::default(),
            started: None,
            commits: 0,
            markers: Vec::new(),
        }
    }

    /// Records one of weir's logical messages at the current place in the batch.
    pub fn marker(&mut self, lsn: Lsn, signal: Signal) {
        self.markers.push(Marker {
            at: self.current.events.len(),
            lsn,
            signal,
        });
        self.started.get_or_insert_with(Instant::now);
    }

    /// Adds an event of `relation`; `bytes` is the size of its row data.
    pub fn push(&mut self, relation: &Arc<Relation>, mut event: Event, bytes: u64) {
        let current = &mut self.current;
        event.rel = *self
            .rel_index
            .entry((relation.id, relation.version))
            .or_insert_with(|| {
                current.relations.push(Relation::clone(relation));
                (current.relations.len() - 1) as u32
            });
        current.events.push(event);
        // The row data plus the event's fixed fields, as they weigh in a batch.
        self.bytes += bytes + 48;
        self.position.in_tx = true;
        self.started.get_or_insert_with(Instant::now);
    }

    /// Marks the start of a transaction.
    pub fn begin(&mut self) {
        self.position.in_tx = true;
    }

    /// Marks the end of a transaction.
    pub fn commit(&mut self, pos: CommitPos) {
        self.position.last_commit = Some(pos);
        self.position.in_tx = false;
        self.commits += 1;
    }

    /// Records the server's WAL end from a keepalive; it only counts when no transaction
    /// is open.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if !self.position.in_tx {
            self.position.idle_wal_end = self.position.idle_wal_end.max(wal_end);
        }
    }

    fn over(&self, factor: u64) -> bool {
        self.current.events.len() as u64 >= self.config.max_events as u64 * factor
            || self.bytes >= self.config.max_bytes * factor
    }

    /// A batch is due: a bound is reached at a transaction boundary, or twice a bound is
    /// reached inside one.
    pub fn is_full(&self) -> bool {
        if self.position.in_tx {
            self.over(2)
        } else {
            self.over(1)
        }
    }

    /// The batch holds events or markers and ends at a transaction boundary: it can be
    /// handed over early. (A backfill chunk waits for its high watermark: an idle stream
    /// hands it over at once instead of after `max_delay`.)
    pub fn ready_early(&self) -> bool {
        !self.position.in_tx && !self.is_empty()
    }

    /// When the current batch must be cut because of `max_delay`.
    pub fn deadline(&self) -> Option<Instant> {
        self.started.map(|s| s + self.config.max_delay)
    }

    /// True when nothing has been added since the last cut.
    pub fn is_empty(&self) -> bool {
        self.current.events.is_empty() && self.markers.is_empty()
    }

    /// The stream position as of the events pushed so far.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Takes the batch built so far (possibly empty: it still carries the position).
    pub fn cut(&mut self) -> SourceBatch {
        self.rel_index.clear();
        self.started = None;
        self.commits = 0;
        SourceBatch {
            batch: std::mem::take(&mut self.current),
            position: self.position,
            bytes: std::mem::take(&mut self.bytes),
            markers: std::mem::take(&mut self.markers),
            transforms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use weir_sdk::{Op, Value};

    #[test]
    fn an_interval_commit_waits_for_a_transaction_boundary_and_something_to_commit() {
        let at = |lsn| CommitPos {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 1),
        };
        let mut position = Position {
            last_commit: Some(at(10)),
            in_tx: true,
            ..Default::default()
        };
        let mut durable = Some(at(5));
        assert!(
            !position.commit_now(&mut durable, true, true),
            "inside a transaction"
        );
        assert!(!position.commit_now(&mut durable, false, true));
        assert_eq!(durable, Some(at(5)), "unmoved inside a transaction");
        position.in_tx = false;
        assert!(!position.commit_now(&mut durable, true, false), "not due");
        assert_eq!(durable, Some(at(5)), "unmoved while rows are pending");
        assert!(position.commit_now(&mut durable, true, true));
        assert!(
            !position.commit_now(&mut durable, false, true),
            "nothing pending"
        );
        assert_eq!(durable, Some(at(10)), "nothing pending: everything is held");
    }

    fn rel(version: u32) -> Arc<Relation> {
        Arc::new(Relation {
            id: 7,
            schema: "public".into(),
            table: "t".into(),
            version,
            columns: vec![],
        })
    }

    fn ev() -> Event {
        Event {
            op: Op::Insert,
            rel: 0,
            commit_lsn: 1,
            seq: 0,
            xid: 1,
            commit_ts: 0,
            before: None,
            after: Some(vec![Value::Int(1)]),
            unchanged: vec![],
        }
    }

    fn batcher(max_events: usize) -> Batcher {
        Batcher::new(BatchConfig {
            max_events,
            max_bytes: 1 << 30,
            max_delay: Duration::from_secs(1),
        })
    }

    #[test]
    fn waits_for_the_commit_once_full_unless_the_transaction_is_huge() {
        let mut b = batcher(2);
        b.begin();
        b.push(&rel(1), ev(), 8);
        b.push(&rel(1), ev(), 8);
        assert!(
            !b.is_full(),
            "inside a transaction a batch may grow to twice the bound"
        );
        b.commit(CommitPos {
            commit_lsn: Lsn(10),
            end_lsn: Lsn(20),
        });
        assert!(b.is_full());
        let out = b.cut();
        assert_eq!(out.batch.events.len(), 2);
        assert_eq!(out.position.last_commit.unwrap().end_lsn, Lsn(20));
        assert!(!out.position.in_tx);

        b.begin();
        for _ in 0..4 {
            b.push(&rel(1), ev(), 8);
        }
        assert!(b.is_full(), "a huge transaction is cut in the middle");
        let out = b.cut();
        assert!(out.position.in_tx);
        assert_eq!(
            out.position.delivered_through(),
            Lsn(20),
            "a cut inside a transaction does not move past its start"
        );
    }

    #[test]
    fn relations_are_indexed_per_batch_and_version() {
        let mut b = batcher(100);
        b.push(&rel(1), ev(), 1);
        b.push(&rel(2), ev(), 1);
        b.push(&rel(1), ev(), 1);
        let out = b.cut();
        assert_eq!(out.batch.relations.len(), 2);
        assert_eq!(
            out.batch.events.iter().map(|e| e.rel).collect::<Vec<_>>(),
            vec![0, 1, 0]
        );
        b.push(&rel(2), ev(), 1);
        assert_eq!(
            b.cut().batch.events[0].rel,
            0,
            "indexes start over in each batch"
        );
    }

    #[test]
    fn keepalives_count_only_outside_transactions() {
        let mut b = batcher(100);
        b.keepalive(Lsn(50));
        assert_eq!(b.position().delivered_through(), Lsn(50));
        b.begin();
        b.keepalive(Lsn(90));
        assert_eq!(b.position().delivered_through(), Lsn(0));
        b.commit(CommitPos {
            commit_lsn: Lsn(60),
            end_lsn: Lsn(70),
        });
        assert_eq!(b.position().delivered_through(), Lsn(70));
    }
}
