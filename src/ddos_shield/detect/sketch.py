"""Bounded-memory summaries of source addresses, updated a whole batch at a time.

A spoofed flood brings a new source address with nearly every packet: anything
that keeps one entry per source grows with the attack.  The structures here hold a
fixed amount of memory whatever the number of distinct sources, and are updated with
numpy over whole columns (never one Python call per packet):

* :class:`HyperLogLog` -- how many distinct sources (2**p one-byte registers;
  relative error about 1.04 / sqrt(2**p));
* :class:`CountMin` -- an over-estimate of any source's packets (depth x width
  counters; the excess is at most ``e / width`` of all packets with probability
  ``1 - exp(-depth)``), used to find heavy candidates in one pass without sorting;
* :class:`HeavyHitters` -- the Misra-Gries summary (mergeable form): every source
  carrying more than ``total / (k + 1)`` packets is held, with its count known to
  within that bound;
* :class:`DistinctSample` -- a bottom-k sample of distinct sources by hash, with the
  exact records and packets of each: exact while the sources are at most ``k``, a
  uniform sample of them beyond, which says what share of sources is seen only once;
* :class:`SourceSketch` -- the four together, summarised for an attack.

Keys are 16-byte addresses (rows of a traffic batch's ``src`` column).  Why not a
library: Apache DataSketches (the reference implementation) updates its sketches one
item per Python call, about a second per million sources, and is not among the
pinned dependencies; these are the textbook algorithms over numpy columns.

>>> import numpy as np
>>> src = np.zeros((5, 16), dtype=np.uint8); src[:, 15] = [1, 2, 2, 3, 3]
>>> s = SourceSketch(); s.add(src, np.ones(5))
>>> s.summary().distinct_seen, round(s.summary().spoofed_share, 2)
(3, 0.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: U64) -> U64:
    """splitmix64's finaliser: every input bit moves every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    out: U64 = x ^ (x >> np.uint64(31))
    return out


def hash_keys(keys: U8, seed: int = 0) -> U64:
    """A 64-bit hash of each 16-byte row of ``keys`` (vectorised)."""
    if keys.ndim != 2 or keys.shape[1] != 16:
        raise ValueError(f"keys: expected an (n, 16) array of address bytes, got shape {keys.shape}")
    halves = np.ascontiguousarray(keys).view("<u8")
    s = np.uint64(((seed + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)  # Python ints: no overflow warning
    return _mix(_mix(halves[:, 0] + s) ^ halves[:, 1])


def _as_weights(weights: npt.ArrayLike | None, n: int) -> F64:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights: expected {n} values, got shape {w.shape}")
    return w


def aggregate(keys: U8, weights: F64) -> tuple[U8, F64, npt.NDArray[np.int64]]:
    """Distinct rows of ``keys`` with their summed weights and row counts."""
    if len(keys) == 0:
        return np.zeros((0, 16), dtype=np.uint8), np.zeros(0), np.zeros(0, dtype=np.int64)
    k = np.ascontiguousarray(keys)
    _, first, inv = np.unique(k.view("V16").ravel(), return_index=True, return_inverse=True)
    inv = inv.ravel()
    summed: F64 = np.bincount(inv, weights=weights).astype(np.float64)
    return k[first], summed, np.bincount(inv).astype(np.int64)


class HyperLogLog:
    """Distinct count with ``2**p`` one-byte registers (Flajolet et al., with linear
    counting for small counts).

    >>> import numpy as np
    >>> h = HyperLogLog(12); keys = np.zeros((1000, 16), dtype=np.uint8)
    >>> keys[:, 14:] = np.arange(1000).astype(">u2").view(np.uint8).reshape(-1, 2)
    >>> h.add(keys); abs(h.count() - 1000) < 30
    True
    """

    def __init__(self, p: int = 12) -> None:
        # p >= 11 keeps the 64-p bits that give the rank within float64's 53-bit
        # mantissa, so the leading-zero count below is exact
        if not 11 <= p <= 18:
            raise ValueError(f"p: expected 11..18, got {p}")
        self.p = p
        self.registers = np.zeros(1 << p, dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return int(self.registers.nbytes)

    def add(self, keys: U8) -> None:
        self.add_hashes(hash_keys(keys, seed=1))

    def add_hashes(self, h: U64) -> None:
        if len(h) == 0:
            return
        p = self.p
        idx = (h >> np.uint64(64 - p)).astype(np.intp)
        rest = h & np.uint64((1 << (64 - p)) - 1)
        # rank = leading zeros of the remaining 64-p bits, plus one (frexp's exponent is
        # the bit length)
        _, exp = np.frexp(rest.astype(np.float64))
        rank = np.where(rest == 0, 64 - p + 1, (64 - p) - exp + 1).astype(np.uint8)
        np.maximum.at(self.registers, idx, rank)

    def merge(self, other: HyperLogLog) -> None:
        if other.p != self.p:
            raise ValueError(f"cannot merge HyperLogLog of p={other.p} into p={self.p}")
        np.maximum(self.registers, other.registers, out=self.registers)

    def count(self) -> float:
        m = float(len(self.registers))
        alpha = 0.7213 / (1 + 1.079 / m)
        est = alpha * m * m / float(np.sum(np.ldexp(1.0, -self.registers.astype(np.int64))))
        zeros = int(np.count_nonzero(self.registers == 0))
        if est <= 2.5 * m and zeros:
            return m * math.log(m / zeros)
        return est


class CountMin:
    """Per-key weight over-estimates in ``depth x width`` counters (Cormode and Muthukrishnan).

    >>> import numpy as np
    >>> cm = CountMin(1024, 4); keys = np.zeros((3, 16), dtype=np.uint8); keys[:, 15] = [1, 1, 2]
    >>> cm.add(keys, np.array([5.0, 5.0, 1.0])); cm.estimate(keys[:1]).tolist()
    [10.0]
    """

    def __init__(self, width: int = 1 << 14, depth: int = 4) -> None:
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth: expected positive integers, got {width} x {depth}")
        self.width = width
        self.depth = depth
        self.table = np.zeros((depth, width), dtype=np.float64)
        self.total = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)

    def _indexes(self, keys: U8) -> npt.NDArray[np.intp]:
        # one 64-bit hash split into two, combined per row (Kirsch and Mitzenmacher)
        h = hash_keys(keys, seed=2)
        a, b = h & np.uint64(0xFFFFFFFF), (h >> np.uint64(32)) | np.uint64(1)
        rows = np.arange(self.depth, dtype=np.uint64)[:, None]
        out: npt.NDArray[np.intp] = ((a[None, :] + rows * b[None, :]) % np.uint64(self.width)).astype(np.intp)
        return out

    def add(self, keys: U8, weights: npt.ArrayLike | None = None) -> None:
        w = _as_weights(weights, len(keys))
        if len(w) == 0:
            return
        idx = self._indexes(keys)
        for d in range(self.depth):
            self.table[d] += np.bincount(idx[d], weights=w, minlength=self.width)
        self.total += float(w.sum())

    def estimate(self, keys: U8) -> F64:
        if len(keys) == 0:
            return np.zeros(0)
        idx = self._indexes(keys)
        est: F64 = self.table[np.arange(self.depth)[:, None], idx].min(axis=0)
        return est


def heavy_rows(keys: U8, weights: npt.ArrayLike | None, share: float, width: int = 1 << 14) -> npt.NDArray[np.bool_]:
    """Rows whose key may carry at least ``share`` of the total weight: a superset of
    the rows of every such key (a count-min pass, so no sort of all the keys).

    >>> import numpy as np
    >>> keys = np.zeros((4, 16), dtype=np.uint8); keys[:, 15] = [7, 7, 7, 9]
    >>> heavy_rows(keys, None, 0.5).tolist()
    [True, True, True, False]
    """
    w = _as_weights(weights, len(keys))
    if len(w) == 0:
        return np.zeros(0, dtype=bool)
    cm = CountMin(width, 4)
    cm.add(keys, w)
    out: npt.NDArray[np.bool_] = cm.estimate(keys) >= share * cm.total
    return out


class HeavyHitters:
    """Misra-Gries summary of at most ``k`` keys, merged a batch at a time.

    After any number of batches totalling ``N``, every key that carried more than
    ``N / (k + 1)`` is held; a held key's true weight lies between ``count`` and
    ``count + error`` (``error`` <= ``N / (k + 1)``).  Batches are merged as two
    summaries are (Agarwal et al., "Mergeable summaries"): add, then subtract the
    (k+1)-th largest count from all and drop what is not positive.
    """

    def __init__(self, k: int = 64) -> None:
        if k < 1:
            raise ValueError(f"k: expected a positive integer, got {k}")
        self.k = k
        self.keys = np.zeros((0, 16), dtype=np.uint8)
        self.counts = np.zeros(0, dtype=np.float64)
        self.error = 0.0
        self.total = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.counts.nbytes)

    def add(self, keys: U8, weights: npt.ArrayLike | None = None) -> None:
        w = _as_weights(weights, len(keys))
        if len(w) == 0:
            return
        self.total += float(w.sum())
        bk, bw, _ = aggregate(keys, w)
        if len(bk) > self.k:
            # the batch alone reduced to k + 1 keys first, so the union stays small
            bk, bw = self._reduce(bk, bw)
        allk, allw, _ = aggregate(np.concatenate([self.keys, bk]), np.concatenate([self.counts, bw]))
        self.keys, self.counts = self._reduce(allk, allw)

    def _reduce(self, keys: U8, counts: F64) -> tuple[U8, F64]:
        if len(counts) <= self.k:
            return keys, counts
        cut = float(np.partition(counts, len(counts) - self.k - 1)[len(counts) - self.k - 1])
        self.error += cut
        keep = counts > cut
        return keys[keep], counts[keep] - cut

    def top(self, n: int) -> list[tuple[bytes, float, float]]:
        """The ``n`` heaviest held keys: (16-byte key, lower bound, upper bound)."""
        order = np.argsort(self.counts, kind="stable")[::-1][:n]
        return [(self.keys[i].tobytes(), float(self.counts[i]), float(self.counts[i]) + self.error) for i in order]


class DistinctSample:
    """The ``k`` distinct keys of smallest hash, each with its exact records and weight.

    A key with a small hash is held from its first record on (the cut-off only ever
    falls), so its counts are exact; the held keys are a uniform sample of all
    distinct keys, and exactly all of them while there are at most ``k``.
    """

    def __init__(self, k: int = 1024) -> None:
        if k < 1:
            raise ValueError(f"k: expected a positive integer, got {k}")
        self.k = k
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.keys = np.zeros((0, 16), dtype=np.uint8)
        self.records = np.zeros(0, dtype=np.int64)
        self.weights = np.zeros(0, dtype=np.float64)

    @property
    def nbytes(self) -> int:
        return int(self.hashes.nbytes + self.keys.nbytes + self.records.nbytes + self.weights.nbytes)

    @property
    def full(self) -> bool:
        return len(self.hashes) >= self.k

    def add(self, keys: U8, weights: npt.ArrayLike | None = None, hashes: U64 | None = None) -> None:
        w = _as_weights(weights, len(keys))
        if len(w) == 0:
            return
        h = hash_keys(keys, seed=3) if hashes is None else hashes
        if self.full:
            keep = h <= self.hashes[-1]
            keys, w, h = keys[keep], w[keep], h[keep]
            if len(h) == 0:
                return
        # 64-bit hashes of distinct addresses collide with odds ~n^2/2^65: the hash is the key
        uh, first, inv = np.unique(h, return_index=True, return_inverse=True)
        inv = inv.ravel()
        bw = np.bincount(inv, weights=w)
        br = np.bincount(inv).astype(np.int64)
        allh = np.concatenate([self.hashes, uh])
        order = np.argsort(allh, kind="stable")
        allh = allh[order]
        allk = np.concatenate([self.keys, np.ascontiguousarray(keys)[first]])[order]
        allr = np.concatenate([self.records, br])[order]
        allw = np.concatenate([self.weights, bw])[order]
        # equal hashes are adjacent: fold each run into its first entry
        starts = np.flatnonzero(np.concatenate([[True], allh[1:] != allh[:-1]]))
        self.hashes = allh[starts][: self.k]
        self.keys = allk[starts][: self.k]
        self.records = np.add.reduceat(allr, starts)[: self.k]
        self.weights = np.add.reduceat(allw, starts)[: self.k]

    def scale(self) -> float:
        """Distinct keys in all per key held (1 while exact; the KMV estimate beyond)."""
        if not self.full:
            return 1.0
        # the k-th smallest of n uniform hashes sits near k/n of the range
        frac = (float(self.hashes[-1]) + 1.0) / 2.0**64
        return max((self.k - 1) / frac / self.k, 1.0)


@dataclass(frozen=True)
class SourceSummary:
    """What an attack's sources look like.

    ``distinct_seen`` counts distinct sources among the records seen (exact up to the
    sample's size, a HyperLogLog estimate beyond).  ``spoofed_share`` is the share of
    packets whose source appeared in one record only: near 1 for a randomly spoofed
    flood (or reflectors each sending little), near 0 when a few sources repeat.
    ``distinct_sources`` estimates the distinct sources behind the packets: with
    sampled records each seen-once source stands for as many sources as packets it
    represents (what a spoofed flood does), every other source for one.
    ``top`` lists the heaviest sources as (address bytes, packets at least, at most).
    ``held_keys`` is how many addresses the sketch holds (bounded).
    """

    records: int
    packets: float
    distinct_seen: int
    distinct_sources: int
    spoofed_share: float
    top: list[tuple[bytes, float, float]]
    held_keys: int

    def to_json(self, top: int = 5) -> dict[str, Any]:
        from ddos_shield.records import bytes_addr

        return {
            "distinct_sources": self.distinct_sources,
            "distinct_seen": self.distinct_seen,
            "spoofed_share": round(self.spoofed_share, 4),
            "source_keys_held": self.held_keys,
            "top_sources": [
                {"address": str(bytes_addr(k)), "packets": round(lo), "share": round(lo / self.packets, 4)}
                for k, lo, _ in self.top[:top]
                if self.packets > 0
            ],
        }


class SourceSketch:
    """Everything the shield keeps about one attack's sources, in bounded memory
    (about 40 KiB with the defaults, whatever the number of sources)."""

    def __init__(self, *, hll_p: int = 12, heavy_k: int = 64, sample_k: int = 1024) -> None:
        self.hll = HyperLogLog(hll_p)
        self.heavy = HeavyHitters(heavy_k)
        self.sample = DistinctSample(sample_k)
        self.records = 0
        self.packets = 0.0

    @property
    def nbytes(self) -> int:
        return self.hll.nbytes + self.heavy.nbytes + self.sample.nbytes

    @property
    def held_keys(self) -> int:
        return len(self.heavy.keys) + len(self.sample.keys)

    def add(self, src: U8, packets: npt.ArrayLike | None = None) -> None:
        w = _as_weights(packets, len(src))
        if len(w) == 0:
            return
        self.records += len(w)
        self.packets += float(w.sum())
        self.hll.add(src)
        self.heavy.add(src, w)
        self.sample.add(src, w)

    def summary(self) -> SourceSummary:
        s = self.sample
        scale = s.scale()
        distinct_seen = len(s.hashes) if not s.full else round(self.hll.count())
        once = s.records == 1
        once_packets = float(s.weights[once].sum()) * scale
        once_keys = float(np.count_nonzero(once)) * scale
        spoofed = min(once_packets / self.packets, 1.0) if self.packets > 0 else 0.0
        distinct = max(distinct_seen, round(distinct_seen - once_keys + once_packets))
        return SourceSummary(
            records=self.records,
            packets=self.packets,
            distinct_seen=distinct_seen,
            distinct_sources=distinct,
            spoofed_share=spoofed,
            top=self.heavy.top(10),
            held_keys=self.held_keys,
        )


def thin(batch: npt.NDArray[Any], max_rows: int, seed: int = 0) -> npt.NDArray[Any]:
    """At most ``max_rows`` rows of a traffic batch, chosen uniformly, with packets,
    bytes and sample rate scaled up so that sums stay unbiased (a batch already at
    most that long is returned as it is).  Deterministic for a given seed."""
    n = len(batch)
    if n <= max_rows:
        return batch
    if max_rows < 1:
        raise ValueError(f"max_rows: expected a positive integer, got {max_rows}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, size=max_rows, replace=False))
    out = batch[keep].copy()
    f = n / max_rows
    out["packets"] = np.maximum(np.rint(out["packets"] * f), 1).astype(out["packets"].dtype)
    out["bytes"] = np.rint(out["bytes"] * f).astype(out["bytes"].dtype)
    out["sample_rate"] = np.minimum(np.rint(out["sample_rate"].astype(np.float64) * f), 2**32 - 1).astype(np.uint32)
    return out
