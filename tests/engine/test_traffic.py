"""engine/traffic.py on hand-made batches (the engine and the API use it in tests/api)."""

from __future__ import annotations

import numpy as np

from ddos_shield.config import parse
from ddos_shield.engine.traffic import group_index, summarize
from ddos_shield.records import Category, addr_bytes, empty_rates
from tests.traffic import packets

CFG = parse(
    """
protected = ["203.0.113.0/24", "2001:db8::/48"]
[[groups]]
name = "web"
prefixes = ["203.0.113.0/25"]
[[groups]]
name = "dns"
prefixes = ["203.0.113.53/32"]
"""
)


def rates(rows: list[tuple[str, Category, float]]) -> np.ndarray:
    r = empty_rates(len(rows))
    for i, (dst, cat, pps) in enumerate(rows):
        r["dst"][i] = list(addr_bytes(dst))
        r["pps"][i, cat] = pps
        r["bps"][i, cat] = pps * 800
    return r


def test_the_most_specific_group_wins_as_in_the_data_plane() -> None:
    r = rates(
        [
            # inside web's /25 and dns's /32: dns
            ("203.0.113.53", Category.UDP, 10),
            # inside web only
            ("203.0.113.10", Category.TCP, 10),
            # protected, in no group: default
            ("203.0.113.200", Category.TCP, 10),
            ("2001:db8::1", Category.ICMP, 10),
        ]
    )
    names, idx = group_index(r["dst"], CFG)
    assert [names[i] for i in idx] == ["dns", "web", "default", "default"]


def test_summary_orders_destinations_and_sources_and_sums_groups() -> None:
    r = rates(
        [("203.0.113.10", Category.TCP, 100), ("203.0.113.53", Category.UDP, 900), ("2001:db8::1", Category.ICMP, 5)]
    )
    window = np.concatenate(
        [
            packets(30, src="198.51.100.7", dst="203.0.113.53", proto=17, category=Category.UDP, length=100),
            packets(10, src="2001:db8:100::9", dst="2001:db8::1", proto=58, category=Category.ICMP, length=100),
        ]
    )
    window["packets"][:30] = 10  # sampled 1 in 10: rows are already scaled
    s = summarize(r, window, 2.0, CFG, top=2)
    assert [(d["dst"], d["group"], d["pps"]) for d in s["top_destinations"]] == [
        ("203.0.113.53", "dns", 900.0),
        ("203.0.113.10", "web", 100.0),
    ]
    assert s["top_destinations"][0]["by_category"]["udp"] == 900.0
    assert [(x["src"], x["pps"]) for x in s["top_sources"]] == [("198.51.100.7", 150.0), ("2001:db8:100::9", 5.0)]
    assert s["top_sources"][0]["bps"] == 30 * 100 * 8 / 2.0  # from the rows' own bytes
    groups = {g["group"]: g for g in s["groups"]}
    assert groups["dns"]["pps"]["udp"] == 900.0 and groups["web"]["pps"]["tcp"] == 100.0
    assert groups["default"]["pps"]["icmp"] == 5.0 and groups["default"]["destinations"] == 1
    assert s["pps"]["udp"] == 900.0 and s["destinations"] == 3


def test_an_empty_tick() -> None:
    s = summarize(
        empty_rates(), packets(0, src="198.51.100.7", dst="203.0.113.1", proto=6, category=Category.TCP), 2.0, CFG
    )
    assert s["top_destinations"] == [] and s["top_sources"] == [] and s["destinations"] == 0
    assert {g["group"] for g in s["groups"]} == {"default", "web", "dns"}
