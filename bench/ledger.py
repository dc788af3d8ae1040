"""What the shield's record of mitigations costs (engine/ledger.py).

Prints, for N mitigations held: the time to write the record (versioned JSON, written
to a temporary file, fsync'd, renamed) and to read it back, and the time of the engine
tick in which an attack's N source rules are applied (policy, in-memory backend,
record written once at the end of the tick), median of several runs.

    .venv/bin/python bench/ledger.py [--runs 5] [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import statistics
import tempfile
import time
from pathlib import Path

from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.engine import Engine
from ddos_shield.engine.ledger import Entry, Ledger
from ddos_shield.events import EventSink
from ddos_shield.records import Action, Match, Rule


def ledger_of(n: int, path: Path) -> Ledger:
    led = Ledger(path)
    base = int(ipaddress.ip_address("198.18.0.0"))
    for i in range(n):
        net = ipaddress.ip_network(ipaddress.ip_address(base + i))
        rule = Rule(Match(src=net), Action.DROP, 2e9, rule_id=led.new_id(), attack_id=7, created_at=1.7e9, reason="r")
        led.add(Entry(rule, backend="xdp", state="active", actor="shield", reason="drop_sources", origin="auto"))
    return led


def time_save_load(n: int, runs: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mitigations.json"
        led = ledger_of(n, path)
        saves, loads = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            led.save()
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            Ledger.load(path)
            loads.append(time.perf_counter() - t0)
        return statistics.median(saves), statistics.median(loads), path.stat().st_size


def time_manual_adds(n: int) -> float:
    """Operators' rules one call at a time (each call writes the record)."""
    cfg = parse('protected = ["203.0.113.0/24"]\n[mitigation]\nmax_rules_total = 100000\n')
    with tempfile.TemporaryDirectory() as d:
        dp = ReplayDataPlane()
        eng = Engine(cfg, dp, dp.backend, EventSink(io.StringIO(), keep=1), state_file=Path(d) / "m.json")
        eng.start(time.time())
        base = int(ipaddress.ip_address("198.18.0.0"))
        t0 = time.perf_counter()
        for i in range(n):
            net = ipaddress.ip_network(ipaddress.ip_address(base + i))
            eng.add_mitigation(Match(src=net), Action.DROP, 600, actor="cli:bench", reason="bench")
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--manual", type=int, default=1000, help="operators' rules added one call at a time")
    args = ap.parse_args()
    print("| mitigations | record bytes | save ms (median) | load ms (median) |")
    print("|---:|---:|---:|---:|")
    for n in (int(x) for x in args.sizes.split(",")):
        save, load, size = time_save_load(n, args.runs)
        print(f"| {n:,} | {size:,} | {save * 1000:.1f} | {load * 1000:.1f} |")
    t = time_manual_adds(args.manual)
    print(
        f"\n{args.manual:,} operators' rules added one call at a time: {t:.2f} s ({t / args.manual * 1000:.2f} ms each)"
    )


if __name__ == "__main__":
    main()
