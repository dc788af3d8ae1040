"""NetFlow v5/v9 and IPFIX decoding.

Real datagrams (tests/data/flow/, sources in tests/data/SOURCES.md) are checked flow by
flow against Wireshark's cflow dissector.  Its output is recorded in
tests/data/flow/netflow_tshark.json, made by :func:`write_expected` from

    mergecap -a -w all.pcap FILE...                 # the case's files, templates first
    tshark -r all.pcap -d udp.port==PORT,cflow -T json

(tshark 4.0.17, Debian 12), reduced to the fields compared here; when tshark is
installed, :func:`test_recorded_tshark_output_is_current` re-runs it and checks the
record.  Hand-built datagrams cover what the captures do not: every template kind,
options setting the sampling rate, refresh, expiry, variable-length and enterprise
fields, IPv6, unknown templates, truncation at every offset; hypothesis fuzzes the rest.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddos_shield.capture.base import Decoded
from ddos_shield.capture.netflow import NetflowDecoder
from ddos_shield.records import Category, PacketFlag, Source, TrafficBatch, addr_bytes, bytes_addr

DATA = Path(__file__).resolve().parent.parent / "data" / "flow"
EXPECTED = DATA / "netflow_tshark.json"
EXPORTER = addr_bytes("192.0.2.1")
NOW = 1_700_000_000.0

# ---- real captures -----------------------------------------------------------------

# case -> (files fed in this order, exporter UDP port, sampling rate the records must carry)
CASES: dict[str, tuple[tuple[str, ...], int, int]] = {
    # NetFlow v5
    "nfv5": (("akvorado_nfv5",), 9990, 1),
    # NetFlow v9: template then data; options data (sampler 1: 1 in 30000) before them
    "nfv9": (("akvorado_nfv9_template", "akvorado_nfv9_data"), 2055, 1),
    "nfv9_options": (
        ("akvorado_options-template", "akvorado_options-data", "akvorado_nfv9_template", "akvorado_nfv9_data"),
        2055,
        30000,
    ),
    # v9 datagram: data set before its template, options (1 in 100), template, data
    "nfv9_data_templates": (("akvorado_data+templates",), 2055, 100),
    "ndpi_nfv9_no_templates": (("ndpi_netflowv9",), 2057, 1),
    "pmacct_nfv9": (("pmacct_101-NFv9-CISCO",), 9991, 1),
    # IPFIX
    "ipfixprobe": (("akvorado_ipfixprobe-templates", "akvorado_ipfixprobe-data"), 4739, 1),
    "juniper_frames_only": (("akvorado_juniper-cpid-template", "akvorado_juniper-cpid-data"), 2055, 1),
    "fritz_templates": (("ndpi_netflow-fritz",), 2055, 1),
    "pmacct_ipfix": (("pmacct_100-IPFIXv10-CISCO",), 9991, 1),
    "pmacct_ipfix_v6_sampling": (("pmacct_104-IPFIXv10-IPv6-CISCO-sampling",), 9992, 256),
    "pmacct_ipfix_huawei": (("pmacct_106-IPFIXv10-HUAWEI",), 9991, 1),
    "pmacct_ipfix_options": (("pmacct_112-IPFIXv10-CISCO-options",), 9991, 1),
}

# the cflow fields compared (tshark's names without "cflow.")
KEEP = (
    "srcaddr",
    "dstaddr",
    "srcaddrv6",
    "dstaddrv6",
    "srcport",
    "dstport",
    "protocol",
    "tcpflags",
    "packets",
    "packets64",
    "octets",
    "octets64",
    "inputint",
    "ip_ttl",
    "ttl_min",
    "ttl_max",
    "icmp_type_code_ipv4",
    "icmp_ipv4_type",
    "icmp_ipv4_code",
    "fragment_offset",
)
ADDRESS_KEYS = {"srcaddr", "dstaddr", "srcaddrv6", "dstaddrv6"}


def udp_payloads(path: Path) -> Iterator[tuple[int, bytes]]:
    """(UDP source port, payload) of each datagram of a capture (Ethernet or Linux
    cooked; IPv4 or IPv6)."""
    with path.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        linktype = reader.datalink()
        for _ts, buf in reader:
            frame = dpkt.sll.SLL(buf) if linktype == dpkt.pcap.DLT_LINUX_SLL else dpkt.ethernet.Ethernet(buf)
            udp = frame.data.data
            yield udp.sport, bytes(udp.data)


def case_sessions(case: str) -> list[tuple[int, bytes]]:
    return [d for name in CASES[case][0] for d in udp_payloads(DATA / f"{name}.pcap")]


def case_datagrams(case: str) -> list[bytes]:
    return [d for _port, d in case_sessions(case)]


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # tshark's JSON repeats a key for a repeated field (IPFIX reverse counters come second)
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def tshark_flows(case: str) -> list[list[dict[str, str]]]:
    """Per datagram, the data flows tshark shows (fields of :data:`KEEP`)."""
    names, port, _rate = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "all.pcap"
        subprocess.run(
            ["mergecap", "-a", "-w", str(merged), *(str(DATA / f"{n}.pcap") for n in names)],
            check=True,
            capture_output=True,
        )
        out = subprocess.run(
            ["tshark", "-r", str(merged), "-d", f"udp.port=={port},cflow", "-T", "json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    frames = json.loads(out, object_pairs_hook=_first_wins)
    result: list[list[dict[str, str]]] = []
    for frame in frames:
        cflow = frame["_source"]["layers"].get("cflow", {})
        flows: list[dict[str, str]] = []
        for key, value in cflow.items():
            if not isinstance(value, dict):
                continue
            if key.startswith("pdu "):  # NetFlow v5
                candidates = [value]
            elif key.startswith(("FlowSet ", "Set ")):
                candidates = [
                    flow for fkey, flow in value.items() if fkey.startswith("Flow ") and isinstance(flow, dict)
                ]
            else:
                continue
            for flow in candidates:
                kept = {k[6:]: v for k, v in flow.items() if k.startswith("cflow.") and k[6:] in KEEP}
                if kept.keys() & ADDRESS_KEYS:
                    flows.append(kept)
        result.append(flows)
    return result


def write_expected() -> None:
    """Regenerate the recorded tshark output (needs tshark and mergecap)."""
    EXPECTED.write_text(json.dumps({c: tshark_flows(c) for c in CASES}, indent=0, sort_keys=True) + "\n")


def decode_case(case: str, dec: NetflowDecoder | None = None) -> list[Decoded]:
    """Decode a case with one decoder, as the collector does for one exporter address."""
    dec = dec or NetflowDecoder()
    return [dec.decode(d, EXPORTER, NOW) for d in case_datagrams(case)]


def decode_case_per_session(case: str) -> list[Decoded]:
    """Decode a case with one decoder per UDP source port: templates belong to a
    transport session (RFC 7011 8), as tshark keeps them."""
    decoders: dict[int, NetflowDecoder] = {}
    return [decoders.setdefault(port, NetflowDecoder()).decode(d, EXPORTER, NOW) for port, d in case_sessions(case)]


def _int(flow: dict[str, str], *keys: str) -> int | None:
    for k in keys:
        if k in flow:
            return int(flow[k], 0)
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_real_datagrams_match_tshark(case: str) -> None:
    expected = json.loads(EXPECTED.read_text())[case]
    rate = CASES[case][2]
    decoded = decode_case_per_session(case)
    source = Source.NETFLOW if case_datagrams(case)[0][1] in (5, 9) else Source.IPFIX  # the version's low byte
    assert len(decoded) == len(expected)
    for out, flows in zip(decoded, expected, strict=True):
        assert out.error is None
        b = out.batch
        assert len(b) == len(flows)
        for row, flow in zip(b, flows, strict=True):
            # a template may carry both families: the record is IPv6 when its IPv4 ones are empty
            v6 = "srcaddrv6" in flow and flow.get("srcaddr", "0.0.0.0") == flow.get("dstaddr", "0.0.0.0") == "0.0.0.0"
            assert str(bytes_addr(row["src"])) == (flow["srcaddrv6"] if v6 else flow["srcaddr"])
            assert str(bytes_addr(row["dst"])) == (flow["dstaddrv6"] if v6 else flow["dstaddr"])
            assert bool(row["flags"] & PacketFlag.IPV6) == v6
            proto = int(flow["protocol"])
            assert row["proto"] == proto
            assert row["sport"] == int(flow.get("srcport", 0))
            if proto in (1, 58) and (tc := _int(flow, "icmp_type_code_ipv4")) is not None:
                assert row["dport"] == tc
            elif proto == 1 and "icmp_ipv4_type" in flow:
                assert row["dport"] == int(flow["icmp_ipv4_type"]) << 8 | int(flow["icmp_ipv4_code"])
            else:
                assert row["dport"] == int(flow.get("dstport", 0))
            assert row["tcp_flags"] == (int(flow.get("tcpflags", "0"), 16) & 0xFF)
            packets = _int(flow, "packets", "packets64")
            octets = _int(flow, "octets", "octets64")
            assert packets is not None and octets is not None
            assert row["sample_rate"] == rate
            assert row["packets"] == packets * rate
            assert row["bytes"] == octets * rate
            assert row["length"] == (octets // packets if packets else 0)
            assert row["ifindex"] == int(flow.get("inputint", 0))
            ttl = _int(flow, "ip_ttl", "ttl_min", "ttl_max")
            assert bool(row["flags"] & PacketFlag.TTL_UNKNOWN) == (ttl is None)
            assert row["ttl"] == (ttl or 0)
            assert row["flags"] & PacketFlag.LEN_MEAN
            assert row["ts"] == NOW
            assert bytes(row["exporter"]) == EXPORTER
            assert row["source"] == source


# what the captures hold beyond tshark's fields: the counters and categories
@pytest.mark.parametrize(
    ("case", "records", "unknown_sets", "addressless"),
    [
        ("nfv5", 29, 0, 0),
        ("nfv9", 4, 0, 0),
        ("nfv9_data_templates", 10, 1, 0),  # the first data set comes before its template
        ("ndpi_nfv9_no_templates", 0, 23, 0),  # a capture begun after the templates were sent
        ("juniper_frames_only", 0, 0, 1),  # raw frame sections and interfaces, no addresses
        ("fritz_templates", 0, 0, 0),  # templates, options templates, variable-length fields
        ("pmacct_ipfix_v6_sampling", 3, 0, 0),
        # a new source port from frame 11 on (an exporter restart): tshark, keying templates by
        # transport session, knows none there; one decoder per exporter address, as the
        # collector keeps, applies the templates sent before from the old port
        ("pmacct_ipfix_options", 9, 4, 0),
    ],
)
def test_real_datagram_counts(case: str, records: int, unknown_sets: int, addressless: int) -> None:
    dec = NetflowDecoder()
    decoded = decode_case(case, dec)
    assert sum(len(d.batch) for d in decoded) == records
    assert dec.unknown_template_sets == unknown_sets
    assert dec.addressless_records == addressless


def test_real_datagram_fed_twice_learns_its_own_templates() -> None:
    dec = NetflowDecoder()
    (d,) = case_datagrams("nfv9_data_templates")
    assert len(dec.decode(d, EXPORTER, NOW).batch) == 10
    # the header counts 24 records: 21 flows, 1 options data record and 2 templates
    assert len(dec.decode(d, EXPORTER, NOW + 1).batch) == 21
    assert dec.unknown_template_sets == 1


def test_real_categories() -> None:
    b = np.concatenate([d.batch for d in decode_case("nfv5")])
    tcp = b["proto"] == 6
    syn = tcp & ((b["tcp_flags"] & 0x12) == 0x02)
    assert (b["category"][tcp & ~syn] == Category.TCP).all()
    assert (b["category"][syn] == Category.TCP_SYN).all()
    assert (b["category"][b["proto"] == 17] == Category.UDP).all()


@pytest.mark.skipif(shutil.which("tshark") is None or shutil.which("mergecap") is None, reason="tshark not installed")
def test_recorded_tshark_output_is_current() -> None:
    recorded = json.loads(EXPECTED.read_text())
    for case in CASES:
        assert tshark_flows(case) == recorded[case], case


# ---- hand-built datagrams ------------------------------------------------------------


def v5(records: list[bytes], sampling: int = 0, count: int | None = None) -> bytes:
    n = len(records) if count is None else count
    return struct.pack(">HHIIIIBBH", 5, n, 0, 0, 0, 0, 0, 0, sampling) + b"".join(records)


def v5_record(
    src: str, dst: str, sport: int, dport: int, proto: int, flags: int, pkts: int, octets: int, ifin: int = 3
) -> bytes:
    return struct.pack(
        ">4s4s4sHHIIIIHHBBBBHHBBH",
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
        b"\0" * 4,
        ifin,
        0,
        pkts,
        octets,
        0,
        0,
        sport,
        dport,
        0,
        flags,
        proto,
        0,
        0,
        0,
        0,
        0,
        0,
    )


def v9(*sets: bytes, source_id: int = 0) -> bytes:
    return struct.pack(">HHIIII", 9, len(sets), 0, 0, 0, source_id) + b"".join(sets)


def ipfix(*sets: bytes, domain: int = 0, length: int | None = None) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body) if length is None else length, 0, 0, domain) + body


def flowset(set_id: int, body: bytes, pad_to: int = 1) -> bytes:
    body += b"\0" * (-(len(body) + 4) % pad_to)
    return struct.pack(">HH", set_id, 4 + len(body)) + body


Field = tuple[int, int] | tuple[int, int, int]  # (ie, length) or (ie, length, enterprise)


def fields_bytes(fields: list[Field]) -> bytes:
    out = b""
    for f in fields:
        if len(f) == 3:
            out += struct.pack(">HHI", f[0] | 0x8000, f[1], f[2])
        else:
            out += struct.pack(">HH", f[0], f[1])
    return out


def template(tid: int, fields: list[Field]) -> bytes:
    return struct.pack(">HH", tid, len(fields)) + fields_bytes(fields)


def v9_options_template(tid: int, scopes: list[Field], options: list[Field]) -> bytes:
    return struct.pack(">HHH", tid, 4 * len(scopes), 4 * len(options)) + fields_bytes(scopes + options)


def ipfix_options_template(tid: int, scopes: list[Field], options: list[Field]) -> bytes:
    return struct.pack(">HHH", tid, len(scopes) + len(options), len(scopes)) + fields_bytes(scopes + options)


def ip4(a: str) -> bytes:
    return ipaddress.IPv4Address(a).packed


def ip6(a: str) -> bytes:
    return ipaddress.IPv6Address(a).packed


# a common IPv4 layout: src dst sport dport proto flags packets bytes ifindex ttl
V4_FIELDS: list[Field] = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 4), (1, 4), (10, 4), (192, 1)]


def v4_rec(src: str, dst: str, sport: int, dport: int, proto: int, flags: int, pkts: int, octets: int) -> bytes:
    return ip4(src) + ip4(dst) + struct.pack(">HHBBIIIB", sport, dport, proto, flags, pkts, octets, 7, 64)


V6_FIELDS: list[Field] = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (86, 8), (85, 8), (52, 1), (53, 1)]


def v6_rec(src: str, dst: str, sport: int, dport: int, proto: int, pkts: int, octets: int) -> bytes:
    return ip6(src) + ip6(dst) + struct.pack(">HHBQQBB", sport, dport, proto, pkts, octets, 50, 60)


def decode(*datagrams: bytes, dec: NetflowDecoder | None = None, now: float = NOW) -> tuple[TrafficBatch, list[str]]:
    dec = dec or NetflowDecoder()
    parts, errors = [], []
    for d in datagrams:
        out = dec.decode(d, EXPORTER, now)
        parts.append(out.batch)
        if out.error is not None:
            errors.append(out.error)
    return np.concatenate(parts), errors


def col(batch: TrafficBatch, name: str) -> list[Any]:
    if name in ("src", "dst"):
        return [str(bytes_addr(r)) for r in batch[name]]
    return [int(v) for v in batch[name]]


SYN, ACK, PSH = 0x02, 0x10, 0x08

# name, datagrams (fed in order), expected columns
TABLE: list[tuple[str, list[bytes], dict[str, list[Any]]]] = [
    # ---- NetFlow v5
    (
        "v5 unsampled",
        [v5([v5_record("198.18.0.1", "203.0.113.10", 1234, 80, 6, SYN, 10, 400)])],
        {"src": ["198.18.0.1"], "dport": [80], "packets": [10], "bytes": [400], "length": [40], "category": [0]},
    ),
    (
        "v5 header sampling 1 in 64 (mode bits ignored)",
        [v5([v5_record("198.18.0.1", "203.0.113.10", 53, 4444, 17, 0, 3, 300)], sampling=(1 << 14) | 64)],
        {"packets": [192], "bytes": [19200], "sample_rate": [64], "length": [100], "category": [2]},
    ),
    (
        "v5 icmp type/code in dport",
        [v5([v5_record("198.18.0.1", "203.0.113.10", 0, 0x0800, 1, 0, 1, 84)])],
        {"dport": [0x0800], "category": [3], "ttl": [0], "flags": [PacketFlag.TTL_UNKNOWN | PacketFlag.LEN_MEAN]},
    ),
    # ---- NetFlow v9
    (
        "v9 template and data in one datagram",
        [
            v9(
                flowset(0, template(256, V4_FIELDS)),
                flowset(256, v4_rec("198.18.0.2", "203.0.113.10", 1, 80, 6, SYN | ACK, 2, 120), pad_to=4),
            )
        ],
        {"src": ["198.18.0.2"], "ttl": [64], "ifindex": [7], "category": [1], "flags": [PacketFlag.LEN_MEAN]},
    ),
    (
        "v9 template in one datagram, data in the next",
        [
            v9(flowset(0, template(300, V4_FIELDS))),
            v9(
                flowset(
                    300,
                    v4_rec("198.18.0.3", "203.0.113.10", 9, 53, 17, 0, 1, 70)
                    + v4_rec("198.18.0.4", "203.0.113.11", 9, 53, 17, 0, 2, 140),
                )
            ),
        ],
        {"src": ["198.18.0.3", "198.18.0.4"], "dst": ["203.0.113.10", "203.0.113.11"], "packets": [1, 2]},
    ),
    (
        "v9 templates are per source id",
        [
            v9(flowset(0, template(256, V4_FIELDS)), source_id=1),
            v9(flowset(256, v4_rec("198.18.0.5", "203.0.113.10", 1, 2, 17, 0, 1, 60)), source_id=2),
            v9(flowset(256, v4_rec("198.18.0.6", "203.0.113.10", 1, 2, 17, 0, 1, 60)), source_id=1),
        ],
        {"src": ["198.18.0.6"]},
    ),
    (
        "v9 options: sampling interval 34 for the source id",
        [
            v9(
                flowset(1, v9_options_template(257, [(1, 4)], [(34, 4), (35, 1)]), pad_to=4),
                flowset(257, struct.pack(">IIB", 0, 1000, 2), pad_to=4),
                flowset(0, template(256, V4_FIELDS)),
                flowset(256, v4_rec("198.18.0.7", "203.0.113.10", 1, 2, 17, 0, 3, 180)),
            )
        ],
        {"sample_rate": [1000], "packets": [3000], "bytes": [180000], "length": [60]},
    ),
    (
        "v9 options: sampler ids 48 map random intervals 50 to the records naming them",
        [
            v9(
                flowset(1, v9_options_template(258, [(1, 4)], [(48, 1), (49, 1), (50, 4)]), pad_to=4),
                flowset(258, struct.pack(">IBBI", 0, 1, 2, 100) + struct.pack(">IBBI", 0, 2, 2, 2000), pad_to=4),
                flowset(0, template(259, [*V4_FIELDS, (48, 1)])),
                flowset(
                    259,
                    v4_rec("198.18.0.8", "203.0.113.10", 1, 2, 17, 0, 1, 60)
                    + b"\x02"
                    + v4_rec("198.18.0.9", "203.0.113.10", 1, 2, 17, 0, 1, 60)
                    + b"\x01"
                    + v4_rec("198.18.0.10", "203.0.113.10", 1, 2, 17, 0, 1, 60)
                    + b"\x09",  # unknown sampler: the source id's last rate
                ),
            )
        ],
        {"sample_rate": [2000, 100, 2000], "packets": [2000, 100, 2000]},
    ),
    (
        "v9 record's own sampling interval 34 wins",
        [
            v9(
                flowset(0, template(260, [*V4_FIELDS, (34, 4)])),
                flowset(260, v4_rec("198.18.0.11", "203.0.113.10", 1, 2, 17, 0, 5, 500) + struct.pack(">I", 10)),
            )
        ],
        {"sample_rate": [10], "packets": [50], "length": [100]},
    ),
    (
        "v9 template refresh: changed layout under the same id takes effect",
        [
            v9(flowset(0, template(256, V4_FIELDS))),
            v9(flowset(0, template(256, [(12, 4), (8, 4), (2, 4), (1, 4)]))),
            v9(flowset(256, ip4("203.0.113.10") + ip4("198.18.0.12") + struct.pack(">II", 4, 400))),
        ],
        {"src": ["198.18.0.12"], "dst": ["203.0.113.10"], "packets": [4], "proto": [0], "category": [5]},
    ),
    (
        "v9 unknown template: skipped, later sets still read",
        [
            v9(
                flowset(0, template(256, V4_FIELDS)),
                flowset(999, b"\x01" * 40),
                flowset(256, v4_rec("198.18.0.13", "203.0.113.10", 1, 2, 6, SYN, 1, 40)),
            )
        ],
        {"src": ["198.18.0.13"], "category": [0]},
    ),
    (
        "v9 fragments: offset 88 and flags 197",
        [
            v9(
                flowset(0, template(261, [(8, 4), (12, 4), (4, 1), (2, 4), (1, 4), (88, 2), (197, 1)])),
                flowset(
                    261,
                    ip4("198.18.0.14")
                    + ip4("203.0.113.10")
                    + struct.pack(">BIIHB", 17, 1, 1500, 0, 0x20)
                    # the DF bit (0x4000) sometimes rides along with the offset: masked off
                    + ip4("198.18.0.14")
                    + ip4("203.0.113.10")
                    + struct.pack(">BIIHB", 17, 1, 500, 0x4000 | 185, 0)
                    + ip4("198.18.0.14")
                    + ip4("203.0.113.10")
                    + struct.pack(">BIIHB", 17, 1, 500, 0x4000, 0x40),
                ),
            )
        ],
        {
            "category": [Category.UDP, Category.FRAG, Category.UDP],
            "flags": [
                PacketFlag.FRAG | PacketFlag.TTL_UNKNOWN | PacketFlag.LEN_MEAN,
                PacketFlag.FRAG | PacketFlag.FRAG_LATER | PacketFlag.TTL_UNKNOWN | PacketFlag.LEN_MEAN,
                PacketFlag.TTL_UNKNOWN | PacketFlag.LEN_MEAN,
            ],
        },
    ),
    (
        "v9 icmp type/code 32 goes to dport",
        [
            v9(
                flowset(0, template(262, [(8, 4), (12, 4), (4, 1), (11, 2), (32, 2), (2, 4), (1, 4)])),
                flowset(262, ip4("198.18.0.15") + ip4("203.0.113.10") + struct.pack(">BHHII", 1, 0, 0x0303, 1, 56)),
            )
        ],
        {"dport": [0x0303], "category": [3]},
    ),
    (
        "v9 packets from OUT_PKTS 24 when no ingress counter",
        [
            v9(
                flowset(0, template(263, [(8, 4), (12, 4), (24, 4), (23, 4)])),
                flowset(263, ip4("198.18.0.16") + ip4("203.0.113.10") + struct.pack(">II", 6, 600)),
            )
        ],
        {"packets": [6], "bytes": [600]},
    ),
    # ---- IPFIX
    (
        "ipfix template and data",
        [
            ipfix(
                flowset(2, template(256, V4_FIELDS)),
                flowset(256, v4_rec("198.18.1.1", "203.0.113.20", 5, 443, 6, SYN, 100, 6000)),
            )
        ],
        {"src": ["198.18.1.1"], "dport": [443], "packets": [100], "category": [0], "source": [Source.IPFIX]},
    ),
    (
        "ipfix IPv6 with 8-byte total counters and min/max TTL",
        [
            ipfix(
                flowset(2, template(257, V6_FIELDS)),
                flowset(257, v6_rec("2001:2::1", "2001:db8::10", 7, 53, 17, 4, 400)),
            )
        ],
        {
            "src": ["2001:2::1"],
            "dst": ["2001:db8::10"],
            "packets": [4],
            "bytes": [400],
            "ttl": [50],
            "flags": [PacketFlag.IPV6 | PacketFlag.LEN_MEAN],
        },
    ),
    (
        "ipfix icmpv6 type/code 139",
        [
            ipfix(
                flowset(2, template(258, [(27, 16), (28, 16), (4, 1), (139, 2), (2, 4), (1, 4)])),
                flowset(258, ip6("2001:2::2") + ip6("2001:db8::10") + struct.pack(">BHII", 58, 0x8000, 1, 104)),
            )
        ],
        {"dport": [0x8000], "category": [3], "flags": [PacketFlag.IPV6 | PacketFlag.TTL_UNKNOWN | PacketFlag.LEN_MEAN]},
    ),
    (
        "ipfix icmp type 176 and code 177 apart",
        [
            ipfix(
                flowset(2, template(259, [(8, 4), (12, 4), (4, 1), (176, 1), (177, 1), (2, 4), (1, 4)])),
                flowset(259, ip4("198.18.1.2") + ip4("203.0.113.20") + struct.pack(">BBBII", 1, 3, 1, 1, 56)),
            )
        ],
        {"dport": [0x0301]},
    ),
    (
        "ipfix mixed v4/v6 template decided by ipVersion 60",
        [
            ipfix(
                flowset(2, template(260, [(60, 1), (8, 4), (12, 4), (27, 16), (28, 16), (2, 4), (1, 4)])),
                flowset(
                    260,
                    b"\x04"
                    + ip4("198.18.1.3")
                    + ip4("203.0.113.20")
                    + b"\0" * 32
                    + struct.pack(">II", 1, 60)
                    + b"\x06"
                    + b"\0" * 8
                    + ip6("2001:2::3")
                    + ip6("2001:db8::20")
                    + struct.pack(">II", 1, 80),
                ),
            )
        ],
        {"src": ["198.18.1.3", "2001:2::3"], "dst": ["203.0.113.20", "2001:db8::20"]},
    ),
    (
        "ipfix variable-length fields, short and 255-prefixed long, between wanted ones",
        [
            ipfix(
                flowset(2, template(261, [(8, 4), (82, 65535), (12, 4), (84, 65535), (2, 4), (1, 4)])),
                flowset(
                    261,
                    ip4("198.18.1.4")
                    + b"\x03eth"
                    + ip4("203.0.113.21")
                    + b"\x00"
                    + struct.pack(">II", 2, 200)
                    + ip4("198.18.1.5")
                    + b"\xff\x01\x2c"
                    + b"x" * 300
                    + ip4("203.0.113.22")
                    + b"\x01y"
                    + struct.pack(">II", 3, 300),
                    pad_to=4,
                ),
            )
        ],
        {"src": ["198.18.1.4", "198.18.1.5"], "dst": ["203.0.113.21", "203.0.113.22"], "packets": [2, 3]},
    ),
    (
        "ipfix enterprise fields skipped by length, even with a wanted field's number",
        [
            ipfix(
                flowset(2, template(262, [(8, 4), (2, 4, 29305), (12, 4), (1, 8, 9), (2, 4), (1, 4)])),
                flowset(
                    262, ip4("198.18.1.6") + b"\xff" * 4 + ip4("203.0.113.23") + b"\xee" * 8 + struct.pack(">II", 5, 50)
                ),
            )
        ],
        {"packets": [5], "bytes": [50], "dst": ["203.0.113.23"]},
    ),
    (
        "ipfix reduced-size counters (3 and 6 bytes)",
        [
            ipfix(
                flowset(2, template(263, [(8, 4), (12, 4), (2, 3), (1, 6)])),
                flowset(263, ip4("198.18.1.7") + ip4("203.0.113.24") + b"\x01\x00\x00" + b"\x00\x01\x00\x00\x00\x00"),
            )
        ],
        {"packets": [65536], "bytes": [1 << 32]},
    ),
    (
        "ipfix options: samplingPacketInterval/Space 305/306 for the domain",
        [
            ipfix(
                flowset(3, ipfix_options_template(400, [(149, 4)], [(305, 4), (306, 4)])),
                flowset(400, struct.pack(">III", 0, 1, 99)),
                flowset(2, template(256, V4_FIELDS)),
                flowset(256, v4_rec("198.18.1.8", "203.0.113.25", 1, 2, 17, 0, 1, 100)),
                domain=7,
            )
        ],
        {"sample_rate": [100], "packets": [100]},
    ),
    (
        "ipfix options: selectorId 302 with samplingPopulation/Size 310/309, named by records",
        [
            ipfix(
                flowset(3, ipfix_options_template(401, [(302, 4)], [(305, 4), (309, 4), (310, 4)])),
                flowset(401, struct.pack(">IIII", 1, 1, 1, 512)),
                flowset(2, template(264, [*V4_FIELDS, (302, 4)])),
                flowset(264, v4_rec("198.18.1.9", "203.0.113.26", 1, 2, 17, 0, 1, 100) + struct.pack(">I", 1)),
            )
        ],
        {"sample_rate": [512], "packets": [512]},
    ),
    (
        "ipfix withdrawal forgets the template",
        [
            ipfix(flowset(2, template(265, V4_FIELDS))),
            ipfix(flowset(2, struct.pack(">HH", 265, 0))),
            ipfix(flowset(265, v4_rec("198.18.1.10", "203.0.113.27", 1, 2, 17, 0, 1, 100))),
        ],
        {"src": []},
    ),
    (
        "ipfix templates are per observation domain and apart from v9's",
        [
            v9(flowset(0, template(256, V4_FIELDS))),
            ipfix(flowset(256, v4_rec("198.18.1.11", "203.0.113.28", 1, 2, 17, 0, 1, 100))),
            ipfix(flowset(2, template(256, V4_FIELDS)), domain=3),
            ipfix(flowset(256, v4_rec("198.18.1.12", "203.0.113.28", 1, 2, 17, 0, 1, 100)), domain=3),
        ],
        {"src": ["198.18.1.12"]},
    ),
]


@pytest.mark.parametrize(("name", "datagrams", "want"), TABLE, ids=[t[0] for t in TABLE])
def test_hand_built(name: str, datagrams: list[bytes], want: dict[str, list[Any]]) -> None:
    batch, errors = decode(*datagrams)
    assert errors == []
    for column, values in want.items():
        assert col(batch, column) == [int(v) if not isinstance(v, str) else v for v in values], column


def test_default_rate_applies_without_sampling_information() -> None:
    dec = NetflowDecoder(default_rate=250)
    batch, _ = decode(
        v5([v5_record("198.18.0.1", "203.0.113.10", 1, 2, 17, 0, 2, 200)]),
        v9(
            flowset(0, template(256, V4_FIELDS)),
            flowset(256, v4_rec("198.18.0.2", "203.0.113.10", 1, 2, 17, 0, 2, 200)),
        ),
        dec=dec,
    )
    assert col(batch, "sample_rate") == [250, 250]
    assert col(batch, "packets") == [500, 500]
    assert dec.sampling_rate(9, 0) == 250


def test_template_expiry_and_refresh() -> None:
    dec = NetflowDecoder(template_timeout=10.0)
    tmpl = v9(flowset(0, template(256, V4_FIELDS)))
    data = v9(flowset(256, v4_rec("198.18.0.1", "203.0.113.10", 1, 2, 17, 0, 1, 60)))
    assert len(dec.decode(tmpl, EXPORTER, 100.0).batch) == 0
    assert len(dec.decode(data, EXPORTER, 109.0).batch) == 1
    assert len(dec.decode(tmpl, EXPORTER, 109.0).batch) == 0  # refreshed
    assert len(dec.decode(data, EXPORTER, 118.0).batch) == 1  # 9 s after the refresh
    assert dec.unknown_template_sets == 0
    assert len(dec.decode(data, EXPORTER, 119.5).batch) == 0  # 10.5 s: expired
    assert dec.unknown_template_sets == 1
    assert dec.expired_templates == 1
    assert dec.template_count == 0


def test_options_templates_expire_too_but_learnt_rates_stay() -> None:
    dec = NetflowDecoder(template_timeout=10.0)
    opt = v9(
        flowset(1, v9_options_template(257, [(1, 4)], [(34, 4)])),
        flowset(257, struct.pack(">II", 0, 50)),
    )
    dec.decode(opt, EXPORTER, 0.0)
    assert dec.sampling_rate(9, 0) == 50
    dec.decode(v9(flowset(257, struct.pack(">II", 0, 70))), EXPORTER, 20.0)
    assert dec.sampling_rate(9, 0) == 50  # options data of an expired options template: unknown
    assert dec.unknown_template_sets == 1


# ---- bad input ---------------------------------------------------------------------

BAD: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("one byte", b"\x00"),
    ("unknown version", b"\x00\x07" + b"\0" * 30),
    ("v5 short header", v5([])[:20]),
    ("v5 count beyond data", v5([v5_record("198.18.0.1", "203.0.113.10", 1, 2, 17, 0, 1, 60)], count=3)),
    ("v9 short header", v9()[:12]),
    ("v9 set length below 4", v9() + struct.pack(">HH", 256, 2)),
    ("v9 template id below 256", v9(flowset(0, template(12, V4_FIELDS)))),
    ("v9 options scope length not a multiple of 4", v9(flowset(1, struct.pack(">HHH", 300, 3, 4) + b"\0" * 8))),
    ("ipfix message length below header", ipfix(length=8)),
    ("ipfix message longer than datagram", ipfix(flowset(2, template(256, V4_FIELDS)), length=200)),
    ("ipfix options scope count above field count", ipfix(flowset(3, struct.pack(">HHH", 300, 1, 2) + b"\0" * 4))),
    ("ipfix template fields beyond set", ipfix(flowset(2, struct.pack(">HH", 256, 10) + b"\0\x08\0\x04"))),
    ("ipfix enterprise number cut", ipfix(flowset(2, struct.pack(">HHHH", 256, 1, 0x8001, 4)))),
    ("trailing garbage after sets", v9() + b"\x01\x02"),
    ("zero-length template", v9(flowset(0, template(256, [(8, 0)])))),
]


@pytest.mark.parametrize(("name", "datagram"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_reports_an_error(name: str, datagram: bytes) -> None:
    out = NetflowDecoder().decode(datagram, EXPORTER, NOW)
    assert out.error is not None
    assert out.batch.dtype.names == empty_names()


def empty_names() -> tuple[str, ...]:
    from ddos_shield.records import TRAFFIC_DTYPE

    return tuple(TRAFFIC_DTYPE.names or ())


def test_bad_set_keeps_the_records_before_it() -> None:
    good = flowset(256, v4_rec("198.18.0.1", "203.0.113.10", 1, 2, 17, 0, 1, 60))
    d = v9(flowset(0, template(256, V4_FIELDS)), good, struct.pack(">HH", 256, 1), good)
    out = NetflowDecoder().decode(d, EXPORTER, NOW)
    assert len(out.batch) == 1 and out.error is not None


def test_variable_length_record_running_past_its_set() -> None:
    dec = NetflowDecoder()
    dec.decode(ipfix(flowset(2, template(300, [(8, 4), (12, 4), (82, 65535)]))), EXPORTER, NOW)
    rec_ok = ip4("198.18.0.1") + ip4("203.0.113.10") + b"\x01a"
    rec_bad = ip4("198.18.0.2") + ip4("203.0.113.10") + b"\x20ab"  # says 32 bytes, has 2
    out = dec.decode(ipfix(flowset(300, rec_ok + rec_bad)), EXPORTER, NOW)
    assert col(out.batch, "src") == ["198.18.0.1"]
    assert out.error is not None


# ---- truncation at every offset ------------------------------------------------------


def _records_ending_by(cut: int, ends: list[int]) -> int:
    return sum(1 for e in ends if e <= cut)


def test_truncation_at_every_offset_keeps_every_whole_record_before() -> None:
    # v9: template set, then two data sets of 3 and 2 fixed-length records
    recs = [v4_rec(f"198.18.0.{i}", "203.0.113.10", i, 80, 6, SYN, 1, 40) for i in range(5)]
    tmpl = flowset(0, template(256, V4_FIELDS))
    d = v9(tmpl, flowset(256, b"".join(recs[:3])), flowset(256, b"".join(recs[3:])))
    rlen = len(recs[0])
    first = 20 + len(tmpl) + 4
    second = first + 3 * rlen + 4
    ends = [first + (i + 1) * rlen for i in range(3)] + [second + (i + 1) * rlen for i in range(2)]
    full = NetflowDecoder().decode(d, EXPORTER, NOW).batch
    assert len(full) == 5
    for cut in range(len(d)):
        out = NetflowDecoder().decode(d[:cut], EXPORTER, NOW)
        n = _records_ending_by(cut, ends)
        assert len(out.batch) == n, cut
        assert (out.batch == full[:n]).all()
        # a cut inside a set is an error; one on a set boundary looks like a whole (shorter)
        # datagram in v9, and 1-3 zero bytes after the last set are taken for padding
        inside = 20 + len(tmpl) < cut < len(d) and cut != second - 4
        if inside or cut in range(24, 20 + len(tmpl)):
            assert out.error is not None, cut


def test_truncation_at_every_offset_ipfix_variable_length() -> None:
    dec = NetflowDecoder()
    dec.decode(ipfix(flowset(2, template(300, [(8, 4), (82, 65535), (12, 4), (2, 4), (1, 4)]))), EXPORTER, NOW)
    recs = [
        ip4(f"198.18.0.{i}") + bytes([i]) + b"n" * i + ip4("203.0.113.10") + struct.pack(">II", 1, 40) for i in range(4)
    ]
    d = ipfix(flowset(300, b"".join(recs)))
    ends, pos = [], 20
    for r in recs:
        pos += len(r)
        ends.append(pos)
    full = copy.deepcopy(dec).decode(d, EXPORTER, NOW).batch
    assert len(full) == 4
    for cut in range(len(d)):
        out = copy.deepcopy(dec).decode(d[:cut], EXPORTER, NOW)
        n = _records_ending_by(cut, ends)
        assert len(out.batch) == n, cut
        assert (out.batch == full[:n]).all()
        assert out.error is not None  # the message length says more


@pytest.mark.parametrize("case", ["nfv5", "nfv9_data_templates", "ipfixprobe", "pmacct_ipfix_v6_sampling"])
def test_truncating_real_datagrams_keeps_a_prefix(case: str) -> None:
    *setup, last = case_datagrams(case)
    dec = NetflowDecoder()
    for d in setup:
        dec.decode(d, EXPORTER, NOW)
    full = copy.deepcopy(dec).decode(last, EXPORTER, NOW).batch
    previous = 0
    for cut in range(len(last) + 1):
        out = copy.deepcopy(dec).decode(last[:cut], EXPORTER, NOW)
        n = len(out.batch)
        assert n >= previous
        assert (out.batch == full[:n]).all()
        previous = n
    assert previous == len(full)


# ---- fuzzing -------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    out = NetflowDecoder().decode(data, EXPORTER, NOW)
    assert isinstance(out, Decoded)


@FUZZ
@given(st.sampled_from([5, 9, 10]), st.binary(max_size=600))
def test_random_bytes_behind_a_version_never_raise(version: int, rest: bytes) -> None:
    dec = NetflowDecoder()
    dec.decode(v9(flowset(0, template(256, V4_FIELDS))), EXPORTER, NOW)
    dec.decode(ipfix(flowset(2, template(256, [(8, 4), (82, 65535), (12, 4)]))), EXPORTER, NOW)
    out = dec.decode(struct.pack(">H", version) + rest, EXPORTER, NOW)
    assert isinstance(out, Decoded)


def _fuzz_corpus() -> list[tuple[NetflowDecoder, bytes]]:
    corpus = []
    for case in ("nfv5", "nfv9_options", "nfv9_data_templates", "ipfixprobe", "pmacct_ipfix_v6_sampling"):
        *setup, last = case_datagrams(case)
        dec = NetflowDecoder()
        for d in setup:
            dec.decode(d, EXPORTER, NOW)
        corpus.append((dec, last))
    return corpus


CORPUS = _fuzz_corpus()


@FUZZ
@given(st.integers(0, len(CORPUS) - 1), st.data())
def test_mutated_real_datagrams_never_raise_and_keep_records_before_the_mutation(i: int, data: st.DataObject) -> None:
    dec, original = CORPUS[i]
    pos = data.draw(st.integers(0, len(original) - 1))
    mutated = bytearray(original)
    for j in range(data.draw(st.integers(1, 4))):
        p = min(len(mutated) - 1, pos + j * data.draw(st.integers(0, 8)))
        mutated[p] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(pos, len(mutated)))]
    full = copy.deepcopy(dec).decode(original, EXPORTER, NOW).batch
    kept = len(copy.deepcopy(dec).decode(original[:pos], EXPORTER, NOW).batch)  # records wholly before pos
    out = copy.deepcopy(dec).decode(bytes(mutated), EXPORTER, NOW)
    assert isinstance(out, Decoded)
    assert len(out.batch) >= kept
    assert (out.batch[:kept] == full[:kept]).all()


# ---- many datagrams at once ------------------------------------------------------------------------


def _same(one: list[Decoded], many: list[Decoded]) -> None:
    assert len(one) == len(many)
    for a, b in zip(one, many, strict=True):
        assert a.error == b.error
        assert a.batch.tobytes() == b.batch.tobytes()


def _both(datagrams: list[tuple[bytes, float]]) -> None:
    """Decode one by one and all at once (in chunks of every size); both must agree,
    counters and learnt state too."""
    one = NetflowDecoder(default_rate=3)
    want = [one.decode(d, EXPORTER, t) for d, t in datagrams]
    for size in sorted({1, 2, 5, max(len(datagrams), 1)}):
        many = NetflowDecoder(default_rate=3)
        got = [
            out for i in range(0, len(datagrams), size) for out in many.decode_many(datagrams[i : i + size], EXPORTER)
        ]
        _same(want, got)
        assert many.counters() == one.counters()
        assert many.sampling_rate(10, 0) == one.sampling_rate(10, 0)


def test_decode_many_equals_one_by_one_on_real_datagrams() -> None:
    good = [d for case in CASES for d in case_datagrams(case)]
    bad = [d[:cut] for d in good[::5] for cut in (3, 21, len(d) // 2, len(d) - 1)]
    mixed = [d for pair in zip(good, bad * 2, strict=False) for d in pair]  # good and bad interleaved
    datagrams = [(d, NOW + i * 0.5) for i, d in enumerate(mixed)]
    _both(datagrams)
    out = NetflowDecoder().decode_many(datagrams, EXPORTER)
    for (_, t), o in zip(datagrams, out, strict=True):  # each record carries its own datagram's time
        assert (o.batch["ts"] == t).all()


def test_a_sampling_rate_learnt_between_datagrams_applies_from_there_on() -> None:
    opt = v9(flowset(1, v9_options_template(300, [(1, 4)], [(48, 1), (34, 4)])))
    tmpl = v9(flowset(0, template(256, [*V4_FIELDS, (48, 1)])))
    data = v9(flowset(256, v4_rec("198.18.0.1", "203.0.113.10", 1, 80, 6, SYN, 2, 80) + b"\x05"))
    rate_10 = v9(flowset(300, struct.pack(">IBI", 0, 5, 10)))
    rate_50 = v9(flowset(300, struct.pack(">IBI", 0, 5, 50)))
    datagrams = [(d, NOW) for d in (opt, tmpl, data, rate_10, data, data, rate_50, data)]
    _both(datagrams)
    out = NetflowDecoder().decode_many(datagrams, EXPORTER)
    assert [int(o.batch["packets"][0]) for o in out if len(o.batch)] == [2, 20, 20, 100]


def test_decode_many_of_nothing() -> None:
    assert NetflowDecoder().decode_many([], EXPORTER) == []
    out = NetflowDecoder().decode_many([(b"", NOW), (v9(), NOW)], EXPORTER)
    assert [len(o.batch) for o in out] == [0, 0]
    assert out[0].error and out[1].error is None


_MANY_SEEDS = [
    d for case in ("nfv5", "nfv9_options", "pmacct_nfv9", "pmacct_ipfix_huawei") for d in case_datagrams(case)
]


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(range(len(_MANY_SEEDS))), st.integers(0, 2000), st.binary(max_size=6)), max_size=16
    )
)
def test_decode_many_of_mutated_datagrams(picks: list[tuple[int, int, bytes]]) -> None:
    datagrams = []
    for i, (seed, pos, junk) in enumerate(picks):
        d = _MANY_SEEDS[seed]
        pos %= len(d) + 1
        datagrams.append((d[:pos] + junk + d[pos + len(junk) :], NOW + i))
    _both(datagrams)
