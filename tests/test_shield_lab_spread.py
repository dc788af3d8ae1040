"""The whole shield in the lab against spread-out floods: a carpet bomb across the
victim's prefix, and a SYN flood whose every packet has its own spoofed source.

Each behaviour once, at modest rates; the memory figure with a million sources is a
benchmark (bench/spoofed.py), not an assertion here.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ddos_shield import lab
from ddos_shield.lab.attack import AttackSpec, launch
from ddos_shield.lab.client import LegitTraffic
from ddos_shield.lab.demo import LabShield, legit_sources_blocked
from ddos_shield.lab.topology import Lab

pytestmark = [pytest.mark.lab, pytest.mark.kernel]

#: a /24's sum over these is a carpet; each address's share stays far below the host limits
CARPET_CONFIG = """
[groups.carpet]
min_destinations = 16
[groups.carpet.thresholds]
udp = { pps = 4000 }
syn = { pps = 2000 }
"""


@pytest.fixture
def shield(the_lab: Lab, tmp_path: Path) -> Iterator[LabShield]:
    s = LabShield(tmp_path, extra_config=CARPET_CONFIG)
    s.start()
    try:
        yield s
    finally:
        s.stop()
        argv = ["ip", "netns", "exec", lab.NS_SHIELD, sys.executable, "-m", "ddos_shield.cli.main"]
        subprocess.run([*argv, "stop", "--detach", "--config", str(s.config_path)], capture_output=True, timeout=60)


def _finished(shield: LabShield, start: dict[str, Any], mark: int) -> tuple[list[dict[str, Any]], int]:
    """Wait for the attack to end and its rules to go; (its rules, packets they dropped)."""
    aid = start["attack_id"]
    shield.events.wait_for(lambda e: e["event"] == "attack_end" and e["attack_id"] == aid, 15, since=mark)
    applied = [e for e in shield.events.events[mark:] if e["event"] == "mitigation_applied" and e["attack_id"] == aid]
    ids = {e["rule"]["mitigation_id"] for e in applied}

    def gone(_e: dict[str, Any]) -> bool:
        removed = {
            e["rule"]["mitigation_id"] for e in shield.events.events[mark:] if e["event"] == "mitigation_removed"
        }
        return ids <= removed

    shield.events.wait_for(gone, 15, since=mark)
    removed = [
        e
        for e in shield.events.events[mark:]
        if e["event"] == "mitigation_removed" and e["rule"]["mitigation_id"] in ids
    ]
    return [e["rule"] for e in applied], sum(e.get("hits", {}).get("dropped", 0) for e in removed)


def test_carpet_bomb_across_the_prefix_is_detected_and_dropped_there(shield: LabShield) -> None:
    # spoofed UDP over the 126 addresses of 203.0.113.128/25 that the victim answers
    # for: 10 kpps in all, about 80 pps per address (the host limit is 5 kpps)
    legit = [LegitTraffic.start(family=4, rate=10.0, seconds=30), LegitTraffic.start(family=6, rate=10.0, seconds=30)]
    try:
        shield.events.poll()
        mark = len(shield.events.events)
        spec = AttackSpec(kind="udp-spoofed", family=4, pps=10000, seconds=3.0, spread=str(lab.CARPET_V4), dport=53)
        report = launch(spec).wait()
        start = shield.events.wait_for(
            lambda e: e["event"] == "attack_start" and e["target"] == str(lab.INSIDE_V4), 5, since=mark
        )
        assert start is not None, "no carpet attack on the /24"
        assert "carpet_bombing" in start["attack_types"] and "udp_flood" in start["attack_types"]
        rules, dropped = _finished(shield, start, mark)
    finally:
        results = [r for lt in legit for r in lt.results()]
        for lt in legit:
            lt.stop()
    # one attack, on the prefix: no address of it was reported on its own
    starts = [e for e in shield.events.events[mark:] if e["event"] == "attack_start"]
    assert [e["target"] for e in starts] == [str(lab.INSIDE_V4)]
    assert report.packets_sent >= 0.95 * spec.count
    # mitigated at the prefix: the rule's destination is the /24, it drops the spread
    assert rules and all(r["match"].get("dst") == str(lab.INSIDE_V4) for r in rules), rules
    assert all(r["match"].get("proto") == 17 for r in rules)
    assert dropped >= 0.7 * report.packets_sent
    # and spares the clients, who talk TCP to the victim inside the same /24
    assert legit_sources_blocked(rules) == 0
    during = [r for r in results if report.started_at <= r["ts"] <= report.ended_at + 0.5]
    assert len(during) >= 20 and sum(r["ok"] for r in during) >= 0.9 * len(during)


def test_each_packet_from_its_own_source_keeps_the_shield_bounded(shield: LabShield) -> None:
    # 200,000 SYNs over IPv6, every one from a new address of 2001:2::/48
    shield.events.poll()
    mark = len(shield.events.events)
    spec = AttackSpec(kind="syn-spoofed", family=6, pps=50000, seconds=4.0, many_sources=True, cpu=1)
    report = launch(spec).wait()
    victim = str(lab.INSIDE_V6)
    start = shield.events.wait_for(lambda e: e["event"] == "attack_start" and e["target"] == victim, 5, since=mark)
    assert start is not None
    rules, dropped = _finished(shield, start, mark)
    end = next(e for e in shield.events.events[mark:] if e["event"] == "attack_end" and e["target"] == victim)
    assert report.packets_sent >= 0.95 * spec.count
    # the shield saw a spoofed flood of about as many sources as packets...
    assert end["spoofed_share"] >= 0.9
    assert 0.5 * report.packets_sent <= end["distinct_sources"] <= 2 * report.packets_sent
    # ...while holding a bounded number of source addresses for it (the sketch's capacity)
    assert end["source_keys_held"] <= 64 + 1024
    # blocked by a fingerprint on the victim, never by a list of sources
    assert rules and all("dst" in r["match"] and r["match"]["proto"] == 6 for r in rules), rules
    for r in rules:
        assert ipaddress.ip_network(r["match"]["dst"]).subnet_of(lab.INSIDE_V6)
    assert dropped >= 0.8 * report.packets_sent
