"""Baselines and the attack lifecycle in the lab: real HTTP clients, real floods, the
real kernel, the `ddos-shield run` process.

* A legitimate surge of the size the baseline has seen is not an attack, while a SYN
  flood under the static threshold is (the learning period is shortened to 20 s).
* A pulsing SYN flood (on 2 s, off 3 s, three times) is one attack with one rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ddos_shield import lab
from ddos_shield.config import parse
from ddos_shield.lab.attack import AttackSpec, launch
from ddos_shield.lab.client import LegitTraffic
from ddos_shield.lab.demo import LabShield, lab_config
from ddos_shield.lab.topology import Lab
from ddos_shield.store.baseline import FILE_NAME

pytestmark = [pytest.mark.lab, pytest.mark.kernel]

VICTIM = f"{lab.VICTIM_V4}/32"
LEARNING = 20.0
# the classification detectors keep their defaults: one client making 30-90 connections
# a second must not be called a connection flood (detect/connections.py)
BASELINE = f"""
[baseline]
learning_seconds = {LEARNING}
adapt_seconds = 120
save_every_seconds = 5
[groups.baseline]
sensitivity = 6
[groups.baseline.floor]
syn = {{ pps = 50 }}
"""


@pytest.fixture
def fresh_state() -> Iterator[None]:
    """The lab's shields share a state directory: no baselines from another test in, none left behind."""
    stored = Path(parse(lab_config("-")).shield.state_dir) / FILE_NAME
    stored.unlink(missing_ok=True)
    yield
    stored.unlink(missing_ok=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", lab.NS_SHIELD, sys.executable, "-m", "ddos_shield.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _starts(shield: LabShield, since: int = 0) -> list[dict[str, Any]]:
    shield.events.poll()
    return [e for e in shield.events.events[since:] if e["event"] == "attack_start" and e["target"] == VICTIM]


def _stored_row(shield: LabShield, deadline: float) -> dict[str, Any]:
    """The victim's row of ``ddos-shield baseline show``, once learned (or the last seen at the deadline)."""
    while True:
        out = _cli("baseline", "show", "--json", "--config", str(shield.config_path))
        assert out.returncode in (0, 1), out.stderr
        rows = {r["destination"]: r for r in json.loads(out.stdout)["rows"]} if out.returncode == 0 else {}
        row: dict[str, Any] = rows.get(str(lab.VICTIM_V4), {"learning": True})
        if not row["learning"] or time.monotonic() > deadline:
            return row
        time.sleep(1.0)


def _surge(seconds: float, rate: float = 60.0) -> LegitTraffic:
    return LegitTraffic.start(family=4, rate=rate, seconds=seconds)


def test_a_learned_surge_is_not_an_attack_and_a_small_flood_is(the_lab: Lab, tmp_path: Path, fresh_state: None) -> None:
    shield = LabShield(tmp_path, extra_config=BASELINE)
    shield.start()
    steady = LegitTraffic.start(family=4, rate=30.0, seconds=60)
    surges: list[LegitTraffic] = []
    try:
        # learning: 30 requests/s (a SYN each), with 2-s surges to 90/s every 5 s
        t0 = time.monotonic()
        while time.monotonic() - t0 < LEARNING + 2:
            surges.append(_surge(2.0))
            time.sleep(5.0)
        # the stored baselines say the victim has learned (written every 5 s)
        victim = _stored_row(shield, deadline=time.monotonic() + 20)
        assert not victim["learning"], victim
        syn = victim["categories"]["tcp_syn"]["pps"]
        assert 30 <= syn["level"] <= 90 and syn["spread"] > 5
        assert _starts(shield) == []  # nothing flagged while learning
        # after learning: a surge like those learned is not an attack...
        mark = len(shield.events.events)
        surges.append(_surge(4.0))
        time.sleep(5.0)
        assert _starts(shield, mark) == []
        # ...a SYN flood at a third of the static threshold (3,000/s) is
        mark = len(shield.events.events)
        launch(AttackSpec(kind="syn", family=4, pps=1000, seconds=2.0)).wait()
        start = shield.events.wait_for(
            lambda e: e["event"] == "attack_start" and e["target"] == VICTIM, timeout=5, since=mark
        )
        assert start is not None and start["basis"] == "baseline" and start["attack_types"] == ["syn_flood"]
    finally:
        for x in [steady, *surges]:
            x.stop()
        shield.stop()
        _cli("stop", "--detach", "--config", str(shield.config_path))
    # the legitimate clients were served throughout
    results = steady.results()
    assert len(results) >= 600 and sum(r["ok"] for r in results) / len(results) >= 0.95


def test_a_pulsing_attack_is_one_attack_with_one_rule(the_lab: Lab, tmp_path: Path, fresh_state: None) -> None:
    shield = LabShield(tmp_path, end_after_seconds=5.0, hold_seconds=3.0)
    shield.start()
    try:
        for _ in range(3):  # on 2 s, off 3 s
            launch(AttackSpec(kind="syn", family=4, pps=6000, seconds=2.0)).wait()
            time.sleep(3.0)
        end = shield.events.wait_for(lambda e: e["event"] == "attack_end" and e["target"] == VICTIM, timeout=15)
        assert end is not None
        removed = shield.events.wait_for(lambda e: e["event"] == "mitigation_removed", timeout=10)
        assert removed is not None
    finally:
        shield.stop()
        _cli("stop", "--detach", "--config", str(shield.config_path))
    evs = [e for e in shield.events.events if e.get("target", VICTIM) == VICTIM or e["event"].startswith("mitig")]
    names = [
        e["event"]
        for e in evs
        if e["event"] in ("attack_start", "attack_end", "mitigation_applied", "mitigation_removed")
    ]
    # one attack, one rule, withdrawn only after the attack ended: no flapping
    assert names == ["attack_start", "mitigation_applied", "attack_end", "mitigation_removed"]
    assert end["peak_pps"] >= 3000
    assert end["ts"] - end["started"] >= 12  # it spanned all three pulses
