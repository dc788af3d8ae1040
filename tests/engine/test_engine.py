"""The engine end to end over the user-space replay data plane (the kernel path is in
tests/test_shield_lab.py): detection, rule choice, refresh, expiry, events."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.mitigate.base import Backend
from ddos_shield.records import Category, Match
from tests.traffic import packets, spoofed_v4

CONFIG = """
protected = ["203.0.113.0/24", "2001:db8:113::/64"]
[shield]
interfaces = ["out0"]
interval_ms = 100
[[groups]]
name = "default"
hold_seconds = 2.0
end_after_seconds = 1.0
[groups.thresholds]
udp = { pps = 5000 }
syn = { pps = 2000 }
"""
VICTIM = "203.0.113.10"
CLIENT = "198.51.100.10"


class Harness:
    def __init__(
        self,
        config: str = CONFIG,
        *,
        state_file: Path | None = None,
        dataplane: ReplayDataPlane | None = None,
        backends: Sequence[Backend] = (),
    ) -> None:
        self.cfg = parse(config)
        self.now = 1000.0
        self.dp = dataplane or ReplayDataPlane(clock=lambda: self.now)
        self.out = io.StringIO()
        self.engine = Engine(
            self.cfg,
            self.dp,
            self.dp.backend,
            EventSink(self.out),
            clock=lambda: self.now,
            state_file=state_file,
            backends=backends,
        )
        self.engine.start(self.now)

    def run(self, seconds: float, per_tick: list[Any]) -> None:
        for _ in range(round(seconds / 0.1)):
            for make in per_tick:
                batch = make(self.now)
                self.dp.feed(batch)
            self.now += 0.1
            self.engine.tick(self.now)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        evs = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return [e for e in evs if name is None or e["event"] == name]


def legit(now: float) -> np.ndarray:
    # two HTTP exchanges per tick: SYN with options (74 bytes), then data
    return np.concatenate(
        [
            packets(2, src=CLIENT, dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=0x02, length=74, ts=now),
            packets(6, src=CLIENT, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, length=140, ts=now),
        ]
    )


def test_spoofed_udp_flood_gets_a_fingerprint_that_spares_the_client() -> None:
    h = Harness()
    srcs = spoofed_v4(5000)

    def flood(now: float) -> np.ndarray:
        return packets(
            1000,
            src=srcs,
            dst=VICTIM,
            proto=17,
            category=Category.UDP,
            sport=1234,
            dport=9,
            length=60,
            ttl=61,
            ts=now,
        )

    h.run(1.0, [legit])
    assert h.events("attack_start") == []
    h.run(2.0, [legit, flood])
    start = h.events("attack_start")
    assert [(e["target"], e["attack_types"]) for e in start] == [("203.0.113.10/32", ["udp_flood"])]
    applied = h.events("mitigation_applied")
    assert len(applied) == 1
    rule = applied[0]["rule"]
    m = Match.from_json(rule["match"])
    assert m.src is not None and m.src.subnet_of(__import__("ipaddress").ip_network("198.18.0.0/15"))
    assert (m.proto, m.dst, str(m.dport), str(m.length), str(m.ttl)) == (
        17,
        __import__("ipaddress").ip_network("203.0.113.10/32"),
        "9",
        "60",
        "61",
    )
    assert rule["attack_share"] > 0.99 and rule["collateral_share"] == 0.0
    assert applied[0]["ts"] - start[0]["ts"] <= 0.3
    # the client's traffic is untouched: nothing of it is dropped
    assert not h.dp.backend.offer(legit(h.now)).any()
    # flood stops: attack ends after end_after, rule goes after hold
    h.run(4.0, [legit])
    end = h.events("attack_end")
    removed = h.events("mitigation_removed")
    assert len(end) == 1 and len(removed) == 1
    assert removed[0]["rule"]["mitigation_id"] == rule["mitigation_id"]
    assert removed[0]["hits"]["dropped"] > 0
    assert removed[0]["ts"] - end[0]["ts"] >= 2.0 - 1e-6
    assert h.dp.backend.list() == []


def single_source_syn_flood(now: float) -> np.ndarray:
    return packets(
        400, src="198.51.100.66", dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=0x02, length=54, ts=now
    )


def test_single_source_syn_flood_is_blocked_by_source() -> None:
    h = Harness()

    h.run(1.0, [legit, single_source_syn_flood])
    rules = [e["rule"] for e in h.events("mitigation_applied")]
    assert [r["match"] for r in rules] == [{"src": "198.51.100.66/32"}]
    assert h.events("attack_start")[0]["attack_types"] == ["syn_flood"]


def test_allowlisted_source_is_never_chosen() -> None:
    h = Harness(CONFIG.replace("protected =", 'allowlist = ["198.51.100.66/32"]\nprotected ='))

    h.run(1.0, [single_source_syn_flood])
    for e in h.events("mitigation_applied"):
        assert "src" not in e["rule"]["match"] or e["rule"]["match"]["src"] != "198.51.100.66/32"


def test_pulsing_attack_is_one_attack() -> None:
    h = Harness()
    srcs = spoofed_v4(500)
    flood = lambda now: packets(1000, src=srcs, dst=VICTIM, proto=17, category=Category.UDP, ts=now)  # noqa: E731
    for _ in range(3):
        h.run(0.5, [flood])
        h.run(0.5, [])
    assert len(h.events("attack_start")) == 1
    assert len(h.events("mitigation_applied")) == 1


def test_observe_group_detects_without_rules() -> None:
    h = Harness(CONFIG.replace("hold_seconds = 2.0", 'hold_seconds = 2.0\naction = "observe"'))
    flood = lambda now: packets(1000, src=spoofed_v4(100), dst=VICTIM, proto=17, category=Category.UDP, ts=now)  # noqa: E731
    h.run(1.0, [flood])
    assert len(h.events("attack_start")) == 1
    assert h.events("mitigation_applied") == []
    assert h.events("mitigation_skipped")[0]["reason"] == "host group action is observe"


def test_ipv6_target_is_aggregated_prefix() -> None:
    h = Harness()
    flood = lambda now: packets(1000, src="2001:2::1", dst="2001:db8:113::10", proto=58, category=Category.ICMP, ts=now)  # noqa: E731
    h.run(1.0, [flood])
    assert h.events("attack_start")[0]["target"] == "2001:db8:113::/64"
    assert h.events("mitigation_applied")[0]["rule"]["match"] == {"src": "2001:2::1/128"}
