//! The lake's tables as Iceberg schemas and partition specs, derived from their Arrow schemas.
//!
//! Iceberg timestamps are microseconds (`timestamptz`), so Iceberg data files store the time
//! columns as microseconds where Hive tables store milliseconds; every column carries its
//! Iceberg field id in the Parquet schema, which is how Athena, Spark and Trino match file
//! columns to table columns.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use iceberg::arrow::{arrow_schema_to_schema_auto_assign_ids, schema_to_arrow_schema};
use iceberg::spec::{Schema, Transform, UnboundPartitionSpec};

use crate::lake::Table;

/// `table`'s Iceberg schema, field ids assigned in column order.
pub fn iceberg_schema(table: &Table) -> iceberg::Result<Schema> {
    let fields: Vec<Field> = table.schema().fields().iter().map(micros).collect();
    arrow_schema_to_schema_auto_assign_ids(&ArrowSchema::new(fields))
}

/// The Arrow schema of `table`'s Iceberg data files: microsecond timestamps, field ids.
pub fn file_schema(table: &Table) -> Result<SchemaRef, ArrowError> {
    let schema = iceberg_schema(table).map_err(|e| ArrowError::SchemaError(e.to_string()))?;
    schema_to_arrow_schema(&schema).map(Arc::new).map_err(|e| ArrowError::SchemaError(e.to_string()))
}

/// A batch of the table's Arrow schema, cast to its Iceberg file schema.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// The field with its millisecond timestamps as microseconds.
fn micros(field: &Arc<Field>) -> Field {
    match field.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, tz) => {
            field.as_ref().clone().with_data_type(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
        }
        _ => field.as_ref().clone(),
    }
}

/// `hour(<time column>)`: one partition per hour, as the Hive layout's folders.
pub fn partition_spec(table: &Table, schema: &Schema) -> iceberg::Result<UnboundPartitionSpec> {
    let column = table.partition_column();
    let source = schema.field_by_name(column).ok_or_else(|| {
        iceberg::Error::new(iceberg::ErrorKind::DataInvalid, format!("no column {column} to partition by"))
    })?;
    Ok(UnboundPartitionSpec::builder()
        .add_partition_field(source.id, format!("{column}_hour"), Transform::Hour)?
        .build())
}

/// Properties every table is created with: what engines' compaction aims for.
pub fn table_properties() -> HashMap<String, String> {
    HashMap::from([
        ("write.format.default".to_owned(), "parquet".to_owned()),
        ("write.parquet.compression-codec".to_owned(), "zstd".to_owned()),
        // Athena's OPTIMIZE and the Glue compaction optimizer bin-pack towards this size.
        ("write.target-file-size-bytes".to_owned(), (512u64 << 20).to_string()),
    ])
}

/// Checks that `existing` has every column of `want` by the same id and type.
pub fn check_compatible(existing: &Schema, want: &Schema) -> Result<(), String> {
    for field in want.as_struct().fields() {
        let Some(have) = existing.field_by_name(&field.name) else {
            return Err(format!("no column {}", field.name));
        };
        if have.id != field.id || have.field_type != field.field_type || have.required != field.required {
            return Err(format!(
                "column {} is {} {}{}, this build writes {} {}{}",
                field.name,
                have.id,
                have.field_type,
                if have.required { " required" } else { "" },
                field.id,
                field.field_type,
                if field.required { " required" } else { "" },
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_schemas_carry_field_ids_and_microseconds() {
        for table in [Table::Trades, Table::Bars(60_000), Table::Quarantine] {
            let schema = file_schema(&table).expect("schema");
            assert_eq!(schema.fields().len(), table.schema().fields().len());
            for field in schema.fields() {
                assert!(field.metadata().contains_key(parquet::arrow::PARQUET_FIELD_ID_META_KEY), "{}", field.name());
                if let DataType::Timestamp(unit, tz) = field.data_type() {
                    assert_eq!(*unit, TimeUnit::Microsecond);
                    assert!(tz.is_some(), "{} is UTC-adjusted", field.name());
                }
            }
            let spec = partition_spec(&table, &iceberg_schema(&table).expect("schema")).expect("spec");
            assert_eq!(spec.fields().len(), 1);
        }
    }

    #[test]
    fn a_changed_column_is_incompatible() {
        let want = iceberg_schema(&Table::Trades).expect("schema");
        assert_eq!(check_compatible(&want, &want), Ok(()));
        let other = iceberg_schema(&Table::Quarantine).expect("schema");
        let err = check_compatible(&other, &want).expect_err("different columns");
        assert!(err.starts_with("no column symbol") || err.starts_with("column"), "{err}");
    }
}
