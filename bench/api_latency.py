"""The management service under load: status latency during a flood, memory when idle.

    .venv/bin/python bench/api_latency.py [--runs 3] [--pps 50000] [--seconds 20] [--rps 20]

In the lab, ``ddos-shield run`` with the API on 127.0.0.1:8470 of the shield's
namespace.  A client in that namespace (a subprocess: the API is on that namespace's
loopback) asks ``GET /api/v1/status`` ``--rps`` times a second with a viewer token (each
followed by ``GET /healthz``, the cheapest answer, as a yardstick of the machine) and
one dashboard stream open, first with no traffic, then while a SYN flood of ``--pps``
from one source is detected and dropped.  Latencies: median, 99th percentile and worst
of each phase.  Then the resident memory of the shield process when idle (after 10 s
without traffic, with the API and dashboard stream on), beside the same shield with no
API.  Targets (issue 6): status p99 <= 50 ms during the flood; process <= 250 MB idle.
Prints a Markdown report (paste into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ddos_shield import lab
from ddos_shield.api.tokens import TokenStore
from ddos_shield.lab.attack import AttackSpec, launch
from ddos_shield.lab.demo import LabShield
from ddos_shield.lab.topology import Lab, lab_session, popen_in

STATE_DIR = "/run/ddos-shield-lab/state"  # the lab configuration's
URL = "http://127.0.0.1:8470"

# The client: a dashboard stream held open in a thread, and status requests at a fixed
# pace on one kept-alive connection (as a dashboard or a monitoring probe would).
CLIENT = r"""
import json, sys, threading, time, httpx
url, token, rps, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
h = {"authorization": "Bearer " + token}
stop = threading.Event()
def stream():
    with httpx.Client(timeout=None) as c, c.stream("GET", url + "/api/v1/stream", headers=h) as r:
        for _ in r.iter_lines():
            if stop.is_set():
                return
threading.Thread(target=stream, daemon=True).start()
out = []
with httpx.Client(base_url=url, headers=h, timeout=10) as c:
    t_next = time.monotonic()
    end = t_next + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        r = c.get("/api/v1/status")
        t1 = time.perf_counter()
        # the cheapest request the server answers, just after: what the machine and the
        # server's own scheduling cost, beside what status adds
        c.get("/healthz")
        loop = r.json().get("loop_ms_max", 0.0) if r.status_code == 200 else 0.0
        out.append([time.time(), (t1 - t0) * 1000, r.status_code, (time.perf_counter() - t1) * 1000, loop])
        t_next += 1 / rps
        time.sleep(max(0.0, t_next - time.monotonic()))
stop.set()
print(json.dumps(out))
"""


def client(token: str, rps: float, seconds: float) -> subprocess.Popen[str]:
    return popen_in(
        lab.NS_SHIELD,
        [sys.executable, "-c", CLIENT, URL, token, str(rps), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def shield_pid() -> int:
    return int((Path(STATE_DIR) / "shield.pid").read_text())


def pcts(ms: list[float]) -> tuple[float, float, float]:
    s = sorted(ms)
    return statistics.median(s), s[min(len(s) - 1, int(0.99 * len(s)))], s[-1]


def one_run(tmp: Path, token: str, args: argparse.Namespace) -> dict[str, Any]:
    shield = LabShield(tmp, hold_seconds=5.0, extra_config=f'\n[api]\nlisten = "{URL[7:]}"\n')
    shield.start()
    try:
        time.sleep(2)
        idle = client(token, args.rps, 10)
        idle_out = json.loads(idle.communicate(timeout=60)[0])
        time.sleep(10)  # settled, no traffic, a stream was open
        pid = shield_pid()
        mem_idle = rss_kb(pid)
        shield.events.poll()
        mark = len(shield.events.events)
        busy = client(token, args.rps, args.seconds)
        time.sleep(0.5)
        report = launch(AttackSpec(kind="syn", family=4, pps=args.pps, seconds=args.seconds - 1.0, cpu=1)).wait()
        busy_out = json.loads(busy.communicate(timeout=args.seconds + 60)[0])
        shield.events.poll()
        applied = [e for e in shield.events.events[mark:] if e["event"] == "mitigation_applied"]
        t_rule = min((e["ts"] for e in applied), default=None)
        flood = [r for r in busy_out if t_rule is not None and t_rule <= r[0] <= report.ended_at]
        return {
            "idle_ms": [r[1] for r in idle_out],
            "flood_ms": [r[1] for r in flood],
            "flood_healthz_ms": [r[3] for r in flood],
            "flood_loop_ms_max": max((r[4] for r in flood), default=0.0),
            "idle_loop_ms_max": max((r[4] for r in idle_out), default=0.0),
            "errors": sum(1 for r in idle_out + busy_out if r[2] != 200),
            "sent": report.packets_sent,
            "mitigated": bool(applied),
            "rss_kb_idle": mem_idle,
        }
    finally:
        shield.stop()


def rss_without_api(tmp: Path) -> int:
    shield = LabShield(tmp)
    shield.start()
    try:
        time.sleep(12)
        return rss_kb(shield_pid())
    finally:
        shield.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pps", type=int, default=50000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rps", type=float, default=20.0, help="status requests per second")
    args = ap.parse_args()
    runs = []
    name = f"bench-{os.getpid()}"
    with lab_session(), tempfile.TemporaryDirectory(prefix="ddos-shield-bench-") as t:
        the_lab = Lab()
        the_lab.up()
        tokens = TokenStore(STATE_DIR)
        token = tokens.create(name, "viewer")
        try:
            for i in range(args.runs):
                d = Path(t) / f"run{i}"
                d.mkdir()
                runs.append(one_run(d, token, args))
                print(
                    f"run {i + 1}: {json.dumps({k: v for k, v in runs[-1].items() if not k.endswith('_ms')})}",
                    file=sys.stderr,
                )
            (Path(t) / "noapi").mkdir()
            no_api = rss_without_api(Path(t) / "noapi")
        finally:
            tokens.revoke(name)
            subprocess.run(
                ["ip", "netns", "exec", lab.NS_SHIELD, sys.executable, "-m", "ddos_shield.cli.main", "stop",
                 "--detach", "--config", str(Path(t) / "run0" / "shield.toml")],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            the_lab.down()

    print(f"### Service: status latency under a flood, memory idle ({time.strftime('%Y-%m-%d')})\n")
    print(
        f"Machine: {platform.node()}, {os.cpu_count()} vCPU, {platform.platform()}; Python {platform.python_version()}."
    )
    print(
        f"`bench/api_latency.py --runs {args.runs} --pps {args.pps} --seconds {args.seconds:g} --rps {args.rps:g}`: "
        "GET /api/v1/status from the shield's namespace over loopback, one dashboard stream open, "
        "SYN flood from one source pinned to CPU 1, the shield dropping it in XDP.\n"
    )
    print(
        "| run | idle p50 / p99 / max ms | flood p50 / p99 / max ms | longest tick idle / flood ms "
        "| requests during the flood | errors | packets sent | RSS idle MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        a = pcts(r["idle_ms"])
        b = pcts(r["flood_ms"]) if r["flood_ms"] else (float("nan"),) * 3
        print(
            f"| {i} | {a[0]:.1f} / {a[1]:.1f} / {a[2]:.1f} | {b[0]:.1f} / {b[1]:.1f} / {b[2]:.1f} | "
            f"{r['idle_loop_ms_max']:.0f} / {r['flood_loop_ms_max']:.0f} | {len(r['flood_ms'])} | {r['errors']} | {r['sent']} | {r['rss_kb_idle'] / 1024:.0f} |"
        )
    allflood = [x for r in runs for x in r["flood_ms"]]
    allidle = [x for r in runs for x in r["idle_ms"]]
    allhealth = [x for r in runs for x in r["flood_healthz_ms"]]
    if allflood:
        f, i, h = pcts(allflood), pcts(allidle), pcts(allhealth)
        print(
            f"\nAll runs: idle p50 {i[0]:.1f} ms, p99 {i[1]:.1f} ms; during the flood p50 {f[0]:.1f} ms, "
            f"p99 {f[1]:.1f} ms (target 50 ms), worst {f[2]:.1f} ms; p99 ratio flood/idle {f[1] / i[1]:.2f}. "
            f"`/healthz` (no token, no engine state) asked just after each status during the flood: "
            f"p50 {h[0]:.1f} ms, p99 {h[1]:.1f} ms, worst {h[2]:.1f} ms."
        )
    med = statistics.median(r["rss_kb_idle"] for r in runs) / 1024
    print(
        f"Idle resident memory of the shield process with the API: median {med:.0f} MB (target 250 MB); "
        f"the same shield without the API: {no_api / 1024:.0f} MB."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
