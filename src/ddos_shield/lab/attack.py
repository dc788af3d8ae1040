"""Bounded attack generators run in dsl-atk against the lab's victim.

::

    report = launch(AttackSpec("syn-spoofed", family=6, pps=5000, seconds=2)).wait()
    report.packets_sent        # 10000, from the attacker interface's kernel counter
    report.achieved_pps        # what the generator really managed

Kinds: ``syn``, ``udp``, ``icmp``, ``frag`` and ``scan`` (SYN probes to 255 ports,
``dport``'s high byte with the low byte counting 1..255) from the attacker's own
address (``ATTACKER_V4``/``ATTACKER_V6`` unless ``source`` names one of its other
three); ``udp-spoofed``, ``syn-spoofed``, ``ack-spoofed``, ``rst-spoofed``,
``synack-spoofed`` (from ``sport``, 443 by default: TCP reflection), ``gre-spoofed``
and ``reflect-spoofed`` (UDP answers from the service port ``sport``, 53 by default,
of ``payload`` bytes: reflection/amplification) from random sources in the
benchmarking ranges (198.18.0.0/15, 2001:2::/48, or a ``spoof_net`` inside them).  ``frag`` sends
non-first fragments of UDP datagrams (offset > 0, random IP id; IPv6 through a
fragment header).

Spread-out floods: ``spread`` names a lab prefix (IPv4, /24 to /30) whose host
addresses the destination counts through packet by packet (a carpet bomb, e.g.
:data:`~ddos_shield.lab.CARPET_V4`, which the victim answers for); ``many_sources``
(``syn-spoofed`` over IPv6) counts the low three bytes of the source through
16.5 million values (moduli 253, 255 and 256, pairwise coprime), so that every packet
of a flood of up to that many has a source of its own.

Tools:

* ``hping3`` for IPv4 syn/udp/icmp from the attacker's address up to
  :data:`HPING3_DEFAULT_MAX_PPS` (or when ``tool="hping3"``), always as
  ``timeout -s INT -k 2 T hping3 ... -c COUNT -i uGAP``.  hping3 paces itself with one
  timer per packet, so it falls short of high rates; ``achieved_pps`` says by how much.
* ``trafgen`` for everything else and faster (or when ``tool="trafgen"``): a byte-exact
  configuration with per-packet random fields and checksums computed by trafgen
  (``csumip``/``csumudp``/``csumtcp``...), ``-n COUNT -b PPSpps -P 1``, through the
  attacker's qdisc where a tbf set to exactly PPS x frame length evens out trafgen's
  once-a-second bursts.  The packet count and the rate are then both exact.

Safety, checked by :func:`plan` before anything runs: targets must be lab addresses,
fixed sources the attacker's own, spoofed sources inside the benchmarking ranges;
every generator is bounded by count (pps x seconds) and by ``timeout`` (seconds + 1.5 s)
and stops by itself.  One attack runs at a time (the attacker's transmit counter is
the measure), enforced with a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddos_shield.errors import LabError
from ddos_shield.lab import (
    ATTACKER_IF,
    ATTACKER_MAC,
    ATTACKER_SOURCES_V4,
    ATTACKER_SOURCES_V6,
    ATTACKER_V4,
    ATTACKER_V6,
    LAB_RUN_DIR,
    NS_ATTACKER,
    SHIELD_OUT_MAC,
    SPOOF_V4,
    SPOOF_V6,
    VICTIM_V4,
    VICTIM_V6,
    in_lab,
)
from ddos_shield.lab.topology import if_counters, popen_in

KINDS = (
    "syn",
    "udp",
    "icmp",
    "frag",
    "udp-spoofed",
    "syn-spoofed",
    "ack-spoofed",
    "rst-spoofed",
    "synack-spoofed",
    "gre-spoofed",
    "reflect-spoofed",
    "scan",
)
#: TCP flags of the TCP kinds
TCP_FLAGS = {"syn": 0x02, "ack": 0x10, "rst": 0x04, "synack": 0x12, "scan": 0x02}
TOOLS = ("hping3", "trafgen")
MAX_PPS = 1_000_000
MAX_SECONDS = 600.0
#: Added to ``seconds`` for the ``timeout`` bound: start-up, and hping3's 1 s wait after its last packet.
#: Highest rate at which hping3 is chosen by default (it sends about 85% of 2 k pps here).
HPING3_DEFAULT_MAX_PPS = 5000

#: A tool slower than the requested rate is cut off there, so an attack lasts about ``seconds``.
TIME_MARGIN = 1.5
#: Offset (in bytes) of the non-first fragments: as if the first fragment had carried 1480 (v4) / 1448 (v6) bytes.
FRAG_OFFSET_V4 = 1480
FRAG_OFFSET_V6 = 1448
ATTACK_LOCK = f"{LAB_RUN_DIR}/attack.lock"
_SAMPLE_EVERY = 0.1
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NET = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AttackSpec:
    """What to send.  Only ``kind`` is required; the rest default to a 20 kpps, 5 s flood at the victim.

    ``target`` defaults to the victim's address of ``family``; ``source`` (fixed-source
    kinds) to the attacker's first address; ``spoof_net`` (spoofed kinds) to the whole
    benchmarking range; ``payload`` is the bytes after the UDP/ICMP header (the
    fragment's data for ``frag``); ``tool`` forces hping3 or trafgen; ``sport`` is the
    reflectors' service port of ``reflect-spoofed`` and the source port of
    ``synack-spoofed`` (53 and 443 by default).
    """

    kind: str
    family: int = 4
    pps: int = 20000
    seconds: float = 5.0
    dport: int = 80
    cpu: int | None = None
    target: str | None = None
    source: str | None = None
    spoof_net: str | None = None
    payload: int = 32
    tool: str | None = None
    spread: str | None = None
    many_sources: bool = False
    sport: int | None = None

    @property
    def count(self) -> int:
        """Packets to send: pps x seconds (at least one)."""
        return max(1, round(self.pps * self.seconds))

    @property
    def spoofed(self) -> bool:
        return self.kind.endswith("-spoofed")


@dataclass
class AttackReport:
    """What an attack did, measured by the kernel.

    ``packets_sent`` is the rise of the attacker interface's transmit counter;
    ``started_at`` is when the generator was started and ``ended_at`` when the counter
    was last seen rising (both ``time.time()``); ``achieved_pps`` is the rate measured
    between counter samples (None if the attack was too short to sample), which
    shows whether the tool reached ``pps``.
    """

    kind: str
    family: int
    pps: int
    seconds: float
    target: str
    sources: list[str]
    packets_sent: int
    started_at: float
    ended_at: float
    tool: str
    requested: int
    achieved_pps: float | None
    frame_bytes: int
    tx_dropped: int = 0
    exit_code: int | None = None
    stopped: bool = False
    cpu: int | None = None

    @property
    def reached_pps(self) -> bool:
        """The generator kept within 5 % of the requested rate."""
        return self.achieved_pps is not None and self.achieved_pps >= 0.95 * self.pps

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["reached_pps"] = self.reached_pps
        return d


@dataclass(frozen=True)
class AttackPlan:
    """The exact command (and trafgen configuration) an :class:`AttackSpec` becomes; no I/O to make one."""

    spec: AttackSpec
    tool: str
    argv: list[str]
    config: str | None
    frame_bytes: int
    target: str
    sources: list[str]
    time_limit: float
    config_name: str = field(default="attack.trafgen")


# ---- planning (pure) ----------------------------------------------------------------


def plan(spec: AttackSpec) -> AttackPlan:
    """Check ``spec`` and turn it into a command; raise :class:`LabError` for anything unsafe or malformed."""
    if spec.kind not in KINDS:
        raise LabError(f"kind: expected one of {', '.join(KINDS)}, got {spec.kind!r}")
    if spec.family not in (4, 6):
        raise LabError(f"family: expected 4 or 6, got {spec.family!r}")
    if not (isinstance(spec.pps, int) and 0 < spec.pps <= MAX_PPS):
        raise LabError(f"pps: expected an integer in 1..{MAX_PPS}, got {spec.pps!r}")
    if not (math.isfinite(spec.seconds) and 0 < spec.seconds <= MAX_SECONDS):
        raise LabError(f"seconds: expected a number in (0, {MAX_SECONDS}], got {spec.seconds!r}")
    if not (isinstance(spec.dport, int) and 0 < spec.dport < 65536):
        raise LabError(f"dport: expected 1..65535, got {spec.dport!r}")
    if not (isinstance(spec.payload, int) and 2 <= spec.payload <= 1400):
        raise LabError(f"payload: expected 2..1400 bytes, got {spec.payload!r}")
    if spec.sport is not None and not (isinstance(spec.sport, int) and 0 < spec.sport < 65536):
        raise LabError(f"sport: expected 1..65535, got {spec.sport!r}")
    if spec.cpu is not None and spec.cpu not in os.sched_getaffinity(0):
        raise LabError(f"cpu: {spec.cpu} is not one of the usable CPUs {sorted(os.sched_getaffinity(0))}")

    target = _target(spec)
    spread = _spread(spec)
    if spec.many_sources and (spec.kind != "syn-spoofed" or spec.family != 6):
        # the UDP/IPv6 checksum fixer needs a single varying word; IPv4's range holds 131,072 sources
        raise LabError(f"many_sources: only for syn-spoofed over IPv6, got {spec.kind}/{spec.family}")
    source: _IP | None = None
    spoof: _NET | None = None
    if spec.spoofed:
        if spec.source is not None:
            raise LabError(f"source: a {spec.kind} attack draws its sources from spoof_net; got source={spec.source!r}")
        spoof = _spoof_net(spec)
        sources = [str(spoof)]
    else:
        if spec.spoof_net is not None:
            raise LabError(f"spoof_net: only for spoofed kinds, got it with kind {spec.kind!r}")
        source = _fixed_source(spec)
        sources = [str(source)]

    hping_fits = spec.family == 4 and spec.kind in ("syn", "udp", "icmp") and spread is None
    # hping3 falls behind above a few thousand pps here (about 10 k of 20 k asked, at
    # most 16.6 k): by default it serves only the rates it keeps up with.
    tool = spec.tool or ("hping3" if hping_fits and spec.pps <= HPING3_DEFAULT_MAX_PPS else "trafgen")
    if tool not in TOOLS:
        raise LabError(f"tool: expected one of {', '.join(TOOLS)}, got {tool!r}")
    if tool == "hping3" and not hping_fits:
        raise LabError(
            f"tool: hping3 is used only for IPv4 syn/udp/icmp from a fixed source, not {spec.kind}/{spec.family}"
        )

    limit = round(spec.seconds + TIME_MARGIN, 1)
    bound = ["timeout", "-s", "INT", "-k", "2", f"{limit}"]
    pin = ["taskset", "-c", str(spec.cpu)] if spec.cpu is not None else []
    if tool == "hping3" and source is not None:  # hping_fits implies a fixed source
        frame, mode = _hping_mode(spec)
        gap_us = max(1, round(1e6 / spec.pps))
        argv = [*pin, *bound, "hping3", "-q", "-n", "-c", str(spec.count), "-i", f"u{gap_us}",
                *mode, "-a", str(source), str(target)]  # fmt: skip
        return AttackPlan(spec, tool, argv, None, frame, str(target), sources, limit)

    pkt = _trafgen_packet(spec, target, source, spoof, spread)
    argv = [*pin, *bound, "trafgen", "-o", ATTACKER_IF, "-i", "attack.trafgen", "-n", str(spec.count),
            "-b", f"{spec.pps}pps", "-P", "1", "--qdisc-path", "--no-sock-mem", "--notouch-irq",
            "--no-cpu-stats"]  # fmt: skip
    return AttackPlan(spec, tool, argv, pkt.render(), pkt.size, str(spread or target), sources, limit)


def _target(spec: AttackSpec) -> _IP:
    if spec.target is None:
        return VICTIM_V4 if spec.family == 4 else VICTIM_V6
    try:
        target = ipaddress.ip_address(spec.target)
    except ValueError as e:
        raise LabError(f"target: expected an IP address, got {spec.target!r}") from e
    if target.version != spec.family:
        raise LabError(f"target: {target} is not an IPv{spec.family} address")
    if not in_lab(target):
        raise LabError(f"target: {target} is outside the lab's ranges; refusing to send to it")
    if target in (SPOOF_V4 if spec.family == 4 else SPOOF_V6):
        raise LabError(f"target: {target} is in the spoofing range, which has no hosts")
    return target


def _spread(spec: AttackSpec) -> ipaddress.IPv4Network | None:
    if spec.spread is None:
        return None
    if spec.target is not None:
        raise LabError(f"spread: the destinations come from {spec.spread!r}; got target={spec.target!r} too")
    try:
        net = ipaddress.ip_network(spec.spread, strict=True)
    except ValueError as e:
        raise LabError(f"spread: expected a prefix, got {spec.spread!r}") from e
    if not isinstance(net, ipaddress.IPv4Network) or spec.family != 4 or not 24 <= net.prefixlen <= 30:
        raise LabError(
            f"spread: expected an IPv4 prefix from /24 to /30 with family 4, got {net} (family {spec.family})"
        )
    if not (in_lab(net.network_address) and in_lab(net.broadcast_address)) or net.overlaps(SPOOF_V4):
        raise LabError(f"spread: {net} is outside the lab's host ranges; refusing to send to it")
    return net


def _fixed_source(spec: AttackSpec) -> _IP:
    own = ATTACKER_SOURCES_V4 if spec.family == 4 else ATTACKER_SOURCES_V6
    if spec.source is None:
        return ATTACKER_V4 if spec.family == 4 else ATTACKER_V6
    try:
        source = ipaddress.ip_address(spec.source)
    except ValueError as e:
        raise LabError(f"source: expected an IP address, got {spec.source!r}") from e
    if source not in own:
        raise LabError(f"source: {source} is not one of the attacker's addresses {', '.join(map(str, own))}")
    return source


def _spoof_net(spec: AttackSpec) -> _NET:
    allowed = SPOOF_V4 if spec.family == 4 else SPOOF_V6
    text = spec.spoof_net or str(allowed)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise LabError(f"spoof_net: expected a prefix, got {text!r}") from e
    if net.version != spec.family or not net.subnet_of(allowed):  # type: ignore[arg-type]
        raise LabError(f"spoof_net: {net} is outside the benchmarking range {allowed}; refusing to spoof it")
    # Sources are the prefix with random low bytes (two, or one for a v4 /17../24; three
    # counting ones for many_sources).
    want = 3 if spec.many_sources else 2
    random_bytes = min(want, (net.max_prefixlen - net.prefixlen) // 8)
    if random_bytes < 1 or (spec.family == 6 and random_bytes < want):
        raise LabError(f"spoof_net: {net} is too small to draw sources from (v4 up to /24, v6 up to /{128 - 8 * want})")
    drawn = net.max_prefixlen - 8 * random_bytes
    return ipaddress.ip_network(f"{net.network_address}/{drawn}", strict=False)


def _hping_mode(spec: AttackSpec) -> tuple[int, list[str]]:
    """hping3 options for the kind and the resulting IPv4 frame size."""
    if spec.kind == "syn":
        return 14 + 20 + 20, ["-S", "-p", str(spec.dport)]
    if spec.kind == "udp":
        return 14 + 20 + 8 + spec.payload, ["--udp", "-p", str(spec.dport), "-d", str(spec.payload)]
    return 14 + 20 + 8 + spec.payload, ["--icmp", "-d", str(spec.payload)]


# ---- trafgen packets --------------------------------------------------------------


class _Packet:
    """A frame as trafgen items, with the static bytes kept for checksums computed here."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.static = bytearray()  # dynamic bytes held as zero

    @property
    def size(self) -> int:
        return len(self.static)

    def raw(self, data: bytes) -> None:
        self.items.append(", ".join(f"0x{b:02x}" for b in data))
        self.static += data

    def fill(self, byte: int, n: int) -> None:
        self.items.append(f"fill(0x{byte:02x}, {n})")
        self.static += bytes([byte]) * n

    def dyn(self, text: str, n: int) -> None:
        self.items.append(text)
        self.static += bytes(n)

    def render(self) -> str:
        return "{\n  " + ",\n  ".join(self.items) + "\n}\n"


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ones_add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def _v6_pseudo(src: bytes, dst: bytes, length: int, proto: int) -> bytes:
    return src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])


def _source_items(pkt: _Packet, source: _IP | None, spoof: _NET | None, many: bool = False) -> None:
    if source is not None:
        pkt.raw(source.packed)
        return
    if spoof is None:
        raise LabError("an attack needs a fixed source or a spoofing prefix")
    nrand = (spoof.max_prefixlen - spoof.prefixlen) // 8
    pkt.raw(spoof.network_address.packed[:-nrand])
    if spoof.version == 4:
        pkt.dyn(f"drnd({nrand})", nrand)
    elif many:
        # three counters of pairwise coprime moduli: 253 x 255 x 256 sources before one repeats
        pkt.dyn("dinc(0, 252, 1)", 1)
        pkt.dyn("dinc(0, 254, 1)", 1)
        pkt.dyn("dinc(0, 255, 1)", 1)
    else:
        # High byte random, low byte counting 0..254: see _v6_udp_fixer for why never 255.
        pkt.dyn("drnd(1)", 1)
        pkt.dyn("dinc(0, 254, 1)", 1)


def _trafgen_packet(
    spec: AttackSpec, target: _IP, source: _IP | None, spoof: _NET | None, spread: _NET | None = None
) -> _Packet:
    pkt = _Packet()
    kind = spec.kind.removesuffix("-spoofed")
    icmp = 1 if spec.family == 4 else 58
    proto = {"udp": 17, "reflect": 17, "icmp": icmp, "frag": 17, "gre": 47}.get(kind, 6)
    if kind in TCP_FLAGS:
        l4_len = 20
    elif kind == "gre":
        l4_len = 4 + spec.payload
    elif kind == "frag":
        l4_len = spec.payload + (8 if spec.family == 6 else 0)  # v6: the fragment header
    else:
        l4_len = 8 + spec.payload
    pkt.raw(_mac(SHIELD_OUT_MAC) + _mac(ATTACKER_MAC) + (b"\x08\x00" if spec.family == 4 else b"\x86\xdd"))
    ip_off = pkt.size
    if spec.family == 4:
        frag_field = FRAG_OFFSET_V4 // 8 if kind == "frag" else 0
        pkt.raw(bytes([0x45, 0]) + (20 + l4_len).to_bytes(2, "big"))
        pkt.dyn("drnd(2)", 2)  # IP id
        pkt.raw(frag_field.to_bytes(2, "big") + bytes([64, proto]))
        pkt.dyn(f"csumip({ip_off}, {ip_off + 19})", 2)
        _source_items(pkt, source, spoof)
        if spread is None:
            pkt.raw(target.packed)
        else:  # the last byte counts through the prefix's host addresses (checksums follow)
            lo, hi = int(spread.network_address) & 0xFF, int(spread.broadcast_address) & 0xFF
            pkt.raw(spread.network_address.packed[:3])
            pkt.dyn(f"dinc({lo + 1}, {hi - 1}, 1)", 1)
    else:
        pkt.raw(b"\x60\0\0\0" + l4_len.to_bytes(2, "big") + bytes([44 if kind == "frag" else proto, 64]))
        _source_items(pkt, source, spoof, spec.many_sources)
        pkt.raw(target.packed)
    l4_off = pkt.size

    if kind in TCP_FLAGS:
        flags = TCP_FLAGS[kind]
        if kind == "synack":  # answers of reflecting servers: from their service port
            pkt.raw((spec.sport or 443).to_bytes(2, "big") + spec.dport.to_bytes(2, "big"))
        elif kind == "scan":  # one probe per port: the low byte counts through 1..255
            pkt.dyn("drnd(2)", 2)
            pkt.raw(bytes([spec.dport >> 8]))
            pkt.dyn("dinc(1, 255, 1)", 1)
        else:
            pkt.dyn("drnd(2)", 2)  # source port
            pkt.raw(spec.dport.to_bytes(2, "big"))
        pkt.dyn("drnd(4)", 4)  # sequence number
        if flags & 0x10:
            pkt.dyn("drnd(4)", 4)  # acknowledgement number
        else:
            pkt.raw(bytes(4))
        pkt.raw(bytes([0x50, flags]) + (64240).to_bytes(2, "big"))
        csum = "csumtcp" if spec.family == 4 else "csumtcp6"
        pkt.dyn(f"{csum}({ip_off}, {l4_off})", 2)
        pkt.raw(bytes(2))
    elif kind == "gre":
        pkt.raw(bytes([0, 0, 0x08, 0x00]))  # GRE: no flags, version 0, carrying IPv4
        pkt.fill(0x41, spec.payload)
    elif kind == "reflect":
        # answers from the reflectors' service port; v6 keeps the destination port fixed
        # (one varying word, the source's, for _v6_udp_fixer)
        pkt.raw((spec.sport or 53).to_bytes(2, "big"))
        if spec.family == 4:
            pkt.dyn("drnd(2)", 2)
        else:
            pkt.raw(spec.dport.to_bytes(2, "big"))
        pkt.raw((8 + spec.payload).to_bytes(2, "big"))
        pkt.dyn(f"{'csumudp' if spec.family == 4 else 'csumudp6'}({ip_off}, {l4_off})", 2)
        if spec.family == 6:
            rest = bytes([0x41]) * (spec.payload - 2)
            pkt.raw(_v6_udp_fixer(bytes(pkt.static), ip_off, l4_off, rest))
            if rest:
                pkt.fill(0x41, len(rest))
        else:
            pkt.fill(0x41, spec.payload)
    elif kind == "udp":
        if spec.family == 4:
            pkt.dyn("drnd(2)", 2)
        elif spoof is None:
            pkt.dyn("drnd(1)", 1)
            pkt.dyn("dinc(0, 254, 1)", 1)
        else:
            pkt.raw((0xC000 | spec.dport).to_bytes(2, "big"))
        pkt.raw(spec.dport.to_bytes(2, "big") + (8 + spec.payload).to_bytes(2, "big"))
        pkt.dyn(f"{'csumudp' if spec.family == 4 else 'csumudp6'}({ip_off}, {l4_off})", 2)
        if spec.family == 6:
            rest = bytes([0x41]) * (spec.payload - 2)
            pkt.raw(_v6_udp_fixer(bytes(pkt.static), ip_off, l4_off, rest))
            if rest:
                pkt.fill(0x41, len(rest))
        else:
            pkt.fill(0x41, spec.payload)
    elif kind == "icmp":
        if spec.family == 4:
            pkt.raw(bytes([8, 0]))
            pkt.dyn(f"csumicmp({l4_off}, {l4_off + 8 + spec.payload - 1})", 2)
            pkt.raw((0x4453).to_bytes(2, "big") + (1).to_bytes(2, "big"))
            pkt.fill(0x41, spec.payload)
        else:
            # trafgen has no ICMPv6 checksum helper; the packet is static, so compute it here.
            body = bytes([128, 0, 0, 0]) + (0x4453).to_bytes(2, "big") + (1).to_bytes(2, "big")
            body += bytes([0x41]) * spec.payload
            src = pkt.static[ip_off + 8 : ip_off + 24]
            icmp_sum = 0xFFFF - _ones_sum(_v6_pseudo(bytes(src), target.packed, len(body), 58) + body)
            pkt.raw(bytes([128, 0]) + (icmp_sum or 0xFFFF).to_bytes(2, "big") + body[4:8])
            pkt.fill(0x41, spec.payload)
    else:  # frag: a non-first fragment carries no UDP header, only the datagram's later bytes
        if spec.family == 6:
            pkt.raw(bytes([17, 0]) + ((FRAG_OFFSET_V6 // 8) << 3).to_bytes(2, "big"))
            pkt.dyn("drnd(4)", 4)  # fragment identification
        pkt.fill(0x41, spec.payload)
    return pkt


def _v6_udp_fixer(head: bytes, ip_off: int, l4_off: int, rest: bytes) -> bytes:
    """Make a zero UDP/IPv6 checksum impossible.

    Over IPv6 a UDP checksum of 0 is invalid, and trafgen does not send 0xffff instead;
    with random fields one packet in 65536 would be dropped by the victim as corrupt.
    Exactly one 16-bit word varies here (high byte random, low byte 0..254), so the sum
    is fixed but for that word: choose the first payload word so that the one value of
    it that would give a zero checksum ends in 0xff, a value it never takes.
    """
    src, dst = head[ip_off + 8 : ip_off + 24], head[ip_off + 24 : ip_off + 40]
    udp = head[l4_off:] + b"\0\0" + rest  # UDP header (checksum and varying word at zero), fixer at zero
    base = _ones_sum(_v6_pseudo(src, dst, len(udp), 17) + udp)
    # base + fixer = 0xff00, so the one forbidden word is ~0xff00 = 0x00ff
    return _ones_add(0xFF00, 0xFFFF - base).to_bytes(2, "big")


# ---- running ------------------------------------------------------------------------


def launch(spec: AttackSpec) -> RunningAttack:
    """Check ``spec`` (refusing anything unsafe before anything runs), start it in dsl-atk, return at once."""
    the_plan = plan(spec)
    if not Path(f"/run/netns/{NS_ATTACKER}").exists():
        raise LabError(f"the lab is not up (no namespace {NS_ATTACKER}); run Lab().up() first")
    return RunningAttack(the_plan)


class RunningAttack:
    """A generator running in dsl-atk.

    Usage::

        with launch(AttackSpec("udp", pps=2000, seconds=1)) as attack:
            ...                       # measure something while it runs
        report = attack.wait()        # or attack.stop() to end it early
    """

    def __init__(self, the_plan: AttackPlan) -> None:
        self.plan = the_plan
        self.spec = the_plan.spec
        self._report: AttackReport | None = None
        lock_fd = _take_lock()
        # Released by _cleanup, or when this object is collected without wait()/stop().
        self._release_lock = weakref.finalize(self, os.close, lock_fd)
        self._workdir = Path(tempfile.mkdtemp(prefix="dsl-attack-"))
        self._samples: list[tuple[float, int]] = []
        self._sampling = threading.Event()
        self._stopped = False
        self._output_tail = ""
        try:
            if the_plan.config is not None:
                (self._workdir / the_plan.config_name).write_text(the_plan.config)
                _pace(self.spec.pps, the_plan.frame_bytes)
            self._before = if_counters(NS_ATTACKER, ATTACKER_IF)
            self.started_at = time.time()
            with open(self._workdir / "output.txt", "wb") as out:
                self._proc = popen_in(
                    NS_ATTACKER, the_plan.argv, cwd=self._workdir, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        except BaseException:
            self._cleanup()
            raise
        self._sampler = threading.Thread(target=self._sample, name="attack-sampler", daemon=True)
        self._sampler.start()
        if self.spec.cpu is not None and the_plan.tool == "trafgen":
            threading.Thread(target=self._repin, args=(self.spec.cpu,), name="attack-repin", daemon=True).start()

    @property
    def running(self) -> bool:
        return self._report is None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> AttackReport:
        """Wait for the generator to finish by itself and return the report.

        With ``timeout``, raise :class:`TimeoutError` if it is still running by then (it
        keeps running, within its own bounds).
        """
        if self._report is not None:
            return self._report
        limit = timeout if timeout is not None else self.plan.time_limit + 5.0
        try:
            self._proc.wait(limit)
        except subprocess.TimeoutExpired:
            if timeout is not None:
                raise TimeoutError(f"attack {self.spec.kind} still running after {timeout} s") from None
            self._kill()
        return self._finish()

    def stop(self) -> AttackReport:
        """End the attack now (SIGINT through ``timeout``, SIGKILL if need be) and return the report."""
        if self._report is not None:
            return self._report
        if self._proc.poll() is None:
            self._stopped = True
            self._kill()
        return self._finish()

    def __enter__(self) -> RunningAttack:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.stop()
        else:
            self.wait()

    # ---- internals ------------------------------------------------------------------

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGINT)  # timeout passes it on to the tool
        try:
            self._proc.wait(4.0)
        except subprocess.TimeoutExpired:
            # timeout made itself the leader of a process group holding the tool.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(2.0)
        if self.plan.config is not None:
            _unpace()  # drops what is still queued

    def _finish(self) -> AttackReport:
        ended = time.time()
        try:
            if self.plan.config is not None:
                _drain()
            after = if_counters(NS_ATTACKER, ATTACKER_IF)
        finally:
            self._sampling.set()
            self._sampler.join(2.0)
            self._cleanup()
        sent = after["tx_packets"] - self._before["tx_packets"]
        self._report = AttackReport(
            kind=self.spec.kind,
            family=self.spec.family,
            pps=self.spec.pps,
            seconds=self.spec.seconds,
            target=self.plan.target,
            sources=list(self.plan.sources),
            packets_sent=sent,
            started_at=self.started_at,
            ended_at=self._last_rise() or ended,
            tool=self.plan.tool,
            requested=self.spec.count,
            achieved_pps=self._rate(),
            frame_bytes=self.plan.frame_bytes,
            tx_dropped=after["tx_dropped"] - self._before["tx_dropped"],
            exit_code=self._proc.returncode,
            stopped=self._stopped,
            cpu=self.spec.cpu,
        )
        if sent == 0 and not self._stopped:
            raise LabError(f"{self.plan.tool} sent nothing (exit {self._proc.returncode}): {self._output_tail}")
        return self._report

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self._output_tail = (self._workdir / "output.txt").read_text(errors="replace")[-500:]
        if self.plan.config is not None:
            with contextlib.suppress(LabError, OSError, subprocess.SubprocessError):
                _unpace()
        shutil.rmtree(self._workdir, ignore_errors=True)
        self._release_lock()  # closing the file releases the flock; runs once

    def _sample(self) -> None:
        base = self._before["tx_packets"]
        exited: float | None = None
        while not self._sampling.is_set():
            # Stop by itself a second after the tool ended (its queue has drained by then),
            # so an attack nobody waits for does not keep polling.
            if self._proc.poll() is not None:
                exited = exited or time.monotonic()
                if time.monotonic() - exited > 1.0:
                    break
            try:
                c = if_counters(NS_ATTACKER, ATTACKER_IF)["tx_packets"] - base
            except LabError:
                break
            self._samples.append((time.time(), c))
            self._sampling.wait(_SAMPLE_EVERY)

    def _rising(self) -> list[tuple[float, int]]:
        """Samples from the first that saw packets to the last at which the count rose."""
        s = self._samples
        first = next((i for i, (_, c) in enumerate(s) if c > 0), None)
        if first is None:
            return []
        last = max(i for i in range(first, len(s)) if i == first or s[i][1] > s[i - 1][1])
        return s[first : last + 1]

    def _rate(self) -> float | None:
        r = self._rising()
        if len(r) < 3:
            return None
        (t0, c0), (t1, c1) = r[0], r[-1]
        return round((c1 - c0) / (t1 - t0), 1) if t1 > t0 else None

    def _last_rise(self) -> float | None:
        r = self._rising()
        return r[-1][0] if r else None

    def _repin(self, cpu: int) -> None:
        # trafgen pins its sending process to CPU 0 itself (one process in rate mode);
        # move it, and keep checking while it starts, in case it pins after our first move.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and self._proc.poll() is None:
            for pid in _descendants(self._proc.pid):
                with contextlib.suppress(OSError):
                    if os.sched_getaffinity(pid) != {cpu}:
                        os.sched_setaffinity(pid, {cpu})
            time.sleep(0.02)


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out.extend(int(k) for k in kids)
        todo.extend(int(k) for k in kids)
    return out


def _take_lock() -> int:
    Path(LAB_RUN_DIR).mkdir(parents=True, exist_ok=True)
    fd = os.open(ATTACK_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LabError(
            "another attack is running in the lab (one at a time: the attacker's counter is the measure)"
        ) from None
    return fd


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["tc", "-n", NS_ATTACKER, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and out.returncode != 0:
        raise LabError(f"{NS_ATTACKER}: tc {' '.join(args)}: {out.stderr.strip()}")
    return out


def _pace(pps: int, frame_bytes: int) -> None:
    """A tbf on the attacker's interface at exactly pps x frame length.

    trafgen's own rate mode sends each second's packets in one burst; the socket's send
    buffer then holds trafgen back while the tbf lets them out evenly.  The burst allows
    about a millisecond of packets, so timer latency does not cost rate.
    """
    rate_bit = pps * frame_bytes * 8
    burst = max(4 * frame_bytes, pps * frame_bytes // 1000)
    _tc("qdisc", "replace", "dev", ATTACKER_IF, "root", "tbf", "rate", f"{rate_bit}bit", "burst", str(burst),
        "limit", str(max(1 << 20, 4 * burst)))  # fmt: skip


def _drain(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = _tc("-j", "-s", "qdisc", "show", "dev", ATTACKER_IF, check=False)
        qdiscs = json.loads(out.stdout or "[]") if out.returncode == 0 else []
        if not any(q.get("kind") == "tbf" and q.get("qlen", 0) > 0 for q in qdiscs):
            return
        time.sleep(0.02)


def _unpace() -> None:
    _tc("qdisc", "del", "dev", ATTACKER_IF, "root", check=False)


__all__ = [
    "KINDS",
    "TOOLS",
    "AttackPlan",
    "AttackReport",
    "AttackSpec",
    "RunningAttack",
    "launch",
    "plan",
]
