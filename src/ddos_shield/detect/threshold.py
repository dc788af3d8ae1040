"""Threshold detection: per-destination rates against the host group's limits.

Input is a rate batch (one row per destination, rates per category) and an explicit
``now``; output is one :class:`Observation` per destination that is over a limit in
at least one category.  No I/O, no clock.  Which group a destination belongs to is
decided once per destination by the configuration (most specific prefix wins).

The limits of a destination are its group's static thresholds (packets, bits and new
flows per second), or, once its baseline has learned (:mod:`~ddos_shield.detect.baseline`)
and its group has a sensitivity, the learned limits: above the baseline by the
sensitivity and above the group's floor, for :data:`BASELINE_TICKS` ticks in a row (a
learned limit is statistical: one tick over it is a burst, a few in a row a flood;
static thresholds act on the first tick).  Destinations under attack (``active``) are
held to the lower exit limits (``exit_ratio``), so an attack that dips a little below
its entry threshold goes on: the hysteresis of the lifecycle.

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
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ddos_shield.config import Config, Group, Thresholds
from ddos_shield.detect.baseline import Baselines, entry_exit
from ddos_shield.records import RATE_METRICS, AttackType, Category, IPNetwork, RateBatch, bytes_addr

F64 = npt.NDArray[np.float64]

#: ticks in a row a rate must be over a learned (baseline) entry limit to start an attack
BASELINE_TICKS = 3


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
    flows: float = 0.0  # new flows per second, summed over those categories
    basis: Literal["static", "baseline"] = "static"  # what the rates were judged against
    limit_pps: float = 0.0  # the entry packet limits of those categories, summed (0: none)


@dataclass(frozen=True)
class _Limits:
    target: IPNetwork
    group: Group
    entry: F64  # static thresholds, (categories, metrics), inf = no limit
    exit: F64
    floor: F64  # baseline floors, 0 = not judged


class ThresholdDetector:
    """See the module docstring.  ``baselines``: learned baselines, or None for static
    thresholds only."""

    def __init__(self, config: Config, baselines: Baselines | None = None) -> None:
        self._config = config
        self.baselines = baselines
        self._cache: dict[bytes, _Limits] = {}
        self._min = self._smallest()
        self._streak: dict[bytes, int] = {}  # ticks in a row over a learned entry limit

    def _limits(self, raw: bytes) -> _Limits:
        hit = self._cache.get(raw)
        if hit is None:
            addr = bytes_addr(raw)
            plen = 32 if addr.version == 4 else self._config.shield.ipv6_prefix_len
            target = ipaddress.ip_network((addr, plen), strict=False)
            group = self._config.group_of(target)
            entry = _table(group.thresholds)
            entry[entry == 0] = math.inf  # 0 means "no limit"
            floor = _table(group.baseline.floor)
            hit = _Limits(target, group, entry, entry * group.exit_ratio, floor)
            if len(self._cache) > 200_000:  # bounded like the kernel's LRU
                self._cache.clear()
            self._cache[raw] = hit
        return hit

    def observe(self, rates: RateBatch, now: float, active: Collection[IPNetwork] = ()) -> list[Observation]:
        """Destinations over their limits; those in ``active`` (under attack) over their exit limits."""
        out: list[Observation] = []
        if len(rates) == 0:
            self._streak = {}
            return out
        x = np.stack([rates[m] for m in RATE_METRICS], axis=-1)  # (n, categories, metrics)
        # Cheap prefilter: rows below the smallest limit of any group cannot fire.
        busy = np.flatnonzero((x >= self._min).any(axis=(1, 2)))
        if len(busy) == 0:
            self._streak = {}
            return out
        use_base = self.baselines is not None and self._config.baseline.enabled
        learned = np.zeros(len(busy), dtype=bool)
        level = spread = np.zeros(0)
        if use_base and self.baselines is not None:
            learned, level, spread = self.baselines.lookup(rates["dst"][busy], now)
        # Every busy row's limits at once, then the (few) rows over them one by one: a
        # loop over the busy rows cost ~25 us each, several a tick.
        raws = [r.tobytes() for r in rates["dst"][busy]]
        lims = [self._limits(raw) for raw in raws]
        under = np.array([lim.target in active for lim in lims], dtype=bool)
        entry = np.stack([lim.entry for lim in lims])  # (busy, categories, metrics)
        exit_ = np.stack([lim.exit for lim in lims])
        based = np.zeros(len(busy), dtype=bool)
        if use_base:
            sens = np.array([lim.group.baseline.sensitivity for lim in lims])
            based = learned & (sens > 0)
            b = np.flatnonzero(based)
            if len(b):
                # elementwise as entry_exit is for one row: the same limits, row by row
                ratio = np.array([lims[j].group.exit_ratio for j in b])[:, None, None]
                floor = np.stack([lims[j].floor for j in b])
                entry[b], exit_[b] = entry_exit(level[b], spread[b], sens[b][:, None, None], floor, ratio)
        limit: F64 = np.where(under[:, None, None], exit_, entry)
        over_all = np.any(x[busy] > limit, axis=2)  # (busy, categories)
        streak: dict[bytes, int] = {}
        for j in np.flatnonzero(over_all.any(axis=1)).tolist():
            i, raw, lim, over = int(busy[j]), raws[j], lims[j], over_all[j]
            basis: Literal["static", "baseline"] = "baseline" if based[j] else "static"
            if basis == "baseline" and not under[j]:
                # a learned limit is a statistical one: a lone tick over it is a burst,
                # BASELINE_TICKS in a row a flood
                streak[raw] = self._streak.get(raw, 0) + 1
                if streak[raw] < BASELINE_TICKS:
                    continue
            cats = tuple(Category(int(c)) for c in np.flatnonzero(over))
            row = rates[i]
            out.append(
                Observation(
                    target=lim.target,
                    group=lim.group.name,
                    categories=cats,
                    pps=float(row["pps"][over].sum()),
                    bps=float(row["bps"][over].sum()),
                    total_pps=float(row["pps"].sum()),
                    now=now,
                    flows=float(row["flows"][over].sum()),
                    basis=basis,
                    limit_pps=float(np.where(np.isfinite(entry[j][over, 0]), entry[j][over, 0], 0.0).sum()),
                )
            )
        self._streak = streak
        return out

    def _smallest(self) -> F64:
        """Per metric, the smallest limit any destination can be held to."""
        lows = []
        for g in self._config.groups:
            t = _table(g.thresholds)
            t[t == 0] = math.inf
            lows.append(t.min(axis=0) * g.exit_ratio)
            if self._config.baseline.enabled and g.baseline.sensitivity > 0:
                f = _table(g.baseline.floor)
                f[f == 0] = math.inf
                lows.append(f.min(axis=0) * g.exit_ratio)
        out: F64 = np.min(np.array(lows), axis=0)
        return out


def _table(t: Thresholds) -> F64:
    """(categories, metrics) of a thresholds table."""
    return np.array([t.for_category(c).limits() for c in Category], dtype=float)
