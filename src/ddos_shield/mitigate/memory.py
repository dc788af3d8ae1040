"""In-memory backend: decides everything, enforces nothing.

It is the dry-run backend and the reference for what the others must do.  ``offer``
lets a test or a preview ask what the rules would do to a traffic batch.  Thread-safe:
a replay feeds traffic on one thread while the engine changes rules on another, as
the kernel and the control plane do.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from ddos_shield.mitigate.base import Backend
from ddos_shield.records import Action, IPNetwork, Rule, RuleStats, TrafficBatch, addresses_in

#: per-source rate limits: a source unseen this long is forgotten (its bucket full again)
SOURCE_IDLE_SECONDS = 10.0


class MemoryBackend(Backend):
    """See the module docstring."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._rules: dict[int, Rule] = {}
        self._hits: dict[int, list[int]] = {}
        self._ids = itertools.count(1)
        self._clock = clock
        self.allowlist: list[IPNetwork] = []
        self.bypass = False
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}  # rate limits: (tokens, time)
        #: per-source rate limits: rule id -> source (16 bytes) -> (tokens, time)
        self._src_buckets: dict[int, dict[bytes, tuple[float, float]]] = {}

    def apply(self, rule: Rule) -> Rule:
        with self._lock:
            if rule.rule_id == 0:
                rule = rule.with_id(next(self._ids))
            self._rules[rule.rule_id] = rule
            self._hits.setdefault(rule.rule_id, [0, 0, 0])
            return rule

    def withdraw(self, rule_id: int) -> None:
        with self._lock:
            self._rules.pop(rule_id, None)
            self._hits.pop(rule_id, None)
            self._buckets.pop(rule_id, None)
            self._src_buckets.pop(rule_id, None)

    def list(self) -> list[Rule]:
        now = self._clock()
        with self._lock:
            return [r for r in self._rules.values() if r.expires_at > now]

    def stats(self) -> dict[int, RuleStats]:
        with self._lock:
            return {i: RuleStats(i, *h) for i, h in self._hits.items()}

    def set_allowlist(self, sources: Sequence[IPNetwork]) -> None:
        self.allowlist = list(sources)

    def set_bypass(self, on: bool) -> None:
        self.bypass = on

    def close(self) -> None:
        pass

    def offer(self, batch: TrafficBatch) -> np.ndarray:
        """Boolean mask of the rows that the enforced rules would drop (rate limits:
        the rows beyond their rate), counting hits."""
        dropped = np.zeros(len(batch), dtype=bool)
        if self.bypass or len(batch) == 0:
            return dropped
        allowed = np.zeros(len(batch), dtype=bool)
        for net in self.allowlist:
            allowed |= addresses_in(batch["src"], net)
        now = self._clock()
        with self._lock:
            for rule in self._rules.values():
                if rule.expires_at <= now:
                    continue
                hit = rule.match.matches(batch) & ~allowed & ~dropped
                h = self._hits[rule.rule_id]
                h[0] += int(batch["packets"][hit].sum())
                h[1] += int(batch["bytes"][hit].sum())
                if rule.action in (Action.DROP, Action.BLACKHOLE):  # a blackhole drops all the target's traffic
                    dropped |= hit
                    h[2] += int(batch["packets"][hit].sum())
                elif rule.action == Action.RATE_LIMIT and hit.any():
                    over = (
                        self._over_rate_per_source(rule, batch, hit)
                        if rule.per_source
                        else self._over_rate(rule, batch, hit)
                    )
                    dropped |= over
                    h[2] += int(batch["packets"][over].sum())
        return dropped

    def _over_rate(self, rule: Rule, batch: TrafficBatch, hit: np.ndarray) -> np.ndarray:
        """Rows beyond the rule's rate: a token bucket filled at ``rate_pps`` on the
        batch's own timestamps (a tenth of a second of burst, as the kernel allows)."""
        t = float(batch["ts"][hit].max())
        burst = max(1.0, rule.rate_pps / 10)
        tokens, last = self._buckets.get(rule.rule_id, (burst, t))
        tokens = min(burst, tokens + max(0.0, t - last) * rule.rate_pps)
        idx = np.flatnonzero(hit)
        cum = np.cumsum(batch["packets"][idx].astype(float))
        passed = cum <= tokens
        tokens -= float(cum[passed][-1]) if passed.any() else 0.0
        self._buckets[rule.rule_id] = (tokens, t)
        over = np.zeros(len(batch), dtype=bool)
        over[idx[~passed]] = True
        return over

    def _over_rate_per_source(self, rule: Rule, batch: TrafficBatch, hit: np.ndarray) -> np.ndarray:
        """:meth:`_over_rate` with one bucket per source address; a source idle for
        ``SOURCE_IDLE_SECONDS`` starts again with a full bucket (nftables' and XDP's
        per-source state ages out the same way)."""
        idx = np.flatnonzero(hit)
        keys = np.ascontiguousarray(batch["src"][idx]).view("V16").ravel()
        order = np.argsort(keys, kind="stable")  # by source, in arrival order within one
        idx, keys = idx[order], keys[order]
        uniq, start = np.unique(keys, return_index=True)
        pk = batch["packets"][idx].astype(float)
        cum = np.cumsum(pk)
        base = np.repeat(cum[start] - pk[start], np.diff(np.append(start, len(idx))))
        within = cum - base  # cumulative packets of each row's source up to that row
        burst = max(1.0, rule.rate_pps / 10)
        ts = batch["ts"][idx]
        per = self._src_buckets.setdefault(rule.rule_id, {})
        tokens = np.empty(len(idx))
        ends = np.append(start[1:], len(idx))
        for u, a, b in zip(uniq, start, ends, strict=True):
            t = float(ts[a:b].max())
            have, last = per.get(u.tobytes(), (burst, t))
            if t - last > SOURCE_IDLE_SECONDS:
                have = burst
            have = min(burst, have + max(0.0, t - last) * rule.rate_pps)
            tokens[a:b] = have
            passed_b = within[a:b] <= have
            per[u.tobytes()] = (have - (float(within[a:b][passed_b][-1]) if passed_b.any() else 0.0), t)
        if len(per) > 4 * len(uniq) + 1024:
            newest = float(ts.max())
            for k in [k for k, (_, last) in per.items() if newest - last > SOURCE_IDLE_SECONDS]:
                del per[k]
        over = np.zeros(len(batch), dtype=bool)
        over[idx[within > tokens]] = True
        return over
