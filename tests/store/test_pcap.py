"""Attack captures: frames rebuilt from flow records read back by tshark field by field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from ddos_shield.records import Category, PacketFlag
from ddos_shield.store.history import Packet
from ddos_shield.store.pcap import SYNTH_COMMENT, synthesize, write_pcapng
from tests.traffic import packets

FIELDS = ["ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "ip.proto", "ip.ttl", "ipv6.hlim", "tcp.dstport",
          "tcp.flags", "udp.srcport", "udp.dstport", "icmp.type", "icmpv6.type", "frame.len"]  # fmt: skip

ROWS = [
    # (row, the fields tshark must show)
    (
        packets(1, src="198.18.0.7", dst="203.0.113.10", proto=6, category=Category.TCP_SYN, tcp_flags=0x02, dport=443, length=74, ttl=50),
        {"ip.src": "198.18.0.7", "ip.dst": "203.0.113.10", "tcp.dstport": "443", "tcp.flags": "0x0002", "ip.ttl": "50", "frame.len": "74"},
    ),
    (
        packets(1, src="198.18.0.8", dst="203.0.113.10", proto=17, category=Category.UDP, sport=53, dport=4444, length=1400),
        {"ip.proto": "17", "udp.srcport": "53", "udp.dstport": "4444", "frame.len": "1400"},
    ),
    (
        packets(1, src="2001:2::1", dst="2001:db8::10", proto=17, category=Category.UDP, sport=123, dport=80, length=500, ttl=60),
        {"ipv6.src": "2001:2::1", "ipv6.dst": "2001:db8::10", "udp.dstport": "80", "ipv6.hlim": "60", "frame.len": "500"},
    ),
    (
        packets(1, src="198.18.0.9", dst="203.0.113.10", proto=1, category=Category.ICMP, sport=0, dport=0, length=98),
        {"icmp.type": "8", "frame.len": "98"},
    ),
    (
        packets(1, src="2001:2::2", dst="2001:db8::10", proto=58, category=Category.ICMP, sport=0, dport=0, length=118),
        {"icmpv6.type": "128", "frame.len": "118"},
    ),
]  # fmt: skip


def test_synthesised_frames_read_back_by_tshark(tmp_path: Path) -> None:
    pkts = []
    for i, (row, _) in enumerate(ROWS):
        data, wire = synthesize(row[0])
        pkts.append(Packet(1000.0 + i, wire, data, True))
    # a non-first fragment: no transport header
    frag = packets(1, src="198.18.0.10", dst="203.0.113.10", proto=17, category=Category.FRAG, length=1500)
    frag["flags"] |= np.uint16(PacketFlag.FRAG | PacketFlag.FRAG_LATER)
    data, wire = synthesize(frag[0])
    pkts.append(Packet(1010.0, wire, data, True))
    path = tmp_path / "s.pcapng"
    path.write_bytes(write_pcapng(pkts, "test capture"))
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", *[x for f in FIELDS for x in ("-e", f)], "-e", "ip.frag_offset", "-e", "frame.comment"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert len(lines) == len(ROWS) + 1
    for line, (_, want) in zip(lines, ROWS, strict=False):
        got = dict(zip([*FIELDS, "ip.frag_offset", "frame.comment"], line.split("\t"), strict=True))
        assert {k: got[k] for k in want} == want
        assert got["frame.comment"] == SYNTH_COMMENT
    last = dict(zip([*FIELDS, "ip.frag_offset", "frame.comment"], lines[-1].split("\t"), strict=True))
    assert last["ip.frag_offset"] != "0" and last["udp.dstport"] == ""
    info = subprocess.run(["capinfos", "-k", str(path)], capture_output=True, text=True, timeout=30, check=True)
    assert "test capture" in info.stdout
