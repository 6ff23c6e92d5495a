//! Rows to Arrow columns: one builder set per table, filled from the dataflow's batches and
//! cut into `RecordBatch`es for the Parquet writer.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use dataflows::{Bar, Gap, Quarantined, Trade};

use super::schema::{UTC, bars_schema, gaps_schema, quarantine_schema, trades_schema};

/// Column builders for one table.
pub trait Columns: Send {
    /// The row type.
    type Row;
    /// A new, empty builder set.
    fn new() -> Self;
    /// Appends one row.
    fn push(&mut self, row: &Self::Row);
    /// Rows appended since the last `finish`.
    fn len(&self) -> usize;
    /// Whether no rows were appended since the last `finish`.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Takes the rows so far as a batch, leaving the builders empty (and their buffers reusable).
    fn finish(&mut self) -> Result<RecordBatch, ArrowError>;
}

fn ts_builder() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone(UTC)
}

/// Builders for `trades`.
pub struct TradeColumns {
    schema: SchemaRef,
    symbol: StringBuilder,
    price: Float64Builder,
    volume: Float64Builder,
    trade_ts: TimestampMillisecondBuilder,
    conditions: ListBuilder<StringBuilder>,
    late: BooleanBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    ingest_ts: TimestampMillisecondBuilder,
}

impl Columns for TradeColumns {
    type Row = Trade;

    fn new() -> Self {
        let schema = trades_schema();
        let element = match schema.field_with_name("conditions").map(|f| f.data_type()) {
            Ok(DataType::List(element)) => Arc::clone(element),
            _ => unreachable!("trades.conditions is declared as a list"),
        };
        TradeColumns {
            schema,
            symbol: StringBuilder::new(),
            price: Float64Builder::new(),
            volume: Float64Builder::new(),
            trade_ts: ts_builder(),
            conditions: ListBuilder::new(StringBuilder::new()).with_field(element),
            late: BooleanBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            ingest_ts: ts_builder(),
        }
    }

    fn push(&mut self, t: &Trade) {
        self.symbol.append_value(&t.symbol);
        self.price.append_value(t.price);
        self.volume.append_value(t.volume);
        self.trade_ts.append_value(t.ts);
        match &t.conditions {
            Some(list) => {
                for c in list {
                    self.conditions.values().append_value(c);
                }
                self.conditions.append(true);
            }
            None => self.conditions.append(false),
        }
        self.late.append_value(t.late);
        self.partition.append_value(t.partition);
        self.offset.append_value(t.offset);
        self.ingest_ts.append_option(t.ingest_ts);
    }

    fn len(&self) -> usize {
        self.symbol.len()
    }

    fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.symbol.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.volume.finish()),
            Arc::new(self.trade_ts.finish()),
            Arc::new(self.conditions.finish()),
            Arc::new(self.late.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.ingest_ts.finish()),
        ];
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }
}

/// Builders for `bars_<w>`.
pub struct BarColumns {
    schema: SchemaRef,
    symbol: StringBuilder,
    window_start: TimestampMillisecondBuilder,
    window_end: TimestampMillisecondBuilder,
    open: Float64Builder,
    high: Float64Builder,
    low: Float64Builder,
    close: Float64Builder,
    volume: Float64Builder,
    vwap: Float64Builder,
    trade_count: Int64Builder,
    revision: Int32Builder,
    gap_ms: Int64Builder,
}

impl Columns for BarColumns {
    type Row = Bar;

    fn new() -> Self {
        BarColumns {
            schema: bars_schema(),
            symbol: StringBuilder::new(),
            window_start: ts_builder(),
            window_end: ts_builder(),
            open: Float64Builder::new(),
            high: Float64Builder::new(),
            low: Float64Builder::new(),
            close: Float64Builder::new(),
            volume: Float64Builder::new(),
            vwap: Float64Builder::new(),
            trade_count: Int64Builder::new(),
            revision: Int32Builder::new(),
            gap_ms: Int64Builder::new(),
        }
    }

    fn push(&mut self, b: &Bar) {
        self.symbol.append_value(&b.symbol);
        self.window_start.append_value(b.window_start);
        self.window_end.append_value(b.window_end);
        self.open.append_value(b.open);
        self.high.append_value(b.high);
        self.low.append_value(b.low);
        self.close.append_value(b.close);
        self.volume.append_value(b.volume);
        self.vwap.append_option(b.vwap);
        self.trade_count.append_value(b.trade_count.min(i64::MAX as u64) as i64);
        self.revision.append_value(b.revision.min(i32::MAX as u32) as i32);
        self.gap_ms.append_value(b.gap_ms.min(i64::MAX as u64) as i64);
    }

    fn len(&self) -> usize {
        self.symbol.len()
    }

    fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.symbol.finish()),
            Arc::new(self.window_start.finish()),
            Arc::new(self.window_end.finish()),
            Arc::new(self.open.finish()),
            Arc::new(self.high.finish()),
            Arc::new(self.low.finish()),
            Arc::new(self.close.finish()),
            Arc::new(self.volume.finish()),
            Arc::new(self.vwap.finish()),
            Arc::new(self.trade_count.finish()),
            Arc::new(self.revision.finish()),
            Arc::new(self.gap_ms.finish()),
        ];
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }
}

/// Builders for `quarantine`.
pub struct QuarantineColumns {
    schema: SchemaRef,
    reason: StringBuilder,
    payload: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    kafka_ts: TimestampMillisecondBuilder,
}

impl Columns for QuarantineColumns {
    type Row = Quarantined;

    fn new() -> Self {
        QuarantineColumns {
            schema: quarantine_schema(),
            reason: StringBuilder::new(),
            payload: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            kafka_ts: ts_builder(),
        }
    }

    fn push(&mut self, q: &Quarantined) {
        self.reason.append_value(q.reason.as_str());
        self.payload.append_value(&q.payload);
        self.partition.append_value(q.partition);
        self.offset.append_value(q.offset);
        self.kafka_ts.append_option(q.kafka_ts);
    }

    fn len(&self) -> usize {
        self.reason.len()
    }

    fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.reason.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.kafka_ts.finish()),
        ];
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }
}

/// Builders for `gaps`.
pub struct GapColumns {
    schema: SchemaRef,
    symbol: StringBuilder,
    gap_start: TimestampMillisecondBuilder,
    gap_end: TimestampMillisecondBuilder,
    reason: StringBuilder,
    host: StringBuilder,
    beyond_horizon: BooleanBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    kafka_ts: TimestampMillisecondBuilder,
}

impl Columns for GapColumns {
    type Row = Gap;

    fn new() -> Self {
        GapColumns {
            schema: gaps_schema(),
            symbol: StringBuilder::new(),
            gap_start: ts_builder(),
            gap_end: ts_builder(),
            reason: StringBuilder::new(),
            host: StringBuilder::new(),
            beyond_horizon: BooleanBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            kafka_ts: ts_builder(),
        }
    }

    fn push(&mut self, g: &Gap) {
        self.symbol.append_value(&g.body.s);
        self.gap_start.append_value(g.body.from);
        self.gap_end.append_value(g.body.to);
        self.reason.append_value(&g.body.reason);
        self.host.append_value(&g.body.host);
        self.beyond_horizon.append_value(g.beyond_horizon);
        self.partition.append_value(g.partition);
        self.offset.append_value(g.offset);
        self.kafka_ts.append_option(g.kafka_ts);
    }

    fn len(&self) -> usize {
        self.symbol.len()
    }

    fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.symbol.finish()),
            Arc::new(self.gap_start.finish()),
            Arc::new(self.gap_end.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.host.finish()),
            Arc::new(self.beyond_horizon.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.kafka_ts.finish()),
        ];
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }
}
