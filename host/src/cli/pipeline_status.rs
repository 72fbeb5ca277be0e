//! `weir status PIPELINE`: the slot on the server and each sink's checkpoint.

use crate::checkpoint::Checkpoint;
use crate::config::{PipelineConfig, SinkConfig};
use crate::sink::{get_state, object_store_for};
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
        sinks.push(match sink {
            SinkConfig::Parquet(p) => {
                let checkpoint = match object_store_for(&p.url) {
                    Ok((store, base)) => {
                        let file = base.clone().join("_weir").join(slot.as_str()).join("checkpoint.json");
                        match get_state::<Checkpoint>(store.as_ref(), &file).await {
                            Ok(Some(c)) => json!({ "commit_lsn": c.commit_lsn.to_string(), "end_lsn": c.end_lsn.to_string(), "seq": c.seq }),
                            Ok(None) => json!(null),
                            Err(e) => json!({ "error": e }),
                        }
                    }
                    Err(e) => json!({ "error": e.to_string() }),
                };
                json!({ "kind": "parquet", "url": p.url, "checkpoint": checkpoint })
            }
            SinkConfig::Iceberg(c) => {
                let state = match crate::sink::iceberg::connect(c).await {
                    Ok(catalog) => match crate::sink::iceberg::slot_tables(catalog.as_ref(), c.namespace.as_deref(), slot).await {
                        Ok(tables) => {
                            let positions: Vec<Value> = tables
                                .iter()
                                .map(|t| {
                                    let p = crate::sink::iceberg::table_position(t, slot);
                                    json!({
                                        "table": t.identifier().to_string(),
                                        "commit_lsn": p.map(|p| p.commit_lsn.to_string()),
                                        "snapshots": t.metadata().snapshots().count(),
                                    })
                                })
                                .collect();
                            json!({ "tables": positions })
                        }
                        Err(e) => json!({ "error": e.to_string() }),
                    },
                    Err(e) => json!({ "error": e.to_string() }),
                };
                json!({ "kind": "iceberg", "warehouse": c.warehouse, "state": state })
            }
            SinkConfig::Plugin(p) => json!({
                "kind": "plugin",
                "plugin": p.plugin.display().to_string(),
                "checkpoint": "reported by the plugin at its first flush",
            }),
        });
    }
    let doc = json!({ "pipeline": config.name(), "file": path.display().to_string(), "slot": slot_json, "sinks": sinks });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let s = &doc["slot"];
    println!("pipeline    {} ({})", config.name(), path.display());
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
            "the next run creates a new slot and streams changes from then on; changes made before that are not captured (remove the output and its _weir state to start over with a full snapshot)"
        );
    }
    Ok(())
}
