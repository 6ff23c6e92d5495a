//! Writing a worker's rows as Parquet files: one open file per (table, hour partition), rolled
//! by rows, encoded in the worker and uploaded in the background so compute and IO overlap.
//!
//! A file only ever appears complete: it is encoded in memory and stored with a single put
//! (an atomic rename on a local folder, a single-object PUT on S3).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::encode::Columns;
use super::{Lake, LakeError, Table, partition_path};

/// File sizing and upload concurrency.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// A file is closed once it holds this many rows.
    pub rows_per_file: usize,
    /// Rows buffered in Arrow builders before they are encoded into the open file.
    pub batch_rows: usize,
    /// Uploads in flight per worker before the worker waits for the oldest.
    pub max_uploads: usize,
    /// Open files per table and worker. Event times may scatter over a century of hours;
    /// past this many open partitions the one with the fewest rows is closed, which bounds
    /// memory at the cost of small files for scattered data only.
    pub max_open_files: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig { rows_per_file: 2_000_000, batch_rows: 64 * 1024, max_uploads: 4, max_open_files: 64 }
    }
}

/// What a worker wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteStats {
    /// Files stored.
    pub files: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Rows stored per table name.
    pub rows: BTreeMap<String, u64>,
}

impl WriteStats {
    /// Adds another worker's figures.
    pub fn merge(&mut self, other: &WriteStats) {
        self.files += other.files;
        self.bytes += other.bytes;
        for (table, rows) in &other.rows {
            *self.rows.entry(table.clone()).or_default() += rows;
        }
    }
}

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(concat!("stockflow ", env!("CARGO_PKG_VERSION")).to_owned())
        .build()
}

/// Where and under which name a worker's files go.
#[derive(Clone, Debug)]
pub struct FileNamer {
    /// The lake.
    pub lake: Lake,
    /// Global index of the worker (part of every file name, so workers never collide).
    pub worker: usize,
    next_seq: u64,
}

impl FileNamer {
    /// Names files for `worker` in `lake`.
    pub fn new(lake: Lake, worker: usize) -> Self {
        FileNamer { lake, worker, next_seq: 0 }
    }

    /// `<table>/dt=../hour=../<commit>-w<worker>-<seq>.parquet`.
    fn next(&mut self, table: &Table, hour: i64, commit: u64) -> Path {
        let seq = self.next_seq;
        self.next_seq += 1;
        let name = format!("{}/{commit:013}-w{:03}-{seq:06}.parquet", partition_path(hour), self.worker);
        Path::parse(format!("{}/{name}", self.lake.table_path(table))).unwrap_or_else(|_| Path::from(name))
    }
}

struct OpenFile<C> {
    columns: C,
    writer: ArrowWriter<Vec<u8>>,
    rows: usize,
}

/// The open files of one table on one worker, keyed by hour partition.
pub struct TableFiles<C: Columns> {
    table: Table,
    open: BTreeMap<i64, OpenFile<C>>,
    config: WriterConfig,
}

impl<C: Columns> TableFiles<C> {
    /// No open files yet.
    pub fn new(table: Table, config: WriterConfig) -> Self {
        TableFiles { table, open: BTreeMap::new(), config }
    }

    /// Appends `row` to the file of `hour`; closes and uploads the file if it is full.
    pub fn push(&mut self, hour: i64, row: &C::Row, out: &mut FileSink) -> Result<(), LakeError> {
        if !self.open.contains_key(&hour) && self.open.len() >= self.config.max_open_files.max(1) {
            let smallest = self.open.iter().min_by_key(|(_, f)| f.rows + f.columns.len()).map(|(h, _)| *h);
            if let Some(file) = smallest.and_then(|h| self.open.remove_entry(&h)) {
                out.store(&self.table, file.0, file.1)?;
            }
        }
        let file = match self.open.get_mut(&hour) {
            Some(file) => file,
            None => {
                let columns = C::new();
                let writer = ArrowWriter::try_new(Vec::new(), self.table.schema(), Some(properties()))?;
                self.open.entry(hour).or_insert(OpenFile { columns, writer, rows: 0 })
            }
        };
        file.columns.push(row);
        if file.columns.len() >= self.config.batch_rows {
            file.rows += file.columns.len();
            let batch = file.columns.finish()?;
            file.writer.write(&batch)?;
            if file.rows >= self.config.rows_per_file {
                if let Some(file) = self.open.remove(&hour) {
                    out.store(&self.table, hour, file)?;
                }
            }
        }
        Ok(())
    }

    /// Closes and uploads every open file.
    pub fn close_all(&mut self, out: &mut FileSink) -> Result<(), LakeError> {
        for (hour, file) in std::mem::take(&mut self.open) {
            out.store(&self.table, hour, file)?;
        }
        Ok(())
    }
}

/// Finished files on their way to the store.
pub struct FileSink {
    namer: FileNamer,
    runtime: Handle,
    in_flight: VecDeque<JoinHandle<Result<(), object_store::Error>>>,
    max_uploads: usize,
    /// The commit point named in files closed from now on.
    pub commit: u64,
    /// What has been handed to the store so far.
    pub stats: WriteStats,
}

impl FileSink {
    /// Uploads through `runtime` into the lake of `namer`.
    pub fn new(namer: FileNamer, runtime: Handle, config: &WriterConfig) -> Self {
        FileSink {
            namer,
            runtime,
            in_flight: VecDeque::new(),
            max_uploads: config.max_uploads.max(1),
            commit: 0,
            stats: WriteStats::default(),
        }
    }

    fn store<C: Columns>(&mut self, table: &Table, hour: i64, mut file: OpenFile<C>) -> Result<(), LakeError> {
        if !file.columns.is_empty() {
            file.rows += file.columns.len();
            let batch = file.columns.finish()?;
            file.writer.write(&batch)?;
        }
        if file.rows == 0 {
            return Ok(());
        }
        let bytes = Bytes::from(file.writer.into_inner()?);
        let path = self.namer.next(table, hour, self.commit);
        self.stats.files += 1;
        self.stats.bytes += bytes.len() as u64;
        *self.stats.rows.entry(table.name()).or_default() += file.rows as u64;
        while self.in_flight.len() >= self.max_uploads {
            self.wait_oldest()?;
        }
        let store: Arc<dyn ObjectStore> = Arc::clone(&self.namer.lake.store);
        self.in_flight.push_back(
            self.runtime.spawn(async move { store.put(&path, PutPayload::from_bytes(bytes)).await.map(|_| ()) }),
        );
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), LakeError> {
        if let Some(task) = self.in_flight.pop_front() {
            self.runtime.block_on(task).map_err(|e| LakeError::Task(e.to_string()))??;
        }
        Ok(())
    }

    /// Reaps finished uploads without waiting, surfacing the first failure.
    pub fn reap(&mut self) -> Result<(), LakeError> {
        while self.in_flight.front().is_some_and(|t| t.is_finished()) {
            self.wait_oldest()?;
        }
        Ok(())
    }

    /// Waits for every upload to finish.
    pub fn finish(&mut self) -> Result<(), LakeError> {
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use dataflows::{Quarantined, Reason};

    use super::*;
    use crate::lake::HOUR_MS;
    use crate::lake::encode::QuarantineColumns;
    use crate::lake::read::{list_files, positions, read_table};

    fn row(offset: i64) -> Quarantined {
        Quarantined {
            reason: Reason::MalformedJson,
            payload: "{".into(),
            partition: 0,
            offset,
            kafka_ts: Some(offset * HOUR_MS),
            time: 0,
        }
    }

    #[test]
    fn scattered_hours_keep_few_files_open_and_lose_no_rows() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        let config = WriterConfig { max_open_files: 2, batch_rows: 4, ..Default::default() };
        let mut out = FileSink::new(FileNamer::new(lake.clone(), 0), rt.handle().clone(), &config);
        let mut files: TableFiles<QuarantineColumns> = TableFiles::new(Table::Quarantine, config);
        // Ten rows in each of five hours, interleaved: never more than two files open.
        for i in 0..50 {
            files.push(i % 5, &row(i), &mut out).expect("push");
            assert!(files.open.len() <= 2);
        }
        files.close_all(&mut out).expect("close");
        out.finish().expect("uploads");
        let batches = rt.block_on(read_table(&lake, &Table::Quarantine)).expect("read");
        let mut offsets: Vec<i64> = positions(&batches).expect("positions").into_iter().map(|(_, o)| o).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..50).collect::<Vec<_>>());
        let stored = rt.block_on(list_files(&lake, &Table::Quarantine)).expect("list").len() as u64;
        assert_eq!(stored, out.stats.files);
        assert!(stored > 5, "closing the smallest file made more, smaller files: {stored}");
    }
}
