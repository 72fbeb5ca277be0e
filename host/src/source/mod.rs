//! The PostgreSQL source: preflight checks, publication and slot, and the replication
//! stream decoded into batches.

pub mod decoder;
pub mod pgoutput;
pub mod schemas;
pub mod snapshot;
pub mod tls;
pub mod types;

use crate::batch::CommitPos;
use crate::batch::{Batcher, Signal, SourceBatch};
use crate::config::{BatchConfig, SnapshotMode, SourceConfig, TableName};
use crate::error::{ErrorKind, HostPanic};
use crate::lsn::Lsn;
use crate::stats::Stats;
use decoder::{Decoder, DecoderError};
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Session settings that make text output deterministic: UTC timestamps, ISO dates,
/// floats with every digit.
const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=3";

/// The same settings for sessions that read rows (snapshot, backfill): values must be
/// rendered exactly as the replication session renders them.
pub(crate) const READ_SESSION_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3";

/// Something that stops the source; user-caused ones say what to do.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Connect { target: String, message: String },
    #[error(
        "PostgreSQL at {target} asks user `{user}` for a password and source.url has none: write it in the URL (postgres://{user}:PASSWORD@host/db), set PGPASSWORD, or use ${{VAR}} interpolation"
    )]
    PasswordMissing { user: String, target: String },
    #[error(
        "authentication failed for user `{user}`: check the password in source.url (or PGPASSWORD) and pg_hba.conf"
    )]
    Auth { user: String },
    #[error(
        "wal_level is `{found}` on the server, but logical replication needs `logical`: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"
    )]
    WalLevel { found: String },
    #[error(
        "role `{user}` may not start replication: run ALTER ROLE {user} WITH REPLICATION, or connect as a role that can"
    )]
    NoReplicationPrivilege { user: String },
    #[error("role `{user}` may not {action}: {fix} (nothing was created)")]
    NoPrivilege {
        user: String,
        action: String,
        fix: String,
    },
    #[error(
        "table {table} has no primary key, so weir cannot backfill its existing rows while streaming (backfills read in chunks by key): add a primary key and run again, or capture only its changes from now on with source.snapshot = \"never\""
    )]
    NoKeyToBackfill { table: TableName },
    #[error(
        "table {table} does not exist in database `{database}`: create it or remove it from source.tables"
    )]
    TableMissing { table: TableName, database: String },
    #[error(
        "table {table} has no primary key and REPLICA IDENTITY {identity}, so updates and deletes cannot name their row: add a primary key or run ALTER TABLE {table} REPLICA IDENTITY FULL"
    )]
    NoReplicaIdentity {
        table: TableName,
        identity: &'static str,
    },
    #[error(
        "replication slot `{slot}` is in use by process {pid} (another weir or replication client): stop that process or choose another source.slot"
    )]
    SlotInUse { slot: String, pid: i32 },
    #[error(
        "replication slot `{slot}` {problem}: weir needs a logical pgoutput slot in this database; choose another source.slot or drop it with SELECT pg_drop_replication_slot('{slot}')"
    )]
    SlotUnusable { slot: String, problem: String },
    #[error(
        "replication slot `{slot}` does not exist, but the output is checkpointed at {checkpoint}: the changes committed since then cannot be read any more (was the slot dropped, or did the server fail over to a standby without it?). \
         To start over with a complete copy, move the output and its _weir state aside and run again (a new initial snapshot is taken). \
         To accept the gap and capture changes from now on, run `weir run PIPELINE --new-slot`"
    )]
    SlotMissing { slot: String, checkpoint: Lsn },
    /// A query failed; the server's SQLSTATE, if it answered, says why.
    #[error("{context}: {}", pg_message(source))]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server answered something weir cannot read.
    #[error("{context}: {message}")]
    Sql { context: String, message: String },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Panic(#[from] HostPanic),
    #[error("replication stream of slot `{slot}`: {message}")]
    Stream { slot: String, message: String },
    #[error("replication stream of slot `{slot}`: {source}")]
    Decode {
        slot: String,
        #[source]
        source: DecodeFailure,
    },
}

impl SourceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Connect { .. } | SourceError::Stream { .. } => ErrorKind::Connect,
            // Another client holds the slot: it may let go of it.
            SourceError::SlotInUse { .. } => ErrorKind::Connect,
            SourceError::PasswordMissing { .. }
            | SourceError::Auth { .. }
            | SourceError::NoReplicationPrivilege { .. }
            | SourceError::NoPrivilege { .. } => ErrorKind::Permission,
            SourceError::WalLevel { .. }
            | SourceError::TableMissing { .. }
            | SourceError::NoReplicaIdentity { .. }
            | SourceError::NoKeyToBackfill { .. }
            | SourceError::SlotUnusable { .. }
            | SourceError::SlotMissing { .. } => ErrorKind::Config,
            SourceError::Query { source, .. } => query_kind(source),
            SourceError::Sql { .. } | SourceError::Decode { .. } => ErrorKind::Data,
            SourceError::Storage(e) => e.kind(),
            SourceError::Panic(_) => ErrorKind::Internal,
        }
    }
}

/// What a failed query means, by the class of its SQLSTATE: no answer, a server going
/// away or short of resources is a connection problem; a refused right, a missing
/// object or bad data is not helped by asking again.
fn query_kind(e: &tokio_postgres::Error) -> ErrorKind {
    let Some(code) = e.code() else {
        return ErrorKind::Connect;
    };
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        return ErrorKind::Permission;
    }
    match &code.code()[..2] {
        "28" => ErrorKind::Permission,
        "42" | "0A" => ErrorKind::Config,
        "22" | "23" | "XX" => ErrorKind::Data,
        _ => ErrorKind::Connect,
    }
}

/// A message of the stream that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    #[error(transparent)]
    Message(#[from] pgoutput::DecodeError),
    #[error(transparent)]
    Decoder(#[from] DecoderError),
}

/// What the preflight learned about the database.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub database: String,
    pub user: String,
    /// Primary key columns of each captured table (empty under REPLICA IDENTITY FULL
    /// without a primary key).
    pub primary_keys: HashMap<TableName, Vec<String>>,
    /// Names of the types the captured tables use.
    pub type_names: HashMap<u32, String>,
    /// Domains (and domains over domains) to their base type and typmod.
    pub domains: HashMap<u32, (u32, i32)>,
    /// Schema versions of the captured relations (set by the pipeline before streaming).
    pub versions: schemas::SchemaVersions,
    /// The slot exists already (otherwise `prepare` creates it).
    pub slot_exists: bool,
    /// Tables missing from an existing publication (`prepare` adds them).
    pub publication_missing: Option<Vec<TableName>>,
    /// Tables in the publication that `source.tables` no longer names (`prepare`
    /// removes them).
    pub publication_extra: Vec<TableName>,
}

/// A connection for ordinary SQL (checks, setup, positions).
pub struct Control {
    pub client: tokio_postgres::Client,
    config: tokio_postgres::Config,
    tls: TlsConfig,
    _conn: JoinHandle<()>,
}

/// The first host of a connection config: a name, an address or a socket directory.
pub fn host_of(config: &tokio_postgres::Config) -> String {
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    }
}

/// The first port of a connection config.
pub fn port_of(config: &tokio_postgres::Config) -> u16 {
    config.get_ports().first().copied().unwrap_or(5432)
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    format!("{}:{}", host_of(config), port_of(config))
}

/// The URL parsed, with `PGPASSWORD` filled in when the URL has no password (its TLS
/// parameters are left out: see [`tls::split`]).
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, SourceError> {
    Ok(pg_target(url)?.0)
}

/// The URL parsed, and its TLS settings.
pub fn pg_target(url: &str) -> Result<(tokio_postgres::Config, TlsConfig), SourceError> {
    let malformed = |message: String| SourceError::Connect {
        target: "source.url".into(),
        message,
    };
    let (url, tls) = tls::split(url).map_err(|e| malformed(e.to_string()))?;
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| malformed(format!("malformed URL: {e}")))?;
    // An sslmode weir did not take out would be ignored below: refuse it rather than
    // connect with less protection than asked for.
    if config.get_ssl_mode() != tokio_postgres::config::SslMode::Prefer {
        return Err(malformed(
            "sslmode is written in a way weir cannot read: write ?sslmode=… in a URL, or sslmode=… in key=value form".into(),
        ));
    }
    // weir negotiates TLS itself, before tokio-postgres speaks.
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    if config.get_password().is_none()
        && let Ok(pw) = std::env::var("PGPASSWORD")
    {
        config.password(pw);
    }
    if config.get_user().is_none() {
        config.user(default_user());
    }
    if config.get_hosts().is_empty() {
        config.host("localhost");
    }
    Ok((config, tls))
}

/// The role a URL without a user connects as, as libpq chooses it: `PGUSER`, else the
/// operating-system user this process runs as.
fn default_user() -> String {
    std::env::var("PGUSER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(os_user)
        .unwrap_or_else(|| "postgres".into())
}

/// The name of the effective user, from `/proc/self/status` and `/etc/passwd` (no
/// unsafe code); `USER` where those cannot be read.
fn os_user() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let uid = status.as_deref().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(2).map(str::to_owned)
    });
    let from_passwd = uid.and_then(|uid| {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields.get(2) == Some(&uid.as_str())).then(|| fields[0].to_owned())
        })
    });
    from_passwd.or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
}

/// Opens a SQL connection: over a Unix socket as it is, over TCP through the TLS the
/// settings ask for; under `prefer`, a failed TLS attempt is tried again without, as libpq
/// does. Returns the TLS settings that worked, for the replication connection.
async fn open(
    config: &tokio_postgres::Config,
    tls: &TlsConfig,
) -> Result<(tokio_postgres::Client, JoinHandle<()>, TlsConfig), ConnectFailure> {
    match open_with(config, tls).await {
        Ok((client, conn)) => Ok((client, conn, tls.clone())),
        Err(e) if tls.mode == pgwire_replication::SslMode::Prefer => {
            tracing::debug!(error = %e, "The TLS attempt failed; trying without TLS (sslmode=prefer).");
            let plain = TlsConfig::disabled();
            let (client, conn) =
                open_with(config, &plain)
                    .await
                    .map_err(|plain| ConnectFailure::Both {
                        plain: Box::new(plain),
                        tls: Box::new(e),
                    })?;
            Ok((client, conn, plain))
        }
        Err(e) => Err(e),
    }
}

async fn open_with(
    config: &tokio_postgres::Config,
    tls: &TlsConfig,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), ConnectFailure> {
    fn run<S>(
        conn: tokio_postgres::Connection<S, tokio_postgres::tls::NoTlsStream>,
    ) -> JoinHandle<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Control connection closed.");
            }
        })
    }
    if let Some(tokio_postgres::config::Host::Unix(_)) = config.get_hosts().first() {
        let (client, conn) = config.connect(NoTls).await?;
        return Ok((client, run(conn)));
    }
    let (host, port) = (host_of(config), port_of(config));
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(ConnectFailure::Tcp)?;
    let _ = tcp.set_nodelay(true);
    // A dead peer (a failed-over server, a dropped NAT entry) is noticed in minutes,
    // not the hours of the system default.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let stream = pgwire_replication::tls::rustls::maybe_upgrade_to_tls(tcp, tls, &host)
        .await
        .map_err(ConnectFailure::Tls)?;
    let (client, conn) = config.connect_raw(stream, NoTls).await?;
    Ok((client, run(conn)))
}

/// Why a SQL connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("{0}; check that PostgreSQL is running and source.url is right")]
    Tcp(#[source] std::io::Error),
    #[error("{0} (sslmode and sslrootcert in source.url)")]
    Tls(#[source] pgwire_replication::PgWireError),
    /// The server refused (its message and SQLSTATE), or the client gave up.
    #[error("{}", postgres_failure(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// Under `sslmode=prefer`, both attempts failed (once when they failed alike).
    #[error("{}", both_failed(plain, tls))]
    Both {
        plain: Box<ConnectFailure>,
        tls: Box<ConnectFailure>,
    },
}

impl ConnectFailure {
    /// The server's SQLSTATE, when it refused.
    fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            ConnectFailure::Postgres(e) => e.code(),
            ConnectFailure::Both { plain, tls } => plain.sqlstate().or_else(|| tls.sqlstate()),
            _ => None,
        }
    }

    /// The server asked for a password and there was none to send.
    fn password_missing(&self) -> bool {
        match self {
            // tokio-postgres has no public kind for it: a configuration error whose
            // cause is its "password missing".
            ConnectFailure::Postgres(e) => {
                e.as_db_error().is_none()
                    && std::error::Error::source(e)
                        .is_some_and(|c| c.to_string() == "password missing")
            }
            ConnectFailure::Both { plain, tls } => {
                plain.password_missing() || tls.password_missing()
            }
            _ => false,
        }
    }
}

fn postgres_failure(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(_) => pg_message(e),
        None => format!("{e}; check that PostgreSQL is running and source.url is right"),
    }
}

fn both_failed(plain: &ConnectFailure, tls: &ConnectFailure) -> String {
    let (plain, tls) = (plain.to_string(), tls.to_string());
    match plain == tls {
        true => plain,
        false => format!("{plain} (and with TLS: {tls})"),
    }
}

pub(crate) fn sql_err(context: &str) -> impl Fn(tokio_postgres::Error) -> SourceError + '_ {
    move |source| SourceError::Query {
        context: context.into(),
        source,
    }
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(crate) fn quote_table(t: &TableName) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table))
}

/// The catalog's estimate of a table's rows (`pg_class.reltuples`, summed over a
/// partitioned table's partitions); `None` when it was never vacuumed or analyzed.
pub(crate) async fn estimated_rows(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<Option<u64>, SourceError> {
    let row = client
        .query_one(
            "SELECT CASE WHEN bool_and(c.reltuples >= 0) THEN sum(c.reltuples)::bigint END \
             FROM pg_class c WHERE c.relkind <> 'p' AND (c.oid = $1::text::regclass \
             OR c.oid IN (SELECT relid FROM pg_partition_tree($1::text::regclass) WHERE isleaf))",
            &[&quote_table(table)],
        )
        .await
        .map_err(sql_err("reading the table's estimated row count"))?;
    Ok(row.get::<_, Option<i64>>(0).map(|n| n.max(0) as u64))
}

/// One log line of a table copy's progress.
pub(crate) fn log_copy_progress(copy: &crate::stats::TableCopy, message: &str) {
    tracing::info!(
        table = %copy.table,
        rows = copy.rows,
        rows_per_s = copy.rows_per_s() as u64,
        estimated_rows = %copy.estimated.map_or("unknown".to_string(), |e| e.to_string()),
        percent = %copy.percent().map_or("unknown".to_string(), |p| format!("{p:.0}")),
        seconds_left = %copy.seconds_left().map_or("unknown".to_string(), |s| format!("{s:.0}")),
        "{message}"
    );
}

/// What a query reads a captured table's rows from: the table alone (`ONLY`: a table's
/// inheritance children are tables of their own in the stream), or, for a partitioned
/// table, every partition (its changes stream under its own name, see
/// `publish_via_partition_root`).
pub(crate) async fn rows_of(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<String, SourceError> {
    let partitioned: bool = client
        .query_opt(
            "SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(sql_err("looking up the table's kind"))?
        .is_some_and(|r| r.get(0));
    Ok(match partitioned {
        true => quote_table(table),
        false => format!("ONLY {}", quote_table(table)),
    })
}

/// The tables `source.tables` selects now.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub tables: Vec<TableName>,
    /// Tables a pattern matches whose rows updates and deletes cannot name.
    pub left_out: Vec<TableName>,
}

impl Resolved {
    /// Warns of each table left out.
    pub fn warn_left_out(&self) {
        for table in &self.left_out {
            tracing::warn!(table = %table, "A table matching source.tables has no primary key and REPLICA IDENTITY DEFAULT or NOTHING: left out (add a primary key, or set REPLICA IDENTITY FULL, to capture it).");
        }
    }
}

/// Type names by OID.
type TypeNames = HashMap<u32, String>;

/// What a run changes in the publication.
#[derive(Clone, Copy)]
struct PublicationChanges<'a> {
    /// `None`: the publication does not exist.
    missing: Option<&'a [TableName]>,
    /// Tables it holds that `source.tables` no longer names.
    extra: &'a [TableName],
}

impl Control {
    /// Connects for SQL, turning the common failures into clear errors.
    pub async fn connect(url: &str) -> Result<Control, SourceError> {
        let (config, tls) = pg_target(url)?;
        let target = describe_target(&config);
        let user = config.get_user().unwrap_or_default().to_owned();
        let connect = tokio::time::timeout(Duration::from_secs(15), open(&config, &tls));
        let (client, conn, tls) = match connect.await {
            Err(_) => {
                return Err(SourceError::Connect {
                    target,
                    message: "no answer within 15 s; check host, port and firewalls".into(),
                });
            }
            // 28P01; a refusal by pg_hba.conf (28000) says so itself in the server's words.
            Ok(Err(e)) if e.sqlstate() == Some(&SqlState::INVALID_PASSWORD) => {
                return Err(SourceError::Auth { user });
            }
            Ok(Err(e)) if e.password_missing() && config.get_password().is_none() => {
                return Err(SourceError::PasswordMissing { user, target });
            }
            Ok(Err(e)) => {
                return Err(SourceError::Connect {
                    target,
                    message: e.to_string(),
                });
            }
            Ok(Ok(opened)) => opened,
        };
        Ok(Control {
            client,
            config,
            tls,
            _conn: conn,
        })
    }

    /// The server's current flushed WAL position.
    pub async fn current_wal_flush_lsn(&self) -> Result<Lsn, SourceError> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .map_err(sql_err("reading the WAL position"))?;
        let text: String = row.get(0);
        text.parse()
            .map_err(|e: crate::lsn::ParseLsnError| SourceError::Sql {
                context: "reading the WAL position".into(),
                message: e.to_string(),
            })
    }

    /// The tables `wanted` names now: each exact name as it is (a missing one is
    /// reported by `preflight`), then the tables each pattern matches, ordinary or
    /// partitioned, in schema and name order. A matched table updates and deletes cannot
    /// name rows of (no primary key, replica identity default or nothing) is left out.
    pub async fn resolve_tables(&self, wanted: &[TableName]) -> Result<Resolved, SourceError> {
        let mut tables: Vec<TableName> =
            wanted.iter().filter(|t| !t.is_pattern()).cloned().collect();
        let patterns: Vec<&TableName> = wanted.iter().filter(|t| t.is_pattern()).collect();
        let mut left_out = Vec::new();
        if patterns.is_empty() {
            return Ok(Resolved { tables, left_out });
        }
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text, \
                 c.relreplident IN ('f', 'i') OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(sql_err("listing the tables source.tables selects"))?;
        for row in rows {
            let table = TableName {
                schema: row.get(0),
                table: row.get(1),
            };
            if tables.contains(&table) || !patterns.iter().any(|p| p.matches(&table)) {
                continue;
            }
            match row.get::<_, bool>(2) {
                true => tables.push(table),
                false => left_out.push(table),
            }
        }
        Ok(Resolved { tables, left_out })
    }

    /// Whether `table` has a primary key (a backfill reads it in chunks by key).
    pub async fn has_primary_key(&self, table: &TableName) -> Result<bool, SourceError> {
        let row = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1::text::regclass AND indisprimary)",
                &[&quote_table(table)],
            )
            .await
            .map_err(sql_err("looking up the table's primary key"))?;
        Ok(row.get(0))
    }

    /// Whether a replication client is connected to `slot` now (a running pipeline).
    pub async fn slot_active(&self, slot: &str) -> Result<bool, SourceError> {
        let row = self
            .client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(sql_err("reading the slot's state"))?;
        Ok(row.is_some_and(|row| row.get::<_, bool>(0)))
    }

    /// Writes `signal` into the WAL as a non-transactional logical message; returns
    /// where it is.
    pub async fn emit(&self, signal: &Signal) -> Result<Lsn, SourceError> {
        Ok(self.emit_with_xid(signal).await?.0)
    }

    /// [`emit`](Self::emit), also returning the transaction id its statement took after
    /// writing the message. Taking one makes the statement's commit flush the WAL
    /// through the message: the WAL sender decodes only flushed WAL, and a message alone
    /// would wait for the WAL writer (up to `wal_writer_delay`, 200 ms by default).
    pub async fn emit_with_xid(&self, signal: &Signal) -> Result<(Lsn, i64), SourceError> {
        let context = "writing a message into the WAL";
        let (prefix, content) = signal.message();
        let row = self
            .client
            .query_one(
                "SELECT pg_logical_emit_message(false, $1, $2)::text, txid_current()",
                &[&prefix, &content],
            )
            .await
            .map_err(sql_err(context))?;
        let text: String = row.get(0);
        let lsn = text
            .parse()
            .map_err(|e: crate::lsn::ParseLsnError| SourceError::Sql {
                context: context.into(),
                message: e.to_string(),
            })?;
        Ok((lsn, row.get(1)))
    }

    /// Checks everything a pipeline needs, without changing anything.
    /// What a reader beside a running pipeline needs (`weir verify`): the tables' keys,
    /// type names and domains, and that the role may read them. The slot and the
    /// publication are not checked.
    pub async fn describe(&self, cfg: &SourceConfig) -> Result<SourceInfo, SourceError> {
        let (user, database) = self.check_server().await?;
        let (primary_keys, relids) = self.check_tables(&cfg.tables, &database).await?;
        self.check_readable(&relids, &user).await?;
        let domains = self.domains().await?;
        self.register_types(&domains).await?;
        Ok(SourceInfo {
            type_names: self.type_names(&relids).await?,
            domains,
            database,
            user,
            primary_keys,
            versions: schemas::SchemaVersions::in_memory(),
            slot_exists: true,
            publication_missing: None,
            publication_extra: Vec::new(),
        })
    }

    pub async fn preflight(&self, cfg: &SourceConfig) -> Result<SourceInfo, SourceError> {
        let (user, database) = self.check_server().await?;
        let (primary_keys, relids) = self.check_tables(&cfg.tables, &database).await?;
        let type_names = self.type_names(&relids).await?;
        let domains = self.domains().await?;
        self.register_types(&domains).await?;
        let slot_exists = self.check_slot(&cfg.slot, &database).await?;
        let (publication_missing, publication_extra) = self.publication_missing(cfg).await?;
        let changes = PublicationChanges {
            missing: publication_missing.as_deref(),
            extra: &publication_extra,
        };
        self.check_privileges(cfg, &relids, changes, &user, &database)
            .await?;
        if slot_exists && cfg.snapshot == SnapshotMode::Initial {
            // Tables added to the publication are backfilled, in chunks by key.
            let keyless = publication_missing.iter().flatten().find(|t| {
                primary_keys
                    .get(*t)
                    .is_none_or(|pk: &Vec<String>| pk.is_empty())
            });
            if let Some(table) = keyless {
                return Err(SourceError::NoKeyToBackfill {
                    table: table.clone(),
                });
            }
        }
        Ok(SourceInfo {
            database,
            user,
            primary_keys,
            type_names,
            domains,
            versions: schemas::SchemaVersions::in_memory(),
            slot_exists,
            publication_missing,
            publication_extra,
        })
    }

    /// Checks that the role may do what a run will do: read the tables (the snapshot and
    /// backfills), and create the publication or add tables to it.
    async fn check_privileges(
        &self,
        cfg: &SourceConfig,
        relids: &[u32],
        changes: PublicationChanges<'_>,
        user: &str,
        database: &str,
    ) -> Result<(), SourceError> {
        self.check_readable(relids, user).await?;
        self.check_publication_rights(cfg, changes, user, database)
            .await
    }

    /// Checks that the role may read the tables (the snapshot and backfills).
    async fn check_readable(&self, relids: &[u32], user: &str) -> Result<(), SourceError> {
        let unreadable: Vec<String> = self
            .client
            .query(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY($1) \
                 AND NOT has_table_privilege(current_user, c.oid, 'SELECT') ORDER BY 1",
                &[&relids],
            )
            .await
            .map_err(sql_err("checking table privileges"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !unreadable.is_empty() {
            return Err(SourceError::NoPrivilege {
                user: user.into(),
                action: format!("read {}", unreadable.join(", ")),
                fix: format!("GRANT SELECT ON {} TO {user}", unreadable.join(", ")),
            });
        }
        Ok(())
    }

    /// Checks that the role may create the publication, or add and remove its tables.
    async fn check_publication_rights(
        &self,
        cfg: &SourceConfig,
        changes: PublicationChanges<'_>,
        user: &str,
        database: &str,
    ) -> Result<(), SourceError> {
        let publication_missing = changes.missing;
        let c = &self.client;
        let adding: Vec<&TableName> = match publication_missing {
            None => cfg.tables.iter().collect(),
            Some(missing) => missing.iter().collect(),
        };
        if adding.is_empty() && changes.extra.is_empty() {
            return Ok(());
        }
        let row = c
            .query_one(
                "SELECT has_database_privilege(current_user, current_database(), 'CREATE'), \
                 coalesce((SELECT pg_has_role(current_user, pubowner, 'USAGE') FROM pg_publication WHERE pubname = $1), true)",
                &[&cfg.publication],
            )
            .await
            .map_err(sql_err("checking database privileges"))?;
        let (may_create, owns_publication): (bool, bool) = (row.get(0), row.get(1));
        let action = match (publication_missing, adding.is_empty()) {
            (None, _) => format!("create publication `{}`", cfg.publication),
            (Some(_), false) => format!("add tables to publication `{}`", cfg.publication),
            (Some(_), true) => format!("remove tables from publication `{}`", cfg.publication),
        };
        let published = adding
            .iter()
            .map(|t| quote_table(t))
            .collect::<Vec<_>>()
            .join(", ");
        let name = quote_ident(&cfg.publication);
        let as_owner = match (publication_missing, adding.is_empty()) {
            (None, _) => format!("CREATE PUBLICATION {name} FOR TABLE {published}"),
            (Some(_), false) => format!("ALTER PUBLICATION {name} ADD TABLE {published}"),
            (Some(_), true) => {
                let removed: Vec<String> = changes.extra.iter().map(quote_table).collect();
                format!("ALTER PUBLICATION {name} DROP TABLE {}", removed.join(", "))
            }
        };
        if publication_missing.is_none() && !may_create {
            return Err(SourceError::NoPrivilege {
                user: user.into(),
                action,
                fix: format!(
                    "GRANT CREATE ON DATABASE {} TO {user}, or run as a superuser: {as_owner}",
                    quote_ident(database)
                ),
            });
        }
        if !owns_publication {
            return Err(SourceError::NoPrivilege {
                user: user.into(),
                action,
                fix: format!("run as the publication's owner: {as_owner}"),
            });
        }
        let not_owned: Vec<String> = c
            .query(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
                 AND NOT pg_has_role(current_user, c.relowner, 'USAGE') ORDER BY 1",
                &[
                    &adding.iter().map(|t| t.schema.as_str()).collect::<Vec<_>>(),
                    &adding.iter().map(|t| t.table.as_str()).collect::<Vec<_>>(),
                ],
            )
            .await
            .map_err(sql_err("checking table owners"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !not_owned.is_empty() {
            return Err(SourceError::NoPrivilege {
                user: user.into(),
                action,
                fix: format!(
                    "a publication takes only tables its creator owns ({} not): run as their owner or a superuser: {as_owner}",
                    not_owned.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Checks that the server decodes logically and that the role may replicate; returns
    /// the role's name and the database's.
    async fn check_server(&self) -> Result<(String, String), SourceError> {
        let c = &self.client;
        let row = c
            .query_one(
                "SELECT current_setting('wal_level'), current_user::text, current_database()::text",
                &[],
            )
            .await
            .map_err(sql_err("reading server settings"))?;
        let (wal_level, user, database): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        if wal_level != "logical" {
            return Err(SourceError::WalLevel { found: wal_level });
        }
        let row = c
            .query_one(
                "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(sql_err("reading role attributes"))?;
        if !row.get::<_, bool>(0) {
            return Err(SourceError::NoReplicationPrivilege { user });
        }
        Ok((user, database))
    }

    /// Checks that each table exists and that its changes name their row (a primary key,
    /// or REPLICA IDENTITY FULL or USING INDEX). Returns each table's primary key
    /// columns, and the tables' oids.
    async fn check_tables(
        &self,
        tables: &[TableName],
        database: &str,
    ) -> Result<(HashMap<TableName, Vec<String>>, Vec<u32>), SourceError> {
        let c = &self.client;
        let mut primary_keys = HashMap::new();
        let mut relids = Vec::new();
        for table in tables {
            let row = c
                .query_opt(
                    "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                    &[&table.schema, &table.table],
                )
                .await
                .map_err(sql_err("looking up tables"))?;
            let Some(row) = row else {
                return Err(SourceError::TableMissing {
                    table: table.clone(),
                    database: database.into(),
                });
            };
            let (relid, identity): (u32, String) = (row.get(0), row.get(1));
            let pk: Vec<String> = c
                .query(
                    "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                     AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1 AND i.indisprimary ORDER BY a.attnum",
                    &[&relid],
                )
                .await
                .map_err(sql_err("looking up primary keys"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            match identity.as_str() {
                "n" => {
                    return Err(SourceError::NoReplicaIdentity {
                        table: table.clone(),
                        identity: "NOTHING",
                    });
                }
                "d" if pk.is_empty() => {
                    return Err(SourceError::NoReplicaIdentity {
                        table: table.clone(),
                        identity: "DEFAULT",
                    });
                }
                _ => {}
            }
            primary_keys.insert(table.clone(), pk);
            relids.push(relid);
        }
        Ok((primary_keys, relids))
    }

    /// The names of the types the tables' columns use.
    async fn type_names(&self, relids: &[u32]) -> Result<TypeNames, SourceError> {
        Ok(self
            .client
            .query(
                "SELECT DISTINCT t.oid, CASE WHEN n.nspname = 'pg_catalog' THEN t.typname::text \
                 ELSE n.nspname || '.' || t.typname END \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace \
                 WHERE a.attrelid = ANY($1) AND a.attnum > 0",
                &[&relids],
            )
            .await
            .map_err(sql_err("looking up column types"))?
            .iter()
            .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// Reads the database's enums, composites, ranges and arrays of them for the column
    /// mapping (see [`types`]).
    async fn register_types(&self, domains: &HashMap<u32, (u32, i32)>) -> Result<(), SourceError> {
        let read = types::read(&self.client, |oid, typmod| {
            decoder::base_type(domains, oid, typmod)
        })
        .await
        .map_err(sql_err("looking up enums, composite types and ranges"))?;
        types::register(read);
        Ok(())
    }

    /// Every domain of the database, to its base type and typmod: domains are few, and
    /// chains of them resolve here without more queries.
    async fn domains(&self) -> Result<HashMap<u32, (u32, i32)>, SourceError> {
        let direct: HashMap<u32, (u32, i32)> = self
            .client
            .query(
                "SELECT oid, typbasetype, typtypmod FROM pg_type WHERE typtype = 'd'",
                &[],
            )
            .await
            .map_err(sql_err("looking up domains"))?
            .iter()
            .map(|r| (r.get::<_, u32>(0), (r.get::<_, u32>(1), r.get::<_, i32>(2))))
            .collect();
        let domains = direct
            .keys()
            .map(|&d| {
                let (mut base, mut typmod) = direct[&d];
                for _ in 0..32 {
                    match direct.get(&base) {
                        Some(&(next, m)) => {
                            base = next;
                            if typmod < 0 {
                                typmod = m;
                            }
                        }
                        None => break,
                    }
                }
                (d, (base, typmod))
            })
            .collect();
        Ok(domains)
    }

    /// Whether the slot exists. One that does must be a logical pgoutput slot of this
    /// database that still has its WAL, and no other process may be using it.
    async fn check_slot(&self, slot: &str, database: &str) -> Result<bool, SourceError> {
        let row = self
            .client
            .query_opt(
                "SELECT slot_type::text, coalesce(plugin::text, ''), coalesce(database::text, ''), active_pid, \
                 wal_status::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(sql_err("looking up the replication slot"))?;
        let Some(row) = row else {
            return Ok(false);
        };
        let (kind, plugin, db, pid, wal_status): (
            String,
            String,
            String,
            Option<i32>,
            Option<String>,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let problem = if kind != "logical" {
            Some("is a physical slot".to_string())
        } else if plugin != "pgoutput" {
            Some(format!("uses the output plugin `{plugin}`"))
        } else if db != database {
            Some(format!("belongs to database `{db}`"))
        } else if wal_status.as_deref() == Some("lost") {
            Some("has been invalidated: the server removed WAL it still needed (max_slot_wal_keep_size), so changes since its position are lost. Drop it with `weir slot drop PIPELINE`; the next run then says how to go on".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(SourceError::SlotUnusable {
                slot: slot.into(),
                problem,
            });
        }
        if let Some(pid) = pid {
            return Err(SourceError::SlotInUse {
                slot: slot.into(),
                pid,
            });
        }
        Ok(true)
    }

    /// The configured tables the publication lacks: `None` when there is no publication,
    /// none when it publishes every table.
    /// The configured tables missing from the publication (`None`: there is no
    /// publication), and the tables it holds that are not configured any more.
    async fn publication_missing(
        &self,
        cfg: &SourceConfig,
    ) -> Result<(Option<Vec<TableName>>, Vec<TableName>), SourceError> {
        let c = &self.client;
        let row = c
            .query_opt(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[&cfg.publication],
            )
            .await
            .map_err(sql_err("looking up the publication"))?;
        match row {
            None => Ok((None, Vec::new())),
            Some(row) if row.get::<_, bool>(0) => Ok((Some(vec![]), Vec::new())),
            Some(_) => {
                // The tables it publishes, not counting partitions (a publication that
                // does not publish through the root lists a partitioned table's
                // partitions), and the tables it names (a partitioned table itself).
                let published: Vec<TableName> = c
                    .query(
                        "SELECT pt.schemaname::text, pt.tablename::text FROM pg_publication_tables pt \
                         JOIN pg_namespace n ON n.nspname = pt.schemaname \
                         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                         WHERE pt.pubname = $1 AND NOT c.relispartition \
                         UNION SELECT n.nspname::text, c.relname::text FROM pg_publication_rel pr \
                         JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid \
                         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = $1",
                        &[&cfg.publication],
                    )
                    .await
                    .map_err(sql_err("looking up the publication's tables"))?
                    .iter()
                    .map(|r| TableName { schema: r.get(0), table: r.get(1) })
                    .collect();
                let missing = cfg.tables.iter().filter(|t| !published.contains(t));
                let extra = published.iter().filter(|t| !cfg.tables.contains(t));
                Ok((Some(missing.cloned().collect()), extra.cloned().collect()))
            }
        }
    }

    /// Creates the publication (or adds missing tables to it), then the slot. The
    /// publication comes first: a slot must not start before the publication exists.
    pub async fn prepare(&self, cfg: &SourceConfig, info: &SourceInfo) -> Result<(), SourceError> {
        self.prepare_publication(cfg, info).await?;
        if !info.slot_exists {
            tracing::info!(slot = %cfg.slot, "Creating the replication slot (waits for open transactions to finish).");
            self.client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&cfg.slot],
                )
                .await
                .map_err(sql_err("creating the replication slot"))?;
        }
        Ok(())
    }

    /// Drops the slot (one an unfinished snapshot left behind).
    pub async fn drop_slot(&self, slot: &str) -> Result<(), SourceError> {
        self.client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(sql_err(
                "dropping the replication slot of an unfinished snapshot",
            ))?;
        Ok(())
    }

    /// Creates the slot on a replication session that exports its snapshot. Returns the
    /// session (idle until [`PgSource::start`] starts streaming on it), the slot's
    /// consistent point and the snapshot's name, valid while the session stays idle.
    pub async fn create_slot_exporting(
        &self,
        cfg: &SourceConfig,
        info: &SourceInfo,
    ) -> Result<(ReplicationClient, Lsn, String), SourceError> {
        self.slot_exporting(cfg, info, &cfg.slot, "").await
    }

    /// Creates a temporary slot `name` (dropped when its session ends) that exports its
    /// snapshot: a read of the tables exactly as of the returned position, for
    /// `weir verify`. The pipeline's own slot is not touched.
    pub async fn create_temporary_slot_exporting(
        &self,
        cfg: &SourceConfig,
        info: &SourceInfo,
        name: &str,
    ) -> Result<(ReplicationClient, Lsn, String), SourceError> {
        self.slot_exporting(cfg, info, name, "TEMPORARY ").await
    }

    async fn slot_exporting(
        &self,
        cfg: &SourceConfig,
        info: &SourceInfo,
        name: &str,
        temporary: &str,
    ) -> Result<(ReplicationClient, Lsn, String), SourceError> {
        let slot_err = |message: String| SourceError::Stream {
            slot: name.to_owned(),
            message,
        };
        let mut client =
            ReplicationClient::connect_gated(self.replication_config(cfg, &info.database))
                .await
                .map_err(|e| slot_err(e.to_string()))?;
        tracing::info!(slot = %name, "Creating the replication slot with a snapshot (waits for open transactions to finish).");
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} {temporary}LOGICAL pgoutput (SNAPSHOT 'export')",
                quote_ident(name)
            ))
            .await
            .map_err(|e| slot_err(format!("creating the slot: {e}")))?;
        let text = |i: usize| {
            rows.first()
                .and_then(|r| r.get(i).cloned().flatten())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok_or_else(|| slot_err("CREATE_REPLICATION_SLOT returned no snapshot".into()))
        };
        let point: Lsn = text(1)?
            .parse()
            .map_err(|e| slot_err(format!("consistent point: {e}")))?;
        Ok((client, point, text(2)?))
    }

    /// Creates the publication, or adds the tables missing from it.
    pub async fn prepare_publication(
        &self,
        cfg: &SourceConfig,
        info: &SourceInfo,
    ) -> Result<(), SourceError> {
        let tables = |ts: &[TableName]| ts.iter().map(quote_table).collect::<Vec<_>>().join(", ");
        match &info.publication_missing {
            None => {
                // A partitioned table's changes then stream under its own name, as the
                // snapshot reads it: one table, whatever partition a row is in.
                let sql = format!(
                    "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
                    quote_ident(&cfg.publication),
                    tables(&cfg.tables)
                );
                self.client
                    .batch_execute(&sql)
                    .await
                    .map_err(sql_err("creating the publication"))?;
                tracing::info!(publication = %cfg.publication, "Created the publication.");
            }
            Some(missing) if !missing.is_empty() => {
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(&cfg.publication),
                    tables(missing)
                );
                self.client
                    .batch_execute(&sql)
                    .await
                    .map_err(sql_err("adding tables to the publication"))?;
                match cfg.snapshot {
                    SnapshotMode::Initial => tracing::info!(
                        publication = %cfg.publication,
                        tables = %tables(missing),
                        "Added tables to the publication; their existing rows are backfilled while the stream goes on."
                    ),
                    SnapshotMode::Never => tracing::warn!(
                        publication = %cfg.publication,
                        tables = %tables(missing),
                        "Added tables to the publication; their changes are captured from now on, earlier rows are not (snapshot = \"never\")."
                    ),
                }
            }
            Some(_) => {}
        }
        if !info.publication_extra.is_empty() {
            let sql = format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                quote_ident(&cfg.publication),
                tables(&info.publication_extra)
            );
            self.client
                .batch_execute(&sql)
                .await
                .map_err(sql_err("removing tables from the publication"))?;
            tracing::info!(
                publication = %cfg.publication,
                tables = %tables(&info.publication_extra),
                "Removed tables no longer in source.tables from the publication: the server stops decoding their changes for this pipeline."
            );
        }
        self.publish_via_root(cfg).await
    }

    /// A publication made without `publish_via_partition_root` streams a partitioned
    /// table's changes under its partitions' names, which the pipeline does not capture:
    /// it is switched on when a captured table is partitioned.
    async fn publish_via_root(&self, cfg: &SourceConfig) -> Result<(), SourceError> {
        let partitioned: Vec<String> = self
            .client
            .query(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND c.relkind = 'p' \
                 AND NOT (SELECT pubviaroot FROM pg_publication WHERE pubname = $3) ORDER BY 1",
                &[
                    &cfg.tables.iter().map(|t| t.schema.as_str()).collect::<Vec<_>>(),
                    &cfg.tables.iter().map(|t| t.table.as_str()).collect::<Vec<_>>(),
                    &cfg.publication,
                ],
            )
            .await
            .map_err(sql_err("looking up partitioned tables"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if partitioned.is_empty() {
            return Ok(());
        }
        let name = quote_ident(&cfg.publication);
        self.client
            .batch_execute(&format!(
                "ALTER PUBLICATION {name} SET (publish_via_partition_root = true)"
            ))
            .await
            .map_err(sql_err(&format!(
                "streaming partitioned table {} under its own name (ALTER PUBLICATION {name} SET (publish_via_partition_root = true))",
                partitioned.join(", ")
            )))?;
        tracing::info!(publication = %cfg.publication, tables = %partitioned.join(", "), "Publishing partitioned tables through their root: their changes stream under their own names.");
        Ok(())
    }

    fn replication_config(&self, cfg: &SourceConfig, database: &str) -> ReplicationConfig {
        let c = &self.config;
        let password = c
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        ReplicationConfig::new(
            host_of(c),
            c.get_user().unwrap_or("postgres"),
            password,
            database,
            cfg.slot.clone(),
            cfg.publication.clone(),
        )
        .with_port(port_of(c))
        .with_options(SESSION_OPTIONS)
        .with_application_name(format!("weir:{}", cfg.slot))
        .with_status_interval(Duration::from_millis(200))
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(4096)
        .with_tls(self.tls.clone())
    }
}

/// Reports durable positions to the replication stream; cheap to clone.
#[derive(Clone)]
pub struct Acknowledger(Arc<watch::Sender<Lsn>>);

impl Acknowledger {
    /// Everything before `lsn` is durable: the server may release it. Never moves back.
    pub fn acknowledge(&self, lsn: Lsn) {
        self.0.send_if_modified(|cur| {
            let raise = lsn > *cur;
            if raise {
                *cur = lsn;
            }
            raise
        });
    }
}

/// The running replication stream: batches out, acknowledgements in.
pub struct PgSource {
    batches: mpsc::Receiver<Result<SourceBatch, SourceError>>,
    /// The pipeline waits for a batch (it has processed the last one): the stream hands
    /// the batch over at the next commit instead of filling it further.
    waiting: Arc<Waiting>,
    ack: Acknowledger,
    stop: CancellationToken,
    /// `None` once awaited.
    task: Option<JoinHandle<()>>,
}

impl PgSource {
    /// Starts streaming from `resume` (or the slot's confirmed position).
    pub async fn start(
        control: &Control,
        cfg: &SourceConfig,
        info: &SourceInfo,
        batch: BatchConfig,
        resume: Option<CommitPos>,
        stats: Arc<Stats>,
        gated: Option<ReplicationClient>,
    ) -> Result<PgSource, SourceError> {
        let start = resume.map_or(Lsn::ZERO, |r| r.end_lsn);
        let repl_cfg = control
            .replication_config(cfg, &info.database)
            .with_start_lsn(start.into())
            .with_ack_lsn(start.into());
        let slot = cfg.slot.clone();
        let stream_err = |message: String| SourceError::Stream {
            slot: slot.clone(),
            message,
        };
        let mut client = match gated {
            // The session that created the slot: streaming starts at its consistent point.
            Some(mut client) => {
                client
                    .start()
                    .await
                    .map_err(|e| stream_err(e.to_string()))?;
                client
            }
            None => ReplicationClient::connect(repl_cfg)
                .await
                .map_err(|e| stream_err(e.to_string()))?,
        };
        client
            .wait_started()
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        tracing::info!(slot = %cfg.slot, from = %start, "Streaming started.");

        let decoder = Decoder::new(
            cfg.tables.iter().cloned(),
            info.primary_keys.clone(),
            info.type_names.clone(),
            resume,
        )
        .with_domains(info.domains.clone())
        .with_versions(info.versions.clone());
        let (tx, batches) = mpsc::channel(2);
        let waiting = Arc::new(Waiting::default());
        let (ack, ack_rx) = watch::channel(start);
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            Stream {
                client,
                decoder,
                batcher: Batcher::new(batch.clone()),
                heartbeat: batch.max_delay,
                next_heartbeat: Instant::now() + batch.max_delay,
                tx,
                ack_rx,
                stop: stop.clone(),
                stats,
                slot: cfg.slot.clone(),
                start,
                waiting: waiting.clone(),
            }
            .run()
            .instrument(tracing::Span::current()),
        );
        Ok(PgSource {
            batches,
            waiting,
            ack: Acknowledger(Arc::new(ack)),
            stop,
            task: Some(task),
        })
    }

    /// The next batch; `None` once the stream has ended.
    pub async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.waiting.flag.store(true, Relaxed);
        self.waiting.started.notify_one();
        let received = self.batches.recv().await;
        self.waiting.flag.store(false, Relaxed);
        if let Some(batch) = received {
            return batch.map(Some);
        }
        // The stream's task ended: a panic in it is an error naming it, not an end.
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            return Err(HostPanic::from_join("replication stream", e).into());
        }
        Ok(None)
    }

    /// Everything before `lsn` is durable: the server may release it.
    pub fn acknowledge(&self, lsn: Lsn) {
        self.ack.acknowledge(lsn);
    }

    /// A handle for acknowledging from another stage.
    pub fn acknowledger(&self) -> Acknowledger {
        self.ack.clone()
    }

    /// Stops streaming, reporting the last acknowledged position to the server first.
    pub async fn stop(self) {
        self.stop.cancel();
        drop(self.batches);
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// The task that owns the replication client.
struct Stream {
    client: ReplicationClient,
    decoder: Decoder,
    batcher: Batcher,
    heartbeat: Duration,
    next_heartbeat: Instant,
    tx: mpsc::Sender<Result<SourceBatch, SourceError>>,
    ack_rx: watch::Receiver<Lsn>,
    stop: CancellationToken,
    stats: Arc<Stats>,
    slot: String,
    /// Where streaming started (acknowledged from the start).
    start: Lsn,
    /// The pipeline waits for a batch (see [`PgSource`]).
    waiting: Arc<Waiting>,
}

/// Whether the pipeline waits for a batch, and a wake-up for the stream when it starts
/// to: what arrived while it was busy is handed over then, not at `max_delay`.
#[derive(Default)]
struct Waiting {
    flag: std::sync::atomic::AtomicBool,
    started: tokio::sync::Notify,
}

impl Stream {
    async fn run(mut self) {
        let result = loop {
            if self.batcher.is_full() {
                if !self.send().await {
                    break Ok(());
                }
                continue;
            }
            let deadline = self.batcher.deadline().unwrap_or(self.next_heartbeat);
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break Ok(()),
                Ok(()) = self.ack_rx.changed() => {
                    let lsn = *self.ack_rx.borrow_and_update();
                    self.client.update_applied_lsn(lsn.into());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if !self.send().await {
                        break Ok(());
                    }
                }
                _ = self.waiting.started.notified() => {
                    if self.batcher.ready_early() && !self.send().await {
                        break Ok(());
                    }
                }
                event = self.client.recv() => match event {
                    Ok(Some(event)) => {
                        if let Err(e) = self.handle(event) {
                            break Err(e);
                        }
                        // An idle pipeline gets each transaction (and each of weir's
                        // messages) as soon as it is decoded: max_delay only bounds the
                        // wait while it is busy.
                        if self.batcher.ready_early()
                            && self.waiting.flag.load(std::sync::atomic::Ordering::Relaxed)
                            && !self.send().await
                        {
                            break Ok(());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(SourceError::Stream { slot: self.slot.clone(), message: e.to_string() }),
                },
            }
        };
        if let Err(e) = result {
            let _ = self.tx.send(Err(e)).await;
        }
        // Report the last acknowledged position before closing: the worker sends it with
        // its next status update, and a CopyDone would otherwise go first.
        let lsn = *self.ack_rx.borrow();
        self.client.update_applied_lsn(lsn.into());
        if lsn > self.start {
            let metrics = self.client.metrics();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Lsn::from(metrics.last_applied_lsn()) < lsn
                && self.client.is_running()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.shutdown()).await;
    }

    fn handle(&mut self, event: ReplicationEvent) -> Result<(), SourceError> {
        let decode_err = |slot: &str, source: DecodeFailure| SourceError::Decode {
            slot: slot.to_owned(),
            source,
        };
        let msg = match &event {
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                self.stats.observe_server_wal(Lsn::from(*wal_end));
                pgoutput::decode(data).map_err(|e| decode_err(&self.slot, e.into()))?
            }
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => pgoutput::Message::Begin {
                final_lsn: (*final_lsn).into(),
                commit_ts: commit_time_micros + pgoutput::PG_EPOCH_OFFSET_MICROS,
                xid: *xid,
            },
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                self.stats.observe_commit(
                    (*end_lsn).into(),
                    commit_time_micros + pgoutput::PG_EPOCH_OFFSET_MICROS,
                );
                pgoutput::Message::Commit {
                    flags: 0,
                    commit_lsn: (*lsn).into(),
                    end_lsn: (*end_lsn).into(),
                    commit_ts: commit_time_micros + pgoutput::PG_EPOCH_OFFSET_MICROS,
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.stats.observe_server_wal((*wal_end).into());
                self.batcher.keepalive((*wal_end).into());
                return Ok(());
            }
            ReplicationEvent::Message {
                prefix,
                lsn,
                transactional,
                content,
            } => {
                tracing::debug!(%prefix, lsn = %Lsn::from(*lsn), "Logical decoding message (not a row change).");
                // Everything before a non-transactional message has been delivered.
                if !transactional {
                    self.batcher.keepalive((*lsn).into());
                    match Signal::parse(prefix, &String::from_utf8_lossy(content)) {
                        Some(Ok(signal)) => self.batcher.marker((*lsn).into(), signal),
                        Some(Err(e)) => tracing::warn!(error = %e, "Ignored a weir message."),
                        None => {}
                    }
                }
                return Ok(());
            }
            ReplicationEvent::StoppedAt { .. } => return Ok(()),
        };
        let before = self.decoder.events;
        self.decoder
            .apply(msg, &mut self.batcher)
            .map_err(|e| decode_err(&self.slot, e.into()))?;
        self.stats.add_events(self.decoder.events - before);
        Ok(())
    }

    /// Sends the current batch, applying acknowledgements while the pipeline is busy.
    /// Returns false when the pipeline has gone.
    async fn send(&mut self) -> bool {
        self.next_heartbeat = Instant::now() + self.heartbeat;
        let batch = self.batcher.cut();
        let send = self.tx.send(Ok(batch));
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => return r.is_ok(),
                _ = self.stop.cancelled() => return false,
                Ok(()) = self.ack_rx.changed() => {
                    let lsn = *self.ack_rx.borrow_and_update();
                    self.client.update_applied_lsn(lsn.into());
                }
            }
        }
    }
}
