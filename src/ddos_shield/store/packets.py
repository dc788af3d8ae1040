"""The packet tap: the last few thousand sampled packets, for each attack's capture.

The engine :meth:`~PacketTap.add`\\ s every sample batch it reads (the data plane's,
with the first bytes of each frame where the data plane keeps them, and the flow
collectors', which have none); the store's writer thread :meth:`~PacketTap.take`\\ s an
attack's packets from it while the attack lasts.  It is a fixed ring of numpy arrays:
adding is one vectorised copy under a lock, and memory stays bounded
(``capacity`` x (``snaplen`` + one traffic row), about 1.5 MB by default).

Frames the data plane captured are kept as they were (the XDP ring buffer and the
AF_PACKET sampler carry the first 128 bytes of each sampled packet); a row without a
frame (a NetFlow/IPFIX or sFlow record, a mirror port's sample) gets headers synthesised from its fields
(:func:`~ddos_shield.store.pcap.synthesize`), marked ``synthesized``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ddos_shield.records import TRAFFIC_DTYPE, IPNetwork, TrafficBatch, addresses_in
from ddos_shield.store.history import Packet
from ddos_shield.store.pcap import synthesize

K = TypeVar("K")

#: (frames: uint8 (n, snaplen), captured length of each: int (n,)), aligned with a batch
Frames = tuple[npt.NDArray[np.uint8], npt.NDArray[Any]]


class PacketTap:
    """See the module docstring."""

    def __init__(self, capacity: int = 8192, snaplen: int = 128) -> None:
        if capacity <= 0 or snaplen <= 0:
            raise ValueError(f"PacketTap: capacity {capacity} and snaplen {snaplen} must be positive")
        self.capacity = capacity
        self.snaplen = snaplen
        self._rows = np.zeros(capacity, dtype=TRAFFIC_DTYPE)
        self._data = np.zeros((capacity, snaplen), dtype=np.uint8)
        self._caplen = np.zeros(capacity, dtype=np.int32)  # 0: no frame, synthesise
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def add(self, batch: TrafficBatch, frames: Frames | None = None) -> None:
        """Keep ``batch`` (and its frames, row for row) in place of the oldest packets."""
        n = len(batch)
        if n == 0:
            return
        if frames is not None and len(frames[0]) != n:
            raise ValueError(f"PacketTap.add: {len(frames[0])} frames for {n} rows")
        if n > self.capacity:  # only the newest fit
            batch = batch[-self.capacity :]
            frames = (frames[0][-self.capacity :], frames[1][-self.capacity :]) if frames is not None else None
            n = self.capacity
        with self._lock:
            idx = (self._next + np.arange(n)) % self.capacity
            self._rows[idx] = batch
            if frames is None:
                self._caplen[idx] = 0
            else:
                data, caplen = frames
                width = min(data.shape[1], self.snaplen)
                self._data[idx, :width] = data[:, :width]
                self._caplen[idx] = np.minimum(caplen, width)
            self._next = (self._next + n) % self.capacity
            self._filled = min(self.capacity, self._filled + n)

    def take(self, target: IPNetwork, since: float, limit: int) -> list[Packet]:
        """Up to ``limit`` packets to ``target`` newer than ``since``, oldest first."""
        return self.take_many({0: (target, since, limit)})[0]

    def take_many(self, wants: Mapping[K, tuple[IPNetwork, float, int]]) -> dict[K, list[Packet]]:
        """:meth:`take` for several targets at once, from one copy of the ring (the
        writer asks for every attack under way each round)."""
        out: dict[K, list[Packet]] = {k: [] for k in wants}
        if not wants:
            return out
        with self._lock:
            rows = self._rows[: self._filled].copy()
            data = self._data[: self._filled].copy()
            caplen = self._caplen[: self._filled].copy()
        if not len(rows):
            return out
        for key, (target, since, limit) in wants.items():
            if limit <= 0:
                continue
            sel = np.flatnonzero(addresses_in(rows["dst"], target) & (rows["ts"] > since))
            sel = sel[np.argsort(rows["ts"][sel], kind="stable")][:limit]
            for i in sel:
                row = rows[i]
                if caplen[i]:
                    out[key].append(Packet(float(row["ts"]), int(row["length"]), bytes(data[i, : caplen[i]]), False))
                else:
                    frame, wire = synthesize(row, self.snaplen)
                    out[key].append(Packet(float(row["ts"]), wire, frame, True))
        return out
