//! One table's two sides, spread by key hash over bucket files on local disk, then
//! compared bucket by bucket: digests first, rows only for a bucket that differs. Memory
//! holds one bucket at a time.
//!
//! The source side is a row per key (key, row hash). The output side of a changelog is
//! every change before the verify position (key, position, op, the columns an update
//! left unchanged, column hashes), folded per key in source order into the state it
//! leaves, as the README's rebuild query does: unchanged TOAST values carried forward,
//! a delete or a later truncate removing the row.

use super::digest::{Layout, entry_digest, row_hash};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Keys named per kind of difference in the report.
pub const EXAMPLES: usize = 5;

/// A count and a few of the keys it counts.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Tally {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Tally {
    fn add(&mut self, layout: &Layout, key: &[u8]) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(layout.key_text(key));
        }
    }
}

/// What comparing one table found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Comparison {
    pub source_rows: u64,
    pub output_rows: u64,
    pub matching: u64,
    pub missing: Tally,
    pub extra: Tally,
    pub different: Tally,
    /// Changes the output holds twice (the same key at the same position).
    pub duplicated: Tally,
    /// Keys a current-state output (a mirror table) holds a newer row of than the
    /// verify position: not compared.
    pub newer: u64,
    /// Buckets whose rows had to be compared one by one.
    pub buckets_differing: usize,
}

impl Comparison {
    pub fn matches(&self) -> bool {
        self.missing.count == 0
            && self.extra.count == 0
            && self.different.count == 0
            && self.duplicated.count == 0
    }
}

/// An operation of a change, as the changelog's `_cdc_op` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// A row as a whole: snapshot read or insert.
    Row,
    Update,
    Delete,
    /// A current-state row written after the verify position: the key is not compared.
    Newer,
}

impl ChangeOp {
    fn code(self) -> u8 {
        match self {
            ChangeOp::Row => 0,
            ChangeOp::Update => 1,
            ChangeOp::Delete => 2,
            ChangeOp::Newer => 3,
        }
    }
    fn from_code(c: u8) -> ChangeOp {
        match c {
            1 => ChangeOp::Update,
            2 => ChangeOp::Delete,
            3 => ChangeOp::Newer,
            _ => ChangeOp::Row,
        }
    }
}

/// One change of the output, as spilled.
struct Change {
    key: Vec<u8>,
    pos: (u64, u32),
    op: ChangeOp,
    unchanged: Vec<u16>,
    columns: Vec<u128>,
}

/// Bucket files of both sides of one table.
pub struct Buckets {
    dir: PathBuf,
    count: usize,
    width: usize,
    source: Vec<BufWriter<File>>,
    output: Vec<BufWriter<File>>,
    source_digest: Vec<(u64, u128)>,
    /// Positions of the truncates the output holds before the verify position.
    truncates: Vec<(u64, u32)>,
    pub comparison: Comparison,
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

impl Buckets {
    /// `count` buckets per side in `dir` (which must exist), for rows of `width` columns.
    pub fn create(dir: &Path, count: usize, width: usize) -> Result<Buckets, String> {
        let open = |side: &str, i: usize| {
            let path = dir.join(format!("{side}-{i}"));
            File::create(&path)
                .map(|f| BufWriter::with_capacity(16 << 10, f))
                .map_err(|e| io_err(&path, e))
        };
        Ok(Buckets {
            dir: dir.to_path_buf(),
            count,
            width,
            source: (0..count)
                .map(|i| open("source", i))
                .collect::<Result<_, _>>()?,
            output: (0..count)
                .map(|i| open("output", i))
                .collect::<Result<_, _>>()?,
            source_digest: vec![(0, 0); count],
            truncates: Vec::new(),
            comparison: Comparison::default(),
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// A source row in bucket `b`.
    pub fn add_source(&mut self, b: usize, key: &[u8], columns: &[u128]) -> Result<(), String> {
        let row = row_hash(columns);
        let (n, digest) = &mut self.source_digest[b];
        *n += 1;
        *digest = digest.wrapping_add(entry_digest(key, row));
        self.comparison.source_rows += 1;
        let w = &mut self.source[b];
        write_key(w, key)
            .and_then(|_| w.write_all(&row.to_le_bytes()))
            .map_err(|e| e.to_string())
    }

    /// An output change in bucket `b`.
    pub fn add_change(
        &mut self,
        b: usize,
        key: &[u8],
        pos: (u64, u32),
        op: ChangeOp,
        unchanged: &[u16],
        columns: &[u128],
    ) -> Result<(), String> {
        let w = &mut self.output[b];
        let mut write = || -> std::io::Result<()> {
            write_key(w, key)?;
            w.write_all(&pos.0.to_le_bytes())?;
            w.write_all(&pos.1.to_le_bytes())?;
            w.write_all(&[op.code()])?;
            w.write_all(&(unchanged.len() as u16).to_le_bytes())?;
            for u in unchanged {
                w.write_all(&u.to_le_bytes())?;
            }
            for c in columns {
                w.write_all(&c.to_le_bytes())?;
            }
            Ok(())
        };
        write().map_err(|e| e.to_string())
    }

    /// A truncate of the whole table at `pos`.
    pub fn add_truncate(&mut self, pos: (u64, u32)) {
        self.truncates.push(pos);
    }

    /// Compares the sides bucket by bucket; `progress` is told each bucket done.
    pub fn compare(
        mut self,
        layout: &Layout,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Comparison, String> {
        for w in self.source.iter_mut().chain(self.output.iter_mut()) {
            w.flush().map_err(|e| e.to_string())?;
        }
        self.truncates.sort_unstable();
        for b in 0..self.count {
            self.compare_bucket(b, layout)?;
            progress(b + 1, self.count);
        }
        Ok(self.comparison)
    }

    /// One bucket: its digest first, row by row only when that differs (or when the
    /// output holds keys newer than the verify position, which leave the comparison).
    fn compare_bucket(&mut self, b: usize, layout: &Layout) -> Result<(), String> {
        let changes = self.read_changes(b)?;
        let (state, newer) = fold(changes, &self.truncates, layout, &mut self.comparison);
        self.comparison.output_rows += state.len() as u64;
        let digest = state
            .iter()
            .fold(0u128, |d, (k, r)| d.wrapping_add(entry_digest(k, *r)));
        if newer.is_empty() && (state.len() as u64, digest) == self.source_digest[b] {
            self.comparison.matching += state.len() as u64;
            return Ok(());
        }
        let mut source = self.read_source(b)?;
        self.comparison.newer += newer.len() as u64;
        for key in &newer {
            source.remove(key);
        }
        let c = &self.comparison;
        let before = c.missing.count + c.extra.count + c.different.count;
        diff(source, state, layout, &mut self.comparison);
        let c = &self.comparison;
        if c.missing.count + c.extra.count + c.different.count > before {
            self.comparison.buckets_differing += 1;
        }
        Ok(())
    }

    fn read_source(&self, b: usize) -> Result<HashMap<Vec<u8>, u128>, String> {
        let path = self.dir.join(format!("source-{b}"));
        let mut r = BufReader::new(File::open(&path).map_err(|e| io_err(&path, e))?);
        let mut rows = HashMap::new();
        while let Some(key) = read_key(&mut r).map_err(|e| io_err(&path, e))? {
            let row = read_u128(&mut r).map_err(|e| io_err(&path, e))?;
            rows.insert(key, row);
        }
        Ok(rows)
    }

    fn read_changes(&self, b: usize) -> Result<Vec<Change>, String> {
        let path = self.dir.join(format!("output-{b}"));
        let mut r = BufReader::new(File::open(&path).map_err(|e| io_err(&path, e))?);
        let mut changes = Vec::new();
        let read = |r: &mut BufReader<File>| -> std::io::Result<Option<Change>> {
            let Some(key) = read_key(r)? else {
                return Ok(None);
            };
            let mut b8 = [0u8; 8];
            let mut b4 = [0u8; 4];
            let mut b2 = [0u8; 2];
            let mut b1 = [0u8; 1];
            r.read_exact(&mut b8)?;
            r.read_exact(&mut b4)?;
            r.read_exact(&mut b1)?;
            r.read_exact(&mut b2)?;
            let mut unchanged = Vec::with_capacity(u16::from_le_bytes(b2) as usize);
            for _ in 0..u16::from_le_bytes(b2) {
                r.read_exact(&mut b2)?;
                unchanged.push(u16::from_le_bytes(b2));
            }
            let columns = (0..self.width)
                .map(|_| read_u128(r))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(Some(Change {
                key,
                pos: (u64::from_le_bytes(b8), u32::from_le_bytes(b4)),
                op: ChangeOp::from_code(b1[0]),
                unchanged,
                columns,
            }))
        };
        while let Some(c) = read(&mut r).map_err(|e| io_err(&path, e))? {
            changes.push(c);
        }
        Ok(changes)
    }
}

/// The state a bucket's changes leave: (key, row hash) of each live row. Changes held
/// twice are counted.
fn fold(
    mut changes: Vec<Change>,
    truncates: &[(u64, u32)],
    layout: &Layout,
    comparison: &mut Comparison,
) -> (Vec<(Vec<u8>, u128)>, Vec<Vec<u8>>) {
    changes.sort_by(|a, b| a.key.cmp(&b.key).then(a.pos.cmp(&b.pos)));
    // Whether a truncate lies strictly between two positions.
    let truncated_between = |after: (u64, u32), before: (u64, u32)| {
        truncates.partition_point(|t| *t <= after) < truncates.partition_point(|t| *t < before)
    };
    let (mut state, mut newer) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < changes.len() {
        let key = &changes[i].key;
        let mut row: Option<Vec<u128>> = None;
        let mut last: Option<(u64, u32)> = None;
        let mut is_newer = false;
        while i < changes.len() && changes[i].key == *key {
            let c = &changes[i];
            if c.op == ChangeOp::Newer {
                is_newer = true;
                i += 1;
                continue;
            }
            if last == Some(c.pos) {
                comparison.duplicated.add(layout, &c.key);
                i += 1;
                continue;
            }
            if last.is_some_and(|l| truncated_between(l, c.pos)) {
                row = None;
            }
            row = match c.op {
                ChangeOp::Row => Some(c.columns.clone()),
                ChangeOp::Delete | ChangeOp::Newer => None,
                ChangeOp::Update => {
                    let mut new = c.columns.clone();
                    for &u in &c.unchanged {
                        let u = u as usize;
                        new[u] = row.as_ref().map_or(layout.null_hash(u), |r| r[u]);
                    }
                    Some(new)
                }
            };
            last = Some(c.pos);
            i += 1;
        }
        let truncated_after = last.is_some_and(|l| truncated_between(l, (u64::MAX, u32::MAX)));
        if is_newer {
            newer.push(changes[i - 1].key.clone());
        } else if let Some(r) = row.filter(|_| !truncated_after) {
            state.push((changes[i - 1].key.clone(), row_hash(&r)));
        }
    }
    (state, newer)
}

/// Row-by-row differences of one bucket.
fn diff(
    mut source: HashMap<Vec<u8>, u128>,
    output: Vec<(Vec<u8>, u128)>,
    layout: &Layout,
    comparison: &mut Comparison,
) {
    for (key, row) in output {
        match source.remove(&key) {
            None => comparison.extra.add(layout, &key),
            Some(s) if s != row => comparison.different.add(layout, &key),
            Some(_) => comparison.matching += 1,
        }
    }
    let mut missing: Vec<Vec<u8>> = source.into_keys().collect();
    missing.sort();
    for key in missing {
        comparison.missing.add(layout, &key);
    }
}

fn write_key(w: &mut impl Write, key: &[u8]) -> std::io::Result<()> {
    w.write_all(&(key.len() as u32).to_le_bytes())?;
    w.write_all(key)
}

fn read_key(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut key = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut key)?;
    Ok(Some(key))
}

fn read_u128(r: &mut impl Read) -> std::io::Result<u128> {
    let mut b = [0u8; 16];
    r.read_exact(&mut b)?;
    Ok(u128::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::super::digest::test_layout as layout;
    use super::*;

    /// The canonical bytes of key `i`.
    fn key(i: u8) -> Vec<u8> {
        let l = layout();
        let columns: Vec<arrow::array::ArrayRef> = vec![
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![i as i64])),
            std::sync::Arc::new(arrow::array::StringArray::from(vec![None::<&str>])),
        ];
        l.hash(&columns).unwrap().keys.remove(0)
    }

    #[test]
    fn a_changelog_folds_to_the_source_and_planted_damage_is_named() {
        let l = layout();
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buckets::create(dir.path(), 1, 2).unwrap();
        // Source: 1 -> (1, b), 2 -> (2, x), 3 -> (3, z).
        for (k, v) in [(1u8, 11u128), (2, 21), (3, 31)] {
            b.add_source(0, &key(k), &[k as u128, v]).unwrap();
        }
        // Changelog: 4 inserted then truncated; 2 inserted; 3 inserted, deleted, inserted
        // again; 1 inserted, updated with v unchanged (TOAST), updated again.
        b.add_change(0, &key(1), (20, 0), ChangeOp::Row, &[], &[1, 10])
            .unwrap();
        b.add_change(0, &key(1), (21, 0), ChangeOp::Update, &[1], &[1, 0])
            .unwrap();
        b.add_change(0, &key(1), (22, 0), ChangeOp::Update, &[], &[1, 11])
            .unwrap();
        b.add_change(0, &key(4), (13, 0), ChangeOp::Row, &[], &[4, 41])
            .unwrap();
        b.add_truncate((14, 0));
        b.add_change(0, &key(2), (15, 0), ChangeOp::Row, &[], &[2, 21])
            .unwrap();
        b.add_change(0, &key(3), (16, 0), ChangeOp::Row, &[], &[3, 30])
            .unwrap();
        b.add_change(0, &key(3), (17, 0), ChangeOp::Delete, &[], &[3, 0])
            .unwrap();
        b.add_change(0, &key(3), (18, 0), ChangeOp::Row, &[], &[3, 31])
            .unwrap();
        let c = b.compare(&l, |_, _| {}).unwrap();
        assert!(c.matches(), "{c:?}");
        assert_eq!((c.source_rows, c.output_rows, c.matching), (3, 3, 3));

        // Damage: 1's last update lost, 2 doubled, 3's insert missing, 5 extra.
        let mut b = Buckets::create(dir.path(), 1, 2).unwrap();
        for (k, v) in [(1u8, 11u128), (2, 21), (3, 31)] {
            b.add_source(0, &key(k), &[k as u128, v]).unwrap();
        }
        b.add_change(0, &key(1), (10, 0), ChangeOp::Row, &[], &[1, 10])
            .unwrap();
        b.add_change(0, &key(2), (15, 0), ChangeOp::Row, &[], &[2, 21])
            .unwrap();
        b.add_change(0, &key(2), (15, 0), ChangeOp::Row, &[], &[2, 21])
            .unwrap();
        b.add_change(0, &key(5), (19, 0), ChangeOp::Row, &[], &[5, 51])
            .unwrap();
        let c = b.compare(&l, |_, _| {}).unwrap();
        assert_eq!(c.different.examples, ["id=1"]);
        assert_eq!(c.duplicated.examples, ["id=2"]);
        assert_eq!(c.missing.examples, ["id=3"]);
        assert_eq!(c.extra.examples, ["id=5"]);
        assert_eq!(c.buckets_differing, 1);
    }
}
