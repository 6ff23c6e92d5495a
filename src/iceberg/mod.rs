//! Iceberg tables (`--table-format iceberg`): the lake's tables in a catalog, one snapshot per
//! table and commit point, appended idempotently after the commit record is stored.
//!
//! The commit record under `_stockflow/commits` stays the source of truth for Kafka positions.
//! After a record is stored and its files are in place, each table it names gets one
//! fast-append snapshot holding that table's files; the snapshot summary carries the record's
//! sequence number, commit point and generation, and the same transaction sets the table
//! property `stockflow.commit-seq`, which survives snapshot expiry and compaction. A table
//! whose property already holds the record's sequence number is skipped, so recovery can
//! append whatever a crash between two tables' snapshots left out, and never appends twice.

pub mod schema;
pub mod storage;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Once};

use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Literal, Struct};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_glue::{GLUE_CATALOG_PROP_URI, GLUE_CATALOG_PROP_WAREHOUSE, GlueCatalogBuilder};
use iceberg_catalog_sql::{SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle, SqlCatalogBuilder};

use arrow::array::RecordBatch;
use futures::TryStreamExt;

use crate::commit::{CommitError, CommitRecord};
use crate::lake::{Lake, Table, TableFormat};

/// Table property holding the sequence number of the newest commit record appended.
pub const SEQ_PROPERTY: &str = "stockflow.commit-seq";
/// Snapshot summary property: the commit point of the record a snapshot appends.
pub const POINT_PROPERTY: &str = "stockflow.commit-point";
/// Snapshot summary property: the generation (run) that wrote the record.
pub const GENERATION_PROPERTY: &str = "stockflow.generation";
/// The namespace (Athena/Glue database) the tables live in.
pub const NAMESPACE: &str = "stockflow";

/// The catalog that holds the tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IcebergCatalog {
    /// An SQL catalog in a SQLite file (`sqlite:PATH`).
    Sqlite(PathBuf),
    /// The AWS Glue Data Catalog of the account and region the environment names, with
    /// credentials found as the S3 client finds them (`glue`); `glue:URL` sends its requests
    /// to another endpoint (a Glue-compatible test server).
    Glue {
        /// Glue's endpoint, when not AWS's own.
        endpoint: Option<String>,
    },
}

impl IcebergCatalog {
    /// Parses `sqlite:PATH`, `glue` or `glue:URL`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "glue" => Ok(IcebergCatalog::Glue { endpoint: None }),
            Some(("glue", url)) if url.starts_with("http://") || url.starts_with("https://") => {
                Ok(IcebergCatalog::Glue { endpoint: Some(url.to_owned()) })
            }
            Some(("sqlite", path)) if !path.is_empty() => Ok(IcebergCatalog::Sqlite(PathBuf::from(path))),
            _ => Err(format!("unknown catalog {text:?}: expected sqlite:PATH, glue or glue:http(s)://ENDPOINT")),
        }
    }

    /// The catalog of the lake at `location`: `given`, or for a local lake a SQLite file
    /// beside its bookkeeping (`<lake>/_stockflow/catalog.sqlite`). An S3 lake needs one named:
    /// a SQLite file in a bucket cannot be shared or locked.
    pub fn resolve(given: Option<IcebergCatalog>, location: &str) -> Result<Self, String> {
        if let Some(catalog) = given {
            return Ok(catalog);
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(format!(
                "--table-format iceberg with lake {location} needs --catalog (e.g. sqlite:/var/lib/stockflow/catalog.sqlite)"
            ));
        }
        let folder = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        Ok(IcebergCatalog::Sqlite(folder.join("_stockflow/catalog.sqlite")))
    }
}

impl IcebergCatalog {
    /// Whether the catalog may be there to be read (opening a SQLite catalog creates it; a
    /// Glue catalog is asked when connected).
    pub fn exists(&self) -> bool {
        match self {
            IcebergCatalog::Sqlite(path) => path.is_file(),
            IcebergCatalog::Glue { .. } => true,
        }
    }
}

impl std::fmt::Display for IcebergCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IcebergCatalog::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            IcebergCatalog::Glue { endpoint: None } => write!(f, "glue"),
            IcebergCatalog::Glue { endpoint: Some(url) } => write!(f, "glue:{url}"),
        }
    }
}

/// What can go wrong with the Iceberg tables.
#[derive(Debug, thiserror::Error)]
pub enum IcebergError {
    /// The catalog could not be opened.
    #[error("catalog {catalog}: {reason}")]
    Catalog {
        /// The catalog as configured.
        catalog: String,
        /// Why.
        reason: String,
    },
    /// A table exists with columns this build does not write.
    #[error("iceberg table {table} has an incompatible schema: {reason}; use a new namespace or lake")]
    Incompatible {
        /// The table.
        table: String,
        /// The first difference found.
        reason: String,
    },
    /// A table of the catalog belongs to another lake, or holds commits this lake has not
    /// made (the lake was deleted and started again while the catalog kept its tables).
    #[error("iceberg table {table} {reason}; drop the table or use another catalog")]
    Foreign {
        /// The table.
        table: String,
        /// What does not match.
        reason: String,
    },
    /// A catalog or table operation failed.
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
}

/// The lake's tables in an Iceberg catalog.
pub struct IcebergTables {
    catalog: Arc<dyn Catalog>,
    namespace: NamespaceIdent,
    /// The lake's URL, the root of every table's location and data file path.
    root: String,
}

impl std::fmt::Debug for IcebergTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergTables").field("namespace", &self.namespace).field("root", &self.root).finish()
    }
}

impl IcebergTables {
    /// Opens `catalog` for `lake`, creating the namespace and any of `tables` that is missing,
    /// and refusing an existing table whose schema differs from what this build writes.
    pub async fn open(lake: &Lake, catalog: &IcebergCatalog, tables: &[Table]) -> Result<Self, IcebergError> {
        let opened = Self::connect(lake, catalog).await?;
        let (catalog, namespace) = (&opened.catalog, &opened.namespace);
        for table in tables {
            let (name, location) = (table.name(), opened.location(table));
            let ident = opened.ident(table);
            let want = schema::iceberg_schema(table)?;
            let existing = if catalog.table_exists(&ident).await? {
                catalog.load_table(&ident).await?
            } else {
                let creation = TableCreation::builder()
                    .name(name.clone())
                    .location(location.clone())
                    .schema(want.clone())
                    .partition_spec(schema::partition_spec(table, &want)?)
                    .properties(schema::table_properties())
                    .build();
                catalog.create_table(namespace, creation).await?
            };
            schema::check_compatible(existing.metadata().current_schema(), &want)
                .map_err(|reason| IcebergError::Incompatible { table: name.clone(), reason })?;
            if !opened.stored_here(&existing, table) {
                let reason = format!("is stored at {}, not in this lake ({location})", existing.metadata().location());
                return Err(IcebergError::Foreign { table: name, reason });
            }
        }
        Ok(opened)
    }

    /// Drops those of `tables` that are stored in this lake from the catalog (the demo starts
    /// its lake again); tables stored elsewhere are left alone. Returns how many were dropped.
    pub async fn drop_tables(&self, tables: &[Table]) -> Result<usize, IcebergError> {
        let mut dropped = 0;
        for table in tables {
            let ident = self.ident(table);
            if !self.catalog.table_exists(&ident).await? {
                continue;
            }
            let loaded = self.catalog.load_table(&ident).await?;
            if self.stored_here(&loaded, table) {
                self.catalog.drop_table(&ident).await?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Refuses a table that holds a commit record newer than `newest`, the lake's newest
    /// (`None`: the lake has none): appending would skip this lake's records as done.
    pub async fn check_history(&self, newest: Option<u64>) -> Result<(), IcebergError> {
        for ident in self.catalog.list_tables(&self.namespace).await? {
            let table = self.catalog.load_table(&ident).await?;
            if let Some(seq) = appended_seq(&table).filter(|&seq| Some(seq) > newest) {
                let have = newest.map_or("none".to_owned(), |n| n.to_string());
                let reason = format!("holds commit {seq} and the lake's newest commit is {have}");
                return Err(IcebergError::Foreign { table: ident.name().to_owned(), reason });
            }
        }
        Ok(())
    }

    /// Connects to `catalog` for `lake`'s tables as they are (readers and maintenance),
    /// creating only the namespace.
    pub async fn connect(lake: &Lake, catalog: &IcebergCatalog) -> Result<Self, IcebergError> {
        let catalog_error = |reason: String| IcebergError::Catalog { catalog: catalog.to_string(), reason };
        let root = lake.url();
        let storage = Arc::new(storage::LakeStorageFactory::new(lake.clone()));
        let catalog: Arc<dyn Catalog> = match catalog {
            IcebergCatalog::Sqlite(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| catalog_error(e.to_string()))?;
                }
                static DRIVERS: Once = Once::new();
                DRIVERS.call_once(sqlx::any::install_default_drivers);
                let props = HashMap::from([
                    (SQL_CATALOG_PROP_URI.to_owned(), format!("sqlite:{}?mode=rwc", path.display())),
                    (SQL_CATALOG_PROP_WAREHOUSE.to_owned(), root.clone()),
                ]);
                let sql = SqlCatalogBuilder::default()
                    .sql_bind_style(SqlBindStyle::QMark)
                    .with_storage_factory(storage)
                    .load(NAMESPACE, props)
                    .await
                    .map_err(|e| catalog_error(e.message().to_owned()))?;
                Arc::new(sql)
            }
            IcebergCatalog::Glue { endpoint } => {
                let mut props = HashMap::from([(GLUE_CATALOG_PROP_WAREHOUSE.to_owned(), root.clone())]);
                if let Some(url) = endpoint {
                    props.insert(GLUE_CATALOG_PROP_URI.to_owned(), url.clone());
                }
                let glue = GlueCatalogBuilder::default()
                    .with_storage_factory(storage)
                    .load(NAMESPACE, props)
                    .await
                    .map_err(|e| catalog_error(one_line(&e)))?;
                Arc::new(glue)
            }
        };
        let namespace = NamespaceIdent::new(NAMESPACE.to_owned());
        let exists = catalog.namespace_exists(&namespace).await.map_err(|e| catalog_error(one_line(&e)))?;
        if !exists {
            catalog.create_namespace(&namespace, HashMap::new()).await?;
        }
        Ok(IcebergTables { catalog, namespace, root })
    }

    /// Appends `record`'s files: one snapshot per table it names, skipping any table that
    /// already holds this record. Returns how many snapshots were made.
    pub async fn append(&self, record: &CommitRecord) -> Result<usize, IcebergError> {
        let mut by_table: BTreeMap<&str, Vec<&crate::lake::writer::Staged>> = BTreeMap::new();
        for file in &record.files {
            let table = file.path.split('/').next().unwrap_or_default();
            by_table.entry(table).or_default().push(file);
        }
        let mut made = 0;
        for (name, files) in by_table {
            let ident = TableIdent::new(self.namespace.clone(), name.to_owned());
            let table = self.catalog.load_table(&ident).await?;
            if appended_seq(&table) >= Some(record.seq) {
                continue; // appended before a crash that came before the next table's
            }
            let spec_id = table.metadata().default_partition_spec_id();
            let data_files = files
                .iter()
                .map(|f| {
                    DataFileBuilder::default()
                        .content(DataContentType::Data)
                        .file_path(format!("{}/{}", self.root, f.path))
                        .file_format(DataFileFormat::Parquet)
                        .partition(Struct::from_iter([Some(Literal::int(f.hour as i32))]))
                        .partition_spec_id(spec_id)
                        .record_count(f.rows)
                        .file_size_in_bytes(f.bytes)
                        .build()
                        .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let summary = HashMap::from([
                (SEQ_PROPERTY.to_owned(), record.seq.to_string()),
                (POINT_PROPERTY.to_owned(), record.commit.to_string()),
                (GENERATION_PROPERTY.to_owned(), record.generation.to_string()),
            ]);
            let tx = Transaction::new(&table);
            let tx = tx.fast_append().add_data_files(data_files).set_snapshot_properties(summary).apply(tx)?;
            let tx = tx.update_table_properties().set(SEQ_PROPERTY.to_owned(), record.seq.to_string()).apply(tx)?;
            tx.commit(self.catalog.as_ref()).await?;
            made += 1;
        }
        Ok(made)
    }

    /// Every row of `table`'s current snapshot, with the lake's Arrow schema (millisecond
    /// timestamps), as the Hive reader returns them.
    pub async fn scan(&self, table: &Table) -> Result<Vec<RecordBatch>, IcebergError> {
        let loaded = self.catalog.load_table(&self.ident(table)).await?;
        let batches: Vec<RecordBatch> = loaded.scan().select_all().build()?.to_arrow().await?.try_collect().await?;
        let schema = table.schema();
        batches
            .iter()
            .map(|b| {
                schema::conform(b, &schema)
                    .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()).into())
            })
            .collect()
    }

    /// The data files of `table`'s current snapshot (absolute locations), none before its
    /// first snapshot.
    pub async fn data_files(&self, table: &Table) -> Result<Vec<String>, IcebergError> {
        let loaded = self.catalog.load_table(&self.ident(table)).await?;
        if loaded.metadata().current_snapshot().is_none() {
            return Ok(Vec::new());
        }
        let tasks: Vec<_> = loaded.scan().select_all().build()?.plan_files().await?.try_collect().await?;
        Ok(tasks.into_iter().map(|t| t.data_file_path).collect())
    }

    /// Expires each table's snapshots older than `older_than_ms` (ms since the epoch), keeping
    /// at least the newest `retain_last`. Only metadata changes: stockflow's tables are
    /// append-only, so every data file stays referenced by the current snapshot. Returns each
    /// table's name with the number of snapshots expired.
    pub async fn expire_snapshots(
        &self,
        older_than_ms: i64,
        retain_last: usize,
    ) -> Result<Vec<(String, usize)>, IcebergError> {
        let mut expired = Vec::new();
        for ident in self.catalog.list_tables(&self.namespace).await? {
            let table = self.catalog.load_table(&ident).await?;
            let before = table.metadata().snapshots().count();
            let tx = Transaction::new(&table);
            let tx =
                tx.expire_snapshots().expire_older_than_ms(older_than_ms).retain_last(retain_last.max(1)).apply(tx)?;
            let after = tx.commit(self.catalog.as_ref()).await?.metadata().snapshots().count();
            expired.push((ident.name().to_owned(), before.saturating_sub(after)));
        }
        Ok(expired)
    }

    /// The catalog, for readers and maintenance.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// Where `table` lives in the lake: `<lake URL>/<name>`.
    fn location(&self, table: &Table) -> String {
        format!("{}/{}", self.root, table.name())
    }

    /// Whether the catalog's `loaded` table is `table` of this lake, at its location.
    fn stored_here(&self, loaded: &iceberg::table::Table, table: &Table) -> bool {
        loaded.metadata().location().trim_end_matches('/') == self.location(table)
    }

    /// The identifier of `table`.
    pub fn ident(&self, table: &Table) -> TableIdent {
        TableIdent::new(self.namespace.clone(), table.name())
    }
}

/// The Iceberg tables of `lake` for a reader: `None` for a Hive lake, else its tables in
/// `catalog` (default: the local lake's SQLite file). A lake is an Iceberg lake when its
/// newest commit record says so, or when a catalog is named.
pub async fn tables_of(lake: &Lake, catalog: Option<IcebergCatalog>) -> Result<Option<IcebergTables>, CommitError> {
    let (_, newest) = crate::commit::newest_commit(lake).await?;
    if catalog.is_none() && !newest.is_some_and(|r| r.settings.format == TableFormat::Iceberg) {
        return Ok(None);
    }
    let named = catalog.is_some();
    let catalog = IcebergCatalog::resolve(catalog, &lake.url())
        .map_err(|reason| IcebergError::Catalog { catalog: "(none)".into(), reason })?;
    if !named && !catalog.exists() {
        let reason = "the lake's tables are Iceberg tables and its default catalog is missing; name it with --catalog";
        return Err(IcebergError::Catalog { catalog: catalog.to_string(), reason: reason.into() }.into());
    }
    Ok(Some(IcebergTables::connect(lake, &catalog).await?))
}

/// An error and its sources in one line (an unreachable catalog says why).
fn one_line(e: &iceberg::Error) -> String {
    let mut line = e.message().to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// The sequence number of the newest commit record appended to `table`.
pub fn appended_seq(table: &iceberg::table::Table) -> Option<u64> {
    table.metadata().properties().get(SEQ_PROPERTY).and_then(|s| s.parse().ok())
}
