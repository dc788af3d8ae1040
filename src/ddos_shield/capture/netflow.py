"""NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) datagrams -> traffic batches.

One :class:`NetflowDecoder` serves one exporter (the collector keeps one per exporter
address) and detects the version of each datagram by itself.  It has no I/O: it takes
bytes and the arrival time and returns records, so the same decoder serves a live
collector and a capture file.

Templates
    v9 and IPFIX data records are laid out by templates the exporter sends now and
    then.  Templates and options templates are kept per (version, observation domain /
    source id, template id), replaced when re-sent (a changed layout under the same id
    takes effect at once) and forgotten after ``template_timeout`` seconds without a
    refresh, measured with the ``now`` passed in.  Data sets whose template is not
    known (yet, or any more) are skipped and counted in
    :attr:`NetflowDecoder.unknown_template_sets`: without the template a set cannot even
    be split into records, so sets, not records, are what can be counted.

Records
    One template is one fixed layout, so a data set of fixed-length records is read with
    a single ``np.frombuffer`` over a structured dtype built from the template (only
    the fields the shield uses get a name in it).  Templates with IPFIX variable-length
    fields (length 65535 in the template, a 1- or 3-byte length prefix in the record)
    are walked record by record, copying the wanted fields into the same kind of fixed
    layout.  Enterprise-specific fields (and every field the shield does not use) are
    skipped by their length.

Sampling
    ``packets`` and ``bytes`` are multiplied by the sampling rate, found in this order:
    the record's own samplingInterval (34); the rate of the sampler the record names
    (FLOW_SAMPLER_ID 48 or selectorId 302) as learnt from options data; the last rate
    options data gave for the observation domain; for v5 the header's sampling interval;
    else ``default_rate``.  Options data give a rate through samplingPopulation /
    samplingSize (310/309), (samplingPacketInterval + samplingPacketSpace) /
    samplingPacketInterval (305/306), samplingInterval (34) or
    FLOW_SAMPLER_RANDOM_INTERVAL (50).

Errors
    Never raises on bad input.  A bad or truncated set or record ends the decoding of
    that datagram; every record before it is kept and the problem is in
    :attr:`~ddos_shield.capture.base.Decoded.error`.

Example::

    dec = NetflowDecoder(default_rate=1)
    out = dec.decode(datagram, addr_bytes("192.0.2.1"), time.time())
    out.batch["packets"].sum(), out.error
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ddos_shield.capture.base import Decoded
from ddos_shield.records import Category, PacketFlag, Source, TrafficBatch, empty_traffic

# ---- information elements used (IPFIX numbers; v9 uses the same below 128) -------------
IE_OCTETS = 1  # octetDeltaCount / IN_BYTES
IE_PACKETS = 2  # packetDeltaCount / IN_PKTS
IE_PROTO = 4
IE_TCP_FLAGS = 6
IE_SPORT = 7
IE_SRC4 = 8
IE_IN_IF = 10
IE_DPORT = 11
IE_DST4 = 12
IE_OUT_BYTES = 23  # v9 OUT_BYTES: only when no ingress counter is exported
IE_OUT_PKTS = 24
IE_SRC6 = 27
IE_DST6 = 28
IE_ICMP4 = 32  # icmpTypeCodeIPv4, type<<8 | code
IE_SAMPLING_INTERVAL = 34
IE_SAMPLER_ID = 48
IE_SAMPLER_RANDOM_INTERVAL = 50
IE_MIN_TTL = 52
IE_MAX_TTL = 53
IE_IP_VERSION = 60
IE_OCTETS_TOTAL = 85
IE_PACKETS_TOTAL = 86
IE_FRAG_OFFSET = 88
IE_ICMP6 = 139  # icmpTypeCodeIPv6
IE_ICMP4_TYPE = 176
IE_ICMP4_CODE = 177
IE_ICMP6_TYPE = 178
IE_ICMP6_CODE = 179
IE_TTL = 192
IE_FRAG_FLAGS = 197
IE_SELECTOR_ID = 302
IE_PACKET_INTERVAL = 305
IE_PACKET_SPACE = 306
IE_SAMPLING_SIZE = 309
IE_SAMPLING_POPULATION = 310

_ADDR_LEN = {IE_SRC4: 4, IE_DST4: 4, IE_SRC6: 16, IE_DST6: 16}
_ADDR_NAMES = frozenset(f"f{ie}" for ie in _ADDR_LEN)
_WANTED = frozenset(
    {
        IE_OCTETS,
        IE_PACKETS,
        IE_PROTO,
        IE_TCP_FLAGS,
        IE_SPORT,
        IE_SRC4,
        IE_IN_IF,
        IE_DPORT,
        IE_DST4,
        IE_OUT_BYTES,
        IE_OUT_PKTS,
        IE_SRC6,
        IE_DST6,
        IE_ICMP4,
        IE_SAMPLING_INTERVAL,
        IE_SAMPLER_ID,
        IE_MIN_TTL,
        IE_MAX_TTL,
        IE_IP_VERSION,
        IE_OCTETS_TOTAL,
        IE_PACKETS_TOTAL,
        IE_FRAG_OFFSET,
        IE_ICMP6,
        IE_ICMP4_TYPE,
        IE_ICMP4_CODE,
        IE_ICMP6_TYPE,
        IE_ICMP6_CODE,
        IE_TTL,
        IE_FRAG_FLAGS,
        IE_SELECTOR_ID,
    }
)

# what options data records are read for: sampler rates and the sampler they belong to
_OPTION_WANTED = frozenset(
    {
        IE_SAMPLING_INTERVAL,
        IE_SAMPLER_ID,
        IE_SAMPLER_RANDOM_INTERVAL,
        IE_SELECTOR_ID,
        IE_PACKET_INTERVAL,
        IE_PACKET_SPACE,
        IE_SAMPLING_SIZE,
        IE_SAMPLING_POPULATION,
    }
)

VARLEN = 65535  # template field length meaning "variable length" (RFC 7011 7)
#: templates kept per decoder at most; beyond, expired ones go first, then the oldest
MAX_TEMPLATES = 4096
#: how often (in ``now`` seconds) expired templates are swept out
SWEEP_EVERY = 60.0

TCP_SYN = 0x02
TCP_ACK = 0x10
FRAG_MF = 0x20  # fragmentFlags: bit 2 (More Fragments), counted from the most significant bit

_V4_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)

# NetFlow v5: 24-byte header, 48-byte records, named as the v9 fields they match.
_V5_HEADER = 24
_V5_RECORD = 48
_V5_DTYPE = np.dtype(
    {
        "names": ["f8", "f12", "f10", "f2", "f1", "f7", "f11", "f6", "f4"],
        "formats": [("u1", (4,)), ("u1", (4,)), ">u2", ">u4", ">u4", ">u2", ">u2", "u1", "u1"],
        "offsets": [0, 4, 12, 16, 20, 32, 34, 37, 38],
        "itemsize": _V5_RECORD,
    }
)


_two_u16 = struct.Struct(">HH").unpack_from


class _Bad(Exception):
    """A bad set or record: ends the datagram (caught inside the decoder only)."""


@dataclass(frozen=True)
class _Layout:
    """A template compiled for reading: where each wanted field sits.

    Fixed-length templates read records straight through ``dtype``; variable-length
    ones walk ``walk`` (field length or -1 for variable, destination offset in the
    compact row or -1 to skip) and read the compact rows through ``dtype``.
    """

    dtype: np.dtype[Any]
    fixed: bool
    min_len: int  # the record length when fixed; the shortest possible record otherwise
    walk: tuple[tuple[int, int], ...]
    addresses: bool = False  # whether its records carry an address (else nothing can be counted)


def _field_format(ie: int, length: int) -> tuple[Any, int] | None:
    """(numpy format, byte offset into the field) for a wanted field, or None to skip it."""
    if length == 0 or length == VARLEN:
        return None
    if ie in _ADDR_LEN:
        return (("u1", (length,)), 0) if length == _ADDR_LEN[ie] else None
    if length in (1, 2, 4, 8):
        return f">u{length}", 0
    if length > 8:  # a longer integer than we can hold: its low 8 bytes
        return ">u8", length - 8
    return ("u1", (length,)), 0  # reduced-size 3/5/6/7 bytes, joined in _uint


def _compile(fields: tuple[tuple[int, int], ...], wanted: frozenset[int]) -> _Layout:
    """Compile a template's (ie, length) list; ie -1 marks a field never read (enterprise
    fields, v9 scope fields)."""
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    fixed = all(length != VARLEN for _, length in fields)
    walk: list[tuple[int, int]] = []
    pos = 0  # offset in the record (fixed) or in the compact row (variable)
    min_len = 0
    for ie, length in fields:
        min_len += 1 if length == VARLEN else length
        fmt = _field_format(ie, length) if ie in wanted and f"f{ie}" not in names else None
        if fixed:
            if fmt is not None:
                names.append(f"f{ie}")
                formats.append(fmt[0])
                offsets.append(pos + fmt[1])
            pos += length
        else:
            if fmt is not None:
                names.append(f"f{ie}")
                formats.append(fmt[0])
                offsets.append(pos + fmt[1])
                walk.append((length, pos))
                pos += length
            else:
                walk.append((-1 if length == VARLEN else length, -1))
    itemsize = min_len if fixed else pos
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": max(itemsize, 1)})
    return _Layout(
        dtype=dtype, fixed=fixed, min_len=min_len, walk=tuple(walk), addresses=bool(set(names) & _ADDR_NAMES)
    )


_V5_LAYOUT = _Layout(dtype=_V5_DTYPE, fixed=True, min_len=_V5_RECORD, walk=(), addresses=True)


@dataclass
class _Template:
    fields: tuple[tuple[int, int], ...]
    scope_count: int  # > 0 for options templates
    options: bool
    layout: _Layout
    refreshed: float


def _uint(rec: npt.NDArray[Any], name: str) -> npt.NDArray[np.uint64]:
    """A named integer field of a record array as uint64 (any byte length)."""
    col = rec[name]
    if col.ndim == 1:
        return col.astype(np.uint64)
    out = np.zeros(len(col), dtype=np.uint64)
    for i in range(col.shape[1]):
        out = (out << np.uint64(8)) | col[:, i].astype(np.uint64)
    return out


def _get(rec: npt.NDArray[Any], *ies: int) -> npt.NDArray[np.uint64] | None:
    """The first of ``ies`` that the records carry, as uint64."""
    names = rec.dtype.names or ()
    for ie in ies:
        if f"f{ie}" in names:
            return _uint(rec, f"f{ie}")
    return None


def _rate_from_options(values: dict[int, int]) -> int | None:
    """The 1-in-N rate an options data record states, if it states one."""
    size, population = values.get(IE_SAMPLING_SIZE, 0), values.get(IE_SAMPLING_POPULATION, 0)
    if size > 0 and population > 0:
        return max(1, round(population / size))
    interval, space = values.get(IE_PACKET_INTERVAL, 0), values.get(IE_PACKET_SPACE)
    if interval > 0 and space is not None:
        return max(1, round((interval + space) / interval))
    for ie in (IE_SAMPLING_INTERVAL, IE_SAMPLER_RANDOM_INTERVAL):
        if values.get(ie, 0) > 0:
            return values[ie]
    return None


class NetflowDecoder:
    """Decodes the NetFlow v5/v9 and IPFIX datagrams of one exporter (see the module
    docstring).

    ``default_rate`` is the sampling rate assumed when neither the datagram nor options
    data state one.  Counters for the operator: :attr:`unknown_template_sets` (data
    sets skipped for want of a template) and :attr:`expired_templates`.

    >>> from ddos_shield.records import addr_bytes
    >>> dec = NetflowDecoder(default_rate=100)
    >>> v5 = bytes.fromhex("0005 0001" + "00" * 20) + bytes.fromhex(
    ...     "c6336442 cb00710a 00000000 0003 0000 0000000a 000003e8 00000000 00000000"
    ...     "3039 0035 00 00 11 00 0000 0000 00 00 0000")
    >>> out = dec.decode(v5, addr_bytes("192.0.2.1"), 1700000000.0)
    >>> int(out.batch["packets"][0]), int(out.batch["length"][0]), int(out.batch["dport"][0]), out.error
    (1000, 100, 53, None)
    """

    def __init__(self, default_rate: int = 1, template_timeout: float = 1800.0) -> None:
        self.default_rate = max(1, int(default_rate))
        self.template_timeout = float(template_timeout)
        self.unknown_template_sets = 0
        self.addressless_records = 0
        self.expired_templates = 0
        self._templates: dict[tuple[int, int, int], _Template] = {}
        self._layouts: dict[tuple[bool, tuple[tuple[int, int], ...]], _Layout] = {}
        self._domain_rate: dict[tuple[int, int], int] = {}
        self._sampler_rate: dict[tuple[int, int, int], int] = {}
        self._rate_state: dict[tuple[int, int], tuple[int, dict[int, int]]] = {}
        self._last_sweep = 0.0

    # ---- public --------------------------------------------------------------------

    def decode(self, datagram: bytes, exporter: bytes, now: float) -> Decoded:
        return self.decode_many([(datagram, now)], exporter)[0]

    def decode_many(self, datagrams: Sequence[tuple[bytes, float]], exporter: bytes) -> list[Decoded]:
        """Decode several datagrams of this exporter, (datagram, arrival time) in arrival
        order: one :class:`Decoded` each, exactly as :meth:`decode` one by one would give.

        The headers, sets, templates and options data are read datagram by datagram, in
        order (a template or a sampling rate learnt in one applies to the data after
        it); the data sets are only noted, then those of one layout, exporter domain
        and sampling state are read together -- one ``np.frombuffer`` and one
        conversion for all of them, whatever datagram they came in.  A data set costs
        tens of microseconds in numpy calls whatever its size, and exporters such as
        Cisco's send datagrams of one to three records.
        """
        pieces: list[_Piece] = []
        errors: list[str | None] = []
        for i, (datagram, now) in enumerate(datagrams):
            try:
                errors.append(self._decode(bytes(datagram), i, now, pieces))
            except _Bad as e:
                errors.append(str(e))
            except Exception as e:  # never raise on input: a decoder bug still keeps what was read
                errors.append(f"decoder error: {e!r}")
        return self._assemble(pieces, errors, datagrams, exporter)

    def counters(self) -> dict[str, int]:
        """The decoder's counters, for a collector's per-exporter statistics."""
        return {
            "unknown_template_sets": self.unknown_template_sets,
            "expired_templates": self.expired_templates,
            "addressless_records": self.addressless_records,
            "templates": len(self._templates),
        }

    def sampling_rate(self, version: int, domain: int, sampler: int | None = None) -> int:
        """The rate records of ``domain`` would get now (for tests and status views)."""
        if sampler is not None and (version, domain, sampler) in self._sampler_rate:
            return self._sampler_rate[(version, domain, sampler)]
        return self._domain_rate.get((version, domain), self.default_rate)

    @property
    def template_count(self) -> int:
        return len(self._templates)

    # ---- datagrams -----------------------------------------------------------------

    def _decode(self, data: bytes, index: int, now: float, pieces: list[_Piece]) -> str | None:
        if len(data) < 2:
            return f"datagram of {len(data)} bytes"
        version = data[0] << 8 | data[1]
        if version == 5:
            return self._v5(data, index, pieces)
        if version not in (9, 10):
            return f"unknown NetFlow version {version}"
        if now - self._last_sweep >= SWEEP_EVERY:
            self._sweep(now)
        if version == 9:
            if len(data) < 20:
                return f"truncated v9 header ({len(data)} bytes)"
            domain = int.from_bytes(data[16:20], "big")
            return self._sets(data, 20, len(data), 9, domain, index, now, pieces)
        if len(data) < 16:
            return f"truncated IPFIX header ({len(data)} bytes)"
        length = int.from_bytes(data[2:4], "big")
        domain = int.from_bytes(data[12:16], "big")
        if length < 16:
            return f"IPFIX message length {length}"
        err = self._sets(data, 16, min(length, len(data)), 10, domain, index, now, pieces)
        if err is None and length > len(data):
            err = f"IPFIX message truncated: {len(data)} of {length} bytes"
        return err

    def _v5(self, data: bytes, index: int, pieces: list[_Piece]) -> str | None:
        if len(data) < _V5_HEADER:
            return f"truncated v5 header ({len(data)} bytes)"
        count = int.from_bytes(data[2:4], "big")
        interval = int.from_bytes(data[22:24], "big") & 0x3FFF
        n = min(count, (len(data) - _V5_HEADER) // _V5_RECORD)
        if n:
            rates: tuple[int, dict[int, int]] = (interval if interval > 0 else self.default_rate, {})
            pieces.append((index, (id(_V5_LAYOUT), 5, rates[0]), _V5_LAYOUT, 5, rates, data, _V5_HEADER, n, None))
        if n < count:
            return f"v5 datagram truncated: {n} of {count} records"
        return None

    def _sets(
        self,
        data: bytes,
        pos: int,
        end: int,
        version: int,
        domain: int,
        index: int,
        now: float,
        pieces: list[_Piece],
    ) -> str | None:
        tmpl_set, opt_set = (0, 1) if version == 9 else (2, 3)
        while pos < end:
            if end - pos < 4:
                if any(data[pos:end]):
                    return f"truncated set header at offset {pos}"
                return None
            set_id, set_len = _two_u16(data, pos)
            if set_len < 4:
                return f"set {set_id} at offset {pos}: length {set_len}"
            set_end = pos + set_len
            body_end = min(set_end, end)
            if set_id == tmpl_set:
                self._template_set(data, pos + 4, body_end, version, domain, now, options=False)
            elif set_id == opt_set:
                self._template_set(data, pos + 4, body_end, version, domain, now, options=True)
            elif set_id >= 256:
                self._data_set(data, pos + 4, body_end, set_end > end, version, domain, set_id, index, now, pieces)
            # set ids 2..255 (v9) and 0, 1, 4..255 (IPFIX) are reserved: skipped by length
            if set_end > end:
                return f"set {set_id} at offset {pos} truncated: {end - pos} of {set_len} bytes"
            pos = set_end
        return None

    # ---- templates -----------------------------------------------------------------

    def _template_set(
        self, data: bytes, pos: int, end: int, version: int, domain: int, now: float, *, options: bool
    ) -> None:
        ipfix = version == 10
        while True:
            head = 6 if options and not ipfix else 4
            if end - pos < head:
                return  # padding (or a truncation _sets reports)
            tid, count = struct.unpack_from(">HH", data, pos)
            if tid == 0 and count == 0:
                return  # zero padding
            if ipfix and count == 0:  # withdrawal (RFC 7011 8.1)
                self._withdraw(version, domain, tid)
                pos += 4
                continue
            if tid < 256:
                raise _Bad(f"template id {tid} at offset {pos}")
            if options and not ipfix:
                scope_len, opt_len = count, int.from_bytes(data[pos + 4 : pos + 6], "big")
                if scope_len % 4 or opt_len % 4:
                    raise _Bad(f"options template {tid}: scope/option lengths {scope_len}/{opt_len}")
                scope_count, count = scope_len // 4, (scope_len + opt_len) // 4
                pos += 6
            elif options:
                if end - pos < 6:
                    raise _Bad(f"options template {tid} truncated")
                scope_count = int.from_bytes(data[pos + 4 : pos + 6], "big")
                if scope_count > count:
                    raise _Bad(f"options template {tid}: {scope_count} scope fields of {count}")
                pos += 6
            else:
                scope_count = 0
                pos += 4
            fields: list[tuple[int, int]] = []
            for _ in range(count):
                if end - pos < 4:
                    raise _Bad(f"template {tid} truncated")
                ie, length = struct.unpack_from(">HH", data, pos)
                pos += 4
                if ipfix and ie & 0x8000:
                    if end - pos < 4:
                        raise _Bad(f"template {tid} truncated")
                    pos += 4  # enterprise number: the field is vendor-specific, skipped by length
                    ie = -1
                elif not ipfix and len(fields) < scope_count:
                    ie = -1  # v9 scope types (system, interface, ...) are not field types
                fields.append((ie, length))
            self._learn(version, domain, tid, tuple(fields), scope_count, options, now)

    def _learn(
        self,
        version: int,
        domain: int,
        tid: int,
        fields: tuple[tuple[int, int], ...],
        scope_count: int,
        options: bool,
        now: float,
    ) -> None:
        key = (version, domain, tid)
        old = self._templates.get(key)
        if old is not None and old.fields == fields and old.options == options and old.scope_count == scope_count:
            old.refreshed = now
            return
        layout = self._layouts.get((options, fields))
        if layout is None:
            layout = _compile(fields, _OPTION_WANTED if options else _WANTED)
            if layout.min_len == 0:
                raise _Bad(f"template {tid}: records of zero length")
            if len(self._layouts) >= MAX_TEMPLATES:
                self._layouts.clear()
            self._layouts[(options, fields)] = layout
        if old is None and len(self._templates) >= MAX_TEMPLATES:
            self._sweep(now)
            if len(self._templates) >= MAX_TEMPLATES:
                oldest = min(self._templates, key=lambda k: self._templates[k].refreshed)
                del self._templates[oldest]
        self._templates[key] = _Template(fields, scope_count, options, layout, now)

    def _withdraw(self, version: int, domain: int, tid: int) -> None:
        if tid in (2, 3):  # "all templates" / "all options templates" of the domain
            for k in [k for k, t in self._templates.items() if k[:2] == (version, domain) and t.options == (tid == 3)]:
                del self._templates[k]
        else:
            self._templates.pop((version, domain, tid), None)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        dead = [k for k, t in self._templates.items() if now - t.refreshed > self.template_timeout]
        for k in dead:
            del self._templates[k]
        self.expired_templates += len(dead)

    def _template(self, version: int, domain: int, tid: int, now: float) -> _Template | None:
        t = self._templates.get((version, domain, tid))
        if t is not None and now - t.refreshed > self.template_timeout:
            del self._templates[(version, domain, tid)]
            self.expired_templates += 1
            return None
        return t

    # ---- data ----------------------------------------------------------------------

    def _data_set(
        self,
        data: bytes,
        pos: int,
        end: int,
        truncated: bool,
        version: int,
        domain: int,
        tid: int,
        index: int,
        now: float,
        pieces: list[_Piece],
    ) -> None:
        t = self._templates.get((version, domain, tid))
        if t is not None and now - t.refreshed > self.template_timeout:
            t = self._template(version, domain, tid, now)  # expired: forgotten there
        if t is None:
            self.unknown_template_sets += 1
            return
        lay = t.layout
        error = None
        rec = None
        if lay.fixed:
            n = (end - pos) // lay.min_len
        else:
            rec, error = _walk(data, pos, end, lay, truncated)
            n = 0 if rec is None else len(rec)
        if n:
            if t.options:
                if rec is None:
                    rec = np.frombuffer(data, dtype=lay.dtype, count=n, offset=pos)
                self._options(rec, version, domain)
            elif not lay.addresses:
                self.addressless_records += n  # nothing to count against a destination
            else:
                rates = self._rates(version, domain)
                pieces.append((index, (id(lay), version, id(rates)), lay, version, rates, data, pos, n, rec))
        if error is not None:
            raise _Bad(error)

    def _rates(self, version: int, domain: int) -> tuple[int, dict[int, int]]:
        """The sampling state that records of ``domain`` get now: (the domain's rate,
        rates by sampler id), the same object until options data change it (so data
        sets can be grouped by it)."""
        key = (version, domain)
        cur = self._rate_state.get(key)
        if cur is None:
            samplers = {sid: r for (v, d, sid), r in self._sampler_rate.items() if (v, d) == key}
            cur = self._rate_state[key] = (self._domain_rate.get(key, self.default_rate), samplers)
        return cur

    def _assemble(
        self,
        pieces: list[_Piece],
        errors: list[str | None],
        datagrams: Sequence[tuple[bytes, float]],
        exporter: bytes,
    ) -> list[Decoded]:
        """Read the noted data sets a group at a time; each datagram's records in order."""
        if pieces and all(p[1] == pieces[0][1] for p in pieces):
            return self._assemble_one(pieces, errors, datagrams, exporter)
        groups: dict[tuple[int, int, int], list[tuple[int, _Piece]]] = {}
        for j, p in enumerate(pieces):
            groups.setdefault(p[1], []).append((j, p))
        where: dict[int, list[tuple[int, TrafficBatch]]] = {}  # datagram -> (set's place, its records)
        for part in groups.values():
            _, _, lay, version, rates = part[0][1][:5]
            try:
                rec = _read([p for _, p in part], lay)
                counts = [p[7] for _, p in part]
                times = [datagrams[p[0]][1] for _, p in part]
                now: float | npt.NDArray[np.float64] = times[0]
                if times.count(times[0]) != len(times):
                    now = np.repeat(times, counts)
                batch = self._flows(rec, version, rates, exporter, now)
            except Exception as e:  # a decoder bug: the datagrams of this group say so
                for _, p in part:
                    errors[p[0]] = errors[p[0]] or f"decoder error: {e!r}"
                continue
            start = 0
            for (j, p), c in zip(part, counts, strict=True):
                where.setdefault(p[0], []).append((j, batch if len(part) == 1 else batch[start : start + c]))
                start += c
        out = []
        empty = empty_traffic()
        for i, err in enumerate(errors):
            parts = where.get(i)
            if parts is None:
                batch = empty
            elif len(parts) == 1:
                batch = parts[0][1]
            else:
                parts.sort(key=lambda x: x[0])  # the datagram's sets in their order
                batch = np.concatenate([b for _, b in parts])
            out.append(Decoded(batch, err))
        return out

    def _assemble_one(
        self,
        pieces: list[_Piece],
        errors: list[str | None],
        datagrams: Sequence[tuple[bytes, float]],
        exporter: bytes,
    ) -> list[Decoded]:
        """:meth:`_assemble` when every data set is of one group (the usual case): each
        datagram's records are then one run of the group's, cut out by position."""
        _, _, lay, version, rates = pieces[0][:5]
        if len(datagrams) == 1:  # decode(): one datagram, no cutting
            try:
                batch = self._flows(_read(pieces, lay), version, rates, exporter, datagrams[0][1])
            except Exception as e:  # a decoder bug: say so
                return [Decoded(empty_traffic(), errors[0] or f"decoder error: {e!r}")]
            return [Decoded(batch, errors[0])]
        empty = empty_traffic()
        try:
            rec = _read(pieces, lay)
            index = np.fromiter((p[0] for p in pieces), dtype=np.int64, count=len(pieces))
            counts = np.fromiter((p[7] for p in pieces), dtype=np.int64, count=len(pieces))
            times = np.array([t for _, t in datagrams], dtype=np.float64)
            now: float | npt.NDArray[np.float64] = float(times[0])
            if not bool((times == times[0]).all()):
                now = np.repeat(times[index], counts)
            batch = self._flows(rec, version, rates, exporter, now)
        except Exception as e:  # a decoder bug: the datagrams that had records say so
            for p in pieces:
                errors[p[0]] = errors[p[0]] or f"decoder error: {e!r}"
            return [Decoded(empty, err) for err in errors]
        per = np.bincount(index, weights=counts, minlength=len(datagrams)).astype(np.int64)
        stops = np.cumsum(per).tolist()
        out = []
        start = 0
        for stop, err in zip(stops, errors, strict=True):
            out.append(Decoded(batch[start:stop] if stop > start else empty, err))
            start = stop
        return out

    def _options(self, rec: npt.NDArray[Any], version: int, domain: int) -> None:
        names = rec.dtype.names or ()
        cols = {int(name[1:]): _uint(rec, name) for name in names}
        for i in range(len(rec)):
            values = {ie: int(col[i]) for ie, col in cols.items()}
            rate = _rate_from_options(values)
            if rate is None:
                continue
            self._domain_rate[(version, domain)] = rate
            self._rate_state.pop((version, domain), None)  # later data sets get the new state
            sampler = values.get(IE_SAMPLER_ID, values.get(IE_SELECTOR_ID))
            if sampler is not None:
                self._sampler_rate[(version, domain, sampler)] = rate

    def _flows(
        self,
        rec: npt.NDArray[Any],
        version: int,
        rates: tuple[int, dict[int, int]],
        exporter: bytes,
        now: float | npt.NDArray[np.float64],
    ) -> TrafficBatch:
        n = len(rec)
        domain_rate, sampler_rates = rates
        rate = np.full(n, domain_rate, dtype=np.uint64)
        sampler = _get(rec, IE_SAMPLER_ID, IE_SELECTOR_ID)
        if sampler is not None and sampler_rates:
            for sid in np.unique(sampler):
                r = sampler_rates.get(int(sid))
                if r is not None:
                    rate[sampler == sid] = r
        own = _get(rec, IE_SAMPLING_INTERVAL)
        if own is not None:
            rate = np.where(own > 0, own, rate)
        source = Source.NETFLOW if version in (5, 9) else Source.IPFIX
        return _records(rec, rate, source, exporter, now)


#: a data set noted for reading: (datagram index, group key (layout, version, sampling
#: state), layout, version, sampling state, datagram, offset, records, records already
#: walked (variable-length templates) or None)
_Piece = tuple[
    int, tuple[int, int, int], _Layout, int, tuple[int, dict[int, int]], bytes, int, int, "npt.NDArray[Any] | None"
]


def _read(part: list[_Piece], lay: _Layout) -> npt.NDArray[Any]:
    """The records of data sets of one layout, joined, through one ``np.frombuffer``."""
    if len(part) == 1 and part[0][8] is None:
        _, _, _, _, _, data, pos, n, _ = part[0]
        return np.frombuffer(data, dtype=lay.dtype, count=n, offset=pos)
    size = lay.dtype.itemsize
    if all(p[8] is None for p in part):
        return np.frombuffer(b"".join(p[5][p[6] : p[6] + p[7] * size] for p in part), dtype=lay.dtype)
    return np.concatenate(
        [p[8] if p[8] is not None else np.frombuffer(p[5], dtype=lay.dtype, count=p[7], offset=p[6]) for p in part]
    )


def _walk(data: bytes, pos: int, end: int, lay: _Layout, truncated: bool) -> tuple[npt.NDArray[Any] | None, str | None]:
    """Records of a variable-length template, copied into compact fixed rows."""
    size = lay.dtype.itemsize
    rows = bytearray()
    n = 0
    error = None
    while end - pos >= lay.min_len:
        row = bytearray(size)
        p = pos
        for length, dst in lay.walk:
            if length < 0:
                if p >= end:
                    break
                length = data[p]
                p += 1
                if length == 255:
                    if end - p < 2:
                        p = end + 1
                        break
                    length = int.from_bytes(data[p : p + 2], "big")
                    p += 2
            if p + length > end:
                p = end + 1
                break
            if dst >= 0:
                row[dst : dst + length] = data[p : p + length]
            p += length
        else:
            rows += row
            n += 1
            pos = p
            continue
        error = f"record at offset {pos} runs past its set" + (" (datagram truncated)" if truncated else "")
        break
    return (np.frombuffer(bytes(rows), dtype=lay.dtype, count=n) if n else None), error


def _records(
    rec: npt.NDArray[Any],
    rate: npt.NDArray[np.uint64],
    source: Source,
    exporter: bytes,
    now: float | npt.NDArray[np.float64],
) -> TrafficBatch:
    """Traffic rows from decoded flow records (fields named ``f<ie>``)."""
    n = len(rec)
    names = rec.dtype.names or ()
    out = empty_traffic(n)
    out["ts"] = now
    out["source"] = int(source)
    out["exporter"] = np.frombuffer(exporter.ljust(16, b"\0")[:16], dtype=np.uint8)
    out["sample_rate"] = np.minimum(rate, 0xFFFFFFFF)
    zeros = np.zeros(n, dtype=np.uint64)

    # addresses: IPv6 when the record has only IPv6 ones, or says so, or its IPv4 ones are empty
    has4 = "f8" in names or "f12" in names
    has6 = "f27" in names or "f28" in names
    if has6 and not has4:
        is6 = np.ones(n, dtype=bool)
    elif has6:
        version = _get(rec, IE_IP_VERSION)
        if version is not None:
            is6 = version == 6
        else:
            empty4 = np.ones(n, dtype=bool)
            for name in ("f8", "f12"):
                if name in names:
                    empty4 &= ~rec[name].any(axis=1)
            is6 = empty4
    else:
        is6 = np.zeros(n, dtype=bool)
    for col, v4, v6 in (("src", "f8", "f27"), ("dst", "f12", "f28")):
        if v4 in names:
            out[col][:, :12] = _V4_MAPPED
            out[col][:, 12:] = rec[v4]
        if v6 in names:
            out[col][is6] = rec[v6][is6]
        elif v4 in names:
            out[col][is6] = 0

    proto = _get(rec, IE_PROTO)
    proto = zeros if proto is None else proto & np.uint64(0xFF)
    tcp_flags = _get(rec, IE_TCP_FLAGS)
    tcp_flags = zeros if tcp_flags is None else tcp_flags & np.uint64(0xFF)
    sport = _get(rec, IE_SPORT)
    dport = _get(rec, IE_DPORT)
    dport = zeros if dport is None else dport
    icmp = (proto == 1) | (proto == 58)
    tc4, tc6 = _get(rec, IE_ICMP4), _get(rec, IE_ICMP6)
    type_code = tc4 if tc6 is None else tc6 if tc4 is None else np.where(is6, tc6, tc4)
    if type_code is None:
        t4, c4 = _get(rec, IE_ICMP4_TYPE), _get(rec, IE_ICMP4_CODE)
        t6, c6 = _get(rec, IE_ICMP6_TYPE), _get(rec, IE_ICMP6_CODE)
        tc4 = None if t4 is None else (t4 << np.uint64(8)) | (zeros if c4 is None else c4)
        tc6 = None if t6 is None else (t6 << np.uint64(8)) | (zeros if c6 is None else c6)
        type_code = tc4 if tc6 is None else tc6 if tc4 is None else np.where(is6, tc6, tc4)
    if type_code is not None:
        dport = np.where(icmp, type_code, dport)
    out["sport"] = zeros if sport is None else sport
    out["dport"] = dport
    out["proto"] = proto
    out["tcp_flags"] = tcp_flags

    flags = np.full(n, int(PacketFlag.LEN_MEAN), dtype=np.uint64)
    flags |= np.where(is6, np.uint64(PacketFlag.IPV6), np.uint64(0))
    ttl = _get(rec, IE_TTL, IE_MIN_TTL, IE_MAX_TTL)
    if ttl is None:
        flags |= np.uint64(PacketFlag.TTL_UNKNOWN)
    else:
        out["ttl"] = ttl & np.uint64(0xFF)
    frag_off = _get(rec, IE_FRAG_OFFSET)
    later = np.zeros(n, dtype=bool) if frag_off is None else (frag_off & np.uint64(0x1FFF)) > 0
    frag_flags = _get(rec, IE_FRAG_FLAGS)
    frag = later if frag_flags is None else later | ((frag_flags & np.uint64(FRAG_MF)) != 0)
    flags |= np.where(frag, np.uint64(PacketFlag.FRAG), np.uint64(0))
    flags |= np.where(later, np.uint64(PacketFlag.FRAG_LATER), np.uint64(0))
    out["flags"] = flags

    cat = np.full(n, int(Category.OTHER), dtype=np.uint8)
    cat[proto == 17] = Category.UDP
    cat[icmp] = Category.ICMP
    tcp = proto == 6
    syn = (tcp_flags & np.uint64(TCP_SYN | TCP_ACK)) == TCP_SYN
    cat[tcp] = Category.TCP
    cat[tcp & syn] = Category.TCP_SYN
    cat[later] = Category.FRAG
    out["category"] = cat

    packets = _get(rec, IE_PACKETS, IE_PACKETS_TOTAL, IE_OUT_PKTS)
    octets = _get(rec, IE_OCTETS, IE_OCTETS_TOTAL, IE_OUT_BYTES)
    packets = zeros if packets is None else packets
    octets = zeros if octets is None else octets
    mean = np.where(packets > 0, octets // np.maximum(packets, np.uint64(1)), np.uint64(0))
    out["length"] = np.minimum(mean, np.uint64(0xFFFFFFFF))
    out["packets"] = packets * rate
    out["bytes"] = octets * rate
    ifindex = _get(rec, IE_IN_IF)
    if ifindex is not None:
        out["ifindex"] = np.minimum(ifindex, np.uint64(0xFFFFFFFF))
    return out
