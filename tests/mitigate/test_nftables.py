"""nftables enforcement: the rule compiler on its own, then real packets through the
table in a private namespace pair (dsn-mt-tx -> dsn-mt-rx)."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ddos_shield.errors import DataPlaneError
from ddos_shield.lab.netns import in_netns
from ddos_shield.mitigate.nftables import (
    LAYOUT_VERSION,
    Nft,
    NftablesBackend,
    check_rule,
    decode_comment,
    encode_comment,
    families,
    match_exprs,
    prefix,
    remove_table,
    table_exists,
    verdict_exprs,
)
from ddos_shield.records import Action, Match, Range, Rule, as_network
from tests.synproxy import synproxy_stats
from tests.vethpair import Observer, VethPair, frame

#: this module's veth pair (tests/mitigate/conftest.py)
VETH_PREFIX = "dsn-mt"
TABLE = "dsn_shield"
FAR = 2e9  # an expiry far enough for a test

# ---- the compiler, no kernel ---------------------------------------------------------

COMMENT_ROWS = [
    # source-only and destination-only
    Match(src=as_network("198.18.0.0/15")),
    Match(dst=as_network("2001:db8:113::/64")),
    # every field at once, IPv6 and IPv4
    Match(
        proto=6,
        src=as_network("2001:2:ffff:ffff:ffff:ffff:ffff:ffff/128"),
        sport=Range(1024, 65535),
        dport=Range(65535, 65535),
        tcp_flags=(0xFF, 0x02),
        length=Range(1000, 1500),
        ttl=Range(1, 255),
    ),
    Match(proto=17, dport=Range(53, 53), length=Range(60, 60), ttl=Range(64, 64)),
]


@pytest.mark.parametrize("m", COMMENT_ROWS)
def test_comment_round_trip(m: Match) -> None:
    rule = Rule(m, Action.DROP, FAR, rule_id=4294967295, attack_id=4294967295, created_at=1.7e9)
    text = encode_comment(rule)
    assert '"' not in text  # nft prints comments between double quotes
    info = decode_comment(text)
    assert info is not None
    assert (info["id"], info["attack"], info["created"]) == (4294967295, 4294967295, 1700000000)
    want = Match(m.proto, m.src, None, m.sport, m.dport, m.tcp_flags, m.length, m.ttl)  # dst lives in the set
    assert info["match"] == want


@pytest.mark.parametrize("comment", [None, "", "hello", "{'no':'id'}", "{broken", "{'id':1,'match':{'bogus':1}}"])
def test_foreign_comments_are_ignored(comment: object) -> None:
    assert decode_comment(comment) is None


FAMILY_ROWS = [
    (Match(proto=17), (4, 6)),
    (Match(src=as_network("198.18.0.0/15")), (4,)),
    (Match(dst=as_network("2001:db8:113::/64")), (6,)),
]


@pytest.mark.parametrize(("m", "want"), FAMILY_ROWS)
def test_families(m: Match, want: tuple[int, ...]) -> None:
    assert families(m) == want


REJECT_ROWS = [
    # mixed families
    Rule(Match(src=as_network("198.18.0.0/15"), dst=as_network("2001:db8::/32")), Action.DROP, FAR),
    # a rate limit without a rate
    Rule(Match(proto=17), Action.RATE_LIMIT, FAR),
    # TCP flags or ports on a protocol without them
    Rule(Match(proto=17, tcp_flags=(2, 2)), Action.DROP, FAR),
    Rule(Match(proto=1, dport=Range(0, 0)), Action.DROP, FAR),
]


@pytest.mark.parametrize("rule", REJECT_ROWS)
def test_rules_nftables_cannot_express_are_refused(rule: Rule) -> None:
    with pytest.raises(ValueError):
        check_rule(rule)


def test_blackhole_is_refused() -> None:
    """BLACKHOLE is a BGP route (user space only): nftables has nothing to enforce."""
    with pytest.raises(DataPlaneError, match="not enforced by nftables"):
        check_rule(Rule(Match(dst=as_network("203.0.113.10/32")), Action.BLACKHOLE, FAR))


# ---- real packets --------------------------------------------------------------------


def udp4(src: str, dport: int = 9, dst: str = "203.0.113.10", size: int = 32) -> bytes:
    return frame(IP(src=src, dst=dst) / UDP(sport=40000, dport=dport) / Raw(b"u" * size))


def blast(pair: VethPair, frames: list[bytes], times: int = 1) -> None:
    pair.send(frames * times)
    time.sleep(0.05)


def wait_until(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(pred) and pred():
            return
        time.sleep(0.1)


@pytest.mark.lab
def test_source_drop_is_enforced_counted_and_expires_by_itself(
    pair: VethPair, backend: NftablesBackend, observer: Observer
) -> None:
    rule = backend.apply(Rule(Match(src=as_network("198.18.1.0/24")), Action.DROP, time.time() + 2, attack_id=7))
    blocked, other = udp4("198.18.1.5"), udp4("198.18.2.5")
    blast(pair, [blocked, other], times=20)
    assert observer.received() == {"198.18.2.5": 20}
    st = backend.stats()[rule.rule_id]
    assert (st.packets, st.bytes, st.dropped) == (20, 20 * len(blocked), 20)
    assert backend.global_counters()["dropped"] == 20
    # Nobody withdraws it: the kernel lets it lapse.
    time.sleep(3.1)
    observer.reset()
    blast(pair, [blocked], times=5)
    assert observer.received() == {"198.18.1.5": 5}
    assert backend.list() == []


def test_many_source_drops_in_one_batch_are_enforced_and_counted(
    pair: VethPair, backend: NftablesBackend, observer: Observer
) -> None:
    wide = backend.apply(Rule(Match(src=as_network("198.18.9.0/24")), Action.DROP, FAR))
    hosts = [Rule(Match(src=as_network(f"198.18.{i // 200}.{i % 200 + 1}/32")), Action.DROP, FAR) for i in range(600)]
    covered = Rule(Match(src=as_network("198.18.9.9/32")), Action.DROP, FAR)  # inside the /24: a rule of its own
    fingerprint = Rule(Match(proto=17, dport=Range(7, 7)), Action.DROP, FAR)
    applied = backend.apply_many([*hosts, covered, fingerprint])
    ids = [r.rule_id for r in applied]
    assert len(ids) == len(set(ids)) == 602 and wide.rule_id not in ids
    assert sorted(r.rule_id for r in backend.list()) == sorted([wide.rule_id, *ids])
    blast(pair, [udp4("198.18.0.1"), udp4("198.18.2.200"), udp4("198.18.3.1"), udp4("198.18.4.4", dport=7)], times=5)
    assert observer.received() == {"198.18.3.1": 5}
    stats = backend.stats()
    assert (stats[ids[0]].dropped, stats[ids[599]].dropped, stats[ids[601]].dropped) == (5, 5, 5)


@pytest.mark.lab
def test_allow_listed_source_is_never_dropped(pair: VethPair, backend: NftablesBackend, observer: Observer) -> None:
    backend.set_allowlist([as_network("198.18.3.0/24"), as_network("198.18.3.7/32"), as_network("2001:2::/64")])
    backend.apply(Rule(Match(src=as_network("198.18.3.0/24")), Action.DROP, FAR))
    backend.apply(Rule(Match(proto=17), Action.DROP, FAR))
    backend.apply(Rule(Match(proto=17), Action.RATE_LIMIT, FAR, rate_pps=1))
    v6 = frame(IPv6(src="2001:2::7", dst="2001:db8:113::10") / UDP(dport=9))
    blast(pair, [udp4("198.18.3.7"), udp4("198.18.4.7"), v6], times=10)
    assert observer.received() == {"198.18.3.7": 10, "2001:2::7": 10}
    assert backend.global_counters()["allowed"] == 20


# Each row: a packet (from its own source, to count it apart) and whether the rule
# "UDP to port 9" drops it.
def _frag4(first: bool) -> bytes:
    pkt = IP(src="198.18.5.3" if first else "198.18.5.4", dst="203.0.113.10") / UDP(dport=9) / Raw(b"f" * 1200)
    frags = fragment(pkt, fragsize=600)  # type: ignore[no-untyped-call]
    return frame(frags[0] if first else frags[1])


def _frag6(first: bool) -> bytes:
    from scapy.layers.inet6 import IPv6ExtHdrFragment

    src = "2001:2::53" if first else "2001:2::54"
    pkt = IPv6(src=src, dst="2001:db8:113::10") / IPv6ExtHdrFragment() / UDP(dport=9) / Raw(b"f" * 1200)
    frags = fragment6(pkt, 700)  # type: ignore[no-untyped-call]
    return frame(frags[0] if first else frags[1])


PORT_ROWS = [
    # the fingerprint itself, both families
    ("198.18.5.1", udp4("198.18.5.1", dport=9), True),
    ("2001:2::51", frame(IPv6(src="2001:2::51", dst="2001:db8:113::10") / UDP(dport=9)), True),
    # other ports and protocols pass
    ("198.18.5.2", udp4("198.18.5.2", dport=10), False),
    ("198.18.5.5", frame(IP(src="198.18.5.5", dst="203.0.113.10") / TCP(dport=80)), False),
    ("198.18.5.6", frame(IP(src="198.18.5.6", dst="203.0.113.10") / TCP(dport=9)), False),
    # a first fragment has the ports; a later one has none and must pass
    ("198.18.5.3", _frag4(True), True),
    ("198.18.5.4", _frag4(False), False),
    ("2001:2::53", _frag6(True), True),
    ("2001:2::54", _frag6(False), False),
]


@pytest.mark.lab
def test_port_fingerprint_drops_matching_packets_only(
    pair: VethPair, backend: NftablesBackend, observer: Observer
) -> None:
    rule = backend.apply(Rule(Match(proto=17, dport=Range(9, 9)), Action.DROP, FAR))
    blast(pair, [f for _, f, _ in PORT_ROWS], times=3)
    got = observer.received()
    for src, _, dropped in PORT_ROWS:
        assert got.get(src, 0) == (0 if dropped else 3), src
    dropped_frames = [f for _, f, d in PORT_ROWS if d]
    st = backend.stats()[rule.rule_id]
    assert (st.packets, st.bytes) == (3 * len(dropped_frames), 3 * sum(len(f) for f in dropped_frames))


def _syn(src: str, ttl: int = 50, payload: int = 0, flags: str = "S") -> bytes:
    return frame(IP(src=src, dst="203.0.113.10", ttl=ttl) / TCP(dport=80, flags=flags) / Raw(b"s" * payload))


# Rule: SYN without ACK, TTL 1-64, frame length up to 100 bytes (L2, as XDP measures it).
SYN_ROWS = [
    ("198.18.6.1", _syn("198.18.6.1"), True),
    ("198.18.6.2", _syn("198.18.6.2", flags="SA"), False),  # flags
    ("198.18.6.3", _syn("198.18.6.3", ttl=100), False),  # TTL
    ("198.18.6.4", _syn("198.18.6.4", payload=100 - 54), True),  # exactly 100 bytes
    ("198.18.6.5", _syn("198.18.6.5", payload=101 - 54), False),  # 101 bytes
]


@pytest.mark.lab
def test_flags_ttl_and_length_fingerprint(pair: VethPair, backend: NftablesBackend, observer: Observer) -> None:
    assert len(SYN_ROWS[3][1]) == 100
    m = Match(proto=6, dst=as_network("203.0.113.0/24"), tcp_flags=(0x12, 0x02), ttl=Range(1, 64), length=Range(0, 100))
    backend.apply(Rule(m, Action.DROP, FAR))
    blast(pair, [f for _, f, _ in SYN_ROWS], times=2)
    got = observer.received()
    for src, _, dropped in SYN_ROWS:
        assert got.get(src, 0) == (0 if dropped else 2), src


@pytest.mark.lab
def test_rate_limit_lets_about_the_rate_through(pair: VethPair, backend: NftablesBackend, observer: Observer) -> None:
    rate, pps, n = 200, 1000, 1500
    rule = backend.apply(Rule(Match(src=as_network("198.18.7.0/24"), proto=17), Action.RATE_LIMIT, FAR, rate_pps=rate))
    start = time.monotonic()
    pair.send([udp4("198.18.7.1")] * n, pps=pps)
    elapsed = time.monotonic() - start
    time.sleep(0.05)
    passed = observer.received().get("198.18.7.1", 0)
    expected = rate * elapsed + max(5, rate // 10)
    assert 0.6 * expected <= passed <= 1.4 * expected, (passed, expected)
    st = backend.stats()[rule.rule_id]
    assert (st.packets, st.dropped) == (n, n - passed)
    assert backend.global_counters()["rate_limited"] == n - passed


@pytest.mark.lab
def test_bypass_passes_everything_until_turned_off(
    pair: VethPair, backend: NftablesBackend, observer: Observer
) -> None:
    backend.apply(Rule(Match(src=as_network("198.18.8.0/24")), Action.DROP, FAR))
    backend.set_bypass(True)
    assert backend.bypass
    blast(pair, [udp4("198.18.8.1")], times=4)
    assert observer.received() == {"198.18.8.1": 4}
    backend.set_bypass(False)
    assert not backend.bypass
    blast(pair, [udp4("198.18.8.1")], times=4)
    assert observer.received() == {"198.18.8.1": 4}
    assert backend.global_counters()["bypass"] == 4


ADOPT_ROWS = [
    # a source-set element, with attack id and creation time
    Rule(Match(src=as_network("198.18.9.0/24")), Action.DROP, FAR, attack_id=11, created_at=1.7e9),
    # an overlapping source prefix: kept as a chain rule
    Rule(Match(src=as_network("198.18.9.128/25")), Action.DROP, FAR, attack_id=11),
    # fingerprints: one family by destination, both families, an explicit IPv4 /0
    Rule(Match(proto=17, dst=as_network("203.0.113.10/32"), sport=Range(53, 53)), Action.DROP, FAR, attack_id=12),
    Rule(Match(proto=6, tcp_flags=(0x12, 0x02), length=Range(40, 80)), Action.DROP, FAR),
    Rule(Match(dst=as_network("0.0.0.0/0"), ttl=Range(1, 3)), Action.DROP, FAR),
    # rate limit and observe, IPv6
    Rule(Match(dst=as_network("2001:db8:113::/64"), proto=17), Action.RATE_LIMIT, FAR, rate_pps=500),
    Rule(Match(src=as_network("2001:2::/48")), Action.OBSERVE, FAR, attack_id=13),
    # the longest comment: every field, a full IPv6 source
    Rule(
        Match(
            proto=6,
            src=as_network("2001:2:0:ffff:ffff:ffff:ffff:ffff/128"),
            sport=Range(10000, 65535),
            dport=Range(10000, 65535),
            tcp_flags=(0xFF, 0x12),
            length=Range(1000, 1500),
            ttl=Range(100, 255),
        ),
        Action.DROP,
        FAR,
        attack_id=4294967295,
        created_at=4e9,
    ),
]


@pytest.mark.lab
def test_list_after_restart_adopts_the_same_rules(pair: VethPair, backend: NftablesBackend) -> None:
    now = time.time()
    applied = [backend.apply(r.refreshed(now + 600)) for r in ADOPT_ROWS]
    assert len({r.rule_id for r in applied}) == len(applied)
    with pair.inside():
        again = NftablesBackend([pair.rx_if], table=TABLE)
        listed = again.list()
    assert [r.rule_id for r in listed] == [r.rule_id for r in applied]
    for want, got in zip(applied, listed, strict=True):
        assert got.refreshed(want.expires_at) == want
        assert abs(got.expires_at - want.expires_at) <= 1.5  # one-second resolution
    # Ids are never reused, even after a withdrawal and a restart.
    top = max(r.rule_id for r in applied)
    again.withdraw(top)
    with pair.inside():
        third = NftablesBackend([pair.rx_if], table=TABLE)
        new = third.apply(Rule(Match(proto=47), Action.DROP, FAR))
    assert new.rule_id == top + 1
    assert top not in {r.rule_id for r in third.list()}


@pytest.mark.lab
def test_refresh_keeps_id_and_counters(pair: VethPair, backend: NftablesBackend) -> None:
    src_rule = backend.apply(Rule(Match(src=as_network("198.18.10.0/24")), Action.DROP, time.time() + 30))
    fp_rule = backend.apply(Rule(Match(proto=17, dport=Range(11, 11)), Action.DROP, time.time() + 30))
    blast(pair, [udp4("198.18.10.1"), udp4("198.18.11.1", dport=11)], times=3)
    later = time.time() + 900
    assert backend.apply(src_rule.refreshed(later)).rule_id == src_rule.rule_id
    assert backend.apply(fp_rule.refreshed(later)).rule_id == fp_rule.rule_id
    listed = {r.rule_id: r for r in backend.list()}
    assert all(abs(r.expires_at - later) <= 1.5 for r in listed.values())
    st = backend.stats()
    assert (st[src_rule.rule_id].packets, st[fp_rule.rule_id].packets) == (3, 3)
    # Changing the match replaces the rule under the same id.
    changed = backend.apply(Rule(Match(proto=17, dport=Range(12, 12)), Action.DROP, later, rule_id=fp_rule.rule_id))
    assert [r.match for r in backend.list() if r.rule_id == changed.rule_id] == [changed.match]


@pytest.mark.lab
def test_refresh_on_a_kernel_that_ignores_re_added_timeouts(
    backend: NftablesBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = backend.apply(Rule(Match(src=as_network("198.18.14.0/24")), Action.DROP, time.time() + 30))
    run = backend.nft.run

    def before_6_12(cmds: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
        # What Linux < 6.12 does with "add element" for an element that exists: nothing.
        if what.startswith("refresh rule"):
            cmds = [
                c for c in cmds if not ("add" in c and c["add"].get("element", {}).get("name", "").startswith("drop"))
            ]
        return run(cmds, what)

    monkeypatch.setattr(backend.nft, "run", before_6_12)
    later = time.time() + 900
    assert backend.apply(rule.refreshed(later)).rule_id == rule.rule_id
    [listed] = backend.list()
    assert listed.rule_id == rule.rule_id and abs(listed.expires_at - later) <= 1.5


@pytest.mark.lab
def test_apply_refresh_and_withdraw_work_from_the_index_without_listing_the_table(
    pair: VethPair, backend: NftablesBackend, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.list()  # the index: this listing and the backend's own batches from now on
    run, listings = backend.nft.run, []

    def counting(cmds: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
        listings.extend(c["list"] for c in cmds if "list" in c and "table" in c["list"])
        return run(cmds, what)

    monkeypatch.setattr(backend.nft, "run", counting)
    src = backend.apply(Rule(Match(src=as_network("198.18.15.1/32")), Action.DROP, FAR))
    fp = backend.apply(Rule(Match(proto=17, dport=Range(15, 15)), Action.DROP, FAR))
    covered = backend.apply(Rule(Match(src=as_network("198.18.15.0/24")), Action.DROP, FAR))  # overlaps: a rule
    later = time.time() + 900
    backend.apply(src.refreshed(later))
    backend.apply(fp.refreshed(later))
    [many] = backend.apply_many([Rule(Match(src=as_network("198.18.16.1/32")), Action.DROP, FAR)])
    backend.withdraw(fp.rule_id)  # its chain deleted by name, the jumps to the others rewritten
    backend.withdraw(covered.rule_id)
    assert listings == []
    blast(pair, [udp4("198.18.15.1"), udp4("198.18.15.2", dport=15), udp4("198.18.16.1")], times=2)
    assert observer.received() == {"198.18.15.2": 2}
    listed = {r.rule_id: r for r in backend.list()}
    assert sorted(listed) == sorted([src.rule_id, many.rule_id])
    assert abs(listed[src.rule_id].expires_at - later) <= 1.5
    assert not [n for n in backend.state().sets if n.startswith("r")]


@pytest.mark.lab
def test_the_index_recovers_from_changes_behind_its_back(pair: VethPair, backend: NftablesBackend) -> None:
    src = backend.apply(Rule(Match(src=as_network("198.18.17.0/24")), Action.DROP, FAR))
    fp = backend.apply(Rule(Match(proto=17, dport=Range(17, 17)), Action.DROP, FAR))
    # Another writer (or the kernel's timeout) removes both rules' elements.
    with pair.inside():
        t = {"family": "netdev", "table": TABLE}
        Nft().run(
            [
                {"delete": {"element": {**t, "name": "drop4", "elem": [prefix(as_network("198.18.17.0/24"))]}}},
                {"delete": {"element": {**t, "name": f"r{fp.rule_id}_4", "elem": [prefix(as_network("0.0.0.0/0"))]}}},
            ],
            "test",
        )
    later = time.time() + 900
    backend.apply(fp.refreshed(later))  # the refresh batch fails, the retry reinstalls it
    backend.withdraw(src.rule_id)  # the delete fails, the retry finds nothing to do
    assert [(r.rule_id, r.match) for r in backend.list()] == [(fp.rule_id, fp.match)]
    nxt = backend.apply(Rule(Match(src=as_network("198.18.17.0/24")), Action.DROP, FAR))
    assert nxt.rule_id > fp.rule_id and {r.rule_id for r in backend.list()} == {fp.rule_id, nxt.rule_id}


@pytest.mark.lab
def test_a_layout_1_table_is_upgraded_in_place(pair: VethPair, backend: NftablesBackend, observer: Observer) -> None:
    # Layout 1 had no host sets: host drops were elements of drop4.  Make the table look like one.
    t = {"family": "netdev", "table": TABLE}
    legacy = Rule(Match(src=as_network("198.18.18.1/32")), Action.DROP, FAR, rule_id=40, attack_id=3)
    el = {"elem": {"val": "198.18.18.1", "timeout": 600, "comment": encode_comment(legacy, with_match=False)}}
    with pair.inside():
        Nft().run(
            [
                {"flush": {"chain": {**t, "name": "main"}}},
                {"delete": {"set": {**t, "name": "host4"}}},
                {"delete": {"set": {**t, "name": "host6"}}},
                {"delete": {"element": {**t, "name": "layout", "elem": [LAYOUT_VERSION]}}},
                {"add": {"element": {**t, "name": "layout", "elem": [1]}}},
                {"add": {"element": {**t, "name": "drop4", "elem": [el]}}},
            ],
            "test",
        )
        upgraded = NftablesBackend([pair.rx_if], table=TABLE)
    [found] = upgraded.list()
    assert (found.rule_id, found.match, found.attack_id) == (40, legacy.match, 3)
    fresh = upgraded.apply(Rule(Match(src=as_network("198.18.18.2/32")), Action.DROP, FAR))
    blast(pair, [udp4("198.18.18.1"), udp4("198.18.18.2"), udp4("198.18.18.3")], times=2)
    assert observer.received() == {"198.18.18.3": 2}
    upgraded.withdraw(40)
    assert [r.rule_id for r in upgraded.list()] == [fresh.rule_id]
    assert "host4" in upgraded.state().sets


@pytest.mark.lab
def test_a_layout_2_table_is_upgraded_in_place(pair: VethPair, backend: NftablesBackend, observer: Observer) -> None:
    """Layout 2 kept each fingerprint rule in the rules* chains themselves: make the table
    look like one (a drop with counts on it, and a per-source rate limit), then reopen it."""
    t = {"family": "netdev", "table": TABLE}
    drop = Rule(Match(proto=17, dport=Range(21, 21)), Action.DROP, FAR, rule_id=50, attack_id=4, created_at=1.7e9)
    limit = Rule(Match(proto=17, dport=Range(22, 22)), Action.RATE_LIMIT, FAR, rate_pps=50, rule_id=51, per_source=True)
    whole = {"elem": {"val": prefix(as_network("0.0.0.0/0")), "timeout": 600}}
    cmds: list[dict[str, Any]] = [
        {"delete": {"element": {**t, "name": "layout", "elem": [LAYOUT_VERSION]}}},
        {"add": {"element": {**t, "name": "layout", "elem": [2]}}},
    ]
    for r, meter in ((drop, ""), (limit, "m51_4")):
        cmds.append(
            {"add": {"set": {**t, "name": f"r{r.rule_id}_4", "type": "ipv4_addr", "flags": ["interval", "timeout"]}}}
        )
        cmds.append({"add": {"element": {**t, "name": f"r{r.rule_id}_4", "elem": [whole]}}})
        if meter:
            cmds.append(
                {"add": {"set": {**t, "name": meter, "type": "ipv4_addr", "flags": ["timeout"], "timeout": 10}}}
            )
        expr = match_exprs(r.match, 4, f"r{r.rule_id}_4") + verdict_exprs(r, (7, 700, 7), meter)
        cmds.append({"add": {"rule": {**t, "chain": "rules4_l4", "expr": expr, "comment": encode_comment(r)}}})
    with pair.inside():
        Nft().run(cmds, "test")
        upgraded = NftablesBackend([pair.rx_if], table=TABLE)
    state = upgraded.state()
    assert state.jumps["rules4_l4"] == ["f50_4", "f51_4"]
    v4 = Match(proto=17, dst=as_network("0.0.0.0/0"), dport=Range(21, 21))  # (its IPv4 rule only, here)
    assert (state.entries[50].rule.match, state.entries[50].rule.attack_id) == (v4, 4)
    assert state.entries[51].rule.per_source and state.entries[51].rule.rate_pps == 50
    assert (upgraded.stats()[50].packets, upgraded.stats()[50].dropped) == (7, 7)  # counts carried over
    blast(pair, [udp4("198.18.21.1", dport=21), udp4("198.18.21.1", dport=9)], times=2)
    assert observer.received() == {"198.18.21.1": 2}
    assert upgraded.stats()[50].packets == 9
    upgraded.withdraw(50)
    assert [r.rule_id for r in upgraded.list()] == [51]
    assert not any(c.startswith("f50") for c in upgraded.state().chains)


@pytest.mark.lab
def test_withdrawing_a_rule_keeps_the_others_in_their_order(
    pair: VethPair, backend: NftablesBackend, observer: Observer
) -> None:
    """Each chain rule in its own chain, reached by a jump: withdrawing one rewrites the
    jumps to the others, in the same order."""
    # an observe rule first: it counts the packets the drop after it then drops
    seen = backend.apply(Rule(Match(proto=17, dport=Range(23, 23)), Action.OBSERVE, FAR))
    rules = [backend.apply(Rule(Match(proto=17, dport=Range(23 + i, 23 + i)), Action.DROP, FAR)) for i in range(4)]
    both = backend.apply(Rule(Match(proto=17), Action.OBSERVE, FAR))  # IPv4 and IPv6: two chains
    backend.withdraw(rules[1].rule_id)
    backend.apply(rules[2].refreshed(FAR + 1))
    backend.withdraw(both.rule_id)
    state = backend.state()
    assert state.jumps["rules4_l4"] == [f"f{r.rule_id}_4" for r in (seen, rules[0], rules[2], rules[3])]
    assert state.jumps["rules4"] == state.jumps["rules6"] == []
    blast(pair, [udp4("198.18.22.1", dport=d) for d in (23, 24, 25, 26)], times=2)
    assert observer.received() == {"198.18.22.1": 2}  # port 24's drop is gone
    st = backend.stats()
    assert (st[seen.rule_id].packets, st[rules[0].rule_id].dropped, st[rules[3].rule_id].dropped) == (2, 2, 2)
    assert sorted(r.rule_id for r in backend.list()) == [
        seen.rule_id,
        rules[0].rule_id,
        rules[2].rule_id,
        rules[3].rule_id,
    ]


@pytest.mark.lab
def test_fingerprint_expires_without_the_shield_and_is_collected(
    pair: VethPair, backend: NftablesBackend, observer: Observer
) -> None:
    rule = backend.apply(Rule(Match(proto=17, dport=Range(13, 13)), Action.DROP, time.time() + 1))
    blast(pair, [udp4("198.18.12.1", dport=13)], times=2)
    assert observer.received() == {}
    time.sleep(2.1)
    blast(pair, [udp4("198.18.12.1", dport=13)], times=2)
    assert observer.received() == {"198.18.12.1": 2}
    assert backend.list() == []
    state = backend.state()
    assert not any(name.startswith(f"r{rule.rule_id}_") for name in state.sets)
    assert not any(name.startswith(f"f{rule.rule_id}_") for name in state.chains)
    assert state.jumps["rules4_l4"] == state.jumps["rules6_l4"] == []


@pytest.mark.lab
def test_withdraw_removes_rule_and_is_idempotent(pair: VethPair, backend: NftablesBackend, observer: Observer) -> None:
    a = backend.apply(Rule(Match(src=as_network("198.18.13.0/24")), Action.DROP, FAR))
    b = backend.apply(Rule(Match(proto=17, dport=Range(14, 14)), Action.DROP, FAR))
    backend.withdraw(a.rule_id)
    backend.withdraw(b.rule_id)
    backend.withdraw(b.rule_id)
    backend.withdraw(999_999)
    blast(pair, [udp4("198.18.13.1", dport=14)], times=2)
    assert observer.received() == {"198.18.13.1": 2}
    assert backend.list() == []
    assert not [n for n in backend.state().sets if n.startswith("r")]


@pytest.mark.lab
def test_close_keeps_the_table_and_remove_deletes_it(pair: VethPair, backend: NftablesBackend) -> None:
    backend.apply(Rule(Match(proto=17), Action.DROP, FAR))
    backend.close()
    with pair.inside():
        assert len(NftablesBackend([pair.rx_if], table=TABLE).list()) == 1
        backend.remove()
        assert not remove_table(TABLE)
        with pytest.raises(DataPlaneError):
            backend.list()


# ---- SYN proxy: a real HTTP server behind it, real clients, a spoofed SYN flood -------------------
#
#   dsn-i3-cl  cl0 203.0.113.1 ──veth── sv0 203.0.113.10:8080  dsn-i3-sv  (HTTP server, SYN proxy)
#
# The flood's sources (198.18.0.0/15) route back to dsn-i3-cl, which drops the proxy's
# SYN-ACKs (it forwards nothing): every packet stays inside the two namespaces.

SP_CL, SP_SV, SP_PORT = "dsn-i3-cl", "dsn-i3-sv", 8080
SP_TABLE = "dsn_i3"


def _ns_run(ns: str, *cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, text=True, timeout=10
    ).stdout


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """An HTTP server on 203.0.113.10:8080 in its own namespace; yields its MAC."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for ns in (SP_CL, SP_SV):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    server = None
    try:
        run = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True, timeout=10)  # noqa: E731
        run("-n", SP_CL, "link", "add", "cl0", "type", "veth", "peer", "name", "sv0", "netns", SP_SV)
        run("-n", SP_CL, "addr", "add", "203.0.113.1/24", "dev", "cl0")
        run("-n", SP_SV, "addr", "add", "203.0.113.10/24", "dev", "sv0")
        for ns, dev in ((SP_CL, "cl0"), (SP_SV, "sv0")):
            run("-n", ns, "link", "set", dev, "up")
            run("-n", ns, "link", "set", "lo", "up")
        run("-n", SP_SV, "route", "add", "198.18.0.0/15", "via", "203.0.113.1")
        with in_netns(SP_SV):
            server = http.server.ThreadingHTTPServer(("203.0.113.10", SP_PORT), _Hello)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        mac = json.loads(_ns_run(SP_SV, "ip", "-j", "link", "show", "sv0"))[0]["address"]
        yield mac
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for ns in (SP_CL, SP_SV):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _get(n: int) -> list[int]:
    """``n`` HTTP requests from the client namespace, each on a new connection."""
    statuses = []
    with in_netns(SP_CL):
        for _ in range(n):
            conn = http.client.HTTPConnection("203.0.113.10", SP_PORT, timeout=5)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                statuses.append(resp.status)
            finally:
                conn.close()
    return statuses


def _half_open() -> int:
    return len(_ns_run(SP_SV, "ss", "-Htn", "state", "syn-recv").splitlines())


@pytest.mark.kernel
def test_syn_proxy_keeps_a_service_up_under_a_spoofed_syn_flood(web: str) -> None:
    flood = 4000
    with in_netns(SP_SV):
        b = NftablesBackend(["sv0"], table=SP_TABLE)
    try:
        rule = Rule(
            Match(proto=6, dst=as_network("203.0.113.10/32"), dport=Range(SP_PORT, SP_PORT)),
            Action.SYN_PROXY,
            expires_at=time.time() + 120,
            attack_id=7,
        )
        with in_netns(SP_SV):
            applied = b.apply(rule)
            assert [(r.rule_id, r.action, r.match) for r in b.list()] == [
                (applied.rule_id, Action.SYN_PROXY, rule.match)
            ]
        assert _get(3) == [200, 200, 200]  # through the proxy, before the flood
        before = synproxy_stats(SP_SV)
        # spoofed SYNs, bounded in number and time, on a packet socket in the client namespace
        with in_netns(SP_CL):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind(("cl0", 0))
        frames = [
            bytes(
                Ether(dst=web, src="02:00:00:00:0d:01")
                / IP(src=f"198.18.{i // 250}.{i % 250 + 1}", dst="203.0.113.10")
                / TCP(sport=1024 + i, dport=SP_PORT, flags="S", seq=i)
            )
            for i in range(flood)
        ]
        sender = threading.Thread(target=lambda: [sock.send(f) for f in frames])
        sender.start()
        statuses = _get(20)  # real clients while the flood runs
        sender.join(timeout=30)
        sock.close()
        after = synproxy_stats(SP_SV)
        with in_netns(SP_SV):
            hits = b.stats()[applied.rule_id]
        assert statuses == [200] * 20
        # the proxy answered every SYN itself; the flood left no half-open connection at the server
        assert after["syn_received"] - before["syn_received"] >= flood
        assert after["cookie_valid"] - before["cookie_valid"] >= 20
        assert _half_open() == 0
        assert hits.packets >= flood
        with in_netns(SP_SV):
            b.withdraw(applied.rule_id)
            assert b.list() == []
        assert _get(2) == [200, 200]  # and without it
    finally:
        with in_netns(SP_SV):
            remove_table(SP_TABLE)
            assert not table_exists(SP_TABLE)


def test_syn_proxy_rules_are_checked() -> None:
    ok = Rule(Match(proto=6, dst=as_network("203.0.113.10/32"), dport=Range(80, 80)), Action.SYN_PROXY, FAR)
    check_rule(ok)
    for m in (
        Match(proto=6, dport=Range(80, 80)),  # no destination
        Match(proto=6, dst=as_network("203.0.113.10/32")),  # no port
        Match(proto=17, dst=as_network("203.0.113.10/32"), dport=Range(53, 53)),  # not TCP
        Match(proto=6, src=as_network("198.18.0.0/15"), dst=as_network("203.0.113.10/32"), dport=Range(80, 80)),
    ):
        with pytest.raises(ValueError, match="SYN proxy"):
            check_rule(Rule(m, Action.SYN_PROXY, FAR))
