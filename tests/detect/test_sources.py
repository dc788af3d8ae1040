"""Each open attack's sources, followed in bounded memory."""

from __future__ import annotations

import numpy as np

from ddos_shield.detect.sources import AttackSources
from ddos_shield.records import Attack, AttackType, Category, as_network, bytes_addr
from tests.traffic import packets, spoofed_v4


def attack(aid: int, target: str, cat: Category = Category.UDP, started: float = 10.0) -> Attack:
    t = (AttackType.UDP_FLOOD,)
    return Attack(aid, as_network(target), "default", t, (cat,), started, 1.0, 1.0, 1.0, 1.0, started)


def test_seeded_from_the_window_then_fed_new_samples_only() -> None:
    a = attack(1, "203.0.113.10/32")
    before = packets(30, src="198.51.100.9", dst="203.0.113.10", proto=17, category=Category.UDP, ts=5.0)
    during = packets(100, src="198.51.100.66", dst="203.0.113.10", proto=17, category=Category.UDP, ts=10.0)
    other = packets(50, src="198.51.100.67", dst="203.0.113.11", proto=17, category=Category.UDP, ts=10.0)
    s = AttackSources()
    s.update([a], during, np.concatenate([before, during, other]))
    first = s.summary(1)
    assert first is not None and first.records == 100  # neither the time before nor the other host
    s.update([a], during, np.concatenate([before, during, during, other]))
    second = s.summary(1)
    assert second is not None and second.records == 200
    assert [str(bytes_addr(k)) for k, _, _ in second.top[:1]] == ["198.51.100.66"]
    assert second.spoofed_share == 0.0 and second.distinct_sources == 1


def test_a_carpet_leaves_its_host_attacks_sources_out() -> None:
    carpet, host = attack(1, "203.0.113.0/24"), attack(2, "203.0.113.10/32")
    spread = packets(400, src=spoofed_v4(400), dst="203.0.113.50", proto=17, category=Category.UDP, ts=10.0)
    flood = packets(400, src="198.51.100.66", dst="203.0.113.10", proto=17, category=Category.UDP, ts=10.0)
    s = AttackSources()
    s.update([carpet, host], np.concatenate([spread, flood]), np.concatenate([spread, flood]))
    c, h = s.summary(1), s.summary(2)
    assert c is not None and h is not None
    assert c.records == 400 and c.spoofed_share > 0.9
    assert h.records == 400 and h.distinct_sources == 1


def test_ended_attacks_are_forgotten_and_the_count_is_capped() -> None:
    s = AttackSources(max_attacks=2)
    empty = packets(0, src="198.51.100.66", dst="203.0.113.10", proto=17, category=Category.UDP)
    s.update([attack(i, f"203.0.113.{i}/32") for i in range(1, 4)], empty, empty)
    assert len(s) == 2 and s.summary(3) is None
    s.update([attack(3, "203.0.113.3/32")], empty, empty)
    assert len(s) == 1 and s.summary(1) is None and s.summary(3) is not None
    assert s.nbytes < 64 * 1024
