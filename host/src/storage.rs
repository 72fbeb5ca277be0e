//! Storage: the bottom of the host. Where output and state live (`object_store_for`),
//! how local files are made durable (`LocalSync`), and the one way weir keeps a state
//! file beside its output (`StateFile<T>`: checkpoints, snapshot and backfill progress,
//! schema versions). It imports nothing from the stages above it.

use crate::error::{ErrorKind, HostPanic};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::marker::PhantomData;
use std::sync::Arc;

/// Reading or writing output or state failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported output URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("{op} {path}: {}", storage_message(&source.to_string()))]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{op} {path}: {source}")]
    Local {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the output {url} is not writable ({message}): give weir's user write access to it (a directory's owner and mode; on S3 the credentials and bucket policy)"
    )]
    Unwritable { url: String, message: String },
    #[error("{path} is corrupt ({source}); move it away only if you mean to start over")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Panic(#[from] HostPanic),
}

impl StorageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::Url { .. } => ErrorKind::Config,
            StorageError::Store { .. }
            | StorageError::Local { .. }
            | StorageError::Unwritable { .. } => ErrorKind::Storage,
            StorageError::Corrupt { .. } => ErrorKind::Data,
            StorageError::Panic(_) => ErrorKind::Internal,
        }
    }

    /// A failed object store call on `path`.
    pub fn store(
        op: &'static str,
        path: impl ToString,
    ) -> impl FnOnce(object_store::Error) -> Self {
        let path = path.to_string();
        move |source| StorageError::Store { op, path, source }
    }
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
pub fn object_store_for(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), StorageError> {
    let err = |reason: &str| StorageError::Url {
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
            let store = s3_builder(bucket)
                .build()
                .map_err(|e| err(&e.to_string()))?;
            let path = Path::from_url_path(parsed.path()).map_err(|e| err(&e.to_string()))?;
            Ok((Arc::new(store), path))
        }
        other => Err(err(&format!(
            "the scheme `{other}` is not supported; use file:///absolute/path or s3://bucket/prefix"
        ))),
    }
}

fn s3_builder(bucket: &str) -> object_store::aws::AmazonS3Builder {
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(object_store::RetryConfig::default());
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    if std::env::var_os("AWS_ENDPOINT_URL").is_some() || std::env::var_os("AWS_ENDPOINT").is_some()
    {
        // S3-compatible stores mostly want path-style requests.
        let virtual_hosted = std::env::var("AWS_VIRTUAL_HOSTED_STYLE_REQUEST")
            .is_ok_and(|v| v == "true" || v == "1");
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    }
    builder
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
    pub async fn sync(&self, paths: Vec<Path>) -> Result<(), StorageError> {
        crate::error::blocking("fsync", move || {
            let mut dirs = std::collections::BTreeSet::new();
            for path in &paths {
                let file = std::path::Path::new("/").join(path.as_ref());
                let synced = std::fs::File::open(&file).and_then(|f| f.sync_all());
                synced.map_err(|source| StorageError::Local {
                    op: "fsync",
                    path: file.display().to_string(),
                    source,
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
        .await?
    }
}

/// One small JSON state file of weir's own, under `<url>/_weir/<slot>/`: read whole,
/// replaced atomically (a rename on local disk, one PUT on S3), fsynced with its
/// directory on local disk.
pub struct StateFile<T> {
    store: Arc<dyn ObjectStore>,
    path: Path,
    local: Option<LocalSync>,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for StateFile<T> {
    fn clone(&self) -> Self {
        StateFile {
            store: self.store.clone(),
            path: self.path.clone(),
            local: self.local.clone(),
            _value: PhantomData,
        }
    }
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> StateFile<T> {
    /// `<url>/_weir/<slot>/<name>`.
    pub fn open(url: &str, slot: &str, name: &str) -> Result<StateFile<T>, StorageError> {
        let (store, base) = object_store_for(url)?;
        Ok(StateFile::at(store, &base, slot, name).with_local_sync(LocalSync::for_url(url)))
    }

    /// `<base>/_weir/<slot>/<name>` in `store`.
    pub fn at(store: Arc<dyn ObjectStore>, base: &Path, slot: &str, name: &str) -> StateFile<T> {
        StateFile {
            store,
            path: base.clone().join("_weir").join(slot).join(name),
            local: None,
            _value: PhantomData,
        }
    }

    /// fsyncs the file after each write (for local outputs).
    pub fn with_local_sync(mut self, local: Option<LocalSync>) -> StateFile<T> {
        self.local = local;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a user finds it: absolute on local disk.
    fn shown(&self) -> String {
        match self.local {
            Some(_) => format!("/{}", self.path),
            None => self.path.to_string(),
        }
    }

    /// The value; `None` when the file does not exist.
    pub async fn read(&self) -> Result<Option<T>, StorageError> {
        match self.store.get(&self.path).await {
            Ok(got) => {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(StorageError::store("reading", self.shown()))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StorageError::Corrupt {
                        path: self.shown(),
                        source,
                    })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store("reading", self.shown())(e)),
        }
    }

    /// Replaces the file with `value`, durably.
    pub async fn write(&self, value: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(value).expect("state records serialize");
        self.store
            .put(&self.path, PutPayload::from(bytes))
            .await
            .map_err(StorageError::store("writing", self.shown()))?;
        if let Some(local) = &self.local {
            local.sync(vec![self.path.clone()]).await?;
        }
        Ok(())
    }

    /// Removes the file (absent already is fine).
    pub async fn remove(&self) -> Result<(), StorageError> {
        match self.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::store("deleting", self.shown())(e)),
        }
    }
}

/// Checks that weir may write under `url`, leaving nothing behind: on local disk a
/// temporary file in the output directory (or, while it does not exist, in the nearest
/// directory above it, where weir would create it); elsewhere an object
/// `_weir/<slot>/.probe-…`, written and removed.
pub async fn probe_writable(url: &str, slot: &str) -> Result<(), StorageError> {
    let (store, base) = object_store_for(url)?;
    let unwritable = |message: String| StorageError::Unwritable {
        url: url.into(),
        message,
    };
    if LocalSync::for_url(url).is_some() {
        let dir = std::path::Path::new("/").join(base.as_ref());
        let probe = crate::error::blocking("probing the output", move || {
            let existing = dir.ancestors().find(|d| d.is_dir()).unwrap_or(&dir);
            tempfile::NamedTempFile::new_in(existing).map(drop)
        });
        return probe.await?.map_err(|e| unwritable(e.to_string()));
    }
    let probe = base.join("_weir").join(slot).join(format!(
        ".probe-{}-{:x}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    let store_err = |e: object_store::Error| unwritable(storage_message(&e.to_string()));
    store
        .put(&probe, PutPayload::from_static(b"weir"))
        .await
        .map_err(store_err)?;
    store.delete(&probe).await.map_err(store_err)
}

/// Checks that the output location can be read (a missing bucket, wrong credentials or
/// an unreachable endpoint show here, before anything is created or written).
pub async fn check_reachable(
    store: &dyn ObjectStore,
    prefix: &Path,
    url: &str,
) -> Result<(), StorageError> {
    store
        .list_with_delimiter(Some(prefix))
        .await
        .map(|_| ())
        .map_err(|e| StorageError::Url {
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

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

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
        let err = sync.sync(vec![missing]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert!(LocalSync::for_url("s3://b/x").is_none());
    }

    #[tokio::test]
    async fn a_state_file_round_trips_and_a_corrupt_one_names_its_path() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let file: StateFile<Vec<u32>> =
            StateFile::at(store.clone(), &Path::from("out"), "s", "x.json");
        assert_eq!(file.read().await.unwrap(), None);
        file.write(&vec![1, 2]).await.unwrap();
        assert_eq!(file.read().await.unwrap(), Some(vec![1, 2]));
        store
            .put(file.path(), PutPayload::from_static(b"{not json"))
            .await
            .unwrap();
        let err = file.read().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Data);
        assert!(
            err.to_string().starts_with("out/_weir/s/x.json is corrupt"),
            "{err}"
        );
        file.remove().await.unwrap();
        file.remove().await.unwrap();
        assert_eq!(file.read().await.unwrap(), None);
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
        assert_eq!(
            object_store_for("gs://b").err().unwrap().kind(),
            ErrorKind::Config
        );
    }
}
