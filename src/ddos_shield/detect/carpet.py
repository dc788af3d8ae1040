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
from dataclasses import dataclass

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
    key_net,
    net_key,
)

_V4_MAPPED = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)
_NCAT = len(Category)


def _limits(values: list[int]) -> npt.NDArray[np.float64]:
    a = np.array(values, dtype=np.float64)
    a[a == 0] = np.inf  # 0 means "no limit"
    return a


@dataclass(frozen=True)
class _Layout:
    """Rate rows in prefix order, and each prefix's group, length and address."""

    rows: npt.NDArray[np.intp]  # indexes into the rate batch, prefix by prefix
    starts: npt.NDArray[np.intp]  # first position of each prefix's run in ``rows``
    group: npt.NDArray[np.int64]
    length: npt.NDArray[np.int64]  # in the 16-byte space
    masked: npt.NDArray[np.uint8]  # (prefixes, 16) network addresses


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
        self._entry_words: list[tuple[int, tuple[np.uint64, np.uint64], int | None]] = []
        for net, gi in sorted(entries, key=lambda e: (net_key(e[0])[0], e[1] is not None)):
            plen, raw = net_key(net)
            hi, lo = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
            self._entry_words.append((plen, (hi, lo), gi))
        self._default = default
        self._last: tuple[npt.NDArray[np.uint8], _Layout | None] | None = None

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
        lay = self._layout(dst)
        if lay is None:
            return []
        # this tick's rates in prefix order, categories as rows (reduceat runs along memory)
        pps = np.ascontiguousarray(rates["pps"][lay.rows].T, dtype=np.float64)
        bps = np.ascontiguousarray(rates["bps"][lay.rows].T, dtype=np.float64)
        self._leave_out(dst, lay.rows, pps, bps, hosts)
        starts = lay.starts
        sum_pps = np.add.reduceat(pps, starts, axis=1).T
        sum_bps = np.add.reduceat(bps, starts, axis=1).T
        ndst = np.add.reduceat((pps > 0).astype(np.float64), starts, axis=1).T
        top = np.maximum.reduceat(pps, starts, axis=1).T
        g, length, masked = lay.group, lay.length, lay.masked

        over = (sum_pps > self._pps[g]) | (sum_bps > self._bps[g])
        spread = (ndst >= self._min_dst[g][:, None]) & (top <= self._share[g][:, None] * sum_pps)
        hit = over & spread
        out: list[Observation] = []
        for i in np.flatnonzero(hit.any(axis=1)).tolist():
            cats = tuple(Category(int(c)) for c in np.flatnonzero(hit[i]))
            sel = hit[i]
            lim = self._pps[g[i]][sel]
            out.append(
                Observation(
                    target=key_net(int(length[i]), masked[i].tobytes()),
                    group=self._names[int(g[i])],
                    categories=cats,
                    pps=float(sum_pps[i][sel].sum()),
                    bps=float(sum_bps[i][sel].sum()),
                    total_pps=float(sum_pps[i].sum()),
                    now=now,
                    extra_types=(AttackType.CARPET_BOMBING,),
                    limit_pps=float(lim[np.isfinite(lim)].sum()),  # the prefix's limits, as evidence
                )
            )
        return out

    def _layout(self, dst: npt.NDArray[np.uint8]) -> _Layout | None:
        """Which rows sum into which prefix: it depends on the destinations alone, which
        stay the same tick after tick (the counter table keeps its order), so it is
        computed again only when they change."""
        if self._last is not None and np.array_equal(self._last[0], dst):
            return self._last[1]
        # addresses as two native 64-bit words: masking, matching and sorting on words is
        # several times faster than on 16 bytes
        w = dst.view(">u8").astype(np.uint64)
        n = len(w)
        group = np.full(n, self._default, dtype=np.int64)
        cover = np.zeros(n, dtype=np.int64)  # prefix length (16-byte space) of the narrowest holder
        for plen, want, gi in self._entry_words:
            m0, m1 = _masks(np.full(1, plen))
            m = ((w[:, 0] & m0) == want[0]) & ((w[:, 1] & m1) == want[1])
            cover[m] = plen
            if gi is not None:
                group[m] = gi
        v4 = (w[:, 0] == 0) & ((w[:, 1] >> np.uint64(32)) == 0xFFFF)
        length = np.maximum(cover, np.where(v4, self._len_v4[group], self._len_v6[group]))
        host = np.where(v4, 128, self._host_v6)
        kept = np.flatnonzero((cover > 0) & (length < host) & self._enabled[group])
        lay: _Layout | None = None
        if len(kept):
            w, group, length = w[kept], group[kept], length[kept]
            # each destination masked to its prefix, keyed by (group and length, two address
            # words): sorted once, so that each prefix's rows are one run
            m0, m1 = _masks(length)
            w0, w1 = w[:, 0] & m0, w[:, 1] & m1
            meta = (group.astype(np.uint64) << np.uint64(8)) | length.astype(np.uint64)
            order = np.lexsort((w1, w0, meta))
            w0, w1, meta = w0[order], w1[order], meta[order]
            new = np.ones(len(order), dtype=bool)
            new[1:] = (w0[1:] != w0[:-1]) | (w1[1:] != w1[:-1]) | (meta[1:] != meta[:-1])
            starts = np.flatnonzero(new)
            first = order[starts]
            lay = _Layout(
                rows=kept[order],
                starts=starts,
                group=group[first],
                length=length[first],
                masked=np.stack([w0[starts], w1[starts]], axis=1).astype(">u8").view(np.uint8),
            )
        self._last = (dst.copy(), lay)
        return lay

    def _leave_out(
        self,
        dst: npt.NDArray[np.uint8],
        rows: npt.NDArray[np.intp],
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
        keys = np.ascontiguousarray(dst[rows]).view("V16").ravel()
        for ci, raws in enumerate(per_cat):
            if raws:
                m = np.isin(keys, np.frombuffer(b"".join(raws), dtype="V16"))
                pps[ci, m] = 0.0  # categories are rows here
                bps[ci, m] = 0.0


_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


def _masks(length: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The two 64-bit words of the netmask of each prefix length (0..128)."""
    out = []
    for bits in (np.clip(length, 0, 64), np.clip(length - 64, 0, 64)):
        # ~(ALL >> b) keeps the top b bits for b in 0..63; b = 64 is all of them
        m = ~(_ALL >> np.minimum(bits, 63).astype(np.uint64))
        out.append(np.where(bits >= 64, _ALL, m).astype(np.uint64))
    return out[0], out[1]


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
