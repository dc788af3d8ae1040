"""Baselines: what normal traffic looks like, learned online per destination and category.

For every destination it sees, :class:`Baselines` learns, per category and per rate
(:data:`~ddos_shield.records.RATE_METRICS`: packets, bits and new flows per second),
a **level** (a moving average of the rate) and a **spread** (a moving average of the
rate's deviation from the level, root mean square over the ticks).  The threshold
detector then calls a rate an attack when it exceeds ``level + sensitivity x spread``
*and* the group's floor (:func:`entry_exit`), once the destination has learned for
``learning_seconds``; until then its static thresholds apply.

Rates are those of each tick, as the detector compares them.  Each tick adds its rates
(weighted by the time since the previous tick) into the current step of :data:`STEP_SECONDS`; a
destination absent from a tick's batch had no traffic then and counts as zero.  At the
end of each step the step's mean rate and its deviation from the level move the level
and the spread, by the weight of the step in ``adapt_seconds`` (an exponential average;
an exact mean while less history exists).

How it stays robust to the attacks it sees:

* time under attack is not learned at all: the engine passes the targets of the
  active attacks, and their destinations are frozen while the attack lasts (its quiet
  spells between pulses included); frozen time does not count towards learning;
* below detection, a step's mean is clipped to ``level + CLIP_SPREADS x spread`` and
  its deviation to ``CLIP_SPREADS x spread`` before they are averaged (a Huber-style
  estimator), so a flood under the thresholds moves the level only by a bounded step
  a second.  Clipping starts once a destination has learned a tenth of its learning
  period (before, there is no level to clip against: an attack in the first minutes
  is held off only by the static thresholds, which apply throughout learning).

How it learns the day: each step also updates the profile of its hour of the day (24
slots, UTC: only the period matters).  An hour's slot is clipped against its own level,
and only once it has learned :data:`SLOT_MIN_SECONDS`: the first time an hour comes
round, its usual rise is learned as it comes (what is detected as an attack is still
left out), which is why the learning period should cover a whole day (the default).
Once a destination has a day of history and the hour's slot has learned
:data:`SLOT_MIN_SECONDS`, the limits take, per rate, the larger of the current and the
hour's (and the next hour's) level and spread, so the usual Monday-morning rise is
known in advance instead of being chased by the moving average.

Memory is bounded: at most ``max_destinations`` are kept (about 4 KB each); when full,
the least recently active destination still learning goes first, then the least
recently active learned one, and at most :data:`ADMIT_WHEN_FULL` new destinations are
admitted a tick (a sweep across a big prefix cannot flush what has been learned).
No I/O and no clock: :meth:`Baselines.state` and :meth:`Baselines.from_state` turn it
into arrays and back, and the engine stores them (:mod:`ddos_shield.store.baseline`).

>>> from ddos_shield.config import Baseline as Settings
>>> from ddos_shield.records import empty_rates, addr_bytes, Category
>>> b = Baselines(Settings(learning_seconds=10, adapt_seconds=60))
>>> r = empty_rates(1)
>>> r["dst"][0] = list(addr_bytes("203.0.113.10"))
>>> r["pps"][0, Category.UDP] = 100.0
>>> for i in range(200):
...     b.learn(r, now=1000.0 + i * 0.1)
>>> learned, level, spread = b.lookup(r["dst"], now=1020.0)
>>> bool(learned[0]), round(float(level[0, Category.UDP, 0]))
(True, 100)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from ddos_shield.config import Baseline as Settings
from ddos_shield.dataplane.table import find_keys, key_words, sort_keys
from ddos_shield.records import RATE_METRICS, Category, IPNetwork, RateBatch, addr_bytes, addresses_in, bytes_addr

#: format version of :meth:`Baselines.state` (the stored file); a different one is refused
FORMAT_VERSION = 1
#: rates are folded into learning steps this long (seconds)
STEP_SECONDS = 5.0
#: before averaging, a rate is clipped to this many spreads above the level
CLIP_SPREADS = 4.0
#: a spread is taken as at least this share of the level (a perfectly steady stream
#: would otherwise make its smallest rise an attack)
MIN_SPREAD_SHARE = 0.05
#: and at least this much (per second): a silent destination's first packets are not news
MIN_SPREAD = 1.0
#: clipping starts once a destination has learned this share of the learning period
#: (before, there is no level to clip against)
WARM_SHARE = 0.1
#: the daily profile is used once a destination has this much history...
SEASON_AFTER_SECONDS = 86400.0
#: ...and the hour's slot has learned this long
SLOT_MIN_SECONDS = 600.0
#: an hour's slot forgets over this many days of that hour
SEASON_MEMORY_DAYS = 7.0
HOURS = 24
#: new destinations admitted a tick at most once the table is full
ADMIT_WHEN_FULL = 64

NCAT = len(Category)
NMET = len(RATE_METRICS)
F64 = npt.NDArray[np.float64]

_GROW = 256
#: odd multiplier (2^64 / golden ratio) folding a key's high word into its low one
_FOLD = np.uint64(0x9E3779B97F4A7C15)


class Baselines:
    """See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._n = 0
        self._alloc(_GROW)
        self._sorted_hi = np.zeros(0, dtype=np.uint64)
        self._sorted_lo = np.zeros(0, dtype=np.uint64)
        self._sorted_slot = np.zeros(0, dtype=np.int64)
        self._fold = np.zeros(0, dtype=np.uint64)
        self._fold_hi = self._fold_lo = np.zeros(0, dtype=np.uint64)
        self._fold_slot = np.zeros(0, dtype=np.int64)
        self._fold_ok = False
        self._last_now: float | None = None
        self._step_start: float | None = None

    # ---- storage ---------------------------------------------------------------------

    def _alloc(self, cap: int) -> None:
        self.keys = np.zeros((cap, 16), dtype=np.uint8)
        self.first_seen = np.zeros(cap)
        self.last_active = np.zeros(cap)
        self.learned = np.zeros(cap)  # seconds learned (frozen time excluded)
        self.level = np.zeros((cap, NCAT, NMET))
        self.spread = np.zeros((cap, NCAT, NMET))
        self.hour_level = np.zeros((cap, HOURS, NCAT, NMET), dtype=np.float32)
        self.hour_spread = np.zeros((cap, HOURS, NCAT, NMET), dtype=np.float32)
        self.hour_seconds = np.zeros((cap, HOURS), dtype=np.float32)
        # the current step
        self._acc_x = np.zeros((cap, NCAT, NMET))  # sum of rate x seconds
        self._acc_x2 = np.zeros((cap, NCAT, NMET))  # sum of rate^2 x seconds
        self._acc_skip = np.zeros(cap)  # seconds of the step not learned (frozen, not yet created)

    _ARRAYS = (
        "keys",
        "first_seen",
        "last_active",
        "learned",
        "level",
        "spread",
        "hour_level",
        "hour_spread",
        "hour_seconds",
        "_acc_x",
        "_acc_x2",
        "_acc_skip",
    )

    def _grow(self, need: int) -> None:
        cap = len(self.keys)
        if need <= cap:
            return
        new = min(max(need, cap * 2), max(self.settings.max_destinations, need))
        for name in self._ARRAYS:
            old = getattr(self, name)
            arr = np.zeros((new, *old.shape[1:]), dtype=old.dtype)
            arr[: self._n] = old[: self._n]
            setattr(self, name, arr)

    def __len__(self) -> int:
        return self._n

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        if self._n > settings.max_destinations:
            self._evict(self._n - settings.max_destinations, now=self._last_now or 0.0)

    # ---- finding destinations ------------------------------------------------------------

    def _reindex(self) -> None:
        hi, lo = key_words(self.keys[: self._n])
        order = sort_keys(hi, lo)
        self._sorted_hi, self._sorted_lo = hi[order], lo[order]
        self._sorted_slot = order.astype(np.int64)
        # the keys folded into one word each, sorted: a lookup is then one binary search
        # and a check of both words, several times cheaper than find_keys on mixed IPv4
        # and IPv6 keys (twice a tick); used while no two keys fold alike
        fold = (hi * _FOLD) ^ lo
        by_fold = np.argsort(fold)
        self._fold = fold[by_fold]
        self._fold_hi, self._fold_lo = hi[by_fold], lo[by_fold]
        self._fold_slot = by_fold.astype(np.int64)
        self._fold_ok = bool((self._fold[1:] != self._fold[:-1]).all())

    def _find(self, dst: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        """Slot of each 16-byte key, -1 where none."""
        hi, lo = key_words(dst)
        n = len(self._fold)
        if self._fold_ok and n:
            at = np.minimum(np.searchsorted(self._fold, (hi * _FOLD) ^ lo), n - 1)
            hit = (self._fold_hi[at] == hi) & (self._fold_lo[at] == lo)
            slots: npt.NDArray[np.int64] = np.where(hit, self._fold_slot[at], -1)
            return slots
        pos, found = find_keys(self._sorted_hi, self._sorted_lo, hi, lo)
        out = np.full(len(dst), -1, dtype=np.int64)
        out[found] = self._sorted_slot[pos[found]]
        return out

    def _add(self, dst: npt.NDArray[np.uint8], now: float, since: float) -> None:
        """Slots for new keys (distinct, absent), evicting when full; their learning
        starts at ``since``."""
        cap = self.settings.max_destinations
        k = min(len(dst), cap - self._n + ADMIT_WHEN_FULL, cap)
        dst = dst[:k]
        if self._n + k > cap:
            self._evict(self._n + k - cap, now)
        self._grow(self._n + k)
        slots = np.arange(self._n, self._n + k, dtype=np.int64)
        self._n += k
        self.keys[slots] = dst
        self.first_seen[slots] = now
        self.last_active[slots] = now
        for name in ("learned", "level", "spread", "hour_level", "hour_spread", "hour_seconds"):
            getattr(self, name)[slots] = 0
        self._acc_x[slots] = 0
        self._acc_x2[slots] = 0
        # the part of the step before the destination existed is not its to learn
        self._acc_skip[slots] = max(0.0, since - self._step_start) if self._step_start is not None else 0.0
        self._reindex()

    def _evict(self, count: int, now: float) -> None:
        """Drop ``count`` destinations: those still learning first, the least recently active first."""
        n = self._n
        done = self.learned[:n] >= self.settings.learning_seconds
        order = np.lexsort((self.last_active[:n], done))
        keep = np.sort(order[count:])
        for name in self._ARRAYS:
            arr = getattr(self, name)
            arr[: len(keep)] = arr[keep]
        self._n = len(keep)
        self._reindex()

    def _slots_in(self, nets: Iterable[IPNetwork]) -> npt.NDArray[np.int64]:
        """Slots of the destinations inside ``nets``: host targets (an IPv4 address, an
        IPv6 prefix of /64 or longer, as the rate rows key them) by one vectorised lookup,
        wider ones (carpet bombing) by a scan of the keys."""
        keys = self.keys[: self._n]
        mask = np.zeros(self._n, dtype=bool)
        hosts = []
        for net in nets:
            if net.prefixlen == 32 if net.version == 4 else net.prefixlen >= 64:
                hosts.append(addr_bytes(net.network_address))
            else:
                mask |= addresses_in(keys, net)
        if hosts:
            found = self._find(np.frombuffer(b"".join(hosts), dtype=np.uint8).reshape(-1, 16))
            mask[found[found >= 0]] = True
        return np.flatnonzero(mask).astype(np.int64)

    # ---- learning ----------------------------------------------------------------------

    def learn(self, rates: RateBatch, now: float, frozen: Iterable[IPNetwork] = ()) -> None:
        """Fold one tick's rates in.  ``frozen``: prefixes under attack, not learned now.

        The tick's rates are taken to hold since the previous call; a destination not in
        ``rates`` (or in it with zero rates) had no traffic.
        """
        if self._last_now is None or self._step_start is None or now < self._last_now:
            self._last_now = self._step_start = now
            return
        dt = now - self._last_now
        self._last_now = now
        nets = list(frozen)
        # a destination without packets has no bits nor flows either
        busy = np.flatnonzero(rates["pps"].any(axis=1)) if len(rates) else np.zeros(0, dtype=np.intp)
        slots = np.zeros(0, dtype=np.int64)
        if len(busy):
            dst = np.ascontiguousarray(rates["dst"][busy])
            slots = self._find(dst) if self._n else np.full(len(busy), -1, dtype=np.int64)
            if (slots < 0).any():
                # a batch holds each destination once; the new ones get slots (which may
                # evict others and move slots: look everything up again)
                self._add(dst[slots < 0], now, since=now - dt)
                slots = self._find(dst)
                keep = slots >= 0
                busy, slots = busy[keep], slots[keep]
        frozen_slots = self._slots_in(nets) if nets and self._n else np.zeros(0, dtype=np.int64)
        if len(slots):
            live = ~np.isin(slots, frozen_slots)
            xs = _stack(rates[busy[live]]).reshape(-1, NCAT * NMET)
            # only the rates that are not zero (most destinations see a few categories)
            row, col = np.nonzero(xs)
            v = xs[row, col]
            at = slots[live][row] * (NCAT * NMET) + col
            self._acc_x.reshape(-1)[at] += v * dt
            self._acc_x2.reshape(-1)[at] += v * v * dt
            self.last_active[slots] = now
        if len(frozen_slots):
            self._acc_skip[frozen_slots] += dt
        if now - self._step_start >= STEP_SECONDS:
            self._close_step(now)

    def _close_step(self, now: float) -> None:
        """Fold the step's mean rate and its deviation from the level into the averages.

        Per destination, over the seconds of the step it learned (``d``): the mean rate,
        and the root mean square deviation of the tick rates from the level (ticks in
        which it was absent had rate 0).  Both are clipped (see the module docstring)
        before they move the level and the spread.
        """
        n = self._n
        span = now - (self._step_start or now)
        mid = ((self._step_start or now) + now) / 2
        self._step_start = now
        if n == 0 or span <= 0:
            return
        d = span - self._acc_skip[:n]
        rows = np.flatnonzero(d > 1e-9)
        # the usual case, every destination: a view, not a gather
        ok: npt.NDArray[np.int64] | slice = slice(0, n) if len(rows) == n else rows
        if n:
            dd = d[ok]
            w = dd[:, None, None]
            mean = self._acc_x[ok] / w
            sq = self._acc_x2[ok] / w
            self.learned[ok] += dd
            tau = self.settings.adapt_seconds
            # bias-corrected: the first steps are an exact mean, then an exponential average
            a = np.maximum(-np.expm1(-dd / tau), dd / self.learned[ok])[:, None, None]
            warm = (self.learned[ok] - dd >= WARM_SHARE * self.settings.learning_seconds)[:, None, None]
            level, spread = _fold(self.level[ok], self.spread[ok], mean, sq, a, warm)
            self.level[ok], self.spread[ok] = level, spread
            # the hour's profile, clipped against itself once its slot has learned
            h = int(mid // 3600) % HOURS
            hs = self.hour_seconds[ok, h].astype(np.float64)
            hwarm = (hs >= SLOT_MIN_SECONDS)[:, None, None]
            hs += dd
            self.hour_seconds[ok, h] = hs
            ah = np.maximum(-np.expm1(-dd / (SEASON_MEMORY_DAYS * 3600.0)), dd / hs)[:, None, None]
            hl, hsp = _fold(
                self.hour_level[ok, h].astype(np.float64),
                self.hour_spread[ok, h].astype(np.float64),
                mean,
                sq,
                ah,
                hwarm,
            )
            self.hour_level[ok, h], self.hour_spread[ok, h] = hl, hsp
        self._acc_x[:n] = 0
        self._acc_x2[:n] = 0
        self._acc_skip[:n] = 0

    # ---- reading -----------------------------------------------------------------------

    def lookup(self, dst: npt.NDArray[np.uint8], now: float) -> tuple[npt.NDArray[np.bool_], F64, F64]:
        """For 16-byte keys: (learned, level, spread), the last two (n, categories, metrics).

        ``learned`` is False for destinations unknown or still learning (their level and
        spread are zero).  With a day of history, level and spread are the larger of the
        current ones and those of this hour and the next (see the module docstring).
        """
        q = len(dst)
        level = np.zeros((q, NCAT, NMET))
        spread = np.zeros((q, NCAT, NMET))
        learned = np.zeros(q, dtype=bool)
        if q == 0 or self._n == 0:
            return learned, level, spread
        slots = self._find(np.ascontiguousarray(dst))
        have = np.flatnonzero(slots >= 0)
        s = slots[have]
        done = self.learned[s] >= self.settings.learning_seconds
        have, s = have[done], s[done]
        learned[have] = True
        level[have] = self.level[s]
        spread[have] = self.spread[s]
        seasoned = now - self.first_seen[s] >= SEASON_AFTER_SECONDS
        h = int(now // 3600) % HOURS
        for hour in (h, (h + 1) % HOURS):
            use = seasoned & (self.hour_seconds[s, hour] >= SLOT_MIN_SECONDS)
            rows, ss = have[use], s[use]
            level[rows] = np.maximum(level[rows], self.hour_level[ss, hour])
            spread[rows] = np.maximum(spread[rows], self.hour_spread[ss, hour])
        return learned, level, spread

    def summary(self, now: float) -> dict[str, Any]:
        """Counts for the live view and ``status``."""
        n = self._n
        done = int((self.learned[:n] >= self.settings.learning_seconds).sum())
        seasoned = int((now - self.first_seen[:n] >= SEASON_AFTER_SECONDS).sum())
        return {"destinations": n, "learned": done, "learning": n - done, "daily_profile": seasoned}

    def rows(self, now: float, limit: int | None = None) -> list[dict[str, Any]]:
        """One dict per destination, the most recently active first: what ``ddos-shield
        baseline show`` prints (levels and spreads of the categories with traffic)."""
        n = self._n
        order = np.argsort(-self.last_active[:n], kind="stable")[:limit]
        out = []
        for s in order.tolist():
            learned, level, spread = self.lookup(self.keys[s : s + 1], now)
            if not learned[0]:
                level, spread = self.level[s : s + 1], self.spread[s : s + 1]
            cats = {}
            for c in Category:
                if level[0, c].any():
                    cats[c.name.lower()] = {
                        m: {"level": round(float(level[0, c, i]), 1), "spread": round(float(spread[0, c, i]), 1)}
                        for i, m in enumerate(RATE_METRICS)
                    }
            out.append(
                {
                    "destination": str(bytes_addr(self.keys[s])),
                    "learned_seconds": round(float(self.learned[s]), 1),
                    "learning": not bool(learned[0]),
                    "daily_profile": bool(now - self.first_seen[s] >= SEASON_AFTER_SECONDS),
                    "last_active": round(float(self.last_active[s]), 3),
                    "categories": cats,
                }
            )
        return out

    # ---- persistence (arrays only; the engine does the I/O) --------------------------------

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Everything learned, as named arrays (the current step is not kept)."""
        n = self._n
        out = {name: getattr(self, name)[:n].copy() for name in self._ARRAYS if not name.startswith("_")}
        out["format_version"] = np.array(FORMAT_VERSION)
        out["shape"] = np.array([NCAT, NMET, HOURS])
        return out

    @classmethod
    def from_state(cls, settings: Settings, arrays: dict[str, npt.NDArray[Any]]) -> Baselines:
        """Inverse of :meth:`state`; raises ValueError naming what does not fit."""
        version = int(arrays["format_version"]) if "format_version" in arrays else None
        if version != FORMAT_VERSION:
            raise ValueError(f"baseline format version {version}, this shield reads version {FORMAT_VERSION}")
        shape = tuple(int(v) for v in arrays["shape"])
        if shape != (NCAT, NMET, HOURS):
            raise ValueError(f"baseline shape {shape} (categories, rates, hours), expected {(NCAT, NMET, HOURS)}")
        b = cls(settings)
        n = len(arrays["keys"])
        b._grow(n)
        for name in cls._ARRAYS:
            if name.startswith("_"):
                continue
            arr = arrays.get(name)
            want = getattr(b, name)
            if arr is None or arr.shape[1:] != want.shape[1:] or len(arr) != n:
                raise ValueError(f"baseline array {name!r}: missing or of the wrong shape")
            want[:n] = arr
        if not (np.isfinite(b.level[:n]).all() and np.isfinite(b.spread[:n]).all()):
            raise ValueError("baseline holds values that are not finite")
        b._n = n
        b._reindex()
        if n > settings.max_destinations:
            b._evict(n - settings.max_destinations, now=0.0)
        return b


def _stack(rates: RateBatch) -> F64:
    """(n, categories, metrics) of a rate batch."""
    out = np.empty((len(rates), NCAT, NMET))
    for i, m in enumerate(RATE_METRICS):
        out[:, :, i] = rates[m]
    return out


def _fold(level: F64, spread: F64, mean: F64, sq: F64, a: F64, warm: npt.NDArray[np.bool_]) -> tuple[F64, F64]:
    """One step of the clipped moving averages: (level, spread) after a step whose tick
    rates had ``mean`` and mean square ``sq``, with weight ``a``; clipped where ``warm``."""
    # a first step (a = 1) has no level yet: its deviation is from its own mean
    ref = np.where(a >= 1.0, mean, level)
    rms = np.sqrt(np.maximum(sq - 2 * ref * mean + ref * ref, 0.0))
    bound = CLIP_SPREADS * _spread_eff(level, spread)
    mean = np.where(warm, np.minimum(mean, level + bound), mean)
    rms = np.where(warm, np.minimum(rms, bound), rms)
    return level + a * (mean - level), spread + a * (rms - spread)


def _spread_eff(level: F64, spread: F64) -> F64:
    out: F64 = np.maximum(np.maximum(spread, MIN_SPREAD_SHARE * level), MIN_SPREAD)
    return out


def entry_exit(
    level: F64, spread: F64, sensitivity: float | F64, floor: F64, exit_ratio: float | F64
) -> tuple[F64, F64]:
    """Entry and exit limits from a learned level and spread, (..., categories, metrics).

    Elementwise: ``sensitivity``, ``floor`` and ``exit_ratio`` may also be arrays that
    broadcast against ``level`` (one row of each per destination, of different groups).
    ``floor`` (categories, metrics) holds the group's floors, 0 where the rate is not
    judged (its limits are then infinite).  Entry: above ``level + sensitivity x spread``
    and above the floor.  Exit (hysteresis): ``exit_ratio`` of the excess over the level,
    and of the floor.
    """
    excess = sensitivity * _spread_eff(level, spread)
    entry = np.maximum(floor, level + excess)
    exit_ = np.maximum(floor * exit_ratio, level + exit_ratio * excess)
    off = floor <= 0
    entry = np.where(off, math.inf, entry)
    exit_ = np.where(off, math.inf, exit_)
    return entry, exit_
