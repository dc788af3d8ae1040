"""Connection floods and slow attacks from sampled TCP packets."""

from __future__ import annotations

import numpy as np

from ddos_shield.config import parse
from ddos_shield.detect.connections import ConnectionDetector
from ddos_shield.records import AttackType, Category, empty_traffic
from tests.traffic import packets

CFG = parse('protected = ["203.0.113.0/24"]')
SRC = "198.51.100.66"
VICTIM = "203.0.113.10"


def conns(n: int, *, per_conn: int, seconds: float, syn: bool, src: str = SRC) -> np.ndarray:
    """``n`` connections from ``src``, each with a SYN (if ``syn``) and ``per_conn`` ACKs spread over ``seconds``."""
    parts = []
    for i in range(n):
        sport = 20000 + i
        if syn:
            parts.append(packets(1, src=src, dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=2, sport=sport))
        parts.append(
            packets(per_conn, src=src, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, sport=sport)
        )
    b = np.concatenate(parts)
    b["ts"] = np.linspace(0.0, seconds, len(b))
    return b


def test_many_fast_connections_from_one_source_are_a_connection_flood() -> None:
    # 300 connections a second for 2 s
    [f] = ConnectionDetector(CFG).observe(conns(600, per_conn=3, seconds=2.0, syn=True), now=10.0)
    assert (f.type, str(f.observation.target), str(f.source), f.breadth) == (
        AttackType.CONNECTION_FLOOD,
        f"{VICTIM}/32",
        SRC,
        600,
    )
    assert f.observation.categories == ()  # reported, not mitigated


def held(n: int, *, every: float, seconds: float) -> np.ndarray:
    """``n`` connections opened before the window, each sending a packet every ``every`` s."""
    parts = []
    for i in range(n):
        b = packets(
            int(seconds // every), src=SRC, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, sport=20000 + i
        )
        b["ts"] = i * 0.01 + np.arange(len(b)) * every
        parts.append(b)
    out = np.concatenate(parts)
    return out[np.argsort(out["ts"])]


def test_many_idle_connections_held_open_are_a_slow_attack() -> None:
    # Slowloris: 200 connections, each sending a header line every 10 s
    [f] = ConnectionDetector(CFG).observe(held(200, every=10.0, seconds=30.0), now=30.0)
    assert f.type == AttackType.SLOW_ATTACK and f.observation.categories == ()


def test_a_burst_of_connections_stays_a_connection_flood_once_over() -> None:
    det = ConnectionDetector(CFG)
    burst = conns(300, per_conn=2, seconds=0.5, syn=True)
    assert [f.type for f in det.observe(burst, now=5.0)] == [AttackType.CONNECTION_FLOOD]
    assert [f.type for f in det.observe(empty_traffic(), now=25.0)] == [AttackType.CONNECTION_FLOOD]


def test_ordinary_clients_and_a_busy_download_are_neither() -> None:
    clients = np.concatenate(
        [conns(6, per_conn=20, seconds=10.0, syn=True, src=f"198.51.100.{i}") for i in range(1, 60)]
    )
    download = conns(4, per_conn=5000, seconds=10.0, syn=True)
    assert ConnectionDetector(CFG).observe(np.concatenate([clients, download]), now=10.0) == []


def test_one_client_opening_a_connection_per_request_is_neither() -> None:
    # an API client: 90 requests a second for 30 s, a new connection each (2,700 in the window)
    assert ConnectionDetector(CFG).observe(conns(2700, per_conn=4, seconds=30.0, syn=True), now=30.0) == []


def test_one_client_whose_connections_idle_after_each_request_is_no_slow_attack() -> None:
    # a browser: 5 connections a second over 30 s, each idling 8 s (keep-alive) before it
    # closes: 150 connections in the window, each held and nearly idle, but 40 at a time
    parts = []
    for i in range(150):
        b = packets(3, src=SRC, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, sport=20000 + i)
        b["ts"] = i * 0.2 + np.array([0.0, 0.05, 8.0])
        parts.append(b)
    b = np.concatenate(parts)
    assert ConnectionDetector(CFG).observe(b[np.argsort(b["ts"])], now=38.0) == []


def test_a_flood_from_a_client_that_was_already_talking_is_not_diluted() -> None:
    # 20 s of a client at 5 connections a second, then 2 s of 400 a second
    before = conns(100, per_conn=3, seconds=20.0, syn=True)
    flood = conns(800, per_conn=2, seconds=2.0, syn=True)
    flood["ts"] += 20.0
    [f] = ConnectionDetector(CFG).observe(np.concatenate([before, flood]), now=22.0)
    assert f.type == AttackType.CONNECTION_FLOOD


def test_many_busy_connections_opened_slowly_are_no_attack() -> None:
    # a proxy holding 150 busy connections, opened before the window
    assert ConnectionDetector(CFG).observe(conns(150, per_conn=100, seconds=29.0, syn=False), now=30.0) == []


def test_off() -> None:
    off = parse('protected = ["203.0.113.0/24"]\n[classification]\nconnection_min_flows = 0')
    assert ConnectionDetector(off).observe(conns(600, per_conn=3, seconds=2.0, syn=True), now=10.0) == []
