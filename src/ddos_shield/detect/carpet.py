"""Carpet bombing: floods spread thinly over many addresses of a prefix.

Each destination of a carpet bomb stays below its host thresholds, so the
per-destination detector (:mod:`~ddos_shield.detect.threshold`) sees nothing.  This
detector sums a rate batch per prefix instead -- per host group, at the group's
``carpet.ipv4_prefix_len`` / ``carpet.ipv6_prefix_len`` (never wider than the
group's own or the protected prefix holding the destination) -- and compares each
sum with the group's ``carpet.thresholds``.  A prefix is attacked when, in some
category, its sum is over the limit, at least ``min_destinations`` of its
destinations carry that category, and none carries more than ``max_host_share`` of
the sum: the attack is the spread, not one busy host.

Hosts that are themselves over their limits are host attacks; the caller passes
them in ``hosts`` and their traffic in those categories is left out of the sums, so
one flood is never reported twice.  The observations come out with the prefix as
their target and :attr:`~ddos_shield.records.AttackType.CARPET_BOMBING` among their
types, and go through the same lifecycle, policy and backends as any attack (a
rule's ``dst`` is then the prefix).  No I/O, no clock.

>>> from ddos_shield.config import parse
>>> from ddos_shield.records import empty_rates, addr_bytes, Category
>>> det = CarpetDetector(parse('protected = ["203.0.113.0/24"]'))
>>> rates = empty_rates(200)
>>> rates["dst"] = [list(addr_bytes(f"203.0.113.{i}")) for i in range(200)]
>>> rates["pps"][:, Category.UDP] = 500  # 100 kpps in all, 500 pps per address
>>> [(str(o.target), o.extra_types) for o in det.observe(rates, now=0.0)]
[('203.0.113.0/24', (<AttackType.CARPET_BOMBING: 'carpet_bombing'>,))]
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from ddos_shield.config import Config
from ddos_shield.detect.threshold import Observation
from ddos_shield.records import (
    Attack,
    AttackType,
    Category,
    IPNetwork,
    RateBatch,
    TrafficBatch,
    addresses_in,
    key_net,
    net_key,
)

_V4_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)
_NCAT = len(Category)


def _limits(values: list[int]) -> npt.NDArray[np.float64]:
    a = np.array(values, dtype=np.float64)
    a[a == 0] = np.inf  # 0 means "no limit"
    return a


class CarpetDetector:
    """See the module docstring."""

    def __init__(self, config: Config) -> None:
        self._config = config
        groups = list(config.groups)
        self._names = [g.name for g in groups]
        default = self._names.index("default")
        self._host_v6 = config.shield.ipv6_prefix_len  # IPv6 destinations are counted per prefix of this length
        self._enabled = np.array([g.carpet.enabled for g in groups], dtype=bool)
        self._len_v4 = np.array([96 + g.carpet.ipv4_prefix_len for g in groups], dtype=np.int64)
        self._len_v6 = np.array([min(g.carpet.ipv6_prefix_len, self._host_v6) for g in groups], dtype=np.int64)
        cats = list(Category)
        self._pps = np.stack([_limits([g.carpet.thresholds.for_category(c).pps for c in cats]) for g in groups])
        self._bps = np.stack([_limits([g.carpet.thresholds.for_category(c).bps for c in cats]) for g in groups])
        self._min_dst = np.array([g.carpet.min_destinations for g in groups], dtype=np.float64)
        self._share = np.array([g.carpet.max_host_share for g in groups], dtype=np.float64)
        # (prefix, group index or None): longer prefixes are applied later and win;
        # protected prefixes only bound how wide a sum may reach
        entries: list[tuple[IPNetwork, int | None]] = [(p, None) for p in config.protected_networks()]
        entries += [(net, i) for i, g in enumerate(groups) for net in g.networks()]
        self._entries = sorted(entries, key=lambda e: (net_key(e[0])[0], e[1] is not None))
        self._default = default

    def observe(
        self,
        rates: RateBatch,
        now: float,
        hosts: Iterable[tuple[IPNetwork, tuple[Category, ...]]] = (),
    ) -> list[Observation]:
        """Observations of the prefixes under carpet bombing in this rate batch.

        ``hosts`` are the host attacks (targets and categories) found or still open:
        their traffic in those categories is not part of any prefix's sum.
        """
        if len(rates) == 0 or not self._enabled.any():
            return []
        dst = np.ascontiguousarray(rates["dst"])
        pps = rates["pps"].astype(np.float64, copy=True)
        bps = rates["bps"].astype(np.float64, copy=True)
        self._leave_out(dst, pps, bps, hosts)

        n = len(dst)
        group = np.full(n, self._default, dtype=np.int64)
        cover = np.zeros(n, dtype=np.int64)  # prefix length (16-byte space) of the narrowest holder
        for net, gi in self._entries:
            m = addresses_in(dst, net)
            cover[m] = net_key(net)[0]
            if gi is not None:
                group[m] = gi
        v4 = np.all(dst[:, :12] == _V4_MAPPED, axis=1)
        length = np.maximum(cover, np.where(v4, self._len_v4[group], self._len_v6[group]))
        host = np.where(v4, 128, self._host_v6)
        keep = (cover > 0) & (length < host) & self._enabled[group] & (pps.sum(axis=1) > 0)
        if not keep.any():
            return []
        dst, pps, bps, group, length = dst[keep], pps[keep], bps[keep], group[keep], length[keep]

        # each destination masked to its prefix, keyed with its group and the length
        bits = np.clip(length[:, None] - 8 * np.arange(16)[None, :], 0, 8)
        masked = dst & ((0xFF << (8 - bits)) & 0xFF).astype(np.uint8)
        key = np.concatenate(
            [masked, group.astype(">u2").view(np.uint8).reshape(-1, 2), length.astype(np.uint8)[:, None]], axis=1
        )
        _, first, inv = np.unique(np.ascontiguousarray(key).view("V19").ravel(), return_index=True, return_inverse=True)
        inv = inv.ravel()
        k = len(first)
        sum_pps = np.zeros((k, _NCAT))
        sum_bps = np.zeros((k, _NCAT))
        ndst = np.zeros((k, _NCAT))
        top = np.zeros((k, _NCAT))
        np.add.at(sum_pps, inv, pps)
        np.add.at(sum_bps, inv, bps)
        np.add.at(ndst, inv, (pps > 0).astype(np.float64))
        np.maximum.at(top, inv, pps)

        g = group[first]
        over = (sum_pps > self._pps[g]) | (sum_bps > self._bps[g])
        spread = (ndst >= self._min_dst[g][:, None]) & (top <= self._share[g][:, None] * sum_pps)
        hit = over & spread
        out: list[Observation] = []
        for i in np.flatnonzero(hit.any(axis=1)).tolist():
            cats = tuple(Category(int(c)) for c in np.flatnonzero(hit[i]))
            sel = hit[i]
            out.append(
                Observation(
                    target=key_net(int(length[first[i]]), masked[first[i]].tobytes()),
                    group=self._names[int(g[i])],
                    categories=cats,
                    pps=float(sum_pps[i][sel].sum()),
                    bps=float(sum_bps[i][sel].sum()),
                    total_pps=float(sum_pps[i].sum()),
                    now=now,
                    extra_types=(AttackType.CARPET_BOMBING,),
                )
            )
        return out

    def _leave_out(
        self,
        dst: npt.NDArray[np.uint8],
        pps: npt.NDArray[np.float64],
        bps: npt.NDArray[np.float64],
        hosts: Iterable[tuple[IPNetwork, tuple[Category, ...]]],
    ) -> None:
        """Zero the rates of host attacks, per category.  A host target is one rate row
        (an IPv4 address or an IPv6 prefix of ``shield.ipv6_prefix_len``): matched by
        key, so hundreds of open host attacks cost one vectorised lookup a category."""
        per_cat: list[list[bytes]] = [[] for _ in range(_NCAT)]
        for net, cats in hosts:
            plen, raw = net_key(net)
            if plen < (128 if net.version == 4 else self._host_v6):
                continue  # a prefix (a carpet itself), not a host
            for c in cats:
                per_cat[int(c)].append(raw)
        if not any(per_cat):
            return
        keys = dst.view("V16").ravel()
        for ci, raws in enumerate(per_cat):
            if raws:
                m = np.isin(keys, np.frombuffer(b"".join(raws), dtype="V16"))
                pps[m, ci] = 0.0
                bps[m, ci] = 0.0


def inner_mask(window: TrafficBatch, attack: Attack, others: Iterable[Attack]) -> npt.NDArray[np.bool_]:
    """Rows of ``window`` that belong to attacks on narrower targets inside ``attack``'s
    (host attacks inside a carpet's prefix), in their own categories: those samples
    are the host attacks', not the carpet's.  Matched by prefix length, so hundreds of
    host attacks cost one vectorised lookup per length and category."""
    out = np.zeros(len(window), dtype=bool)
    outer = attack.target
    by_len: dict[int, list[list[bytes]]] = {}
    for o in others:
        t = o.target
        if t.version != outer.version or t.prefixlen <= outer.prefixlen or not t.subnet_of(outer):  # type: ignore[arg-type]
            continue
        plen, raw = net_key(t)
        per_cat = by_len.setdefault(plen, [[] for _ in range(_NCAT)])
        for c in o.categories:
            per_cat[int(c)].append(raw)
    if not by_len or len(window) == 0:
        return out
    dst = np.ascontiguousarray(window["dst"])
    cat = window["category"]
    for plen, per_cat in by_len.items():
        bits = np.clip(plen - 8 * np.arange(16), 0, 8)
        keys = np.ascontiguousarray(dst & ((0xFF << (8 - bits)) & 0xFF).astype(np.uint8)).view("V16").ravel()
        for ci, raws in enumerate(per_cat):
            if raws:
                out |= (cat == ci) & np.isin(keys, np.frombuffer(b"".join(raws), dtype="V16"))
    return out
