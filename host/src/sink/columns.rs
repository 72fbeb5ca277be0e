//! PostgreSQL types to Arrow types, and the builders that turn event values into columns.
//!
//! The mapping (README, "Type mapping"): integers, floats, bool, numeric with a typmod of
//! precision <= 38 as decimal, text types, bytea, date, timestamp, timestamptz (UTC), uuid
//! (Parquet UUID), json/jsonb (Parquet JSON). Every other type is written as its
//! PostgreSQL text rendering, which loses nothing.

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, TimeUnit};
use std::sync::Arc;
use weir_sdk::{Column, Value};

pub use weir_sdk::oid;

/// The Arrow field for a source column. Every source column is nullable: deletes carry
/// only the key and truncates no values at all.
pub fn arrow_field(col: &Column) -> Field {
    let field = Field::new(&col.name, arrow_type(col.type_oid, col.typmod), true);
    match col.type_oid {
        oid::UUID => field.with_extension_type(arrow_schema::extension::Uuid),
        oid::JSON | oid::JSONB => {
            field.with_extension_type(arrow_schema::extension::Json::default())
        }
        _ => field,
    }
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
    Text(StringBuilder),
}

impl ColumnBuilder {
    /// A builder for values of `field`'s type.
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
            ColumnBuilder::Decimal(b, _, _) => b.append_null(),
            ColumnBuilder::Text(b) => b.append_null(),
        }
    }

    /// Appends a value. A value the column's type cannot hold appends a null and returns
    /// the error, so the caller can report it with its table, column and LSN.
    pub fn append(&mut self, value: &Value) -> Result<(), ValueError> {
        if value.is_null() {
            self.append_null();
            return Ok(());
        }
        let result = self.try_append(value);
        if result.is_err() {
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
            (ColumnBuilder::Text(b), v) => match v {
                Value::Text(s) => b.append_value(s),
                other => b.append_value(render(other)),
            },
            (_, _) => return Err(err("the column's type")),
        }
        Ok(())
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
            ColumnBuilder::Decimal(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("precision checked at mapping"),
            ),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
        }
    }
}

/// A value as text, for text columns and error messages.
fn render(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Bool(b) => if *b { "t" } else { "f" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Bytes(b) => {
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
    }
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

    #[test]
    fn a_value_that_does_not_fit_appends_null_and_reports() {
        let mut b = ColumnBuilder::new(&DataType::Int16);
        let err = b.append(&Value::Int(70_000)).unwrap_err();
        assert_eq!(err.value, "70000");
        assert_eq!(b.finish().null_count(), 1);
    }
}
