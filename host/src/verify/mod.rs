//! `weir verify`: the state a sink's output holds, compared row for row with the source's,
//! both as of one LSN, while the pipeline runs.
//!
//! A temporary slot exports a snapshot of the source at its consistent point `P`. verify
//! waits until each sink holds every transaction committed before `P`, reads the source
//! tables in that snapshot (through the pipeline's transforms, converted as the sinks
//! convert), rebuilds each output table's state from its changelog changes before `P`,
//! and compares the two by key in hash buckets on local disk: digests first, rows only
//! where a bucket differs. Nothing is written to the output; the pipeline's slot is read
//! (when the pipeline is stopped, to see whether it is behind) but never moved.

mod buckets;
mod digest;
mod output;
mod position;

pub use buckets::{Comparison, Tally};

use crate::config::{PipelineConfig, SinkConfig, TableName};
use crate::lsn::Lsn;
use crate::plugin::{Instance, Plugins, TransformChain, load_chain};
use crate::sink::rows::{ChangeRows, changelog_schema_in};
use crate::sink::sink_name;
use crate::source::snapshot::{SnapshotReader, table_relation};
use crate::source::{Control, SourceError, SourceInfo};
use arrow::array::{Array, AsArray, RecordBatch};
use buckets::{Buckets, ChangeOp};
use digest::{Layout, bucket};
use std::time::{Duration, Instant};
use weir_sdk::{Batch, Relation};

/// What to verify and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only these tables (default: every captured table).
    pub tables: Vec<TableName>,
    /// Only this sink, by its place in the file from 0 (default: every changelog sink).
    pub sink: Option<usize>,
    /// Compare this share of the keys, in percent (by key hash: the same keys each run).
    pub sample: f64,
    /// Columns left out of the comparison: `column` in every table or
    /// `schema.table.column`.
    pub ignore: Vec<String>,
    /// How long to wait for a sink to pass the verify position.
    pub timeout: Duration,
}

/// Why a verify could not be done (differences are a [`Report`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("exporting a snapshot of the source: {0}")]
    Snapshot(String),
    #[error("{sink}: cannot read it: {message}")]
    Output { sink: String, message: String },
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "the pipeline is stopped and {sink} is behind the verify position: it holds up to {held}, the source has {transactions} transaction(s) before {at} ({bytes} bytes of WAL) it has not written; run the pipeline, then verify again"
    )]
    Behind {
        sink: String,
        held: Lsn,
        at: Lsn,
        transactions: u64,
        bytes: u64,
    },
    #[error(
        "{sink} did not pass the verify position {at} within {}s (it holds up to {held}): is the pipeline running and keeping up? (wait longer with --timeout)", waited.as_secs()
    )]
    Lagging {
        sink: String,
        held: Lsn,
        at: Lsn,
        waited: Duration,
    },
    #[error("comparing: {0}")]
    Compare(String),
    #[error("{0}")]
    Transform(String),
}

/// One table of one sink, compared.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    pub sink: String,
    /// Columns compared, in order (after the transforms).
    pub compared: Vec<String>,
    pub ignored: Vec<String>,
    /// The transforms the source rows went through before the comparison.
    pub transformed_by: Vec<String>,
    pub sample_percent: f64,
    /// Why the table was not compared, if it was not.
    pub skipped: Option<String>,
    #[serde(flatten)]
    pub comparison: Comparison,
    pub seconds: f64,
}

impl TableReport {
    pub fn matches(&self) -> bool {
        self.skipped.is_some() || self.comparison.matches()
    }
}

/// What a verify found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The source snapshot's position: transactions committed before it are compared.
    pub at: Lsn,
    pub tables: Vec<TableReport>,
}

impl Report {
    pub fn matches(&self) -> bool {
        self.tables.iter().all(TableReport::matches)
    }
}

/// Rows read per batch from the source, and converted per record batch.
const CHUNK_ROWS: usize = 8192;

/// Verifies the outputs of `config` against its source.
pub async fn verify(config: &PipelineConfig, options: &Options) -> Result<Report, VerifyError> {
    let control = Control::connect(&config.source.url).await?;
    let info = control.describe(&config.source).await?;
    let tables = chosen_tables(&control, config, options).await?;
    let sinks = chosen_sinks(config, options)?;
    let mut chain = transforms(config).await?;
    let at = position::export(&control, &config.source, &info).await?;
    tracing::info!(at = %at.lsn, tables = tables.len(), sinks = sinks.len(), "Verifying the outputs against a snapshot of the source.");
    let mut reports = Vec::new();
    for table in &tables {
        let relation = table_relation(&control.client, &info, table).await?;
        let relation = transformed(chain.as_mut(), relation)?;
        let ignored = ignored_columns(&relation, table, &options.ignore)?;
        let layout = layout(&relation, &ignored)?;
        let template = TableReport {
            table: table.to_string(),
            sink: String::new(),
            compared: layout.as_ref().map_or(Vec::new(), |l| l.names.clone()),
            ignored,
            transformed_by: chain
                .as_ref()
                .map(|c| {
                    c.plugins()
                        .iter()
                        .map(|p| format!("{}#{}", p.label(), p.common().sha256))
                        .collect()
                })
                .unwrap_or_default(),
            sample_percent: options.sample,
            skipped: None,
            comparison: Comparison::default(),
            seconds: 0.0,
        };
        let Some(layout) = layout else {
            let why = "no primary key: verify compares rows by key".to_string();
            reports.extend(sinks.iter().map(|s| TableReport {
                sink: sink_name(s),
                skipped: Some(why.clone()),
                ..template.clone()
            }));
            continue;
        };
        let source = SourceSide {
            url: &config.source.url,
            snapshot: &at.snapshot,
            info: &info,
            at: at.lsn,
        };
        let run = TableRun {
            control: &control,
            config,
            options,
            table,
            layout: &layout,
        };
        let found = run.compare(&sinks, &source, chain.as_mut()).await?;
        for (sink, (comparison, seconds)) in sinks.iter().zip(found) {
            reports.push(TableReport {
                sink: sink_name(sink),
                comparison,
                seconds,
                ..template.clone()
            });
        }
    }
    Ok(Report {
        at: at.lsn,
        tables: reports,
    })
}

/// One table compared with every chosen sink.
struct TableRun<'a> {
    control: &'a Control,
    config: &'a PipelineConfig,
    options: &'a Options,
    table: &'a TableName,
    layout: &'a Layout,
}

impl TableRun<'_> {
    /// Waits for each sink to pass the position, reads the source once into every
    /// sink's buckets, then each sink's changes; returns each comparison and its time.
    async fn compare(
        &self,
        sinks: &[&SinkConfig],
        source: &SourceSide<'_>,
        chain: Option<&mut TransformChain>,
    ) -> Result<Vec<(Comparison, f64)>, VerifyError> {
        let started = Instant::now();
        let work = tempfile::Builder::new()
            .prefix("weir-verify-")
            .tempdir()
            .map_err(|e| VerifyError::Compare(format!("a work directory in $TMPDIR: {e}")))?;
        let count = bucket_count(self.control, self.table).await;
        let slot = &self.config.source.slot;
        let mut sides = Vec::new();
        for (i, sink) in sinks.iter().enumerate() {
            let held = async || Ok(output::open(sink, slot, self.table).await?.1);
            position::wait(
                self.control,
                &self.config.source,
                &sink_name(sink),
                held,
                source.at,
                self.options.timeout,
            )
            .await?;
            let (out, _) = output::open(sink, slot, self.table).await?;
            let dir = work.path().join(i.to_string());
            std::fs::create_dir(&dir).map_err(|e| VerifyError::Compare(e.to_string()))?;
            let buckets =
                Buckets::create(&dir, count, self.layout.width()).map_err(VerifyError::Compare)?;
            sides.push((buckets, out));
        }
        source
            .read(
                self.table,
                chain,
                self.layout,
                self.options.sample,
                &mut sides,
            )
            .await?;
        let mut found = Vec::new();
        for ((buckets, out), sink) in sides.into_iter().zip(sinks) {
            let comparison = compare_output(
                self.table,
                sink,
                out,
                buckets,
                self.layout,
                source.at,
                self.options.sample,
            )
            .await?;
            found.push((comparison, started.elapsed().as_secs_f64()));
        }
        Ok(found)
    }
}

/// The tables to verify: those named (each must be captured), else every captured one.
async fn chosen_tables(
    control: &Control,
    config: &PipelineConfig,
    options: &Options,
) -> Result<Vec<TableName>, VerifyError> {
    let captured = control.resolve_tables(&config.source.tables).await?.tables;
    if options.tables.is_empty() {
        return Ok(captured);
    }
    for t in &options.tables {
        if !captured.contains(t) {
            let names: Vec<String> = captured.iter().map(|c| c.to_string()).collect();
            return Err(VerifyError::Usage(format!(
                "table {t} is not captured by the pipeline (source.tables gives {})",
                names.join(", ")
            )));
        }
    }
    Ok(options.tables.clone())
}

/// The sinks to verify: the one named, else every changelog sink.
fn chosen_sinks<'a>(
    config: &'a PipelineConfig,
    options: &Options,
) -> Result<Vec<&'a SinkConfig>, VerifyError> {
    let readable = |s: &SinkConfig| {
        matches!(
            s,
            SinkConfig::Parquet(_) | SinkConfig::Iceberg(_) | SinkConfig::Delta(_)
        )
    };
    match options.sink {
        Some(n) => match config.sinks.get(n) {
            Some(s) if readable(s) => Ok(vec![s]),
            Some(s) => Err(VerifyError::Usage(format!(
                "sink {n} ({}) is not a changelog or mirror output: verify reads parquet, iceberg and delta sinks",
                sink_name(s)
            ))),
            None => Err(VerifyError::Usage(format!(
                "there is no sink {n}: the pipeline has {} (counted from 0 in file order)",
                config.sinks.len()
            ))),
        },
        None => {
            let sinks: Vec<&SinkConfig> = config.sinks.iter().filter(|s| readable(s)).collect();
            match sinks.is_empty() {
                true => Err(VerifyError::Usage(
                    "the pipeline has no sink verify can read (a parquet, iceberg or delta sink)"
                        .into(),
                )),
                false => Ok(sinks),
            }
        }
    }
}

/// The pipeline's transform chain, loaded as a run loads it.
async fn transforms(config: &PipelineConfig) -> Result<Option<TransformChain>, VerifyError> {
    if config.transforms.is_empty() {
        return Ok(None);
    }
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let plugins = Plugins::setup(&config).map_err(|e| e.to_string())?;
        load_chain(&config, &plugins).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| VerifyError::Transform(e.to_string()))?
    .map_err(VerifyError::Transform)
}

/// The relation as the transforms leave it (columns renamed, dropped or added).
fn transformed(
    chain: Option<&mut TransformChain>,
    relation: Relation,
) -> Result<Relation, VerifyError> {
    let Some(chain) = chain else {
        return Ok(relation);
    };
    let mut batch = Batch::default();
    batch.push_relation(relation.clone());
    let out = tokio::task::block_in_place(|| chain.apply(batch))
        .map_err(|e| VerifyError::Transform(e.to_string()))?;
    Ok(out.relations.into_iter().next().unwrap_or(relation))
}

/// The columns `ignore` names in this table; a key column cannot be left out.
fn ignored_columns(
    relation: &Relation,
    table: &TableName,
    ignore: &[String],
) -> Result<Vec<String>, VerifyError> {
    let mut out = Vec::new();
    for column in &relation.columns {
        let qualified = format!("{table}.{}", column.name);
        if ignore.iter().any(|i| *i == column.name || *i == qualified) {
            if column.key {
                return Err(VerifyError::Usage(format!(
                    "--ignore-column {}: a key column cannot be left out (rows are compared by key)",
                    column.name
                )));
            }
            out.push(column.name.clone());
        }
    }
    Ok(out)
}

/// The comparison's layout, or `None` for a table without a key.
fn layout(relation: &Relation, ignored: &[String]) -> Result<Option<Layout>, VerifyError> {
    // Arrays compared as lists: an output holding them as text is read into lists.
    let schema = changelog_schema_in(relation, true);
    let columns: Vec<arrow::datatypes::Field> = relation
        .columns
        .iter()
        .zip(schema.fields())
        .filter(|(c, _)| !ignored.contains(&c.name))
        .map(|(_, f)| f.as_ref().clone())
        .collect();
    let key: Vec<String> = relation
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.clone())
        .collect();
    if key.is_empty() {
        return Ok(None);
    }
    Layout::new(columns, &key)
        .map(Some)
        .map_err(|e| VerifyError::Compare(e.to_string()))
}

/// Buckets for about 20,000 rows each, from the planner's row estimate (4 to 256).
async fn bucket_count(control: &Control, table: &TableName) -> usize {
    let estimate = control
        .client
        .query_one(
            "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = $1::text::regclass",
            &[&crate::source::quote_table(table)],
        )
        .await
        .map(|r| r.get::<_, f64>(0))
        .unwrap_or(0.0);
    ((estimate / 20_000.0) as usize).clamp(4, 256)
}

/// The source side: the table in the exported snapshot.
struct SourceSide<'a> {
    url: &'a str,
    snapshot: &'a str,
    info: &'a SourceInfo,
    at: Lsn,
}

impl SourceSide<'_> {
    /// Reads the table, through the transforms, into every sink's buckets.
    async fn read(
        &self,
        table: &TableName,
        mut chain: Option<&mut TransformChain>,
        layout: &Layout,
        sample: f64,
        sides: &mut [(Buckets, output::Output)],
    ) -> Result<(), VerifyError> {
        let mut reader = SnapshotReader::begin(
            self.url,
            self.snapshot,
            vec![table.clone()],
            self.info.clone(),
            CHUNK_ROWS,
            self.at,
            1,
            None,
        )
        .await?;
        let (started, mut reported) = (Instant::now(), Instant::now());
        while let Some(source) = reader.next_batch().await? {
            let mut batch = source.batch;
            if batch.events.is_empty() {
                continue;
            }
            if let Some(chain) = chain.as_deref_mut() {
                batch = tokio::task::block_in_place(|| chain.apply(batch))
                    .map_err(|e| VerifyError::Transform(e.to_string()))?;
            }
            let Some(relation) = batch.relations.first() else {
                continue;
            };
            let mut rows = ChangeRows::in_form(relation, true);
            for event in &batch.events {
                rows.append(event, &batch.relations[event.rel as usize]);
            }
            let rows = rows
                .finish()
                .map_err(|e| VerifyError::Compare(e.to_string()))?;
            let columns = layout
                .columns(&rows)
                .map_err(|e| VerifyError::Compare(e.to_string()))?;
            let hashed = layout
                .hash(&columns)
                .map_err(|e| VerifyError::Compare(e.to_string()))?;
            let w = layout.width();
            for (r, key) in hashed.keys.iter().enumerate() {
                let Some(b) = bucket(key, sides[0].0.count(), sample) else {
                    continue;
                };
                for (buckets, _) in sides.iter_mut() {
                    buckets
                        .add_source(b, key, &hashed.columns[r * w..(r + 1) * w])
                        .map_err(VerifyError::Compare)?;
                }
            }
            if reported.elapsed() >= Duration::from_secs(5) {
                reported = Instant::now();
                tracing::info!(table = %table, rows = reader.rows, rows_per_s = (reader.rows as f64 / started.elapsed().as_secs_f64()) as u64, "Verify: reading the source.");
            }
        }
        Ok(())
    }
}

/// Reads a sink's changes of the table before `at` into its buckets and compares.
async fn compare_output(
    table: &TableName,
    sink: &SinkConfig,
    out: output::Output,
    mut buckets: Buckets,
    layout: &Layout,
    at: Lsn,
    sample: f64,
) -> Result<Comparison, VerifyError> {
    let name = sink_name(sink);
    let (started, mut reported, mut read) = (Instant::now(), Instant::now(), 0u64);
    out.read(|rows| {
        spill_changes(rows, layout, at, sample, &mut buckets)?;
        read += rows.num_rows() as u64;
        if reported.elapsed() >= Duration::from_secs(5) {
            reported = Instant::now();
            tracing::info!(table = %table, sink = %name, changes = read, changes_per_s = (read as f64 / started.elapsed().as_secs_f64()) as u64, "Verify: reading the output.");
        }
        Ok(())
    })
    .await?;
    let mut reported = Instant::now();
    buckets
        .compare(layout, |done, of| {
            if reported.elapsed() >= Duration::from_secs(5) {
                reported = Instant::now();
                tracing::info!(table = %table, sink = %name, buckets = done, of, "Verify: comparing.");
            }
        })
        .map_err(VerifyError::Compare)
}

/// One record batch of a current-state output (a mirror table: one row per key, with
/// the `_cdc_commit_lsn` of the change that wrote it) into the buckets: a row written
/// after `at` takes its key out of the comparison.
fn spill_current_state(
    rows: &RecordBatch,
    layout: &Layout,
    at: Lsn,
    sample: f64,
    buckets: &mut Buckets,
) -> Result<(), VerifyError> {
    let lsn = rows
        .column_by_name("_cdc_commit_lsn")
        .cloned()
        .ok_or_else(|| VerifyError::Compare("no column _cdc_commit_lsn".into()))?;
    let lsn = lsn.as_primitive::<arrow::datatypes::Int64Type>();
    let columns = layout
        .columns(rows)
        .map_err(|e| VerifyError::Compare(e.to_string()))?;
    let hashed = layout
        .hash(&columns)
        .map_err(|e| VerifyError::Compare(e.to_string()))?;
    let w = layout.width();
    for (r, key) in hashed.keys.iter().enumerate() {
        let Some(b) = bucket(key, buckets.count(), sample) else {
            continue;
        };
        let written = lsn.value(r) as u64;
        let op = match written >= at.0 {
            true => ChangeOp::Newer,
            false => ChangeOp::Row,
        };
        buckets
            .add_change(
                b,
                key,
                (written, 0),
                op,
                &[],
                &hashed.columns[r * w..(r + 1) * w],
            )
            .map_err(VerifyError::Compare)?;
    }
    Ok(())
}

/// One record batch of changelog rows into the buckets: changes before `at` only.
fn spill_changes(
    rows: &RecordBatch,
    layout: &Layout,
    at: Lsn,
    sample: f64,
    buckets: &mut Buckets,
) -> Result<(), VerifyError> {
    let bad = |m: String| VerifyError::Compare(format!("not a weir changelog: {m}"));
    if rows.column_by_name("_cdc_op").is_none() && rows.column_by_name("_cdc_commit_lsn").is_some()
    {
        return spill_current_state(rows, layout, at, sample, buckets);
    }
    let column = |name: &str| {
        rows.column_by_name(name)
            .cloned()
            .ok_or_else(|| bad(format!("no column {name}")))
    };
    let (op, lsn, seq) = (
        column("_cdc_op")?,
        column("_cdc_commit_lsn")?,
        column("_cdc_seq")?,
    );
    let op = arrow::compute::cast(&op, &arrow::datatypes::DataType::Utf8)
        .map_err(|e| bad(e.to_string()))?;
    let (op, lsn, seq) = (
        op.as_string::<i32>(),
        lsn.as_primitive::<arrow::datatypes::Int64Type>(),
        seq.as_primitive::<arrow::datatypes::Int64Type>(),
    );
    let unchanged = rows
        .column_by_name("_cdc_unchanged")
        .and_then(|c| c.as_list_opt::<i32>().cloned());
    let columns = layout
        .columns(rows)
        .map_err(|e| VerifyError::Compare(e.to_string()))?;
    let hashed = layout
        .hash(&columns)
        .map_err(|e| VerifyError::Compare(e.to_string()))?;
    let w = layout.width();
    for r in 0..rows.num_rows() {
        let pos = (lsn.value(r) as u64, seq.value(r) as u32);
        if pos.0 >= at.0 {
            continue;
        }
        let op = match op.value(r) {
            "t" => {
                buckets.add_truncate(pos);
                continue;
            }
            "u" => ChangeOp::Update,
            "d" => ChangeOp::Delete,
            _ => ChangeOp::Row,
        };
        let key = &hashed.keys[r];
        let Some(b) = bucket(key, buckets.count(), sample) else {
            continue;
        };
        let mut untouched = Vec::new();
        if let Some(list) = unchanged.as_ref().filter(|l| !l.is_null(r)) {
            let names = list.value(r);
            for name in names.as_string::<i32>().iter().flatten() {
                if let Some(i) = layout.names.iter().position(|n| n == name) {
                    untouched.push(i as u16);
                }
            }
        }
        buckets
            .add_change(
                b,
                key,
                pos,
                op,
                &untouched,
                &hashed.columns[r * w..(r + 1) * w],
            )
            .map_err(VerifyError::Compare)?;
    }
    Ok(())
}
