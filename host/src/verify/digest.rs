//! Row digests for `weir verify`: both sides reduced to the same canonical form, a key
//! and a 128-bit hash per column, so that a table is compared in bounded memory.
//!
//! A value's canonical bytes are Arrow's row format of the column type the changelog
//! gives it (the type mapping of the README): both sides are built as changelog columns
//! (the source by the sinks' own conversion) or cast to them (what a reader of the
//! output gets), so equal values have equal bytes whatever wrote them.

use crate::sink::columns::{read_from_text, text_to_nested};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use twox_hash::XxHash3_128;

/// The columns compared for one table: names, changelog types, which form the key.
pub struct Layout {
    pub names: Vec<String>,
    types: Vec<DataType>,
    /// The changelog fields (their metadata says how to read a text form).
    fields: Vec<Field>,
    /// Indexes into `names` of the key columns, in key order.
    key: Vec<usize>,
    key_rows: RowConverter,
    value_rows: Vec<RowConverter>,
    /// The hash of a null in each column (an unchanged TOAST value never written).
    null_hashes: Vec<u128>,
}

/// One table's rows as digests: the key's canonical bytes and one hash per column.
pub struct Hashed {
    pub keys: Vec<Vec<u8>>,
    /// `names.len()` hashes per row, row after row.
    pub columns: Vec<u128>,
}

impl Layout {
    /// A layout of `fields` (the changelog's, by column name); `key` names the key
    /// columns.
    pub fn new(fields: Vec<Field>, key: &[String]) -> Result<Layout, ArrowError> {
        let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
        let types: Vec<DataType> = fields.iter().map(|f| f.data_type().clone()).collect();
        let key: Vec<usize> = key
            .iter()
            .filter_map(|k| names.iter().position(|n| n == k))
            .collect();
        let key_rows = RowConverter::new(
            key.iter()
                .map(|&i| SortField::new(types[i].clone()))
                .collect(),
        )?;
        let value_rows = types
            .iter()
            .map(|t| RowConverter::new(vec![SortField::new(t.clone())]))
            .collect::<Result<Vec<_>, _>>()?;
        let mut layout = Layout {
            names,
            types,
            fields,
            key,
            key_rows,
            value_rows,
            null_hashes: Vec::new(),
        };
        let nulls: Vec<ArrayRef> = layout.types.iter().map(|t| new_null_array(t, 1)).collect();
        layout.null_hashes = layout.hash(&nulls)?.columns;
        Ok(layout)
    }

    pub fn width(&self) -> usize {
        self.names.len()
    }

    pub fn null_hash(&self, column: usize) -> u128 {
        self.null_hashes[column]
    }

    /// The layout's columns of `batch`, by name, cast to the layout's types; a column
    /// the batch does not have (a file written before it was added) is null.
    pub fn columns(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>, ArrowError> {
        let schema = batch.schema();
        self.fields
            .iter()
            .map(|field| {
                let t = field.data_type();
                match schema.index_of(field.name()) {
                    Ok(i) if batch.column(i).data_type() == t => Ok(batch.column(i).clone()),
                    Ok(i) => match batch.column(i).as_string_opt::<i32>() {
                        // Arrays, ranges, composites, money an output holds as
                        // PostgreSQL's text.
                        Some(text) if read_from_text(field) => Ok(text_to_nested(text, field)),
                        _ => cast(batch.column(i), t),
                    },
                    Err(_) => Ok(new_null_array(t, batch.num_rows())),
                }
            })
            .collect()
    }

    /// Keys and column hashes of every row of `columns` (as [`Layout::columns`] gives).
    pub fn hash(&self, columns: &[ArrayRef]) -> Result<Hashed, ArrowError> {
        let rows = columns.first().map_or(0, |c| c.len());
        let key_columns: Vec<ArrayRef> = self.key.iter().map(|&i| columns[i].clone()).collect();
        let keys = match key_columns.is_empty() {
            true => vec![Vec::new(); rows],
            false => {
                let converted = self.key_rows.convert_columns(&key_columns)?;
                converted.iter().map(|r| r.as_ref().to_vec()).collect()
            }
        };
        let mut hashes = vec![0u128; rows * columns.len()];
        for (c, column) in columns.iter().enumerate() {
            let converted = self.value_rows[c].convert_columns(std::slice::from_ref(column))?;
            for (r, row) in converted.iter().enumerate() {
                hashes[r * columns.len() + c] = XxHash3_128::oneshot(row.as_ref());
            }
        }
        Ok(Hashed {
            keys,
            columns: hashes,
        })
    }

    /// A key as people read it: `id=7` (`a=1, b=x` for a key of several columns).
    pub fn key_text(&self, key: &[u8]) -> String {
        let parser = self.key_rows.parser();
        let arrays = match self.key_rows.convert_rows([parser.parse(key)]) {
            Ok(a) => a,
            Err(_) => return format!("<key {}>", hex(key)),
        };
        let options = FormatOptions::default().with_null("NULL");
        let parts: Vec<String> = self
            .key
            .iter()
            .zip(&arrays)
            .map(|(&i, array)| {
                let value = ArrayFormatter::try_new(array.as_ref(), &options)
                    .map(|f| f.value(0).to_string())
                    .unwrap_or_default();
                format!("{}={value}", self.names[i])
            })
            .collect();
        parts.join(", ")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of a whole row from its column hashes.
pub fn row_hash(columns: &[u128]) -> u128 {
    let mut bytes = Vec::with_capacity(columns.len() * 16);
    for c in columns {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    XxHash3_128::oneshot(&bytes)
}

/// What a (key, row) pair adds to its bucket's digest. Digests add up, so a bucket's
/// digest does not depend on the order its rows were read in, and a doubled row shows.
pub fn entry_digest(key: &[u8], row: u128) -> u128 {
    let mut bytes = Vec::with_capacity(key.len() + 16);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&row.to_le_bytes());
    XxHash3_128::oneshot(&bytes)
}

/// The bucket of a key, and whether the key is in a sample of `percent` of all keys.
pub fn bucket(key: &[u8], buckets: usize, percent: f64) -> Option<usize> {
    let h = XxHash3_128::oneshot_with_seed(0x7765_6972, key);
    let sampled = ((h >> 64) as u64 % 10_000) as f64 / 100.0 < percent;
    sampled.then_some((h as u64 % buckets as u64) as usize)
}

/// The layout the tests use: `id bigint` (the key), `v text`.
#[cfg(test)]
pub(super) fn test_layout() -> Layout {
    Layout::new(
        vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
        ],
        &["id".into()],
    )
    .expect("a layout of two plain columns")
}

#[cfg(test)]
mod tests {
    use super::test_layout as layout;
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn equal_values_hash_equal_whatever_type_a_reader_gave_them() {
        let l = layout();
        let a = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("v", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("x"), None])),
            ],
        )
        .unwrap();
        // Another reader: the key as int32, the columns in another order.
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("v", DataType::Utf8, true),
                Field::new("id", DataType::Int32, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![Some("x"), None])),
                Arc::new(Int32Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let ha = l.hash(&l.columns(&a).unwrap()).unwrap();
        let hb = l.hash(&l.columns(&b).unwrap()).unwrap();
        assert_eq!(ha.keys, hb.keys);
        assert_eq!(ha.columns, hb.columns);
        assert_eq!(ha.columns[3], l.null_hash(1), "a null is the null hash");
        assert_ne!(ha.columns[1], ha.columns[3]);
        assert_eq!(l.key_text(&ha.keys[1]), "id=2");
    }

    #[test]
    fn a_missing_column_is_null() {
        let l = layout();
        let only_id = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![5]))],
        )
        .unwrap();
        let h = l.hash(&l.columns(&only_id).unwrap()).unwrap();
        assert_eq!(h.columns[1], l.null_hash(1));
    }

    #[test]
    fn a_sample_is_a_stable_share_of_the_keys() {
        let keys: Vec<Vec<u8>> = (0u32..10_000).map(|i| i.to_le_bytes().to_vec()).collect();
        let taken = keys
            .iter()
            .filter(|k| bucket(k, 16, 10.0).is_some())
            .count();
        assert!((800..1200).contains(&taken), "{taken} of 10000 at 10%");
        assert!(keys.iter().all(|k| bucket(k, 16, 100.0).is_some()));
        assert_eq!(bucket(&keys[7], 16, 100.0), bucket(&keys[7], 16, 100.0));
    }
}
