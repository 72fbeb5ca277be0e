//! Iceberg's file access over object_store (ADR 0007): the same stores, credentials and
//! retry policy as the Parquet sink, and fsync for local warehouses.

use crate::storage::{LocalSync, object_store_for, storage_message};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// Size of a multipart upload part for data files (S3's minimum is 5 MiB).
const UPLOAD_PART: usize = 8 << 20;

/// Builds [`ObjectStorage`]; handed to the catalogs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorageFactory;

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage::default()))
    }
}

/// Reads and writes `file:///...` and `s3://bucket/...` locations. One store per bucket,
/// made on first use from the standard AWS environment (see [`object_store_for`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorage {
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

fn err(location: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        format!("{location}: {}", storage_message(&e.to_string())),
    )
}

impl ObjectStorage {
    /// The store holding a location, and the object's path in it.
    fn resolve(&self, location: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let url = url::Url::parse(location).map_err(|e| err(location, e))?;
        let root = match url.scheme() {
            "file" => "file:///".to_string(),
            scheme => format!("{scheme}://{}", url.host_str().unwrap_or_default()),
        };
        let path = Path::from_url_path(url.path()).map_err(|e| err(location, e))?;
        let mut stores = self.stores.lock().expect("store cache is not poisoned");
        if let Some(store) = stores.get(&root) {
            return Ok((store.clone(), path));
        }
        let (store, _) = object_store_for(&root).map_err(|e| err(location, e))?;
        stores.insert(root, store.clone());
        Ok((store, path))
    }

    fn local(location: &str) -> Option<LocalSync> {
        LocalSync::for_url(location)
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        let (store, object) = self.resolve(path)?;
        match store.head(&object).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(err(path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let (store, object) = self.resolve(path)?;
        let meta = store.head(&object).await.map_err(|e| err(path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        let (store, object) = self.resolve(path)?;
        let got = store.get(&object).await.map_err(|e| err(path, e))?;
        got.bytes().await.map_err(|e| err(path, e))
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        let (store, object) = self.resolve(path)?;
        Ok(Box::new(ObjectRead {
            store,
            object,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let (store, object) = self.resolve(path)?;
        store
            .put(&object, PutPayload::from(bs))
            .await
            .map_err(|e| err(path, e))?;
        if let Some(local) = Self::local(path) {
            local.sync(vec![object]).await.map_err(|e| err(path, e))?;
        }
        Ok(())
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let (store, object) = self.resolve(path)?;
        let upload =
            object_store::buffered::BufWriter::with_capacity(store, object.clone(), UPLOAD_PART)
                .with_max_concurrency(2);
        Ok(Box::new(ObjectWrite {
            upload: Some(upload),
            object,
            location: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (store, object) = self.resolve(path)?;
        match store.delete(&object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err(path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let (store, prefix) = self.resolve(path)?;
        let mut listed = store.list(Some(&prefix));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| err(path, e))?;
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(err(path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    object: Path,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.object, range)
            .await
            .map_err(|e| err(&self.location, e))
    }
}

/// A file streamed up as a multipart upload: visible only once closed.
struct ObjectWrite {
    upload: Option<object_store::buffered::BufWriter>,
    object: Path,
    location: String,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| err(&self.location, "written after close"))?;
        upload.put(bs).await.map_err(|e| err(&self.location, e))
    }

    async fn close(&mut self) -> Result<()> {
        let mut upload = self
            .upload
            .take()
            .ok_or_else(|| err(&self.location, "closed twice"))?;
        upload
            .shutdown()
            .await
            .map_err(|e| err(&self.location, e))?;
        if let Some(local) = ObjectStorage::local(&self.location) {
            // On disk before any commit can name it.
            local
                .sync(vec![self.object.clone()])
                .await
                .map_err(|e| err(&self.location, e))?;
        }
        Ok(())
    }
}
