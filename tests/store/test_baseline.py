"""The baselines file: round trip, atomic replacement, refusal of other versions and of junk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddos_shield.config import Baseline as Settings
from ddos_shield.detect.baseline import FORMAT_VERSION, Baselines
from ddos_shield.errors import ShieldError
from ddos_shield.records import Category, addr_bytes, empty_rates
from ddos_shield.store.baseline import FILE_NAME, load, save

SETTINGS = Settings(learning_seconds=10, adapt_seconds=60)


def learned() -> tuple[Baselines, float]:
    b = Baselines(SETTINGS)
    r = empty_rates(2)
    r["dst"][0] = list(addr_bytes("203.0.113.10"))
    r["dst"][1] = list(addr_bytes("2001:db8:113::"))
    t = 1_700_000_000.0
    for i in range(300):
        t += 0.1
        r["pps"][:, Category.UDP] = [1000 + 100 * (i % 3), 50]
        b.learn(r, t)
    return b, t


def test_round_trip(tmp_path: Path) -> None:
    b, t = learned()
    p = tmp_path / "state" / FILE_NAME
    save(p, b.state())
    back = load(p, SETTINGS)
    assert len(back) == 2
    keys = np.ascontiguousarray(b.keys[:2])
    for x, y in zip(back.lookup(keys, t), b.lookup(keys, t), strict=True):
        assert np.array_equal(x, y)
    assert not list(tmp_path.glob("state/*.tmp"))  # written beside, renamed over


def test_other_version_and_junk_are_refused(tmp_path: Path) -> None:
    b, _ = learned()
    p = tmp_path / FILE_NAME
    state = b.state()
    state["format_version"] = np.array(FORMAT_VERSION + 1)
    save(p, state)
    with pytest.raises(ShieldError, match=f"{FILE_NAME}: baseline format version {FORMAT_VERSION + 1}"):
        load(p, SETTINGS)
    p.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ShieldError, match="not a baseline file"):
        load(p, SETTINGS)
    save(p, {"something": np.zeros(3)})
    with pytest.raises(ShieldError, match="format version None"):
        load(p, SETTINGS)


def test_a_smaller_cap_keeps_the_learned(tmp_path: Path) -> None:
    b, _ = learned()
    p = tmp_path / FILE_NAME
    save(p, b.state())
    assert len(load(p, Settings(learning_seconds=10, max_destinations=1))) == 1
