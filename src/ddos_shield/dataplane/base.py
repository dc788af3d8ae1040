"""The counting-and-sampling side of a data plane, behind one interface.

A data plane watches packets on the protected link: it counts them per protected
destination and category (cumulative counters, :data:`~ddos_shield.records.COUNTER_DTYPE`),
copies a sample of them to user space (a :data:`~ddos_shield.records.TRAFFIC_DTYPE` batch),
and offers an enforcement :class:`~ddos_shield.mitigate.base.Backend` on the same hook.
Two implementations: XDP (:mod:`ddos_shield.dataplane.xdp`) and, where XDP cannot be
attached, nftables counters with an AF_PACKET sampler (:mod:`ddos_shield.dataplane.nft`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import numpy as np

from ddos_shield.dataplane.table import find_keys, key_words, sort_keys
from ddos_shield.mitigate.base import Backend
from ddos_shield.records import RATE_DTYPE, IPNetwork, RateBatch, TrafficBatch


class DataPlane(abc.ABC):
    """See the module docstring."""

    name: str = ""

    @abc.abstractmethod
    def set_protected(self, prefixes: Mapping[IPNetwork, int]) -> None:
        """Replace the protected destination prefixes (prefix -> host group id)."""

    @abc.abstractmethod
    def read_counters(self) -> np.ndarray:
        """Cumulative counters of every watched destination (COUNTER_DTYPE)."""

    @abc.abstractmethod
    def read_samples(self) -> TrafficBatch:
        """Samples taken since the last call (TRAFFIC_DTYPE, packets already scaled)."""

    def read_frames(self) -> tuple[TrafficBatch, tuple[np.ndarray, np.ndarray] | None]:
        """:meth:`read_samples` with, where the data plane keeps them, the first bytes of
        each sampled frame: ``(frames uint8 (n, snaplen), captured lengths (n,))``, row
        for row (the attack captures are made of these).  By default: none."""
        return self.read_samples(), None

    @abc.abstractmethod
    def set_sample_every(self, n: int) -> None:
        """Sample one packet in ``n`` (0 turns sampling off)."""

    @abc.abstractmethod
    def global_stats(self) -> dict[str, int]:
        """Data-plane wide counters (received, dropped, malformed, samples lost, ...)."""

    def kill_switch_on(self) -> bool:
        """Whether an operator's kill switch (``ddos-shield bypass on``) passes everything
        now.  By default (a data plane without one, e.g. a replay): never."""
        return False

    @property
    @abc.abstractmethod
    def backend(self) -> Backend:
        """Enforcement on the same hook."""

    @abc.abstractmethod
    def close(self, detach: bool = False) -> None:
        """Stop reading.  Protection stays attached unless ``detach``."""


def counter_rates(prev: np.ndarray, cur: np.ndarray, seconds: float) -> RateBatch:
    """Per-destination rates between two counter snapshots.

    A destination missing from ``prev`` (new, or evicted from the LRU and re-created)
    starts from zero in ``prev``'s place only if its counters are small enough to be
    new; counters that went backwards (re-created entry) count from zero.

    Keys are compared as two 64-bit words each (:func:`~ddos_shield.dataplane.table.key_words`).
    A table that only grew since ``prev`` (the user-space tables, and a kernel map whose
    dump order held) lists ``prev``'s keys first, in the same order: that is checked
    in one pass and needs no search; otherwise ``prev`` is sorted and searched.
    """
    out = np.zeros(len(cur), dtype=RATE_DTYPE)
    if len(cur) == 0 or seconds <= 0:
        return out
    out["dst"] = cur["dst"]
    # contiguous copies: arithmetic on the (n, categories) fields of the records is slow
    cur_pkts = np.ascontiguousarray(cur["pkts"])
    cur_bytes = np.ascontiguousarray(cur["bytes"])
    cur_drop = cur["dropped_pkts"]
    base_pkts = np.zeros_like(cur_pkts)
    base_bytes = np.zeros_like(cur_bytes)
    base_drop = np.zeros(len(cur), dtype=np.uint64)
    m = len(prev)
    if m:
        p_hi, p_lo = key_words(prev["dst"])
        c_hi, c_lo = key_words(cur["dst"])
        if m <= len(cur) and np.array_equal(p_hi, c_hi[:m]) and np.array_equal(p_lo, c_lo[:m]):
            base_pkts[:m] = prev["pkts"]
            base_bytes[:m] = prev["bytes"]
            base_drop[:m] = prev["dropped_pkts"]
        else:
            order = sort_keys(p_hi, p_lo)
            pos, found = find_keys(p_hi[order], p_lo[order], c_hi, c_lo)
            rows = np.flatnonzero(found)
            idx = order[pos[rows]]
            base_pkts[rows] = np.take(np.ascontiguousarray(prev["pkts"]), idx, axis=0)
            base_bytes[rows] = np.take(np.ascontiguousarray(prev["bytes"]), idx, axis=0)
            base_drop[rows] = prev["dropped_pkts"][idx]
        lower = cur_pkts < base_pkts
        back = lower[:, 0].copy()
        for c in range(1, lower.shape[1]):
            back |= lower[:, c]
        if back.any():
            base_pkts[back] = 0
            base_bytes[back] = 0
            base_drop[back] = 0
    # differences in place, divided straight into the output's fields
    np.subtract(cur_pkts, base_pkts, out=base_pkts)
    np.subtract(cur_bytes, base_bytes, out=base_bytes)
    np.divide(base_pkts, seconds, out=out["pps"])
    np.divide(base_bytes * 8.0, seconds, out=out["bps"])
    out["dropped_pps"] = (cur_drop - np.minimum(base_drop, cur_drop)) / seconds
    return out
