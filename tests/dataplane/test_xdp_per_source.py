"""Per-source rate limits in the XDP program: packet by packet through the kernel's
program test-run (one CPU, one clock tick: exact burst figures), then real packets
from heavy and light sources through a veth pair of ours (dsn-psx-tx -> dsn-psx-rx),
counted after the program by an nftables ingress counter of the receiving side."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from ddos_shield.dataplane.xdp import XdpDataPlane
from ddos_shield.lab.netns import in_netns
from ddos_shield.records import Action, Match, Range, Rule
from tests.vethpair import Observer, VethPair, frame

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def udp(src: str, dst: str = "") -> Packet:
    ip = IPv6(src=src, dst=dst or "2001:db8:113::10") if ":" in src else IP(src=src, dst=dst or "203.0.113.10")
    return ip / UDP(sport=40000, dport=9) / Raw(b"u" * 32)


def per_source(rate: int, **kw: object) -> Rule:
    return Rule(Match(proto=17, dport=Range(9, 9)), Action.RATE_LIMIT, time.time() + 600, rate_pps=rate,
                per_source=True, **kw)  # type: ignore[arg-type]  # fmt: skip


# ---- the program on its own ------------------------------------------------------------

# (source, packets sent in one test run, packets that pass) against 50 pps per source:
# a source's bucket starts full with one second of its rate; the run is shorter than a tick
TEST_RUN_ROWS = [
    # IPv4: a heavy source gets one burst, a light one and a second heavy one their own
    ("198.18.6.1", 1000, 50),
    ("198.18.6.2", 20, 20),
    ("198.18.6.3", 1000, 50),
    # IPv6 the same
    ("2001:2::6:1", 1000, 50),
    ("2001:2::6:2", 20, 20),
    # the first heavy source again: its bucket is spent (-1: only what refilled since)
    ("198.18.6.1", 100, -1),
]


def test_each_source_has_a_bucket_of_its_own(plane: XdpDataPlane) -> None:
    rule = plane.backend.apply(per_source(50, attack_id=2))
    start = time.monotonic()
    for src, sent, want in TEST_RUN_ROWS:
        before = plane.backend.stats()[rule.rule_id]
        plane.test_run(bytes(E / udp(src)), sent)
        st = plane.backend.stats()[rule.rule_id]
        passed = (st.packets - before.packets) - (st.dropped - before.dropped)
        assert st.packets - before.packets == sent, src
        if want < 0:
            assert passed <= 50 * (time.monotonic() - start) + 1, src
        else:
            assert passed == want, src
    assert plane.global_stats()["rate_limited"] == plane.backend.stats()[rule.rule_id].dropped
    # read back as applied, and an aggregate limit of the same match is another rule
    (got,) = plane.backend.list()
    key = ("match", "action", "rate_pps", "rule_id", "attack_id", "per_source")
    assert [getattr(got, k) for k in key] == [getattr(rule, k) for k in key]
    aggregate = plane.backend.apply(
        Rule(rule.match, Action.RATE_LIMIT, rule.expires_at, rate_pps=50 * plane.nr_cpus, rule_id=rule.rule_id)
    )
    assert [r.per_source for r in plane.backend.list()] == [False]
    st0 = plane.backend.stats()[aggregate.rule_id]
    plane.test_run(bytes(E / udp("198.18.6.9")), 200)
    st = plane.backend.stats()[aggregate.rule_id]
    assert (st.packets - st0.packets) - (st.dropped - st0.dropped) <= 51  # one shared per-CPU burst


# ---- real packets ------------------------------------------------------------------------

HEAVY4, LIGHT4 = "198.18.5.1", "198.18.5.2"
HEAVY6, LIGHT6 = "2001:2::5:1", "2001:2::5:2"


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = VethPair("dsn-psx").create()
    try:
        yield p
    finally:
        p.delete()


@pytest.mark.lab
def test_heavy_sources_are_cut_to_the_rate_light_ones_untouched(pair: VethPair, pin_dir: str) -> None:
    """3 s of traffic: an IPv4 source at ~1,000 pps and an IPv6 one at ~500 pps against a
    per-source limit of 100 pps each, beside a light source of each family at ~50 pps."""
    rate, n = 100, 3000
    with pair.inside():
        dp = XdpDataPlane.open([pair.rx_if], pin_dir)
        obs = Observer(pair.rx_if)
    try:
        rule = dp.backend.apply(per_source(rate))
        frames: list[bytes] = []
        sent = dict.fromkeys((HEAVY4, HEAVY6, LIGHT4, LIGHT6), 0)
        for i in range(n):  # slots of 1 ms
            due = [HEAVY4] + [HEAVY6] * (i % 2 == 0) + [LIGHT4] * (i % 20 == 0) + [LIGHT6] * (i % 20 == 10)
            for src in due:
                frames.append(frame(udp(src)))
                sent[src] += 1
        start = time.monotonic()
        pair.send(frames, pps=len(frames) / 3.0)
        elapsed = time.monotonic() - start
        time.sleep(0.05)
        with pair.inside():
            got = obs.received()
        assert (got.get(LIGHT4), got.get(LIGHT6)) == (sent[LIGHT4], sent[LIGHT6]) == (150, 150)
        expected = rate * elapsed + rate  # one second of burst, then the rate
        print(f"sent {sent} in {elapsed:.2f} s, passed {got}, expected ~{expected:.0f} per heavy source")
        for src in (HEAVY4, HEAVY6):
            assert 0.6 * expected <= got.get(src, 0) <= 1.4 * expected, (src, got, expected)
        st = dp.backend.stats()[rule.rule_id]
        passed = sum(got.get(s, 0) for s in sent)
        assert (st.packets, st.dropped) == (len(frames), len(frames) - passed)
    finally:
        with in_netns(pair.rx_ns):
            obs.close()
        dp.close(detach=True)
