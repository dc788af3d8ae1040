"""The nftables data plane: where XDP cannot attach, count with nftables and sample
with AF_PACKET.

Counting shares the enforcement table of :class:`~ddos_shield.mitigate.nftables.NftablesBackend`
and fills its two hook chains, so it sees every packet before any verdict::

    main ──> count_in      ip daddr @protected4 jump count4      offered load, per
                           ip6 daddr @protected6 jump count6     destination and category
    blocked/rate_blocked ──> count_drop                          what the rules dropped

``count4``/``count6`` put each packet in one category (non-first fragment, TCP SYN
without ACK, other TCP, UDP, ICMP/ICMPv6, other) and ``update`` the destination into
that category's set, ``c4_<category>`` / ``c6_<category>``: sets with a ``counter`` per
element, an element timeout (idle destinations age out) and a bounded size.  IPv6
destinations are masked to ``ipv6_prefix_len`` first.  ``d4``/``d6`` count drops the
same way.  Only destinations inside the protected prefixes (the interval sets
``protected4``/``protected6``) are counted.

Byte counters are L2 frame bytes (nftables counts from the network header at this
hook; 14 bytes per packet are added back, see the backend's module docstring).

Samples come from one :class:`~ddos_shield.capture.afpacket.AfPacketSampler` per
interface, which sees packets before nftables (so samples carry no verdict) and are
kept only when their destination is protected, as the XDP data plane does.

Example::

    dp = NftDataPlane.open(["eth0"])
    dp.set_protected({as_network("203.0.113.0/24"): 1})
    dp.set_sample_every(100)
    counters = dp.read_counters()     # COUNTER_DTYPE, cumulative
    samples = dp.read_samples()       # TRAFFIC_DTYPE
    dp.backend.apply(rule)
    dp.close()                        # counting and rules stay; close(detach=True) removes them
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ddos_shield.capture.afpacket import AfPacketSampler
from ddos_shield.dataplane.base import DataPlane
from ddos_shield.mitigate.nftables import (
    DEFAULT_TABLE,
    ETH_HLEN,
    FAMILY,
    Cmds,
    NftablesBackend,
    match,
    meta,
    parse_prefix,
    payload,
    prefix,
    remove_table,
)
from ddos_shield.records import (
    CATEGORY_NAMES,
    COUNTER_DTYPE,
    IPNetwork,
    PacketFlag,
    TrafficBatch,
    addr_bytes,
    addresses_in,
    empty_traffic,
)

#: Idle destinations leave the counter sets after this many seconds.
COUNTER_TIMEOUT = 300
#: Destinations per counter set (per family and category); more are not counted.
COUNTER_SIZE = 65536


def _tag(ipv6_prefix_len: int) -> str:
    """Comment of the counting rules: a different IPv6 aggregation invalidates the sets."""
    return f"ipv6_prefix_len={ipv6_prefix_len}"


class NftDataPlane(DataPlane):
    """Counting, sampling and enforcement with nftables and AF_PACKET (module docstring)."""

    name = "nftables"

    def __init__(
        self, backend: NftablesBackend, samplers: Sequence[AfPacketSampler], ipv6_prefix_len: int = 64
    ) -> None:
        self._backend = backend
        self._samplers = list(samplers)
        self.ipv6_prefix_len = ipv6_prefix_len
        self._protected: list[IPNetwork] = []
        self._t = {"family": FAMILY, "table": backend.table}

    @classmethod
    def open(
        cls,
        interfaces: Sequence[str],
        table: str = DEFAULT_TABLE,
        ipv6_prefix_len: int = 64,
        *,
        sample_every: int = 0,
    ) -> NftDataPlane:
        """Build (or adopt) the table, install the counting and start one sampler per
        interface.  The protected prefixes already in the table stay in force."""
        if not 8 <= ipv6_prefix_len <= 128:
            raise ValueError(f"ipv6_prefix_len must be in 8..128, got {ipv6_prefix_len}")
        backend = NftablesBackend(interfaces, table)
        dp = cls(backend, [], ipv6_prefix_len)
        try:
            dp._install_counting()
            dp._protected = dp._read_protected()
            for ifname in interfaces:
                dp._samplers.append(AfPacketSampler(ifname, sample_every))
        except BaseException:
            dp.close()
            raise
        return dp

    # -- set-up

    def _obj(self, **kw: Any) -> dict[str, Any]:
        return {**self._t, **kw}

    def _counter_sets(self) -> list[str]:
        return [f"{p}{fam}_{c}" for fam in (4, 6) for p, c in [("c", n) for n in CATEGORY_NAMES] + [("d", "drop")]]

    def _install_counting(self) -> None:
        nft = self._backend.nft
        state = self._backend.state()
        cmds: Cmds = []
        for fam in (4, 6):
            typ = f"ipv{fam}_addr"
            cmds.append({"add": {"set": self._obj(name=f"protected{fam}", type=typ, flags=["interval"])}})
        # The kernel refuses to re-add a set that has per-element expressions: add the missing only.
        for name in [n for n in self._counter_sets() if n not in state.sets]:
            typ = "ipv4_addr" if name[1] == "4" else "ipv6_addr"
            cmds.append(
                {
                    "add": {
                        "set": self._obj(
                            name=name,
                            type=typ,
                            flags=["timeout"],
                            timeout=COUNTER_TIMEOUT,
                            size=COUNTER_SIZE,
                            stmt=[{"counter": None}],
                        )
                    }
                }
            )
        # Counters kept under another IPv6 aggregation would mix granularities.
        tag = _tag(self.ipv6_prefix_len)
        old_tags = {r.get("comment") for r in state.rules if r["chain"] == "count6"}
        if old_tags and old_tags != {tag}:
            cmds += [{"flush": {"set": self._obj(name=n)}} for n in self._counter_sets() if n[1] == "6"]
        for chain in ("count4", "count6"):
            cmds.append({"add": {"chain": self._obj(name=chain)}})
        for chain in ("count_in", "count_drop", "count4", "count6"):
            cmds.append({"flush": {"chain": self._obj(name=chain)}})
        cmds += self._counting_rules(tag)
        nft.run(cmds, "install counting")

    def _key(self, fam: int) -> Any:
        daddr = payload("ip" if fam == 4 else "ip6", "daddr")
        if fam == 4 or self.ipv6_prefix_len == 128:
            return daddr
        mask = ipaddress.IPv6Network(("::", self.ipv6_prefix_len)).netmask
        return {"&": [daddr, str(mask)]}

    def _counting_rules(self, tag: str) -> Cmds:
        cmds: Cmds = []

        def rule(chain: str, *expr: dict[str, Any]) -> None:
            cmds.append({"add": {"rule": self._obj(chain=chain, expr=list(expr), comment=tag)}})

        def update(fam: int, cat: str) -> dict[str, Any]:
            return {"set": {"op": "update", "elem": self._key(fam), "set": f"@c{fam}_{cat}"}}

        ret: dict[str, Any] = {"return": None}
        for fam in (4, 6):
            ip = "ip" if fam == 4 else "ip6"
            chain = f"count{fam}"
            rule("count_in", match(payload(ip, "daddr"), f"@protected{fam}"), {"jump": {"target": chain}})
            rule(
                "count_drop",
                match(payload(ip, "daddr"), f"@protected{fam}"),
                {"set": {"op": "update", "elem": self._key(fam), "set": f"@d{fam}_drop"}},
            )
            # Order matters: the first rule that matches counts the packet, then returns.
            if fam == 4:
                later = match({"&": [payload("ip", "frag-off"), 0x1FFF]}, 0, "!=")
            else:
                later = match({"exthdr": {"name": "frag", "field": "frag-off"}}, 0, "!=")
            rule(chain, later, update(fam, "frag"), ret)
            syn = match({"&": [payload("tcp", "flags"), 0x12]}, 0x02)
            rule(chain, match(meta("l4proto"), 6), syn, update(fam, "tcp_syn"), ret)
            rule(chain, match(meta("l4proto"), 6), update(fam, "tcp"), ret)
            rule(chain, match(meta("l4proto"), 17), update(fam, "udp"), ret)
            rule(chain, match(meta("l4proto"), {"set": [1, 58]}), update(fam, "icmp"), ret)
            rule(chain, update(fam, "other"))
        return cmds

    # -- DataPlane

    @property
    def backend(self) -> NftablesBackend:
        return self._backend

    def set_protected(self, prefixes: Mapping[IPNetwork, int]) -> None:
        """Replace the protected prefixes (group ids are not used by this data plane)."""
        cmds: Cmds = []
        nets = list(prefixes)
        for fam in (4, 6):
            mine = [n for n in nets if n.version == fam]
            cmds.append({"flush": {"set": self._obj(name=f"protected{fam}")}})
            if mine:
                merged = ipaddress.collapse_addresses(mine)  # type: ignore[type-var]
                cmds.append({"add": {"element": self._obj(name=f"protected{fam}", elem=[prefix(n) for n in merged])}})
        self._backend.nft.run(cmds, "set protected prefixes")
        self._protected = nets

    def _read_protected(self) -> list[IPNetwork]:
        state = self._backend.state()
        return [parse_prefix(e["val"]) for fam in (4, 6) for e in state.elements(f"protected{fam}")]

    def read_counters(self) -> np.ndarray:
        rows: dict[bytes, int] = {}
        found: list[tuple[bytes, int, int, int]] = []  # (dst, column, packets, bytes)
        nft = self._backend.nft
        for name in self._counter_sets():
            # One set per command: libnftables 1.0.6 fails batches of several listings.
            objs = nft.run([{"list": {"set": self._obj(name=name)}}], f"list {name}")
            cat = name[3:]
            col = len(CATEGORY_NAMES) if cat == "drop" else CATEGORY_NAMES.index(cat)
            for o in objs:
                for e in o.get("set", {}).get("elem", []):
                    el = e["elem"]
                    key = addr_bytes(ipaddress.ip_address(el["val"]))
                    c = el.get("counter") or {}
                    pk = int(c.get("packets", 0))
                    rows.setdefault(key, len(rows))
                    found.append((key, col, pk, int(c.get("bytes", 0)) + ETH_HLEN * pk))
        out = np.zeros(len(rows), dtype=COUNTER_DTYPE)
        for key, i in rows.items():
            out["dst"][i] = np.frombuffer(key, dtype=np.uint8)
        ncat = len(CATEGORY_NAMES)
        for key, col, pk, by in found:
            i = rows[key]
            if col == ncat:
                out["dropped_pkts"][i] += pk
                out["dropped_bytes"][i] += by
            else:
                out["pkts"][i, col] += pk
                out["bytes"][i, col] += by
        return out

    def read_samples(self) -> TrafficBatch:
        return self.read_frames()[0]

    def read_frames(self) -> tuple[TrafficBatch, tuple[np.ndarray, np.ndarray] | None]:
        got = [(b, f) for b, f in (s.read_frames() for s in self._samplers) if f is not None and len(b)]
        if not got:
            return empty_traffic(0), None
        batch = np.concatenate([b for b, _ in got])
        data = np.concatenate([f[0] for _, f in got])
        caplen = np.concatenate([f[1] for _, f in got])
        keep = np.zeros(len(batch), dtype=bool)
        for net in self._protected:
            keep |= addresses_in(batch["dst"], net)
        batch = batch[keep]
        batch["flags"] |= np.uint16(PacketFlag.PROTECTED)
        return batch, (data[keep], caplen[keep])

    def set_sample_every(self, n: int) -> None:
        for s in self._samplers:
            s.set_sample_every(n)

    def kill_switch_on(self) -> bool:
        return self._backend.bypass

    def global_stats(self) -> dict[str, int]:
        """rx, allowed, bypass, dropped, rate_limited, observed (nftables counters, packets)
        and sampled, sample_lost (AF_PACKET statistics, all interfaces)."""
        out = self._backend.global_counters()
        sampled = lost = 0
        for s in self._samplers:
            st = s.stats()
            sampled += st["packets"] - st["drops"]
            lost += st["drops"]
        out["sampled"] = sampled
        out["sample_lost"] = lost
        return out

    def close(self, detach: bool = False) -> None:
        for s in self._samplers:
            s.close()
        self._samplers = []
        self._backend.close()
        if detach:
            remove_table(self._backend.table)
