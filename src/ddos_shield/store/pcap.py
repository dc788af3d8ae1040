"""Attack captures as pcapng files, and frames rebuilt from flow records.

:func:`write_pcapng` writes what the history kept of an attack: one section whose
comment says what the file holds, one Ethernet interface with the snap length of the
samples, one Enhanced Packet Block per packet.  Hand-written rather than through a
library because the format is four small blocks and the project already reads pcapng
itself (:mod:`ddos_shield.capture.pcap`); scapy's writer is a development dependency
only.

Packets sampled by the data plane are the real first bytes of the frame (the XDP
ring buffer carries 128 bytes of each sampled packet, the nftables fallback's AF_PACKET
sampler as many; the original length is kept).
Packets known only from a flow record (sFlow/NetFlow/IPFIX) are rebuilt by
:func:`synthesize` from the record's fields -- addresses, protocol, ports, TCP
flags, TTL, fragment flag, length -- with made-up MAC addresses and no payload; each
such packet carries the comment "synthesised from a flow record".
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ddos_shield.records import PacketFlag

if TYPE_CHECKING:
    from ddos_shield.store.history import Packet

SYNTH_COMMENT = "synthesised from a flow record (headers rebuilt from its fields, no payload)"
_SRC_MAC = bytes.fromhex("020000005301")
_DST_MAC = bytes.fromhex("020000005302")


def _option(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def write_pcapng(packets: Iterable[Packet], comment: str, snaplen: int = 128) -> bytes:
    """A whole pcapng file (little endian, microsecond timestamps)."""
    shb_opts = _option(1, comment.encode()) + _option(4, b"ddos-shield") + _option(0, b"")
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + shb_opts)]
    idb_opts = _option(2, b"sampled") + _option(0, b"")
    out.append(_block(0x00000001, struct.pack("<HHI", 1, 0, snaplen) + idb_opts))  # LINKTYPE_ETHERNET
    synth = _option(1, SYNTH_COMMENT.encode()) + _option(0, b"")
    for p in packets:
        us = round(p.ts * 1e6)
        data = p.data[:snaplen]
        body = struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(data), max(p.wire_len, len(data)))
        body += data + b"\0" * ((-len(data)) % 4)
        if p.synthesized:
            body += synth
        out.append(_block(0x00000006, body))
    return b"".join(out)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return int(~s & 0xFFFF)


def synthesize(row: Any, snaplen: int = 128) -> tuple[bytes, int]:
    """An Ethernet frame rebuilt from one traffic row (a flow record): returns
    (the frame's first ``snaplen`` bytes, its length on the wire)."""
    src, dst = bytes(np.asarray(row["src"])), bytes(np.asarray(row["dst"]))
    proto, flags = int(row["proto"]), int(row["flags"])
    later = bool(flags & PacketFlag.FRAG_LATER)
    ttl = int(row["ttl"]) or 64
    sport, dport = int(row["sport"]), int(row["dport"])
    if later:
        l4 = b""
    elif proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, int(row["tcp_flags"]), 65535, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    elif proto in (1, 58):
        # flow records put ICMP type/code in dport (type << 8 | code) where they carry them
        icmp_type = dport >> 8 if dport else (8 if proto == 1 else 128)
        l4 = struct.pack("!BBHI", icmp_type, dport & 0xFF, 0, 0)
    else:
        l4 = b""
    v4 = dst[:12] == b"\0" * 10 + b"\xff\xff"
    wire = int(row["length"])
    if v4:
        l3_len = max(20 + len(l4), wire - 14)
        frag = 0x2000 if flags & PacketFlag.FRAG and not later else 0
        frag |= 185 if later else 0  # some non-zero offset (x 8 bytes)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, min(l3_len, 0xFFFF), 0, frag, ttl, proto, 0, src[12:], dst[12:])
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        frame = _DST_MAC + _SRC_MAC + b"\x08\x00" + hdr + l4
    else:
        payload_len = max(len(l4), wire - 14 - 40)
        if later or flags & PacketFlag.FRAG:
            # a fragment header carries the real protocol
            fh = struct.pack("!BBHI", proto, 0, (185 << 3) if later else 1, 0)
            hdr = struct.pack("!IHBB16s16s", 6 << 28, min(payload_len + 8, 0xFFFF), 44, ttl, src, dst) + fh
        else:
            hdr = struct.pack("!IHBB16s16s", 6 << 28, min(payload_len, 0xFFFF), proto, ttl, src, dst)
        frame = _DST_MAC + _SRC_MAC + b"\x86\xdd" + hdr + l4
    return frame[:snaplen], max(wire, len(frame))
