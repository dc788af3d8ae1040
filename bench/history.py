"""The history on its two engines: SQLite (a file, WAL) and PostgreSQL (a private server
on a Unix socket, started as the tests start it: tests/postgres.py, durability off).

    .venv/bin/python bench/history.py [--runs 5] [--attacks 250]

* **record** -- events per second ``History.record`` folds in, in batches of
  4 x ``--attacks`` events (each attack: start, mitigation applied, update, end), which
  is how the writer thread hands them over;
* **packets** -- one batch of 2,000 sampled packets (128-byte frames) for an attack;
* **pcap** -- ``History.pcap`` of that attack;
* **attacks** -- ``History.attacks(limit=100)``, the API's history page.

Each figure is the median of ``--runs`` runs (the machine is shared and noisy).  Prints
a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.postgres import PostgresServer

from ddos_shield.store import History, Packet


def events(base: int, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        aid, t = base + i, 1000.0 + i
        att = {"attack_id": aid, "target": "203.0.113.10/32", "group": "web", "attack_types": ["udp_flood"]}
        rule = {"mitigation_id": aid, "action": "drop", "match": {"dst": "203.0.113.10/32"}, "attack_id": aid}
        out += [
            {"event": "attack_start", "ts": t, **att, "pps": 9e3, "bps": 1e7, "started": t},
            {"event": "mitigation_applied", "ts": t + 0.5, "attack_id": aid, "rule": rule, "backend": "xdp"},
            {"event": "attack_update", "ts": t + 1, **att, "pps": 2e4, "peak_pps": 2e4},
            {"event": "attack_end", "ts": t + 2, **att},
        ]
    return out


def measure(h: History, runs: int, attacks: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {"record": [], "packets": [], "pcap": [], "attacks": []}
    for r in range(runs):
        evs = events(r * attacks + 1, attacks)
        t = time.perf_counter()
        h.record(evs)
        got["record"].append(len(evs) / (time.perf_counter() - t))
        pkts = [Packet(1000.0 + i * 0.001, 1400, bytes(128), False) for i in range(2000)]
        t = time.perf_counter()
        h.record([], {r * attacks + 1: pkts})
        got["packets"].append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        h.pcap(r * attacks + 1)
        got["pcap"].append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        h.attacks(limit=100)
        got["attacks"].append((time.perf_counter() - t) * 1e3)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--attacks", type=int, default=250)
    args = ap.parse_args()
    server = PostgresServer.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lite = History(Path(tmp) / "h.sqlite3")
            pg = History(dsn=server.new_database())
            results = {
                "SQLite": measure(lite, args.runs, args.attacks),
                "PostgreSQL": measure(pg, args.runs, args.attacks),
            }
            lite.close()
            pg.close()
    finally:
        server.stop()

    def med(engine: str, key: str) -> float:
        return statistics.median(results[engine][key])

    def runs(engine: str, key: str) -> str:
        return ", ".join(f"{x:,.0f}" if key == "record" else f"{x:.1f}" for x in results[engine][key])

    print("## History on SQLite and on PostgreSQL (`bench/history.py`)\n")
    print(
        f"Machine: {platform.platform()}, {time.strftime('%Y-%m-%d')}; the median of {args.runs} runs, each run listed in order.\n"
    )
    print("| figure | SQLite (median) | SQLite runs | PostgreSQL (median) | PostgreSQL runs | PostgreSQL / SQLite |")
    print("|---|---:|---|---:|---|---:|")
    for key, label in (
        ("record", f"record, events/s (batches of {4 * args.attacks})"),
        ("packets", "2,000 packets of an attack, ms"),
        ("pcap", "pcap of those 2,000 packets, ms"),
        ("attacks", "attacks(limit=100), ms"),
    ):
        a, b = med("SQLite", key), med("PostgreSQL", key)
        fa, fb = (f"{a:,.0f}", f"{b:,.0f}") if key == "record" else (f"{a:.1f}", f"{b:.1f}")
        print(f"| {label} | {fa} | {runs('SQLite', key)} | {fb} | {runs('PostgreSQL', key)} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
