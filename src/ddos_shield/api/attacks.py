"""Attacks as people look at them: each with its timeline, types, peaks, rules and actions.

:class:`AttackLog` follows the event bus (:meth:`EventSink.subscribe`) and keeps the
last ``keep`` attacks of this process in memory, so the API and the dashboard can
show live and recent attacks without reaching into the engine.  Older history
is the store's (``store/``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

#: events about a mitigation, kept as the attack's actions
_ACTION_EVENTS = "mitigation_"


class AttackLog:
    """See the module docstring.  ``timeline_points`` bounds each attack's timeline:
    when full, every second point is dropped, so a long attack keeps its whole shape
    at a coarser step."""

    def __init__(self, keep: int = 500, timeline_points: int = 600) -> None:
        self._keep = keep
        self._points = timeline_points
        self._lock = threading.Lock()
        self._attacks: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def __call__(self, event: dict[str, Any]) -> None:
        """The bus subscriber."""
        name = event.get("event", "")
        aid = event.get("attack_id")
        if not isinstance(aid, int) or aid == 0:
            return
        with self._lock:
            if name.startswith("attack_"):
                self._on_attack(name, aid, event)
            elif name.startswith(_ACTION_EVENTS) and aid in self._attacks:
                a = self._attacks[aid]
                action = {k: v for k, v in event.items() if k in ("event", "ts", "actor", "reason", "backend", "hits")}
                if "rule" in event:
                    action["mitigation_id"] = event["rule"].get("mitigation_id")
                    rules = a["rules"]
                    mid = action["mitigation_id"]
                    if name == "mitigation_applied" or mid not in {r["mitigation_id"] for r in rules}:
                        rules[:] = [r for r in rules if r["mitigation_id"] != mid] + [event["rule"]]
                a["actions"].append(action)

    def _on_attack(self, name: str, aid: int, e: dict[str, Any]) -> None:
        a = self._attacks.get(aid)
        if a is None:
            a = {
                "attack_id": aid,
                "target": e.get("target"),
                "group": e.get("group"),
                "started": e.get("started", e["ts"]),
                "ended": None,
                "state": "active",
                "attack_types": [],
                "pps": 0.0,
                "bps": 0.0,
                "peak_pps": 0.0,
                "peak_bps": 0.0,
                "timeline": [],
                "rules": [],
                "actions": [],
            }
            self._attacks[aid] = a
            while len(self._attacks) > self._keep:
                self._attacks.popitem(last=False)
        for k in ("attack_types", "pps", "bps", "peak_pps", "peak_bps", "group", "target"):
            if k in e:
                a[k] = e[k]
        if name == "attack_end":
            a["state"], a["ended"] = "ended", e["ts"]
        tl = a["timeline"]
        tl.append([e["ts"], e.get("pps", 0.0), e.get("bps", 0.0)])
        if len(tl) > self._points:
            del tl[1:-1:2]

    def list(self, state: str = "all", limit: int = 100) -> list[dict[str, Any]]:
        """Newest first, without the timelines."""
        with self._lock:
            out = [
                {k: v for k, v in a.items() if k not in ("timeline", "actions")}
                for a in reversed(self._attacks.values())
                if state == "all" or a["state"] == state
            ]
        return [{**a, "rules": list(a["rules"])} for a in out[:limit]]

    def get(self, attack_id: int) -> dict[str, Any] | None:
        with self._lock:
            a = self._attacks.get(attack_id)
            if a is None:
                return None
            return {
                **a,
                "timeline": [list(p) for p in a["timeline"]],
                "rules": list(a["rules"]),
                "actions": list(a["actions"]),
            }
