//! Reading what a sink holds, without changing it: its committed position, and its
//! changelog (or mirror) rows for one table.

use super::VerifyError;
use crate::batch::CommitPos;
use crate::checkpoint::CheckpointStore;
use crate::config::{SinkConfig, TableName};
use crate::sink::iceberg::{connect_existing, table_ident, table_position};
use crate::storage::object_store_for;
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use iceberg::table::Table;
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_reader::ParquetObjectReader;
use std::sync::Arc;

/// One table of one sink's output.
pub enum Output {
    Parquet {
        store: Arc<dyn ObjectStore>,
        dir: Path,
        /// Files of flushes after the checkpoint's are not read.
        checkpoint_seq: u64,
    },
    Iceberg(Box<Table>),
    /// A Delta changelog or mirror table.
    Delta(Box<deltalake::DeltaTable>),
    /// The table has no output yet.
    Empty,
}

/// What verify can read of a sink: its output of `table` and the position it covers.
pub async fn open(
    sink: &SinkConfig,
    slot: &str,
    table: &TableName,
) -> Result<(Output, Option<CommitPos>), VerifyError> {
    let unreadable = |message: String| VerifyError::Output {
        sink: crate::sink::sink_name(sink),
        message,
    };
    match sink {
        SinkConfig::Parquet(c) => {
            let (store, base) = object_store_for(&c.url).map_err(|e| unreadable(e.to_string()))?;
            let checkpoint = CheckpointStore::new(store.clone(), &base, slot)
                .read()
                .await
                .map_err(|e| unreadable(e.to_string()))?;
            let dir = base
                .clone()
                .join(table.schema.as_str())
                .join(table.table.as_str());
            Ok((
                Output::Parquet {
                    store,
                    dir,
                    checkpoint_seq: checkpoint.as_ref().map_or(0, |c| c.seq),
                },
                checkpoint.map(|c| c.position()),
            ))
        }
        SinkConfig::Iceberg(c) => {
            let Some(catalog) = connect_existing(c)
                .await
                .map_err(|e| unreadable(e.to_string()))?
            else {
                return Ok((Output::Empty, None));
            };
            let ident = table_ident(c, &table.schema, &table.table);
            if !catalog
                .table_exists(&ident)
                .await
                .map_err(|e| unreadable(e.to_string()))?
            {
                return Ok((Output::Empty, None));
            }
            let t = catalog
                .load_table(&ident)
                .await
                .map_err(|e| unreadable(e.to_string()))?;
            let position = table_position(&t, slot);
            Ok((Output::Iceberg(Box::new(t)), position))
        }
        SinkConfig::Delta(c) => {
            match crate::sink::delta::table_at_rest(c, slot, &table.schema, &table.table)
                .await
                .map_err(|e| unreadable(e.to_string()))?
            {
                Some((t, position)) => Ok((Output::Delta(Box::new(t)), position)),
                None => Ok((Output::Empty, None)),
            }
        }
        _ => Err(unreadable(
            "verify reads changelog and mirror outputs (parquet, iceberg and delta sinks); this sink is not one"
                .into(),
        )),
    }
}

/// The flush sequence in a data file's name (`part-<seq>-<n>-<slot>.parquet`), if any.
fn flush_seq(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    name.strip_prefix("part-")?.split('-').next()?.parse().ok()
}

impl Output {
    /// Calls `each` with every record batch of the table's changelog.
    pub async fn read(
        &self,
        mut each: impl FnMut(&RecordBatch) -> Result<(), VerifyError>,
    ) -> Result<(), VerifyError> {
        match self {
            Output::Empty => Ok(()),
            Output::Parquet {
                store,
                dir,
                checkpoint_seq,
            } => {
                let mut files: Vec<_> = store
                    .list(Some(dir))
                    .try_collect()
                    .await
                    .map_err(|e| read_err(dir.as_ref(), e))?;
                files.retain(|m| {
                    m.location.as_ref().ends_with(".parquet")
                        && flush_seq(&m.location).is_none_or(|s| s <= *checkpoint_seq)
                });
                files.sort_by(|a, b| a.location.cmp(&b.location));
                for meta in files {
                    let path = meta.location.to_string();
                    let reader = ParquetObjectReader::new(store.clone(), meta.location.clone())
                        .with_file_size(meta.size);
                    let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
                        .await
                        .and_then(|b| b.build())
                        .map_err(|e| read_err(&path, e))?;
                    while let Some(rows) =
                        stream.try_next().await.map_err(|e| read_err(&path, e))?
                    {
                        each(&rows)?;
                    }
                }
                Ok(())
            }
            Output::Delta(table) => {
                let name = table.table_url().to_string();
                let files =
                    crate::sink::delta::live_files(table).map_err(|e| read_err(&name, e))?;
                for file in files {
                    for rows in crate::sink::delta::read_file(table, &file)
                        .await
                        .map_err(|e| read_err(&file, e))?
                    {
                        each(&rows)?;
                    }
                }
                Ok(())
            }
            Output::Iceberg(table) => {
                let Some(id) = table.metadata().current_snapshot_id() else {
                    return Ok(());
                };
                let name = table.identifier().to_string();
                let scan = table
                    .scan()
                    .snapshot_id(id)
                    .select_all()
                    .build()
                    .map_err(|e| read_err(&name, e))?;
                let mut stream = scan.to_arrow().await.map_err(|e| read_err(&name, e))?;
                while let Some(rows) = stream.try_next().await.map_err(|e| read_err(&name, e))? {
                    each(&rows)?;
                }
                Ok(())
            }
        }
    }
}

fn read_err(what: &str, e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Read {
        path: what.to_owned(),
        message: e.to_string(),
    }
}
