//! Writing a worker's rows as Parquet files: one open file per (table, publish epoch, hour
//! partition), rolled by rows or size, encoded in the worker into row groups spooled to an
//! unnamed local temporary file, and uploaded to the lake's staging area in the background so
//! compute and IO overlap.
//!
//! A file only ever appears complete: up to 8 MiB it is stored with a single put, larger ones
//! are streamed from the spool as a multipart upload (an atomic rename on a local folder; on
//! S3 the object appears when the upload completes). It reaches its table's folder only when
//! a commit record names it (see `crate::commit`).

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use dataflows::Time;
use serde::{Deserialize, Serialize};

use super::encode::Columns;
use super::{Lake, LakeError, STAGING, Table, TableFormat, partition_path};

/// File sizing and upload concurrency.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// A file is closed once it holds this many rows.
    pub rows_per_file: usize,
    /// … or once its encoded size reaches this many bytes.
    pub bytes_per_file: usize,
    /// Rows buffered in Arrow builders before they are encoded into the open file.
    pub batch_rows: usize,
    /// Uploads in flight per worker before the worker waits for the oldest.
    pub max_uploads: usize,
    /// Open files per table and worker. Event times may scatter over a century of hours;
    /// past this many open partitions the one with the fewest rows is closed, which bounds
    /// memory at the cost of small files for scattered data only.
    pub max_open_files: usize,
    /// The table format the files are written for (layout and column types).
    pub format: TableFormat,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            rows_per_file: 2_000_000,
            bytes_per_file: 256 << 20,
            batch_rows: 64 * 1024,
            max_uploads: 4,
            max_open_files: 64,
            format: TableFormat::Hive,
        }
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

/// Columns whose values are (nearly) all distinct. A dictionary cannot shrink them, but
/// building one costs a hash per value until the writer gives up on it; ZSTD compresses
/// their plain pages as well.
const NEARLY_UNIQUE: [&str; 4] = ["kafka_offset", "trade_ts", "ingest_ts", "payload"];

/// How every Parquet file of the lake is written (ZSTD, the writer named).
pub fn properties() -> WriterProperties {
    NEARLY_UNIQUE
        .iter()
        .fold(WriterProperties::builder(), |b, column| b.set_column_dictionary_enabled((*column).into(), false))
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_created_by(concat!("stockflow ", env!("CARGO_PKG_VERSION")).to_owned())
        .build()
}

/// A file stored in the staging area, waiting for the commit that moves it into its table.
/// Paths are relative to the lake's prefix, so a lake can be copied elsewhere whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// The commit point whose output the file holds: its rows have times in
    /// `[epoch - interval, epoch)`, except a republished bar hour, which holds every row of
    /// the hour so far.
    pub epoch: Time,
    /// Where the file is staged.
    pub staged: String,
    /// Where the commit puts it: `<table>/dt=../hour=../<name>`.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Whether it replaces the file at `path` (a table file republished whole) rather than
    /// joining the table as a new file. (Always written: timely exchanges this type between
    /// processes with bincode, which cannot skip fields.)
    #[serde(default)]
    pub replace: bool,
    /// The hour partition of its rows (hours since the epoch): an Iceberg partition value.
    #[serde(default)]
    pub hour: i64,
}

/// Where and under which name a worker's files go.
#[derive(Clone, Debug)]
pub struct FileNamer {
    /// The lake.
    pub lake: Lake,
    /// Global index of the worker (part of every file name, so workers never collide).
    pub worker: usize,
    /// Names this run's files apart from those of earlier runs (restarts).
    pub run: String,
    next_seq: u64,
    format: TableFormat,
}

impl FileNamer {
    /// Names files for `worker` of run `run` in `lake`.
    pub fn new(lake: Lake, worker: usize, run: &str) -> Self {
        FileNamer { lake, worker, run: run.to_owned(), next_seq: 0, format: TableFormat::Hive }
    }

    /// `(staged, path)` of the next file: `<table>/dt=../hour=../<epoch>-<run>-w<worker>-<seq>.parquet`
    /// in the table (`<table>/data/dt=..` for Iceberg, whose metadata sits beside it), under
    /// `_stockflow/staging/<run>/` until committed.
    fn next(&mut self, table: &Table, hour: i64, epoch: Time) -> (String, String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let folder = match self.format {
            TableFormat::Hive => table.name(),
            TableFormat::Iceberg => format!("{}/data", table.name()),
        };
        let path =
            format!("{folder}/{}/{epoch:013}-{}-w{:03}-{seq:06}.parquet", partition_path(hour), self.run, self.worker);
        (format!("{STAGING}/{}/{path}", self.run), path)
    }

    /// `(staged, path)` of a new version of the file republished whole for `hour`: the path
    /// is the same for every version and run (`<table>/dt=../hour=../<hour start>.parquet`),
    /// the staged name unique.
    pub fn version(&mut self, table: &Table, hour: i64, epoch: Time) -> (String, String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = version_path(table, hour);
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        let staged = format!("{STAGING}/{}/{dir}/{epoch:013}-w{:03}-{seq:06}-{name}", self.run, self.worker);
        (staged, path)
    }
}

/// Where every version of `table`'s file for `hour` lies once committed.
fn version_path(table: &Table, hour: i64) -> String {
    format!("{}/{}/{:013}.parquet", table.name(), partition_path(hour), hour * super::HOUR_MS)
}

/// An open file: rows in Arrow builders, then encoded row groups in an unnamed temporary
/// file (deleted by the OS however the process ends), so memory does not grow with the hours
/// a file stays open.
struct OpenFile<C> {
    columns: C,
    writer: ArrowWriter<std::fs::File>,
    rows: usize,
    conform: Option<SchemaRef>,
}

impl<C: Columns> OpenFile<C> {
    /// Encodes the buffered rows into the file (cast to the file schema where it differs).
    fn write_batch(&mut self) -> Result<(), LakeError> {
        let batch = self.columns.finish()?;
        match &self.conform {
            Some(schema) => self.writer.write(&crate::iceberg::schema::conform(&batch, schema)?)?,
            None => self.writer.write(&batch)?,
        }
        Ok(())
    }
}

/// Files up to this size are uploaded with one put; larger ones are streamed from their
/// spool file in parts of this size (S3 multipart upload, completed atomically).
const PART_BYTES: usize = 8 << 20;

/// Parts of one file in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// The open files of one table on one worker, keyed by (commit epoch, hour partition).
pub struct TableFiles<C: Columns> {
    table: Table,
    open: BTreeMap<(Time, i64), OpenFile<C>>,
    config: WriterConfig,
    /// The files' schema where it differs from the table's Arrow schema (Iceberg).
    conform: Option<SchemaRef>,
}

impl<C: Columns> TableFiles<C> {
    /// No open files yet.
    pub fn new(table: Table, config: WriterConfig) -> Result<Self, LakeError> {
        let conform = match config.format {
            TableFormat::Hive => None,
            TableFormat::Iceberg => Some(crate::iceberg::schema::file_schema(&table)?),
        };
        Ok(TableFiles { table, open: BTreeMap::new(), config, conform })
    }

    /// Appends `row` to the file of (`epoch`, `hour`); closes and uploads the file if it is full.
    pub fn push(&mut self, epoch: Time, hour: i64, row: &C::Row, out: &mut FileSink) -> Result<(), LakeError> {
        let key = (epoch, hour);
        if !self.open.contains_key(&key) && self.open.len() >= self.config.max_open_files.max(1) {
            let smallest = self.open.iter().min_by_key(|(_, f)| f.rows + f.columns.len()).map(|(h, _)| *h);
            if let Some(file) = smallest.and_then(|h| self.open.remove_entry(&h)) {
                out.store(&self.table, file.0, file.1)?;
            }
        }
        let file = match self.open.get_mut(&key) {
            Some(file) => file,
            None => {
                let columns = C::new();
                let schema = self.conform.clone().unwrap_or_else(|| self.table.schema());
                let writer = ArrowWriter::try_new(tempfile::tempfile()?, schema, Some(properties()))?;
                self.open.entry(key).or_insert(OpenFile { columns, writer, rows: 0, conform: self.conform.clone() })
            }
        };
        file.columns.push(row);
        if file.columns.len() >= self.config.batch_rows {
            file.rows += file.columns.len();
            file.write_batch()?;
            let bytes = file.writer.bytes_written() + file.writer.in_progress_size();
            if file.rows >= self.config.rows_per_file || bytes >= self.config.bytes_per_file {
                if let Some(file) = self.open.remove(&key) {
                    out.store(&self.table, key, file)?;
                }
            }
        }
        Ok(())
    }

    /// Closes and uploads the open files of every epoch up to `through` (inclusive).
    pub fn close_through(&mut self, through: Time, out: &mut FileSink) -> Result<(), LakeError> {
        let later = match through.checked_add(1) {
            Some(next) => self.open.split_off(&(next, i64::MIN)),
            None => BTreeMap::new(),
        };
        for (key, file) in std::mem::replace(&mut self.open, later) {
            out.store(&self.table, key, file)?;
        }
        Ok(())
    }
}

/// What an upload stores.
enum Body {
    /// A small file, read whole.
    Bytes(Bytes),
    /// A large file, streamed from its spool file.
    Spool(std::fs::File),
}

/// Streams `file` to `location` in parts: memory stays at a few parts whatever its size.
/// An upload that fails is aborted; one the process does not live to finish or abort is
/// left to the bucket's lifecycle rule (docs/ec2.md).
async fn stream_file(
    store: Arc<dyn ObjectStore>,
    location: &object_store::path::Path,
    mut file: std::fs::File,
) -> Result<(), object_store::Error> {
    let upload = store.put_multipart(location).await?;
    let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut chunk = vec![0u8; PART_BYTES];
    loop {
        // A local temporary file: a short blocking read, like the encoding before it.
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = parts.abort().await;
                return Err(object_store::Error::Generic { store: "spool", source: Box::new(e) });
            }
        };
        if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = parts.abort().await;
            return Err(e);
        }
        parts.write(&chunk[..n]);
    }
    parts.finish().await.map(|_| ())
}

/// Called when an upload finishes, to wake the operator that reports it.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The outcome of an upload, sent before the waker is called: a woken operator must find the
/// upload finished (a task's own completion flag is set only after it returns).
type Upload = oneshot::Receiver<Result<(), object_store::Error>>;

/// Finished files on their way to the staging area.
pub struct FileSink {
    namer: FileNamer,
    runtime: Handle,
    in_flight: VecDeque<(Upload, Staged)>,
    max_uploads: usize,
    waker: Option<Waker>,
    /// Files whose upload finished, not yet taken by [`FileSink::take_staged`].
    staged: Vec<Staged>,
    /// What has been handed to the store so far.
    pub stats: WriteStats,
}

impl FileSink {
    /// Uploads through `runtime` into the lake of `namer`.
    pub fn new(mut namer: FileNamer, runtime: Handle, config: &WriterConfig) -> Self {
        namer.format = config.format;
        FileSink {
            namer,
            runtime,
            in_flight: VecDeque::new(),
            max_uploads: config.max_uploads.max(1),
            waker: None,
            staged: Vec::new(),
            stats: WriteStats::default(),
        }
    }

    /// Calls `waker` whenever an upload finishes.
    pub fn set_waker(&mut self, waker: Waker) {
        self.waker = Some(waker);
    }

    /// The least epoch of the uploads still in flight.
    pub fn pending_epoch(&self) -> Option<Time> {
        self.in_flight.iter().map(|(_, s)| s.epoch).min()
    }

    /// The files stored since the last call.
    pub fn take_staged(&mut self) -> Vec<Staged> {
        std::mem::take(&mut self.staged)
    }

    fn store<C: Columns>(&mut self, table: &Table, key: (Time, i64), mut file: OpenFile<C>) -> Result<(), LakeError> {
        if !file.columns.is_empty() {
            file.rows += file.columns.len();
            file.write_batch()?;
        }
        if file.rows == 0 {
            return Ok(());
        }
        let mut spool = file.writer.into_inner()?;
        let size = spool.seek(SeekFrom::End(0))?;
        spool.rewind()?;
        let body = if size as usize <= PART_BYTES {
            let mut bytes = Vec::with_capacity(size as usize);
            spool.read_to_end(&mut bytes)?;
            Body::Bytes(Bytes::from(bytes))
        } else {
            Body::Spool(spool)
        };
        let (epoch, hour) = key;
        let (staged, path) = self.namer.next(table, hour, epoch);
        let staged = Staged { epoch, staged, path, rows: file.rows as u64, bytes: size, replace: false, hour };
        self.upload(table, staged, body)
    }

    /// Stores a new version of `table`'s file for `hour`, holding `rows`, published by the
    /// commit at `epoch` in place of the version before.
    pub fn store_version<C: Columns>(
        &mut self,
        table: &Table,
        hour: i64,
        epoch: Time,
        rows: &[C::Row],
    ) -> Result<(), LakeError> {
        let mut columns = C::new();
        let mut writer = ArrowWriter::try_new(Vec::new(), table.schema(), Some(properties()))?;
        for chunk in rows.chunks(64 * 1024) {
            chunk.iter().for_each(|row| columns.push(row));
            writer.write(&columns.finish()?)?;
        }
        let bytes = Bytes::from(writer.into_inner()?);
        let (staged, path) = self.namer.version(table, hour, epoch);
        let staged =
            Staged { epoch, staged, path, rows: rows.len() as u64, bytes: bytes.len() as u64, replace: true, hour };
        self.upload(table, staged, Body::Bytes(bytes))
    }

    /// The rows of `table`'s committed file for `hour` (none if there is none): where a
    /// restart continues a file republished whole.
    pub fn committed_version(&self, table: &Table, hour: i64) -> Result<Vec<RecordBatch>, LakeError> {
        let location = self.namer.lake.path(&version_path(table, hour));
        match self.runtime.block_on(super::read::read_file(&self.namer.lake, &location)) {
            Err(LakeError::Store(object_store::Error::NotFound { .. })) => Ok(Vec::new()),
            other => other,
        }
    }

    fn upload(&mut self, table: &Table, staged: Staged, body: Body) -> Result<(), LakeError> {
        self.stats.files += 1;
        self.stats.bytes += staged.bytes;
        *self.stats.rows.entry(table.name()).or_default() += staged.rows;
        while self.in_flight.len() >= self.max_uploads {
            self.wait_oldest()?;
        }
        let store: Arc<dyn ObjectStore> = Arc::clone(&self.namer.lake.store);
        let location = self.namer.lake.path(&staged.staged);
        let waker = self.waker.clone();
        let (done, upload) = oneshot::channel();
        self.runtime.spawn(async move {
            let result = match body {
                Body::Bytes(bytes) => store.put(&location, PutPayload::from_bytes(bytes)).await.map(|_| ()),
                Body::Spool(file) => stream_file(store, &location, file).await,
            };
            let _ = done.send(result);
            if let Some(wake) = waker {
                wake();
            }
        });
        self.in_flight.push_back((upload, staged));
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), LakeError> {
        if let Some((upload, staged)) = self.in_flight.pop_front() {
            self.runtime
                .block_on(upload)
                .map_err(|_| LakeError::Task("upload task ended without a result".into()))??;
            self.staged.push(staged);
        }
        Ok(())
    }

    /// Reaps finished uploads without waiting, surfacing the first failure. Uploads finish
    /// out of order; a finished one behind a slow one is reaped with it.
    pub fn reap(&mut self) -> Result<(), LakeError> {
        while let Some((upload, _)) = self.in_flight.front_mut() {
            match upload.try_recv() {
                Ok(result) => {
                    let done = self.in_flight.pop_front();
                    result?;
                    if let Some((_, staged)) = done {
                        self.staged.push(staged);
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(LakeError::Task("upload task ended without a result".into()));
                }
            }
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
    fn files_roll_by_size() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        let files_for = |bytes_per_file: usize| {
            let config = WriterConfig { bytes_per_file, batch_rows: 10, ..Default::default() };
            let mut out = FileSink::new(FileNamer::new(lake.clone(), 0, "test"), rt.handle().clone(), &config);
            let mut files: TableFiles<QuarantineColumns> =
                TableFiles::new(Table::Quarantine, config).expect("hive files");
            for i in 0..200 {
                files.push(60_000, 0, &row(i), &mut out).expect("push");
            }
            files.close_through(60_000, &mut out).expect("close");
            out.finish().expect("uploads");
            out.take_staged()
        };
        assert_eq!(files_for(usize::MAX).len(), 1);
        let small = files_for(1 << 10);
        assert!(small.len() >= 3, "a 1 KiB cap rolls files: {}", small.len());
        assert_eq!(small.iter().map(|f| f.rows).sum::<u64>(), 200);
    }

    #[test]
    fn a_file_larger_than_a_part_is_streamed_whole() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        let config = WriterConfig { batch_rows: 256, ..Default::default() };
        let mut out = FileSink::new(FileNamer::new(lake.clone(), 0, "test"), rt.handle().clone(), &config);
        let mut files: TableFiles<QuarantineColumns> = TableFiles::new(Table::Quarantine, config).expect("hive files");
        // Payloads that barely compress: ~15 MB of Parquet, streamed in two parts.
        let mut rng = fastrand::Rng::with_seed(1);
        for i in 0..2_000 {
            let payload: String = (0..10_000).map(|_| rng.alphanumeric()).collect();
            files.push(60_000, 0, &Quarantined { payload, ..row(i) }, &mut out).expect("push");
        }
        files.close_through(60_000, &mut out).expect("close");
        out.finish().expect("upload");
        let staged = out.take_staged();
        assert_eq!(staged.len(), 1);
        assert!(staged[0].bytes as usize > PART_BYTES, "{} bytes", staged[0].bytes);
        let stored = rt.block_on(lake.store.head(&lake.path(&staged[0].staged))).expect("stored");
        assert_eq!(stored.size, staged[0].bytes);
        rt.block_on(lake.store.rename(&lake.path(&staged[0].staged), &lake.path(&staged[0].path))).expect("move");
        let batches = rt.block_on(read_table(&lake, &Table::Quarantine)).expect("read");
        let mut offsets: Vec<i64> = positions(&batches).expect("positions").into_iter().map(|(_, o)| o).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..2_000).collect::<Vec<_>>());
    }

    #[test]
    fn scattered_hours_keep_few_files_open_and_lose_no_rows() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().to_string_lossy()).expect("lake");
        let config = WriterConfig { max_open_files: 2, batch_rows: 4, ..Default::default() };
        let mut out = FileSink::new(FileNamer::new(lake.clone(), 0, "test"), rt.handle().clone(), &config);
        let mut files: TableFiles<QuarantineColumns> = TableFiles::new(Table::Quarantine, config).expect("hive files");
        // Ten rows in each of five hours, interleaved: never more than two files open.
        for i in 0..50 {
            files.push(60_000, i % 5, &row(i), &mut out).expect("push");
            assert!(files.open.len() <= 2);
        }
        files.close_through(60_000, &mut out).expect("close");
        out.finish().expect("uploads");
        for file in out.take_staged() {
            rt.block_on(lake.store.rename(&lake.path(&file.staged), &lake.path(&file.path))).expect("move");
        }
        let batches = rt.block_on(read_table(&lake, &Table::Quarantine)).expect("read");
        let mut offsets: Vec<i64> = positions(&batches).expect("positions").into_iter().map(|(_, o)| o).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..50).collect::<Vec<_>>());
        let stored = rt.block_on(list_files(&lake, &Table::Quarantine)).expect("list").len() as u64;
        assert_eq!(stored, out.stats.files);
        assert!(stored > 5, "closing the smallest file made more, smaller files: {stored}");
    }
}
