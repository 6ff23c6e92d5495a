//! `stockflow sql`: the lake's tables and the catalog's views in DataFusion, so every query of
//! `athena/` can be tried on a local (or S3) lake before it runs in Athena.
//!
//! Tables are registered under their Athena names with the `dt`/`hour` partition columns the
//! Glue definitions declare; the views are created from the same text `stockflow catalog`
//! writes. Athena's dialect is translated only where DataFusion reads it differently.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::prelude::SessionContext;

use crate::catalog::library;
use crate::commit::CommitError;
use crate::iceberg::IcebergCatalog;
use crate::lake::{Lake, LakeError, LakeOptions, Table};

/// Errors of `stockflow sql`.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The lake could not be opened or listed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// Planning or running the query failed.
    #[error("{0}")]
    Query(String),
    /// The commit log or the Iceberg catalog could not be read.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        // DataFusion nests context; its first line says what went wrong.
        SqlError::Query(e.to_string().lines().next().unwrap_or_default().to_owned())
    }
}

/// A DataFusion session over one lake.
pub struct SqlEngine {
    ctx: SessionContext,
    /// The bar widths found in the lake (one `bars_<w>` table and view each).
    pub bar_widths: Vec<u64>,
}

impl SqlEngine {
    /// Opens `location` and registers its tables and views; an Iceberg lake's tables are the
    /// data files of their current snapshots in `catalog` (or the lake's default catalog).
    pub async fn open(
        location: &str,
        options: &LakeOptions,
        catalog: Option<IcebergCatalog>,
    ) -> Result<Self, SqlError> {
        let local = match location.split_once("://") {
            None => Some(location),
            Some(("file", path)) => Some(path),
            Some(_) => None,
        };
        if let Some(path) = local.filter(|p| !Path::new(p).is_dir()) {
            // Opening a lake for writing creates its folder; a query must not.
            return Err(SqlError::Query(format!("no lake at {path}")));
        }
        let lake = Lake::open_with(location, options)?;
        lake.check_access().await?;
        let ctx = SessionContext::new();
        let base = match location.split_once("://") {
            Some(("s3", rest)) => {
                let bucket = rest.split('/').next().unwrap_or_default();
                let url = url::Url::parse(&format!("s3://{bucket}"))
                    .map_err(|e| SqlError::Query(format!("lake location {location}: {e}")))?;
                ctx.register_object_store(&url, Arc::clone(&lake.store));
                format!("s3://{bucket}/{}", lake.prefix)
            }
            Some(("file", path)) => local_url(path)?,
            Some(_) => return Err(LakeError::Unsupported(location.to_owned()).into()),
            None => local_url(location)?,
        };
        let bar_widths = bar_widths(&lake).await?;
        let iceberg = crate::iceberg::tables_of(&lake, catalog).await?;
        for table in Table::all(&bar_widths) {
            let provider: Arc<dyn TableProvider> = match &iceberg {
                None => {
                    let url = ListingTableUrl::parse(format!("{}/{}/", base.trim_end_matches('/'), table.name()))?;
                    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                        .with_file_extension(".parquet")
                        .with_table_partition_cols(vec![
                            ("dt".into(), DataType::Utf8),
                            ("hour".into(), DataType::Utf8),
                        ]);
                    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(table.schema());
                    Arc::new(ListingTable::try_new(config)?)
                }
                Some(tables) => {
                    // Exactly the snapshot's files (a folder may also hold files an engine's
                    // compaction replaced), read with the lake's millisecond columns.
                    let files = tables.data_files(&table).await.map_err(LakeError::from)?;
                    if files.is_empty() {
                        Arc::new(MemTable::try_new(table.schema(), vec![vec![]])?)
                    } else {
                        let urls = files.iter().map(ListingTableUrl::parse).collect::<Result<Vec<_>, _>>()?;
                        let options = ListingOptions::new(Arc::new(ParquetFormat::default()));
                        let config = ListingTableConfig::new_with_multi_paths(urls)
                            .with_listing_options(options)
                            .with_schema(table.schema());
                        Arc::new(ListingTable::try_new(config)?)
                    }
                }
            };
            ctx.register_table(table.name(), provider)?;
        }
        let engine = SqlEngine { ctx, bar_widths };
        for view in library::views(&engine.bar_widths) {
            engine.query(&view.sql).await?;
        }
        Ok(engine)
    }

    /// Runs one statement (Athena dialect) and collects its rows.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        let sql = translate(sql);
        let frame = self.ctx.sql(&sql).await?;
        Ok(frame.collect().await?)
    }
}

/// `file://` URL of a local lake folder.
fn local_url(path: &str) -> Result<String, SqlError> {
    let folder = PathBuf::from(path);
    let folder =
        folder.canonicalize().map_err(|source| SqlError::Lake(LakeError::Folder { path: folder.clone(), source }))?;
    Ok(format!("file://{}", folder.display()))
}

/// The widths of the `bars_<w>` tables present in the lake, ascending.
async fn bar_widths(lake: &Lake) -> Result<Vec<u64>, SqlError> {
    let listing = lake.store.list_with_delimiter(Some(&lake.prefix)).await.map_err(LakeError::from)?;
    let mut widths: Vec<u64> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| match Table::from_name(p.filename()?) {
            Some(Table::Bars(width)) => Some(width),
            _ => None,
        })
        .collect();
    widths.sort_unstable();
    if widths.is_empty() {
        widths.push(60_000); // an empty lake still has the default table
    }
    Ok(widths)
}

/// Rewrites the few constructs of Athena's dialect DataFusion reads differently:
///
/// - `FROM t CROSS JOIN UNNEST(col) AS a (x)` (Trino's lateral unnest, one row per element)
///   becomes `FROM (SELECT *, unnest(col) AS x FROM t) a`; DataFusion cannot plan the lateral
///   reference, but unnests in a projection the same way (rows with no elements vanish in both).
pub fn translate(sql: &str) -> String {
    static UNNEST: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)\bFROM\s+(\w+)\s+CROSS\s+JOIN\s+UNNEST\s*\(\s*(\w+)\s*\)\s+AS\s+(\w+)\s*\(\s*(\w+)\s*\)",
        )
        .expect("valid pattern")
    });
    UNNEST.replace_all(sql, "FROM (SELECT *, unnest($2) AS $4 FROM $1) $3").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn athena_unnest_becomes_a_projection() {
        let athena =
            "SELECT condition, count(*) FROM trades\nCROSS JOIN UNNEST(conditions) AS t (condition) GROUP BY 1";
        assert_eq!(
            translate(athena),
            "SELECT condition, count(*) FROM (SELECT *, unnest(conditions) AS condition FROM trades) t GROUP BY 1"
        );
        let plain = "SELECT * FROM bars_1m_latest";
        assert_eq!(translate(plain), plain);
    }
}
