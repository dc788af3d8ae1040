"""New flows per second: exact for SYN, estimated from samples for UDP."""

from __future__ import annotations

import numpy as np

from ddos_shield.detect.flows import with_flows
from ddos_shield.records import Category, addr_bytes, empty_rates
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
