"""The last few seconds of sampled traffic, kept for building rules.

The engine adds each tick's samples and drops the batches older than the window;
the policy reads the whole window as one batch.  Concatenating the window's batches
every tick copied all of it each time (about a millisecond a tick at the sampling
target); here the rows live in one buffer that only grows at its end and is moved
down when its dead front half is reached, so a tick copies only what it adds and
reading is a view.

>>> from ddos_shield.records import empty_traffic
>>> w = SampleWindow(2.0)
>>> b = empty_traffic(3); b["ts"] = [10.0, 10.5, 11.0]
>>> w.add(b); w.trim(12.5); len(w.view())
3
>>> len(w.since(10.9)), len(w.since(11.0))
(3, 0)
>>> w.trim(13.5); len(w.view())
0
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ddos_shield.records import TRAFFIC_DTYPE, TrafficBatch, put_rows


class SampleWindow:
    """Rows of the batches added, minus whole batches whose newest row is older than
    ``seconds`` before the time given to :meth:`trim` (see the module docstring)."""

    def __init__(self, seconds: float, capacity: int = 4096) -> None:
        self.seconds = seconds
        self._capacity = capacity
        self._buf = np.zeros(capacity, dtype=TRAFFIC_DTYPE)
        self._start = 0
        self._end = 0
        self._batches: deque[tuple[int, float]] = deque()  # (end row, newest ts) of each batch

    def __len__(self) -> int:
        return self._end - self._start

    def add(self, batch: TrafficBatch) -> None:
        n = len(batch)
        if not n:
            return
        if self._end + n > len(self._buf):
            self._make_room(n)
        put_rows(self._buf, slice(self._end, self._end + n), batch)
        self._end += n
        self._batches.append((self._end, float(batch["ts"].max())))

    def trim(self, now: float) -> None:
        """Drop the batches whose newest row is older than the window."""
        while self._batches and self._batches[0][1] < now - self.seconds:
            self._start = self._batches.popleft()[0]

    def view(self) -> TrafficBatch:
        """The window's rows in the order added: a view, valid until the next
        :meth:`add` (callers read it, never write it)."""
        out: TrafficBatch = self._buf[self._start : self._end]
        return out

    def since(self, t: float) -> TrafficBatch:
        """The window's rows from the first batch whose newest row is later than ``t``
        on (a view, as :meth:`view`): every row later than ``t`` is among them, and a
        reader of the last second need not look at the rest."""
        start = self._start
        for end, newest in self._batches:
            if newest > t:
                break
            start = end
        else:
            start = self._end
        out: TrafficBatch = self._buf[start : self._end]
        return out

    def _make_room(self, n: int) -> None:
        live = self._end - self._start
        need = live + n
        if need <= len(self._buf) // 2 and 8 * need > len(self._buf):  # room once the dead front is dropped
            put_rows(self._buf, slice(0, live), self._buf[self._start : self._end])
        else:  # grow, or shrink after a burst
            buf = np.zeros(max(self._capacity, 2 * need), dtype=TRAFFIC_DTYPE)
            put_rows(buf, slice(0, live), self._buf[self._start : self._end])
            self._buf = buf
        shift = self._start
        self._batches = deque((end - shift, ts) for end, ts in self._batches)
        self._start, self._end = 0, live
