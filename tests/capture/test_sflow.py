"""The sFlow v5 decoder: real datagrams checked against tshark, hand-built datagrams for
each sample and record type, truncation at every offset, sequence numbers, and fuzzing.

Expected values for the real captures (tests/data/flow/, see tests/data/SOURCES.md) were
recorded from tshark 4.0.17's sFlow dissector with

    tshark -r FILE -d udp.port==6343,sflow -T pdml

read by :func:`tshark_view` below; when tshark is installed, ``test_recorded_values_are_tsharks``
runs it again and checks the recorded table against it (it is skipped otherwise).
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, NamedTuple

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from ddos_shield.capture.base import Decoded
from ddos_shield.capture.collector import FlowCollector
from ddos_shield.capture.sflow import SflowDecoder
from ddos_shield.records import Category, PacketFlag, Source, addr_bytes, bytes_addr

DATA = Path(__file__).resolve().parent.parent / "data" / "flow"
EXPORTER = addr_bytes("192.0.2.1")
# explicit addresses: a bare Ether(src=SRC_MAC, dst=DST_MAC) makes scapy ARP for the destination on the host network
SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
NOW = 1_700_000_000.5


# ---- datagram builders (sFlow v5, sflow.org/sflow_version_5.txt) ----------------------


def u32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def record(fmt: int, body: bytes, enterprise: int = 0) -> bytes:
    return u32(enterprise << 12 | fmt, len(body)) + body


def raw_header(frame: bytes | Packet, proto: int = 1, frame_length: int | None = None, snap: int = 128) -> bytes:
    data = bytes(frame)
    head = data[:snap]
    if frame_length is None:  # an Ethernet frame's length counts its FCS, as agents report it
        frame_length = len(data) + 4 if proto == 1 else len(data)
    return record(1, u32(proto, frame_length, max(frame_length - len(head), 0), len(head)) + pad4(head))


def sampled_ipv4(
    src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, flags: int = 0, length: int = 100
) -> bytes:
    a, b = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    return record(3, u32(length, proto) + a + b + u32(sport, dport, flags, 0))


def sampled_ipv6(
    src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, flags: int = 0, length: int = 100
) -> bytes:
    a, b = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return record(4, u32(length, proto) + a + b + u32(sport, dport, flags, 0))


def extended_switch() -> bytes:
    return record(1001, u32(10, 0, 20, 0))


def flow_sample(records: list[bytes], rate: int = 1, ifindex: int = 3, expanded: bool = False, seq: int = 1) -> bytes:
    if expanded:
        body = u32(seq, 0, ifindex, rate, rate * seq, 0, 0, ifindex, 0, 7, len(records))
    else:
        body = u32(seq, ifindex, rate, rate * seq, 0, ifindex, 7, len(records))
    return record(3 if expanded else 1, body + b"".join(records))


def counter_sample(expanded: bool = False) -> bytes:
    generic_if = record(1, bytes(88))  # the generic interface counters record
    head = u32(9, 0, 3, 1) if expanded else u32(9, 3, 1)
    return record(4 if expanded else 2, head + generic_if)


def datagram(
    samples: list[bytes],
    agent: str = "192.0.2.1",
    sub_agent: int = 0,
    seq: int = 1,
    uptime: int = 1000,
    count: int | None = None,
) -> bytes:
    a = ipaddress.ip_address(agent)
    head = u32(5, 1 if a.version == 4 else 2) + a.packed
    return head + u32(sub_agent, seq, uptime, len(samples) if count is None else count) + b"".join(samples)


def decode(data: bytes, dec: SflowDecoder | None = None) -> Decoded:
    return (dec or SflowDecoder()).decode(data, EXPORTER, NOW)


def udp4(src: str = "198.18.0.1", dst: str = "203.0.113.10", ttl: int = 61, size: int = 100) -> Packet:
    return (
        Ether(src=SRC_MAC, dst=DST_MAC) / IP(src=src, dst=dst, ttl=ttl) / UDP(sport=4000, dport=53) / Raw(b"x" * size)
    )


def view(batch: Any) -> list[tuple[str, str, int, int, int, int, int, int, int, int, int]]:
    """(src, dst, proto, sport, dport, ttl, tcp_flags, length, packets, bytes, ifindex) per record."""
    return [
        (
            str(bytes_addr(r["src"])),
            str(bytes_addr(r["dst"])),
            int(r["proto"]),
            int(r["sport"]),
            int(r["dport"]),
            int(r["ttl"]),
            int(r["tcp_flags"]),
            int(r["length"]),
            int(r["packets"]),
            int(r["bytes"]),
            int(r["ifindex"]),
        )
        for r in batch
    ]


# ---- real datagrams against tshark ---------------------------------------------------


class TsharkRow(NamedTuple):
    """A flow sample as tshark shows it (ICMP: type and code in the port slots)."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    ttl: int
    tcp_flags: int
    frame_length: int
    rate: int
    ifindex: int


# (agent, sub-agent, sequence, uptime), counter samples, flow samples -- one entry per datagram
TsharkDatagram = tuple[tuple[str, int, int, int], int, list[TsharkRow]]

V6A, V6B = "2a0c:8880:2:0:185:21:130:38", "2a0c:8880:2:0:185:21:130:39"
RECORDED: dict[str, list[TsharkDatagram]] = {
    # 5 flow samples at 1 in 1024, IPv4 and IPv6 raw Ethernet headers, one SYN
    "akvorado_sflow_data-1140.pcap": [
        (
            ("172.16.0.3", 0, 812646826, 930960704),
            0,
            [
                TsharkRow(V6A, V6B, 6, 46026, 22, 64, 0x10, 1518, 1024, 27),
                TsharkRow("104.26.8.24", "45.90.161.46", 6, 443, 56876, 59, 0x18, 439, 1024, 49001),
                TsharkRow(V6A, V6B, 6, 46026, 22, 64, 0x10, 1518, 1024, 27),
                TsharkRow("45.90.161.148", "191.87.91.27", 6, 55658, 5555, 255, 0x02, 64, 1024, 28),
                TsharkRow(V6A, V6B, 6, 46026, 22, 64, 0x10, 1518, 1024, 27),
            ],
        )
    ],
    # expanded flow sample, VLAN-tagged frame
    "akvorado_sflow_expanded-sample.pcap": [
        (
            ("49.49.49.49", 0, 115694180, 3465002224),
            0,
            [TsharkRow("52.52.52.52", "53.53.53.53", 6, 22, 52237, 61, 0x18, 126, 1000, 29001)],
        )
    ],
    # ICMPv6 neighbour solicitation, unsampled, input interface 0x3fffffff ("internal")
    "akvorado_sflow_icmpv6.pcap": [
        (
            ("127.0.0.1", 1402, 5, 35000),
            0,
            [TsharkRow("fe80::d05b:45ff:feee:5ecf", "2001:db8::", 58, 135, 0, 255, 0, 90, 1, 1073741823)],
        )
    ],
    # expanded flow sample with raw header, Ethernet, extended switch and sampled IPv4 records
    "akvorado_sflow_ipv4-data.pcap": [
        (
            ("49.49.49.49", 1, 52291006, 612173034),
            0,
            [TsharkRow("50.50.50.50", "51.51.51.51", 17, 46622, 58631, 64, 0, 1390, 256, 0)],
        )
    ],
    # 8 counter-sample datagrams and one flow sample of a VLAN-tagged ICMP echo, sequence 415..423
    "ndpi_sflow.pcap": [
        *[
            (("172.21.35.17", 1, seq, up), 1, [])
            for seq, up in ((415, 1732106000), (416, 1732125000), (417, 1732136000))
        ],
        (
            ("172.21.35.17", 1, 418, 1732149000),
            0,
            [TsharkRow("172.21.32.254", "172.21.32.241", 1, 8, 0, 124, 0, 82, 2048, 1048)],
        ),
        *[
            (("172.21.35.17", 1, seq, up), 1, [])
            for seq, up in (
                (419, 1732155000),
                (420, 1732166000),
                (421, 1732185000),
                (422, 1732196000),
                (423, 1732215000),
            )
        ],
    ],
}


def sflow_payloads(path: Path) -> list[bytes]:
    with path.open("rb") as f:
        return [bytes(dpkt.ethernet.Ethernet(buf).data.data.data) for _ts, buf in dpkt.pcap.Reader(f)]


def _show(el: ET.Element, name: str) -> str:
    return next(f.get("show", "") for f in el.iter("field") if f.get("name") == name)


def tshark_view(path: Path) -> list[TsharkDatagram]:
    """What tshark's sFlow dissector shows for each datagram of a capture."""
    pdml = subprocess.run(
        ["tshark", "-r", str(path), "-d", "udp.port==6343,sflow", "-T", "pdml"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    out: list[TsharkDatagram] = []
    for pkt in ET.fromstring(pdml).iter("packet"):
        sf = next(p for p in pkt.iter("proto") if p.get("name") == "sflow")
        agent = next(
            f.get("show", "") for f in sf.iter("field") if f.get("name") in ("sflow_245.agent", "sflow_245.agent.v6")
        )
        head = (
            agent,
            *(
                int(_show(sf, n))
                for n in ("sflow_245.sub_agent_id", "sflow_245.sequence_number", "sflow_245.sysuptime")
            ),
        )
        rows, counters = [], 0
        for s in sf.findall("field"):
            kind = [f.get("show") for f in s.findall("field") if f.get("name") == "sflow_245.sampletype"]
            if not kind:
                continue
            if kind[0] in ("2", "4"):
                counters += 1
                continue
            iface = "sflow.flow_sample.input_interface" if kind[0] == "1" else "sflow.flow_sample.input_interface_value"
            hdr = next(f for f in s.iter("field") if f.get("name") == "sflow_245.header")
            protos = {p.get("name"): p for p in hdr.iter("proto")}
            if "ip" in protos:
                ip, names = protos["ip"], ("ip.src", "ip.dst", "ip.proto", "ip.ttl")
            else:
                ip, names = protos["ipv6"], ("ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.hlim")
            src, dst, proto, ttl = (_show(ip, n) for n in names)
            sport = dport = flags = 0
            for l4 in ("tcp", "udp", "icmp", "icmpv6"):
                if l4 in protos:
                    a, b = ("type", "code") if l4.startswith("icmp") else ("srcport", "dstport")
                    sport, dport = int(_show(protos[l4], f"{l4}.{a}")), int(_show(protos[l4], f"{l4}.{b}"))
                    flags = int(_show(protos[l4], "tcp.flags"), 16) if l4 == "tcp" else 0
                    break
            frame_length, rate = (
                int(_show(s, "sflow_245.header.frame_length")),
                int(_show(s, "sflow.flow_sample.sampling_rate")),
            )
            rows.append(
                TsharkRow(src, dst, int(proto), sport, dport, int(ttl), flags, frame_length, rate, int(_show(s, iface)))
            )
        out.append((head, counters, rows))  # type: ignore[arg-type]
    return out


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_values_are_tsharks(name: str) -> None:
    assert tshark_view(DATA / name) == RECORDED[name]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_real_datagrams_decode_as_tshark_shows(name: str) -> None:
    dec = SflowDecoder()
    payloads = sflow_payloads(DATA / name)
    assert len(payloads) == len(RECORDED[name])
    for data, ((agent, sub_agent, seq, uptime), counters, rows) in zip(payloads, RECORDED[name], strict=True):
        before = dec.counter_samples
        out = decode(data, dec)
        assert out.error is None
        assert dec.counter_samples - before == counters
        state = dec.agents[(addr_bytes(agent), sub_agent)]
        assert (state.sequence, state.uptime_ms) == (seq, uptime)
        want = [
            (
                r.src,
                r.dst,
                r.proto,
                0 if r.proto in (1, 58) else r.sport,
                r.sport << 8 | r.dport if r.proto in (1, 58) else r.dport,  # ICMP type/code as flow exporters store it
                r.ttl,
                r.tcp_flags,
                r.frame_length - 4,  # the frame without its FCS, as the kernel sees it
                r.rate,
                (r.frame_length - 4) * r.rate,
                r.ifindex,
            )
            for r in rows
        ]
        assert view(out.batch) == want
        b = out.batch
        assert (b["sample_rate"] == [r.rate for r in rows]).all()
        assert (b["source"] == Source.SFLOW).all() and (b["ts"] == NOW).all()
        assert all(bytes(e) == EXPORTER for e in b["exporter"])
        v6 = [":" in r.dst for r in rows]
        assert list((b["flags"] & PacketFlag.IPV6) != 0) == v6
        assert not (b["flags"] & (PacketFlag.TTL_UNKNOWN | PacketFlag.LEN_MEAN)).any()
    assert dec.datagrams == len(payloads)
    assert dec.sequence_gaps == 0 and dec.sequence_resets == 0


def test_real_categories() -> None:
    cats = [int(c) for c in decode(sflow_payloads(DATA / "akvorado_sflow_data-1140.pcap")[0]).batch["category"]]
    assert cats == [Category.TCP, Category.TCP, Category.TCP, Category.TCP_SYN, Category.TCP]
    assert decode(sflow_payloads(DATA / "ndpi_sflow.pcap")[3]).batch["category"][0] == Category.ICMP
    assert decode(sflow_payloads(DATA / "akvorado_sflow_ipv4-data.pcap")[0]).batch["category"][0] == Category.UDP


# ---- hand-built datagrams: each sample and record type ---------------------------------

SYN6 = (
    Ether(src=SRC_MAC, dst=DST_MAC)
    / IPv6(src="2001:2::5", dst="2001:db8::10", hlim=50)
    / TCP(sport=1234, dport=443, flags="S")
)
UDP4 = udp4()
FRAG4 = (
    Ether(src=SRC_MAC, dst=DST_MAC)
    / IP(src="198.18.0.9", dst="203.0.113.10", ttl=40, frag=100, proto=17)
    / Raw(b"y" * 60)
)
FRAG6 = (
    Ether(src=SRC_MAC, dst=DST_MAC)
    / IPv6(src="2001:2::7", dst="2001:db8::10")
    / IPv6ExtHdrFragment(offset=10, nh=17)
    / Raw(b"z" * 60)
)
VLAN4 = (
    Ether(src=SRC_MAC, dst=DST_MAC)
    / Dot1Q(vlan=7)
    / IP(src="198.18.1.1", dst="203.0.113.11", ttl=33)
    / ICMP(type=8, code=0)
)
ARP_FRAME = Ether(src=SRC_MAC, dst=DST_MAC) / ARP(psrc="203.0.113.1", pdst="203.0.113.2")


class Case(NamedTuple):
    samples: list[bytes]
    rows: list[tuple[str, str, int, int, int, int, int, int, int, int, int]]
    categories: list[Category]
    flags: list[int]  # PacketFlag bits expected per record
    counters: dict[str, int]


def _u(frame: Packet) -> int:
    return len(bytes(frame))


TTL_UNK = int(PacketFlag.TTL_UNKNOWN)
IPV6 = int(PacketFlag.IPV6)
CASES: dict[str, Case] = {
    # flow sample (format 1), raw Ethernet header
    "ethernet-ipv4-udp": Case(
        [flow_sample([raw_header(UDP4)], rate=10)],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, _u(UDP4), 10, 10 * _u(UDP4), 3)],
        [Category.UDP],
        [0],
        {"flow_samples": 1},
    ),
    "ethernet-ipv6-syn": Case(
        [flow_sample([raw_header(SYN6)], rate=2)],
        [("2001:2::5", "2001:db8::10", 6, 1234, 443, 50, 0x02, _u(SYN6), 2, 2 * _u(SYN6), 3)],
        [Category.TCP_SYN],
        [IPV6],
        {"flow_samples": 1},
    ),
    "vlan-icmp": Case(
        [flow_sample([raw_header(VLAN4)], rate=1, ifindex=9)],
        [("198.18.1.1", "203.0.113.11", 1, 0, 8 << 8, 33, 0, _u(VLAN4), 1, _u(VLAN4), 9)],
        [Category.ICMP],
        [int(PacketFlag.VLAN)],
        {},
    ),
    "ipv4-later-fragment": Case(
        [flow_sample([raw_header(FRAG4)], rate=5)],
        [("198.18.0.9", "203.0.113.10", 17, 0, 0, 40, 0, _u(FRAG4), 5, 5 * _u(FRAG4), 3)],
        [Category.FRAG],
        [int(PacketFlag.FRAG | PacketFlag.FRAG_LATER)],
        {},
    ),
    "ipv6-later-fragment": Case(
        [flow_sample([raw_header(FRAG6)], rate=5)],
        [("2001:2::7", "2001:db8::10", 17, 0, 0, 64, 0, _u(FRAG6), 5, 5 * _u(FRAG6), 3)],
        [Category.FRAG],
        [int(PacketFlag.IPV6 | PacketFlag.FRAG | PacketFlag.FRAG_LATER)],
        {},
    ),
    # header protocols 11 and 12: the header starts at the IP header
    "raw-ipv4-header": Case(
        [flow_sample([raw_header(UDP4[IP], proto=11, frame_length=200)], rate=3)],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, 200, 3, 600, 3)],
        [Category.UDP],
        [0],
        {},
    ),
    "raw-ipv6-header": Case(
        [flow_sample([raw_header(SYN6[IPv6], proto=12, frame_length=80)], rate=4)],
        [("2001:2::5", "2001:db8::10", 6, 1234, 443, 50, 0x02, 80, 4, 320, 3)],
        [Category.TCP_SYN],
        [IPV6],
        {},
    ),
    # a long frame: length and bytes from frame_length, only the first 128 bytes sent
    "truncated-header-long-frame": Case(
        [flow_sample([raw_header(udp4(size=1400))], rate=100)],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, 1442, 100, 144200, 3)],
        [Category.UDP],
        [0],
        {},
    ),
    # expanded flow sample (format 3)
    "expanded-ethernet": Case(
        [flow_sample([extended_switch(), raw_header(UDP4)], rate=7, ifindex=70000, expanded=True)],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, _u(UDP4), 7, 7 * _u(UDP4), 70000)],
        [Category.UDP],
        [0],
        {"flow_samples": 1},
    ),
    # the FCS in an Ethernet header's frame length is not part of the frame at the hook
    "ethernet-frame-length-without-fcs": Case(
        [flow_sample([raw_header(UDP4, frame_length=500)], rate=2)],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, 496, 2, 992, 3)],
        [Category.UDP],
        [0],
        {},
    ),
    "ethernet-frame-length-below-fcs": Case(
        [flow_sample([raw_header(UDP4, frame_length=3)], rate=2)],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, 0, 2, 0, 3)],
        [Category.UDP],
        [0],
        {},
    ),
    # sampled IPv4 / IPv6 records when there is no raw header
    "sampled-ipv4": Case(
        [flow_sample([sampled_ipv4("198.18.0.3", "203.0.113.12", 6, 5555, 80, 0x02, length=60)], rate=8)],
        [("198.18.0.3", "203.0.113.12", 6, 5555, 80, 0, 0x02, 60, 8, 480, 3)],
        [Category.TCP_SYN],
        [TTL_UNK],
        {},
    ),
    "sampled-ipv4-syn-ack": Case(
        [flow_sample([sampled_ipv4("198.18.0.3", "203.0.113.12", 6, 5555, 80, 0x12, length=60)], rate=1)],
        [("198.18.0.3", "203.0.113.12", 6, 5555, 80, 0, 0x12, 60, 1, 60, 3)],
        [Category.TCP],
        [TTL_UNK],
        {},
    ),
    "sampled-ipv6-expanded": Case(
        [flow_sample([sampled_ipv6("2001:2::9", "2001:db8::11", 17, 123, 9999, length=500)], rate=16, expanded=True)],
        [("2001:2::9", "2001:db8::11", 17, 123, 9999, 0, 0, 500, 16, 8000, 3)],
        [Category.UDP],
        [TTL_UNK | IPV6],
        {},
    ),
    "sampled-ipv4-other-protocol": Case(
        [flow_sample([sampled_ipv4("198.18.0.4", "203.0.113.12", 47, length=90)])],
        [("198.18.0.4", "203.0.113.12", 47, 0, 0, 0, 0, 90, 1, 90, 3)],
        [Category.OTHER],
        [TTL_UNK],
        {},
    ),
    # the raw header wins when both are there; a header that is not IP falls back
    "header-preferred": Case(
        [flow_sample([sampled_ipv4("198.18.9.9", "203.0.113.99", 6), raw_header(UDP4)], rate=2)],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, _u(UDP4), 2, 2 * _u(UDP4), 3)],
        [Category.UDP],
        [0],
        {},
    ),
    "arp-header-falls-back": Case(
        [flow_sample([raw_header(ARP_FRAME), sampled_ipv4("198.18.0.5", "203.0.113.13", 17, 1, 2, length=70)], rate=2)],
        [("198.18.0.5", "203.0.113.13", 17, 1, 2, 0, 0, 70, 2, 140, 3)],
        [Category.UDP],
        [TTL_UNK],
        {"undecodable_samples": 0},
    ),
    "other-header-protocol-falls-back": Case(
        [flow_sample([raw_header(b"\x00" * 40, proto=2), sampled_ipv6("2001:2::1", "2001:db8::1", 17)])],
        [("2001:2::1", "2001:db8::1", 17, 0, 0, 0, 0, 100, 1, 100, 3)],
        [Category.UDP],
        [TTL_UNK | IPV6],
        {},
    ),
    # no usable record: the sample is counted, no record made
    "only-extended-records": Case(
        [flow_sample([extended_switch()])], [], [], [], {"flow_samples": 1, "undecodable_samples": 1}
    ),
    "arp-alone": Case([flow_sample([raw_header(ARP_FRAME)])], [], [], [], {"undecodable_samples": 1}),
    "no-records": Case([flow_sample([])], [], [], [], {"undecodable_samples": 1}),
    # sampling rate 0: the configured default rate (5 in this table)
    "rate-zero-uses-default": Case(
        [flow_sample([raw_header(UDP4)], rate=0)],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, _u(UDP4), 5, 5 * _u(UDP4), 3)],
        [Category.UDP],
        [0],
        {},
    ),
    # counter samples are not traffic; other enterprises' samples are skipped by length
    "counter-samples": Case(
        [counter_sample(), counter_sample(expanded=True)], [], [], [], {"counter_samples": 2, "flow_samples": 0}
    ),
    "other-enterprise": Case(
        [record(1, bytes(40), enterprise=4413), record(9, bytes(8))], [], [], [], {"unknown_samples": 2}
    ),
    "extended-record-other-enterprise": Case(
        [flow_sample([record(1, bytes(12), enterprise=8800), raw_header(UDP4)])],
        [("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, _u(UDP4), 1, _u(UDP4), 3)],
        [Category.UDP],
        [0],
        {},
    ),
    # several samples of every kind in one datagram, in order
    "mixed": Case(
        [
            counter_sample(),
            flow_sample([raw_header(SYN6)], rate=2),
            flow_sample([extended_switch()]),
            flow_sample([sampled_ipv4("198.18.0.3", "203.0.113.12", 17, 1, 2, length=60)], rate=3, expanded=True),
            counter_sample(expanded=True),
            flow_sample([raw_header(UDP4[IP], proto=11, frame_length=128)], rate=4),
        ],
        [
            ("2001:2::5", "2001:db8::10", 6, 1234, 443, 50, 0x02, _u(SYN6), 2, 2 * _u(SYN6), 3),
            ("198.18.0.3", "203.0.113.12", 17, 1, 2, 0, 0, 60, 3, 180, 3),
            ("198.18.0.1", "203.0.113.10", 17, 4000, 53, 61, 0, 128, 4, 512, 3),
        ],
        [Category.TCP_SYN, Category.UDP, Category.UDP],
        [IPV6, TTL_UNK, 0],
        {"flow_samples": 4, "counter_samples": 2, "undecodable_samples": 1},
    ),
}


@pytest.mark.parametrize("agent", ["192.0.2.77", "2001:db8:ff::77"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_sample_and_record_types(name: str, agent: str) -> None:
    case = CASES[name]
    dec = SflowDecoder(default_rate=5)
    out = decode(datagram(case.samples, agent=agent, sub_agent=3, seq=77, uptime=5000), dec)
    assert out.error is None
    assert view(out.batch) == case.rows
    assert [Category(c) for c in out.batch["category"]] == case.categories
    assert [int(f) for f in out.batch["flags"]] == case.flags
    assert (out.batch["sample_rate"] == out.batch["packets"]).all()
    assert (out.batch["source"] == Source.SFLOW).all()
    for key, want in case.counters.items():
        assert dec.counters()[key] == want, key
    assert dec.agents[(addr_bytes(agent), 3)].sequence == 77


# ---- truncated and inconsistent datagrams ---------------------------------------------

MIXED = datagram(CASES["mixed"].samples)


def sample_ends(data: bytes) -> list[tuple[int, int]]:
    """(end offset, records it makes) of each sample of a good datagram: walked here, and
    each sample decoded alone."""
    off = 28 if struct.unpack_from(">I", data, 4)[0] == 1 else 40
    count = struct.unpack_from(">I", data, off - 4)[0]
    out = []
    for _ in range(count):
        start, (_fmt, length) = off, struct.unpack_from(">II", data, off)
        off += 8 + length
        out.append((off, len(decode(datagram([data[start:off]])).batch)))
    return out


def rows_before(data: bytes, cut: int) -> int:
    """Records made by the samples that end at or before ``cut``."""
    return sum(rows for end, rows in sample_ends(data) if end <= cut)


def test_truncation_at_every_offset_keeps_what_came_before() -> None:
    full = decode(MIXED)
    assert full.error is None and len(full.batch) == 3
    made = [0, 0, 1, 1, 2, 2, 3]  # records made by the first k samples of "mixed"
    ends = [end for end, _ in sample_ends(MIXED)]
    for cut in range(len(MIXED)):
        out = decode(MIXED[:cut])
        assert out.error, cut
        k = made[sum(end <= cut for end in ends)]
        assert view(out.batch) == view(full.batch[:k]), cut


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_truncation_of_real_datagrams(name: str) -> None:
    for data in sflow_payloads(DATA / name):
        full = view(decode(data).batch)
        ends = sample_ends(data)
        for cut in range(len(data)):
            out = decode(data[:cut])
            assert out.error
            assert view(out.batch) == full[: sum(rows for end, rows in ends if end <= cut)]


def _bad_record_length() -> bytes:
    s = flow_sample([raw_header(UDP4)])
    return s[:44] + u32(10_000) + s[48:]  # the raw header record claims more than the sample holds


def _bad_header_length() -> bytes:
    s = flow_sample([raw_header(UDP4)])
    return s[:60] + u32(10_000) + s[64:]  # the header claims more than its record holds


INCONSISTENT: dict[str, tuple[bytes, int]] = {
    # (datagram, records kept) -- good samples first, then the bad part
    "not version 5": (u32(4, 1) + bytes(20), 0),
    "agent address type 3": (u32(5, 3) + bytes(30), 0),
    "more samples announced than sent": (datagram([flow_sample([raw_header(UDP4)])], count=2), 1),
    "fewer samples announced than sent": (datagram([flow_sample([raw_header(UDP4)])] * 2, count=1), 1),
    "sample shorter than its fixed fields": (datagram([flow_sample([raw_header(UDP4)]), record(1, u32(1, 2, 3))]), 1),
    "expanded sample shorter than its fixed fields": (datagram([record(3, u32(1, 2, 3, 4, 5, 6, 7, 8))]), 0),
    "record count beyond the sample": (
        datagram([flow_sample([raw_header(UDP4)]), record(1, u32(1, 3, 1, 1, 0, 3, 7, 5))]),
        1,
    ),
    "record length beyond the sample": (datagram([flow_sample([raw_header(UDP4)]), _bad_record_length()]), 1),
    "header length beyond the record": (datagram([flow_sample([raw_header(UDP4)]), _bad_header_length()]), 1),
    "raw header record too short": (datagram([flow_sample([record(1, u32(1, 64))])]), 0),
    "sampled ipv4 record too short": (datagram([flow_sample([record(3, u32(1, 2, 3))])]), 0),
    "sampled ipv6 record too short": (datagram([flow_sample([record(4, bytes(40))])]), 0),
    "bytes after the records": (
        datagram([flow_sample([raw_header(UDP4)]), record(1, u32(1, 3, 1, 1, 0, 3, 7, 0, 0))]),
        1,
    ),
    "bytes after the samples": (datagram([flow_sample([raw_header(UDP4)])]) + b"\x00" * 4, 1),
}


@pytest.mark.parametrize("name", sorted(INCONSISTENT))
def test_inconsistent_datagrams(name: str) -> None:
    data, kept = INCONSISTENT[name]
    out = decode(data)
    assert out.error
    assert len(out.batch) == kept
    if kept:
        assert view(out.batch)[0][:2] == ("198.18.0.1", "203.0.113.10")


def test_decoder_inside_the_collector() -> None:
    made: list[SflowDecoder] = []

    def factory() -> SflowDecoder:
        made.append(SflowDecoder())
        return made[-1]

    c = FlowCollector("sflow", ("127.0.0.1", 0), ["192.0.2.1"], factory)
    c.handle(MIXED, "192.0.2.1", NOW)
    c.handle(MIXED[:-3], "192.0.2.1", NOW)
    c.handle(MIXED, "192.0.2.66", NOW)  # untrusted
    assert len(c.read()) == 5  # the collector decodes what it queued when read
    st = c.stats()
    assert (st["192.0.2.1"].datagrams, st["192.0.2.1"].records, st["192.0.2.1"].malformed) == (2, 5, 1)
    assert st["192.0.2.1"].packets == (2 + 3 + 4) + (2 + 3)
    assert st["192.0.2.66"].untrusted == 1
    assert len(made) == 1 and made[0].counter_samples == 4


# ---- sequence numbers ----------------------------------------------------------------


def _seq(dec: SflowDecoder, seq: int, uptime: int, agent: str = "192.0.2.1", sub_agent: int = 0) -> None:
    assert decode(datagram([], agent=agent, sub_agent=sub_agent, seq=seq, uptime=uptime), dec).error is None


SEQUENCES: dict[str, tuple[list[tuple[int, int]], int, int]] = {
    # (sequence, uptime ms) in arrival order -> lost datagrams, restarts
    "in order": ([(1, 1000), (2, 2000), (3, 3000)], 0, 0),
    "two lost": ([(1, 1000), (4, 4000)], 2, 0),
    "late arrival is not lost": ([(1, 1000), (3, 3000), (2, 2000)], 0, 0),
    "duplicate": ([(1, 1000), (2, 2000), (2, 2000), (3, 3000)], 0, 0),
    "sequence wraps": ([(0xFFFFFFFE, 1000), (0xFFFFFFFF, 2000), (1, 4000)], 1, 0),
    "agent restart (uptime back)": ([(5000, 9_000_000), (1, 100), (2, 200)], 0, 1),
    "agent restart soon after a restart": ([(5000, 30_000), (1, 100), (3, 300)], 1, 1),
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_sequence_gaps(name: str) -> None:
    arrivals, lost, resets = SEQUENCES[name]
    dec = SflowDecoder()
    for seq, uptime in arrivals:
        _seq(dec, seq, uptime)
    assert (dec.sequence_gaps, dec.sequence_resets) == (lost, resets)


def test_sequences_are_per_agent_and_sub_agent() -> None:
    dec = SflowDecoder()
    for seq in (1, 2, 3):
        _seq(dec, seq, seq * 1000, agent="192.0.2.1", sub_agent=0)
        _seq(dec, seq * 10, seq * 1000, agent="192.0.2.1", sub_agent=1)
        _seq(dec, seq, seq * 1000, agent="2001:db8::1", sub_agent=0)
    assert dec.sequence_gaps == 18  # only sub-agent 1 skips: 10 -> 20 -> 30
    assert set(dec.agents) == {
        (addr_bytes("192.0.2.1"), 0),
        (addr_bytes("192.0.2.1"), 1),
        (addr_bytes("2001:db8::1"), 0),
    }
    assert dec.agents[(addr_bytes("2001:db8::1"), 0)].datagrams == 3


def test_default_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="default_rate"):
        SflowDecoder(default_rate=0)


# ---- fuzzing ---------------------------------------------------------------------------

REAL = [d for name in sorted(RECORDED) for d in sflow_payloads(DATA / name)]
SEEDS = [*REAL, MIXED, datagram(CASES["mixed"].samples, agent="2001:db8::1")]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    out = decode(data)
    assert out.batch.dtype.names is not None
    assert out.error is not None or len(data) >= 28


@FUZZ
@given(st.binary(max_size=400))
def test_random_sample_bodies_never_raise(body: bytes) -> None:
    # past the header, where random bytes reach the sample and record parsers
    for fmt in (1, 2, 3, 4):
        decode(datagram([record(fmt, body)]))
        decode(datagram([record(fmt, u32(1, 2, 3, 4, 5, 6, 7, 2) + body)]))


@FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_mutated_datagrams_keep_records_before_the_mutation(seed: int, data: st.DataObject) -> None:
    original = SEEDS[seed]
    pos = data.draw(st.integers(0, len(original) - 1), label="position")
    kind = data.draw(st.sampled_from(["set", "truncate", "insert", "delete"]), label="kind")
    junk = data.draw(st.binary(min_size=1, max_size=8), label="junk")
    if kind == "set":
        mutated = original[:pos] + junk + original[pos + len(junk) :]
    elif kind == "truncate":
        mutated = original[:pos]
    elif kind == "insert":
        mutated = original[:pos] + junk + original[pos:]
    else:
        mutated = original[:pos] + original[pos + len(junk) :]
    kept = view(decode(original).batch)[: rows_before(original, pos)]
    out = decode(mutated)
    assert view(out.batch)[: len(kept)] == kept
    assert (out.batch["source"] == Source.SFLOW).all()


# ---- many datagrams in one call --------------------------------------------------------


def _same(one: list[Decoded], many: list[Decoded]) -> None:
    assert len(one) == len(many)
    for a, b in zip(one, many, strict=True):
        assert a.error == b.error
        assert a.batch.tobytes() == b.batch.tobytes()


def _both(datagrams: list[tuple[bytes, float]]) -> tuple[SflowDecoder, SflowDecoder]:
    """Decode one by one and all at once (in chunks of every size); both must agree."""
    one = SflowDecoder(default_rate=3)
    want = [one.decode(d, EXPORTER, t) for d, t in datagrams]
    for size in {1, 2, 5, max(len(datagrams), 1)}:
        many = SflowDecoder(default_rate=3)
        got = [
            out for i in range(0, len(datagrams), size) for out in many.decode_many(datagrams[i : i + size], EXPORTER)
        ]
        _same(want, got)
        assert many.counters() == one.counters()
        assert many.agents == one.agents
    return one, many


def test_decode_many_equals_one_by_one() -> None:
    good = [*REAL, MIXED, *(datagram(c.samples, seq=i + 2) for i, c in enumerate(CASES.values()))]
    bad = [data for data, _ in INCONSISTENT.values()] + [MIXED[:cut] for cut in range(0, len(MIXED), 7)]
    mixed = [d for pair in zip(good, bad * 3, strict=False) for d in pair]  # good and bad interleaved
    datagrams = [(d, NOW + i) for i, d in enumerate(mixed)]
    _both(datagrams)
    # each record carries the arrival time of its own datagram
    out = SflowDecoder().decode_many(datagrams, EXPORTER)
    for (_, t), o in zip(datagrams, out, strict=True):
        assert (o.batch["ts"] == t).all()


def test_decode_many_of_nothing() -> None:
    assert SflowDecoder().decode_many([], EXPORTER) == []
    out = SflowDecoder().decode_many([(b"", NOW), (datagram([]), NOW)], EXPORTER)
    assert [len(o.batch) for o in out] == [0, 0]
    assert out[0].error and out[1].error is None


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(range(len(SEEDS))), st.integers(0, 2000), st.binary(max_size=6)), max_size=12)
)
def test_decode_many_of_mutated_datagrams(picks: list[tuple[int, int, bytes]]) -> None:
    datagrams = []
    for i, (seed, pos, junk) in enumerate(picks):
        d = SEEDS[seed]
        pos %= len(d) + 1
        datagrams.append((d[:pos] + junk + d[pos + len(junk) :], NOW + i))
    _both(datagrams)
