"""Policy: attacks, samples and the rules in force in; rule commands out.

:class:`Policy` decides, for every active attack, which rules to apply (from the
fingerprint candidates and the host group's action), refreshes them while the attack
lasts and withdraws them a hold time after it ends.  It returns commands; the engine
carries them out against a backend and reports each as an event.  No I/O, no clock.

Rules the policy did not create itself (found in the kernel after a restart) are
*adopted*: kept until their expiry unless an attack claims them again.

Protected assets (:mod:`~ddos_shield.policy.protect`): an attack on a critical asset
gets a rate limit at once and its drop rule filed as :class:`Pending` until an
operator approves; a drop that would cover the never-block list is narrowed or
refused (:class:`Refuse`) and a rate limit takes its place.  A rule an operator
withdrew is not put back for the same attack (:meth:`Policy.suppress`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ddos_shield.config import Config
from ddos_shield.detect import fingerprint
from ddos_shield.detect.lifecycle import AttackChange
from ddos_shield.policy.protect import Refused, is_critical, narrow
from ddos_shield.records import Action, Attack, Match, Rule, TrafficBatch

#: refresh expiries this often while an attack lasts
REFRESH_EVERY = 1.0
#: a rule's kernel expiry never comes sooner than this after a refresh, so a slow
#: control loop cannot let a rule lapse under a running attack
MIN_TTL = 5.0


@dataclass(frozen=True)
class Apply:
    rule: Rule
    attack: Attack | None


@dataclass(frozen=True)
class Refresh:
    rule: Rule


@dataclass(frozen=True)
class Withdraw:
    rule: Rule
    reason: str


@dataclass(frozen=True)
class Skip:
    """An attack the policy decided not to mitigate (observe-only group, no usable rule)."""

    attack: Attack
    reason: str


@dataclass(frozen=True)
class Pending:
    """A rule the policy wants but may not enforce on its own (a drop on a critical
    asset): the engine files it for an operator's approval."""

    rule: Rule
    attack: Attack
    reason: str


@dataclass(frozen=True)
class Refuse:
    """A rule the protected-asset lists forbid (the engine reports it)."""

    rule: Rule
    attack: Attack | None
    reason: str


Command = Apply | Refresh | Withdraw | Skip | Pending | Refuse


@dataclass
class _Mitigation:
    attack: Attack
    rules: list[Rule] = field(default_factory=list)
    ended_at: float | None = None
    last_refresh: float = 0.0
    skipped: bool = False
    #: matches an operator withdrew: not applied again for this attack
    suppressed: set[Match] = field(default_factory=set)


class Policy:
    """See the module docstring."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._by_attack: dict[int, _Mitigation] = {}
        self._adopted: dict[int, Rule] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Keep the mitigations in force, take the new groups and protected lists."""
        self._config = config
        self._allow = config.allow_networks()
        self._never_block = config.never_block_networks()
        self._critical = config.critical_networks()

    def tracks(self, attack_id: int) -> bool:
        """Whether the policy still mitigates this attack (it is active or in its hold time)."""
        return attack_id in self._by_attack

    def suppress(self, rule: Rule) -> None:
        """An operator withdrew ``rule``: forget it and do not apply its match again
        for the same attack."""
        self.forget(rule)
        m = self._by_attack.get(rule.attack_id)
        if m is not None:
            m.suppressed.add(rule.match)

    def rules(self) -> list[Rule]:
        """Every rule the policy holds in force."""
        out = [r for m in self._by_attack.values() for r in m.rules]
        return out + list(self._adopted.values())

    def adopt(self, rules: list[Rule]) -> None:
        for r in rules:
            self._adopted[r.rule_id] = r

    def confirm(self, rule: Rule) -> None:
        """The engine applied ``rule`` (now with its id)."""
        m = self._by_attack.get(rule.attack_id)
        if m is None:
            self._adopted[rule.rule_id] = rule
            return
        m.rules = [r for r in m.rules if r.rule_id != rule.rule_id and r.match != rule.match] + [rule]

    def forget(self, rule: Rule) -> None:
        """The engine withdrew ``rule`` or the backend refused it."""
        self._adopted.pop(rule.rule_id, None)
        m = self._by_attack.get(rule.attack_id)
        if m is not None:
            m.rules = [r for r in m.rules if r.match != rule.match]

    def step(
        self, changes: list[AttackChange], active: list[Attack], window: TrafficBatch, now: float
    ) -> list[Command]:
        cmds: list[Command] = []
        for ch in changes:
            m = self._by_attack.get(ch.attack.attack_id)
            if ch.kind == "start":
                self._by_attack[ch.attack.attack_id] = _Mitigation(ch.attack)
            elif m is not None:
                m.attack = ch.attack
                if ch.kind == "end":
                    m.ended_at = now
        for attack in active:
            m = self._by_attack.setdefault(attack.attack_id, _Mitigation(attack))
            m.attack = attack
            cmds += self._mitigate(m, window, now)
        for aid, m in list(self._by_attack.items()):
            if m.ended_at is None:
                continue
            hold = self._config.group_for_name(m.attack.group).hold_seconds
            if now - m.ended_at >= hold:
                cmds += [Withdraw(r, "hold time after the attack ended") for r in m.rules]
                del self._by_attack[aid]
        for rid, r in list(self._adopted.items()):
            if r.expires_at <= now:
                cmds.append(Withdraw(r, "adopted rule expired"))
                del self._adopted[rid]
        return cmds

    def _mitigate(self, m: _Mitigation, window: TrafficBatch, now: float) -> list[Command]:
        group = self._config.group_for_name(m.attack.group)
        ttl = max(group.hold_seconds, MIN_TTL)
        if m.rules:
            if now - m.last_refresh < REFRESH_EVERY:
                return []
            m.last_refresh = now
            m.rules = [r.refreshed(now + ttl) for r in m.rules]
            return [Refresh(r) for r in m.rules]
        if m.skipped:
            return []
        if group.action == "observe":
            m.skipped = True
            return [Skip(m.attack, "host group action is observe")]
        mit = self._config.mitigation
        cands = fingerprint.build(
            m.attack,
            window,
            max_sources=mit.max_sources_per_attack,
            source_share=mit.source_share,
            min_samples=mit.min_samples,
            allowlist=self._allow,
            lead=2 * self._config.shield.interval_ms / 1000,
        )
        if cands is None:
            return []  # not enough samples yet: try again next tick
        cands = [c for c in cands if c.attack_share >= 0.5]
        if not cands:
            m.skipped = True
            return [Skip(m.attack, "no rule matches enough of the attack's samples")]
        room = mit.max_rules_total - len(self.rules())
        if room < len(cands):
            m.skipped = True
            return [Skip(m.attack, f"rule limit reached ({mit.max_rules_total})")]
        action = Action.RATE_LIMIT if group.action == "rate_limit" else Action.DROP
        critical = action == Action.DROP and is_critical(m.attack.target, self._critical)
        existing = {r.match: r for r in self._adopted.values()}
        cmds: list[Command] = []
        m.last_refresh = now
        cands = [c for c in cands if c.match not in m.suppressed]
        if not cands:
            m.skipped = True
            return [Skip(m.attack, "an operator withdrew the rules of this attack")]
        for c in cands:
            old = existing.get(c.match)
            if old is not None:  # found in the kernel after a restart: claim it
                del self._adopted[old.rule_id]
                rule = old.refreshed(now + ttl)
                m.rules.append(rule)
                cmds.append(Refresh(rule))
                continue
            rule = Rule(
                match=c.match,
                action=action,
                expires_at=now + ttl,
                rate_pps=group.rate_limit_pps if action == Action.RATE_LIMIT else 0,
                attack_id=m.attack.attack_id,
                created_at=now,
                reason=f"{c.kind} of {', '.join(t.value for t in m.attack.types)} on {m.attack.target}",
                attack_share=c.attack_share,
                collateral_share=c.collateral_share,
            )
            limited = replace(rule, action=Action.RATE_LIMIT, rate_pps=group.rate_limit_pps)
            if critical:
                # never dropped automatically: limit now, drop once an operator approves
                cmds.append(Pending(rule, m.attack, f"{m.attack.target} is a critical asset"))
                rule = limited
            elif action == Action.DROP:
                try:
                    pieces = narrow(rule, self._never_block, upstream=False)
                except Refused as e:
                    cmds.append(Refuse(rule, m.attack, str(e)))
                    pieces = [limited]
                if len(pieces) > 1:  # narrowed: say so, then enforce the pieces
                    cmds.append(Refuse(rule, m.attack, "narrowed around the never-block list"))
                for p in pieces[1:]:
                    m.rules.append(p)
                    cmds.append(Apply(p, m.attack))
                rule = pieces[0]
            m.rules.append(rule)
            cmds.append(Apply(rule, m.attack))
        return cmds
