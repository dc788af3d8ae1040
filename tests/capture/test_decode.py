"""Vectorised header decoding, checked row by row against scapy's dissection."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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

from ddos_shield.capture.decode import _BLOCK, _decode_general, decode_frames_valid, frames_from_bytes
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


# ---- the fast path against the general one -------------------------------------------
# decode_frames_valid reads the common layouts from fixed columns and leaves the rest to
# the general decoder (_decode_general); both must give the same rows, byte for byte.


def _general(frames: np.ndarray, cap: np.ndarray, wire: np.ndarray, link: str) -> tuple[np.ndarray, np.ndarray]:
    cap = np.minimum(np.asarray(cap, dtype=np.int64), frames.shape[1])
    return _decode_general(frames, cap, np.asarray(wire), link)


def _assert_same(frames: np.ndarray, cap: np.ndarray, wire: np.ndarray, link: str) -> None:
    got, ok = decode_frames_valid(frames, cap, wire, link)
    want, want_ok = _general(frames, cap, wire, link)
    assert (ok == want_ok).all()
    diff = [i for i in range(len(got)) if got[i].tobytes() != want[i].tobytes()]
    assert not diff, f"rows {diff[:5]} differ, first: {got[diff[0]]} != {want[diff[0]]}"


def test_fast_path_matches_general_on_every_case_and_truncation() -> None:
    pkts = [bytes(c[1]) for c in CASES]
    # every case cut at every length, Ethernet and raw IP, in one batch
    cut = [p[:k] for p in pkts for k in range(len(p) + 1)]
    frames, cap, wire = frames_from_bytes(cut)
    _assert_same(frames, cap, wire, "ethernet")
    raw = [p[14:][:k] for p in pkts if p[12:14] in (b"\x08\x00", b"\x86\xdd") for k in range(len(p) - 13)]
    frames, cap, wire = frames_from_bytes(raw)
    _assert_same(frames, cap, wire, "raw")
    # snap lengths shorter than the fast path reads
    for snap in (20, 40, 64, 71):
        frames, cap, wire = frames_from_bytes(pkts, snap)
        _assert_same(frames, cap, wire, "ethernet")


def test_fast_path_matches_general_across_blocks() -> None:
    # more rows than one block, the layouts interleaved, one VLAN-tagged row in a later block
    pkts = [bytes(c[1]) for c in CASES if Dot1Q not in c[1] and Dot1AD not in c[1]]
    rows = pkts * (2 * _BLOCK // len(pkts) + 1)
    rows[-3] = bytes(CASES[6][1])
    frames, cap, wire = frames_from_bytes(rows)
    _assert_same(frames, cap, wire, "ethernet")
    # and a block of one layout only (IPv4), another of IPv6 only
    frames, cap, wire = frames_from_bytes([pkts[0]] * _BLOCK + [pkts[10]] * _BLOCK)
    _assert_same(frames, cap, wire, "ethernet")


# random frames steered towards IP: an EtherType (or version) the decoder takes, IHL 5 often
_ETHERTYPES = [b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x08\x06"]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.binary(min_size=80, max_size=128),
            st.sampled_from(_ETHERTYPES),
            st.sampled_from(_ETHERTYPES),
            st.sampled_from([0x45, 0x46, 0x60, 0x4F, 0x00]),
            st.sampled_from([6, 17, 1, 58, 44, 0, 43, 47]),
            st.integers(0, 128),
        ),
        min_size=1,
        max_size=40,
    ),
    raw=st.booleans(),
)
def test_fast_path_matches_general_on_random_frames(
    rows: list[tuple[bytes, bytes, bytes, int, int, int]], raw: bool
) -> None:
    frames = np.zeros((len(rows), 128), dtype=np.uint8)
    cap = np.zeros(len(rows), dtype=np.int64)
    for i, (body, et1, et2, vihl, proto, c) in enumerate(rows):
        b = bytearray(body)
        if not raw:
            b[12:14], b[16:18] = et1, et2
        ip = 0 if raw else (18 if et1 in (b"\x81\x00", b"\x88\xa8") else 14)
        b[ip] = vihl
        b[ip + (6 if vihl >> 4 == 6 else 9)] = proto
        frames[i, : len(b)] = np.frombuffer(bytes(b), dtype=np.uint8)
        cap[i] = min(c, len(b))
    _assert_same(frames, cap, cap + 4, "raw" if raw else "ethernet")
