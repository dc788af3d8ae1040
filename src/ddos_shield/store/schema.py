"""The history database's schema, versioned apart from the release, migrated step by step.

``schema_version`` holds one row: the version the database is at.  ``MIGRATIONS[n]``
takes a database from version ``n`` to ``n + 1``; opening a database runs every step
from its version to :data:`VERSION`, each in its own transaction, so an old database
is carried forward one step at a time and never rebuilt.  A database newer than this
code is refused rather than guessed at.

Version history:

1. attacks (one row each, with peaks, types and the last event's details), their
   timeline, mitigations, the audit log.
2. attack packet samples (for the pcap download) and ``attacks.packets_kept``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ddos_shield.errors import ShieldError


class StoreError(ShieldError):
    """The history database cannot be opened or is of an unknown version."""


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would COMMIT first and break the step's transaction: run the
    # statements one by one instead (none of them holds a ';' in a literal)
    for stmt in sql.split(";"):
        if stmt.strip():
            db.execute(stmt)


def _to_1(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE attacks (
            attack_id  INTEGER PRIMARY KEY,
            target     TEXT NOT NULL,
            grp        TEXT NOT NULL,
            started    REAL NOT NULL,
            ended      REAL,
            last_ts    REAL NOT NULL,
            types      TEXT NOT NULL,              -- JSON list: every type seen during the attack
            peak_pps   REAL NOT NULL DEFAULT 0,
            peak_bps   REAL NOT NULL DEFAULT 0,
            detail     TEXT NOT NULL DEFAULT '{}'  -- the latest event's other fields (evidence, fingerprint...)
        );
        CREATE INDEX attacks_started ON attacks(started);
        CREATE TABLE attack_timeline (
            id         INTEGER PRIMARY KEY,
            attack_id  INTEGER NOT NULL REFERENCES attacks(attack_id) ON DELETE CASCADE,
            ts         REAL NOT NULL,
            event      TEXT NOT NULL,
            pps        REAL,
            bps        REAL,
            types      TEXT,
            detail     TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX attack_timeline_attack ON attack_timeline(attack_id, ts);
        CREATE TABLE mitigations (
            id              INTEGER PRIMARY KEY,
            mitigation_id   INTEGER NOT NULL,
            attack_id       INTEGER,
            applied_at      REAL NOT NULL,
            removed_at      REAL,
            backend         TEXT,
            action          TEXT,
            match           TEXT,                  -- JSON
            rule            TEXT NOT NULL,         -- JSON, as the event carried it
            actor           TEXT NOT NULL,
            reason          TEXT NOT NULL DEFAULT '',
            removed_by      TEXT,
            removed_reason  TEXT,
            hits_packets    INTEGER,
            hits_dropped    INTEGER
        );
        CREATE INDEX mitigations_mid ON mitigations(mitigation_id, removed_at);
        CREATE INDEX mitigations_attack ON mitigations(attack_id);
        CREATE INDEX mitigations_applied ON mitigations(applied_at);
        CREATE TABLE audit (
            id             INTEGER PRIMARY KEY,
            ts             REAL NOT NULL,
            actor          TEXT NOT NULL,
            event          TEXT NOT NULL,
            attack_id      INTEGER,
            mitigation_id  INTEGER,
            reason         TEXT NOT NULL DEFAULT '',
            detail         TEXT NOT NULL           -- the whole event, JSON
        );
        CREATE INDEX audit_ts ON audit(ts);
        """,
    )


def _to_2(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE attack_packets (
            id           INTEGER PRIMARY KEY,
            attack_id    INTEGER NOT NULL REFERENCES attacks(attack_id) ON DELETE CASCADE,
            ts           REAL NOT NULL,
            wire_len     INTEGER NOT NULL,
            synthesized  INTEGER NOT NULL,         -- 1: headers built from a flow record, not captured
            data         BLOB NOT NULL             -- the frame's first bytes (Ethernet)
        );
        CREATE INDEX attack_packets_attack ON attack_packets(attack_id, ts);
        ALTER TABLE attacks ADD COLUMN packets_kept INTEGER NOT NULL DEFAULT 0;
        """,
    )


#: MIGRATIONS[n] takes a database at version n to n + 1 (0 is an empty file).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_to_1, _to_2]
VERSION = len(MIGRATIONS)


def version_of(db: sqlite3.Connection) -> int:
    has = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not has:
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite3.Connection, target: int = VERSION, *, name: str = "history") -> int:
    """Bring ``db`` to ``target`` one step at a time; returns the version it was at.

    ``db`` must be in autocommit mode (``isolation_level=None``): each step runs in
    its own explicit transaction with its version bump, so a failed step leaves the
    database at the previous version, whole.
    """
    start = version_of(db)
    if start > VERSION:
        raise StoreError(f"{name}: schema version {start} is newer than this shield knows ({VERSION}); upgrade it")
    for v in range(start, target):
        try:
            db.execute("BEGIN IMMEDIATE")
            if v == 0:
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            MIGRATIONS[v](db)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (v + 1,))
            db.execute("COMMIT")
        except sqlite3.Error as e:
            db.execute("ROLLBACK")
            raise StoreError(f"{name}: migration from schema version {v} to {v + 1} failed: {e}") from e
    return start
