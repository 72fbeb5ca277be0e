//! PostgreSQL's text forms of structured values, for plugins that read or rewrite them:
//! an array arrives in a batch as PostgreSQL prints it (`{a,NULL,"b c"}`).
//!
//! ```
//! use weir_sdk::pg::{array_elements, array_text};
//! let elements = array_elements(r#"{vip,NULL,"a b"}"#).unwrap();
//! assert_eq!(elements[0].as_deref(), Some("vip"));
//! assert_eq!(elements[1], None);
//! assert_eq!(array_text(&elements), r#"{vip,NULL,"a b"}"#);
//! ```

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
        let Some(e) = element else {
            out.push_str("NULL");
            continue;
        };
        let e = e.as_ref();
        let quote = e.is_empty()
            || e.eq_ignore_ascii_case("NULL")
            || e.chars()
                .any(|c| c.is_whitespace() || matches!(c, '{' | '}' | ',' | '"' | '\\'));
        if !quote {
            out.push_str(e);
            continue;
        }
        out.push('"');
        for c in e.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
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
        assert!(!is_array_type("text") && !is_array_type("my_schema.t_x"));
    }
}
