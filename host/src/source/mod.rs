//! The PostgreSQL source: preflight checks, publication and slot, and the replication
//! stream decoded into batches.

pub mod decoder;
pub mod pgoutput;
pub mod schemas;
pub mod snapshot;
pub mod tls;

use crate::batch::{Batcher, SourceBatch};
use crate::checkpoint::CommitPos;
use crate::config::{BatchConfig, SourceConfig, TableName};
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
use tokio_util::sync::CancellationToken;

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
    #[error("{context}: {message}")]
    Sql { context: String, message: String },
    #[error("replication stream of slot `{slot}`: {message}")]
    Stream { slot: String, message: String },
    #[error("replication stream of slot `{slot}`: {source}")]
    Decode {
        slot: String,
        #[source]
        source: DecodeFailure,
    },
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
    let (url, tls) = tls::split(url).map_err(malformed)?;
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
        config.user(
            std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".into()),
        );
    }
    if config.get_hosts().is_empty() {
        config.host("localhost");
    }
    Ok((config, tls))
}

/// Opens a SQL connection: over a Unix socket as it is, over TCP through the TLS the
/// settings ask for; under `prefer`, a failed TLS attempt is tried again without, as libpq
/// does. Returns the TLS settings that worked, for the replication connection.
async fn open(
    config: &tokio_postgres::Config,
    tls: &TlsConfig,
) -> Result<(tokio_postgres::Client, JoinHandle<()>, TlsConfig), String> {
    match open_with(config, tls).await {
        Ok((client, conn)) => Ok((client, conn, tls.clone())),
        Err(e) if tls.mode == pgwire_replication::SslMode::Prefer => {
            tracing::debug!(error = %e, "The TLS attempt failed; trying without TLS (sslmode=prefer).");
            let plain = TlsConfig::disabled();
            let (client, conn) = open_with(config, &plain)
                .await
                .map_err(|plain| format!("{plain} (and with TLS: {e})"))?;
            Ok((client, conn, plain))
        }
        Err(e) => Err(e),
    }
}

async fn open_with(
    config: &tokio_postgres::Config,
    tls: &TlsConfig,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), String> {
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
        let (client, conn) = config.connect(NoTls).await.map_err(|e| pg_error(&e))?;
        return Ok((client, run(conn)));
    }
    let (host, port) = (host_of(config), port_of(config));
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("{e}; check that PostgreSQL is running and source.url is right"))?;
    let _ = tcp.set_nodelay(true);
    // A dead peer (a failed-over server, a dropped NAT entry) is noticed in minutes,
    // not the hours of the system default.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let stream = pgwire_replication::tls::rustls::maybe_upgrade_to_tls(tcp, tls, &host)
        .await
        .map_err(|e| format!("{e} (sslmode and sslrootcert in source.url)"))?;
    let (client, conn) = config
        .connect_raw(stream, NoTls)
        .await
        .map_err(|e| pg_error(&e))?;
    Ok((client, run(conn)))
}

/// A connection error as weir reports it: the server's message, or the client's.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(_) => pg_message(e),
        None => format!("{e}; check that PostgreSQL is running and source.url is right"),
    }
}

fn sql_err(context: &str) -> impl FnOnce(tokio_postgres::Error) -> SourceError + '_ {
    move |e| SourceError::Sql {
        context: context.into(),
        message: pg_message(&e),
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
            // 28P01 invalid_password, 28000 invalid_authorization_specification.
            Ok(Err(message))
                if message.contains("authentication")
                    && (message.contains("28P01") || message.contains("28000")) =>
            {
                return Err(SourceError::Auth { user });
            }
            Ok(Err(message)) => return Err(SourceError::Connect { target, message }),
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

    /// Checks everything a pipeline needs, without changing anything.
    pub async fn preflight(&self, cfg: &SourceConfig) -> Result<SourceInfo, SourceError> {
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

        let mut primary_keys = HashMap::new();
        let mut relids = Vec::new();
        for table in &cfg.tables {
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
                    database: database.clone(),
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

        let type_names = c
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
            .collect();

        // Every domain of the database: few, and chains resolve without more queries.
        let direct: HashMap<u32, (u32, i32)> = c
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

        let slot = c
            .query_opt(
                "SELECT slot_type::text, coalesce(plugin::text, ''), coalesce(database::text, ''), active_pid, \
                 wal_status::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&cfg.slot],
            )
            .await
            .map_err(sql_err("looking up the replication slot"))?;
        let slot_exists = slot.is_some();
        if let Some(row) = slot {
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
                    slot: cfg.slot.clone(),
                    problem,
                });
            }
            if let Some(pid) = pid {
                return Err(SourceError::SlotInUse {
                    slot: cfg.slot.clone(),
                    pid,
                });
            }
        }

        let publication_missing = match c
            .query_opt(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[&cfg.publication],
            )
            .await
            .map_err(sql_err("looking up the publication"))?
        {
            None => None,
            Some(row) if row.get::<_, bool>(0) => Some(vec![]),
            Some(_) => {
                let published: Vec<TableName> = c
                    .query(
                        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                        &[&cfg.publication],
                    )
                    .await
                    .map_err(sql_err("looking up the publication's tables"))?
                    .iter()
                    .map(|r| TableName { schema: r.get(0), table: r.get(1) })
                    .collect();
                Some(
                    cfg.tables
                        .iter()
                        .filter(|t| !published.contains(t))
                        .cloned()
                        .collect(),
                )
            }
        };

        Ok(SourceInfo {
            database,
            user,
            primary_keys,
            type_names,
            domains,
            versions: schemas::SchemaVersions::in_memory(),
            slot_exists,
            publication_missing,
        })
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
        let slot_err = |message: String| SourceError::Stream {
            slot: cfg.slot.clone(),
            message,
        };
        let mut client =
            ReplicationClient::connect_gated(self.replication_config(cfg, &info.database))
                .await
                .map_err(|e| slot_err(e.to_string()))?;
        tracing::info!(slot = %cfg.slot, "Creating the replication slot with a snapshot (waits for open transactions to finish).");
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                quote_ident(&cfg.slot)
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
                let sql = format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
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
                tracing::warn!(
                    publication = %cfg.publication,
                    tables = %tables(missing),
                    "Added tables to the publication; their changes are captured from now on, earlier rows are not."
                );
            }
            Some(_) => {}
        }
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
    ack: Acknowledger,
    stop: CancellationToken,
    task: JoinHandle<()>,
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
            }
            .run(),
        );
        Ok(PgSource {
            batches,
            ack: Acknowledger(Arc::new(ack)),
            stop,
            task,
        })
    }

    /// The next batch; `None` once the stream has ended.
    pub async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        self.batches.recv().await.transpose()
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
        let _ = self.task.await;
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
                event = self.client.recv() => match event {
                    Ok(Some(event)) => {
                        if let Err(e) = self.handle(event) {
                            break Err(e);
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
                    if prefix.starts_with("weir.") {
                        self.batcher.marker(
                            (*lsn).into(),
                            prefix,
                            &String::from_utf8_lossy(content),
                        );
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
