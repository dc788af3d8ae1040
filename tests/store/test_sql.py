"""The dialect layer: one spelling of the schema and the queries, rendered for each engine
(the ``where`` fixture: SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from ddos_shield.store.sql import display_name
from tests.store.conftest import Where

TABLE = """
CREATE TABLE t (
    id    $id,
    n     $int NOT NULL,
    x     $real NOT NULL,
    data  $blob
);
CREATE INDEX t_n ON t(n)
"""


def test_types_placeholders_and_transactions(where: Where) -> None:
    db = where.connect()
    db.begin()
    db.script(TABLE)
    db.commit()
    assert db.has_table("t") and not db.has_table("nope")
    rows = [
        # (n, x, data): values that a narrower type would change
        (2**40, 1795658314.123456, b"\x00\xff" * 64),  # 64-bit integer, double precision
        (-1, 0.1, None),
        (0, 1e-300, b""),
    ]
    db.executemany("INSERT INTO t (n, x, data) VALUES (?, ?, ?)", rows)
    got = [
        (r["n"], r["x"], None if r["data"] is None else bytes(r["data"]))
        for r in db.execute("SELECT * FROM t ORDER BY id")
    ]
    assert got == rows
    assert [r["id"] for r in db.execute("SELECT id FROM t ORDER BY id")] == [1, 2, 3]  # numbered by the database
    # a rolled-back transaction leaves nothing, DDL included
    db.begin()
    db.execute("DELETE FROM t WHERE n = ?", (-1,))
    db.script("CREATE TABLE u (a $int)")
    db.rollback()
    assert db.execute("SELECT count(*) AS c FROM t").fetchone()["c"] == 3 and not db.has_table("u")
    with pytest.raises(db.errors):
        db.execute("SELECT nope FROM t")
    db.close()


DSNS = [
    # (dsn, shown in messages)
    ("host=/run/pg dbname=h user=s password=secret", "postgresql:host=/run/pg dbname=h user=s"),
    ("postgresql://s:secret@db.example:5433/h?sslmode=require", "postgresql:host=db.example port=5433 dbname=h user=s"),
    ("not a dsn secret", "postgresql:<unparseable DSN>"),
]


@pytest.mark.parametrize(("dsn", "shown"), DSNS)
def test_display_name_never_shows_a_password(dsn: str, shown: str) -> None:
    assert display_name(dsn) == shown
