//! The database's own types that have a structure: enums (their labels), composite
//! types (their fields), arrays of those and of domains (their element), ranges and
//! multiranges over any subtype; and the array columns declared with more than one
//! dimension. Read from the catalog when a pipeline (or `weir
//! verify`) starts, and consulted by the column mapping (`sink::columns`), which turns
//! them into Arrow lists and structs with `nested_types`.
//!
//! The registry is process-wide, as the catalog it mirrors: every pipeline of a process
//! reads the same database types by OID (pipelines on other databases add theirs; OIDs
//! of different databases that collide keep the first reading, and a value that does
//! not fit the structure is kept as text in `_cdc_unfit`). A type changed by `ALTER
//! TYPE` is read again when weir next starts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A field of a composite type, its type resolved through domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
}

#[derive(Debug, Default, Clone)]
pub struct UserTypes {
    /// Enum types to their labels, in their order.
    pub enums: HashMap<u32, Vec<String>>,
    /// Composite types to their fields.
    pub composites: HashMap<u32, Vec<Field>>,
    /// Array types of user-defined elements (or of domains) to the element's type.
    pub arrays: HashMap<u32, (u32, i32)>,
    /// User-defined range types to their subtype.
    pub ranges: HashMap<u32, u32>,
    /// User-defined multirange types to their range type.
    pub multiranges: HashMap<u32, u32>,
    /// Array columns declared with more than one dimension (`int[][]`), by table OID
    /// and column name.
    pub dims: HashMap<(u32, String), i32>,
    /// The scale of `money` values under the database's `lc_monetary`.
    pub money_scale: Option<u8>,
}

impl UserTypes {
    /// The dimensions declared for a column (1 unless declared with more).
    pub fn dims(&self, table: u32, column: &str) -> i32 {
        self.dims
            .get(&(table, column.to_owned()))
            .copied()
            .unwrap_or(1)
    }
}

static REGISTRY: RwLock<Option<Arc<UserTypes>>> = RwLock::new(None);

/// Adds a database's types to the registry (a type already known keeps its entry only
/// if this reading lacks it: the newest reading wins).
pub fn register(types: UserTypes) {
    let mut registry = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    let mut merged = registry.as_deref().cloned().unwrap_or_default();
    merged.enums.extend(types.enums);
    merged.composites.extend(types.composites);
    merged.arrays.extend(types.arrays);
    merged.ranges.extend(types.ranges);
    merged.multiranges.extend(types.multiranges);
    merged.dims.extend(types.dims);
    merged.money_scale = types.money_scale.or(merged.money_scale);
    *registry = Some(Arc::new(merged));
}

/// The types known so far (none before a source has been described).
pub fn registered() -> Arc<UserTypes> {
    REGISTRY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Reads the database's structured types; `base` resolves a domain to its base type.
pub async fn read(
    client: &tokio_postgres::Client,
    base: impl Fn(u32, i32) -> (u32, i32),
) -> Result<UserTypes, tokio_postgres::Error> {
    let mut types = UserTypes::default();
    for row in client
        .query(
            "SELECT enumtypid, array_agg(enumlabel::text ORDER BY enumsortorder) \
             FROM pg_enum GROUP BY 1",
            &[],
        )
        .await?
    {
        types.enums.insert(row.get(0), row.get(1));
    }
    for row in client
        .query(
            "SELECT t.oid, a.attname::text, a.atttypid, a.atttypmod FROM pg_type t \
             JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c' \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY t.oid, a.attnum",
            &[],
        )
        .await?
    {
        let (type_oid, typmod) = base(row.get(2), row.get(3));
        types.composites.entry(row.get(0)).or_default().push(Field {
            name: row.get(1),
            type_oid,
            typmod,
        });
    }
    // Arrays whose element is not built in (an enum, a composite, a domain, a range).
    for row in client
        .query(
            "SELECT t.oid, t.typelem FROM pg_type t JOIN pg_type e ON e.oid = t.typelem \
             WHERE t.typcategory = 'A' AND e.oid >= 16384",
            &[],
        )
        .await?
    {
        types.arrays.insert(row.get(0), base(row.get(1), -1));
    }
    for row in client
        .query(
            "SELECT rngtypid, rngsubtype, rngmultitypid FROM pg_range WHERE rngtypid >= 16384",
            &[],
        )
        .await?
    {
        let (subtype, _) = base(row.get(1), -1);
        types.ranges.insert(row.get(0), subtype);
        types.multiranges.insert(row.get(2), row.get(0));
    }
    for row in client
        .query(
            "SELECT a.attrelid, a.attname::text, a.attndims FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             WHERE a.attndims > 1 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await?
    {
        types.dims.insert((row.get(0), row.get(1)), row.get(2));
    }
    // money prints as many fractional digits as lc_monetary says, and converts to
    // numeric at that scale.
    let scale: i32 = client
        .query_one("SELECT scale('0'::money::numeric)", &[])
        .await?
        .get(0);
    types.money_scale = u8::try_from(scale).ok().filter(|s| *s <= 10);
    Ok(types)
}

/// The structure of the database's own types that `columns` use, as text: equal for
/// equal structures (empty when they use none), so a schema version can follow it.
pub fn shape(columns: &[weir_sdk::Column]) -> String {
    let types = registered();
    let mut out = String::new();
    for column in columns {
        let mut one = String::new();
        types.describe(column.type_oid, &mut one, 0);
        if !one.is_empty() {
            out.push_str(&format!("{}: {one}; ", column.name));
        }
    }
    out
}

impl UserTypes {
    fn describe(&self, type_oid: u32, out: &mut String, depth: u8) {
        if depth > 16 {
            return;
        }
        if let Some(labels) = self.enums.get(&type_oid) {
            out.push_str(&format!("enum {labels:?}"));
        } else if let Some(fields) = self.composites.get(&type_oid) {
            out.push('(');
            for f in fields {
                out.push_str(&format!("{} {}/{} ", f.name, f.type_oid, f.typmod));
                self.describe(f.type_oid, out, depth + 1);
                out.push(',');
            }
            out.push(')');
        } else if let Some(&(element, _)) = self.arrays.get(&type_oid) {
            out.push_str(&format!("array of {element} "));
            self.describe(element, out, depth + 1);
        }
    }
}
