//! `weir status PIPELINE`: the slot on the server, each sink's checkpoint, and (when the
//! pipeline serves `[metrics]`) the running pipeline's own state and health.

use crate::batch::CommitPos;
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::{PipelineConfig, SinkConfig};
use crate::metrics::{ComponentStatus, StatusReport};
use crate::sink::iceberg;
use crate::storage::object_store_for;
use serde_json::{Value, json};

/// A byte count in IEC units (`-` when absent).
fn size(bytes: Option<i64>) -> String {
    bytes
        .map(|b| {
            bytesize::ByteSize(b.max(0) as u64)
                .display()
                .iec()
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// What a sink holds for a slot, as read from its storage or catalog.
enum Holds {
    Parquet(anyhow::Result<Option<Checkpoint>>),
    /// Each changelog table: its name, position and number of snapshots.
    Iceberg(anyhow::Result<Vec<(String, Option<CommitPos>, usize)>>),
    /// A plugin keeps its position to itself.
    Plugin,
    /// A projection's checkpoint, in the target database.
    Postgres(anyhow::Result<Option<CommitPos>>),
    /// The last transaction every Delta table holds.
    Delta(anyhow::Result<Option<CommitPos>>),
}

impl Holds {
    async fn read(sink: &SinkConfig, slot: &str) -> Holds {
        match sink {
            SinkConfig::Parquet(p) => Holds::Parquet(
                async {
                    let (store, base) = object_store_for(&p.url)?;
                    let checkpoint = CheckpointStore::new(store, &base, slot).read().await?;
                    Ok::<_, anyhow::Error>(checkpoint)
                }
                .await,
            ),
            SinkConfig::Iceberg(c) => Holds::Iceberg(
                async {
                    // Reading changes nothing: a SQL catalog not made yet holds nothing.
                    let Some(catalog) = iceberg::connect_existing(c).await? else {
                        return Ok(Vec::new());
                    };
                    let tables =
                        iceberg::slot_tables(catalog.as_ref(), c.namespace.as_deref(), slot)
                            .await?;
                    let held = tables
                        .iter()
                        .map(|t| {
                            let position = iceberg::table_position(t, slot);
                            (
                                t.identifier().to_string(),
                                position,
                                t.metadata().snapshots().count(),
                            )
                        })
                        .collect();
                    Ok::<_, anyhow::Error>(held)
                }
                .await,
            ),
            SinkConfig::Delta(c) => Holds::Delta(
                crate::sink::delta::DeltaSink::open(c.clone(), slot)
                    .await
                    .map(|s| s.durable())
                    .map_err(Into::into),
            ),
            SinkConfig::Plugin(_) | SinkConfig::Stdout(_) => Holds::Plugin,
            SinkConfig::Postgres(c) => Holds::Postgres(
                crate::sink::postgres::read_checkpoint(c, slot)
                    .await
                    .map_err(Into::into),
            ),
        }
    }

    /// The furthest position held (Iceberg: over its tables).
    fn position(&self) -> Option<crate::Lsn> {
        match self {
            Holds::Parquet(Ok(Some(c))) => Some(c.end_lsn),
            Holds::Postgres(Ok(Some(c))) | Holds::Delta(Ok(Some(c))) => Some(c.end_lsn),
            Holds::Iceberg(Ok(tables)) => {
                tables.iter().filter_map(|t| t.1).map(|p| p.end_lsn).max()
            }
            _ => None,
        }
    }

    fn to_json(&self, sink: &SinkConfig) -> Value {
        match (self, sink) {
            (Holds::Parquet(read), SinkConfig::Parquet(p)) => {
                let checkpoint = match read {
                    Ok(Some(c)) => {
                        json!({ "commit_lsn": c.commit_lsn.to_string(), "end_lsn": c.end_lsn.to_string(), "seq": c.seq })
                    }
                    Ok(None) => json!(null),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                json!({ "kind": "parquet", "url": p.url, "checkpoint": checkpoint })
            }
            (Holds::Iceberg(read), SinkConfig::Iceberg(c)) => {
                let state = match read {
                    Ok(tables) => {
                        let tables: Vec<Value> = tables
                            .iter()
                            .map(|(table, position, snapshots)| {
                                json!({
                                    "table": table,
                                    "commit_lsn": position.map(|p| p.commit_lsn.to_string()),
                                    "snapshots": snapshots,
                                })
                            })
                            .collect();
                        json!({ "tables": tables })
                    }
                    Err(e) => json!({ "error": e.to_string() }),
                };
                json!({ "kind": "iceberg", "warehouse": c.warehouse, "state": state })
            }
            (Holds::Delta(read), SinkConfig::Delta(d)) => {
                let checkpoint = match read {
                    Ok(Some(c)) => {
                        json!({ "commit_lsn": c.commit_lsn.to_string(), "end_lsn": c.end_lsn.to_string() })
                    }
                    Ok(None) => json!(null),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                json!({ "kind": "delta", "url": d.url, "checkpoint": checkpoint })
            }
            (Holds::Plugin, SinkConfig::Plugin(p)) => json!({
                "kind": "plugin",
                "plugin": p.plugin.display().to_string(),
                "checkpoint": "reported by the plugin at its first flush",
            }),
            (Holds::Plugin, SinkConfig::Stdout(_)) => json!({
                "kind": "stdout",
                "checkpoint": "none: at least once, from the slot's position",
            }),
            (Holds::Postgres(read), SinkConfig::Postgres(c)) => {
                let checkpoint = match read {
                    Ok(Some(c)) => {
                        json!({ "commit_lsn": c.commit_lsn.to_string(), "end_lsn": c.end_lsn.to_string() })
                    }
                    Ok(None) => json!(null),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                json!({ "kind": "postgres", "projection": c.projection(), "checkpoint": checkpoint })
            }
            _ => unreachable!("Holds::read reads each sink as its kind"),
        }
    }

    /// The sink's lines of `weir status`. An error is quoted as `--json` shows it.
    fn print(&self, sink: &SinkConfig) {
        match (self, sink) {
            (Holds::Parquet(read), SinkConfig::Parquet(p)) => {
                let line = match read {
                    Ok(Some(c)) => format!(
                        "checkpoint {} (last commit {}, flush {})",
                        c.end_lsn, c.commit_lsn, c.seq
                    ),
                    Ok(None) => "no checkpoint yet".into(),
                    Err(e) => format!("unreadable: {}", Value::String(e.to_string())),
                };
                println!("sink        parquet {}: {line}", p.url);
            }
            (Holds::Iceberg(read), SinkConfig::Iceberg(c)) => {
                println!("sink        iceberg {}", c.warehouse);
                match read {
                    Ok(tables) => {
                        for (table, position, snapshots) in tables {
                            println!(
                                "              {table}: commit {} ({snapshots} snapshots)",
                                position.map_or_else(
                                    || "none yet".to_string(),
                                    |p| p.commit_lsn.to_string()
                                ),
                            );
                        }
                    }
                    Err(e) => {
                        println!("              unreadable: {}", Value::String(e.to_string()))
                    }
                }
            }
            (Holds::Delta(read), SinkConfig::Delta(d)) => {
                let line = match read {
                    Ok(Some(c)) => format!(
                        "checkpoint {} (every table's last commit at or after {})",
                        c.end_lsn, c.commit_lsn
                    ),
                    Ok(None) => "no checkpoint yet".into(),
                    Err(e) => format!("unreadable: {}", Value::String(e.to_string())),
                };
                println!("sink        delta {}: {line}", d.url);
            }
            (Holds::Plugin, SinkConfig::Plugin(p)) => println!(
                "sink        plugin {}: position kept by the plugin",
                p.plugin.display()
            ),
            (Holds::Plugin, SinkConfig::Stdout(_)) => {
                println!(
                    "sink        stdout: no checkpoint (at least once, from the slot's position)"
                )
            }
            (Holds::Postgres(read), SinkConfig::Postgres(c)) => {
                let line = match read {
                    Ok(Some(c)) => {
                        format!("checkpoint {} (last commit {})", c.end_lsn, c.commit_lsn)
                    }
                    Ok(None) => "no checkpoint yet".into(),
                    Err(e) => format!("unreadable: {}", Value::String(e.to_string())),
                };
                println!("sink        postgres projection {}: {line}", c.projection());
            }
            _ => unreachable!("Holds::read reads each sink as its kind"),
        }
    }
}

/// The furthest position a sink holds for `slot`, when it can be read.
pub(crate) async fn held_position(sink: &SinkConfig, slot: &str) -> Option<crate::Lsn> {
    Holds::read(sink, slot).await.position()
}

/// The running pipeline's `/status`, or why it could not be read.
async fn live_status(listen: &str) -> anyhow::Result<StatusReport> {
    use http_body_util::BodyExt;
    let connect = tokio::net::TcpStream::connect(listen);
    let stream = match tokio::time::timeout(std::time::Duration::from_secs(3), connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => anyhow::bail!("nothing answers at {listen} ({e})"),
        Err(_) => anyhow::bail!("nothing answers at {listen} (timed out)"),
    };
    let exchange = async {
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        let request = hyper::Request::get("/status")
            .header("host", listen)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a valid request");
        let response = sender.send_request(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>(body)
    };
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{listen} did not answer in 5s"))?
        .map_err(|e| anyhow::anyhow!("{listen}: {e}"))?;
    serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("{listen} is not a weir endpoint: {e}"))
}

/// The slot's row in `pg_replication_slots`, with the WAL it keeps and how far its
/// confirmed position is behind the server's.
struct SlotRow {
    active: bool,
    active_pid: Option<i32>,
    restart_lsn: Option<String>,
    confirmed_flush_lsn: Option<String>,
    wal_status: Option<String>,
    retained_wal_bytes: Option<i64>,
    lag_bytes: Option<i64>,
    server_wal_lsn: Option<String>,
}

/// The pipeline's slot, or `None` when it does not exist.
async fn read_slot(config: &PipelineConfig) -> anyhow::Result<Option<SlotRow>> {
    let control = crate::source::Control::connect(&config.source.url).await?;
    let row = control
        .client
        .query_opt(
            "SELECT active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, wal_status, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, \
             pg_current_wal_lsn()::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.source.slot],
        )
        .await?;
    Ok(row.map(|r| SlotRow {
        active: r.get(0),
        active_pid: r.get(1),
        restart_lsn: r.get(2),
        confirmed_flush_lsn: r.get(3),
        wal_status: r.get(4),
        retained_wal_bytes: r.get(5),
        lag_bytes: r.get(6),
        server_wal_lsn: r.get(7),
    }))
}

fn slot_json(name: &str, row: Option<&SlotRow>) -> Value {
    match row {
        None => json!({ "name": name, "exists": false }),
        Some(r) => json!({
            "name": name,
            "exists": true,
            "active": r.active,
            "active_pid": r.active_pid,
            "restart_lsn": r.restart_lsn,
            "confirmed_flush_lsn": r.confirmed_flush_lsn,
            "wal_status": r.wal_status,
            "retained_wal_bytes": r.retained_wal_bytes,
            "lag_bytes": r.lag_bytes,
            "server_wal_lsn": r.server_wal_lsn,
        }),
    }
}

pub async fn status(path: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    let slot = read_slot(&config).await?;
    let mut holds = Vec::new();
    for sink in &config.sinks {
        holds.push(Holds::read(sink, &config.source.slot).await);
    }
    let live = match &config.metrics {
        Some(m) => Some(live_status(&m.listen).await),
        None => None,
    };
    let state = match (&live, slot.as_ref().map(|s| s.active)) {
        (Some(Ok(l)), _) => l.state.clone(),
        (_, Some(true)) => "running".into(),
        (Some(Err(_)), _) | (None, _) => "stopped".into(),
    };
    let report = Report {
        config: &config,
        path,
        state,
        live: live.as_ref(),
        slot: slot.as_ref(),
        holds: &holds,
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report.to_json()?)?);
        return Ok(());
    }
    report.print();
    Ok(())
}

/// What `weir status` found, to print as text or JSON.
struct Report<'a> {
    config: &'a PipelineConfig,
    path: &'a std::path::Path,
    /// `stopped`, `running`, or the running pipeline's own state.
    state: String,
    live: Option<&'a anyhow::Result<StatusReport>>,
    slot: Option<&'a SlotRow>,
    /// What each sink holds, in the order of `config.sinks`.
    holds: &'a [Holds],
}

impl Report<'_> {
    /// The running pipeline's plugins and sinks, when it answered.
    fn components(&self) -> &[ComponentStatus] {
        match self.live {
            Some(Ok(l)) => &l.components,
            _ => &[],
        }
    }

    /// The running pipeline's view of `sink`.
    fn live_sink(&self, sink: &SinkConfig) -> Option<&ComponentStatus> {
        let name = crate::sink::sink_name(sink);
        self.components()
            .iter()
            .find(|c| c.kind == "sink" && c.name == name)
    }

    fn plugins(&self) -> impl Iterator<Item = &ComponentStatus> {
        self.components().iter().filter(|c| c.kind == "plugin")
    }

    fn to_json(&self) -> anyhow::Result<Value> {
        let mut sinks = Vec::new();
        for (holds, sink) in self.holds.iter().zip(&self.config.sinks) {
            let mut json = holds.to_json(sink);
            if let Some(live) = self.live_sink(sink) {
                json["live"] = serde_json::to_value(live)?;
            }
            sinks.push(json);
        }
        let plugins = self
            .plugins()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        let live = match self.live {
            None => Value::Null,
            Some(Ok(l)) => serde_json::to_value(l)?,
            Some(Err(e)) => json!({ "error": e.to_string() }),
        };
        let slot = slot_json(&self.config.source.slot, self.slot);
        Ok(
            json!({ "pipeline": self.config.name(), "file": self.path.display().to_string(), "state": self.state, "live": live, "slot": slot, "sinks": sinks, "plugins": plugins }),
        )
    }

    fn print(&self) {
        println!(
            "pipeline    {} ({})",
            self.config.name(),
            self.path.display()
        );
        self.print_state();
        self.print_slot();
        for (holds, sink) in self.holds.iter().zip(&self.config.sinks) {
            holds.print(sink);
            if let Some(live) = self.live_sink(sink) {
                println!("              {}", health(live));
            }
        }
        for plugin in self.plugins() {
            println!("plugin      {}: {}", plugin.name, health(plugin));
        }
    }

    fn print_state(&self) {
        let state = &self.state;
        match (self.live, state.as_str()) {
            (Some(Ok(l)), _) => {
                let mut line = state.clone();
                if let Some(why) = &l.retrying_after {
                    line.push_str(&format!(" (after: {why})"));
                }
                match &l.not_ready {
                    None => line.push_str(", ready"),
                    Some(why) => line.push_str(&format!(", not ready: {why}")),
                }
                println!("state       {line}");
                println!(
                    "last commit {} received, {} durable (lag {:.1}s, {})",
                    l.last_commit.as_deref().unwrap_or("none"),
                    l.last_durable_commit.as_deref().unwrap_or("none"),
                    l.lag_seconds,
                    size(i64::try_from(l.lag_bytes).ok()),
                );
                println!(
                    "events      {} read, {} written in {} batches; {} reconnects",
                    l.events_read, l.events_written, l.batches, l.reconnects
                );
                for c in l.copies.iter().filter(|c| !c.done) {
                    println!("copying     {}", copy_line(c));
                }
            }
            (Some(Err(e)), _) => println!("state       {state} ({e})"),
            (None, "running") => {
                println!("state       running (the slot is active; add [metrics] for its health)")
            }
            (None, _) => println!("state       {state}"),
        }
    }

    fn print_slot(&self) {
        let slot = &self.config.source.slot;
        let Some(s) = self.slot else {
            match self.holds.iter().filter_map(Holds::position).max() {
                None => println!("slot        {slot}: does not exist (the first run creates it)"),
                Some(at) => println!(
                    "slot        {slot}: does not exist, but the output holds changes up to {at}: `weir run` refuses, since the changes committed since then cannot be read any more. Move the output and its _weir state aside to start over with a new snapshot, or run `weir run {} --new-slot` to accept the gap",
                    self.path.display()
                ),
            }
            return;
        };
        let text = |v: &Option<String>| v.as_deref().unwrap_or("-").to_string();
        let state = match (s.active, s.active_pid) {
            (true, Some(pid)) => format!("active (walsender pid {pid})"),
            _ => "inactive (no pipeline streaming)".into(),
        };
        println!(
            "slot        {slot}: {state}, wal_status {}",
            text(&s.wal_status)
        );
        println!("server WAL  {}", text(&s.server_wal_lsn));
        println!(
            "confirmed   {} (lag {})",
            text(&s.confirmed_flush_lsn),
            size(s.lag_bytes)
        );
        println!(
            "retained    {} of WAL kept for the slot",
            size(s.retained_wal_bytes)
        );
    }
}

/// A plugin's or sink's health as the running pipeline reports it.
fn health(c: &ComponentStatus) -> String {
    match &c.error {
        Some(e) => format!("FAILING: {e}"),
        None => format!(
            "healthy, {} calls in {:.1}s, {} errors",
            c.calls, c.seconds, c.errors
        ),
    }
}

/// `weir slot list`: the logical slots of the pipeline's database.
pub async fn slot_list(path: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    let control = crate::source::Control::connect(&config.source.url).await?;
    let rows = control
        .client
        .query(
            "SELECT slot_name::text, plugin::text, active, active_pid, confirmed_flush_lsn::text, wal_status, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database() ORDER BY 1",
            &[],
        )
        .await?;
    let slots: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.get::<_, String>(0),
                "plugin": r.get::<_, Option<String>>(1),
                "active": r.get::<_, bool>(2),
                "active_pid": r.get::<_, Option<i32>>(3),
                "confirmed_flush_lsn": r.get::<_, Option<String>>(4),
                "wal_status": r.get::<_, Option<String>>(5),
                "retained_wal_bytes": r.get::<_, Option<i64>>(6),
                "lag_bytes": r.get::<_, Option<i64>>(7),
                "this_pipeline": r.get::<_, String>(0) == config.source.slot,
            })
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&slots)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<9} {:<8} {:<14} {:>12} {:>12}  wal_status",
        "slot", "plugin", "active", "confirmed", "lag", "retained"
    );
    for s in &slots {
        println!(
            "{:<24} {:<9} {:<8} {:<14} {:>12} {:>12}  {}{}",
            s["name"].as_str().unwrap_or(""),
            s["plugin"].as_str().unwrap_or("-"),
            if s["active"] == true { "yes" } else { "no" },
            s["confirmed_flush_lsn"].as_str().unwrap_or("-"),
            size(s["lag_bytes"].as_i64()),
            size(s["retained_wal_bytes"].as_i64()),
            s["wal_status"].as_str().unwrap_or("-"),
            if s["this_pipeline"] == true {
                "  (this pipeline)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `weir slot drop`: drops an inactive slot (default: the pipeline's own).
pub async fn slot_drop(
    path: &std::path::Path,
    name: Option<&str>,
    publication: bool,
) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    let slot = name.unwrap_or(&config.source.slot);
    let control = crate::source::Control::connect(&config.source.url).await?;
    let row = control
        .client
        .query_opt(
            "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    match row {
        Some(r) if r.get::<_, bool>(0) => anyhow::bail!(
            "replication slot `{slot}` is in use by process {}: stop that pipeline first",
            r.get::<_, Option<i32>>(1).unwrap_or_default()
        ),
        None if !publication => {
            anyhow::bail!("there is no replication slot `{slot}` (weir slot list shows them)")
        }
        None => println!("there is no replication slot `{slot}`"),
        Some(_) => {
            control
                .client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await?;
            println!("dropped replication slot `{slot}`: the server no longer keeps WAL for it");
        }
    }
    if publication {
        let name = &config.source.publication;
        let exists = control
            .client
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
            .await?
            .is_some();
        if exists {
            let sql = format!("DROP PUBLICATION {}", crate::source::quote_ident(name));
            control.client.batch_execute(&sql).await?;
            println!("dropped publication `{name}`");
        } else {
            println!("there is no publication `{name}`");
        }
        println!(
            "nothing of the pipeline stays on the server; its output and _weir state are left as they are"
        );
    } else if slot == config.source.slot {
        println!(
            "the output keeps its checkpoint: the next run stops and says how to go on (a fresh start with a full snapshot, or `weir run PIPELINE --new-slot` to capture from then on)"
        );
    }
    Ok(())
}

/// A table copy's progress in one line: `public.t (backfill) 43% 860000 of ~2000000 rows, 580000 rows/s, 2s left`.
pub fn copy_line(c: &crate::metrics::CopyStatus) -> String {
    let of = c
        .estimated_rows
        .map_or(String::new(), |e| format!(" of ~{e}"));
    let percent = c.percent.map_or(String::new(), |p| format!("{p:.0}% "));
    let left = c
        .seconds_left
        .map_or(String::new(), |s| format!(", {s:.0}s left"));
    format!(
        "{} ({}) {percent}{}{of} rows, {:.0} rows/s{left}",
        c.table, c.kind, c.rows, c.rows_per_s
    )
}
