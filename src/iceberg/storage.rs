//! Iceberg's file IO over the lake's own object store, so metadata, manifests and data files
//! go through one client: the same credentials, `--s3-endpoint`, retries and store layers.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig, StorageFactory};
use iceberg::{Error, ErrorKind};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::lake::Lake;

/// Iceberg storage on a [`Lake`]: absolute locations under the lake's URL map to store paths.
#[derive(Clone, Debug)]
pub struct LakeStorage {
    lake: Lake,
    /// The lake's URL (`file:///…` or `s3://bucket/prefix`), without a trailing slash.
    root: String,
}

impl LakeStorage {
    /// Storage for `lake`.
    pub fn new(lake: Lake) -> Self {
        LakeStorage { root: lake.url(), lake }
    }

    /// The store path of an absolute location inside the lake.
    fn path(&self, location: &str) -> iceberg::Result<Path> {
        let relative = location.strip_prefix(&self.root).and_then(|rest| rest.strip_prefix('/')).ok_or_else(|| {
            Error::new(ErrorKind::DataInvalid, format!("{location} is outside the lake {}", self.root))
        })?;
        Ok(self.lake.path(relative))
    }
}

fn store_error(location: &str, e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::DataInvalid,
        _ => ErrorKind::Unexpected,
    };
    Error::new(kind, format!("{location}: {e}")).with_source(e)
}

/// A file storage only ever serialises as its lake's URL; it is rebuilt from the URL with
/// the environment's credentials (stockflow itself never sends a file IO anywhere).
impl Serialize for LakeStorage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.root.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LakeStorage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let root = String::deserialize(deserializer)?;
        let lake = Lake::open(&root).map_err(serde::de::Error::custom)?;
        Ok(LakeStorage::new(lake))
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for LakeStorage {
    async fn exists(&self, location: &str) -> iceberg::Result<bool> {
        match self.lake.store.head(&self.path(location)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(location, e)),
        }
    }

    async fn metadata(&self, location: &str) -> iceberg::Result<FileMetadata> {
        let meta = self.lake.store.head(&self.path(location)?).await.map_err(|e| store_error(location, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, location: &str) -> iceberg::Result<Bytes> {
        let got = self.lake.store.get(&self.path(location)?).await.map_err(|e| store_error(location, e))?;
        got.bytes().await.map_err(|e| store_error(location, e))
    }

    async fn reader(&self, location: &str) -> iceberg::Result<Box<dyn FileRead>> {
        Ok(Box::new(RangeReader {
            store: Arc::clone(&self.lake.store),
            path: self.path(location)?,
            location: location.to_owned(),
        }))
    }

    async fn write(&self, location: &str, bs: Bytes) -> iceberg::Result<()> {
        self.lake.store.put(&self.path(location)?, PutPayload::from(bs)).await.map_err(|e| store_error(location, e))?;
        Ok(())
    }

    async fn writer(&self, location: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let path = self.path(location)?;
        let upload = self.lake.store.put_multipart(&path).await.map_err(|e| store_error(location, e))?;
        Ok(Box::new(Upload { upload: Some(WriteMultipart::new(upload)), location: location.to_owned() }))
    }

    async fn delete(&self, location: &str) -> iceberg::Result<()> {
        match self.lake.store.delete(&self.path(location)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(location, e)),
        }
    }

    async fn delete_prefix(&self, location: &str) -> iceberg::Result<()> {
        let prefix = self.path(location)?;
        let mut listed = self.lake.store.list(Some(&prefix));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| store_error(location, e))?;
            match self.lake.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(location, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut locations: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(location) = locations.next().await {
            self.delete(&location).await?;
        }
        Ok(())
    }

    fn new_input(&self, location: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), location.to_owned()))
    }

    fn new_output(&self, location: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), location.to_owned()))
    }
}

/// Ranged reads of one object.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
}

#[async_trait]
impl FileRead for RangeReader {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store.get_range(&self.path, range).await.map_err(|e| store_error(&self.location, e))
    }
}

/// A streamed upload (a multipart upload on S3, a temporary file renamed on completion locally).
struct Upload {
    upload: Option<WriteMultipart>,
    location: String,
}

#[async_trait]
impl FileWrite for Upload {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, format!("{}: written after close", self.location)))?;
        upload.put(bs);
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let upload = self
            .upload
            .take()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, format!("{}: closed twice", self.location)))?;
        upload.finish().await.map_err(|e| store_error(&self.location, e))?;
        Ok(())
    }
}

/// Builds [`LakeStorage`] for catalogs: every location a catalog hands it lies in the lake.
#[derive(Debug, Serialize, Deserialize)]
pub struct LakeStorageFactory {
    storage: Arc<LakeStorage>,
}

impl LakeStorageFactory {
    /// A factory of storage on `lake`.
    pub fn new(lake: Lake) -> Self {
        LakeStorageFactory { storage: Arc::new(LakeStorage::new(lake)) }
    }
}

#[typetag::serde]
impl StorageFactory for LakeStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(self.storage.clone())
    }
}
