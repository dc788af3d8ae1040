"""sFlow v5 datagrams -> traffic records (I/O-free).

An sFlow agent (a switch or router, or hsflowd/pmacct on a host) samples 1 packet in N
and sends, per datagram, a header (agent address, sub-agent, sequence number, uptime)
and a list of samples.  Flow samples (enterprise 0, format 1, and the expanded format
3) carry the sampling rate and flow records; of those this decoder reads the raw
packet header (record format 1: the first bytes of the sampled frame) and, when there
is none it can read, the sampled IPv4 / IPv6 records (formats 3 and 4).  Counter
samples (formats 2 and 4) are interface statistics, not traffic: counted and skipped.
Everything else (extended records, other enterprises) is skipped by its length.

One flow sample gives one record: ``packets`` = the sampling rate, ``bytes`` = the
length times the rate, ``length`` the packet's length; with a raw header the TTL and
TCP flags come from the packet itself, from a sampled IPv4/IPv6 record they are
unknown (:attr:`~ddos_shield.records.PacketFlag.TTL_UNKNOWN`).  The frame length of
an Ethernet header counts the 4-byte FCS (sFlow v5, ``sampled_header``); the length
stored is the frame without it, as the kernel sees the frame at its hook, so that a
rule built from sFlow samples matches the same packets in the data plane.  An IP-only
header (protocols 11, 12) and the sampled IPv4/IPv6 records give the IP packet's
length: no link-layer length is known there.  The raw headers of a
datagram are decoded together by :func:`~ddos_shield.capture.decode.decode_frames_valid`.

Every read is bounded by the datagram's length.  A sample is decoded whole or not at
all: the first truncated or inconsistent sample ends the datagram, and the result
keeps every sample before it with the reason in :attr:`Decoded.error`.  Nothing
raises on bad input.

Example::

    dec = SflowDecoder(default_rate=1)
    out = dec.decode(datagram, addr_bytes("192.0.2.1"), time.time())
    out.batch["dst"], out.batch["packets"], out.error, dec.sequence_gaps
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ddos_shield.capture.base import Decoded
from ddos_shield.capture.decode import ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, decode_frames_valid
from ddos_shield.records import Category, PacketFlag, Source, TrafficBatch, empty_traffic

SFLOW_VERSION = 5
AGENT_IPV4 = 1
AGENT_IPV6 = 2
# sample formats, enterprise 0
FLOW_SAMPLE = 1
COUNTER_SAMPLE = 2
FLOW_SAMPLE_EXPANDED = 3
COUNTER_SAMPLE_EXPANDED = 4
# flow record formats, enterprise 0
RECORD_RAW_HEADER = 1
RECORD_SAMPLED_IPV4 = 3
RECORD_SAMPLED_IPV6 = 4
# raw header protocols (sFlow's header_protocol enumeration)
HEADER_ETHERNET = 1
HEADER_IPV4 = 11
HEADER_IPV6 = 12
#: bytes of Ethernet FCS counted in an Ethernet header's frame length
FCS_LEN = 4

#: bytes of each raw header handed to the vectorised decoder (agents send 128 by default)
MAX_HEADER = 256
#: agents (address, sub-agent) whose sequence numbers are followed per exporter
MAX_AGENTS = 1024
#: an agent whose uptime went back by more than this (ms) restarted, whatever its sequence says
RESTART_UPTIME_MS = 60_000
#: a datagram at most this far behind the last one is a late arrival, not a restart
REORDER_WINDOW = 1024

_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_TCP_SYN = 0x02
_TCP_ACK = 0x10
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
# the Ethernet header put in front of IP-only raw headers
_ETH_IPV4 = bytes(12) + ETH_P_IP.to_bytes(2, "big")
_ETH_IPV6 = bytes(12) + ETH_P_IPV6.to_bytes(2, "big")

_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")
_HEAD = struct.Struct(">IIII")  # sub-agent, sequence, uptime, samples
_FLOW = struct.Struct(">8I")  # sequence, source id, rate, pool, drops, input, output, records
# sequence, source id type and index, rate, pool, drops, input and output format and value, records
_FLOW_EXPANDED = struct.Struct(">11I")
_RAW = struct.Struct(">IIII")  # header protocol, frame length, stripped, header length
_SAMPLED4 = struct.Struct(">II4s4sIIII")  # length, protocol, src, dst, sport, dport, tcp flags, tos
_SAMPLED6 = struct.Struct(">II16s16sIIII")  # length, protocol, src, dst, sport, dport, tcp flags, priority


class _Bad(Exception):
    """A truncated or inconsistent part: ends the datagram (never leaves the decoder)."""


@dataclass
class AgentState:
    """The last datagram header seen from one agent (address, sub-agent)."""

    sequence: int
    uptime_ms: int
    datagrams: int = 1


class _Sample(NamedTuple):
    """One flow sample, parsed and checked whole."""

    rate: int
    ifindex: int
    header: tuple[int, int, bytes] | None  # (header protocol, frame length, header bytes)
    sampled: tuple[int, int, bytes, bytes, int, int, int, bool] | None  # sampled IPv4/IPv6 record


class SflowDecoder:
    """Decodes the sFlow v5 datagrams of one exporter (see the module docstring).

    ``default_rate`` stands in for a sampling rate of 0.  The counters below are
    cumulative over the decoder's life (:meth:`counters` gives them as a dict).

    >>> from ddos_shield.records import addr_bytes
    >>> dec = SflowDecoder()
    >>> out = dec.decode(b"\\x00\\x00\\x00\\x05", addr_bytes("192.0.2.1"), 0.0)
    >>> len(out.batch), out.error
    (0, 'datagram header truncated (4 bytes)')
    """

    def __init__(self, default_rate: int = 1) -> None:
        if default_rate < 1:
            raise ValueError(f"default_rate: expected a positive integer, got {default_rate!r}")
        self.default_rate = default_rate
        #: per (16-byte agent address, sub-agent id): last sequence and uptime
        self.agents: dict[tuple[bytes, int], AgentState] = {}
        self.datagrams = 0
        self.flow_samples = 0
        #: counter samples (interface statistics, not traffic): counted and skipped
        self.counter_samples = 0
        #: samples of another enterprise or format: skipped
        self.unknown_samples = 0
        #: flow samples without an IP header this decoder can read (non-IP frames, other header protocols)
        self.undecodable_samples = 0
        #: datagrams lost in transit, from the agents' sequence numbers (late arrivals subtracted)
        self.sequence_gaps = 0
        #: agents that restarted (sequence and uptime went back)
        self.sequence_resets = 0

    def counters(self) -> dict[str, int]:
        """The decoder's counters, for a collector's per-exporter statistics."""
        return {
            "datagrams": self.datagrams,
            "flow_samples": self.flow_samples,
            "counter_samples": self.counter_samples,
            "unknown_samples": self.unknown_samples,
            "undecodable_samples": self.undecodable_samples,
            "sequence_gaps": self.sequence_gaps,
            "sequence_resets": self.sequence_resets,
        }

    # ---- one datagram ------------------------------------------------------------------

    def decode(self, datagram: bytes, exporter: bytes, now: float) -> Decoded:
        return self.decode_many([(datagram, now)], exporter)[0]

    def decode_many(self, datagrams: Sequence[tuple[bytes, float]], exporter: bytes) -> list[Decoded]:
        """Decode several datagrams of this exporter, (datagram, arrival time) in arrival
        order: one :class:`Decoded` each, exactly as :meth:`decode` one by one would give
        (errors per datagram, the records before a bad part kept, counters and sequence
        numbers followed in order), but the raw headers of all of them go through one
        vectorised decoder call, whose fixed cost a datagram of a few samples would
        otherwise pay alone."""
        samples: list[_Sample] = []
        ends: list[int] = []  # samples made by the datagrams up to each
        errors: list[str | None] = []
        for datagram, _ in datagrams:
            try:
                self._parse(bytes(datagram), samples)
                errors.append(None)
            except _Bad as e:
                errors.append(str(e))
            ends.append(len(samples))
        if not samples:
            return [Decoded(empty_traffic(), e) for e in errors]
        if len(datagrams) == 1:
            ts: float | npt.NDArray[np.float64] = datagrams[0][1]
            batch, _ = self._records(samples, exporter, ts)
            return [Decoded(batch, errors[0])]
        times = np.array([now for _, now in datagrams], dtype=np.float64)
        ts = np.repeat(times, np.diff(ends, prepend=0))  # each sample's datagram's
        batch, keep = self._records(samples, exporter, ts)
        # records (kept samples) made by the datagrams up to each: where each one's batch ends
        stop = np.concatenate(([0], np.cumsum(keep)))[ends].tolist()
        start = [0, *stop[:-1]]
        return [Decoded(batch[a:b], e) for a, b, e in zip(start, stop, errors, strict=True)]

    def _parse(self, buf: bytes, samples: list[_Sample]) -> None:
        end = len(buf)
        if end < 8:
            raise _Bad(f"datagram header truncated ({end} bytes)")
        version, atype = _U32x2.unpack_from(buf, 0)
        if version != SFLOW_VERSION:
            raise _Bad(f"not sFlow v5 (version {version})")
        if atype == AGENT_IPV4:
            agent, off = _V4_MAPPED + buf[8:12], 12
        elif atype == AGENT_IPV6:
            agent, off = buf[8:24], 24
        else:
            raise _Bad(f"unknown agent address type {atype}")
        if off + _HEAD.size > end:
            raise _Bad(f"datagram header truncated ({end} bytes)")
        sub_agent, seq, uptime, count = _HEAD.unpack_from(buf, off)
        off += _HEAD.size
        self.datagrams += 1
        self._follow(agent, sub_agent, seq, uptime)

        for i in range(count):
            if off + 8 > end:
                raise _Bad(f"sample {i}: header truncated at byte {off} of {end}")
            fmt, length = _U32x2.unpack_from(buf, off)
            body, stop = off + 8, off + 8 + length
            if stop > end:
                raise _Bad(f"sample {i}: length {length} runs past the datagram's end")
            enterprise, kind = fmt >> 12, fmt & 0xFFF
            if enterprise == 0 and kind in (FLOW_SAMPLE, FLOW_SAMPLE_EXPANDED):
                try:
                    samples.append(self._flow_sample(buf, body, stop, kind == FLOW_SAMPLE_EXPANDED))
                except _Bad as e:
                    raise _Bad(f"sample {i}: {e}") from None
                self.flow_samples += 1
            elif enterprise == 0 and kind in (COUNTER_SAMPLE, COUNTER_SAMPLE_EXPANDED):
                self.counter_samples += 1
            else:
                self.unknown_samples += 1
            off = stop
        if off != end:
            raise _Bad(f"{end - off} bytes after the last of {count} samples")

    def _follow(self, agent: bytes, sub_agent: int, seq: int, uptime: int) -> None:
        """Count datagrams lost between this one and the agent's previous one."""
        key = (agent, sub_agent)
        st = self.agents.get(key)
        if st is None:
            if len(self.agents) >= MAX_AGENTS:  # a bound on what a noisy exporter can make us keep
                del self.agents[next(iter(self.agents))]
            self.agents[key] = AgentState(seq, uptime)
            return
        st.datagrams += 1
        ahead = (seq - st.sequence) & 0xFFFFFFFF
        behind = (st.sequence - seq) & 0xFFFFFFFF
        if ahead == 0:
            return  # a duplicate: nothing lost, nothing new
        if uptime + RESTART_UPTIME_MS < st.uptime_ms:  # a late datagram is not a minute older
            self.sequence_resets += 1
            st.sequence, st.uptime_ms = seq, uptime
        elif ahead < 1 << 31:
            self.sequence_gaps += ahead - 1
            st.sequence, st.uptime_ms = seq, uptime
        elif behind <= REORDER_WINDOW:
            # an older datagram arriving late was counted lost when a successor came
            self.sequence_gaps = max(0, self.sequence_gaps - 1)
        else:  # far behind: the agent restarted within a minute of its last restart
            self.sequence_resets += 1
            st.sequence, st.uptime_ms = seq, uptime

    def _flow_sample(self, buf: bytes, off: int, stop: int, expanded: bool) -> _Sample:
        if expanded:
            if off + _FLOW_EXPANDED.size > stop:
                raise _Bad("expanded flow sample shorter than its fixed fields")
            f = _FLOW_EXPANDED.unpack_from(buf, off)
            rate, in_fmt, in_val, count = f[3], f[6], f[7], f[10]
            off += _FLOW_EXPANDED.size
        else:
            if off + _FLOW.size > stop:
                raise _Bad("flow sample shorter than its fixed fields")
            f = _FLOW.unpack_from(buf, off)
            rate, in_fmt, in_val, count = f[2], f[5] >> 30, f[5] & 0x3FFFFFFF, f[7]
            off += _FLOW.size
        header: tuple[int, int, bytes] | None = None
        sampled: tuple[int, int, bytes, bytes, int, int, int, bool] | None = None
        for r in range(count):
            if off + 8 > stop:
                raise _Bad(f"record {r}: header truncated")
            fmt, length = _U32x2.unpack_from(buf, off)
            body, off = off + 8, off + 8 + length
            if off > stop:
                raise _Bad(f"record {r}: length {length} runs past the sample's end")
            if fmt == RECORD_RAW_HEADER:
                if length < _RAW.size:
                    raise _Bad(f"record {r}: raw header record of {length} bytes")
                proto, frame_len, _stripped, hlen = _RAW.unpack_from(buf, body)
                if _RAW.size + hlen > length:
                    raise _Bad(f"record {r}: header of {hlen} bytes in a record of {length}")
                if header is None and proto in (HEADER_ETHERNET, HEADER_IPV4, HEADER_IPV6):
                    start = body + _RAW.size
                    header = (proto, frame_len, buf[start : start + min(hlen, MAX_HEADER)])
            elif fmt == RECORD_SAMPLED_IPV4:
                if length < _SAMPLED4.size:
                    raise _Bad(f"record {r}: sampled IPv4 record of {length} bytes")
                if sampled is None:
                    ln, pr, src, dst, sp, dp, fl, _ = _SAMPLED4.unpack_from(buf, body)
                    sampled = (ln, pr, _V4_MAPPED + src, _V4_MAPPED + dst, sp, dp, fl, False)
            elif fmt == RECORD_SAMPLED_IPV6:
                if length < _SAMPLED6.size:
                    raise _Bad(f"record {r}: sampled IPv6 record of {length} bytes")
                if sampled is None:
                    ln, pr, src, dst, sp, dp, fl, _ = _SAMPLED6.unpack_from(buf, body)
                    sampled = (ln, pr, src, dst, sp, dp, fl, True)
            # other records (extended switch/router/gateway data, other enterprises): skipped
        if off != stop:
            raise _Bad(f"{stop - off} bytes after the last of {count} records")
        return _Sample(rate or self.default_rate, in_val if in_fmt == 0 else 0, header, sampled)

    # ---- records -----------------------------------------------------------------------

    def _records(
        self, samples: list[_Sample], exporter: bytes, ts: float | npt.NDArray[np.float64]
    ) -> tuple[TrafficBatch, npt.NDArray[np.bool_]]:
        """Records of the samples that give one, in order, and which samples did."""
        n = len(samples)
        out = empty_traffic(n)
        keep = np.zeros(n, dtype=bool)
        # Raw headers: IP-only headers get an Ethernet header in front so that every
        # header goes through one decoder call.
        headers = [(i, smp.header) for i, smp in enumerate(samples) if smp.header is not None]
        if headers:
            width = 14 + max(len(h[2]) for _, h in headers)
            blobs, caplen, wirelen = [], [], []
            for _, (proto, frame_len, data) in headers:
                if proto == HEADER_ETHERNET:
                    frame_len = max(frame_len - FCS_LEN, 0)
                else:
                    data = (_ETH_IPV4 if proto == HEADER_IPV4 else _ETH_IPV6) + data
                blobs.append(data.ljust(width, b"\x00"))
                caplen.append(len(data))
                wirelen.append(frame_len)
            frames = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(headers), width)
            decoded, valid = decode_frames_valid(frames, np.array(caplen), np.array(wirelen))
            at = np.array([i for i, _ in headers])[valid]
            out[at] = decoded[valid]
            keep[at] = True
        for i in np.flatnonzero(~keep).tolist():
            s = samples[i].sampled
            if s is None:
                continue
            length, proto, src, dst, sport, dport, tcp_flags, v6 = s
            out["src"][i] = np.frombuffer(src, dtype=np.uint8)
            out["dst"][i] = np.frombuffer(dst, dtype=np.uint8)
            out["sport"][i] = sport & 0xFFFF
            out["dport"][i] = dport & 0xFFFF
            out["proto"][i] = proto & 0xFF
            out["tcp_flags"][i] = tcp_flags & 0xFF
            out["category"][i] = _category(proto, tcp_flags)
            out["flags"][i] = PacketFlag.TTL_UNKNOWN | (PacketFlag.IPV6 if v6 else 0)
            out["length"][i] = length
            keep[i] = True
        self.undecodable_samples += int(n - keep.sum())
        rate = np.array([smp.rate for smp in samples], dtype=np.uint64)
        out["ts"] = ts
        out["sample_rate"] = rate
        out["packets"] = rate
        out["bytes"] = out["length"].astype(np.uint64) * rate
        out["ifindex"] = [smp.ifindex for smp in samples]
        out["source"] = int(Source.SFLOW)
        out["exporter"] = np.frombuffer(exporter, dtype=np.uint8)
        return (out if keep.all() else out[keep]), keep


def _category(proto: int, tcp_flags: int) -> int:
    if proto == _IPPROTO_TCP:
        return int(Category.TCP_SYN if tcp_flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN else Category.TCP)
    if proto == _IPPROTO_UDP:
        return int(Category.UDP)
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return int(Category.ICMP)
    return int(Category.OTHER)
