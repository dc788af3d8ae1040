"""What kind of attack: from an attack's sampled packets to finer :class:`AttackType` s.

The threshold detector says *which categories* of traffic are over their limits at a
target (SYN, other TCP, UDP, ICMP, fragments, other protocols).  This module looks at
the packets sampled at that target since the attack began and names what they are:

* **TCP** by flags: SYN flood; SYN-ACK flood (TCP reflection: servers answering
  handshakes the victim never opened); ACK or PSH-ACK flood; RST flood; anything else
  stays a TCP flood.
* **UDP** by the source port *and* the size of the packets: reflection/amplification
  arrives from a service port (53 DNS, 123 NTP, 1900 SSDP, 11211 memcached, ...) at a
  size typical of an amplified answer (see :data:`REFLECTORS`), from several
  reflectors, without the target having asked.  A DNS resolver's normal answers are
  small, few, or answers to the target's own queries, so they stay out; what is left
  is a UDP flood.
* **ICMP**, **fragments**: ICMP flood, fragment flood.
* **other protocols**: GRE flood (protocol 47), or an IP flood.

A type is named when it carries at least :data:`TYPE_SHARE` of a category's sampled
packets, so several types at once against one target are each named.  With fewer than
:data:`MIN_SAMPLES` samples of a category, only the category's coarse type is given.

:class:`Classifier` keeps, per attack, the union of what was seen while it lasts (a
coarse type is replaced once a finer one of its category is seen), plus the types the
behaviour detectors (:mod:`~ddos_shield.detect.scan`,
:mod:`~ddos_shield.detect.connections`) report.  No I/O, no clock.

>>> import numpy as np
>>> from ddos_shield.records import Attack, Category, as_network, empty_traffic, addr_bytes
>>> w = empty_traffic(100)
>>> w["dst"] = list(addr_bytes("203.0.113.10")); w["proto"] = 17; w["category"] = Category.UDP
>>> w["sport"] = 123; w["length"] = 482; w["packets"] = 1; w["src"][:, 15] = np.arange(100)
>>> a = Attack(1, as_network("203.0.113.10/32"), "default", (), (Category.UDP,), 0.0, 0, 0, 0, 0, 0.0)
>>> [t.value for t in classify(w, a, now=1.0)]
['ntp_amplification']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ddos_shield.records import (
    CATEGORY_ATTACK,
    Attack,
    AttackType,
    Category,
    IPNetwork,
    TrafficBatch,
    addresses_in,
)

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
IPPROTO_GRE = 47
IPPROTO_UDP = 17

#: a type is named when it carries at least this share of its category's sampled packets
TYPE_SHARE = 0.2
#: fewer sampled packets of a category than this: only the category's coarse type
MIN_SAMPLES = 20
#: reflection comes from at least this many distinct reflectors (in the samples); one
#: source sending from a service port is a direct flood (or a server answering its client)
MIN_REFLECTORS = 2
#: the answers are solicited (not reflection) when the target sent at least this many
#: requests per answer to those reflectors' service port (visible when both sides are
#: protected, as in a capture replayed with everything protected)
SOLICITED_SHARE = 0.5


@dataclass(frozen=True)
class Reflector:
    """A UDP service abused for reflection: the answers come *from* ``ports``.

    ``min_length`` is the mean frame length (bytes, link header included) from which
    answers count as amplified: well above that service's ordinary answers, below what
    amplification attacks carry.  Frame sizes from public amplification write-ups
    (US-CERT TA14-017A, Rossow's "Amplification Hell", NETSCOUT/Akamai advisories).
    """

    type: AttackType
    ports: tuple[int, ...]
    min_length: int


REFLECTORS: tuple[Reflector, ...] = (
    # ordinary DNS answers are ~80-300 bytes; ANY/DNSSEC amplification 1,000-4,000 (fragmented)
    Reflector(AttackType.DNS_AMPLIFICATION, (53,), 400),
    # mode 3/4 time answers are 90 bytes; monlist answers 482 (frames ~500)
    Reflector(AttackType.NTP_AMPLIFICATION, (123,), 200),
    Reflector(AttackType.SSDP_AMPLIFICATION, (1900,), 200),
    Reflector(AttackType.MEMCACHED_AMPLIFICATION, (11211,), 400),
    Reflector(AttackType.CLDAP_AMPLIFICATION, (389,), 400),
    Reflector(AttackType.CHARGEN_AMPLIFICATION, (19,), 100),
    Reflector(AttackType.QOTD_AMPLIFICATION, (17,), 80),
    # GetNext answers are ~90-130 bytes; GetBulk amplification answers are far larger
    Reflector(AttackType.SNMP_AMPLIFICATION, (161,), 150),
    Reflector(AttackType.WSD_AMPLIFICATION, (3702,), 300),
    Reflector(AttackType.PORTMAP_AMPLIFICATION, (111,), 200),
    Reflector(AttackType.NETBIOS_AMPLIFICATION, (137,), 150),
    Reflector(AttackType.MSSQL_AMPLIFICATION, (1434,), 200),
    Reflector(AttackType.RIP_AMPLIFICATION, (520,), 200),
    Reflector(AttackType.OPENVPN_AMPLIFICATION, (1194,), 100),
    Reflector(AttackType.ARMS_AMPLIFICATION, (3283,), 400),
    Reflector(AttackType.COAP_AMPLIFICATION, (5683,), 150),
    Reflector(AttackType.TFTP_AMPLIFICATION, (69,), 300),
    Reflector(AttackType.UBIQUITI_AMPLIFICATION, (10001,), 120),
    Reflector(AttackType.MDNS_AMPLIFICATION, (5353,), 150),
    Reflector(AttackType.IKE_AMPLIFICATION, (500, 4500), 150),
    Reflector(AttackType.BACNET_AMPLIFICATION, (47808,), 100),
    Reflector(AttackType.DVR_AMPLIFICATION, (37810,), 300),
    Reflector(AttackType.SLP_AMPLIFICATION, (427,), 200),
    Reflector(AttackType.RDP_AMPLIFICATION, (3389,), 400),
    Reflector(AttackType.PLEX_AMPLIFICATION, (32414,), 150),
    Reflector(AttackType.JENKINS_AMPLIFICATION, (33848,), 150),
    Reflector(AttackType.TP240_AMPLIFICATION, (10074,), 300),
    Reflector(AttackType.LANTRONIX_AMPLIFICATION, (30718,), 80),
)

REFLECTOR_BY_PORT: dict[int, Reflector] = {p: r for r in REFLECTORS for p in r.ports}
_REFLECTOR_PORTS = np.array(sorted(REFLECTOR_BY_PORT), dtype=np.uint16)

#: the category each finer type refines (a coarse type is dropped once a finer one of
#: its category is seen); behaviour types have none
TYPE_CATEGORY: dict[AttackType, Category] = {
    **{t: c for c, t in CATEGORY_ATTACK.items()},
    AttackType.ACK_FLOOD: Category.TCP,
    AttackType.RST_FLOOD: Category.TCP,
    AttackType.SYNACK_FLOOD: Category.TCP,
    AttackType.GRE_FLOOD: Category.OTHER,
    **{r.type: Category.UDP for r in REFLECTORS},
}

_ORDER = {t: i for i, t in enumerate(AttackType)}
_PROBE_CATEGORIES = {Category.TCP_SYN, Category.UDP}


def classify(
    window: TrafficBatch,
    attack: Attack,
    now: float,
    *,
    categories: tuple[Category, ...] | None = None,
    lead: float = 0.2,
) -> tuple[AttackType, ...]:
    """The types of ``attack`` from the window's samples to its target, taken from
    ``lead`` seconds before it started up to ``now``, in ``categories`` (default: the
    attack's).  Categories with too few samples give their coarse type."""
    found = _classify(window, attack, now, categories if categories is not None else attack.categories, lead)
    out: set[AttackType] = set()
    for cat, types in found.items():
        out |= types if types else {CATEGORY_ATTACK[cat]}
    return _ordered(out)


def _classify(
    window: TrafficBatch, attack: Attack, now: float, categories: tuple[Category, ...], lead: float
) -> dict[Category, set[AttackType]]:
    """Per category: the types its samples show (empty: too few samples to tell)."""
    out: dict[Category, set[AttackType]] = {c: set() for c in categories}
    if not categories or len(window) == 0:
        return out
    ts = window["ts"]
    at_target = addresses_in(window["dst"], attack.target) & (ts >= attack.started - lead) & (ts <= now)
    rows = window[at_target]
    for cat in categories:
        r = rows[rows["category"] == int(cat)]
        if len(r) < MIN_SAMPLES:
            continue
        w = r["packets"].astype(np.float64)
        if cat == Category.TCP_SYN:
            out[cat] = {AttackType.SYN_FLOOD}
        elif cat == Category.TCP:
            out[cat] = _tcp(r, w)
        elif cat == Category.UDP:
            out[cat] = _udp(r, w, window, attack.target)
        elif cat == Category.OTHER:
            out[cat] = _shares(w, [(AttackType.GRE_FLOOD, r["proto"] == IPPROTO_GRE)], AttackType.IP_FLOOD)
        else:
            out[cat] = {CATEGORY_ATTACK[cat]}
    return out


def _shares(
    w: npt.NDArray[np.float64],
    parts: list[tuple[AttackType, npt.NDArray[np.bool_]]],
    rest: AttackType,
) -> set[AttackType]:
    """Each part's type when it carries TYPE_SHARE of the weight; ``rest`` for what no
    part holds when that carries TYPE_SHARE too (or when no part does)."""
    total = float(w.sum())
    if total <= 0:
        return {rest}
    out: set[AttackType] = set()
    claimed = np.zeros(len(w), dtype=bool)
    for t, mask in parts:
        claimed |= mask
        if float(w[mask].sum()) >= TYPE_SHARE * total:
            out.add(t)
    if not out or float(w[~claimed].sum()) >= TYPE_SHARE * total:
        out.add(rest)
    return out


def _tcp(r: TrafficBatch, w: npt.NDArray[np.float64]) -> set[AttackType]:
    f = r["tcp_flags"]
    synack = (f & (TCP_SYN | TCP_ACK | TCP_RST)) == (TCP_SYN | TCP_ACK)
    rst = (f & TCP_RST) != 0
    # bare ACK or PSH-ACK: what an established connection carries, sent without one
    ack = ((f & TCP_ACK) != 0) & ((f & (TCP_SYN | TCP_RST | TCP_FIN)) == 0)
    parts = [(AttackType.SYNACK_FLOOD, synack), (AttackType.RST_FLOOD, rst & ~synack), (AttackType.ACK_FLOOD, ack)]
    return _shares(w, parts, AttackType.TCP_FLOOD)


def _udp(r: TrafficBatch, w: npt.NDArray[np.float64], window: TrafficBatch, target: IPNetwork) -> set[AttackType]:
    total = float(w.sum())
    sport = r["sport"]
    service = np.isin(sport, _REFLECTOR_PORTS)
    out: set[AttackType] = set()
    reflected = np.zeros(len(r), dtype=bool)
    if service.any():
        for port in np.unique(sport[service]).tolist():
            ref = REFLECTOR_BY_PORT[int(port)]
            m = sport == port
            wm = float(w[m].sum())
            if wm < TYPE_SHARE * total:
                continue
            mean_len = float((r["length"][m] * w[m]).sum() / wm)
            if mean_len < ref.min_length:
                continue  # ordinary answers, not amplified ones
            srcs = np.unique(np.ascontiguousarray(r["src"][m]).view("V16").ravel())
            if len(srcs) < MIN_REFLECTORS:
                continue  # one server answering: not reflection
            if _solicited(window, target, srcs, int(port), wm):
                continue  # answers to the target's own requests
            out.add(ref.type)
            reflected |= m
    if not out or float(w[~reflected].sum()) >= TYPE_SHARE * total:
        out.add(AttackType.UDP_FLOOD)
    return out


def _solicited(
    window: TrafficBatch, target: IPNetwork, reflectors: npt.NDArray[np.void], port: int, answers: float
) -> bool:
    """Whether the target itself sent the reflectors requests to ``port``: then their
    answers are its own traffic (an SNMP walk, a resolver's lookups), not reflection."""
    req = (window["proto"] == IPPROTO_UDP) & (window["dport"] == port) & addresses_in(window["src"], target)
    if not req.any():
        return False
    dsts = np.ascontiguousarray(window["dst"][req]).view("V16").ravel()
    asked = np.isin(dsts, reflectors)
    return float(window["packets"][req][asked].sum()) >= SOLICITED_SHARE * answers


def _ordered(types: set[AttackType]) -> tuple[AttackType, ...]:
    return tuple(sorted(types, key=_ORDER.__getitem__))


@dataclass
class _Seen:
    categories: set[Category] = field(default_factory=set)
    types: set[AttackType] = field(default_factory=set)  # from enough samples
    hints: set[AttackType] = field(default_factory=set)  # from the behaviour detectors
    result: tuple[AttackType, ...] = ()
    pending: bool = False  # a look was asked for while no category was over its limit


class Classifier:
    """The types of each open attack over its life (see the module docstring).

    >>> from ddos_shield.records import as_network, empty_traffic
    >>> c = Classifier()
    >>> a = Attack(7, as_network("203.0.113.10/32"), "default", (), (), 0.0, 0, 0, 0, 0, 0.0)
    >>> c.update(a, empty_traffic(), 1.0, hints=(AttackType.PORT_SCAN,))
    (<AttackType.PORT_SCAN: 'port_scan'>,)
    """

    def __init__(self, lead: float = 0.2) -> None:
        self._lead = lead
        self._seen: dict[int, _Seen] = {}

    def update(
        self,
        attack: Attack,
        window: TrafficBatch,
        now: float,
        *,
        categories: tuple[Category, ...] = (),
        hints: tuple[AttackType, ...] = (),
        look: bool = True,
    ) -> tuple[AttackType, ...]:
        """Take this tick's flooded ``categories`` and behaviour ``hints`` for ``attack``;
        with ``look``, classify its samples again (the engine asks when the attack starts
        or is updated, not every tick; the look waits for a tick with a category over its
        limit, and a newly flooded category is always looked at).  Returns every type
        seen so far."""
        s = self._seen.setdefault(attack.attack_id, _Seen())
        s.pending |= look or bool(set(categories) - s.categories)
        s.categories |= set(categories)
        s.hints |= set(hints)
        if s.pending and categories:
            # only the categories over their limits now: in a lull, what reaches the target
            # is its ordinary traffic, and naming it would add types the attack never had
            s.pending = False
            for types in _classify(window, attack, now, tuple(sorted(categories)), self._lead).values():
                s.types |= types
        have = {TYPE_CATEGORY[t] for t in s.types if t in TYPE_CATEGORY}
        coarse = {CATEGORY_ATTACK[c] for c in s.categories if c not in have}
        seen = s.hints
        if s.categories & _PROBE_CATEGORIES:
            # a flood to many ports is a flood: a scan is what stays below flood rates
            seen = seen - {AttackType.PORT_SCAN}
        s.result = _ordered(s.types | coarse | seen)
        return s.result

    def types(self, attack_id: int) -> tuple[AttackType, ...] | None:
        s = self._seen.get(attack_id)
        return s.result if s is not None else None

    def forget(self, attack_id: int) -> None:
        self._seen.pop(attack_id, None)


__all__ = ["REFLECTORS", "REFLECTOR_BY_PORT", "TYPE_CATEGORY", "Classifier", "Reflector", "classify"]
