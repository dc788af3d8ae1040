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

    @abc.abstractmethod
    def set_sample_every(self, n: int) -> None:
        """Sample one packet in ``n`` (0 turns sampling off)."""

    @abc.abstractmethod
    def global_stats(self) -> dict[str, int]:
        """Data-plane wide counters (received, dropped, malformed, samples lost, ...)."""

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
    """
    out = np.zeros(len(cur), dtype=RATE_DTYPE)
    if len(cur) == 0 or seconds <= 0:
        return out
    out["dst"] = cur["dst"]
    base_pkts = np.zeros_like(cur["pkts"])
    base_bytes = np.zeros_like(cur["bytes"])
    base_drop = np.zeros(len(cur), dtype=np.uint64)
    if len(prev):
        keys_prev = prev["dst"].view("V16").ravel()
        keys_cur = cur["dst"].view("V16").ravel()
        order = np.argsort(keys_prev)
        pos = np.searchsorted(keys_prev[order], keys_cur)
        pos = np.minimum(pos, len(prev) - 1)
        found = keys_prev[order][pos] == keys_cur
        idx = order[pos[found]]
        base_pkts[found] = prev["pkts"][idx]
        base_bytes[found] = prev["bytes"][idx]
        base_drop[found] = prev["dropped_pkts"][idx]
        back = np.any(cur["pkts"] < base_pkts, axis=1)
        base_pkts[back] = 0
        base_bytes[back] = 0
        base_drop[back] = 0
    out["pps"] = (cur["pkts"] - base_pkts) / seconds
    out["bps"] = (cur["bytes"] - base_bytes) * 8.0 / seconds
    out["dropped_pps"] = (cur["dropped_pkts"] - np.minimum(base_drop, cur["dropped_pkts"])) / seconds
    return out
