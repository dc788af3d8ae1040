"""What the history and the alerts cost the shield: the engine's side of each event, the
writer's throughput, the tap, a scrape, and a pcap.

    .venv/bin/python bench/service.py [--runs 5] [--events 20000]

* **emit** -- ``EventSink.emit`` of an attack update (to an in-memory stream) with no
  subscriber, then with the history writer and an alert dispatcher subscribed (one
  webhook receiver on loopback): what the engine's thread pays per event.
* **writer** -- events per second the writer thread folds into SQLite (WAL, on the
  disk under a temporary directory): a mix of attack updates (75 %), starts and ends,
  mitigations applied and removed; from the first emit to ``flush()`` returning.
* **tap** -- ``PacketTap.add`` of a 4,000-row sample batch with 128-byte frames (what
  the engine adds each tick at the default sampling target), and ``take`` of 2,000
  packets of one target.
* **scrape** -- one Prometheus exposition (process metrics included) of an engine
  snapshot with 512 destinations in 4 host groups.
* **pcap** -- ``History.pcap`` of an attack holding 2,000 captured packets.

Each figure is the median of ``--runs`` runs (the machine is shared and noisy).  Prints
a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.traffic import packets

from ddos_shield.alerts import AlertDispatcher, senders_for
from ddos_shield.api.metrics import render, shield_registry
from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.records import Category, as_network
from ddos_shield.store import History, Packet, PacketTap, StoreWriter

CONFIG = """
protected = ["203.0.113.0/24", "198.51.100.0/24"]
[shield]
interfaces = ["out0"]
[[groups]]
name = "web"
prefixes = ["203.0.113.0/25"]
[[groups]]
name = "dns"
prefixes = ["203.0.113.128/25"]
[[groups]]
name = "mail"
prefixes = ["198.51.100.0/25"]
"""


def attack_event(kind: str, aid: int, ts: float) -> dict[str, Any]:
    return {
        "attack_id": aid,
        "target": f"203.0.113.{aid % 250 + 1}/32",
        "group": "web",
        "attack_types": ["udp_flood"],
        "categories": ["udp"],
        "pps": 90000.0,
        "bps": 5e8,
        "peak_pps": 90000.0,
        "peak_bps": 5e8,
        "started": ts,
    }


def mix(n: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        aid = i // 8 + 1
        k = i % 8
        if k == 0:
            out.append(("attack_start", attack_event("attack_start", aid, 0)))
        elif k == 1:
            rule = {"mitigation_id": aid, "action": "drop", "match": {"proto": 17}, "attack_id": aid}
            out.append(("mitigation_applied", {"rule": rule, "attack_id": aid, "backend": "xdp", "actor": "shield"}))
        elif k == 6:
            out.append(("attack_end", attack_event("attack_end", aid, 0)))
        elif k == 7:
            rule = {"mitigation_id": aid, "action": "drop", "match": {"proto": 17}, "attack_id": aid}
            out.append(("mitigation_removed", {"rule": rule, "attack_id": aid, "reason": "expired", "actor": "shield"}))
        else:
            out.append(("attack_update", attack_event("attack_update", aid, 0)))
    return out


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    vals = [fn() for _ in range(runs)]
    return statistics.median(vals), vals


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


def bench_emit(n: int, tmp: Path, subscribed: bool) -> float:
    """Mean microseconds per emit on the emitting thread."""
    sink = EventSink(io.StringIO())
    writer = alerts = None
    srv = None
    if subscribed:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        import threading

        threading.Thread(target=srv.serve_forever, daemon=True).start()
        cfg = parse(
            CONFIG
            + f'[alerts]\nupdate_interval_seconds = 0\n[[alerts.webhooks]]\nurl = "http://127.0.0.1:{srv.server_address[1]}/"\n'
        )
        writer = StoreWriter(History(tmp / f"e{time.monotonic_ns()}.sqlite3"), queue_size=n + 10)
        alerts = AlertDispatcher(cfg, senders_for(cfg))
        sink.subscribe(writer)
        sink.subscribe(alerts)
    evs = mix(n)
    t0 = time.perf_counter()
    for i, (kind, fields) in enumerate(evs):
        sink.emit(kind, 1000.0 + i * 0.001, **fields)
    took = time.perf_counter() - t0
    if writer is not None and alerts is not None and srv is not None:
        writer.close(60)
        alerts.close(1)
        srv.shutdown()
    return took / n * 1e6


def bench_writer(n: int, tmp: Path) -> float:
    writer = StoreWriter(History(tmp / f"w{time.monotonic_ns()}.sqlite3"), queue_size=n + 10)
    sink = EventSink(io.StringIO())
    sink.subscribe(writer)
    evs = mix(n)
    t0 = time.perf_counter()
    for i, (kind, fields) in enumerate(evs):
        sink.emit(kind, 1000.0 + i * 0.001, **fields)
    assert writer.flush(120)
    took = time.perf_counter() - t0
    assert writer.written == n, writer.stats()
    writer.close()
    return n / took


def bench_tap() -> tuple[float, float]:
    tap = PacketTap()
    b = packets(4000, src="198.18.0.1", dst="203.0.113.10", proto=17, category=Category.UDP, ts=1000.0)
    frames = (np.random.default_rng(0).integers(0, 255, (4000, 128), dtype=np.uint8), np.full(4000, 128))
    t0 = time.perf_counter()
    for _ in range(50):
        tap.add(b, frames)
    add = (time.perf_counter() - t0) / 50 * 1e3
    t0 = time.perf_counter()
    got = tap.take(as_network("203.0.113.10/32"), 0.0, 2000)
    take = (time.perf_counter() - t0) * 1e3
    assert len(got) == 2000
    return add, take


def bench_scrape() -> float:
    cfg = parse(CONFIG)
    now = 1000.0
    dp = ReplayDataPlane(clock=lambda: now)
    engine = Engine(cfg, dp, dp.backend, EventSink(io.StringIO()), clock=lambda: now)
    engine.start(now)
    rng = np.random.default_rng(1)
    dsts = [f"203.0.113.{i % 256}" for i in range(256)] + [f"198.51.100.{i % 256}" for i in range(256)]
    for d in dsts:
        dp.feed(packets(int(rng.integers(1, 5)), src="192.0.2.1", dst=d, proto=6, category=Category.TCP, ts=now))
    now += 0.1
    engine.tick(now)
    reg = shield_registry(engine.snapshot)
    t0 = time.perf_counter()
    for _ in range(20):
        render(reg)
    return (time.perf_counter() - t0) / 20 * 1e3


def bench_pcap(tmp: Path) -> float:
    h = History(tmp / f"p{time.monotonic_ns()}.sqlite3")
    h.record([{"event": "attack_start", "ts": 1.0, **attack_event("attack_start", 1, 1.0)}])
    h.record([], {1: [Packet(1.0 + i * 1e-3, 1200, bytes(128), False) for i in range(2000)]})
    t0 = time.perf_counter()
    data = h.pcap(1)
    took = (time.perf_counter() - t0) * 1e3
    assert data is not None and len(data) > 2000 * 128
    h.close()
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--events", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bare, bare_runs = median_of(args.runs, lambda: bench_emit(args.events, tmp, False))
        subs, subs_runs = median_of(args.runs, lambda: bench_emit(args.events, tmp, True))
        wr, wr_runs = median_of(args.runs, lambda: bench_writer(args.events, tmp))
        taps = [bench_tap() for _ in range(args.runs)]
        sc, sc_runs = median_of(args.runs, bench_scrape)
        pc, pc_runs = median_of(args.runs, lambda: bench_pcap(tmp))
    add = statistics.median(t[0] for t in taps)
    take = statistics.median(t[1] for t in taps)

    def runs(v: list[float], fmt: str = "{:.1f}") -> str:
        return ", ".join(fmt.format(x) for x in v)

    print("## History, alerts and metrics cost (`bench/service.py`)\n")
    print(f"{platform.node()}: Python {platform.python_version()}, {args.runs} runs of {args.events:,} events each,")
    print(f"measured {time.strftime('%Y-%m-%d')}.\n")
    print("| figure | median | runs |")
    print("|---|---:|---|")
    print(f"| emit, no subscriber (µs/event) | {bare:.1f} | {runs(bare_runs)} |")
    print(f"| emit, history + alerts subscribed (µs/event) | {subs:.1f} | {runs(subs_runs)} |")
    print(f"| writer throughput (events/s into SQLite) | {wr:,.0f} | {runs(wr_runs, '{:,.0f}')} |")
    print(f"| tap add, 4,000 rows with frames (ms) | {add:.2f} | {runs([t[0] for t in taps], '{:.2f}')} |")
    print(f"| tap take, 2,000 packets of one target (ms) | {take:.1f} | {runs([t[1] for t in taps])} |")
    print(f"| Prometheus scrape, 512 destinations (ms) | {sc:.2f} | {runs(sc_runs, '{:.2f}')} |")
    print(f"| pcap of 2,000 packets (ms) | {pc:.1f} | {runs(pc_runs)} |")
    print(f"\nSubscribers add {subs / bare:.2f}x to an emit (ratio of medians).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
