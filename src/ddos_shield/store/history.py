"""The history database (SQLite, or PostgreSQL when configured): what the writer records
and what the API reads.

:meth:`History.record` takes events as :class:`~ddos_shield.events.EventSink` emits them
and folds them into rows; the read methods (:meth:`History.attacks`,
:meth:`History.attack`, :meth:`History.mitigations`, :meth:`History.audit`,
:meth:`History.pcap`) return plain JSON-serialisable dicts.  Each call takes a connection
from a small pool (as many as there were calls at once, reused; one that lost its server
is dropped and the next call opens another); SQLite runs in WAL mode, so readers never
wait for the writer nor block it.  The queries are written once for both engines
(:mod:`~ddos_shield.store.sql` renders them).

>>> h = History(":memory:")
>>> h.record([{"event": "attack_start", "ts": 10.0, "attack_id": 7, "target": "203.0.113.10/32",
...            "group": "default", "attack_types": ["udp_flood"], "pps": 9000.0, "bps": 1e7,
...            "peak_pps": 9000.0, "peak_bps": 1e7, "started": 10.0}])
>>> [(a["attack_id"], a["types"], a["active"]) for a in h.attacks()]
[(7, ['udp_flood'], True)]
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddos_shield.store import schema, sql
from ddos_shield.store.schema import StoreError
from ddos_shield.store.sql import Db

#: events that are actions: recorded in the audit log even when they name no actor
#: (the engine's automatic path before ``actor`` was added: the shield itself)
ACTION_EVENTS = frozenset(
    {
        "mitigation_applied",
        "mitigation_removed",
        "mitigation_skipped",
        "mitigation_failed",
        "mitigation_pending",
        "mitigation_approved",
        "mitigation_refused",
        "mitigations_reconciled",
    }
)

_ATTACK_KEYS = (
    "attack_id",
    "target",
    "group",
    "attack_types",
    "pps",
    "bps",
    "peak_pps",
    "peak_bps",
    "started",
)


@dataclass(frozen=True)
class Retention:
    """What :meth:`History.apply_retention` keeps."""

    days: float = 90.0
    max_attacks: int = 10000
    max_audit_rows: int = 200000


@dataclass(frozen=True)
class Packet:
    """One sampled frame of an attack (Ethernet, its first bytes) for the pcap."""

    ts: float
    wire_len: int
    data: bytes
    synthesized: bool


class History:
    """See the module docstring.  ``path`` is an SQLite file, or ``":memory:"`` for tests
    (then one connection is shared, guarded by a lock); with ``dsn`` (a libpq connection
    string) the history is in that PostgreSQL database instead and ``path`` is unused."""

    def __init__(self, path: str | Path = ":memory:", *, dsn: str | None = None) -> None:
        self.dsn = dsn
        self.path = "" if dsn else str(path)
        #: what messages call the database: the file, or the server without a password
        self.name = sql.display_name(dsn) if dsn else self.path
        self.engine: sql.Engine = "postgresql" if dsn else "sqlite"
        self._lock = threading.RLock()
        self._idle: list[Db] = []
        self._closed = False
        self._memory = dsn is None and self.path == ":memory:"
        if dsn is None and not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = self._open()
        self._shared = db if self._memory else None
        try:
            self.migrated_from = schema.migrate(db)
        except StoreError:
            db.close()
            raise
        except db.errors as e:
            db.close()
            raise StoreError(f"{self.name}: cannot open the history database: {e}") from e
        if not self._memory:
            self._idle.append(db)

    # ---- connections ----------------------------------------------------------------

    def _open(self) -> Db:
        try:
            return sql.connect_postgresql(self.dsn) if self.dsn else sql.connect(self.path)
        except Exception as e:  # either driver's error, with the database named
            raise StoreError(f"{self.name}: cannot open the history database: {e}") from e

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Db]:
        if self._shared is not None:
            with self._lock:
                yield self._shared
            return
        with self._lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._open()
        try:
            yield db
        finally:
            with self._lock:
                keep = not self._closed and not db.broken
                if keep:
                    self._idle.append(db)
            if not keep:
                with contextlib.suppress(Exception):
                    db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Db]:
        with self._conn() as db:
            db.begin()
            try:
                yield db
                db.commit()
            except BaseException:
                if not db.broken:
                    db.rollback()
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            dbs = [*self._idle, *([self._shared] if self._shared is not None else [])]
            self._idle.clear()
            self._shared = None
        for db in dbs:
            with contextlib.suppress(Exception):
                db.close()

    def schema_version(self) -> int:
        with self._conn() as db:
            return schema.version_of(db)

    # ---- writing --------------------------------------------------------------------

    def record(self, events: Iterable[dict[str, Any]], packets: Mapping[int, Sequence[Packet]] | None = None) -> None:
        """Fold events (and sampled packets per attack id) into the database, in one transaction."""
        with self._transaction() as db:
            for ev in events:
                self._record_one(db, ev)
            for attack_id, pkts in (packets or {}).items():
                self._add_packets(db, attack_id, pkts)

    def _record_one(self, db: Db, ev: dict[str, Any]) -> None:
        kind = str(ev.get("event", ""))
        ts = float(ev.get("ts", 0.0))
        if kind.startswith("attack_") and "attack_id" in ev:
            self._attack_event(db, kind, ts, ev)
        elif kind == "mitigation_applied":
            rule = ev.get("rule") or {}
            db.execute(
                "INSERT INTO mitigations (mitigation_id, attack_id, applied_at, backend, action, match, rule, actor,"
                " reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    int(rule.get("mitigation_id", 0)),
                    _opt_int(ev.get("attack_id") or rule.get("attack_id")),
                    ts,
                    ev.get("backend"),
                    rule.get("action"),
                    json.dumps(rule.get("match", {})),
                    json.dumps(rule),
                    _actor(ev),
                    str(ev.get("reason") or rule.get("reason") or ""),
                ),
            )
            self._timeline_action(db, kind, ts, ev)
        elif kind == "mitigation_removed":
            rule = ev.get("rule") or {}
            hits = ev.get("hits") or {}
            db.execute(
                "UPDATE mitigations SET removed_at = ?, removed_by = ?, removed_reason = ?, hits_packets = ?,"
                " hits_dropped = ? WHERE id = (SELECT max(id) FROM mitigations WHERE mitigation_id = ?"
                " AND removed_at IS NULL)",
                (
                    ts,
                    _actor(ev),
                    str(ev.get("reason", "")),
                    _opt_int(hits.get("packets")),
                    _opt_int(hits.get("dropped")),
                    int(rule.get("mitigation_id", 0)),
                ),
            )
            self._timeline_action(db, kind, ts, ev)
        elif kind.startswith("mitigation_"):  # skipped, failed, pending, approved, refused
            self._timeline_action(db, kind, ts, ev)
        elif kind in ("ready", "stopped"):
            # the engine does not end its attacks when it stops, and a new process
            # numbers its attacks afresh: whatever is still open ends here
            for r in db.execute("SELECT attack_id FROM attacks WHERE ended IS NULL").fetchall():
                db.execute(
                    "INSERT INTO attack_timeline (attack_id, ts, event, detail) VALUES (?, ?, 'attack_end', ?)",
                    (r["attack_id"], ts, json.dumps({"reason": f"shield {kind}"})),
                )
            db.execute("UPDATE attacks SET ended = ? WHERE ended IS NULL", (ts,))
        if kind in ACTION_EVENTS or "actor" in ev:
            rule = ev.get("rule") or {}
            db.execute(
                "INSERT INTO audit (ts, actor, event, attack_id, mitigation_id, reason, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    ts,
                    _actor(ev),
                    kind,
                    _opt_int(ev.get("attack_id")),
                    _opt_int(rule.get("mitigation_id") if isinstance(rule, dict) else None)
                    or _opt_int(ev.get("mitigation_id")),
                    str(ev.get("reason", "")),
                    json.dumps(ev),
                ),
            )

    def _attack_event(self, db: Db, kind: str, ts: float, ev: dict[str, Any]) -> None:
        aid = int(ev["attack_id"])
        types = [str(t) for t in ev.get("attack_types", [])]
        detail = {k: v for k, v in ev.items() if k not in _ATTACK_KEYS and k not in ("event", "ts")}
        pps = float(ev.get("peak_pps", ev.get("pps", 0.0)))
        bps = float(ev.get("peak_bps", ev.get("bps", 0.0)))
        row = db.execute("SELECT types, detail, peak_pps, peak_bps FROM attacks WHERE attack_id = ?", (aid,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO attacks (attack_id, target, grp, started, last_ts, types, peak_pps, peak_bps, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    aid,
                    str(ev.get("target", "")),
                    str(ev.get("group", "")),
                    float(ev.get("started", ts)),
                    ts,
                    json.dumps(types),
                    pps,
                    bps,
                    json.dumps(detail),
                ),
            )
        else:
            seen = json.loads(row["types"])
            merged = seen + [t for t in types if t not in seen]
            old_detail = json.loads(row["detail"])
            # the peaks are taken here, not with SQL's max(a, b) (PostgreSQL spells it greatest)
            db.execute(
                "UPDATE attacks SET last_ts = ?, types = ?, peak_pps = ?, peak_bps = ?, detail = ? WHERE attack_id = ?",
                (
                    ts,
                    json.dumps(merged),
                    max(float(row["peak_pps"]), pps),
                    max(float(row["peak_bps"]), bps),
                    json.dumps({**old_detail, **detail}),
                    aid,
                ),
            )
        if kind == "attack_end":
            db.execute("UPDATE attacks SET ended = ? WHERE attack_id = ?", (ts, aid))
        db.execute(
            "INSERT INTO attack_timeline (attack_id, ts, event, pps, bps, types, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (aid, ts, kind, ev.get("pps"), ev.get("bps"), json.dumps(types), json.dumps(detail)),
        )

    def _timeline_action(self, db: Db, kind: str, ts: float, ev: dict[str, Any]) -> None:
        """Actions on an attack also go into its timeline (when the attack is known)."""
        rule = ev.get("rule") or {}
        aid = _opt_int(ev.get("attack_id") or (rule.get("attack_id") if isinstance(rule, dict) else None))
        if not aid or db.execute("SELECT 1 FROM attacks WHERE attack_id = ?", (aid,)).fetchone() is None:
            return
        detail = {k: v for k, v in ev.items() if k not in _ATTACK_KEYS and k not in ("event", "ts")}
        db.execute(
            "INSERT INTO attack_timeline (attack_id, ts, event, detail) VALUES (?, ?, ?, ?)",
            (aid, ts, kind, json.dumps(detail)),
        )

    def _add_packets(self, db: Db, attack_id: int, pkts: Sequence[Packet]) -> None:
        if not pkts or db.execute("SELECT 1 FROM attacks WHERE attack_id = ?", (attack_id,)).fetchone() is None:
            return
        db.executemany(
            "INSERT INTO attack_packets (attack_id, ts, wire_len, synthesized, data) VALUES (?, ?, ?, ?, ?)",
            [(attack_id, p.ts, p.wire_len, int(p.synthesized), p.data) for p in pkts],
        )
        db.execute("UPDATE attacks SET packets_kept = packets_kept + ? WHERE attack_id = ?", (len(pkts), attack_id))

    def packets_kept(self, attack_id: int) -> int:
        with self._conn() as db:
            row = db.execute("SELECT packets_kept FROM attacks WHERE attack_id = ?", (attack_id,)).fetchone()
        return int(row["packets_kept"]) if row else 0

    # ---- retention ------------------------------------------------------------------

    def apply_retention(self, retention: Retention, now: float) -> dict[str, int]:
        """Delete what is older than ``retention.days`` and beyond the row limits (oldest
        first; an attack goes with its timeline and packets).  Attacks still under way
        are kept whatever their age.  Returns the rows deleted per table."""
        cutoff = now - retention.days * 86400.0
        out: dict[str, int] = {}
        with self._transaction() as db:
            n = db.execute("DELETE FROM attacks WHERE ended IS NOT NULL AND ended < ?", (cutoff,)).rowcount
            # "all but the newest N" as NOT IN (the newest N): SQLite's LIMIT -1 OFFSET N is not PostgreSQL's
            n += db.execute(
                "DELETE FROM attacks WHERE ended IS NOT NULL AND attack_id NOT IN (SELECT attack_id FROM attacks"
                " WHERE ended IS NOT NULL ORDER BY started DESC, attack_id DESC LIMIT ?)",
                (retention.max_attacks,),
            ).rowcount
            out["attacks"] = n
            out["mitigations"] = db.execute(
                "DELETE FROM mitigations WHERE removed_at IS NOT NULL AND removed_at < ?", (cutoff,)
            ).rowcount
            n = db.execute("DELETE FROM audit WHERE ts < ?", (cutoff,)).rowcount
            n += db.execute(
                "DELETE FROM audit WHERE id <= (SELECT max(id) FROM audit) - ?", (retention.max_audit_rows,)
            ).rowcount
            out["audit"] = n
        return out

    # ---- reading (the API's interface) ------------------------------------------------

    def attacks(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        since: float | None = None,
        until: float | None = None,
        target: str | None = None,
        active: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Attacks, newest first.  ``since``/``until`` bound the start time; ``target``
        is the exact CIDR; ``active`` selects attacks under way (True) or ended (False)."""
        where, args = ["1 = 1"], list[Any]()
        if since is not None:
            where.append("started >= ?")
            args.append(since)
        if until is not None:
            where.append("started < ?")
            args.append(until)
        if target is not None:
            where.append("target = ?")
            args.append(target)
        if active is not None:
            where.append("ended IS NULL" if active else "ended IS NOT NULL")
        q = f"SELECT * FROM attacks WHERE {' AND '.join(where)} ORDER BY started DESC, attack_id DESC LIMIT ? OFFSET ?"
        with self._conn() as db:
            return [_attack_row(r) for r in db.execute(q, (*args, limit, offset)).fetchall()]

    def attack(self, attack_id: int) -> dict[str, Any] | None:
        """One attack with its timeline (every start/update/end and action, oldest first),
        its mitigations, and the fingerprints (matches) of the rules taken against it."""
        with self._conn() as db:
            row = db.execute("SELECT * FROM attacks WHERE attack_id = ?", (attack_id,)).fetchone()
            if row is None:
                return None
            timeline = db.execute(
                "SELECT * FROM attack_timeline WHERE attack_id = ? ORDER BY ts, id", (attack_id,)
            ).fetchall()
        out = _attack_row(row)
        out["timeline"] = [
            {
                "ts": t["ts"],
                "event": t["event"],
                **({"pps": t["pps"], "bps": t["bps"]} if t["pps"] is not None else {}),
                **({"attack_types": json.loads(t["types"])} if t["types"] is not None else {}),
                **json.loads(t["detail"]),
            }
            for t in timeline
        ]
        out["mitigations"] = self.mitigations(attack_id=attack_id, limit=10000)
        out["fingerprints"] = [m["match"] for m in out["mitigations"]]
        return out

    def mitigations(
        self, *, limit: int = 100, offset: int = 0, attack_id: int | None = None, active: bool | None = None
    ) -> list[dict[str, Any]]:
        """Mitigations, newest first (``active``: not yet withdrawn)."""
        where, args = ["1 = 1"], list[Any]()
        if attack_id is not None:
            where.append("attack_id = ?")
            args.append(attack_id)
        if active is not None:
            where.append("removed_at IS NULL" if active else "removed_at IS NOT NULL")
        q = f"SELECT * FROM mitigations WHERE {' AND '.join(where)} ORDER BY applied_at DESC, id DESC LIMIT ? OFFSET ?"
        with self._conn() as db:
            rows = db.execute(q, (*args, limit, offset)).fetchall()
        return [
            {
                "mitigation_id": r["mitigation_id"],
                "attack_id": r["attack_id"],
                "applied_at": r["applied_at"],
                "removed_at": r["removed_at"],
                "active": r["removed_at"] is None,
                "backend": r["backend"],
                "action": r["action"],
                "match": json.loads(r["match"] or "{}"),
                "rule": json.loads(r["rule"]),
                "actor": r["actor"],
                "reason": r["reason"],
                "removed_by": r["removed_by"],
                "removed_reason": r["removed_reason"],
                "hits_packets": r["hits_packets"],
                "hits_dropped": r["hits_dropped"],
            }
            for r in rows
        ]

    def audit(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        since: float | None = None,
        actor: str | None = None,
        event: str | None = None,
    ) -> list[dict[str, Any]]:
        """Audit-log entries, newest first: every action (automatic or manual) with its
        actor and reason, and every change made through the API; ``event`` holds the
        whole event as it was emitted."""
        where, args = ["1 = 1"], list[Any]()
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if actor is not None:
            where.append("actor = ?")
            args.append(actor)
        if event is not None:
            where.append("event = ?")
            args.append(event)
        q = f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?"
        with self._conn() as db:
            rows = db.execute(q, (*args, limit, offset)).fetchall()
        return [
            {
                "ts": r["ts"],
                "actor": r["actor"],
                "action": r["event"],
                "attack_id": r["attack_id"],
                "mitigation_id": r["mitigation_id"],
                "reason": r["reason"],
                "event": json.loads(r["detail"]),
            }
            for r in rows
        ]

    def packets(self, attack_id: int) -> list[Packet]:
        """The sampled frames kept for an attack, oldest first."""
        with self._conn() as db:
            rows = db.execute(
                "SELECT ts, wire_len, data, synthesized FROM attack_packets WHERE attack_id = ? ORDER BY ts, id",
                (attack_id,),
            ).fetchall()
        return [Packet(float(r["ts"]), int(r["wire_len"]), bytes(r["data"]), bool(r["synthesized"])) for r in rows]

    def pcap(self, attack_id: int) -> bytes | None:
        """The attack's sampled packets as a pcapng file (None for an unknown attack;
        an attack with no packets kept gives a valid file with none)."""
        from ddos_shield.store.pcap import write_pcapng

        with self._conn() as db:
            a = db.execute("SELECT target, started FROM attacks WHERE attack_id = ?", (attack_id,)).fetchone()
        if a is None:
            return None
        pkts = self.packets(attack_id)
        synth = sum(p.synthesized for p in pkts)
        comment = (
            f"DDoS Shield attack {attack_id} on {a['target']}: {len(pkts)} sampled packets"
            f" ({len(pkts) - synth} captured by the data plane, first bytes of each frame;"
            f" {synth} synthesised from flow records, headers only)"
        )
        return write_pcapng(pkts, comment)

    def counts(self) -> dict[str, int]:
        with self._conn() as db:
            return {
                t: int(db.execute(f"SELECT count(*) AS n FROM {t}").fetchone()["n"])
                for t in ("attacks", "attack_timeline", "mitigations", "audit", "attack_packets")
            }


def _actor(ev: dict[str, Any]) -> str:
    return str(ev.get("actor") or "shield")


def _opt_int(v: Any) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _attack_row(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "attack_id": r["attack_id"],
        "target": r["target"],
        "group": r["grp"],
        "started": r["started"],
        "ended": r["ended"],
        "active": r["ended"] is None,
        "last_seen": r["last_ts"],
        "types": json.loads(r["types"]),
        "peak_pps": r["peak_pps"],
        "peak_bps": r["peak_bps"],
        "packets_kept": r["packets_kept"],
        "detail": json.loads(r["detail"]),
    }
