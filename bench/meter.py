"""What a per-source rate limit's nftables meter costs the control plane as it fills.

    sudo .venv/bin/python bench/meter.py [--sizes 0,1000,10000,16384] [--runs 3] [--prefix dsn-ps-m]

Every source a per-source rule meets takes an element of its meter (``m<id>_4``), and
libnftables reads every element whenever it lists the table (``stats``, ``list``) or
runs an echoed batch (which a fingerprint rule's ``apply`` was until the table's layout
3).  In a namespace pair of its own (``<prefix>-tx`` -> ``<prefix>-rx``, removed afterwards) one per-source rule
(UDP, 100 pps each) is filled by real packets, one from each of N sources in
198.18.0.0/15, and at each size ``stats()`` and the apply (then withdrawal) of a
fingerprint drop rule (and its withdrawal) are timed, ``--runs`` times each; medians in milliseconds.
Bounded: at most ``METER_SIZE`` + 1 packets a size, sent at 20,000 a second.

Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from scapy.layers.inet import IP, UDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.vethpair

from tests.vethpair import VethPair, frame

from ddos_shield.mitigate.nftables import METER_SIZE, NftablesBackend, remove_table
from ddos_shield.records import Action, Match, Range, Rule, as_network

BASE = int(ipaddress.IPv4Address("198.18.0.0"))


def frames(lo: int, hi: int) -> list[bytes]:
    return [
        frame(IP(src=str(ipaddress.IPv4Address(BASE + i)), dst="203.0.113.10") / UDP(sport=1, dport=9))
        for i in range(lo, hi)
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=f"0,1000,10000,{METER_SIZE}")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prefix", default="dsn-ps-m", help="namespace name prefix (dsn-*)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = sorted(min(int(s), METER_SIZE) for s in args.sizes.split(","))
    rows = []
    table = args.prefix.replace("-", "_")
    pair = VethPair(args.prefix).create()
    try:
        with pair.inside():
            b = NftablesBackend([pair.rx_if], table=table)
        rule = b.apply(Rule(Match(proto=17), Action.RATE_LIMIT, time.time() + 3600, rate_pps=100, per_source=True))
        sent = 0
        for n in sizes:
            pair.send(frames(sent, n), pps=20000)
            sent = n
            time.sleep(0.3)
            held = len(b.state().elements(f"m{rule.rule_id}_4"))
            st, ap_, wd = [], [], []
            for i in range(args.runs):
                t = time.perf_counter()
                b.stats()
                st.append(time.perf_counter() - t)
                fp = Rule(Match(proto=6, dst=as_network(f"10.0.{i}.1/32"), dport=Range(80, 80)), Action.DROP, 2e9)
                t = time.perf_counter()
                applied = b.apply(fp)
                ap_.append(time.perf_counter() - t)
                t = time.perf_counter()
                b.withdraw(applied.rule_id)
                wd.append(time.perf_counter() - t)
            rows.append((n, held, *(statistics.median(x) * 1000 for x in (st, ap_, wd))))
            print(f"{n}: {held} held, stats {rows[-1][2]:.1f} ms, apply {rows[-1][3]:.1f} ms", file=sys.stderr)
    finally:
        with pair.inside():
            remove_table(table)
        pair.delete()
    print("## Per-source meters: what their elements cost (`bench/meter.py`)\n")
    print(
        f"Machine: Linux {platform.release()}, {os.cpu_count()} CPUs; measured "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of {args.runs}.\n"
    )
    print("| sources sent | elements in the meter | `stats()` | fingerprint rule `apply` | its `withdraw` |")
    print("|---:|---:|---:|---:|---:|")
    for n, held, s, a, w in rows:
        print(f"| {n:,} | {held:,} | {s:.1f} ms | {a:.1f} ms | {w:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
