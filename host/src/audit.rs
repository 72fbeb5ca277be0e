//! `weir audit`: walks the evidence ledger's hash chain, re-hashes every file its records
//! name, and reports a broken link, a missing record, a missing, altered or extra file, or
//! a ledger that ends before a sink's checkpoint. Reads only.

use crate::checkpoint::CheckpointStore;
use crate::config::{PipelineConfig, SinkConfig};
use crate::ledger::{Ledger, Record, sha256_hex};
use crate::lsn::Lsn;
use crate::sink::sink_name;
use crate::storage::{StorageError, object_store_for};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::{BTreeMap, HashSet};

/// Why an audit could not be done (what it finds is an [`AuditReport`]).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One thing the audit found wrong.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// `corrupt-record`, `missing-record`, `broken-link`, `missing-file`,
    /// `altered-file`, `extra-file` or `ledger-behind-checkpoint`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub message: String,
}

/// What the audit checked and found: the evidence bundle of `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditReport {
    pub ledger: String,
    pub from: Option<Lsn>,
    pub to: Option<Lsn>,
    /// Records in the chain.
    pub chain_length: u64,
    /// The records whose LSN range meets `from..=to`, whose files were re-hashed.
    pub records: Vec<Record>,
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// Parquet files older than the ledger (written before it began): not checked.
    pub files_before_ledger: u64,
    pub problems: Vec<Problem>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(
        &mut self,
        kind: &'static str,
        record: Option<u64>,
        path: Option<&str>,
        message: String,
    ) {
        self.problems.push(Problem {
            kind,
            record,
            path: path.map(str::to_owned),
            message,
        });
    }
}

/// Audits the ledger of `config`'s pipeline; records outside `from..=to` are walked but
/// their files not re-hashed.
pub async fn audit(
    config: &PipelineConfig,
    from: Option<Lsn>,
    to: Option<Lsn>,
) -> Result<AuditReport, AuditError> {
    let Some(url) = config.state_url() else {
        return Err(AuditError::Usage(
            "the pipeline keeps no ledger: it has no parquet or iceberg sink and no [state] url"
                .into(),
        ));
    };
    if !config.keeps_ledger() {
        return Err(AuditError::Usage(
            "the pipeline keeps no ledger ([state] ledger = false): there is nothing to audit"
                .into(),
        ));
    }
    let slot = &config.source.slot;
    let ledger = Ledger::open(url, slot).await?;
    let paths = ledger.paths().await?;
    if paths.is_empty() {
        return Err(AuditError::Usage(format!(
            "no ledger records under {url}/_weir/{slot}/ledger: the pipeline has not committed anything since it began keeping one"
        )));
    }
    let mut report = AuditReport {
        ledger: format!("{url}/_weir/{slot}/ledger"),
        from,
        to,
        chain_length: 0,
        records: Vec::new(),
        files_checked: 0,
        bytes_checked: 0,
        files_before_ledger: 0,
        problems: Vec::new(),
    };
    let chain = walk(&ledger, &paths, &mut report).await?;
    for record in &chain {
        let in_range =
            from.is_none_or(|f| record.end_lsn > f) && to.is_none_or(|t| record.commit_lsn <= t);
        if in_range {
            check_files(config, record, &mut report).await?;
            report.records.push(record.clone());
        }
    }
    for (i, sink) in config.sinks.iter().enumerate() {
        let records: Vec<&Record> = chain.iter().filter(|r| r.sink == i).collect();
        match sink {
            SinkConfig::Parquet(c) => {
                check_parquet_tail(&c.url, slot, i, sink, &records, &mut report).await?
            }
            SinkConfig::Iceberg(_) => check_iceberg_tail(sink, slot, &records, &mut report).await,
            _ => {}
        }
    }
    Ok(report)
}

/// Reads every record in order, checking sequence numbers and hash links.
async fn walk(
    ledger: &Ledger,
    paths: &[Path],
    report: &mut AuditReport,
) -> Result<Vec<Record>, AuditError> {
    let mut chain = Vec::new();
    let mut prev: Option<(u64, String)> = None;
    for path in paths {
        let bytes = ledger.read(path).await?;
        let record = match Ledger::parse(path, &bytes) {
            Ok(r) => r,
            Err(e) => {
                report.problem("corrupt-record", None, Some(path.as_ref()), e.to_string());
                prev = None;
                continue;
            }
        };
        let expected = prev.as_ref().map_or(1, |(s, _)| s + 1);
        if record.seq > expected {
            report.problem(
                "missing-record",
                Some(expected),
                None,
                format!(
                    "records {expected} to {} are missing from the ledger",
                    record.seq - 1
                ),
            );
        } else if let Some((seq, hash)) = &prev
            && record.prev.as_ref() != Some(hash)
        {
            report.problem(
                "broken-link",
                Some(record.seq),
                Some(path.as_ref()),
                format!(
                    "record {} does not name record {seq}'s hash: one of them was altered",
                    record.seq
                ),
            );
        }
        prev = Some((record.seq, sha256_hex(&bytes)));
        report.chain_length += 1;
        chain.push(record);
    }
    Ok(chain)
}

/// Re-hashes the files a record names.
async fn check_files(
    config: &PipelineConfig,
    record: &Record,
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let parquet_store = match config.sinks.get(record.sink) {
        Some(SinkConfig::Parquet(c)) => Some(object_store_for(&c.url)?.0),
        _ => None,
    };
    for file in &record.files {
        let (store, path) = match &parquet_store {
            Some(store) => (store.clone(), Path::from(file.path.as_str())),
            None => object_store_for(&file.path)?,
        };
        let bytes = match store.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(StorageError::store("reading", &path))?,
            Err(object_store::Error::NotFound { .. }) => {
                report.problem(
                    "missing-file",
                    Some(record.seq),
                    Some(&file.path),
                    format!("{} (record {}) is gone", file.path, record.seq),
                );
                continue;
            }
            Err(e) => return Err(StorageError::store("reading", &path)(e).into()),
        };
        report.files_checked += 1;
        report.bytes_checked += bytes.len() as u64;
        let sha = sha256_hex(&bytes);
        if bytes.len() as u64 != file.size || sha != file.sha256 {
            report.problem(
                "altered-file",
                Some(record.seq),
                Some(&file.path),
                format!(
                    "{} (record {}) was altered: {} bytes, sha256 {sha}; recorded {} bytes, sha256 {}",
                    file.path,
                    record.seq,
                    bytes.len(),
                    file.size,
                    file.sha256
                ),
            );
        }
    }
    Ok(())
}

/// The flush sequence in a Parquet data file's name (`part-<seq>-<n>-<slot>.parquet`).
fn flush_seq(path: &Path) -> Option<u64> {
    path.filename()?
        .strip_prefix("part-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// A Parquet sink: its checkpoint is its last record's flush, and every data file of a
/// recorded flush is named by a record.
async fn check_parquet_tail(
    url: &str,
    slot: &str,
    index: usize,
    sink: &SinkConfig,
    records: &[&Record],
    report: &mut AuditReport,
) -> Result<(), AuditError> {
    let (store, base) = object_store_for(url)?;
    let checkpoint = CheckpointStore::new(store.clone(), &base, slot)
        .read()
        .await?;
    let Some(checkpoint) = checkpoint else {
        return Ok(());
    };
    let first = records.iter().filter_map(|r| r.flush).min();
    let last = records.iter().filter_map(|r| r.flush).max();
    if let Some(last) = last
        && checkpoint.seq > last
    {
        report.problem(
            "ledger-behind-checkpoint",
            None,
            None,
            format!(
                "{} (sink {index}) is checkpointed at flush {} but the ledger's last record of it is flush {last}: records were removed",
                sink_name(sink),
                checkpoint.seq
            ),
        );
    }
    let recorded: HashSet<&str> = records
        .iter()
        .flat_map(|r| r.files.iter().map(|f| f.path.as_str()))
        .collect();
    for path in data_files(store.as_ref(), &base).await? {
        let seq = flush_seq(&path);
        if seq.is_some_and(|s| s > checkpoint.seq) || recorded.contains(path.as_ref()) {
            continue;
        }
        if seq.is_some_and(|s| first.is_none_or(|f| s < f)) {
            report.files_before_ledger += 1;
            continue;
        }
        report.problem(
            "extra-file",
            None,
            Some(path.as_ref()),
            format!(
                "{path} is in the output of {} but no ledger record names it",
                sink_name(sink)
            ),
        );
    }
    Ok(())
}

/// Every Parquet file under `base`, weir's own state left out.
async fn data_files(store: &dyn ObjectStore, base: &Path) -> Result<Vec<Path>, AuditError> {
    let state = base.clone().join("_weir");
    let mut files: Vec<Path> = store
        .list(Some(base))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(StorageError::store("listing", base))?;
    files.retain(|p| p.as_ref().ends_with(".parquet") && !p.prefix_matches(&state));
    files.sort();
    Ok(files)
}

/// An Iceberg sink: each table's last weir commit is its last record's.
async fn check_iceberg_tail(
    sink: &SinkConfig,
    slot: &str,
    records: &[&Record],
    report: &mut AuditReport,
) {
    let SinkConfig::Iceberg(c) = sink else {
        return;
    };
    let Ok(Some(catalog)) = crate::sink::iceberg::connect_existing(c).await else {
        return;
    };
    let mut last: BTreeMap<&str, Lsn> = BTreeMap::new();
    for r in records {
        if let Some(t) = &r.table {
            let e = last.entry(t.as_str()).or_insert(r.commit_lsn);
            *e = (*e).max(r.commit_lsn);
        }
    }
    for (table, recorded) in last {
        let ident = crate::sink::iceberg::named_table(c, table);
        let Ok(t) = catalog.load_table(&ident).await else {
            continue;
        };
        if let Some(p) = crate::sink::iceberg::committed_position(&t, slot)
            && p.commit_lsn > recorded
        {
            report.problem(
                "ledger-behind-checkpoint",
                None,
                None,
                format!(
                    "{table} in {} is committed up to {} but the ledger's last record of it ends at {recorded}: records were removed",
                    sink_name(sink),
                    p.commit_lsn
                ),
            );
        }
    }
}
