"""Threshold detection: per-destination rates against the host group's limits.

Input is a rate batch (one row per destination, rates per category) and an explicit
``now``; output is one :class:`Observation` per destination that is over a limit in
at least one category.  No I/O, no clock.  Which group a destination belongs to is
decided once per destination by the configuration (most specific prefix wins).

>>> from ddos_shield.config import parse
>>> from ddos_shield.records import empty_rates, addr_bytes, Category
>>> det = ThresholdDetector(parse('protected = ["203.0.113.0/24"]'))
>>> rates = empty_rates(1)
>>> rates["dst"][0] = list(addr_bytes("203.0.113.10"))
>>> rates["pps"][0, Category.UDP] = 50000
>>> [(str(o.target), [c.name for c in o.categories]) for o in det.observe(rates, now=0.0)]
[('203.0.113.10/32', ['UDP'])]
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from ddos_shield.config import Config, Group
from ddos_shield.records import AttackType, Category, IPNetwork, RateBatch, bytes_addr


@dataclass(frozen=True)
class Observation:
    """A destination over its limits during one interval."""

    target: IPNetwork
    group: str
    categories: tuple[Category, ...]  # the categories over their limits
    pps: float  # summed over those categories
    bps: float
    total_pps: float  # all categories, for context
    now: float
    #: types the detector recognised beyond the categories' floods (e.g. carpet bombing)
    extra_types: tuple[AttackType, ...] = ()


class ThresholdDetector:
    """See the module docstring."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._cache: dict[bytes, tuple[IPNetwork, Group, np.ndarray, np.ndarray]] = {}

    def _limits(self, raw: bytes) -> tuple[IPNetwork, Group, np.ndarray, np.ndarray]:
        hit = self._cache.get(raw)
        if hit is None:
            addr = bytes_addr(raw)
            plen = 32 if addr.version == 4 else self._config.shield.ipv6_prefix_len
            target = ipaddress.ip_network((addr, plen), strict=False)
            group = self._config.group_of(target)
            pps = np.array([group.thresholds.for_category(c).pps for c in Category], dtype=float)
            bps = np.array([group.thresholds.for_category(c).bps for c in Category], dtype=float)
            # 0 means "no limit"
            pps[pps == 0] = np.inf
            bps[bps == 0] = np.inf
            hit = (target, group, pps, bps)
            if len(self._cache) > 200_000:  # bounded like the kernel's LRU
                self._cache.clear()
            self._cache[raw] = hit
        return hit

    def observe(self, rates: RateBatch, now: float) -> list[Observation]:
        out: list[Observation] = []
        if len(rates) == 0:
            return out
        # Cheap prefilter: rows below the smallest limit of any group cannot fire.
        floor = self._floor()
        busy = np.nonzero((rates["pps"] >= floor[0]).any(axis=1) | (rates["bps"] >= floor[1]).any(axis=1))[0]
        for i in busy:
            row = rates[i]
            target, group, lim_pps, lim_bps = self._limits(row["dst"].tobytes())
            over = (row["pps"] > lim_pps) | (row["bps"] > lim_bps)
            if not over.any():
                continue
            cats = tuple(Category(int(c)) for c in np.nonzero(over)[0])
            out.append(
                Observation(
                    target=target,
                    group=group.name,
                    categories=cats,
                    pps=float(row["pps"][over].sum()),
                    bps=float(row["bps"][over].sum()),
                    total_pps=float(row["pps"].sum()),
                    now=now,
                )
            )
        return out

    def _floor(self) -> tuple[float, float]:
        pps = [t.pps for g in self._config.groups for c in Category if (t := g.thresholds.for_category(c)).pps]
        bps = [t.bps for g in self._config.groups for c in Category if (t := g.thresholds.for_category(c)).bps]
        return (min(pps) if pps else np.inf, min(bps) if bps else np.inf)
