"""Attack lifecycle: observations over time become attacks that start, update and end.

An attack is keyed by its target.  It starts on the first observation, is updated
while observations keep coming (peak rates, the union of categories), and ends only
after its group's ``end_after_seconds`` without an observation.  Hysteresis comes in
two parts: while an attack lasts, the detector holds its target to the lower exit
limits (``exit_ratio``), so a dip does not end it; and an attack that went quiet and
came back (a pulsing attack) waits for twice its longest quiet spell before it ends,
at most twice ``end_after_seconds``, so it stays one attack and its rules stay in
force instead of flapping.  No I/O, no clock.

>>> from ddos_shield.config import parse
>>> from ddos_shield.detect.threshold import Observation
>>> from ddos_shield.records import Category, as_network
>>> t = AttackTracker(parse('protected = ["203.0.113.0/24"]'), first_id=7)
>>> o = Observation(as_network("203.0.113.10/32"), "default", (Category.UDP,), 5e4, 2e7, 5e4, now=10.0)
>>> [(c.kind, c.attack.attack_id) for c in t.update([o], now=10.0)]
[('start', 7)]
>>> [c.kind for c in t.update([], now=20.0)]
['end']
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ddos_shield.config import Config
from ddos_shield.detect.threshold import Observation
from ddos_shield.records import CATEGORY_ATTACK, Attack, AttackType, IPNetwork

ChangeKind = Literal["start", "update", "end"]


@dataclass(frozen=True)
class AttackChange:
    kind: ChangeKind
    attack: Attack


class AttackTracker:
    """See the module docstring.  ``update_every`` spaces out update changes."""

    def __init__(self, config: Config, first_id: int = 1, update_every: float = 1.0) -> None:
        self._config = config
        self._next_id = first_id
        self._update_every = update_every
        self._active: dict[IPNetwork, Attack] = {}
        self._last_update: dict[IPNetwork, float] = {}

    def reconfigure(self, config: Config) -> None:
        """Keep the attacks, take the new groups' end times."""
        self._config = config

    @property
    def active(self) -> list[Attack]:
        return list(self._active.values())

    def retype(self, target: IPNetwork, types: tuple[AttackType, ...]) -> Attack | None:
        """Give the open attack on ``target`` finer types (from detect/classify.py); the
        engine calls it after every update, which resets types to the categories'."""
        cur = self._active.get(target)
        if cur is None:
            return None
        self._active[target] = attack = replace(cur, types=types)
        return attack

    def quiet_needed(self, attack: Attack) -> float:
        """Seconds without an observation after which ``attack`` ends."""
        base = self._config.group_for_name(attack.group).end_after_seconds
        return min(2 * base, max(base, 2 * attack.longest_gap))

    def update(self, observations: list[Observation], now: float) -> list[AttackChange]:
        changes: list[AttackChange] = []
        for o in observations:
            cur = self._active.get(o.target)
            if cur is None:
                attack = Attack(
                    attack_id=self._next_id,
                    target=o.target,
                    group=o.group,
                    types=tuple(CATEGORY_ATTACK[c] for c in o.categories),
                    categories=o.categories,
                    started=now,
                    pps=o.pps,
                    bps=o.bps,
                    peak_pps=o.pps,
                    peak_bps=o.bps,
                    last_seen=now,
                    basis=o.basis,
                    limit_pps=o.limit_pps,
                )
                self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
                self._active[o.target] = attack
                self._last_update[o.target] = now
                changes.append(AttackChange("start", attack))
                continue
            cats = tuple(sorted(set(cur.categories) | set(o.categories)))
            attack = replace(
                cur,
                categories=cats,
                types=tuple(CATEGORY_ATTACK[c] for c in cats),
                pps=o.pps,
                bps=o.bps,
                peak_pps=max(cur.peak_pps, o.pps),
                peak_bps=max(cur.peak_bps, o.bps),
                last_seen=now,
                basis=o.basis,
                longest_gap=max(cur.longest_gap, now - cur.last_seen),
                limit_pps=o.limit_pps or cur.limit_pps,
            )
            self._active[o.target] = attack
            if cats != cur.categories or now - self._last_update[o.target] >= self._update_every:
                self._last_update[o.target] = now
                changes.append(AttackChange("update", attack))
        for target, attack in list(self._active.items()):
            if now - attack.last_seen >= self.quiet_needed(attack):
                del self._active[target]
                del self._last_update[target]
                changes.append(AttackChange("end", replace(attack, pps=0.0, bps=0.0)))
        return changes
