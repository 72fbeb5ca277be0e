//! The Iceberg changelog schema of a relation, and changelog rows in it.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    FixedSizeBinaryArray, Int32Array, Int64Array, ListArray, RecordBatch, Scalar, StringArray,
    StructArray, Time64MicrosecondArray, TimestampMicrosecondArray, new_null_array,
};
use arrow::compute::kernels::{cast, zip};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use iceberg::spec::{ListType, NestedField, PrimitiveType, Schema, StructType, Type};
use std::sync::Arc;
use weir_sdk::{Column, Relation};

/// Changelog rows that do not fit a table's schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("column `{column}` ({from}) does not fit the table's type {to}: {source}")]
    DoesNotFit {
        column: String,
        from: DataType,
        to: DataType,
        source: ArrowError,
    },
    #[error(
        "column `{0}` is required in the table (an identifier field), but a change has no value for it: was the replica identity changed? Make it optional in the catalog, or write to a new table"
    )]
    KeyMissing(String),
    #[error("column `{0}` is required in the table but null")]
    RequiredNull(String),
    #[error("no zero value for a key column of type {0}")]
    NoZeroValue(DataType),
    #[error("{0}")]
    Arrow(#[from] ArrowError),
}

/// Which columns of a relation keep their structure (lists, structs) in a table with
/// `schema` (none for a new table): a column the table has keeps the table's form (text
/// stays text), a new one takes `default` (`[sink] nested_types`).
pub fn nested_rule(schema: Option<&Schema>, default: bool) -> impl Fn(&Column) -> bool + '_ {
    // A column whose text form is a string and whose table type is not was written in
    // the nested form (a list, a struct, money's decimal).
    move |c: &Column| match schema.and_then(|s| s.field_by_name(&c.name)) {
        Some(f) => !matches!(*f.field_type, Type::Primitive(PrimitiveType::String)),
        None => default,
    }
}

/// The Iceberg type of a changelog column's Arrow type; nested fields get id 0 (see
/// [`with_ids`]).
pub fn iceberg_type(data_type: &DataType) -> Type {
    let p = match data_type {
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Int16 | DataType::Int32 => PrimitiveType::Int,
        DataType::Int64 => PrimitiveType::Long,
        DataType::Float32 => PrimitiveType::Float,
        DataType::Float64 => PrimitiveType::Double,
        DataType::Binary => PrimitiveType::Binary,
        DataType::Date32 => PrimitiveType::Date,
        DataType::Time64(_) => PrimitiveType::Time,
        DataType::Timestamp(_, None) => PrimitiveType::Timestamp,
        DataType::Timestamp(_, Some(_)) => PrimitiveType::Timestamptz,
        DataType::FixedSizeBinary(16) => PrimitiveType::Uuid,
        DataType::Decimal128(p, s) => PrimitiveType::Decimal {
            precision: *p as u32,
            scale: *s as u32,
        },
        DataType::List(element) => {
            return Type::List(ListType::new(
                NestedField::list_element(0, iceberg_type(element.data_type()), false).into(),
            ));
        }
        DataType::Struct(fields) => {
            return Type::Struct(StructType::new(
                fields
                    .iter()
                    .map(|f| NestedField::optional(0, f.name(), iceberg_type(f.data_type())).into())
                    .collect(),
            ));
        }
        _ => PrimitiveType::String,
    };
    Type::Primitive(p)
}

/// `ty` with its nested fields numbered from `next_id` on (the catalog, or a schema
/// update, assigns the table's own).
fn with_ids(ty: Type, next_id: &mut i32) -> Type {
    match ty {
        Type::List(list) => {
            *next_id += 1;
            let id = *next_id;
            let element = with_ids((*list.element_field.field_type).clone(), next_id);
            Type::List(ListType::new(
                NestedField::list_element(id, element, list.element_field.required).into(),
            ))
        }
        Type::Struct(fields) => Type::Struct(StructType::new(
            fields
                .fields()
                .iter()
                .map(|f| {
                    *next_id += 1;
                    let id = *next_id;
                    let ty = with_ids((*f.field_type).clone(), next_id);
                    NestedField::optional(id, &f.name, ty).into()
                })
                .collect(),
        )),
        other => other,
    }
}

/// The changelog schema of a new table: the source columns (the replica identity
/// required, as identifier fields), then the `_cdc_` columns. Ids are provisional: the
/// catalog assigns the table's own.
pub fn changelog_schema(relation: &Relation, nested: bool) -> iceberg::Result<Schema> {
    table_schema(
        &super::super::rows::changelog_schema_in(relation, nested),
        relation,
    )
}

/// The Iceberg schema of a new table whose rows have the Arrow schema `arrow`, the
/// relation's columns first (the replica identity required, as identifier fields).
pub fn table_schema(
    arrow: &arrow::datatypes::Schema,
    relation: &Relation,
) -> iceberg::Result<Schema> {
    let mut next_id = 0;
    let mut fields = Vec::new();
    let mut identifier = Vec::new();
    for (i, f) in arrow.fields().iter().enumerate() {
        next_id += 1;
        let id = next_id;
        let ty = with_ids(iceberg_type(f.data_type()), &mut next_id);
        let key = relation.columns.get(i).is_some_and(|c| c.key)
            && !matches!(
                ty,
                Type::Primitive(PrimitiveType::Float | PrimitiveType::Double)
            );
        let field = match key || !f.is_nullable() {
            true => NestedField::required(id, f.name(), ty),
            false => NestedField::optional(id, f.name(), ty),
        };
        if key {
            identifier.push(id);
        }
        fields.push(field.into());
    }
    Schema::builder()
        .with_fields(fields)
        .with_identifier_field_ids(identifier)
        .build()
}

/// Source columns of `relation` that `schema` lacks, with their Iceberg types (their
/// structure kept when `nested`).
pub fn missing_columns(relation: &Relation, schema: &Schema, nested: bool) -> Vec<(String, Type)> {
    let arrow = super::super::rows::changelog_schema_in(relation, nested);
    relation
        .columns
        .iter()
        .zip(arrow.fields().iter())
        .filter(|(c, _)| schema.field_by_name(&c.name).is_none())
        .map(|(c, f)| (c.name.clone(), iceberg_type(f.data_type())))
        .collect()
}

/// Source columns of `relation` whose Iceberg type differs from the table's, with the
/// type the relation now has.
pub fn changed_columns(relation: &Relation, schema: &Schema) -> Vec<(String, Type)> {
    let arrow =
        super::super::rows::changelog_schema_by(relation, &nested_rule(Some(schema), false));
    relation
        .columns
        .iter()
        .zip(arrow.fields().iter())
        .filter_map(|(c, f)| {
            let now = iceberg_type(f.data_type());
            let field = schema.field_by_name(&c.name)?;
            (*field.field_type != now).then(|| (c.name.clone(), now))
        })
        .collect()
}

/// Whether Iceberg allows a column of type `from` to become `to` in place.
pub fn promotable(from: &Type, to: &Type) -> bool {
    use PrimitiveType as P;
    match (from, to) {
        (Type::Primitive(P::Int), Type::Primitive(P::Long))
        | (Type::Primitive(P::Float), Type::Primitive(P::Double)) => true,
        (
            Type::Primitive(P::Decimal {
                precision: p1,
                scale: s1,
            }),
            Type::Primitive(P::Decimal {
                precision: p2,
                scale: s2,
            }),
        ) => s1 == s2 && p2 > p1,
        _ => false,
    }
}

/// Rebuilds changelog rows in a table's Arrow schema (`target`, with field ids): columns
/// matched by name and cast to the table's types, columns the rows lack (dropped in
/// PostgreSQL) null, and the required key columns of truncate rows (which carry no key)
/// the type's zero value. A value that does not fit the table's type, or a missing key
/// in any other row, is an error, never silently changed.
pub fn conform(rows: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, SchemaError> {
    let n = rows.num_rows();
    let truncates = rows
        .column_by_name("_cdc_op")
        .and_then(|a| a.as_any().downcast_ref::<StringArray>())
        .map(|ops| arrow::array::BooleanArray::from_iter(ops.iter().map(|o| Some(o == Some("t")))));
    let mut arrays = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let array = match rows.column_by_name(field.name()) {
            Some(a) if a.data_type() == field.data_type() => a.clone(),
            Some(a) => {
                conform_column(a, field.data_type()).map_err(|source| SchemaError::DoesNotFit {
                    column: field.name().clone(),
                    from: a.data_type().clone(),
                    to: field.data_type().clone(),
                    source,
                })?
            }
            None => new_null_array(field.data_type(), n),
        };
        let array = match (!field.is_nullable() && array.null_count() > 0, &truncates) {
            (true, Some(truncates)) => {
                let keyless = arrow::compute::and(
                    &arrow::compute::is_null(&array)?,
                    &arrow::compute::not(truncates)?,
                )?;
                if keyless.true_count() > 0 {
                    return Err(SchemaError::KeyMissing(field.name().clone()));
                }
                fill_nulls(&array)?
            }
            (true, None) => return Err(SchemaError::RequiredNull(field.name().clone())),
            (false, _) => array,
        };
        arrays.push(array);
    }
    Ok(RecordBatch::try_new(target.clone(), arrays)?)
}

/// A column cast to the table's type; structs field by field by name (a field the
/// value lacks, dropped from its composite type, is null), lists element by element.
fn conform_column(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, ArrowError> {
    match (array.data_type(), to) {
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let from = array.as_struct();
            let children = fields
                .iter()
                .map(|f| match from.column_by_name(f.name()) {
                    Some(c) => conform_column(c, f.data_type()),
                    None => Ok(new_null_array(f.data_type(), from.len())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(StructArray::try_new(
                fields.clone(),
                children,
                from.nulls().cloned(),
            )?))
        }
        (DataType::List(_), DataType::List(element)) => {
            let from = array.as_list::<i32>();
            let values = conform_column(from.values(), element.data_type())?;
            Ok(Arc::new(ListArray::try_new(
                element.clone(),
                from.offsets().clone(),
                values,
                from.nulls().cloned(),
            )?))
        }
        _ => {
            let options = cast::CastOptions {
                safe: false,
                ..Default::default()
            };
            cast::cast_with_options(array, to, &options)
        }
    }
}

/// Fields of the relation's composite values (at any depth, inside lists too) that the
/// table's struct columns lack: (parent path, name, type), for a schema update.
pub fn missing_nested_fields(
    relation: &Relation,
    schema: &Schema,
    nested: bool,
) -> Vec<(String, String, Type)> {
    let arrow =
        super::super::rows::changelog_schema_by(relation, &nested_rule(Some(schema), nested));
    let mut out = Vec::new();
    for f in arrow.fields().iter().take(relation.columns.len()) {
        if let Some(have) = schema.field_by_name(f.name()) {
            let want = iceberg_type(f.data_type());
            missing_in(f.name(), &have.field_type, &want, &mut out);
        }
    }
    out
}

fn missing_in(path: &str, have: &Type, want: &Type, out: &mut Vec<(String, String, Type)>) {
    match (have, want) {
        (Type::Struct(have), Type::Struct(want)) => {
            for w in want.fields() {
                match have.field_by_name(&w.name) {
                    Some(h) => missing_in(
                        &format!("{path}.{}", w.name),
                        &h.field_type,
                        &w.field_type,
                        out,
                    ),
                    None => out.push((path.to_owned(), w.name.clone(), (*w.field_type).clone())),
                }
            }
        }
        // A list's parent path stands for its element.
        (Type::List(have), Type::List(want)) => missing_in(
            path,
            &have.element_field.field_type,
            &want.element_field.field_type,
            out,
        ),
        _ => {}
    }
}

fn fill_nulls(array: &ArrayRef) -> Result<ArrayRef, SchemaError> {
    let zero: ArrayRef = match array.data_type() {
        DataType::Boolean => Arc::new(BooleanArray::from(vec![false])),
        DataType::Int32 => Arc::new(Int32Array::from(vec![0])),
        DataType::Int64 => Arc::new(Int64Array::from(vec![0])),
        DataType::Utf8 => Arc::new(StringArray::from(vec![""])),
        DataType::Binary => Arc::new(BinaryArray::from(vec![&b""[..]])),
        DataType::Date32 => Arc::new(Date32Array::from(vec![0])),
        DataType::Time64(_) => Arc::new(Time64MicrosecondArray::from(vec![0])),
        DataType::Timestamp(_, tz) => {
            Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone_opt(tz.clone()))
        }
        DataType::FixedSizeBinary(16) => Arc::new(FixedSizeBinaryArray::try_from_iter(
            std::iter::once([0u8; 16]),
        )?),
        DataType::Decimal128(p, s) => {
            Arc::new(Decimal128Array::from(vec![0]).with_precision_and_scale(*p, *s)?)
        }
        other => return Err(SchemaError::NoZeroValue(other.clone())),
    };
    let nulls = arrow::compute::is_null(array)?;
    Ok(zip::zip(&nulls, &Scalar::new(zero), array)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Column;

    fn relation() -> Relation {
        Relation {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            version: 1,
            columns: vec![
                Column::new("id", 20, "int8", true),
                Column::new("n", 21, "int2", false),
                Column::new("u", 2950, "uuid", false),
            ],
        }
    }

    #[test]
    fn keys_are_required_identifier_fields_and_types_map() {
        let schema = changelog_schema(&relation(), true).unwrap();
        let id = schema.field_by_name("id").unwrap();
        assert!(id.required);
        assert_eq!(
            schema.identifier_field_ids().collect::<Vec<_>>(),
            vec![id.id]
        );
        assert_eq!(
            *schema.field_by_name("n").unwrap().field_type,
            Type::Primitive(PrimitiveType::Int)
        );
        assert_eq!(
            *schema.field_by_name("u").unwrap().field_type,
            Type::Primitive(PrimitiveType::Uuid)
        );
        assert_eq!(
            *schema.field_by_name("_cdc_commit_ts").unwrap().field_type,
            Type::Primitive(PrimitiveType::Timestamptz)
        );
        assert!(matches!(
            *schema.field_by_name("_cdc_unchanged").unwrap().field_type,
            Type::List(_)
        ));
    }

    #[test]
    fn only_the_promotions_iceberg_allows_are_widenings() {
        let p = |t| Type::Primitive(t);
        let dec = |precision, scale| p(PrimitiveType::Decimal { precision, scale });
        assert!(promotable(&p(PrimitiveType::Int), &p(PrimitiveType::Long)));
        assert!(promotable(
            &p(PrimitiveType::Float),
            &p(PrimitiveType::Double)
        ));
        assert!(promotable(&dec(10, 2), &dec(12, 2)));
        assert!(!promotable(&dec(10, 2), &dec(12, 3)));
        assert!(!promotable(&p(PrimitiveType::Long), &p(PrimitiveType::Int)));
        assert!(!promotable(
            &p(PrimitiveType::Int),
            &p(PrimitiveType::String)
        ));
    }

    #[test]
    fn rows_conform_to_the_table_and_a_value_that_does_not_fit_is_an_error() {
        let mut rel = relation();
        let table = changelog_schema(&rel, true).unwrap();
        let target = Arc::new(iceberg::arrow::schema_to_arrow_schema(&table).unwrap());
        let mut rows = crate::sink::rows::ChangeRows::new(&rel);
        let event = |op, after: Option<Vec<weir_sdk::Value>>| weir_sdk::Event {
            op,
            rel: 0,
            commit_lsn: 1,
            seq: 0,
            xid: 1,
            commit_ts: 0,
            before: None,
            after,
            unchanged: vec![],
        };
        use weir_sdk::{Op, Value};
        rows.append(
            &event(
                Op::Insert,
                Some(vec![Value::Int(7), Value::Int(3), Value::Null]),
            ),
            &rel,
        );
        rows.append(&event(Op::Truncate, None), &rel);
        let batch = conform(&rows.finish().unwrap(), &target).unwrap();
        let ids = batch.column_by_name("id").unwrap();
        assert_eq!(
            ids.null_count(),
            0,
            "the truncate row's key is zero, not null"
        );
        rows.append(
            &event(
                Op::Insert,
                Some(vec![Value::Null, Value::Int(3), Value::Null]),
            ),
            &rel,
        );
        let err = conform(&rows.finish().unwrap(), &target)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`id` is required"),
            "a missing key elsewhere is an error: {err}"
        );
        assert_eq!(
            batch.column_by_name("n").unwrap().data_type(),
            &DataType::Int32
        );

        // The column became int8 in PostgreSQL; the table still says int.
        rel.columns[1] = Column::new("n", 20, "int8", false);
        let mut rows = crate::sink::rows::ChangeRows::new(&rel);
        rows.append(
            &event(
                Op::Insert,
                Some(vec![Value::Int(1), Value::Int(5_000_000_000), Value::Null]),
            ),
            &rel,
        );
        let err = conform(&rows.finish().unwrap(), &target)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`n`"), "{err}");
    }
}
