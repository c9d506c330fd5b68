"""The lab's OVSDB log writer and reader agree (the reader also parses ovsdb-server's own
files: tests/functional/test_ovsdb.py)."""

from __future__ import annotations

import json

from ovn_k8s.sandbox.lab import read_db_log, write_db


def test_read_db_log_reads_what_write_db_wrote(tmp_path):
    schema = tmp_path / "s.ovsschema"
    schema.write_text(json.dumps({"name": "T", "version": "1.0.0", "tables": {}}))
    db = tmp_path / "t.db"
    row = {"T": {"3b3b5a6e-0000-4000-8000-000000000001": {"name": "x"}}}
    write_db(db, schema, row)
    schema_record, txn = read_db_log(db)
    assert schema_record["name"] == "T"
    assert txn["T"] == row["T"] and txn["_is_diff"] is True
    second = db.read_bytes().rindex(b"OVSDB JSON")  # from the second record on
    assert read_db_log(db, second) == [txn]
