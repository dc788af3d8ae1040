"""Vectorised header decoding, checked row by row against scapy's dissection."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from ddos_shield.capture.decode import decode_frames_valid, frames_from_bytes
from ddos_shield.records import Category, PacketFlag, bytes_addr

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = IP(src="198.51.100.66", dst="203.0.113.10", ttl=57)
V6 = IPv6(src="2001:db8:100::66", dst="2001:db8:113::10", hlim=33)

_big = E / IP(src="198.51.100.66", dst="203.0.113.10", id=7) / UDP(sport=1, dport=2) / Raw(b"x" * 1400)
FRAG4 = fragment(_big[IP], fragsize=600)

CASES: list[tuple[str, Packet, dict[str, object]]] = [
    # ---- IPv4 transports
    (
        "v4 syn",
        E / V4 / TCP(sport=1234, dport=80, flags="S"),
        {"cat": Category.TCP_SYN, "sport": 1234, "dport": 80, "proto": 6, "ttl": 57, "tcp_flags": 0x02},
    ),
    ("v4 ack", E / V4 / TCP(sport=1234, dport=80, flags="A"), {"cat": Category.TCP, "tcp_flags": 0x10}),
    ("v4 synack", E / V4 / TCP(flags="SA"), {"cat": Category.TCP}),
    ("v4 udp", E / V4 / UDP(sport=53, dport=4444), {"cat": Category.UDP, "sport": 53, "dport": 4444}),
    ("v4 icmp", E / V4 / ICMP(type=8, code=0), {"cat": Category.ICMP, "dport": 8 << 8}),
    (
        "v4 gre",
        E / IP(src="198.51.100.66", dst="203.0.113.10", proto=47) / Raw(b"\0" * 8),
        {"cat": Category.OTHER, "proto": 47},
    ),
    # ---- VLAN
    ("vlan", E / Dot1Q(vlan=10) / V4 / UDP(sport=5, dport=6), {"cat": Category.UDP, "flags": PacketFlag.VLAN}),
    (
        "qinq",
        E / Dot1AD(vlan=20) / Dot1Q(vlan=10) / V4 / TCP(flags="S"),
        {"cat": Category.TCP_SYN, "flags": PacketFlag.VLAN},
    ),
    # ---- fragments
    ("v4 first frag", E / FRAG4[0], {"cat": Category.UDP, "sport": 1, "flags": PacketFlag.FRAG}),
    (
        "v4 later frag",
        E / FRAG4[1],
        {"cat": Category.FRAG, "sport": 0, "flags": PacketFlag.FRAG | PacketFlag.FRAG_LATER},
    ),
    # ---- IPv6
    (
        "v6 syn",
        E / V6 / TCP(sport=999, dport=443, flags="S"),
        {"cat": Category.TCP_SYN, "dport": 443, "ttl": 33, "flags": PacketFlag.IPV6},
    ),
    ("v6 icmp", E / V6 / ICMPv6EchoRequest(), {"cat": Category.ICMP, "proto": 58, "dport": 128 << 8}),
    (
        "v6 ext chain",
        E / V6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=7, dport=8),
        {"cat": Category.UDP, "sport": 7, "dport": 8},
    ),
    (
        "v6 first frag",
        E / V6 / IPv6ExtHdrFragment(offset=0, m=1, id=5) / UDP(sport=7, dport=8),
        {"cat": Category.UDP, "sport": 7, "flags": PacketFlag.IPV6 | PacketFlag.FRAG},
    ),
    (
        "v6 later frag",
        E / V6 / IPv6ExtHdrFragment(offset=100, m=0, id=5, nh=17) / Raw(b"y" * 40),
        {"cat": Category.FRAG, "sport": 0, "flags": PacketFlag.IPV6 | PacketFlag.FRAG | PacketFlag.FRAG_LATER},
    ),
]


@pytest.mark.parametrize(("name", "pkt", "want"), CASES, ids=[c[0] for c in CASES])
def test_decode_matches_scapy(name: str, pkt: Packet, want: dict[str, object]) -> None:
    raw = bytes(pkt)
    frames, cap, wire = frames_from_bytes([raw])
    batch, valid = decode_frames_valid(frames, cap, wire)
    row = batch[0]
    assert valid[0]
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    assert bytes_addr(row["src"]) == ipaddress.ip_address(ip.src)
    assert bytes_addr(row["dst"]) == ipaddress.ip_address(ip.dst)
    assert int(row["length"]) == len(raw)
    assert int(row["category"]) == want["cat"]
    for key in ("sport", "dport", "proto", "ttl", "tcp_flags"):
        if key in want:
            assert int(row[key]) == want[key], key
    if "flags" in want:
        assert int(row["flags"]) & int(want["flags"]) == int(want["flags"])  # type: ignore[call-overload]


def test_batch_and_truncation() -> None:
    pkts = [bytes(c[1]) for c in CASES]
    frames, cap, wire = frames_from_bytes(pkts)
    batch, valid = decode_frames_valid(frames, cap, wire)
    assert valid.all()
    # Same result in a batch as one by one.
    for i, p in enumerate(pkts):
        one, _ = decode_frames_valid(*frames_from_bytes([p]))
        assert one[0].tobytes() == batch[i].tobytes()
    # Truncated IPv4 header, and non-IP: invalid, not an exception.
    short = bytes(E / V4 / UDP())[:20]
    arp = bytes(Ether(type=0x0806) / Raw(b"\0" * 28))
    batch, valid = decode_frames_valid(*frames_from_bytes([short, arp]))
    assert not valid.any()


def test_random_bytes_never_raise() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(2000, 128), dtype=np.uint8)
    frames[::2, 12:14] = (0x08, 0x00)
    frames[1::4, 12:14] = (0x86, 0xDD)
    cap = rng.integers(0, 129, size=2000)
    batch, valid = decode_frames_valid(frames, cap, cap)
    assert len(batch) == 2000
    assert not valid[cap < 34].any()
