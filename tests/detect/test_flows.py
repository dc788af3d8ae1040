"""New flows per second: exact for SYN, estimated from samples for UDP."""

from __future__ import annotations

import numpy as np

from ddos_shield.detect.flows import with_flows
from ddos_shield.records import Category, addr_bytes, empty_rates, empty_traffic
from tests.traffic import packets, spoofed_v4

VICTIM, OTHER = "203.0.113.10", "203.0.113.11"


def rates() -> np.ndarray:
    r = empty_rates(2)
    r["dst"][0] = list(addr_bytes(VICTIM))
    r["dst"][1] = list(addr_bytes(OTHER))
    r["pps"][0] = [300, 2000, 50_000, 0, 0, 0]
    r["pps"][1] = [0, 0, 100, 0, 0, 0]
    return r


def test_syn_flows_are_the_syn_rate_and_udp_pairs_are_scaled_by_sampling() -> None:
    now = 100.0
    spoofed = packets(400, src=spoofed_v4(400), dst=VICTIM, proto=17, category=Category.UDP, ts=now - 0.5)
    spoofed["sport"] = np.arange(400) + 1024
    spoofed["sample_rate"] = 100
    # one client, one port, many packets: one pair
    client = packets(50, src="198.51.100.10", dst=OTHER, proto=17, category=Category.UDP, sport=5353, ts=now - 0.2)
    old = packets(10, src="198.51.100.11", dst=OTHER, proto=17, category=Category.UDP, ts=now - 1.5)  # out of span
    r = with_flows(rates(), np.concatenate([spoofed, client, old]), now)
    assert r["flows"][0, Category.TCP_SYN] == 300
    assert r["flows"][0, Category.UDP] == 40_000  # 400 pairs x 1-in-100
    assert r["flows"][1, Category.UDP] == 1
    assert r["flows"][:, [Category.TCP, Category.ICMP]].sum() == 0


def test_udp_estimate_is_capped_at_the_packet_rate() -> None:
    now = 100.0
    s = packets(200, src=spoofed_v4(200), dst=OTHER, proto=17, category=Category.UDP, ts=now - 0.1)
    s["sample_rate"] = 1000
    r = with_flows(rates(), s, now)
    assert r["flows"][1, Category.UDP] == 100


def test_udp_pairs_match_a_count_by_hand() -> None:
    # IPv4 and IPv6 destinations and sources, repeated pairs with different sampling
    # rates, destinations with samples but no rates row and the reverse, other categories
    rng = np.random.default_rng(11)
    dsts = [addr_bytes(a) for a in ("203.0.113.10", "203.0.113.11", "2001:db8::10", "2001:db8:1::10", "198.51.100.1")]
    srcs = [addr_bytes(a) for a in ("198.18.0.1", "198.18.0.2", "2001:2::1", "2001:2::2")]
    now, n = 50.0, 3000
    s = empty_traffic(n)
    s["dst"] = np.frombuffer(b"".join(dsts[i] for i in rng.integers(0, len(dsts), n)), np.uint8).reshape(n, 16)
    s["src"] = np.frombuffer(b"".join(srcs[i] for i in rng.integers(0, len(srcs), n)), np.uint8).reshape(n, 16)
    s["sport"] = rng.integers(1000, 1040, n)
    s["sample_rate"] = rng.choice([0, 1, 10, 100], n)
    s["category"] = rng.choice([Category.UDP, Category.UDP, Category.TCP], n)
    s["ts"] = now - rng.random(n) * 1.5
    r = empty_rates(4)  # rows for four of the destinations, in another order; one without samples
    for i, a in enumerate((dsts[2], dsts[0], addr_bytes("203.0.113.99"), dsts[3])):
        r["dst"][i] = list(a)
    r["pps"][:, Category.UDP] = 1e9
    pairs: dict[bytes, dict[tuple[bytes, int], int]] = {}
    for row in s:
        if row["category"] == Category.UDP and row["ts"] > now - 1.0:
            seen = pairs.setdefault(row["dst"].tobytes(), {})
            key = (row["src"].tobytes(), int(row["sport"]))
            seen[key] = max(seen.get(key, 1), int(row["sample_rate"]))
    got = with_flows(r, s, now)["flows"][:, Category.UDP]
    assert got.tolist() == [float(sum(pairs.get(d.tobytes(), {}).values())) for d in r["dst"]]
    assert got[0] > 0 and got[1] > 0 and got[2] == 0
