//! The lake: where tables live (a local folder or an object store), its folder layout, and the
//! code that writes and reads its Parquet files.

pub mod encode;
pub mod read;
pub mod republish;
pub mod schema;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

pub use schema::Table;

/// Errors opening or using the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The location is not one stockflow can write to.
    #[error("unsupported lake location '{0}': use a folder path, file:// or s3://bucket/prefix")]
    Unsupported(String),
    /// The store could not be reached or refused access at start.
    #[error("cannot access lake {location}: {reason}")]
    Access {
        /// The location.
        location: String,
        /// What went wrong, in a line.
        reason: String,
    },
    /// The local folder could not be created or opened.
    #[error("cannot open lake folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    /// A spool file (an open file's row groups, on local disk) failed.
    #[error("spool file: {0}")]
    Spool(#[from] std::io::Error),
    /// An object store request failed.
    #[error("lake storage: {0}")]
    Store(#[from] object_store::Error),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow batch construction failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A background upload task died.
    #[error("upload task failed: {0}")]
    Task(String),
    /// Reading an Iceberg table failed.
    #[error(transparent)]
    Iceberg(Box<crate::iceberg::IcebergError>),
    /// A bar table holds a bar's revisions twice or with holes.
    #[error("bar revisions are not dense: {0}")]
    Revisions(String),
}

impl From<crate::iceberg::IcebergError> for LakeError {
    fn from(e: crate::iceberg::IcebergError) -> Self {
        LakeError::Iceberg(Box::new(e))
    }
}

/// How the lake's tables are laid out for readers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// Parquet files in Hive-style `dt=/hour=` folders, found by listing.
    #[default]
    Hive,
    /// Iceberg tables: data files listed by snapshots in a catalog.
    Iceberg,
}

impl TableFormat {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            TableFormat::Hive => "hive",
            TableFormat::Iceberg => "iceberg",
        }
    }
}

/// A lake location: an object store and the prefix the tables live under.
#[derive(Clone, Debug)]
pub struct Lake {
    /// The store (local filesystem or S3).
    pub store: Arc<dyn ObjectStore>,
    /// Prefix inside the store; empty for a local folder.
    pub prefix: Path,
    /// The location as the user gave it, for messages.
    pub location: String,
    /// The folder of a local lake (`None` on S3): what durability and clean-up act on.
    pub local: Option<PathBuf>,
}

/// Wraps the store a lake opens (instrumentation, throttling, fault injection in tests).
pub type StoreLayer = Arc<dyn Fn(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> + Send + Sync>;

/// How to reach an S3 lake; credentials come only from the environment or the instance role.
#[derive(Clone, Default)]
pub struct LakeOptions {
    /// Endpoint of an S3-compatible store (path-style requests; `http://` allowed).
    pub s3_endpoint: Option<String>,
    /// A layer around the store, if any.
    pub layer: Option<StoreLayer>,
}

impl std::fmt::Debug for LakeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeOptions")
            .field("s3_endpoint", &self.s3_endpoint)
            .field("layer", &self.layer.as_ref().map(|_| "..."))
            .finish()
    }
}

/// Requests to the store are retried with backoff (throttling, 5xx, dropped connections)
/// for up to this long before the error reaches the job.
const RETRY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the start-up access check waits for the store.
const ACCESS_TIMEOUT: Duration = Duration::from_secs(20);

impl Lake {
    /// Opens a local `location` (a folder path or `file://` URL, created if missing) or an S3
    /// one with default options.
    pub fn open(location: &str) -> Result<Lake, LakeError> {
        Self::open_with(location, &LakeOptions::default())
    }

    /// Opens `location`: a folder, `file://…`, or `s3://bucket/prefix` (AWS credential chain
    /// from the environment: keys, web identity, instance role).
    pub fn open_with(location: &str, options: &LakeOptions) -> Result<Lake, LakeError> {
        let mut lake = Self::open_store(location, options)?;
        if let Some(layer) = &options.layer {
            lake.store = layer(lake.store);
        }
        Ok(lake)
    }

    /// Checks that `location` names a lake this build can open, without creating or
    /// contacting anything.
    pub fn check_location(location: &str, options: &LakeOptions) -> Result<(), LakeError> {
        match location.split_once("://") {
            None | Some(("file", _)) => Ok(()),
            Some(("s3", rest)) => Self::open_s3(location, rest, options).map(|_| ()),
            Some(_) => Err(LakeError::Unsupported(location.to_owned())),
        }
    }

    fn open_store(location: &str, options: &LakeOptions) -> Result<Lake, LakeError> {
        let folder = match location.split_once("://") {
            None => PathBuf::from(location),
            Some(("file", rest)) => PathBuf::from(rest),
            Some(("s3", rest)) => return Self::open_s3(location, rest, options),
            Some(_) => return Err(LakeError::Unsupported(location.to_owned())),
        };
        std::fs::create_dir_all(&folder).map_err(|source| LakeError::Folder { path: folder.clone(), source })?;
        let folder = folder.canonicalize().map_err(|source| LakeError::Folder { path: folder.clone(), source })?;
        // Deleting a file removes the folders it leaves empty (staging of committed epochs).
        let store = LocalFileSystem::new_with_prefix(&folder)?.with_automatic_cleanup(true);
        Ok(Lake { store: Arc::new(store), prefix: Path::default(), location: location.to_owned(), local: Some(folder) })
    }

    fn open_s3(location: &str, rest: &str, options: &LakeOptions) -> Result<Lake, LakeError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(LakeError::Unsupported(location.to_owned()));
        }
        let retry = RetryConfig { retry_timeout: RETRY_TIMEOUT, ..RetryConfig::default() };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
        if let Some(endpoint) = &options.s3_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store =
            builder.build().map_err(|e| LakeError::Access { location: location.to_owned(), reason: e.to_string() })?;
        let prefix = Path::parse(prefix.trim_matches('/')).map_err(|_| LakeError::Unsupported(location.to_owned()))?;
        Ok(Lake { store: Arc::new(store), prefix, location: location.to_owned(), local: None })
    }

    /// Lists the lake's prefix once, so a missing bucket, denied access or an unreachable
    /// endpoint is one clear error at start rather than a failure at the first commit.
    pub async fn check_access(&self) -> Result<(), LakeError> {
        let access = |reason: String| LakeError::Access { location: self.location.clone(), reason };
        match tokio::time::timeout(ACCESS_TIMEOUT, self.store.list_with_delimiter(Some(&self.prefix))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(object_store::Error::NotFound { .. })) => Err(access("the bucket does not exist".into())),
            Ok(Err(e)) => {
                let text = e.to_string();
                Err(access(if text.contains("NoSuchBucket") {
                    "the bucket does not exist".into()
                } else if text.contains("AccessDenied") || text.contains("403") {
                    "access denied (check the credentials and the bucket policy)".into()
                } else {
                    first_line(&text)
                }))
            }
            Err(_) => Err(access(format!("no answer within {}s", ACCESS_TIMEOUT.as_secs()))),
        }
    }

    /// Makes the local file at `relative` (and its name in its folder) durable: a power loss
    /// after a commit is reported must not leave it empty. Nothing to do on S3, where a
    /// completed put is durable.
    pub fn sync_file(&self, relative: &str) -> Result<(), LakeError> {
        let Some(root) = &self.local else { return Ok(()) };
        let path = root.join(relative);
        let sync = |p: &std::path::Path| std::fs::File::open(p).and_then(|f| f.sync_all());
        sync(&path).map_err(|source| LakeError::Folder { path: path.clone(), source })?;
        if let Some(parent) = path.parent() {
            sync(parent).map_err(|source| LakeError::Folder { path: parent.to_owned(), source })?;
        }
        Ok(())
    }

    /// Makes the folders holding `relative` files durable (a rename is durable once its
    /// folder is). Nothing to do on S3.
    pub fn sync_tables<'a>(&self, relative: impl IntoIterator<Item = &'a str>) -> Result<(), LakeError> {
        let Some(root) = &self.local else { return Ok(()) };
        let folders: std::collections::BTreeSet<PathBuf> =
            relative.into_iter().filter_map(|r| root.join(r).parent().map(PathBuf::from)).collect();
        for folder in folders {
            std::fs::File::open(&folder)
                .and_then(|f| f.sync_all())
                .map_err(|source| LakeError::Folder { path: folder.clone(), source })?;
        }
        Ok(())
    }

    /// Removes the temporary files a local put or multipart upload leaves when it is killed
    /// before its rename (`<name>#<n>`); returns how many. On S3 a put is one request, and the
    /// parts of a multipart upload a killed run left are the bucket lifecycle rule's to abort
    /// (docs/ec2.md).
    pub fn remove_temporary_files(&self) -> Result<usize, LakeError> {
        let Some(root) = &self.local else { return Ok(0) };
        let mut removed = 0;
        let mut folders = vec![root.clone()];
        while let Some(folder) = folders.pop() {
            let entries =
                std::fs::read_dir(&folder).map_err(|source| LakeError::Folder { path: folder.clone(), source })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    folders.push(path);
                } else if entry.file_name().to_string_lossy().contains('#') {
                    std::fs::remove_file(&path).map_err(|source| LakeError::Folder { path: path.clone(), source })?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The lake's URL: `file:///folder` for a local lake, `s3://bucket/prefix` on S3 (no
    /// trailing slash), as table formats name their files.
    pub fn url(&self) -> String {
        match &self.local {
            Some(folder) => format!("file://{}", folder.display()),
            None => self.location.trim_end_matches('/').to_owned(),
        }
    }

    /// The folder of `table` under the lake's prefix.
    pub fn table_path(&self, table: &Table) -> Path {
        self.prefix.clone().join(table.name())
    }

    /// The store path of `relative` (slash-separated, relative to the lake's prefix).
    pub fn path(&self, relative: &str) -> Path {
        let full =
            if self.prefix.as_ref().is_empty() { relative.to_owned() } else { format!("{}/{relative}", self.prefix) };
        // Our own names only ever hold characters a path allows; encode anything else.
        Path::parse(&full).unwrap_or_else(|_| Path::from(full.as_str()))
    }
}

/// The first line of a message, for one-line errors.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

/// The lake's own bookkeeping (not a table): commit records and staged files.
pub const META: &str = "_stockflow";
/// Files written but not yet committed, per run.
pub const STAGING: &str = "_stockflow/staging";
/// The commit log: one record per commit or claim, named by its sequence number
/// (`<seq>.json`, zero-padded to 20 digits).
pub const COMMITS: &str = "_stockflow/commits";

/// Milliseconds in an hour: the lake's partition grain.
pub const HOUR_MS: i64 = 3_600_000;

/// The hour bucket of a timestamp (ms since the epoch, UTC).
#[inline]
pub fn hour_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(HOUR_MS)
}

/// `dt=YYYY-MM-DD/hour=HH` for an hour bucket, in UTC.
pub fn partition_path(hour: i64) -> String {
    let at: DateTime<Utc> = DateTime::from_timestamp_millis(hour * HOUR_MS).unwrap_or_default();
    at.format("dt=%Y-%m-%d/hour=%H").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_utc_hours() {
        assert_eq!(partition_path(hour_of(1_763_997_374_633)), "dt=2025-11-24/hour=15");
        assert_eq!(partition_path(hour_of(0)), "dt=1970-01-01/hour=00");
        assert_eq!(partition_path(hour_of(946_684_800_000 - 1)), "dt=1999-12-31/hour=23");
    }

    #[test]
    fn unknown_schemes_are_unsupported() {
        assert!(matches!(Lake::open("gs://bucket/x"), Err(LakeError::Unsupported(_))));
        assert!(matches!(Lake::open("s3:///x"), Err(LakeError::Unsupported(_))));
    }

    #[test]
    fn s3_locations_split_into_bucket_and_prefix() {
        let lake = Lake::open("s3://bucket/a/b/").expect("s3 lake");
        assert_eq!(lake.prefix.as_ref(), "a/b");
        assert_eq!(lake.table_path(&Table::Trades).as_ref(), "a/b/trades");
        assert_eq!(Lake::open("s3://bucket").expect("bucket only").table_path(&Table::Trades).as_ref(), "trades");
    }
}
