"""A mirror port as the only telemetry: frames addressed to other hosts, sampled by the
kernel filter, counted and detected by the engine."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ddos_shield.capture.mirror import MirrorSource
from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from tests.vethpair import TX_MAC, VethPair

pytestmark = [pytest.mark.lab]

CONFIG = """
protected = ["203.0.113.0/24"]
[[sources]]
type = "mirror"
interface = "rx0"
sample_every = 2
[[groups]]
name = "default"
end_after_seconds = 1.0
hold_seconds = 1.0
[groups.thresholds]
udp = { pps = 500 }
"""


@pytest.fixture
def pair() -> Iterator[VethPair]:
    p = VethPair("dsn-mir").create()
    try:
        yield p
    finally:
        p.delete()


def test_flood_seen_on_a_mirror_port_is_detected(pair: VethPair) -> None:
    cfg = parse(CONFIG)
    out = io.StringIO()
    dp = ReplayDataPlane()
    dp.name = "none"
    src = MirrorSource("rx0", sample_every=2)
    engine = Engine(cfg, dp, dp.backend, EventSink(out), sources=[src])
    # mirrored frames are addressed to another host's MAC: only promiscuous capture sees them
    frames = [
        bytes(
            Ether(src=TX_MAC, dst="02:00:00:00:99:99")
            / IP(src=f"198.18.{i // 250}.{i % 250 + 1}", dst="203.0.113.10")
            / UDP(sport=1234, dport=53)
        )
        for i in range(3000)
    ]
    with pair.inside():
        engine.start(time.time())
    sender = threading.Thread(target=pair.send, args=(frames, 2000.0))
    try:
        sender.start()
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            time.sleep(0.1)
            engine.tick(time.time())
        sender.join()
    finally:
        engine.close()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    starts = [e for e in events if e["event"] == "attack_start"]
    assert [(e["target"], e["attack_types"]) for e in starts] == [("203.0.113.10/32", ["udp_flood"])]
    applied = [e for e in events if e["event"] == "mitigation_applied"]
    assert applied and applied[0]["rule"]["match"]["dport"] == {"min": 53, "max": 53}
    stats = src.stats()["rx0"]
    # 1-in-2 sampling of 3000 frames, scaled back by 2: within sampling error of 3000
    assert 2500 <= stats.packets <= 3500
