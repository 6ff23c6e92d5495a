//! Reading tables back from the lake: used by the demo's summary and checks, and by tests.

use arrow::array::{
    Array, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use bytes::Bytes;
use dataflows::gap::GapBody;
use dataflows::{Bar, Gap};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Lake, LakeError, Table};
use crate::iceberg::IcebergTables;

/// Every row of `table`: its current Iceberg snapshot when the lake's tables are Iceberg
/// tables (`iceberg`), else every file in its folder.
pub async fn rows(lake: &Lake, table: &Table, iceberg: Option<&IcebergTables>) -> Result<Vec<RecordBatch>, LakeError> {
    match iceberg {
        Some(tables) => Ok(tables.scan(table).await?),
        None => read_table(lake, table).await,
    }
}

/// Every Parquet file of `table`, sorted by path.
pub async fn list_files(lake: &Lake, table: &Table) -> Result<Vec<ObjectMeta>, LakeError> {
    let prefix = lake.table_path(table);
    let mut files: Vec<ObjectMeta> = lake
        .store
        .list(Some(&prefix))
        .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".parquet")))
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

/// Every row of `table` as record batches.
pub async fn read_table(lake: &Lake, table: &Table) -> Result<Vec<RecordBatch>, LakeError> {
    let mut batches = Vec::new();
    for file in list_files(lake, table).await? {
        batches.extend(read_file(lake, &file.location).await?);
    }
    Ok(batches)
}

/// Every row of the Parquet file at `location` as record batches.
pub async fn read_file(lake: &Lake, location: &Path) -> Result<Vec<RecordBatch>, LakeError> {
    let bytes: Bytes = lake.store.get(location).await?.bytes().await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.with_batch_size(64 * 1024).build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Column `name` of `batch` as the Arrow array type `T`.
pub fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, LakeError> {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).ok_or_else(|| {
        LakeError::Arrow(arrow::error::ArrowError::SchemaError(format!("column {name} missing or mistyped")))
    })
}

/// `(kafka_partition, kafka_offset)` of every row of `trades` or `quarantine`.
pub fn positions(batches: &[RecordBatch]) -> Result<Vec<(i32, i64)>, LakeError> {
    let mut out = Vec::new();
    for batch in batches {
        let p: &Int32Array = column(batch, "kafka_partition")?;
        let o: &Int64Array = column(batch, "kafka_offset")?;
        out.extend(p.values().iter().copied().zip(o.values().iter().copied()));
    }
    Ok(out)
}

/// The `late` column of `trades`, as a count of late rows.
pub fn late_count(batches: &[RecordBatch]) -> Result<u64, LakeError> {
    let mut late = 0;
    for batch in batches {
        let l: &BooleanArray = column(batch, "late")?;
        late += l.true_count() as u64;
    }
    Ok(late)
}

/// The `reason` column of `quarantine`.
pub fn reasons(batches: &[RecordBatch]) -> Result<Vec<String>, LakeError> {
    let mut out = Vec::new();
    for batch in batches {
        let r: &StringArray = column(batch, "reason")?;
        out.extend(r.iter().map(|s| s.unwrap_or_default().to_owned()));
    }
    Ok(out)
}

/// Rows of a `bars_<w>` table.
pub fn bars(batches: &[RecordBatch]) -> Result<Vec<Bar>, LakeError> {
    let mut out = Vec::new();
    for batch in batches {
        let symbol: &StringArray = column(batch, "symbol")?;
        let start = column::<TimestampMillisecondArray>(batch, "window_start")?;
        let end = column::<TimestampMillisecondArray>(batch, "window_end")?;
        let f = |name| column::<Float64Array>(batch, name);
        let (open, high, low, close, volume, vwap) =
            (f("open")?, f("high")?, f("low")?, f("close")?, f("volume")?, f("vwap")?);
        let count: &Int64Array = column(batch, "trade_count")?;
        let revision: &Int32Array = column(batch, "revision")?;
        let gap_ms: &Int64Array = column(batch, "gap_ms")?;
        for i in 0..batch.num_rows() {
            out.push(Bar {
                symbol: symbol.value(i).into(),
                window_start: start.value(i),
                window_end: end.value(i),
                open: open.value(i),
                high: high.value(i),
                low: low.value(i),
                close: close.value(i),
                volume: volume.value(i),
                vwap: vwap.is_valid(i).then(|| vwap.value(i)),
                trade_count: count.value(i) as u64,
                revision: revision.value(i) as u32,
                gap_ms: gap_ms.value(i).max(0) as u64,
            });
        }
    }
    Ok(out)
}

/// The latest revision of every bar of one table, as the `bars_<w>_latest` view picks it,
/// in (symbol, window start) order. A table whose revisions of a bar are not written once each
/// and dense (0, 1, 2, …) breaks the lake's contract and is an error.
pub fn latest(rows: Vec<Bar>) -> Result<Vec<Bar>, LakeError> {
    let mut bars: std::collections::BTreeMap<(String, i64), Vec<Bar>> = std::collections::BTreeMap::new();
    for bar in rows {
        bars.entry((bar.symbol.to_string(), bar.window_start)).or_default().push(bar);
    }
    let mut out = Vec::with_capacity(bars.len());
    for ((symbol, start), mut revisions) in bars {
        revisions.sort_by_key(|b| b.revision);
        if !revisions.iter().map(|b| b.revision).eq(0..revisions.len() as u32) {
            let written: Vec<u32> = revisions.iter().map(|b| b.revision).collect();
            return Err(LakeError::Revisions(format!("bar {symbol} at {start}: revisions {written:?} written")));
        }
        out.extend(revisions.pop());
    }
    Ok(out)
}

/// Rows of `gaps`.
pub fn gaps(batches: &[RecordBatch]) -> Result<Vec<Gap>, LakeError> {
    let mut out = Vec::new();
    for batch in batches {
        let symbol: &StringArray = column(batch, "symbol")?;
        let start = column::<TimestampMillisecondArray>(batch, "gap_start")?;
        let end = column::<TimestampMillisecondArray>(batch, "gap_end")?;
        let (reason, host) = (column::<StringArray>(batch, "reason")?, column::<StringArray>(batch, "ingest_host")?);
        let beyond: &BooleanArray = column(batch, "beyond_horizon")?;
        let p: &Int32Array = column(batch, "kafka_partition")?;
        let o: &Int64Array = column(batch, "kafka_offset")?;
        let ts = column::<TimestampMillisecondArray>(batch, "kafka_ts")?;
        for i in 0..batch.num_rows() {
            let body = GapBody {
                s: symbol.value(i).into(),
                from: start.value(i),
                to: end.value(i),
                reason: reason.value(i).to_owned(),
                host: host.value(i).to_owned(),
            };
            out.push(Gap {
                body,
                partition: p.value(i),
                offset: o.value(i),
                kafka_ts: ts.is_valid(i).then(|| ts.value(i)),
                beyond_horizon: beyond.value(i),
            });
        }
    }
    Ok(out)
}
