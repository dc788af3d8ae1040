"""A data plane in user space, fed with traffic batches instead of a NIC.

It counts and samples exactly as the kernel does (per protected destination and
category, dropped traffic counted too, 1-in-N samples) and enforces rules through a
:class:`~ddos_shield.mitigate.memory.MemoryBackend`.  It serves replaying captures
and flow records through the same engine, and testing the engine without a kernel.

>>> from ddos_shield.records import empty_traffic, addr_bytes, as_network
>>> dp = ReplayDataPlane()
>>> dp.set_protected({as_network("203.0.113.0/24"): 0})
>>> b = empty_traffic(3); b["dst"] = list(addr_bytes("203.0.113.10")); b["packets"] = 1; b["category"] = 2
>>> dp.feed(b)
>>> int(dp.read_counters()["pkts"][0][2])
3
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from ddos_shield.dataplane.base import DataPlane
from ddos_shield.dataplane.table import CounterTable
from ddos_shield.mitigate.memory import MemoryBackend
from ddos_shield.records import IPNetwork, TrafficBatch, empty_traffic, join_rows, take_rows


class ReplayDataPlane(DataPlane):
    """See the module docstring."""

    name = "replay"

    def __init__(self, ipv6_prefix_len: int = 64, seed: int = 0, clock: Callable[[], float] = time.time) -> None:
        self._backend = MemoryBackend(clock)
        self._table = CounterTable({}, ipv6_prefix_len)
        self._samples: list[TrafficBatch] = []
        self._every = 1
        self._rng = np.random.default_rng(seed)
        self._stats = {"rx": 0, "dropped": 0, "unprotected": 0, "sampled": 0}

    @property
    def backend(self) -> MemoryBackend:
        return self._backend

    def set_protected(self, prefixes: Mapping[IPNetwork, int]) -> None:
        self._table.set_protected(prefixes)

    def set_sample_every(self, n: int) -> None:
        self._every = n

    def feed(self, batch: TrafficBatch) -> None:
        """Offer a batch to the data plane: count, sample, enforce."""
        total = int(batch["packets"].sum())
        self._stats["rx"] += total
        dropped = self._backend.offer(batch)
        any_dropped = bool(dropped.any())
        if any_dropped:
            self._stats["dropped"] += int(batch["packets"][dropped].sum())
        protected = self._table.protected_mask(batch["dst"])
        counted = self._table.add(batch, dropped if any_dropped else None, protected)
        self._stats["unprotected"] += total - counted
        rows = batch if protected.all() else take_rows(batch, protected)
        if self._every and len(rows):
            pick = self._rng.random(len(rows)) < 1.0 / self._every
            s = take_rows(rows, pick)  # a copy: the batch stays the caller's
            s["sample_rate"] = np.maximum(s["sample_rate"], 1) * self._every
            s["packets"] = s["packets"] * self._every
            s["bytes"] = s["bytes"] * self._every
            self._samples.append(s)
            self._stats["sampled"] += len(s)

    def read_counters(self) -> np.ndarray:
        return self._table.snapshot()

    def read_samples(self) -> TrafficBatch:
        if not self._samples:
            return empty_traffic()
        out = join_rows(self._samples)
        self._samples = []
        return out

    def global_stats(self) -> dict[str, int]:
        return dict(self._stats)

    def close(self, detach: bool = False) -> None:
        pass
