"""Spoofed sources and memory: the shield's control process under a SYN flood from
1,000,000 distinct IPv6 sources, beside the same flood from one source.

    .venv/bin/python bench/spoofed.py [--runs 3] [--packets 1000000] [--pps 100000]

Each run starts a fresh ``ddos-shield run`` in the lab (XDP on the shield's outside
interface, 100 ms loop) and sends ``--packets`` SYNs over IPv6 at the victim, either
from the attacker's one address (``syn/6``) or each from its own address of
2001:2::/48 (``syn-spoofed/6`` with ``many_sources``: the low three bytes of the
source count through 16.5 million values, so every packet has a new source).  Printed
per run and as medians, side by side: time to detect (first attack packet on the
shield's outside interface, kernel-stamped, to ``attack_start``), time to mitigate, the
control process's resident memory before the attack and its peak over the whole run
(``VmHWM``), and what the shield reported of the attack's sources (distinct-source
estimate, spoofed share, source addresses its sketches hold).  The generator is pinned
to CPU 1.  Prints Markdown (paste into bench/RESULTS.md).
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

from ddos_shield import lab
from ddos_shield.lab.attack import AttackSpec
from ddos_shield.lab.demo import LabShield, measure_attack
from ddos_shield.lab.topology import Lab, lab_session

#: target of the issue: the control process under this with a million spoofed sources
RSS_TARGET_MB = 300


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def one_run(kind: str, packets: int, pps: int, workdir: Path) -> dict[str, Any]:
    shield = LabShield(workdir, hold_seconds=2.0)
    shield.start()
    try:
        assert shield.proc is not None
        pid = shield.proc.pid
        time.sleep(2.0)  # settle: the idle process as it runs
        rss_before = status_kb(pid, "VmRSS")
        spec = AttackSpec(
            kind=kind, family=6, pps=pps, seconds=packets / pps, cpu=1, many_sources=kind == "syn-spoofed"
        )
        r = measure_attack(shield, [], spec)
        hwm = status_kb(pid, "VmHWM")
        victim = f"{lab.INSIDE_V6}"
        ends = [e for e in shield.events.events if e["event"] == "attack_end" and e["target"] == victim]
        end = ends[-1] if ends else {}
        return {
            "kind": kind,
            "sent": r.attack_packets_sent,
            "detected": r.detected,
            "ttd_ms": r.time_to_detect_ms,
            "ttm_ms": r.time_to_mitigate_ms,
            "dropped": r.attack_packets_dropped,
            "rss_before_mb": rss_before / 1024,
            "peak_rss_mb": hwm / 1024,
            "distinct_sources": end.get("distinct_sources"),
            "spoofed_share": end.get("spoofed_share"),
            "keys_held": end.get("source_keys_held"),
            "rules": [" ".join(f"{k}={v}" for k, v in rule["match"].items()) for rule in r.rules],
        }
    finally:
        shield.stop()


def med(rows: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in rows if r[key] is not None]
    return f"{statistics.median(vals):,.0f}" if vals else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--pps", type=int, default=100_000)
    args = ap.parse_args()
    kinds = ("syn", "syn-spoofed")
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with lab_session():
        the_lab = Lab()
        the_lab.up()
        try:
            for i in range(args.runs):
                for kind in kinds:  # interleaved, so the machine's noise falls on both
                    with tempfile.TemporaryDirectory(prefix="ddos-shield-bench-") as tmp:
                        row = one_run(kind, args.packets, args.pps, Path(tmp))
                    rows[kind].append(row)
                    print(f"run {i + 1} {kind}: {row}", file=sys.stderr)
        finally:
            the_lab.down()

    print(f"Machine: {platform.node()} {platform.release()}, measured {time.strftime('%Y-%m-%d')}; ")
    print(f"{args.packets:,} SYNs over IPv6 at {args.pps:,} pps asked, {args.runs} runs each, interleaved.\n")
    print("| flood | sent (median) | detected | TTD ms median | TTM ms median | RSS before MB | peak RSS MB median (runs) "
          "| distinct sources reported | spoofed share | source keys held | rule |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|")
    for kind in kinds:
        rs = rows[kind]
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in rs)
        print(
            f"| {kind}/6 | {med(rs, 'sent')} | {sum(r['detected'] for r in rs)}/{len(rs)} | {med(rs, 'ttd_ms')} "
            f"| {med(rs, 'ttm_ms')} | {med(rs, 'rss_before_mb')} | {med(rs, 'peak_rss_mb')} ({peaks}) "
            f"| {med(rs, 'distinct_sources')} | {rs[-1]['spoofed_share']} | {med(rs, 'keys_held')} "
            f"| {'; '.join(rs[-1]['rules'])} |"
        )
    worst = max(r["peak_rss_mb"] for r in rows["syn-spoofed"])
    print(f"\nWorst peak RSS with distinct sources: {worst:.0f} MB (target < {RSS_TARGET_MB} MB): "
          f"{'PASS' if worst < RSS_TARGET_MB else 'FAIL'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
