//! Glue `CreateDatabase` / `CreateTable` inputs (`aws glue create-table --cli-input-json`).

use serde_json::{Map, Value, json};

use super::{CatalogConfig, PARTITION_KEYS, hive_type, projection};
use crate::lake::Table;

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// `glue/database.json`.
pub fn database(cfg: &CatalogConfig) -> String {
    pretty(&json!({
        "DatabaseInput": {
            "Name": cfg.database,
            "Description": "stockflow: Finnhub trades, bars and quarantine, exactly once from Kafka",
        }
    }))
}

/// `glue/<table>.json`: an external Parquet table with projected `dt`/`hour` partitions.
pub fn table(cfg: &CatalogConfig, table: &Table) -> String {
    let columns: Vec<Value> =
        table.schema().fields().iter().map(|f| json!({ "Name": f.name(), "Type": hive_type(f.data_type()) })).collect();
    let keys: Vec<Value> = PARTITION_KEYS.iter().map(|(name, ty)| json!({ "Name": name, "Type": ty })).collect();
    let mut parameters = Map::new();
    parameters.insert("classification".into(), "parquet".into());
    parameters.insert("EXTERNAL".into(), "TRUE".into());
    parameters.insert("parquet.compression".into(), "ZSTD".into());
    for (k, v) in projection(cfg, table) {
        parameters.insert(k, v.into());
    }
    pretty(&json!({
        "DatabaseName": cfg.database,
        "TableInput": {
            "Name": table.name(),
            "Description": table.description(),
            "TableType": "EXTERNAL_TABLE",
            "Parameters": parameters,
            "PartitionKeys": keys,
            "StorageDescriptor": {
                "Columns": columns,
                "Location": cfg.table_location(table),
                "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
                "SerdeInfo": {
                    "SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                    "Parameters": { "serialization.format": "1" }
                }
            }
        }
    }))
}
