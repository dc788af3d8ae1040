"""Reconciliation against the real XDP maps (loaded in a private bpffs pin directory,
attached nowhere): a restarted engine re-applies what its record holds and the kernel
lost, withdraws what the kernel holds and the record does not, and drops what expired."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddos_shield.config import parse
from ddos_shield.dataplane.xdp import XdpDataPlane, detach
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.records import Action, Match, Rule, as_network

pytestmark = [pytest.mark.kernel]

BPFFS = "/sys/fs/bpf"
CONFIG = 'protected = ["203.0.113.0/24"]\n'


@pytest.fixture
def pin_dir() -> Iterator[str]:
    if os.geteuid() != 0 or not os.path.ismount(BPFFS) or shutil.which("clang") is None:
        pytest.skip("needs root, bpffs and clang")
    path = os.path.join(BPFFS, f"dsn-po-{uuid.uuid4().hex[:8]}")
    yield path
    detach(path)
    shutil.rmtree(path, ignore_errors=True)


def start(pin_dir: str, state: Path) -> tuple[XdpDataPlane, Engine, io.StringIO]:
    dp = XdpDataPlane.open([], pin_dir)
    out = io.StringIO()
    eng = Engine(parse(CONFIG), dp, dp.backend, EventSink(out), state_file=state)
    eng.start(time.time())
    return dp, eng, out


def test_restart_reconciles_the_kernel_with_the_record(pin_dir: str, tmp_path: Path) -> None:
    state = tmp_path / "mitigations.json"
    dp, eng, _ = start(pin_dir, state)
    keep = eng.add_mitigation(Match(src=as_network("198.18.0.1/32")), Action.DROP, 60, actor="cli:a", reason="keep")
    lost = eng.add_mitigation(
        Match(proto=17, dst=as_network("203.0.113.10/32")),
        Action.RATE_LIMIT,
        60,
        rate_pps=500,
        per_source=True,
        actor="cli:a",
        reason="lost",
    )
    short = eng.add_mitigation(Match(src=as_network("198.18.0.3/32")), Action.DROP, 1, actor="cli:a", reason="short")
    dp.close()  # the process "dies": the maps stay pinned, the record on disk
    # while no shield runs: one rule vanishes from the kernel, a stranger appears, one expires
    dp2 = XdpDataPlane.open([], pin_dir)
    dp2.backend.withdraw(lost.rule_id)
    stranger = dp2.backend.apply(Rule(Match(src=as_network("198.18.0.9/32")), Action.DROP, time.time() + 60))
    dp2.close()
    time.sleep(1.1)

    dp3, eng3, out = start(pin_dir, state)
    try:
        events = [json.loads(x) for x in out.getvalue().splitlines()]
        (rec,) = [e for e in events if e["event"] == "mitigations_reconciled"]
        assert (rec["kept"], rec["reapplied"], rec["orphaned"], rec["expired"]) == (
            [keep.rule_id],
            [lost.rule_id],
            [stranger.rule_id],
            [short.rule_id],
        )
        kernel = {r.rule_id: r for r in dp3.backend.list()}
        assert sorted(kernel) == sorted([keep.rule_id, lost.rule_id])
        got = kernel[lost.rule_id]
        assert (got.action, got.rate_pps, got.per_source) == (Action.RATE_LIMIT, 500, True)
        assert sorted(m["mitigation_id"] for m in eng3.mitigations()) == sorted([keep.rule_id, lost.rule_id])
        saved = json.loads(state.read_text())
        assert sorted(m["rule"]["mitigation_id"] for m in saved["mitigations"]) == sorted([keep.rule_id, lost.rule_id])
        assert saved["next_id"] > stranger.rule_id  # ids never reused
    finally:
        dp3.close()
