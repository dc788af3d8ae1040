"""The history database: events folded into attacks, mitigations and the audit log; retention.
Each test runs on SQLite and on PostgreSQL (the ``where`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ddos_shield.store import History, Retention, StoreError
from tests.store.conftest import Where

T = "203.0.113.10/32"


def attack(kind: str, ts: float, aid: int = 7, types: tuple[str, ...] = ("udp_flood",), **kw: Any) -> dict[str, Any]:
    return {
        "event": kind,
        "ts": ts,
        "attack_id": aid,
        "target": T,
        "group": "web",
        "attack_types": list(types),
        "pps": kw.pop("pps", 9000.0),
        "bps": 7.2e6,
        "peak_pps": kw.pop("peak_pps", 9000.0),
        "peak_bps": 7.2e6,
        "started": 100.0,
        **kw,
    }


RULE = {"mitigation_id": 42, "action": "drop", "match": {"proto": 17, "dst": T, "dport": {"min": 53, "max": 53}}}


def mitigation(kind: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {"event": kind, "ts": ts, "rule": {**RULE, "attack_id": 7}, "attack_id": 7, **kw}


@pytest.fixture
def h(where: Where) -> Iterator[History]:
    history = where.open()
    yield history
    history.close()


def test_an_attack_with_its_timeline_peaks_types_and_actions(h: History) -> None:
    h.record(
        [
            attack("attack_start", 100.0, evidence={"category": "udp", "pps": 9000, "limit_pps": 5000}),
            mitigation("mitigation_applied", 100.2, backend="xdp"),
            attack("attack_update", 101.0, types=("udp_flood", "fragment_flood"), pps=20000.0, peak_pps=20000.0),
            attack("attack_update", 102.0, pps=3000.0, peak_pps=20000.0),
            attack("attack_end", 105.0, pps=0.0, peak_pps=20000.0),
            mitigation(
                "mitigation_removed", 165.0, reason="expired", hits={"packets": 5000, "bytes": 1, "dropped": 4900}
            ),
        ]
    )
    [a] = h.attacks()
    assert (a["attack_id"], a["target"], a["group"], a["active"]) == (7, T, "web", False)
    assert (a["started"], a["ended"], a["peak_pps"]) == (100.0, 105.0, 20000.0)
    assert a["types"] == ["udp_flood", "fragment_flood"]  # every type seen, in order of appearance
    assert a["detail"]["evidence"] == {"category": "udp", "pps": 9000, "limit_pps": 5000}
    full = h.attack(7)
    assert full is not None
    assert [e["event"] for e in full["timeline"]] == [
        "attack_start",
        "mitigation_applied",
        "attack_update",
        "attack_update",
        "attack_end",
        "mitigation_removed",
    ]
    assert full["fingerprints"] == [RULE["match"]]
    [m] = full["mitigations"]
    assert (m["mitigation_id"], m["backend"], m["actor"], m["active"]) == (42, "xdp", "shield", False)
    assert (m["removed_reason"], m["hits_packets"], m["hits_dropped"]) == ("expired", 5000, 4900)
    assert h.attack(8) is None


def test_audit_holds_every_action_with_its_actor(h: History) -> None:
    h.record(
        [
            attack("attack_start", 100.0),
            mitigation("mitigation_applied", 100.2, backend="xdp", actor="shield"),
            {"event": "mitigation_skipped", "ts": 100.3, "attack_id": 7, "reason": "critical asset"},
            mitigation("mitigation_removed", 103.0, reason="operator", actor="token:alice"),
            {"event": "config_reloaded", "ts": 110.0, "actor": "token:bob", "reason": "new thresholds"},
            {"event": "attack_update", "ts": 111.0, "attack_id": 7},  # not an action: not audited
        ]
    )
    got = [(e["actor"], e["action"], e["mitigation_id"]) for e in reversed(h.audit())]
    assert got == [
        ("shield", "mitigation_applied", 42),
        ("shield", "mitigation_skipped", None),
        ("token:alice", "mitigation_removed", 42),
        ("token:bob", "config_reloaded", None),
    ]
    assert [e["action"] for e in h.audit(actor="token:alice")] == ["mitigation_removed"]
    assert h.audit(event="config_reloaded")[0]["event"]["reason"] == "new thresholds"
    assert h.mitigations()[0]["removed_by"] == "token:alice"


def test_filters_and_paging(h: History) -> None:
    h.record([attack("attack_start", 100.0 + i, aid=i) for i in range(1, 6)] + [attack("attack_end", 120.0, aid=2)])
    assert [a["attack_id"] for a in h.attacks(limit=2)] == [5, 4]
    assert [a["attack_id"] for a in h.attacks(limit=2, offset=2)] == [3, 2]
    assert [a["attack_id"] for a in h.attacks(active=False)] == [2]
    assert len(h.attacks(active=True)) == 4
    assert len(h.attacks(target="192.0.2.1/32")) == 0


def test_a_restart_ends_the_attacks_left_open(h: History) -> None:
    h.record([attack("attack_start", 100.0), {"event": "stopped", "ts": 103.0, "detached": False}])
    a = h.attack(7)
    assert a is not None and a["ended"] == 103.0
    assert a["timeline"][-1] == {"ts": 103.0, "event": "attack_end", "reason": "shield stopped"}


def test_retention_by_age_and_by_count(h: History) -> None:
    day = 86400.0
    evs: list[dict[str, Any]] = []
    for i in range(1, 11):
        t0 = i * day
        evs += [attack("attack_start", t0, aid=i), attack("attack_end", t0 + 10, aid=i)]
        evs += [
            {
                **mitigation("mitigation_applied", t0 + 1),
                "attack_id": i,
                "rule": {**RULE, "mitigation_id": i, "attack_id": i},
            }
        ]
        evs += [
            {
                **mitigation("mitigation_removed", t0 + 5),
                "attack_id": i,
                "rule": {**RULE, "mitigation_id": i, "attack_id": i},
            }
        ]
    evs.append(attack("attack_start", 0.5 * day, aid=99))  # old but still under way: kept
    h.record(evs)
    from ddos_shield.store.history import Packet

    h.record([], {1: [Packet(day, 60, b"x" * 60, False)], 9: [Packet(9 * day, 60, b"y" * 60, False)]})
    now = 10 * day + 100
    deleted = h.apply_retention(Retention(days=5.5, max_attacks=3, max_audit_rows=4), now)
    kept = sorted(a["attack_id"] for a in h.attacks())
    assert kept == [8, 9, 10, 99]  # 1-4 too old, 5-7 beyond the 3 newest ended ones
    assert deleted["attacks"] == 7
    # an attack's timeline and packets went with it
    counts = h.counts()
    assert counts["attack_packets"] == 1 and h.packets_kept(9) == 1
    assert counts["attack_timeline"] == 3 * 4 + 1
    assert sorted(m["mitigation_id"] for m in h.mitigations()) == [5, 6, 7, 8, 9, 10]
    assert len(h.audit(limit=1000)) == 4


def test_large_counters_and_exact_times_survive(h: History) -> None:
    # PostgreSQL's INTEGER is 32 bits and its REAL 4 bytes: the schema asks for 64 and 8
    ts = 1795658314.123456
    h.record([attack("attack_start", ts, aid=2**40), mitigation("mitigation_applied", ts, attack_id=2**40)])
    h.record([mitigation("mitigation_removed", ts + 1, hits={"packets": 2**40 + 1, "dropped": 2**33})])
    [a] = h.attacks()
    assert (a["attack_id"], a["last_seen"]) == (2**40, ts)
    [m] = h.mitigations()
    assert (m["hits_packets"], m["hits_dropped"]) == (2**40 + 1, 2**33)


def test_a_refused_batch_leaves_nothing_and_the_next_is_written(h: History) -> None:
    import sqlite3

    import psycopg

    from ddos_shield.store.history import Packet

    frame = Packet(100.0, 60, None, False)  # type: ignore[arg-type]  # NOT NULL: the database refuses it
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        h.record([attack("attack_start", 100.0)], {7: [frame]})
    assert h.attacks() == []  # the whole batch was rolled back ...
    h.record([attack("attack_start", 100.0)])  # ... and the connection is usable again
    assert [a["attack_id"] for a in h.attacks()] == [7]


def test_a_lost_postgresql_connection_is_replaced(pg_dsn: str) -> None:
    import psycopg

    h = History(dsn=pg_dsn)
    h.record([attack("attack_start", 100.0)])
    with psycopg.connect(pg_dsn, autocommit=True) as admin:  # as a server restart would
        admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(psycopg.OperationalError):
        h.attacks()  # the call that meets the dead connection fails (the writer counts it) ...
    h.record([attack("attack_update", 101.0)])  # ... and the next one opens another
    assert [a["last_seen"] for a in h.attacks()] == [101.0]
    h.close()


def test_an_unreachable_server_is_named_without_its_password() -> None:
    with pytest.raises(StoreError, match=r"postgresql:host=/nonexistent dbname=history: cannot open") as e:
        History(dsn="host=/nonexistent dbname=history password=hunter2 connect_timeout=2")
    assert "hunter2" not in str(e.value)
