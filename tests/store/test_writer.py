"""The writer thread behind a real engine: attacks, actions and packets reach the
database without the engine ever waiting for the disk; flush and close."""

from __future__ import annotations

import io
import subprocess
import threading
from pathlib import Path

import numpy as np

from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.records import Category
from ddos_shield.store import History, PacketTap, StoreWriter, open_store, store_path
from tests.store.conftest import Where
from tests.traffic import packets, spoofed_v4

CONFIG = """
protected = ["203.0.113.0/24"]
[shield]
interfaces = ["out0"]
[[groups]]
name = "default"
hold_seconds = 1.0
end_after_seconds = 1.0
[groups.thresholds]
udp = { pps = 5000 }
"""
VICTIM = "203.0.113.10"


def test_engine_events_and_packets_reach_the_history(where: Where, tmp_path: Path) -> None:
    # the engine runs on a clock of its own, 1000 s after 1970: retention_days keeps it from the age limit
    cfg = parse(CONFIG + where.toml() + "pcap_packets_per_attack = 300\nretention_days = 1e6\n")
    now = 1000.0
    dp = ReplayDataPlane(clock=lambda: now)
    tap = PacketTap()
    writer = open_store(cfg, tap)
    assert writer is not None and writer.history.engine == where.engine
    if where.engine == "sqlite":
        assert store_path(cfg) == where.path
    sink = EventSink(io.StringIO())
    sink.subscribe(writer)
    engine = Engine(cfg, dp, dp.backend, sink, clock=lambda: now, tap=tap)
    engine.start(now)
    srcs = spoofed_v4(500)
    for i in range(60):  # 2 s of flood, then 4 s of quiet
        if i < 20:
            dp.feed(packets(1000, src=srcs, dst=VICTIM, proto=17, category=Category.UDP, dport=53, ts=now))
        now += 0.1
        engine.tick(now)
        if i % 10 == 0:
            writer.flush()  # let the writer take packets while the attack lasts, as it would live
    assert writer.flush()
    h = writer.history
    [a] = h.attacks()
    assert (a["target"], a["types"], a["active"]) == (f"{VICTIM}/32", ["udp_flood"], False)
    assert a["peak_pps"] >= 9000
    full = h.attack(a["attack_id"])
    assert full is not None
    kinds = [e["event"] for e in full["timeline"]]
    assert kinds[0] == "attack_start" and "mitigation_applied" in kinds and "attack_end" in kinds
    assert "mitigation_removed" in kinds
    assert full["mitigations"][0]["match"]["dport"] == {"min": 53, "max": 53}
    assert [e["action"] for e in reversed(h.audit())] == ["mitigation_applied", "mitigation_removed"]
    # a capture of the flood: synthesised here (the replay data plane keeps no frames), bounded
    assert 100 <= a["packets_kept"] <= 300
    pkts = h.packets(a["attack_id"])
    assert len(pkts) == a["packets_kept"] and all(p.synthesized for p in pkts)
    pcap = tmp_path / "a.pcapng"
    data = h.pcap(a["attack_id"])
    assert data is not None
    pcap.write_bytes(data)
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "ip.dst", "-e", "udp.dstport"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {tuple(line.split("\t")) for line in out.stdout.splitlines()}
    assert rows == {(VICTIM, "53")}
    writer.close()


def test_the_engine_never_waits_for_a_stuck_writer(tmp_path: Path) -> None:
    history = History(tmp_path / "h.sqlite3")
    blocked = threading.Event()
    release = threading.Event()
    real_record = history.record

    def slow_record(*a: object, **kw: object) -> None:
        blocked.set()
        release.wait(30)
        real_record(*a, **kw)  # type: ignore[arg-type]

    history.record = slow_record  # type: ignore[method-assign]
    writer = StoreWriter(history, queue_size=10, batch_seconds=0.0)
    sink = EventSink(io.StringIO())
    sink.subscribe(writer)
    sink.emit("ready", 1.0)
    assert blocked.wait(5)
    t0 = __import__("time").perf_counter()
    for i in range(100):
        sink.emit("mitigation_skipped", 2.0 + i, reason="test", attack_id=1)
    took = __import__("time").perf_counter() - t0
    assert writer.dropped == 90  # the queue holds 10; the rest counted, not waited for
    assert took < 5  # loose: a blocked put would have hung until release
    release.set()
    assert writer.flush()
    assert writer.stats()["written"] == 11
    writer.close()
    assert len(History(tmp_path / "h.sqlite3").audit(limit=1000)) == 10


def test_disabled_store_opens_nothing(tmp_path: Path) -> None:
    cfg = parse(CONFIG + "[store]\nenabled = false\n")
    assert open_store(cfg) is None
    assert np.all(True)


def test_writer_follows_a_reloaded_retention(tmp_path: Path) -> None:
    cfg = parse(CONFIG)
    current = [cfg]
    h = History(tmp_path / "h.sqlite3")
    old = [
        {"event": "attack_start", "ts": 1000.0 + i, "attack_id": i, "target": "203.0.113.10/32", "group": "default"}
        for i in range(1, 4)
    ] + [{"event": "attack_end", "ts": 1010.0, "attack_id": i} for i in range(1, 4)]
    h.record(old)
    writer = StoreWriter(h, clock=lambda: 2000.0)
    writer.follow(lambda: current[0])
    assert writer.flush()
    assert len(h.attacks()) == 3  # 90 days keep them
    current[0] = parse(CONFIG + "[store]\nmax_attacks = 1\n")
    writer({"event": "ready", "ts": 2000.0})
    assert writer.flush()
    assert [a["attack_id"] for a in h.attacks()] == [3]
    writer.close()
