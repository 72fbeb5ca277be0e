//! Change events as Arrow rows of the changelog contract: the source columns, then
//! `_cdc_op`, `_cdc_commit_lsn`, `_cdc_seq`, `_cdc_xid`, `_cdc_commit_ts`,
//! `_cdc_unchanged` and `_cdc_unfit`. Shared by the Parquet, Iceberg and Delta sinks; and
//! mirror rows (the source columns, `_cdc_commit_lsn`, `_cdc_commit_ts`, `_cdc_unfit`),
//! shared by the Iceberg and Delta mirrors.

use super::columns::{ColumnBuilder, arrow_column_field};
use crate::lsn::Lsn;
use arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use std::sync::Arc;
use weir_sdk::{Column, Event, Op, Relation, Value};

/// The changelog columns after the source columns.
pub const CDC_COLUMNS: [&str; 7] = [
    "_cdc_op",
    "_cdc_commit_lsn",
    "_cdc_seq",
    "_cdc_xid",
    "_cdc_commit_ts",
    "_cdc_unchanged",
    "_cdc_unfit",
];

/// The changelog schema of a relation, arrays as text.
pub fn changelog_schema(relation: &Relation) -> SchemaRef {
    changelog_schema_in(relation, false)
}

/// The changelog schema of a relation; with `nested`, arrays as lists.
pub fn changelog_schema_in(relation: &Relation, nested: bool) -> SchemaRef {
    changelog_schema_by(relation, &|_| nested)
}

/// The fields of a relation's columns, each column's structure kept where `nested` says
/// so (its text otherwise).
pub fn source_fields(relation: &Relation, nested: &dyn Fn(&Column) -> bool) -> Vec<Field> {
    let user = crate::source::types::registered();
    relation
        .columns
        .iter()
        .map(|c| arrow_column_field(c, user.dims(relation.id, &c.name), nested(c), &user))
        .collect()
}

/// The changelog schema of a relation, each column's structure kept where `nested`
/// says so (its text otherwise).
pub fn changelog_schema_by(relation: &Relation, nested: &dyn Fn(&Column) -> bool) -> SchemaRef {
    let mut fields = source_fields(relation, nested);
    fields.push(Field::new("_cdc_op", DataType::Utf8, false));
    fields.push(Field::new("_cdc_commit_lsn", DataType::Int64, false));
    fields.push(Field::new("_cdc_seq", DataType::Int64, false));
    fields.push(Field::new("_cdc_xid", DataType::Int64, false));
    fields.push(Field::new(
        "_cdc_commit_ts",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    ));
    fields.push(Field::new(
        "_cdc_unchanged",
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        true,
    ));
    fields.push(
        Field::new("_cdc_unfit", DataType::Utf8, true)
            .with_extension_type(arrow_schema::extension::Json::default()),
    );
    Arc::new(Schema::new(fields))
}

/// Appends a row's values to its columns' builders; the values a column cannot hold are
/// null there, and come back as `_cdc_unfit`'s JSON (column to PostgreSQL's text), each
/// with a warning naming table, column and LSN.
pub fn append_row(
    columns: &mut [ColumnBuilder],
    values: &[Value],
    relation: &Relation,
    table: &str,
    event: &Event,
) -> Option<String> {
    let mut unfit = serde_json::Map::new();
    for (i, builder) in columns.iter_mut().enumerate() {
        if let Err(e) = builder.append(values.get(i).unwrap_or(&Value::Null)) {
            let column = &relation.columns[i].name;
            tracing::warn!(
                table,
                %column,
                lsn = %Lsn(event.commit_lsn),
                error = %e,
                "A value its column type cannot hold: null in the column, kept as text in _cdc_unfit."
            );
            unfit.insert(column.clone(), serde_json::Value::String(e.value));
        }
    }
    (!unfit.is_empty()).then(|| serde_json::Value::Object(unfit).to_string())
}

/// Builders for one relation's changelog rows.
pub struct ChangeRows {
    schema: SchemaRef,
    relation: String,
    columns: Vec<ColumnBuilder>,
    op: StringBuilder,
    commit_lsn: Int64Builder,
    seq: Int64Builder,
    xid: Int64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    unchanged: ListBuilder<StringBuilder>,
    unfit: StringBuilder,
    buffered: usize,
}

impl ChangeRows {
    /// Rows of `relation`, arrays as text.
    pub fn new(relation: &Relation) -> ChangeRows {
        ChangeRows::in_form(relation, false)
    }

    /// Rows of `relation`; with `nested`, arrays as lists.
    pub fn in_form(relation: &Relation, nested: bool) -> ChangeRows {
        ChangeRows::by_form(relation, &|_| nested)
    }

    /// Rows of `relation`, each column's structure kept where `nested` says so.
    pub fn by_form(relation: &Relation, nested: &dyn Fn(&Column) -> bool) -> ChangeRows {
        ChangeRows::with_schema(relation, changelog_schema_by(relation, nested))
    }

    /// Rows of `relation` in `schema`, a changelog schema of it (its columns' types
    /// changed where an output lacks a type).
    pub fn with_schema(relation: &Relation, schema: SchemaRef) -> ChangeRows {
        let columns = schema.fields()[..relation.columns.len()]
            .iter()
            .map(|f| ColumnBuilder::for_field(f))
            .collect();
        ChangeRows {
            relation: relation.qualified_name(),
            schema,
            columns,
            op: StringBuilder::new(),
            commit_lsn: Int64Builder::new(),
            seq: Int64Builder::new(),
            xid: Int64Builder::new(),
            commit_ts: TimestampMicrosecondBuilder::new(),
            unchanged: ListBuilder::new(StringBuilder::new()),
            unfit: StringBuilder::new(),
            buffered: 0,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows appended since the last [`ChangeRows::finish`].
    pub fn len(&self) -> usize {
        self.buffered
    }

    pub fn is_empty(&self) -> bool {
        self.buffered == 0
    }

    /// Appends one change of `relation` (the event's relation).
    pub fn append(&mut self, event: &Event, relation: &Relation) {
        let row = match event.op {
            Op::Read | Op::Insert | Op::Update => event.after.as_ref(),
            Op::Delete => event.before.as_ref(),
            Op::Truncate => None,
        };
        let unfit = match row {
            Some(values) => append_row(&mut self.columns, values, relation, &self.relation, event),
            None => {
                self.columns.iter_mut().for_each(ColumnBuilder::append_null);
                None
            }
        };
        self.unfit.append_option(unfit);
        if event.unchanged.is_empty() || !matches!(event.op, Op::Update) {
            self.unchanged.append_null();
        } else {
            for &i in &event.unchanged {
                if let Some(c) = relation.columns.get(i as usize) {
                    self.unchanged.values().append_value(&c.name);
                }
            }
            self.unchanged.append(true);
        }
        self.op.append_value(event.op.code());
        self.commit_lsn.append_value(event.commit_lsn as i64);
        self.seq.append_value(event.seq as i64);
        self.xid.append_value(event.xid as i64);
        self.commit_ts.append_value(event.commit_ts);
        self.buffered += 1;
    }

    /// The rows appended so far, as one record batch; the builders start empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut arrays: Vec<ArrayRef> =
            self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.commit_lsn.finish()));
        arrays.push(Arc::new(self.seq.finish()));
        arrays.push(Arc::new(self.xid.finish()));
        arrays.push(Arc::new(self.commit_ts.finish().with_timezone("UTC")));
        arrays.push(Arc::new(self.unchanged.finish()));
        arrays.push(Arc::new(self.unfit.finish()));
        self.buffered = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

/// The Arrow schema of a mirror table's rows: the source columns (each with its
/// structure where `nested` says so, as text otherwise), `_cdc_commit_lsn`,
/// `_cdc_commit_ts` and `_cdc_unfit` (the values their column cannot hold, as text).
pub fn mirror_arrow_schema(relation: &Relation, nested: &dyn Fn(&Column) -> bool) -> SchemaRef {
    let mut fields = source_fields(relation, nested);
    fields.push(Field::new("_cdc_commit_lsn", DataType::Int64, false));
    fields.push(Field::new(
        "_cdc_commit_ts",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    ));
    fields.push(
        Field::new(UNFIT, DataType::Utf8, true)
            .with_extension_type(arrow_schema::extension::Json::default()),
    );
    Arc::new(Schema::new(fields))
}

/// A mirror table's column of values their column's type cannot hold (a JSON object of
/// column to PostgreSQL's text), as in a changelog.
pub const UNFIT: &str = "_cdc_unfit";

/// Rows of one relation version in the mirror's Arrow layout.
pub struct MirrorRows {
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    lsn: Int64Builder,
    ts: TimestampMicrosecondBuilder,
    unfit: StringBuilder,
    pub len: usize,
}

impl MirrorRows {
    pub fn new(relation: &Relation, nested: &dyn Fn(&Column) -> bool) -> MirrorRows {
        MirrorRows::with_schema(relation, mirror_arrow_schema(relation, nested))
    }

    /// Rows of `relation` in `schema`, a mirror schema of it (its columns' types changed
    /// where an output lacks a type).
    pub fn with_schema(relation: &Relation, schema: SchemaRef) -> MirrorRows {
        let columns = schema.fields()[..relation.columns.len()]
            .iter()
            .map(|f| ColumnBuilder::for_field(f))
            .collect();
        MirrorRows {
            schema,
            columns,
            lsn: Int64Builder::new(),
            ts: TimestampMicrosecondBuilder::new(),
            unfit: StringBuilder::new(),
            len: 0,
        }
    }

    pub fn append(&mut self, values: &[Value], event: &Event, relation: &Relation, table: &str) {
        let unfit = append_row(&mut self.columns, values, relation, table, event);
        self.unfit.append_option(unfit);
        self.lsn.append_value(event.commit_lsn as i64);
        self.ts.append_value(event.commit_ts);
        self.len += 1;
    }

    pub fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut arrays: Vec<ArrayRef> =
            self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        arrays.push(Arc::new(self.lsn.finish()));
        arrays.push(Arc::new(self.ts.finish().with_timezone("UTC")));
        arrays.push(Arc::new(self.unfit.finish()));
        self.len = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

/// A mirror row read back from a data file (`names` its columns, `read` its values) as
/// the relation's source values: by name (columns added later come after the _cdc_
/// columns in a file), flattened to PostgreSQL's text, with the values a column could
/// not hold taken from `_cdc_unfit`.
pub fn source_row(names: &[String], read: &[Value], relation: &Relation) -> Vec<Value> {
    let by_name = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .map_or(Value::Null, |i| read[i].clone())
    };
    let mut row: Vec<Value> = relation.columns.iter().map(|c| by_name(&c.name)).collect();
    crate::plugin::values::flatten_row(relation, &mut row);
    if let Value::Text(unfit) = by_name(UNFIT)
        && let Ok(kept) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&unfit)
    {
        for (name, text) in kept {
            if let (Some(i), Some(text)) = (relation.column_index(&name), text.as_str()) {
                row[i] = Value::Text(text.to_owned());
            }
        }
    }
    row
}

/// Row `row` of `batch` as source values (see [`source_row`]).
pub fn batch_row(batch: &RecordBatch, row: usize, relation: &Relation) -> Vec<Value> {
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let read: Vec<Value> = batch
        .columns()
        .iter()
        .map(|c| crate::replay::value(c.as_ref(), row))
        .collect();
    source_row(&names, &read, relation)
}
