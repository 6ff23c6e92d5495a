"""Reads every table of a stockflow Iceberg lake through its catalog with pyiceberg, checks
that each time column is a UTC timestamp, and writes each table's rows to OUT/<table>.parquet.

    python3 tests/read_iceberg.py CATALOG WAREHOUSE_URL OUT [S3_ENDPOINT]

CATALOG is stockflow's --catalog: sqlite:PATH, or glue:URL for a Glue-compatible endpoint.
"""

import sys

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog.glue import GlueCatalog
from pyiceberg.catalog.sql import SqlCatalog

CREDENTIALS = {"access-key-id": "test", "secret-access-key": "test", "region": "us-east-1"}


def main() -> None:
    catalog_spec, warehouse, out = sys.argv[1:4]
    kind, _, where = catalog_spec.partition(":")
    props = {"warehouse": warehouse}
    if len(sys.argv) > 4:
        props["s3.endpoint"] = sys.argv[4]
        props.update({f"s3.{k}": v for k, v in CREDENTIALS.items()})
    if kind == "glue":
        props["glue.endpoint"] = where
        props.update({f"glue.{k}": v for k, v in CREDENTIALS.items()})
        catalog = GlueCatalog("stockflow", **props)
    else:
        catalog = SqlCatalog("stockflow", uri=f"sqlite:///{where}", **props)
    for _, name in catalog.list_tables("stockflow"):
        rows = catalog.load_table(("stockflow", name)).scan().to_arrow()
        for field in rows.schema:
            if pa.types.is_timestamp(field.type):
                assert field.type.tz == "UTC", f"{name}.{field.name} is {field.type}, not a UTC timestamp"
        pq.write_table(rows, f"{out}/{name}.parquet")
        print(f"{name} {rows.num_rows}")


if __name__ == "__main__":
    main()
