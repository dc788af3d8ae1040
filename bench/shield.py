"""End-to-end benchmark: real attacks through the lab, shield on and off.

    .venv/bin/python bench/shield.py [--runs 5] [--rates 50000,100000] [--kinds syn/4,udp-spoofed/4,...]

For every attack kind and offered rate, ``--runs`` times with the shield on: time to
detect and to mitigate (from the first attack packet on the shield's outside interface,
kernel-stamped), share of attack packets dropped (all, and after the rule was in
force), legitimate success rate over the whole attack and after the rule.  Then each
kind once with the shield off (the flood must visibly hurt), and the client without
any attack.  Also the control process's CPU seconds and peak memory, idle and under
attack.  The generator is pinned to CPU 1 so it does not starve the shield's core.
Prints a Markdown report to stdout (paste into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ddos_shield.lab.attack import AttackSpec, launch
from ddos_shield.lab.client import LegitTraffic
from ddos_shield.lab.demo import AttackResult, LabShield, measure_attack
from ddos_shield.lab.topology import Lab, lab_session

#: how long the idle control process is measured
IDLE_SECONDS = 30


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak resident kB) of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(stat[11]) + int(stat[12])
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return ticks / os.sysconf("SC_CLK_TCK"), hwm


def legit_rate(results: list[dict[str, Any]], t0: float, t1: float) -> tuple[int, int]:
    window = [r for r in results if t0 <= r["ts"] <= t1]
    return sum(1 for r in window if r["ok"]), len(window)


def pct(a: float, b: float) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rates", default="50000,100000")
    ap.add_argument("--kinds", default="syn/4,udp-spoofed/4,icmp/4,frag/4,udp-spoofed/6,syn-spoofed/6")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    kinds = [(k.split("/")[0], int(k.split("/")[1])) for k in args.kinds.split(",")]

    with lab_session():
        return run(args, rates, kinds)


def run(args: argparse.Namespace, rates: list[int], kinds: list[tuple[str, int]]) -> int:
    the_lab = Lab()
    the_lab.up()
    rows: list[tuple[AttackResult, dict[str, float]]] = []
    off_rows: list[tuple[str, int, int, int, int]] = []
    try:
        # ---- no attack, and shield off under attack
        legit = [
            LegitTraffic.start(family=4, rate=20.0, seconds=600),
            LegitTraffic.start(family=6, rate=20.0, seconds=600),
        ]
        t0 = time.time()
        time.sleep(5)
        ok, n = legit_rate([r for lt in legit for r in lt.results()], t0, time.time())
        baseline = (ok, n)
        for kind, fam in kinds:
            rep = launch(AttackSpec(kind=kind, family=fam, pps=rates[0], seconds=args.seconds, cpu=1)).wait()
            ok, n = legit_rate([r for lt in legit for r in lt.results()], rep.started_at, rep.ended_at)
            off_rows.append((kind, fam, rep.packets_sent, ok, n))
            time.sleep(2)
        for lt in legit:
            lt.stop()

        # ---- shield on
        with tempfile.TemporaryDirectory() as tmp:
            shield = LabShield(Path(tmp), hold_seconds=2.0)
            shield.start()
            assert shield.proc is not None
            pid = _shield_pid(shield)
            time.sleep(5)  # let start-up work (imports, program load, adoption) settle
            cpu0, _ = proc_usage(pid)
            time.sleep(IDLE_SECONDS)
            cpu1, mem_idle = proc_usage(pid)
            idle_cpu = (cpu1 - cpu0) / IDLE_SECONDS
            legit = [
                LegitTraffic.start(family=4, rate=20.0, seconds=3600),
                LegitTraffic.start(family=6, rate=20.0, seconds=3600),
            ]
            for pps in rates:
                for kind, fam in kinds:
                    for _ in range(args.runs):
                        c0, _ = proc_usage(pid)
                        t = time.time()
                        r = measure_attack(
                            shield, legit, AttackSpec(kind=kind, family=fam, pps=pps, seconds=args.seconds, cpu=1)
                        )
                        c1, mem = proc_usage(pid)
                        rows.append((r, {"cpu_s": c1 - c0, "wall_s": time.time() - t, "mem_kb": mem}))
                        print(
                            f"# {kind}/{fam} {pps}: ttd={r.time_to_detect_ms} ttm={r.time_to_mitigate_ms} "
                            f"drop={r.attack_packets_dropped}/{r.attack_packets_sent} "
                            f"legit={r.legit_ok}/{r.legit_requests}",
                            file=sys.stderr,
                        )
            for lt in legit:
                lt.stop()
            shield.stop()
    finally:
        the_lab.down()

    print(
        f"### End to end ({time.strftime('%Y-%m-%d')}, {platform.node()}, kernel {platform.release()}, "
        f"{_cpu_model()}, {args.runs} runs, {args.seconds:g} s attacks)\n"
    )
    print(f"Legitimate client without attack: {pct(*baseline)} of {baseline[1]} requests ok.\n")
    print("Shield off (no XDP), first rate:\n")
    print("| attack | sent | legit ok |\n|---|---|---|")
    for kind, fam, sent, ok, n in off_rows:
        print(f"| {kind}/{fam} | {sent} | {pct(ok, n)} ({ok}/{n}) |")
    print(f"\nShield on: idle control process {idle_cpu * 100:.2f}% of a core, peak RSS {mem_idle / 1024:.0f} MB.\n")
    print(
        "| attack | pps | TTD median / worst ms | TTM median / worst ms | dropped | dropped after rule (est.) "
        "| legit ok (whole / after rule) | legit blocked | ctl CPU s per attack | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pps in rates:
        for kind, fam in kinds:
            rs = [(r, m) for r, m in rows if r.kind == kind and r.family == fam and r.offered_pps == pps]
            ttd = [r.time_to_detect_ms for r, _ in rs if r.time_to_detect_ms is not None]
            ttm = [r.time_to_mitigate_ms for r, _ in rs if r.time_to_mitigate_ms is not None]
            sent = sum(r.attack_packets_sent for r, _ in rs)
            dropped = sum(r.attack_packets_dropped for r, _ in rs)
            lok = sum(r.legit_ok for r, _ in rs)
            ln = sum(r.legit_requests for r, _ in rs)
            aok = sum(r.legit_ok_after_rule for r, _ in rs)
            an = sum(r.legit_requests_after_rule for r, _ in rs)
            blocked = sum(r.legit_sources_blocked for r, _ in rs)
            # packets that arrived before the rule: about the offered rate times the time to mitigate
            before = sum(pps * (r.time_to_mitigate_ms or 0) / 1000 for r, _ in rs)
            print(
                f"| {kind}/{fam} | {pps} | {_mw(ttd)} | {_mw(ttm)} | {pct(dropped, sent)} | "
                f"{pct(dropped, sent - before)} | "
                f"{pct(lok, ln)} / {pct(aok, an)} | {blocked} | "
                f"{statistics.median(m['cpu_s'] for _, m in rs):.2f} | {max(m['mem_kb'] for _, m in rs) / 1024:.0f} |"
            )
    return 0


def _mw(v: list[float]) -> str:
    return f"{statistics.median(v):.0f} / {max(v):.0f}" if v else "-"


def _shield_pid(shield: LabShield) -> int:
    """The shield's own pid (popen_in may wrap it in `ip netns exec`, which execs)."""
    assert shield.proc is not None
    pidfile = Path("/run/ddos-shield-lab/state/shield.pid")
    for _ in range(50):
        if pidfile.exists():
            return int(pidfile.read_text())
        time.sleep(0.1)
    return shield.proc.pid


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
