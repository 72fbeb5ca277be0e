//! The batch layout's MessagePack, written and read by hand.
//!
//! Every batch crosses this code four times per transform (host encode, guest decode,
//! guest encode, host decode), and through serde it was most of a transform's cost
//! (README, Performance). The layout is the one serde gave (maps with named fields,
//! integers in their smallest form, floats as float 64), and reading is as lenient as
//! serde's was: fields in any order, unknown fields skipped, integers and floats of any
//! width, `unchanged`, `committed`, `before` and `after` optional.

use crate::{Batch, Column, DecodeError, Event, Op, Relation, Value};

// ---------------------------------------------------------------------------------------
// Writing

/// Appends `batch` to `out` as MessagePack.
pub(crate) fn encode(batch: &Batch, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.map(4);
    w.str("v");
    w.uint(batch.v as u64);
    w.str("relations");
    w.array(batch.relations.len());
    for rel in &batch.relations {
        w.relation(rel);
    }
    w.str("events");
    w.array(batch.events.len());
    for event in &batch.events {
        w.event(event);
    }
    w.str("committed");
    w.uint(batch.committed);
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn relation(&mut self, rel: &Relation) {
        self.map(5);
        self.str("id");
        self.uint(rel.id as u64);
        self.str("schema");
        self.str(&rel.schema);
        self.str("table");
        self.str(&rel.table);
        self.str("version");
        self.uint(rel.version as u64);
        self.str("columns");
        self.array(rel.columns.len());
        for col in &rel.columns {
            self.map(5);
            self.str("name");
            self.str(&col.name);
            self.str("type_oid");
            self.uint(col.type_oid as u64);
            self.str("type_name");
            self.str(&col.type_name);
            self.str("typmod");
            self.int(col.typmod as i64);
            self.str("key");
            self.bool(col.key);
        }
    }

    fn event(&mut self, e: &Event) {
        self.map(if e.unchanged.is_empty() { 8 } else { 9 });
        self.str("op");
        self.str(e.op.code());
        self.str("rel");
        self.uint(e.rel as u64);
        self.str("commit_lsn");
        self.uint(e.commit_lsn);
        self.str("seq");
        self.uint(e.seq as u64);
        self.str("xid");
        self.uint(e.xid as u64);
        self.str("commit_ts");
        self.int(e.commit_ts);
        self.str("before");
        self.row(e.before.as_deref());
        self.str("after");
        self.row(e.after.as_deref());
        if !e.unchanged.is_empty() {
            self.str("unchanged");
            self.array(e.unchanged.len());
            for &i in &e.unchanged {
                self.uint(i as u64);
            }
        }
    }

    fn row(&mut self, row: Option<&[Value]>) {
        let Some(values) = row else {
            return self.0.push(0xc0);
        };
        self.array(values.len());
        for v in values {
            self.value(v);
        }
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.0.push(0xc0),
            Value::Bool(b) => self.bool(*b),
            Value::Int(i) => self.int(*i),
            Value::Float(f) => {
                self.0.push(0xcb);
                self.0.extend_from_slice(&f.to_be_bytes());
            }
            Value::Text(s) => self.str(s),
            Value::Bytes(b) => self.bin(b),
            Value::List(values) => {
                self.array(values.len());
                for v in values {
                    self.value(v);
                }
            }
            Value::Struct(fields) => {
                self.map(fields.len());
                for (name, v) in fields {
                    self.str(name);
                    self.value(v);
                }
            }
        }
    }

    fn bool(&mut self, b: bool) {
        self.0.push(if b { 0xc3 } else { 0xc2 });
    }

    fn uint(&mut self, n: u64) {
        let out = &mut *self.0;
        if n < 0x80 {
            out.push(n as u8);
        } else if n <= u8::MAX as u64 {
            out.extend_from_slice(&[0xcc, n as u8]);
        } else if n <= u16::MAX as u64 {
            out.push(0xcd);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= u32::MAX as u64 {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }

    fn int(&mut self, n: i64) {
        if n >= 0 {
            return self.uint(n as u64);
        }
        let out = &mut *self.0;
        if n >= -32 {
            out.push(n as u8);
        } else if n >= i8::MIN as i64 {
            out.extend_from_slice(&[0xd0, n as u8]);
        } else if n >= i16::MIN as i64 {
            out.push(0xd1);
            out.extend_from_slice(&(n as i16).to_be_bytes());
        } else if n >= i32::MIN as i64 {
            out.push(0xd2);
            out.extend_from_slice(&(n as i32).to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }

    fn str(&mut self, s: &str) {
        let n = s.len();
        let out = &mut *self.0;
        if n < 32 {
            out.push(0xa0 | n as u8);
        } else if n <= u8::MAX as usize {
            out.extend_from_slice(&[0xd9, n as u8]);
        } else if n <= u16::MAX as usize {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        out.extend_from_slice(s.as_bytes());
    }

    fn bin(&mut self, b: &[u8]) {
        let n = b.len();
        let out = &mut *self.0;
        if n <= u8::MAX as usize {
            out.extend_from_slice(&[0xc4, n as u8]);
        } else if n <= u16::MAX as usize {
            out.push(0xc5);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xc6);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        out.extend_from_slice(b);
    }

    fn collection(&mut self, n: usize, fix: u8, m16: u8) {
        let out = &mut *self.0;
        if n < 16 {
            out.push(fix | n as u8);
        } else if n <= u16::MAX as usize {
            out.push(m16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(m16 + 1);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    fn map(&mut self, n: usize) {
        self.collection(n, 0x80, 0xde);
    }

    fn array(&mut self, n: usize) {
        self.collection(n, 0x90, 0xdc);
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// What reading does with the rows' values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Builds them.
    Keep,
    /// Checks them and the events, keeping no event: a check of the whole layout with
    /// no allocation per event or value.
    Check,
}

/// Reads a batch and counts its events (its layout version is checked by the caller).
pub(crate) fn decode(bytes: &[u8], rows: Rows) -> Result<(Batch, usize), DecodeError> {
    let mut r = Reader { bytes, at: 0, rows };
    let batch = r.batch()?;
    if r.at != bytes.len() {
        return Err(r.error(format!("{} bytes after the batch", bytes.len() - r.at)));
    }
    Ok(batch)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    rows: Rows,
}

/// A value as it lies in the bytes.
enum Borrowed<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    /// A list's head: its elements follow.
    List(usize),
    /// A struct's head: its fields (name, value) follow.
    Struct(usize),
}

/// How deep lists and structs may nest in a value (PostgreSQL allows 6 array
/// dimensions; composites nest deeper, but not without end).
const MAX_DEPTH: u8 = 32;

/// A MessagePack value's head: what it is and, for strings, binaries and collections,
/// its length.
enum Head {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(usize),
    Bin(usize),
    Array(usize),
    Map(usize),
    Ext(usize),
}

impl Head {
    fn describe(&self) -> &'static str {
        match self {
            Head::Nil => "nil",
            Head::Bool(_) => "a bool",
            Head::Uint(_) | Head::Int(_) => "an integer",
            Head::Float(_) => "a float",
            Head::Str(_) => "a string",
            Head::Bin(_) => "binary",
            Head::Array(_) => "an array",
            Head::Map(_) => "a map",
            Head::Ext(_) => "an extension",
        }
    }
}

impl<'a> Reader<'a> {
    fn error(&self, message: impl std::fmt::Display) -> DecodeError {
        DecodeError(format!("{message} (at byte {})", self.at))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.error("the batch ends early"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn len32(&mut self, bytes: usize) -> Result<usize, DecodeError> {
        Ok(match bytes {
            1 => self.be::<1>()?[0] as usize,
            2 => u16::from_be_bytes(self.be()?) as usize,
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }

    fn head(&mut self) -> Result<Head, DecodeError> {
        let marker = self.be::<1>()?[0];
        Ok(match marker {
            0x00..=0x7f => Head::Uint(marker as u64),
            0x80..=0x8f => Head::Map((marker & 0x0f) as usize),
            0x90..=0x9f => Head::Array((marker & 0x0f) as usize),
            0xa0..=0xbf => Head::Str((marker & 0x1f) as usize),
            0xc0 => Head::Nil,
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => Head::Bin(self.len32(1)?),
            0xc5 => Head::Bin(self.len32(2)?),
            0xc6 => Head::Bin(self.len32(4)?),
            0xc7 => Head::Ext(self.len32(1)? + 1),
            0xc8 => Head::Ext(self.len32(2)? + 1),
            0xc9 => Head::Ext(self.len32(4)? + 1),
            0xca => Head::Float(f32::from_be_bytes(self.be()?) as f64),
            0xcb => Head::Float(f64::from_be_bytes(self.be()?)),
            0xcc => Head::Uint(self.be::<1>()?[0] as u64),
            0xcd => Head::Uint(u16::from_be_bytes(self.be()?) as u64),
            0xce => Head::Uint(u32::from_be_bytes(self.be()?) as u64),
            0xcf => Head::Uint(u64::from_be_bytes(self.be()?)),
            0xd0 => Head::Int(self.be::<1>()?[0] as i8 as i64),
            0xd1 => Head::Int(i16::from_be_bytes(self.be()?) as i64),
            0xd2 => Head::Int(i32::from_be_bytes(self.be()?) as i64),
            0xd3 => Head::Int(i64::from_be_bytes(self.be()?)),
            0xd4 => Head::Ext(2),
            0xd5 => Head::Ext(3),
            0xd6 => Head::Ext(5),
            0xd7 => Head::Ext(9),
            0xd8 => Head::Ext(17),
            0xd9 => Head::Str(self.len32(1)?),
            0xda => Head::Str(self.len32(2)?),
            0xdb => Head::Str(self.len32(4)?),
            0xdc => Head::Array(self.len32(2)?),
            0xdd => Head::Array(self.len32(4)?),
            0xde => Head::Map(self.len32(2)?),
            0xdf => Head::Map(self.len32(4)?),
            0xe0..=0xff => Head::Int(marker as i8 as i64),
            0xc1 => return Err(self.error("0xc1 is not a MessagePack marker")),
        })
    }

    /// Skips one value (an unknown field's).
    fn skip(&mut self) -> Result<(), DecodeError> {
        let mut pending = 1usize;
        while pending > 0 {
            pending -= 1;
            match self.head()? {
                Head::Str(n) | Head::Bin(n) | Head::Ext(n) => {
                    self.take(n)?;
                }
                Head::Array(n) => pending = pending.saturating_add(n),
                Head::Map(n) => pending = pending.saturating_add(n.saturating_mul(2)),
                _ => {}
            }
        }
        Ok(())
    }

    fn str(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        match self.head()? {
            Head::Str(n) => {
                let bytes = self.take(n)?;
                std::str::from_utf8(bytes).map_err(|e| self.error(format!("{what}: {e}")))
            }
            other => Err(self.error(format!(
                "{what}: expected a string, got {}",
                other.describe()
            ))),
        }
    }

    /// A field name or another string matched against known ones: its bytes, unchecked
    /// (an invalid one matches nothing).
    fn key(&mut self, what: &str) -> Result<&'a [u8], DecodeError> {
        match self.head()? {
            Head::Str(n) => self.take(n),
            other => Err(self.error(format!(
                "{what}: expected a string, got {}",
                other.describe()
            ))),
        }
    }

    fn map(&mut self, what: &str) -> Result<usize, DecodeError> {
        match self.head()? {
            Head::Map(n) => Ok(n),
            other => Err(self.error(format!("{what}: expected a map, got {}", other.describe()))),
        }
    }

    /// An array's length; its elements follow. Capacity is bounded by the bytes left
    /// (each element takes at least one), so a corrupt length cannot allocate much.
    fn array(&mut self, what: &str) -> Result<usize, DecodeError> {
        match self.head()? {
            Head::Array(n) if n <= self.bytes.len() - self.at => Ok(n),
            Head::Array(_) => Err(self.error("the batch ends early")),
            other => Err(self.error(format!(
                "{what}: expected an array, got {}",
                other.describe()
            ))),
        }
    }

    fn integer<T: TryFrom<i128>>(&mut self, what: &str) -> Result<T, DecodeError> {
        let n: i128 = match self.head()? {
            Head::Uint(n) => n as i128,
            Head::Int(n) => n as i128,
            other => {
                return Err(self.error(format!(
                    "{what}: expected an integer, got {}",
                    other.describe()
                )));
            }
        };
        T::try_from(n).map_err(|_| self.error(format!("{what}: {n} is out of range")))
    }

    fn bool(&mut self, what: &str) -> Result<bool, DecodeError> {
        match self.head()? {
            Head::Bool(b) => Ok(b),
            other => Err(self.error(format!("{what}: expected a bool, got {}", other.describe()))),
        }
    }

    /// Nil, or what `read` reads.
    fn nil_or<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if self.bytes.get(self.at) == Some(&0xc0) {
            self.at += 1;
            return Ok(None);
        }
        read(self).map(Some)
    }

    /// The batch and how many events it holds (in [`Rows::Check`] its `events` stay
    /// empty); every event's relation index is checked.
    fn batch(&mut self) -> Result<(Batch, usize), DecodeError> {
        let (mut v, mut relations, mut events, mut committed) = (None, None, None, 0);
        let (mut count, mut highest) = (0, None::<(usize, u32)>);
        for _ in 0..self.map("batch")? {
            match self.key("a batch field")? {
                b"v" => v = Some(self.integer("v")?),
                b"relations" => {
                    let n = self.array("relations")?;
                    let mut rels = Vec::with_capacity(n);
                    for _ in 0..n {
                        rels.push(self.relation()?);
                    }
                    relations = Some(rels);
                }
                b"events" => {
                    count = self.array("events")?;
                    let keep = self.rows == Rows::Keep;
                    let mut evs = Vec::with_capacity(if keep { count } else { 0 });
                    for i in 0..count {
                        let event = self.event()?;
                        if highest.is_none_or(|(_, rel)| event.rel > rel) {
                            highest = Some((i, event.rel));
                        }
                        if keep {
                            evs.push(event);
                        }
                    }
                    events = Some(evs);
                }
                b"committed" => committed = self.integer("committed")?,
                _ => self.skip()?,
            }
        }
        let batch = Batch {
            v: v.ok_or_else(|| missing("v"))?,
            relations: relations.ok_or_else(|| missing("relations"))?,
            events: events.ok_or_else(|| missing("events"))?,
            committed,
        };
        if let Some((i, rel)) = highest
            && rel as usize >= batch.relations.len()
        {
            return Err(DecodeError(format!(
                "event {i} refers to relation {rel} but the batch has {}",
                batch.relations.len()
            )));
        }
        Ok((batch, count))
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let (mut id, mut schema, mut table, mut version, mut columns) =
            (None, None, None, None, None);
        for _ in 0..self.map("relation")? {
            match self.key("a relation field")? {
                b"id" => id = Some(self.integer("relation id")?),
                b"schema" => schema = Some(self.str("schema")?.to_owned()),
                b"table" => table = Some(self.str("table")?.to_owned()),
                b"version" => version = Some(self.integer("version")?),
                b"columns" => {
                    let n = self.array("columns")?;
                    let mut cols = Vec::with_capacity(n);
                    for _ in 0..n {
                        cols.push(self.column()?);
                    }
                    columns = Some(cols);
                }
                _ => self.skip()?,
            }
        }
        Ok(Relation {
            id: id.ok_or_else(|| missing("id"))?,
            schema: schema.ok_or_else(|| missing("schema"))?,
            table: table.ok_or_else(|| missing("table"))?,
            version: version.ok_or_else(|| missing("version"))?,
            columns: columns.ok_or_else(|| missing("columns"))?,
        })
    }

    fn column(&mut self) -> Result<Column, DecodeError> {
        let (mut name, mut type_oid, mut type_name, mut typmod, mut key) =
            (None, None, None, None, None);
        for _ in 0..self.map("column")? {
            match self.key("a column field")? {
                b"name" => name = Some(self.str("column name")?.to_owned()),
                b"type_oid" => type_oid = Some(self.integer("type_oid")?),
                b"type_name" => type_name = Some(self.str("type_name")?.to_owned()),
                b"typmod" => typmod = Some(self.integer("typmod")?),
                b"key" => key = Some(self.bool("key")?),
                _ => self.skip()?,
            }
        }
        Ok(Column {
            name: name.ok_or_else(|| missing("name"))?,
            type_oid: type_oid.ok_or_else(|| missing("type_oid"))?,
            type_name: type_name.ok_or_else(|| missing("type_name"))?,
            typmod: typmod.ok_or_else(|| missing("typmod"))?,
            key: key.ok_or_else(|| missing("key"))?,
        })
    }

    fn event(&mut self) -> Result<Event, DecodeError> {
        let (mut op, mut rel, mut commit_lsn, mut seq, mut xid, mut commit_ts) =
            (None, None, None, None, None, None);
        let (mut before, mut after, mut unchanged) = (None, None, Vec::new());
        for _ in 0..self.map("event")? {
            match self.key("an event field")? {
                b"op" => {
                    op = Some(match self.key("op")? {
                        b"r" => Op::Read,
                        b"c" => Op::Insert,
                        b"u" => Op::Update,
                        b"d" => Op::Delete,
                        b"t" => Op::Truncate,
                        other => {
                            return Err(self.error(format!(
                                "unknown op `{}`, expected one of `r`, `c`, `u`, `d`, `t`",
                                String::from_utf8_lossy(other)
                            )));
                        }
                    })
                }
                b"rel" => rel = Some(self.integer("rel")?),
                b"commit_lsn" => commit_lsn = Some(self.integer("commit_lsn")?),
                b"seq" => seq = Some(self.integer("seq")?),
                b"xid" => xid = Some(self.integer("xid")?),
                b"commit_ts" => commit_ts = Some(self.integer("commit_ts")?),
                b"before" => before = self.nil_or(Self::row)?.flatten(),
                b"after" => after = self.nil_or(Self::row)?.flatten(),
                b"unchanged" => {
                    unchanged = self
                        .nil_or(|r| {
                            let n = r.array("unchanged")?;
                            (0..n).map(|_| r.integer("unchanged")).collect()
                        })?
                        .unwrap_or_default()
                }
                _ => self.skip()?,
            }
        }
        Ok(Event {
            op: op.ok_or_else(|| missing("op"))?,
            rel: rel.ok_or_else(|| missing("rel"))?,
            commit_lsn: commit_lsn.ok_or_else(|| missing("commit_lsn"))?,
            seq: seq.ok_or_else(|| missing("seq"))?,
            xid: xid.ok_or_else(|| missing("xid"))?,
            commit_ts: commit_ts.ok_or_else(|| missing("commit_ts"))?,
            before,
            after,
            unchanged,
        })
    }

    /// A row's values; none (but checked) in [`Rows::Check`].
    fn row(&mut self) -> Result<Option<Vec<Value>>, DecodeError> {
        let n = self.array("a row")?;
        if self.rows == Rows::Check {
            for _ in 0..n {
                let head = self.value()?;
                self.check(head, 0)?;
            }
            return Ok(None);
        }
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let head = self.value()?;
            values.push(self.owned(head, 0)?);
        }
        Ok(Some(values))
    }

    /// The value whose head is `head`, owned.
    fn owned(&mut self, head: Borrowed<'a>, depth: u8) -> Result<Value, DecodeError> {
        Ok(match head {
            Borrowed::Null => Value::Null,
            Borrowed::Bool(b) => Value::Bool(b),
            Borrowed::Int(n) => Value::Int(n),
            Borrowed::Float(f) => Value::Float(f),
            Borrowed::Text(s) => Value::Text(s.to_owned()),
            Borrowed::Bytes(b) => Value::Bytes(b.to_vec()),
            Borrowed::List(n) => {
                self.deeper(depth)?;
                let mut values = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let head = self.value()?;
                    values.push(self.owned(head, depth + 1)?);
                }
                Value::List(values)
            }
            Borrowed::Struct(n) => {
                self.deeper(depth)?;
                let mut fields = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let name = self.str("a struct's field name")?.to_owned();
                    let head = self.value()?;
                    fields.push((name, self.owned(head, depth + 1)?));
                }
                Value::Struct(fields)
            }
        })
    }

    /// Checks the rest of the value whose head is `head`.
    fn check(&mut self, head: Borrowed<'a>, depth: u8) -> Result<(), DecodeError> {
        match head {
            Borrowed::List(n) => {
                self.deeper(depth)?;
                for _ in 0..n {
                    let head = self.value()?;
                    self.check(head, depth + 1)?;
                }
            }
            Borrowed::Struct(n) => {
                self.deeper(depth)?;
                for _ in 0..n {
                    self.str("a struct's field name")?;
                    let head = self.value()?;
                    self.check(head, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn deeper(&self, depth: u8) -> Result<(), DecodeError> {
        match depth < MAX_DEPTH {
            true => Ok(()),
            false => Err(self.error(format!("a value nests deeper than {MAX_DEPTH} levels"))),
        }
    }

    fn value(&mut self) -> Result<Borrowed<'a>, DecodeError> {
        Ok(match self.head()? {
            Head::Nil => Borrowed::Null,
            Head::Bool(b) => Borrowed::Bool(b),
            Head::Uint(n) => Borrowed::Int(
                i64::try_from(n)
                    .map_err(|_| self.error(format!("integer {n} does not fit in i64")))?,
            ),
            Head::Int(n) => Borrowed::Int(n),
            Head::Float(f) => Borrowed::Float(f),
            Head::Str(n) => {
                let bytes = self.take(n)?;
                Borrowed::Text(
                    std::str::from_utf8(bytes).map_err(|e| self.error(format!("a value: {e}")))?,
                )
            }
            Head::Bin(n) => Borrowed::Bytes(self.take(n)?),
            Head::Array(n) => Borrowed::List(n),
            Head::Map(n) => Borrowed::Struct(n),
            other => {
                return Err(self.error(format!(
                    "a value: expected nil, bool, int, float, str, bin, array or map, got {}",
                    other.describe()
                )));
            }
        })
    }
}

fn missing(field: &str) -> DecodeError {
    DecodeError(format!("missing field `{field}`"))
}
