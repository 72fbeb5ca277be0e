//! PostgreSQL types to Arrow types, and the builders that turn event values into columns.
//!
//! The mapping (README, "Type mapping"): integers, floats, bool, numeric with a typmod of
//! precision <= 38 as decimal, text types, bytea, date, timestamp, timestamptz (UTC), uuid
//! (Parquet UUID), json/jsonb (Parquet JSON); with nested types, arrays as lists (of
//! lists for a column declared with more dimensions), intervals, ranges and composite
//! types as structs, multiranges as lists of ranges, enums as strings with their labels.
//! Every other type is written as its PostgreSQL text rendering, which loses nothing.

use crate::source::types::UserTypes;
use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, ListArray, NullBufferBuilder, StringArray, StringBuilder, StructArray,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, TimeUnit};
use std::borrow::Cow;
use std::sync::Arc;
use weir_sdk::{Column, Value};

pub use weir_sdk::oid;

/// The Arrow field for a source column, arrays as text. Every source column is
/// nullable: deletes carry only the key and truncates no values at all.
pub fn arrow_field(col: &Column) -> Field {
    typed_field(&col.name, col.type_oid, col.typmod)
}

/// The Arrow field for a source column; with `nested`, the types with a structure have
/// it (see the module's summary; `user` has the database's own types): an array of a
/// mapped type is a list of its element's type (the element keeps the column's typmod,
/// as PostgreSQL applies it to each element), a list of lists for a column declared with
/// `dims` dimensions (`int[][]`: 2).
pub fn arrow_column_field(col: &Column, dims: i32, nested: bool, user: &UserTypes) -> Field {
    if !nested {
        return arrow_field(col);
    }
    let field = nested_field(&col.name, col.type_oid, col.typmod, user, 0);
    match field.data_type() {
        DataType::List(_) if dims > 1 => {
            let mut data_type = field.data_type().clone();
            for _ in 1..dims.min(6) {
                data_type = DataType::List(Arc::new(Field::new(ARRAY_ELEMENT, data_type, true)));
            }
            Field::new(&col.name, data_type, true)
        }
        _ => field,
    }
}

/// A field of `type_oid` with its structure: see [`arrow_column_field`]. An enum is a string
/// that carries its labels in the field's metadata (`weir.enum_labels`, a JSON list).
fn nested_field(name: &str, type_oid: u32, typmod: i32, user: &UserTypes, depth: u8) -> Field {
    if let (MONEY, Some(scale)) = (type_oid, user.money_scale) {
        return Field::new(name, DataType::Decimal128(19, scale as i8), true)
            .with_metadata([(PG_TYPE.to_string(), "money".to_string())].into());
    }
    if let Some(labels) = user.enums.get(&type_oid) {
        let labels = serde_json::Value::from(labels.clone()).to_string();
        return Field::new(name, DataType::Utf8, true)
            .with_metadata([("weir.enum_labels".to_string(), labels)].into());
    }
    match nested_type(type_oid, typmod, user, depth) {
        Some(data_type) => Field::new(name, data_type, true),
        None => typed_field(name, type_oid, typmod),
    }
}

/// The structured Arrow type of a type that has one: built-in arrays, intervals, ranges
/// and multiranges, and the database's composites, ranges and arrays of its own types.
fn nested_type(type_oid: u32, typmod: i32, user: &UserTypes, depth: u8) -> Option<DataType> {
    // Composites nest, but not without end.
    if depth > 16 {
        return None;
    }
    let inner = |name: &str, type_oid: u32, typmod: i32| {
        nested_field(name, type_oid, typmod, user, depth + 1)
    };
    if let Some(element) = array_element(type_oid) {
        return Some(DataType::List(Arc::new(inner(
            ARRAY_ELEMENT,
            element,
            typmod,
        ))));
    }
    if let Some(&(element, element_typmod)) = user.arrays.get(&type_oid) {
        let typmod = if typmod >= 0 { typmod } else { element_typmod };
        return Some(DataType::List(Arc::new(inner(
            ARRAY_ELEMENT,
            element,
            typmod,
        ))));
    }
    if let Some(fields) = user.composites.get(&type_oid) {
        let fields: Vec<Field> = fields
            .iter()
            .map(|f| inner(&f.name, f.type_oid, f.typmod))
            .collect();
        return Some(DataType::Struct(fields.into()));
    }
    if type_oid == INTERVAL {
        return Some(DataType::Struct(
            vec![
                Field::new("months", DataType::Int32, true),
                Field::new("days", DataType::Int32, true),
                Field::new("microseconds", DataType::Int64, true),
            ]
            .into(),
        ));
    }
    if let Some(subtype) = range_subtype(type_oid).or_else(|| user.ranges.get(&type_oid).copied()) {
        return Some(DataType::Struct(
            vec![
                typed_field("lower", subtype, -1),
                typed_field("upper", subtype, -1),
                Field::new("lower_inclusive", DataType::Boolean, true),
                Field::new("upper_inclusive", DataType::Boolean, true),
                Field::new("empty", DataType::Boolean, true),
            ]
            .into(),
        ));
    }
    let range = multirange_range(type_oid).or_else(|| user.multiranges.get(&type_oid).copied())?;
    Some(DataType::List(Arc::new(inner(
        MULTIRANGE_ELEMENT,
        range,
        -1,
    ))))
}

/// The element field's name of an array's list, and of a multirange's.
const ARRAY_ELEMENT: &str = "element";
pub(crate) const MULTIRANGE_ELEMENT: &str = "range";

const INTERVAL: u32 = 1186;
const MONEY: u32 = 790;

/// Field metadata naming the PostgreSQL type where the Arrow type alone does not tell
/// how to read the value's text (`money`: a decimal printed with a currency).
const PG_TYPE: &str = "weir.pg_type";

/// The subtype of a built-in range type.
fn range_subtype(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        3904 => oid::INT4,
        3926 => oid::INT8,
        3906 => oid::NUMERIC,
        3908 => oid::TIMESTAMP,
        3910 => oid::TIMESTAMPTZ,
        3912 => oid::DATE,
        _ => return None,
    })
}

/// The range type of a built-in multirange type.
fn multirange_range(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        4451 => 3904,
        4536 => 3926,
        4532 => 3906,
        4533 => 3908,
        4534 => 3910,
        4535 => 3912,
        _ => return None,
    })
}

fn typed_field(name: &str, type_oid: u32, typmod: i32) -> Field {
    let field = Field::new(name, arrow_type(type_oid, typmod), true);
    match type_oid {
        oid::UUID => field.with_extension_type(arrow_schema::extension::Uuid),
        oid::JSON | oid::JSONB => {
            field.with_extension_type(arrow_schema::extension::Json::default())
        }
        _ => field,
    }
}

/// The element type of a built-in array type whose elements weir maps to a typed
/// column (`int4[]` is 1007); other arrays (of enums, composites, user types) stay text.
pub fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => oid::BOOL,
        1001 => oid::BYTEA,
        1003 => oid::NAME,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1028 => oid::OID,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1009 => oid::TEXT,
        1014 => oid::BPCHAR,
        1015 => oid::VARCHAR,
        1182 => oid::DATE,
        1183 => oid::TIME,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        1231 => oid::NUMERIC,
        2951 => oid::UUID,
        199 => oid::JSON,
        3807 => oid::JSONB,
        1187 => INTERVAL,
        3905 => 3904,
        3927 => 3926,
        3907 => 3906,
        3909 => 3908,
        3911 => 3910,
        3913 => 3912,
        _ => return None,
    })
}

fn arrow_type(type_oid: u32, typmod: i32) -> DataType {
    match type_oid {
        oid::BOOL => DataType::Boolean,
        oid::INT2 => DataType::Int16,
        oid::INT4 => DataType::Int32,
        oid::INT8 | oid::OID => DataType::Int64,
        oid::FLOAT4 => DataType::Float32,
        oid::FLOAT8 => DataType::Float64,
        oid::BYTEA => DataType::Binary,
        oid::DATE => DataType::Date32,
        oid::TIME => DataType::Time64(TimeUnit::Microsecond),
        oid::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        oid::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        oid::UUID => DataType::FixedSizeBinary(16),
        oid::NUMERIC => match numeric_precision_scale(typmod) {
            Some((p, s)) if p <= 38 => DataType::Decimal128(p, s as i8),
            _ => DataType::Utf8,
        },
        _ => DataType::Utf8,
    }
}

/// Precision and scale from a numeric typmod, when the column declares them.
fn numeric_precision_scale(typmod: i32) -> Option<(u8, u8)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = ((t >> 16) & 0xffff) as u8;
    let scale = (t & 0xffff) as i16;
    // Negative scales (PostgreSQL 15) are written as text.
    (precision > 0 && (0..=precision as i16).contains(&scale)).then_some((precision, scale as u8))
}

/// A value that does not fit its column's Arrow type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value {value:?} does not fit {data_type}")]
pub struct ValueError {
    pub value: String,
    pub data_type: String,
}

/// Accumulates one column's values.
pub enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Uuid(FixedSizeBinaryBuilder),
    Decimal(Decimal128Builder, u8, i8),
    /// `money`: a decimal read from PostgreSQL's text with its currency and separators.
    Money(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    /// A one-dimensional array or a multirange: its elements in `element`, each row's
    /// end in `offsets`.
    List(Box<ListColumn>),
    Interval(Box<IntervalColumn>),
    Range(Box<RangeColumn>),
    /// A composite type's fields.
    Struct(Box<StructColumn>),
}

pub struct StructColumn {
    fields: Fields,
    children: Vec<ColumnBuilder>,
    nulls: NullBufferBuilder,
}

pub struct ListColumn {
    field: FieldRef,
    element: ColumnBuilder,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

pub struct IntervalColumn {
    fields: Fields,
    months: Int32Builder,
    days: Int32Builder,
    microseconds: Int64Builder,
    nulls: NullBufferBuilder,
}

pub struct RangeColumn {
    fields: Fields,
    lower: ColumnBuilder,
    upper: ColumnBuilder,
    lower_inclusive: BooleanBuilder,
    upper_inclusive: BooleanBuilder,
    empty: BooleanBuilder,
    nulls: NullBufferBuilder,
}

impl ColumnBuilder {
    /// A builder for values of `field` (its metadata may say how to read the text).
    pub fn for_field(field: &Field) -> ColumnBuilder {
        match (
            field.metadata().get(PG_TYPE).map(String::as_str),
            field.data_type(),
        ) {
            (Some("money"), DataType::Decimal128(p, s)) => {
                ColumnBuilder::Money(Decimal128Builder::new(), *p, *s)
            }
            _ => ColumnBuilder::new(field.data_type()),
        }
    }

    /// A builder for values of a field's type.
    pub fn new(data_type: &DataType) -> ColumnBuilder {
        match data_type {
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::new()),
            DataType::Int16 => ColumnBuilder::Int16(Int16Builder::new()),
            DataType::Int32 => ColumnBuilder::Int32(Int32Builder::new()),
            DataType::Int64 => ColumnBuilder::Int64(Int64Builder::new()),
            DataType::Float32 => ColumnBuilder::Float32(Float32Builder::new()),
            DataType::Float64 => ColumnBuilder::Float64(Float64Builder::new()),
            DataType::Binary => ColumnBuilder::Binary(BinaryBuilder::new()),
            DataType::Date32 => ColumnBuilder::Date(Date32Builder::new()),
            DataType::Time64(_) => ColumnBuilder::Time(Time64MicrosecondBuilder::new()),
            DataType::Timestamp(_, tz) => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new(), tz.clone())
            }
            DataType::FixedSizeBinary(16) => ColumnBuilder::Uuid(FixedSizeBinaryBuilder::new(16)),
            DataType::Decimal128(p, s) => ColumnBuilder::Decimal(Decimal128Builder::new(), *p, *s),
            DataType::List(field) => ColumnBuilder::List(Box::new(ListColumn {
                field: field.clone(),
                element: ColumnBuilder::for_field(field),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
            })),
            DataType::Struct(fields) if is_interval(fields) => {
                ColumnBuilder::Interval(Box::new(IntervalColumn {
                    fields: fields.clone(),
                    months: Int32Builder::new(),
                    days: Int32Builder::new(),
                    microseconds: Int64Builder::new(),
                    nulls: NullBufferBuilder::new(0),
                }))
            }
            DataType::Struct(fields) if is_range(fields) => {
                ColumnBuilder::Range(Box::new(RangeColumn {
                    fields: fields.clone(),
                    lower: ColumnBuilder::for_field(&fields[0]),
                    upper: ColumnBuilder::for_field(&fields[1]),
                    lower_inclusive: BooleanBuilder::new(),
                    upper_inclusive: BooleanBuilder::new(),
                    empty: BooleanBuilder::new(),
                    nulls: NullBufferBuilder::new(0),
                }))
            }
            DataType::Struct(fields) => ColumnBuilder::Struct(Box::new(StructColumn {
                fields: fields.clone(),
                children: fields.iter().map(|f| ColumnBuilder::for_field(f)).collect(),
                nulls: NullBufferBuilder::new(0),
            })),
            _ => ColumnBuilder::Text(StringBuilder::new()),
        }
    }

    /// Appends a null.
    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Time(b) => b.append_null(),
            ColumnBuilder::Timestamp(b, _) => b.append_null(),
            ColumnBuilder::Uuid(b) => b.append_null(),
            ColumnBuilder::Decimal(b, _, _) | ColumnBuilder::Money(b, _, _) => b.append_null(),
            ColumnBuilder::Text(b) => b.append_null(),
            ColumnBuilder::List(l) => {
                // Elements of a value that did not fit stay under the null, unread.
                l.offsets.push(l.element.len() as i32);
                l.nulls.append_null();
            }
            ColumnBuilder::Interval(i) => {
                i.months.append_null();
                i.days.append_null();
                i.microseconds.append_null();
                i.nulls.append_null();
            }
            ColumnBuilder::Struct(c) => {
                c.children.iter_mut().for_each(ColumnBuilder::append_null);
                c.nulls.append_null();
            }
            ColumnBuilder::Range(r) => {
                r.lower.append_null();
                r.upper.append_null();
                r.lower_inclusive.append_null();
                r.upper_inclusive.append_null();
                r.empty.append_null();
                r.nulls.append_null();
            }
        }
    }

    /// Values appended so far.
    fn len(&self) -> usize {
        match self {
            ColumnBuilder::Bool(b) => b.len(),
            ColumnBuilder::Int16(b) => b.len(),
            ColumnBuilder::Int32(b) => b.len(),
            ColumnBuilder::Int64(b) => b.len(),
            ColumnBuilder::Float32(b) => b.len(),
            ColumnBuilder::Float64(b) => b.len(),
            ColumnBuilder::Binary(b) => b.len(),
            ColumnBuilder::Date(b) => b.len(),
            ColumnBuilder::Time(b) => b.len(),
            ColumnBuilder::Timestamp(b, _) => b.len(),
            ColumnBuilder::Uuid(b) => b.len(),
            ColumnBuilder::Decimal(b, _, _) | ColumnBuilder::Money(b, _, _) => b.len(),
            ColumnBuilder::Text(b) => b.len(),
            ColumnBuilder::List(l) => l.offsets.len() - 1,
            ColumnBuilder::Interval(i) => i.nulls.len(),
            ColumnBuilder::Range(r) => r.nulls.len(),
            ColumnBuilder::Struct(c) => c.nulls.len(),
        }
    }

    /// Appends a value. A value the column's type cannot hold appends a null and returns
    /// the error, so the caller can report it with its table, column and LSN.
    pub fn append(&mut self, value: &Value) -> Result<(), ValueError> {
        if value.is_null() {
            self.append_null();
            return Ok(());
        }
        let before = self.len();
        let result = self.try_append(value);
        // A structured value that did not fit may have ended its row as null already.
        if result.is_err() && self.len() == before {
            self.append_null();
        }
        result
    }

    fn try_append(&mut self, value: &Value) -> Result<(), ValueError> {
        let err = |dt: &str| ValueError {
            value: render(value),
            data_type: dt.into(),
        };
        match (self, value) {
            (ColumnBuilder::Bool(b), Value::Bool(v)) => b.append_value(*v),
            (ColumnBuilder::Int16(b), Value::Int(v)) => {
                b.append_value(i16::try_from(*v).map_err(|_| err("int16"))?)
            }
            (ColumnBuilder::Int32(b), Value::Int(v)) => {
                b.append_value(i32::try_from(*v).map_err(|_| err("int32"))?)
            }
            (ColumnBuilder::Int64(b), Value::Int(v)) => b.append_value(*v),
            (ColumnBuilder::Float32(b), Value::Float(v)) => b.append_value(*v as f32),
            (ColumnBuilder::Float64(b), Value::Float(v)) => b.append_value(*v),
            (ColumnBuilder::Binary(b), Value::Bytes(v)) => b.append_value(v),
            (ColumnBuilder::Date(b), Value::Text(s)) => {
                b.append_value(parse_date(s).ok_or_else(|| err("date"))?)
            }
            (ColumnBuilder::Time(b), Value::Text(s)) => {
                b.append_value(parse_time(s).ok_or_else(|| err("time"))?)
            }
            (ColumnBuilder::Timestamp(b, tz), Value::Text(s)) => {
                b.append_value(parse_timestamp(s, tz.is_some()).ok_or_else(|| err("timestamp"))?)
            }
            (ColumnBuilder::Uuid(b), Value::Text(s)) => {
                let bytes = parse_uuid(s).ok_or_else(|| err("uuid"))?;
                b.append_value(bytes).map_err(|_| err("uuid"))?
            }
            (ColumnBuilder::Decimal(b, p, s), Value::Text(t)) => {
                b.append_value(parse_decimal(t, *p, *s as u8).ok_or_else(|| err("decimal"))?)
            }
            (ColumnBuilder::Money(b, p, _), Value::Text(t)) => {
                b.append_value(parse_money(t, *p).ok_or_else(|| err("money"))?)
            }
            (ColumnBuilder::Text(b), v) => match v {
                Value::Text(s) => b.append_value(s),
                other => b.append_value(render(other)),
            },
            (ColumnBuilder::List(l), Value::Text(s)) => {
                let elements = match l.field.name().as_str() {
                    MULTIRANGE_ELEMENT => parse_multirange(s).ok_or_else(|| err("a multirange"))?,
                    _ => weir_sdk::pg::array_elements(s)
                        .ok_or_else(|| err("a one-dimensional array"))?,
                };
                let mut fits = true;
                for element in elements {
                    match element {
                        None => l.element.append_null(),
                        Some(text) => fits &= l.element.append_text(&text),
                    }
                }
                if !fits {
                    return Err(err(&format!("a list of {}", l.field.data_type())));
                }
                l.offsets.push(l.element.len() as i32);
                l.nulls.append_non_null();
            }
            (ColumnBuilder::Interval(i), Value::Text(s)) => {
                let (months, days, microseconds) =
                    parse_interval(s).ok_or_else(|| err("an interval"))?;
                i.months.append_value(months);
                i.days.append_value(days);
                i.microseconds.append_value(microseconds);
                i.nulls.append_non_null();
            }
            (ColumnBuilder::Range(r), Value::Text(s)) => {
                let range = parse_range(s).ok_or_else(|| err("a range"))?;
                // Both bounds are appended whatever happens, so the row stays whole.
                let mut fits = true;
                for (builder, bound) in [(&mut r.lower, range.lower), (&mut r.upper, range.upper)] {
                    match bound {
                        None => builder.append_null(),
                        Some(text) => fits &= builder.append_text(&text),
                    }
                }
                r.lower_inclusive.append_value(range.lower_inclusive);
                r.upper_inclusive.append_value(range.upper_inclusive);
                r.empty.append_value(range.empty);
                if !fits {
                    r.nulls.append_null();
                    return Err(err(&format!("a range of {}", r.fields[0].data_type())));
                }
                r.nulls.append_non_null();
            }
            (ColumnBuilder::Struct(c), Value::Text(s)) => {
                let values = parse_record(s)
                    .filter(|v| v.len() == c.children.len())
                    .ok_or_else(|| err(&format!("a record of {} fields", c.children.len())))?;
                // Every field is appended whatever happens, so the row stays whole.
                let mut fits = true;
                for (child, value) in c.children.iter_mut().zip(values) {
                    match value {
                        None => child.append_null(),
                        Some(text) => fits &= child.append_text(&text),
                    }
                }
                if !fits {
                    c.nulls.append_null();
                    return Err(err("the composite type's fields"));
                }
                c.nulls.append_non_null();
            }
            (_, _) => return Err(err("the column's type")),
        }
        Ok(())
    }

    /// Appends a value given as PostgreSQL's text for the column's type (an element of
    /// an array, a bound of a range), without making a [`Value`] of it; false, and a
    /// null appended, when it does not fit.
    fn append_text(&mut self, text: &str) -> bool {
        let fits = match self {
            ColumnBuilder::Text(b) => {
                b.append_value(text);
                true
            }
            ColumnBuilder::Bool(b) => match text {
                "t" => Some(b.append_value(true)),
                "f" => Some(b.append_value(false)),
                _ => None,
            }
            .is_some(),
            ColumnBuilder::Int16(b) => text.parse().map(|v| b.append_value(v)).is_ok(),
            ColumnBuilder::Int32(b) => text.parse().map(|v| b.append_value(v)).is_ok(),
            ColumnBuilder::Int64(b) => text.parse().map(|v| b.append_value(v)).is_ok(),
            ColumnBuilder::Float32(b) => text.parse().map(|v| b.append_value(v)).is_ok(),
            ColumnBuilder::Float64(b) => text.parse().map(|v| b.append_value(v)).is_ok(),
            ColumnBuilder::Binary(b) => parse_hex_bytes(text).map(|v| b.append_value(v)).is_some(),
            ColumnBuilder::Date(b) => parse_date(text).map(|v| b.append_value(v)).is_some(),
            ColumnBuilder::Time(b) => parse_time(text).map(|v| b.append_value(v)).is_some(),
            ColumnBuilder::Timestamp(b, tz) => parse_timestamp(text, tz.is_some())
                .map(|v| b.append_value(v))
                .is_some(),
            ColumnBuilder::Decimal(b, p, s) => parse_decimal(text, *p, *s as u8)
                .map(|v| b.append_value(v))
                .is_some(),
            ColumnBuilder::Money(b, p, _) => {
                parse_money(text, *p).map(|v| b.append_value(v)).is_some()
            }
            // UUIDs and structured values: by their own path.
            _ => return self.append(&Value::Text(text.to_owned())).is_ok(),
        };
        if !fits {
            self.append_null();
        }
        fits
    }

    /// The column built so far; the builder starts over.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Time(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b, tz) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
            ColumnBuilder::Uuid(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b, p, s) | ColumnBuilder::Money(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("precision checked at mapping"),
            ),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::List(l) => {
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                Arc::new(ListArray::new(
                    l.field.clone(),
                    OffsetBuffer::new(offsets.into()),
                    l.element.finish(),
                    l.nulls.finish(),
                ))
            }
            ColumnBuilder::Interval(i) => Arc::new(StructArray::new(
                i.fields.clone(),
                vec![
                    Arc::new(i.months.finish()),
                    Arc::new(i.days.finish()),
                    Arc::new(i.microseconds.finish()),
                ],
                i.nulls.finish(),
            )),
            ColumnBuilder::Struct(c) => Arc::new(StructArray::new(
                c.fields.clone(),
                c.children.iter_mut().map(ColumnBuilder::finish).collect(),
                c.nulls.finish(),
            )),
            ColumnBuilder::Range(r) => Arc::new(StructArray::new(
                r.fields.clone(),
                vec![
                    r.lower.finish(),
                    r.upper.finish(),
                    Arc::new(r.lower_inclusive.finish()),
                    Arc::new(r.upper_inclusive.finish()),
                    Arc::new(r.empty.finish()),
                ],
                r.nulls.finish(),
            )),
        }
    }
}

/// Whether a text column is read into `field` by [`text_to_nested`] (rather than cast).
pub fn read_from_text(field: &Field) -> bool {
    matches!(field.data_type(), DataType::List(_) | DataType::Struct(_))
        || field.metadata().contains_key(PG_TYPE)
}

/// A text column holding values in PostgreSQL's form, as nested types write them
/// (`{a,b}` becomes `["a", "b"]`, `[1,5)` a range struct, `$1.50` a decimal for
/// `money`); a value that does not fit is null.
pub fn text_to_nested(text: &StringArray, field: &Field) -> ArrayRef {
    let mut builder = ColumnBuilder::for_field(field);
    for value in text {
        match value {
            Some(text) => _ = builder.append_text(text),
            None => builder.append_null(),
        }
    }
    builder.finish()
}

/// Whether a struct's fields are an interval's, as [`nested_type`] makes them.
pub(crate) fn is_interval(fields: &Fields) -> bool {
    let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
    names == ["months", "days", "microseconds"] && fields[2].data_type() == &DataType::Int64
}

/// Whether a struct's fields are a range's, as [`nested_type`] makes them.
pub(crate) fn is_range(fields: &Fields) -> bool {
    let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
    names
        == [
            "lower",
            "upper",
            "lower_inclusive",
            "upper_inclusive",
            "empty",
        ]
        && fields[4].data_type() == &DataType::Boolean
}

/// A record (a composite value) in PostgreSQL's text form, `(1,"a b",,"")`, as its
/// fields, unquoted (`""` and `\\x` escape a character); an empty unquoted field is null.
pub(crate) fn parse_record(s: &str) -> Option<Vec<Option<Cow<'_, str>>>> {
    let mut rest = s.strip_prefix('(')?.strip_suffix(')')?;
    let mut out = Vec::new();
    loop {
        let (field, after) = item(rest)?;
        out.push(field);
        match after.strip_prefix(',') {
            Some(r) => rest = r,
            None if after.is_empty() => return Some(out),
            None => return None,
        }
    }
}

/// One item of a record or range, up to the next `,` or the end, and what follows it:
/// quoted (`""` and `\\x` escape a character), bare, or empty (null, or an unbounded
/// end). A bare item never holds what PostgreSQL would have quoted.
fn item(s: &str) -> Option<(Option<Cow<'_, str>>, &str)> {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find(',').unwrap_or(s.len());
        let bare = &s[..end];
        if bare.contains(['"', '\\', '(', ')']) {
            return None;
        }
        return Some(((!bare.is_empty()).then_some(Cow::Borrowed(bare)), &s[end..]));
    };
    let mut v = String::new();
    let mut chars = quoted.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            '\\' => v.push(chars.next()?.1),
            '"' if chars.peek().is_some_and(|&(_, n)| n == '"') => {
                chars.next();
                v.push('"');
            }
            '"' => {
                let rest = chars.peek().map_or("", |&(i, _)| &quoted[i..]);
                return Some((Some(Cow::Owned(v)), rest));
            }
            c => v.push(c),
        }
    }
    None
}

/// A range in PostgreSQL's text form, its bounds unquoted (`None`: unbounded).
#[derive(Debug, PartialEq)]
pub(crate) struct RangeText<'a> {
    pub lower: Option<Cow<'a, str>>,
    pub upper: Option<Cow<'a, str>>,
    pub lower_inclusive: bool,
    pub upper_inclusive: bool,
    pub empty: bool,
}

/// `[1,10)`, `(,)`, `["2024-01-01 00:00:00+00",)`, `empty`.
pub(crate) fn parse_range(s: &str) -> Option<RangeText<'_>> {
    if s == "empty" {
        return Some(RangeText {
            lower: None,
            upper: None,
            lower_inclusive: false,
            upper_inclusive: false,
            empty: true,
        });
    }
    let lower_inclusive = match s.as_bytes().first()? {
        b'[' => true,
        b'(' => false,
        _ => return None,
    };
    let upper_inclusive = match s.as_bytes().last()? {
        b']' => true,
        b')' => false,
        _ => return None,
    };
    let inner = s.get(1..s.len() - 1)?;
    let (lower, rest) = item(inner)?;
    let (upper, rest) = item(rest.strip_prefix(',')?)?;
    if !rest.is_empty() {
        return None;
    }
    Some(RangeText {
        lower_inclusive: lower_inclusive && lower.is_some(),
        upper_inclusive: upper_inclusive && upper.is_some(),
        lower,
        upper,
        empty: false,
    })
}

/// `{[1,3),[5,7)}` as the text of each range.
pub(crate) fn parse_multirange(s: &str) -> Option<Vec<Option<Cow<'_, str>>>> {
    let mut rest = s.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        // A range ends at the first `]` or `)` outside quotes.
        let (mut quoted, mut escaped, mut end) = (false, false, None);
        for (i, c) in rest.char_indices().skip(1) {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ']' | ')' if !quoted => {
                    end = Some(i + 1);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        out.push(Some(Cow::Borrowed(&rest[..end])));
        rest = rest[end..].trim_start();
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return None,
        };
    }
    Some(out)
}

/// An interval as PostgreSQL writes it with `IntervalStyle = postgres` (weir's
/// sessions set it): `1 year 2 mons -3 days +04:05:06.789`, to months, days and
/// microseconds.
pub(crate) fn parse_interval(s: &str) -> Option<(i32, i32, i64)> {
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut tokens = s.split(' ');
    while let Some(token) = tokens.next() {
        if token.contains(':') {
            let (negative, clock) = match token.as_bytes().first()? {
                b'-' => (true, &token[1..]),
                b'+' => (false, &token[1..]),
                _ => (false, token),
            };
            let mut f = clock.splitn(3, ':');
            let (h, m, sec) = (f.next()?, f.next()?, f.next()?);
            let (sec, frac) = sec.split_once('.').unwrap_or((sec, ""));
            if frac.len() > 6 || (!frac.is_empty() && digits(frac).is_none()) {
                return None;
            }
            let frac = match frac.is_empty() {
                true => 0,
                false => digits(frac)? as i64 * 10i64.pow(6 - frac.len() as u32),
            };
            let h: i64 = h
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| h.parse().ok())??;
            let v = (h.checked_mul(3600)? + digits(m)? as i64 * 60 + digits(sec)? as i64)
                .checked_mul(1_000_000)?
                + frac;
            micros = if negative { -v } else { v };
            continue;
        }
        let n: i64 = token.parse().ok()?;
        match tokens.next()? {
            "year" | "years" => months += n.checked_mul(12)?,
            "mon" | "mons" => months += n,
            "day" | "days" => days += n,
            _ => return None,
        }
    }
    Some((
        i32::try_from(months).ok()?,
        i32::try_from(days).ok()?,
        micros,
    ))
}

/// A value as text, for text columns and error messages.
fn render(v: &Value) -> String {
    weir_sdk::pg::value_text(v)
}

/// `\\x00ff` (bytea's hex output) to its bytes.
pub(crate) fn parse_hex_bytes(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD[ BC]` (ISO DateStyle) to days since the Unix epoch; `infinity` and
/// `-infinity` to `i32::MAX` and `-i32::MAX`, the values DuckDB reads as infinities.
fn parse_date(s: &str) -> Option<i32> {
    match s {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(-i32::MAX),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (
        digits(parts.next()?)?,
        digits(parts.next()?)?,
        digits(parts.next()?)?,
    );
    // 1 BC is year 0 of the proleptic Gregorian calendar.
    let year = if bc { 1 - y as i32 } else { y as i32 };
    let date = chrono::NaiveDate::from_ymd_opt(year, m, d)?;
    Some((date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
}

/// `HH:MM:SS[.ffffff]` to microseconds since midnight (`24:00:00` included).
fn parse_time(s: &str) -> Option<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut f = hms.split(':');
    let (h, m, sec) = (
        digits(f.next()?)? as i64,
        digits(f.next()?)? as i64,
        digits(f.next()?)? as i64,
    );
    if frac.len() > 6 || (!frac.is_empty() && digits(frac).is_none()) {
        return None;
    }
    let micros = if frac.is_empty() {
        0
    } else {
        digits(frac)? as i64 * 10i64.pow(6 - frac.len() as u32)
    };
    let v = (h * 3600 + m * 60 + sec) * 1_000_000 + micros;
    (v <= 86_400_000_000).then_some(v)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]]` to microseconds since the Unix epoch (UTC
/// for timestamptz, whose offset is applied).
fn parse_timestamp(s: &str, with_zone: bool) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(-i64::MAX),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, " BC"),
        None => (s, ""),
    };
    let (date, time) = s.split_once(' ')?;
    let days = parse_date(&format!("{date}{bc}"))? as i64;
    // Split off a zone offset: the first '+' or '-' after the time of day.
    let (clock, offset_secs) = match time.find(['+', '-']) {
        Some(i) if with_zone => {
            let sign = if &time[i..=i] == "-" { -1 } else { 1 };
            let mut f = time[i + 1..].split(':');
            let h = digits(f.next()?)? as i64;
            let m = f.next().map(digits).unwrap_or(Some(0))? as i64;
            let sec = f.next().map(digits).unwrap_or(Some(0))? as i64;
            (&time[..i], sign * (h * 3600 + m * 60 + sec))
        }
        Some(_) => return None,
        None => (time, 0),
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut f = hms.split(':');
    let (h, m, sec) = (
        digits(f.next()?)? as i64,
        digits(f.next()?)? as i64,
        digits(f.next()?)? as i64,
    );
    let micros = if frac.is_empty() {
        0
    } else {
        if frac.len() > 6 {
            return None;
        }
        digits(frac)? as i64 * 10i64.pow(6 - frac.len() as u32)
    };
    Some((days * 86_400 + h * 3600 + m * 60 + sec - offset_secs) * 1_000_000 + micros)
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `money` as PostgreSQL prints it (`$1,234.56`, `-$0.01`, `1.234,56 €`, by
/// `lc_monetary`) to its unscaled integer: the digits in order are exactly that, since
/// it always prints the locale's number of fractional digits.
fn parse_money(s: &str, precision: u8) -> Option<i128> {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() > precision as usize {
        return None;
    }
    let v: i128 = digits.parse().ok()?;
    Some(if s.contains('-') || s.starts_with('(') {
        -v
    } else {
        v
    })
}

/// Decimal text to an unscaled integer at `scale`; None for NaN, infinities or values that
/// do not fit `precision` (never rounds).
fn parse_decimal(s: &str, precision: u8, scale: u8) -> Option<i128> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if frac.len() > scale as usize
        || int.trim_start_matches('0').len() + scale as usize > precision as usize
    {
        return None;
    }
    let mut v: i128 = 0;
    for b in int
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', scale as usize - frac.len()))
    {
        v = v.checked_mul(10)?.checked_add((b - b'0') as i128)?;
    }
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert_eq!(parse_date("infinity"), Some(i32::MAX));
        assert_eq!(parse_date("-infinity"), Some(-i32::MAX));
        // 44 BC is astronomical year -43.
        assert_eq!(
            parse_date("0044-03-15 BC"),
            Some(
                (chrono::NaiveDate::from_ymd_opt(-43, 3, 15).unwrap()
                    - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
                .num_days() as i32
            )
        );
        assert_eq!(parse_timestamp("infinity", true), Some(i64::MAX));
        assert_eq!(
            parse_timestamp("0001-01-01 00:00:00+00 BC", true),
            parse_date("0001-01-01 BC").map(|d| d as i64 * 86_400_000_000)
        );
        assert_eq!(parse_time("00:00:01.25"), Some(1_250_000));
        assert_eq!(parse_time("24:00:00"), Some(86_400_000_000));
        assert_eq!(parse_time("25:00:00"), None);
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:01.5", false),
            Some(1_500_000)
        );
        assert_eq!(parse_timestamp("1970-01-01 01:00:00+01", true), Some(0));
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:00-05:30", true),
            Some(19_800_000_000)
        );
        assert_eq!(
            parse_timestamp("2024-02-29 23:59:59.999999+00", true),
            Some(1_709_251_199_999_999)
        );
        assert_eq!(parse_timestamp("1970-01-01 00:00:00+01", false), None);
    }

    #[test]
    fn numeric_typmods() {
        // numeric(10,2): typmod = (10 << 16 | 2) + 4
        assert_eq!(
            arrow_type(oid::NUMERIC, (10 << 16 | 2) + 4),
            DataType::Decimal128(10, 2)
        );
        assert_eq!(arrow_type(oid::NUMERIC, -1), DataType::Utf8);
        assert_eq!(arrow_type(oid::NUMERIC, (50 << 16) + 4), DataType::Utf8);
        assert_eq!(parse_decimal("-12.5", 10, 2), Some(-1250));
        assert_eq!(parse_decimal("0.01", 3, 2), Some(1));
        assert_eq!(parse_decimal("NaN", 10, 2), None);
        assert_eq!(parse_decimal("1.234", 10, 2), None, "never rounds");
        assert_eq!(
            parse_decimal("123456789", 10, 2),
            None,
            "too many integer digits"
        );
    }

    #[test]
    fn uuid_and_unmapped_types() {
        let u = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(u[0], 0xa0);
        assert_eq!(u[15], 0x11);
        assert_eq!(
            arrow_type(600, -1),
            DataType::Utf8,
            "point is written as text"
        );
        let mut text = ColumnBuilder::new(&DataType::Utf8);
        text.append(&Value::Bytes(vec![1, 0xab])).unwrap();
        let arr = text.finish();
        let arr = arr
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(arr.value(0), "\\x01ab");
    }

    fn owned(v: Option<Vec<Option<Cow<'_, str>>>>) -> Option<Vec<Option<String>>> {
        v.map(|v| v.into_iter().map(|e| e.map(Cow::into_owned)).collect())
    }

    #[test]
    fn arrays_in_postgres_text_form() {
        let some = |v: &[Option<&str>]| Some(v.iter().map(|e| e.map(String::from)).collect());
        let parse_array = |s| owned(weir_sdk::pg::array_elements(s));
        assert_eq!(parse_array("{}"), Some(vec![]));
        assert_eq!(
            parse_array(r#"{a,NULL,"NULL","b \"q\"","c,d",""}"#),
            some(&[
                Some("a"),
                None,
                Some("NULL"),
                Some("b \"q\""),
                Some("c,d"),
                Some("")
            ])
        );
        assert_eq!(parse_array(r#"{"\\x00ff"}"#), some(&[Some("\\x00ff")]));
        assert_eq!(
            parse_array(r#"{{1,"}"},{3,4}}"#),
            some(&[Some(r#"{1,"}"}"#), Some("{3,4}")]),
            "two dimensions: the sub-arrays' text"
        );
        assert_eq!(parse_array("[0:2]={1,2,3}"), None, "explicit bounds");
        assert_eq!(parse_array("{1,2"), None);
        assert_eq!(
            parse_array(r#"{"é\"x",ü}"#),
            some(&[Some("é\"x"), Some("ü")]),
            "an escape after a multi-byte character"
        );
    }

    #[test]
    fn records_in_postgres_text_form() {
        let some = |v: &[Option<&str>]| Some(v.iter().map(|e| e.map(String::from)).collect());
        let parse = |s| owned(parse_record(s));
        assert_eq!(parse("(1,x)"), some(&[Some("1"), Some("x")]));
        assert_eq!(
            parse(r#"(,"")"#),
            some(&[None, Some("")]),
            "null, then empty"
        );
        assert_eq!(
            parse(r#"(1,"(2,""a b"")","c\\d")"#),
            some(&[Some("1"), Some(r#"(2,"a b")"#), Some("c\\d")]),
            "a nested record, quotes doubled, a backslash escaped"
        );
        assert_eq!(parse("()"), some(&[None]));
        assert_eq!(parse("(1,2"), None);
    }

    #[test]
    fn ranges_multiranges_and_intervals_in_postgres_text_form() {
        let r = parse_range(r#"["2024-01-01 00:00:00+00",)"#).unwrap();
        assert_eq!(r.lower.as_deref(), Some("2024-01-01 00:00:00+00"));
        assert_eq!(
            (r.upper, r.lower_inclusive, r.upper_inclusive),
            (None, true, false)
        );
        let r = parse_range("(,)").unwrap();
        assert_eq!((r.lower, r.upper, r.lower_inclusive), (None, None, false));
        assert!(parse_range("empty").unwrap().empty);
        let r = parse_range(r#"["a""b","c\\d"]"#).unwrap();
        assert_eq!(
            (r.lower.unwrap(), r.upper.unwrap()),
            ("a\"b".into(), "c\\d".into())
        );
        assert_eq!(parse_range("[1,2"), None);
        let parse_multirange = |s| owned(parse_multirange(s));
        assert_eq!(
            parse_multirange(r#"{[1,3),["x)",y]}"#),
            Some(vec![Some("[1,3)".into()), Some(r#"["x)",y]"#.into())])
        );
        assert_eq!(parse_multirange("{}"), Some(vec![]));
        for (text, expected) in [
            ("00:00:00", (0, 0, 0)),
            ("1 year 2 mons 3 days 04:05:06.789", (14, 3, 14_706_789_000)),
            ("-1 days", (0, -1, 0)),
            ("1 day -00:00:01", (0, 1, -1_000_000)),
            ("-10 mons -3 days +04:05:06", (-10, -3, 14_706_000_000)),
            ("-00:00:00.000001", (0, 0, -1)),
            ("100:00:00", (0, 0, 360_000_000_000)),
            ("178000000 years", (2_136_000_000, 0, 0)),
        ] {
            assert_eq!(parse_interval(text), Some(expected), "{text}");
        }
        assert_eq!(parse_interval("P1Y"), None, "another IntervalStyle");
    }

    #[test]
    fn an_array_becomes_a_list_and_one_a_list_cannot_hold_is_unfit() {
        let col = |type_oid| Column {
            name: "a".into(),
            type_oid,
            type_name: String::new(),
            typmod: -1,
            key: false,
        };
        let field = arrow_column_field(&col(1007), 1, true, &UserTypes::default());
        assert_eq!(
            arrow_column_field(&col(1007), 1, false, &UserTypes::default()).data_type(),
            &DataType::Utf8,
            "text form"
        );
        let mut b = ColumnBuilder::new(field.data_type());
        b.append(&Value::Text("{1,NULL,3}".into())).unwrap();
        b.append(&Value::Text("{}".into())).unwrap();
        b.append(&Value::Null).unwrap();
        let err = b.append(&Value::Text("[0:1]={1,2}".into())).unwrap_err();
        assert_eq!(err.value, "[0:1]={1,2}", "the exact text, for _cdc_unfit");
        b.append(&Value::Text("{99999999999}".into())).unwrap_err();
        b.append(&Value::Text("{7}".into())).unwrap();
        let arr = b.finish();
        let list = arr.as_any().downcast_ref::<ListArray>().unwrap();
        let ints = |i: usize| {
            let v = list.value(i);
            let v = v
                .as_any()
                .downcast_ref::<arrow::array::Int32Array>()
                .unwrap();
            v.iter().collect::<Vec<_>>()
        };
        assert_eq!(ints(0), [Some(1), None, Some(3)]);
        assert_eq!(ints(1), []);
        assert_eq!(
            (0..6).map(|i| list.is_null(i)).collect::<Vec<_>>(),
            [false, false, true, true, true, false]
        );
        assert_eq!(ints(5), [Some(7)], "after values that did not fit");

        let bytes = ColumnBuilder::new(
            arrow_column_field(&col(1001), 1, true, &UserTypes::default()).data_type(),
        );
        let mut bytes = bytes;
        bytes
            .append(&Value::Text(r#"{"\\x00ff",NULL}"#.into()))
            .unwrap();
        let arr = bytes.finish();
        let list = arr.as_any().downcast_ref::<ListArray>().unwrap();
        let v = list.value(0);
        let v = v
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .unwrap();
        assert_eq!(v.iter().collect::<Vec<_>>(), [Some(&[0u8, 0xff][..]), None]);
    }

    #[test]
    fn money_in_any_locale_is_its_digits() {
        assert_eq!(parse_money("$1,234.56", 19), Some(123_456));
        assert_eq!(parse_money("-$0.01", 19), Some(-1));
        assert_eq!(parse_money("1.234,56 €", 19), Some(123_456));
        assert_eq!(parse_money("($5.00)", 19), Some(-500));
        assert_eq!(
            parse_money("-$92,233,720,368,547,758.08", 19),
            Some(-9_223_372_036_854_775_808)
        );
        assert_eq!(parse_money("$", 19), None);
        let field = Field::new("m", DataType::Decimal128(19, 2), true)
            .with_metadata([(PG_TYPE.to_string(), "money".to_string())].into());
        let mut b = ColumnBuilder::for_field(&field);
        b.append(&Value::Text("$12.34".into())).unwrap();
        let arr = b.finish();
        let arr = arr
            .as_any()
            .downcast_ref::<arrow::array::Decimal128Array>()
            .unwrap();
        assert_eq!(arr.value_as_string(0), "12.34");
    }

    #[test]
    fn a_column_of_two_dimensions_is_a_list_of_lists() {
        let col = Column {
            name: "a".into(),
            type_oid: 1007,
            type_name: String::new(),
            typmod: -1,
            key: false,
        };
        let field = arrow_column_field(&col, 2, true, &UserTypes::default());
        let mut b = ColumnBuilder::new(field.data_type());
        b.append(&Value::Text("{{1,2},{3,NULL}}".into())).unwrap();
        b.append(&Value::Text("{}".into())).unwrap();
        b.append(&Value::Text("{1,2}".into()))
            .expect_err("one dimension in a column of two");
        let arr = b.finish();
        let list = arr.as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!(list.value(0).len(), 2);
        assert_eq!(list.value(1).len(), 0);
        assert!(list.is_null(2));
        let inner = list.value(0);
        let inner = inner.as_any().downcast_ref::<ListArray>().unwrap();
        let second = inner.value(1);
        let second = second
            .as_any()
            .downcast_ref::<arrow::array::Int32Array>()
            .unwrap();
        assert_eq!(second.iter().collect::<Vec<_>>(), [Some(3), None]);
    }

    #[test]
    fn a_value_that_does_not_fit_appends_null_and_reports() {
        let mut b = ColumnBuilder::new(&DataType::Int16);
        let err = b.append(&Value::Int(70_000)).unwrap_err();
        assert_eq!(err.value, "70000");
        assert_eq!(b.finish().null_count(), 1);
    }
}
