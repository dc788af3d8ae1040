"""Port scans and host sweeps against protected hosts: reconnaissance below flood rates.

A scan sends little, so no rate threshold sees it; what gives it away is *breadth*:
one source probing many ports of one host (a **port scan**), or one port -- or ping --
across many hosts (a **host sweep**), within a few seconds.  Probes are the packets
that open something: TCP SYN without ACK, UDP from an unprivileged port (answers from
a service port -- DNS, NTP, QUIC -- are not probes), ICMP/ICMPv6 echo requests (for
sweeps).  The detector keeps the probes sampled over the last ``scan_window_seconds``
and counts, per source, distinct (protocol, port) per host and distinct hosts per
(protocol, port).

Counts are of *sampled* probes: under a flood elsewhere the sampling rate rises and a
scan looks narrower than it is; without load every packet is sampled.  Scans are
reported (``port_scan``, ``host_sweep``), not blocked: a scan's sources may be decoys.

No I/O, no clock: :meth:`ScanDetector.observe` takes the new samples and ``now``.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from ddos_shield.config import Config
from ddos_shield.detect.distinct import AddressIds, DistinctWindow, address_words, group_hash, unique_addresses
from ddos_shield.detect.threshold import Observation
from ddos_shield.records import (
    AttackType,
    Category,
    IPAddress,
    IPNetwork,
    PacketFlag,
    TrafficBatch,
    bytes_addr,
    take_rows,
)

#: recompute at most this often (seconds); between, the last findings stand
EVALUATE_EVERY = 0.5
#: probes kept at most (the oldest go first): bounds memory and the integer keys below
MAX_PROBES = 200_000
#: a sweep's target is the covering prefix of the swept hosts, never wider than the
#: first, never narrower than the second (so that a growing sweep keeps its target)
SWEEP_WIDEST_V4, SWEEP_NARROWEST_V4 = 16, 24
SWEEP_WIDEST_V6, SWEEP_NARROWEST_V6 = 48, 64
_ECHO_REQUEST = {1: 8, 58: 128}  # ICMP type of an echo request, by protocol

_PROBE_DTYPE = np.dtype(
    [("ts", "f8"), ("src", "u1", (16,)), ("dst", "u1", (16,)), ("proto", "u1"), ("dport", "u2"), ("packets", "u8")]
)


@dataclass(frozen=True)
class Finding:
    """One source's scan or sweep, as the tracker's :class:`Observation` plus what it is."""

    observation: Observation
    type: AttackType
    source: IPAddress
    breadth: int  # distinct ports (scan) or hosts (sweep) probed in the window

    def at(self, now: float) -> Finding:
        """The same finding, observed again at ``now``."""
        return replace(self, observation=replace(self.observation, now=now))


def probes(batch: TrafficBatch) -> npt.NDArray[np.bool_]:
    """Which rows of a batch are probes (see the module docstring)."""
    later = (batch["flags"] & PacketFlag.FRAG_LATER) != 0
    syn = batch["category"] == Category.TCP_SYN
    udp = (batch["proto"] == 17) & (batch["sport"] >= 1024) & ~later
    echo = np.zeros(len(batch), dtype=bool)
    for proto, kind in _ECHO_REQUEST.items():
        echo |= (batch["proto"] == proto) & ((batch["dport"] >> 8) == kind) & ~later
    out: npt.NDArray[np.bool_] = syn | udp | echo
    return out


class ScanDetector:
    """See the module docstring.

    >>> from ddos_shield.config import parse
    >>> det = ScanDetector(parse('protected = ["203.0.113.0/24"]'))
    >>> det.observe(np.zeros(0, dtype=_PROBE_DTYPE), now=0.0)
    []
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._buf: deque[npt.NDArray[np.void]] = deque()
        self._last_eval = -np.inf
        self._found: list[Finding] = []
        # ports per (source, host) and hosts per (source, port) counted as probes
        # arrive: upper bounds that skip the exact count while nothing can reach its
        # threshold (see detect/distinct.py)
        self._ports = DistinctWindow()
        self._hosts = DistinctWindow()  # IPv4 hosts, by address
        self._hosts6 = DistinctWindow()  # IPv6 hosts, by number
        self._host_ids = AddressIds()
        self._held = 0
        self._exact_until: float | None = -np.inf  # None: from the next probe on, for a window

    def reconfigure(self, config: Config) -> None:
        self._config = config
        self._exact_until = None  # a longer window would reach back past what the bounds kept

    def observe(self, samples: TrafficBatch, now: float) -> list[Finding]:
        c = self._config.classification
        if c.scan_min_ports == 0 and c.sweep_min_hosts == 0:
            return []
        if len(samples):
            p = take_rows(samples, probes(samples))
            if len(p):
                rows = np.zeros(len(p), dtype=_PROBE_DTYPE)
                for f in ("ts", "src", "dst", "proto", "dport", "packets"):
                    rows[f] = p[f]
                # ICMP echo: the type/code word says nothing about ports
                rows["dport"][(rows["proto"] == 1) | (rows["proto"] == 58)] = 0
                self._buf.append(rows)
                self._held += len(rows)
                self._count(rows, now)
        horizon = now - c.scan_window_seconds
        while self._buf and (self._buf[0]["ts"].max() < horizon or self._held > MAX_PROBES):
            self._held -= len(self._buf.popleft())
        if now - self._last_eval < EVALUATE_EVERY:
            return [f.at(now) for f in self._found]
        self._last_eval = now
        if self._exact_until is None:
            self._exact_until = now + c.scan_window_seconds
        if not self._buf or (now >= self._exact_until and not self._may_find(horizon)):
            self._found = []
            return []
        rows = np.concatenate(list(self._buf))
        rows = rows[rows["ts"] >= horizon]
        self._found = self._evaluate(rows, now)
        return list(self._found)

    def _count(self, rows: npt.NDArray[np.void], now: float) -> None:
        """Log (source, host, port) of each probe for the bounds."""
        src = address_words(rows["src"])
        dst = address_words(rows["dst"])
        port = (rows["proto"].astype(np.uint64) << np.uint64(16)) | rows["dport"].astype(np.uint64)
        tcpudp = (rows["proto"] == 6) | (rows["proto"] == 17)
        if tcpudp.any():  # port scans: (proto, port) items per (source, host)
            pair = group_hash(src[0][tcpudp], src[1][tcpudp], dst[0][tcpudp], dst[1][tcpudp])
            self._ports.add((pair >> np.uint64(24) << np.uint64(24)) | port[tcpudp], rows["ts"][tcpudp])
        # host sweeps: host items per (source, proto, port), exact: an IPv4 host is its
        # address (the last 4 bytes of the IPv4-mapped form), an IPv6 host a number
        key = group_hash(src[0], src[1], port) >> np.uint64(32) << np.uint64(32)
        v4 = (dst[0] == 0) & ((dst[1] & np.uint64(0xFFFFFFFF)) == np.uint64(0xFFFF0000))
        self._hosts.add(key[v4] | (dst[1][v4] >> np.uint64(32)), rows["ts"][v4])
        if not v4.all():
            v6 = ~v4
            generation = self._host_ids.generation
            host = self._host_ids.ids(rows["dst"][v6]).astype(np.uint64)
            if self._host_ids.generation != generation:  # numbers restarted: the bounds hold again after a window
                self._exact_until = now + self._config.classification.scan_window_seconds
            self._hosts6.add(key[v6] | host, rows["ts"][v6])

    def _may_find(self, horizon: float) -> bool:
        """Whether any source may have probed enough ports or hosts since ``horizon``."""
        c = self._config.classification
        ports = self._ports.max_per_group(horizon, 24)
        # a group's IPv4 and IPv6 hosts are counted apart: the two largest add up to a bound
        hosts = self._hosts.max_per_group(horizon, 32) + self._hosts6.max_per_group(horizon, 32)
        return bool(
            (c.scan_min_ports and ports >= c.scan_min_ports) or (c.sweep_min_hosts and hosts >= c.sweep_min_hosts)
        )

    def _evaluate(self, rows: npt.NDArray[np.void], now: float) -> list[Finding]:
        c = self._config.classification
        span = c.scan_window_seconds
        src_u, src_i = unique_addresses(rows["src"])
        dst_u, dst_i = unique_addresses(rows["dst"])
        port = (rows["proto"].astype(np.int64) << 16) | rows["dport"].astype(np.int64)  # (proto, port) in 24 bits
        weight = rows["packets"].astype(np.float64)
        out: list[Finding] = []
        if c.scan_min_ports:
            tcpudp = (rows["proto"] == 6) | (rows["proto"] == 17)
            pair = src_i * len(dst_u) + dst_i
            out += self._wide(pair, port, tcpudp, c.scan_min_ports, weight, span, now, len(dst_u), src_u, dst_u)
        if c.sweep_min_hosts:
            # key: (source, protocol, port); breadth: distinct hosts
            key = src_i * (1 << 24) + port
            out += self._sweeps(key, dst_i, c.sweep_min_hosts, weight, span, now, src_u, dst_u)
        return out

    def _wide(
        self,
        pair: npt.NDArray[np.int64],
        port: npt.NDArray[np.int64],
        use: npt.NDArray[np.bool_],
        need: int,
        weight: npt.NDArray[np.float64],
        span: float,
        now: float,
        n_dst: int,
        src_u: npt.NDArray[np.void],
        dst_u: npt.NDArray[np.void],
    ) -> list[Finding]:
        """Port scans: (source, host) pairs with ``need`` distinct (protocol, port)."""
        if not use.any():
            return []
        distinct = np.unique(pair[use] * (1 << 24) + port[use]) >> 24
        pairs, breadth = np.unique(distinct, return_counts=True)
        out = []
        for p, n in zip(pairs[breadth >= need].tolist(), breadth[breadth >= need].tolist(), strict=True):
            s, d = divmod(int(p), n_dst)
            target = self._host(bytes_addr(dst_u[d].tobytes()))
            pps = float(weight[use & (pair == p)].sum()) / span
            out.append(self._finding(target, AttackType.PORT_SCAN, src_u[s], int(n), pps, now))
        return out

    def _sweeps(
        self,
        key: npt.NDArray[np.int64],
        dst_i: npt.NDArray[np.int64],
        need: int,
        weight: npt.NDArray[np.float64],
        span: float,
        now: float,
        src_u: npt.NDArray[np.void],
        dst_u: npt.NDArray[np.void],
    ) -> list[Finding]:
        """Host sweeps: (source, protocol, port) keys with ``need`` distinct hosts."""
        combo = np.unique(key * len(dst_u) + dst_i)
        keys, breadth = np.unique(combo // len(dst_u), return_counts=True)
        out = []
        for k, n in zip(keys[breadth >= need].tolist(), breadth[breadth >= need].tolist(), strict=True):
            hosts = dst_u[np.unique(combo[combo // len(dst_u) == k] % len(dst_u))]
            target = _covering([bytes_addr(h.tobytes()) for h in hosts])
            pps = float(weight[key == k].sum()) / span
            out.append(self._finding(target, AttackType.HOST_SWEEP, src_u[int(k) >> 24], int(n), pps, now))
        return out

    def _host(self, addr: IPAddress) -> IPNetwork:
        plen = 32 if addr.version == 4 else self._config.shield.ipv6_prefix_len
        return ipaddress.ip_network((addr, plen), strict=False)

    def _finding(
        self, target: IPNetwork, kind: AttackType, src: np.void, breadth: int, pps: float, now: float
    ) -> Finding:
        group = self._config.group_of(target).name
        obs = Observation(target=target, group=group, categories=(), pps=pps, bps=0.0, total_pps=pps, now=now)
        return Finding(obs, kind, bytes_addr(src.tobytes()), breadth)


def _covering(hosts: list[IPAddress]) -> IPNetwork:
    """The smallest prefix holding every host, between /16 and /24 (v4), /48 and /64 (v6)."""
    first = hosts[0]
    bits = 32 if first.version == 4 else 128
    widest = SWEEP_WIDEST_V4 if first.version == 4 else SWEEP_WIDEST_V6
    lo = min(int(h) for h in hosts)
    hi = max(int(h) for h in hosts)
    narrowest = SWEEP_NARROWEST_V4 if first.version == 4 else SWEEP_NARROWEST_V6
    plen = min(bits - (lo ^ hi).bit_length(), narrowest)
    return ipaddress.ip_network((first, max(plen, widest)), strict=False)
