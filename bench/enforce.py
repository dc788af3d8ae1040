"""Enforcement speed of the local backends: XDP (map updates) and nftables (table batches).

    sudo .venv/bin/python bench/enforce.py [--rules 10000] [--latency 200] [--runs 3]

Runs in two private network namespaces joined by a veth pair (``<prefix>-tx`` /
``<prefix>-rx``, ``--prefix dsn-i3b`` by default, removed afterwards); the backends
attach to ``rx0``.  No traffic is sent.

* **detection to enforcement**: the time from handing a rule to the backend
  (``apply``) until it is in force in the kernel.  Both backends return only after
  the kernel has taken the change (the BPF map update and the nftables batch commit
  are synchronous), and the rule is then read back from the kernel (``list``, not
  timed) to check it is there.  ``--latency`` single source-drop rules, one at a time,
  first on an empty table (each withdrawn again: an attack's first rules), then over
  a table already holding ``--rules`` rules; median and 99th percentile.  Over the
  full table, refreshing each of those rules (a later expiry) and withdrawing it are
  timed too.
* **10,000 active source rules**: ``--rules`` distinct /32 source drops (from
  198.18.0.0/15) handed over in one ``apply_many`` call (one nftables batch; the XDP
  backend's map updates one rule after the other), from an empty table; total
  seconds and rules per second, then read back with ``list`` to check that every one
  is in force.
* **per-source rate limits**: with the ``--rules`` in force, ``--latency`` fingerprint
  rate limits (UDP to port 53 of a host each) applied one at a time, held per source
  (``Rule.per_source``: an nftables meter set each, or the XDP per-source flag) and
  then the same as aggregate limits, each withdrawn again; median and 99th percentile.
  Then ``--latency`` aggregate limits applied and held, and withdrawn one at a time
  while the others stay in force (nftables rewrites the jumps to the others' chains).

Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ddos_shield.dataplane.xdp import XdpDataPlane
from ddos_shield.lab.netns import in_netns
from ddos_shield.mitigate.base import Backend
from ddos_shield.mitigate.nftables import NftablesBackend, remove_table
from ddos_shield.records import Action, Match, Range, Rule

TX, RX = "dsn-i3b-tx", "dsn-i3b-rx"  # main() sets them from --prefix
TABLE = "dsn_i3b"
FLOOD_NET = ipaddress.ip_network("198.18.0.0/15")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def make_pair() -> None:
    drop_pair()
    ip("netns", "add", TX)
    ip("netns", "add", RX)
    ip("-n", TX, "link", "add", "tx0", "type", "veth", "peer", "name", "rx0", "netns", RX)
    ip("-n", TX, "link", "set", "tx0", "up")
    ip("-n", RX, "link", "set", "rx0", "up")


def drop_pair() -> None:
    for ns in (TX, RX):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def source_rules(n: int, offset: int = 0) -> list[Rule]:
    base = int(FLOOD_NET.network_address)
    exp = time.time() + 3600
    return [
        Rule(Match(src=ipaddress.ip_network(f"{ipaddress.IPv4Address(base + offset + i)}/32")), Action.DROP, exp)
        for i in range(n)
    ]


def rate_limits(n: int, per_source: bool) -> list[Rule]:
    exp = time.time() + 3600
    return [
        Rule(
            Match(proto=17, dst=ipaddress.ip_network(f"10.{i // 250}.{i % 250}.1/32"), dport=Range(53, 53)),
            Action.RATE_LIMIT,
            exp,
            rate_pps=100,
            per_source=per_source,
        )
        for i in range(n)
    ]


def measure(open_backend: Callable[[], Backend], rules: int, latency: int) -> dict[str, object]:
    with in_netns(RX):
        b = open_backend()
        try:
            empty = []  # first rules of an attack: the table holds none yet
            for r in source_rules(latency, offset=rules + latency):
                t = time.perf_counter()
                first = b.apply(r)
                empty.append(time.perf_counter() - t)
                b.withdraw(first.rule_id)
            bulk = source_rules(rules)
            t = time.perf_counter()
            b.apply_many(bulk)
            bulk_s = time.perf_counter() - t
            in_force = len(b.list())
            times = []
            for r in source_rules(latency, offset=rules):
                t = time.perf_counter()
                applied = b.apply(r)
                times.append(time.perf_counter() - t)
            listed = {x.rule_id for x in b.list()}
            missing = sum(1 for _ in [applied] if applied.rule_id not in listed)
            mine = [r for r in b.list() if r.rule_id > applied.rule_id - latency]
            refresh, withdraw, fp_withdraw = [], [], []
            for r in mine:
                t = time.perf_counter()
                b.apply(r.refreshed(r.expires_at + 600))
                refresh.append(time.perf_counter() - t)
            for r in mine:
                t = time.perf_counter()
                b.withdraw(r.rule_id)
                withdraw.append(time.perf_counter() - t)
            missing += len(b.list()) - (in_force + latency - len(mine))
            limits: dict[bool, list[float]] = {True: [], False: []}
            for per_source in (True, False):
                for r in rate_limits(latency, per_source):
                    t = time.perf_counter()
                    applied = b.apply(r)
                    limits[per_source].append(time.perf_counter() - t)
                    b.withdraw(applied.rule_id)
            # withdrawing fingerprint rules while others stay in force (nftables rewrites
            # the jumps to the others)
            held = [b.apply(r) for r in rate_limits(latency, False)]
            for r in held:
                t = time.perf_counter()
                b.withdraw(r.rule_id)
                fp_withdraw.append(time.perf_counter() - t)
        finally:
            close = getattr(b, "close_plane", None)
            if close is not None:
                close()
    times.sort()
    empty.sort()
    refresh.sort()
    withdraw.sort()
    per_src, aggregate = sorted(limits[True]), sorted(limits[False])
    fp_withdraw.sort()
    return {
        "per_source_median_ms": statistics.median(per_src) * 1000,
        "per_source_p99_ms": per_src[min(len(per_src) - 1, int(len(per_src) * 0.99))] * 1000,
        "aggregate_median_ms": statistics.median(aggregate) * 1000,
        "aggregate_p99_ms": aggregate[min(len(aggregate) - 1, int(len(aggregate) * 0.99))] * 1000,
        "fp_withdraw_median_ms": statistics.median(fp_withdraw) * 1000,
        "fp_withdraw_p99_ms": fp_withdraw[min(len(fp_withdraw) - 1, int(len(fp_withdraw) * 0.99))] * 1000,
        "refresh_median_ms": statistics.median(refresh) * 1000,
        "refresh_p99_ms": refresh[min(len(refresh) - 1, int(len(refresh) * 0.99))] * 1000,
        "withdraw_median_ms": statistics.median(withdraw) * 1000,
        "withdraw_p99_ms": withdraw[min(len(withdraw) - 1, int(len(withdraw) * 0.99))] * 1000,
        "empty_median_ms": statistics.median(empty) * 1000,
        "empty_p99_ms": empty[min(len(empty) - 1, int(len(empty) * 0.99))] * 1000,
        "bulk_s": bulk_s,
        "in_force": in_force,
        "median_ms": statistics.median(times) * 1000,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        "missing": missing,
    }


class _Xdp:
    """The XDP data plane on rx0, its backend, detached afterwards."""

    def __init__(self, pin_dir: str) -> None:
        self.dp = XdpDataPlane.open(["rx0"], pin_dir)

    def backend(self) -> Backend:
        b = self.dp.backend
        b.close_plane = lambda: self.dp.close(detach=True)  # type: ignore[attr-defined]
        return b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--latency", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="xdp,nftables")
    ap.add_argument("--prefix", default="dsn-i3b", help="namespace name prefix (dsn-*)")
    args = ap.parse_args()
    global TX, RX, TABLE
    TX, RX, TABLE = f"{args.prefix}-tx", f"{args.prefix}-rx", args.prefix.replace("-", "_")
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, object]]] = {}
    make_pair()
    try:
        for run in range(args.runs):
            if "xdp" in args.only:
                with tempfile.TemporaryDirectory(prefix=f"{args.prefix}-pin-", dir="/sys/fs/bpf") as pin:
                    with in_netns(RX):
                        x = _Xdp(pin)
                    results.setdefault("XDP", []).append(measure(x.backend, args.rules, args.latency))
            if "nftables" in args.only:

                def nft() -> Backend:
                    b = NftablesBackend(["rx0"], table=TABLE)
                    b.close_plane = lambda: remove_table(TABLE)  # type: ignore[attr-defined]
                    return b

                results.setdefault("nftables", []).append(measure(nft, args.rules, args.latency))
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]}" for k, v in results.items()), file=sys.stderr)
    finally:
        drop_pair()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        "?",
    )
    print("## Enforcement speed of the local backends (`bench/enforce.py`)\n")
    print(
        f'Machine: Linux {platform.release()}, CPU "{cpu}", {os.cpu_count()} CPUs; measured '
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of {args.runs} runs (each run's figure after).\n"
    )
    print(
        "| backend | apply -> in force, empty table: median / p99 | with the rules in force: median / p99 | target |"
        " refresh / withdraw with the rules in force: median (p99) |"
        " source rules applied (apply_many) | rules/s | in force after | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in results.items():

        def med(key: str, rs: list[dict[str, object]] = rs) -> float:
            return statistics.median(float(r[key]) for r in rs)  # type: ignore[arg-type]

        target = 10 if name == "XDP" else 50
        bulk = med("bulk_s")
        runs = ", ".join(f"{float(r['bulk_s']):.2f}" for r in rs)  # type: ignore[arg-type]
        print(
            f"| {name} | {med('empty_median_ms'):.2f} / {med('empty_p99_ms'):.2f} ms"
            f" | {med('median_ms'):.2f} / {med('p99_ms'):.2f} ms"
            f" | {target} ms: {'met' if med('empty_p99_ms') <= target else 'not met'} (empty table),"
            f" {'met' if med('p99_ms') <= target else 'not met'} (full)"
            f" | {med('refresh_median_ms'):.2f} ({med('refresh_p99_ms'):.2f}) /"
            f" {med('withdraw_median_ms'):.2f} ({med('withdraw_p99_ms'):.2f}) ms"
            f" | {bulk:.2f} s ({runs}) | {args.rules / bulk:,.0f} | {min(int(str(r['in_force'])) for r in rs):,}"
            f" | 1 s: {'met' if bulk <= 1 else 'not met'} |"
        )
    print(
        f"\n| backend | per-source rate limit, apply -> in force with {args.rules:,} rules in force: median / p99"
        " | the same as an aggregate rate limit: median / p99 | per-source / aggregate (medians)"
        f" | withdraw of one of {args.latency}..1 aggregate limits in force: median / p99 |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, rs in results.items():
        ps = statistics.median(float(r["per_source_median_ms"]) for r in rs)  # type: ignore[arg-type]
        ps99 = statistics.median(float(r["per_source_p99_ms"]) for r in rs)  # type: ignore[arg-type]
        ag = statistics.median(float(r["aggregate_median_ms"]) for r in rs)  # type: ignore[arg-type]
        ag99 = statistics.median(float(r["aggregate_p99_ms"]) for r in rs)  # type: ignore[arg-type]
        fw = statistics.median(float(r["fp_withdraw_median_ms"]) for r in rs)  # type: ignore[arg-type]
        fw99 = statistics.median(float(r["fp_withdraw_p99_ms"]) for r in rs)  # type: ignore[arg-type]
        print(
            f"| {name} | {ps:.2f} / {ps99:.2f} ms | {ag:.2f} / {ag99:.2f} ms | {ps / ag:.2f} | {fw:.2f} / {fw99:.2f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
