"""Per-destination counters kept in user space, as the kernel keeps them.

Traffic batches that did not come through the kernel (flow telemetry, a mirror port,
a replayed capture) are counted here exactly as the XDP program counts packets: per
protected destination (IPv4 address, or IPv6 prefix of ``ipv6_prefix_len``) and
category, dropped traffic apart.  The engine merges these counters with the data
plane's.

Destinations are found by their 16-byte key read as two big-endian 64-bit words
(:func:`key_words`): the table keeps the keys sorted and looks a batch's distinct
destinations up with a vectorised binary search (:func:`find_keys`), adds the new ones
in one insertion, and sums packets and bytes per (destination, category) with
``np.bincount`` -- no Python work per destination or per packet.

>>> from ddos_shield.records import empty_traffic, addr_bytes, as_network
>>> t = CounterTable({as_network("203.0.113.0/24"): 0})
>>> b = empty_traffic(3); b["dst"] = list(addr_bytes("203.0.113.10")); b["packets"] = 5; b["category"] = 2
>>> t.add(b)
15
>>> int(t.snapshot()["pkts"][0][2])
15
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ddos_shield.records import COUNTER_DTYPE, IPNetwork, PacketFlag, TrafficBatch, net_key

#: destinations kept at most (the kernel's LRU holds as many); the least recently seen go first
MAX_DESTINATIONS = 131072

U64 = npt.NDArray[np.uint64]
_NCAT = COUNTER_DTYPE["pkts"].shape[0]
#: packet or byte sums below this are exact in float64, so np.bincount can add them
_EXACT = float(1 << 53)
#: odd multiplier (2^64 / golden ratio) folding a key's high word into its low one
_FOLD = np.uint64(0x9E3779B97F4A7C15)
_IPV6 = int(PacketFlag.IPV6)


def key_words(column: npt.NDArray[Any]) -> tuple[U64, U64]:
    """A 16-byte address column as (high, low) 64-bit words, big-endian: comparing the
    pairs orders the keys as their bytes do."""
    words = np.ascontiguousarray(column, dtype=np.uint8).view(">u8") if column.strides[-1] != 1 else column.view(">u8")
    return words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)


def words_key(hi: U64, lo: U64) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`key_words`: an (n, 16) byte column."""
    out = np.empty((len(hi), 2), dtype=">u8")
    out[:, 0] = hi
    out[:, 1] = lo
    return out.view(np.uint8).reshape(len(hi), 16)


#: keys looked up at once above which they are sorted first (binary searches for sorted
#: keys walk the same path and run several times faster)
_SORT_QUERIES = 32
#: runs of equal high words searched one by one at most (IPv4 keys make one run)
_RUNS = 8


def sort_keys(hi: U64, lo: U64) -> npt.NDArray[np.intp]:
    """The order that sorts (hi, lo) pairs (equal pairs in any order).

    Sorted on the high words, then each run of equal high words on its low words:
    IPv4 keys make one such run and IPv6 keys up to /64 none, so this is one or two
    quicksorts where ``np.lexsort`` would take two stable sorts, several times slower.
    """
    n = len(hi)
    if n and bool((hi == hi[0]).all()):
        return np.argsort(lo)
    order: npt.NDArray[np.intp] = np.argsort(hi)
    sorted_hi = hi[order]
    cut = np.flatnonzero(sorted_hi[1:] != sorted_hi[:-1]) + 1
    starts = np.concatenate(([0], cut))
    ends = np.concatenate((cut, [n]))
    runs = np.flatnonzero(ends - starts > 1)
    if len(runs) > _RUNS:
        return np.lexsort((lo, hi))
    for r in runs.tolist():
        s, e = int(starts[r]), int(ends[r])
        seg = order[s:e]
        order[s:e] = seg[np.argsort(lo[seg])]
    return order


def find_keys(sorted_hi: U64, sorted_lo: U64, hi: U64, lo: U64) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Where each (hi, lo) key is, or would be inserted, in keys sorted by (hi, lo).

    Returns (position, found).  A ``searchsorted`` on the high words finds each key's
    run of equal high words; in a run of one key a comparison finishes it, in a longer
    run (IPv4 keys all share the high word 0) a ``searchsorted`` on its low words.
    """
    n, q = len(sorted_hi), len(hi)
    if n == 0 or q == 0:
        return np.zeros(q, dtype=np.int64), np.zeros(q, dtype=bool)
    h0 = sorted_hi[0]
    if h0 == sorted_hi[-1] and bool((hi == h0).all()):
        # one high word on both sides (IPv4 keys: the engine's usual case): one binary
        # search on the low words gives what the general path does, in a few calls
        # where that one takes some twenty (it runs several times a tick)
        pos1 = np.searchsorted(sorted_lo, lo, "left").astype(np.int64)
        found1 = sorted_lo[np.minimum(pos1, n - 1)] == lo
        found1 &= pos1 < n
        return pos1, found1
    order = None
    if q > _SORT_QUERIES:
        order = sort_keys(hi, lo)
        hi, lo = hi[order], lo[order]
    a = np.searchsorted(sorted_hi, hi, "left").astype(np.int64)
    b = np.searchsorted(sorted_hi, hi, "right").astype(np.int64)
    pos = a + ((b - a == 1) & (sorted_lo[np.minimum(a, n - 1)] < lo))
    long = np.flatnonzero(b - a > 1)
    if len(long):
        at = a[long]
        # sorted keys give nondecreasing run starts
        starts = at[np.flatnonzero(np.diff(at, prepend=-1))] if order is not None else np.unique(at)
        if len(starts) <= _RUNS:
            for s0 in starts.tolist():
                sel = long if len(starts) == 1 else long[at == s0]
                pos[sel] = s0 + np.searchsorted(sorted_lo[s0 : int(b[sel[0]])], lo[sel])
        else:  # many long runs (IPv6 keys longer than 64 bits): one binary search over all
            lo_q, x, y = lo[long], a[long], b[long]
            while True:
                active = x < y
                if not active.any():
                    break
                mid = (x + y) >> 1
                right = active & (sorted_lo[np.minimum(mid, n - 1)] < lo_q)
                x = np.where(right, mid + 1, x)
                y = np.where(active & ~right, mid, y)
            pos[long] = x
    found = (pos < b) & (sorted_lo[np.minimum(pos, n - 1)] == lo)
    if order is None:
        return pos, found
    pos_out = np.empty(q, dtype=np.int64)
    found_out = np.empty(q, dtype=bool)
    pos_out[order] = pos
    found_out[order] = found
    return pos_out, found_out


def _net_words(net: IPNetwork) -> tuple[int, int, int, int]:
    """(mask hi, mask lo, value hi, value lo) of a network in the key word space."""
    plen, raw = net_key(net)
    mask = ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
    value = int.from_bytes(raw, "big") & mask
    return mask >> 64, mask & (2**64 - 1), value >> 64, value & (2**64 - 1)


class CounterTable:
    """See the module docstring."""

    def __init__(self, protected: Mapping[IPNetwork, int], ipv6_prefix_len: int = 64) -> None:
        mask = ((1 << 128) - 1) ^ ((1 << (128 - ipv6_prefix_len)) - 1)
        self._v6_hi, self._v6_lo = np.uint64(mask >> 64), np.uint64(mask & (2**64 - 1))
        self._rows = np.zeros(0, dtype=COUNTER_DTYPE)  # by slot; the first self._n are used
        self._seen = np.zeros(0, dtype=np.int64)
        self._n = 0
        # the used slots' keys, sorted, and the slot of each
        self._khi: U64 = np.zeros(0, dtype=np.uint64)
        self._klo: U64 = np.zeros(0, dtype=np.uint64)
        self._kslot = np.zeros(0, dtype=np.int64)
        # the same keys folded into one word each, sorted (rebuilt when keys change):
        # a batch whose destinations are all known finds each row's slot with one
        # binary search, without sorting the batch (see _known)
        self._fold: U64 | None = None  # None: keys fold alike, no index
        self._fold_stale = True
        self._fold_hi: U64 = np.zeros(0, dtype=np.uint64)
        self._fold_lo: U64 = np.zeros(0, dtype=np.uint64)
        self._fold_slot = np.zeros(0, dtype=np.int64)
        self._tick = 0
        self._last: tuple[U64, U64, npt.NDArray[np.int64]] | None = None
        self.set_protected(protected)

    def set_protected(self, protected: Mapping[IPNetwork, int]) -> None:
        self._protected = list(protected)
        self._nets = [_net_words(net) for net in self._protected]
        self._all = any(m_hi == 0 and m_lo == 0 for m_hi, m_lo, _, _ in self._nets)
        if self._n:
            keep = np.flatnonzero(self.protected_mask(self._rows["dst"][: self._n]))
            self._compact(keep)

    def protected_mask(self, column: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        """Which rows of a 16-byte destination column lie in a protected prefix."""
        if self._all:
            return np.ones(len(column), dtype=bool)
        return self._protected_words(*key_words(column))

    def _protected_words(self, hi: U64, lo: U64) -> npt.NDArray[np.bool_]:
        ok = np.zeros(len(hi), dtype=bool)
        for m_hi, m_lo, v_hi, v_lo in self._nets:
            if m_hi == 0 and m_lo == 0:
                return np.ones(len(hi), dtype=bool)
            hit = (hi & np.uint64(m_hi)) == np.uint64(v_hi)
            if m_lo:
                hit &= (lo & np.uint64(m_lo)) == np.uint64(v_lo)
            ok |= hit
        return ok

    def add(
        self,
        batch: TrafficBatch,
        dropped: npt.NDArray[np.bool_] | None = None,
        protected: npt.NDArray[np.bool_] | None = None,
    ) -> int:
        """Count the rows to protected destinations; returns the packets counted.

        ``dropped`` marks the rows the data plane dropped; ``protected`` may pass in
        :meth:`protected_mask` of the batch when the caller has it already.
        """
        hi, lo = key_words(batch["dst"])
        if protected is None and not self._all:
            protected = self._protected_words(hi, lo)
        sel: npt.NDArray[np.intp] | None = None
        if protected is not None and not protected.all():
            sel = np.flatnonzero(protected)
            if len(sel) == 0:
                return 0
            hi, lo = hi[sel], lo[sel]
        n = len(hi)
        if n == 0:
            return 0

        def col(name: str) -> npt.NDArray[Any]:
            c: npt.NDArray[Any] = batch[name]
            return c if sel is None else c[sel]

        v6 = (col("flags") & _IPV6) != 0
        if v6.any():
            hi = np.where(v6, hi & self._v6_hi, hi)
            lo = np.where(v6, lo & self._v6_lo, lo)
        known = self._known(hi, lo)
        if known is not None:
            inv, slots = known
        else:
            uhi, ulo, inv = _distinct(hi, lo)
            slots = self._slots(uhi, ulo)
        kept = slots >= 0
        if not kept.all():  # more new destinations in one batch than the table holds
            rows_kept = kept[inv]
            inv = np.cumsum(kept)[inv] - 1
            slots = slots[kept]
        else:
            rows_kept = None
        u = len(slots)
        pkts, byts, cats = col("packets"), col("bytes"), col("category").astype(np.int64)
        drop = dropped if dropped is None or sel is None else dropped[sel]
        if rows_kept is not None:
            pkts, byts, cats, inv = pkts[rows_kept], byts[rows_kept], cats[rows_kept], inv[rows_kept]
            drop = drop[rows_kept] if drop is not None else None
        cell = inv * _NCAT + cats
        rows = self._rows
        rows["pkts"][slots] += _sums(cell, pkts, u * _NCAT).reshape(u, _NCAT)
        rows["bytes"][slots] += _sums(cell, byts, u * _NCAT).reshape(u, _NCAT)
        if drop is not None and drop.any():
            rows["dropped_pkts"][slots] += _sums(inv[drop], pkts[drop], u)
            rows["dropped_bytes"][slots] += _sums(inv[drop], byts[drop], u)
        self._tick += 1
        self._seen[slots] = self._tick
        return int(col("packets").sum())

    def _known(self, hi: U64, lo: U64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]] | None:
        """(each row's index among the distinct slots it hits, those slots) when every
        row's destination is in the table; None otherwise (new destinations, keys that
        fold alike, or a table much larger than the batch)."""
        n = self._n
        if n == 0 or n > 4 * len(hi) + 1024:
            return None
        if self._fold_stale:
            self._refold()
        fold = self._fold
        if fold is None:
            return None
        at = np.minimum(np.searchsorted(fold, (hi * _FOLD) ^ lo), n - 1)
        if not bool(((self._fold_hi[at] == hi) & (self._fold_lo[at] == lo)).all()):
            return None
        row_slot = self._fold_slot[at]
        present = np.bincount(row_slot, minlength=n) > 0
        inv: npt.NDArray[np.intp] = (np.cumsum(present) - 1)[row_slot]
        slots: npt.NDArray[np.int64] = np.flatnonzero(present).astype(np.int64)
        return inv, slots

    def _refold(self) -> None:
        """Rebuild the folded index (none when two keys fold alike)."""
        self._fold_stale = False
        fold = (self._khi * _FOLD) ^ self._klo
        order = np.argsort(fold)
        fold = fold[order]
        if not bool((fold[1:] != fold[:-1]).all()):
            self._fold = None
            return
        self._fold, self._fold_hi, self._fold_lo = fold, self._khi[order], self._klo[order]
        self._fold_slot = self._kslot[order]

    def _slots(self, hi: U64, lo: U64) -> npt.NDArray[np.int64]:
        """The slot of each distinct key (sorted by (hi, lo)), new keys added; -1 for keys
        that found no room (only when one batch brings more than the table holds)."""
        last = self._last
        if last is not None and np.array_equal(last[0], hi) and np.array_equal(last[1], lo):
            return last[2]  # the same destinations as the batch before (slots only move on compaction)
        slots = self._lookup(hi, lo)
        self._last = (hi, lo, slots) if bool((slots >= 0).all()) else None
        return slots

    def _lookup(self, hi: U64, lo: U64) -> npt.NDArray[np.int64]:
        pos, found = find_keys(self._khi, self._klo, hi, lo)
        new = np.flatnonzero(~found)
        if len(new) and self._n + len(new) > MAX_DESTINATIONS:
            # the destinations of this batch are the most recently seen: they stay
            self._seen[self._kslot[pos[found]]] = self._tick + 1
            self._evict(self._n + len(new) - MAX_DESTINATIONS)
            pos, found = find_keys(self._khi, self._klo, hi, lo)
            new = np.flatnonzero(~found)
            new = new[: MAX_DESTINATIONS - self._n]
        slots = np.full(len(hi), -1, dtype=np.int64)
        slots[found] = self._kslot[pos[found]]
        if len(new):
            first = self._grow(len(new))
            fresh = np.arange(first, first + len(new), dtype=np.int64)
            slots[new] = fresh
            self._rows["dst"][fresh] = words_key(hi[new], lo[new])
            # keys come sorted, so their insertion points do too: one insertion keeps the order
            at = pos[new]
            self._khi = np.insert(self._khi, at, hi[new])
            self._klo = np.insert(self._klo, at, lo[new])
            self._kslot = np.insert(self._kslot, at, fresh)
            self._fold_stale = True
        return slots

    def _grow(self, k: int) -> int:
        first = self._n
        self._n += k
        if self._n > len(self._rows):
            size = min(max(self._n, 2 * len(self._rows), 64), MAX_DESTINATIONS)
            rows = np.zeros(size, dtype=COUNTER_DTYPE)
            rows[:first] = self._rows[:first]
            seen = np.zeros(size, dtype=np.int64)
            seen[:first] = self._seen[:first]
            self._rows, self._seen = rows, seen
        self._rows[first : self._n] = np.zeros(k, dtype=COUNTER_DTYPE)
        self._seen[first : self._n] = self._tick + 1
        return first

    def _evict(self, need: int) -> None:
        """Drop at least ``need`` slots (and at least an eighth), least recently seen first;
        never a destination of the batch being counted."""
        seen = self._seen[: self._n]
        older = int((seen <= self._tick).sum())
        drop = min(max(need, self._n // 8), older)
        keep = np.sort(np.argsort(seen, kind="stable")[drop:])
        self._compact(keep)

    def _compact(self, keep: npt.NDArray[np.intp]) -> None:
        self._last = None
        self._fold_stale = True
        rows, seen = self._rows[keep], self._seen[keep]
        self._rows = np.zeros(max(len(self._rows), 64), dtype=COUNTER_DTYPE)
        self._seen = np.zeros(len(self._rows), dtype=np.int64)
        self._n = len(keep)
        self._rows[: self._n], self._seen[: self._n] = rows, seen
        hi, lo = key_words(rows["dst"])
        order = sort_keys(hi, lo)
        self._khi, self._klo, self._kslot = hi[order], lo[order], order.astype(np.int64)

    def snapshot(self) -> np.ndarray:
        """Cumulative counters (COUNTER_DTYPE), a copy."""
        return self._rows[: self._n].copy()


def _distinct(hi: U64, lo: U64) -> tuple[U64, U64, npt.NDArray[np.intp]]:
    """The distinct (hi, lo) keys, sorted, and the index of each row's key among them."""
    # A flood's target fills most of its batches: when the middle row's key is the key of
    # most rows, only the other rows are sorted.
    n = len(hi)
    c_hi, c_lo = hi[n // 2], lo[n // 2]
    same = (hi == c_hi) & (lo == c_lo)
    count = int(same.sum())
    if count == n:
        return hi[:1], lo[:1], np.zeros(n, dtype=np.intp)
    if 2 * count < n:
        return _distinct_sorted(hi, lo)
    rest = np.flatnonzero(~same)
    uhi, ulo, inv_rest = _distinct_sorted(hi[rest], lo[rest])
    at = int(((uhi < c_hi) | ((uhi == c_hi) & (ulo < c_lo))).sum())
    inv = np.full(n, at, dtype=np.intp)
    inv[rest] = inv_rest + (inv_rest >= at)
    return np.concatenate((uhi[:at], [c_hi], uhi[at:])), np.concatenate((ulo[:at], [c_lo], ulo[at:])), inv


def _distinct_sorted(hi: U64, lo: U64) -> tuple[U64, U64, npt.NDArray[np.intp]]:
    if bool((hi == hi[0]).all()):
        if bool((lo == lo[0]).all()):
            return hi[:1], lo[:1], np.zeros(len(hi), dtype=np.intp)
        ulo, inv = np.unique(lo, return_inverse=True)
        return np.full(len(ulo), hi[0], dtype=np.uint64), ulo, inv
    # Mixed keys (IPv4 and IPv6): one 64-bit sort of the keys folded into one word, then
    # a check that no two keys folded alike (else the exact, slower two-word sort).
    mixed = (hi * _FOLD) ^ lo
    _, inv = np.unique(mixed, return_inverse=True)
    rep = np.empty(int(inv.max()) + 1, dtype=np.intp)
    rep[inv] = np.arange(len(hi))
    uhi, ulo = hi[rep], lo[rep]
    if bool((uhi[inv] == hi).all() and (ulo[inv] == lo).all()):
        order = np.lexsort((ulo, uhi))
        rank = np.empty(len(order), dtype=np.intp)
        rank[order] = np.arange(len(order))
        return uhi[order], ulo[order], rank[inv]
    order = np.lexsort((lo, hi))
    shi, slo = hi[order], lo[order]
    start = np.ones(len(hi), dtype=bool)
    start[1:] = (shi[1:] != shi[:-1]) | (slo[1:] != slo[:-1])
    rank = np.cumsum(start) - 1
    inv = np.empty(len(hi), dtype=np.intp)
    inv[order] = rank
    return shi[start], slo[start], inv


def _sums(cell: npt.NDArray[Any], values: npt.NDArray[Any], size: int) -> U64:
    """Sum of ``values`` per ``cell`` (0 <= cell < size), exact for unsigned 64-bit values."""
    if len(values) == 0:
        return np.zeros(size, dtype=np.uint64)
    if float(values.max()) * len(values) < _EXACT:
        return np.bincount(cell, weights=values, minlength=size).astype(np.uint64)
    out = np.zeros(size, dtype=np.uint64)
    np.add.at(out, cell, values.astype(np.uint64))
    return out
