//! Rows in `COPY ... FROM STDIN` text format: every value in the text PostgreSQL reads
//! back to the same value, so a row crosses into the target losslessly.

use weir_sdk::Value;

/// Appends `value` as one COPY text field (no delimiter).
pub fn field(out: &mut String, value: &Value) {
    use std::fmt::Write;
    match value {
        Value::Null => out.push_str("\\N"),
        Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Value::Int(i) => write!(out, "{i}").expect("writing to a String"),
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        // Rust prints the shortest text that parses back to the same float.
        Value::Float(f) => write!(out, "{f}").expect("writing to a String"),
        Value::Text(s) => escaped(out, s),
        Value::Bytes(b) => {
            // bytea's hex input, its backslash escaped for COPY.
            out.push_str("\\\\x");
            for byte in b {
                write!(out, "{byte:02x}").expect("writing to a String");
            }
        }
        // Sinks are given text; a list or struct left by a plugin is written as such.
        Value::List(_) | Value::Struct(_) => escaped(out, &weir_sdk::pg::value_text(value)),
    }
}

/// Appends text with COPY's escapes for backslash, tab, newline and carriage return.
pub fn escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// One COPY line of `fields`, tab-separated, ending in a newline.
pub struct Line<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Line<'a> {
    pub fn new(out: &'a mut String) -> Line<'a> {
        Line { out, first: true }
    }

    fn sep(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push('\t');
        }
    }

    pub fn value(&mut self, value: &Value) -> &mut Self {
        self.sep();
        field(self.out, value);
        self
    }

    pub fn text(&mut self, text: &str) -> &mut Self {
        self.sep();
        escaped(self.out, text);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.sep();
        self.out.push_str("\\N");
        self
    }

    pub fn end(&mut self) {
        self.out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(values: &[Value]) -> String {
        let mut out = String::new();
        let mut line = Line::new(&mut out);
        for v in values {
            line.value(v);
        }
        line.end();
        out
    }

    #[test]
    fn each_kind_of_value_is_written_as_copy_reads_it() {
        let got = line(&[
            Value::Null,
            Value::Bool(true),
            Value::Int(-7),
            Value::Float(0.1),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(f64::NAN),
            Value::Text("a\tb\\c\nd\re".into()),
            Value::Bytes(vec![0, 255]),
        ]);
        assert_eq!(
            got,
            "\\N\tt\t-7\t0.1\t-Infinity\tNaN\ta\\tb\\\\c\\nd\\re\t\\\\x00ff\n"
        );
    }

    #[test]
    fn floats_keep_every_digit() {
        for f in [1e300, 5e-324, 0.30000000000000004, -0.0] {
            let mut s = String::new();
            field(&mut s, &Value::Float(f));
            assert_eq!(s.parse::<f64>().unwrap().to_bits(), f.to_bits(), "{s}");
        }
    }
}
