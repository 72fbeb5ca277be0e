//! Sinks: where batches go. Each sink keeps its own checkpoint with its output and
//! reports the last transaction it has made durable.

pub mod columns;
pub mod iceberg;
pub mod parquet;
pub mod rows;

use crate::batch::{Position, SourceBatch};
use crate::checkpoint::{CheckpointError, CommitPos};
use crate::config::SinkConfig;
use crate::lsn::Lsn;
use crate::plugin::{DeadLetters, PluginEngine, PluginFailure, SinkPlugin};
use object_store::ObjectStore;
use object_store::path::Path;
use std::sync::Arc;

/// A sink that cannot write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("unsupported output URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Not a `#[source]`: the message already says everything, once.
    #[error("{0}; the checkpoint stays before this batch")]
    Plugin(crate::plugin::PluginFailure),
    #[error(transparent)]
    LoadPlugin(#[from] crate::plugin::LoadError),
}

/// The object store and base path an output URL names: `file:///absolute/path` or
/// `s3://bucket/prefix`.
///
/// S3 settings come from the standard AWS environment: credentials from the usual chain
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, web identity
/// `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`, container credentials, then the
/// instance metadata service), `AWS_REGION`, and for S3-compatible stores
/// `AWS_ENDPOINT_URL` (path-style addressing unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`)
/// and `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint. Requests are retried with
/// exponential backoff; large files go up as multipart uploads.
pub fn object_store_for(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), SinkError> {
    let err = |reason: &str| SinkError::Url {
        url: url.into(),
        reason: reason.into(),
    };
    let parsed = url::Url::parse(url).map_err(|e| {
        err(&format!(
            "{e}; write file:///absolute/path or s3://bucket/prefix"
        ))
    })?;
    match parsed.scheme() {
        "file" => {
            if parsed
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(err(
                    "a file:// URL names a local path: write file:///absolute/path (three slashes)",
                ));
            }
            let (store, path) =
                object_store::parse_url(&parsed).map_err(|e| err(&e.to_string()))?;
            Ok((Arc::from(store), path))
        }
        "s3" | "s3a" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| err("names no bucket: write s3://bucket/prefix"))?;
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(object_store::RetryConfig::default());
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                builder = builder.with_region("us-east-1");
            }
            if std::env::var_os("AWS_ENDPOINT_URL").is_some()
                || std::env::var_os("AWS_ENDPOINT").is_some()
            {
                // S3-compatible stores mostly want path-style requests.
                let virtual_hosted = std::env::var("AWS_VIRTUAL_HOSTED_STYLE_REQUEST")
                    .is_ok_and(|v| v == "true" || v == "1");
                builder = builder.with_virtual_hosted_style_request(virtual_hosted);
            }
            let store = builder.build().map_err(|e| err(&e.to_string()))?;
            let path = Path::from_url_path(parsed.path()).map_err(|e| err(&e.to_string()))?;
            Ok((Arc::new(store), path))
        }
        other => Err(err(&format!(
            "the scheme `{other}` is not supported; use file:///absolute/path or s3://bucket/prefix"
        ))),
    }
}

/// Makes local output durable: object_store's local store writes each file through a
/// temporary file and a rename but never calls fsync, so after a power loss a checkpoint
/// could name files that are not on disk. For `file://` outputs weir fsyncs each
/// completed file and its directory before the checkpoint that lists it, and the
/// checkpoint files themselves.
#[derive(Debug, Clone)]
pub struct LocalSync;

impl LocalSync {
    /// For `file://` URLs (whose object paths are relative to `/`).
    pub fn for_url(url: &str) -> Option<LocalSync> {
        url.starts_with("file:").then_some(LocalSync)
    }

    /// fsyncs the objects and their directories.
    pub async fn sync(&self, paths: Vec<Path>) -> Result<(), SinkError> {
        tokio::task::spawn_blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            for path in &paths {
                let file = std::path::Path::new("/").join(path.as_ref());
                let synced = std::fs::File::open(&file).and_then(|f| f.sync_all());
                synced.map_err(|e| SinkError::Write {
                    path: file.display().to_string(),
                    message: format!("fsync: {e}"),
                })?;
                // Every directory up the path: a partition or table directory made for
                // this file must survive a power loss too.
                dirs.extend(file.ancestors().skip(1).map(|d| d.to_path_buf()));
            }
            for dir in dirs {
                // Directories cannot be opened for writing; fsync through a read handle.
                let _ = std::fs::File::open(&dir).and_then(|d| d.sync_all());
            }
            Ok(())
        })
        .await
        .expect("fsync does not panic")
    }
}

/// Reads a small JSON state file (progress records of weir's own); `None` when absent.
pub async fn get_state<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Option<T>, String> {
    match object_store::ObjectStoreExt::get(store, path).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| e.to_string())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes a small JSON state file durably: on local output it is fsynced with its
/// directory.
pub async fn put_state<T: serde::Serialize>(
    store: &dyn ObjectStore,
    path: &Path,
    value: &T,
    local: Option<&LocalSync>,
) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(value).expect("state records serialize");
    object_store::ObjectStoreExt::put(store, path, object_store::PutPayload::from(bytes))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(local) = local {
        local
            .sync(vec![path.clone()])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Checks that the output location can be read (a missing bucket, wrong credentials or
/// an unreachable endpoint show here, before anything is created or written).
pub async fn check_reachable(
    store: &dyn ObjectStore,
    prefix: &Path,
    url: &str,
) -> Result<(), SinkError> {
    store
        .list_with_delimiter(Some(prefix))
        .await
        .map(|_| ())
        .map_err(|e| SinkError::Url {
            url: url.into(),
            reason: format!("cannot be read: {}", storage_message(&e.to_string())),
        })
}

/// An object store error in one line: S3's XML error body reduced to its code and message.
pub fn storage_message(text: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find("</")? + start;
        Some(text[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => {
            let head = text.split(" - ").next().unwrap_or(text);
            format!("{code}: {message} ({})", head.trim())
        }
        _ => text.lines().next().unwrap_or(text).to_string(),
    }
}

/// A sink's name in metrics and `weir status`: its kind and where it writes.
pub fn sink_name(config: &SinkConfig) -> String {
    match config {
        SinkConfig::Parquet(c) => format!("parquet {}", c.url),
        SinkConfig::Iceberg(c) => format!("iceberg {}", c.warehouse),
        SinkConfig::Plugin(c) => format!("plugin {}", c.plugin.display()),
    }
}

/// One configured sink.
pub enum Sink {
    Parquet(parquet::ParquetSink),
    Iceberg(iceberg::IcebergSink),
    Plugin(PluginSink),
}

impl Sink {
    fn name(&self) -> String {
        match self {
            Sink::Parquet(s) => format!("parquet {}", s.url()),
            Sink::Iceberg(s) => format!("iceberg {}", s.warehouse()),
            Sink::Plugin(s) => format!("plugin {}", s.label),
        }
    }

    /// Built into weir (not a plugin).
    fn native(&self) -> bool {
        !matches!(self, Sink::Plugin(_))
    }

    async fn write(&mut self, batch: &SourceBatch) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(s) => s.write(batch).await,
            Sink::Iceberg(s) => s.write(batch).await,
            Sink::Plugin(s) => {
                let (events, position) = (batch.batch.clone(), batch.position);
                s.blocking(move |p| p.write(events, &position)).await
            }
        }
    }

    async fn flush(&mut self, position: &Position) -> Result<(), SinkError> {
        match self {
            Sink::Parquet(s) => s.flush(position).await,
            Sink::Iceberg(s) => s.flush(position).await,
            Sink::Plugin(s) => s.blocking(|p| p.flush()).await,
        }
    }

    /// Bytes of output this sink completed (for plugin sinks: handed over) since the
    /// last call.
    fn take_new_bytes(&mut self) -> u64 {
        match self {
            Sink::Parquet(s) => s.take_bytes_written(),
            Sink::Iceberg(s) => s.take_bytes_written(),
            Sink::Plugin(s) => s.plugin.as_mut().map_or(0, SinkPlugin::take_bytes_out),
        }
    }

    fn durable(&self) -> Option<CommitPos> {
        match self {
            Sink::Parquet(s) => s.durable(),
            Sink::Iceberg(s) => s.durable(),
            Sink::Plugin(s) => s.plugin.as_ref().and_then(SinkPlugin::durable),
        }
    }

    async fn abort(self) {
        match self {
            Sink::Parquet(s) => s.abort().await,
            Sink::Iceberg(s) => s.abort().await,
            Sink::Plugin(s) => s.report(),
        }
    }
}

/// A sink plugin, run on a blocking thread (plugin calls are synchronous).
pub struct PluginSink {
    label: String,
    plugin: Option<SinkPlugin>,
}

impl PluginSink {
    /// Loads the plugin off the async threads (compiling it can take seconds).
    pub async fn open(
        engine: &PluginEngine,
        config: &crate::config::PluginSinkConfig,
        dead_letters: Option<(DeadLetters, String)>,
    ) -> Result<PluginSink, SinkError> {
        let (engine, config) = (engine.clone(), config.clone());
        let mut plugin = tokio::task::spawn_blocking(move || {
            SinkPlugin::load(
                &engine,
                &config.plugin,
                &config.config,
                config.flush_interval,
            )
        })
        .await
        .expect("plugin loading does not panic")?;
        match dead_letters {
            Some((d, stage)) => plugin.set_dead_letters(d, stage),
            None if plugin.on_error() == crate::plugin::OnError::DeadLetter => {
                return Err(SinkError::LoadPlugin(crate::plugin::LoadError::Invalid {
                    plugin: plugin.label(),
                    message: "has on_error = \"dead-letter\" but the pipeline has no place for dead letters: add a parquet sink or [state] url".into(),
                }));
            }
            None => {}
        }
        tracing::info!(plugin = %plugin.label(), on_error = plugin.on_error().as_str(), "Sink plugin loaded.");
        Ok(PluginSink {
            label: plugin.label(),
            plugin: Some(plugin),
        })
    }

    async fn blocking(
        &mut self,
        f: impl FnOnce(&mut SinkPlugin) -> Result<(), PluginFailure> + Send + 'static,
    ) -> Result<(), SinkError> {
        let mut plugin = self.plugin.take().ok_or_else(|| SinkError::Write {
            path: self.label.clone(),
            message: "the plugin was lost in an earlier failure".into(),
        })?;
        let span = tracing::Span::current();
        let (plugin, result) = tokio::task::spawn_blocking(move || {
            let _batch = span.enter();
            let result = f(&mut plugin);
            (plugin, result)
        })
        .await
        .expect("sink plugin calls do not panic");
        self.plugin = Some(plugin);
        result.map_err(SinkError::Plugin)
    }

    /// Logs what the plugin set aside during the run.
    fn report(&self) {
        if let Some(p) = &self.plugin {
            if p.skipped() > 0 {
                tracing::warn!(plugin = %p.label(), events = p.skipped(), "Events skipped by on_error = \"skip\" in this run.");
            }
            if p.dead_lettered() > 0 {
                tracing::warn!(plugin = %p.label(), events = p.dead_lettered(), "Events written to the dead-letter location in this run; see `weir dead-letter list`.");
            }
        }
    }
}

/// Where the source resumes so that no sink misses a transaction: the lowest checkpoint,
/// or none (the slot's own position) when any sink has none.
fn resume_of(sinks: &[Sink]) -> Option<CommitPos> {
    sinks
        .iter()
        .map(Sink::durable)
        .collect::<Option<Vec<_>>>()
        .and_then(|d| d.into_iter().min())
}

/// All sinks of a pipeline: every batch goes to each, in order.
pub struct Sinks {
    sinks: Vec<Sink>,
    /// Each sink's calls, their time and failures.
    calls: Vec<Arc<crate::stats::CallStats>>,
    /// Where the source must resume so that no sink misses a transaction.
    resume: Option<CommitPos>,
}

impl Sinks {
    /// Opens every sink, undoing any flush that did not reach its checkpoint. Plugin
    /// sinks are loaded with `engine` and write dead letters to `dead_letters`.
    pub async fn open(
        configs: &[SinkConfig],
        slot: &str,
        engine: Option<&PluginEngine>,
        dead_letters: Option<&DeadLetters>,
    ) -> Result<Sinks, SinkError> {
        let mut sinks = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            sinks.push(match config {
                SinkConfig::Parquet(c) => {
                    Sink::Parquet(parquet::ParquetSink::open(c.clone(), slot).await?)
                }
                SinkConfig::Iceberg(c) => {
                    Sink::Iceberg(iceberg::IcebergSink::open(c.clone(), slot).await?)
                }
                SinkConfig::Plugin(c) => {
                    let engine = engine.expect("an engine is made when a plugin is configured");
                    let dl = dead_letters.map(|d| (d.clone(), format!("sink-{i}")));
                    Sink::Plugin(PluginSink::open(engine, c, dl).await?)
                }
            });
        }
        // Any sink without a checkpoint starts from the slot's own position.
        let resume = resume_of(&sinks);
        Ok(Sinks {
            calls: sinks.iter().map(|_| Arc::default()).collect(),
            sinks,
            resume,
        })
    }

    /// Counts each sink's writes and flushes (and each sink plugin's calls) in `stats`;
    /// `configs` are the sinks' configurations, in order.
    pub fn count_in(&mut self, configs: &[SinkConfig], stats: &crate::stats::Stats) {
        use crate::stats::Component;
        let sinks = self.sinks.iter_mut().zip(&mut self.calls).zip(configs);
        for ((sink, calls), config) in sinks {
            *calls = stats.component(Component::Sink, &sink_name(config));
            if let Sink::Plugin(PluginSink {
                plugin: Some(p), ..
            }) = sink
            {
                let counted = stats.component(Component::Plugin, p.name());
                p.set_call_stats(counted);
            }
        }
    }

    /// Whether any sink holds a checkpoint (output of an earlier run).
    pub fn any_checkpoint(&self) -> bool {
        self.sinks.iter().any(|s| s.durable().is_some())
    }

    /// Whether a whole flush of every sink has happened: native sinks are flushed after
    /// plugin sinks, so one of theirs with a checkpoint proves it; without native sinks,
    /// any checkpoint does.
    pub fn all_flushed_once(&self) -> bool {
        let native: Vec<&Sink> = self.sinks.iter().filter(|s| s.native()).collect();
        match native.is_empty() {
            true => self.any_checkpoint(),
            false => native.iter().any(|s| s.durable().is_some()),
        }
    }

    /// The furthest position any sink (or any Iceberg table) holds output up to: where a
    /// slot that has gone missing left the output.
    pub fn held_position(&self) -> Option<CommitPos> {
        self.sinks
            .iter()
            .filter_map(|s| match s {
                Sink::Iceberg(s) => s.held(),
                s => s.durable(),
            })
            .max()
    }

    /// The lowest checkpoint among the sinks that have one.
    pub fn lowest_checkpoint(&self) -> Option<CommitPos> {
        self.sinks.iter().filter_map(Sink::durable).min()
    }

    /// The position the source resumes after.
    pub fn resume(&self) -> Option<CommitPos> {
        self.resume
    }

    /// Writes a batch to every sink; all must succeed.
    pub async fn write_all(&mut self, batch: &SourceBatch) -> Result<(), (String, SinkError)> {
        for (sink, calls) in self.sinks.iter_mut().zip(&self.calls) {
            let started = std::time::Instant::now();
            let result = sink.write(batch).await;
            calls.record(started, false, &result);
            calls.add_bytes(sink.take_new_bytes());
            result.map_err(|e| (sink.name(), e))?;
        }
        Ok(())
    }

    /// Makes everything written durable (when the position is at a transaction boundary).
    /// Plugin sinks first: a native checkpoint then proves every sink has flushed.
    pub async fn flush_all(&mut self, position: &Position) -> Result<(), (String, SinkError)> {
        for native in [false, true] {
            for (sink, calls) in self.sinks.iter_mut().zip(&self.calls) {
                if sink.native() == native {
                    let started = std::time::Instant::now();
                    let result = sink.flush(position).await;
                    calls.record(started, false, &result);
                    calls.add_bytes(sink.take_new_bytes());
                    result.map_err(|e| (sink.name(), e))?;
                }
            }
        }
        Ok(())
    }

    /// The LSN that may be reported to the server as flushed: everything before it is
    /// durable in every sink. When every sink holds everything delivered, that includes
    /// the idle WAL the server reported in keepalives.
    pub fn durable_lsn(&self, position: &Position) -> Option<Lsn> {
        let durables: Option<Vec<CommitPos>> = self.sinks.iter().map(Sink::durable).collect();
        let all_caught_up = |d: &[CommitPos]| match position.last_commit {
            None => true,
            Some(last) => d.iter().all(|p| *p >= last),
        };
        match durables {
            Some(d) if !position.in_tx && all_caught_up(&d) => Some(position.delivered_through()),
            Some(d) => d.iter().map(|p| p.end_lsn).min(),
            None if !position.in_tx && position.last_commit.is_none() => {
                Some(position.delivered_through())
            }
            None => None,
        }
    }

    /// Before an initial snapshot is taken again: drops what the unfinished one left in
    /// sinks that commit table by table (Iceberg). Parquet output needs nothing: its
    /// snapshot flush is one checkpoint.
    pub async fn discard_abandoned_snapshot(&mut self) -> Result<(), (String, SinkError)> {
        for sink in &mut self.sinks {
            if let Sink::Iceberg(s) = sink {
                s.discard_abandoned_snapshot()
                    .await
                    .map_err(|e| (sink.name(), e))?;
            }
        }
        self.resume = resume_of(&self.sinks);
        Ok(())
    }

    /// Abandons unfinished output (what is durable stays).
    pub async fn abort(self) {
        for sink in self.sinks {
            sink.abort().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_files_are_synced_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.parquet");
        std::fs::write(&file, b"x").unwrap();
        let sync = LocalSync::for_url("file:///x").unwrap();
        let object = Path::from(file.to_str().unwrap().trim_start_matches('/'));
        sync.sync(vec![object]).await.unwrap();
        let missing = Path::from(
            dir.path()
                .join("nope")
                .to_str()
                .unwrap()
                .trim_start_matches('/'),
        );
        assert!(sync.sync(vec![missing]).await.is_err());
        assert!(LocalSync::for_url("s3://b/x").is_none());
    }

    #[test]
    fn s3_error_bodies_become_one_line() {
        let e = "Error performing PUT http://h/b/k in 3ms - Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(
            storage_message(e),
            "NoSuchBucket: The specified bucket does not exist (Error performing PUT http://h/b/k in 3ms)"
        );
        assert_eq!(storage_message("plain\nmore"), "plain");
    }

    #[test]
    fn urls_other_than_local_files_are_refused_with_the_fix() {
        assert!(object_store_for("file:///tmp/x").is_ok());
        let err = object_store_for("gs://bucket/x").err().unwrap().to_string();
        assert!(err.contains("`gs` is not supported"), "{err}");
        let err = object_store_for("s3:///x").err().unwrap().to_string();
        assert!(err.contains("names no bucket"), "{err}");
        let err = object_store_for("file://tmp/x").err().unwrap().to_string();
        assert!(err.contains("three slashes"), "{err}");
        assert!(object_store_for("not a url").is_err());
    }
}
