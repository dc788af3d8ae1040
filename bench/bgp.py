"""Detection to enforcement over BGP: from a rule handed to the BGP backend to the
route seen by the peer router (target: <= 1 s).

Set-up: the lab's BGP pair (:mod:`ddos_shield.lab.bgppeer`): Debian's ExaBGP driven by
:class:`~ddos_shield.mitigate.bgp.BgpBackend` in namespace dsn-bgpb-shield, Debian's
gobgpd in dsn-bgpb-peer, joined by a veth pair.  The router's side is read with
``gobgp monitor global rib -j``, which prints each change as the router takes it into
its table; a change counts as seen when its line is read here (so the figure includes
gobgp's own delivery to the monitor, a slight overestimate).

For each run and kind (a blackhole route with 65535:666, a Flowspec discard rule) the
script times: ``apply`` returning (the bridge has ExaBGP's acknowledgement), the route
seen by the router, and after ``withdraw`` the withdrawal seen by the router.  Each run
uses another target so no change is mistaken for another.  Then, once: the dead-man's
switch, from the shield's last word to every route withdrawn at the router, less the
configured ``deadman_seconds``.

Run as root from the repository: ``.venv/bin/python bench/bgp.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddos_shield.lab.bgppeer import BgpPeerLab
from ddos_shield.lab.netns import in_netns
from ddos_shield.mitigate.bgp import BgpBackend
from ddos_shield.records import Action, Match, Rule, as_network

PREFIX = "dsn-bgpb"


class Monitor:
    """The router's table changes, as ``gobgp monitor`` prints them (every family);
    a thread reads them and stamps each line as it arrives."""

    def __init__(self, lab: BgpPeerLab) -> None:
        self.proc: subprocess.Popen[str] = lab.monitor()
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        time.sleep(0.5)  # let it subscribe before anything changes

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), line))

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> float:
        """The time a path satisfying ``pred`` was printed."""
        end = time.perf_counter() + timeout
        while (left := end - time.perf_counter()) > 0:
            try:
                seen, line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            paths = json.loads(line)
            if any(pred(p) for p in (paths if isinstance(paths, list) else [paths])):
                return seen
        raise TimeoutError("the router did not show the change")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self._t.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _dst(p: dict[str, Any]) -> str | None:
    nlri = p.get("nlri", {})
    if "prefix" in nlri:
        return str(nlri["prefix"])
    for c in nlri.get("value", []):
        if c.get("type") == 1:
            return str(c["value"]["prefix"])
    return None


def _is(dst: str, flow: bool, withdrawn: bool) -> Callable[[dict[str, Any]], bool]:
    def pred(p: dict[str, Any]) -> bool:
        return _dst(p) == dst and ("value" in p.get("nlri", {})) == flow and bool(p.get("withdrawal")) == withdrawn

    return pred


def run(runs: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bgpbench-"))
    lab = BgpPeerLab(PREFIX, work / "peer", lifetime=900).create()
    out: dict[str, Any] = {}
    b: BgpBackend | None = None
    mon: Monitor | None = None
    try:
        t0 = time.perf_counter()
        with in_netns(lab.shield_ns):
            b = BgpBackend(lab.shield_settings(blackhole=True, deadman_seconds=3), work / "run")
        started = time.perf_counter() - t0
        lab.wait(lab.established, timeout=30, what="session established")
        out["speaker_start_s"] = started
        out["session_up_s"] = time.perf_counter() - t0
        mon = Monitor(lab)
        kinds: dict[str, Callable[[str], Rule]] = {
            "blackhole": lambda dst: Rule(Match(dst=as_network(dst)), Action.BLACKHOLE, time.time() + 600),
            "flowspec": lambda dst: Rule(Match(proto=17, dst=as_network(dst)), Action.DROP, time.time() + 600),
        }
        for kind, make in kinds.items():
            acked, seen, gone = [], [], []
            for i in range(runs):
                dst = f"203.0.113.{10 + i}/32"
                flow = kind == "flowspec"
                t = time.perf_counter()
                rule = b.apply(make(dst))
                acked.append(time.perf_counter() - t)
                seen.append(mon.wait(_is(dst, flow, False)) - t)
                t = time.perf_counter()
                b.withdraw(rule.rule_id)
                gone.append(mon.wait(_is(dst, flow, True)) - t)
            out[kind] = {"apply_returned_s": acked, "seen_by_peer_s": seen, "withdrawal_seen_s": gone}
        # the dead-man's switch: the shield's last word, then silence
        for i in range(3):
            b.apply(kinds["flowspec"](f"203.0.113.{100 + i}/32"))
        mon.wait(_is("203.0.113.102/32", True, False))
        b.list()  # the last word
        t = time.perf_counter()
        b.close()
        gone_dsts: set[str | None] = set()

        def all_gone(p: dict[str, Any]) -> bool:
            if p.get("withdrawal"):
                gone_dsts.add(_dst(p))
            return len(gone_dsts) == 3

        out["deadman_overshoot_s"] = mon.wait(all_gone, timeout=10) - t - 3.0
    finally:
        if mon is not None:
            mon.close()
        if b is not None:
            b.shutdown()
        lab.delete()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="announcements per kind (default 20)")
    args = p.parse_args()
    r = run(args.runs)
    print(f"machine: {platform.node()} {platform.machine()} {platform.release()}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(
        f"speaker start (ExaBGP + bridge up): {r['speaker_start_s']:.2f} s; session established after {r['session_up_s']:.2f} s"
    )
    print(
        f"{'kind':<10} {'runs':>4} {'apply returned ms':>18} {'seen by peer ms':>16} {'p90 ms':>7} {'max ms':>7} {'withdrawal seen ms':>19}"
    )
    for kind in ("blackhole", "flowspec"):
        k = r[kind]
        seen = sorted(k["seen_by_peer_s"])
        p90 = seen[min(len(seen) - 1, int(0.9 * len(seen)))]
        print(
            f"{kind:<10} {len(seen):>4} {_ms(k['apply_returned_s']):>18} {_ms(seen):>16} "
            f"{p90 * 1000:>7.1f} {seen[-1] * 1000:>7.1f} {_ms(k['withdrawal_seen_s']):>19}"
        )
    print(
        f"dead-man's switch: every route withdrawn {r['deadman_overshoot_s'] * 1000:.0f} ms after deadman_seconds (3 s)"
    )


if __name__ == "__main__":
    main()
