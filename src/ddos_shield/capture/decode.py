"""Decode captured packet headers into traffic records, a whole batch at a time.

Every packet source (XDP samples, AF_PACKET, pcap files, sFlow raw headers) hands
this module a 2-D array of frame prefixes -- one row per packet, the first ``snaplen``
bytes -- and gets back the header columns of a traffic batch.  The decoding is
vectorised with numpy over the batch: Python never loops per packet on the common
paths (Ethernet, up to two VLAN tags, IPv4, IPv6 with extension headers, TCP, UDP,
ICMP).  Libraries such as dpkt or scapy decode one packet object at a time, about a
hundred times slower than this for the thousands of samples a second the control
loop reads, which is why this is written by hand.

Rows whose headers are truncated or invalid keep what could be decoded and are
marked in the returned ``valid`` mask rather than raising: the caller counts them
and carries on.

>>> import numpy as np
>>> frame = bytes.fromhex(
...     "000000000002" "000000000001" "0800"      # Ethernet
...     "4500001c0000000040110000c6336442cb00710a"  # IPv4 198.51.100.66 -> 203.0.113.10 UDP
...     "303900350008" "0000")                       # UDP 12345 -> 53
>>> arr = np.zeros((1, 128), np.uint8); arr[0, :len(frame)] = list(frame)
>>> batch, valid = decode_frames_valid(arr, np.array([len(frame)]), np.array([60]))
>>> int(batch["sport"][0]), int(batch["dport"][0]), int(batch["ttl"][0]), bool(valid[0])
(12345, 53, 64, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ddos_shield.records import TRAFFIC_DTYPE, Category, PacketFlag, TrafficBatch, empty_traffic, put_rows

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
IPPROTO_FRAGMENT = 44
# IPv6 extension headers walked before the transport header (RFC 8200 order).
_V6_EXT = np.array(
    [0, 43, 60, 51, 135, 139, 140], dtype=np.uint8
)  # hop-by-hop, routing, dstopts, AH, mobility, HIP, shim6
MAX_VLAN = 2
MAX_EXTHDR = 6
TCP_SYN = 0x02
TCP_ACK = 0x10

_V4_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)

#: rows decoded at a time by the fast path (their frame prefixes fit in a core's L2 cache)
_BLOCK = 4096
#: bytes from the IP header that the fast path reads: an IPv6 header and TCP up to its flags
_FAST_L3 = 54
_IS_V6_EXT = np.zeros(256, dtype=bool)
_IS_V6_EXT[_V6_EXT] = True
#: next-header values after IPv6 that the fast path leaves to the general one
_V6_SLOW = _IS_V6_EXT.copy()
_V6_SLOW[IPPROTO_FRAGMENT] = True
_CATEGORY_OF_PROTO = np.full(256, int(Category.OTHER), dtype=np.uint8)
_CATEGORY_OF_PROTO[IPPROTO_TCP] = int(Category.TCP)
_CATEGORY_OF_PROTO[IPPROTO_UDP] = int(Category.UDP)
_CATEGORY_OF_PROTO[IPPROTO_ICMP] = int(Category.ICMP)
_CATEGORY_OF_PROTO[IPPROTO_ICMPV6] = int(Category.ICMP)


def decode_frames(
    frames: npt.NDArray[np.uint8],
    caplen: npt.ArrayLike,
    wirelen: npt.ArrayLike,
    link: str = "ethernet",
) -> TrafficBatch:
    """Decode frame prefixes into a traffic batch (see :func:`decode_frames_valid`)."""
    return decode_frames_valid(frames, caplen, wirelen, link)[0]


def decode_frames_valid(
    frames: npt.NDArray[np.uint8],
    caplen: npt.ArrayLike,
    wirelen: npt.ArrayLike,
    link: str = "ethernet",
) -> tuple[TrafficBatch, npt.NDArray[np.bool_]]:
    """Decode frame prefixes; returns (traffic batch, valid mask).

    ``frames`` is (n, snaplen) uint8; ``caplen`` the bytes of each row that hold packet
    data; ``wirelen`` the original length (stored as ``length``).  ``link`` is
    ``"ethernet"`` or ``"raw"`` (rows start at the IP header).  The caller fills
    ``ts``, ``packets``, ``bytes``, ``sample_rate`` and the source columns.
    """
    if link not in ("ethernet", "raw"):
        raise ValueError(f"unknown link type {link!r}")
    frames = np.asarray(frames, dtype=np.uint8)
    n = frames.shape[0]
    out = empty_traffic(n)
    valid = np.zeros(n, dtype=bool)
    if n == 0:
        return out, valid
    snap = frames.shape[1]
    cap = _per_row(np.minimum(np.asarray(caplen, dtype=np.int64), snap), n)
    wire = _per_row(np.asarray(wirelen), n)
    out["length"] = wire
    # In blocks whose frames stay in the core's cache while each column is read.
    rest = np.zeros(n, dtype=bool)
    for lo in range(0, n, _BLOCK):
        hi = lo + _BLOCK
        rest[lo:hi] = _decode_fast(frames[lo:hi], cap[lo:hi], link, out[lo:hi], valid[lo:hi])
    # What the fast path left: IPv4 with options, IPv6 with extension headers, two VLAN
    # tags, truncated headers.  Non-IP rows stay as they are (invalid, zero).
    slow = np.flatnonzero(rest)
    if len(slow):
        part, ok = _decode_general(frames[slow], cap[slow], wire[slow], link)
        put_rows(out, slow, part)
        valid[slow] = ok
    return out, valid


def _per_row(a: npt.NDArray[Any], n: int) -> npt.NDArray[Any]:
    """``a`` as one value a row (a scalar repeated)."""
    return a if a.ndim == 1 else np.full(n, a)


#: the field types read from frames, and each one's native form
_TYPES = {t: (np.dtype(t), np.dtype(t).newbyteorder("=")) for t in ("u1", ">u2", ">u4", "<u4", "<u8")}


def _column(frames: npt.NDArray[np.uint8], at: int, dtype: str) -> npt.NDArray[Any]:
    """The field of ``dtype`` at byte ``at`` of every row, as a native 1-D array: one
    strided pass over the rows (reading byte by byte would make one pass a byte)."""
    raw, native = _TYPES[dtype]
    col: npt.NDArray[Any] = frames[:, at : at + raw.itemsize].view(raw)[:, 0]
    return col.astype(native)


class _Fields:
    """Columns of the IP header and what follows, at fixed offsets from its start.

    The IP header starts at byte ``base`` of a row, or ``base + 4`` in the rows that
    carry one VLAN tag (``tagged``): there each column is picked from the two
    positions, which costs a second pass only when a batch holds tagged rows."""

    def __init__(self, frames: npt.NDArray[np.uint8], base: int, tagged: npt.NDArray[np.bool_] | None) -> None:
        self.frames = frames
        self.base = base
        self.tagged = tagged

    def __call__(self, at: int, dtype: str) -> npt.NDArray[Any]:
        col = _column(self.frames, self.base + at, dtype)
        if self.tagged is None:
            return col
        out: npt.NDArray[Any] = np.where(self.tagged, _column(self.frames, self.base + 4 + at, dtype), col)
        return out


#: byte offsets of the address columns in a TRAFFIC_DTYPE row
_SRC_AT: int = TRAFFIC_DTYPE.fields["src"][1]  # type: ignore[index]
_DST_AT: int = TRAFFIC_DTYPE.fields["dst"][1]  # type: ignore[index]


def _decode_fast(
    frames: npt.NDArray[np.uint8],
    cap: npt.NDArray[np.int64],
    link: str,
    out: TrafficBatch,
    valid: npt.NDArray[np.bool_],
) -> npt.NDArray[np.bool_]:
    """Decode the common layouts -- untagged or single-tagged Ethernet, or raw IP, then
    IPv4 without options or IPv6 without extension headers -- where every field sits at
    a fixed offset, so each is read as one typed column of ``frames`` (no per-row
    gathers, no padded copy).  Fills ``out`` and ``valid`` for those rows and for
    non-IP rows; returns the mask of the rows left for :func:`_decode_general`."""
    n = len(frames)
    width = _FAST_L3 + (18 if link == "ethernet" else 0)
    if frames.shape[1] < width:  # short prefixes (a few sFlow headers): zeros read as absent bytes
        frames = np.concatenate([frames, np.zeros((n, width - frames.shape[1]), dtype=np.uint8)], axis=1)
    elif frames.strides[1] != 1:
        frames = np.ascontiguousarray(frames)
    tagged: npt.NDArray[np.bool_] | None = None
    leftover: npt.NDArray[np.bool_] | None = None
    off: Any
    if link == "ethernet":
        etype = _column(frames, 12, ">u2")
        tagged = (etype == ETH_P_8021Q) | (etype == ETH_P_8021AD)
        if tagged.any():
            inner = _column(frames, 16, ">u2")
            one_tag = tagged & ((inner == ETH_P_IP) | (inner == ETH_P_IPV6))
            etype = np.where(one_tag, inner, etype)
            leftover = tagged & ~one_tag  # two tags, or a tag before a non-IP frame
            field = _Fields(frames, 14, one_tag)
            off = np.where(one_tag, 18, 14)
        else:
            tagged = None
            field = _Fields(frames, 14, None)
            off = 14
        is4 = etype == ETH_P_IP
        is6 = etype == ETH_P_IPV6
        b0 = field(0, "u1")
    else:
        field = _Fields(frames, 0, None)
        off = 0
        b0 = field(0, "u1")
        is4 = (b0 >> 4) == 4
        is6 = (b0 >> 4) == 6

    room = cap - off  # bytes from the IP header on
    w6 = field(6, ">u2")  # IPv4: flags and fragment offset; IPv6: next header, hop limit
    nxt = (w6 >> 8).astype(np.uint8)
    f4 = is4 & ((b0 & 0x0F) == 5) & (room >= 20)
    f6 = is6 & ~_V6_SLOW[nxt] & (room >= 40)
    fast = f4 | f6
    rest: npt.NDArray[np.bool_] = (is4 | is6) & ~fast
    if leftover is not None:
        rest |= leftover
    if not fast.any():
        out["category"] = int(Category.OTHER)
        return rest
    every = bool(fast.all())
    any4 = bool(f4.any())
    any6 = bool(f6.any())

    if any4:
        w8 = field(8, ">u2")  # TTL, protocol
        proto4 = (w8 & 0xFF).astype(np.uint8)
        ttl4 = (w8 >> 8).astype(np.uint8)
        # later fragments (offset > 0) carry no transport header
        later = f4 & ((w6 & 0x1FFF) != 0)
        frag = f4 & ((w6 & 0x3FFF) != 0)
    if any6:
        hlim = (w6 & 0xFF).astype(np.uint8)
    if any4 and any6:
        proto = np.where(is4, proto4, nxt)
        ttl = np.where(is4, ttl4, hlim)
        ports = np.where(is4, field(20, ">u4"), field(40, ">u4"))
        tcpfl = np.where(is4, field(33, "u1"), field(53, "u1"))
        l4_at: Any = np.where(is4, 20, 40)
    elif any4:
        proto, ttl, ports, tcpfl, l4_at = proto4, ttl4, field(20, ">u4"), field(33, "u1"), 20
    else:
        proto, ttl, ports, tcpfl, l4_at = nxt, hlim, field(40, ">u4"), field(53, "u1"), 40
        later = frag = np.zeros(n, dtype=bool)

    room4 = room - l4_at
    first = fast & ~later
    is_tcp = proto == IPPROTO_TCP
    ports_ok = first & (is_tcp | (proto == IPPROTO_UDP)) & (room4 >= 4)
    tcp_ok = first & is_tcp & (room4 >= 14)
    # ICMP type/code go in the port columns, as flow exporters do (type<<8 | code in dport).
    icmp_ok = first & ((proto == IPPROTO_ICMP) | (proto == IPPROTO_ICMPV6)) & (room4 >= 2)
    w0 = (ports >> 16).astype(np.uint16)
    out["sport"] = np.where(ports_ok, w0, 0)
    out["dport"] = np.where(ports_ok, ports & 0xFFFF, np.where(icmp_ok, w0, 0))
    tcp_flags = np.where(tcp_ok, tcpfl, 0).astype(np.uint8)
    out["tcp_flags"] = tcp_flags

    cat = _CATEGORY_OF_PROTO[proto]
    cat = np.where(tcp_ok & ((tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN), np.uint8(Category.TCP_SYN), cat)
    cat = np.where(later, np.uint8(Category.FRAG), cat)
    if every:
        out["proto"] = proto
        out["ttl"] = ttl
        out["category"] = cat
    else:
        out["proto"] = np.where(fast, proto, 0)
        out["ttl"] = np.where(fast, ttl, 0)
        out["category"] = np.where(fast, cat, np.uint8(Category.OTHER))

    flags = is6.astype(np.uint16) * np.uint16(PacketFlag.IPV6)
    flags |= frag * np.uint16(PacketFlag.FRAG)
    flags |= later * np.uint16(PacketFlag.FRAG_LATER)
    if tagged is not None:
        flags |= tagged * np.uint16(PacketFlag.VLAN)
    out["flags"] = flags

    # Addresses, 16 bytes each, IPv4-mapped: written as two 8-byte words a row.  The
    # words are read and written little-endian, so the bytes keep their order.
    rows = out.view(np.uint8).reshape(n, TRAFFIC_DTYPE.itemsize)
    for at4, at6, col in ((12, 8, _SRC_AT), (16, 24, _DST_AT)):
        words = rows[:, col : col + 16].view("<u8")
        if any4:
            lo4 = (field(at4, "<u4").astype(np.uint64) << np.uint64(32)) | np.uint64(0xFFFF0000)
        if any4 and any6:
            hi = np.where(f6, field(at6, "<u8"), 0)
            lo = np.where(f6, field(at6 + 8, "<u8"), np.where(f4, lo4, 0))
        elif any4:
            hi = None
            lo = lo4 if every else np.where(f4, lo4, 0)
        else:
            hi = field(at6, "<u8")
            lo = field(at6 + 8, "<u8")
            if not every:
                hi = np.where(f6, hi, 0)
                lo = np.where(f6, lo, 0)
        if hi is not None:
            words[:, 0] = hi
        words[:, 1] = lo
    valid |= fast
    return rest


def _decode_general(
    frames: npt.NDArray[np.uint8],
    cap: npt.NDArray[np.int64],
    wirelen: npt.NDArray[Any],
    link: str,
) -> tuple[TrafficBatch, npt.NDArray[np.bool_]]:
    """Any layout the module reads, one gathered column at a time (the rows the fast
    path leaves: IPv4 options, IPv6 extension headers, two VLAN tags, truncation)."""
    n = frames.shape[0]
    out = empty_traffic(n)
    snap = frames.shape[1]
    out["length"] = np.asarray(wirelen, dtype=np.uint32)
    rows = np.arange(n)
    # Pad so that reads past the snap length return zeros instead of failing; the
    # caplen checks below decide what is valid.
    padded = np.zeros((n, snap + 64), dtype=np.uint8)
    padded[:, :snap] = frames

    def u8(off: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        v: npt.NDArray[np.int64] = padded[rows, np.minimum(off, snap + 63)].astype(np.int64)
        return v

    def u16(off: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return (u8(off) << 8) | u8(off + 1)

    flags = np.zeros(n, dtype=np.int64)
    if link == "ethernet":
        off = np.full(n, 12, dtype=np.int64)
        etype = u16(off)
        for _ in range(MAX_VLAN):
            tagged = (etype == ETH_P_8021Q) | (etype == ETH_P_8021AD)
            flags |= np.where(tagged, int(PacketFlag.VLAN), 0)
            off = np.where(tagged, off + 4, off)
            etype = u16(off)
        off = off + 2
    elif link == "raw":
        off = np.zeros(n, dtype=np.int64)
        ver = u8(off) >> 4
        etype = np.where(ver == 4, ETH_P_IP, np.where(ver == 6, ETH_P_IPV6, 0))
    else:
        raise ValueError(f"unknown link type {link!r}")

    is4 = etype == ETH_P_IP
    is6 = etype == ETH_P_IPV6
    valid = (is4 | is6) & (cap >= off + np.where(is4, 20, 40))

    # ---- IPv4
    ihl = (u8(off) & 0x0F) * 4
    frag_field = u16(off + 6)
    frag_off4 = frag_field & 0x1FFF
    more4 = (frag_field & 0x2000) != 0
    proto4 = u8(off + 9)
    ttl4 = u8(off + 8)
    valid &= ~is4 | (ihl >= 20)

    # ---- IPv6: walk the extension header chain (bounded)
    nxt = u8(off + 6)
    ttl6 = u8(off + 7)
    l4_6 = off + 40
    frag6 = np.zeros(n, dtype=bool)
    frag_off6 = np.zeros(n, dtype=np.int64)
    more6 = np.zeros(n, dtype=bool)
    for _ in range(MAX_EXTHDR):
        isfrag = is6 & (nxt == IPPROTO_FRAGMENT)
        isext = is6 & _IS_V6_EXT[nxt]
        if not (isfrag.any() or isext.any()):
            break
        # fragment header: next(1) reserved(1) offset/flags(2) id(4)
        fo = u16(l4_6 + 2)
        frag_off6 = np.where(isfrag, fo >> 3, frag_off6)
        more6 = np.where(isfrag, (fo & 1) != 0, more6)
        frag6 |= isfrag
        ext_len = np.where(nxt == 51, (u8(l4_6 + 1) + 2) * 4, (u8(l4_6 + 1) + 1) * 8)
        step = np.where(isfrag, 8, np.where(isext, ext_len, 0))
        nxt = np.where(isfrag | isext, u8(l4_6), nxt)
        l4_6 = l4_6 + step
    # A chain longer than we walk leaves an extension header as "protocol": such rows
    # stay valid but carry no ports, like the kernel, which stops at the same bound.

    proto = np.where(is4, proto4, np.where(is6, nxt, 0))
    l4 = np.where(is4, off + ihl, l4_6)
    frag_any = np.where(is4, more4 | (frag_off4 > 0), frag6)
    frag_later = np.where(is4, frag_off4 > 0, frag6 & (frag_off6 > 0))
    flags |= np.where(is6, int(PacketFlag.IPV6), 0)
    flags |= np.where(frag_any, int(PacketFlag.FRAG), 0)
    flags |= np.where(frag_later, int(PacketFlag.FRAG_LATER), 0)

    has_ports = (proto == IPPROTO_TCP) | (proto == IPPROTO_UDP)
    ports_ok = valid & has_ports & ~frag_later & (cap >= l4 + 4)
    sport = np.where(ports_ok, u16(l4), 0)
    dport = np.where(ports_ok, u16(l4 + 2), 0)
    tcp_ok = valid & (proto == IPPROTO_TCP) & ~frag_later & (cap >= l4 + 14)
    tcp_flags = np.where(tcp_ok, u8(l4 + 13), 0)
    # ICMP type/code go in the port columns, as flow exporters do (type<<8 | code in dport).
    icmp = valid & ((proto == IPPROTO_ICMP) | (proto == IPPROTO_ICMPV6)) & ~frag_later & (cap >= l4 + 2)
    dport = np.where(icmp, (u8(l4) << 8) | u8(l4 + 1), dport)

    cat = np.full(n, int(Category.OTHER), dtype=np.int64)
    cat = np.where(proto == IPPROTO_UDP, int(Category.UDP), cat)
    cat = np.where((proto == IPPROTO_ICMP) | (proto == IPPROTO_ICMPV6), int(Category.ICMP), cat)
    syn = (tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN
    cat = np.where(proto == IPPROTO_TCP, np.where(syn & tcp_ok, int(Category.TCP_SYN), int(Category.TCP)), cat)
    cat = np.where(frag_later, int(Category.FRAG), cat)

    # Addresses, 16 bytes each, IPv4-mapped.
    idx16 = np.arange(16)
    src6 = padded[rows[:, None], np.minimum(off[:, None] + 8 + idx16, snap + 63)]
    dst6 = padded[rows[:, None], np.minimum(off[:, None] + 24 + idx16, snap + 63)]
    idx4 = np.arange(4)
    src4 = padded[rows[:, None], np.minimum(off[:, None] + 12 + idx4, snap + 63)]
    dst4 = padded[rows[:, None], np.minimum(off[:, None] + 16 + idx4, snap + 63)]
    src = np.zeros((n, 16), dtype=np.uint8)
    dst = np.zeros((n, 16), dtype=np.uint8)
    src[is6] = src6[is6]
    dst[is6] = dst6[is6]
    src[is4, :12] = _V4_MAPPED
    dst[is4, :12] = _V4_MAPPED
    src[is4, 12:] = src4[is4]
    dst[is4, 12:] = dst4[is4]

    out["src"] = np.where(valid[:, None], src, 0)
    out["dst"] = np.where(valid[:, None], dst, 0)
    out["sport"] = sport
    out["dport"] = dport
    out["proto"] = np.where(valid, proto, 0)
    out["tcp_flags"] = tcp_flags
    out["ttl"] = np.where(valid, np.where(is4, ttl4, ttl6), 0)
    out["category"] = np.where(valid, cat, int(Category.OTHER))
    out["flags"] = flags
    return out, valid


def frames_from_bytes(packets: list[bytes], snaplen: int = 128) -> tuple[npt.NDArray[np.uint8], Any, Any]:
    """Pack raw frames into the (frames, caplen, wirelen) arrays :func:`decode_frames` takes."""
    n = len(packets)
    arr = np.zeros((n, snaplen), dtype=np.uint8)
    caplen = np.zeros(n, dtype=np.uint32)
    wirelen = np.zeros(n, dtype=np.uint32)
    for i, p in enumerate(packets):
        c = min(len(p), snaplen)
        arr[i, :c] = np.frombuffer(p[:c], dtype=np.uint8)
        caplen[i] = c
        wirelen[i] = len(p)
    return arr, caplen, wirelen
