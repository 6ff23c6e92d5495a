//! The lake: where tables live (a local folder or an object store), its folder layout, and the
//! code that writes and reads its Parquet files.

pub mod encode;
pub mod read;
pub mod schema;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

pub use schema::Table;

/// Errors opening or using the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The location is not one stockflow can write to.
    #[error("unsupported lake location '{0}': use a folder path or file:// URL")]
    Unsupported(String),
    /// The local folder could not be created or opened.
    #[error("cannot open lake folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
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
}

impl Lake {
    /// Opens `location`: a folder path or `file://` URL (created if missing).
    pub fn open(location: &str) -> Result<Lake, LakeError> {
        let folder = match location.split_once("://") {
            None => PathBuf::from(location),
            Some(("file", rest)) => PathBuf::from(rest),
            Some(_) => return Err(LakeError::Unsupported(location.to_owned())),
        };
        std::fs::create_dir_all(&folder).map_err(|source| LakeError::Folder { path: folder.clone(), source })?;
        let folder = folder.canonicalize().map_err(|source| LakeError::Folder { path: folder.clone(), source })?;
        let store = LocalFileSystem::new_with_prefix(&folder)?;
        Ok(Lake { store: Arc::new(store), prefix: Path::default(), location: location.to_owned() })
    }

    /// The folder of `table` under the lake's prefix.
    pub fn table_path(&self, table: &Table) -> Path {
        self.prefix.clone().join(table.name())
    }
}

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
    fn s3_is_reported_as_unsupported_for_now() {
        assert!(matches!(Lake::open("gs://bucket/x"), Err(LakeError::Unsupported(_))));
    }
}
