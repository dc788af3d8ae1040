"""The sample window against the plain list of batches it replaces (joined each tick)."""

from __future__ import annotations

import numpy as np
import pytest

from ddos_shield.engine.window import SampleWindow
from ddos_shield.records import TrafficBatch, empty_traffic


def _batch(rng: np.random.Generator, t: float, n: int) -> TrafficBatch:
    b = empty_traffic(n)
    b["ts"] = t + rng.random(n) * 0.1
    b["sport"] = rng.integers(0, 1 << 16, n)
    return b


@pytest.mark.parametrize("capacity", [1, 16, 4096])
def test_window_holds_what_the_joined_batches_held(capacity: int) -> None:
    rng = np.random.default_rng(3)
    w = SampleWindow(2.0, capacity=capacity)
    kept: list[TrafficBatch] = []
    for tick in range(200):
        now = tick * 0.1
        # bursts and silences: the buffer grows, is moved down and shrinks again
        n = 0 if tick % 17 == 0 else int(rng.integers(1, 3000 if 60 < tick < 80 else 50))
        b = _batch(rng, now - 0.1, n)
        w.add(b)
        if n:
            kept.append(b)
        w.trim(now)
        while kept and kept[0]["ts"].max() < now - 2.0:
            kept.pop(0)
        want = np.concatenate(kept) if kept else empty_traffic()
        assert len(w) == len(want)
        assert np.array_equal(w.view(), want)


def test_an_empty_window_is_an_empty_batch() -> None:
    w = SampleWindow(2.0)
    w.add(empty_traffic())
    w.trim(100.0)
    assert len(w.view()) == 0 and w.view().dtype == empty_traffic().dtype


def test_since_holds_every_row_later_than_its_time() -> None:
    rng = np.random.default_rng(4)
    w = SampleWindow(2.0)
    for tick in range(60):
        now = tick * 0.1
        b = _batch(rng, now - 0.1, int(rng.integers(0, 40)))
        if tick % 7 == 0 and len(b):  # out of order: an old row in a new batch
            b["ts"][0] = now - 1.5
        w.add(b)
        w.trim(now)
        for t in (now - 1.0, now - 0.25, now + 1.0):
            view, part = w.view(), w.since(t)
            assert np.array_equal(view[len(view) - len(part) :], part)  # the window's last rows
            assert np.array_equal(np.sort(view["ts"][view["ts"] > t]), np.sort(part["ts"][part["ts"] > t]))
        assert len(w.since(now - 1.0)) < len(w) or tick < 12
