//! PostgreSQL's text forms of structured values, for plugins that read or rewrite them:
//! an array arrives in a batch as PostgreSQL prints it (`{a,NULL,"b c"}`) unless the
//! plugin takes nested types (then it is a [`Value::List`], and [`value_text`] prints
//! it back as PostgreSQL would).
//!
//! ```
//! use weir_sdk::pg::{array_elements, array_text};
//! let elements = array_elements(r#"{vip,NULL,"a b"}"#).unwrap();
//! assert_eq!(elements[0].as_deref(), Some("vip"));
//! assert_eq!(elements[1], None);
//! assert_eq!(array_text(&elements), r#"{vip,NULL,"a b"}"#);
//! ```

use crate::Value;
use std::borrow::Cow;

/// An array in PostgreSQL's text form (`{a,NULL,"b c","NULL"}`) as its elements,
/// unquoted, a sub-array (`{{1,2},{3,4}}`) as its text; None for explicit bounds
/// (`[0:2]={1,2,3}`), which a list cannot hold without shifting them.
pub fn array_elements(s: &str) -> Option<Vec<Option<Cow<'_, str>>>> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Some(out);
    }
    // Delimiters are ASCII, so byte positions are character boundaries.
    let bytes = inner.as_bytes();
    let mut i = 0;
    loop {
        match bytes.get(i)? {
            b'"' => {
                let start = i + 1;
                let mut owned: Option<String> = None;
                let mut j = start;
                loop {
                    match bytes.get(j)? {
                        b'\\' => {
                            let o = owned.get_or_insert_with(String::new);
                            if o.is_empty() {
                                o.push_str(&inner[start..j]);
                            }
                            let c = inner.get(j + 1..)?.chars().next()?;
                            o.push(c);
                            j += 1 + c.len_utf8();
                            continue;
                        }
                        b'"' => break,
                        _ => {}
                    }
                    match owned.as_mut() {
                        Some(o) => {
                            let c = inner[j..].chars().next()?;
                            o.push(c);
                            j += c.len_utf8();
                        }
                        None => j += 1,
                    }
                }
                out.push(Some(match owned {
                    Some(o) => Cow::Owned(o),
                    None => Cow::Borrowed(&inner[start..j]),
                }));
                i = j + 1;
            }
            b'{' => {
                // A sub-array, whole (an element of a column of more dimensions).
                let (start, mut depth, mut quoted) = (i, 0, false);
                loop {
                    match bytes.get(i)? {
                        b'\\' if quoted => i += 1,
                        b'"' => quoted = !quoted,
                        b'{' if !quoted => depth += 1,
                        b'}' if !quoted => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
                out.push(Some(Cow::Borrowed(&inner[start..i])));
            }
            _ => {
                let start = i;
                while let Some(&b) = bytes.get(i) {
                    match b {
                        b',' => break,
                        b'{' | b'}' | b'"' | b'\\' => return None,
                        _ => i += 1,
                    }
                }
                match &inner[start..i] {
                    "" => return None,
                    null if null.eq_ignore_ascii_case("NULL") => out.push(None),
                    v => out.push(Some(Cow::Borrowed(v))),
                }
            }
        }
        match bytes.get(i) {
            None => return Some(out),
            Some(b',') => i += 1,
            Some(_) => return None,
        }
    }
}

/// Elements as PostgreSQL's array text, quoted where PostgreSQL quotes them (empty,
/// `NULL` spelled as text, whitespace or any of `{},"\\`), `None` as `NULL`.
pub fn array_text<S: AsRef<str>>(elements: &[Option<S>]) -> String {
    let mut out = String::from("{");
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match element {
            Some(e) => push_item(&mut out, e.as_ref(), Within::Array),
            None => out.push_str("NULL"),
        }
    }
    out.push('}');
    out
}

/// What a value's text is written inside, which decides how PostgreSQL quotes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Within {
    /// An array's element: quoted when empty, `NULL` spelled as text, or with whitespace
    /// or any of `{},"\\`; `"` and `\\` escaped by a backslash.
    Array,
    /// A record's field: quoted when empty or with whitespace or any of `(),"\\`; `"`
    /// and `\\` doubled.
    Record,
    /// A range's bound: as a record's field, and `[]` quoted too.
    Range,
}

/// Appends `s` to `out` as an item `within` a structured value, quoted where
/// PostgreSQL quotes it.
pub fn push_item(out: &mut String, s: &str, within: Within) {
    let special = |c: char| match within {
        Within::Array => matches!(c, '{' | '}' | ',' | '"' | '\\'),
        Within::Record => matches!(c, '(' | ')' | ',' | '"' | '\\'),
        Within::Range => matches!(c, '(' | ')' | '[' | ']' | ',' | '"' | '\\'),
    };
    let quote = s.is_empty()
        || (within == Within::Array && s.eq_ignore_ascii_case("NULL"))
        || s.chars().any(|c| c.is_whitespace() || special(c));
    if !quote {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push(if within == Within::Array { '\\' } else { c });
        }
        out.push(c);
    }
    out.push('"');
}

/// A scalar value as PostgreSQL prints it (`t`, `42`, `NaN`, `\x0aff`, text as it is);
/// None for null, lists and structs.
pub fn scalar_text(v: &Value) -> Option<Cow<'_, str>> {
    Some(match v {
        Value::Bool(b) => Cow::Borrowed(if *b { "t" } else { "f" }),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Float(f) if f.is_nan() => Cow::Borrowed("NaN"),
        Value::Float(f) if f.is_infinite() => {
            Cow::Borrowed(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float(f) => Cow::Owned(f.to_string()),
        Value::Text(s) => Cow::Borrowed(s),
        Value::Bytes(b) => {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("\\x");
            for byte in b {
                s.push(DIGITS[(byte >> 4) as usize] as char);
                s.push(DIGITS[(byte & 15) as usize] as char);
            }
            Cow::Owned(s)
        }
        Value::Null | Value::List(_) | Value::Struct(_) => return None,
    })
}

/// A value in PostgreSQL's text form, as far as the value itself tells: a list as an
/// array (`{a,NULL,"b c"}`, `{{1,2},{3,4}}`), a struct as a record (`(1,"a b",)`), a
/// scalar as [`scalar_text`], null as `NULL`. A range or an interval given as a struct
/// prints as a record: its column's type tells them apart, the value does not.
pub fn value_text(v: &Value) -> String {
    let mut out = String::new();
    push_value(&mut out, v);
    out
}

fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("NULL"),
        Value::List(elements) => {
            out.push('{');
            for (i, e) in elements.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match e {
                    Value::Null | Value::List(_) => push_value(out, e),
                    other => push_item(out, &value_text(other), Within::Array),
                }
            }
            out.push('}');
        }
        Value::Struct(fields) => {
            out.push('(');
            for (i, (_, f)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !f.is_null() {
                    push_item(out, &value_text(f), Within::Record);
                }
            }
            out.push(')');
        }
        scalar => out.push_str(&scalar_text(scalar).unwrap_or_default()),
    }
}

/// Whether a column's type is an array: PostgreSQL names an array type after its
/// element with a leading underscore (`_text`, `public._mood`).
pub fn is_array_type(type_name: &str) -> bool {
    type_name
        .rsplit('.')
        .next()
        .is_some_and(|name| name.starts_with('_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_read_and_written_back_as_postgres_prints_them() {
        for text in [
            "{}",
            "{a,NULL,b}",
            r#"{"","NULL","a b","c,d","q\"x","back\\slash"}"#,
            "{1,2,3}",
        ] {
            let elements = array_elements(text).unwrap();
            assert_eq!(array_text(&elements), text);
        }
        assert!(is_array_type("_text") && is_array_type("public._mood"));
        let nested = Value::List(vec![
            Value::List(vec![Value::Int(1), Value::Null]),
            Value::List(vec![Value::Text("a b".into()), Value::Text("NULL".into())]),
        ]);
        assert_eq!(value_text(&nested), r#"{{1,NULL},{"a b","NULL"}}"#);
        let record = Value::Struct(vec![
            ("a".into(), Value::Text(r#"x,"y"\"#.into())),
            ("b".into(), Value::Null),
            (
                "c".into(),
                Value::List(vec![Value::Bool(true), Value::Float(f64::NAN)]),
            ),
            ("d".into(), Value::Bytes(vec![10, 255])),
        ]);
        assert_eq!(value_text(&record), r#"("x,""y""\\",,"{t,NaN}","\\x0aff")"#);
        assert!(!is_array_type("text") && !is_array_type("my_schema.t_x"));
    }
}
