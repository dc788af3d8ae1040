"""The engine end to end over the user-space replay data plane (the kernel path is in
tests/test_shield_lab.py): detection, rule choice, refresh, expiry, events."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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
        baseline_file: Path | None = None,
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
            baseline_file=baseline_file,
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


# ---- carpet bombing and spoofed sources ---------------------------------------------------------

CARPET = CONFIG.replace(
    "syn = { pps = 2000 }", "syn = { pps = 2000 }\n[groups.carpet.thresholds]\nudp = { pps = 10000 }"
)


def carpet_flood(now: float) -> np.ndarray:
    """2,000 spoofed UDP packets per tick (20 kpps) over 203.0.113.20-219: 100 pps each."""
    rng = np.random.default_rng(int(now * 10))
    b = packets(2000, src="198.18.0.1", dst=VICTIM, proto=17, category=Category.UDP, dport=53, length=90, ts=now)
    b["dst"][:, 15] = rng.integers(20, 220, 2000)
    b["src"][:, 13:] = rng.integers(0, 256, (2000, 3))
    b["src"][:, 13] = 18 + b["src"][:, 13] % 2  # 198.18.0.0/15
    return b


def test_carpet_bomb_is_one_prefix_attack_beside_a_host_attack() -> None:
    h = Harness(CARPET)
    host = lambda now: packets(800, src="198.51.100.66", dst=VICTIM, proto=17, category=Category.UDP, ts=now)  # noqa: E731
    h.run(1.5, [legit, host, carpet_flood])
    starts = {e["target"]: e for e in h.events("attack_start")}
    assert set(starts) == {"203.0.113.10/32", "203.0.113.0/24"}
    assert starts["203.0.113.0/24"]["attack_types"] == ["udp_flood", "carpet_bombing"]
    assert starts["203.0.113.10/32"]["attack_types"] == ["udp_flood"]
    # the host flood is the host's attack: the carpet's rate is the spread's alone
    update = [e for e in h.events("attack_update") if e["target"] == "203.0.113.0/24"][-1]
    assert 15000 <= update["pps"] <= 25000
    assert update["spoofed_share"] > 0.8 and update["distinct_sources"] > 1000
    rules = {e["target"]: e["rule"] for e in h.events("mitigation_applied")}
    assert rules["203.0.113.0/24"]["match"]["dst"] == "203.0.113.0/24"
    # built from the spread's own samples: the host flood's (other source, port) take no part
    assert rules["203.0.113.0/24"]["match"]["proto"] == 17 and rules["203.0.113.0/24"]["match"]["dport"]["min"] == 53
    assert rules["203.0.113.0/24"]["match"]["src"] == "198.18.0.0/15"
    assert rules["203.0.113.10/32"]["match"] == {"src": "198.51.100.66/32"}
    # the prefix rule drops the carpet, and the engine's state stays bounded
    assert h.dp.global_stats()["dropped"] > 0
    assert len(h.engine.attack_sources) == 2 and h.engine.attack_sources.held_keys <= 2 * (64 + 1024)


def test_sample_window_is_bounded(monkeypatch: Any) -> None:
    import ddos_shield.engine as engine_mod

    monkeypatch.setattr(engine_mod, "WINDOW_MAX_ROWS", 1000)
    h = Harness(CARPET)
    h.engine._sample_every = 1  # keep every packet: flows arrive unsampled
    h.dp.set_sample_every(1)
    monkeypatch.setattr(h.engine, "_adapt_sampling", lambda rates: None)
    h.run(1.0, [carpet_flood])
    held = len(h.engine._window)
    assert held <= 1000
    sampled = int(h.engine._window.view()["packets"].sum())
    assert sampled == pytest.approx(2000 * 10, rel=0.05)  # thinned rows stand for all the packets


BASELINE_CONFIG = (
    CONFIG
    + """
[baseline]
learning_seconds = 5
adapt_seconds = 60
"""
)


def test_baselines_detect_under_the_static_limit_and_outlive_a_restart(tmp_path: Path) -> None:
    f = tmp_path / "baselines.npz"
    h = Harness(BASELINE_CONFIG, baseline_file=f)
    h.run(8, [legit])  # 20 SYN/s learned
    assert h.engine.snapshot()["baseline"]["learned"] == 1
    assert h.events("attack_start") == []

    def syn_flood(now: float) -> np.ndarray:  # 1,500 SYN/s: under the static 2,000, over the floor of 1,000
        return packets(150, src=spoofed_v4(150), dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=2, ts=now)

    h.run(2, [legit, syn_flood])
    [start] = h.events("attack_start")
    assert start["basis"] == "baseline" and start["attack_types"] == ["syn_flood"]
    # the live view's footer counts them
    from rich.console import Console

    from ddos_shield.cli.live import render

    console = Console(width=200, record=True)
    console.print(render(h.engine.snapshot(), now=h.now))
    assert "baselines 1 learned 0 learning" in console.export_text()
    h.engine.close()  # stores the baselines
    h2 = Harness(BASELINE_CONFIG, baseline_file=f)
    [loaded] = h2.events("baseline_loaded")
    assert loaded["learned"] == 1 and loaded["destinations"] == 1
    # a file this shield cannot read is set aside, and learning starts afresh
    f.write_bytes(b"not a baseline")
    h3 = Harness(BASELINE_CONFIG, baseline_file=f)
    [refused] = h3.events("baseline_refused")
    assert "not a baseline file" in refused["reason"] and Path(refused["kept_as"]).read_bytes() == b"not a baseline"
    assert h3.engine.snapshot()["baseline"]["destinations"] == 0
