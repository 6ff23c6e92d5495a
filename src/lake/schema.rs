//! The lake's tables and their Arrow schemas, defined once: Parquet files, and later the Glue
//! and Athena definitions, all derive from these.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Time zone of every timestamp column: Parquet `isAdjustedToUTC = true`, which Athena reads
/// as `timestamp`. Milliseconds, never nanoseconds (Athena misreads INT64 nanos).
pub const UTC: &str = "UTC";

/// A table of the lake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Every valid trade, partitioned by event time.
    Trades,
    /// Bars of one window width (ms), partitioned by window start.
    Bars(u64),
    /// Rejected records, partitioned by Kafka timestamp.
    Quarantine,
    /// Intervals ingest received nothing for a symbol, partitioned by gap start.
    Gaps,
}

impl Table {
    /// Every table of a lake with bar widths `widths` (ms): trades, one per width,
    /// quarantine, gaps.
    pub fn all(widths: &[u64]) -> Vec<Table> {
        let mut tables = vec![Table::Trades];
        tables.extend(widths.iter().map(|w| Table::Bars(*w)));
        tables.push(Table::Quarantine);
        tables.push(Table::Gaps);
        tables
    }

    /// The table named `name` (`trades`, `bars_1m`, `quarantine`), the inverse of
    /// [`Table::name`]: a bar label must be the one the job writes (`bars_1m`, not `bars_60s`).
    pub fn from_name(name: &str) -> Option<Table> {
        match name {
            "trades" => Some(Table::Trades),
            "quarantine" => Some(Table::Quarantine),
            "gaps" => Some(Table::Gaps),
            _ => {
                let label = name.strip_prefix("bars_")?;
                let width = u64::try_from(humantime::parse_duration(label).ok()?.as_millis()).ok()?;
                (width > 0 && width_label(width) == label).then_some(Table::Bars(width))
            }
        }
    }

    /// Folder and table name: `trades`, `bars_1m`, `quarantine`, `gaps`.
    pub fn name(&self) -> String {
        match self {
            Table::Trades => "trades".into(),
            Table::Bars(width) => format!("bars_{}", width_label(*width)),
            Table::Quarantine => "quarantine".into(),
            Table::Gaps => "gaps".into(),
        }
    }

    /// The time column whose UTC hour partitions the table (`dt=`/`hour=` folders in the Hive
    /// layout, an `hour(...)` transform in Iceberg): the sink files each row by it.
    pub fn partition_column(&self) -> &'static str {
        match self {
            Table::Trades => "trade_ts",
            Table::Bars(_) => "window_start",
            Table::Quarantine => "kafka_ts",
            Table::Gaps => "gap_start",
        }
    }

    /// One line describing the table, for Glue and DDL comments.
    pub fn description(&self) -> &'static str {
        match self {
            Table::Trades => "Every valid trade, partitioned by event time (UTC).",
            Table::Bars(_) => {
                "OHLCV + VWAP bars, every revision, with the gap overlap of each; partitioned by window start (UTC)."
            }
            Table::Quarantine => "Records that failed cleaning, with the reason; partitioned by Kafka timestamp (UTC).",
            Table::Gaps => "Intervals ingest received nothing for a symbol; partitioned by gap start (UTC).",
        }
    }

    /// The Arrow schema of the table's Parquet files (partition columns `dt`, `hour` are in the
    /// folder names, not the files).
    pub fn schema(&self) -> SchemaRef {
        match self {
            Table::Trades => trades_schema(),
            Table::Bars(_) => bars_schema(),
            Table::Quarantine => quarantine_schema(),
            Table::Gaps => gaps_schema(),
        }
    }
}

/// `60000` → `1m`, `3600000` → `1h`, `5000` → `5s`: the width as it appears in table names.
pub fn width_label(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (unit, suffix) in UNITS {
        if ms >= unit && ms % unit == 0 {
            return format!("{}{suffix}", ms / unit);
        }
    }
    format!("{ms}ms")
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

/// The list element is named `element`, as the Parquet spec's three-level list layout has it.
pub fn conditions_type() -> DataType {
    DataType::List(Arc::new(Field::new("element", DataType::Utf8, true)))
}

/// `trades(symbol, price, volume, trade_ts, conditions, late, kafka_partition, kafka_offset, ingest_ts)`.
pub fn trades_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("volume", DataType::Float64, false),
        Field::new("trade_ts", timestamp(), false),
        Field::new("conditions", conditions_type(), true),
        Field::new("late", DataType::Boolean, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("ingest_ts", timestamp(), true),
    ]))
}

/// `bars_<w>(symbol, window_start, window_end, open, high, low, close, volume, vwap, trade_count, revision,
/// gap_ms)`.
pub fn bars_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("window_start", timestamp(), false),
        Field::new("window_end", timestamp(), false),
        Field::new("open", DataType::Float64, false),
        Field::new("high", DataType::Float64, false),
        Field::new("low", DataType::Float64, false),
        Field::new("close", DataType::Float64, false),
        Field::new("volume", DataType::Float64, false),
        Field::new("vwap", DataType::Float64, true),
        Field::new("trade_count", DataType::Int64, false),
        Field::new("revision", DataType::Int32, false),
        Field::new("gap_ms", DataType::Int64, false),
    ]))
}

/// `gaps(symbol, gap_start, gap_end, reason, ingest_host, beyond_horizon, kafka_partition, kafka_offset,
/// kafka_ts)`.
pub fn gaps_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("gap_start", timestamp(), false),
        Field::new("gap_end", timestamp(), false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("ingest_host", DataType::Utf8, false),
        Field::new("beyond_horizon", DataType::Boolean, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("kafka_ts", timestamp(), true),
    ]))
}

/// `quarantine(reason, payload, kafka_partition, kafka_offset, kafka_ts)`.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("kafka_ts", timestamp(), true),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_the_lake_layout() {
        assert_eq!(Table::Trades.name(), "trades");
        assert_eq!(Table::Bars(60_000).name(), "bars_1m");
        assert_eq!(Table::Bars(300_000).name(), "bars_5m");
        assert_eq!(Table::Bars(3_600_000).name(), "bars_1h");
        assert_eq!(Table::Bars(1_500).name(), "bars_1500ms");
        assert_eq!(Table::Quarantine.name(), "quarantine");
        for table in Table::all(&[1_500, 60_000, 3_600_000]) {
            assert_eq!(Table::from_name(&table.name()), Some(table));
        }
        for other in ["bars_60s", "bars_", "bars_0s", "_stockflow", "trade"] {
            assert_eq!(Table::from_name(other), None, "{other}");
        }
    }

    #[test]
    fn columns_are_lowercase_and_timestamps_are_millis_utc() {
        for table in [Table::Trades, Table::Bars(60_000), Table::Quarantine] {
            for field in table.schema().fields() {
                assert_eq!(field.name(), &field.name().to_lowercase());
                if let DataType::Timestamp(unit, tz) = field.data_type() {
                    assert_eq!(*unit, TimeUnit::Millisecond, "{}", field.name());
                    assert_eq!(tz.as_deref(), Some(UTC));
                }
            }
        }
    }
}
