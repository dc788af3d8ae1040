"""The Prometheus exposition of a running engine, read back by the official parser;
the Grafana dashboard queries only metrics that exist."""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ddos_shield.alerts import AlertDispatcher
from ddos_shield.api.metrics import render, shield_registry
from ddos_shield.capture.collector import FlowCollector
from ddos_shield.capture.netflow import NetflowDecoder
from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.records import Category
from ddos_shield.store import History, StoreWriter
from tests.traffic import packets

CONFIG = """
protected = ["203.0.113.0/24"]
[shield]
interfaces = ["out0"]
[[groups]]
name = "default"
[groups.thresholds]
udp = { pps = 5000 }
[[groups]]
name = "dns"
prefixes = ["203.0.113.53/32"]
[groups.thresholds]
udp = { pps = 100000 }
"""
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ddos-shield.json"


def netflow_v5(dst: str, packets: int) -> bytes:
    hdr = struct.pack("!HHIIIIBBH", 5, 1, 1000, int(time.time()), 0, 1, 0, 0, 0)
    rec = struct.pack(
        "!4s4s4sHHIIIIHHBBBBHHBBH",
        socket.inet_aton("198.51.100.7"),
        socket.inet_aton(dst),
        bytes(4),
        1,
        2,
        packets,
        packets * 100,
        900,
        1000,
        53,
        53,
        0,
        0,
        17,
        0,
        0,
        0,
        24,
        32,
        0,
    )
    return hdr + rec


def samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


@pytest.fixture
def exposition(tmp_path: Path) -> str:
    cfg = parse(CONFIG)
    now = 1000.0
    dp = ReplayDataPlane(clock=lambda: now)
    coll = FlowCollector("netflow", ("127.0.0.1", 0), ["127.0.0.1"], NetflowDecoder)
    engine = Engine(cfg, dp, dp.backend, EventSink(io.StringIO()), clock=lambda: now, sources=[coll])
    engine.start(now)
    writer = StoreWriter(History(tmp_path / "h.sqlite3"))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(netflow_v5("203.0.113.99", 10), coll.address)
            s.sendto(b"\x00\x05garbage", coll.address)  # malformed: counted
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))  # not a trusted exporter
            s.sendto(netflow_v5("203.0.113.99", 10), coll.address)
        deadline = time.monotonic() + 5
        while sum(st.datagrams + st.untrusted for st in coll.stats().values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(20):  # a UDP flood at one web server, DNS traffic at the DNS server
            dp.feed(packets(1000, src="198.18.0.1", dst="203.0.113.10", proto=17, category=Category.UDP, ts=now))
            dp.feed(packets(100, src="198.51.100.1", dst="203.0.113.53", proto=17, category=Category.UDP, ts=now))
            now += 0.1
            engine.tick(now)
        alerts = AlertDispatcher(cfg, [])
        text = render(shield_registry(engine.snapshot, store=writer, alerts=alerts))[0].decode()
        alerts.close()
    finally:
        engine.close()
        writer.close()
    return text


def test_exposition_parses_and_says_what_happens(exposition: str) -> None:
    got = samples(exposition)
    pps = {(s.labels["protocol"], s.labels["group"]): s.value for s in got["ddos_shield_traffic_packets_per_second"]}
    assert pps[("udp", "default")] == pytest.approx(10000, rel=0.05)
    assert pps[("udp", "dns")] == pytest.approx(1000, rel=0.05)
    assert pps[("tcp_syn", "dns")] == 0
    bps = {(s.labels["protocol"], s.labels["group"]): s.value for s in got["ddos_shield_traffic_bits_per_second"]}
    assert bps[("udp", "dns")] == pytest.approx(1000 * 60 * 8, rel=0.05)
    assert {(s.labels["group"], s.value) for s in got["ddos_shield_attacks_active"]} == {("default", 1), ("dns", 0)}
    [atk] = got["ddos_shield_attack_packets_per_second"]
    assert atk.labels["target"] == "203.0.113.10/32" and atk.value > 5000
    [mit] = got["ddos_shield_mitigations_active"]
    assert (mit.labels["backend"], mit.value) == ("memory", 1)
    [hits] = got["ddos_shield_rule_hits_total"]
    assert hits.value > 0 and hits.labels["mitigation_id"] != "0"
    dp_counters = {s.labels["counter"]: s.value for s in got["ddos_shield_dataplane_packets_total"]}
    assert dp_counters["rx"] == 22000
    by_exporter = {
        (name, s.labels["exporter"]): s.value
        for name in (
            "ddos_shield_collector_datagrams_total",
            "ddos_shield_collector_errors_total",
            "ddos_shield_collector_untrusted_total",
            "ddos_shield_collector_records_total",
        )
        for s in got[name]
        if s.labels["source"] == "netflow"
    }
    assert by_exporter[("ddos_shield_collector_datagrams_total", "127.0.0.1")] == 2
    assert by_exporter[("ddos_shield_collector_errors_total", "127.0.0.1")] == 1
    assert by_exporter[("ddos_shield_collector_records_total", "127.0.0.1")] == 1
    assert by_exporter[("ddos_shield_collector_untrusted_total", "127.0.0.2")] == 1
    assert [s.value for s in got["ddos_shield_control_loop_seconds_count"]] == [20]
    inf = [s for s in got["ddos_shield_control_loop_seconds_bucket"] if s.labels["le"] == "+Inf"]
    assert inf[0].value == 20
    assert got["process_resident_memory_bytes"][0].value > 0


def test_grafana_dashboard_queries_existing_metrics(exposition: str) -> None:
    names = set(samples(exposition))
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    used = {m for e in exprs for m in re.findall(r"\b((?:ddos_shield|process)_[a-z_]+)", e)}
    missing = sorted(used - names)
    assert not missing, f"the dashboard queries metrics the shield does not export: {missing}"
    # and it shows every family the shield itself exports
    shield = {n for n in names if n.startswith("ddos_shield_")}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in shield}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - shown <= {"ddos_shield_sample_every", "ddos_shield_destinations"}
