"""Distinct items per group over a sliding window, counted as samples arrive.

The scan and connection detectors count, every half second, distinct ports per
(source, host), distinct hosts per (source, port) and distinct connections per
(source, host) over a window of many seconds; counted from scratch each time, that
is a sort of the whole window (hundreds of thousands of samples under a flood) twice
a second, which cost more than everything else the engine does.  Almost always no
group comes near its threshold.  :class:`DistinctWindow` keeps each (group, item)
pair once, with the last time it was seen, merged in as samples arrive; the largest
count of items in one group is then read without a sort.  Groups are hashed into the
key (two groups that collide only add up, so the count can only be too high) and
items are kept exactly, so the count is an upper bound: when it is below a threshold
no group reaches it and the exact count can be skipped; when it is not, the
detector counts exactly as before.

:class:`AddressIds` numbers addresses (exactly, so that a host can be an item).

>>> w = DistinctWindow()
>>> keys = (np.array([7, 7, 7, 9], dtype=np.uint64) << np.uint64(16)) | np.array([80, 443, 80, 22], dtype=np.uint64)
>>> w.add(keys, np.array([1.0, 2.0, 3.0, 3.0]))
>>> w.max_per_group(0.0, 16), w.max_per_group(2.5, 16)
(2, 1)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]

#: odd 64-bit multipliers for hashing the words of a group (from splitmix64 and
#: the golden ratio): any odd constants would do, these spread bits well
_MIX = [np.uint64(m) for m in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)]


def group_hash(*columns: npt.NDArray[np.uint64]) -> U64:
    """A 64-bit hash of each row's words (equal rows hash alike; the top bits are the
    best mixed)."""
    h = np.zeros(len(columns[0]), dtype=np.uint64)
    for i, col in enumerate(columns):
        h = (h ^ col.astype(np.uint64, copy=False)) * _MIX[i % len(_MIX)]
        h ^= h >> np.uint64(29)
    out: U64 = h * _MIX[0]
    return out


def address_words(column: npt.NDArray[np.uint8]) -> tuple[U64, U64]:
    """A 16-byte address column as two 64-bit words a row (for hashing)."""
    w = column.view("<u8") if column.strides[-1] == 1 else np.ascontiguousarray(column).view("<u8")
    return w[:, 0], w[:, 1]


class DistinctWindow:
    """(group, item) keys with the last time each was seen: see the module docstring.

    A key is ``group_hash << item_bits | item``: the item in the low ``item_bits``
    bits, exact; the group's hash above.  New keys are logged as they come and merged
    into the sorted table when a count is asked for.
    """

    def __init__(self) -> None:
        self._keys: U64 = np.zeros(0, dtype=np.uint64)  # sorted, distinct
        self._ts = np.zeros(0, dtype=np.float64)
        self._log_keys: list[U64] = []
        self._log_ts: list[npt.NDArray[np.float64]] = []

    def __len__(self) -> int:
        return len(self._keys) + sum(len(k) for k in self._log_keys)

    def add(self, keys: U64, ts: npt.NDArray[np.float64]) -> None:
        if len(keys):
            self._log_keys.append(keys)
            self._log_ts.append(np.asarray(ts, dtype=np.float64))

    def max_per_group(self, horizon: float, item_bits: int) -> int:
        """The most items any group has had since ``horizon`` (an upper bound, see the
        module docstring); keys last seen before it are dropped."""
        self._merge()
        keep = self._ts >= horizon
        if not keep.all():
            self._keys, self._ts = self._keys[keep], self._ts[keep]
        if not len(self._keys):
            return 0
        groups = self._keys >> np.uint64(item_bits)
        starts = np.flatnonzero(np.concatenate(([True], groups[1:] != groups[:-1])))
        return int(np.diff(np.append(starts, len(groups))).max())

    def _merge(self) -> None:
        if not self._log_keys:
            return
        keys = np.concatenate(self._log_keys)
        ts = np.concatenate(self._log_ts)
        self._log_keys, self._log_ts = [], []
        order = np.argsort(keys)
        keys, ts = keys[order], ts[order]
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        keys, ts = keys[starts], np.maximum.reduceat(ts, starts)
        at = np.searchsorted(self._keys, keys)
        found = at < len(self._keys)
        found[found] = self._keys[at[found]] == keys[found]
        old = at[found]
        self._ts[old] = np.maximum(self._ts[old], ts[found])
        new = ~found
        self._keys = np.insert(self._keys, at[new], keys[new])
        self._ts = np.insert(self._ts, at[new], ts[new])


def unique_addresses(column: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.void], npt.NDArray[np.int64]]:
    """``np.unique`` of a 16-byte address column as ``V16`` values, with the inverse:
    the same result, but sorted as two 64-bit words (one integer sort when every
    address shares its first half, as IPv4 addresses do) instead of as opaque bytes,
    which numpy sorts many times slower."""
    raw = np.ascontiguousarray(column).view("V16").ravel()
    n = len(raw)
    if not n:
        return raw, np.zeros(0, dtype=np.int64)
    words = raw.view(">u8").reshape(-1, 2)
    hi, lo = words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)
    one_high = bool((hi == hi[0]).all())
    # one 64-bit sort: of the second halves when the first are all alike, else of both
    # folded into one word (checked below: two addresses folding alike take the slow way)
    key = lo if one_high else (hi * _MIX[0]) ^ lo
    order = np.argsort(key)
    srt = key[order]
    start = np.concatenate(([True], srt[1:] != srt[:-1]))
    group = np.cumsum(start) - 1
    reps = order[start]  # one row of each distinct key
    if not one_high:
        rep = reps[group]
        if not (bool((hi[order] == hi[rep]).all()) and bool((lo[order] == lo[rep]).all())):
            uniq, inv = np.unique(raw, return_inverse=True)
            return uniq, inv.ravel().astype(np.int64)
        by_bytes = np.lexsort((lo[reps], hi[reps]))  # the distinct keys in byte order
        rank = np.empty(len(reps), dtype=np.int64)
        rank[by_bytes] = np.arange(len(reps))
        group, reps = rank[group], reps[by_bytes]
    inv = np.empty(n, dtype=np.int64)
    inv[order] = group
    return raw[reps], inv


class AddressIds:
    """Small exact numbers for 16-byte addresses, in the order first seen.

    Numbers are never reused; past ``limit`` addresses the numbering starts again
    (:attr:`generation` counts the restarts, so that a caller can tell that numbers
    from before no longer mean the same address).
    """

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self.generation = 0
        self._ids: dict[bytes, int] = {}

    def ids(self, column: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        if not len(column):
            return np.zeros(0, dtype=np.int64)
        uniq, inv = unique_addresses(column)  # a tick's samples hold few distinct hosts
        if len(self._ids) + len(uniq) > self.limit:
            self._ids = {}
            self.generation += 1
        table = self._ids
        nums = np.array([table.setdefault(u.tobytes(), len(table)) for u in uniq], dtype=np.int64)
        out: npt.NDArray[np.int64] = nums[inv]
        return out
