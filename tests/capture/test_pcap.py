"""The capture reader: real pcap and pcapng files checked against capinfos' packet counts
and dpkt's own decoding, every link type and pcapng block through hand-built files,
chunk and block boundaries, truncated and garbage files, and fuzzing.

The helpers that build frames and capture files are used by the offline-engine tests too.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddos_shield.capture import native, pcap
from ddos_shield.capture.pcap import CaptureReader
from ddos_shield.errors import ShieldError
from ddos_shield.records import Category, PacketFlag, Source, TrafficBatch, bytes_addr, empty_traffic

DATA = Path(__file__).resolve().parent.parent / "data" / "captures"


@pytest.fixture(autouse=True, params=["native", "numpy"])
def walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test reads with both classic pcap walks: the compiled one (capture/native.py,
    built by set-up) and the numpy one the reader falls back to."""
    if request.param == "native":
        native.build()  # set-up has built it; a no-op unless the source is newer
        assert native.load() is not None
    monkeypatch.setattr(pcap, "USE_NATIVE", request.param == "native")
    return str(request.param)


# ---- building frames ------------------------------------------------------------------------


def tcp(sport: int, dport: int, flags: int = 0x02, payload: bytes = b"") -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 512, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, frag: int = 0) -> bytes:
    hdr = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        frag,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, *, hlim: int = 64) -> bytes:
    return (
        struct.pack(">IHBB", 6 << 28, len(payload), nh, hlim)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def eth(payload: bytes, etype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    out = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    for v in vlans:
        out += struct.pack(">HH", 0x8100, v)
    return out + struct.pack(">H", etype) + payload


def ip_frame(packet: bytes) -> bytes:
    return eth(packet, 0x86DD if packet[0] >> 4 == 6 else 0x0800)


#: one of each kind the decoder tells apart, as Ethernet frames
FRAMES = [
    ip_frame(ipv4("198.51.100.1", "203.0.113.10", 6, tcp(40000, 80, 0x02))),  # SYN
    ip_frame(ipv4("198.51.100.2", "203.0.113.10", 6, tcp(40001, 443, 0x10, b"x" * 30))),  # ACK
    ip_frame(ipv4("198.51.100.3", "203.0.113.53", 17, udp(5353, 53, b"q" * 20), ttl=7)),
    ip_frame(ipv4("198.51.100.4", "203.0.113.10", 1, b"\x08\x00\x00\x00\x00\x01\x00\x01")),  # echo
    ip_frame(ipv4("198.51.100.5", "203.0.113.10", 17, b"z" * 40, frag=100)),  # a later fragment
    ip_frame(ipv6("2001:db8::1", "2001:db8:1::10", 17, udp(1234, 53, b"v6"))),
    ip_frame(ipv6("2001:db8::2", "2001:db8:1::10", 6, tcp(2345, 22, 0x02))),
]

# ---- building capture files -----------------------------------------------------------------


def pcap_bytes(
    linktype: int,
    records: list[tuple[float, bytes]],
    *,
    order: str = "<",
    nanos: bool = False,
    orig: list[int] | None = None,
) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    per = 10**9 if nanos else 10**6
    for i, (ts, data) in enumerate(records):
        sec = int(ts)
        frac = round((ts - sec) * per)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), orig[i] if orig else len(data)) + data)
    return b"".join(out)  # one join: appending to bytes is quadratic


def block(btype: int, body: bytes, order: str = "<") -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def shb(order: str = "<") -> bytes:
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def idb(linktype: int, *, order: str = "<", snaplen: int = 0, tsresol: int | None = None, tsoffset: int = 0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += option(9, bytes([tsresol]), order)
    if tsoffset:
        opts += option(14, struct.pack(order + "q", tsoffset), order)
    if opts:
        opts += option(0, b"", order)
    return block(1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts, order)


def epb(iface: int, units: int, data: bytes, *, order: str = "<", orig: int | None = None) -> bytes:
    body = struct.pack(order + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), orig or len(data))
    return block(6, body + data, order)


def opb(iface: int, units: int, data: bytes, *, order: str = "<") -> bytes:
    body = struct.pack(order + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
    return block(2, body + data, order)


def spb(data: bytes, *, order: str = "<") -> bytes:
    return block(3, struct.pack(order + "I", len(data)) + data, order)


def write(tmp: Path, name: str, content: bytes) -> Path:
    p = tmp / name
    p.write_bytes(content)
    return p


def read_all(path: Path, chunk_packets: int = pcap.CHUNK_PACKETS) -> tuple[TrafficBatch, CaptureReader]:
    r = CaptureReader(path, chunk_packets=chunk_packets)
    batches = list(r.batches())
    return (np.concatenate(batches) if batches else empty_traffic()), r


# ---- link types: each turned into what the decoder reads --------------------------------------


def as_link(frame: bytes, linktype: int) -> bytes:
    etype, payload = frame[12:14], frame[14:]
    v6 = payload[0] >> 4 == 6
    if linktype == pcap.LINKTYPE_ETHERNET:
        return frame
    if linktype == pcap.LINKTYPE_LINUX_SLL:
        return struct.pack(">HHH", 0, 1, 6) + frame[6:12] + b"\x00\x00" + etype + payload
    if linktype == pcap.LINKTYPE_LINUX_SLL2:
        return etype + b"\x00\x00" + struct.pack(">IHBB", 3, 1, 0, 6) + frame[6:12] + b"\x00\x00" + payload
    if linktype in (pcap.LINKTYPE_RAW, pcap.LINKTYPE_IPV4, pcap.LINKTYPE_IPV6):
        return payload
    if linktype == pcap.LINKTYPE_NULL:
        return struct.pack("<I", 24 if v6 else 2) + payload  # written on a little-endian host
    if linktype == pcap.LINKTYPE_LOOP:
        return struct.pack(">I", 24 if v6 else 2) + payload
    raise AssertionError(linktype)


def reference() -> TrafficBatch:
    path_frames = [(1000.0 + i * 0.001, f) for i, f in enumerate(FRAMES)]
    from ddos_shield.capture.decode import decode_frames, frames_from_bytes

    arr, cap, wire = frames_from_bytes([f for _, f in path_frames], pcap.SNAPLEN)
    return decode_frames(arr, cap, wire)


COLUMNS = ("src", "dst", "sport", "dport", "proto", "tcp_flags", "ttl", "category")


@pytest.mark.parametrize(
    ("linktype", "keep", "wire_extra"),
    [
        # Ethernet-shaped (the pseudo-header stands where Ethernet's was)
        (pcap.LINKTYPE_ETHERNET, "all", 14),
        (pcap.LINKTYPE_LINUX_SLL, "all", 14),
        (pcap.LINKTYPE_LINUX_SLL2, "all", 14),
        # rows start at the IP header
        (pcap.LINKTYPE_RAW, "all", 0),
        (pcap.LINKTYPE_IPV4, "v4", 0),
        (pcap.LINKTYPE_IPV6, "v6", 0),
        (pcap.LINKTYPE_NULL, "all", 0),
        (pcap.LINKTYPE_LOOP, "all", 0),
    ],
)
@pytest.mark.parametrize("container", ["pcap", "pcapng"])
def test_every_link_type_decodes_like_ethernet(
    tmp_path: Path, linktype: int, keep: str, wire_extra: int, container: str
) -> None:
    ref = reference()
    rows = [i for i, f in enumerate(FRAMES) if keep == "all" or (f[14] >> 4 == 6) == (keep == "v6")]
    records = [(1000.0 + i * 0.001, as_link(FRAMES[i], linktype)) for i in rows]
    if container == "pcap":
        content = pcap_bytes(linktype, records)
    else:
        content = shb() + idb(linktype) + b"".join(epb(0, round(ts * 1e6), d) for ts, d in records)
    got, r = read_all(write(tmp_path, "x", content))
    assert (r.stats.packets, r.stats.decoded, r.stats.malformed, r.stats.not_ip) == (len(rows), len(rows), 0, 0)
    want = ref[rows]
    for col in COLUMNS:
        assert np.array_equal(got[col], want[col]), col
    assert np.array_equal(got["flags"], want["flags"])
    assert list(got["length"]) == [len(FRAMES[i]) - 14 + wire_extra for i in rows]
    assert list(got["bytes"]) == list(got["length"])
    assert np.allclose(got["ts"], [ts for ts, _ in records], atol=1e-6)
    assert set(got["packets"]) == {1} and set(got["sample_rate"]) == {1} and set(got["source"]) == {Source.PCAP}


def test_unsupported_link_type_is_refused_at_open(tmp_path: Path) -> None:
    p = write(tmp_path, "wifi.pcap", pcap_bytes(105, [(1.0, b"\x00" * 40)]))
    with pytest.raises(ShieldError, match="link type 105"):
        CaptureReader(p)


# ---- pcap and pcapng variants ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "nanos"),
    [
        ("<", False),  # the usual
        (">", False),  # written on a big-endian machine
        ("<", True),  # nanosecond timestamps
        (">", True),
    ],
)
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, order: str, nanos: bool) -> None:
    ts = [1_600_000_000.123456, 1_600_000_001.000001]
    p = write(tmp_path, "x.pcap", pcap_bytes(1, list(zip(ts, FRAMES[:2], strict=True)), order=order, nanos=nanos))
    got, r = read_all(p)
    assert r.format == "pcap" and len(got) == 2
    assert np.allclose(got["ts"], ts, atol=1e-6)
    assert (r.stats.first_ts, r.stats.last_ts) == pytest.approx((ts[0], ts[1]), abs=1e-6)


def test_pcapng_interfaces_blocks_resolutions_and_sections(tmp_path: Path) -> None:
    v4 = FRAMES[2]
    content = (
        # section 1, little-endian: Ethernet at microseconds, raw IP at nanoseconds with an offset
        shb("<")
        + idb(1, order="<")
        + idb(101, order="<", tsresol=9, tsoffset=100)
        + epb(0, 1_000_000_000_500_000, v4)
        + epb(1, 2_000_000_000_250_000_000, v4[14:])
        + block(4, b"\x00\x00\x00\x00")  # a name resolution block: skipped
        + opb(0, 1_000_000_001_000_000, v4)  # obsolete packet block
        + spb(v4)  # simple packet block: no time of its own
        + epb(7, 0, v4)  # names no interface
        # section 2, big-endian: binary resolution (2^-10 s), Linux cooked
        + shb(">")
        + idb(113, order=">", tsresol=0x80 | 10)
        + epb(0, 3 * 1024 + 512, as_link(v4, 113), order=">")
    )
    got, r = read_all(write(tmp_path, "x.pcapng", content))
    assert r.format == "pcapng" and r.stats.error is None
    assert (r.stats.packets, r.stats.decoded, r.stats.unsupported) == (6, 5, 1)
    assert r.stats.linktypes == ["ethernet", "raw", "linux-sll"]
    assert list(got["ts"]) == pytest.approx([1_000_000_000.5, 2_000_000_100.25, 1_000_000_001.0, 1_000_000_001.0, 3.5])
    assert {str(bytes_addr(a)) for a in got["dst"]} == {"203.0.113.53"}
    assert list(got["dport"]) == [53] * 5


def test_simple_packet_block_is_cut_to_the_interface_snap_length(tmp_path: Path) -> None:
    frame = FRAMES[1]
    content = shb() + idb(1, snaplen=54) + epb(0, 5_000_000, FRAMES[0]) + spb(frame)
    got, r = read_all(write(tmp_path, "x.pcapng", content))
    assert (r.stats.packets, r.stats.decoded) == (2, 2)
    assert got["length"][1] == len(frame)  # the wire length stays the packet's
    assert got["tcp_flags"][1] == 0x10 and got["ts"][1] == got["ts"][0] == pytest.approx(5.0)


# ---- what is skipped, and counted ----------------------------------------------------------------


def test_non_ip_and_malformed_packets_are_counted_and_skipped(tmp_path: Path) -> None:
    arp = eth(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20, 0x0806)
    records = [
        (1.0, FRAMES[0]),
        (1.1, arp),  # not IP
        (1.2, FRAMES[0][:24]),  # IPv4 header cut after 10 bytes: malformed
        (1.3, eth(b"\x45" + b"\x00" * 30, 0x0800)[:10]),  # not even an Ethernet header: malformed
        (1.4, eth(ipv4("192.0.2.1", "192.0.2.2", 17, udp(1, 2)), 0x0800, vlans=(10, 20))),  # two VLAN tags
        (1.5, eth(b"\x44" + b"\x00" * 25, 0x0800)),  # an IPv4 header length below 20 bytes
    ]
    got, r = read_all(write(tmp_path, "x.pcap", pcap_bytes(1, records)))
    assert (r.stats.packets, r.stats.decoded, r.stats.not_ip, r.stats.malformed) == (6, 2, 1, 3)
    assert r.stats.error is None
    assert [int(x) for x in got["dport"]] == [80, 2]
    assert int(got["flags"][1]) & PacketFlag.VLAN


# ---- chunks and blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("read_bytes", [64, 100, 4096])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunk_and_block_boundaries_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_bytes: int, chunk: int
) -> None:
    records = [(2000.0 + i * 0.01, FRAMES[i % len(FRAMES)]) for i in range(40)]
    files = {
        "pcap": pcap_bytes(1, records),
        "pcapng": shb() + idb(1) + b"".join(epb(0, round(t * 1e6), f) for t, f in records),
    }
    for name, content in files.items():
        whole, _ = read_all(write(tmp_path, name, content))
        monkeypatch.setattr(pcap, "READ_BYTES", read_bytes)
        got, r = read_all(write(tmp_path, name, content), chunk_packets=chunk)
        monkeypatch.undo()
        assert r.stats.error is None and r.stats.packets == 40
        assert np.array_equal(got, whole), name


def test_progress_reaches_the_file_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcap, "READ_BYTES", 1000)
    p = write(tmp_path, "x.pcap", pcap_bytes(1, [(float(i), FRAMES[0]) for i in range(100)]))
    seen: list[tuple[int, int]] = []
    r = CaptureReader(p, progress=lambda done, total: seen.append((done, total)))
    sum(len(b) for b in r.batches())
    size = p.stat().st_size
    assert len(seen) > 3 and seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


# ---- the record walk: candidates found in bulk, chained, and the walk by hand where they break ----


def _walk_by_hand(content: bytes, order: str = "<") -> list[int]:
    """Where each record starts, header to header (the reference)."""
    out, pos = [], 24
    while pos + 16 <= len(content):
        (incl,) = struct.unpack_from(order + "I", content, pos + 8)
        if incl > pcap.MAX_RECORD or pos + 16 + incl > len(content):
            break
        out.append(pos)
        pos += 16 + incl
    return out


def _decoy(sec: int, order: str = "<") -> bytes:
    """Bytes that look like a record header (a plausible time and length) inside a payload."""
    return struct.pack(order + "IIII", sec, 5, 20, 20)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("read_bytes", [200, 4096, 8 << 20])
def test_record_walk_matches_the_walk_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str, read_bytes: int
) -> None:
    rng = np.random.default_rng(5)
    t0 = 0x6553_FF00  # 256 s before the high half of the seconds steps up
    records = []
    for i in range(300):
        frame = FRAMES[i % len(FRAMES)]
        if i % 7 == 0:  # payloads holding what looks like a header of this capture
            frame += _decoy(t0 + i, order) * int(rng.integers(1, 4))
        if i % 11 == 0:  # payloads of random bytes
            frame += rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        ts = t0 + i * 2.0  # crosses the step at record 128
        if i == 150:
            ts += 10**6  # a jump in time: its records are not candidates of the window
        if i == 151:
            ts = 5.0  # and back, far
        records.append((ts, frame))
    content = pcap_bytes(1, records, order=order)
    monkeypatch.setattr(pcap, "READ_BYTES", read_bytes)
    r = CaptureReader(write(tmp_path, "walk.pcap", content))
    ts = np.concatenate([c.ts for c in r.chunks()])
    assert r.stats.error is None and r.stats.packets == 300
    assert np.allclose(ts, [t for t, _ in records])
    want = _walk_by_hand(content, order)
    with open(tmp_path / "walk.pcap", "rb") as f:  # the whole file as one window
        m = pcap._Mapped(f, len(content), None)
        walk = pcap._PcapWalk(m, order, np.dtype([(n, order + "u4") for n in ("sec", "frac", "incl", "orig")]))
        got, pos = walk.records(24, len(content))
        m.close()
    assert got.tolist() == want and pos == len(content)


@pytest.mark.parametrize("near_wrap", [False, True])
def test_records_past_a_step_of_the_seconds_high_half(tmp_path: Path, near_wrap: bool) -> None:
    # the window starts NEAR_WRAP seconds or more before the step: records past it are
    # walked by hand, and every one is still read
    start = 0x1_0000 * 0x6553 - (pcap.NEAR_WRAP // 2 if near_wrap else pcap.NEAR_WRAP * 2)
    records = [(start + i * (pcap.NEAR_WRAP / 20), FRAMES[i % len(FRAMES)]) for i in range(100)]
    got, r = read_all(write(tmp_path, "step.pcap", pcap_bytes(1, records)))
    assert r.stats.error is None and r.stats.packets == 100
    assert np.allclose(got["ts"], [t for t, _ in records][: len(got)])


def test_payloads_that_look_like_headers_are_not_records(tmp_path: Path) -> None:
    sec = 1_700_000_000
    frame = FRAMES[2] + _decoy(sec) * 40  # a payload full of headers a walk could land on
    records = [(sec + i * 0.5, frame) for i in range(50)]
    got, r = read_all(write(tmp_path, "decoy.pcap", pcap_bytes(1, records)))
    assert r.stats.error is None and r.stats.packets == 50 == len(got)
    assert set(got["dport"].tolist()) == {53}


# ---- real captures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "linktype", "packets", "ip"),
    [
        # capinfos' counts, as in tests/data/SOURCES.md; "ip" is what tshark dissects as IP
        ("ddosgrid_synflood.pcap", "pcap", "ethernet", 7769, 7769),
        ("ndpi_ookla.pcap", "pcapng", "ethernet", 113, 113),
        ("ndpi_dns.pcap", "pcapng", "ethernet", 5, 3),  # 2 frames are PPPoE, which is not read
        ("ndpi_opc-ua.pcap", "pcap", "null", 381, 381),
        ("pmacct_112-IPFIXv10-CISCO-options.pcap", "pcap", "linux-sll", 21, 21),
        ("stopddos_amp.UDP.snmp.src161.pcapng", "pcap", "ethernet", 4373, 4373),
    ],
)
def test_real_captures_read_every_packet(name: str, fmt: str, linktype: str, packets: int, ip: int) -> None:
    _, r = read_all(DATA / name)
    assert (r.format, r.stats.linktypes, r.stats.packets, r.stats.decoded) == (fmt, [linktype], packets, ip)
    assert r.stats.error is None and r.stats.malformed == 0


@pytest.mark.parametrize(
    "name",
    ["ndpi_ookla.pcap", "ndpi_opc-ua.pcap", "pmacct_112-IPFIXv10-CISCO-options.pcap", "zeek_snmpwalk-short.pcap"],
)
def test_real_captures_decode_as_dpkt_does(name: str) -> None:
    got, _ = read_all(DATA / name)
    want = list(_dpkt_rows(DATA / name))
    assert len(got) == len(want)
    for row, (ts, src, dst, proto, sport, dport) in zip(got, want, strict=True):
        assert row["ts"] == pytest.approx(ts, abs=1e-6)
        assert (str(bytes_addr(row["src"])), str(bytes_addr(row["dst"])), int(row["proto"])) == (src, dst, proto)
        assert (int(row["sport"]), int(row["dport"])) == (sport, dport)


def _dpkt_rows(path: Path) -> Iterator[tuple[float, str, str, int, int, int]]:
    with open(path, "rb") as f:
        try:
            reader = dpkt.pcap.Reader(f)
        except ValueError:
            f.seek(0)
            reader = dpkt.pcapng.Reader(f)
        link = reader.datalink()
        for ts, buf in reader:
            frame = {1: dpkt.ethernet.Ethernet, 113: dpkt.sll.SLL, 0: dpkt.loopback.Loopback}[link](buf)
            ip = frame.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            l4 = ip.data
            ports = (l4.sport, l4.dport) if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP) else (0, 0)
            src = ipaddress.ip_address(ip.src)
            dst = ipaddress.ip_address(ip.dst)
            yield float(ts), str(src), str(dst), ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt, *ports


def test_categories_of_a_real_syn_flood() -> None:
    got, _ = read_all(DATA / "ddosgrid_synflood.pcap")
    syn = got[got["category"] == Category.TCP_SYN]
    assert len(syn) > 7600
    assert {str(bytes_addr(a)) for a in syn["dst"]} == {"10.0.1.12"}


# ---- bad files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "starts with nothing"),
        (b"hello, this is not a capture at all", "not a pcap or pcapng"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "header cut short"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", "cut short"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x11\x22\x33\x44" + b"\x00" * 16, "byte-order magic"),
    ],
)
def test_files_that_are_no_capture_are_refused_at_open(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(ShieldError, match=message):
        CaptureReader(write(tmp_path, "bad", content))


def test_missing_file_is_refused_at_open(tmp_path: Path) -> None:
    with pytest.raises(ShieldError, match="cannot read"):
        CaptureReader(tmp_path / "nothing-here.pcap")


def _cuts() -> list[tuple[str, int]]:
    return [("pcap", n) for n in (24 + 8, 24 + 16 + 30, 24 + 2 * (16 + len(FRAMES[0])) - 1)] + [
        ("pcapng", n) for n in (28 + 20 + 4, 28 + 20 + 32 + len(FRAMES[0]) + 30)
    ]


@pytest.mark.parametrize(("kind", "cut"), _cuts())
def test_truncated_file_keeps_what_was_read(tmp_path: Path, kind: str, cut: int) -> None:
    records = [(10.0 + i, FRAMES[0]) for i in range(5)]
    if kind == "pcap":
        full = pcap_bytes(1, records)
        complete = max(0, (cut - 24) // (16 + len(FRAMES[0])))
    else:
        full = shb() + idb(1) + b"".join(epb(0, round(t * 1e6), f) for t, f in records)
        epb_len = len(epb(0, 0, FRAMES[0]))
        complete = max(0, (cut - len(shb()) - len(idb(1))) // epb_len)
    got, r = read_all(write(tmp_path, "cut", full[:cut]))
    assert len(got) == r.stats.packets == complete
    assert r.stats.error is not None and "cut short" in r.stats.error


@pytest.mark.parametrize(
    "tail",
    [
        struct.pack("<IIII", 1, 0, 10_000_000, 10_000_000) + b"\x00" * 64,  # a record longer than any
        b"\xff" * 64,  # garbage after good records
    ],
)
def test_corrupt_pcap_record_ends_reading_with_an_error(tmp_path: Path, tail: bytes) -> None:
    content = pcap_bytes(1, [(1.0, FRAMES[0]), (2.0, FRAMES[1])]) + tail
    got, r = read_all(write(tmp_path, "x.pcap", content))
    assert len(got) == 2 and r.stats.error is not None


@pytest.mark.parametrize(
    "tail",
    [
        block(6, b"\x00" * 8)[:-4] + b"\x99\x00\x00\x00",  # trailing length differs
        struct.pack("<II", 6, 13) + b"\x00" * 16,  # length not a multiple of 4
        struct.pack("<II", 6, 4) + b"\x00" * 16,  # shorter than a block header
    ],
)
def test_corrupt_pcapng_block_ends_reading_with_an_error(tmp_path: Path, tail: bytes) -> None:
    content = shb() + idb(1) + epb(0, 1, FRAMES[0]) + tail
    got, r = read_all(write(tmp_path, "x.pcapng", content))
    assert len(got) == 1 and r.stats.error is not None and "corrupt" in r.stats.error


_SEEDS = {
    "pcap": pcap_bytes(1, [(1.0 + i, FRAMES[i % len(FRAMES)]) for i in range(6)]),
    "pcapng": shb() + idb(1) + idb(0) + b"".join(epb(i % 2, i, as_link(FRAMES[i], i % 2)) for i in range(6)),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(_SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 2000),
)
def test_mutated_captures_never_raise_after_open(
    tmp_path: Path, kind: str, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(_SEEDS[kind])
    for pos, value in edits:
        data[pos % len(data)] = value
    p = write(tmp_path, "fuzz", bytes(data[: max(cut, 1)]))
    try:
        r = CaptureReader(p)
    except ShieldError:
        return
    got = sum(len(b) for b in r.batches())
    s = r.stats
    content = bytes(data[: max(cut, 1)])
    # a mutated length can turn the bytes of other records into one more record: the
    # walk must find exactly the records the header-to-header walk finds
    most = len(_walk_by_hand(content, r._order)) if kind == "pcap" else len(content) // 16
    assert got == s.decoded <= s.packets <= most
    assert s.decoded + s.not_ip + s.malformed + s.unsupported == s.packets
    if kind == "pcap":
        assert s.packets == most
