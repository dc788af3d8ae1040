"""Port scans and host sweeps from sampled probes (real scans: tests/engine/test_offline.py)."""

from __future__ import annotations

import numpy as np

from ddos_shield.config import parse
from ddos_shield.detect.scan import ScanDetector, probes
from ddos_shield.records import AttackType, Category, as_network, empty_traffic
from tests.traffic import packets

CFG = parse('protected = ["203.0.113.0/24", "2001:db8:113::/64"]')
SCANNER = "198.51.100.66"
VICTIM = "203.0.113.10"


def syn_probes(ports: range, *, dst: str = VICTIM, src: str = SCANNER, t0: float = 0.0) -> np.ndarray:
    rows = [packets(1, src=src, dst=dst, proto=6, category=Category.TCP_SYN, tcp_flags=2, dport=p) for p in ports]
    b = np.concatenate(rows)
    b["ts"] = t0 + np.arange(len(b)) * 0.01
    return b


def test_vertical_scan_is_a_port_scan_of_the_host() -> None:
    det = ScanDetector(CFG)
    [f] = det.observe(syn_probes(range(1, 101)), now=1.0)
    assert (f.type, str(f.observation.target), str(f.source), f.breadth) == (
        AttackType.PORT_SCAN,
        f"{VICTIM}/32",
        SCANNER,
        100,
    )
    assert f.observation.categories == () and f.observation.group == "default"


def test_few_ports_or_many_clients_are_no_scan() -> None:
    det = ScanDetector(CFG)
    # a browser opening 30 connections to ports 80/443; 200 clients to port 80
    web = syn_probes(range(80, 81)).repeat(30)
    clients = np.concatenate([syn_probes(range(80, 81), src=f"198.51.100.{i}") for i in range(1, 201)])
    assert det.observe(np.concatenate([web, clients]), now=1.0) == []


def test_horizontal_sweep_covers_the_swept_hosts() -> None:
    det = ScanDetector(CFG)
    b = np.concatenate([syn_probes(range(22, 23), dst=f"203.0.113.{i}") for i in range(1, 101)])
    [f] = det.observe(b, now=1.0)
    assert (f.type, str(f.observation.target), f.breadth) == (AttackType.HOST_SWEEP, "203.0.113.0/24", 100)


def test_ping_sweep() -> None:
    b = np.concatenate(
        [
            packets(1, src=SCANNER, dst=f"203.0.113.{i}", proto=1, category=Category.ICMP, dport=0x0800)
            for i in range(100)
        ]
    )
    [f] = ScanDetector(CFG).observe(b, now=0.0)
    assert f.type == AttackType.HOST_SWEEP and str(f.observation.target) == "203.0.113.0/24"


def test_answers_from_service_ports_are_not_probes() -> None:
    # a resolver's answers arrive on many ports of one host: not a UDP scan
    b = np.concatenate(
        [
            packets(1, src="198.51.100.53", dst=VICTIM, proto=17, category=Category.UDP, sport=53, dport=p)
            for p in range(30000, 30200)
        ]
    )
    assert not probes(b).any()
    assert ScanDetector(CFG).observe(b, now=0.0) == []
    udp_scan = b.copy()
    udp_scan["sport"], udp_scan["dport"] = 45000, np.arange(1, 201)
    assert [f.type for f in ScanDetector(CFG).observe(udp_scan, now=0.0)] == [AttackType.PORT_SCAN]


def test_a_scan_ends_when_its_probes_leave_the_window() -> None:
    det = ScanDetector(CFG)
    assert len(det.observe(syn_probes(range(1, 101)), now=1.0)) == 1
    assert len(det.observe(empty_traffic(), now=5.0)) == 1  # still inside 10 s
    assert det.observe(empty_traffic(), now=12.0) == []


def test_thresholds_from_the_configuration_and_off() -> None:
    few = syn_probes(range(1, 21))
    cfg = parse('protected = ["203.0.113.0/24"]\n[classification]\nscan_min_ports = 20')
    assert len(ScanDetector(cfg).observe(few, now=1.0)) == 1
    off = parse('protected = ["203.0.113.0/24"]\n[classification]\nscan_min_ports = 0\nsweep_min_hosts = 0')
    assert ScanDetector(off).observe(syn_probes(range(1, 500)), now=5.0) == []


def test_ipv6_scan_targets_the_aggregated_prefix() -> None:
    b = np.concatenate(
        [
            packets(1, src="2001:db8:100::66", dst="2001:db8:113::10", proto=6, category=Category.TCP_SYN, dport=p)
            for p in range(1, 101)
        ]
    )
    [f] = ScanDetector(CFG).observe(b, now=0.0)
    assert f.observation.target == as_network("2001:db8:113::/64")
