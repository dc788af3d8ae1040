"""AttackLog on hand-made events (the engine's own are in test_app.py)."""

from __future__ import annotations

from typing import Any

from ddos_shield.api.attacks import AttackLog


def attack(event: str, ts: float, aid: int = 7, **kw: Any) -> dict[str, Any]:
    return {
        "event": event,
        "ts": ts,
        "attack_id": aid,
        "target": "203.0.113.10/32",
        "group": "default",
        "attack_types": ["udp_flood"],
        "pps": 1000.0 + ts,
        "bps": 8e6,
        "peak_pps": 1000.0 + ts,
        "peak_bps": 8e6,
        "started": 0.0,
        **kw,
    }


def test_an_attack_with_its_rules_and_actions() -> None:
    log = AttackLog()
    log(attack("attack_start", 0.0))
    rule = {"mitigation_id": 3, "action": "drop", "match": {"dst": "203.0.113.10/32"}}
    log({"event": "mitigation_applied", "ts": 0.2, "attack_id": 7, "rule": rule, "actor": "shield", "reason": "r"})
    log(attack("attack_update", 1.0, attack_types=["udp_flood", "fragment_flood"]))
    log({"event": "mitigation_removed", "ts": 9.0, "attack_id": 7, "rule": rule, "actor": "token:noc", "reason": "x"})
    log(attack("attack_end", 5.0, attack_types=["udp_flood", "fragment_flood"]))
    log({"event": "ready", "ts": 0.0})  # not about an attack: ignored
    log({"event": "mitigation_applied", "ts": 1.0, "attack_id": 0, "rule": {"mitigation_id": 9}})  # manual: no attack
    (a,) = log.list()
    assert (a["state"], a["ended"], a["attack_types"]) == ("ended", 5.0, ["udp_flood", "fragment_flood"])
    assert a["rules"] == [rule] and "timeline" not in a
    d = log.get(7)
    assert d is not None
    assert [p[0] for p in d["timeline"]] == [0.0, 1.0, 5.0]
    assert [(x["event"], x["actor"], x["mitigation_id"]) for x in d["actions"]] == [
        ("mitigation_applied", "shield", 3),
        ("mitigation_removed", "token:noc", 3),
    ]
    assert log.get(8) is None
    assert log.list("active") == [] and len(log.list("ended")) == 1


def test_memory_is_bounded_in_attacks_and_timeline_points() -> None:
    log = AttackLog(keep=3, timeline_points=10)
    for aid in range(1, 6):
        log(attack("attack_start", float(aid), aid=aid))
    assert [a["attack_id"] for a in log.list()] == [5, 4, 3]  # newest first, the oldest forgotten
    for t in range(100):
        log(attack("attack_update", 10.0 + t, aid=5))
    tl = log.get(5)["timeline"]  # type: ignore[index]
    assert len(tl) <= 10
    assert tl[0][0] == 5.0 and tl[-1][0] == 109.0  # the whole span kept, at a coarser step
