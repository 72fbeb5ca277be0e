//! Position delete files: rows `(file_path, pos)` that mark rows of a data file deleted,
//! written with iceberg's own Parquet writer (iceberg 0.10.1 has no position-delete
//! writer) and described as `PositionDeletes` content for a delete manifest, and read
//! back (by the index rebuild and by compaction).

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use futures::TryStreamExt;
use iceberg::metadata_columns::{delete_file_path_field, delete_file_pos_field};
use iceberg::spec::{DataContentType, DataFile, Schema, Struct};
use iceberg::table::Table;
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use object_store::ObjectStoreExt;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

/// Writes one delete file at `path` deleting `positions` (sorted here) of `data_file`,
/// a file of the table's unpartitioned default spec.
pub async fn write(
    table: &Table,
    properties: &WriterProperties,
    path: &str,
    data_file: &str,
    mut positions: Vec<u64>,
) -> iceberg::Result<DataFile> {
    positions.sort_unstable();
    positions.dedup();
    let schema = Arc::new(
        Schema::builder()
            .with_fields(vec![
                delete_file_path_field().clone(),
                delete_file_pos_field().clone(),
            ])
            .build()?,
    );
    let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
    let rows = RecordBatch::try_new(
        arrow_schema,
        vec![
            Arc::new(StringArray::from(vec![data_file; positions.len()])),
            Arc::new(Int64Array::from_iter_values(
                positions.iter().map(|&p| p as i64),
            )),
        ],
    )
    .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()))?;
    let output = table.file_io().new_output(path)?;
    let mut writer = ParquetWriterBuilder::new(properties.clone(), schema)
        .build(output)
        .await?;
    writer.write(&rows).await?;
    let mut built = writer.close().await?;
    let Some(mut builder) = built.pop() else {
        return Err(iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            "the delete file writer made no file",
        ));
    };
    builder
        .content(DataContentType::PositionDeletes)
        .partition(Struct::empty())
        .partition_spec_id(table.metadata().default_partition_spec_id())
        .referenced_data_file(Some(data_file.to_owned()));
    builder
        .build()
        .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()))
}

/// The named columns of a data file, batch by batch, rows in file order.
pub async fn read_columns(file: &str, names: &[String]) -> Result<Vec<Vec<ArrayRef>>, String> {
    let (store, path) = crate::storage::object_store_for(file).map_err(|e| e.to_string())?;
    let meta = store.head(&path).await.map_err(|e| e.to_string())?;
    let reader = parquet::arrow::async_reader::ParquetObjectReader::new(store, path)
        .with_file_size(meta.size);
    let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| e.to_string())?;
    let schema = builder.schema().clone();
    let indices: Vec<usize> = names
        .iter()
        .map(|n| schema.index_of(n).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), indices.clone());
    let mut stream = builder
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(batch) = stream.try_next().await.map_err(|e| e.to_string())? {
        // The projection keeps file order; pick the columns in key order.
        let cols = names
            .iter()
            .map(|n| {
                batch
                    .column_by_name(n)
                    .cloned()
                    .ok_or_else(|| format!("no column {n}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(cols);
    }
    Ok(out)
}

/// The (data file, position) rows of a position delete file.
pub async fn read(file: &str) -> Result<Vec<(String, u64)>, String> {
    let columns = read_columns(file, &["file_path".into(), "pos".into()]).await?;
    let mut out = Vec::new();
    for cols in columns {
        let paths = arrow::compute::cast(&cols[0], &DataType::Utf8).map_err(|e| e.to_string())?;
        let paths = paths
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or("file_path is not a string column")?;
        let pos = arrow::compute::cast(&cols[1], &DataType::Int64).map_err(|e| e.to_string())?;
        let pos = pos
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or("pos is not a long column")?;
        for r in 0..paths.len() {
            out.push((paths.value(r).to_owned(), pos.value(r) as u64));
        }
    }
    Ok(out)
}
