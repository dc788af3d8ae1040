"""The engine: the one orchestrator.  It owns the loop and the timers.

Every ``interval_ms`` it reads the data plane's counters and samples, turns counters
into rates, runs detection (:mod:`~ddos_shield.detect`), asks the policy for rule
commands (:mod:`~ddos_shield.policy`), carries them out on the backend
(:mod:`~ddos_shield.mitigate`) and reports each step as an event
(:mod:`~ddos_shield.events`).  Everything else reads :meth:`Engine.snapshot`.

Several enforcement backends at once: ``backend`` is the local one (the data
plane's), ``backends`` adds others (BGP, notify hooks) by their names.  The engine
allocates every mitigation id itself, so ids never collide across backends, and
keeps its own record of every mitigation (:mod:`~ddos_shield.engine.ledger`),
persisted in ``state_file`` and reconciled with what the backends enforce at start.
In dry run (``shield.dry_run``) every backend is shadowed by an in-memory one:
everything is decided and recorded, nothing is enforced.

Operators act through :meth:`Engine.add_mitigation`, :meth:`Engine.approve`,
:meth:`Engine.withdraw_mitigation` and :meth:`Engine.mitigations` (thread-safe; the
control API calls them from its own threads).  Every action emits an event with
``actor`` and ``reason``.

Example (dry run, no kernel)::

    engine = Engine(config, dataplane, MemoryBackend(), EventSink.open("-"))
    engine.start(time.time())
    engine.run(stop_event)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddos_shield.capture.base import TelemetrySource
from ddos_shield.config import Config
from ddos_shield.dataplane.base import DataPlane, counter_rates
from ddos_shield.dataplane.table import CounterTable
from ddos_shield.detect.baseline import Baselines
from ddos_shield.detect.carpet import CarpetDetector
from ddos_shield.detect.classify import Classifier
from ddos_shield.detect.connections import ConnectionDetector
from ddos_shield.detect.flows import SPAN_SECONDS as FLOW_SPAN_SECONDS
from ddos_shield.detect.flows import with_flows
from ddos_shield.detect.lifecycle import AttackChange, AttackTracker
from ddos_shield.detect.scan import Finding, ScanDetector
from ddos_shield.detect.sketch import thin
from ddos_shield.detect.sources import AttackSources
from ddos_shield.detect.threshold import Observation, ThresholdDetector
from ddos_shield.engine.ledger import Entry, Ledger
from ddos_shield.engine.traffic import summarize
from ddos_shield.engine.window import SampleWindow
from ddos_shield.errors import ShieldError
from ddos_shield.events import EventSink, attack_fields, rule_fields
from ddos_shield.mitigate.base import Backend
from ddos_shield.mitigate.memory import MemoryBackend
from ddos_shield.mitigate.registry import NOTIFIERS, open_backend
from ddos_shield.policy import MIN_TTL, Command, Pending, Policy, Refresh, Refuse, Skip, Verified, Withdraw
from ddos_shield.policy.protect import Refused, check_allowlist, narrow
from ddos_shield.records import (
    CATEGORY_NAMES,
    COUNTER_DTYPE,
    RATE_DTYPE,
    Action,
    Attack,
    AttackType,
    IPAddress,
    IPNetwork,
    Match,
    RateBatch,
    Rule,
    TrafficBatch,
    addresses_in,
    empty_rates,
    empty_traffic,
)
from ddos_shield.store import baseline as baseline_store

if TYPE_CHECKING:
    from ddos_shield.store.packets import PacketTap

log = logging.getLogger(__name__)

#: seconds of samples kept for building rules
WINDOW_SECONDS = 2.0
#: largest 1-in-N sampling rate
MAX_SAMPLE_EVERY = 1 << 16
#: upper bounds (seconds) of the control-loop duration histogram (the metrics' buckets)
LOOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: longest TTL an operator may give a manual rule (a week): a forgotten rule must end
MAX_MANUAL_TTL = 7 * 86400.0
#: while only expiries change, the record on disk is rewritten this often (a change of
#: what is enforced is written at once); reconciliation takes expiries from the backends.
#: Writing 10,000 mitigations takes a few hundred ms (bench/ledger.py)
SAVE_REFRESH_EVERY = 30.0
#: busy destinations the baselines learn from each tick; with more, they learn every few ticks
LEARN_ROWS_PER_TICK = 4096
#: backends that enforce upstream of the network (the allow-list is not checked there)
UPSTREAM_BACKENDS = ("bgp",)
#: further backends a reload rebuilds when their settings change or it turns them on or
#: off (the data plane's own and the notify hooks are built at start only)
RELOADABLE_BACKENDS = ("bgp",)
#: rows the sample window holds at most (~100 bytes each): past it, new samples are
#: thinned (packets scaled up), so a burst of flow records -- one per spoofed source
#: -- cannot grow the window with the number of sources
WINDOW_MAX_ROWS = 200_000


class Engine:
    """See the module docstring."""

    def __init__(
        self,
        config: Config,
        dataplane: DataPlane,
        backend: Backend,
        events: EventSink,
        *,
        sources: Sequence[TelemetrySource] = (),
        clock: Callable[[], float] = time.time,
        tap: PacketTap | None = None,
        backends: Sequence[Backend] = (),
        state_file: Path | None = None,
        baseline_file: Path | None = None,
        opener: Callable[[str, Config], Backend] = open_backend,
    ) -> None:
        """``state_file``: the mitigation record; ``baseline_file``: where the learned
        baselines are kept across restarts (None: learned, never stored); ``opener``
        opens a backend by kind when a reload rebuilds one (the registry's)."""
        self._opener = opener
        self.config = config
        self.dataplane = dataplane
        self._kill_switch_at = -math.inf
        self._kill_switch_on = False
        self.backend = backend
        self.backends: dict[str, Backend] = {backend.name: backend}
        for b in backends:
            if b.name in self.backends:
                raise ShieldError(f"two enforcement backends named {b.name!r}")
            self.backends[b.name] = b
        # dry run: every backend is shadowed by an in-memory one that only records
        self._shadows: dict[str, Backend] = {}
        for name, b in self.backends.items():
            if isinstance(b, MemoryBackend):  # enforces nothing already (the replay data plane's)
                self._shadows[name] = b
                continue
            shadow = MemoryBackend(clock)
            shadow.name = name
            self._shadows[name] = shadow
        self.events = events
        self._dry_run = config.shield.dry_run
        # a dry run keeps no record: nothing it decided is enforced, so nothing may be re-applied
        self.ledger = Ledger.load(None if config.shield.dry_run else state_file)
        self._dirty_at: float | None = None
        self._saved_at = 0.0
        self.sources = list(sources)
        # traffic seen by flow collectors and mirror ports, counted as the kernel counts
        self._telemetry = CounterTable(config.prefix_groups(), config.shield.ipv6_prefix_len)
        self._telemetry_history: deque[tuple[float, np.ndarray]] = deque()
        self._clock = clock
        self.baselines = Baselines(config.baseline)
        self._baseline_file = baseline_file
        self._baseline_saved_at: float | None = None
        self._baseline_writer: threading.Thread | None = None
        self._learn_wait = 0
        self.detector = ThresholdDetector(config, self.baselines)
        self.carpet = CarpetDetector(config)
        self.attack_sources = AttackSources()
        self.tracker = AttackTracker(config, first_id=int(clock() * 1000) % 0x7FFFFFFF + 1)
        self._notifiers = [b.name for b in backends if b.name in NOTIFIERS]
        self.policy = Policy(config, local=backend.name, others=[b.name for b in backends if b.name not in NOTIFIERS])
        self.classifier = Classifier(lead=2 * config.shield.interval_ms / 1000)
        self.scans = ScanDetector(config)
        self.connections = ConnectionDetector(config)
        self._sources: dict[int, set[str]] = {}  # attack id -> sources the behaviour detectors named
        # attack id -> the same, by what they did: the policy blocks connection floods' and slow attacks'
        self._named: dict[int, dict[AttackType, set[IPAddress]]] = {}
        self._prev_counters = np.zeros(0, dtype=COUNTER_DTYPE)
        self._prev_time: float | None = None
        self._window = SampleWindow(WINDOW_SECONDS)
        self._sample_every = 1
        self._rates = empty_rates()
        self._loop_ms: deque[float] = deque(maxlen=100)
        # re-entrant: operator calls and the loop share it, and operator calls nest
        self._lock = threading.RLock()
        # every sampled packet also goes to the tap, where the store takes attack captures
        self.tap = tap
        self._loop_hist = np.zeros(len(LOOP_BUCKETS) + 1, dtype=np.int64)
        self._loop_sum = 0.0

    @property
    def dry_run(self) -> bool:
        """Fixed at construction: a reload cannot turn decisions taken in a dry run
        into enforcement (nor the reverse) half-way through."""
        return self._dry_run

    def _enforcer(self, name: str) -> Backend:
        return self._shadows[name] if self.dry_run else self.backends[name]

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Push the configuration to the data plane and adopt what is already enforced."""
        cfg = self.config
        self.dataplane.set_protected(cfg.prefix_groups())
        for b in self.backends.values():  # BGP refuses upstream rules over allow-listed sources
            b.set_allowlist(cfg.allow_networks())
        self.dataplane.set_sample_every(self._sample_every)
        for src in self.sources:
            src.start()
        with self._lock:
            self._reconcile(now)
        self._load_baselines(now)
        self._prev_counters = self.dataplane.read_counters()
        self._prev_time = now
        self.events.emit(
            "ready",
            self._clock(),
            dataplane=self.dataplane.name,
            backend=self.backend.name,
            backends=list(self.backends),
            interfaces=cfg.shield.interfaces,
            sources=[s.name for s in self.sources],
            dry_run=cfg.shield.dry_run,
        )

    def close(self) -> None:
        """Stop the telemetry sources (the data plane is the caller's) and store the baselines."""
        for src in self.sources:
            src.close()
        if self._baseline_writer is not None:
            self._baseline_writer.join()
        if self._baseline_file is not None and self.config.baseline.enabled:
            with self._lock:
                arrays = self.baselines.state()
            try:
                baseline_store.save(self._baseline_file, arrays)
            except ShieldError as e:
                log.error("%s", e)

    def _load_baselines(self, now: float) -> None:
        path = self._baseline_file
        if path is None or not self.config.baseline.enabled or not path.exists():
            return
        try:
            loaded = baseline_store.load(path, self.config.baseline)
        except ShieldError as e:
            # keep the refused file for a look (or a newer shield), and learn afresh
            aside = path.with_name(path.name + ".refused")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            self.events.emit("baseline_refused", now, reason=str(e), kept_as=str(aside))
            return
        with self._lock:
            self.baselines = loaded
            self.detector = ThresholdDetector(self.config, loaded)
        self.events.emit("baseline_loaded", now, path=str(path), **loaded.summary(now))

    def _save_baselines(self, now: float) -> None:
        """Every ``save_every_seconds``, write the baselines from a thread (a big file must
        not stall the loop); the arrays are copied here, under the loop's lock."""
        if self._baseline_file is None or not self.config.baseline.enabled:
            return
        if self._baseline_saved_at is None:
            self._baseline_saved_at = now
            return
        if now - self._baseline_saved_at < self.config.baseline.save_every_seconds:
            return
        if self._baseline_writer is not None and self._baseline_writer.is_alive():
            return
        self._baseline_saved_at = now
        arrays, path = self.baselines.state(), self._baseline_file

        def write() -> None:
            try:
                baseline_store.save(path, arrays)
            except ShieldError as e:
                log.error("%s", e)

        self._baseline_writer = threading.Thread(target=write, name="baseline-writer", daemon=True)
        self._baseline_writer.start()

    def reload(self, config: Config, *, actor: str = "shield") -> None:
        """Swap in a new, already validated configuration at once.  A backend of
        :data:`RELOADABLE_BACKENDS` whose settings changed is rebuilt first (see
        :meth:`_rebuild`); when that fails, ShieldError and the running configuration stays."""
        with self._lock:
            for kind in RELOADABLE_BACKENDS:
                if _backend_settings(self.config, kind) != _backend_settings(config, kind):
                    self._rebuild(kind, config, actor=actor)
            if config.shield.dry_run != self._dry_run:
                log.warning("shield.dry_run changed: it takes effect at the next start, not on reload")
            self.config = config
            self.baselines.reconfigure(config.baseline)
            self.detector = ThresholdDetector(config, self.baselines)
            self.carpet = CarpetDetector(config)
            self.tracker.reconfigure(config)
            self.policy.reconfigure(config)
            self.scans.reconfigure(config)
            self.connections.reconfigure(config)
            self.dataplane.set_protected(config.prefix_groups())
            self._telemetry.set_protected(config.prefix_groups())
            for b in self.backends.values():
                b.set_allowlist(config.allow_networks())

    def _rebuild(self, kind: str, config: Config, *, actor: str) -> None:
        """A reload changed the settings of backend ``kind`` (or turned it on or off).

        On: a new backend is opened for the new settings (for BGP: the same speaker when
        its sessions are unchanged, else a new one, the old one withdrawing everything as
        it stops), and every mitigation the record holds on ``kind`` is applied to it
        again under its id, so the routers get it with the new attributes; one the new
        settings refuse is withdrawn, and whatever the backend enforces that the record
        does not hold is withdrawn as orphaned.  Off: every mitigation on ``kind`` is
        withdrawn and the backend taken out of service.  Reported as ``backend_rebuilt``.
        When the new backend cannot be opened, the old one re-applies what it held and
        ShieldError is raised."""
        now = self._clock()
        old = self.backends.get(kind)
        mine = sorted((e for e in self.ledger.entries.values() if e.backend == kind), key=lambda e: e.mitigation_id)
        active = [e for e in mine if e.state == "active"]
        report: dict[str, list[int]] = {"reapplied": [], "removed": [], "orphaned": []}
        if kind in config.mitigation.backends:
            try:
                new = self._opener(kind, config)
            except ShieldError:
                if old is not None and not self.dry_run:
                    # opening the new one may have stopped the old speaker: put back what it held
                    for e in active:
                        try:
                            old.apply(e.rule)
                        except ShieldError as err:
                            log.error("reload: %s: cannot re-apply mitigation %d: %s", kind, e.mitigation_id, err)
                raise
            new.set_allowlist(config.allow_networks())
            self.backends[kind] = new
            if kind not in self._shadows:
                shadow = MemoryBackend(self._clock)
                shadow.name = kind
                self._shadows[kind] = shadow
            if old is not None:
                old.close()  # the new backend has taken over its speaker (or stopped it)
            if not self.dry_run:
                for e in active:
                    try:
                        e.rule = new.apply(e.rule)
                        report["reapplied"].append(e.mitigation_id)
                    except ShieldError as err:
                        with contextlib.suppress(ShieldError):
                            new.withdraw(e.mitigation_id)  # the old announcement under this id
                        self._drop_entry(e, actor=actor, reason=f"refused by the reloaded {kind} settings: {err}")
                        report["removed"].append(e.mitigation_id)
                held = {e.mitigation_id for e in mine}
                for r in new.list():
                    if r.rule_id not in held:
                        new.withdraw(r.rule_id)
                        report["orphaned"].append(r.rule_id)
        else:
            for e in mine:
                self.policy.forget(e.rule, kind)
                self._remove(e.mitigation_id, actor=actor, reason=f"configuration reload: the {kind} backend is off")
                report["removed"].append(e.mitigation_id)
            if old is not None:
                del self.backends[kind]
                self._shadows.pop(kind, None)
                try:
                    old.shutdown()
                except ShieldError as err:
                    log.error("reload: %s: %s", kind, err)
        self._notifiers = [n for n in self.backends if n in NOTIFIERS]
        self.policy.reconfigure(
            config, others=[n for n in self.backends if n != self.backend.name and n not in NOTIFIERS]
        )
        self._changed(now)
        self._save(now)
        self.events.emit("backend_rebuilt", now, actor=actor, backend=kind, enabled=kind in self.backends, **report)

    def _drop_entry(self, e: Entry, *, actor: str, reason: str) -> None:
        """Forget a mitigation its backend no longer enforces, and report it."""
        self.ledger.pop(e.mitigation_id)
        self.policy.forget(e.rule, e.backend)
        self.events.emit(
            "mitigation_removed",
            self._clock(),
            actor=actor,
            reason=reason,
            backend=e.backend,
            state=e.state,
            **rule_fields(e.rule),
        )

    def run(self, stop: threading.Event) -> None:
        interval = self.config.shield.interval_ms / 1000.0
        next_at = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick(self._clock())
            except ShieldError as e:  # the kernel refused something: report, keep running
                log.error("control loop: %s", e)
            self._loop_ms.append((time.monotonic() - t0) * 1000)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < 0:  # overran: do not try to catch up with a burst of ticks
                next_at = time.monotonic()
                delay = 0
            stop.wait(delay)

    # ---- one tick ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        t0 = time.perf_counter()
        with self._lock:
            self._tick(now)
            took = time.perf_counter() - t0
            self._loop_hist[np.searchsorted(LOOP_BUCKETS, took)] += 1
            self._loop_sum += took

    def _tick(self, now: float) -> None:
        counters = self.dataplane.read_counters()
        dt = now - self._prev_time if self._prev_time is not None else 0.0
        rates = counter_rates(self._prev_counters, counters, dt)
        self._prev_counters, self._prev_time = counters, now
        flows = [b for src in self.sources if len(b := src.read())]
        if self.sources:
            rates = _sum_by_dst(np.concatenate([rates, self._telemetry_rates(flows, now)]))
        self._rates = rates

        sampled, frames = self.dataplane.read_frames()
        if self.tap is not None:
            self.tap.add(sampled, frames)
            for b in flows:
                self.tap.add(b)
        fresh = [b for b in [sampled, *flows] if len(b)]
        new = np.concatenate(fresh) if len(fresh) > 1 else fresh[0] if fresh else empty_traffic()
        if len(new):
            # each tick's share of the window's bound (the window spans this many ticks, and one)
            interval = self.config.shield.interval_ms / 1000.0
            budget = max(1, int(WINDOW_MAX_ROWS * interval / (WINDOW_SECONDS + interval)))
            self._window.add(thin(new, budget, seed=len(new)))
        self._window.trim(now)
        window = self._window.view()

        # the UDP flow estimate reads the last SPAN_SECONDS of samples only
        rates = with_flows(rates, self._window.since(now - FLOW_SPAN_SECONDS), now)
        active = {a.target for a in self.tracker.active}
        floods = self.detector.observe(rates, now, active)
        # carpet bombing: prefixes whose spread is over their limits, host attacks left out
        hosts = [(o.target, o.categories) for o in floods] + [(a.target, a.categories) for a in self.tracker.active]
        floods += self.carpet.observe(rates, now, hosts)
        slow = self.scans.observe(new, now) + self.connections.observe(new, now)
        flooded = {o.target for o in floods}
        changes = self.tracker.update(
            floods + [f.observation for f in slow if f.observation.target not in flooded], now
        )
        changes = self._classify(changes, floods, slow, window, now)
        ended = [ch.attack for ch in changes if ch.kind == "end"]
        self.attack_sources.update(self.tracker.active + ended, new, window)
        for ch in changes:
            # scans, sweeps, connection floods and slow attacks name their sources
            extra = (
                {"sources": sorted(self._sources[ch.attack.attack_id])} if ch.attack.attack_id in self._sources else {}
            )
            if ch.kind == "end":
                self._sources.pop(ch.attack.attack_id, None)
                self._named.pop(ch.attack.attack_id, None)
            extra.update(self._source_fields(ch.attack))
            self.events.emit(f"attack_{ch.kind}", now, **attack_fields(ch.attack), **extra)
        if self.config.baseline.enabled:
            # after detection, so that a flood's first tick is already frozen out; with
            # many busy destinations, every few ticks only (a tick's rates then stand for
            # the ticks since: a sample, and the loop keeps its pace)
            self._learn_wait -= 1
            if self._learn_wait <= 0:
                self.baselines.learn(rates, now, frozen=[a.target for a in self.tracker.active])
                busy = int(np.count_nonzero(rates["pps"].any(axis=1))) if len(rates) else 0
                self._learn_wait = math.ceil(busy / LEARN_ROWS_PER_TICK)
            self._save_baselines(now)
        for cmd in self.policy.step(
            changes, self.tracker.active, window, now, rates, self._kill_switch(now), named=self._named
        ):
            self._execute(cmd)
        self._expire(now)
        self._save(now)
        self._adapt_sampling(rates)

    def _classify(
        self,
        changes: list[AttackChange],
        floods: list[Observation],
        slow: list[Finding],
        window: TrafficBatch,
        now: float,
    ) -> list[AttackChange]:
        """Finer types for every open attack (detect/classify.py): from its samples when
        it starts or is updated, from the scan and connection detectors every tick."""
        cats = {o.target: o.categories for o in floods}
        hints: dict[IPNetwork, tuple[AttackType, ...]] = {}
        sources: dict[IPNetwork, set[str]] = {}
        named: dict[IPNetwork, list[Finding]] = {}
        for f in slow:
            hints[f.observation.target] = (*hints.get(f.observation.target, ()), f.type)
            sources.setdefault(f.observation.target, set()).add(str(f.source))
            named.setdefault(f.observation.target, []).append(f)
        for o in floods:
            if o.extra_types:  # e.g. carpet bombing
                hints[o.target] = (*hints.get(o.target, ()), *o.extra_types)
        changed = {ch.attack.attack_id for ch in changes}
        typed: dict[int, Attack] = {}
        news: list[AttackChange] = []
        for attack in self.tracker.active:
            before = self.classifier.types(attack.attack_id)
            types = self.classifier.update(
                attack,
                window,
                now,
                categories=cats.get(attack.target, ()),
                hints=hints.get(attack.target, ()),
                look=attack.attack_id in changed,
            )
            typed[attack.attack_id] = self.tracker.retype(attack.target, types) or attack
            if attack.target in sources:
                self._sources.setdefault(attack.attack_id, set()).update(sources[attack.target])
                by_type = self._named.setdefault(attack.attack_id, {})
                for f in named[attack.target]:
                    by_type.setdefault(f.type, set()).add(f.source)
            if attack.attack_id not in changed and before is not None and types != before:
                news.append(AttackChange("update", typed[attack.attack_id]))  # a new type is news
        out = []
        for ch in changes:
            if ch.kind == "end":  # an ended attack keeps the types it was given
                kept = self.classifier.types(ch.attack.attack_id)
                self.classifier.forget(ch.attack.attack_id)
                out.append(AttackChange("end", replace(ch.attack, types=kept)) if kept is not None else ch)
            else:
                out.append(AttackChange(ch.kind, typed.get(ch.attack.attack_id, ch.attack)))
        return out + news

    def _source_fields(self, attack: Attack) -> dict[str, Any]:
        """What an attack's sources look like (estimates from bounded sketches)."""
        summary = self.attack_sources.summary(attack.attack_id)
        return summary.to_json() if summary is not None and summary.records else {}

    def _telemetry_rates(self, flows: list[TrafficBatch], now: float) -> RateBatch:
        """Rates of what the telemetry sources saw, averaged over ``telemetry_window_seconds``:
        exporters send their records in bursts (at each export), and a rate over one
        tick would swing between zero and many times the real one."""
        for b in flows:
            self._telemetry.add(b)
        snap = self._telemetry.snapshot()
        self._telemetry_history.append((now, snap))
        span = self.config.shield.telemetry_window_seconds
        while len(self._telemetry_history) > 1 and self._telemetry_history[1][0] <= now - span:
            self._telemetry_history.popleft()
        t0, old = self._telemetry_history[0]
        # until a whole window has been seen, divide by the window anyway: a start-up
        # burst must not read as a flood
        return counter_rates(old, snap, span) if now > t0 else empty_rates()

    def _execute(self, cmd: Command) -> None:
        now = self._clock()
        if isinstance(cmd, Skip):
            self.events.emit("mitigation_skipped", now, actor="shield", reason=cmd.reason, **attack_fields(cmd.attack))
            return
        if isinstance(cmd, Refuse):
            self._refused(cmd.rule, cmd.reason, actor="shield", attack=cmd.attack)
            return
        if isinstance(cmd, Withdraw):  # the policy has already let go of it
            self._remove(cmd.rule.rule_id, actor="shield", reason=cmd.reason)
            return
        if isinstance(cmd, Verified):
            for rid in cmd.rule_ids:
                if rid in self.ledger.entries:
                    self.ledger.entries[rid].verify = {"ok": cmd.ok, "reason": cmd.reason, **cmd.figures}
            self._changed(now)
            self.events.emit(
                "mitigation_verified",
                now,
                actor="shield",
                step=cmd.step,
                ok=cmd.ok,
                reason=cmd.reason,
                mitigation_ids=list(cmd.rule_ids),
                **cmd.figures,
                **attack_fields(cmd.attack),
            )
            return
        if isinstance(cmd, Pending):
            rule = cmd.rule.with_id(self.ledger.new_id())
            interim = [e for e in self.ledger.entries.values() if e.rule.attack_id == rule.attack_id]
            entry = Entry(
                rule,
                backend=cmd.backend or self.backend.name,
                state="pending",
                actor="shield",
                reason=cmd.reason,
                origin="auto",
                step="drop",
                replaces=next((e.mitigation_id for e in interim if e.rule.match == rule.match), 0),
            )
            self.ledger.add(entry)
            self._changed(now)
            self.events.emit(
                "mitigation_pending",
                now,
                actor="shield",
                reason=cmd.reason,
                backend=entry.backend,
                **rule_fields(rule, cmd.attack),
            )
            return
        rule = cmd.rule
        if isinstance(cmd, Refresh):
            if rule.rule_id == 0:
                return
            try:
                self._enforcer(self._entry_backend(rule.rule_id)).apply(rule)
            except ShieldError as e:
                self.events.emit("mitigation_failed", now, actor="shield", reason=str(e), **rule_fields(rule))
                return
            self.ledger.refresh(rule)
            self._dirty_at = self._dirty_at or now
            # notifiers expire what they were told of: they follow refreshes (and stay quiet on them)
            self._notify(rule, actor="shield", reason="")
            return
        backend = cmd.backend or self.backend.name
        applied = self._enforce(
            rule, backend=backend, actor="shield", reason=rule.reason, origin="auto", attack=cmd.attack, step=cmd.step
        )
        if applied is None:
            self.policy.forget(rule, backend)
        else:
            self.policy.confirm(applied.rule, backend)
            # a pending drop of the same match now replaces this rule on approval
            for pend in self.ledger.entries.values():
                if pend.state == "pending" and pend.rule.attack_id == rule.attack_id and pend.rule.match == rule.match:
                    pend.replaces = applied.mitigation_id

    def _entry_backend(self, mitigation_id: int) -> str:
        e = self.ledger.entries.get(mitigation_id)
        return e.backend if e is not None else self.backend.name

    def _enforce(
        self,
        rule: Rule,
        *,
        backend: str,
        actor: str,
        reason: str,
        origin: str,
        attack: Attack | None = None,
        step: str = "",
        failed: list[str] | None = None,
    ) -> Entry | None:
        """Give ``rule`` an id, enforce it, record it and report it; None when the backend
        refused (its reason appended to ``failed``)."""
        now = self._clock()
        rule = rule.with_id(self.ledger.new_id())
        entry = Entry(
            rule,
            backend=backend,
            state="dry_run" if self.dry_run else "active",
            actor=actor,
            reason=reason,
            origin="manual" if origin == "manual" else "auto",
            step=step or ("manual" if origin == "manual" else ""),
            applied_at=now,
        )
        # recorded (journaled) before it is enforced: a shield killed in between finds it
        # in its record at the restart, not as an orphan in the kernel (engine/ledger.py)
        self.ledger.add(entry)
        try:
            applied = self._enforcer(backend).apply(rule)
        except ShieldError as e:
            self.ledger.pop(rule.rule_id)
            if failed is not None:
                failed.append(str(e))
            self.events.emit(
                "mitigation_failed", now, actor=actor, reason=str(e), backend=backend, **rule_fields(rule, attack)
            )
            return None
        if applied != rule:  # a backend that allocates its own ids: keep its id
            if applied.rule_id != rule.rule_id:
                self.ledger.pop(rule.rule_id)
            entry.rule = applied
            self.ledger.add(entry)
        self._notify(applied, actor=actor, reason=reason)
        self._changed(now)
        self.events.emit(
            "mitigation_applied",
            now,
            actor=actor,
            reason=reason,
            backend=backend,
            state=entry.state,
            step=entry.step,
            **rule_fields(applied, attack),
        )
        return entry

    def _remove(self, mitigation_id: int, *, actor: str, reason: str) -> None:
        """Withdraw a mitigation from its backend and the record, and report it."""
        now = self._clock()
        entry = self.ledger.pop(mitigation_id)
        if entry is None:
            return
        extra: dict[str, Any] = {}
        if entry.state != "pending":
            b = self._enforcer(entry.backend)
            hits = b.stats().get(mitigation_id)
            b.withdraw(mitigation_id)
            if hits:
                extra["hits"] = {"packets": hits.packets, "bytes": hits.bytes, "dropped": hits.dropped}
            self._notify(entry.rule, actor=actor, reason=reason, withdrawn=True)
        self._changed(now)
        self.events.emit(
            "mitigation_removed",
            now,
            actor=actor,
            reason=reason,
            backend=entry.backend,
            state=entry.state,
            **rule_fields(entry.rule),
            **extra,
        )

    def _notify(self, rule: Rule, *, actor: str, reason: str, withdrawn: bool = False) -> None:
        """Tell the notify backends of an action; their failure never stops one."""
        for name in self._notifiers:
            try:
                b = self._enforcer(name)
                if withdrawn:
                    b.withdraw(rule.rule_id)
                else:
                    b.apply(replace(rule, reason=reason or rule.reason))
            except Exception as e:  # a hook is another system: report it, act regardless
                self.events.emit(
                    "mitigation_failed", self._clock(), actor=actor, backend=name, reason=str(e), **rule_fields(rule)
                )

    def _refused(self, rule: Rule, reason: str, *, actor: str, attack: Attack | None = None) -> None:
        self.events.emit("mitigation_refused", self._clock(), actor=actor, reason=reason, **rule_fields(rule, attack))

    def _expire(self, now: float) -> None:
        """Manual rules past their TTL, and pending drops of attacks that are over."""
        for e in list(self.ledger.entries.values()):
            if e.state == "pending":
                if not self.policy.tracks(e.rule.attack_id):
                    self._remove(e.mitigation_id, actor="shield", reason="the attack ended before approval")
            elif e.origin == "manual" and e.rule.expires_at <= now:
                self._remove(e.mitigation_id, actor="shield", reason="TTL expired")

    def _changed(self, now: float) -> None:
        self._dirty_at = 0.0  # structural change: saved at the end of this tick or call

    def _save(self, now: float) -> None:
        """Write the record: at once after a change, every few seconds when only expiries moved."""
        if self._dirty_at is None:
            return
        if self._dirty_at == 0.0 or now - self._saved_at >= SAVE_REFRESH_EVERY:
            self.ledger.save()
            self._saved_at = now
            self._dirty_at = None

    # ---- reconciliation ------------------------------------------------------------

    def _reconcile(self, now: float) -> None:
        """Compare the record with what every backend enforces: re-apply what is
        missing, withdraw what is orphaned, report the differences.

        Without a record on disk (first start, or no ``state_file``) nothing is known
        to be orphaned: rules found are adopted and kept until their expiry."""
        have_record = self.ledger.on_disk
        grace = max(MIN_TTL, self.config.group_for_name("default").hold_seconds)
        report: dict[str, list[int]] = {"kept": [], "reapplied": [], "orphaned": [], "expired": [], "adopted": []}
        adopted: list[tuple[Rule, str]] = []
        for name, b in self.backends.items():
            if name in self._notifiers:  # they enforce nothing: nothing to compare
                continue
            found = {r.rule_id: r for r in b.list()}  # reading enforces nothing, also in dry run
            self.ledger.reserve(list(found))
            mine = {
                e.mitigation_id: e for e in self.ledger.entries.values() if e.backend == name and e.state == "active"
            }
            for rid, e in mine.items():
                if rid in found:
                    # the backend's expiry is the true one: the record follows refreshes only
                    # every SAVE_REFRESH_EVERY seconds
                    e.rule = e.rule.refreshed(max(e.rule.expires_at, found[rid].expires_at))
                    report["kept"].append(rid)
                    if e.origin == "auto" and not self.dry_run and e.rule.expires_at < now + grace:
                        # the restarted shield needs a moment to see a running attack again:
                        # an automatic rule must not lapse before it can claim it
                        e.rule = e.rule.refreshed(now + grace)
                        try:
                            b.apply(e.rule)
                        except ShieldError as err:
                            log.warning("reconcile: cannot extend mitigation %d: %s", rid, err)
                elif e.rule.expires_at <= now:
                    self.ledger.pop(rid)
                    report["expired"].append(rid)
                    continue
                elif not self.dry_run:
                    try:
                        b.apply(e.rule)
                        report["reapplied"].append(rid)
                    except ShieldError as err:
                        self.ledger.pop(rid)
                        self.events.emit(
                            "mitigation_failed", now, actor="shield", reason=str(err), **rule_fields(e.rule)
                        )
                        continue
                if e.origin == "auto":
                    adopted.append((e.rule, name))
            for rid, r in found.items():
                if rid in mine:
                    continue
                if have_record and not self.dry_run:
                    b.withdraw(rid)
                    report["orphaned"].append(rid)
                    self.events.emit(
                        "mitigation_removed",
                        now,
                        actor="shield",
                        reason="orphaned: enforced but not in the shield's record",
                        backend=name,
                        **rule_fields(r),
                    )
                else:
                    report["adopted"].append(rid)
                    adopted.append((r, name))
                    self.ledger.add(
                        Entry(r, backend=name, state="active", actor="shield", reason="found at start", origin="auto")
                    )
        for rid, e in list(self.ledger.entries.items()):
            if e.backend not in self.backends:
                self.ledger.pop(rid)
                self.events.emit(
                    "mitigation_removed",
                    now,
                    actor="shield",
                    reason=f"backend {e.backend!r} is no longer configured",
                    backend=e.backend,
                    **rule_fields(e.rule),
                )
        if adopted:
            self.policy.adopt(adopted)
            self.events.emit("rules_adopted", now, rules=[r.to_json() for r, _ in adopted])
        if any(report[k] for k in ("reapplied", "orphaned", "expired")) or have_record:
            self.events.emit("mitigations_reconciled", now, actor="shield", **report)
        self._changed(now)
        self._save(now)

    # ---- operators -------------------------------------------------------------------

    def add_mitigation(
        self,
        match: Match,
        action: Action,
        ttl: float,
        *,
        rate_pps: int = 0,
        per_source: bool = False,
        backend: str | None = None,
        actor: str,
        reason: str,
    ) -> Rule:
        """Enforce an operator's rule for ``ttl`` seconds (``per_source``: a rate limit
        that holds each source to ``rate_pps``).  Refused (ValueError naming
        the reason, and a ``mitigation_refused`` event) when invalid or when the
        protected-asset lists forbid it.  An operator may drop traffic to a critical
        asset: the critical list only stops the shield doing so on its own.  A
        ``BLACKHOLE`` goes to the BGP backend (the default for it, and the only one able):
        refused when none is configured, when ``bgp.blackhole`` is off, or when its
        target is on the never-block list.  Who may ask for one is the caller's
        business (the API lets admins only)."""
        with self._lock:
            now = self._clock()
            name = backend or ("bgp" if action == Action.BLACKHOLE else self.backend.name)
            if per_source and action != Action.RATE_LIMIT:
                raise ValueError(f"per_source: only for action rate_limit, not {Action(action).name.lower()}")
            rule = Rule(
                match=match,
                action=Action(action),
                expires_at=now + ttl if math.isfinite(ttl) else now,
                rate_pps=rate_pps,
                created_at=now,
                reason=reason,
                per_source=per_source,
            )
            try:
                self._check_manual(rule, name, ttl)
                pieces = narrow(rule, self.config.never_block_networks(), upstream=name in UPSTREAM_BACKENDS)
                if len(pieces) > 1:
                    raise Refused(
                        f"destination {match.dst} covers the never-block list; "
                        f"add the narrower rules instead: {', '.join(str(p.match.dst) for p in pieces)}"
                    )
            except ValueError as e:
                self._refused(rule, str(e), actor=actor)
                raise ValueError(str(e)) from None
            failed: list[str] = []
            entry = self._enforce(rule, backend=name, actor=actor, reason=reason, origin="manual", failed=failed)
            self._save(now)
            if entry is None:
                raise ValueError(f"backend {name} refused the rule: {'; '.join(failed)}")
            return entry.rule

    def _check_manual(self, rule: Rule, backend: str, ttl: float) -> None:
        if rule.action == Action.BLACKHOLE:
            _check_blackhole(rule.match, backend, self.config, [b for b in self.backends if b not in self._notifiers])
        if backend not in self.backends or backend in self._notifiers:
            able = [b for b in self.backends if b not in self._notifiers]
            raise ValueError(f"backend: {backend!r} is not configured to enforce (configured: {', '.join(able)})")
        if not (math.isfinite(ttl) and 0 < ttl <= MAX_MANUAL_TTL):
            raise ValueError(f"ttl: expected seconds in (0, {MAX_MANUAL_TTL:g}], got {ttl!r}")
        if not rule.match.fields():
            raise ValueError("match: empty, it would cover every packet")
        if rule.action == Action.RATE_LIMIT and rule.rate_pps <= 0:
            raise ValueError(f"rate_pps: a rate limit needs a positive rate, got {rule.rate_pps}")
        if rule.action != Action.RATE_LIMIT and rule.rate_pps:
            raise ValueError(
                f"rate_pps: only for action rate_limit, got {rule.rate_pps} with {rule.action.name.lower()}"
            )
        if len(self.ledger.entries) >= self.config.mitigation.max_rules_total:
            raise ValueError(f"rule limit reached ({self.config.mitigation.max_rules_total})")
        check_allowlist(rule.match, self.config.allow_networks(), upstream=backend in UPSTREAM_BACKENDS)

    def approve(self, mitigation_id: int, *, actor: str) -> Rule:
        """Enforce a pending drop (an attack on a critical asset); the interim rate
        limit it replaces is withdrawn.  KeyError for an unknown id, ValueError when
        the mitigation is not pending."""
        with self._lock:
            now = self._clock()
            entry = self.ledger.get(mitigation_id)
            if entry.state != "pending":
                raise ValueError(f"mitigation {mitigation_id} is {entry.state}, not pending approval")
            group = self.config.group_of(entry.rule.match.dst) if entry.rule.match.dst else None
            hold = group.hold_seconds if group is not None else self.config.group_for_name("default").hold_seconds
            rule = entry.rule.refreshed(now + max(hold, 5.0))
            b = self._enforcer(entry.backend)
            # The interim rate limit has the same match: a backend may hold one rule per
            # source (XDP does), so it makes way first and comes back if the drop fails.
            interim = self.ledger.entries.get(entry.replaces) if entry.replaces else None
            if interim is not None:
                b.withdraw(interim.mitigation_id)
            pending = entry
            # recorded as enforced before it is (see _enforce)
            entry = self.ledger.add(
                replace(entry, rule=rule, state="dry_run" if self.dry_run else "active", applied_at=now)
            )
            try:
                b.apply(rule)
            except ShieldError as e:
                self.ledger.add(pending)
                if interim is not None:
                    b.apply(interim.rule)
                self.events.emit("mitigation_failed", now, actor=actor, reason=str(e), **rule_fields(rule))
                raise ValueError(f"backend {entry.backend} refused the rule: {e}") from None
            self._notify(rule, actor=actor, reason=f"approved: {entry.reason}")
            approver = actor
            self.events.emit(
                "mitigation_approved",
                now,
                actor=approver,
                reason=entry.reason,
                backend=entry.backend,
                **rule_fields(rule),
            )
            self.events.emit(
                "mitigation_applied",
                now,
                actor=approver,
                reason=f"approved: {entry.reason}",
                backend=entry.backend,
                state=entry.state,
                **rule_fields(rule),
            )
            entry.actor = approver
            if entry.replaces:
                self._remove(entry.replaces, actor=approver, reason=f"replaced by approved mitigation {mitigation_id}")
                entry.replaces = 0
            if self.policy.tracks(rule.attack_id):
                self.policy.confirm(rule, entry.backend)
            self._changed(now)
            self._save(now)
            return rule

    def withdraw_mitigation(self, mitigation_id: int, *, actor: str, reason: str) -> None:
        """Withdraw any mitigation, automatic or manual, in force or pending.  The
        shield does not put an automatic rule back for the same attack."""
        with self._lock:
            now = self._clock()
            entry = self.ledger.get(mitigation_id)
            if entry.origin == "auto":
                self.policy.suppress(entry.rule, entry.backend)
            self._remove(mitigation_id, actor=actor, reason=reason)
            self._save(now)

    def mitigations(self) -> list[dict[str, Any]]:
        """Every mitigation in force, pending approval or decided in dry run."""
        with self._lock:
            now = self._clock()
            stats: dict[str, dict[int, Any]] = {}
            out = []
            for e in sorted(self.ledger.entries.values(), key=lambda e: e.mitigation_id):
                if e.backend not in stats:
                    stats[e.backend] = self._enforcer(e.backend).stats() if e.backend in self.backends else {}
                hits = stats[e.backend].get(e.mitigation_id)
                r = e.rule
                out.append(
                    {
                        "mitigation_id": e.mitigation_id,
                        "state": e.state,
                        "backend": e.backend,
                        "action": r.action.name.lower(),
                        "match": r.match.to_json(),
                        "rate_pps": r.rate_pps,
                        "per_source": r.per_source,
                        "attack_id": r.attack_id,
                        "actor": e.actor,
                        "reason": e.reason,
                        "origin": e.origin,
                        "step": e.step,
                        "created_at": round(r.created_at, 3),
                        "expires_at": round(r.expires_at, 3),
                        "time_left": round(max(0.0, r.expires_at - now), 3),
                        "hits": {"packets": hits.packets, "bytes": hits.bytes, "dropped": hits.dropped}
                        if hits
                        else {"packets": 0, "bytes": 0, "dropped": 0},
                        "preview": {"attack_share": r.attack_share, "collateral_share": r.collateral_share},
                        "verify": dict(e.verify),
                    }
                )
            return out

    def _kill_switch(self, now: float) -> bool:
        """Whether an operator's kill switch is on, read at most once a second (nftables
        answers through a command) and only while there is a mitigation to judge."""
        if not self.tracker.active:
            return False
        if now - self._kill_switch_at >= 1.0:
            self._kill_switch_at = now
            try:
                self._kill_switch_on = self.dataplane.kill_switch_on()
            except ShieldError as e:  # judged as before; the next read may succeed
                log.warning("kill switch state unreadable: %s", e)
        return self._kill_switch_on

    def _adapt_sampling(self, rates: np.ndarray) -> None:
        total = float(rates["pps"].sum()) if len(rates) else 0.0
        want = max(1, min(MAX_SAMPLE_EVERY, math.ceil(total / self.config.shield.sample_target_pps)))
        # move only on a real change, so a steady load does not rewrite the map each tick
        if want > self._sample_every * 1.25 or want < self._sample_every / 1.25:
            self._sample_every = want
            self.dataplane.set_sample_every(want)

    # ---- state for readers (live view, API) ------------------------------------------

    def traffic(self, top: int = 10) -> dict[str, Any]:
        """Top destinations and sources and the rates per host group
        (:func:`ddos_shield.engine.traffic.summarize`)."""
        with self._lock:
            rates, samples, config = self._rates, self._window.view().copy(), self.config
        return summarize(rates, samples, WINDOW_SECONDS, config, top)

    def try_snapshot(self, timeout: float) -> dict[str, Any] | None:
        """:meth:`snapshot`, or None when a tick holds the state longer than ``timeout``
        seconds: a reader that must answer quickly (the API's status) keeps its last one
        rather than wait out a long tick under a flood (the lock is re-entrant)."""
        if not self._lock.acquire(timeout=timeout):
            return None
        try:
            return self.snapshot()
        finally:
            self._lock.release()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable view of the current state."""
        with self._lock:
            rates = self._rates
            by_cat = rates["pps"].sum(axis=0) if len(rates) else np.zeros(len(CATEGORY_NAMES))
            bps_cat = rates["bps"].sum(axis=0) if len(rates) else np.zeros(len(CATEGORY_NAMES))
            attacks: list[Attack] = self.tracker.active
            rules: list[Rule] = self.policy.rules()
            stats = self._enforcer(self.backend.name).stats()
            loop = sorted(self._loop_ms)
            return {
                "pps": {n: float(v) for n, v in zip(CATEGORY_NAMES, by_cat, strict=True)},
                "bps": {n: float(v) for n, v in zip(CATEGORY_NAMES, bps_cat, strict=True)},
                "destinations": len(rates),
                "sample_every": self._sample_every,
                "attacks": [{**attack_fields(a), **self._source_fields(a)} for a in attacks],
                "rules": [
                    {
                        **r.to_json(),
                        "hits": stats[r.rule_id].packets if r.rule_id in stats else 0,
                        "dropped": stats[r.rule_id].dropped if r.rule_id in stats else 0,
                    }
                    for r in rules
                ],
                "dataplane": self.dataplane.global_stats(),
                "sources": {src.name: {exp: st.__dict__ for exp, st in src.stats().items()} for src in self.sources},
                "backend": self.backend.name,
                "groups": _rates_by_group(rates, self.config),
                "baseline": {"enabled": self.config.baseline.enabled, **self.baselines.summary(self._clock())},
                "loop_seconds": {
                    "buckets": list(LOOP_BUCKETS),
                    "counts": self._loop_hist.tolist(),  # per bucket, the last one above every bound
                    "sum": self._loop_sum,
                    "count": int(self._loop_hist.sum()),
                },
                "loop_ms_p50": loop[len(loop) // 2] if loop else 0.0,
                "loop_ms_max": loop[-1] if loop else 0.0,
                "ticked_at": self._prev_time,
                "dataplane_kind": self.dataplane.name,
            }


def _check_blackhole(match: Match, backend: str, config: Config, able: list[str]) -> None:
    """Why an operator's blackhole cannot be announced (ValueError), before the backend
    is asked: it is a BGP route for one address, announced only when BGP allows it."""
    if backend not in UPSTREAM_BACKENDS:
        raise ValueError(f"action blackhole: a BGP route; only the bgp backend announces one, not {backend!r}")
    if backend not in able or config.bgp is None:
        raise ValueError(
            'action blackhole: no BGP backend configured (mitigation.backends = ["bgp"] and a [bgp] section); '
            f"configured: {', '.join(able)}"
        )
    if not config.bgp.blackhole:
        raise ValueError("action blackhole: blackhole routes are off (bgp.blackhole = false)")
    dst = match.dst
    if match.fields() != ["dst"] or dst is None or dst.prefixlen != dst.max_prefixlen:
        raise ValueError(
            f"action blackhole: matches one destination address only (dst /32 or /128), got {match.describe()}"
        )
    if dst.version == 6 and not config.bgp.next_hop6:
        raise ValueError(f"action blackhole: an IPv6 blackhole for {dst} needs bgp.next_hop6")


def _backend_settings(config: Config, kind: str) -> Any:
    """What a backend of ``kind`` is built from: its section, or None when it is off."""
    return getattr(config, kind, None) if kind in config.mitigation.backends else None


def _rates_by_group(rates: RateBatch, config: Config) -> dict[str, dict[str, dict[str, float]]]:
    """Rates summed per host group: {group: {"pps": {category: v}, "bps": {...}}}
    (the most specific prefix wins, as in the data plane)."""
    names = {gid: name for name, gid in config.group_ids().items()}
    gid = np.zeros(len(rates), dtype=np.int64)
    # least specific first, so that a more specific prefix overwrites
    for net, g in sorted(config.prefix_groups().items(), key=lambda kv: kv[0].prefixlen + 96 * (kv[0].version == 4)):
        if g and len(rates):
            gid[addresses_in(rates["dst"], net)] = g
    out = {}
    for g, name in names.items():
        rows = gid == g
        pps = rates["pps"][rows].sum(axis=0) if rows.any() else np.zeros(len(CATEGORY_NAMES))
        bps = rates["bps"][rows].sum(axis=0) if rows.any() else np.zeros(len(CATEGORY_NAMES))
        out[name] = {
            "pps": {n: float(v) for n, v in zip(CATEGORY_NAMES, pps, strict=True)},
            "bps": {n: float(v) for n, v in zip(CATEGORY_NAMES, bps, strict=True)},
        }
    return out


def _sum_by_dst(rates: RateBatch) -> RateBatch:
    """One row per destination: rates seen by several sources add up."""
    if len(rates) < 2:
        return rates
    kv = np.ascontiguousarray(rates["dst"]).view("V16").ravel()
    uniq, first, inv = np.unique(kv, return_index=True, return_inverse=True)
    if len(uniq) == len(rates):
        return rates
    out = np.zeros(len(uniq), dtype=RATE_DTYPE)
    out["dst"] = rates["dst"][first]
    for col in ("pps", "bps", "dropped_pps", "flows"):
        np.add.at(out[col], inv, rates[col])
    return out
