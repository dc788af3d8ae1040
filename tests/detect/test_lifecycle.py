"""Lifecycle: start, update with peaks and types, end with hysteresis; a pulsing attack
is one attack.  Rates go through the real threshold detector, as in the engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ddos_shield.config import parse
from ddos_shield.detect.lifecycle import AttackChange, AttackTracker
from ddos_shield.detect.threshold import ThresholdDetector
from ddos_shield.records import Category, RateBatch, addr_bytes, empty_rates

CONFIG = """
protected = ["203.0.113.0/24"]
[[groups]]
name = "default"
exit_ratio = 0.5
[groups.thresholds]
udp = { pps = 10000 }
syn = { pps = 10000 }
"""
VICTIM = "203.0.113.10"


def rates(udp: float, syn: float = 0.0) -> RateBatch:
    r = empty_rates(1)
    r["dst"][0] = list(addr_bytes(VICTIM))
    r["pps"][0, Category.UDP] = udp
    r["pps"][0, Category.TCP_SYN] = syn
    return r


T0 = 1000.0


def run(profile: Callable[[float], tuple[float, float]], seconds: float, config: str = CONFIG) -> list[AttackChange]:
    """Ticks of 0.1 s; ``profile(t)`` gives (UDP, SYN) pps at ``t`` seconds from the start."""
    cfg = parse(config)
    det, tracker = ThresholdDetector(cfg), AttackTracker(cfg)
    out: list[AttackChange] = []
    for i in range(round(seconds / 0.1)):
        now = T0 + i * 0.1
        active = {a.target for a in tracker.active}
        for ch in tracker.update(det.observe(rates(*profile(now - T0)), now, active), now):
            out.append(ch)
            ENDED_AT[ch.attack.attack_id] = now
    return out


ENDED_AT: dict[int, float] = {}


def kinds(changes: list[AttackChange]) -> list[str]:
    return [c.kind for c in changes if c.kind != "update"]


def test_a_dip_under_the_entry_threshold_does_not_end_it() -> None:
    # 3 s at 12k, 20 s at 6k (under 10k, over the 5k exit), then 3k: ends 10 s later
    def profile(t: float) -> tuple[float, float]:
        return (12_000.0 if t < 3 else 6000.0 if t < 23 else 3000.0, 0.0)

    ch = run(profile, 40)
    assert kinds(ch) == ["start", "end"]
    end = ch[-1]
    assert end.attack.last_seen - end.attack.started > 22
    assert end.attack.peak_pps == 12_000


def test_a_pulsing_attack_is_one_attack() -> None:
    # on 2 s, off 6 s, four times: one attack, which ends twice the longest quiet spell
    # (12 s) after the last pulse
    def profile(t: float) -> tuple[float, float]:
        return (20_000.0 if t < 32 and t % 8 < 2 else 0.0, 0.0)

    ch = run(profile, 50)
    assert kinds(ch) == ["start", "end"]
    end = ch[-1].attack
    assert 5.9 < end.longest_gap < 6.3
    assert end.last_seen - T0 < 26  # the last pulse: 24 to 26 s
    assert ENDED_AT[end.attack_id] - end.last_seen == pytest.approx(2 * end.longest_gap, abs=0.11)


def test_quiet_spells_longer_than_twice_end_after_split_attacks() -> None:
    def profile(t: float) -> tuple[float, float]:
        return (20_000.0 if t < 2 or 30 <= t < 32 else 0.0, 0.0)

    assert kinds(run(profile, 50)) == ["start", "end", "start", "end"]


def test_updates_carry_peaks_and_every_type_seen() -> None:
    def profile(t: float) -> tuple[float, float]:
        return (15_000.0 + 1000 * t if t < 5 else 0.0, 30_000.0 if 2 <= t < 4 else 0.0)

    ch = run(profile, 20)
    ups = [c for c in ch if c.kind == "update"]
    assert ups and [t.value for t in ups[-1].attack.types] == ["syn_flood", "udp_flood"]
    end = ch[-1]
    assert end.kind == "end" and end.attack.pps == 0
    assert 48_000 < end.attack.peak_pps <= 50_000  # SYN 30k + UDP 15k + ~3k growth at the peak
