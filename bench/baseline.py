"""Baselines: false alerts on benign captures, recall and false alerts on generated
traffic, and what learning costs the control loop.

    .venv/bin/python bench/baseline.py [--captures DIR] [--runs N]

Three figures:

* **benign captures** in ``--captures`` (default ``../shared/data/captures``; the
  ``benign``, ``ot`` and ``flow`` directories): each replayed through ``analyze`` with
  static thresholds only, then with baselines whose learning period is cut to 5 s (so
  they take over for nearly the whole capture); every attack reported is a false alert.
* **generated traffic**: 200 destinations with levels from 5 to 50,000 pps (log-uniform)
  and noisy per-tick rates (each tick: Poisson counts at the level, times a lognormal
  burst factor of sd 0.3), learned for 15 minutes of 100 ms ticks with a one-minute
  surge to twice the level every 5 minutes; then 15 more minutes of the same (false
  alerts: destinations flagged), an unseen doubling for contrast, and one-second floods
  on top of the normal traffic at 1.2x to 4x each destination's entry limit (recall:
  floods detected, and after how long).  Default group:
  sensitivity 6, floor 1,000 pps (UDP).
* **cost**: :meth:`Baselines.learn` and :meth:`Baselines.lookup` per control-loop tick
  with 3,000, 8,192 (the default cap) and 30,000 busy destinations (median of ``--runs``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from ddos_shield.config import Config, parse
from ddos_shield.detect.baseline import Baselines, entry_exit
from ddos_shield.detect.threshold import ThresholdDetector
from ddos_shield.engine.offline import analyze
from ddos_shield.records import Category, RateBatch, addr_bytes, empty_rates

ROOT = Path(__file__).resolve().parent.parent
SHARED = (
    Path("/work/shared/data/captures")
    if Path("/work/shared").exists()
    else ROOT.parent / "shared" / "data" / "captures"
)
BENIGN_DIRS = ("benign", "ot", "flow")

STATIC = 'protected = ["0.0.0.0/0", "::/0"]\n[shield]\ndry_run = true\n'
LEARNED = STATIC + "[baseline]\nlearning_seconds = 5\nadapt_seconds = 60\n"
UDP = int(Category.UDP)


def benign(captures: Path) -> None:
    files = sorted(p for d in BENIGN_DIRS for p in (captures / d).glob("*") if p.suffix in (".pcap", ".pcapng"))
    if not files:
        print(f"benign captures: none under {captures}")
        return
    for name, text in (("static thresholds", STATIC), ("baselines, 5 s learning", LEARNED)):
        cfg = parse(text)
        alerts: list[str] = []
        for f in files:
            for a in analyze([f], cfg).attacks:
                alerts.append(f"{f.parent.name}/{f.name}: {a.types} at {a.target}")
        print(f"benign captures ({len(files)} files), {name}: {len(alerts)} false alerts")
        for line in alerts:
            print(f"    {line}")


def _rates(keys: np.ndarray, pps: np.ndarray) -> RateBatch:
    r = empty_rates(len(keys))
    r["dst"] = keys
    r["pps"][:, UDP] = pps
    r["bps"][:, UDP] = pps * 800
    return r


def _tick(rng: np.random.Generator, level: np.ndarray) -> np.ndarray:
    burst = rng.lognormal(0.0, 0.3, len(level))
    return rng.poisson(level * burst * 0.1) / 0.1


def _surging(i: int) -> bool:
    """Every 5 minutes of 100 ms ticks, a minute at twice the level."""
    return i % 3000 >= 2400


def generated(seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    level = np.exp(rng.uniform(np.log(5), np.log(50_000), n))
    keys = np.array([list(addr_bytes(f"203.0.{i // 256}.{i % 256}")) for i in range(n)], dtype=np.uint8)
    cfg: Config = parse(
        'protected = ["203.0.0.0/16"]\n[baseline]\nlearning_seconds = 900\nadapt_seconds = 1800\n'
        '[[groups]]\nname = "default"\n[groups.thresholds]\nudp = { pps = 1000000 }\n'
        "[groups.baseline]\nsensitivity = 6\n[groups.baseline.floor]\nudp = { pps = 1000 }\n"
    )
    b = Baselines(cfg.baseline)
    det = ThresholdDetector(cfg, b)
    t = 1_700_000_000.0
    for i in range(9000):  # 15 minutes of learning, three surges among them
        t += 0.1
        b.learn(_rates(keys, _tick(rng, level * (2.0 if _surging(i) else 1.0))), t)

    def run(ticks: int, surge: bool) -> int:
        nonlocal t
        flagged = np.zeros(n, dtype=bool)
        for i in range(ticks):
            t += 0.1
            r = _rates(keys, _tick(rng, level * (2.0 if surge and _surging(i) else 1.0)))
            for o in det.observe(r, t):
                flagged[int(o.target.network_address) & 0xFFFF] = True
            b.learn(r, t)
        return int(flagged.sum())

    learned = run(9000, surge=True)
    print(
        f"generated traffic: {n} destinations at 5-50,000 pps (per-tick bursts: lognormal sd 0.3), learned for "
        f"15 min with a 1-min surge to 2x every 5 min; then 15 min more of the same: "
        f"{learned} destinations falsely flagged"
    )
    # an unseen sustained doubling, for contrast: the baseline has not learned it
    t0 = t
    unseen = np.zeros(n, dtype=bool)
    for _ in range(600):
        t += 0.1
        for o in det.observe(_rates(keys, _tick(rng, level * 2.0)), t):
            unseen[int(o.target.network_address) & 0xFFFF] = True
    print(f"  an unseen doubling for 1 min (not learned): {int(unseen.sum())} destinations flagged")
    t = t0 + 60
    # floods on top of the normal traffic, at multiples of each destination's entry limit
    learned, lv, sp = b.lookup(keys, t)
    entry, _ = entry_exit(lv[:, UDP, 0], sp[:, UDP, 0], 6.0, np.array(1000.0), 0.5)
    print(
        f"  learned destinations: {int(learned.sum())}/{n}; entry limit / level: median {np.median(entry / level):.1f}"
    )
    for mult in (1.2, 1.5, 2.0, 4.0):
        ticks = 10  # one second
        first = np.full(n, -1)
        for k in range(ticks):
            t += 0.1
            flood = rng.poisson(entry * mult * 0.1) / 0.1
            for o in det.observe(_rates(keys, _tick(rng, level) + flood), t):
                j = int(o.target.network_address) & 0xFFFF
                first[j] = k if first[j] < 0 else first[j]
        hit = first >= 0
        print(
            f"  flood of {mult}x the entry limit for 1 s: {100 * hit.mean():.1f}% detected (recall), "
            f"after {100 * (np.median(first[hit]) + 1):.0f} ms in the median"
        )
        for _ in range(100):  # 10 s of normal traffic between floods
            t += 0.1
            det.observe(_rates(keys, _tick(rng, level)), t)


def cost(runs: int) -> None:
    for n in (3000, 8192, 30000):
        keys = np.array(
            [list(addr_bytes(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}")) for i in range(n)], dtype=np.uint8
        )
        rng = np.random.default_rng(1)
        level = rng.uniform(10, 10000, n)
        b = Baselines(parse('protected = ["10.0.0.0/8"]\n[baseline]\nmax_destinations = 40000\n').baseline)
        t = 1_700_000_000.0
        batches = [_rates(keys, _tick(rng, level)) for _ in range(10)]
        learn, look = [], []
        for k in range(runs):
            t += 0.1
            r = batches[k % 10]
            t0 = time.perf_counter()
            b.learn(r, t)
            learn.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b.lookup(r["dst"], t)
            look.append(time.perf_counter() - t0)
        print(
            f"cost, {n:>6} busy destinations: learn {1000 * statistics.median(learn):.2f} ms per tick "
            f"(p90 {1000 * float(np.percentile(learn, 90)):.2f}), "
            f"lookup of all {1000 * statistics.median(look):.2f} ms"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captures", type=Path, default=SHARED)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    benign(args.captures)
    generated()
    cost(args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
