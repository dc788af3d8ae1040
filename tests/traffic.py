"""Hand-made traffic batches for unit tests (real packets are in the lab tests)."""

from __future__ import annotations

import ipaddress

import numpy as np

from ddos_shield.records import Category, PacketFlag, TrafficBatch, addr_bytes, empty_traffic


def packets(
    n: int,
    *,
    src: str | list[str],
    dst: str,
    proto: int,
    category: Category,
    sport: int = 40000,
    dport: int = 80,
    tcp_flags: int = 0,
    length: int = 60,
    ttl: int = 64,
    ts: float = 0.0,
) -> TrafficBatch:
    b = empty_traffic(n)
    srcs = [src] if isinstance(src, str) else src
    raw = np.array([list(addr_bytes(s)) for s in srcs], dtype=np.uint8)
    b["src"] = raw[np.arange(n) % len(raw)]
    b["dst"] = list(addr_bytes(dst))
    b["proto"] = proto
    b["category"] = category
    b["sport"] = sport
    b["dport"] = dport
    b["tcp_flags"] = tcp_flags
    b["length"] = length
    b["ttl"] = ttl
    b["ts"] = ts
    b["packets"] = 1
    b["bytes"] = length
    b["sample_rate"] = 1
    if ipaddress.ip_address(dst).version == 6:
        b["flags"] = PacketFlag.IPV6
    return b


def spoofed_v4(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    base = int(ipaddress.ip_address("198.18.0.0"))
    return [str(ipaddress.ip_address(base + int(x))) for x in rng.integers(0, 1 << 17, n)]


def counters_by_dst(snapshot: np.ndarray) -> dict[str, tuple[list[int], list[int], int, int]]:
    """A counter snapshot (COUNTER_DTYPE) as {destination: (pkts, bytes, dropped pkts, dropped bytes)}."""
    from ddos_shield.records import bytes_addr

    return {
        str(bytes_addr(r["dst"])): (
            r["pkts"].tolist(),
            r["bytes"].tolist(),
            int(r["dropped_pkts"]),
            int(r["dropped_bytes"]),
        )
        for r in snapshot
    }
