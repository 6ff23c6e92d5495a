//! The catalog: Glue table inputs, Athena DDL, views and queries, generated from the lake's
//! Arrow schemas so the definitions can never drift from the files.
//!
//! `stockflow catalog` writes them under `glue/` and `athena/`; the checked-in copies are
//! exactly what it generates for the example location (a test regenerates and compares).
//!
//! Iceberg tables (`--table-format iceberg`) are not declared by DDL: the job creates them in
//! its catalog (or `stockflow catalog --create-in` does, ahead of the first run), because
//! Athena's Iceberg DDL can declare only timestamps without a time zone and the lake's time
//! columns are UTC instants (`timestamptz`). For them the catalog is the Glue database, the
//! views and the queries, which read both formats alike.

mod athena;
mod glue;
pub mod library;

use std::path::{Path, PathBuf};

use arrow::datatypes::DataType;

use crate::lake::{Table, TableFormat};

/// The example location the checked-in files are generated for.
pub const EXAMPLE_LOCATION: &str = "s3://example-bucket/stockflow";

/// What to generate.
#[derive(Clone, Debug)]
pub struct CatalogConfig {
    /// Glue/Athena database.
    pub database: String,
    /// The lake, `s3://bucket/prefix`.
    pub location: String,
    /// Bar widths in ms (one table each); the first is the one the query library uses.
    pub bar_widths: Vec<u64>,
    /// First day partition projection enumerates, `YYYY-MM-DD`.
    pub projection_start: String,
    /// The lake's table format: Hive tables get Glue inputs and Athena DDL, Iceberg tables
    /// are created through their catalog.
    pub format: TableFormat,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            database: "stockflow".into(),
            location: EXAMPLE_LOCATION.into(),
            bar_widths: vec![60_000],
            projection_start: "2000-01-01".into(),
            format: TableFormat::Hive,
        }
    }
}

impl CatalogConfig {
    /// Every table of the lake, in catalog order.
    pub fn tables(&self) -> Vec<Table> {
        Table::all(&self.bar_widths)
    }

    /// `s3://bucket/prefix/<table>/`.
    pub fn table_location(&self, table: &Table) -> String {
        format!("{}/{}/", self.location.trim_end_matches('/'), table.name())
    }
}

/// One generated file: its path under the output folder and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogFile {
    /// Relative path, e.g. `glue/trades.json`.
    pub path: PathBuf,
    /// Contents.
    pub text: String,
}

/// Errors of the catalog command.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Bad options.
    #[error("{0}")]
    Config(String),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Every file of the catalog.
pub fn generate(cfg: &CatalogConfig) -> Result<Vec<CatalogFile>, CatalogError> {
    if !cfg.location.starts_with("s3://") {
        return Err(CatalogError::Config(format!("--location must be s3://bucket/prefix, got '{}'", cfg.location)));
    }
    if chrono::NaiveDate::parse_from_str(&cfg.projection_start, "%Y-%m-%d").is_err() {
        return Err(CatalogError::Config(format!(
            "--projection-start must be YYYY-MM-DD, got '{}'",
            cfg.projection_start
        )));
    }
    if cfg.format == TableFormat::Iceberg && cfg.database != crate::iceberg::NAMESPACE {
        return Err(CatalogError::Config(format!(
            "Iceberg tables live in the database {}, not '{}'",
            crate::iceberg::NAMESPACE,
            cfg.database
        )));
    }
    let file = |path: String, text: String| CatalogFile { path: PathBuf::from(path), text };
    let mut files = vec![file("glue/database.json".into(), glue::database(cfg))];
    for table in cfg.tables().into_iter().filter(|_| cfg.format == TableFormat::Hive) {
        files.push(file(format!("glue/{}.json", table.name()), glue::table(cfg, &table)));
        files.push(file(format!("athena/ddl/{}.sql", table.name()), athena::create_table(cfg, &table)));
    }
    for view in library::views(&cfg.bar_widths) {
        files.push(file(format!("athena/views/{}.sql", view.name), view.sql));
    }
    for query in library::queries(&cfg.bar_widths) {
        files.push(file(format!("athena/queries/{}.sql", query.name), query.sql));
    }
    Ok(files)
}

/// Writes generated `files` under `out`, returning their paths.
pub fn write(files: &[CatalogFile], out: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let mut written = Vec::new();
    for f in files {
        let path = out.join(&f.path);
        let io = |source| CatalogError::Write { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&path, &f.text).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}

/// The Hive/Glue type of an Arrow column type (what Athena reads the Parquet column as).
pub fn hive_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 => "string".into(),
        DataType::Float64 => "double".into(),
        DataType::Float32 => "float".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Int32 => "int".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        DataType::List(field) => format!("array<{}>", hive_type(field.data_type())),
        other => unreachable!("no lake column has type {other}"),
    }
}

/// Partition columns, from the lake's folder names: `dt=YYYY-MM-DD/hour=HH`.
pub const PARTITION_KEYS: [(&str, &str); 2] = [("dt", "string"), ("hour", "string")];

/// Partition projection parameters: the folder names are computed, never crawled.
pub fn projection(cfg: &CatalogConfig, table: &Table) -> Vec<(String, String)> {
    let template = format!("{}dt=${{dt}}/hour=${{hour}}", cfg.table_location(table));
    [
        ("projection.enabled", "true".to_owned()),
        ("projection.dt.type", "date".to_owned()),
        ("projection.dt.format", "yyyy-MM-dd".to_owned()),
        ("projection.dt.range", format!("{},NOW+1DAYS", cfg.projection_start)),
        ("projection.dt.interval", "1".to_owned()),
        ("projection.dt.interval.unit", "DAYS".to_owned()),
        ("projection.hour.type", "integer".to_owned()),
        ("projection.hour.range", "0,23".to_owned()),
        ("projection.hour.digits", "2".to_owned()),
        ("storage.location.template", template),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
