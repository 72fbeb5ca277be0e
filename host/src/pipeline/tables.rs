//! Tables a pattern of `source.tables` selects that appear while the pipeline runs:
//! the run ends so that the next one adds them to the publication and backfills them,
//! as a `FOR TABLES IN SCHEMA` publication picks up new tables.

use crate::config::TableName;
use crate::source::{Control, SourceError};
use std::time::{Duration, Instant};

pub(super) struct TableWatch {
    wanted: Vec<TableName>,
    known: Vec<TableName>,
    next: Instant,
}

impl TableWatch {
    const EVERY: Duration = Duration::from_secs(5);

    /// Watches the patterns of `wanted` for tables beyond `known`; `None` without
    /// patterns.
    pub fn new(wanted: &[TableName], known: &[TableName]) -> Option<TableWatch> {
        wanted
            .iter()
            .any(TableName::is_pattern)
            .then(|| TableWatch {
                wanted: wanted.to_vec(),
                known: known.to_vec(),
                next: Instant::now() + Self::EVERY,
            })
    }

    /// Whether a table the patterns select has appeared (checked every few seconds).
    pub async fn appeared(&mut self, control: &Control) -> Result<bool, SourceError> {
        if Instant::now() < self.next {
            return Ok(false);
        }
        self.next = Instant::now() + Self::EVERY;
        let now = control.resolve_tables(&self.wanted).await?;
        let new: Vec<String> = now
            .tables
            .iter()
            .filter(|t| !self.known.contains(t))
            .map(|t| t.to_string())
            .collect();
        if new.is_empty() {
            return Ok(false);
        }
        tracing::info!(tables = %new.join(", "), "New tables match source.tables: the run starts again from its checkpoint to add them to the publication and backfill them.");
        Ok(true)
    }
}
