"""The XDP program, packet by packet, through the kernel's program test-run.

Each row is an input frame and what the program must do with it: the verdict, the
category it is counted in, the global counters and the rule hit counters.  The
program runs against fresh maps in a private pin directory; no interface is needed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from ddos_shield.dataplane.xdp import XdpDataPlane
from ddos_shield.errors import DataPlaneError
from ddos_shield.records import (
    Action,
    Category,
    IPNetwork,
    Match,
    PacketFlag,
    Range,
    Rule,
    Source,
    addr_bytes,
    as_network,
    bytes_addr,
    key_net,
)

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = IP(src="198.51.100.66", dst="203.0.113.10", ttl=57)
V6 = IPv6(src="2001:db8:100::66", dst="2001:db8:113::10", hlim=33)
DST4 = "203.0.113.10"
DST6_AGG = "2001:db8:113::"  # 2001:db8:113::10 aggregated to the default /64
PROTECTED: dict[IPNetwork, int] = {as_network("203.0.113.0/24"): 3, as_network("2001:db8:113::/64"): 4}

_big = E / IP(src="198.51.100.66", dst="203.0.113.10", id=7) / UDP(sport=1, dport=2) / Raw(b"x" * 1400)
FRAG4 = fragment(_big[IP], fragsize=600)  # type: ignore[no-untyped-call]


def v4(l4: Packet, **ip: Any) -> Packet:
    return E / IP(**{"src": "198.51.100.66", "dst": DST4, "ttl": 57, **ip}) / l4


def v6(l4: Packet, **ip: Any) -> Packet:
    return E / IPv6(**{"src": "2001:db8:100::66", "dst": "2001:db8:113::10", "hlim": 33, **ip}) / l4


def run(dp: XdpDataPlane, pkt: Packet | bytes, repeat: int = 1) -> int:
    return dp.test_run(bytes(pkt), repeat).retval


def counters(dp: XdpDataPlane) -> dict[str, np.void]:
    return {str(bytes_addr(row["dst"])): row for row in dp.read_counters()}


def drop_rule(match: Match, **kw: Any) -> Rule:
    return Rule(match, kw.pop("action", Action.DROP), expires_at=kw.pop("expires_at", time.time() + 600), **kw)


# ---- parsing and categories: every packet to a protected destination is counted ------

CATEGORY_CASES: list[tuple[str, Packet, Category, str]] = [
    # IPv4 transports
    ("v4 syn", v4(TCP(sport=1234, dport=80, flags="S")), Category.TCP_SYN, DST4),
    ("v4 ack", v4(TCP(sport=1234, dport=80, flags="A")), Category.TCP, DST4),
    ("v4 udp", v4(UDP(sport=53, dport=4444)), Category.UDP, DST4),
    ("v4 icmp", v4(ICMP()), Category.ICMP, DST4),
    ("v4 gre", v4(Raw(b"\0" * 8), proto=47), Category.OTHER, DST4),
    # IPv6 transports
    ("v6 syn", v6(TCP(flags="S")), Category.TCP_SYN, DST6_AGG),
    ("v6 ack", v6(TCP(flags="A")), Category.TCP, DST6_AGG),
    ("v6 udp", v6(UDP()), Category.UDP, DST6_AGG),
    ("icmpv6", v6(ICMPv6EchoRequest()), Category.ICMP, DST6_AGG),
    # VLAN tags
    ("vlan", E / Dot1Q(vlan=10) / V4 / UDP(), Category.UDP, DST4),
    ("qinq", E / Dot1AD(vlan=20) / Dot1Q(vlan=10) / V4 / TCP(flags="S"), Category.TCP_SYN, DST4),
    ("qinq v6", E / Dot1AD(vlan=20) / Dot1Q(vlan=10) / V6 / UDP(), Category.UDP, DST6_AGG),
    # IPv6 extension headers
    ("v6 hbh+dstopt", v6(IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=7, dport=8)), Category.UDP, DST6_AGG),
    # fragments
    ("v4 first frag", E / FRAG4[0], Category.UDP, DST4),
    ("v4 later frag", E / FRAG4[1], Category.FRAG, DST4),
    ("v6 first frag", v6(IPv6ExtHdrFragment(offset=0, m=1, id=5) / UDP(sport=7, dport=8)), Category.UDP, DST6_AGG),
    ("v6 later frag", v6(IPv6ExtHdrFragment(offset=100, m=0, id=5, nh=17) / Raw(b"y" * 40)), Category.FRAG, DST6_AGG),
]


@pytest.mark.parametrize(("name", "pkt", "cat", "dst"), CATEGORY_CASES, ids=[c[0] for c in CATEGORY_CASES])
def test_category_counted(plane: XdpDataPlane, name: str, pkt: Packet, cat: Category, dst: str) -> None:
    plane.set_protected(PROTECTED)
    assert run(plane, pkt) == XDP_PASS
    rows = counters(plane)
    assert list(rows) == [dst]
    want_pkts = [0] * len(Category)
    want_pkts[cat] = 1
    assert rows[dst]["pkts"].tolist() == want_pkts
    assert int(rows[dst]["bytes"][cat]) == len(bytes(pkt))
    stats = plane.global_stats()
    assert (stats["rx"], stats["unprotected"], stats["malformed"]) == (1, 0, 0)


# ---- passed untouched ----------------------------------------------------------------

EDGE_CASES: list[tuple[str, bytes, str]] = [
    ("arp", bytes(E / ARP()), "non_ip"),
    ("truncated ipv4", bytes(v4(UDP()))[: 14 + 12], "malformed"),
    ("truncated ipv6", bytes(v6(UDP()))[: 14 + 30], "malformed"),
    ("truncated tcp", bytes(v4(TCP()))[: 14 + 20 + 10], "malformed"),
    ("truncated vlan", bytes(E / Dot1Q(vlan=1))[:16], "malformed"),
    ("unprotected dst", bytes(v4(UDP(), src="198.51.100.99", dst="192.0.2.1")), "unprotected"),
]


@pytest.mark.parametrize(("name", "frame", "stat"), EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_passed_and_counted_globally(plane: XdpDataPlane, name: str, frame: bytes, stat: str) -> None:
    plane.set_protected(PROTECTED)
    plane.backend.apply(drop_rule(Match(src=as_network("198.51.100.66/32"))))
    assert run(plane, frame) == XDP_PASS
    stats = plane.global_stats()
    assert stats["rx"] == 1
    assert stats[stat] == 1
    assert len(plane.read_counters()) == 0


# ---- rule matching: each field, hit and miss ----------------------------------------

MATCH_CASES: list[tuple[str, Match, Packet, bool]] = [
    # protocol
    ("proto hit", Match(proto=17), v4(UDP()), True),
    ("proto miss", Match(proto=17), v4(TCP()), False),
    # destination prefix (the fp_index lookup)
    ("dst hit", Match(dst=as_network("203.0.113.10/32")), v4(UDP()), True),
    ("dst miss", Match(dst=as_network("203.0.113.10/32")), v4(UDP(), dst="203.0.113.11"), False),
    ("dst v6 hit", Match(dst=as_network("2001:db8:113::/64")), v6(UDP()), True),
    ("dst v6 miss", Match(dst=as_network("2001:db8:113::/64")), v6(UDP(), dst="2001:db8:114::10"), False),
    ("v4 dst vs v6 packet", Match(dst=as_network("0.0.0.0/0")), v6(UDP()), False),
    # source prefix, in a fingerprint rule
    ("fp src hit", Match(proto=17, src=as_network("198.51.100.0/24")), v4(UDP()), True),
    ("fp src miss", Match(proto=17, src=as_network("198.51.100.0/24")), v4(UDP(), src="198.51.101.66"), False),
    # source-only rules: single addresses (hash) and prefixes (trie)
    ("src /32 hit", Match(src=as_network("198.51.100.66/32")), v4(UDP()), True),
    ("src /32 miss", Match(src=as_network("198.51.100.66/32")), v4(UDP(), src="198.51.100.67"), False),
    ("src /24 hit", Match(src=as_network("198.51.100.0/24")), v4(UDP()), True),
    ("src /24 miss", Match(src=as_network("198.51.100.0/24")), v4(UDP(), src="198.51.101.1"), False),
    ("src /128 hit", Match(src=as_network("2001:db8:100::66/128")), v6(UDP()), True),
    ("src /48 hit", Match(src=as_network("2001:db8:100::/48")), v6(UDP()), True),
    ("src /48 miss", Match(src=as_network("2001:db8:100::/48")), v6(UDP(), src="2001:db8:101::1"), False),
    # ports
    ("sport hit", Match(sport=Range(1000, 2000)), v4(UDP(sport=1500)), True),
    ("sport miss", Match(sport=Range(1000, 2000)), v4(UDP(sport=999)), False),
    ("dport hit", Match(proto=6, dport=Range(80, 80)), v4(TCP(dport=80)), True),
    ("dport miss", Match(proto=6, dport=Range(80, 80)), v4(TCP(dport=81)), False),
    ("dport v6 hit", Match(dport=Range(53, 53)), v6(UDP(dport=53)), True),
    # TCP flags: SYN without ACK
    ("tcp flags hit", Match(tcp_flags=(0x12, 0x02)), v4(TCP(flags="S")), True),
    ("tcp flags miss", Match(tcp_flags=(0x12, 0x02)), v4(TCP(flags="SA")), False),
    # frame length at the hook
    ("length hit", Match(length=Range(60, 80)), v4(UDP() / Raw(b"z" * 28)), True),  # 70 bytes
    ("length miss", Match(length=Range(60, 80)), v4(UDP() / Raw(b"z" * 58)), False),  # 100 bytes
    # TTL / hop limit
    ("ttl hit", Match(ttl=Range(1, 10)), v4(UDP(), ttl=5), True),
    ("ttl miss", Match(ttl=Range(1, 10)), v4(UDP()), False),
    ("hop limit hit", Match(ttl=Range(30, 40)), v6(UDP()), True),
    # fragments carry no ports
    ("ports vs first frag", Match(proto=17, dport=Range(2, 2)), E / FRAG4[0], True),
    ("ports vs later frag", Match(proto=17, dport=Range(2, 2)), E / FRAG4[1], False),
    ("proto vs later frag", Match(proto=17), E / FRAG4[1], True),
]


@pytest.mark.parametrize(("name", "match", "pkt", "hit"), MATCH_CASES, ids=[c[0] for c in MATCH_CASES])
def test_rule_match(plane: XdpDataPlane, name: str, match: Match, pkt: Packet, hit: bool) -> None:
    plane.set_protected(PROTECTED)
    rule = plane.backend.apply(drop_rule(match))
    assert run(plane, pkt) == (XDP_DROP if hit else XDP_PASS)
    st = plane.backend.stats()[rule.rule_id]
    assert (st.packets, st.dropped) == ((1, 1) if hit else (0, 0))
    assert plane.global_stats()["dropped"] == int(hit)


# ---- precedence -----------------------------------------------------------------------


def test_allowlisted_source_is_never_dropped(plane: XdpDataPlane) -> None:
    b = plane.backend
    src_rule = b.apply(drop_rule(Match(src=as_network("198.51.100.66/32"))))
    fp_rule = b.apply(drop_rule(Match(proto=17)))
    b.set_allowlist([as_network("198.51.100.0/24")])
    assert run(plane, v4(UDP())) == XDP_PASS
    assert plane.global_stats()["allowed"] == 1
    assert b.stats()[src_rule.rule_id].packets == b.stats()[fp_rule.rule_id].packets == 0
    b.set_allowlist([])
    assert run(plane, v4(UDP())) == XDP_DROP


def test_most_specific_destination_first(plane: XdpDataPlane) -> None:
    b = plane.backend
    observe = b.apply(drop_rule(Match(dst=as_network("203.0.113.10/32")), action=Action.OBSERVE))
    drop = b.apply(drop_rule(Match(dst=as_network("203.0.113.0/24"))))
    anywhere = b.apply(drop_rule(Match(proto=47)))
    assert run(plane, v4(UDP())) == XDP_PASS  # the /32 observe rule decides
    assert run(plane, v4(UDP(), dst="203.0.113.11")) == XDP_DROP
    assert run(plane, v4(Raw(b"\0" * 8), proto=47, dst="192.0.2.1")) == XDP_DROP  # 0/0 rule, no other prefix
    hits = {rid: s.packets for rid, s in b.stats().items()}
    assert hits == {observe.rule_id: 1, drop.rule_id: 1, anywhere.rule_id: 1}
    assert plane.global_stats()["observed"] == 1


def fp_index(plane: XdpDataPlane) -> dict[str, list[int]]:
    """fp_index as {prefix: [rule ids in list order]}."""
    rules = plane._maps.read_array("rules", plane.abi.dtype("rule"), plane.abi["SHIELD_MAX_RULES"])
    out = {}
    for (plen, addr), val in plane._maps.lpm_items("fp_index", plane.abi.dtype("fp_list")).items():
        slots = val["slots"][0][: int(val["count"][0])]
        out[str(key_net(plen, addr)) if plen >= 96 else f"::/{plen}"] = [int(rules["rule_id"][s]) for s in slots]
    return out


def test_fp_index_holds_covering_rules(plane: XdpDataPlane) -> None:
    b = plane.backend
    any_dst = b.apply(drop_rule(Match(proto=47))).rule_id
    net24 = b.apply(drop_rule(Match(dst=as_network("203.0.113.0/24"), proto=17))).rule_id
    host = b.apply(drop_rule(Match(dst=as_network("203.0.113.10/32"), proto=6))).rule_id
    assert fp_index(plane) == {
        "::/0": [any_dst],
        "203.0.113.0/24": [net24, any_dst],
        "203.0.113.10/32": [host, net24, any_dst],
    }
    b.withdraw(net24)
    assert fp_index(plane) == {"::/0": [any_dst], "203.0.113.10/32": [host, any_dst]}
    b.withdraw(any_dst)
    b.withdraw(host)
    assert fp_index(plane) == {}


def test_source_rule_before_fingerprint_rules(plane: XdpDataPlane) -> None:
    b = plane.backend
    fp = b.apply(drop_rule(Match(proto=17), action=Action.OBSERVE))
    src = b.apply(drop_rule(Match(src=as_network("198.51.100.66/32"))))
    assert run(plane, v4(UDP())) == XDP_DROP
    assert (b.stats()[src.rule_id].packets, b.stats()[fp.rule_id].packets) == (1, 0)


# ---- actions, expiry, kill switch, counters -------------------------------------------


def test_expired_rule_is_ignored_and_not_listed(plane: XdpDataPlane) -> None:
    b = plane.backend
    rule = b.apply(drop_rule(Match(src=as_network("198.51.100.66/32")), expires_at=time.time() - 5))
    assert run(plane, v4(UDP())) == XDP_PASS
    assert plane.global_stats()["expired_hit"] == 1
    assert b.list() == []
    assert rule.rule_id not in b.stats()


def test_observe_counts_and_passes(plane: XdpDataPlane) -> None:
    rule = plane.backend.apply(drop_rule(Match(proto=17), action=Action.OBSERVE))
    assert run(plane, v4(UDP()), repeat=3) == XDP_PASS
    st = plane.backend.stats()[rule.rule_id]
    assert (st.packets, st.dropped) == (3, 0)
    assert plane.global_stats()["observed"] == 3


def test_bypass_passes_everything_but_still_counts(plane: XdpDataPlane) -> None:
    plane.set_protected(PROTECTED)
    rule = plane.backend.apply(drop_rule(Match(proto=17)))
    plane.backend.set_bypass(True)
    assert run(plane, v4(UDP()), repeat=4) == XDP_PASS
    assert plane.global_stats()["bypass"] == 4
    assert int(counters(plane)[DST4]["pkts"][Category.UDP]) == 4
    assert plane.backend.stats()[rule.rule_id].packets == 0
    plane.backend.set_bypass(False)
    assert run(plane, v4(UDP())) == XDP_DROP


def test_hit_counters_exact(plane: XdpDataPlane) -> None:
    plane.set_protected(PROTECTED)
    pkt = v4(UDP(dport=53) / Raw(b"q" * 30))
    rule = plane.backend.apply(drop_rule(Match(proto=17, dport=Range(53, 53))))
    assert run(plane, pkt, repeat=25) == XDP_DROP
    st = plane.backend.stats()[rule.rule_id]
    assert (st.packets, st.bytes, st.dropped) == (25, 25 * len(bytes(pkt)), 25)
    row = counters(plane)[DST4]
    assert (int(row["pkts"][Category.UDP]), int(row["dropped_pkts"]), int(row["dropped_bytes"])) == (
        25,
        25,
        25 * len(bytes(pkt)),
    )
    assert plane.global_stats()["dropped"] == 25


def test_rate_limit_passes_one_burst(plane: XdpDataPlane) -> None:
    # The rule's bucket, shared by the CPUs, starts full with a tenth of a second of
    # tokens and a test run of 1,000 packets (on one CPU) takes well under a clock tick,
    # so one burst passes: rate_pps / 10, not divided by the CPUs as a per-CPU bucket was.
    rate = 500
    rule = plane.backend.apply(drop_rule(Match(proto=17), action=Action.RATE_LIMIT, rate_pps=rate))
    run(plane, v4(UDP()), repeat=1000)
    st = plane.backend.stats()[rule.rule_id]
    passed = st.packets - st.dropped
    assert st.packets == 1000
    assert rate // 10 <= passed <= rate // 10 + 1
    assert plane.global_stats()["rate_limited"] == st.dropped


# ---- samples ---------------------------------------------------------------------------


def test_sample_record(plane: XdpDataPlane) -> None:
    plane.set_protected(PROTECTED)
    plane.set_sample_every(1)
    rule = plane.backend.apply(drop_rule(Match(proto=17)))
    big = bytes(v4(UDP(sport=4242, dport=53) / Raw(b"s" * 200)))
    small = bytes(v6(TCP(sport=1, dport=80, flags="S")))
    plane.test_run(big, ingress_ifindex=1)
    raw = plane.read_raw_samples()
    assert len(raw) == 1
    s, abi = raw[0], plane.abi
    assert (int(s["ifindex"]), int(s["pkt_len"]), int(s["cap_len"])) == (1, len(big), abi["SHIELD_SNAPLEN"])
    assert (int(s["verdict"]), int(s["rule_id"]), int(s["cat"])) == (abi["V_DROP"], rule.rule_id, abi["CAT_UDP"])
    assert int(s["flags"]) & abi["PKT_PROTECTED"]
    assert int(s["sample_every"]) == 1
    assert s["data"].tobytes() == big[: abi["SHIELD_SNAPLEN"]]

    plane.test_run(small)
    batch = plane.read_samples()
    assert len(batch) == 1
    row = batch[0]
    assert bytes_addr(row["src"]) == bytes_addr(addr_bytes("2001:db8:100::66"))
    assert (int(row["sport"]), int(row["dport"]), int(row["category"])) == (1, 80, Category.TCP_SYN)
    assert (int(row["packets"]), int(row["bytes"]), int(row["length"])) == (1, len(small), len(small))
    assert (int(row["source"]), int(row["verdict"]), int(row["rule_id"])) == (Source.XDP, abi["V_PASS"], 0)
    assert int(row["flags"]) & PacketFlag.PROTECTED and int(row["flags"]) & PacketFlag.IPV6
    assert abs(float(row["ts"]) - time.time()) < 5
    assert plane.global_stats()["sampled"] == 2


def test_only_protected_destinations_are_sampled(plane: XdpDataPlane) -> None:
    plane.set_protected(PROTECTED)
    plane.set_sample_every(1)
    run(plane, v4(UDP(), dst="192.0.2.1"))
    assert len(plane.read_samples()) == 0


# ---- the control plane's bookkeeping ------------------------------------------------


def test_refused_rules(plane: XdpDataPlane) -> None:
    b = plane.backend
    b.apply(drop_rule(Match(src=as_network("198.18.0.0/24"))))
    with pytest.raises(DataPlaneError, match="already blocked"):
        b.apply(drop_rule(Match(src=as_network("198.18.0.0/24"))))
    fp_max = plane.abi["SHIELD_FP_LIST_MAX"]
    for port in range(fp_max):
        b.apply(drop_rule(Match(dst=as_network("203.0.113.10/32"), dport=Range(port, port))))
    with pytest.raises(DataPlaneError, match="SHIELD_FP_LIST_MAX"):
        b.apply(drop_rule(Match(proto=17)))  # covers 203.0.113.10/32 too: one rule too many there
    assert len(b.list()) == 1 + fp_max


def test_withdraw_unindexes_and_ids_are_not_reused(plane: XdpDataPlane) -> None:
    b = plane.backend
    first = b.apply(drop_rule(Match(proto=17, dst=as_network("203.0.113.0/24"))))
    src = b.apply(drop_rule(Match(src=as_network("198.51.100.66/32"))))
    b.withdraw(first.rule_id)
    b.withdraw(src.rule_id)
    b.withdraw(12345)  # unknown ids are ignored
    assert run(plane, v4(UDP())) == XDP_PASS
    assert b.list() == [] and b.stats() == {}
    again = b.apply(drop_rule(Match(proto=17)))
    assert again.rule_id == src.rule_id + 1


def test_refresh_rewrites_the_slot_only(plane: XdpDataPlane) -> None:
    b = plane.backend
    rule = b.apply(drop_rule(Match(proto=17, dst=as_network("203.0.113.0/24"))))
    gen = plane.config()["generation"]
    later = time.time() + 3600
    assert b.apply(rule.refreshed(later)).rule_id == rule.rule_id
    assert plane.config()["generation"] == gen
    (listed,) = b.list()
    assert abs(listed.expires_at - later) < 0.01 and listed.match == rule.match
    b.apply(dataclasses.replace(rule, expires_at=later, action=Action.OBSERVE))
    assert plane.config()["generation"] == gen + 1
    assert run(plane, v4(UDP())) == XDP_PASS


def test_list_reconstructs_matches(plane: XdpDataPlane) -> None:
    b = plane.backend
    matches = [
        Match(src=as_network("198.18.0.7/32")),
        Match(src=as_network("2001:2::/48")),
        Match(
            proto=6,
            src=as_network("198.18.0.0/15"),
            dst=as_network("203.0.113.0/24"),
            sport=Range(1, 2),
            dport=Range(80, 81),
            tcp_flags=(0x12, 0x02),
            length=Range(40, 1500),
            ttl=Range(1, 64),
        ),
        Match(dst=as_network("2001:db8:113::10/128"), proto=58),
    ]
    applied = [b.apply(drop_rule(m, attack_id=9)) for m in matches]
    listed = b.list()
    assert [r.rule_id for r in listed] == [r.rule_id for r in applied]
    assert [r.match for r in listed] == matches
    assert all(r.attack_id == 9 and r.action == Action.DROP for r in listed)


def test_set_protected_replaces(plane: XdpDataPlane) -> None:
    plane.set_protected({as_network("203.0.113.0/24"): 1, as_network("192.0.2.0/24"): 2})
    plane.set_protected({as_network("192.0.2.0/24"): 5})
    run(plane, v4(UDP()))
    run(plane, v4(UDP(), dst="192.0.2.1"))
    assert list(counters(plane)) == ["192.0.2.1"]
    assert plane.global_stats()["unprotected"] == 1


def test_unprotecting_forgets_counters(plane: XdpDataPlane) -> None:
    # dropping a prefix drops its destinations' counters: detection reads no stale ones
    plane.set_protected({as_network("203.0.113.0/24"): 1, as_network("2001:db8:113::/64"): 1})
    run(plane, v4(UDP()))
    run(plane, v6(UDP()))
    assert len(counters(plane)) == 2
    plane.set_protected({as_network("2001:db8:113::/64"): 1})
    run(plane, v4(UDP()), repeat=3)
    assert len(counters(plane)) == 1
    assert plane.global_stats()["unprotected"] == 3
    plane.set_protected({as_network("2001:db8:113::10/128"): 2})  # narrower than the /64 aggregate
    assert counters(plane) == {}


# ---- pinning -------------------------------------------------------------------------


def test_pin_dir_must_be_on_bpffs(tmp_path: Any) -> None:
    with pytest.raises(DataPlaneError, match="not on a BPF filesystem"):
        XdpDataPlane.open([], str(tmp_path / "pins"))


def test_rules_survive_reopen_and_unknown_abi_is_refused(pin_dir: str) -> None:
    dp = XdpDataPlane.open([], pin_dir)
    rule = dp.backend.apply(drop_rule(Match(src=as_network("198.51.100.66/32"))))
    dp.backend.set_bypass(True)
    dp.close()
    dp = XdpDataPlane.open([], pin_dir)
    assert [r.rule_id for r in dp.backend.list()] == [rule.rule_id]
    assert dp.config()["bypass"] == 1
    cfg = dp._maps.config()
    cfg["abi_version"] = 99
    dp._maps.write_config(cfg)
    dp.close()
    with pytest.raises(DataPlaneError, match="stop --detach"):
        XdpDataPlane.open([], pin_dir)
