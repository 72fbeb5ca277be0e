//! `weir replay`: a pipeline's own Parquet changelog applied to one of its sinks (a
//! PostgreSQL projection), from an LSN, in source order and in one target transaction,
//! so that a new projection starts with the history a slot cannot give back, and a
//! damaged one can be rebuilt. The slot is not touched; the next `weir run` hands over
//! to the stream at the changelog's checkpoint.

use crate::batch::{CommitPos, Position, SourceBatch};
use crate::config::{PipelineConfig, SinkConfig, TableName};
use crate::lsn::Lsn;
use crate::sink::SinkError;
use crate::sink::parquet::ParquetSink;
use crate::sink::postgres::PostgresSink;
use crate::source::{Control, SourceError};
use crate::storage::{StorageError, object_store_for};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit};
use futures::TryStreamExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_reader::ParquetObjectReader;
use std::sync::Arc;
use weir_sdk::{Batch, Event, Op, Relation, Value};

/// Why a replay could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
}

/// What a replay did.
#[derive(Debug)]
pub struct Replayed {
    pub from: Lsn,
    pub to: CommitPos,
    pub transactions: usize,
    pub changes: usize,
}

/// One change read back from the changelog, with the transforms that made it.
struct Change {
    event: Event,
    table: usize,
    transforms: Option<Arc<str>>,
}

/// Applies the changelog after `from` (default: what the sink holds) to sink `index`.
pub async fn replay(
    config: &PipelineConfig,
    index: usize,
    from: Option<Lsn>,
) -> Result<Replayed, ReplayError> {
    let usage = |m: String| ReplayError::Usage(m);
    let Some(SinkConfig::Postgres(target)) = config.sinks.get(index) else {
        return Err(usage(format!(
            "sink {index} is not a postgres sink: replay applies the changelog to a projection (sinks count from 0 in file order)"
        )));
    };
    let Some(parquet) = config.sinks.iter().find_map(|s| match s {
        SinkConfig::Parquet(p) => Some(p),
        _ => None,
    }) else {
        return Err(usage(
            "the pipeline has no parquet sink: replay reads the pipeline's Parquet changelog"
                .into(),
        ));
    };
    let slot = &config.source.slot;
    let control = Control::connect(&config.source.url).await?;
    if control.slot_active(slot).await? {
        return Err(usage(format!(
            "the pipeline is running (slot `{slot}` is active): stop it, replay, then run it again"
        )));
    }
    // Opening it undoes a flush that did not reach its checkpoint.
    let changelog = ParquetSink::open(parquet.clone(), slot).await?;
    let Some(to) = changelog.durable() else {
        return Err(usage(format!(
            "the changelog at {} has no checkpoint yet: run the pipeline first",
            parquet.url
        )));
    };
    let mut sink = PostgresSink::open(target.clone(), slot, None).await?;
    let held = sink.durable();
    if held.is_some_and(|h| h > to) {
        return Err(usage(format!(
            "sink {index} holds changes up to {}, past the changelog's checkpoint {}: nothing to replay from it",
            held.map_or(Lsn::ZERO, |h| h.end_lsn),
            to.end_lsn
        )));
    }
    let from = from.unwrap_or(held.map_or(Lsn::ZERO, |h| h.commit_lsn));
    let info = control.preflight(&config.source).await?;
    let tables = control.resolve_tables(&config.source.tables).await?.tables;
    let mut relations = Vec::new();
    for table in &tables {
        relations
            .push(crate::source::snapshot::table_relation(&control.client, &info, table).await?);
    }
    let (changes, earliest) = read_changelog(&parquet.url, &tables, &relations, from, to).await?;
    if from > Lsn::ZERO && earliest.is_some_and(|e| e > from.0) {
        return Err(usage(format!(
            "the changelog starts at {}, after --from {from}: it does not reach back that far",
            Lsn(earliest.unwrap_or(0))
        )));
    }
    let transactions = apply(
        &mut sink,
        changes.as_slice(),
        &relations,
        from,
        to,
        config.batch.max_events,
    )
    .await?;
    Ok(Replayed {
        from,
        to,
        transactions,
        changes: changes.len(),
    })
}

/// Feeds the changes to the sink as batches of one open target transaction, then
/// commits it at the changelog's checkpoint.
async fn apply(
    sink: &mut PostgresSink,
    changes: &[Change],
    relations: &[Relation],
    from: Lsn,
    to: CommitPos,
    max_events: usize,
) -> Result<usize, ReplayError> {
    sink.replay_from(from);
    let mut transactions = 0;
    let mut last = None;
    for part in changes.chunks(max_events.max(1)) {
        let mut batch = Batch::default();
        let mut rel_of = vec![None; relations.len()];
        for change in part {
            let rel = *rel_of[change.table]
                .get_or_insert_with(|| batch.push_relation(relations[change.table].clone()));
            let mut event = change.event.clone();
            event.rel = rel;
            if last != Some(event.commit_lsn) {
                transactions += 1;
                last = Some(event.commit_lsn);
            }
            batch.events.push(event);
        }
        let source = SourceBatch {
            batch,
            position: Position {
                last_commit: None,
                in_tx: true,
                idle_wal_end: Lsn::ZERO,
            },
            bytes: 0,
            markers: Vec::new(),
            transforms: part.last().and_then(|c| c.transforms.clone()),
        };
        sink.write(&source).await?;
    }
    let end = SourceBatch {
        position: Position {
            last_commit: Some(to),
            in_tx: false,
            idle_wal_end: Lsn::ZERO,
        },
        ..SourceBatch::default()
    };
    sink.write(&end).await?;
    Ok(transactions)
}

/// Every change of `tables` after `from` up to `to`, in source order, and the earliest
/// commit the changelog holds.
async fn read_changelog(
    url: &str,
    tables: &[TableName],
    relations: &[Relation],
    from: Lsn,
    to: CommitPos,
) -> Result<(Vec<Change>, Option<u64>), ReplayError> {
    let (store, base) = object_store_for(url)?;
    let mut changes = Vec::new();
    let mut earliest: Option<u64> = None;
    for (t, table) in tables.iter().enumerate() {
        let dir = base
            .clone()
            .join(table.schema.as_str())
            .join(table.table.as_str());
        let files: Vec<_> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(StorageError::store("listing", &dir))?;
        for meta in files {
            if !meta.location.as_ref().ends_with(".parquet") {
                continue;
            }
            let path = meta.location.to_string();
            let read = |message: String| ReplayError::Read {
                path: path.clone(),
                message,
            };
            let reader = ParquetObjectReader::new(store.clone(), meta.location.clone())
                .with_file_size(meta.size);
            let builder = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .map_err(|e| read(e.to_string()))?;
            let transforms: Option<Arc<str>> = builder
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|k| k.key == "weir.transforms"))
                .and_then(|k| k.value.as_deref())
                .map(Arc::from);
            let mut stream = builder.build().map_err(|e| read(e.to_string()))?;
            while let Some(rows) = stream.try_next().await.map_err(|e| read(e.to_string()))? {
                for event in events(&rows, &relations[t]).map_err(read)? {
                    earliest = Some(earliest.map_or(event.commit_lsn, |e| e.min(event.commit_lsn)));
                    if event.commit_lsn > from.0 && event.commit_lsn <= to.commit_lsn.0 {
                        changes.push(Change {
                            event,
                            table: t,
                            transforms: transforms.clone(),
                        });
                    }
                }
            }
        }
    }
    changes.sort_by_key(|c| (c.event.commit_lsn, c.event.seq, c.table));
    Ok((changes, earliest))
}

/// The changes in a record batch of a changelog file, as events of `relation` (columns
/// matched by name; one the file does not have is null).
fn events(rows: &RecordBatch, relation: &Relation) -> Result<Vec<Event>, String> {
    let schema = rows.schema();
    let column = |name: &str| {
        schema
            .index_of(name)
            .map(|i| rows.column(i).clone())
            .map_err(|_| format!("no column {name}: not a weir changelog file"))
    };
    let (op, lsn, seq, xid, ts) = (
        column("_cdc_op")?,
        column("_cdc_commit_lsn")?,
        column("_cdc_seq")?,
        column("_cdc_xid")?,
        column("_cdc_commit_ts")?,
    );
    let unchanged = column("_cdc_unchanged").ok();
    let unfit = column("_cdc_unfit").ok();
    let sources: Vec<Option<Arc<dyn Array>>> = relation
        .columns
        .iter()
        .map(|c| {
            schema
                .index_of(&c.name)
                .ok()
                .map(|i| rows.column(i).clone())
        })
        .collect();
    let int = |a: &Arc<dyn Array>, r: usize| match value(a.as_ref(), r) {
        Value::Int(i) => i,
        _ => 0,
    };
    let mut out = Vec::with_capacity(rows.num_rows());
    for r in 0..rows.num_rows() {
        let code = op.as_string::<i32>().value(r);
        let op = match code {
            "r" => Op::Read,
            "c" => Op::Insert,
            "u" => Op::Update,
            "d" => Op::Delete,
            "t" => Op::Truncate,
            other => return Err(format!("unknown _cdc_op `{other}`")),
        };
        let mut values: Vec<Value> = sources
            .iter()
            .map(|a| a.as_ref().map_or(Value::Null, |a| value(a.as_ref(), r)))
            .collect();
        crate::plugin::values::flatten_row(relation, &mut values);
        if let Some(unfit) = unfit.as_ref().filter(|u| !u.is_null(r)) {
            // Values the column type could not hold are kept as their text.
            let text = unfit.as_string::<i32>().value(r);
            let kept: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text).map_err(|e| format!("_cdc_unfit: {e}"))?;
            for (name, v) in kept {
                if let (Some(i), Some(s)) = (relation.column_index(&name), v.as_str()) {
                    values[i] = Value::Text(s.to_owned());
                }
            }
        }
        let unchanged: Vec<u16> = match unchanged.as_ref().filter(|u| !u.is_null(r)) {
            Some(list) => {
                let names = list.as_list::<i32>().value(r);
                let names = names.as_string::<i32>();
                (0..names.len())
                    .filter_map(|i| relation.column_index(names.value(i)))
                    .map(|i| i as u16)
                    .collect()
            }
            None => Vec::new(),
        };
        let (before, after) = match op {
            Op::Delete => (Some(values), None),
            Op::Truncate => (None, None),
            _ => (None, Some(values)),
        };
        let commit_ts = match value(ts.as_ref(), r) {
            Value::Int(us) => us,
            _ => ts
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(r),
        };
        out.push(Event {
            op,
            rel: 0,
            commit_lsn: int(&lsn, r) as u64,
            seq: int(&seq, r) as u32,
            xid: int(&xid, r) as u32,
            commit_ts,
            before,
            after,
            unchanged,
        });
    }
    Ok(out)
}

/// A changelog value back in the form weir's events carry: PostgreSQL's text for what
/// is not an integer, a float, a bool or bytes.
pub(crate) fn value(array: &dyn Array, row: usize) -> Value {
    use arrow::datatypes as t;
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int16 => Value::Int(array.as_primitive::<t::Int16Type>().value(row).into()),
        DataType::Int32 => Value::Int(array.as_primitive::<t::Int32Type>().value(row).into()),
        DataType::Int64 => Value::Int(array.as_primitive::<t::Int64Type>().value(row)),
        // The float4 the source sent, as the shortest text that names it.
        DataType::Float32 => {
            let f = array.as_primitive::<t::Float32Type>().value(row);
            Value::Float(f.to_string().parse().unwrap_or(f64::from(f)))
        }
        DataType::Float64 => Value::Float(array.as_primitive::<t::Float64Type>().value(row)),
        DataType::Binary => Value::Bytes(array.as_binary::<i32>().value(row).to_vec()),
        DataType::Utf8 => Value::Text(array.as_string::<i32>().value(row).to_owned()),
        DataType::Date32 => {
            let days = array.as_primitive::<t::Date32Type>().value(row);
            let date = chrono::DateTime::from_timestamp(i64::from(days) * 86_400, 0)
                .unwrap_or_default()
                .date_naive();
            Value::Text(date.format("%Y-%m-%d").to_string())
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            let us = array.as_primitive::<t::Time64MicrosecondType>().value(row);
            let time = chrono::NaiveTime::from_num_seconds_from_midnight_opt(
                (us / 1_000_000) as u32,
                (us % 1_000_000) as u32 * 1000,
            )
            .unwrap_or_default();
            Value::Text(with_fraction(
                time.format("%H:%M:%S").to_string(),
                us % 1_000_000,
            ))
        }
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let us = array
                .as_primitive::<t::TimestampMicrosecondType>()
                .value(row);
            let at = chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
            let text = with_fraction(
                at.format("%Y-%m-%d %H:%M:%S").to_string(),
                us.rem_euclid(1_000_000),
            );
            Value::Text(match zone {
                Some(_) => format!("{text}+00"),
                None => text,
            })
        }
        DataType::FixedSizeBinary(16) => {
            let b = array.as_fixed_size_binary().value(row);
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Value::Text(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ))
        }
        DataType::Decimal128(_, scale) => {
            let v = array.as_primitive::<t::Decimal128Type>().value(row);
            Value::Text(decimal_text(v, *scale))
        }
        // Lists and structs (nested types) as values with their structure, which
        // `plugin::values::flatten_row` prints as PostgreSQL's text by the column's type.
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(row);
            Value::List((0..items.len()).map(|i| value(items.as_ref(), i)).collect())
        }
        DataType::Struct(fields) => {
            let columns = array.as_struct().columns();
            Value::Struct(
                fields
                    .iter()
                    .zip(columns)
                    .map(|(f, c)| (f.name().clone(), value(c.as_ref(), row)))
                    .collect(),
            )
        }
        _ => {
            Value::Text(arrow::util::display::array_value_to_string(array, row).unwrap_or_default())
        }
    }
}

/// `HH:MM:SS` with PostgreSQL's fractional seconds: only the digits that are not zero.
fn with_fraction(mut text: String, micros: i64) -> String {
    if micros != 0 {
        let fraction = format!("{micros:06}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text
}

/// A decimal's text with its scale's digits, as numeric prints it.
fn decimal_text(v: i128, scale: i8) -> String {
    let digits = v.unsigned_abs().to_string();
    let sign = if v < 0 { "-" } else { "" };
    if scale <= 0 {
        return format!("{sign}{digits}{}", "0".repeat((-scale) as usize));
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_times_read_back_as_postgresql_prints_them() {
        assert_eq!(decimal_text(150, 2), "1.50");
        assert_eq!(decimal_text(-5, 3), "-0.005");
        assert_eq!(decimal_text(12, 0), "12");
        assert_eq!(with_fraction("10:00:00".into(), 120_000), "10:00:00.12");
        assert_eq!(with_fraction("10:00:00".into(), 0), "10:00:00");
    }
}
