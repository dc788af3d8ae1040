"""Dry run against a real enforcement point: nftables in a private namespace pair
(dsn-po-tx -> dsn-po-rx).  The engine decides and reports everything, the kernel
table stays empty and the packets pass; the same engine not in dry run drops them."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.mitigate.nftables import NftablesBackend, remove_table
from ddos_shield.records import Action, Match, as_network
from tests.vethpair import Observer, VethPair, frame

pytestmark = [pytest.mark.kernel]

TABLE = "dsn_po_shield"
ATTACKER = "198.18.7.7"


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = VethPair("dsn-po").create()
    try:
        yield p
    finally:
        p.delete()


@pytest.fixture
def backend(pair: VethPair) -> Iterator[tuple[NftablesBackend, Observer]]:
    with pair.inside():
        obs = Observer(pair.rx_if)
        b = NftablesBackend([pair.rx_if], table=TABLE)
    try:
        yield b, obs
    finally:
        with pair.inside():
            b.close()
            remove_table(TABLE)
            obs.close()


def engine(b: NftablesBackend, *, dry_run: bool, state: Path) -> Engine:
    cfg = parse(f'protected = ["203.0.113.0/24"]\n[shield]\ndry_run = {str(dry_run).lower()}\n')
    return Engine(cfg, ReplayDataPlane(), b, EventSink(io.StringIO()), state_file=state)


def test_dry_run_enforces_nothing_and_keeps_no_record(
    pair: VethPair, backend: tuple[NftablesBackend, Observer], tmp_path: Path
) -> None:
    b, obs = backend
    state = tmp_path / "mitigations.json"
    udp = frame(IP(src=ATTACKER, dst="203.0.113.10") / UDP(sport=4000, dport=9) / Raw(b"x" * 32))
    with pair.inside():
        dry = engine(b, dry_run=True, state=state)
        dry.start(time.time())
        rule = dry.add_mitigation(
            Match(src=as_network(f"{ATTACKER}/32")), Action.DROP, 30.0, actor="cli:test", reason="what if"
        )
        assert [m["state"] for m in dry.mitigations()] == ["dry_run"]
        assert b.list() == []  # the kernel table holds no rule
        pair.send([udp] * 20)
        time.sleep(0.1)
        assert obs.received() == {ATTACKER: 20}
        dry.withdraw_mitigation(rule.rule_id, actor="cli:test", reason="done")
        assert not state.exists()

        real = engine(b, dry_run=False, state=state)
        real.start(time.time())
        real.add_mitigation(Match(src=as_network(f"{ATTACKER}/32")), Action.DROP, 30.0, actor="cli:test", reason="now")
        assert [m["state"] for m in real.mitigations()] == ["active"] and len(b.list()) == 1
        obs.reset()
        pair.send([udp] * 20)
        time.sleep(0.1)
        assert obs.received() == {}
        assert state.exists()
