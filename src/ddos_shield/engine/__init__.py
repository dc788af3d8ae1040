"""The engine: the one orchestrator.  It owns the loop and the timers.

Every ``interval_ms`` it reads the data plane's counters and samples, turns counters
into rates, runs detection (:mod:`~ddos_shield.detect`), asks the policy for rule
commands (:mod:`~ddos_shield.policy`), carries them out on the backend
(:mod:`~ddos_shield.mitigate`) and reports each step as an event
(:mod:`~ddos_shield.events`).  Everything else reads :meth:`Engine.snapshot`.

Example (dry run, no kernel)::

    engine = Engine(config, dataplane, MemoryBackend(), EventSink.open("-"))
    engine.start(time.time())
    engine.run(stop_event)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ddos_shield.capture.base import TelemetrySource
from ddos_shield.config import Config
from ddos_shield.dataplane.base import DataPlane, counter_rates
from ddos_shield.dataplane.table import CounterTable
from ddos_shield.detect.lifecycle import AttackTracker
from ddos_shield.detect.threshold import ThresholdDetector
from ddos_shield.errors import ShieldError
from ddos_shield.events import EventSink, attack_fields, rule_fields
from ddos_shield.mitigate.base import Backend
from ddos_shield.policy import Apply, Policy, Refresh, Skip, Withdraw
from ddos_shield.records import (
    CATEGORY_NAMES,
    COUNTER_DTYPE,
    RATE_DTYPE,
    Attack,
    RateBatch,
    Rule,
    TrafficBatch,
    addresses_in,
    empty_rates,
    empty_traffic,
)

if TYPE_CHECKING:
    from ddos_shield.store.packets import PacketTap

log = logging.getLogger(__name__)

#: seconds of samples kept for building rules
WINDOW_SECONDS = 2.0
#: largest 1-in-N sampling rate
MAX_SAMPLE_EVERY = 1 << 16
#: upper bounds (seconds) of the control-loop duration histogram (the metrics' buckets)
LOOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


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
    ) -> None:
        self.config = config
        self.dataplane = dataplane
        self.backend = backend
        self.events = events
        self.sources = list(sources)
        # traffic seen by flow collectors and mirror ports, counted as the kernel counts
        self._telemetry = CounterTable(config.prefix_groups(), config.shield.ipv6_prefix_len)
        self._telemetry_history: deque[tuple[float, np.ndarray]] = deque()
        self._clock = clock
        self.detector = ThresholdDetector(config)
        self.tracker = AttackTracker(config, first_id=int(clock() * 1000) % 0x7FFFFFFF + 1)
        self.policy = Policy(config)
        self._prev_counters = np.zeros(0, dtype=COUNTER_DTYPE)
        self._prev_time: float | None = None
        self._window: deque[TrafficBatch] = deque()
        self._sample_every = 1
        self._rates = empty_rates()
        self._loop_ms: deque[float] = deque(maxlen=100)
        self._lock = threading.Lock()
        # every sampled packet also goes to the tap, where the store takes attack captures
        self.tap = tap
        self._loop_hist = np.zeros(len(LOOP_BUCKETS) + 1, dtype=np.int64)
        self._loop_sum = 0.0

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Push the configuration to the data plane and adopt what is already enforced."""
        cfg = self.config
        self.dataplane.set_protected(cfg.prefix_groups())
        self.backend.set_allowlist(cfg.allow_networks())
        self.dataplane.set_sample_every(self._sample_every)
        for src in self.sources:
            src.start()
        found = self.backend.list()
        if found:
            self.policy.adopt(found)
            self.events.emit("rules_adopted", now, rules=[r.to_json() for r in found])
        self._prev_counters = self.dataplane.read_counters()
        self._prev_time = now
        self.events.emit(
            "ready",
            self._clock(),
            dataplane=self.dataplane.name,
            backend=self.backend.name,
            interfaces=cfg.shield.interfaces,
            sources=[s.name for s in self.sources],
            dry_run=cfg.shield.dry_run,
        )

    def close(self) -> None:
        """Stop the telemetry sources (the data plane is the caller's)."""
        for src in self.sources:
            src.close()

    def reload(self, config: Config) -> None:
        """Swap in a new, already validated configuration at once."""
        with self._lock:
            self.config = config
            self.detector = ThresholdDetector(config)
            self.tracker.reconfigure(config)
            self.policy.reconfigure(config)
            self.dataplane.set_protected(config.prefix_groups())
            self._telemetry.set_protected(config.prefix_groups())
            self.backend.set_allowlist(config.allow_networks())

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
        for samples in [sampled, *flows]:
            if len(samples):
                self._window.append(samples)
        while self._window and self._window[0]["ts"].max() < now - WINDOW_SECONDS:
            self._window.popleft()
        window = np.concatenate(list(self._window)) if self._window else empty_traffic()

        changes = self.tracker.update(self.detector.observe(rates, now), now)
        for ch in changes:
            self.events.emit(f"attack_{ch.kind}", now, **attack_fields(ch.attack))
        for cmd in self.policy.step(changes, self.tracker.active, window, now):
            self._execute(cmd)
        self._adapt_sampling(rates)

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

    def _execute(self, cmd: Apply | Refresh | Withdraw | Skip) -> None:
        if isinstance(cmd, Skip):
            self.events.emit("mitigation_skipped", self._clock(), reason=cmd.reason, **attack_fields(cmd.attack))
            return
        if isinstance(cmd, Withdraw):
            hits = self.backend.stats().get(cmd.rule.rule_id)
            self.backend.withdraw(cmd.rule.rule_id)
            self.policy.forget(cmd.rule)
            extra = {"hits": {"packets": hits.packets, "bytes": hits.bytes, "dropped": hits.dropped}} if hits else {}
            self.events.emit("mitigation_removed", self._clock(), reason=cmd.reason, **rule_fields(cmd.rule), **extra)
            return
        rule = cmd.rule
        if isinstance(cmd, Refresh) and rule.rule_id == 0:
            return
        try:
            applied = self.backend.apply(rule)
        except ShieldError as e:
            self.policy.forget(rule)
            self.events.emit("mitigation_failed", self._clock(), reason=str(e), **rule_fields(rule))
            return
        self.policy.confirm(applied)
        if isinstance(cmd, Apply):
            self.events.emit(
                "mitigation_applied", self._clock(), backend=self.backend.name, **rule_fields(applied, cmd.attack)
            )

    def _adapt_sampling(self, rates: np.ndarray) -> None:
        total = float(rates["pps"].sum()) if len(rates) else 0.0
        want = max(1, min(MAX_SAMPLE_EVERY, math.ceil(total / self.config.shield.sample_target_pps)))
        # move only on a real change, so a steady load does not rewrite the map each tick
        if want > self._sample_every * 1.25 or want < self._sample_every / 1.25:
            self._sample_every = want
            self.dataplane.set_sample_every(want)

    # ---- state for readers (live view, API) ------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable view of the current state."""
        with self._lock:
            rates = self._rates
            by_cat = rates["pps"].sum(axis=0) if len(rates) else np.zeros(len(CATEGORY_NAMES))
            bps_cat = rates["bps"].sum(axis=0) if len(rates) else np.zeros(len(CATEGORY_NAMES))
            attacks: list[Attack] = self.tracker.active
            rules: list[Rule] = self.policy.rules()
            stats = self.backend.stats()
            loop = sorted(self._loop_ms)
            return {
                "pps": {n: float(v) for n, v in zip(CATEGORY_NAMES, by_cat, strict=True)},
                "bps": {n: float(v) for n, v in zip(CATEGORY_NAMES, bps_cat, strict=True)},
                "destinations": len(rates),
                "sample_every": self._sample_every,
                "attacks": [attack_fields(a) for a in attacks],
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
                "loop_seconds": {
                    "buckets": list(LOOP_BUCKETS),
                    "counts": self._loop_hist.tolist(),  # per bucket, the last one above every bound
                    "sum": self._loop_sum,
                    "count": int(self._loop_hist.sum()),
                },
                "loop_ms_p50": loop[len(loop) // 2] if loop else 0.0,
                "loop_ms_max": loop[-1] if loop else 0.0,
            }


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
    for col in ("pps", "bps", "dropped_pps"):
        np.add.at(out[col], inv, rates[col])
    return out
