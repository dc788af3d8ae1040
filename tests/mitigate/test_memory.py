"""The in-memory backend's rate limits on hand-made traffic batches (the reference the
kernel backends are held to; their own tests send real packets)."""

from __future__ import annotations

import numpy as np

from ddos_shield.mitigate.memory import SOURCE_IDLE_SECONDS, MemoryBackend
from ddos_shield.records import Action, Match, Rule, TrafficBatch, addr_bytes, bytes_addr, empty_traffic


def _batch(rows: list[tuple[float, str]]) -> TrafficBatch:
    rows = sorted(rows)
    b = empty_traffic(len(rows))
    b["proto"], b["packets"], b["ts"] = 17, 1, [t for t, _ in rows]
    for i, (_, src) in enumerate(rows):
        b["src"][i] = np.frombuffer(addr_bytes(src), np.uint8)
    return b


def _passed(backend: MemoryBackend, batch: TrafficBatch, chunk: int = 100) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in range(0, len(batch), chunk):
        part = batch[k : k + chunk]
        kept = part[~backend.offer(part)]
        for s in kept["src"]:
            a = str(bytes_addr(s))
            out[a] = out.get(a, 0) + 1
    return out


# 3 s: a heavy source at 1,000 pps and a light one at 50 pps, per family
HEAVY_AND_LIGHT = [(i / 1000, "198.18.0.1") for i in range(3000)] + [(i / 50, "198.18.0.2") for i in range(150)]
HEAVY_AND_LIGHT += [(i / 1000, "2001:2::1") for i in range(3000)] + [(i / 50, "2001:2::2") for i in range(150)]


def test_per_source_limit_cuts_each_heavy_source_and_spares_the_light_ones() -> None:
    b = MemoryBackend(clock=lambda: 0.0)
    rule = b.apply(Rule(Match(proto=17), Action.RATE_LIMIT, 1e9, rate_pps=100, per_source=True))
    got = _passed(b, _batch(HEAVY_AND_LIGHT))
    assert got["198.18.0.2"] == got["2001:2::2"] == 150
    for heavy in ("198.18.0.1", "2001:2::1"):
        assert 300 <= got[heavy] <= 311  # the rate for 3 s, plus one burst of a tenth of it
    st = b.stats()[rule.rule_id]
    assert (st.packets, st.dropped) == (6300, 6300 - sum(got.values()))


def test_an_aggregate_limit_on_the_same_traffic_starves_the_light_sources() -> None:
    b = MemoryBackend(clock=lambda: 0.0)
    b.apply(Rule(Match(proto=17), Action.RATE_LIMIT, 1e9, rate_pps=100))
    got = _passed(b, _batch(HEAVY_AND_LIGHT))
    assert sum(got.values()) <= 311
    assert got.get("198.18.0.2", 0) < 150 / 4


def test_an_idle_source_starts_again_with_a_full_bucket() -> None:
    b = MemoryBackend(clock=lambda: 0.0)
    b.apply(Rule(Match(proto=17), Action.RATE_LIMIT, 1e9, rate_pps=100, per_source=True))
    burst = [(0.0, "198.18.0.1")] * 50
    assert _passed(b, _batch(burst)) == {"198.18.0.1": 10}
    later = [(SOURCE_IDLE_SECONDS + 1.0, "198.18.0.1")] * 50
    assert _passed(b, _batch(later)) == {"198.18.0.1": 10}
