"""moto's server (S3 and Glue on one loopback endpoint) with the check AWS Glue makes on
UpdateTable and moto leaves out: a VersionId that is not the table's current version fails
with ConcurrentModificationException. Iceberg's Glue catalogs rely on that check to refuse a
commit based on stale metadata, so a test of racing commits needs it.

With MOTO_GLUE_CONFLICTS=N in its environment, the first N UpdateTable calls fail the same way,
as if another writer had committed just before each of them (fault injection).

    python3 tests/moto_server.py -H 127.0.0.1 -p PORT
"""

import os
import sys
import threading

from moto.glue import exceptions, responses
from moto.server import main

_LOCK = threading.Lock()
_UPDATE_TABLE = responses.GlueResponse.update_table
_INJECTED = [int(os.environ.get("MOTO_GLUE_CONFLICTS", "0"))]


def update_table(self):  # type: ignore[no-untyped-def]
    version = self.parameters.get("VersionId")
    with _LOCK:  # the check and the update as one step, as Glue makes them
        if _INJECTED[0] > 0:
            _INJECTED[0] -= 1
            raise exceptions.GlueClientError("ConcurrentModificationException", "injected conflict")
        if version is not None:
            database = self.parameters.get("DatabaseName")
            table = self.glue_backend.get_table(database, self.parameters["TableInput"]["Name"])
            current = str(table.as_dict()["VersionId"])
            if current != str(version):
                raise exceptions.GlueClientError(
                    "ConcurrentModificationException",
                    f"table version is {current}, not {version}",
                )
        return _UPDATE_TABLE(self)


responses.GlueResponse.update_table = update_table

if __name__ == "__main__":
    sys.exit(main())
