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

The steps are written once for both engines (SQLite and PostgreSQL): column types as
``$int``/``$real``/``$blob``/``$id``, which :mod:`~ddos_shield.store.sql` renders for each.
"""

from __future__ import annotations

from collections.abc import Callable

from ddos_shield.errors import ShieldError
from ddos_shield.store.sql import Db


class StoreError(ShieldError):
    """The history database cannot be opened or is of an unknown version."""


def _to_1(db: Db) -> None:
    db.script(
        """
        CREATE TABLE attacks (
            attack_id  $int PRIMARY KEY,
            target     TEXT NOT NULL,
            grp        TEXT NOT NULL,
            started    $real NOT NULL,
            ended      $real,
            last_ts    $real NOT NULL,
            types      TEXT NOT NULL,              -- JSON list: every type seen during the attack
            peak_pps   $real NOT NULL DEFAULT 0,
            peak_bps   $real NOT NULL DEFAULT 0,
            detail     TEXT NOT NULL DEFAULT '{}'  -- the latest event's other fields (evidence, fingerprint...)
        );
        CREATE INDEX attacks_started ON attacks(started);
        CREATE TABLE attack_timeline (
            id         $id,
            attack_id  $int NOT NULL REFERENCES attacks(attack_id) ON DELETE CASCADE,
            ts         $real NOT NULL,
            event      TEXT NOT NULL,
            pps        $real,
            bps        $real,
            types      TEXT,
            detail     TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX attack_timeline_attack ON attack_timeline(attack_id, ts);
        CREATE TABLE mitigations (
            id              $id,
            mitigation_id   $int NOT NULL,
            attack_id       $int,
            applied_at      $real NOT NULL,
            removed_at      $real,
            backend         TEXT,
            action          TEXT,
            match           TEXT,                  -- JSON
            rule            TEXT NOT NULL,         -- JSON, as the event carried it
            actor           TEXT NOT NULL,
            reason          TEXT NOT NULL DEFAULT '',
            removed_by      TEXT,
            removed_reason  TEXT,
            hits_packets    $int,
            hits_dropped    $int
        );
        CREATE INDEX mitigations_mid ON mitigations(mitigation_id, removed_at);
        CREATE INDEX mitigations_attack ON mitigations(attack_id);
        CREATE INDEX mitigations_applied ON mitigations(applied_at);
        CREATE TABLE audit (
            id             $id,
            ts             $real NOT NULL,
            actor          TEXT NOT NULL,
            event          TEXT NOT NULL,
            attack_id      $int,
            mitigation_id  $int,
            reason         TEXT NOT NULL DEFAULT '',
            detail         TEXT NOT NULL           -- the whole event, JSON
        );
        CREATE INDEX audit_ts ON audit(ts);
        """,
    )


def _to_2(db: Db) -> None:
    db.script(
        """
        CREATE TABLE attack_packets (
            id           $id,
            attack_id    $int NOT NULL REFERENCES attacks(attack_id) ON DELETE CASCADE,
            ts           $real NOT NULL,
            wire_len     $int NOT NULL,
            synthesized  $int NOT NULL,           -- 1: headers built from a flow record, not captured
            data         $blob NOT NULL           -- the frame's first bytes (Ethernet)
        );
        CREATE INDEX attack_packets_attack ON attack_packets(attack_id, ts);
        ALTER TABLE attacks ADD COLUMN packets_kept $int NOT NULL DEFAULT 0;
        """,
    )


#: MIGRATIONS[n] takes a database at version n to n + 1 (0 is an empty file).
MIGRATIONS: list[Callable[[Db], None]] = [_to_1, _to_2]
VERSION = len(MIGRATIONS)


def version_of(db: Db) -> int:
    if not db.has_table("schema_version"):
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return int(row["version"]) if row else 0


def migrate(db: Db, target: int = VERSION) -> int:
    """Bring ``db`` to ``target`` one step at a time; returns the version it was at.

    Each step runs in its own transaction with its version bump (DDL is transactional
    on both engines), so a failed step leaves the database at the previous version, whole.
    """
    start = version_of(db)
    if start > VERSION:
        raise StoreError(f"{db.name}: schema version {start} is newer than this shield knows ({VERSION}); upgrade it")
    for v in range(start, target):
        try:
            db.begin()
            if v == 0:
                db.script("CREATE TABLE IF NOT EXISTS schema_version (version $int NOT NULL)")
            MIGRATIONS[v](db)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (v + 1,))
            db.commit()
        except db.errors as e:
            db.rollback()
            raise StoreError(f"{db.name}: migration from schema version {v} to {v + 1} failed: {e}") from e
    return start
