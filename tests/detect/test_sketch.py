"""Bounded-memory source sketches: accuracy within their stated bounds, memory fixed."""

from __future__ import annotations

import numpy as np
import pytest

from ddos_shield.detect.sketch import (
    CountMin,
    DistinctSample,
    HeavyHitters,
    HyperLogLog,
    SourceSketch,
    hash_keys,
    heavy_rows,
    thin,
)
from ddos_shield.records import addr_bytes, bytes_addr
from tests.traffic import packets


def v6_sources(start: int, n: int) -> np.ndarray:
    """``n`` distinct addresses in 2001:2::/48, numbered from ``start``."""
    keys = np.zeros((n, 16), dtype=np.uint8)
    keys[:, :4] = [0x20, 0x01, 0x00, 0x02]
    keys[:, 8:] = (np.arange(start, start + n, dtype=np.uint64)).astype(">u8").view(np.uint8).reshape(n, 8)
    return keys


def one(addr: str, n: int) -> np.ndarray:
    return np.repeat(np.frombuffer(addr_bytes(addr), dtype=np.uint8)[None, :], n, axis=0)


# ---- hashing ---------------------------------------------------------------------------------


def test_hash_is_deterministic_and_spreads() -> None:
    keys = v6_sources(0, 10000)
    h = hash_keys(keys)
    assert np.array_equal(h, hash_keys(keys.copy()))
    assert len(np.unique(h)) == 10000
    # the top bits (HyperLogLog's register index) are spread evenly
    counts = np.bincount((h >> np.uint64(60)).astype(int), minlength=16)
    assert counts.min() > 500


def test_hash_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match="keys"):
        hash_keys(np.zeros((3, 4), dtype=np.uint8))


# ---- HyperLogLog -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 1000, 50_000, 1_000_000])
def test_hll_counts_within_its_error(n: int) -> None:
    h = HyperLogLog(12)
    for lo in range(0, n, 100_000):  # in batches, as the engine feeds it
        h.add(v6_sources(lo, min(100_000, n - lo)))
    # 1.04/sqrt(4096) = 1.6 %; allow four standard errors
    assert h.count() == pytest.approx(n, rel=0.065)
    assert h.nbytes == 4096


def test_hll_ignores_repeats_and_merges() -> None:
    a, b = HyperLogLog(12), HyperLogLog(12)
    a.add(np.concatenate([v6_sources(0, 5000)] * 3))
    b.add(v6_sources(2500, 5000))
    a.merge(b)
    assert a.count() == pytest.approx(7500, rel=0.065)
    with pytest.raises(ValueError, match="merge"):
        a.merge(HyperLogLog(11))


# ---- count-min ---------------------------------------------------------------------------------


def test_count_min_overestimates_within_its_bound() -> None:
    cm = CountMin(width=2048, depth=4)
    keys = np.concatenate([one("198.51.100.66", 5000), v6_sources(0, 200_000)])
    cm.add(keys)
    est = cm.estimate(np.concatenate([one("198.51.100.66", 1), v6_sources(0, 1000)]))
    assert est[0] >= 5000 and est[0] <= 5000 + np.e / 2048 * cm.total
    assert (est[1:] >= 1).all()
    # at most a few in a hundred exceed the bound e/width of the total
    assert np.mean(est[1:] - 1 > np.e / 2048 * cm.total) < 0.05


def test_heavy_rows_keep_every_heavy_source() -> None:
    keys = np.concatenate([v6_sources(0, 100_000), one("198.51.100.66", 3000), one("198.51.100.67", 1500)])
    rows = heavy_rows(keys, None, 0.01)
    held = {str(bytes_addr(k)) for k in keys[rows]}
    assert {"198.51.100.66", "198.51.100.67"} <= held
    assert rows.sum() < 4500 + 100  # nearly none of the spoofed rows


# ---- Misra-Gries -------------------------------------------------------------------------------


def test_heavy_hitters_found_among_a_million_spoofed_sources() -> None:
    hh = HeavyHitters(k=64)
    rng = np.random.default_rng(0)
    for lo in range(0, 1_000_000, 100_000):
        batch = np.concatenate([v6_sources(lo, 100_000), one("198.51.100.66", 4000), one("198.51.100.67", 2000)])
        hh.add(batch[rng.permutation(len(batch))])
        assert len(hh.keys) <= 64  # bounded after every batch
    top = hh.top(2)
    assert [str(bytes_addr(k)) for k, _, _ in top] == ["198.51.100.66", "198.51.100.67"]
    bound = hh.total / 65
    assert hh.error <= bound
    for (_, lo, hi), true in zip(top, (40_000, 20_000), strict=True):
        assert lo <= true <= hi and true - lo <= bound


def test_heavy_hitters_are_exact_with_few_keys() -> None:
    hh = HeavyHitters(k=8)
    hh.add(np.concatenate([one("192.0.2.1", 3), one("192.0.2.2", 1)]), np.array([1.0, 1, 1, 5]))
    assert [(str(bytes_addr(k)), lo, hi) for k, lo, hi in hh.top(5)] == [("192.0.2.2", 5, 5), ("192.0.2.1", 3, 3)]


# ---- distinct sample ---------------------------------------------------------------------------


def test_distinct_sample_is_exact_while_small() -> None:
    s = DistinctSample(k=100)
    s.add(np.concatenate([v6_sources(0, 50), v6_sources(0, 10)]))
    assert len(s.keys) == 50 and s.scale() == 1.0
    assert sorted(s.records.tolist()) == [1] * 40 + [2] * 10


def test_distinct_sample_counts_are_exact_for_held_keys() -> None:
    s = DistinctSample(k=256)
    keys = v6_sources(0, 20_000)
    for _ in range(3):  # each key three times, in three batches
        s.add(keys)
    assert len(s.keys) == 256 and (s.records == 3).all()
    assert s.scale() * 256 == pytest.approx(20_000, rel=0.2)


# ---- the combined sketch ---------------------------------------------------------------------


def test_spoofed_flood_reads_as_spoofed_and_memory_stays_fixed() -> None:
    s = SourceSketch()
    sizes = []
    for lo in range(0, 1_000_000, 200_000):
        s.add(v6_sources(lo, 200_000))
        sizes.append(s.nbytes)
    summary = s.summary()
    assert len(set(sizes)) == 1 and sizes[0] < 64 * 1024
    assert summary.held_keys <= 64 + 1024
    assert summary.distinct_seen == pytest.approx(1_000_000, rel=0.065)
    assert summary.spoofed_share == pytest.approx(1.0, abs=0.1)


def test_few_repeating_sources_read_as_not_spoofed() -> None:
    s = SourceSketch()
    s.add(np.concatenate([one("198.51.100.66", 600), one("198.51.100.67", 400)]))
    summary = s.summary()
    assert (summary.distinct_seen, summary.distinct_sources, summary.spoofed_share) == (2, 2, 0.0)
    assert summary.to_json()["top_sources"] == [
        {"address": "198.51.100.66", "packets": 600, "share": 0.6},
        {"address": "198.51.100.67", "packets": 400, "share": 0.4},
    ]


def test_sampled_spoofed_records_stand_for_many_sources() -> None:
    s = SourceSketch()
    s.add(v6_sources(0, 2000), np.full(2000, 100.0))  # 1-in-100 samples of a spoofed flood
    summary = s.summary()
    assert summary.distinct_seen == pytest.approx(2000, rel=0.065)
    assert summary.distinct_sources == pytest.approx(200_000, rel=0.1)
    assert summary.spoofed_share == pytest.approx(1.0, abs=0.1)
    small = SourceSketch()
    small.add(v6_sources(0, 500), np.full(500, 100.0))  # fewer than the sample holds: exact
    assert (small.summary().distinct_seen, small.summary().distinct_sources) == (500, 50_000)


def test_mixed_flood_share() -> None:
    s = SourceSketch()
    s.add(np.concatenate([v6_sources(0, 50_000), one("198.51.100.66", 50_000)]))
    summary = s.summary()
    assert summary.spoofed_share == pytest.approx(0.5, abs=0.1)
    assert str(bytes_addr(summary.top[0][0])) == "198.51.100.66"


# ---- thinning ------------------------------------------------------------------------------------


def test_thin_keeps_sums_and_bounds_rows() -> None:
    b = packets(10_000, src="198.51.100.66", dst="203.0.113.10", proto=17, category=2)
    out = thin(b, 1000)
    assert len(out) == 1000
    assert int(out["packets"].sum()) == 10_000 and int(out["bytes"].sum()) == 600_000
    assert (out["sample_rate"] == 10).all()
    assert thin(b, 20_000) is b
    with pytest.raises(ValueError, match="max_rows"):
        thin(b, 0)
