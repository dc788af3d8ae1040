"""The one schema every part of the shield shares.

Three kinds of data cross module boundaries, and all are defined here:

* **Traffic batches** -- :data:`TRAFFIC_DTYPE`, a numpy structured array with one row
  per packet (a kernel sample, a mirror-port packet, a pcap packet) or per flow (an
  sFlow/NetFlow/IPFIX record).  ``packets`` and ``bytes`` are already scaled by the
  sampling rate, so a detector sums them without knowing the source.  Addresses are
  16 bytes, IPv4 stored IPv4-mapped, exactly as the kernel stores them.
* **Rate batches** -- :data:`RATE_DTYPE`, one row per (destination, category) over an
  interval: what the kernel counters, nftables counters or aggregated flows say.
* **Attacks and rules** -- frozen dataclasses :class:`Attack`, :class:`Match` and
  :class:`Rule`.  A rule is one match plus one action; the kernel, nftables and (later)
  BGP Flowspec each compile the same :class:`Match`.

Per-packet Python objects never cross a boundary: code that must look at packets
takes a batch and works on its columns.

Example::

    >>> batch = empty_traffic(2)
    >>> batch["proto"] = 17
    >>> int(batch["proto"].sum())
    34
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


class Category(enum.IntEnum):
    """Traffic categories counted per destination (the kernel's ``enum shield_cat``).

    The values are checked against the compiled data plane at load time
    (:mod:`ddos_shield.dataplane.abi`), so this enum cannot drift from the header.
    """

    TCP_SYN = 0
    TCP = 1
    UDP = 2
    ICMP = 3
    FRAG = 4
    OTHER = 5


CATEGORY_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in Category)


class Source(enum.IntEnum):
    """Where a traffic row came from (kept for reports, never used by detectors)."""

    XDP = 1
    AF_PACKET = 2
    NFTABLES = 3
    SFLOW = 4
    NETFLOW = 5
    IPFIX = 6
    PCAP = 7


TRAFFIC_DTYPE = np.dtype(
    [
        ("ts", "f8"),  # Unix seconds
        ("src", "u1", (16,)),  # IPv4-mapped or IPv6
        ("dst", "u1", (16,)),
        ("sport", "u2"),
        ("dport", "u2"),
        ("proto", "u1"),  # IP protocol number (of the first header after IP)
        ("tcp_flags", "u1"),
        ("ttl", "u1"),  # TTL or hop limit
        ("category", "u1"),  # Category
        ("flags", "u2"),  # PacketFlag bits
        ("length", "u4"),  # frame length of this packet (flows: mean length)
        ("packets", "u8"),  # scaled by sample_rate
        ("bytes", "u8"),  # scaled by sample_rate
        ("sample_rate", "u4"),
        ("ifindex", "u4"),
        ("source", "u1"),  # Source
        ("verdict", "u1"),  # kernel verdict for XDP samples, 0 otherwise
        ("rule_id", "u4"),  # kernel rule that decided, 0 = none
        ("exporter", "u1", (16,)),  # flow exporter address, zero for local capture
    ]
)

RATE_DTYPE = np.dtype(
    [
        ("dst", "u1", (16,)),  # IPv4-mapped, or IPv6 aggregated
        ("pps", "f8", (len(Category),)),
        ("bps", "f8", (len(Category),)),
        ("dropped_pps", "f8"),
        # new flows per second: SYN packets for TCP_SYN, an estimate from samples for UDP
        # (detect/flows.py), 0 elsewhere; counters know nothing of flows, so the engine fills it
        ("flows", "f8", (len(Category),)),
    ]
)

#: the per-category rates of a rate batch that thresholds and baselines judge, in this order
RATE_METRICS: tuple[str, ...] = ("pps", "bps", "flows")


COUNTER_DTYPE = np.dtype(
    [
        ("dst", "u1", (16,)),
        ("pkts", "u8", (len(Category),)),  # cumulative since the counter was created
        ("bytes", "u8", (len(Category),)),
        ("dropped_pkts", "u8"),
        ("dropped_bytes", "u8"),
    ]
)
"""Cumulative per-destination counters as a data plane reports them (summed over CPUs)."""


class PacketFlag(enum.IntFlag):
    """Per-packet flags (the kernel's ``enum shield_pkt_flag``)."""

    IPV6 = 1 << 0
    FRAG = 1 << 1
    FRAG_LATER = 1 << 2
    VLAN = 1 << 3
    PROTECTED = 1 << 4
    ALLOWED = 1 << 5
    TTL_UNKNOWN = 1 << 6  # flow records without a TTL
    LEN_MEAN = 1 << 7  # flow records: length is the mean of the flow


TrafficBatch = npt.NDArray[Any]
RateBatch = npt.NDArray[Any]


def empty_traffic(n: int = 0) -> TrafficBatch:
    """A zeroed traffic batch of ``n`` rows."""
    return np.zeros(n, dtype=TRAFFIC_DTYPE)


def empty_rates(n: int = 0) -> RateBatch:
    """A zeroed rate batch of ``n`` rows."""
    return np.zeros(n, dtype=RATE_DTYPE)


# Whole-row copies of a batch.  numpy copies these structured rows field by field and
# the 16-byte address fields element by element (their dtype has subarrays): ~50-100 ns
# a row for a mask, an index, a concatenation or a slice assignment.  Seen as opaque
# items of the row's size, the same copy is one memcpy a row (~5-15 ns); the bytes, and
# so every field, are the same.


def _raw(batch: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return batch.view(np.dtype((np.void, batch.dtype.itemsize)))


def take_rows(batch: npt.NDArray[Any], sel: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``batch[sel]`` (a boolean mask or indices), a copy, as numpy's own but faster."""
    out: npt.NDArray[Any] = _raw(batch)[sel].view(batch.dtype)
    return out


def join_rows(batches: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """``np.concatenate(batches)`` of batches of one dtype, faster."""
    out: npt.NDArray[Any] = np.concatenate([_raw(b) for b in batches]).view(batches[0].dtype)
    return out


def put_rows(dest: npt.NDArray[Any], at: slice | npt.NDArray[Any], rows: npt.NDArray[Any]) -> None:
    """``dest[at] = rows`` for rows of the same dtype, faster."""
    if rows.dtype != dest.dtype:
        raise ValueError(f"rows of {rows.dtype} put into a batch of {dest.dtype}")
    _raw(dest)[at] = _raw(rows)


# ---- addresses ---------------------------------------------------------------------


def addr_bytes(addr: IPAddress | str) -> bytes:
    """16-byte form of an address: IPv4 is IPv4-mapped."""
    a = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if a.version == 4:
        return _V4_MAPPED_PREFIX + a.packed
    return a.packed


def bytes_addr(raw: bytes | npt.NDArray[Any]) -> IPAddress:
    """Inverse of :func:`addr_bytes`."""
    b = bytes(raw)
    if b[:12] == _V4_MAPPED_PREFIX:
        return ipaddress.IPv4Address(b[12:])
    return ipaddress.IPv6Address(b)


def net_key(net: IPNetwork) -> tuple[int, bytes]:
    """(prefix length in the 16-byte space, 16-byte masked address) of a network."""
    plen = net.prefixlen + (96 if net.version == 4 else 0)
    return plen, addr_bytes(net.network_address)


def key_net(plen: int, raw: bytes) -> IPNetwork:
    """Inverse of :func:`net_key`."""
    a = bytes_addr(raw)
    if a.version == 4:
        return ipaddress.IPv4Network((a, plen - 96))
    return ipaddress.IPv6Network((a, plen))


def as_network(value: str | IPNetwork | IPAddress) -> IPNetwork:
    """Parse an address or prefix (strict about host bits) into a network."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    return ipaddress.ip_network(str(value), strict=True)


def addresses_in(column: npt.NDArray[Any], net: IPNetwork) -> npt.NDArray[np.bool_]:
    """Boolean mask of rows of a 16-byte address column that lie inside ``net``."""
    plen, raw = net_key(net)
    if column.ndim == 2 and column.shape[1] == 16 and column.strides[1] == 1 and len(column):
        # as two 64-bit words a row, masked bytewise (so the words' byte order does not
        # matter): a few times faster than comparing 16 byte columns and reducing
        mask = np.frombuffer(_PREFIX_MASKS[plen], dtype="<u8")
        want = np.frombuffer(raw, dtype="<u8") & mask
        words = column.view("<u8")
        ok: npt.NDArray[np.bool_] = (words[:, 1] & mask[1]) == want[1] if mask[1] else np.ones(len(column), bool)
        if mask[0]:
            ok &= (words[:, 0] & mask[0]) == want[0]
        return ok
    want_b = np.frombuffer(raw, dtype=np.uint8)
    full, rest = divmod(plen, 8)
    ok = np.all(column[:, :full] == want_b[:full], axis=1)
    if rest:
        m = (0xFF << (8 - rest)) & 0xFF
        ok &= (column[:, full] & m) == (want_b[full] & m)
    return ok


#: prefix length (0-128) -> its 16-byte mask
_PREFIX_MASKS = [((1 << 128) - (1 << (128 - n))).to_bytes(16, "big") for n in range(129)]


# ---- attacks ---------------------------------------------------------------------


class AttackType(enum.StrEnum):
    """The one vocabulary of attack types used in events, reports and the API.

    Later detectors add members; existing names never change meaning.
    """

    SYN_FLOOD = "syn_flood"
    TCP_FLOOD = "tcp_flood"  # TCP other than SYN (ACK/RST/... floods before finer classification)
    UDP_FLOOD = "udp_flood"
    ICMP_FLOOD = "icmp_flood"
    FRAGMENT_FLOOD = "fragment_flood"
    IP_FLOOD = "ip_flood"  # other IP protocols (ESP, ...) that no finer type names
    # finer types from detect/classify.py (what the attack's sampled packets show)
    ACK_FLOOD = "ack_flood"  # TCP ACK or PSH-ACK without a connection
    RST_FLOOD = "rst_flood"
    SYNACK_FLOOD = "synack_flood"  # SYN-ACKs: TCP reflection off servers the victim never called
    GRE_FLOOD = "gre_flood"
    # UDP reflection/amplification, by the reflectors' service port (detect/classify.REFLECTORS)
    DNS_AMPLIFICATION = "dns_amplification"
    NTP_AMPLIFICATION = "ntp_amplification"
    SSDP_AMPLIFICATION = "ssdp_amplification"
    MEMCACHED_AMPLIFICATION = "memcached_amplification"
    CLDAP_AMPLIFICATION = "cldap_amplification"
    CHARGEN_AMPLIFICATION = "chargen_amplification"
    QOTD_AMPLIFICATION = "qotd_amplification"
    SNMP_AMPLIFICATION = "snmp_amplification"
    WSD_AMPLIFICATION = "wsd_amplification"  # WS-Discovery
    PORTMAP_AMPLIFICATION = "portmap_amplification"
    NETBIOS_AMPLIFICATION = "netbios_amplification"
    MSSQL_AMPLIFICATION = "mssql_amplification"
    RIP_AMPLIFICATION = "rip_amplification"
    OPENVPN_AMPLIFICATION = "openvpn_amplification"
    ARMS_AMPLIFICATION = "arms_amplification"  # Apple Remote Management (Apple Remote Desktop)
    COAP_AMPLIFICATION = "coap_amplification"
    TFTP_AMPLIFICATION = "tftp_amplification"
    UBIQUITI_AMPLIFICATION = "ubiquiti_amplification"
    MDNS_AMPLIFICATION = "mdns_amplification"
    IKE_AMPLIFICATION = "ike_amplification"
    BACNET_AMPLIFICATION = "bacnet_amplification"
    DVR_AMPLIFICATION = "dvr_amplification"  # DHCPDiscover on udp/37810 (IP cameras, DVRs)
    SLP_AMPLIFICATION = "slp_amplification"
    RDP_AMPLIFICATION = "rdp_amplification"
    PLEX_AMPLIFICATION = "plex_amplification"
    JENKINS_AMPLIFICATION = "jenkins_amplification"
    TP240_AMPLIFICATION = "tp240_amplification"
    LANTRONIX_AMPLIFICATION = "lantronix_amplification"
    # below flood rates, from detect/scan.py and detect/connections.py
    PORT_SCAN = "port_scan"  # one source probing many ports of one host
    HOST_SWEEP = "host_sweep"  # one source probing one port (or ping) across many hosts
    CONNECTION_FLOOD = "connection_flood"  # many TCP connections opened fast from few sources
    SLOW_ATTACK = "slow_attack"  # many TCP connections held open, nearly idle, from few sources
    # from detect/carpet.py: the target is a prefix, its addresses each below their limits
    CARPET_BOMBING = "carpet_bombing"


CATEGORY_ATTACK: dict[Category, AttackType] = {
    Category.TCP_SYN: AttackType.SYN_FLOOD,
    Category.TCP: AttackType.TCP_FLOOD,
    Category.UDP: AttackType.UDP_FLOOD,
    Category.ICMP: AttackType.ICMP_FLOOD,
    Category.FRAG: AttackType.FRAGMENT_FLOOD,
    Category.OTHER: AttackType.IP_FLOOD,
}


@dataclass(frozen=True)
class Attack:
    """One attack on one target, as the detection sees it at one moment."""

    attack_id: int
    target: IPNetwork
    group: str
    types: tuple[AttackType, ...]
    categories: tuple[Category, ...]
    started: float
    pps: float  # current rate of the attack categories at the target
    bps: float
    peak_pps: float
    peak_bps: float
    last_seen: float  # last time it was above threshold
    basis: str = "static"  # what its rates were judged against: "static" thresholds or the learned "baseline"
    longest_gap: float = 0.0  # longest quiet spell (seconds) between two observations: pulses
    limit_pps: float = 0.0  # the packet limit its categories were judged against at its latest observation (0: none)


# ---- rules -------------------------------------------------------------------------


class Action(enum.IntEnum):
    """What a rule does with matching packets (the kernel's ``enum shield_action``).

    ``BLACKHOLE`` is user-space only (it has no kernel twin): the target's whole traffic is
    dropped upstream by a BGP blackhole route (RFC 7999).  Only the BGP backend enforces
    it; the kernel and nftables backends refuse it.

    ``SYN_PROXY`` is user-space only too: the TCP handshakes to the rule's destination
    and ports are answered by the kernel's SYN proxy (nftables ``synproxy``, with SYN
    cookies), so only clients that complete the handshake reach the service.  It needs
    connection tracking, which the XDP program does not do: only the nftables backend
    enforces it.  Members from 100 on have no kernel twin, and the ABI check
    (``dataplane/abi.py``) compares only those below.
    """

    DROP = 1
    RATE_LIMIT = 2
    OBSERVE = 3
    BLACKHOLE = 100
    SYN_PROXY = 101

    @property
    def in_kernel(self) -> bool:
        """Whether the kernel's ``enum shield_action`` has this action."""
        return self.value < 100


@dataclass(frozen=True)
class Range:
    """An inclusive integer range; ``Range(53, 53)`` is one port."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise ValueError(f"range {self.lo}-{self.hi}: low end above high end")

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


@dataclass(frozen=True)
class Match:
    """What packets a rule matches; ``None`` fields are wildcards.

    ``tcp_flags`` is ``(mask, value)``: a packet matches when ``flags & mask == value``.
    A match with any port or TCP-flag field never matches a non-first fragment,
    which carries no transport header.

    >>> Match(proto=17, dst=as_network("203.0.113.10/32"), length=Range(60, 80)).fields()
    ['proto', 'dst', 'length']
    """

    proto: int | None = None
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    sport: Range | None = None
    dport: Range | None = None
    tcp_flags: tuple[int, int] | None = None
    length: Range | None = None
    ttl: Range | None = None

    def fields(self) -> list[str]:
        return [f for f in _MATCH_FIELDS if getattr(self, f) is not None]

    def is_source_only(self) -> bool:
        """A plain source-prefix block: indexed by source in the kernel."""
        return self.fields() == ["src"]

    def needs_ports(self) -> bool:
        return self.sport is not None or self.dport is not None or self.tcp_flags is not None

    def describe(self) -> str:
        """One line for people: ``proto=6 dst=203.0.113.10/32 dport=80 tcp_flags=0x02/0x12``."""
        parts = []
        for f in self.fields():
            v = getattr(self, f)
            parts.append(f"{f}={v[1]:#04x}/{v[0]:#04x}" if f == "tcp_flags" else f"{f}={v}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.fields():
            v = getattr(self, f)
            if f == "tcp_flags":
                out[f] = {"mask": v[0], "value": v[1]}
            elif isinstance(v, Range):
                out[f] = {"min": v.lo, "max": v.hi}
            elif f in ("src", "dst"):
                out[f] = str(v)
            else:
                out[f] = v
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Match:
        kw: dict[str, Any] = {}
        for f, v in data.items():
            if f not in _MATCH_FIELDS:
                raise ValueError(f"unknown match field {f!r}")
            if f == "tcp_flags":
                kw[f] = (int(v["mask"]), int(v["value"]))
            elif f in ("sport", "dport", "length", "ttl"):
                kw[f] = Range(int(v["min"]), int(v["max"])) if isinstance(v, dict) else Range(int(v), int(v))
            elif f in ("src", "dst"):
                kw[f] = as_network(v)
            else:
                kw[f] = int(v)
        return cls(**kw)

    def matches(self, batch: TrafficBatch) -> npt.NDArray[np.bool_]:
        """Vectorised: which rows of a traffic batch this match covers (same semantics
        as the kernel), used to preview a rule's reach on samples."""
        ok = np.ones(len(batch), dtype=bool)
        if self.proto is not None:
            ok &= batch["proto"] == self.proto
        if self.src is not None:
            ok &= addresses_in(batch["src"], self.src)
        if self.dst is not None:
            ok &= addresses_in(batch["dst"], self.dst)
        if self.needs_ports():
            ok &= (batch["flags"] & PacketFlag.FRAG_LATER) == 0
        if self.sport is not None:
            ok &= (batch["sport"] >= self.sport.lo) & (batch["sport"] <= self.sport.hi)
        if self.dport is not None:
            ok &= (batch["dport"] >= self.dport.lo) & (batch["dport"] <= self.dport.hi)
        if self.tcp_flags is not None:
            mask, value = self.tcp_flags
            ok &= (batch["tcp_flags"] & mask) == value
        if self.length is not None:
            ok &= (batch["length"] >= self.length.lo) & (batch["length"] <= self.length.hi)
        if self.ttl is not None:
            ok &= (batch["ttl"] >= self.ttl.lo) & (batch["ttl"] <= self.ttl.hi)
        return ok


_MATCH_FIELDS = ("proto", "src", "dst", "sport", "dport", "tcp_flags", "length", "ttl")


@dataclass(frozen=True)
class Rule:
    """One enforcement rule: a match, an action, and why it exists.

    ``rule_id`` is assigned by the backend that enforces it (0 before that) and is
    what events call ``mitigation_id``.  ``expires_at`` is Unix time; the engine
    refreshes it while the attack lasts, and a backend stops enforcing an expired
    rule by itself, so a dead controller never leaves a rule in force for ever.

    ``per_source`` (rate limits only): ``rate_pps`` applies to each source address
    separately -- a source above it is cut to it, sources below are untouched -- instead
    of to all matching packets together, so a few heavy sources cannot starve the others.
    """

    match: Match
    action: Action
    expires_at: float
    rate_pps: int = 0
    rule_id: int = 0
    attack_id: int = 0
    created_at: float = 0.0
    reason: str = ""
    attack_share: float | None = field(default=None, compare=False)  # of attack samples matched
    collateral_share: float | None = field(default=None, compare=False)  # of other traffic matched
    per_source: bool = False

    def __post_init__(self) -> None:
        if self.per_source and self.action != Action.RATE_LIMIT:
            raise ValueError(f"per_source: only for action rate_limit, not {self.action.name.lower()}")

    def with_id(self, rule_id: int) -> Rule:
        return replace(self, rule_id=rule_id)

    def refreshed(self, expires_at: float) -> Rule:
        return replace(self, expires_at=expires_at)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mitigation_id": self.rule_id,
            "action": self.action.name.lower(),
            "match": self.match.to_json(),
            "expires_at": round(self.expires_at, 3),
            "attack_id": self.attack_id,
        }
        if self.action == Action.RATE_LIMIT:
            out["rate_pps"] = self.rate_pps
        if self.per_source:
            out["per_source"] = True
        if self.reason:
            out["reason"] = self.reason
        if self.attack_share is not None:
            out["attack_share"] = round(self.attack_share, 4)
        if self.collateral_share is not None:
            out["collateral_share"] = round(self.collateral_share, 4)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        """Inverse of :meth:`to_json` (``created_at`` too when present); a bad field
        raises ValueError naming it."""
        try:
            action = Action[str(data["action"]).upper()]
        except KeyError:
            names = ", ".join(a.name.lower() for a in Action)
            raise ValueError(f"action: expected one of {names}, got {data.get('action')!r}") from None
        per_source = data.get("per_source", False)
        if not isinstance(per_source, bool):
            raise ValueError(f"per_source: expected true or false, got {per_source!r}")
        return cls(
            match=Match.from_json(data["match"]),
            action=action,
            expires_at=float(data["expires_at"]),
            rate_pps=int(data.get("rate_pps", 0)),
            rule_id=int(data.get("mitigation_id", 0)),
            attack_id=int(data.get("attack_id", 0)),
            created_at=float(data.get("created_at", 0.0)),
            reason=str(data.get("reason", "")),
            attack_share=float(data["attack_share"]) if data.get("attack_share") is not None else None,
            collateral_share=float(data["collateral_share"]) if data.get("collateral_share") is not None else None,
            per_source=per_source,
        )


@dataclass(frozen=True)
class RuleStats:
    """Hit counters of one enforced rule."""

    rule_id: int
    packets: int
    bytes: int
    dropped: int
