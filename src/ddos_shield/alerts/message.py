"""Alerts built from events: what an on-call engineer needs, and when to send it.

:class:`AlertBuilder` is pure (no I/O, no clock: each event carries its ``ts``).  It
remembers each attack under way (target, host group, types, peaks, the rules taken
against it), turns the events that matter into one :class:`Alert` each, and throttles:
per attack, the start, then at most one update per ``update_interval`` seconds, then
the end; every mitigation event is sent.

An alert's ``payload`` is the JSON a webhook receives::

    {"kind": "attack_start", "severity": "critical", "summary": "udp_flood on 203.0.113.10/32 ...",
     "ts": 1764120000.1, "time": "2026-11-26T01:20:00.100000Z",
     "attack": {"attack_id", "target", "group", "types", "pps", "bps", "peak_pps", "peak_bps",
                "started", "duration_seconds", "url"},
     "evidence": [{"category", "pps", "limit_pps", "bps", "limit_bps", "basis"}],
     "mitigation": {"mitigation_id", "action", "match", "description", "backend", "rate_pps",
                    "per_source", "expires_at", "attack_share", "collateral_share", "actor", "reason"},
     "mitigations": [the rules in force against this attack],
     "event": {the event as the shield emitted it}}
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ddos_shield.config import Config
from ddos_shield.records import CATEGORY_ATTACK, CATEGORY_NAMES, Match

#: event -> severity (RFC 5424 names)
SEVERITY = {
    "attack_start": "critical",
    "attack_update": "warning",
    "attack_end": "notice",
    "mitigation_applied": "warning",
    "mitigation_removed": "notice",
    "mitigation_failed": "error",
    "mitigation_skipped": "warning",
    "mitigation_pending": "alert",  # a drop waits for a person
    "mitigation_approved": "notice",
    "mitigation_refused": "warning",
    "mitigation_verified": "error",  # only sent when a step failed its check and was rolled back
}
_TYPE_CATEGORY = {t.value: CATEGORY_NAMES[c] for c, t in CATEGORY_ATTACK.items()}


@dataclass(frozen=True)
class Alert:
    kind: str
    severity: str
    summary: str
    payload: dict[str, Any]


@dataclass
class _AttackState:
    info: dict[str, Any]
    last_sent: float
    rules: dict[int, dict[str, Any]] = field(default_factory=dict)


def _rate(v: float, unit: str) -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.1f} {prefix}{unit}"
    return f"{v:.0f} {unit}"


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AlertBuilder:
    """See the module docstring."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._attacks: dict[int, _AttackState] = {}
        self.throttled = 0

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def attack_url(self, attack_id: int) -> str | None:
        base = self.config.alerts.dashboard_url.rstrip("/")
        return f"{base}/attacks/{attack_id}" if base else None

    def build(self, ev: dict[str, Any]) -> Alert | None:
        """The alert for one event, or None (not alerted on, or throttled)."""
        kind = str(ev.get("event", ""))
        ts = float(ev.get("ts", 0.0))
        if kind in ("ready", "stopped"):
            self._attacks.clear()  # a new process numbers its attacks afresh
            return None
        if kind not in SEVERITY or (kind == "mitigation_verified" and ev.get("ok", True)):
            return None
        aid = int(ev.get("attack_id") or (ev.get("rule") or {}).get("attack_id") or 0)
        state = self._attacks.get(aid)
        if kind.startswith("attack_"):
            info = self._attack_info(ev, state)
            if kind == "attack_start" or state is None:
                state = self._attacks[aid] = _AttackState(info, ts)
            elif kind == "attack_update":
                state.info = info
                if ts - state.last_sent < self.config.alerts.update_interval_seconds:
                    self.throttled += 1
                    return None
                state.last_sent = ts
            if kind == "attack_end":
                state.info = info
                self._attacks.pop(aid, None)
            return self._alert(kind, ts, ev, state, None)
        rule = ev.get("rule") if isinstance(ev.get("rule"), dict) else None
        if state is not None and rule is not None:
            mid = int(rule.get("mitigation_id", 0))
            if kind in ("mitigation_applied", "mitigation_approved"):
                state.rules[mid] = rule
            elif kind == "mitigation_removed":
                state.rules.pop(mid, None)
        if state is None and "target" in ev:
            state = _AttackState(self._attack_info(ev, None), ts)
        return self._alert(kind, ts, ev, state, rule)

    def _attack_info(self, ev: dict[str, Any], state: _AttackState | None) -> dict[str, Any]:
        old = state.info if state else {}
        types = list(old.get("types", []))
        types += [t for t in ev.get("attack_types", []) if t not in types]
        info = {
            "attack_id": ev.get("attack_id", old.get("attack_id")),
            "target": ev.get("target", old.get("target")),
            "group": ev.get("group", old.get("group")),
            "types": types,
            "pps": ev.get("pps", old.get("pps", 0.0)),
            "bps": ev.get("bps", old.get("bps", 0.0)),
            "peak_pps": max(float(ev.get("peak_pps", 0.0)), float(old.get("peak_pps", 0.0))),
            "peak_bps": max(float(ev.get("peak_bps", 0.0)), float(old.get("peak_bps", 0.0))),
            "started": ev.get("started", old.get("started")),
            "categories": ev.get("categories", old.get("categories", [])),
            "basis": ev.get("basis", old.get("basis", "static")),
        }
        if ev.get("evidence"):
            info["evidence"] = ev["evidence"]
        elif "evidence" in old:
            info["evidence"] = old["evidence"]
        return info

    def _evidence(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """The detector's own evidence when the event carries it; otherwise the static
        thresholds of the target's group for each attack category, against the rate the
        event reports (the attack's categories summed)."""
        if info.get("evidence"):
            ev = info["evidence"]
            return list(ev) if isinstance(ev, list) else [ev]
        try:
            group = self.config.group_for_name(str(info.get("group")))
        except KeyError:
            return []
        out = []
        cats = info.get("categories") or [_TYPE_CATEGORY[t] for t in info.get("types", []) if t in _TYPE_CATEGORY]
        for cat in dict.fromkeys(cats):
            if cat not in CATEGORY_NAMES:
                continue
            key = "syn" if cat == "tcp_syn" else cat
            if info.get("basis") == "baseline":
                # the learned limit itself is not in the event: say what it is made of
                sens = group.baseline.sensitivity
                floor = getattr(group.baseline.floor, key)
                out.append(
                    {
                        "category": cat,
                        "basis": f"learned baseline of the destination: above its level by {sens:g} spreads "
                        f"and above the floor of host group {group.name!r}",
                        "pps": info.get("pps"),
                        "floor_pps": floor.pps,
                        "bps": info.get("bps"),
                        "floor_bps": floor.bps,
                    }
                )
                continue
            th = getattr(group.thresholds, key)
            out.append(
                {
                    "category": cat,
                    "basis": f"static threshold of host group {group.name!r}",
                    "pps": info.get("pps"),
                    "limit_pps": th.pps,
                    "bps": info.get("bps"),
                    "limit_bps": th.bps,
                }
            )
        return out

    def _alert(
        self, kind: str, ts: float, ev: dict[str, Any], state: _AttackState | None, rule: dict[str, Any] | None
    ) -> Alert:
        payload: dict[str, Any] = {"kind": kind, "severity": SEVERITY[kind], "ts": ts, "time": iso(ts)}
        parts: list[str] = []
        if state is not None:
            info = state.info
            attack = {
                k: info.get(k)
                for k in ("attack_id", "target", "group", "types", "pps", "bps", "peak_pps", "peak_bps", "started")
            }
            attack["duration_seconds"] = round(ts - float(info["started"]), 1) if info.get("started") else None
            attack["url"] = self.attack_url(int(info["attack_id"])) if info.get("attack_id") else None
            payload["attack"] = attack
            payload["evidence"] = self._evidence(info)
            payload["mitigations"] = list(state.rules.values())
            types = ", ".join(info.get("types") or ["attack"])
            parts.append(f"{types} on {info.get('target')} (group {info.get('group')})")
            parts.append(
                f"{_rate(float(info.get('pps') or 0), 'pps')} / {_rate(float(info.get('bps') or 0), 'bit/s')},"
                f" peak {_rate(info['peak_pps'], 'pps')} / {_rate(info['peak_bps'], 'bit/s')}"
            )
        if rule is not None:
            m = rule.get("match") or {}
            try:
                desc = Match.from_json(m).describe()
            except (ValueError, KeyError, TypeError):
                desc = str(m)
            mit = {
                "mitigation_id": rule.get("mitigation_id"),
                "action": rule.get("action"),
                "match": m,
                "description": desc,
                "backend": ev.get("backend"),
                "rate_pps": rule.get("rate_pps"),
                "per_source": bool(rule.get("per_source", False)),  # rate_pps holds each source
                "expires_at": rule.get("expires_at"),
                "attack_share": rule.get("attack_share"),
                "collateral_share": rule.get("collateral_share"),
                "actor": ev.get("actor", "shield"),
                "reason": ev.get("reason") or rule.get("reason"),
            }
            payload["mitigation"] = mit
            share = rule.get("collateral_share")
            parts.append(
                f"rule {rule.get('mitigation_id')}: {rule.get('action')} {desc}"
                + (f" at {rule.get('rate_pps')} pps" if rule.get("action") == "rate_limit" else "")
                + (" per source" if rule.get("per_source") else "")
                + (f" (expected collateral {float(share):.2%})" if share is not None else "")
            )
        elif ev.get("reason"):
            ids = ev.get("mitigation_ids")
            parts.append((f"rules {', '.join(map(str, ids))}: " if ids else "") + f"reason: {ev['reason']}")
        title = {
            "attack_start": "DDoS attack started",
            "attack_update": "DDoS attack continues",
            "attack_end": "DDoS attack ended",
            "mitigation_applied": "Mitigation applied",
            "mitigation_removed": "Mitigation withdrawn",
            "mitigation_failed": "Mitigation FAILED",
            "mitigation_skipped": "Attack left unmitigated",
            "mitigation_pending": "Mitigation waits for approval",
            "mitigation_approved": "Mitigation approved",
            "mitigation_refused": "Mitigation refused",
            "mitigation_verified": "Mitigation did not work and was rolled back",
        }[kind]
        summary = f"{title}: " + "; ".join(parts) if parts else title
        payload["summary"] = summary
        payload["event"] = ev
        return Alert(kind, SEVERITY[kind], summary, payload)


__all__ = ["SEVERITY", "Alert", "AlertBuilder", "iso"]
