//! A mirror table's keys as bytes, shared by the Iceberg and Delta mirrors.

use super::SinkError;
use super::columns::ColumnBuilder;
use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use weir_sdk::{Event, Op};

/// Keys as bytes: Arrow's row format of the key columns in the mirror's types, the same
/// whether built from events or read back from data files.
pub struct KeyCodec {
    types: Vec<DataType>,
    rows: RowConverter,
}

impl KeyCodec {
    pub fn new(types: Vec<DataType>) -> Result<KeyCodec, arrow::error::ArrowError> {
        let rows = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
        Ok(KeyCodec { types, rows })
    }

    pub fn keys(&self, columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>, arrow::error::ArrowError> {
        let cast: Vec<ArrayRef> = columns
            .iter()
            .zip(&self.types)
            .map(|(c, t)| match c.data_type() == t {
                true => Ok(c.clone()),
                false => arrow::compute::cast(c, t),
            })
            .collect::<Result<_, _>>()?;
        Ok(self
            .rows
            .convert_columns(&cast)?
            .iter()
            .map(|r| r.as_ref().to_vec())
            .collect())
    }

    /// The keys of events' rows (the new row of an insert or update, the old key of a
    /// delete).
    pub fn event_keys(
        &self,
        events: &[&Event],
        key_columns: &[usize],
    ) -> Result<Vec<Vec<u8>>, SinkError> {
        let mut builders: Vec<ColumnBuilder> = self.types.iter().map(ColumnBuilder::new).collect();
        for event in events {
            let row = match event.op {
                Op::Delete => event.before.as_ref(),
                _ => event.after.as_ref(),
            };
            for (b, &c) in builders.iter_mut().zip(key_columns) {
                match row.and_then(|r| r.get(c)) {
                    Some(v) if !v.is_null() => {
                        b.append(v).map_err(|e| SinkError::Schema {
                            table: String::new(),
                            source: format!("a key value that does not fit its column: {e}").into(),
                        })?;
                    }
                    _ => b.append_null(),
                }
            }
        }
        let columns: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
        self.keys(&columns).map_err(|e| SinkError::Schema {
            table: String::new(),
            source: e.into(),
        })
    }
}
