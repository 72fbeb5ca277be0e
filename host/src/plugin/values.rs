//! Values with a structure at the plugin boundary: a plugin whose manifest says
//! `nested_types = true` gets arrays and multiranges as [`Value::List`], composites,
//! ranges and intervals as [`Value::Struct`]; the sinks get PostgreSQL's text back.
//!
//! The structure is the one the Parquet and Iceberg columns have (the Arrow field
//! `arrow_column_field` gives a column), so a plugin sees what a reader of the output
//! sees. A value the structure cannot hold (an array with explicit bounds, an element out
//! of its type's range) stays text, as it stays in `_cdc_unfit` for the sinks. Both
//! conversions touch only the values that need them, so either may run on a batch that
//! is already in its form (a dead letter's batch replayed, a plugin that returned text).

use crate::sink::columns::{
    MULTIRANGE_ELEMENT, is_interval, is_range, parse_hex_bytes, parse_interval, parse_multirange,
    parse_range, parse_record,
};
use crate::sink::rows::source_fields;
use arrow::datatypes::{DataType, Field};
use std::fmt::Write;
use weir_sdk::pg::{Within, push_item, scalar_text, value_text};
use weir_sdk::{Batch, Relation, Value};

/// Per relation, the structured field of each column that has one.
fn structured(batch: &Batch) -> Vec<Vec<Option<Field>>> {
    batch.relations.iter().map(columns_of).collect()
}

fn columns_of(rel: &Relation) -> Vec<Option<Field>> {
    source_fields(rel, &|_| true)
        .into_iter()
        .map(|f| matches!(f.data_type(), DataType::List(_) | DataType::Struct(_)).then_some(f))
        .collect()
}

/// Turns the text of every structured column's value into its list or struct.
pub fn nest(batch: &mut Batch) {
    let fields = structured(batch);
    if fields.iter().all(|f| f.iter().all(Option::is_none)) {
        return;
    }
    for event in &mut batch.events {
        let Some(fields) = fields.get(event.rel as usize) else {
            continue;
        };
        for row in [event.before.as_mut(), event.after.as_mut()]
            .into_iter()
            .flatten()
        {
            for (value, field) in row.iter_mut().zip(fields) {
                if let (Value::Text(text), Some(field)) = (&*value, field)
                    && let Some(nested) = nested(text, field)
                {
                    *value = nested;
                }
            }
        }
    }
}

fn has_structure(v: &Value) -> bool {
    matches!(v, Value::List(_) | Value::Struct(_))
}

/// Turns every list and struct back into PostgreSQL's text, by its column's type.
pub fn flatten(batch: &mut Batch) {
    let rows = || {
        batch
            .events
            .iter()
            .flat_map(|e| [e.before.as_deref(), e.after.as_deref()])
            .flatten()
    };
    if !rows().any(|row| row.iter().any(has_structure)) {
        return;
    }
    let fields = structured(batch);
    for event in &mut batch.events {
        let fields = fields.get(event.rel as usize).map(Vec::as_slice);
        for row in [event.before.as_mut(), event.after.as_mut()]
            .into_iter()
            .flatten()
        {
            flatten_values(row, fields.unwrap_or_default());
        }
    }
}

/// A row of `rel` (read back from a file) with its lists and structs as PostgreSQL's text.
pub fn flatten_row(rel: &Relation, row: &mut [Value]) {
    if row.iter().any(has_structure) {
        flatten_values(row, &columns_of(rel));
    }
}

fn flatten_values(row: &mut [Value], fields: &[Option<Field>]) {
    for (i, value) in row.iter_mut().enumerate() {
        if has_structure(value) {
            let field = fields.get(i).and_then(Option::as_ref);
            let mut out = String::new();
            push_text(&mut out, value, field);
            *value = Value::Text(out);
        }
    }
}

/// `text` (PostgreSQL's form of a value of `field`'s column) as a value with its
/// structure; None when it does not fit.
fn nested(text: &str, field: &Field) -> Option<Value> {
    match field.data_type() {
        DataType::List(element) => {
            let items = match element.name().as_str() {
                MULTIRANGE_ELEMENT => parse_multirange(text)?,
                _ => weir_sdk::pg::array_elements(text)?,
            };
            items
                .into_iter()
                .map(|item| match item {
                    None => Some(Value::Null),
                    Some(item) => nested(&item, element),
                })
                .collect::<Option<Vec<_>>>()
                .map(Value::List)
        }
        DataType::Struct(fields) if is_interval(fields) => {
            let (months, days, microseconds) = parse_interval(text)?;
            Some(Value::Struct(vec![
                ("months".into(), Value::Int(months.into())),
                ("days".into(), Value::Int(days.into())),
                ("microseconds".into(), Value::Int(microseconds)),
            ]))
        }
        DataType::Struct(fields) if is_range(fields) => {
            let range = parse_range(text)?;
            let bound = |text: Option<std::borrow::Cow<'_, str>>| match text {
                None => Some(Value::Null),
                Some(text) => nested(&text, &fields[0]),
            };
            Some(Value::Struct(vec![
                ("lower".into(), bound(range.lower)?),
                ("upper".into(), bound(range.upper)?),
                ("lower_inclusive".into(), Value::Bool(range.lower_inclusive)),
                ("upper_inclusive".into(), Value::Bool(range.upper_inclusive)),
                ("empty".into(), Value::Bool(range.empty)),
            ]))
        }
        DataType::Struct(fields) => {
            let items = parse_record(text).filter(|items| items.len() == fields.len())?;
            fields
                .iter()
                .zip(items)
                .map(|(field, item)| {
                    let value = match item {
                        None => Value::Null,
                        Some(item) => nested(&item, field)?,
                    };
                    Some((field.name().clone(), value))
                })
                .collect::<Option<Vec<_>>>()
                .map(Value::Struct)
        }
        // Elements and fields as the decoder gives columns of their types.
        DataType::Boolean => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        DataType::Int16 | DataType::Int32 | DataType::Int64 => text.parse().ok().map(Value::Int),
        DataType::Float32 | DataType::Float64 => text.parse().ok().map(Value::Float),
        DataType::Binary => parse_hex_bytes(text).map(Value::Bytes),
        _ => Some(Value::Text(text.to_owned())),
    }
}

/// Appends `v` as PostgreSQL's text for a value of `field`'s type (without a field, as
/// far as the value tells: a list as an array, a struct as a record).
fn push_text(out: &mut String, v: &Value, field: Option<&Field>) {
    let data_type = field.map(Field::data_type);
    match (v, data_type) {
        (Value::List(items), Some(DataType::List(element))) => {
            let multirange = element.name() == MULTIRANGE_ELEMENT;
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Value::Null => out.push_str("NULL"),
                    // Sub-arrays and a multirange's ranges are written as they are.
                    Value::List(_) => push_text(out, item, Some(element)),
                    _ if multirange => push_text(out, item, Some(element)),
                    _ => push_item(out, &text_of(item, Some(element)), Within::Array),
                }
            }
            out.push('}');
        }
        (Value::Struct(_), Some(DataType::Struct(fields))) if is_interval(fields) => {
            let int = |name| v.field(name).and_then(Value::as_i64).unwrap_or(0);
            push_interval(out, int("months"), int("days"), int("microseconds"));
        }
        (Value::Struct(_), Some(DataType::Struct(fields))) if is_range(fields) => {
            if v.field("empty") == Some(&Value::Bool(true)) {
                return out.push_str("empty");
            }
            let inclusive = |name| v.field(name) == Some(&Value::Bool(true));
            out.push(if inclusive("lower_inclusive") {
                '['
            } else {
                '('
            });
            for (i, bound) in ["lower", "upper"].into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(bound) = v.field(bound).filter(|b| !b.is_null()) {
                    push_item(out, &text_of(bound, Some(&fields[0])), Within::Range);
                }
            }
            out.push(if inclusive("upper_inclusive") {
                ']'
            } else {
                ')'
            });
        }
        (Value::Struct(values), Some(DataType::Struct(fields))) => {
            out.push('(');
            for (i, (name, value)) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !value.is_null() {
                    let field = fields.iter().find(|f| f.name() == name).map(|f| &**f);
                    push_item(out, &text_of(value, field), Within::Record);
                }
            }
            out.push(')');
        }
        (Value::List(_) | Value::Struct(_), _) => out.push_str(&value_text(v)),
        (scalar, _) => out.push_str(&scalar_text(scalar).unwrap_or_default()),
    }
}

fn text_of(v: &Value, field: Option<&Field>) -> String {
    let mut out = String::new();
    push_text(&mut out, v, field);
    out
}

/// An interval as PostgreSQL prints it with `IntervalStyle = postgres`
/// (`1 year 2 mons -3 days +04:05:06.000007`), which weir's readers and PostgreSQL's
/// input both take.
fn push_interval(out: &mut String, months: i64, days: i64, micros: i64) {
    let (mut is_zero, mut is_before) = (true, false);
    for (value, unit) in [(months / 12, "year"), (months % 12, "mon"), (days, "day")] {
        if value == 0 {
            continue;
        }
        let space = if is_zero { "" } else { " " };
        let plus = if is_before && value > 0 { "+" } else { "" };
        let s = if value == 1 { "" } else { "s" };
        _ = write!(out, "{space}{plus}{value} {unit}{s}");
        (is_zero, is_before) = (false, value < 0);
    }
    if !is_zero && micros == 0 {
        return;
    }
    let sign = match (micros < 0, is_before) {
        (true, _) => "-",
        (false, true) => "+",
        (false, false) => "",
    };
    let space = if is_zero { "" } else { " " };
    let abs = micros.unsigned_abs();
    let (hours, minutes) = (abs / 3_600_000_000, abs / 60_000_000 % 60);
    let (seconds, fraction) = (abs / 1_000_000 % 60, abs % 1_000_000);
    _ = write!(out, "{space}{sign}{hours:02}:{minutes:02}:{seconds:02}");
    if fraction != 0 {
        let digits = format!("{fraction:06}");
        _ = write!(out, ".{}", digits.trim_end_matches('0'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn list(element: DataType) -> Field {
        Field::new(
            "c",
            DataType::List(Arc::new(Field::new("element", element, true))),
            true,
        )
    }

    #[test]
    fn intervals_print_as_postgres_prints_them() {
        for text in [
            "00:00:00",
            "1 year 2 mons -3 days +04:05:06.000007",
            "-1 years -2 mons +3 days -04:05:06.5",
            "1 mon",
            "-1 days",
            "100:00:00",
            "1 day -00:00:00.000001",
        ] {
            let (months, days, micros) = parse_interval(text).unwrap();
            let mut out = String::new();
            push_interval(&mut out, months.into(), days.into(), micros);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn structured_text_goes_to_values_and_back_unchanged() {
        let int4range = Field::new(
            "c",
            DataType::Struct(
                vec![
                    Field::new("lower", DataType::Int32, true),
                    Field::new("upper", DataType::Int32, true),
                    Field::new("lower_inclusive", DataType::Boolean, true),
                    Field::new("upper_inclusive", DataType::Boolean, true),
                    Field::new("empty", DataType::Boolean, true),
                ]
                .into(),
            ),
            true,
        );
        let multirange = Field::new(
            "c",
            DataType::List(Arc::new(int4range.clone().with_name(MULTIRANGE_ELEMENT))),
            true,
        );
        let record = Field::new(
            "c",
            DataType::Struct(
                vec![
                    Field::new("n", DataType::Utf8, true),
                    list(DataType::Int32).with_name("xs"),
                    int4range.clone().with_name("r"),
                ]
                .into(),
            ),
            true,
        );
        let cases = [
            (list(DataType::Utf8), r#"{t2,NULL,"a b","NULL",""}"#),
            (list(DataType::Int32), "{}"),
            (list(DataType::Float64), "{1.5,NaN,-Infinity}"),
            (list(DataType::Binary), r#"{"\\x0aff"}"#),
            (
                list(list(DataType::Int32).data_type().clone()),
                "{{1,2},{3,NULL}}",
            ),
            (int4range.clone(), "[1,5)"),
            (int4range.clone(), "(,)"),
            (int4range.clone(), "empty"),
            (multirange, "{[1,3),[5,7)}"),
            (record, r#"("a ""b""","{1,2}","[1,2)")"#),
        ];
        for (field, text) in cases {
            let value = nested(text, &field).unwrap_or_else(|| panic!("{text}"));
            assert!(matches!(value, Value::List(_) | Value::Struct(_)), "{text}");
            assert_eq!(text_of(&value, Some(&field)), text);
        }
        let v = nested("[1,5)", &int4range).unwrap();
        assert_eq!(v.field("lower"), Some(&Value::Int(1)));
        assert_eq!(v.field("upper_inclusive"), Some(&Value::Bool(false)));
        assert_eq!(
            nested("[0:1]={1,2}", &list(DataType::Int32)),
            None,
            "bounds kept as text"
        );
        assert_eq!(nested("{1,x}", &list(DataType::Int32)), None, "not an int4");
    }
}
