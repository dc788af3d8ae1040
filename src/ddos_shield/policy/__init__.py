"""Policy: attacks, samples, rates and the rules in force in; rule commands out.

For every active attack, :class:`Policy` climbs its host group's escalation ladder
(:meth:`ddos_shield.config.Group.steps`), mildest step first::

    observe -> rate_limit -> drop -> drop_sources -> flowspec -> blackhole

Each step builds its rules from the attack's samples (:mod:`~ddos_shield.detect.fingerprint`),
previews them (a rule that would also match more than ``max_collateral_share`` of the
target's other recent traffic is refused), checks them against the protected-asset
lists (:mod:`~ddos_shield.policy.protect`) and the rule limits, and hands them to the
backend kind that can take the step (local data plane, or BGP).  ``settle_seconds``
later the step is verified on the rates at the target: the traffic still reaching
it (received minus dropped, in the attack's categories) and the target's other
traffic.  A step that did not cut the attack's traffic by ``verify_min_reduction``,
or that took ``verify_max_legit_loss`` of the other traffic with it, is rolled back;
while the traffic that gets through stays above the group's thresholds the next
step is taken.  A vector that joins a running attack (its rules match less than
``source_share`` of a category's recent samples, and what they miss is above the
limits on its own) gets rules of the step in force, at most once per ``settle_seconds``.
Rules are refreshed while the attack lasts and withdrawn a hold time after it ends.

It returns commands; the engine carries them out against its backends and reports
each as an event.  No I/O, no clock.

Rules the policy did not create itself (found in a backend after a restart) are
*adopted*: kept until their expiry unless an attack claims them again.

Rate limits on a fingerprint hold each source to the group's ``per_source_pps`` where
that alone keeps the attack below the group's thresholds (:func:`per_source_passes`:
an attack from few sources, whose aggregate limit would be shared with the target's own
clients matching the same fingerprint, and starve them); otherwise the whole fingerprint
is limited to ``rate_limit_pps`` (``rate_limit_per_source``: auto, always or never).

Protected assets: an attack on a critical asset gets a rate limit where the ladder
says drop, and the drop is filed as :class:`Pending` until an operator approves; a
drop that would cover the never-block list is narrowed or refused (:class:`Refuse`)
and a rate limit takes its place.  A rule an operator withdrew is not put back for
the same attack (:meth:`Policy.suppress`).

Connection floods and slow attacks (:mod:`~ddos_shield.detect.connections`) have no
flood to fingerprint -- the target's TCP is mostly its real clients' -- but they come
from few real sources (their handshakes complete), which the detector names.  Their
rules are narrowed to those sources and the target, one rule per source: the
``rate_limit`` step holds each connection-flood source's new connections (SYNs without
ACK) to ``mitigation.connection_syn_pps``; ``drop`` and ``drop_sources`` drop each named
source to the target.  A slow attack is low-rate, so a rate limit cannot stop it: its
``rate_limit`` step enforces nothing (the ladder goes on to the next step), and from
``drop`` on its sources are dropped.  Upstream steps take nothing for them.  The rates
at the target cannot judge such a step (the attack is below every packet threshold):
an enforcing step is kept while the detector names the sources (a source named later
gets its rule at the same step) and is not verified; from ``observe`` the ladder goes
on after ``settle_seconds`` while the attack lasts.  Scans and sweeps are reported only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ddos_shield.config import STEP_BACKENDS, Config, Group, Step
from ddos_shield.detect import fingerprint
from ddos_shield.detect.classify import TYPE_CATEGORY
from ddos_shield.detect.lifecycle import AttackChange
from ddos_shield.policy.protect import Refused, check_allowlist, is_critical, narrow
from ddos_shield.records import (
    CATEGORY_ATTACK,
    Action,
    Attack,
    AttackType,
    Category,
    IPAddress,
    IPNetwork,
    Match,
    RateBatch,
    Rule,
    TrafficBatch,
    addr_bytes,
    addresses_in,
    bytes_addr,
)

#: refresh expiries this often while an attack lasts
REFRESH_EVERY = 1.0
#: a rule's kernel expiry never comes sooner than this after a refresh, so a slow
#: control loop cannot let a rule lapse under a running attack
MIN_TTL = 5.0
#: verification ignores the target's other traffic below this rate: a few clients'
#: requests come and go, and their noise must not roll a good rule back
MIN_LEGIT_PPS = 100.0
#: fields Flowspec (RFC 8955/8956) cannot match on: the flowspec step's fingerprints
#: leave them open (and are previewed that way) rather than being refused upstream
FLOWSPEC_OPEN = ("ttl",)
#: attack types whose named sources (not a fingerprint) get rules (see the module docstring)
CONNECTION_TYPES = (AttackType.CONNECTION_FLOOD, AttackType.SLOW_ATTACK)
#: SYN without ACK: a new connection
NEW_CONNECTION = (0x12, 0x02)

#: per attack id, the sources the behaviour detectors named, by attack type
Named = Mapping[int, Mapping[AttackType, Collection[IPAddress]]]


@dataclass(frozen=True)
class Apply:
    rule: Rule
    attack: Attack | None
    #: backend name (the engine's local backend when empty)
    backend: str = ""
    step: str = ""


@dataclass(frozen=True)
class Refresh:
    rule: Rule


@dataclass(frozen=True)
class Withdraw:
    rule: Rule
    reason: str


@dataclass(frozen=True)
class Skip:
    """An attack (or a step of its ladder) left unmitigated, and why."""

    attack: Attack
    reason: str


@dataclass(frozen=True)
class Pending:
    """A rule the policy wants but may not enforce on its own (a drop on a critical
    asset): the engine files it for an operator's approval."""

    rule: Rule
    attack: Attack
    reason: str
    backend: str = ""


@dataclass(frozen=True)
class Refuse:
    """A rule the preview or the protected-asset lists forbid (the engine reports it)."""

    rule: Rule
    attack: Attack | None
    reason: str


@dataclass(frozen=True)
class Verified:
    """A ladder step checked ``settle_seconds`` after it was taken."""

    attack: Attack
    step: str
    rule_ids: tuple[int, ...]
    ok: bool
    reason: str
    figures: dict[str, float]


Command = Apply | Refresh | Withdraw | Skip | Pending | Refuse | Verified


@dataclass
class _Held:
    rule: Rule
    backend: str
    step: str
    ttl: float


@dataclass
class _Mitigation:
    attack: Attack
    held: list[_Held] = field(default_factory=list)
    #: index of the ladder step in force (-1: none yet)
    step: int = -1
    step_at: float = 0.0
    #: traffic through to the target and its other traffic when the step was taken
    before: tuple[float, float] = (0.0, 0.0)
    verified: bool = False
    last_check: float = 0.0
    ended_at: float | None = None
    last_refresh: float = 0.0
    exhausted: bool = False
    #: (match, backend) an operator withdrew: not applied again for this attack
    suppressed: set[tuple[Match, str]] = field(default_factory=set)
    #: per category, the share of the attack's samples its rules matched when last built
    built_cover: dict[Category, float] = field(default_factory=dict)
    #: when rules were last added for a vector that joined the attack
    extended_at: float = float("-inf")
    cover_checked: float = float("-inf")
    #: connection attacks: the named sources a step has built rules for (or had refused)
    tried: set[IPNetwork] = field(default_factory=set)

    @property
    def rules(self) -> list[Rule]:
        return [h.rule for h in self.held]


class Policy:
    """See the module docstring.  ``local`` names the data plane's backend, ``others``
    the further backends the engine holds (``bgp`` takes the upstream steps)."""

    def __init__(self, config: Config, local: str = "local", others: Collection[str] = ()) -> None:
        self._local = local
        self._others = set(others)
        self._by_attack: dict[int, _Mitigation] = {}
        self._adopted: dict[int, tuple[Rule, str]] = {}
        self._kill_switch = False
        self._active: list[Attack] = []  # this step's open attacks: a carpet's host attacks keep their samples
        self._named: Named = {}  # this step's named sources of connection floods and slow attacks
        self.reconfigure(config)

    def reconfigure(self, config: Config, others: Collection[str] | None = None) -> None:
        """Keep the mitigations in force, take the new groups and protected lists (and
        the further backends' names, when a reload turned one on or off)."""
        self._config = config
        if others is not None:
            self._others = set(others)
        self._allow = config.allow_networks()
        self._never_block = config.never_block_networks()
        self._critical = config.critical_networks()

    # ---- what the engine tells the policy -------------------------------------------

    def tracks(self, attack_id: int) -> bool:
        """Whether the policy still mitigates this attack (it is active or in its hold time)."""
        return attack_id in self._by_attack

    def rules(self) -> list[Rule]:
        """Every rule the policy holds in force."""
        out = [r for m in self._by_attack.values() for r in m.rules]
        return out + [r for r, _ in self._adopted.values()]

    def adopt(self, rules: list[tuple[Rule, str]]) -> None:
        """Rules found enforced at start, with their backend names."""
        for r, b in rules:
            self._adopted[r.rule_id] = (r, b)

    def confirm(self, rule: Rule, backend: str = "") -> None:
        """The engine applied ``rule`` (now with its id) on ``backend``."""
        backend = backend or self._local
        m = self._by_attack.get(rule.attack_id)
        if m is None:
            self._adopted[rule.rule_id] = (rule, backend)
            return
        step = ""
        for h in m.held:
            if h.rule.match == rule.match and h.backend == backend:
                step = h.step
        ttl = max(rule.expires_at - rule.created_at, MIN_TTL) if rule.created_at else MIN_TTL
        keep = [h for h in m.held if not (h.backend == backend and (h.rule.match == rule.match))]
        old = next((h for h in m.held if h.backend == backend and h.rule.match == rule.match), None)
        m.held = [*keep, _Held(rule, backend, step, old.ttl if old else ttl)]

    def forget(self, rule: Rule, backend: str = "") -> None:
        """The engine withdrew ``rule`` or the backend refused it."""
        backend = backend or self._local
        self._adopted.pop(rule.rule_id, None)
        m = self._by_attack.get(rule.attack_id)
        if m is not None:
            m.held = [
                h
                for h in m.held
                if not (h.backend == backend and h.rule.match == rule.match and h.rule.rule_id in (0, rule.rule_id))
            ]

    def suppress(self, rule: Rule, backend: str = "") -> None:
        """An operator withdrew ``rule``: forget it, do not apply its match again (on
        that backend) for the same attack, and take no further ladder step for it."""
        backend = backend or self._local
        self.forget(rule, backend)
        m = self._by_attack.get(rule.attack_id)
        if m is not None:
            m.suppressed.add((rule.match, backend))
            # an operator has taken this attack in hand: the shield climbs no further
            m.exhausted = m.verified = True

    # ---- one step --------------------------------------------------------------------

    def step(
        self,
        changes: list[AttackChange],
        active: list[Attack],
        window: TrafficBatch,
        now: float,
        rates: RateBatch | None = None,
        kill_switch: bool = False,
        named: Named | None = None,
    ) -> list[Command]:
        """One tick.  While ``kill_switch`` is on (an operator passes everything), rules
        are kept and refreshed but no step is judged or climbed: nothing is dropped, so
        every step would look useless; each step settles again once it is off.
        ``named``: per attack id, the sources the connection detector named, by type."""
        cmds: list[Command] = []
        self._active = active
        self._named = named or {}
        self._kill_switch = kill_switch
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
            m.ended_at = None
            cmds += self._mitigate(m, window, now, rates)
        for aid, m in list(self._by_attack.items()):
            if m.ended_at is None:
                continue
            hold = self._config.group_for_name(m.attack.group).hold_seconds
            if now - m.ended_at >= hold:
                cmds += [Withdraw(r, "hold time after the attack ended") for r in m.rules]
                del self._by_attack[aid]
        for rid, (r, _b) in list(self._adopted.items()):
            if r.expires_at <= now:
                cmds.append(Withdraw(r, "adopted rule expired"))
                del self._adopted[rid]
        return cmds

    def _mitigate(self, m: _Mitigation, window: TrafficBatch, now: float, rates: RateBatch | None) -> list[Command]:
        if not m.attack.categories and set(m.attack.types) & set(CONNECTION_TYPES):
            # wait for the detector's sources (the engine hands them in the tick that types the attack)
            return self._mitigate_connections(m, window, now) if self._connection_sources(m.attack) else []
        if not m.attack.categories:  # scans, sweeps; connection attacks before their sources are named
            if m.exhausted:
                return []
            m.exhausted = m.verified = True
            return [Skip(m.attack, "reported, not mitigated: no flood to fingerprint (see the attack's sources)")]
        group = self._config.group_for_name(m.attack.group)
        ladder = group.steps()
        cmds = self._refresh(m, now)
        if m.step < 0:
            return cmds + self._climb(m, ladder, group, 0, window, now, rates)
        cmds += self._extend(m, ladder[m.step], group, window, now, rates)
        if self._kill_switch:
            m.step_at = m.last_check = now  # the step settles from when enforcement resumes
            return cmds
        if rates is None or (m.exhausted and m.verified):
            return cmds
        if now - m.step_at < group.settle_seconds or now - m.last_check < group.settle_seconds:
            return cmds
        rows = rates[addresses_in(rates["dst"], m.attack.target)] if len(rates) else rates
        if not m.verified and (len(rows) == 0 or not rows["pps"].any()):
            # the target is silent (the attack and its users gone, or a replayed capture
            # ended): nothing to judge a step by; wait for traffic rather than read it as a loss
            return cmds
        m.last_check = now
        passed, other = self._traffic(m.attack, rates)
        limit = self._limit(m.attack, group)
        figures = {
            "before_pps": round(m.before[0], 1),
            "after_pps": round(passed, 1),
            "threshold_pps": round(limit, 1),
            "other_before_pps": round(m.before[1], 1),
            "other_after_pps": round(other, 1),
        }
        step = ladder[m.step].step
        mine = [h for h in m.held if h.step == step]
        if step == "syn_proxy" and mine:
            # The flood still arrives (the proxy answers it at the host, after the ingress
            # counters): these counters cannot judge it, and the ladder stops here.
            if not m.verified:
                m.verified = m.exhausted = True
                ids = tuple(h.rule.rule_id for h in mine)
                cmds.append(Verified(m.attack, step, ids, True, "SYN proxy answers the handshakes", figures))
            return cmds
        below = passed <= limit
        if not m.verified and mine:
            m.verified = True
            mit = self._config.mitigation
            reduced = passed <= m.before[0] * (1 - mit.verify_min_reduction)
            legit_loss = m.before[1] >= MIN_LEGIT_PPS and other < m.before[1] * (1 - mit.verify_max_legit_loss)
            ids = tuple(h.rule.rule_id for h in mine)
            if legit_loss or not (reduced or below):
                why = (
                    f"the target's other traffic fell from {m.before[1]:.0f} to {other:.0f} pps with it"
                    if legit_loss
                    else f"traffic through to the target went from {m.before[0]:.0f} to only {passed:.0f} pps"
                )
                cmds.append(Verified(m.attack, step, ids, False, f"rolled back: {why}", figures))
                for h in mine:
                    cmds.append(Withdraw(h.rule, f"verify: {why}"))
                m.held = [h for h in m.held if h.step != step]
                return cmds + self._climb(m, ladder, group, m.step + 1, window, now, rates)
            cmds.append(
                Verified(
                    m.attack,
                    step,
                    ids,
                    True,
                    "below the thresholds" if below else "reduced, still above the thresholds",
                    figures,
                )
            )
        elif not m.verified:
            m.verified = True  # nothing of this step to verify (observe, or all refused)
        if below:
            return cmds
        return cmds + self._climb(m, ladder, group, m.step + 1, window, now, rates)

    # ---- connection floods and slow attacks -------------------------------------------

    def _connection_sources(self, attack: Attack) -> dict[IPAddress, set[AttackType]]:
        """The sources the connection detector named for ``attack``, with what each did."""
        out: dict[IPAddress, set[AttackType]] = {}
        for kind, addrs in self._named.get(attack.attack_id, {}).items():
            if kind in CONNECTION_TYPES:
                for a in addrs:
                    out.setdefault(a, set()).add(kind)
        return out

    def _step_sources(self, attack: Attack, step: str) -> list[IPNetwork]:
        """The named sources step ``step`` acts on, each as its own network: at
        ``rate_limit`` the connection-flood sources only (a slow attack's rate is low
        already), from ``drop`` on all.  Allow-listed sources are left out (they are never
        dropped or limited)."""
        named = self._connection_sources(attack)
        if step == "rate_limit":
            named = {a: k for a, k in named.items() if AttackType.CONNECTION_FLOOD in k}
        srcs = sorted((a for a in named if not any(a in net for net in self._allow)), key=lambda a: (a.version, int(a)))
        return [ipaddress.ip_network(a) for a in srcs]

    def _connection_candidates(
        self, attack: Attack, step: str, window: TrafficBatch, skip: Collection[IPNetwork | None] = ()
    ) -> list[fingerprint.Candidate]:
        """One rule candidate per source of :meth:`_step_sources` not in ``skip``: its new
        connections to the target at ``rate_limit``, all its traffic to the target from
        ``drop`` on.  The attack share is the source's share of the named sources' samples
        to the target; the collateral is none, as the rule matches only what the source
        sends the target."""
        nets = [n for n in self._step_sources(attack, step) if n not in skip]
        if not nets:
            return []
        rows = window[addresses_in(window["dst"], attack.target)] if len(window) else window
        # one pass over the target's samples: weight per source address
        uniq, inv = np.unique(np.ascontiguousarray(rows["src"]).view("V16").ravel(), return_inverse=True)
        by_src = dict(
            zip(
                uniq.tolist(),
                np.bincount(inv.ravel(), weights=rows["packets"].astype(np.float64)).tolist(),
                strict=True,
            )
        )
        per = [float(by_src.get(addr_bytes(n.network_address), 0.0)) for n in nets]
        total = sum(per)
        out: list[fingerprint.Candidate] = []
        for net, p in zip(nets, per, strict=True):
            if step == "rate_limit":
                match = Match(src=net, dst=attack.target, proto=6, tcp_flags=NEW_CONNECTION)
            else:
                match = Match(src=net, dst=attack.target)
            out.append(fingerprint.Candidate(match, "source", p / total if total else 1.0 / len(nets), 0.0))
        return out

    def _mitigate_connections(self, m: _Mitigation, window: TrafficBatch, now: float) -> list[Command]:
        """The ladder for a connection flood or slow attack (see the module docstring)."""
        group = self._config.group_for_name(m.attack.group)
        ladder = group.steps()
        cmds = self._refresh(m, now)
        if m.step < 0:
            return cmds + self._climb(m, ladder, group, 0, window, now, None)
        step = ladder[m.step]
        if step.step == "observe" or not m.held:
            # nothing enforced (observe, or a step that made no rule): the attack still
            # named settle_seconds on is the sign the ladder must go on
            if not m.exhausted and not self._kill_switch and now - m.step_at >= group.settle_seconds:
                cmds += self._climb(m, ladder, group, m.step + 1, window, now, None)
            return cmds
        if m.suppressed or now - m.extended_at < REFRESH_EVERY:
            return cmds  # an operator took over; or looked at a moment ago
        m.extended_at = now
        # a source named after the step was taken gets its rule at the same step (tried
        # once: one refused by the rule limits is not refused again every second)
        if not set(self._step_sources(m.attack, step.step)) - m.tried:
            return cmds
        built = self._build(m, step, group, window, now, why=" (named after the step was taken)")
        if built is not None:
            got, skipped = built
            cmds += got
            if skipped is not None:
                cmds.append(Skip(m.attack, skipped))
        return cmds

    def _refresh(self, m: _Mitigation, now: float) -> list[Command]:
        """Push the expiries of ``m``'s rules forward, every :data:`REFRESH_EVERY`."""
        if not m.held or now - m.last_refresh < REFRESH_EVERY:
            return []
        m.last_refresh = now
        for h in m.held:
            h.rule = h.rule.refreshed(now + h.ttl)
        return [Refresh(h.rule) for h in m.held]

    # ---- the ladder ------------------------------------------------------------------

    def _climb(
        self,
        m: _Mitigation,
        ladder: list[Step],
        group: Group,
        i: int,
        window: TrafficBatch,
        now: float,
        rates: RateBatch | None,
    ) -> list[Command]:
        """Take step ``i`` (or, where it yields nothing, the next that does)."""
        cmds: list[Command] = []
        while i < len(ladder):
            step = ladder[i]
            built = self._build(m, step, group, window, now)
            if built is None:
                return cmds  # not enough samples yet: try again next tick
            got, skipped = built
            cmds += got
            m.step, m.step_at, m.verified, m.last_check = i, now, False, now
            m.built_cover = self._coverage(m, window)[0]
            m.extended_at = now  # a step's rules are a build too: the next comes a settle period on
            m.before = self._traffic(m.attack, rates) if rates is not None else (0.0, 0.0)
            if skipped is None:
                return cmds
            cmds.append(Skip(m.attack, skipped))
            if step.step == "observe":
                return cmds  # observe is a step in its own right: it settles like the others
            i += 1
        if not m.exhausted:
            m.exhausted = True
            if m.step >= 0 and i > 0 and i >= len(ladder) and len(ladder) > 1:
                cmds.append(Skip(m.attack, "escalation ladder exhausted"))
        return cmds

    def _build(
        self,
        m: _Mitigation,
        step: Step,
        group: Group,
        window: TrafficBatch,
        now: float,
        attack: Attack | None = None,
        why: str = "",
    ) -> tuple[list[Command], str | None] | None:
        """Commands for one step and, when it enforces nothing, why; None while samples are too few.
        ``attack`` (default: the mitigation's) is what the rules are built for, ``why``
        is added to their reason."""
        attack = attack or m.attack
        name = step.step
        if name == "observe":
            return [], "host group action is observe" if len(group.steps()) == 1 else "ladder step observe: alert only"
        kinds = STEP_BACKENDS[name]
        local = "local" in kinds or self._local in kinds
        backend = self._local if local else next((b for b in kinds if b in self._others), "")
        if not backend:
            return [], f"ladder step {name}: no {' or '.join(kinds)} backend configured"
        upstream = backend != self._local
        if name == "syn_proxy" and Category.TCP_SYN not in attack.categories:
            return [], "ladder step syn_proxy: not a SYN flood"
        mit = self._config.mitigation
        target = attack.target
        lead = 2 * self._config.shield.interval_ms / 1000
        cands: list[fingerprint.Candidate]
        conn = not attack.categories  # a connection flood or slow attack: its named sources
        named = self._connection_sources(attack) if conn else {}
        if conn:
            if upstream:
                return (
                    [],
                    f"ladder step {name}: not for connection floods or slow attacks (their sources are dropped locally)",
                )
            # a source this step holds a rule for already (a critical asset's stand-in rate
            # limit has a match of its own) gets no second one
            covered = {h.rule.match.src for h in m.held if h.step == name}
            cands = self._connection_candidates(attack, name, window, skip=covered)
            m.tried |= {c.match.src for c in cands if c.match.src is not None}
            if not cands:
                return [], (
                    f"ladder step {name}: a rate limit cannot stop a slow attack (it is low-rate): reported only"
                    if name == "rate_limit"
                    else f"ladder step {name}: no named source left to block (allow-listed)"
                )
        elif name == "blackhole":
            cands = [fingerprint.Candidate(Match(dst=target), "fingerprint", 1.0, 1.0)]
        else:
            built = fingerprint.build(
                attack,
                window,
                max_sources=0 if name in ("flowspec", "syn_proxy") else mit.max_sources_per_attack,
                source_share=mit.source_share,
                min_samples=mit.min_samples,
                allowlist=self._allow,
                lead=lead,
                others=self._active,
                open_fields=FLOWSPEC_OPEN if name == "flowspec" else (),
            )
            if built is None:
                return None
            cands = [c for c in built if c.set_share >= 0.5]
            if name == "syn_proxy":
                cands = _service(attack, cands)
            if name == "drop_sources":
                cands = _heavy_sources(
                    attack, window, mit.max_sources_per_attack, self._allow, lead, others=self._active
                )
        if not cands:
            return [], f"ladder step {name}: no rule matches enough of the attack's samples"
        # a blackhole is a route for the whole target (RFC 7999), not a Flowspec drop
        action = {"rate_limit": Action.RATE_LIMIT, "blackhole": Action.BLACKHOLE, "syn_proxy": Action.SYN_PROXY}.get(
            name, Action.DROP
        )
        critical = is_critical(target, self._critical)
        ttl = max(step.ttl_seconds or group.hold_seconds, MIN_TTL)
        cmds: list[Command] = []
        adopted = {(r.match, b): rid for rid, (r, b) in self._adopted.items()}
        held = {(h.rule.match, h.backend): h for h in m.held}
        per_source = _PerSource(self, attack, group, window, lead)
        room_target = mit.max_rules_per_target - len(m.held)
        room_total = mit.max_rules_total - len(self.rules())
        new: list[_Held] = []
        for c in cands:
            rate = group.rate_limit_pps if action == Action.RATE_LIMIT else 0
            reason = f"{name}: {c.kind} of {', '.join(t.value for t in attack.types)} on {target}{why}"
            if conn:
                rate = mit.connection_syn_pps if action == Action.RATE_LIMIT else 0
                what = f"its new connections (SYN) limited to {rate}/s" if rate else "its traffic to the target dropped"
                src = c.match.src
                did = sorted(t.value for t in named.get(src.network_address, ())) if src is not None else []
                reason = f"{name}: source {src} named as {' and '.join(did)} on {target}: {what}{why}"
            rule = Rule(
                match=c.match,
                action=action,
                expires_at=now + ttl,
                rate_pps=rate,
                attack_id=m.attack.attack_id,
                created_at=now,
                reason=reason,
                attack_share=c.attack_share,
                collateral_share=c.collateral_share,
            )
            if (rule.match, backend) in m.suppressed:
                continue
            # a source rule's "collateral" is the attacking source's own other traffic:
            # recorded, never a reason to spare the source; blackholes are the last resort
            if c.kind == "fingerprint" and name != "blackhole" and c.collateral_share > mit.max_collateral_share:
                cmds.append(
                    Refuse(
                        rule,
                        m.attack,
                        f"preview: would also match {c.collateral_share:.1%} of the target's other traffic "
                        f"(limit {mit.max_collateral_share:.1%})",
                    )
                )
                continue
            try:
                if upstream:
                    check_allowlist(rule.match, self._allow, upstream=True)
                    if critical:
                        raise Refused(f"{target} is a critical asset: no automatic upstream drop")
                pieces = narrow(rule, self._never_block, upstream=upstream) if not critical else [rule]
            except Refused as e:
                cmds.append(Refuse(rule, m.attack, str(e)))
                if upstream or action != Action.DROP:
                    continue
                pieces = [per_source.limit(_instead_of_drop(rule, group, mit.connection_syn_pps, conn), c)]
            if len(pieces) > 1:
                cmds.append(Refuse(rule, m.attack, "narrowed around the never-block list"))
            for p in pieces:
                if critical and p.action == Action.DROP and not upstream:
                    # never dropped automatically: limit now, drop once an operator approves
                    cmds.append(Pending(p, m.attack, f"{target} is a critical asset", backend))
                    p = _instead_of_drop(p, group, mit.connection_syn_pps, conn)
                if p.action == Action.RATE_LIMIT and not upstream:
                    p = per_source.limit(p, c)
                key = (p.match, backend)
                if (
                    key in held
                    and held[key].rule.action == p.action
                    and (held[key].rule.rate_pps, held[key].rule.per_source) == (p.rate_pps, p.per_source)
                ):
                    continue  # this very rule is in force already (an earlier step)
                if len(new) >= min(room_target, room_total):
                    cmds.append(
                        Refuse(
                            p,
                            m.attack,
                            f"rule limit reached ({mit.max_rules_per_target} per target, "
                            f"{mit.max_rules_total} in total)",
                        )
                    )
                    continue
                if key in adopted:  # found enforced after a restart: claim it
                    old, _ = self._adopted.pop(adopted[key])
                    h = _Held(old.refreshed(now + ttl), backend, name, ttl)
                    new.append(h)
                    cmds.append(Refresh(h.rule))
                    continue
                if key in held:  # same match, milder action: the new step's rule replaces it
                    cmds.append(Withdraw(held[key].rule, f"replaced by ladder step {name}"))
                    m.held.remove(held[key])
                new.append(_Held(p, backend, name, ttl))
                cmds.append(Apply(p, m.attack, backend, name))
        m.held += new
        m.last_refresh = now
        if not new:
            return cmds, f"ladder step {name}: every rule refused"
        return cmds, None

    def _extend(
        self, m: _Mitigation, step: Step, group: Group, window: TrafficBatch, now: float, rates: RateBatch | None
    ) -> list[Command]:
        """Rules for a vector that joined the attack after its rules were built (a SYN flood
        joined by a UDP flood, an amplification by its fragments): in each category where
        the rules match less than ``source_share`` of the last window's attack samples (and
        of what they matched when built), and what they miss is above the group's
        thresholds on its own, the samples they miss get rules of the step in force,
        through the same preview, protections and limits.  At most once per
        ``settle_seconds``, so a vector that cannot be fingerprinted does not flap."""
        if step.step in ("observe", "blackhole") or not m.held or m.suppressed or rates is None:
            return []  # nothing enforced to extend; a whole-target route needs no more; an operator took over
        if now - m.extended_at < group.settle_seconds or now - m.cover_checked < REFRESH_EVERY:
            return []
        m.cover_checked = now
        mit = self._config.mitigation
        cover, hit = self._coverage(m, window)
        low = [
            c
            for c, share in cover.items()
            if share < mit.source_share * m.built_cover.get(c, 1.0) and self._flood(m.attack, group, c, share, rates)
        ]
        if not low:
            return []
        types = [t for t in m.attack.types if TYPE_CATEGORY.get(t) in low]
        have = {TYPE_CATEGORY.get(t) for t in types}
        types += [CATEGORY_ATTACK[c] for c in low if c not in have]
        vector = replace(m.attack, categories=tuple(low), types=tuple(types))
        names = ", ".join(t.value for t in types)
        if any(c not in m.built_cover for c in low):
            why = f" (new vector {names} joined the attack)"
        else:
            why = f" (the rules in force matched only {min(cover[c] for c in low):.0%} of its {names} samples)"
        built = self._build(m, step, group, window[~hit], now, attack=vector, why=why)
        if built is None:
            return []  # too few of the new vector's samples yet: look again next time
        m.extended_at = now
        cmds, skipped = built
        # what the rules match now (new ones included) is the reference from here on: a
        # vector refused once is tried again only if the rules then match even less of it
        m.built_cover.update(self._coverage(m, window)[0])
        if skipped is not None:
            cmds.append(Skip(m.attack, skipped + why))
        return cmds

    # ---- measurements ----------------------------------------------------------------

    def _flood(self, attack: Attack, group: Group, cat: Category, covered: float, rates: RateBatch) -> bool:
        """Whether what the rules miss of ``cat`` at the target (its counted rate times the
        share of its samples they do not match) is above the group's limit for it on its
        own.  The target's own clients in the attack's categories are among those samples,
        and the preview cannot tell them from the attack (they arrived after it started):
        below the limits, what the rules miss is theirs, and gets no rule."""
        rows = rates[addresses_in(rates["dst"], attack.target)] if len(rates) else rates
        if len(rows) == 0:
            return False
        limits = group.carpet.thresholds if AttackType.CARPET_BOMBING in attack.types else group.thresholds
        t = limits.for_category(cat)
        pps_limit = max(t.pps, attack.limit_pps if attack.basis == "baseline" else 0.0) if t.pps else 0.0
        missed = 1.0 - covered
        pps = float(rows["pps"][:, int(cat)].sum()) * missed
        bps = float(rows["bps"][:, int(cat)].sum()) * missed
        return bool((pps_limit and pps >= pps_limit) or (t.bps and bps >= t.bps))

    def _coverage(self, m: _Mitigation, window: TrafficBatch) -> tuple[dict[Category, float], np.ndarray]:
        """Per category of the attack with enough samples in ``window`` to judge by, the
        share (by packets) its rules match; and the mask of the window's attack samples
        they match."""
        lead = 2 * self._config.shield.interval_ms / 1000
        mine, _ = fingerprint.attack_samples(window, m.attack, m.attack.started - lead, self._active)
        idx = np.nonzero(mine)[0]
        atk = window[idx]
        hit_atk = np.zeros(len(atk), dtype=bool)
        for h in m.held:
            hit_atk |= h.rule.match.matches(atk)
        hit = np.zeros(len(window), dtype=bool)
        hit[idx[hit_atk]] = True
        w = atk["packets"].astype(float)
        enough = max(3, self._config.mitigation.min_samples // 4)  # as fingerprint.build asks of a category
        out: dict[Category, float] = {}
        for c in m.attack.categories:
            sel = atk["category"] == int(c)
            total = float(w[sel].sum())
            if int(sel.sum()) >= enough and total > 0:
                out[c] = float(w[sel & hit_atk].sum()) / total
        return out, hit

    def _traffic(self, attack: Attack, rates: RateBatch) -> tuple[float, float]:
        """(pps of the attack's categories that got through to the target, pps of its
        other traffic that got through).  Drops are counted per destination, not per
        category: they are put to the attack's categories first, the rest to the others."""
        rows = rates[addresses_in(rates["dst"], attack.target)] if len(rates) else rates
        if len(rows) == 0:
            return 0.0, 0.0
        cats = [int(c) for c in attack.categories]
        pps = rows["pps"]
        atk = float(pps[:, cats].sum())
        other = float(pps.sum()) - atk
        dropped = float(rows["dropped_pps"].sum())
        return max(0.0, atk - dropped), max(0.0, other - max(0.0, dropped - atk))

    def _limit(self, attack: Attack, group: Group) -> float:
        if attack.basis == "baseline" and attack.limit_pps > 0:
            # judged against its learned limit: a busy host's normal traffic may be above
            # the static thresholds, and must not make the ladder climb
            return attack.limit_pps
        # a carpet bomb's target is a prefix: what gets through is judged by the prefix's limits
        limits = group.carpet.thresholds if AttackType.CARPET_BOMBING in attack.types else group.thresholds
        lim = [limits.for_category(c).pps for c in attack.categories]
        return float(sum(x for x in lim if x)) or float("inf")


#: per-source limits judge an attack's source set from its samples only when sources seen
#: in one sample carry at most this share of them: a spoofed flood shows a new source in
#: nearly every sample, and its sources are then far more than the samples tell
MAX_SINGLE_SAMPLE_SHARE = 0.1


def per_source_passes(samples: TrafficBatch, attack_pps: float, total_packets: float, rate: float) -> float | None:
    """What a per-source limit of ``rate`` lets through of the attack traffic that
    ``samples`` (the attack's samples a rule matches) stand for: each source's rate
    (``attack_pps`` times its share of ``total_packets``, the packets of all the attack's
    samples) up to ``rate``, summed.  ``None`` when the samples cannot tell the sources:
    none, or sources seen only once carry more than :data:`MAX_SINGLE_SAMPLE_SHARE`."""
    if len(samples) == 0 or total_packets <= 0:
        return None
    keys = np.ascontiguousarray(samples["src"]).view("V16").ravel()
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = np.bincount(inv, weights=samples["packets"].astype(np.float64))
    if float(w[counts == 1].sum()) > MAX_SINGLE_SAMPLE_SHARE * float(w.sum()):
        return None
    est = attack_pps * w / total_packets
    return float(np.minimum(est, rate).sum())


class _PerSource:
    """Whether a rate limit of one :meth:`Policy._build` holds each source (see the
    module docstring); the attack's samples are picked once, when first needed."""

    def __init__(self, policy: Policy, attack: Attack, group: Group, window: TrafficBatch, lead: float) -> None:
        self._policy, self._attack, self._group, self._window, self._lead = policy, attack, group, window, lead
        self._samples: TrafficBatch | None = None

    def limit(self, rule: Rule, cand: fingerprint.Candidate) -> Rule:
        """``rule`` (a rate limit) per source, or as it is."""
        mode = self._group.rate_limit_per_source
        src = rule.match.src
        if mode == "never" or cand.kind != "fingerprint" or (src is not None and src.prefixlen == src.max_prefixlen):
            return rule  # one source's rule is its own limit already
        rate = self._group.per_source_pps
        if mode == "always":
            return replace(rule, per_source=True, rate_pps=rate, reason=rule.reason + f" (per source, {rate} pps each)")
        if self._samples is None:
            mine, _ = fingerprint.attack_samples(
                self._window, self._attack, self._attack.started - self._lead, self._policy._active
            )
            self._samples = self._window[mine]
        atk = self._samples
        passes = per_source_passes(
            atk[rule.match.matches(atk)], self._attack.pps, float(atk["packets"].sum()), float(rate)
        )
        if passes is None or passes > self._policy._limit(self._attack, self._group):
            return rule
        return replace(
            rule,
            per_source=True,
            rate_pps=rate,
            reason=rule.reason + f" (per source, {rate} pps each: ~{passes:.0f} pps of it would pass)",
        )


def _instead_of_drop(rule: Rule, group: Group, syn_pps: int, conn: bool) -> Rule:
    """The rate limit that stands in for a drop the policy may not enforce (a critical
    asset's, pending approval; one the never-block list refused): the group's
    ``rate_limit_pps`` on the same match; for a connection attack's source, its new
    connections held to ``syn_pps`` (its packets, a few a connection, are not what floods).

    >>> from ddos_shield.config import Group
    >>> r = Rule(Match(src=ipaddress.ip_network("198.51.100.66/32")), Action.DROP, 0.0)
    >>> _instead_of_drop(r, Group(name="default"), 20, conn=True).match.tcp_flags
    (18, 2)
    """
    if conn:
        return replace(
            rule,
            match=replace(rule.match, proto=6, tcp_flags=NEW_CONNECTION),
            action=Action.RATE_LIMIT,
            rate_pps=syn_pps,
            reason=f"{rule.reason}; meanwhile its new connections (SYN) limited to {syn_pps}/s",
        )
    return replace(rule, action=Action.RATE_LIMIT, rate_pps=group.rate_limit_pps)


def _service(attack: Attack, cands: list[fingerprint.Candidate]) -> list[fingerprint.Candidate]:
    """The TCP service a SYN flood aims at, from its fingerprints: destination and port only
    (the proxy answers every handshake to it, legitimate ones included)."""
    out: list[fingerprint.Candidate] = []
    for c in cands:
        m = c.match
        if m.proto == 6 and m.dport is not None:
            match = Match(proto=6, dst=attack.target, dport=m.dport)
            if all(x.match != match for x in out):
                out.append(fingerprint.Candidate(match, "fingerprint", c.attack_share, 0.0, c.set_share))
    return out


def _heavy_sources(
    attack: Attack,
    window: TrafficBatch,
    max_sources: int,
    allow: list[IPNetwork],
    lead: float,
    others: list[Attack] | None = None,
) -> list[fingerprint.Candidate]:
    """The heaviest sources of the attack's samples (each at least a share of
    ``1 / (2 * max_sources)``), one drop candidate each, whatever share they cover together."""
    atk_mask, other_mask = fingerprint.attack_samples(window, attack, attack.started - lead, others or ())
    atk, other = window[atk_mask], window[other_mask]
    if len(atk) == 0 or max_sources == 0:
        return []
    keep = np.ones(len(atk), dtype=bool)
    for net in allow:
        keep &= ~addresses_in(atk["src"], net)
    atk = atk[keep]
    if len(atk) == 0:
        return []
    keys = np.ascontiguousarray(atk["src"]).view("V16").ravel()
    uniq, inv = np.unique(keys, return_inverse=True)
    per = np.bincount(inv, weights=atk["packets"].astype(float))
    total = per.sum()
    out: list[fingerprint.Candidate] = []
    for i in np.argsort(per)[::-1][:max_sources]:
        if per[i] / total < 0.5 / max_sources:
            break
        net = ipaddress.ip_network(bytes_addr(uniq[i].tobytes()))
        m = Match(src=net)
        w_oth = other["packets"].astype(float)
        coll = float(w_oth[m.matches(other)].sum() / w_oth.sum()) if w_oth.sum() else 0.0
        out.append(fingerprint.Candidate(m, "source", float(per[i] / total), coll))
    return out
