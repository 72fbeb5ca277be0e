//! Position delete files: rows `(file_path, pos)` that mark rows of a data file deleted,
//! written with iceberg's own Parquet writer (iceberg 0.10.1 has no position-delete
//! writer) and described as `PositionDeletes` content for a delete manifest.

use arrow::array::{Int64Array, RecordBatch, StringArray};
use iceberg::metadata_columns::{delete_file_path_field, delete_file_pos_field};
use iceberg::spec::{DataContentType, DataFile, Schema, Struct};
use iceberg::table::Table;
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
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
