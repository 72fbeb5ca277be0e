//! Decoding of pgoutput logical replication messages (protocol version 1).
//!
//! The layouts follow PostgreSQL's "Logical Replication Message Formats". Decoding
//! borrows from the message bytes; nothing is copied until a value becomes an event.

use crate::lsn::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A pgoutput message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message {tag:?}: {what}")]
pub struct DecodeError {
    /// The message tag, as a character.
    pub tag: char,
    /// What was wrong.
    pub what: String,
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// Start of a transaction.
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    },
    /// End of a transaction.
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    /// The transaction came from another node (replication origin).
    Origin { commit_lsn: Lsn, name: &'a str },
    /// A table's description; sent before its first change and after it changes.
    Relation(RelationMessage<'a>),
    /// A non-built-in type's name.
    Type {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    /// A row inserted.
    Insert { rel: u32, new: Tuple<'a> },
    /// A row updated; `old` is present when the key changed or under REPLICA IDENTITY FULL.
    Update {
        rel: u32,
        old: Option<Tuple<'a>>,
        new: Tuple<'a>,
    },
    /// A row deleted; `old` holds the key (or the whole row under REPLICA IDENTITY FULL).
    Delete { rel: u32, old: Tuple<'a> },
    /// Tables truncated together.
    Truncate { options: u8, rels: Vec<u32> },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
}

/// A Relation message.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationMessage<'a> {
    pub id: u32,
    pub namespace: &'a str,
    pub name: &'a str,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn<'a>>,
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn<'a> {
    /// Part of the replica identity key.
    pub key: bool,
    pub name: &'a str,
    pub type_oid: u32,
    pub typmod: i32,
}

/// Row data: one datum per column.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuple<'a>(pub Vec<Datum<'a>>);

/// One column's value in a tuple.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Datum<'a> {
    Null,
    /// An unchanged TOAST value the server did not send.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

struct Reader<'a> {
    tag: char,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl Into<String>) -> DecodeError {
        DecodeError {
            tag: self.tag,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.err(format!("needs {n} more bytes, {} left", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64()? as u64))
    }

    /// A timestamp, converted from PostgreSQL's epoch to the Unix epoch.
    fn timestamp(&mut self) -> Result<i64, DecodeError> {
        Ok(self.i64()? + PG_EPOCH_OFFSET_MICROS)
    }

    fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("string without terminator"))?;
        let s =
            std::str::from_utf8(&self.buf[..end]).map_err(|_| self.err("string is not UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.i16()?;
        let mut cols = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            cols.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    Datum::Text(self.take(len as usize)?)
                }
                b'b' => {
                    let len = self.i32()?;
                    Datum::Binary(self.take(len as usize)?)
                }
                other => {
                    return Err(self.err(format!("unknown tuple datum kind {:?}", other as char)));
                }
            });
        }
        Ok(Tuple(cols))
    }

    fn expect(&mut self, wanted: &[u8]) -> Result<u8, DecodeError> {
        let b = self.u8()?;
        if wanted.contains(&b) {
            Ok(b)
        } else {
            Err(self.err(format!(
                "expected one of {:?}, got {:?}",
                String::from_utf8_lossy(wanted),
                b as char
            )))
        }
    }

    fn relation(&mut self) -> Result<Message<'a>, DecodeError> {
        let id = self.i32()? as u32;
        let namespace = self.cstr()?;
        let name = self.cstr()?;
        let replica_identity = self.u8()?;
        let n = self.i16()?;
        let mut columns = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let flags = self.u8()?;
            columns.push(RelationColumn {
                key: flags & 1 == 1,
                name: self.cstr()?,
                type_oid: self.i32()? as u32,
                typmod: self.i32()?,
            });
        }
        Ok(Message::Relation(RelationMessage {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        }))
    }

    fn insert(&mut self) -> Result<Message<'a>, DecodeError> {
        let rel = self.i32()? as u32;
        self.expect(b"N")?;
        Ok(Message::Insert {
            rel,
            new: self.tuple()?,
        })
    }

    /// The old row comes first, as the key (`K`) or the whole row (`O`), when sent.
    fn update(&mut self) -> Result<Message<'a>, DecodeError> {
        let rel = self.i32()? as u32;
        let old = match self.expect(b"KON")? {
            b'N' => None,
            _ => {
                let old = self.tuple()?;
                self.expect(b"N")?;
                Some(old)
            }
        };
        Ok(Message::Update {
            rel,
            old,
            new: self.tuple()?,
        })
    }

    fn delete(&mut self) -> Result<Message<'a>, DecodeError> {
        let rel = self.i32()? as u32;
        self.expect(b"KO")?;
        Ok(Message::Delete {
            rel,
            old: self.tuple()?,
        })
    }

    fn truncate(&mut self) -> Result<Message<'a>, DecodeError> {
        let n = self.i32()?;
        let options = self.u8()?;
        let rels = (0..n)
            .map(|_| self.i32().map(|v| v as u32))
            .collect::<Result<_, _>>()?;
        Ok(Message::Truncate { options, rels })
    }

    fn logical_message(&mut self) -> Result<Message<'a>, DecodeError> {
        let flags = self.u8()?;
        let lsn = self.lsn()?;
        let prefix = self.cstr()?;
        let len = self.i32()?;
        Ok(Message::Message {
            transactional: flags & 1 == 1,
            lsn,
            prefix,
            content: self.take(len as usize)?,
        })
    }
}

/// Decodes one pgoutput message.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (&tag, body) = bytes.split_first().ok_or(DecodeError {
        tag: '?',
        what: "empty message".into(),
    })?;
    let mut r = Reader {
        tag: tag as char,
        buf: body,
    };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_ts: r.timestamp()?,
            xid: r.i32()? as u32,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_ts: r.timestamp()?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.lsn()?,
            name: r.cstr()?,
        },
        b'R' => r.relation()?,
        b'Y' => Message::Type {
            oid: r.i32()? as u32,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => r.insert()?,
        b'U' => r.update()?,
        b'D' => r.delete()?,
        b'T' => r.truncate()?,
        b'M' => r.logical_message()?,
        other => {
            return Err(DecodeError {
                tag: other as char,
                what: "unknown message type".into(),
            });
        }
    };
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way the walsender writes them.
    #[derive(Default)]
    struct W(Vec<u8>);
    impl W {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let mut w = self.u8(b't').i32(v.len() as i32);
            w.0.extend(v.as_bytes());
            w
        }
    }

    #[test]
    fn begin_and_commit_convert_timestamps_to_unix_micros() {
        let b = W::default().u8(b'B').i64(0x100).i64(0).i32(7).0;
        assert_eq!(
            decode(&b).unwrap(),
            Message::Begin {
                final_lsn: Lsn(0x100),
                commit_ts: PG_EPOCH_OFFSET_MICROS,
                xid: 7
            }
        );
        let c = W::default().u8(b'C').u8(0).i64(0x100).i64(0x128).i64(5).0;
        assert_eq!(
            decode(&c).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x128),
                commit_ts: PG_EPOCH_OFFSET_MICROS + 5
            }
        );
    }

    #[test]
    fn relation_marks_key_columns() {
        let m = W::default()
            .u8(b'R')
            .i32(16384)
            .s("public")
            .s("orders")
            .u8(b'd')
            .i16(2);
        let m = m
            .u8(1)
            .s("id")
            .i32(20)
            .i32(-1)
            .u8(0)
            .s("note")
            .i32(1043)
            .i32(68)
            .0;
        let Message::Relation(rel) = decode(&m).unwrap() else {
            panic!()
        };
        assert_eq!(
            (rel.id, rel.namespace, rel.name, rel.replica_identity),
            (16384, "public", "orders", b'd')
        );
        assert_eq!(
            rel.columns[0],
            RelationColumn {
                key: true,
                name: "id",
                type_oid: 20,
                typmod: -1
            }
        );
        assert_eq!(
            rel.columns[1],
            RelationColumn {
                key: false,
                name: "note",
                type_oid: 1043,
                typmod: 68
            }
        );
    }

    #[test]
    fn tuples_carry_null_unchanged_text_and_binary() {
        let m = W::default()
            .u8(b'I')
            .i32(9)
            .u8(b'N')
            .i16(4)
            .u8(b'n')
            .u8(b'u')
            .text("42")
            .u8(b'b')
            .i32(1)
            .u8(0xff)
            .0;
        assert_eq!(
            decode(&m).unwrap(),
            Message::Insert {
                rel: 9,
                new: Tuple(vec![
                    Datum::Null,
                    Datum::Unchanged,
                    Datum::Text(b"42"),
                    Datum::Binary(&[0xff])
                ])
            }
        );
    }

    #[test]
    fn update_with_and_without_old_tuple() {
        let plain = W::default().u8(b'U').i32(1).u8(b'N').i16(1).text("a").0;
        assert_eq!(
            decode(&plain).unwrap(),
            Message::Update {
                rel: 1,
                old: None,
                new: Tuple(vec![Datum::Text(b"a")])
            }
        );
        let keyed = W::default()
            .u8(b'U')
            .i32(1)
            .u8(b'K')
            .i16(1)
            .text("old")
            .u8(b'N')
            .i16(1)
            .text("new")
            .0;
        assert_eq!(
            decode(&keyed).unwrap(),
            Message::Update {
                rel: 1,
                old: Some(Tuple(vec![Datum::Text(b"old")])),
                new: Tuple(vec![Datum::Text(b"new")])
            }
        );
    }

    #[test]
    fn delete_truncate_origin_type_and_message() {
        let d = W::default().u8(b'D').i32(3).u8(b'O').i16(1).text("x").0;
        assert_eq!(
            decode(&d).unwrap(),
            Message::Delete {
                rel: 3,
                old: Tuple(vec![Datum::Text(b"x")])
            }
        );
        let t = W::default().u8(b'T').i32(2).u8(1).i32(10).i32(11).0;
        assert_eq!(
            decode(&t).unwrap(),
            Message::Truncate {
                options: 1,
                rels: vec![10, 11]
            }
        );
        let o = W::default().u8(b'O').i64(5).s("node_a").0;
        assert_eq!(
            decode(&o).unwrap(),
            Message::Origin {
                commit_lsn: Lsn(5),
                name: "node_a"
            }
        );
        let y = W::default().u8(b'Y').i32(70000).s("public").s("mood").0;
        assert_eq!(
            decode(&y).unwrap(),
            Message::Type {
                oid: 70000,
                namespace: "public",
                name: "mood"
            }
        );
        let mut m = W::default().u8(b'M').u8(1).i64(9).s("app").i32(3);
        m.0.extend(b"abc");
        assert_eq!(
            decode(&m.0).unwrap(),
            Message::Message {
                transactional: true,
                lsn: Lsn(9),
                prefix: "app",
                content: b"abc"
            }
        );
    }

    #[test]
    fn truncated_and_unknown_messages_are_errors_not_panics() {
        assert!(decode(&[]).is_err());
        assert!(decode(b"B\x00\x01").is_err());
        assert!(
            decode(b"Z")
                .unwrap_err()
                .to_string()
                .contains("unknown message type")
        );
        let bad_len = W::default()
            .u8(b'I')
            .i32(9)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(1000)
            .0;
        assert!(
            decode(&bad_len)
                .unwrap_err()
                .to_string()
                .contains("more bytes")
        );
        let bad_kind = W::default().u8(b'I').i32(9).u8(b'X').0;
        assert!(decode(&bad_kind).is_err());
    }
}
