//! `weir plugin`: scaffold, build, try and inspect plugins without a pipeline.

use crate::plugin::manifest::PluginKind;
use crate::plugin::{Manifest, PluginEngine, SinkPlugin, TransformPlugin};
use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::{Map, Value as Json, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use weir_sdk::{Batch, Column, Event, Op, Relation, Value};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a Rust plugin crate: manifest, source and a native unit test that pass
    /// out of the box (`cargo test`, then `weir plugin build`).
    New {
        /// The plugin's name (lowercase letters, digits, `-`).
        name: String,
        #[arg(long, value_enum, default_value_t = Kind::Transform)]
        kind: Kind,
        /// Where to create it. Default: `./NAME`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Use the weir-sdk crate at this path instead of the one this binary carries
        /// (written once under ~/.cache/weir/sdk/).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Print the plugin contract (the WIT, `weir:plugin@0.1.0`) this binary runs, for
    /// tools that build components in other languages: `weir plugin wit > wit/weir-plugin.wit`.
    Wit,
    /// Build a Rust plugin crate into a component (cargo, target wasm32-wasip2) and put
    /// it where its manifest says. Installs nothing: says what is missing.
    Build {
        /// The plugin's directory (with Cargo.toml and weir-plugin.toml). Default: `.`.
        dir: Option<PathBuf>,
    },
    /// Run a component on sample events given as JSON and print what comes out, as JSON.
    Test {
        /// The plugin's manifest or its directory.
        plugin: PathBuf,
        /// The events (see `weir plugin test --help` and the README for the format).
        #[arg(long)]
        input: PathBuf,
        /// The plugin's configuration as JSON, over the manifest's `[config]`.
        #[arg(long)]
        config: Option<String>,
        /// Also time the plugin (transforms): run the input this many more times and
        /// print the time per batch and per event, host encoding and decoding included.
        #[arg(long)]
        bench: Option<u32>,
    },
    /// Show a plugin's manifest, API version, exports, imports and grants.
    Inspect {
        /// The plugin's manifest or its directory.
        plugin: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Transform,
    Sink,
}

pub async fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New {
            name,
            kind,
            dir,
            sdk,
        } => new(&name, kind, dir, sdk),
        PluginCommand::Build { dir } => build(&dir.unwrap_or_else(|| PathBuf::from("."))),
        PluginCommand::Test {
            plugin,
            input,
            config,
            bench,
        } => {
            crate::error::blocking("weir plugin test", move || {
                test(&plugin, &input, config.as_deref(), bench)
            })
            .await?
        }
        PluginCommand::Inspect { plugin } => inspect(&plugin),
        PluginCommand::Wit => {
            print!("{}", super::sdk_files::WIT);
            Ok(())
        }
    }
}

fn new(name: &str, kind: Kind, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.starts_with('-')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!(
            "`{name}` is not a plugin name: use lowercase letters, digits and `-`, starting with a letter"
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} exists and is not empty: choose another name or --dir",
            dir.display()
        );
    }
    let sdk_dep = match sdk {
        Some(path) => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("--sdk {}", path.display()))?;
            if !path.join("Cargo.toml").exists() {
                bail!("--sdk {}: no Cargo.toml there", path.display());
            }
            format!(
                "{{ path = \"{}\", features = [\"guest\"] }}",
                path.display()
            )
        }
        None => {
            let base = super::sdk_files::cache_base().context(
                "no cache directory for the SDK (set HOME or WEIR_CACHE_DIR), or give --sdk",
            )?;
            let path = super::sdk_files::install(&base)?;
            format!(
                "{{ path = \"{}\", features = [\"guest\"] }}",
                path.display()
            )
        }
    };
    let (kind_name, template) = match kind {
        Kind::Transform => ("transform", include_str!("templates/transform.rs.txt")),
        Kind::Sink => ("sink", include_str!("templates/sink.rs.txt")),
    };
    let crate_name = name.replace('-', "_");
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
             [dependencies]\nweir-sdk = {sdk_dep}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
             [profile.release]\nopt-level = \"s\"\nlto = true\n\n\
             # A plugin is its own workspace, wherever it is created.\n[workspace]\n"
        ),
    )?;
    std::fs::write(
        dir.join("weir-plugin.toml"),
        format!(
            "# The {kind_name} plugin `{name}`. Build it with `weir plugin build`.\n\
             name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"{kind_name}\"\napi = \"0.1.0\"\n\
             wasm = \"{crate_name}.wasm\"\non_error = \"fail\"\n\
             # Arrays, composites, ranges and intervals as Value::List and Value::Struct\n\
             # (false: as PostgreSQL's text).\nnested_types = true\n\n\
             [limits]\nmemory = \"64MiB\"\ncall_timeout = \"5s\"\n\n\
             # Defaults for the plugin's config; the pipeline's `config` table overrides them.\n[config]\n"
        ),
    )?;
    std::fs::write(dir.join("src/lib.rs"), template.replace("{{name}}", name))?;
    std::fs::write(dir.join(".gitignore"), "/target\n*.wasm\nCargo.lock\n")?;
    println!(
        "created {kind_name} plugin `{name}` in {}\n  cargo test                 # the native unit test\n  weir plugin build {}      # the component",
        dir.display(),
        dir.display()
    );
    if !wasm_target_installed() {
        eprintln!(
            "note: the Rust target wasm32-wasip2 is not installed; `weir plugin build` needs it: run `rustup target add wasm32-wasip2`"
        );
    }
    Ok(())
}

/// Whether rustup says the wasm32-wasip2 target is installed (true when there is no
/// rustup to ask: cargo then says what is missing).
fn wasm_target_installed() -> bool {
    match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2"),
        _ => true,
    }
}

fn build(dir: &Path) -> anyhow::Result<()> {
    let (manifest, manifest_file) = Manifest::load(dir)?;
    if !dir.join("Cargo.toml").exists() {
        bail!(
            "{} has no Cargo.toml: `weir plugin build` builds Rust plugins; build other languages with their own tools (see the README)",
            dir.display()
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if Command::new(&cargo).arg("--version").output().is_err() {
        bail!(
            "cargo was not found: install Rust from https://rustup.rs, then run `rustup target add wasm32-wasip2`"
        );
    }
    if !wasm_target_installed() {
        bail!(
            "the Rust target wasm32-wasip2 is not installed: run `rustup target add wasm32-wasip2`"
        );
    }
    let status = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build failed (its output is above)");
    }
    let meta = Command::new(&cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .context("running cargo metadata")?;
    if !meta.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&meta.stderr).trim()
        );
    }
    let meta: Json = serde_json::from_slice(&meta.stdout).context("cargo metadata output")?;
    let target = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"));
    // This directory's package (a plugin may be a member of a larger workspace), and the
    // name of its library target, which names the .wasm.
    let own = std::fs::canonicalize(dir.join("Cargo.toml"))?;
    let package = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .and_then(|m| std::fs::canonicalize(m).ok())
                .is_some_and(|m| m == own)
        })
        .context("cargo metadata does not list this directory's package")?;
    let lib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .and_then(|t| t["name"].as_str())
        .context("the crate has no cdylib library: add [lib] crate-type = [\"cdylib\"]")?
        .replace('-', "_");
    let built = target
        .join("wasm32-wasip2/release")
        .join(format!("{lib}.wasm"));
    let dest = manifest.wasm_path(&manifest_file);
    std::fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    // Compiled once here, so a component that does not fit weir fails now, not in a
    // pipeline.
    let engine = PluginEngine::new(PluginEngine::default_cache_dir())?;
    let bytes = std::fs::read(&dest)?;
    engine.load(&dest, &bytes)?;
    println!(
        "built {} ({} KiB) for {}",
        dest.display(),
        bytes.len() / 1024,
        manifest.label()
    );
    Ok(())
}

/// The sample events of `weir plugin test`:
///
/// ```json
/// { "tables": { "public.users": [ {"name": "id", "type": "int8", "key": true},
///                                 {"name": "email", "type": "text"} ] },
///   "events": [ {"op": "c", "table": "public.users", "after": {"id": 1, "email": "A@B"}},
///               {"op": "d", "table": "public.users", "before": {"id": 1}} ] }
/// ```
/// The input batch; a JSON array or object is a list or a struct (PostgreSQL's text of
/// one for a plugin without `nested_types`, as a pipeline would give it).
fn read_input(path: &Path, nested_types: bool) -> anyhow::Result<Batch> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let doc: Json =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let mut batch = Batch::default();
    let mut index = std::collections::HashMap::new();
    let tables = doc["tables"]
        .as_object()
        .context("the input has no \"tables\" object: name each table's columns")?;
    for (name, columns) in tables {
        let (schema, table) = name.split_once('.').unwrap_or(("public", name));
        let columns = columns
            .as_array()
            .with_context(|| format!("tables.{name} is not a list of columns"))?
            .iter()
            .map(|c| {
                let name = c["name"].as_str().context("a column without \"name\"")?;
                let ty = c["type"].as_str().unwrap_or("text");
                Ok(Column::new(
                    name,
                    weir_sdk::builtin_type_oid(ty).unwrap_or(25), // unknown: text
                    ty,
                    c["key"].as_bool().unwrap_or(false),
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let rel = batch.push_relation(Relation {
            id: index.len() as u32 + 1,
            schema: schema.into(),
            table: table.into(),
            version: 1,
            columns,
        });
        index.insert(format!("{schema}.{table}"), rel);
    }
    let events = doc["events"]
        .as_array()
        .context("the input has no \"events\" list")?;
    for (i, e) in events.iter().enumerate() {
        let table = e["table"].as_str().context("an event without \"table\"")?;
        let table = if table.contains('.') {
            table.to_string()
        } else {
            format!("public.{table}")
        };
        let &rel = index
            .get(&table)
            .with_context(|| format!("event {i}: table {table} is not in \"tables\""))?;
        let op = match e["op"].as_str().unwrap_or("c") {
            "r" => Op::Read,
            "c" => Op::Insert,
            "u" => Op::Update,
            "d" => Op::Delete,
            "t" => Op::Truncate,
            other => bail!("event {i}: op `{other}` is not one of r, c, u, d, t"),
        };
        let columns = &batch.relations[rel as usize].columns;
        let row = |v: &Json| -> anyhow::Result<Option<Vec<Value>>> {
            match v {
                Json::Null => Ok(None),
                Json::Object(o) => Ok(Some(
                    columns.iter().map(|c| to_value(o.get(&c.name))).collect(),
                )),
                _ => bail!("event {i}: a row is an object of column values"),
            }
        };
        let n = i as u64 + 1;
        batch.events.push(Event {
            op,
            rel,
            commit_lsn: e["commit_lsn"].as_u64().unwrap_or(n),
            seq: e["seq"].as_u64().unwrap_or(0) as u32,
            xid: e["xid"].as_u64().unwrap_or(n) as u32,
            commit_ts: e["commit_ts"].as_i64().unwrap_or(0),
            before: row(&e["before"])?,
            after: row(&e["after"])?,
            unchanged: vec![],
        });
    }
    batch.committed = batch.events.iter().map(|e| e.commit_lsn).max().unwrap_or(0);
    match nested_types {
        true => crate::plugin::values::nest(&mut batch),
        false => crate::plugin::values::flatten(&mut batch),
    }
    Ok(batch)
}

fn to_value(v: Option<&Json>) -> Value {
    match v {
        None | Some(Json::Null) => Value::Null,
        Some(Json::Bool(b)) => Value::Bool(*b),
        Some(Json::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Some(Json::String(s)) => Value::Text(s.clone()),
        Some(Json::Array(items)) => Value::List(items.iter().map(|v| to_value(Some(v))).collect()),
        Some(Json::Object(fields)) => Value::Struct(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_value(Some(v))))
                .collect(),
        ),
    }
}

fn events_json(batch: &Batch) -> Json {
    let events: Vec<Json> = batch
        .events
        .iter()
        .map(|e| {
            let rel = batch.relation(e);
            let row = |r: &Option<Vec<Value>>| match r {
                None => Json::Null,
                Some(values) => Json::Object(
                    rel.columns
                        .iter()
                        .zip(values)
                        .map(|(c, v)| (c.name.clone(), weir_sdk::json::value(v)))
                        .collect::<Map<_, _>>(),
                ),
            };
            json!({
                "op": e.op.code(),
                "table": rel.qualified_name(),
                "commit_lsn": e.commit_lsn,
                "seq": e.seq,
                "before": row(&e.before),
                "after": row(&e.after),
            })
        })
        .collect();
    Json::Array(events)
}

fn test(
    plugin: &Path,
    input: &Path,
    config: Option<&str>,
    bench: Option<u32>,
) -> anyhow::Result<()> {
    let (manifest, manifest_file) = Manifest::load(plugin)?;
    let batch = read_input(input, manifest.nested_types)?;
    let config: toml::Table = match config {
        Some(text) => {
            let json: Json = serde_json::from_str(text).context("--config is not JSON")?;
            toml::Table::try_from(json).context("--config must be a JSON object")?
        }
        None => toml::Table::new(),
    };
    let engine = PluginEngine::new(PluginEngine::default_cache_dir())?;
    match manifest.kind {
        PluginKind::Transform => {
            let mut plugin = TransformPlugin::load(&engine, &manifest_file, &config)?;
            match plugin.call(&batch.encode()) {
                Ok(out) => {
                    let out = Batch::decode(&out).map_err(|e| {
                        anyhow::anyhow!("the plugin returned a malformed batch: {e}")
                    })?;
                    let mut result = json!({ "events": events_json(&out) });
                    if let Some(n) = bench.filter(|n| *n > 0) {
                        // Each round as the pipeline does it: encode, call, decode.
                        let started = std::time::Instant::now();
                        for _ in 0..n {
                            let out = plugin
                                .call(&batch.encode())
                                .map_err(|e| anyhow::anyhow!(e.describe(&manifest.limits)))?;
                            Batch::decode(&out).map_err(|e| anyhow::anyhow!("{e}"))?;
                        }
                        let per_batch = started.elapsed().as_secs_f64() * 1e6 / n as f64;
                        let per_event = per_batch / batch.events.len().max(1) as f64;
                        result["bench"] = json!({
                            "batches": n,
                            "events_per_batch": batch.events.len(),
                            "us_per_batch": per_batch.round(),
                            "us_per_event": (per_event * 100.0).round() / 100.0,
                        });
                    }
                    println!("{}", serde_json::to_string_pretty(&result)?);
                    Ok(())
                }
                Err(e) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({ "error": e.describe(&manifest.limits) })
                        )?
                    );
                    bail!("{} failed on the input", manifest.label())
                }
            }
        }
        PluginKind::Sink => {
            let mut sink = SinkPlugin::load(
                &engine,
                &manifest_file,
                &config,
                std::time::Duration::from_secs(3600),
            )?;
            let last = batch.events.iter().map(|e| e.commit_lsn).max().unwrap_or(0);
            let position = crate::batch::Position {
                last_commit: Some(crate::batch::CommitPos {
                    commit_lsn: crate::Lsn(last),
                    end_lsn: crate::Lsn(last + 1),
                }),
                ..Default::default()
            };
            let events = batch.events.len();
            let result = sink.write(batch, &position).and_then(|()| sink.flush());
            let durable = sink.durable().map(|p| p.commit_lsn.0);
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "delivered": events,
                    "durable_commit_lsn": durable,
                    "error": result.as_ref().err().map(|e| e.to_string()),
                }))?
            );
            result.map_err(|e| anyhow::anyhow!("{e}"))
        }
    }
}

fn inspect(plugin: &Path) -> anyhow::Result<()> {
    let (manifest, manifest_file) = Manifest::load(plugin)?;
    let wasm = manifest.wasm_path(&manifest_file);
    let bytes = std::fs::read(&wasm).with_context(|| format!("component {}", wasm.display()))?;
    let engine = PluginEngine::new(PluginEngine::default_cache_dir())?;
    let component = engine.load(&wasm, &bytes)?;
    let ty = component.component_type();
    println!("plugin      {}", manifest.label());
    println!("manifest    {}", manifest_file.display());
    println!("kind        {:?}", manifest.kind);
    println!("api         weir:plugin@{}", manifest.api);
    println!(
        "component   {} ({} KiB)",
        wasm.display(),
        bytes.len() / 1024
    );
    println!(
        "policy      {}",
        crate::plugin::describe_manifest(&manifest)
    );
    let mut exports: Vec<String> = ty
        .exports(engine.engine())
        .map(|(n, _)| n.to_string())
        .collect();
    exports.sort();
    let mut imports: Vec<String> = ty
        .imports(engine.engine())
        .map(|(n, _)| n.to_string())
        .collect();
    imports.sort();
    println!("exports     {}", exports.join(", "));
    println!("imports     {}", imports.join("\n            "));
    Ok(())
}
