"""The AF_PACKET sampler: its BPF program, then real packets in a private namespace
pair (dsn-cap-tx -> dsn-cap-rx)."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ddos_shield.capture.afpacket import BPF_ALU_MOD_K, BPF_JMP_JEQ_K, BPF_RET_K, AfPacketSampler, sample_filter
from ddos_shield.records import Category, PacketFlag, Source, TrafficBatch, bytes_addr
from tests.vethpair import TX_MAC, VethPair, frame

# ---- the filter program ----------------------------------------------------------------

FILTER_ROWS = [
    # off: one instruction that keeps nothing
    (0, [(BPF_RET_K, 0, 0, 0)]),
    # every packet: no random draw
    (1, None),
    # one in N: a modulo of the random draw
    (10, None),
]


@pytest.mark.parametrize(("n", "exact"), FILTER_ROWS)
def test_sample_filter_program(n: int, exact: list[tuple[int, int, int, int]] | None) -> None:
    prog = sample_filter(n, 128)
    if exact is not None:
        assert prog == exact
        return
    assert (BPF_RET_K, 0, 0, 128) in prog and prog[-1] == (BPF_RET_K, 0, 0, 0)
    mods = [k for code, _, _, k in prog if code == BPF_ALU_MOD_K]
    assert mods == ([n] if n > 1 else [])
    for i, (code, jt, jf, _) in enumerate(prog):  # every jump lands inside the program
        if code == BPF_JMP_JEQ_K:
            assert i + 1 + max(jt, jf) < len(prog)


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        sample_filter(-1, 128)


# ---- real packets -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = VethPair("dsn-cap").create()
    try:
        yield p
    finally:
        p.delete()


@pytest.fixture
def sampler(pair: VethPair) -> Iterator[AfPacketSampler]:
    with pair.inside():
        s = AfPacketSampler(pair.rx_if, 1, block_size=1 << 16, blocks=8)
        try:
            yield s
        finally:
            s.close()


def drain(s: AfPacketSampler, want: int | None = None, timeout: float = 2.0) -> TrafficBatch:
    """Read until ``want`` rows (or, without it, until the ring stays quiet)."""
    parts = []
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        select.select([s], [], [], 0.05)
        b = s.read()
        parts.append(b)
        got = sum(len(p) for p in parts)
        if want is not None and got >= want:
            break
        quiet = 0 if len(b) else quiet + 1
        if want is None and quiet >= 4 and got:
            break
    return np.concatenate(parts)


@pytest.mark.lab
def test_every_packet_is_seen_and_decoded(pair: VethPair, sampler: AfPacketSampler) -> None:
    udp = frame(IP(src="198.18.20.1", dst="203.0.113.10", ttl=33) / UDP(sport=1111, dport=53) / Raw(b"q" * 20))
    syn = frame(IPv6(src="2001:2::20", dst="2001:db8:113::10", hlim=7) / TCP(sport=2222, dport=80, flags="S"))
    big = frame(IP(src="198.18.20.2", dst="203.0.113.11") / UDP(sport=3333, dport=9) / Raw(b"b" * 1000))
    t0 = time.time()
    pair.send([udp] * 30 + [syn] * 20 + [big] * 5)
    got = drain(sampler, want=55)
    t1 = time.time()
    assert len(got) == 55
    rows = {
        # source: (count, dst, sport, dport, proto, ttl, tcp flags, category, frame length, IPv6)
        "198.18.20.1": (30, "203.0.113.10", 1111, 53, 17, 33, 0, Category.UDP, len(udp), False),
        "2001:2::20": (20, "2001:db8:113::10", 2222, 80, 6, 7, 0x02, Category.TCP_SYN, len(syn), True),
        "198.18.20.2": (5, "203.0.113.11", 3333, 9, 17, 64, 0, Category.UDP, len(big), False),
    }
    srcs = [str(bytes_addr(a)) for a in got["src"]]
    for src, (count, dst, sport, dport, proto, ttl, flags, cat, length, v6) in rows.items():
        sel = got[np.array([s == src for s in srcs])]
        assert len(sel) == count, src
        assert {str(bytes_addr(a)) for a in sel["dst"]} == {dst}
        assert set(sel["sport"]) == {sport} and set(sel["dport"]) == {dport}
        assert set(sel["proto"]) == {proto} and set(sel["ttl"]) == {ttl}
        assert set(sel["tcp_flags"]) == {flags} and set(sel["category"]) == {cat}
        assert set(sel["length"]) == {length} and set(sel["bytes"]) == {length}  # snapped, not shortened
        assert set(sel["flags"] & PacketFlag.IPV6) == {PacketFlag.IPV6 if v6 else 0}
    assert set(got["packets"]) == {1} and set(got["sample_rate"]) == {1}
    assert set(got["source"]) == {Source.AF_PACKET}
    with pair.inside():
        assert set(got["ifindex"]) == {socket.if_nametoindex(pair.rx_if)}
    assert t0 - 0.01 <= got["ts"].min() <= got["ts"].max() <= t1
    assert sampler.stats() == {"packets": 55, "drops": 0, "freeze_q_cnt": 0}


@pytest.mark.lab
def test_frames_come_with_their_samples(pair: VethPair, sampler: AfPacketSampler) -> None:
    big = frame(IP(src="198.18.20.3", dst="203.0.113.10") / UDP(sport=4444, dport=9) / Raw(b"z" * 1000))
    small = frame(IP(src="198.18.20.4", dst="203.0.113.10") / UDP(sport=5555, dport=9))
    pair.send([big, small])
    parts = []
    deadline = time.monotonic() + 2
    while sum(len(b) for b, _ in parts) < 2 and time.monotonic() < deadline:
        select.select([sampler], [], [], 0.05)
        b, f = sampler.read_frames()
        if f is not None:
            parts.append((b, f))
    batch = np.concatenate([b for b, _ in parts])
    data = np.concatenate([f[0] for _, f in parts])
    caplen = np.concatenate([f[1] for _, f in parts])
    assert [int(x) for x in batch["sport"]] == [4444, 5555]
    assert bytes(data[0, : caplen[0]]) == big[: sampler.snaplen] and caplen[0] == sampler.snaplen
    assert bytes(data[1, : caplen[1]]) == small and caplen[1] == len(small)


@pytest.mark.lab
def test_outgoing_packets_are_not_sampled(pair: VethPair, sampler: AfPacketSampler) -> None:
    with pair.inside():
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        out.bind((pair.rx_if, 0))
    with out:
        f = frame(IP(src="203.0.113.10", dst="198.18.21.1") / UDP(dport=9))
        for _ in range(20):
            out.send(f)
    pair.send([frame(IP(src="198.18.21.2", dst="203.0.113.10") / UDP(dport=9))] * 3)
    got = drain(sampler, want=3)
    time.sleep(0.1)
    got = np.concatenate([got, sampler.read()])
    assert [str(bytes_addr(a)) for a in got["src"]] == ["198.18.21.2"] * 3


@pytest.mark.lab
def test_one_in_ten_keeps_about_a_tenth_scaled(pair: VethPair, sampler: AfPacketSampler) -> None:
    sampler.set_sample_every(10)
    n = 3000
    f = frame(IP(src="198.18.22.1", dst="203.0.113.10") / UDP(dport=9) / Raw(b"t" * 50))
    pair.send([f] * n)
    got = drain(sampler)
    # Binomial(3000, 0.1): mean 300, sd 16.4; these bounds are beyond 6 sd.
    assert 200 <= len(got) <= 400
    assert set(got["sample_rate"]) == {10} and set(got["packets"]) == {10}
    assert set(got["bytes"]) == {10 * len(f)}


@pytest.mark.lab
def test_switching_rate_scales_each_sample_by_the_rate_it_was_taken_at(
    pair: VethPair, sampler: AfPacketSampler
) -> None:
    f = frame(IP(src="198.18.23.1", dst="203.0.113.10") / UDP(dport=9))
    pair.send([f] * 100)
    time.sleep(0.01)
    sampler.set_sample_every(5)  # the first 100 may still sit in an unfinished block
    pair.send([f] * 1000)
    sampler.set_sample_every(0)
    pair.send([f] * 100)
    got = drain(sampler)
    assert int((got["sample_rate"] == 1).sum()) == 100
    fives = int((got["sample_rate"] == 5).sum())
    assert 120 <= fives <= 280  # Binomial(1000, 0.2): mean 200, sd 12.6
    assert set(got["sample_rate"]) == {1, 5}


@pytest.mark.lab
def test_full_ring_counts_drops(pair: VethPair) -> None:
    with pair.inside():
        s = AfPacketSampler(pair.rx_if, 1, block_size=1 << 12, blocks=2)
    with s:
        # Each block holds a few dozen 128-byte samples: 500 packets unread overflow it.
        pair.send([frame(IP(src="198.18.24.1", dst="203.0.113.10") / UDP(dport=9))] * 500)
        time.sleep(0.1)
        st = s.stats()
        assert st["packets"] == 500
        assert st["drops"] > 0
        got = drain(s)
        assert 0 < len(got) <= 500 - st["drops"]
        assert ipaddress.ip_address("198.18.24.1") == bytes_addr(got["src"][0])


@pytest.mark.lab
def test_mirror_port_mode_sees_frames_for_other_hosts(pair: VethPair) -> None:
    def promiscuity() -> int:
        out = subprocess.run(
            ["ip", "-n", pair.rx_ns, "-d", "-j", "link", "show", pair.rx_if], check=True, capture_output=True, text=True
        ).stdout
        return int(json.loads(out)[0]["promiscuity"])

    with pair.inside():
        s = AfPacketSampler(pair.rx_if, 1, block_size=1 << 16, blocks=2, promisc=True)
    with s:
        assert promiscuity() == 1
        other = bytes(
            Ether(src=TX_MAC, dst="02:00:00:00:0d:99") / IP(src="198.18.25.1", dst="203.0.113.10") / UDP(dport=9)
        )
        pair.send([other] * 6)
        got = drain(s, want=6)
        assert len(got) == 6 and {str(bytes_addr(a)) for a in got["src"]} == {"198.18.25.1"}
    assert promiscuity() == 0
