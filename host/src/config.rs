//! Pipeline configuration: TOML with `${VAR}` interpolation, unknown keys rejected.
//!
//! Loading is pure: nothing here connects anywhere or writes anything. Each struct's doc
//! comments are the configuration reference (the README repeats them).

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// A configuration that cannot be used, with the key it concerns and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: unknown key `{key}`{}", suggestion_text(.suggestion))]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestion: Option<String>,
    },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: `{key}` uses ${{{var}}}, but the environment variable {var} is not set")]
    MissingVar {
        path: PathBuf,
        key: String,
        var: String,
    },
}

fn suggestion_text(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// A whole pipeline: one source, batching, and one or more sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name used in logs and metrics. Default: the file name without extension.
    #[serde(default)]
    pub name: Option<String>,
    /// Where changes come from.
    pub source: SourceConfig,
    /// How change events are grouped before they reach plugins and sinks.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Transform plugins, applied to every batch in this order.
    #[serde(rename = "transform", default)]
    pub transforms: Vec<TransformConfig>,
    /// Where changes go; every sink receives every batch.
    #[serde(rename = "sink", default)]
    pub sinks: Vec<SinkConfig>,
    /// Where weir keeps the pipeline's own state: dead letters and the progress of the
    /// initial snapshot.
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// Hot reload of transforms.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Recovery after a lost connection or a failed write.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The Prometheus and health endpoint; none unless configured.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// After SIGINT or SIGTERM, the longest weir takes to finish the batch in hand, flush
    /// and checkpoint before it exits anyway (non-zero; the next run resumes from the
    /// last checkpoint). Default `30s`.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[metrics]`: an HTTP endpoint with `/metrics` (Prometheus), `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, `127.0.0.1:9187` (`0.0.0.0:9187` for every interface).
    pub listen: String,
    /// `/readyz` fails while the last durable change is older than this (and more
    /// changes are waiting). Default `5m`.
    #[serde(default = "default_ready_max_lag", deserialize_with = "de_duration")]
    pub ready_max_lag: Duration,
}

fn default_ready_max_lag() -> Duration {
    Duration::from_secs(300)
}

/// `[retry]`: how a running pipeline recovers from transient failures (a lost
/// connection, a restarting server, storage that fails to write): it stops cleanly, waits,
/// and runs again from its checkpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Consecutive failed attempts before weir gives up and exits non-zero; 0 retries
    /// for ever. Default 10.
    pub attempts: u32,
    /// The first wait; each failed attempt doubles it, with jitter. Default `1s`.
    #[serde(deserialize_with = "de_duration")]
    pub initial_backoff: Duration,
    /// The longest wait. Default `30s`.
    #[serde(deserialize_with = "de_duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// `[reload]`: how a running pipeline picks up new transform versions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the pipeline file and each transform's manifest and component, and reload a
    /// transform when they change. Default `true`. SIGHUP and `weir reload` work either way.
    pub watch: bool,
    /// How often the files are checked. Default `1s`.
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// `[state]`: where weir keeps the pipeline's state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Output location; state goes to `<url>/_weir/<slot>/`. Default: the first Parquet
    /// sink's `url`, else the first Iceberg sink's `warehouse`.
    pub url: Option<String>,
    /// Keep the evidence ledger (`<state url>/_weir/<slot>/ledger/`, read by `weir
    /// audit`). Default true.
    #[serde(default = "default_true")]
    pub ledger: bool,
}

/// `[source]`: the PostgreSQL database to capture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection URL, `postgres://user:password@host:port/db`; `${VAR}` is replaced from
    /// the environment. A missing password is taken from `PGPASSWORD`.
    pub url: String,
    /// Logical replication slot; created (pgoutput) when missing. Default `weir`.
    #[serde(default = "default_weir")]
    pub slot: String,
    /// Publication; created for `tables` when missing, and missing tables are added to
    /// it. Default `weir`.
    #[serde(default = "default_weir")]
    pub publication: String,
    /// Tables to capture, `schema.table` (a bare name means `public`).
    pub tables: Vec<TableName>,
    /// `initial` (default): when weir creates the slot, it first reads the tables' rows
    /// in the slot's snapshot (as `op = r` events), then streams from there. `never`:
    /// only changes from the slot's creation on.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Connections that read the initial snapshot at once, sharing the slot's exported
    /// snapshot: tables, and large tables' page ranges, are spread over them. Default:
    /// the number of cores, at most 8.
    #[serde(default = "default_snapshot_parallelism")]
    pub snapshot_parallelism: usize,
    /// WAL the slot may hold on the server before weir acts (checked every 10 s), for
    /// example `"20GiB"`. Default: no limit.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_slot_lag: Option<u64>,
    /// What weir does past `max_slot_lag`: `alert` (default: log an error, keep going) or
    /// `stop` (stop cleanly with the reason; the slot stays).
    #[serde(default)]
    pub slot_lag_policy: SlotLagPolicy,
}

/// What happens when the slot holds more WAL than `max_slot_lag`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotLagPolicy {
    #[default]
    Alert,
    Stop,
}

fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

/// Whether a new pipeline starts with the tables' existing rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
}

fn default_true() -> bool {
    true
}

fn default_snapshot_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

fn default_weir() -> String {
    "weir".into()
}

/// `[batch]`: a batch is cut when any bound is reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most events in one batch. Default 10000.
    pub max_events: usize,
    /// Most bytes of row data in one batch. Default `8MiB`.
    #[serde(deserialize_with = "de_size")]
    pub max_bytes: u64,
    /// Longest a change waits for its batch to fill while the pipeline is busy (an idle
    /// pipeline takes each transaction as it commits). Default `500ms`.
    #[serde(deserialize_with = "de_duration")]
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 10_000,
            max_bytes: 8 << 20,
            max_delay: Duration::from_millis(500),
        }
    }
}

/// `[[transform]]`: one transform plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The plugin's manifest (`weir-plugin.toml`) or its directory, relative to the
    /// pipeline file.
    pub plugin: PathBuf,
    /// Configuration handed to the plugin's `init`, over the manifest's defaults.
    #[serde(default)]
    pub config: toml::Table,
}

/// `[[sink]]`: one output. `type` selects the kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// Parquet changelog files on object storage.
    Parquet(ParquetSinkConfig),
    /// A sink plugin (a component of the `sink-plugin` world).
    Plugin(PluginSinkConfig),
    /// Apache Iceberg changelog tables, committed through a catalog.
    Iceberg(IcebergSinkConfig),
    /// One JSON line per change on standard output, for `jq` or another program.
    Stdout(StdoutSinkConfig),
    /// Each source table's current state (or changelog) in another PostgreSQL.
    Postgres(PostgresSinkConfig),
    /// Delta Lake tables (delta-rs), one per source table.
    Delta(DeltaSinkConfig),
}

/// `[[sink]] type = "delta"`: a Delta Lake table per source table under
/// `<url>/<schema>/<table>`, written with delta-rs (ADR 0018).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSinkConfig {
    /// Where the tables live: `file:///absolute/path` or `s3://bucket/prefix`.
    pub url: String,
    /// `changelog` (default): one row per change, with the `_cdc_` columns (append only).
    /// `mirror`: the current state, one row per key, with Change Data Feed.
    #[serde(default)]
    pub mode: DeltaMode,
    /// Rows are committed (one table version per changed table) at least this often.
    /// Default `60s`.
    #[serde(default = "default_commit_interval", deserialize_with = "de_duration")]
    pub commit_interval: Duration,
    /// A data file is completed once its buffered rows reach about this size (encoded).
    /// Default `128MiB`.
    #[serde(default = "default_target_file_size", deserialize_with = "de_size")]
    pub target_file_size: u64,
    /// Arrays, intervals, ranges, composites as Delta arrays and structs (`true`, the
    /// default for a new table) or as text. A column a table already has keeps its type.
    #[serde(default)]
    pub nested_types: Option<bool>,
}

/// What a Delta sink's tables hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaMode {
    /// One row per change, with the `_cdc_` columns (append only).
    #[default]
    Changelog,
    /// The current state, one row per key.
    Mirror,
}

/// `[[sink]] type = "postgres"`: a projection into another PostgreSQL database, applied
/// batch by batch in one target transaction with its checkpoint (exactly once).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// The target database, `postgres://user:password@host:5432/db` (libpq parameters and
    /// TLS as in `source.url`).
    pub url: String,
    /// Schema of the target tables, created when missing. Default: each source table's
    /// own schema.
    #[serde(default)]
    pub schema: Option<String>,
    /// `mirror` (default): each table's current state, by primary key. `changelog`: one
    /// row per change with the `_cdc_` columns.
    #[serde(default)]
    pub mode: ProjectionMode,
    /// How `mirror` applies a delete: `delete` (default) removes the row; `tombstone`
    /// keeps it with `_cdc_deleted = true`.
    #[serde(default)]
    pub deletes: DeleteMode,
    /// Target table names by source table (`"public.orders" = "orders_v1"`). Default:
    /// the source table's name.
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, String>,
    /// The projection's name in `weir.checkpoints` and `weir.projection_ledger`. Default:
    /// the pipeline's name.
    #[serde(default)]
    pub name: Option<String>,
    /// A change the target refuses by a constraint (a foreign key, a check, a unique index
    /// other than the key): `fail` (default) stops the pipeline, `skip` drops it,
    /// `dead-letter` sets it aside for `weir dead-letter replay`.
    #[serde(default)]
    pub on_error: crate::plugin::OnError,
    /// The pipeline's name, filled in when the pipeline file is read.
    #[serde(skip)]
    pub pipeline: String,
}

impl PostgresSinkConfig {
    /// The projection's name: `name`, else the pipeline's.
    pub fn projection(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.pipeline)
    }

    /// The target table of a source table: `"schema"."table"`, quoted.
    pub fn target_of(&self, schema: &str, table: &str) -> (String, String) {
        let qualified = format!("{schema}.{table}");
        let (schema, table) = match self.tables.get(&qualified) {
            Some(t) => match t.split_once('.') {
                Some((s, t)) => (s.to_owned(), t.to_owned()),
                None => (self.schema.clone().unwrap_or(schema.to_owned()), t.clone()),
            },
            None => (
                self.schema.clone().unwrap_or(schema.to_owned()),
                table.to_owned(),
            ),
        };
        let quote = crate::source::quote_ident;
        (
            schema.clone(),
            format!("{}.{}", quote(&schema), quote(&table)),
        )
    }
}

/// What a PostgreSQL projection keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionMode {
    #[default]
    Mirror,
    Changelog,
}

/// How a mirror projection applies deletes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    #[default]
    Delete,
    Tombstone,
}

/// `[[sink]] type = "stdout"`: each change as one line of JSON on standard output (the
/// webhook's event JSON), flushed at the end of every batch. At least once: after a
/// crash, changes since the slot's last confirmed position are printed again.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

/// `[[sink]] type = "iceberg"`: one Iceberg changelog table per source table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergSinkConfig {
    /// Where table data and metadata go: `file:///absolute/path` or `s3://bucket/prefix`.
    pub warehouse: String,
    /// Namespace of the changelog tables. Default: each source table's schema name
    /// (`public.orders` becomes Iceberg table `public.orders`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The catalog. Default: the SQL catalog on SQLite at `<warehouse>/catalog.db` (local
    /// warehouses only).
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// Partition spec of new tables, on `_cdc_commit_ts`: `day` (default), `hour` or
    /// `none`.
    #[serde(default)]
    pub partition: IcebergPartition,
    /// A data file is closed and a new one started once it reaches this size. Default
    /// `128MiB`.
    #[serde(default = "default_target_file_size", deserialize_with = "de_size")]
    pub target_file_size: u64,
    /// Written files are committed (one snapshot per changed table) at least this often.
    /// Default `60s`.
    #[serde(default = "default_commit_interval", deserialize_with = "de_duration")]
    pub commit_interval: Duration,
    /// Background table maintenance; none unless configured.
    #[serde(default)]
    pub maintenance: Option<MaintenanceConfig>,
    /// `changelog` (default): one row per change. `mirror`: each table holds the source
    /// table's current state (position deletes, a primary-key index).
    #[serde(default)]
    pub mode: IcebergMode,
    /// Mirror tables: the local directory of the primary-key index (a cache, rebuilt
    /// from the table when lost). Relative to the pipeline file. Default
    /// `~/.cache/weir/index/<slot>`.
    #[serde(default)]
    pub index_dir: Option<PathBuf>,
    /// Changelog tables: arrays, intervals, ranges, composites as Iceberg lists and
    /// structs (`true`, the default for columns weir adds) or as text. A column the table
    /// already has keeps its type: text stays text.
    #[serde(default)]
    pub nested_types: Option<bool>,
}

/// What an Iceberg sink's tables hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IcebergMode {
    /// One row per change, with the `_cdc_` columns (append only).
    #[default]
    Changelog,
    /// The current state, one row per key, merge-on-read with position deletes.
    Mirror,
}

impl IcebergSinkConfig {
    /// Whether columns this sink adds keep their structure (lists, structs):
    /// `nested_types`, default true (a column a table has keeps the table's form).
    pub fn nested(&self) -> bool {
        self.nested_types.unwrap_or(true)
    }
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(60)
}

/// `[sink.catalog]`: where Iceberg table metadata is registered.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum CatalogConfig {
    /// The SQL catalog on an SQLite file: nothing to run. PyIceberg, Spark and Trino
    /// read it as a JDBC/SQL catalog of the same `name`.
    Sql {
        /// The SQLite file, created when missing; relative to the pipeline file.
        #[serde(default)]
        path: Option<PathBuf>,
        /// Catalog name recorded with each table. Default `weir`.
        #[serde(default = "default_weir")]
        name: String,
    },
    /// An Iceberg REST catalog.
    Rest {
        /// The catalog's base URI, `https://catalog.example.com/api/catalog`.
        uri: String,
        /// Warehouse name or location the catalog knows the tables by, when it needs one.
        #[serde(default)]
        warehouse: Option<String>,
        /// OAuth2 client credential, `client_id:client_secret` (use `${VAR}`).
        #[serde(default)]
        credential: Option<String>,
        /// A bearer token (use `${VAR}`).
        #[serde(default)]
        token: Option<String>,
        /// Catalog name. Default `weir`.
        #[serde(default = "default_weir")]
        name: String,
    },
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig::Sql {
            path: None,
            name: default_weir(),
        }
    }
}

/// Partition spec of Iceberg changelog tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IcebergPartition {
    #[default]
    Day,
    Hour,
    None,
}

/// `[sink.maintenance]`: table maintenance run by the pipeline on a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// How often maintenance runs. Default `1h`.
    #[serde(
        default = "default_maintenance_every",
        deserialize_with = "de_duration"
    )]
    pub every: Duration,
    /// Snapshots older than this are expired (the current one never is). Default `7d`.
    #[serde(
        default = "default_expire_older_than",
        deserialize_with = "de_duration"
    )]
    pub expire_older_than: Duration,
    /// Also compact: rewrite small data files, and data files position deletes have
    /// thinned (mirror tables), into `target_file_size` files (SQL catalog only).
    /// Default `false`.
    #[serde(default)]
    pub compact: bool,
    /// The fraction of a data file's rows deleted at which compaction rewrites it.
    /// Default `0.3`.
    #[serde(default = "default_delete_threshold")]
    pub delete_threshold: f64,
}

fn default_delete_threshold() -> f64 {
    crate::sink::iceberg::compact::DEFAULT_DELETE_THRESHOLD
}

fn default_maintenance_every() -> Duration {
    Duration::from_secs(3600)
}
fn default_expire_older_than() -> Duration {
    Duration::from_secs(7 * 86_400)
}

/// `[[sink]] type = "plugin"`: a sink component, beside the native sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSinkConfig {
    /// The plugin's manifest (`weir-plugin.toml`) or its directory, relative to the
    /// pipeline file.
    pub plugin: PathBuf,
    /// Configuration handed to the plugin's `init`, over the manifest's defaults.
    #[serde(default)]
    pub config: toml::Table,
    /// The plugin's `flush` is called at least this often while it holds changes it has
    /// not reported durable. Default `10s`.
    #[serde(default = "default_flush_interval", deserialize_with = "de_duration")]
    pub flush_interval: Duration,
}

/// `[[sink]] type = "parquet"`: one changelog per table under `<url>/<schema>/<table>/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Output location: `file:///absolute/path` or `s3://bucket/prefix`.
    pub url: String,
    /// Time window of the partition directories below each table, by commit time:
    /// `hourly` (default, `date=YYYY-MM-DD/hour=HH`) or `daily` (`date=YYYY-MM-DD`).
    #[serde(default)]
    pub partition: Partitioning,
    /// `zstd` (default), `snappy`, `gzip` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// A file is closed and a new one started once it reaches this size. Default `128MiB`.
    #[serde(default = "default_target_file_size", deserialize_with = "de_size")]
    pub target_file_size: u64,
    /// Open files are completed and the checkpoint advanced at least this often.
    /// Default `10s`.
    #[serde(default = "default_flush_interval", deserialize_with = "de_duration")]
    pub flush_interval: Duration,
    /// Rows per Parquet row group. Default 65536.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// A row group ends once it holds this much in memory, whatever its rows: the bound
    /// on each open file's memory with wide rows. Default `32MiB`.
    #[serde(default = "default_row_group_size", deserialize_with = "de_size")]
    pub row_group_size: u64,
    /// Arrays of mapped built-in types as Parquet lists (`true`) or as PostgreSQL's text
    /// (`false`). Unset: lists for a new output, and whatever the output's checkpoint
    /// records for an existing one (text for outputs written before lists existed).
    #[serde(default)]
    pub nested_types: Option<bool>,
}

fn default_target_file_size() -> u64 {
    128 << 20
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_row_group_rows() -> usize {
    65_536
}
fn default_row_group_size() -> u64 {
    32 << 20
}

/// Partition window of Parquet output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    #[default]
    Hourly,
    Daily,
}

/// Parquet compression codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Snappy,
    Gzip,
    None,
}

/// A table, `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

impl TableName {
    /// Whether the name holds `*` wildcards (`public.*`, `sales.order_*`).
    pub fn is_pattern(&self) -> bool {
        self.schema.contains('*') || self.table.contains('*')
    }

    /// Whether `table` is this table, or matches this pattern.
    pub fn matches(&self, table: &TableName) -> bool {
        glob(&self.schema, &table.schema) && glob(&self.table, &table.table)
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Text that is not a table name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a table name: write schema.table, for example public.orders")]
pub struct TableNameError(pub String);

impl FromStr for TableName {
    type Err = TableNameError;
    fn from_str(s: &str) -> Result<TableName, TableNameError> {
        let (schema, table) = s.split_once('.').unwrap_or(("public", s));
        let valid = |p: &str| !p.is_empty() && !p.contains('.') && !p.contains('"');
        if !valid(schema) || !valid(table) {
            return Err(TableNameError(s.to_string()));
        }
        Ok(TableName {
            schema: schema.into(),
            table: table.into(),
        })
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TableName, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{s}` is not a duration ({e}); write for example \"500ms\" or \"10s\""
        ))
    })
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(b),
        Size::Text(s) => s
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a size; write for example \"128MiB\" or 1048576"
                ))
            }),
    }
}

impl SourceConfig {
    /// Whether any of `tables` is a pattern.
    pub fn has_patterns(&self) -> bool {
        self.tables.iter().any(TableName::is_pattern)
    }

    /// Whether `table` is one of `tables` or matches one of their patterns.
    pub fn selects(&self, table: &TableName) -> bool {
        self.tables.iter().any(|t| t.matches(table))
    }
}

impl PipelineConfig {
    /// The same pipeline capturing `tables` (the patterns of `source.tables` resolved).
    pub fn with_tables(&self, tables: Vec<TableName>) -> PipelineConfig {
        let mut config = self.clone();
        config.source.tables = tables;
        config
    }

    /// Reads, interpolates, parses and validates a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config = PipelineConfig::parse(&text, path, &|var| std::env::var(var).ok())?;
        if config.name.is_none() {
            config.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        let name = config.name().to_owned();
        for sink in &mut config.sinks {
            if let SinkConfig::Postgres(p) = sink {
                p.pipeline = name.clone();
            }
        }
        Ok(config)
    }

    /// Parses and validates configuration text; `env` resolves `${VAR}`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PipelineConfig, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.into(),
                    message: e.to_string(),
                })?;
        interpolate_table(&mut table, "", path, env)?;
        let sinks = table.get("sink").cloned();
        let mut config: PipelineConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let index = key.strip_prefix("sink[").and_then(|k| k.strip_suffix(']'));
                match index.and_then(|i| sink_error(sinks.as_ref()?, path, i.parse().ok()?)) {
                    Some(precise) => precise,
                    None => value_error(path, key, &e.inner().to_string()),
                }
            })?;
        config.validate(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for t in &mut config.transforms {
            if t.plugin.is_relative() {
                t.plugin = base.join(&t.plugin);
            }
        }
        for sink in &mut config.sinks {
            match sink {
                SinkConfig::Plugin(p) if p.plugin.is_relative() => {
                    p.plugin = base.join(&p.plugin);
                }
                SinkConfig::Iceberg(c) => {
                    if let CatalogConfig::Sql { path: Some(p), .. } = &mut c.catalog
                        && p.is_relative()
                    {
                        *p = base.join(&*p);
                    }
                    if let Some(d) = &mut c.index_dir
                        && d.is_relative()
                    {
                        *d = base.join(&*d);
                    }
                }
                _ => {}
            }
        }
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate_source(path)?;
        self.validate_limits(path)?;
        self.validate_sinks(path)?;
        self.validate_state(path)
    }

    /// Makes the error for a `key` of the file at `path` that holds a wrong value.
    fn invalid(path: &Path) -> impl Fn(&str, String) -> ConfigError + '_ {
        move |key: &str, message: String| ConfigError::Invalid {
            path: path.into(),
            key: key.into(),
            message,
        }
    }

    /// The source's URL, slot and publication names, and tables.
    fn validate_source(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = Self::invalid(path);
        let (url, _) = crate::source::tls::split(&self.source.url)
            .map_err(|e| invalid("source.url", e.to_string()))?;
        url.parse::<tokio_postgres::Config>().map_err(|e| {
            invalid(
                "source.url",
                format!("not a PostgreSQL URL ({e}); write postgres://user@host:5432/db"),
            )
        })?;
        for (key, name) in [
            ("source.slot", &self.source.slot),
            ("source.publication", &self.source.publication),
        ] {
            if name.is_empty()
                || name.len() > 63
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(invalid(
                    key,
                    format!("`{name}` must be 1 to 63 lowercase letters, digits or underscores"),
                ));
            }
        }
        if self.source.tables.is_empty() {
            return Err(invalid(
                "source.tables",
                "lists no table; name at least one, for example [\"public.orders\"]".into(),
            ));
        }
        Ok(())
    }

    /// Batch limits and intervals: none may be zero.
    fn validate_limits(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = Self::invalid(path);
        if self.batch.max_events == 0 || self.batch.max_bytes == 0 || self.batch.max_delay.is_zero()
        {
            return Err(invalid(
                "batch",
                "max_events, max_bytes and max_delay must be greater than zero".into(),
            ));
        }
        if !(1..=64).contains(&self.source.snapshot_parallelism) {
            return Err(invalid(
                "source.snapshot_parallelism",
                format!(
                    "{} connections: give 1 to 64",
                    self.source.snapshot_parallelism
                ),
            ));
        }
        if self.shutdown_timeout.is_zero() {
            return Err(invalid(
                "shutdown_timeout",
                "must be greater than zero".into(),
            ));
        }
        if self.reload.poll_interval.is_zero() {
            return Err(invalid(
                "reload.poll_interval",
                "must be greater than zero".into(),
            ));
        }
        Ok(())
    }

    /// At least one sink, and each one usable.
    fn validate_sinks(&self, path: &Path) -> Result<(), ConfigError> {
        if self.sinks.is_empty() {
            return Err(Self::invalid(path)(
                "sink",
                "no [[sink]] is configured; add one, for example type = \"parquet\"".into(),
            ));
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            Self::validate_sink(path, i, sink)?;
        }
        let names: Vec<Option<&str>> = self
            .sinks
            .iter()
            .filter_map(|s| match s {
                SinkConfig::Postgres(p) => Some(p.name.as_deref()),
                _ => None,
            })
            .collect();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(Self::invalid(path)(
                    "sink",
                    format!(
                        "two postgres sinks have the projection name {}: give each its own name = \"...\" (it keys their checkpoints)",
                        name.map_or("of the pipeline".to_string(), |n| format!("`{n}`"))
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Sink number `i`: its place, sizes and intervals.
    fn validate_sink(path: &Path, i: usize, sink: &SinkConfig) -> Result<(), ConfigError> {
        let invalid = Self::invalid(path);
        match sink {
            SinkConfig::Parquet(p) => {
                crate::storage::object_store_for(&p.url)
                    .map_err(|e| invalid(&format!("sink[{i}].url"), e.to_string()))?;
                if p.row_group_rows == 0
                    || p.row_group_size == 0
                    || p.target_file_size == 0
                    || p.flush_interval.is_zero()
                {
                    return Err(invalid(
                        &format!("sink[{i}]"),
                        "row_group_rows, row_group_size, target_file_size and flush_interval must be greater than zero".into(),
                    ));
                }
            }
            SinkConfig::Delta(c) => {
                let key = format!("sink[{i}]");
                crate::storage::object_store_for(&c.url)
                    .map_err(|e| invalid(&format!("{key}.url"), e.to_string()))?;
                if c.target_file_size == 0 || c.commit_interval.is_zero() {
                    return Err(invalid(
                        &key,
                        "target_file_size and commit_interval must be greater than zero".into(),
                    ));
                }
            }
            SinkConfig::Iceberg(c) => {
                let key = format!("sink[{i}]");
                crate::storage::object_store_for(&c.warehouse)
                    .map_err(|e| invalid(&format!("{key}.warehouse"), e.to_string()))?;
                if c.target_file_size == 0 || c.commit_interval.is_zero() {
                    return Err(invalid(
                        &key,
                        "target_file_size and commit_interval must be greater than zero".into(),
                    ));
                }
                if matches!(c.catalog, CatalogConfig::Sql { path: None, .. })
                    && !c.warehouse.starts_with("file:")
                {
                    return Err(invalid(
                        &format!("{key}.catalog"),
                        "the SQLite catalog file cannot live in object storage: set [sink.catalog] path = \"/var/lib/weir/catalog.db\", or use type = \"rest\"".into(),
                    ));
                }
                if c.mode == IcebergMode::Mirror && matches!(c.catalog, CatalogConfig::Rest { .. })
                {
                    return Err(invalid(
                        &format!("{key}.mode"),
                        "\"mirror\" needs the SQL catalog: iceberg 0.10.1 cannot send a commit with position deletes to a REST catalog; use mode = \"changelog\" with a REST catalog".into(),
                    ));
                }
                if let Some(m) = &c.maintenance {
                    if m.every.is_zero() || m.expire_older_than.is_zero() {
                        return Err(invalid(
                            &format!("{key}.maintenance"),
                            "every and expire_older_than must be greater than zero".into(),
                        ));
                    }
                    if !(0.0..=1.0).contains(&m.delete_threshold) {
                        return Err(invalid(
                            &format!("{key}.maintenance.delete_threshold"),
                            "give a fraction from 0 to 1 (0.3 rewrites data files with 30% of their rows deleted)".into(),
                        ));
                    }
                    if m.compact && matches!(c.catalog, CatalogConfig::Rest { .. }) {
                        return Err(invalid(
                            &format!("{key}.maintenance.compact"),
                            "compaction commits through the SQL catalog only; iceberg 0.10.1 cannot send it to a REST catalog".into(),
                        ));
                    }
                }
            }
            SinkConfig::Plugin(p) => {
                if p.flush_interval.is_zero() {
                    return Err(invalid(
                        &format!("sink[{i}].flush_interval"),
                        "must be greater than zero".into(),
                    ));
                }
            }
            SinkConfig::Stdout(_) => {}
            SinkConfig::Postgres(p) => {
                let (url, _) = crate::source::tls::split(&p.url)
                    .map_err(|e| invalid(&format!("sink[{i}].url"), e.to_string()))?;
                url.parse::<tokio_postgres::Config>().map_err(|e| {
                    invalid(
                        &format!("sink[{i}].url"),
                        format!("not a PostgreSQL URL ({e}); write postgres://user@host:5432/db"),
                    )
                })?;
                if let Some(source) = p.tables.keys().find(|t| !t.contains('.')) {
                    return Err(invalid(
                        &format!("sink[{i}].tables"),
                        format!(
                            "`{source}` must name a source table as schema.table, for example \"public.{source}\""
                        ),
                    ));
                }
                if p.deletes == DeleteMode::Tombstone && p.mode == ProjectionMode::Changelog {
                    return Err(invalid(
                        &format!("sink[{i}].deletes"),
                        "\"tombstone\" applies to mode = \"mirror\"; a changelog keeps every delete as a row".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where state is kept: somewhere when the initial snapshot needs it, and a usable
    /// URL when one is given.
    fn validate_state(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = Self::invalid(path);
        if self.source.snapshot == SnapshotMode::Initial && self.state_url().is_none() {
            return Err(invalid(
                "source.snapshot",
                "\"initial\" records its progress with the output, and this pipeline has no parquet or iceberg sink: add [state] url = \"file:///...\", or set snapshot = \"never\"".into(),
            ));
        }
        if let Some(url) = self.state.as_ref().and_then(|d| d.url.as_deref()) {
            crate::storage::object_store_for(url)
                .map_err(|e| invalid("state.url", e.to_string()))?;
        }
        Ok(())
    }

    /// Whether the pipeline keeps the evidence ledger (`[state] ledger`, default true).
    pub fn keeps_ledger(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.ledger)
    }

    /// Where state (dead letters, snapshot progress) goes: `[state] url`, else the
    /// first Parquet sink's `url`, else the first Iceberg sink's `warehouse`.
    pub fn state_url(&self) -> Option<&str> {
        let parquet = self.sinks.iter().find_map(|s| match s {
            SinkConfig::Parquet(p) => Some(p.url.as_str()),
            _ => None,
        });
        let iceberg = self.sinks.iter().find_map(|s| match s {
            SinkConfig::Iceberg(c) => Some(c.warehouse.as_str()),
            _ => None,
        });
        let delta = self.sinks.iter().find_map(|s| match s {
            SinkConfig::Delta(c) => Some(c.url.as_str()),
            _ => None,
        });
        self.state
            .as_ref()
            .and_then(|d| d.url.as_deref())
            .or(parquet)
            .or(iceberg)
            .or(delta)
    }

    /// Every location weir writes output or state to: the state location, each Parquet
    /// sink's URL and each Iceberg warehouse, once each.
    pub fn output_urls(&self) -> Vec<&str> {
        let sinks = self.sinks.iter().filter_map(|s| match s {
            SinkConfig::Parquet(p) => Some(p.url.as_str()),
            SinkConfig::Iceberg(c) => Some(c.warehouse.as_str()),
            SinkConfig::Delta(c) => Some(c.url.as_str()),
            SinkConfig::Plugin(_) | SinkConfig::Stdout(_) | SinkConfig::Postgres(_) => None,
        });
        let mut urls: Vec<&str> = Vec::new();
        for url in self.state_url().into_iter().chain(sinks) {
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        urls
    }

    /// Checks that weir can write to every output location, by writing and removing a
    /// probe object in each (before anything is created in the database).
    pub async fn check_outputs_writable(&self) -> Result<(), crate::storage::StorageError> {
        for url in self.output_urls() {
            crate::storage::probe_writable(url, &self.source.slot).await?;
        }
        Ok(())
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("weir")
    }
}

/// Recognizes serde's unknown-field message and adds the closest known key.
/// The error for a wrong value or an unknown key at `key` (serde's message, its first
/// line: toml adds where it was on the next).
fn value_error(path: &Path, key: String, message: &str) -> ConfigError {
    let message = message.lines().next().unwrap_or(message).to_string();
    unknown_key_error(path, &key, &message).unwrap_or(ConfigError::Invalid {
        path: path.into(),
        key,
        message,
    })
}

/// serde reports any error inside an internally tagged `[[sink]]` at the sink itself,
/// without the key (or, for an unknown key, the keys it knows); reading the sink's own
/// table again as its kind says which.
fn sink_error(sinks: &toml::Value, path: &Path, index: usize) -> Option<ConfigError> {
    let mut sink = sinks.as_array()?.get(index)?.as_table()?.clone();
    let kind = sink.remove("type")?.as_str()?.to_owned();
    let value = toml::Value::Table(sink);
    fn check<T: serde::de::DeserializeOwned>(
        value: toml::Value,
    ) -> Result<(), serde_path_to_error::Error<toml::de::Error>> {
        serde_path_to_error::deserialize::<_, T>(value).map(drop)
    }
    let result = match kind.as_str() {
        "parquet" => check::<ParquetSinkConfig>(value),
        "iceberg" => check::<IcebergSinkConfig>(value),
        "plugin" => check::<PluginSinkConfig>(value),
        "stdout" => check::<StdoutSinkConfig>(value),
        "postgres" => check::<PostgresSinkConfig>(value),
        _ => return None,
    };
    let e = result.err()?;
    let key = match e.path().to_string().as_str() {
        "." => format!("sink[{index}]"),
        inner => format!("sink[{index}].{inner}"),
    };
    Some(value_error(path, key, &e.inner().to_string()))
}

fn unknown_key_error(path: &Path, key_path: &str, message: &str) -> Option<ConfigError> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    // Close by spelling (`slott`), or a typo or two away (`ulr`: a transposition).
    let close = |k: &str| {
        strsim::jaro_winkler(field, k) > 0.8
            || strsim::damerau_levenshtein(field, k) <= (field.len() / 3).max(1)
    };
    let suggestion = expected
        .iter()
        .filter(|k| close(k))
        .min_by_key(|k| strsim::damerau_levenshtein(field, k))
        .map(|k| k.to_string());
    // serde_path_to_error's path already ends in the unknown key.
    let key = if key_path.ends_with(field) {
        key_path.to_string()
    } else {
        format!("{key_path}.{field}")
    };
    Some(ConfigError::UnknownKey {
        path: path.into(),
        key: key.trim_start_matches('.').into(),
        suggestion,
    })
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of `table` from the process
/// environment (plugin manifests use the same syntax as pipelines).
pub fn interpolate_env(table: &mut toml::Table, path: &Path) -> Result<(), ConfigError> {
    interpolate_table(table, "", path, &|var| std::env::var(var).ok())
}

fn interpolate_table(
    table: &mut toml::Table,
    prefix: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (k, v) in table.iter_mut() {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        interpolate_value(v, &key, path, env)?;
    }
    Ok(())
}

fn interpolate_value(
    value: &mut toml::Value,
    key: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = interpolate(s, key, path, env)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{key}[{i}]"), path, env)?;
            }
        }
        toml::Value::Table(t) => interpolate_table(t, key, path, env)?,
        _ => {}
    }
    Ok(())
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
fn interpolate(
    s: &str,
    key: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    key: key.into(),
                    message: "`${` without a closing `}`".into(),
                });
            };
            let inner = &after[..end];
            let (var, default) = match inner.split_once(":-") {
                Some((v, d)) => (v, Some(d)),
                None => (inner, None),
            };
            match env(var).or_else(|| default.map(str::to_owned)) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(ConfigError::MissingVar {
                        path: path.into(),
                        key: key.into(),
                        var: var.into(),
                    });
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns_match_by_schema_and_name() {
        let t = |s: &str| s.parse::<TableName>().unwrap();
        assert!(t("public.*").matches(&t("public.orders")));
        assert!(!t("public.*").matches(&t("sales.orders")));
        assert!(t("sales.order_*").matches(&t("sales.order_items")));
        assert!(t("sales.order_*").matches(&t("sales.order_")));
        assert!(!t("sales.order_*").matches(&t("sales.orders")));
        assert!(t("*.a*b").matches(&t("x.a_long_b")));
        assert!(!t("*.a*b").matches(&t("x.ab_c")));
        assert!(t("public.orders").matches(&t("public.orders")));
        assert!(!t("public.orders").matches(&t("public.orders2")));
        assert!(t("public.*").is_pattern() && !t("public.orders").is_pattern());
    }

    const MINIMAL: &str = r#"
[source]
url = "postgres://app@localhost:5432/shop"
tables = ["public.orders", "customers"]

[[sink]]
type = "parquet"
url = "file:///tmp/weir-out"
"#;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse(text, Path::new("p.toml"), &|v| {
            (v == "PGHOST_TEST").then(|| "db.internal".to_string())
        })
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.source.slot, "weir");
        assert_eq!(c.source.publication, "weir");
        assert_eq!(
            c.source.tables[1],
            TableName {
                schema: "public".into(),
                table: "customers".into()
            }
        );
        assert_eq!(c.batch.max_events, 10_000);
        let SinkConfig::Parquet(p) = &c.sinks[0] else {
            panic!("a parquet sink")
        };
        assert_eq!(p.partition, Partitioning::Hourly);
        assert_eq!(p.compression, Compression::Zstd);
        assert_eq!(p.target_file_size, 128 << 20);
        assert_eq!(p.flush_interval, Duration::from_secs(10));
    }

    #[test]
    fn mirror_maintenance_gets_its_delete_threshold_and_refuses_one_out_of_range() {
        let mirror = "[source]\nurl = \"postgres://app@localhost/shop\"\ntables = [\"orders\"]\n\n\
                      [[sink]]\ntype = \"iceberg\"\nwarehouse = \"file:///tmp/lake\"\nmode = \"mirror\"\n\n\
                      [sink.maintenance]\ncompact = true\n";
        let c = parse(mirror).unwrap();
        let SinkConfig::Iceberg(i) = &c.sinks[0] else {
            panic!("an iceberg sink")
        };
        let m = i.maintenance.as_ref().unwrap();
        assert!(m.compact);
        assert_eq!(m.delete_threshold, 0.3);
        let err = parse(&format!("{mirror}delete_threshold = 1.5\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sink[0].maintenance.delete_threshold") && err.contains("from 0 to 1"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_its_path_and_suggests() {
        let text = MINIMAL.replace("tables =", "slott = \"x\"\ntables =");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "p.toml: unknown key `source.slott` (did you mean `slot`?)"
        );
        let text = MINIMAL.replace(
            "type = \"parquet\"",
            "type = \"parquet\"\ncompresion = \"gzip\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("`sink") && err.contains("did you mean `compression`?"),
            "{err}"
        );
    }

    #[test]
    fn interpolates_environment_with_defaults_and_escapes() {
        let text = MINIMAL
            .replace("localhost", "${PGHOST_TEST}:${PGPORT_TEST:-6543}")
            .replace(":5432", "");
        let c = parse(&text).unwrap();
        assert_eq!(c.source.url, "postgres://app@db.internal:6543/shop");
        assert_eq!(
            interpolate("a$${B}c$d", "k", Path::new("p"), &|_| None).unwrap(),
            "a${B}c$d"
        );
        let err = parse(&MINIMAL.replace("localhost", "${NOPE_NOT_SET}"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "p.toml: `source.url` uses ${NOPE_NOT_SET}, but the environment variable NOPE_NOT_SET is not set"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        let err = parse(&MINIMAL.replace(
            "postgres://app@localhost:5432/shop",
            "postgres://app@:notaport/x",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("p.toml: `source.url`: not a PostgreSQL URL"),
            "{err}"
        );
        let err = parse(&MINIMAL.replace("\"customers\"", "\"a.b.c\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.tables") && err.contains("schema.table"),
            "{err}"
        );
        let zero = MINIMAL.replace("tables =", "snapshot_parallelism = 0\ntables =");
        let err = parse(&zero).unwrap_err().to_string();
        assert!(
            err.contains("source.snapshot_parallelism") && err.contains("1 to 64"),
            "{err}"
        );
        let four = MINIMAL.replace("tables =", "snapshot_parallelism = 4\ntables =");
        assert_eq!(parse(&four).unwrap().source.snapshot_parallelism, 4);
        let default = parse(MINIMAL).unwrap().source.snapshot_parallelism;
        assert!((1..=8).contains(&default), "{default}");
        let err = parse(&format!("{MINIMAL}\n[batch]\nmax_delay = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("batch.max_delay") && err.contains("not a duration"),
            "{err}"
        );
        let err = parse(&MINIMAL.replace("file:///tmp/weir-out", "ftp://x/y"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sink[0].url"), "{err}");
        let err = parse(&MINIMAL.replace(
            "[[sink]]\ntype = \"parquet\"\nurl = \"file:///tmp/weir-out\"",
            "",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("no [[sink]]"), "{err}");
        let err = parse(&MINIMAL.replace("[source]", "[source]\nslot = \"Bad-Name\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.slot"), "{err}");
    }

    #[test]
    fn sizes_accept_units_and_plain_bytes() {
        let c = parse(&format!(
            "{MINIMAL}target_file_size = \"1MiB\"\n\n[batch]\nmax_bytes = 4096\n"
        ))
        .unwrap();
        let SinkConfig::Parquet(p) = &c.sinks[0] else {
            panic!("a parquet sink")
        };
        assert_eq!(p.target_file_size, 1 << 20);
        assert_eq!(c.batch.max_bytes, 4096);
    }
}
