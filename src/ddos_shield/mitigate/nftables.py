"""nftables enforcement: the fallback where XDP cannot be attached.

Everything lives in one ``netdev`` table (``ddos_shield`` by default), driven through
libnftables' JSON API (the ``nftables`` module of ``pip-nftables``), one atomic batch
per change.  The table is its own state: rules, ids and expiry are read back from
the kernel, so a restarted shield adopts what it finds and a dead one leaves nothing
in force for longer than the rules' timeouts.
Between listings the backend keeps its own index of what it installed (ids,
source-set elements, the order of the jumps to the rules' chains), so that apply,
refresh and withdraw cost one batch whatever the number of rules in force;
:meth:`NftablesBackend.list` and ``stats`` read the kernel (and renew the index), and
so does a change whose batch failed, before its one retry.

Layout (every packet of every interface walks ``main``, in this order)::

    in_<ifname>  base chain, hook ingress, priority -500, one per interface: jump main
    main         counter rx
                 jump count_in                per-destination counting (the data plane fills it)
                 ip saddr @allow4 accept      allow-list: never dropped nor rate-limited
                 ip6 saddr @allow6 accept
                 jump kill_switch             bypass: holds "accept" while on
                 ip saddr @host4 goto blocked    host source drops (/32, /128): hash sets,
                 ip6 saddr @host6 goto blocked     element timeouts, per-element counters
                 ip saddr @drop4 goto blocked    wider source drops: interval sets, the same
                 ip6 saddr @drop6 goto blocked
                 meta protocol ip jump rules4                fingerprint and rate-limit rules
                 ip frag-off & 0x1fff == 0 jump rules4_l4    ... that look at ports or TCP flags
                 meta protocol ip6 jump rules6
                 exthdr frag missing jump rules6_l4
                 frag frag-off 0 jump rules6_l4
    rules4 ...   only "jump f<id>_<family>", one per rule, in the order they were installed
    f<id>_4      one chain per fingerprint or rate-limit rule and family: the rule
    blocked      counter dropped jump count_drop; drop
    rate_blocked counter rate_limited jump count_drop; drop

Chain names avoid nft keywords (drop, bypass, ...) so that a listing reloads with
``nft -f``.

Port and TCP-flag rules sit in the ``*_l4`` chains, entered only by packets that carry
a transport header, so they never match a non-first fragment.

A fingerprint or rate-limit rule is one nftables rule per address family, each in a
chain of its own (``f<id>_4`` / ``f<id>_6``, jumped to from ``rules4`` ...), plus a small
set of its own, ``r<id>_4`` / ``r<id>_6``, holding its destination prefix (``0.0.0.0/0``
or ``::/0`` when it has none) with an element timeout; the rule looks the destination
up in it.  When the element times out the rule stops matching, even if the shield is
dead; the next :meth:`NftablesBackend.list` garbage-collects it.  Each rule's comment
holds its id, attack id, creation time and match as compact JSON, quoted with ``'``
(the destination is the set element), so :meth:`NftablesBackend.list` rebuilds the
:class:`Rule` objects.
A plain source block becomes an element of ``host4``/``host6`` (a host) or
``drop4``/``drop6`` (a wider prefix) instead (comment with id and attack id), unless
its prefix is already there (or, for the interval sets, overlaps one there), in which
case it is a rule like the others.  Hosts are kept out of the interval sets because
libnftables reads every element of every interval set in the ruleset before each
command: with 10,000 hosts in ``drop4``, any batch took ~80 ms; a hash set costs nothing.
Layout 1 (hosts in ``drop4``) is upgraded in place to layout 2 when the backend opens it.

Why a chain per rule (layout 3): a rule in a shared chain is deleted by its handle, and
the kernel tells a handle only to an echoed batch (``nft -e -a``); libnftables reads the
whole table, every set element included, before running an echoed batch (or listing a
chain): with 10,000 host drops in force a fingerprint rule's apply took ~28 ms against
0.4 ms unechoed (bench/RESULTS.md).  A rule's own chain is deleted by name, and the
jumps of the ``rules*`` chain that held it are rewritten in the same batch (flush, then
one jump per remaining rule in the same order: ~1.2 ms with 200..1 rules in force
against 0.25 ms by handle, the one cost that grows, with the rules and not with the
elements), so no batch needs a handle or an echo.  The ``rules*`` chains hold only the shield's jumps: a
rule added there by hand is dropped by the next withdrawal.  Layout 2 (the rules in the
``rules*`` chains themselves) is upgraded in place to layout 3 when the backend opens
it: each rule moves to its chain with its counters, in one batch.

A per-source rate limit (``Rule.per_source``) is the same rule with a *meter* of its
own, the dynamic set ``m<id>_4`` / ``m<id>_6`` keyed by source address: each source's
packets go through a ``limit rate over`` of their own (``update @m<id>_4 { ip saddr
limit rate over N/second }``), so a source above the rate is cut to it and sources
below it are untouched.  A source idle for ``METER_TIMEOUT`` seconds leaves the meter;
a meter holds at most ``METER_SIZE`` sources, and a source that finds it full is not
limited (nftables cannot add it, and the rule does not match): per-source limits are
for floods from few sources, where an aggregate limit would starve the others; a meter
full of sources also makes every listing of the table slow (see ``METER_TIMEOUT``).  The
rule is read back from its ``update`` statement, so it survives a restart as it is.

Rule ids come from the set ``next_rule_id`` (one element: the next free id), bumped
in the same batch that installs a rule, so ids are never reused, even across restarts.

Units: nftables counts bytes and ``meta length`` from the network header at the
ingress hook; this backend adds the 14-byte Ethernet header back so that byte
counters and length matches mean the L2 frame length, as in the XDP data plane
(offloaded VLAN tags are not counted).  Timeouts have one-second resolution in the
JSON API: expiry is rounded up when installing and read back truncated.  Refreshing a
source block re-adds its element, which updates the timeout on Linux 6.12 and later;
on older kernels the element is replaced and its counter restarts.

A rule's ``reason`` is not kept in the table.  Comments stay
under the 128 characters ``nft -f`` accepts for every common match; libnftables takes
up to 250 through JSON, which the longest matches (IPv6 source and every field) use.

Example::

    b = NftablesBackend(["eth0"])
    r = b.apply(Rule(Match(src=as_network("198.18.0.0/24")), Action.DROP, expires_at=time.time() + 300))
    [x.rule_id for x in b.list()] == [r.rule_id]     # True, and again after a restart
    b.close()                                        # the table (and the rule) stay in place
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nftables

from ddos_shield.errors import DataPlaneError
from ddos_shield.mitigate.base import Backend
from ddos_shield.records import Action, IPNetwork, Match, Range, Rule, RuleStats, as_network

FAMILY = "netdev"
DEFAULT_TABLE = "ddos_shield"
#: Bumped when the table layout changes; a table of another layout is refused.
LAYOUT_VERSION = 3
#: Before every other ingress hook (tc runs before netfilter's ingress anyway).
PRIORITY = -500
#: Added back to nftables' byte counts and length matches (see the module docstring).
ETH_HLEN = 14
#: Rate-limit burst: a tenth of a second of the rate, at least this many packets.
MIN_BURST = 5
#: Per-source rate limits: a source unseen this long leaves the rule's meter (seconds).
#: Short, because every element costs: libnftables reads them all whenever it lists the
#: table (bench/meter.py: 10,000 elements made stats() 83 ms, 16,384 178 ms; 65,536 1.55 s
#: in a one-off run; a rule's apply or withdraw does not list it: ~1 ms whatever the
#: elements, since layout 3); a source back after a pause gets a fresh burst, a tenth of
#: a second's worth
METER_TIMEOUT = 10
#: Per-source rate limits: most sources one rule's meter holds (kernel memory: ~200 bytes each)
METER_SIZE = 16384
#: Longest comment libnftables accepts through JSON (its kernel user data is 256 bytes).
MAX_COMMENT = 250

#: SYN proxy: an ``inet`` table beside the ``netdev`` one (see the module docstring)
SYNPROXY_FAMILY = "inet"
SYNPROXY_SUFFIX = "_synproxy"
#: (hook, priority) of its chains: notrack before conntrack, the proxy at the filter stage
SYNPROXY_CHAINS = {"sp_raw": ("prerouting", -300), "sp_input": ("input", 0), "sp_forward": ("forward", 0)}
#: what the proxy answers the client's SYN with (the nftables wiki's values)
SYNPROXY_STMT = {"mss": 1460, "wscale": 7, "flags": ["timestamp", "sack-perm"]}
#: per-namespace sysctls the SYN proxy needs: SYN cookies on, and conntrack must call the
#: client's ACK to a proxied handshake invalid instead of picking it up as established
SYNPROXY_SYSCTLS = {"net/ipv4/tcp_syncookies": "1", "net/netfilter/nf_conntrack_tcp_loose": "0"}
GLOBAL_COUNTERS = ("rx", "allowed", "bypass", "dropped", "rate_limited", "observed")
HOOK_CHAINS = ("count_in", "count_drop")  # left empty here, filled by the data plane
RULE_CHAINS = ("rules4", "rules4_l4", "rules6", "rules6_l4")
#: A batch of nftables JSON commands, or a listing's objects.
Cmds = list[dict[str, Any]]
_Nets = list[IPNetwork]  # (the backend's "list" method hides the builtin in its class)
_Rules = list[Rule]
_RULE_SET = re.compile(r"^r(\d+)_([46])$")
_RULE_CHAIN = re.compile(r"^f(\d+)_([46])$")
_METER_SET = re.compile(r"^m(\d+)_([46])$")
_SP_SET = re.compile(r"^sp(\d+)_([46])$")
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


class Nft:
    """A libnftables context that raises :class:`DataPlaneError` on failure."""

    def __init__(self) -> None:
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)
        # No echoed batches (``nft -e``): libnftables reads the whole table, every set
        # element included, before running one (see the module docstring, layout 3).

    def run(self, cmds: Cmds, what: str) -> Cmds:
        """Run one batch (atomic for changes); returns the output objects (a listing's)."""
        if not cmds:
            return []
        rc, out, err = self._nft.json_cmd({"nftables": cmds})
        if rc != 0:
            raise DataPlaneError(f"nftables: {what}: {str(err).strip() or f'error {rc}'}")
        if not out:
            return []
        return [o for o in out["nftables"] if "metainfo" not in o]

    def try_run(self, cmds: Cmds) -> Cmds | None:
        """Like :meth:`run`, but ``None`` instead of raising (for "does it exist" reads)."""
        rc, out, _ = self._nft.json_cmd({"nftables": cmds})
        if rc != 0:
            return None
        return [o for o in out["nftables"] if "metainfo" not in o] if out else []


# ---- expression builders -------------------------------------------------------------


def payload(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def prefix(net: IPNetwork) -> Any:
    """A network as a JSON right-hand side (a bare address for a host prefix)."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def parse_prefix(val: Any) -> IPNetwork:
    """Inverse of :func:`prefix` for set element values as nftables lists them."""
    if isinstance(val, dict) and "elem" in val:
        val = val["elem"]["val"]
    if isinstance(val, dict) and "prefix" in val:
        return ipaddress.ip_network(f"{val['prefix']['addr']}/{val['prefix']['len']}")
    if isinstance(val, dict) and "range" in val:
        lo, hi = (ipaddress.ip_address(x) for x in val["range"])
        nets: list[IPNetwork] = list(ipaddress.summarize_address_range(lo, hi))
        if len(nets) != 1:
            raise ValueError(f"range {lo}-{hi} is not one prefix")
        return nets[0]
    return ipaddress.ip_network(str(val))


def _value(r: Range) -> Any:
    return r.lo if r.lo == r.hi else {"range": [r.lo, r.hi]}


def _ip(fam: int) -> str:
    return "ip" if fam == 4 else "ip6"


# ---- the comment codec ---------------------------------------------------------------


def encode_comment(rule: Rule, with_match: bool = True) -> str:
    """Compact JSON identifying a rule (see the module docstring)."""
    d: dict[str, Any] = {"id": rule.rule_id, "attack": rule.attack_id}
    if rule.created_at:
        d["created"] = int(rule.created_at)
    if with_match:
        m = rule.match.to_json()
        m.pop("dst", None)  # the rule's own set holds it
        for k, v in m.items():
            if isinstance(v, dict) and "min" in v:
                m[k] = v["min"] if v["min"] == v["max"] else [v["min"], v["max"]]
            elif isinstance(v, dict) and "mask" in v:
                m[k] = [v["mask"], v["value"]]
        d["match"] = m
    # Single quotes: nftables prints comments between double quotes without escaping,
    # and a listing must stay loadable by "nft -f".
    out = json.dumps(d, separators=(",", ":")).replace('"', "'")
    if len(out) > MAX_COMMENT:
        raise ValueError(f"rule {rule.rule_id}: match too long to keep in an nftables comment: {out}")
    return out


def decode_comment(comment: Any) -> dict[str, Any] | None:
    """The fields of a comment written by :func:`encode_comment`; ``None`` if foreign."""
    if not isinstance(comment, str) or not comment.startswith("{"):
        return None
    try:
        d = json.loads(comment.replace("'", '"'))
        if not isinstance(d, dict) or not isinstance(d.get("id"), int):
            return None
        if "match" in d:
            m = {}
            for k, v in d["match"].items():
                if k == "tcp_flags":
                    m[k] = {"mask": v[0], "value": v[1]}
                elif isinstance(v, list):
                    m[k] = {"min": v[0], "max": v[1]}
                else:
                    m[k] = v
            d["match"] = Match.from_json(m)
        return d
    except (ValueError, KeyError, TypeError, IndexError):
        return None


# ---- compiling a match ---------------------------------------------------------------


def families(m: Match) -> tuple[int, ...]:
    """The address families a match applies to."""
    fams = {n.version for n in (m.src, m.dst) if n is not None}
    if len(fams) > 1:
        raise ValueError(f"match mixes IPv4 and IPv6: src {m.src}, dst {m.dst}")
    return tuple(fams) if fams else (4, 6)


def check_rule(rule: Rule) -> None:
    """Reject what the nftables compiler cannot express faithfully."""
    m = rule.match
    if rule.action == Action.SYN_PROXY:
        check_synproxy(rule)
        return
    if not rule.action.in_kernel:
        # raised as DataPlaneError, not ValueError, so the engine reports it as a refused rule
        raise DataPlaneError(
            f"action {rule.action.name.lower()} is not enforced by nftables (the bgp backend announces it)"
        )
    families(m)
    if rule.action == Action.RATE_LIMIT and rule.rate_pps <= 0:
        raise ValueError(f"rate-limit rule needs rate_pps > 0, got {rule.rate_pps}")
    if m.tcp_flags is not None and m.proto not in (None, 6):
        raise ValueError(f"tcp_flags with protocol {m.proto}")
    if (m.sport or m.dport) and m.proto not in (None, 6, 17):
        raise ValueError(f"ports only match TCP or UDP, not protocol {m.proto}")
    if m.tcp_flags is not None and not (0 <= m.tcp_flags[0] <= 0xFF and 0 <= m.tcp_flags[1] <= 0xFF):
        raise ValueError(f"tcp_flags out of range: {m.tcp_flags}")


def check_synproxy(rule: Rule) -> None:
    """A SYN proxy rule protects TCP ports of a destination prefix: nothing else."""
    m = rule.match
    if m.dst is None or m.dport is None:
        raise ValueError(f"a SYN proxy rule needs a destination prefix and TCP port(s), got {m.describe()}")
    if m.proto not in (None, 6):
        raise ValueError(f"a SYN proxy rule protects TCP services, not protocol {m.proto}")
    extra = [f for f in ("src", "sport", "tcp_flags", "length", "ttl") if getattr(m, f) is not None]
    if extra:
        raise ValueError(f"a SYN proxy rule matches destination and ports only, not {', '.join(extra)}")


def synproxy_exprs(m: Match, fam: int, dst_set: str) -> Cmds:
    """The service a SYN proxy rule protects: destination (its set) and TCP ports."""
    assert m.dport is not None
    ip = _ip(fam)
    return [
        match(meta("nfproto"), "ipv4" if fam == 4 else "ipv6"),
        match(payload(ip, "daddr"), "@" + dst_set),
        match(meta("l4proto"), 6),
        match(payload("tcp", "dport"), _value(m.dport)),
    ]


def match_exprs(m: Match, fam: int, dst_set: str) -> Cmds:
    """nftables expressions for ``m`` in family ``fam`` (the fragment guard is the chain's)."""
    ip = _ip(fam)
    out = [match(payload(ip, "daddr"), "@" + dst_set)]
    if m.src is not None:
        out.append(match(payload(ip, "saddr"), prefix(m.src)))
    proto = m.proto
    if proto is None and m.tcp_flags is not None:
        proto = 6
    if proto is not None:
        out.append(match(meta("l4proto"), proto))
    elif m.sport is not None or m.dport is not None:
        out.append(match(meta("l4proto"), {"set": [6, 17]}))
    if m.sport is not None:
        out.append(match(payload("th", "sport"), _value(m.sport)))
    if m.dport is not None:
        out.append(match(payload("th", "dport"), _value(m.dport)))
    if m.tcp_flags is not None:
        mask, value = m.tcp_flags
        out.append(match({"&": [payload("tcp", "flags"), mask]}, value))
    if m.length is not None:
        lo, hi = (max(0, x - ETH_HLEN) for x in (m.length.lo, m.length.hi))
        out.append(match(meta("length"), _value(Range(lo, hi))))
    if m.ttl is not None:
        out.append(match(payload(ip, "ttl" if fam == 4 else "hoplimit"), _value(m.ttl)))
    return out


def verdict_exprs(rule: Rule, counters: tuple[int, int, int] = (0, 0, 0), meter: str = "") -> Cmds:
    """Counter(s) and verdict; ``counters`` (packets, bytes, dropped) carry old values over.
    A per-source rate limit needs ``meter``, its dynamic set (its family is the name's last character)."""
    hit = {"counter": {"packets": counters[0], "bytes": counters[1]}}
    if rule.action == Action.DROP:
        return [hit, {"goto": {"target": "blocked"}}]
    if rule.action == Action.RATE_LIMIT:
        burst = max(MIN_BURST, rule.rate_pps // 10)
        limit: dict[str, Any] = {"limit": {"rate": rule.rate_pps, "burst": burst, "per": "second", "inv": True}}
        if rule.per_source:
            if not meter:
                raise ValueError(f"rule {rule.rule_id}: a per-source rate limit needs its meter set")
            src = payload(_ip(int(meter[-1])), "saddr")
            limit = {"set": {"op": "update", "elem": src, "set": "@" + meter, "stmt": [limit]}}
        return [
            hit,
            limit,
            {"counter": {"packets": counters[2], "bytes": 0}},
            {"goto": {"target": "rate_blocked"}},
        ]
    return [hit, {"counter": "observed"}]


# ---- reading the table back ----------------------------------------------------------


@dataclass
class Entry:
    """One shield rule as found in the table."""

    rule: Rule
    kind: str  # "element" (source set) or "chain"
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    expired: bool = False
    family: int = 4  # element: the source set's family
    net: IPNetwork | None = None  # element: its value
    source_set: str = ""  # element: the set it is in (host4, drop4, ...)
    handles: list[tuple[str, int]] = field(default_factory=list)  # synproxy: (chain, handle)
    chains: list[str] = field(default_factory=list)  # chain: its own chains (f<id>_4, f<id>_6)
    sets: list[str] = field(default_factory=list)  # chain: its destination sets
    meters: list[str] = field(default_factory=list)  # chain, per-source rate limit: its dynamic source sets

    def src(self) -> IPNetwork:
        """The source prefix of an element entry."""
        if self.net is None:
            raise ValueError(f"rule {self.rule.rule_id} is not a source-set element")
        return self.net


@dataclass
class TableState:
    """The parsed listing of the table."""

    sets: dict[str, dict[str, Any]]
    chains: set[str]
    rules: Cmds
    counters: dict[str, dict[str, Any]]
    entries: dict[int, Entry]
    next_id: int
    now: float
    sp_sets: set[str] = field(default_factory=set)  # the SYN proxy table's sets
    #: each rules* chain's jumps, in order: the names of the rules' own chains
    jumps: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in RULE_CHAINS})
    #: per family, the interval source set's elements: prefix -> rule id (0: an element the shield did not write)
    drops: dict[int, dict[IPNetwork, int]] = field(default_factory=lambda: {4: {}, 6: {}})
    #: the same for the host source set
    hosts: dict[int, dict[IPNetwork, int]] = field(default_factory=lambda: {4: {}, 6: {}})

    def elements(self, name: str) -> Cmds:
        s = self.sets.get(name, {})
        out = []
        for e in s.get("elem", []):
            out.append(e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e})
        return out

    def add_drop(self, name: str, net: IPNetwork, rid: int) -> None:
        (self.hosts if name.startswith("host") else self.drops)[net.version][net] = rid

    def remove_drop(self, name: str, net: IPNetwork) -> None:
        (self.hosts if name.startswith("host") else self.drops)[net.version].pop(net, None)

    def overlaps_drop(self, net: IPNetwork, ignore: IPNetwork | None = None) -> bool:
        """Whether ``net`` cannot become an element of its source set, leaving out
        ``ignore``: a host already in the host set, or a wider prefix overlapping an
        element of the interval set (interval sets refuse overlaps)."""
        if net.prefixlen == net.max_prefixlen:
            return net in self.hosts[net.version] and net != ignore
        return any(net.overlaps(t) for t in self.drops[net.version] if t != ignore)


def source_set(net: IPNetwork) -> str:
    """The source set a plain source block of ``net`` goes to."""
    return f"{'host' if net.prefixlen == net.max_prefixlen else 'drop'}{net.version}"


def _counter_values(exprs: Cmds) -> list[tuple[int, int]]:
    return [
        (int(x["counter"]["packets"]), int(x["counter"]["bytes"]))
        for x in exprs
        if "counter" in x and isinstance(x["counter"], dict)
    ]


def parse_state(objs: Cmds, now: float) -> TableState:
    """Index a table listing and rebuild the shield rules in it."""
    sets: dict[str, dict[str, Any]] = {}
    chains: set[str] = set()
    rules: Cmds = []
    counters: dict[str, dict[str, Any]] = {}
    for o in objs:
        if "set" in o:
            sets[o["set"]["name"]] = o["set"]
        elif "chain" in o:
            chains.add(o["chain"]["name"])
        elif "rule" in o:
            rules.append(o["rule"])
        elif "counter" in o:
            counters[o["counter"]["name"]] = o["counter"]
    state = TableState(sets, chains, rules, counters, {}, 1, now)
    ids = [e["val"] for e in state.elements("next_rule_id")]
    state.next_id = max([int(i) for i in ids] or [1])

    for fam, name in ((4, "host4"), (6, "host6"), (4, "drop4"), (6, "drop6")):
        for el in state.elements(name):
            net = parse_prefix(el["val"])
            info = decode_comment(el.get("comment"))
            state.add_drop(name, net, 0 if info is None else info["id"])
            if info is None:
                continue
            rule = Rule(
                Match(src=net),
                Action.DROP,
                expires_at=now + float(el.get("expires", 0)),
                rule_id=info["id"],
                attack_id=int(info.get("attack", 0)),
                created_at=float(info.get("created", 0)),
            )
            c = el.get("counter") or {"packets": 0, "bytes": 0}
            pk = int(c["packets"])
            state.entries[rule.rule_id] = Entry(
                rule, "element", pk, int(c["bytes"]) + ETH_HLEN * pk, pk, family=fam, net=net, source_set=name
            )

    for r in rules:
        if r["chain"] in RULE_CHAINS:
            state.jumps[r["chain"]] += [x["jump"]["target"] for x in r["expr"] if "jump" in x]
    for rid, parts in _by_rule_id(r for r in rules if _RULE_CHAIN.match(r["chain"])).items():
        info = decode_comment(parts[0]["comment"]) or {}
        m: Match = info["match"]
        action, rate, per_source = Action.OBSERVE, 0, False
        packets = nbytes = dropped = 0
        entry = Entry(Rule(m, Action.OBSERVE, 0.0), "chain")
        dsts: list[IPNetwork] = []
        expires: list[float] = []
        for r in parts:
            exprs = r["expr"]
            entry.chains.append(r["chain"])
            cvals = _counter_values(exprs)
            if cvals:
                packets += cvals[0][0]
                nbytes += cvals[0][1] + ETH_HLEN * cvals[0][0]
            for x in exprs:
                if "limit" in x:
                    action, rate = Action.RATE_LIMIT, int(x["limit"]["rate"])
                elif "set" in x and x["set"].get("op") == "update":  # a per-source limit's meter
                    limits = [s["limit"] for s in x["set"].get("stmt", []) if "limit" in s]
                    if limits:
                        action, rate, per_source = Action.RATE_LIMIT, int(limits[0]["rate"]), True
                        entry.meters.append(str(x["set"]["set"]).lstrip("@"))
                elif "goto" in x and x["goto"]["target"] == "blocked":
                    action = Action.DROP
                elif "match" in x and isinstance(x["match"]["right"], str) and x["match"]["right"].startswith("@"):
                    entry.sets.append(x["match"]["right"][1:])
            if action == Action.DROP and cvals:
                dropped += cvals[0][0]
            elif action == Action.RATE_LIMIT and len(cvals) > 1:
                dropped += cvals[1][0]
        for name in entry.sets:
            els = state.elements(name)
            if not els:
                entry.expired = True
                continue
            dsts.append(parse_prefix(els[0]["val"]))
            expires.append(float(els[0].get("expires", 0)))
        if not entry.sets:
            entry.expired = True
        dst: IPNetwork | None = None
        if dsts and dsts[0].prefixlen > 0:
            dst = dsts[0]
        elif len(dsts) == 1 and m.src is None:
            dst = dsts[0]  # an explicit 0.0.0.0/0 or ::/0 (one family only)
        entry.rule = Rule(
            Match(m.proto, m.src, dst, m.sport, m.dport, m.tcp_flags, m.length, m.ttl),
            action,
            expires_at=now + min(expires, default=0.0),
            rate_pps=rate,
            rule_id=rid,
            attack_id=int(info.get("attack", 0)),
            created_at=float(info.get("created", 0)),
            per_source=per_source,
        )
        entry.packets, entry.bytes, entry.dropped = packets, nbytes, dropped
        state.entries[rid] = entry
    return state


def _by_rule_id(rules: Iterable[dict[str, Any]]) -> dict[int, Cmds]:
    """The listed nftables rules that carry one of our rules' comments, by its id."""
    grouped: dict[int, Cmds] = {}
    for r in rules:
        info = decode_comment(r.get("comment"))
        if info is not None and "match" in info:
            grouped.setdefault(info["id"], []).append(r)
    return grouped


def parse_synproxy(objs: Cmds, state: TableState) -> None:
    """Add the SYN proxy rules of the ``inet`` table's listing to ``state.entries``."""
    sets: dict[str, dict[str, Any]] = {o["set"]["name"]: o["set"] for o in objs if "set" in o}
    state.sp_sets = set(sets)
    listed = (o["rule"] for o in objs if "rule" in o)
    for rid, parts in _by_rule_id(r for r in listed if r["chain"] in SYNPROXY_CHAINS).items():
        info = decode_comment(parts[0]["comment"]) or {}
        m: Match = info["match"]
        entry = Entry(Rule(m, Action.SYN_PROXY, 0.0), "synproxy")
        for r in parts:
            entry.handles.append((r["chain"], int(r["handle"])))
            cvals = _counter_values(r["expr"])
            proxy = any("synproxy" in x for x in r["expr"])
            dropping = any("drop" in x for x in r["expr"])
            if cvals and proxy:
                entry.packets += cvals[0][0]
                entry.bytes += cvals[0][1]
            elif cvals and dropping:
                entry.dropped += cvals[0][0]
            for x in r["expr"]:
                right = x.get("match", {}).get("right")
                if isinstance(right, str) and right.startswith("@") and right[1:] not in entry.sets:
                    entry.sets.append(right[1:])
        dsts: list[IPNetwork] = []
        expires: list[float] = []
        for name in entry.sets:
            els = sets.get(name, {}).get("elem", [])
            if not els:
                entry.expired = True
                continue
            el = els[0]["elem"] if isinstance(els[0], dict) and "elem" in els[0] else {"val": els[0]}
            dsts.append(parse_prefix(el["val"]))
            expires.append(float(el.get("expires", 0)))
        if not dsts:
            entry.expired = True
        entry.rule = Rule(
            Match(proto=6, dst=dsts[0] if dsts else None, dport=m.dport),
            Action.SYN_PROXY,
            expires_at=state.now + min(expires, default=0.0),
            rule_id=rid,
            attack_id=int(info.get("attack", 0)),
            created_at=float(info.get("created", 0)),
        )
        state.entries[rid] = entry


# ---- the backend ---------------------------------------------------------------------


class NftablesBackend(Backend):
    """Enforcement in an nftables ``netdev`` table (see the module docstring).

    ::

        b = NftablesBackend(["eth0"])
        rule = b.apply(Rule(Match(proto=17, dport=Range(9, 9)), Action.DROP, expires_at=time.time() + 60))
        b.stats()[rule.rule_id].packets
        b.withdraw(rule.rule_id)
        b.close()          # the table stays; NftablesBackend.remove() deletes it
    """

    name = "nftables"

    def __init__(self, interfaces: Sequence[str], table: str = DEFAULT_TABLE) -> None:
        for ifname in interfaces:
            if not _IFNAME.match(ifname):
                raise ValueError(f"invalid interface name {ifname!r}")
        self.table = table
        self.synproxy_table = table + SYNPROXY_SUFFIX
        self.interfaces = list(interfaces)
        self.nft = Nft()
        self._t = {"family": FAMILY, "table": table}
        self._sp = {"family": SYNPROXY_FAMILY, "table": self.synproxy_table}
        #: what this backend installed, kept up to date from its own batches (see _index)
        self._cache: TableState | None = None
        #: whether re-adding a source-set element updates its timeout (Linux 6.12+); probed on the first refresh
        self._readd_updates: bool | None = None
        self._ensure_table()

    # -- table set-up

    def _obj(self, **kw: Any) -> dict[str, Any]:
        return {**self._t, **kw}

    def _ensure_table(self) -> None:
        listing = self.nft.try_run([{"list": {"table": {"family": FAMILY, "name": self.table}}}])
        if listing is None:
            self.nft.run(self._skeleton(), f"create table {FAMILY} {self.table}")
            listing = self.nft.run([{"list": {"table": {"family": FAMILY, "name": self.table}}}], "list table")
        state = parse_state(listing, time.time())
        layout = [e["val"] for e in state.elements("layout")]
        if layout == [1]:
            # Layout 2 adds the host sets: add them and rewrite "main" (it holds no
            # state: its counters are the named ones) in one batch; rules stay in force.
            cmds = [
                *self._host_sets(),
                {"flush": {"chain": self._obj(name="main")}},
                *self._main_rules(),
                {"delete": {"element": self._obj(name="layout", elem=[1])}},
                {"add": {"element": self._obj(name="layout", elem=[2])}},
            ]
            self.nft.run(cmds, f"upgrade table {FAMILY} {self.table} to layout 2")
            layout = [2]
        if layout == [2]:
            self.nft.run(self._upgrade_to_3(state), f"upgrade table {FAMILY} {self.table} to layout 3")
            layout = [LAYOUT_VERSION]
        if layout != [LAYOUT_VERSION]:
            raise DataPlaneError(
                f"nftables table {FAMILY} {self.table} has layout {layout or 'unknown'}, expected "
                f"[{LAYOUT_VERSION}]: remove it (ddos-shield stop --detach) and start again"
            )
        # Reconcile the per-interface base chains with the interfaces asked for.
        have = {c[3:] for c in state.chains if c.startswith("in_")}
        cmds = [{"delete": {"chain": self._obj(name="in_" + i)}} for i in sorted(have - set(self.interfaces))]
        cmds += self._device_chains([i for i in self.interfaces if i not in have])
        self.nft.run(cmds, f"attach to {', '.join(self.interfaces)}")

    def _upgrade_to_3(self, state: TableState) -> Cmds:
        """Layout 2 -> 3: each shield rule of the ``rules*`` chains moves to a chain of its
        own, as it was listed (its counters included), and the ``rules*`` chains are
        rewritten to jump to them in the same order; one batch, so no packet sees the
        rules missing.  Anything else in the ``rules*`` chains is dropped."""
        cmds: Cmds = []
        for dispatcher in RULE_CHAINS:
            cmds.append({"flush": {"chain": self._obj(name=dispatcher)}})
            for r in state.rules:
                info = decode_comment(r.get("comment"))
                if r["chain"] != dispatcher or info is None or "match" not in info:
                    continue
                chain = f"f{info['id']}_{dispatcher[5]}"  # rules4 / rules6_l4 -> its family
                cmds.append({"add": {"chain": self._obj(name=chain)}})
                cmds.append({"add": {"rule": self._obj(chain=chain, expr=r["expr"], comment=r["comment"])}})
                cmds.append(self._jump(dispatcher, chain))
        cmds.append({"delete": {"element": self._obj(name="layout", elem=[2])}})
        cmds.append({"add": {"element": self._obj(name="layout", elem=[3])}})
        return cmds

    def _jump(self, dispatcher: str, chain: str) -> dict[str, Any]:
        return {"add": {"rule": self._obj(chain=dispatcher, expr=[{"jump": {"target": chain}}])}}

    def _dispatch(
        self, state: TableState, drop: Iterable[str], add: Iterable[tuple[str, str]] = ()
    ) -> tuple[Cmds, dict[str, list[str]]]:
        """The commands that take the jumps to the chains ``drop`` out of the ``rules*``
        chains (each one that held one is flushed and its other jumps added back, in
        order: a jump rule would be deleted by a handle only an echoed batch tells) and
        append jumps ``add`` (``rules*`` chain, rule chain); and the jumps the table
        holds afterwards."""
        gone = set(drop)
        jumps = {d: [c for c in targets if c not in gone] for d, targets in state.jumps.items()}
        cmds: Cmds = []
        for d, targets in jumps.items():
            if len(targets) != len(state.jumps[d]):
                cmds.append({"flush": {"chain": self._obj(name=d)}})
                cmds += [self._jump(d, c) for c in targets]
        for d, chain in add:
            jumps[d].append(chain)
            cmds.append(self._jump(d, chain))
        return cmds, jumps

    def _device_chains(self, ifnames: Iterable[str]) -> Cmds:
        cmds: Cmds = []
        for ifname in ifnames:
            chain = self._obj(
                name="in_" + ifname, type="filter", hook="ingress", prio=PRIORITY, dev=ifname, policy="accept"
            )
            cmds.append({"add": {"chain": chain}})
            cmds.append({"add": {"rule": self._obj(chain="in_" + ifname, expr=[{"jump": {"target": "main"}}])}})
        return cmds

    def _skeleton(self) -> Cmds:
        add = "add"
        c: Cmds = [{add: {"table": {"family": FAMILY, "name": self.table}}}]
        c.append({add: {"set": self._obj(name="layout", type="mark")}})
        c.append({add: {"element": self._obj(name="layout", elem=[LAYOUT_VERSION])}})
        c.append({add: {"set": self._obj(name="next_rule_id", type="mark")}})
        c.append({add: {"element": self._obj(name="next_rule_id", elem=[1])}})
        for fam in (4, 6):
            typ = f"ipv{fam}_addr"
            c.append({add: {"set": self._obj(name=f"allow{fam}", type=typ, flags=["interval"])}})
            c.append(
                {
                    add: {
                        "set": self._obj(
                            name=f"drop{fam}", type=typ, flags=["interval", "timeout"], stmt=[{"counter": None}]
                        )
                    }
                }
            )
        c += self._host_sets()
        for name in GLOBAL_COUNTERS:
            c.append({add: {"counter": self._obj(name=name)}})
        for name in ("main", "kill_switch", "blocked", "rate_blocked", *HOOK_CHAINS, *RULE_CHAINS):
            c.append({add: {"chain": self._obj(name=name)}})

        def rule(chain: str, *expr: dict[str, Any]) -> None:
            c.append({add: {"rule": self._obj(chain=chain, expr=list(expr))}})

        # A jump ends a rule: counting and dropping take two.
        rule("blocked", {"counter": "dropped"}, {"jump": {"target": "count_drop"}})
        rule("blocked", {"drop": None})
        rule("rate_blocked", {"counter": "rate_limited"}, {"jump": {"target": "count_drop"}})
        rule("rate_blocked", {"drop": None})
        return c + self._main_rules() + self._device_chains(self.interfaces)

    def _host_sets(self) -> Cmds:
        return [
            {
                "add": {
                    "set": self._obj(
                        name=f"host{fam}", type=f"ipv{fam}_addr", flags=["timeout"], stmt=[{"counter": None}]
                    )
                }
            }
            for fam in (4, 6)
        ]

    def _main_rules(self) -> Cmds:
        c: Cmds = []

        def rule(chain: str, *expr: dict[str, Any]) -> None:
            c.append({"add": {"rule": self._obj(chain=chain, expr=list(expr))}})

        accept: dict[str, Any] = {"accept": None}
        rule("main", {"counter": "rx"})
        rule("main", {"jump": {"target": "count_in"}})
        rule("main", match(payload("ip", "saddr"), "@allow4"), {"counter": "allowed"}, accept)
        rule("main", match(payload("ip6", "saddr"), "@allow6"), {"counter": "allowed"}, accept)
        rule("main", {"jump": {"target": "kill_switch"}})
        rule("main", match(payload("ip", "saddr"), "@host4"), {"goto": {"target": "blocked"}})
        rule("main", match(payload("ip6", "saddr"), "@host6"), {"goto": {"target": "blocked"}})
        rule("main", match(payload("ip", "saddr"), "@drop4"), {"goto": {"target": "blocked"}})
        rule("main", match(payload("ip6", "saddr"), "@drop6"), {"goto": {"target": "blocked"}})
        rule("main", match(meta("protocol"), "ip"), {"jump": {"target": "rules4"}})
        rule("main", match({"&": [payload("ip", "frag-off"), 0x1FFF]}, 0), {"jump": {"target": "rules4_l4"}})
        rule("main", match(meta("protocol"), "ip6"), {"jump": {"target": "rules6"}})
        rule("main", match({"exthdr": {"name": "frag"}}, False), {"jump": {"target": "rules6_l4"}})
        rule("main", match({"exthdr": {"name": "frag", "field": "frag-off"}}, 0), {"jump": {"target": "rules6_l4"}})
        return c

    # -- reading

    def state(self) -> TableState:
        """The table as it is now, parsed (rules, counters, sets); it also becomes the
        index that apply/withdraw work from (see :meth:`_index`)."""
        objs = self.nft.run([{"list": {"table": {"family": FAMILY, "name": self.table}}}], "list table")
        state = parse_state(objs, time.time())
        sp = self.nft.try_run([{"list": {"table": {"family": SYNPROXY_FAMILY, "name": self.synproxy_table}}}])
        if sp:
            parse_synproxy(sp, state)
        self._cache = state
        return state

    def _index(self) -> TableState:
        """The backend's own index of the table: the last listing, kept up to date with
        every batch this backend ran since (ids, source-set elements, the jumps to the
        rules' chains).  Listing the table costs ~60 ms per 1,000 rules in force, so
        apply/withdraw list it only when there is no index yet or after a failed batch;
        :meth:`list` and :meth:`stats` always read the kernel.  Counters and expiry in
        the index may be stale: a batch that meets an element already timed out fails,
        and the retry works from a fresh listing.  Another writer to the same table is
        seen at the next listing (or the next failed batch)."""
        state = self._cache if self._cache is not None else self.state()
        state.now = time.time()
        return state

    def _forget(self, state: TableState, rid: int) -> None:
        e = state.entries.pop(rid, None)
        if e is not None and e.kind == "element" and e.net is not None:
            state.remove_drop(e.source_set, e.net)

    def list(self) -> list[Rule]:
        state = self.state()
        self._collect_garbage(state)
        return sorted((e.rule for e in state.entries.values() if not e.expired), key=lambda r: r.rule_id)

    def stats(self) -> dict[int, RuleStats]:
        state = self.state()
        return {rid: RuleStats(rid, e.packets, e.bytes, e.dropped) for rid, e in state.entries.items() if not e.expired}

    @property
    def bypass(self) -> bool:
        """Whether the kill switch is on (read from the table)."""
        objs = self.nft.run([{"list": {"chain": self._obj(name="kill_switch")}}], "list bypass")
        return any("rule" in o for o in objs)

    def global_counters(self) -> dict[str, int]:
        """The table's named counters (packets): rx, allowed, bypass, dropped, rate_limited, observed."""
        state = self.state()
        return {n: int(state.counters[n]["packets"]) for n in GLOBAL_COUNTERS if n in state.counters}

    global_stats = global_counters  # the name operator commands use (dataplane.Control)

    # -- changing

    def set_allowlist(self, sources: Sequence[IPNetwork]) -> None:
        cmds: Cmds = []
        for fam in (4, 6):
            nets = [as_network(s) for s in sources if as_network(s).version == fam]
            cmds.append({"flush": {"set": self._obj(name=f"allow{fam}")}})
            if nets:
                # Interval sets refuse overlapping elements: merge them first.
                merged = ipaddress.collapse_addresses(nets)  # type: ignore[type-var]
                cmds.append({"add": {"element": self._obj(name=f"allow{fam}", elem=[prefix(n) for n in merged])}})
        self.nft.run(cmds, "set allow-list")

    def set_bypass(self, on: bool) -> None:
        cmds: Cmds = [{"flush": {"chain": self._obj(name="kill_switch")}}]
        if on:
            cmds.append(
                {"add": {"rule": self._obj(chain="kill_switch", expr=[{"counter": "bypass"}, {"accept": None}])}}
            )
        self.nft.run(cmds, "set bypass")

    def apply(self, rule: Rule) -> Rule:
        check_rule(rule)
        # A batch can fail because an element timed out between reading and writing
        # (nftables 1.0.6 has no "destroy"): read again and retry once.
        for attempt in (1, 2):
            state = self._index() if attempt == 1 else self.state()
            old = state.entries.get(rule.rule_id) if rule.rule_id else None
            if old is not None and old.kind == "chain" and not _same_shape(old.rule, rule):
                state = self.state()  # the replacement carries the old rule's counters over: read them
            try:
                return self._apply(rule, state)
            except DataPlaneError:
                self._cache = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def apply_many(self, rules: Sequence[Rule]) -> _Rules:
        """Apply many rules with one listing of the table and one batch: new host
        source drops (a /32 or /128 each, the usual answer to a flood from many
        real sources) become elements of the source sets in that batch; any other rule
        goes through :meth:`apply`.  Applying rules one at a time lists the table each
        time, which costs ~20 ms a rule once it holds thousands."""
        for r in rules:
            check_rule(r)
        state = self._index()
        next_id = state.next_id
        cmds: Cmds = []
        out: list[Rule | None] = []
        rest: list[tuple[int, Rule]] = []
        added: dict[IPNetwork, Rule] = {}
        for r in rules:
            src = r.match.src
            if (
                r.action != Action.DROP
                or src is None
                or not r.match.is_source_only()
                or src.prefixlen != src.max_prefixlen
                or r.rule_id in state.entries
                or src in added
                or state.overlaps_drop(src)
            ):
                rest.append((len(out), r))
                out.append(None)
                continue
            rid = r.rule_id or next_id
            next_id = max(next_id, rid + 1)
            r = r.with_id(rid)
            added[src] = r
            cmds.append(self._add_source(src, r, max(1, math.ceil(r.expires_at - state.now))))
            out.append(r)
        if cmds:
            if next_id != state.next_id:
                cmds = [
                    {"delete": {"element": self._obj(name="next_rule_id", elem=[state.next_id])}},
                    {"add": {"element": self._obj(name="next_rule_id", elem=[next_id])}},
                    *cmds,
                ]
            try:
                self.nft.run(cmds, f"install {len(cmds)} source rules")
            except DataPlaneError:
                self._cache = None
                raise
            state.next_id = next_id
            for src, r in added.items():
                state.add_drop(source_set(src), src, r.rule_id)
                state.entries[r.rule_id] = Entry(r, "element", family=src.version, net=src, source_set=source_set(src))
        for i, r in rest:
            out[i] = self.apply(r)
        return [r for r in out if r is not None]

    def _apply(self, rule: Rule, state: TableState) -> Rule:
        """Install or refresh ``rule`` from ``state`` (the index), and record the result in it."""
        timeout = max(1, math.ceil(rule.expires_at - state.now))
        cmds: Cmds = []
        rid = rule.rule_id
        if rid == 0:
            rid = state.next_id
        if rid >= state.next_id:
            cmds += [
                {"delete": {"element": self._obj(name="next_rule_id", elem=[state.next_id])}},
                {"add": {"element": self._obj(name="next_rule_id", elem=[rid + 1])}},
            ]
        next_id = max(state.next_id, rid + 1)
        rule = rule.with_id(rid)
        old = state.entries.get(rid)
        if old is not None and not old.expired and _same_shape(old.rule, rule) and old.kind == "synproxy":
            for name in old.sets:
                net = rule.match.dst
                assert net is not None
                cmds.append({"delete": {"element": self._sp_obj(name=name, elem=[prefix(net)])}})
                cmds.append({"add": {"element": self._sp_obj(name=name, elem=[_timed(prefix(net), timeout)])}})
            self.nft.run(cmds, f"refresh rule {rid}")
            old.rule, state.next_id = rule, next_id
            return rule
        if rule.action == Action.SYN_PROXY:
            if old is not None:
                cmds += self._dispatch(state, old.chains)[0] + self._delete(old)
            self.nft.run(cmds + self._install_synproxy(rule, timeout), f"install SYN proxy rule {rid}")
            # SYN proxy rules are few: the next change reads the table again rather
            # than the index following the inet table's handles too.
            self._cache = None
            try:  # after the rules: conntrack's sysctls exist once it is loaded
                set_sysctls(SYNPROXY_SYSCTLS)
            except DataPlaneError:
                self.nft.run(self._delete(self.state().entries[rid]), f"withdraw SYN proxy rule {rid}")
                raise
            return rule
        if old is not None and not old.expired and _same_shape(old.rule, rule):
            if old.kind == "element":
                src = old.src()
                if self._readd_updates is False:
                    cmds.append({"delete": {"element": self._obj(name=old.source_set, elem=[prefix(src)])}})
                self.nft.run([*cmds, self._add_source(src, rule, timeout, old.source_set)], f"refresh rule {rid}")
                if self._readd_updates is None:
                    self._readd_updates = self._check_refreshed(old, rule, timeout)
            else:
                for name in old.sets:
                    fam = int(name[-1])
                    net = rule.match.dst or ipaddress.ip_network("0.0.0.0/0" if fam == 4 else "::/0")
                    # Delete and re-add in one batch: the rule never stops matching,
                    # and it works on kernels that do not update element timeouts.
                    cmds.append({"delete": {"element": self._obj(name=name, elem=[prefix(net)])}})
                    cmds.append({"add": {"element": self._obj(name=name, elem=[_timed(prefix(net), timeout)])}})
                self.nft.run(cmds, f"refresh rule {rid}")
            old.rule, state.next_id = rule, next_id
            return rule
        carry = (0, 0, 0)
        if old is not None and old.kind == "chain":
            carry = (old.packets, old.bytes - ETH_HLEN * old.packets, old.dropped)
        new = self._install(rule, state, timeout, carry, replacing=old)
        placed = _placement(rule) if any("chain" in c["add"] for c in new) else []
        # In this order: the rule's chains exist before the rules* chains jump to them, and
        # no jump is left to an old chain when it is deleted (the kernel checks both as it
        # takes each command).  A chain the replacement keeps is flushed and reused.
        jumps_cmds, jumps = self._dispatch(state, old.chains if old is not None else (), placed)
        cmds += [c for c in new if "chain" in c["add"]] + jumps_cmds
        if old is not None:
            cmds += self._delete(old, keep={c for _, c in placed})
        self.nft.run(cmds + [c for c in new if "chain" not in c["add"]], f"install rule {rid}")
        # The batch is in force: record it in the index.
        if old is not None:
            self._forget(state, rid)
        state.jumps = jumps
        state.next_id = next_id
        source = rule.match.src
        if len(new) == 1 and source is not None:  # a source-set element
            name = source_set(source)
            state.add_drop(name, source, rid)
            state.entries[rid] = Entry(rule, "element", family=source.version, net=source, source_set=name)
        else:
            names = [c["add"]["set"]["name"] for c in new if "set" in c["add"]]
            state.entries[rid] = Entry(
                rule,
                "chain",
                sets=[n for n in names if not _METER_SET.match(n)],
                meters=[n for n in names if _METER_SET.match(n)],
                chains=[c for _, c in placed],
            )
        return rule

    def _add_source(self, net: IPNetwork, rule: Rule, timeout: int, name: str = "") -> dict[str, Any]:
        el = _timed(prefix(net), timeout)
        el["elem"]["comment"] = encode_comment(rule, with_match=False)
        return {"add": {"element": self._obj(name=name or source_set(net), elem=[el])}}

    def _check_refreshed(self, old: Entry, rule: Rule, timeout: int) -> bool:
        """Linux before 6.12 (Debian 12's 6.1 among them) keeps an existing element's timeout on re-add: then
        replace the element (its counter restarts from zero).  Returns whether the re-add did update it; the
        backend asks once (the check lists the source set) and from then on replaces or not accordingly."""
        objs = self.nft.run([{"list": {"set": self._obj(name=old.source_set)}}], "list source set")
        for o in objs:
            for e in o.get("set", {}).get("elem", []):
                el = e["elem"]
                if parse_prefix(el["val"]) == old.net and int(el.get("expires", 0)) >= timeout - 2:
                    return True
        cmds = [
            {"delete": {"element": self._obj(name=old.source_set, elem=[prefix(old.src())])}},
            self._add_source(old.src(), rule, timeout, old.source_set),
        ]
        self.nft.run(cmds, f"replace rule {rule.rule_id}")
        return False

    def _install(
        self, rule: Rule, state: TableState, timeout: int, carry: tuple[int, int, int], replacing: Entry | None
    ) -> Cmds:
        m = rule.match
        if rule.action == Action.DROP and m.src is not None and m.is_source_only():
            ignore = replacing.net if replacing is not None and replacing.kind == "element" else None
            if not state.overlaps_drop(m.src, ignore=ignore):
                return [self._add_source(m.src, rule, timeout)]
        cmds: Cmds = []
        comment = encode_comment(rule)
        for fam, (_, chain) in zip(families(m), _placement(rule), strict=True):
            name = f"r{rule.rule_id}_{fam}"
            net = m.dst or ipaddress.ip_network("0.0.0.0/0" if fam == 4 else "::/0")
            cmds.append({"add": {"chain": self._obj(name=chain)}})
            cmds.append({"add": {"set": self._obj(name=name, type=f"ipv{fam}_addr", flags=["interval", "timeout"])}})
            cmds.append({"add": {"element": self._obj(name=name, elem=[_timed(prefix(net), timeout)])}})
            meter = ""
            if rule.per_source:
                meter = f"m{rule.rule_id}_{fam}"
                cmds.append({"add": {"set": self._meter(meter, fam)}})
            expr = match_exprs(m, fam, name) + verdict_exprs(rule, carry, meter)
            cmds.append({"add": {"rule": self._obj(chain=chain, expr=expr, comment=comment)}})
            carry = (0, 0, 0)  # counted once, on the first family's rule
        return cmds

    def _sp_obj(self, **kw: Any) -> dict[str, Any]:
        return {**self._sp, **kw}

    def _meter(self, name: str, fam: int) -> dict[str, Any]:
        """A per-source rate limit's dynamic set: one element (and limit) per source.  No
        "dynamic" flag: libnftables 1.0.6 refuses it through JSON, and marks the set
        dynamic itself when the rule's ``update`` statement refers to it."""
        return self._obj(name=name, type=f"ipv{fam}_addr", flags=["timeout"], timeout=METER_TIMEOUT, size=METER_SIZE)

    def _install_synproxy(self, rule: Rule, timeout: int) -> Cmds:
        """The SYN proxy for ``rule``'s destination and ports: SYNs to it left untracked
        (so the proxy, not conntrack, answers them with a SYN cookie), the handshake
        proxied, and packets conntrack calls invalid dropped.  The ``inet`` table and
        its chains are (re)declared in the same batch."""
        m = rule.match
        assert m.dst is not None
        fam = m.dst.version
        name = f"sp{rule.rule_id}_{fam}"
        comment = encode_comment(rule)
        cmds: Cmds = [{"add": {"table": {"family": SYNPROXY_FAMILY, "name": self.synproxy_table}}}]
        for chain, (hook, prio) in SYNPROXY_CHAINS.items():
            cmds.append(
                {"add": {"chain": self._sp_obj(name=chain, type="filter", hook=hook, prio=prio, policy="accept")}}
            )
        cmds.append({"add": {"set": self._sp_obj(name=name, type=f"ipv{fam}_addr", flags=["interval", "timeout"])}})
        cmds.append({"add": {"element": self._sp_obj(name=name, elem=[_timed(prefix(m.dst), timeout)])}})
        service = synproxy_exprs(m, fam, name)
        syn_only = match({"&": [payload("tcp", "flags"), 0x17]}, 0x02)  # SYN without ACK, RST or FIN
        cmds.append(
            {
                "add": {
                    "rule": self._sp_obj(chain="sp_raw", expr=[*service, syn_only, {"notrack": None}], comment=comment)
                }
            }
        )
        state = {"ct": {"key": "state"}}
        for chain in ("sp_input", "sp_forward"):
            proxy = [
                *service,
                match(state, ["invalid", "untracked"], "in"),
                {"counter": None},
                {"synproxy": SYNPROXY_STMT},
            ]
            cmds.append({"add": {"rule": self._sp_obj(chain=chain, expr=proxy, comment=comment)}})
            drop = [*service, match(state, "invalid", "in"), {"counter": None}, {"drop": None}]
            cmds.append({"add": {"rule": self._sp_obj(chain=chain, expr=drop, comment=comment)}})
        return cmds

    def _delete(self, e: Entry, keep: set[str] | frozenset[str] = frozenset()) -> Cmds:
        """Delete ``e`` (a chain entry's chains except ``keep``, which are flushed only);
        the jumps to its chains must be gone first (see :meth:`_dispatch`)."""
        if e.kind == "synproxy":
            cmds: Cmds = [{"delete": {"rule": self._sp_obj(chain=c, handle=h)}} for c, h in e.handles]
            return cmds + [{"delete": {"set": self._sp_obj(name=name)}} for name in e.sets]
        if e.kind == "element":
            return [{"delete": {"element": self._obj(name=e.source_set, elem=[prefix(e.src())])}}]
        out: Cmds = []
        for chain in e.chains:
            out.append({"flush": {"chain": self._obj(name=chain)}})
            if chain not in keep:
                out.append({"delete": {"chain": self._obj(name=chain)}})
        out += [{"delete": {"set": self._obj(name=name)}} for name in e.sets + e.meters]
        return out

    def withdraw(self, rule_id: int) -> None:
        for attempt in (1, 2):
            state = self._index() if attempt == 1 else self.state()
            e = state.entries.get(rule_id)
            if e is None:
                return
            jumps_cmds, jumps = self._dispatch(state, e.chains)
            try:
                self.nft.run(jumps_cmds + self._delete(e), f"withdraw rule {rule_id}")
            except DataPlaneError:
                # e.g. its element timed out already: the retry works from a fresh listing
                self._cache = None
                if attempt == 2:
                    raise
                continue
            if e.kind == "synproxy":
                self._cache = None
            else:
                state.jumps = jumps
                self._forget(state, rule_id)
            return

    def _collect_garbage(self, state: TableState) -> None:
        """Delete expired rules and their sets, and sets no rule uses any more."""
        cmds: Cmds = []
        used: set[str] = set()
        for e in state.entries.values():
            if e.expired:
                cmds += [{"delete": {"rule": self._sp_obj(chain=c, handle=h)}} for c, h in e.handles]
            else:
                used.update(e.sets + e.meters + e.chains)
        # The chains of expired rules, and any no rule uses (left by hand): their jumps
        # first, then the chains.
        stale = [c for c in sorted(state.chains) if _RULE_CHAIN.match(c) and c not in used]
        jumps_cmds, jumps = self._dispatch(state, stale)
        cmds += jumps_cmds
        for c in stale:
            cmds += [{"flush": {"chain": self._obj(name=c)}}, {"delete": {"chain": self._obj(name=c)}}]
        # Then the sets: those of expired rules, and any left behind by a crash.
        for name in state.sets:
            if (_RULE_SET.match(name) or _METER_SET.match(name)) and name not in used:
                cmds.append({"delete": {"set": self._obj(name=name)}})
        for name in state.sp_sets:
            if _SP_SET.match(name) and name not in used:
                cmds.append({"delete": {"set": self._sp_obj(name=name)}})
        if cmds:
            try:
                self.nft.run(cmds, "collect expired rules")
                state.jumps = jumps
                state.chains -= set(stale)
            except DataPlaneError:
                self._cache = None  # on a race with another change, the next list() collects them
        for rid in [rid for rid, e in state.entries.items() if e.expired]:
            del state.entries[rid]

    # -- lifetime

    def close(self) -> None:
        """Release the libnftables context; the table and its rules stay in force."""

    def remove(self) -> None:
        """Delete the whole table (rules, counters, the data plane's counting too) and
        the SYN proxy table."""
        remove_table(self.table)


def _placement(rule: Rule) -> list[tuple[str, str]]:
    """Where a chain rule goes, per family: (its ``rules*`` chain, its own chain)."""
    out = []
    for fam in families(rule.match):
        dispatcher = f"rules{fam}_l4" if rule.match.needs_ports() else f"rules{fam}"
        out.append((dispatcher, f"f{rule.rule_id}_{fam}"))
    return out


def _timed(val: Any, timeout: int) -> dict[str, Any]:
    return {"elem": {"val": val, "timeout": timeout, "expires": timeout}}


def _same_shape(a: Rule, b: Rule) -> bool:
    """Whether ``b`` differs from ``a`` only by expiry (so a refresh is enough)."""
    return (a.match, a.action, a.rate_pps, a.attack_id, a.per_source) == (
        b.match,
        b.action,
        b.rate_pps,
        b.attack_id,
        b.per_source,
    )


def table_exists(table: str = DEFAULT_TABLE) -> bool:
    return Nft().try_run([{"list": {"table": {"family": FAMILY, "name": table}}}]) is not None


def remove_table(table: str = DEFAULT_TABLE) -> bool:
    """Delete the shield's table (and its SYN proxy table) if it exists; returns whether it did."""
    nft = Nft()
    sp = {"family": SYNPROXY_FAMILY, "name": table + SYNPROXY_SUFFIX}
    if nft.try_run([{"list": {"table": sp}}]) is not None:
        nft.run([{"delete": {"table": sp}}], f"delete table {SYNPROXY_FAMILY} {sp['name']}")
    if not table_exists(table):
        return False
    nft.run([{"delete": {"table": {"family": FAMILY, "name": table}}}], f"delete table {FAMILY} {table}")
    return True


def set_sysctls(values: dict[str, str]) -> None:
    """Set per-namespace sysctls (``/proc/sys`` paths) the SYN proxy needs, unless
    they already hold an acceptable value; a value that cannot be set is an error."""
    for key, want in values.items():
        path = f"/proc/sys/{key}"
        try:
            with open(path) as f:
                have = f.read().strip()
            if have == want or (key.endswith("tcp_syncookies") and have in ("1", "2")):
                continue
            with open(path, "w") as f:
                f.write(want)
        except OSError as e:
            raise DataPlaneError(f"SYN proxy: cannot set {key.replace('/', '.')} = {want}: {e.strerror or e}") from e
