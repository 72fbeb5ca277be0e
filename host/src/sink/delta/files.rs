//! Reading and writing a Delta table's Parquet files on its object store (paths relative
//! to the table), for the mirror's copy-on-write commits and `weir lake compact`.

use crate::sink::SinkError;
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

/// A data file written, to be added.
pub struct Written {
    pub path: String,
    pub size: i64,
    pub rows: usize,
}

fn file_err(uri: &str, path: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Write {
        path: format!("{uri}/{path}"),
        message: e.to_string(),
    }
}

/// The batches of the file at `path` in the table at `uri` (only `columns` when given).
pub async fn read(
    store: Arc<dyn ObjectStore>,
    uri: &str,
    path: &str,
    columns: Option<&[String]>,
) -> Result<Vec<RecordBatch>, SinkError> {
    let err = |e: &dyn std::fmt::Display| file_err(uri, path, e);
    let location = Path::parse(path).map_err(|e| err(&e))?;
    let meta = store.head(&location).await.map_err(|e| err(&e))?;
    let reader = parquet::arrow::async_reader::ParquetObjectReader::new(store, location)
        .with_file_size(meta.size);
    let mut builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| err(&e))?
        .with_batch_size(8192);
    if let Some(columns) = columns {
        let roots: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| columns.contains(f.name()))
            .map(|(i, _)| i)
            .collect();
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), roots);
        builder = builder.with_projection(mask);
    }
    let stream = builder.build().map_err(|e| err(&e))?;
    stream.try_collect().await.map_err(|e| err(&e))
}

/// How a table's files are written.
pub struct FileWriter<'a> {
    pub store: Arc<dyn ObjectStore>,
    pub uri: &'a str,
    pub properties: &'a WriterProperties,
    pub target_size: u64,
}

impl FileWriter<'_> {
    /// Files named `<prefix>-<uuid>.zstd.parquet` under the table, filled one after
    /// another.
    pub fn rolling(&self, prefix: &str) -> Rolling<'_> {
        Rolling {
            to: self,
            prefix: prefix.to_string(),
            open: None,
            done: Vec::new(),
        }
    }

    /// Writes `rows` as files of about the target size (see [`FileWriter::rolling`]).
    pub async fn write(
        &self,
        rows: &[RecordBatch],
        prefix: &str,
    ) -> Result<Vec<Written>, SinkError> {
        let mut files = self.rolling(prefix);
        for batch in rows {
            files.push(batch).await?;
        }
        files.finish().await
    }
}

/// Rows written to files of about the target size: a file is completed once its
/// encoded size reaches it.
pub struct Rolling<'a> {
    to: &'a FileWriter<'a>,
    prefix: String,
    open: Option<(String, ArrowWriter<Vec<u8>>, usize)>,
    done: Vec<Written>,
}

impl Rolling<'_> {
    pub async fn push(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        for at in (0..batch.num_rows()).step_by(8192) {
            let slice = batch.slice(at, (batch.num_rows() - at).min(8192));
            if self.open.is_none() {
                let path = format!("{}-{}.zstd.parquet", self.prefix, uuid::Uuid::new_v4());
                let writer = ArrowWriter::try_new(
                    Vec::new(),
                    slice.schema(),
                    Some(self.to.properties.clone()),
                )
                .map_err(|e| file_err(self.to.uri, &path, e))?;
                self.open = Some((path, writer, 0));
            }
            let (path, writer, rows) = self.open.as_mut().expect("opened above");
            writer
                .write(&slice)
                .map_err(|e| file_err(self.to.uri, path, e))?;
            *rows += slice.num_rows();
            if (writer.bytes_written() + writer.in_progress_size()) as u64 >= self.to.target_size {
                self.close().await?;
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        let Some((path, writer, rows)) = self.open.take() else {
            return Ok(());
        };
        let bytes = writer
            .into_inner()
            .map_err(|e| file_err(self.to.uri, &path, e))?;
        let size = bytes.len() as i64;
        let location = Path::parse(&path).map_err(|e| file_err(self.to.uri, &path, e))?;
        self.to
            .store
            .put(&location, bytes.into())
            .await
            .map_err(|source| crate::storage::StorageError::Store {
                op: "writing",
                path: format!("{}/{path}", self.to.uri),
                source,
            })?;
        self.done.push(Written { path, size, rows });
        Ok(())
    }

    /// Completes the open file; the files written, in order.
    pub async fn finish(mut self) -> Result<Vec<Written>, SinkError> {
        self.close().await?;
        Ok(self.done)
    }
}

/// The add action of a data file written (`data_change`: whether it changes the table's
/// rows, false for a compaction's).
pub fn add_action(w: &Written, data_change: bool, now: i64) -> deltalake::kernel::Action {
    deltalake::kernel::Action::Add(deltalake::kernel::Add {
        path: w.path.clone(),
        partition_values: Default::default(),
        size: w.size,
        modification_time: now,
        data_change,
        stats: Some(format!("{{\"numRecords\":{}}}", w.rows)),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    })
}

/// The remove action of a live data file of `size` bytes.
pub fn remove_action(
    path: &str,
    size: Option<i64>,
    data_change: bool,
    now: i64,
) -> deltalake::kernel::Action {
    deltalake::kernel::Action::Remove(deltalake::kernel::Remove {
        path: path.to_string(),
        data_change,
        deletion_timestamp: Some(now),
        extended_file_metadata: Some(true),
        partition_values: Some(Default::default()),
        size,
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    })
}
