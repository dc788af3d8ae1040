"""Per-destination counters kept in user space, as the kernel keeps them.

Traffic batches that did not come through the kernel (flow telemetry, a mirror port,
a replayed capture) are counted here exactly as the XDP program counts packets: per
protected destination (IPv4 address, or IPv6 prefix of ``ipv6_prefix_len``) and
category, dropped traffic apart.  The engine merges these counters with the data
plane's.

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

import numpy as np
import numpy.typing as npt

from ddos_shield.records import COUNTER_DTYPE, IPNetwork, PacketFlag, TrafficBatch, addresses_in

#: destinations kept at most (the kernel's LRU holds as many); the least recently seen go first
MAX_DESTINATIONS = 131072


class CounterTable:
    """See the module docstring."""

    def __init__(self, protected: Mapping[IPNetwork, int], ipv6_prefix_len: int = 64) -> None:
        self._protected = list(protected)
        self._v6_mask = np.zeros(16, dtype=np.uint8)
        full, rest = divmod(ipv6_prefix_len, 8)
        self._v6_mask[:full] = 0xFF
        if rest:
            self._v6_mask[full] = (0xFF << (8 - rest)) & 0xFF
        self._rows = np.zeros(0, dtype=COUNTER_DTYPE)
        self._index: dict[bytes, int] = {}
        self._seen = np.zeros(0, dtype=np.int64)
        self._tick = 0

    def set_protected(self, protected: Mapping[IPNetwork, int]) -> None:
        self._protected = list(protected)
        keep = self.protected_mask(self._rows["dst"])
        self._rows, self._seen = self._rows[keep], self._seen[keep]
        self._index = {r.tobytes(): i for i, r in enumerate(self._rows["dst"])}

    def protected_mask(self, column: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        ok = np.zeros(len(column), dtype=bool)
        for net in self._protected:
            ok |= addresses_in(column, net)
        return ok

    def add(self, batch: TrafficBatch, dropped: npt.NDArray[np.bool_] | None = None) -> int:
        """Count the rows to protected destinations; returns the packets counted."""
        prot = self.protected_mask(batch["dst"])
        rows = batch[prot]
        if len(rows) == 0:
            return 0
        drop = dropped[prot] if dropped is not None else np.zeros(len(rows), dtype=bool)
        keys = rows["dst"].copy()
        v6 = (rows["flags"] & PacketFlag.IPV6) != 0
        keys[v6] &= self._v6_mask
        kv = np.ascontiguousarray(keys).view("V16").ravel()
        uniq, inv = np.unique(kv, return_inverse=True)
        slots = np.array([self._slot(u.tobytes()) for u in uniq], dtype=np.int64)[inv]
        cats = rows["category"].astype(np.int64)
        np.add.at(self._rows["pkts"], (slots, cats), rows["packets"])
        np.add.at(self._rows["bytes"], (slots, cats), rows["bytes"])
        np.add.at(self._rows["dropped_pkts"], slots[drop], rows["packets"][drop])
        np.add.at(self._rows["dropped_bytes"], slots[drop], rows["bytes"][drop])
        self._tick += 1
        self._seen[np.unique(slots)] = self._tick
        return int(rows["packets"].sum())

    def _slot(self, key: bytes) -> int:
        i = self._index.get(key)
        if i is not None:
            return i
        if len(self._rows) >= MAX_DESTINATIONS:
            self._evict()
        i = len(self._rows)
        row = np.zeros(1, dtype=COUNTER_DTYPE)
        row["dst"] = np.frombuffer(key, dtype=np.uint8)
        self._rows = np.concatenate([self._rows, row])
        self._seen = np.concatenate([self._seen, [self._tick]])
        self._index[key] = i
        return i

    def _evict(self) -> None:
        keep = np.argsort(self._seen)[len(self._seen) // 8 :]  # drop the least recently seen eighth
        keep.sort()
        self._rows, self._seen = self._rows[keep], self._seen[keep]
        self._index = {r.tobytes(): i for i, r in enumerate(self._rows["dst"])}

    def snapshot(self) -> np.ndarray:
        """Cumulative counters (COUNTER_DTYPE), a copy."""
        return self._rows.copy()


def merge_counters(*parts: np.ndarray) -> np.ndarray:
    """Sum counter snapshots of several sources destination by destination."""
    parts = tuple(p for p in parts if len(p))
    if not parts:
        return np.zeros(0, dtype=COUNTER_DTYPE)
    if len(parts) == 1:
        return parts[0]
    allrows = np.concatenate(parts)
    kv = np.ascontiguousarray(allrows["dst"]).view("V16").ravel()
    uniq, first, inv = np.unique(kv, return_index=True, return_inverse=True)
    out = np.zeros(len(uniq), dtype=COUNTER_DTYPE)
    out["dst"] = allrows["dst"][first]
    for col in ("pkts", "bytes", "dropped_pkts", "dropped_bytes"):
        np.add.at(out[col], inv, allrows[col])
    return out
