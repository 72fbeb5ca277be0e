//! `mask`: hash (salted SHA-256), redact, null or partially mask columns chosen by name
//! or by tag, in both the new and the old row of every event.
//!
//! ```toml
//! [[transform]]
//! plugin = "plugins/mask"
//! config = { salt = "${MASK_SALT}", tags = { pii = ["email", "customers.phone"] }, rules = [
//!     { tag = "pii", method = "hash" },
//!     { columns = ["public.cards.number"], method = "partial", keep = 4 },
//! ] }
//! ```
//!
//! A column is named `column` (in any table), `table.column` or `schema.table.column`.
//! Hashed, redacted and partially masked columns become `text` in the output; an array
//! column is masked element by element (NULL elements kept) and becomes `text[]`; a
//! composite, range or interval is masked whole, as its text.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use weir_sdk::{Batch, PluginError, Relation, Transform, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mixed into every hash, so hashes cannot be looked up in a table of known values.
    #[serde(default)]
    pub salt: String,
    /// Named groups of columns.
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub tag: Option<String>,
    pub method: Method,
    /// For `partial`: characters kept at the end.
    #[serde(default)]
    pub keep: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Hash,
    Redact,
    Null,
    Partial,
}

/// The transform: each rule resolved to its column selectors.
pub struct Mask {
    salt: String,
    rules: Vec<(Vec<String>, Method, usize)>,
}

fn selects(selector: &str, rel: &Relation, column: &str) -> bool {
    let parts: Vec<&str> = selector.split('.').collect();
    match parts.as_slice() {
        [c] => *c == column,
        [t, c] => *t == rel.table && *c == column,
        [s, t, c] => *s == rel.schema && *t == rel.table && *c == column,
        _ => false,
    }
}

/// Lower-case hex, without an allocation per byte.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

impl Mask {
    fn method_for(&self, rel: &Relation, column: &str) -> Option<(Method, usize)> {
        self.rules
            .iter()
            .find(|(selectors, _, _)| selectors.iter().any(|s| selects(s, rel, column)))
            .map(|(_, m, keep)| (*m, *keep))
    }

    /// Masks each element of an array (a list, or PostgreSQL's text of one, which stays
    /// text), NULL elements kept; false when the value is not an array.
    fn mask_elements(&self, value: &mut Value, method: Method, keep: usize) -> bool {
        let (elements, as_text) = match value {
            Value::List(items) => (std::mem::take(items), false),
            Value::Text(text) => match weir_sdk::pg::array_elements(text) {
                Some(elements) => {
                    let elements = elements.into_iter().map(|e| match e {
                        Some(e) => Value::Text(e.into_owned()),
                        None => Value::Null,
                    });
                    (elements.collect(), true)
                }
                None => return false,
            },
            _ => return false,
        };
        let masked = Value::List(
            elements
                .into_iter()
                .map(|mut e| {
                    // A sub-array (more dimensions) element by element too.
                    if !(matches!(e, Value::List(_)) && self.mask_elements(&mut e, method, keep)) {
                        self.mask(&mut e, method, keep);
                    }
                    e
                })
                .collect(),
        );
        *value = match as_text {
            true => Value::Text(weir_sdk::pg::value_text(&masked)),
            false => masked,
        };
        true
    }

    fn mask(&self, value: &mut Value, method: Method, keep: usize) {
        if value.is_null() {
            return;
        }
        let text = match &*value {
            Value::Text(s) => s.clone().into_bytes(),
            Value::Bytes(b) => b.clone(),
            Value::Int(i) => i.to_string().into_bytes(),
            Value::Float(f) => f.to_string().into_bytes(),
            Value::Bool(b) => if *b { "t" } else { "f" }.as_bytes().to_vec(),
            // A composite, range or interval is masked whole, as its text.
            v @ (Value::List(_) | Value::Struct(_)) => weir_sdk::pg::value_text(v).into_bytes(),
            Value::Null => return,
        };
        *value = match method {
            Method::Null => Value::Null,
            Method::Redact => Value::Text("[redacted]".into()),
            Method::Hash => {
                let mut h = Sha256::new();
                h.update(self.salt.as_bytes());
                h.update(&text);
                Value::Text(hex(&h.finalize()))
            }
            Method::Partial => {
                let s = String::from_utf8_lossy(&text);
                let n = s.chars().count();
                Value::Text(
                    s.chars()
                        .enumerate()
                        .map(|(i, c)| if i + keep >= n { c } else { '*' })
                        .collect(),
                )
            }
        };
    }
}

impl Transform for Mask {
    type Config = Config;

    fn init(config: Config) -> Result<Mask, PluginError> {
        let mut rules = Vec::new();
        for rule in config.rules {
            let mut selectors = rule.columns;
            if let Some(tag) = &rule.tag {
                let tagged = config.tags.get(tag).ok_or_else(|| {
                    PluginError::BadConfig(format!(
                        "rule uses tag `{tag}`, which `tags` does not define"
                    ))
                })?;
                selectors.extend(tagged.iter().cloned());
            }
            if selectors.is_empty() {
                return Err(PluginError::BadConfig(
                    "a rule names no columns and no tag".into(),
                ));
            }
            rules.push((selectors, rule.method, rule.keep));
        }
        Ok(Mask {
            salt: config.salt,
            rules,
        })
    }

    fn process(&mut self, mut batch: Batch) -> Result<Batch, PluginError> {
        // Per relation, the masked columns (and whether each is an array, masked element
        // by element); masked values become text, or arrays of text.
        let plans: Vec<Vec<(usize, Method, usize, bool)>> = batch
            .relations
            .iter()
            .map(|rel| {
                rel.columns
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| {
                        let array = weir_sdk::pg::is_array_type(&c.type_name);
                        self.method_for(rel, &c.name).map(|(m, k)| (i, m, k, array))
                    })
                    .collect()
            })
            .collect();
        for (rel, plan) in batch.relations.iter_mut().zip(&plans) {
            for &(i, method, _, array) in plan {
                if method != Method::Null {
                    let column = &mut rel.columns[i];
                    (column.type_oid, column.type_name, column.typmod) = match array {
                        true => (1009, "_text".into(), -1),
                        false => (25, "text".into(), -1),
                    };
                }
            }
        }
        for event in &mut batch.events {
            let plan = &plans[event.rel as usize];
            for row in [event.before.as_mut(), event.after.as_mut()]
                .into_iter()
                .flatten()
            {
                for &(i, method, keep, array) in plan {
                    if let Some(value) = row.get_mut(i) {
                        let masked = array
                            && method != Method::Null
                            && self.mask_elements(value, method, keep);
                        if !masked {
                            self.mask(value, method, keep);
                        }
                    }
                }
            }
        }
        Ok(batch)
    }
}

#[cfg(target_arch = "wasm32")]
weir_sdk::export_transform!(Mask);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Op;
    use weir_sdk::plugin::testing;

    fn batch() -> Batch {
        let mut b = Batch::default();
        let columns = [
            ("id", "int8", true),
            ("email", "text", false),
            ("card", "text", false),
        ];
        let rel = b.push_relation(testing::relation("public", "customers", &columns));
        let before = vec![
            Value::Int(1),
            Value::Text("old@example.com".into()),
            Value::Null,
        ];
        let after = vec![
            Value::Int(1),
            Value::Text("a@example.com".into()),
            Value::Text("4111111111111111".into()),
        ];
        b.events.push(testing::event(
            Op::Update,
            rel,
            0,
            Some(before),
            Some(after),
        ));
        b
    }

    #[test]
    fn hashes_tagged_columns_and_masks_partially() {
        let config = r#"{"salt":"s","tags":{"pii":["email"]},"rules":[{"tag":"pii","method":"hash"},
            {"columns":["customers.card"],"method":"partial","keep":4}]}"#;
        let out = testing::run::<Mask>(config, batch()).unwrap();
        let after = out.events[0].after.as_ref().unwrap();
        let expected: String = Sha256::digest(b"sa@example.com")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(after[1], Value::Text(expected));
        assert_eq!(after[2], Value::Text("************1111".into()));
        assert_ne!(
            out.events[0].before.as_ref().unwrap()[1],
            Value::Text("old@example.com".into()),
            "old row too"
        );
        assert_eq!(out.relations[0].columns[1].type_name, "text");
        assert_eq!(after[0], Value::Int(1), "other columns untouched");
    }

    #[test]
    fn an_array_is_masked_element_by_element() {
        let mut b = Batch::default();
        let rel = b.push_relation(testing::relation(
            "public",
            "t",
            &[("id", "int8", true), ("tags", "_text", false)],
        ));
        let after = vec![Value::Int(1), Value::Text(r#"{a,NULL,"b c"}"#.into())];
        b.events
            .push(testing::event(Op::Insert, rel, 0, None, Some(after)));
        let config = r#"{"salt":"s","rules":[{"columns":["tags"],"method":"hash"}]}"#;
        let out = testing::run::<Mask>(config, b).unwrap();
        let tags = out.events[0].after.as_ref().unwrap()[1].as_str().unwrap();
        let elements = weir_sdk::pg::array_elements(tags).unwrap();
        let hash = |s: &str| hex(&Sha256::digest(format!("s{s}").as_bytes()));
        assert_eq!(
            elements,
            [Some(hash("a").into()), None, Some(hash("b c").into())],
            "each element hashed, NULL kept: {tags}"
        );
        assert_eq!(out.relations[0].columns[1].type_name, "_text");
    }

    #[test]
    fn a_list_is_masked_element_by_element_and_stays_a_list() {
        let mut b = Batch::default();
        let rel = b.push_relation(testing::relation(
            "public",
            "t",
            &[
                ("id", "int8", true),
                ("grid", "_int4", false),
                ("r", "int4range", false),
            ],
        ));
        let grid = Value::List(vec![
            Value::List(vec![Value::Int(1), Value::Null]),
            Value::List(vec![Value::Int(3), Value::Int(4)]),
        ]);
        let range = Value::Struct(vec![
            ("lower".into(), Value::Int(1)),
            ("upper".into(), Value::Int(5)),
        ]);
        let after = vec![Value::Int(1), grid, range];
        b.events
            .push(testing::event(Op::Insert, rel, 0, None, Some(after)));
        let config = r#"{"rules":[{"columns":["grid","r"],"method":"redact"}]}"#;
        let out = testing::run::<Mask>(config, b).unwrap();
        let after = out.events[0].after.as_ref().unwrap();
        let r = || Value::Text("[redacted]".into());
        assert_eq!(
            after[1],
            Value::List(vec![
                Value::List(vec![r(), Value::Null]),
                Value::List(vec![r(), r()]),
            ])
        );
        assert_eq!(after[2], r(), "a struct masked whole");
        assert_eq!(out.relations[0].columns[1].type_name, "_text");
        assert_eq!(out.relations[0].columns[2].type_name, "text");
    }

    #[test]
    fn an_unknown_tag_is_a_config_error() {
        let err = testing::transform::<Mask>(r#"{"rules":[{"tag":"pii","method":"hash"}]}"#)
            .err()
            .unwrap();
        assert!(matches!(err, PluginError::BadConfig(m) if m.contains("`pii`")));
    }
}
