"""Reads every table of a stockflow Iceberg lake through its catalog with pyiceberg, checks
that each time column is a UTC timestamp, and writes each table's rows to OUT/<table>.parquet.

    python3 tests/read_iceberg.py sqlite:PATH WAREHOUSE_URL OUT [S3_ENDPOINT]
"""

import sys

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog


def main() -> None:
    catalog_spec, warehouse, out = sys.argv[1:4]
    _, _, where = catalog_spec.partition(":")
    props = {"warehouse": warehouse}
    if len(sys.argv) > 4:
        props.update(
            {
                "s3.endpoint": sys.argv[4],
                "s3.access-key-id": "test",
                "s3.secret-access-key": "test",
                "s3.region": "us-east-1",
            }
        )
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
