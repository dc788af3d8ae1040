"""The history schema: an old database is carried forward step by step, never rebuilt,
by the same steps on SQLite and on PostgreSQL (the ``where`` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddos_shield.store import History, StoreError
from ddos_shield.store import sql as sqlmod
from ddos_shield.store.history import Packet
from ddos_shield.store.schema import VERSION, migrate, version_of
from tests.store.conftest import Where


def _v1_database(where: Where) -> None:
    """A database as version 1 of the shield left it, with an attack in it."""
    db = where.connect()
    assert migrate(db, target=1) == 0
    db.execute(
        "INSERT INTO attacks (attack_id, target, grp, started, ended, last_ts, types, peak_pps, peak_bps)"
        " VALUES (5, '203.0.113.10/32', 'web', 100.0, 130.0, 130.0, '[\"syn_flood\"]', 12000, 6e6)"
    )
    db.execute("INSERT INTO attack_timeline (attack_id, ts, event, pps) VALUES (5, 100.0, 'attack_start', 12000)")
    db.execute("INSERT INTO audit (ts, actor, event, detail) VALUES (101.0, 'shield', 'mitigation_applied', '{}')")
    assert version_of(db) == 1
    db.close()


def test_version_1_database_is_migrated_and_keeps_its_rows(where: Where) -> None:
    _v1_database(where)
    h = where.open()
    assert h.migrated_from == 1
    assert h.schema_version() == VERSION == 2
    a = h.attack(5)
    assert a is not None
    assert (a["target"], a["group"], a["types"], a["peak_pps"], a["active"]) == (
        "203.0.113.10/32",
        "web",
        ["syn_flood"],
        12000,
        False,
    )
    assert a["packets_kept"] == 0  # the column added by step 2, with its default
    assert [t["event"] for t in a["timeline"]] == ["attack_start"]
    assert len(h.audit()) == 1
    # what step 2 added works on the old rows
    h.record([], {5: [Packet(100.5, 60, b"\x00" * 60, False)]})
    assert h.packets_kept(5) == 1
    h.close()
    # opening again migrates nothing
    h2 = where.open()
    assert h2.migrated_from == VERSION
    h2.close()


def test_fresh_database_starts_at_the_current_version(where: Where) -> None:
    h = where.open()
    assert (h.migrated_from, h.schema_version()) == (0, VERSION)
    h.close()
    if where.engine == "sqlite":
        db = sqlmod.connect(where.path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()


def test_failed_step_leaves_the_previous_version_whole(where: Where) -> None:
    _v1_database(where)
    db = where.connect()
    db.execute("CREATE TABLE attack_packets (x INTEGER)")  # in the way of step 2
    db.close()
    with pytest.raises(StoreError, match="migration from schema version 1 to 2 failed"):
        where.open()
    db = where.connect()
    assert version_of(db) == 1
    with pytest.raises(db.errors, match="packets_kept"):  # step 2's other change was rolled back with it
        db.execute("SELECT packets_kept FROM attacks")
    db.close()


def test_newer_database_is_refused(where: Where) -> None:
    where.open().close()
    db = where.connect()
    db.execute("UPDATE schema_version SET version = ?", (VERSION + 1,))
    db.close()
    with pytest.raises(StoreError, match=f"schema version {VERSION + 1} is newer"):
        where.open()


def test_not_a_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"junk\.sqlite3"):
        History(path)
