"""Alert contents and throttling, from hand-made events (the real engine and real
receivers are in test_dispatch.py and the sender tests)."""

from __future__ import annotations

from typing import Any

from ddos_shield.alerts.message import AlertBuilder
from ddos_shield.config import parse

CONFIG = """
protected = ["203.0.113.0/24"]
[alerts]
dashboard_url = "https://shield.example.net/ui/"
update_interval_seconds = 60
[[groups]]
name = "web"
prefixes = ["203.0.113.0/28"]
[groups.thresholds]
udp = { pps = 20000, bps = 100000000 }
"""


def attack(kind: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {
        "event": kind,
        "ts": ts,
        "attack_id": 7,
        "target": "203.0.113.10/32",
        "group": "web",
        "attack_types": ["udp_flood"],
        "pps": 90000.0,
        "bps": 5e8,
        "peak_pps": 90000.0,
        "peak_bps": 5e8,
        "started": 100.0,
        **kw,
    }


RULE = {
    "mitigation_id": 12,
    "action": "drop",
    "match": {"proto": 17, "dst": "203.0.113.10/32", "dport": {"min": 53, "max": 53}},
    "attack_id": 7,
    "attack_share": 0.998,
    "collateral_share": 0.0004,
}


def test_start_carries_target_group_types_rates_evidence_and_link() -> None:
    b = AlertBuilder(parse(CONFIG))
    a = b.build(attack("attack_start", 100.0))
    assert a is not None and a.severity == "critical"
    p = a.payload
    assert p["attack"]["url"] == "https://shield.example.net/ui/attacks/7"
    assert (p["attack"]["target"], p["attack"]["group"], p["attack"]["types"]) == (
        "203.0.113.10/32",
        "web",
        ["udp_flood"],
    )
    assert p["evidence"] == [
        {
            "category": "udp",
            "basis": "static threshold of host group 'web'",
            "pps": 90000.0,
            "limit_pps": 20000,
            "bps": 5e8,
            "limit_bps": 100000000,
        }
    ]
    assert "udp_flood on 203.0.113.10/32 (group web)" in a.summary and "90.0 kpps" in a.summary


def test_baseline_evidence_names_what_the_limit_is_made_of() -> None:
    b = AlertBuilder(parse(CONFIG))
    a = b.build(attack("attack_start", 100.0, basis="baseline", categories=["udp"]))
    assert a is not None
    [ev] = a.payload["evidence"]
    assert ev["basis"].startswith("learned baseline of the destination: above its level by 6 spreads")
    assert (ev["category"], ev["floor_pps"], ev["pps"]) == ("udp", 2000, 90000.0)
    assert "limit_pps" not in ev


def test_detector_evidence_is_passed_on_as_given() -> None:
    b = AlertBuilder(parse(CONFIG))
    ev = {"basis": "baseline", "category": "udp", "pps": 90000, "baseline_pps": 800, "factor": 112}
    a = b.build(attack("attack_start", 100.0, evidence=ev))
    assert a is not None and a.payload["evidence"] == [ev]


def test_mitigation_carries_the_rule_and_its_collateral_share() -> None:
    b = AlertBuilder(parse(CONFIG))
    b.build(attack("attack_start", 100.0))
    a = b.build({**attack("mitigation_applied", 100.2), "rule": RULE, "backend": "xdp"})
    assert a is not None
    m = a.payload["mitigation"]
    assert (m["mitigation_id"], m["action"], m["backend"], m["collateral_share"], m["actor"]) == (
        12,
        "drop",
        "xdp",
        0.0004,
        "shield",
    )
    assert m["description"] == "proto=17 dst=203.0.113.10/32 dport=53"
    assert "expected collateral 0.04%" in a.summary
    # the next alerts about the attack list the rule in force
    end = b.build(attack("attack_end", 130.0))
    assert end is not None and [r["mitigation_id"] for r in end.payload["mitigations"]] == [12]
    assert m["per_source"] is False


def test_a_per_source_rate_limit_says_so() -> None:
    b = AlertBuilder(parse(CONFIG))
    b.build(attack("attack_start", 100.0))
    rule = {**RULE, "action": "rate_limit", "rate_pps": 100, "per_source": True}
    a = b.build({**attack("mitigation_applied", 100.2), "rule": rule, "backend": "nftables"})
    assert a is not None
    assert (a.payload["mitigation"]["rate_pps"], a.payload["mitigation"]["per_source"]) == (100, True)
    assert "rate_limit proto=17 dst=203.0.113.10/32 dport=53 at 100 pps per source" in a.summary


def test_long_attack_is_throttled_start_updates_end() -> None:
    b = AlertBuilder(parse(CONFIG))
    sent = []
    for t in range(0, 300):  # an update a second for 5 minutes
        ev = attack("attack_start" if t == 0 else "attack_update", 100.0 + t, peak_pps=90000.0 + t)
        if (a := b.build(ev)) is not None:
            sent.append((a.kind, ev["ts"]))
    end = b.build(attack("attack_end", 400.0, pps=0.0, peak_pps=90299.0))
    assert end is not None
    assert sent == [
        ("attack_start", 100.0),
        ("attack_update", 160.0),
        ("attack_update", 220.0),
        ("attack_update", 280.0),
        ("attack_update", 340.0),
    ]
    assert b.throttled == 299 - 4
    assert end.payload["attack"]["peak_pps"] == 90299.0 and end.payload["attack"]["duration_seconds"] == 300.0
    # a new attack id starts afresh
    assert b.build(attack("attack_update", 401.0, attack_id=8)) is not None


def test_a_failed_verification_is_alerted_a_good_one_is_not() -> None:
    b = AlertBuilder(parse(CONFIG))
    b.build(attack("attack_start", 100.0))
    ok = {**attack("mitigation_verified", 103.0), "ok": True, "reason": "attack cut", "mitigation_ids": [12]}
    assert b.build(ok) is None
    bad = {**ok, "ok": False, "reason": "traffic at the target did not fall"}
    a = b.build(bad)
    assert a is not None and a.severity == "error"
    assert a.summary.startswith("Mitigation did not work and was rolled back: udp_flood on 203.0.113.10/32")
    assert "rules 12: reason: traffic at the target did not fall" in a.summary


def test_events_not_alerted_on() -> None:
    b = AlertBuilder(parse(CONFIG))
    assert b.build({"event": "ready", "ts": 1.0}) is None
    assert b.build({"event": "rules_adopted", "ts": 1.0, "rules": []}) is None
