//! Plugin conformance: every built-in plugin, as a component under the real host, on
//! shared fixtures, must produce exactly what its logic produces natively, and a valid
//! batch in commit order.

use crate::harness::install_plugin;
use weir::plugin::{PluginEngine, SinkPlugin, TransformPlugin};
use weir_sdk::plugin::testing;
use weir_sdk::{Batch, Column, Event, Op, Relation, Transform, Value};

/// Two tables, every op, NULLs, an unchanged TOAST column, each kind of value.
fn fixture() -> Batch {
    let mut b = Batch::default();
    let orders = b.push_relation(Relation {
        id: 16384,
        schema: "public".into(),
        table: "orders".into(),
        version: 1,
        columns: vec![
            Column::new("id", 20, "int8", true),
            Column::new("email", 25, "text", false),
            Column::new("status", 25, "text", false),
            Column::new("amount", 1700, "numeric", false),
            Column::new("paid", 16, "bool", false),
            Column::new("score", 701, "float8", false),
            Column::new("blob", 17, "bytea", false),
        ],
    });
    let customers = b.push_relation(Relation {
        id: 16390,
        schema: "crm".into(),
        table: "customers".into(),
        version: 2,
        columns: vec![
            Column::new("id", 23, "int4", true),
            Column::new("phone", 25, "text", false),
        ],
    });
    let row = |id: i64, status: &str| {
        vec![
            Value::Int(id),
            Value::Text(format!("u{id}@example.com")),
            Value::Text(status.into()),
            Value::Text(format!("{id}.50")),
            Value::Bool(id % 2 == 0),
            Value::Float(id as f64 / 3.0),
            Value::Bytes(vec![id as u8, 0, 255]),
        ]
    };
    let mut seq = 0;
    let mut push = |b: &mut Batch,
                    op,
                    rel,
                    before: Option<Vec<Value>>,
                    after: Option<Vec<Value>>,
                    unchanged: Vec<u16>| {
        b.events.push(Event {
            op,
            rel,
            commit_lsn: 0x1000 + seq / 3,
            seq: (seq % 3) as u32,
            xid: 7,
            commit_ts: 1_700_000_000_000_000,
            before,
            after,
            unchanged,
        });
        seq += 1;
    };
    for id in 1..=6 {
        push(
            &mut b,
            Op::Insert,
            orders,
            None,
            Some(row(id, if id % 2 == 0 { "paid" } else { "new" })),
            vec![],
        );
    }
    let mut toasted = row(2, "shipped");
    toasted[1] = Value::Null;
    push(
        &mut b,
        Op::Update,
        orders,
        Some(row(2, "paid")),
        Some(toasted),
        vec![1],
    );
    let mut key_only = vec![Value::Null; 7];
    key_only[0] = Value::Int(3);
    push(&mut b, Op::Delete, orders, Some(key_only), None, vec![]);
    push(
        &mut b,
        Op::Insert,
        customers,
        None,
        Some(vec![Value::Int(1), Value::Text("555-0101".into())]),
        vec![],
    );
    push(
        &mut b,
        Op::Update,
        customers,
        None,
        Some(vec![Value::Int(1), Value::Null]),
        vec![],
    );
    push(&mut b, Op::Truncate, customers, None, None, vec![]);
    b
}

fn check_invariants(input: &Batch, out: &Batch) {
    assert!(Batch::decode(&out.encode()).is_ok(), "a valid batch");
    let positions: Vec<(u64, u32)> = out.events.iter().map(|e| (e.commit_lsn, e.seq)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "commit order kept: {positions:?}"
    );
    let known: Vec<(u64, u32)> = input.events.iter().map(|e| (e.commit_lsn, e.seq)).collect();
    assert!(
        positions.iter().all(|p| known.contains(p)),
        "no invented positions"
    );
}

/// Runs `config` through the component and natively and compares.
fn conforms<T: Transform>(package: &str, manifest: &str, config: &str) -> Batch {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = install_plugin(dir.path(), package, manifest, |m| m);
    let engine = PluginEngine::new(Some(dir.path().join("cache"))).unwrap();
    let table: toml::Table = serde_json::from_str(config).unwrap();
    let mut component =
        TransformPlugin::load(&engine, &plugin_dir, &table).unwrap_or_else(|e| panic!("{e}"));
    let input = fixture();
    let out = component
        .apply(input.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let native = testing::run::<T>(config, input.clone()).unwrap();
    assert_eq!(
        out, native,
        "{package} with {config}: the component differs from the native logic"
    );
    check_invariants(&input, &out);
    out
}

#[test]
fn mask_conforms() {
    let m = ("weir-plugin-mask", "plugins/mask/weir-plugin.toml");
    for config in [
        r#"{"salt":"x","rules":[{"columns":["email","phone"],"method":"hash"}]}"#,
        r#"{"tags":{"pii":["orders.email","crm.customers.phone"]},"rules":[{"tag":"pii","method":"partial","keep":3}]}"#,
        r#"{"rules":[{"columns":["amount","blob","score","paid"],"method":"redact"},{"columns":["status"],"method":"null"}]}"#,
    ] {
        let out = conforms::<weir_plugin_mask::Mask>(m.0, m.1, config);
        assert_eq!(
            out.events.len(),
            fixture().events.len(),
            "mask never drops events"
        );
    }
}

#[test]
fn filter_conforms() {
    let f = ("weir-plugin-filter", "plugins/filter/weir-plugin.toml");
    for config in [
        r#"{"tables":["public.orders"],"ops":["c","u"]}"#,
        r#"{"where":[{"column":"status","in":["paid","shipped"]},{"column":"amount","ge":2}]}"#,
        r#"{"drop_tables":["customers"],"where":[{"column":"paid","eq":true}]}"#,
    ] {
        let out = conforms::<weir_plugin_filter::Filter>(f.0, f.1, config);
        assert!(
            out.events.len() < fixture().events.len(),
            "{config} drops something"
        );
    }
}

#[test]
fn rename_conforms() {
    let r = ("weir-plugin-rename", "plugins/rename/weir-plugin.toml");
    for config in [
        r#"{"tables":{"public.orders":"sales.orders_v2","customers":"clients"}}"#,
        r#"{"columns":{"email":"contact","crm.customers.phone":"tel"},"drop_columns":["blob","orders.score"]}"#,
    ] {
        conforms::<weir_plugin_rename::Rename>(r.0, r.1, config);
    }
}

/// The position of a batch that ends with its last transaction complete.
fn complete(batch: &Batch) -> weir::batch::Position {
    let last = batch.events.iter().map(|e| e.commit_lsn).max().unwrap();
    weir::batch::Position {
        last_commit: Some(weir::batch::CommitPos {
            commit_lsn: weir::Lsn(last),
            end_lsn: weir::Lsn(last + 8),
        }),
        ..Default::default()
    }
}

#[test]
fn webhook_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = crate::sinks::Receiver::start(dir.path(), &[]);
    let host = format!("127.0.0.1:{}", receiver.port);
    let plugin = install_plugin(
        dir.path(),
        "weir-plugin-webhook",
        "plugins/webhook/weir-plugin.toml",
        |m| m.replace("${WEIR_WEBHOOK_HOST}", &host),
    );
    let engine = PluginEngine::new(Some(dir.path().join("cache"))).unwrap();
    let config: toml::Table = toml::from_str(&format!("url = \"http://{host}/in\"")).unwrap();
    let mut sink = SinkPlugin::load(&engine, &plugin, &config, std::time::Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.durable(), None, "a webhook holds nothing at start");
    let input = fixture();
    sink.write(input.clone(), &complete(&input))
        .unwrap_or_else(|e| panic!("{e}"));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "one POST per batch");
    assert_eq!(
        requests[0]["body"],
        weir_plugin_webhook::to_json(&input),
        "the component posts exactly what its logic produces natively"
    );
    assert_eq!(
        sink.durable(),
        complete(&input).last_commit,
        "the whole batch is durable once the receiver answered 2xx"
    );
}

#[test]
fn the_sink_world_delivers_in_order_and_reports_only_what_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let plugin = install_plugin(
        dir.path(),
        "weir-test-recorder",
        "tests/plugins/recorder/weir-plugin.toml",
        |m| m.replace("${RECORDER_DIR}", out.to_str().unwrap()),
    );
    let engine = PluginEngine::new(Some(dir.path().join("cache"))).unwrap();
    let config: toml::Table = toml::from_str("buffer = true\nresume = true").unwrap();
    let mut sink = SinkPlugin::load(
        &engine,
        &plugin,
        &config,
        std::time::Duration::from_secs(3600),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let input = fixture();
    let position = complete(&input);
    sink.write(input.clone(), &position).unwrap();
    assert_eq!(
        sink.durable(),
        None,
        "buffered: nothing durable before flush"
    );
    sink.flush().unwrap();
    assert_eq!(sink.durable(), position.last_commit, "durable after flush");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(u64, u64)> = lines
        .iter()
        .map(|l| (l["lsn"].as_u64().unwrap(), l["seq"].as_u64().unwrap()))
        .collect();
    let want: Vec<(u64, u64)> = input
        .events
        .iter()
        .map(|e| (e.commit_lsn, e.seq as u64))
        .collect();
    assert_eq!(got, want, "every event, in commit order");

    // A new instance reports what the destination holds, and is not given it again.
    let mut again = SinkPlugin::load(
        &engine,
        &plugin,
        &config,
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    assert_eq!(
        again.durable().map(|d| d.commit_lsn),
        position.last_commit.map(|d| d.commit_lsn)
    );
    again.write(input.clone(), &position).unwrap();
    again.flush().unwrap();
    let len = std::fs::read_to_string(out.join("events.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(len, input.events.len(), "nothing delivered twice");
}

#[test]
fn a_compiled_component_is_cached_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = install_plugin(
        dir.path(),
        "weir-plugin-filter",
        "plugins/filter/weir-plugin.toml",
        |m| m,
    );
    let cache = dir.path().join("cache");
    let cached = || -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.map(|e| e.unwrap())
                    .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(cached().is_empty());
    let engine = PluginEngine::new(Some(cache.clone())).unwrap();
    TransformPlugin::load(&engine, &plugin, &toml::Table::new()).unwrap();
    let first = cached();
    assert_eq!(first.len(), 1, "one compiled artifact");
    // A new engine, as after a restart: the artifact is loaded, not compiled and written again.
    let engine = PluginEngine::new(Some(cache.clone())).unwrap();
    TransformPlugin::load(&engine, &plugin, &toml::Table::new()).unwrap();
    assert_eq!(cached(), first, "reused as is");
}
