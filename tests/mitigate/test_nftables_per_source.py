"""Per-source rate limits in the nftables backend: the compiled rule on its own, then real
packets from heavy and light sources (IPv4 and IPv6) through the table in a private
namespace pair (dsn-ps-tx -> dsn-ps-rx), counted by the kernel."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ddos_shield.mitigate.nftables import (
    METER_SIZE,
    METER_TIMEOUT,
    MIN_BURST,
    NftablesBackend,
    parse_state,
    verdict_exprs,
)
from ddos_shield.records import Action, Match, Range, Rule, as_network
from tests.vethpair import Observer, VethPair, frame

#: this module's veth pair (tests/mitigate/conftest.py)
VETH_PREFIX = "dsn-ps"
TABLE = "dsn_ps"
FAR = 2e9

# ---- the compiler, no kernel ---------------------------------------------------------


def test_per_source_verdict_updates_the_meter_of_its_family() -> None:
    rule = Rule(Match(proto=17), Action.RATE_LIMIT, FAR, rate_pps=100, rule_id=5, per_source=True)
    for fam, ip in ((4, "ip"), (6, "ip6")):
        exprs = verdict_exprs(rule, meter=f"m5_{fam}")
        upd = exprs[1]["set"]
        assert (upd["op"], upd["set"], upd["elem"]["payload"]) == (
            "update",
            f"@m5_{fam}",
            {"protocol": ip, "field": "saddr"},
        )
        assert upd["stmt"] == [{"limit": {"rate": 100, "burst": 10, "per": "second", "inv": True}}]
        assert exprs[-1] == {"goto": {"target": "rate_blocked"}}
    with pytest.raises(ValueError, match="meter"):
        verdict_exprs(rule)


def test_a_listed_per_source_rule_is_rebuilt() -> None:
    """What parse_state reads back from a listing (the shape nft 1.0.6 prints)."""
    comment = "{'id':5,'attack':3,'created':1700000000,'match':{'proto':17,'dport':53}}"
    rule = Rule(Match(proto=17, dport=Range(53, 53)), Action.RATE_LIMIT, FAR, rate_pps=100, rule_id=5, per_source=True)
    t = {"family": "netdev", "table": TABLE}
    objs = [
        {"set": {**t, "name": "next_rule_id", "type": "mark", "elem": [6]}},
        {
            "set": {
                **t,
                "name": "r5_6",
                "type": "ipv6_addr",
                "elem": [{"elem": {"val": "2001:db8::/32"[:-3], "expires": 30}}],
            }
        },
        {"set": {**t, "name": "m5_6", "type": "ipv6_addr", "flags": ["timeout"], "timeout": METER_TIMEOUT}},
        {
            "rule": {
                **t,
                "chain": "f5_6",
                "handle": 9,
                "comment": comment,
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                            "right": "@r5_6",
                        }
                    },
                    {"counter": {"packets": 40, "bytes": 4000}},
                    *verdict_exprs(rule, meter="m5_6")[1:2],
                    {"counter": {"packets": 30, "bytes": 3000}},
                    {"goto": {"target": "rate_blocked"}},
                ],
            }
        },
    ]
    e = parse_state(objs, 1000.0).entries[5]
    assert e.rule.per_source and e.rule.action == Action.RATE_LIMIT and e.rule.rate_pps == 100
    assert e.rule.match.dst == as_network("2001:db8::/128")
    assert (e.sets, e.meters, e.packets, e.dropped) == (["r5_6"], ["m5_6"], 40, 30)


# ---- real packets --------------------------------------------------------------------


def udp(src: str, dst: str) -> bytes:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return frame(ip / UDP(sport=40000, dport=9) / Raw(b"u" * 32))


HEAVY4, LIGHT4 = "198.18.5.1", "198.18.5.2"
HEAVY6, LIGHT6 = "2001:2::5:1", "2001:2::5:2"


@pytest.mark.lab
def test_heavy_sources_are_cut_to_the_rate_light_ones_untouched(
    pair: VethPair, backend: NftablesBackend, observer: Observer
) -> None:
    """3 s of traffic: an IPv4 source at ~1,000 pps and an IPv6 one at ~500 pps against a
    per-source limit of 100 pps each, beside a light source of each family at ~50 pps."""
    rate, n = 100, 3000
    rule = backend.apply(
        Rule(Match(proto=17, dport=Range(9, 9)), Action.RATE_LIMIT, FAR, rate_pps=rate, attack_id=4, per_source=True)
    )
    frames: list[bytes] = []
    sent = dict.fromkeys((HEAVY4, HEAVY6, LIGHT4, LIGHT6), 0)
    for i in range(n):  # slots of 1 ms
        due = [HEAVY4] + [HEAVY6] * (i % 2 == 0) + [LIGHT4] * (i % 20 == 0) + [LIGHT6] * (i % 20 == 10)
        for src in due:
            frames.append(udp(src, "2001:db8:113::10" if ":" in src else "203.0.113.10"))
            sent[src] += 1
    start = time.monotonic()
    pair.send(frames, pps=len(frames) / 3.0)
    elapsed = time.monotonic() - start
    time.sleep(0.05)
    got = observer.received()
    # the light sources lose nothing
    assert (got.get(LIGHT4), got.get(LIGHT6)) == (sent[LIGHT4], sent[LIGHT6]) == (150, 150)
    # each heavy one gets about the rate (one burst, then the rate) whatever it sends
    expected = rate * elapsed + max(MIN_BURST, rate // 10)
    print(f"sent {sent} in {elapsed:.2f} s, passed {got}, expected ~{expected:.0f} per heavy source")
    for src in (HEAVY4, HEAVY6):
        assert 0.6 * expected <= got.get(src, 0) <= 1.4 * expected, (src, got, expected)
    st = backend.stats()[rule.rule_id]
    passed = sum(got.get(s, 0) for s in sent)
    assert (st.packets, st.dropped) == (len(frames), len(frames) - passed)
    assert backend.global_counters()["rate_limited"] == len(frames) - passed
    # the rule reads back as it was applied, in this backend and after a restart
    with pair.inside():
        again = NftablesBackend([pair.rx_if], table=TABLE)
    listed = again.list()
    assert [r.refreshed(rule.expires_at) for r in listed] == [rule]
    assert listed[0].per_source
    # a refresh keeps the meters and the counters; a change to an aggregate limit replaces them
    again.apply(rule.refreshed(FAR + 10))
    st2 = again.stats()[rule.rule_id]
    assert (st2.packets, st2.dropped) == (st.packets, st.dropped)
    state = again.state()
    assert {f"m{rule.rule_id}_4", f"m{rule.rule_id}_6"} <= set(state.sets)
    aggregate = again.apply(Rule(rule.match, Action.RATE_LIMIT, FAR, rate_pps=rate, rule_id=rule.rule_id))
    assert [r.per_source for r in again.list()] == [False]
    assert not any(n.startswith("m") and n[1:2].isdigit() for n in again.state().sets)
    # and a withdrawal leaves no set of the rule behind
    per = again.apply(
        Rule(rule.match, Action.RATE_LIMIT, FAR, rate_pps=rate, rule_id=aggregate.rule_id, per_source=True)
    )
    assert again.list()[0].per_source
    again.withdraw(per.rule_id)
    assert again.list() == []
    assert not [n for n in again.state().sets if n[:1] in "rm" and n[1:2].isdigit()]


def _ipv4_sources(n: int) -> list[bytes]:
    """``n`` frames like :func:`udp` from 198.18.0.0 upwards, made from one template."""
    tmpl = bytearray(udp("198.18.0.0", "203.0.113.10"))
    out = []
    for i in range(n):
        f = bytearray(tmpl)
        f[26:30] = (0xC6120000 + i).to_bytes(4, "big")  # 198.18.0.0 + i
        f[24:26] = b"\0\0"
        words = sum(int.from_bytes(f[14 + k : 16 + k], "big") for k in range(0, 20, 2))
        while words > 0xFFFF:
            words = (words & 0xFFFF) + (words >> 16)
        f[24:26] = (~words & 0xFFFF).to_bytes(2, "big")  # the IPv4 header checksum
        out.append(bytes(f))  # (the UDP checksum is left stale: nothing here reads it)
    return out


@pytest.mark.lab
def test_a_full_meter_limits_the_sources_in_it_and_lets_new_ones_pass(
    pair: VethPair, backend: NftablesBackend, observer: Observer
) -> None:
    """The documented limit: a source that finds its rule's meter full is not limited."""
    rule = backend.apply(Rule(Match(proto=17, dport=Range(9, 9)), Action.RATE_LIMIT, FAR, rate_pps=10, per_source=True))
    pair.send(_ipv4_sources(METER_SIZE))
    state = backend.state()
    assert len(state.elements(f"m{rule.rule_id}_4")) == METER_SIZE
    before = backend.stats()[rule.rule_id]
    pair.send([udp("198.19.0.1", "203.0.113.10")] * 100 + _ipv4_sources(1) * 100)
    time.sleep(0.05)
    after = backend.stats()[rule.rule_id]
    got = observer.received()
    assert got["198.19.0.1"] == 100  # not metered: not limited
    assert got["198.18.0.0"] <= 1 + 10  # metered: its first packet, then its burst at most
    assert (after.packets - before.packets, after.dropped - before.dropped) == (
        200,
        200 - (got["198.18.0.0"] - 1) - 100,
    )
