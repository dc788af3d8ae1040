"""The nftables data plane with real packets in a private namespace pair
(dsn-dp-tx -> dsn-dp-rx): exact per-destination counters, drops, samples, adoption."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import GRE
from scapy.packet import Raw

from ddos_shield.dataplane.nft import NftDataPlane
from ddos_shield.mitigate.nftables import remove_table
from ddos_shield.records import (
    CATEGORY_NAMES,
    Action,
    Category,
    Match,
    PacketFlag,
    Range,
    Rule,
    TrafficBatch,
    as_network,
    bytes_addr,
)
from tests.traffic import counters_by_dst
from tests.vethpair import VethPair, frame

pytestmark = pytest.mark.lab

TABLE = "dsn_dp"
PROTECTED = {as_network("203.0.113.0/25"): 1, as_network("2001:db8:113::/64"): 2}
V4, V4B, V4_OUT = "203.0.113.10", "203.0.113.11", "203.0.113.200"  # the last is not protected
V6, V6B, V6_OUT = "2001:db8:113::10", "2001:db8:113::11", "2001:db8:113:1::10"
V6_ROW = "2001:db8:113::"  # both IPv6 destinations, aggregated to /64


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = VethPair("dsn-dp").create()
    try:
        yield p
    finally:
        p.delete()


@pytest.fixture
def dp(pair: VethPair) -> Iterator[NftDataPlane]:
    with pair.inside():
        d = NftDataPlane.open([pair.rx_if], table=TABLE, ipv6_prefix_len=64)
        d.set_protected(PROTECTED)
        try:
            yield d
        finally:
            d.close(detach=True)


def _frags4(dst: str) -> list[bytes]:
    pkt = IP(src="198.18.30.9", dst=dst) / UDP(dport=9) / Raw(b"f" * 1300)
    return [frame(f) for f in fragment(pkt, fragsize=600)]  # type: ignore[no-untyped-call]


def _frags6(dst: str) -> list[bytes]:
    pkt = IPv6(src="2001:2::39", dst=dst) / IPv6ExtHdrFragment() / UDP(dport=9) / Raw(b"f" * 1300)
    return [frame(f) for f in fragment6(pkt, 700)]  # type: ignore[no-untyped-call]


def _rows() -> list[tuple[str | None, Category, bytes, int]]:
    """(counted destination row or None, category, frame, copies)."""
    syn = IP(src="198.18.30.1", dst=V4) / TCP(dport=80, flags="S")
    f4, f6 = _frags4(V4), _frags6(V6)
    rows: list[tuple[str | None, Category, bytes, int]] = [
        # IPv4, every category
        (V4, Category.TCP_SYN, frame(syn), 5),
        (V4, Category.TCP, frame(IP(src="198.18.30.1", dst=V4) / TCP(dport=80, flags="SA")), 4),
        (V4, Category.TCP, frame(IP(src="198.18.30.1", dst=V4) / TCP(dport=80, flags="A") / Raw(b"a" * 100)), 1),
        (V4, Category.UDP, frame(IP(src="198.18.30.2", dst=V4) / UDP(dport=53) / Raw(b"u" * 40)), 3),
        (V4, Category.ICMP, frame(IP(src="198.18.30.3", dst=V4) / ICMP()), 2),
        (V4, Category.OTHER, frame(IP(src="198.18.30.4", dst=V4) / GRE()), 1),
        (V4, Category.UDP, f4[0], 1),  # a first fragment carries the UDP header
        *[(V4, Category.FRAG, f, 1) for f in f4[1:]],
        (V4B, Category.UDP, frame(IP(src="198.18.30.5", dst=V4B) / UDP(dport=9)), 2),
        # IPv6: two addresses in one /64 make one row
        (V6_ROW, Category.UDP, frame(IPv6(src="2001:2::31", dst=V6) / UDP(dport=53)), 3),
        (V6_ROW, Category.ICMP, frame(IPv6(src="2001:2::31", dst=V6) / ICMPv6EchoRequest()), 2),
        (V6_ROW, Category.TCP_SYN, frame(IPv6(src="2001:2::32", dst=V6B) / TCP(dport=80, flags="S")), 4),
        (V6_ROW, Category.UDP, f6[0], 1),
        *[(V6_ROW, Category.FRAG, f, 1) for f in f6[1:]],
        # not protected: not counted
        (None, Category.UDP, frame(IP(src="198.18.30.6", dst=V4_OUT) / UDP(dport=9)), 3),
        (None, Category.UDP, frame(IPv6(src="2001:2::36", dst=V6_OUT) / UDP(dport=9)), 2),
    ]
    return rows


def counters_by_row(dp: NftDataPlane) -> dict[str, tuple[list[int], list[int], int, int]]:
    return counters_by_dst(dp.read_counters())


def test_exact_counters_per_destination_and_category(pair: VethPair, dp: NftDataPlane) -> None:
    rows = _rows()
    assert len(_frags4(V4)) == len(_frags6(V6)) == 3
    want: dict[str, tuple[list[int], list[int], int, int]] = {}
    for dst, cat, f, copies in rows:
        if dst is None:
            continue
        pk, by, _, _ = want.setdefault(dst, ([0] * len(CATEGORY_NAMES), [0] * len(CATEGORY_NAMES), 0, 0))
        pk[cat] += copies
        by[cat] += copies * len(f)  # L2 frame bytes
    pair.send([f for _, _, f, copies in rows for _ in range(copies)])
    time.sleep(0.05)
    assert counters_by_row(dp) == want
    # Cumulative: the same again doubles every counter.
    pair.send([f for _, _, f, copies in rows for _ in range(copies)])
    time.sleep(0.05)
    doubled = {k: ([2 * x for x in p], [2 * x for x in b], 0, 0) for k, (p, b, _, _) in want.items()}
    assert counters_by_row(dp) == doubled


def test_dropped_packets_are_offered_load_and_drops(pair: VethPair, dp: NftDataPlane) -> None:
    udp = frame(IP(src="198.18.31.1", dst=V4B) / UDP(dport=9) / Raw(b"d" * 10))
    udp6 = frame(IPv6(src="2001:2::41", dst=V6B) / UDP(dport=9))
    dp.backend.apply(Rule(Match(proto=17), Action.DROP, 2e9))
    dp.backend.apply(Rule(Match(dst=as_network("2001:db8:113::/64"), proto=6), Action.RATE_LIMIT, 2e9, rate_pps=5))
    syn6 = frame(IPv6(src="2001:2::42", dst=V6B) / TCP(dport=80, flags="S"))
    pair.send([udp] * 4 + [udp6] * 3 + [syn6] * 50)
    time.sleep(0.05)
    got = counters_by_row(dp)
    pk, by, dropped, dropped_bytes = got[V4B]
    assert (pk[Category.UDP], by[Category.UDP], dropped, dropped_bytes) == (4, 4 * len(udp), 4, 4 * len(udp))
    pk6, _, dropped6, _ = got[V6_ROW]
    limited = dp.global_stats()["rate_limited"]
    assert (pk6[Category.UDP], pk6[Category.TCP_SYN]) == (3, 50)
    assert 30 <= limited <= 45  # 50 in a burst against 5/s (burst 5)
    assert dropped6 == 3 + limited
    assert dp.global_stats()["dropped"] == 7


def test_samples_are_kept_for_protected_destinations_only(pair: VethPair, dp: NftDataPlane) -> None:
    dp.set_sample_every(1)
    prot = frame(IP(src="198.18.32.1", dst=V4, ttl=9) / UDP(sport=7, dport=53))
    pair.send([prot] * 4 + [frame(IP(src="198.18.32.2", dst=V4_OUT) / UDP(dport=9))] * 3)
    parts: list[TrafficBatch] = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and sum(len(p) for p in parts) < 4:
        select.select([], [], [], 0.05)
        parts.append(dp.read_samples())
    time.sleep(0.1)
    parts.append(dp.read_samples())
    got = np.concatenate(parts)
    assert len(got) == 4
    assert {str(bytes_addr(a)) for a in got["dst"]} == {V4}
    assert set(got["ttl"]) == {9} and set(got["dport"]) == {53}
    assert all(got["flags"] & PacketFlag.PROTECTED)
    st = dp.global_stats()
    assert st["sampled"] == 7 and st["sample_lost"] == 0
    assert st["rx"] >= 7


def test_reopen_adopts_counters_protection_and_rules(pair: VethPair, dp: NftDataPlane) -> None:
    udp = frame(IP(src="198.18.33.1", dst=V4) / UDP(dport=9))
    udp6 = frame(IPv6(src="2001:2::43", dst=V6) / UDP(dport=9))
    pair.send([udp] * 3 + [udp6] * 2)
    time.sleep(0.05)
    rule = dp.backend.apply(Rule(Match(proto=17, dport=Range(9, 9)), Action.OBSERVE, 2e9))
    before = counters_by_row(dp)
    dp.close()
    with pair.inside():
        again = NftDataPlane.open([pair.rx_if], table=TABLE, ipv6_prefix_len=64)
        assert counters_by_row(again) == before
        assert [r.rule_id for r in again.backend.list()] == [rule.rule_id]
        pair.send([udp])
        time.sleep(0.05)
        assert counters_by_row(again)[V4][0][Category.UDP] == 4  # still protected, still counting
        again.close()
        # Another IPv6 aggregation starts the IPv6 counters afresh.
        coarse = NftDataPlane.open([pair.rx_if], table=TABLE, ipv6_prefix_len=48)
        rows = counters_by_row(coarse)
        assert V4 in rows and V6_ROW not in rows
        pair.send([udp6])
        time.sleep(0.05)
        assert counters_by_row(coarse)["2001:db8:113::"][0][Category.UDP] == 1
        coarse.close(detach=True)
        assert not remove_table(TABLE)
