"""The service side end to end on a real kernel: the XDP data plane (or the nftables
fallback with its AF_PACKET sampler) on a veth pair, the
engine, the history and the alerts.  A spoofed UDP flood crosses the pair; the test
checks the alerts a real webhook receiver got, the rows in the history, and the pcap
of the attack as tshark reads it (real frames from the kernel's samples).

    dsn-sv-tx  tx0 ──veth── rx0  dsn-sv-rx   (XDP or nftables on rx0)
"""

from __future__ import annotations

import io
import ipaddress
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from ddos_shield.alerts import open_alerts
from ddos_shield.config import parse
from ddos_shield.dataplane import open_dataplane
from ddos_shield.dataplane.xdp import detach
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.store import PacketTap, open_store
from tests.alerts.receivers import WebhookReceiver
from tests.vethpair import VethPair, frame

pytestmark = [pytest.mark.kernel, pytest.mark.lab]

VICTIM = "203.0.113.10"
FRAMES = 3000
PPS = 1500.0


@pytest.fixture
def pair() -> Iterator[VethPair]:
    if os.geteuid() != 0 or not os.path.ismount("/sys/fs/bpf"):
        pytest.skip("needs root and bpffs")
    p = VethPair("dsn-sv").create()
    try:
        yield p
    finally:
        p.delete()


@pytest.fixture
def pin_dir() -> Iterator[str]:
    path = f"/sys/fs/bpf/dsn-sv-{uuid.uuid4().hex[:8]}"
    yield path
    detach(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("dataplane", ["xdp", "nftables"])
def test_flood_alerted_recorded_and_captured(pair: VethPair, pin_dir: str, tmp_path: Path, dataplane: str) -> None:
    hook = WebhookReceiver()
    cfg = parse(
        f"""
protected = ["203.0.113.0/24"]
[shield]
interfaces = ["rx0"]
pin_dir = "{pin_dir}"
dataplane = "{dataplane}"
xdp_mode = "generic"
state_dir = "{tmp_path}"
[store]
pcap_packets_per_attack = 500
[alerts]
dashboard_url = "https://shield.example.net"
[[alerts.webhooks]]
url = "{hook.url}"
secret = "k"
[[groups]]
name = "default"
hold_seconds = 1.0
end_after_seconds = 1.0
[groups.thresholds]
udp = {{ pps = 500 }}
"""
    )
    tap = PacketTap()
    store = open_store(cfg, tap)
    alerts = open_alerts(cfg)
    assert store is not None and alerts is not None
    sink = EventSink(io.StringIO())
    sink.subscribe(store)
    sink.subscribe(alerts)
    with pair.inside():
        dp = open_dataplane(cfg)
    assert dp.name == dataplane
    engine = Engine(cfg, dp, dp.backend, sink, tap=tap)
    frames = [
        frame(
            IP(src=f"198.18.{i // 200}.{i % 200 + 1}", dst=VICTIM, ttl=57)
            / UDP(sport=123, dport=4444)
            / Raw(b"A" * 200)
        )
        for i in range(FRAMES)
    ]
    try:
        engine.start(time.time())
        sender = threading.Thread(target=pair.send, args=(frames, PPS))
        sender.start()
        deadline = time.monotonic() + FRAMES / PPS + 4.0
        while time.monotonic() < deadline:
            engine.tick(time.time())
            time.sleep(0.1)
        sender.join()
        sink.emit("stopped", time.time(), detached=True)
        assert alerts.flush(20) and store.flush(20)
    finally:
        engine.close()
        with pair.inside():
            dp.close(detach=True)
        alerts.close()

    # alerts: the attack's start and its rule, with the evidence and the link
    got = hook.wait(2)
    hook.close()
    kinds = [p["kind"] for p in got]
    assert kinds[0] == "attack_start" and "mitigation_applied" in kinds
    start = got[0]
    aid = start["attack"]["attack_id"]
    assert start["attack"]["target"] == f"{VICTIM}/32"
    assert start["attack"]["url"] == f"https://shield.example.net/attacks/{aid}"
    assert start["evidence"][0]["category"] == "udp" and start["evidence"][0]["limit_pps"] == 500

    # history: the attack, its rule and the audit entry
    h = store.history
    a = h.attack(aid)
    assert a is not None and a["target"] == f"{VICTIM}/32" and a["peak_pps"] > 500
    assert a["mitigations"] and a["mitigations"][0]["actor"] == "shield"
    assert any(e["action"] == "mitigation_applied" for e in h.audit())

    # the pcap: real sampled frames (the XDP ring buffer's or the AF_PACKET sampler's), first 128 bytes, original lengths
    pkts = h.packets(aid)
    assert 50 <= len(pkts) <= 500 and not any(p.synthesized for p in pkts)
    pcap = tmp_path / "attack.pcapng"
    data = h.pcap(aid)
    assert data is not None
    pcap.write_bytes(data)
    store.close()
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
            "-e",
            "ip.ttl",
            "-e",
            "frame.len",
            "-e",
            "frame.cap_len",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) == len(pkts)
    spoof = ipaddress.ip_network("198.18.0.0/15")
    for src, dst, dport, ttl, flen, caplen in rows:
        assert ipaddress.ip_address(src) in spoof
        assert (dst, dport, ttl, flen, caplen) == (VICTIM, "4444", "57", "242", "128")
    info = subprocess.run(["capinfos", "-k", str(pcap)], capture_output=True, text=True, timeout=30)
    assert "captured by the data plane" in info.stdout
