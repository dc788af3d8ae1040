"""The live terminal view of a running shield: rates, attacks, rules in force.

It only reads :meth:`Engine.snapshot` and draws on stderr (stdout may carry the
JSON events), refreshing twice a second.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ddos_shield.records import Match


class _Snapshotting(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


def _si(v: float, unit: str) -> str:
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.1f} {p}{unit}"
    return f"{v:.0f} {unit}"


def render(snap: dict[str, Any], now: float | None = None) -> Group:
    """One screen of the live view from a snapshot."""
    now = time.time() if now is None else now
    traffic = Table(title="Traffic to protected destinations", expand=True)
    for name in snap["pps"]:
        traffic.add_column(name, justify="right")
    traffic.add_row(*[_si(v, "pps") for v in snap["pps"].values()])
    traffic.add_row(*[_si(v, "bps") for v in snap["bps"].values()])

    attacks = Table(title=f"Attacks ({len(snap['attacks'])})", expand=True)
    for col in ("id", "target", "group", "types", "pps", "peak pps", "for"):
        attacks.add_column(col)
    for a in snap["attacks"]:
        attacks.add_row(
            str(a["attack_id"]),
            a["target"],
            a["group"],
            ", ".join(a["attack_types"]),
            _si(a["pps"], "pps"),
            _si(a["peak_pps"], "pps"),
            f"{now - a['started']:.0f} s",
        )

    rules = Table(title=f"Rules in force ({len(snap['rules'])})", expand=True)
    for col in ("id", "action", "match", "hits", "dropped", "expires in"):
        rules.add_column(col)
    for r in snap["rules"]:
        match = Match.from_json(r["match"]).describe()
        action = r["action"]
        if action == "rate_limit":
            action += f" {r.get('rate_pps')}/s" + (" per source" if r.get("per_source") else "")
        rules.add_row(
            str(r["mitigation_id"]),
            action,
            match,
            str(r["hits"]),
            str(r["dropped"]),
            f"{r['expires_at'] - now:.0f} s",
        )
    dp = snap["dataplane"]
    footer = (
        f"destinations {snap['destinations']}  sample 1/{snap['sample_every']}  "
        + _baseline(snap)
        + f"loop p50 {snap['loop_ms_p50']:.1f} ms max {snap['loop_ms_max']:.1f} ms  "
        + "  ".join(f"{k} {v}" for k, v in dp.items() if v)
    )
    return Group(traffic, attacks, rules, footer)


def _baseline(snap: dict[str, Any]) -> str:
    b = snap.get("baseline")
    if not b or not b.get("enabled"):
        return ""
    return f"baselines {b['learned']} learned {b['learning']} learning  "


class LiveView:
    """Draws :func:`render` on stderr in a background thread until :meth:`stop`."""

    def __init__(self, engine: _Snapshotting) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-view", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        with Live(render(self._engine.snapshot()), console=Console(stderr=True), refresh_per_second=2) as live:
            while not self._stop.wait(0.5):
                live.update(render(self._engine.snapshot()))
