//! `weir status PIPELINE`: the slot on the server, each sink's checkpoint, and (when the
//! pipeline serves `[metrics]`) the running pipeline's own state and health.

use crate::checkpoint::{Checkpoint, CheckpointStore, CommitPos};
use crate::config::{PipelineConfig, SinkConfig};
use crate::sink::{iceberg, object_store_for};
use serde_json::{Value, json};

/// A byte count from a JSON number, in IEC units (`-` when absent).
fn size(v: &Value) -> String {
    v.as_i64()
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
    Parquet(Result<Option<Checkpoint>, String>),
    /// Each changelog table: its name, position and number of snapshots.
    Iceberg(Result<Vec<(String, Option<CommitPos>, usize)>, String>),
    /// A plugin keeps its position to itself.
    Plugin,
}

impl Holds {
    async fn read(sink: &SinkConfig, slot: &str) -> Holds {
        match sink {
            SinkConfig::Parquet(p) => Holds::Parquet(
                async {
                    let (store, base) = object_store_for(&p.url).map_err(|e| e.to_string())?;
                    CheckpointStore::new(store, &base, slot)
                        .read()
                        .await
                        .map_err(|e| e.to_string())
                }
                .await,
            ),
            SinkConfig::Iceberg(c) => Holds::Iceberg(
                async {
                    let catalog = iceberg::connect(c).await.map_err(|e| e.to_string())?;
                    let tables =
                        iceberg::slot_tables(catalog.as_ref(), c.namespace.as_deref(), slot)
                            .await
                            .map_err(|e| e.to_string())?;
                    Ok(tables
                        .iter()
                        .map(|t| {
                            let position = iceberg::table_position(t, slot);
                            (
                                t.identifier().to_string(),
                                position,
                                t.metadata().snapshots().count(),
                            )
                        })
                        .collect())
                }
                .await,
            ),
            SinkConfig::Plugin(_) => Holds::Plugin,
        }
    }

    /// The furthest position held (Iceberg: over its tables).
    fn position(&self) -> Option<crate::Lsn> {
        match self {
            Holds::Parquet(Ok(Some(c))) => Some(c.end_lsn),
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
                    Err(e) => json!({ "error": e }),
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
                    Err(e) => json!({ "error": e }),
                };
                json!({ "kind": "iceberg", "warehouse": c.warehouse, "state": state })
            }
            (Holds::Plugin, SinkConfig::Plugin(p)) => json!({
                "kind": "plugin",
                "plugin": p.plugin.display().to_string(),
                "checkpoint": "reported by the plugin at its first flush",
            }),
            _ => unreachable!("Holds::read reads each sink as its kind"),
        }
    }
}

/// The furthest position a sink holds for `slot`, when it can be read.
pub(crate) async fn held_position(sink: &SinkConfig, slot: &str) -> Option<crate::Lsn> {
    Holds::read(sink, slot).await.position()
}

/// The running pipeline's `/status`, or why it could not be read.
async fn live_status(listen: &str) -> Result<Value, String> {
    use http_body_util::BodyExt;
    let connect = tokio::net::TcpStream::connect(listen);
    let stream = match tokio::time::timeout(std::time::Duration::from_secs(3), connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("nothing answers at {listen} ({e})")),
        Err(_) => return Err(format!("nothing answers at {listen} (timed out)")),
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
        .map_err(|_| format!("{listen} did not answer in 5s"))?
        .map_err(|e| format!("{listen}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("{listen} is not a weir endpoint: {e}"))
}

pub async fn status(path: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let config = PipelineConfig::load(path)?;
    let slot = &config.source.slot;
    let control = crate::source::Control::connect(&config.source.url).await?;
    let row = control
        .client
        .query_opt(
            "SELECT active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, wal_status, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, \
             pg_current_wal_lsn()::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    let slot_json = match &row {
        None => json!({ "name": slot, "exists": false }),
        Some(r) => json!({
            "name": slot,
            "exists": true,
            "active": r.get::<_, bool>(0),
            "active_pid": r.get::<_, Option<i32>>(1),
            "restart_lsn": r.get::<_, Option<String>>(2),
            "confirmed_flush_lsn": r.get::<_, Option<String>>(3),
            "wal_status": r.get::<_, Option<String>>(4),
            "retained_wal_bytes": r.get::<_, Option<i64>>(5),
            "lag_bytes": r.get::<_, Option<i64>>(6),
            "server_wal_lsn": r.get::<_, Option<String>>(7),
        }),
    };
    let mut sinks = Vec::new();
    for sink in &config.sinks {
        sinks.push(Holds::read(sink, slot).await.to_json(sink));
    }
    let live = match &config.metrics {
        Some(m) => Some(live_status(&m.listen).await),
        None => None,
    };
    let state = match (&live, slot_json["active"].as_bool()) {
        (Some(Ok(l)), _) => l["state"].as_str().unwrap_or("running").to_string(),
        (_, Some(true)) => "running".into(),
        (Some(Err(_)), _) | (None, _) => "stopped".into(),
    };
    // The running pipeline's view of each sink and plugin.
    if let Some(Ok(l)) = &live {
        for (sink, c) in sinks.iter_mut().zip(config.sinks.iter()) {
            let name = crate::sink::sink_name(c);
            if let Some(found) = l["components"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["kind"] == "sink" && x["name"] == name.as_str())
            {
                sink["live"] = found.clone();
            }
        }
    }
    let plugins: Vec<Value> = match &live {
        Some(Ok(l)) => l["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["kind"] == "plugin")
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let live_json = match &live {
        None => Value::Null,
        Some(Ok(l)) => l.clone(),
        Some(Err(e)) => json!({ "error": e }),
    };
    let doc = json!({ "pipeline": config.name(), "file": path.display().to_string(), "state": state, "live": live_json, "slot": slot_json, "sinks": sinks, "plugins": plugins });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let s = &doc["slot"];
    println!("pipeline    {} ({})", config.name(), path.display());
    let l = &doc["live"];
    match (&live, state.as_str()) {
        (Some(Ok(_)), _) => {
            let mut line = state.clone();
            if let Some(why) = l["retrying_after"].as_str() {
                line.push_str(&format!(" (after: {why})"));
            }
            match l["not_ready"].as_str() {
                None => line.push_str(", ready"),
                Some(why) => line.push_str(&format!(", not ready: {why}")),
            }
            println!("state       {line}");
            println!(
                "last commit {} received, {} durable (lag {:.1}s, {})",
                l["last_commit"].as_str().unwrap_or("none"),
                l["last_durable_commit"].as_str().unwrap_or("none"),
                l["lag_seconds"].as_f64().unwrap_or(0.0),
                size(&l["lag_bytes"]),
            );
            println!(
                "events      {} read, {} written in {} batches; {} reconnects",
                l["events_read"], l["events_written"], l["batches"], l["reconnects"]
            );
        }
        (Some(Err(e)), _) => println!("state       {state} ({e})"),
        (None, "running") => {
            println!("state       running (the slot is active; add [metrics] for its health)")
        }
        (None, _) => println!("state       {state}"),
    }
    if s["exists"] == false {
        println!("slot        {slot}: does not exist (the first run creates it)");
    } else {
        let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
        let state = match (s["active"].as_bool(), s["active_pid"].as_i64()) {
            (Some(true), Some(pid)) => format!("active (walsender pid {pid})"),
            _ => "inactive (no pipeline streaming)".into(),
        };
        println!(
            "slot        {slot}: {state}, wal_status {}",
            text(&s["wal_status"])
        );
        println!("server WAL  {}", text(&s["server_wal_lsn"]));
        println!(
            "confirmed   {} (lag {})",
            text(&s["confirmed_flush_lsn"]),
            size(&s["lag_bytes"])
        );
        println!(
            "retained    {} of WAL kept for the slot",
            size(&s["retained_wal_bytes"])
        );
    }
    let health = |x: &Value| match x["error"].as_str() {
        Some(e) => format!("FAILING: {e}"),
        None => format!(
            "healthy, {} calls in {:.1}s, {} errors",
            x["calls"],
            x["seconds"].as_f64().unwrap_or(0.0),
            x["errors"]
        ),
    };
    for sink in doc["sinks"].as_array().into_iter().flatten() {
        match sink["kind"].as_str() {
            Some("parquet") => {
                let c = &sink["checkpoint"];
                let line = match c.get("end_lsn") {
                    Some(end) => format!(
                        "checkpoint {} (last commit {}, flush {})",
                        end.as_str().unwrap_or("-"),
                        c["commit_lsn"].as_str().unwrap_or("-"),
                        c["seq"]
                    ),
                    None if c.is_null() => "no checkpoint yet".into(),
                    None => format!("unreadable: {}", c["error"]),
                };
                println!(
                    "sink        parquet {}: {line}",
                    sink["url"].as_str().unwrap_or("")
                );
            }
            Some("iceberg") => {
                println!(
                    "sink        iceberg {}",
                    sink["warehouse"].as_str().unwrap_or("")
                );
                for t in sink["state"]["tables"].as_array().into_iter().flatten() {
                    println!(
                        "              {}: commit {} ({} snapshots)",
                        t["table"].as_str().unwrap_or(""),
                        t["commit_lsn"].as_str().unwrap_or("none yet"),
                        t["snapshots"]
                    );
                }
                if let Some(e) = sink["state"].get("error") {
                    println!("              unreadable: {e}");
                }
            }
            _ => println!(
                "sink        plugin {}: position kept by the plugin",
                sink["plugin"].as_str().unwrap_or("")
            ),
        }
        if sink["live"].is_object() {
            println!("              {}", health(&sink["live"]));
        }
    }
    for plugin in doc["plugins"].as_array().into_iter().flatten() {
        println!(
            "plugin      {}: {}",
            plugin["name"].as_str().unwrap_or(""),
            health(plugin)
        );
    }
    Ok(())
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
            size(&s["lag_bytes"]),
            size(&s["retained_wal_bytes"]),
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
pub async fn slot_drop(path: &std::path::Path, name: Option<&str>) -> anyhow::Result<()> {
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
        None => anyhow::bail!("there is no replication slot `{slot}` (weir slot list shows them)"),
        Some(r) if r.get::<_, bool>(0) => anyhow::bail!(
            "replication slot `{slot}` is in use by process {}: stop that pipeline first",
            r.get::<_, Option<i32>>(1).unwrap_or_default()
        ),
        Some(_) => {}
    }
    control
        .client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    println!("dropped replication slot `{slot}`: the server no longer keeps WAL for it");
    if slot == config.source.slot {
        println!(
            "the output keeps its checkpoint: the next run stops and says how to go on (a fresh start with a full snapshot, or `weir run PIPELINE --new-slot` to capture from then on)"
        );
    }
    Ok(())
}
