"""Read pcap and pcapng files into traffic batches, a chunk at a time.

A capture is read in blocks of a few MiB; the only per-packet work is walking the
record (or block) headers to find where each packet starts: for classic pcap in C when
``ddos-shield build`` has compiled the walker (:mod:`~ddos_shield.capture.native`),
else with the numpy walk of :class:`_PcapWalk`.  Everything else --
timestamps, lengths, link-layer headers, the frame prefixes handed to
:func:`~ddos_shield.capture.decode.decode_frames_valid` -- is gathered from the block
with numpy, a whole chunk at once.  dpkt (and scapy) build one Python object per
packet, several times slower than this for the million-packet captures ``analyze``
is meant for, and would still leave the frames to be copied into an array one by one.

Link types read: Ethernet (1), Linux cooked SLL (113) and SLL2 (276), raw IP (101,
228, 229) and BSD loopback (NULL 0, LOOP 108).  SLL and SLL2 are turned into an
Ethernet-shaped prefix (the protocol field lands where the EtherType would be) and
NULL/LOOP into raw IP by moving the start of each row, so the decoder sees only its
two forms.  Wire lengths are the packet's own: the pseudo-header that the capture
tool put in front (SLL's 16 bytes in place of Ethernet's 14, loopback's 4) is left out.

Bad input never raises out of :meth:`CaptureReader.batches`: packets that are not IP
or whose headers are truncated are counted and skipped; a record that cannot be a
record (a length beyond any snap length, a broken pcapng block) or a file cut short
ends the reading with what was read before, and :attr:`CaptureStats.error` says why.
Only opening fails loudly (:class:`~ddos_shield.errors.ShieldError`): a file that
cannot be read or is not a capture at all.

>>> reader = CaptureReader("tests/data/captures/ddosgrid_synflood.pcap")  # doctest: +SKIP
>>> for batch in reader.batches():  # doctest: +SKIP
...     print(len(batch), batch["ts"][0])
>>> reader.stats.packets  # doctest: +SKIP
7769
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from ddos_shield.capture import native
from ddos_shield.capture.decode import ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, decode_frames_valid
from ddos_shield.errors import ShieldError
from ddos_shield.records import Source, TrafficBatch, empty_traffic, put_rows, take_rows

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

#: link type -> (name, bytes skipped before the decoder's row starts, decoder form)
LINKTYPES: dict[int, tuple[str, int, str]] = {
    LINKTYPE_ETHERNET: ("ethernet", 0, "ethernet"),
    # SLL: 16 bytes, protocol at 14; dropping 2 bytes puts it at 12 and the payload at 14
    LINKTYPE_LINUX_SLL: ("linux-sll", 2, "ethernet"),
    # SLL2: 20 bytes, protocol at 0; dropping 6 puts the payload at 14, the protocol is copied to 12
    LINKTYPE_LINUX_SLL2: ("linux-sll2", 6, "ethernet"),
    LINKTYPE_RAW: ("raw", 0, "raw"),
    LINKTYPE_IPV4: ("ipv4", 0, "raw"),
    LINKTYPE_IPV6: ("ipv6", 0, "raw"),
    LINKTYPE_NULL: ("null", 4, "raw"),
    LINKTYPE_LOOP: ("loop", 4, "raw"),
}

#: bytes of each packet kept for the decoder (Ethernet, two VLAN tags, IPv6 with
#: extension headers, TCP flags)
SNAPLEN = 128
#: packets per chunk handed out
CHUNK_PACKETS = 65536
#: bytes of the file walked at a time (progress is reported after each)
READ_BYTES = 8 << 20
#: seconds before the high half of a timestamp steps up, from which the record walk
#: looks for both halves (beyond, records stamped past the step are walked by hand
#: until the next window)
NEAR_WRAP = 3600
#: pages already read are dropped from the process every this many bytes
RELEASE_BYTES = 64 << 20
#: walk classic pcap files with the compiled walker when it is built (capture/native.py);
#: False forces the numpy walk (tests run both)
USE_NATIVE = True
#: no real record is larger (pcap's and Wireshark's own limit for most link types)
MAX_RECORD = 256 << 10
#: no real pcapng block is larger
MAX_BLOCK = 16 << 20

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
#: row k: ones in the first k columns, zeros after (multiplied in: cheaper than a mask)
_KEEP = (np.arange(SNAPLEN)[None, :] < np.arange(SNAPLEN + 1)[:, None]).astype(np.uint8)
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_IDB, _OPB, _SPB, _EPB = 1, 2, 3, 6


@dataclass
class CaptureStats:
    """What was read from one capture file."""

    packets: int = 0  # records read
    bytes: int = 0  # wire bytes of the records read
    decoded: int = 0  # IP packets handed out in batches
    not_ip: int = 0  # ARP, STP and other non-IP frames, skipped
    malformed: int = 0  # IP packets whose headers are truncated or invalid, skipped
    unsupported: int = 0  # packets on pcapng interfaces of link types not read, skipped
    first_ts: float | None = None
    last_ts: float | None = None
    error: str | None = None  # why reading stopped before the end of the file
    linktypes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FrameChunk:
    """Frame prefixes of up to :data:`CHUNK_PACKETS` packets, as the decoder takes them.

    ``raw`` marks rows that start at the IP header (raw IP and loopback captures); the
    others start with an Ethernet-shaped header.  ``usable`` is False for rows of
    unsupported link types (and pcapng records naming no known interface).
    """

    frames: npt.NDArray[np.uint8]
    caplen: npt.NDArray[np.int64]
    wirelen: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    raw: npt.NDArray[np.bool_]
    usable: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.ts)

    def decode(self) -> tuple[TrafficBatch, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """(traffic batch of every row, valid mask, IP mask).

        Rows that are not IP or not usable are invalid; ``ts``, ``packets``, ``bytes``
        and the source are filled.  The IP mask tells non-IP frames (skipped as such)
        from IP packets whose headers are broken (malformed); a record too short to
        hold its link header counts as malformed.
        """
        n = len(self)
        batch: TrafficBatch | None = None
        valid = np.zeros(n, dtype=bool)
        for raw in (False, True):
            rows = np.nonzero((self.raw == raw) & self.usable)[0]
            if len(rows) == n:  # the usual case: one form for the whole chunk
                batch, valid = decode_frames_valid(self.frames, self.caplen, self.wirelen, "raw" if raw else "ethernet")
            elif len(rows):
                if batch is None:
                    batch = empty_traffic(n)
                b, v = decode_frames_valid(
                    self.frames[rows], self.caplen[rows], self.wirelen[rows], "raw" if raw else "ethernet"
                )
                put_rows(batch, rows, b)
                valid[rows] = v
        if batch is None:
            batch = empty_traffic(n)
        batch["ts"] = self.ts
        batch["packets"] = 1
        batch["bytes"] = self.wirelen
        batch["sample_rate"] = 1
        batch["source"] = int(Source.PCAP)
        # a valid row is an IP packet: the (dearer) test is needed for the others only
        is_ip = valid.copy()
        bad = np.flatnonzero(~valid)
        if len(bad):
            is_ip[bad] = self._is_ip(bad)
        return batch, valid, is_ip

    def _is_ip(self, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        """Which of these rows hold an IP packet (of an unsupported link type: none)."""
        f = self.frames[rows]
        caplen, raw, usable = self.caplen[rows], self.raw[rows], self.usable[rows]

        def u16(at: int) -> npt.NDArray[np.uint16]:  # one typed column: no per-row gather
            col: npt.NDArray[np.uint16] = f[:, at : at + 2].view(">u2")[:, 0]
            return col

        def is_tag(e: npt.NDArray[np.uint16]) -> npt.NDArray[np.bool_]:
            out: npt.NDArray[np.bool_] = (e == ETH_P_8021Q) | (e == ETH_P_8021AD)
            return out

        # Ethernet-shaped rows: the EtherType after up to two VLAN tags
        etype = u16(12)
        tagged = is_tag(etype)
        if tagged.any():
            inner = u16(16)
            twice = tagged & is_tag(inner)
            etype = np.where(twice, u16(20), np.where(tagged, inner, etype))
        eth_ip = ((etype == ETH_P_IP) | (etype == ETH_P_IPV6)) | (caplen < 14)
        version = f[:, 0] >> 4
        raw_ip = (version == 4) | (version == 6) | (caplen < 1)
        ok: npt.NDArray[np.bool_] = usable & np.where(raw, raw_ip, eth_ip)
        return ok


class CaptureReader:
    """One pcap or pcapng file, read in chunks (see the module docstring).

    Opening reads the file header and raises :class:`~ddos_shield.errors.ShieldError`
    when the file cannot be read or is no capture.  ``progress(bytes_read, file_size)``
    is called after each block read.

    >>> r = CaptureReader("capture.pcapng")  # doctest: +SKIP
    >>> sum(len(b) for b in r.batches()), r.stats.malformed, r.stats.error  # doctest: +SKIP
    (9611, 0, None)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_packets: int = CHUNK_PACKETS,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.chunk_packets = chunk_packets
        self.progress = progress
        self.stats = CaptureStats()
        try:
            self.size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(64)
        except OSError as e:
            raise ShieldError(f"{self.path}: cannot read: {e.strerror or e}") from e
        if len(head) >= 4 and head[:4] in _PCAP_MAGIC:
            self.format = "pcap"
            if len(head) < 24:
                raise ShieldError(f"{self.path}: pcap file header cut short ({len(head)} bytes)")
            order, self._tick = _PCAP_MAGIC[head[:4]]
            self._order = order
            linktype = struct.unpack_from(order + "I", head, 20)[0] & 0xFFFF
            if linktype not in LINKTYPES:
                raise ShieldError(f"{self.path}: link type {linktype} is not supported (read: {_supported()})")
            self._linktype = linktype
            self.stats.linktypes = [LINKTYPES[linktype][0]]
        elif len(head) >= 12 and struct.unpack_from("<I", head)[0] == _PCAPNG_SHB:
            self.format = "pcapng"
            bom = head[8:12]
            if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                raise ShieldError(f"{self.path}: pcapng section header with a bad byte-order magic")
        elif head[:4] == b"\x0a\x0d\x0d\x0a":
            raise ShieldError(f"{self.path}: pcapng section header cut short ({len(head)} bytes)")
        else:
            raise ShieldError(f"{self.path}: not a pcap or pcapng file (starts with {head[:4].hex() or 'nothing'})")

    # ---- public ------------------------------------------------------------------

    def batches(self) -> Iterator[TrafficBatch]:
        """Traffic batches of the IP packets, in file order (see the module docstring)."""
        for chunk in self.chunks():
            batch, valid, is_ip = chunk.decode()
            self.stats.not_ip += int((chunk.usable & ~is_ip).sum())
            self.stats.malformed += int((is_ip & ~valid).sum())
            self.stats.decoded += int(valid.sum())
            if valid.any():
                yield take_rows(batch, valid)

    def chunks(self) -> Iterator[FrameChunk]:
        """Frame chunks of every packet record, for callers that decode themselves."""
        try:
            with open(self.path, "rb") as f:
                mapped = _Mapped(f, self.size, self.progress)
                try:
                    if self.format == "pcap":
                        yield from self._pcap(mapped)
                    else:
                        yield from self._pcapng(mapped)
                finally:
                    mapped.close()
        except OSError as e:  # a read error half-way: keep what was read
            self.stats.error = f"read error: {e.strerror or e}"

    # ---- pcap --------------------------------------------------------------------

    def _pcap(self, m: _Mapped) -> Iterator[FrameChunk]:
        hdr_dtype = np.dtype([(n, self._order + "u4") for n in ("sec", "frac", "incl", "orig")])
        walker = native.load() if USE_NATIVE else None
        if walker is not None:
            yield from self._pcap_native(m, walker, hdr_dtype)
            return
        walk = _PcapWalk(m, self._order, hdr_dtype)
        pos = 24
        while pos < m.size and not walk.error:
            end = min(m.size, pos + READ_BYTES)
            m.reached(end)
            offs, pos = walk.records(pos, end)
            for lo in range(0, len(offs), self.chunk_packets):
                o = offs[lo : lo + self.chunk_packets]
                # the record header and the frame prefix past the link pseudo-header, in one gather
                skip = LINKTYPES[self._linktype][1]
                rows = _rows(m.data, o, 16 + skip + SNAPLEN)
                yield self._pcap_chunk(m.data, o, hdr_dtype, rows[:, :16], rows[:, 16 + skip :], cut=False)
            m.release(pos)
        self.stats.error = walk.error

    def _pcap_native(self, m: _Mapped, walker: native.PcapWalker, hdr_dtype: np.dtype[Any]) -> Iterator[FrameChunk]:
        """The same walk in C (capture/native.py): the same chunks, record for record."""
        skip = LINKTYPES[self._linktype][1]
        swap = self._order != ("<" if sys.byteorder == "little" else ">")
        pos, status = 24, native.WALK_OK
        while pos < m.size and status == native.WALK_OK:
            end = min(m.size, pos + READ_BYTES)
            m.reached(end)
            while pos < end and status == native.WALK_OK:
                # no more rows than records could start in the window
                room = min(self.chunk_packets, (end - pos) // 16 + 1)
                offs, heads, frames, pos, status = walker.walk(
                    m.data, pos, end, swap=swap, max_record=MAX_RECORD, skip=skip, snap=SNAPLEN, max_n=room
                )
                if len(offs):
                    yield self._pcap_chunk(m.data, offs, hdr_dtype, heads, frames, cut=True)
            m.release(pos)
        if status == native.WALK_CORRUPT:
            (incl,) = struct.unpack_from(self._order + "I", m.buf, pos + 8)
            self.stats.error = f"corrupt record at byte {pos}: length {incl}"
        elif status == native.WALK_CUT_SHORT:
            self.stats.error = f"file cut short: the record at byte {pos} is incomplete"

    def _pcap_chunk(
        self,
        data: npt.NDArray[np.uint8],
        offs: npt.NDArray[np.int64],
        hdr_dtype: np.dtype[Any],
        heads: npt.NDArray[np.uint8],
        frames: npt.NDArray[np.uint8],
        *,
        cut: bool,
    ) -> FrameChunk:
        word = hdr_dtype["sec"]
        sec, frac, incl, orig = (heads[:, 4 * i : 4 * i + 4].view(word)[:, 0] for i in range(4))
        ts = sec.astype(np.float64) + frac.astype(np.float64) * self._tick
        incl = incl.astype(np.int64)
        orig = np.maximum(orig.astype(np.int64), incl)
        link = np.full(len(offs), self._linktype, dtype=np.int64)
        return self._frames(data, offs + 16, incl, orig, ts, link, frames, cut=cut)

    # ---- pcapng ------------------------------------------------------------------

    def _pcapng(self, m: _Mapped) -> Iterator[FrameChunk]:
        # pcapng is walked block by block in Python: its blocks carry their own types,
        # interfaces and sections, and ``analyze``'s speed target is for plain pcap
        buf, size = m.buf, m.size
        ifaces: list[_Iface] = []
        order = "<"
        u32 = struct.Struct(order + "I").unpack_from
        pos = 0
        limit = self.chunk_packets
        while pos < size:
            end = min(size, pos + READ_BYTES)  # blocks starting before this are read in this round
            m.reached(end)
            offs: list[int] = []
            kinds: list[int] = []
            while len(offs) < limit and pos < end:
                if pos + 12 > size:
                    self.stats.error = f"file cut short: the block at byte {pos} is incomplete"
                    break
                btype = u32(buf, pos)[0]
                if btype == _PCAPNG_SHB:
                    if offs:  # a section boundary ends the chunk: byte order and interfaces reset
                        break
                    bom = bytes(buf[pos + 8 : pos + 12])
                    order = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">" if bom == b"\x1a\x2b\x3c\x4d" else ""
                    if not order:
                        self.stats.error = f"corrupt section header at byte {pos}"
                        break
                    u32 = struct.Struct(order + "I").unpack_from
                blen = u32(buf, pos + 4)[0]
                if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                    self.stats.error = f"corrupt block at byte {pos}: length {blen}"
                    break
                if pos + blen > size:
                    self.stats.error = f"file cut short: the block at byte {pos} is incomplete"
                    break
                if u32(buf, pos + blen - 4)[0] != blen:
                    self.stats.error = f"corrupt block at byte {pos}: trailing length differs"
                    break
                if btype in (_EPB, _SPB, _OPB):
                    offs.append(pos)
                    kinds.append(btype)
                elif btype == _IDB:
                    if blen < 20:
                        self.stats.error = f"corrupt interface block at byte {pos}"
                        break
                    ifaces.append(_Iface.parse(bytes(buf[pos + 8 : pos + blen - 4]), order))
                    name = LINKTYPES.get(ifaces[-1].linktype, (f"linktype-{ifaces[-1].linktype}",))[0]
                    if name not in self.stats.linktypes:
                        self.stats.linktypes.append(name)
                elif btype == _PCAPNG_SHB:
                    ifaces = []
                pos += blen
            if offs:
                yield self._pcapng_chunk(m.data, offs, kinds, ifaces, order)
            m.release(pos)
            if self.stats.error:
                return

    def _pcapng_chunk(
        self, data: npt.NDArray[np.uint8], offs_l: list[int], kinds_l: list[int], ifaces: list[_Iface], order: str
    ) -> FrameChunk:
        offs = np.array(offs_l, dtype=np.int64)
        kinds = np.array(kinds_l, dtype=np.int64)
        u4 = np.dtype(order + "u4")
        u2 = np.dtype(order + "u2")

        def field(at: npt.NDArray[np.int64], dtype: np.dtype[Any]) -> npt.NDArray[np.int64]:
            return _rows(data, at, dtype.itemsize).view(dtype).ravel().astype(np.int64)

        n = len(offs)
        blen = field(offs + 4, u4)
        epb, spb, opb = kinds == _EPB, kinds == _SPB, kinds == _OPB
        # Enhanced: iface(4) ts_hi(4) ts_lo(4) caplen(4) origlen(4); obsolete: iface(2)
        # drops(2) ts_hi ts_lo caplen origlen; simple: origlen(4) and no timestamp.
        iface = np.where(epb, field(offs + 8, u4), np.where(opb, field(offs + 8, u2), 0))
        ts_hi = np.where(spb, 0, field(offs + 12, u4))
        ts_lo = np.where(spb, 0, field(offs + 16, u4))
        incl = np.where(spb, 0, field(offs + 20, u4))
        orig = np.where(spb, field(offs + 8, u4), field(offs + 24, u4))
        start = np.where(spb, offs + 12, offs + 28)
        room = offs + blen - 4 - start  # bytes the block holds for the packet
        nif = len(ifaces)
        known = iface < nif
        idx = np.where(known, iface, 0)
        if nif:
            linktypes = np.array([i.linktype for i in ifaces], dtype=np.int64)[idx]
            snap = np.array([i.snaplen or MAX_RECORD for i in ifaces], dtype=np.int64)[idx]
        else:
            linktypes = np.full(n, -1, dtype=np.int64)
            snap = np.full(n, MAX_RECORD, dtype=np.int64)
        linktypes = np.where(known, linktypes, -1)
        incl = np.where(spb, np.minimum(orig, snap), incl)
        bad = (incl > room) | (incl < 0) | ~known
        incl = np.clip(incl, 0, np.maximum(room, 0))
        orig = np.maximum(orig, incl)
        ts = np.zeros(n, dtype=np.float64)
        for i, itf in enumerate(ifaces):
            rows = known & (iface == i)
            if rows.any():
                units = (ts_hi[rows].astype(np.uint64) << np.uint64(32)) | ts_lo[rows].astype(np.uint64)
                ts[rows] = itf.seconds(units)
        # simple packet blocks carry no time: they take the time of the packet before
        if spb.any():
            have = ~spb
            last = np.maximum.accumulate(np.where(have, np.arange(n), -1))
            prev = self.stats.last_ts or 0.0
            ts = np.where(last >= 0, ts[np.maximum(last, 0)], prev)
        linktypes = np.where(bad, -1, linktypes)
        return self._frames(data, start, incl, orig, ts, linktypes)

    # ---- both --------------------------------------------------------------------

    def _frames(
        self,
        data: npt.NDArray[np.uint8],
        start: npt.NDArray[np.int64],
        incl: npt.NDArray[np.int64],
        orig: npt.NDArray[np.int64],
        ts: npt.NDArray[np.float64],
        linktype: npt.NDArray[np.int64],
        frames: npt.NDArray[np.uint8] | None = None,
        *,
        cut: bool = False,
    ) -> FrameChunk:
        """Gather each record's frame prefix, past its link pseudo-header, in one go
        (unless the caller has: ``frames``, whose bytes past each record's length are
        zero already when ``cut``)."""
        n = len(start)
        skip: Any
        if n and linktype[0] == linktype[-1] and bool((linktype == linktype[0]).all()):  # one link type (pcap)
            lt = int(linktype[0])
            _, skip, form = LINKTYPES.get(lt, ("", 0, ""))
            supported = np.full(n, lt in LINKTYPES)
            raw = np.full(n, form == "raw")
        else:
            skip = np.zeros(n, dtype=np.int64)
            raw = np.zeros(n, dtype=bool)
            supported = np.zeros(n, dtype=bool)
            for lt, (_, s, form) in LINKTYPES.items():
                rows = linktype == lt
                skip[rows] = s
                raw[rows] = form == "raw"
                supported |= rows
        caplen = np.maximum(incl - skip, 0)
        wirelen = np.maximum(orig - skip, 0)
        if frames is None:
            frames = _rows(data, start + skip, SNAPLEN)
        if not cut:
            frames *= _KEEP[np.minimum(caplen, SNAPLEN)]  # bytes of the next record are not this one's
        sll2 = np.nonzero(linktype == LINKTYPE_LINUX_SLL2)[0]
        if len(sll2):
            frames[sll2, 12] = data[start[sll2]]
            frames[sll2, 13] = data[start[sll2] + 1]
        usable = supported
        st = self.stats
        st.packets += n
        st.bytes += int(wirelen.sum())
        st.unsupported += int((~supported).sum())
        if n:
            st.first_ts = float(ts[0]) if st.first_ts is None else st.first_ts
            st.last_ts = float(ts[-1])
        return FrameChunk(frames, caplen, wirelen, ts, raw, usable)


@dataclass(frozen=True)
class _Iface:
    linktype: int
    snaplen: int
    units_per_second: int  # 10**k, or 0 when the resolution is a power of two
    shift: int  # power-of-two resolution: units = seconds * 2**shift
    offset: int  # if_tsoffset, seconds

    @classmethod
    def parse(cls, body: bytes, order: str) -> _Iface:
        linktype, _, snaplen = struct.unpack_from(order + "HHI", body)
        per_second, shift, offset = 10**6, 0, 0
        pos = 8
        while pos + 4 <= len(body):
            code, length = struct.unpack_from(order + "HH", body, pos)
            value = body[pos + 4 : pos + 4 + length]
            if code == 0:
                break
            if code == 9 and len(value) >= 1:  # if_tsresol
                v = value[0]
                if v & 0x80:
                    per_second, shift = 0, v & 0x7F
                else:
                    per_second = 10 ** min(v, 18)
            elif code == 14 and len(value) >= 8:  # if_tsoffset
                offset = struct.unpack_from(order + "q", value)[0]
            pos += 4 + (length + 3) // 4 * 4
        return cls(linktype, snaplen, per_second, shift, offset)

    def seconds(self, units: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
        if self.units_per_second:
            per = np.uint64(self.units_per_second)
            whole = (units // per).astype(np.float64)
            out: npt.NDArray[np.float64] = whole + (units % per).astype(np.float64) / self.units_per_second
        else:
            out = units.astype(np.float64) / float(1 << self.shift)
        return out + self.offset


def _rows(data: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
    """``width`` bytes from each offset, one row each, in one copy; rows that run past
    the end of ``data`` are filled with zeros."""
    n = len(data)
    if n >= width:
        windows = np.lib.stride_tricks.sliding_window_view(data, width)
        rows: npt.NDArray[np.uint8] = windows[np.minimum(at, len(windows) - 1)]
    else:
        rows = np.zeros((len(at), width), dtype=np.uint8)
    late = np.flatnonzero(at > n - width)
    if len(late):  # from a zero-padded copy of the last bytes
        t0 = max(n - width, 0)
        tail = np.zeros(2 * width, dtype=np.uint8)
        tail[: n - t0] = data[t0:]
        padded = np.lib.stride_tricks.sliding_window_view(tail, width)
        rows[late] = padded[np.clip(at[late] - t0, 0, width)]
    return rows


class _Mapped:
    """The capture file as one read-only byte array, memory-mapped: nothing is copied
    and the kernel reads ahead as the walk moves on (a read into a buffer, then a
    padded copy for the gathers, cost more than the rest of reading a record).

    ``reached(end)`` reports progress; ``release(pos)`` drops the pages before ``pos``
    from the process (they stay in the page cache), so that the resident size stays
    that of the part being read, whatever the file's size.  A file that cannot be
    mapped (some network and FUSE file systems) is read whole instead.
    """

    def __init__(self, f: IO[bytes], size: int, progress: Callable[[int, int], None] | None) -> None:
        self._progress = progress
        self._total = size
        self._reported = -1
        self._released = 0
        self._mm: mmap.mmap | None
        try:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            self._mm = None
        if self._mm is not None:
            with contextlib.suppress(OSError, AttributeError):
                self._mm.madvise(mmap.MADV_SEQUENTIAL)
            self.buf: bytes | mmap.mmap = self._mm
            self.data: npt.NDArray[np.uint8] = np.frombuffer(self._mm, dtype=np.uint8)
        else:
            raw = f.read()
            self.buf = raw
            self.data = np.frombuffer(raw, dtype=np.uint8)
        self.size = len(self.data)

    def reached(self, end: int) -> None:
        """The walk reads up to ``end`` now."""
        done = min(end, self._total)
        if self._progress is not None and done > self._reported:
            self._reported = done
            self._progress(done, self._total)

    def release(self, pos: int) -> None:
        """Everything before ``pos`` has been read."""
        if self._mm is None:
            return
        upto = pos // mmap.PAGESIZE * mmap.PAGESIZE
        if upto - self._released >= RELEASE_BYTES:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self._mm.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
            self._released = upto

    def close(self) -> None:
        self.data = np.zeros(0, dtype=np.uint8)
        self.buf = b""
        if self._mm is not None:
            # an array still viewing the map (a caller holding a chunk's view) keeps it
            # open; it is unmapped when that goes
            with contextlib.suppress(BufferError):
                self._mm.close()


class _PcapWalk:
    """Finds where each record of a classic pcap file starts, a window at a time.

    A record's position depends on the lengths of all the records before it, so a walk
    from header to header is one Python step a record.  Instead, every position of the
    window whose bytes could open a record header -- the high half of its seconds
    equal to that of the record the window starts with (or one more, when that record
    lies within :data:`NEAR_WRAP` seconds of the step), a length no record exceeds --
    is found with numpy, and
    each candidate's successor computed from its length.  A run of candidates each
    followed by the next is a run of records (the first is one, and each successor is
    the next record's start); where the chain leaves the candidates (a time jump, a
    header the filter missed, or a candidate that was a payload's bytes), the walk
    takes one record by hand and joins the candidates again.  The result is exactly
    the header-to-header walk's, at a fraction of its cost.
    """

    #: candidates checked for chaining at a time (a chain that breaks early costs little)
    RUN = 8192

    def __init__(self, m: _Mapped, order: str, hdr_dtype: np.dtype[Any]) -> None:
        self.m = m
        self.hdr_dtype = hdr_dtype
        self.half = np.dtype(order + "u2")
        self.half_at = 2 if order == "<" else 0  # where the high half of the seconds sits
        self.u32 = struct.Struct(order + "I").unpack_from
        self.error: str | None = None
        self._match = np.empty(0, dtype=bool)

    def records(self, pos: int, end: int) -> tuple[npt.NDArray[np.int64], int]:
        """(offsets of the records starting at ``pos`` up to ``end``, where the walk
        stops); sets :attr:`error` when a record is corrupt or cut short."""
        size, buf, u32 = self.m.size, self.m.buf, self.u32
        found: list[npt.NDArray[np.int64]] = []
        single: list[int] = []  # records taken by hand since the last run

        def flush() -> None:
            if single:
                found.append(np.array(single, dtype=np.int64))
                single.clear()

        cand, nxt = self._candidates(pos, end)
        last = len(cand) - 1
        while pos < end:
            j = int(np.searchsorted(cand, pos))
            if j <= last and cand[j] == pos:
                # follow the chain through the candidates while each leads to the next
                i = j
                while i < last:
                    stop = min(i + self.RUN, last)
                    breaks = np.flatnonzero(nxt[i:stop] != cand[i + 1 : stop + 1])
                    if len(breaks):
                        i += int(breaks[0])
                        break
                    i = stop
                flush()
                if nxt[i] > size:  # the run's last record is cut short
                    found.append(cand[j:i])
                    pos = int(cand[i])
                    self.error = f"file cut short: the record at byte {pos} is incomplete"
                    break
                found.append(cand[j : i + 1])
                pos = int(nxt[i])
                continue
            # one record by hand
            if pos + 16 > size:
                self.error = f"file cut short: the record at byte {pos} is incomplete"
                break
            (incl,) = u32(buf, pos + 8)
            if incl > MAX_RECORD:
                self.error = f"corrupt record at byte {pos}: length {incl}"
                break
            if pos + 16 + incl > size:
                self.error = f"file cut short: the record at byte {pos} is incomplete"
                break
            single.append(pos)
            pos += 16 + incl
        flush()
        offs = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        return offs, pos

    def _candidates(self, pos: int, end: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(positions in [pos, end) that look like a record header, sorted; the position
        after each one's record)."""
        data, size = self.m.data, self.m.size
        none = np.zeros(0, dtype=np.int64)
        last = min(end, size - 16)  # a header must fit in the file
        if last < pos:
            return none, none
        (sec,) = self.u32(self.m.buf, pos)
        highs = [np.uint16(sec >> 16)]
        if sec & 0xFFFF > 0xFFFF - NEAR_WRAP:  # the high half may step up within the window
            highs.append(np.uint16(((sec >> 16) + 1) & 0xFFFF))
        region = data[pos + self.half_at : last + self.half_at + 2]
        hits = []
        for a in (0, 1):  # the two byte alignments of a 16-bit field
            part = region[a:]
            halves = part[: len(part) // 2 * 2].view(self.half)
            if len(self._match) < len(halves):
                self._match = np.empty(len(halves), dtype=bool)
            # into a buffer kept from window to window: a fresh one each time is fresh
            # pages for the kernel to fault in and zero, costing as much as the comparison
            match = np.equal(halves, highs[0], out=self._match[: len(halves)])
            for h in highs[1:]:
                match |= halves == h
            hits.append(np.flatnonzero(match) * 2 + a)
        cand = np.sort(np.concatenate(hits)) + pos
        cand = cand[cand <= last]
        incl = _rows(data, cand + 8, 4).view(self.hdr_dtype["incl"]).ravel().astype(np.int64)
        ok = incl <= MAX_RECORD
        cand = cand[ok]
        return cand, cand + 16 + incl[ok]


def _supported() -> str:
    return ", ".join(f"{name} ({lt})" for lt, (name, _, _) in sorted(LINKTYPES.items()))
