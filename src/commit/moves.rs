//! Moving a commit's staged files into their tables, after its record is stored.
//!
//! Moves run with bounded parallelism (on S3 a move is a copy and a delete, two requests) and
//! are idempotent, so recovery can finish the moves of a record whatever state a crash left
//! them in. A move never overwrites a file already in a table: finding one there means either
//! this same file, moved before a crash left its staged copy behind (same size: the staged
//! copy is removed), or a foreign file, which is an error naming it. Only files staged as
//! replacements (a table file republished whole) take the place of the file at their path,
//! atomically: a reader sees the old version or the new one.

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use super::CommitError;
use crate::lake::Lake;
use crate::lake::writer::Staged;

/// Moves in flight at once.
pub const PARALLEL_MOVES: usize = 16;

/// Moves every file of `files` into its table; files already moved are skipped.
pub async fn finish(lake: &Lake, files: &[Staged]) -> Result<(), CommitError> {
    let moves: Vec<_> = files.iter().map(|file| move_file(lake, file)).collect();
    futures::stream::iter(moves).buffer_unordered(PARALLEL_MOVES).try_collect::<Vec<()>>().await?;
    lake.sync_tables(files.iter().map(|f| f.path.as_str()))?;
    Ok(())
}

async fn move_file(lake: &Lake, file: &Staged) -> Result<(), CommitError> {
    let (from, to) = (lake.path(&file.staged), lake.path(&file.path));
    let moved = if file.replace {
        lake.store.rename(&from, &to).await
    } else {
        match lake.store.rename_if_not_exists(&from, &to).await {
            // S3 without a conditional copy: look first (only a run of this lake, which the
            // commit log fences, names files here).
            Err(object_store::Error::NotSupported { .. }) => match lake.store.head(&to).await {
                Ok(_) => Err(object_store::Error::AlreadyExists { path: to.to_string(), source: "exists".into() }),
                Err(object_store::Error::NotFound { .. }) => lake.store.rename(&from, &to).await,
                Err(e) => Err(e),
            },
            other => other,
        }
    };
    match moved {
        Ok(()) => Ok(()),
        // The staged copy is gone: the file must have been moved before.
        Err(object_store::Error::NotFound { .. }) => match lake.store.head(&to).await {
            Ok(meta) if file.replace || meta.size == file.bytes => Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Err(CommitError::Missing(file.path.clone())),
            Err(e) => Err(e.into()),
        },
        Err(object_store::Error::AlreadyExists { .. }) => match lake.store.head(&to).await {
            Ok(meta) if meta.size == file.bytes => match lake.store.delete(&from).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Ok(_) => Err(CommitError::Collision(file.path.clone())),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}
