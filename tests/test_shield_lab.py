"""The whole shield in the lab: real attacks, the real kernel, the `ddos-shield run` process.

Each behaviour once, at modest rates (the matrices are in bench/shield.py).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddos_shield import lab
from ddos_shield.lab.attack import AttackSpec, launch
from ddos_shield.lab.client import LegitTraffic
from ddos_shield.lab.demo import LabShield, measure_attack
from ddos_shield.lab.netns import netns_socket
from ddos_shield.lab.topology import Lab, if_counters
from ddos_shield.records import Match

pytestmark = [pytest.mark.lab, pytest.mark.kernel]

PPS = 10000
SECONDS = 3.0


@pytest.fixture
def legit(the_lab: Lab) -> Iterator[list[LegitTraffic]]:
    lt = [LegitTraffic.start(family=4, rate=10.0, seconds=120), LegitTraffic.start(family=6, rate=10.0, seconds=120)]
    try:
        yield lt
    finally:
        for x in lt:
            x.stop()


@pytest.fixture
def shield(the_lab: Lab, tmp_path: Path) -> Iterator[LabShield]:
    s = LabShield(tmp_path)
    s.start()
    try:
        yield s
    finally:
        s.stop()
        _cli("stop", "--detach", "--config", str(s.config_path))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", lab.NS_SHIELD, sys.executable, "-m", "ddos_shield.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _assert_served(r: object) -> None:
    ok, n = r.legit_ok, r.legit_requests  # type: ignore[attr-defined]
    assert n >= 20
    assert ok / n >= 0.9, f"legitimate requests: {ok}/{n}"
    assert r.legit_sources_blocked == 0  # type: ignore[attr-defined]


def test_single_source_syn_flood_is_blocked_by_source(shield: LabShield, legit: list[LegitTraffic]) -> None:
    r = measure_attack(shield, legit, AttackSpec(kind="syn", family=4, pps=PPS, seconds=SECONDS))
    assert r.detected and r.attack_types == ["syn_flood"]
    assert [rule["match"] for rule in r.rules] == [{"src": f"{lab.ATTACKER_V4}/32"}]
    assert r.time_to_mitigate_ms is not None
    assert r.attack_packets_dropped >= 0.8 * r.attack_packets_sent
    _assert_served(r)
    # rule expiry: withdrawn a hold time after the attack ended, and gone from the kernel
    removed = [e for e in shield.events.events if e["event"] == "mitigation_removed"]
    assert {e["rule"]["mitigation_id"] for e in removed} >= {rule["mitigation_id"] for rule in r.rules}


def test_spoofed_udp_flood_is_blocked_by_fingerprint_v6(shield: LabShield, legit: list[LegitTraffic]) -> None:
    r = measure_attack(shield, legit, AttackSpec(kind="udp-spoofed", family=6, pps=PPS, seconds=SECONDS))
    assert r.detected and r.attack_types == ["udp_flood"]
    assert len(r.rules) == 1
    m = Match.from_json(r.rules[0]["match"])
    assert m.proto == 17 and m.dst is not None and lab.VICTIM_V6 in m.dst
    assert m.src is None or m.src.subnet_of(lab.SPOOF_V6)  # type: ignore[arg-type]
    assert r.attack_packets_dropped >= 0.8 * r.attack_packets_sent
    _assert_served(r)


@pytest.mark.parametrize(("kind", "family", "types"), [("icmp", 6, ["icmp_flood"]), ("frag", 4, ["fragment_flood"])])
def test_other_floods_are_classified_and_mitigated(
    shield: LabShield, legit: list[LegitTraffic], kind: str, family: int, types: list[str]
) -> None:
    r = measure_attack(shield, legit, AttackSpec(kind=kind, family=family, pps=PPS, seconds=SECONDS))
    assert r.detected and r.attack_types == types
    assert r.rules and r.attack_packets_dropped >= 0.7 * r.attack_packets_sent
    _assert_served(r)


def test_allowlisted_source_is_never_dropped(the_lab: Lab, tmp_path: Path) -> None:
    s = LabShield(tmp_path, allowlist=[f"{lab.ATTACKER_V4}/32"])
    s.start()
    try:
        r = measure_attack(s, [], AttackSpec(kind="syn", family=4, pps=PPS, seconds=2.0))
        assert r.detected
        assert r.rules == []
        assert r.attack_packets_dropped == 0
        assert any(e["event"] == "mitigation_skipped" for e in s.events.events)
    finally:
        s.stop()
        _cli("stop", "--detach", "--config", str(s.config_path))


def test_rules_outlive_a_killed_shield_and_are_adopted(the_lab: Lab, tmp_path: Path) -> None:
    s = LabShield(tmp_path, hold_seconds=30.0)
    s.start()
    try:
        running = launch(AttackSpec(kind="syn", family=4, pps=PPS, seconds=2.0))
        applied = s.events.wait_for(lambda e: e["event"] == "mitigation_applied", 10)
        running.wait()
        assert applied is not None
        rule_id = applied["rule"]["mitigation_id"]
        s.kill()
        # the kernel keeps enforcing without any control process
        before = if_counters(lab.NS_VICTIM, lab.VICTIM_IF)["rx_packets"]
        report = launch(AttackSpec(kind="syn", family=4, pps=2000, seconds=1.0)).wait()
        after = if_counters(lab.NS_VICTIM, lab.VICTIM_IF)["rx_packets"]
        assert report.packets_sent >= 1900
        assert after - before < 0.1 * report.packets_sent
        # a new shield adopts the rule with the same id
        (tmp_path / "second").mkdir()
        s2 = LabShield(tmp_path / "second", hold_seconds=30.0)
        s2.start()
        adopted = s2.events.wait_for(lambda e: e["event"] == "rules_adopted", 5)
        assert adopted is not None
        assert rule_id in [r["mitigation_id"] for r in adopted["rules"]]
        s2.stop()
    finally:
        s.stop()
        _cli("stop", "--detach", "--config", str(s.config_path))


def test_kill_switch_passes_everything(shield: LabShield) -> None:
    # Five CLI round trips (each a new Python process in the shield's namespace, and
    # `bypass` also asks a BGP speaker's bridge) take seconds on a loaded machine: the
    # flood is bounded well past them and stopped as soon as the checks are done, so
    # that the next test finds the lab free whatever happens here.
    running = launch(AttackSpec(kind="syn", family=4, pps=PPS, seconds=40.0))
    try:
        assert shield.events.wait_for(lambda e: e["event"] == "mitigation_applied", 10) is not None
        on = _cli("bypass", "on", "--config", str(shield.config_path))
        assert on.returncode == 0, on.stderr
        time.sleep(0.5)
        s0 = _xdp_stats(shield)
        time.sleep(1.0)
        s1 = _xdp_stats(shield)
        assert s1["dropped"] == s0["dropped"]
        assert s1["bypass"] > s0["bypass"]
        off = _cli("bypass", "off", "--config", str(shield.config_path))
        assert off.returncode == 0, off.stderr
        deadline = time.monotonic() + 10.0  # a bound, not a speed claim
        while (s2 := _xdp_stats(shield))["dropped"] == s1["dropped"] and time.monotonic() < deadline:
            assert running.running, "the flood ended before the kill switch was off again"
            time.sleep(0.5)
        assert s2["dropped"] > s1["dropped"]
        # the step was not judged by what went through while everything passed
        shield.events.poll()
        assert not [e for e in shield.events.events if e["event"] == "mitigation_verified" and not e["ok"]]
    finally:
        running.stop()


def test_nftables_fallback_mitigates(the_lab: Lab, tmp_path: Path, legit: list[LegitTraffic]) -> None:
    s = LabShield(tmp_path, dataplane="nftables")
    ready = s.start()
    try:
        assert ready["dataplane"] == "nftables"
        r = measure_attack(s, legit, AttackSpec(kind="syn", family=4, pps=5000, seconds=SECONDS))
        assert r.detected and [rule["match"] for rule in r.rules] == [{"src": f"{lab.ATTACKER_V4}/32"}]
        assert r.attack_packets_dropped >= 0.7 * r.attack_packets_sent
        _assert_served(r)
    finally:
        s.stop()
        _cli("stop", "--detach", "--config", str(s.config_path))


def _xdp_stats(shield: LabShield) -> dict[str, int]:
    import json

    out = _cli("status", "--json", "--config", str(shield.config_path))
    assert out.returncode == 0, out.stderr
    stats: dict[str, int] = json.loads(out.stdout)["dataplane"]
    return stats


NETFLOW_SOURCE = """
[[sources]]
type = "netflow"
listen = "127.0.0.1:2055"
exporters = ["127.0.0.1"]
"""


def _netflow_v5(records: list[tuple[str, str, int, int]], seq: int) -> bytes:
    """A NetFlow v5 datagram: (src, dst, packets, bytes) UDP flows to port 53."""
    head = struct.pack("!HHIIIIBBH", 5, len(records), 1000, int(time.time()), 0, seq, 0, 0, 0)
    body = b"".join(
        struct.pack(
            "!4s4s4sHHIIIIHHBBBBHHBBH",
            socket.inet_aton(src),
            socket.inet_aton(dst),
            b"\0" * 4,
            0,
            0,
            pk,
            by,
            0,
            1000,
            40000,
            53,
            0,
            0,
            17,
            0,
            0,
            0,
            0,
            0,
            0,
        )
        for src, dst, pk, by in records
    )
    return head + body


def test_xdp_and_a_flow_collector_at_once(the_lab: Lab, tmp_path: Path) -> None:
    """One shield, two sources: a flood seen only through NetFlow is detected and the
    rule is enforced by the XDP data plane."""
    s = LabShield(tmp_path, extra_config=NETFLOW_SOURCE)
    ready = s.start()
    try:
        assert ready["dataplane"] == "xdp" and ready["sources"] == ["netflow"]
        target = "203.0.113.20"
        sock = netns_socket(lab.NS_SHIELD, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            # 3 s of a 20 k pps spoofed UDP flood, exported once every 100 ms
            for i in range(30):
                recs = [(f"198.18.{i}.{j + 1}", target, 100, 6000) for j in range(20)]
                sock.sendto(_netflow_v5(recs, i * 20), ("127.0.0.1", 2055))
                time.sleep(0.1)
        start = s.events.wait_for(lambda e: e["event"] == "attack_start" and e["target"] == f"{target}/32", 5)
        assert start is not None and start["attack_types"] == ["udp_flood"]
        applied = s.events.wait_for(lambda e: e["event"] == "mitigation_applied", 5)
        assert applied is not None and applied["backend"] == "xdp"
        assert applied["rule"]["match"]["dst"] == f"{target}/32"
        assert "ttl" not in applied["rule"]["match"]  # flows carry no TTL
    finally:
        s.stop()
        _cli("stop", "--detach", "--config", str(s.config_path))
