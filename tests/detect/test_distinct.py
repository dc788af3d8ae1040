"""The bounds that let the scan and connection detectors skip their exact counts:
counts against a dictionary, address sorting against numpy's, and the detectors with
and without the bound giving the same findings tick by tick."""

from __future__ import annotations

import numpy as np
import pytest

from ddos_shield.config import parse
from ddos_shield.detect.connections import ConnectionDetector
from ddos_shield.detect.distinct import AddressIds, DistinctWindow, group_hash, unique_addresses
from ddos_shield.detect.scan import ScanDetector
from ddos_shield.records import Category, TrafficBatch, addr_bytes, empty_traffic

CFG = parse(
    'protected = ["203.0.113.0/24", "2001:db8:113::/64"]\n'
    "[classification]\nscan_min_ports = 20\nsweep_min_hosts = 20\nconnection_min_flows = 20\n"
    "connection_flood_min_rate = 1\n"
)


def test_distinct_items_per_group_against_a_dictionary() -> None:
    rng = np.random.default_rng(1)
    w = DistinctWindow()
    seen: dict[tuple[int, int], float] = {}
    for step in range(60):
        n = int(rng.integers(0, 400))
        groups = rng.integers(0, 30, n).astype(np.uint64)
        items = rng.integers(0, 1 << 16, n).astype(np.uint64) % np.uint64(50 + step)
        ts = step + rng.random(n)
        w.add((groups << np.uint64(16)) | items, ts)
        for g, i, t in zip(groups.tolist(), items.tolist(), ts.tolist(), strict=True):
            seen[(g, i)] = max(seen.get((g, i), -1.0), t)
        if step % 5 == 4:
            horizon = step - 10.0
            counts: dict[int, int] = {}
            for (g, _), t in seen.items():
                if t >= horizon:
                    counts[g] = counts.get(g, 0) + 1
            assert w.max_per_group(horizon, 16) == max(counts.values(), default=0)


def _addresses(rng: np.random.Generator, n: int, v6_share: float) -> np.ndarray:
    col = np.zeros((n, 16), dtype=np.uint8)
    v6 = rng.random(n) < v6_share
    col[~v6] = np.frombuffer(addr_bytes("0.0.0.0"), dtype=np.uint8)
    col[~v6, 14:] = rng.integers(0, 6, (int((~v6).sum()), 2))
    col[v6, :2] = (0x20, 0x01)
    col[v6, 8:] = rng.integers(0, 3, (int(v6.sum()), 8))
    return col


@pytest.mark.parametrize("v6_share", [0.0, 0.3, 1.0])
def test_unique_addresses_is_numpys_unique(v6_share: float) -> None:
    rng = np.random.default_rng(2)
    for n in (1, 2, 50, 5000):
        col = _addresses(rng, n, v6_share)
        want, inv = np.unique(np.ascontiguousarray(col).view("V16").ravel(), return_inverse=True)
        got, got_inv = unique_addresses(col)
        assert np.array_equal(got, want) and np.array_equal(got_inv, inv.ravel())


def test_address_numbers_are_exact_and_restart_past_the_limit() -> None:
    ids = AddressIds(limit=4)
    a = np.frombuffer(addr_bytes("203.0.113.1") + addr_bytes("203.0.113.2") + addr_bytes("203.0.113.1"), np.uint8)
    assert ids.ids(a.reshape(3, 16)).tolist() == [0, 1, 0] and ids.generation == 0
    more = np.frombuffer(b"".join(addr_bytes(f"203.0.113.{i}") for i in range(3, 7)), np.uint8).reshape(4, 16)
    assert ids.ids(more).tolist() == [0, 1, 2, 3] and ids.generation == 1


def test_group_hash_is_a_function_of_the_row() -> None:
    a = np.array([1, 2, 1], dtype=np.uint64)
    b = np.array([5, 5, 5], dtype=np.uint64)
    h = group_hash(a, b)
    assert h[0] == h[2] != h[1]


# ---- the detectors: the same findings with the bound as with the exact count every time ----


def _traffic(rng: np.random.Generator, t: float, n: int) -> TrafficBatch:
    """Probes and connections of a few busy sources (scanning, sweeping, holding many
    connections) among many one-packet ones."""
    b = empty_traffic(n)
    b["ts"] = t + rng.random(n) * 0.1
    src = rng.integers(0, 10, n)
    busy = src < 3
    src = np.where(rng.random(n) < 0.5, src, 1000 + rng.integers(0, 1 << 16, n))
    b["src"] = np.frombuffer(addr_bytes("198.18.0.0"), np.uint8)
    b["src"][:, 12:] = (src.astype(">u4")).view(np.uint8).reshape(n, 4) | np.array([198, 18, 0, 0], np.uint8)
    host = np.where(busy & (rng.random(n) < 0.5), rng.integers(0, 40, n), rng.integers(0, 3, n))
    b["dst"] = np.frombuffer(addr_bytes("203.0.113.0"), np.uint8)
    b["dst"][:, 15] = host
    v6 = rng.random(n) < 0.2
    b["dst"][v6] = np.frombuffer(addr_bytes("2001:db8:113::"), np.uint8)
    b["dst"][v6, 15] = host[v6]
    b["proto"] = np.where(rng.random(n) < 0.8, 6, 17)
    b["sport"] = np.where(busy, rng.integers(1024, 1200, n), rng.integers(1024, 65535, n))
    b["dport"] = np.where(busy, rng.integers(1, 60, n), 80)
    sweeper = src == 3  # one port across many hosts
    b["dport"][sweeper] = 22
    b["dst"][sweeper & ~v6, 15] = rng.integers(0, 40, int((sweeper & ~v6).sum()))
    syn = rng.random(n) < 0.5
    b["tcp_flags"] = np.where(b["proto"] == 6, np.where(syn, 0x02, 0x10), 0)
    b["category"] = np.where(b["proto"] == 6, np.where(syn, Category.TCP_SYN, Category.TCP), Category.UDP)
    b["packets"] = 1
    b["bytes"] = 60
    return b


@pytest.mark.parametrize("detector", [ScanDetector, ConnectionDetector])
def test_findings_with_the_bound_equal_the_exact_ones(detector: type[ScanDetector] | type[ConnectionDetector]) -> None:
    rng = np.random.default_rng(4)
    bounded, exact = detector(CFG), detector(CFG)
    found = 0
    kinds: set[object] = set()
    for tick in range(300):
        now = tick * 0.1
        # busy sources come and go, so counts rise past the thresholds and fall back
        n = int(rng.integers(0, 150)) if (tick // 50) % 2 else int(rng.integers(0, 8))
        b = _traffic(rng, now - 0.1, n)
        exact._exact_until = float("inf")  # never skips the exact count
        got, want = bounded.observe(b, now), exact.observe(b, now)
        assert got == want, tick
        found += len(want)
        kinds.update(f.type for f in want)
    assert kinds  # the stream did hold scans or connection floods
