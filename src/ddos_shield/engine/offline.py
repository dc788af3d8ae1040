"""Replay captures through the shield's own detection: what ``ddos-shield analyze`` does.

Each capture file is replayed on its own through the real :class:`~ddos_shield.engine.Engine`
over a :class:`~ddos_shield.dataplane.replay.ReplayDataPlane`, with a clock that follows
the capture's timestamps and a tick every ``shield.interval_ms`` of capture time, as
fast as the machine goes.  The engine decides everything as it would live (dry run:
the replay data plane's in-memory backend stands in for the kernel), and its events
are gathered into one :class:`AttackReport` per attack.

Time is driven by the packets.  The engine ticks at the end of every interval that
holds packets, and at the start of such an interval when the tick before lies further
back, so that rates are always measured over one interval.  Silent stretches create
no ticks, whatever their length -- captures that span years replay as fast as short
ones -- except the few the engine needs there: while an attack is open, the rule
refreshes (one a second); when its ``end_after_seconds`` runs out; and when its rules'
``hold_seconds`` run out.  Attacks end, rules expire and are withdrawn exactly when
they would have with a tick every interval; the ticks left out would have changed
nothing.

Memory stays bounded whatever the capture's size: packets are read and replayed a
chunk at a time, per-attack source counts keep at most :data:`MAX_TRACKED_SOURCES`
addresses (the lightest are folded into a count), and the timeline keeps at most
:data:`MAX_TIMELINE_BINS` bins (coarser bins beyond).

>>> analysis = analyze(["attack.pcap"])  # doctest: +SKIP
>>> [(a.types, a.target) for a in analysis.attacks]  # doctest: +SKIP
[(['syn_flood'], '10.0.1.12/32')]
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ddos_shield.capture.pcap import CaptureReader, CaptureStats
from ddos_shield.config import Config
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.detect.carpet import inner_mask
from ddos_shield.engine import Engine
from ddos_shield.events import EventSink
from ddos_shield.policy import REFRESH_EVERY
from ddos_shield.records import (
    CATEGORY_NAMES,
    Attack,
    Match,
    TrafficBatch,
    addresses_in,
    bytes_addr,
    join_rows,
    take_rows,
)

#: source addresses counted exactly per attack; beyond, the lightest are folded into totals
MAX_TRACKED_SOURCES = 100_000
#: sources listed per attack
TOP_SOURCES = 10
#: source addresses counted over all open attacks at most (a carpet bomb opens thousands)
MAX_TOTAL_SOURCES = 1_000_000
#: attack packets buffered before their sources are merged into the counts
SOURCE_BUFFER = 262_144
#: intervals from the first packet beyond which a timestamp is taken as broken (~29 million years)
_MAX_INTERVALS = 1 << 62
#: timeline bins kept at most; past this the bins double in width
MAX_TIMELINE_BINS = 100_000
#: timeline bins are this wide (seconds) while the capture spans at most FINE_SPAN seconds, 1 s beyond
FINE_WIDTH = 0.1
FINE_SPAN = 120.0
#: a silence is a gap in the timeline when longer than this and than GAP_SHARE of the rest of the axis
GAP_SECONDS = 60.0
GAP_SHARE = 0.1
MAX_GAPS = 12

PROTECT_ALL = ["0.0.0.0/0", "::/0"]


def default_config() -> Config:
    """Every destination protected with the default group's thresholds (dry run)."""
    return Config.model_validate({"protected": PROTECT_ALL, "shield": {"dry_run": True}})


# ---- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceShare:
    address: str
    packets: int
    share: float  # of the attack's packets


@dataclass
class RuleReport:
    """A rule the shield would have applied (dry run), and what it matched in the replay."""

    rule_id: int
    action: str
    match: dict[str, Any]
    description: str
    reason: str
    attack_share: float | None  # of the attack's samples the rule matches
    collateral_share: float | None  # of the target's other sampled traffic it matches
    applied_at: float
    removed_at: float | None = None
    hits: int = 0  # packets of the rest of the capture the rule matched
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AttackReport:
    """One attack found in a capture.

    ``start`` is the first packet of the attack's traffic in the interval whose rate
    crossed the limit, ``detected`` the end of that interval (when the shield would
    have raised it), ``end`` the last packet of the attack's traffic in an interval
    over the limit, ``ended`` when the shield would have declared it over.  Packets,
    bytes and sources count the attack's categories at its target in the intervals
    over the limit.  ``spoofed_share`` is the share of those packets whose source sent
    only that one packet: near 1 for randomly spoofed floods.  Scans, sweeps, connection
    floods and slow attacks count no packets (no category of theirs is over a limit);
    their ``top_sources`` are the sources the detectors named, with 0 packets.
    """

    capture: str
    attack_id: int
    target: str
    group: str
    types: list[str]
    detected: float
    start: float
    end: float
    ended: float | None = None
    peak_pps: float = 0.0
    peak_bps: float = 0.0
    packets: int = 0
    bytes: int = 0
    distinct_sources: int = 0
    spoofed_share: float = 0.0
    top_sources: list[SourceShare] = field(default_factory=list)
    rules: list[RuleReport] = field(default_factory=list)
    skipped: str | None = None  # why no rule was applied, when none was

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["top_sources"] = [s.__dict__ for s in self.top_sources]
        out["rules"] = [r.to_json() for r in self.rules]
        return out


@dataclass
class Timeline:
    """Packets per second by category over the capture's time, for the chart.

    ``t`` holds the start (Unix seconds) of every bin that saw packets, ``pps`` one
    column per category (:data:`~ddos_shield.records.CATEGORY_NAMES`), ``bps`` all
    traffic.  Bins are ``resolution`` seconds wide; missing bins had no packets.
    ``gaps`` are the long silences a chart cuts out (see :func:`_gaps`).
    """

    resolution: float
    t: npt.NDArray[np.float64]
    pps: npt.NDArray[np.float64]
    bps: npt.NDArray[np.float64]
    gaps: list[tuple[float, float]]

    def to_json(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "categories": list(CATEGORY_NAMES),
            "t": [round(float(x), 3) for x in self.t],
            "pps": {name: [round(float(v), 1) for v in self.pps[:, i]] for i, name in enumerate(CATEGORY_NAMES)},
            "bps": [round(float(v), 1) for v in self.bps],
            "gaps": [[round(a, 3), round(b, 3)] for a, b in self.gaps],
        }


@dataclass
class CaptureAnalysis:
    """One capture file replayed: what was read, how long it took, what was found."""

    path: str
    format: str
    stats: CaptureStats
    attacks: list[AttackReport]
    timeline: Timeline
    ticks: int  # engine ticks run (silences create none)
    wall_seconds: float

    @property
    def duration(self) -> float:
        s = self.stats
        return (s.last_ts - s.first_ts) if s.first_ts is not None and s.last_ts is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            **self.stats.to_json(),
            "duration": round(self.duration, 6),
            "ticks": self.ticks,
            "wall_seconds": round(self.wall_seconds, 3),
            "attacks": [a.to_json() for a in self.attacks],
            "timeline": self.timeline.to_json(),
        }


@dataclass
class Analysis:
    """Every capture of one ``analyze`` run (see :func:`analyze`)."""

    captures: list[CaptureAnalysis]
    protected: list[str]
    config_path: str | None  # None: the defaults, every destination protected
    interval_ms: int
    groups: dict[str, dict[str, Any]]  # group name -> thresholds (pps/bps per category)

    @property
    def attacks(self) -> list[AttackReport]:
        return [a for c in self.captures for a in c.attacks]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "config": self.config_path,
            "protected": self.protected,
            "interval_ms": self.interval_ms,
            "groups": self.groups,
            "captures": [c.to_json() for c in self.captures],
        }


# ---- the replay ------------------------------------------------------------------------


def analyze(
    paths: Sequence[str | os.PathLike[str]],
    config: Config | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    config_path: str | None = None,
) -> Analysis:
    """Replay each capture through the engine and report the attacks found.

    Every file is opened first, so an unreadable one raises
    :class:`~ddos_shield.errors.ShieldError` before any work.  ``progress(done, total)``
    counts bytes read over all files.
    """
    cfg = config or default_config()
    readers = [CaptureReader(p) for p in paths]
    total = sum(r.size for r in readers)
    results = []
    base = 0
    for r in readers:
        if progress is not None:
            r.progress = _offset_progress(progress, base, total)
        results.append(_Replay(cfg, r).run())
        base += r.size
        if progress is not None:
            progress(base, total)
    groups = {
        g.name: {
            "prefixes": g.prefixes,
            "action": g.action,
            "thresholds": g.thresholds.model_dump(),
            "end_after_seconds": g.end_after_seconds,
            "hold_seconds": g.hold_seconds,
        }
        for g in cfg.groups
    }
    return Analysis(results, list(cfg.protected), config_path, cfg.shield.interval_ms, groups)


def _offset_progress(progress: Callable[[int, int], None], base: int, total: int) -> Callable[[int, int], None]:
    def report(done: int, _size: int) -> None:
        progress(base + done, total)

    return report


class _Clock:
    """Capture time, as the engine and the replay backend see it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Replay:
    def __init__(self, config: Config, reader: CaptureReader) -> None:
        self.cfg = config
        self.reader = reader
        self.interval = config.shield.interval_ms / 1000.0
        self.clock = _Clock()
        self.out = io.StringIO()
        # the clock reads 0 until the first packet: attack ids count from 1 in each capture
        self.dp = ReplayDataPlane(config.shield.ipv6_prefix_len, clock=self.clock)
        self.engine = Engine(config, self.dp, self.dp.backend, EventSink(self.out, keep=1), clock=self.clock)
        self.started = False
        self.t0 = 0.0
        self.b_last = 0  # boundary (in intervals from t0) of the last tick
        self.k_cur: int | None = None  # the interval being filled
        self.pending: list[TrafficBatch] = []
        self.ticks = 0
        self.attacks: dict[int, _AttackState] = {}
        self.rules: dict[int, RuleReport] = {}
        self.open_rules: dict[int, int] = {}  # rule id -> attack id, rules in force
        self.refreshed: dict[int, float] = {}  # attack id -> when the policy last refreshed its rules
        self.timeline = _TimelineCounter()

    def run(self) -> CaptureAnalysis:
        wall = time.perf_counter()
        for batch in self.reader.batches():
            self._replay(batch)
        if self.k_cur is not None:
            self._close(self.k_cur)
            self._advance(None)
        attacks = [a.report(str(self.reader.path)) for a in sorted(self.attacks.values(), key=lambda a: a.detected)]
        return CaptureAnalysis(
            path=str(self.reader.path),
            format=self.reader.format,
            stats=self.reader.stats,
            attacks=attacks,
            timeline=self.timeline.result(),
            ticks=self.ticks,
            wall_seconds=time.perf_counter() - wall,
        )

    def _replay(self, batch: TrafficBatch) -> None:
        self.timeline.add(batch)
        ts = batch["ts"]
        if not self.started:
            self.started = True
            self.t0 = self.clock.now = float(ts[0])
            self.engine.start(self.t0)
            self._events()
        # The interval of each packet; a packet stamped earlier than the one before it
        # (captures are not always in order) joins the interval being filled.
        k = np.floor(np.clip((ts - self.t0) / self.interval, 0, _MAX_INTERVALS)).astype(np.int64)
        k = np.maximum.accumulate(np.maximum(k, self.k_cur or 0))
        cuts = (np.flatnonzero(np.diff(k)) + 1).tolist()
        for lo, hi in zip([0, *cuts], [*cuts, len(k)], strict=True):
            kk = int(k[lo])
            if kk != self.k_cur:
                if self.k_cur is not None:
                    self._close(self.k_cur)
                self._advance(kk)
                self.k_cur = kk
            rows = batch[lo:hi]
            self.dp.feed(rows)
            self.pending.append(rows)

    def _close(self, k: int) -> None:
        """Tick at the end of interval ``k``, then count its packets into the attacks
        that were over their limits in it."""
        now = self._tick(k + 1)
        pending, self.pending = self.pending, []
        active = self.engine.tracker.active
        for a in active:
            st = self.attacks.get(a.attack_id)
            if st is None or a.last_seen != now:
                continue
            st.peak_pps, st.peak_bps = a.peak_pps, a.peak_bps
            cats = [int(c) for c in a.categories]
            # the interval's pieces one by one: most intervals hold no attack, and
            # joining them first would copy every packet once more
            parts = [take_rows(p, _theirs(p, a, cats, active)) for p in pending]
            rows = join_rows(parts) if len(parts) > 1 else parts[0]
            if len(rows):
                st.add(rows)
        counters = [st.sources for st in self.attacks.values() if st.sources is not None]
        if sum(c.held for c in counters) > MAX_TOTAL_SOURCES:
            each = max(MAX_TOTAL_SOURCES // (2 * len(counters)), 64)
            for c in counters:
                c.shrink(each)

    def _advance(self, k: int | None) -> None:
        """Move time up to the start of interval ``k`` (None: until everything has
        ended), ticking only where the engine has something due."""
        while True:
            due = self._next_due()
            if due is None or (k is not None and due >= k):
                break
            self._tick(due)
        if k is not None and self.b_last < k:
            self._tick(k)  # so that interval k's rates are measured over one interval

    def _next_due(self) -> int | None:
        """The first boundary at which an open attack's rules are refreshed, it ends, or its
        rules' hold runs out (None: nothing due)."""
        times = []
        for a in self.engine.tracker.active:
            times.append(a.last_seen + self.engine.tracker.quiet_needed(a))
            if a.attack_id in self.refreshed:
                times.append(self.refreshed[a.attack_id] + REFRESH_EVERY)
        for aid in set(self.open_rules.values()):
            st = self.attacks.get(aid)
            if st is not None and st.ended is not None:
                times.append(st.ended + self.cfg.group_for_name(st.group).hold_seconds)
        if not times:
            return None
        # a boundary can sit a few float steps off the exact time (Unix seconds carry ~0.2 us
        # of rounding): ticking one boundary early is harmless, one late is not
        b = math.ceil((min(times) - self.t0) / self.interval - 1e-3)
        return max(b, self.b_last + 1)

    def _tick(self, b: int) -> float:
        now = self.t0 + b * self.interval
        self.clock.now = now
        self.engine.tick(now)
        self.b_last = b
        self.ticks += 1
        self._events()
        # mirror the policy's refresh clock (a rule's expiry moves on only at a refresh)
        for a in self.engine.tracker.active:
            st = self.attacks.get(a.attack_id)
            if st is None or not st.rules:
                continue
            last = self.refreshed.get(a.attack_id)
            if last is None or now - last >= REFRESH_EVERY:
                self.refreshed[a.attack_id] = now
        return now

    def _events(self) -> None:
        text = self.out.getvalue()
        if not text:
            return
        self.out.seek(0)
        self.out.truncate()
        for line in text.splitlines():
            self._event(json.loads(line))

    def _event(self, e: dict[str, Any]) -> None:
        name = e["event"]
        aid: int = e.get("attack_id", 0)
        st = self.attacks.get(aid)
        if name == "attack_start":
            self.attacks[aid] = _AttackState(aid, e["target"], e["group"], list(e["attack_types"]), e["ts"])
            self.attacks[aid].named_sources = list(e.get("sources", []))
        elif name in ("attack_update", "attack_end") and st is not None:
            st.types = list(e["attack_types"])
            st.named_sources = list(e.get("sources", st.named_sources))
            st.peak_pps = max(st.peak_pps, e["peak_pps"])
            st.peak_bps = max(st.peak_bps, e["peak_bps"])
            if name == "attack_end":
                st.ended = e["ts"]
                st.finish()
        elif name == "mitigation_applied":
            r = e["rule"]
            rep = RuleReport(
                rule_id=r["mitigation_id"],
                action=r["action"],
                match=r["match"],
                description=Match.from_json(r["match"]).describe(),
                reason=r.get("reason", ""),
                attack_share=r.get("attack_share"),
                collateral_share=r.get("collateral_share"),
                applied_at=e["ts"],
            )
            self.rules[rep.rule_id] = rep
            self.open_rules[rep.rule_id] = r["attack_id"]
            owner = self.attacks.get(r["attack_id"])
            if owner is not None:
                owner.rules.append(rep)
        elif name == "mitigation_removed":
            rid = e["rule"]["mitigation_id"]
            self.open_rules.pop(rid, None)
            rep_ = self.rules.get(rid)
            if rep_ is not None:
                rep_.removed_at = e["ts"]
                hits = e.get("hits", {})
                rep_.hits, rep_.dropped = int(hits.get("packets", 0)), int(hits.get("dropped", 0))
        elif name in ("mitigation_skipped", "mitigation_failed") and st is not None:
            st.skipped = e.get("reason", name)


def _theirs(rows: TrafficBatch, a: Attack, cats: list[int], active: list[Attack]) -> npt.NDArray[np.bool_]:
    """Rows of ``a``'s categories at its target; a carpet bomb's host attacks count their own."""
    mask = addresses_in(rows["dst"], a.target) & np.isin(rows["category"], cats)
    if mask.any():
        mask &= ~inner_mask(rows, a, active)
    out: npt.NDArray[np.bool_] = mask
    return out


# ---- per-attack accounting ----------------------------------------------------------------


class _AttackState:
    def __init__(self, attack_id: int, target: str, group: str, types: list[str], detected: float) -> None:
        self.attack_id = attack_id
        self.target = target
        self.group = group
        self.types = types
        self.detected = detected
        self.ended: float | None = None
        self.peak_pps = 0.0
        self.peak_bps = 0.0
        self.start: float | None = None
        self.end: float | None = None
        self.packets = 0
        self.bytes = 0
        self.rules: list[RuleReport] = []
        self.skipped: str | None = None
        self.named_sources: list[str] = []  # what scan and connection detectors named
        self.sources: _SourceCounter | None = _SourceCounter()  # until the attack ends
        self._summary: tuple[list[tuple[str, int]], int, int, int] | None = None

    def add(self, rows: TrafficBatch) -> None:
        ts = rows["ts"]
        self.start = float(ts.min()) if self.start is None else self.start
        self.end = float(ts.max()) if self.end is None else max(self.end, float(ts.max()))
        self.packets += int(rows["packets"].sum())
        self.bytes += int(rows["bytes"].sum())
        if self.sources is not None:
            self.sources.add(rows["src"], rows["packets"])

    def finish(self) -> tuple[list[tuple[str, int]], int, int, int]:
        """Sum up the sources and free their counts (the attack is over): (top sources,
        distinct sources, packets from single-packet sources, packets)."""
        if self._summary is None or self.sources is not None:
            src = self.sources or _SourceCounter()
            self._summary = (*src.result(TOP_SOURCES), src.total)
            self.sources = None
        return self._summary

    def report(self, capture: str) -> AttackReport:
        top, distinct, once, total = self.finish()
        total = max(total, 1)
        return AttackReport(
            capture=capture,
            attack_id=self.attack_id,
            target=self.target,
            group=self.group,
            types=self.types,
            detected=self.detected,
            start=self.start if self.start is not None else self.detected,
            end=self.end if self.end is not None else self.detected,
            ended=self.ended,
            peak_pps=self.peak_pps,
            peak_bps=self.peak_bps,
            packets=self.packets,
            bytes=self.bytes,
            distinct_sources=distinct or len(self.named_sources),
            spoofed_share=round(once / total, 4),
            top_sources=[SourceShare(addr, n, round(n / total, 4)) for addr, n in top]
            or [SourceShare(addr, 0, 0.0) for addr in self.named_sources],
            rules=list(self.rules),
            skipped=None if self.rules else self.skipped,
        )


class _SourceCounter:
    """Packets per source address, exact up to :data:`MAX_TRACKED_SOURCES` addresses.

    Past that the lightest half is folded into totals (how many addresses, packets,
    and single-packet addresses): the heavy sources a report lists stay exact, and
    a randomly spoofed flood's single-packet sources are still counted as such.
    """

    def __init__(self) -> None:
        self.keys = np.zeros((0, 16), dtype=np.uint8)
        self.counts = np.zeros(0, dtype=np.int64)
        self.total = 0
        self._buf: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = []
        self._buffered = 0
        self.folded_keys = 0
        self.folded_once = 0
        self._sorted = True  # keys in ascending order (merges leave them so, folds do not)

    def add(self, src: npt.NDArray[np.uint8], packets: npt.NDArray[Any]) -> None:
        self._buf.append((np.ascontiguousarray(src), packets.astype(np.int64)))
        self._buffered += len(src)
        self.total += int(packets.sum())
        if self._buffered >= SOURCE_BUFFER:
            self._merge()

    @property
    def held(self) -> int:
        """Addresses held: counted, and buffered to be counted."""
        return len(self.counts) + self._buffered

    def shrink(self, keep: int) -> None:
        """Count what is buffered and keep at most ``keep`` addresses."""
        self._merge()
        if len(self.counts) > keep:
            self._fold(keep)

    def _merge(self) -> None:
        if not self._buf:
            return
        new_keys = np.concatenate([k for k, _ in self._buf])
        new_counts = np.concatenate([c for _, c in self._buf])
        self._buf, self._buffered = [], 0
        halves = new_keys.view(">u8")
        hi = halves[0, 0]
        if bool(np.all(halves[:, 0] == hi)) and (not len(self.keys) or bool(np.all(self.keys.view(">u8")[:, 0] == hi))):
            self._merge_one_high(hi, halves[:, 1].astype(np.uint64), new_counts)
        else:
            keys = np.concatenate([self.keys, new_keys])
            counts = np.concatenate([self.counts, new_counts])
            uniq_idx, inv = _unique_rows(keys)
            self.keys = keys[uniq_idx]
            self.counts = np.bincount(inv, weights=counts, minlength=len(uniq_idx)).astype(np.int64)
        self._sorted = True
        if len(self.counts) > MAX_TRACKED_SOURCES:
            self._fold(MAX_TRACKED_SOURCES // 2)

    def _merge_one_high(self, hi: np.uint64, lo: npt.NDArray[np.uint64], counts: npt.NDArray[np.int64]) -> None:
        """Merge when every key shares its first 8 bytes (all IPv4): the new keys'
        second halves are sorted and summed on their own (a plain sort of integers,
        not a unique with index and inverse: ~20 times faster), then merged into the
        sorted counts held.  Keys stay sorted, as :func:`_unique_rows` leaves them."""
        if bool(np.all(counts == 1)):  # one packet a row (captures): counts are run lengths
            srt = np.sort(lo)
            w = None
        else:
            order = np.argsort(lo, kind="stable")
            srt, w = lo[order], counts[order]
        starts = np.flatnonzero(np.concatenate([[True], srt[1:] != srt[:-1]])) if len(srt) else np.zeros(0, np.int64)
        uniq = srt[starts]
        sums = np.diff(np.append(starts, len(srt))) if w is None else np.add.reduceat(w, starts)
        old_keys, old_counts = self.keys, self.counts
        old_lo = old_keys.view(">u8")[:, 1].astype(np.uint64)
        if not self._sorted:  # folded since the last merge: back in key order
            order = np.argsort(old_lo, kind="stable")
            old_lo, old_counts = old_lo[order], old_counts[order]
        at = np.searchsorted(old_lo, uniq)
        found = at < len(old_lo)
        found[found] = old_lo[at[found]] == uniq[found]
        old_counts = old_counts.copy()
        np.add.at(old_counts, at[found], sums[found])  # distinct keys: each slot once
        new = ~found
        lo_all = np.insert(old_lo, at[new], uniq[new])
        self.counts = np.insert(old_counts, at[new], sums[new]).astype(np.int64)
        words = np.empty((len(lo_all), 2), dtype=">u8")
        words[:, 0] = hi
        words[:, 1] = lo_all
        self.keys = words.view(np.uint8).reshape(len(lo_all), 16)

    def _fold(self, keep: int) -> None:
        """Keep the ``keep`` heaviest addresses; the rest become totals."""
        order = np.argsort(self.counts, kind="stable")[::-1]
        fold = order[keep:]
        self.folded_keys += len(fold)
        self.folded_once += int((self.counts[fold] == 1).sum())
        self.keys, self.counts = self.keys[order[:keep]], self.counts[order[:keep]]
        self._sorted = False

    def result(self, top: int) -> tuple[list[tuple[str, int]], int, int]:
        """(top sources with packets, distinct sources, packets from single-packet sources)."""
        self._merge()
        order = np.argsort(self.counts, kind="stable")[::-1][:top]
        heads = [(str(bytes_addr(self.keys[i])), int(self.counts[i])) for i in order]
        once = int((self.counts == 1).sum()) + self.folded_once
        return heads, len(self.counts) + self.folded_keys, once


def _unique_rows(keys: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(index of one row per distinct 16-byte key, inverse) -- on 8-byte integers when
    every key shares its first half (all IPv4), several times faster than on the bytes."""
    halves = keys.view(">u8")
    if len(keys) and bool(np.all(halves[:, 0] == halves[0, 0])):
        _, idx, inv = np.unique(halves[:, 1], return_index=True, return_inverse=True)
    else:
        _, idx, inv = np.unique(keys.view("V16").ravel(), return_index=True, return_inverse=True)
    return idx.astype(np.int64), inv.astype(np.int64).ravel()


# ---- timeline ----------------------------------------------------------------------------


class _TimelineCounter:
    """Packets per category and bytes per time bin.

    Bins are a tenth of a second while the capture spans at most
    :data:`FINE_SPAN` seconds (a short attack capture gets a readable chart), one
    second beyond, and twice as wide again whenever more than
    :data:`MAX_TIMELINE_BINS` bins would be kept.
    """

    def __init__(self) -> None:
        self.width = FINE_WIDTH  # seconds per bin
        self.bins: dict[int, npt.NDArray[np.float64]] = {}  # bin -> packets per category, then bytes
        self._ncat = len(CATEGORY_NAMES)
        self._first: float | None = None

    def add(self, batch: TrafficBatch) -> None:
        ts = batch["ts"]
        self._first = float(ts[0]) if self._first is None else self._first
        if self.width == FINE_WIDTH and float(ts.max()) - self._first > FINE_SPAN:
            self._coarsen(round(1.0 / FINE_WIDTH))
        b = np.floor(np.clip(ts / self.width, -_MAX_INTERVALS, _MAX_INTERVALS)).astype(np.int64)
        lo, hi = int(b.min()), int(b.max())
        if hi - lo <= 4 * len(b) + 1024:  # a batch spans a few bins: count by offset, no sort
            seen = np.bincount(b - lo, minlength=hi - lo + 1)
            uniq = np.flatnonzero(seen) + lo
            inv = (np.cumsum(seen > 0) - 1)[b - lo]
        else:
            uniq, inv = np.unique(b, return_inverse=True)
        n, ncat = len(uniq), self._ncat
        cell = inv * ncat + batch["category"]
        pk = batch["packets"]
        per: npt.NDArray[np.float64]
        if len(pk) and pk[0] == 1 and bool((pk == 1).all()):  # a capture's rows: one packet each
            per = np.bincount(cell, minlength=n * ncat).astype(np.float64)
        else:
            per = np.bincount(cell, weights=pk, minlength=n * ncat).astype(np.float64, copy=False)
        per = per.reshape(n, ncat)
        byt = np.bincount(inv, weights=batch["bytes"], minlength=n)
        for i, key in enumerate(uniq.tolist()):
            row = self.bins.get(key)
            if row is None:
                self.bins[key] = np.append(per[i], byt[i])
            else:
                row[:ncat] += per[i]
                row[ncat] += byt[i]
        while len(self.bins) > MAX_TIMELINE_BINS:
            self._coarsen(2)

    def _coarsen(self, factor: int) -> None:
        self.width *= factor
        merged: dict[int, npt.NDArray[np.float64]] = {}
        for key, row in self.bins.items():
            k = key // factor
            merged[k] = merged[k] + row if k in merged else row
        self.bins = merged

    def result(self) -> Timeline:
        keys = sorted(self.bins)
        ncat = self._ncat
        t = np.array(keys, dtype=np.float64) * self.width
        rows = np.array([self.bins[k] for k in keys], dtype=np.float64).reshape(len(keys), ncat + 1)
        pps = rows[:, :ncat] / self.width
        bps = rows[:, ncat] * 8.0 / self.width
        return Timeline(float(self.width), t, pps, bps, _gaps(t, self.width))


def _gaps(t: npt.NDArray[np.float64], width: float) -> list[tuple[float, float]]:
    """The silences worth cutting out of a chart: longer than :data:`GAP_SECONDS` and
    than a tenth of the time left once the longer ones are cut (so a capture that
    idles a minute between polls keeps its axis, one that skips years does not), at
    most :data:`MAX_GAPS` of them."""
    if len(t) < 2:
        return []
    starts = t[:-1] + width
    lengths = t[1:] - starts
    order = np.argsort(lengths)[::-1]
    left = float(t[-1] + width - t[0])
    chosen: list[int] = []
    for i in order[:MAX_GAPS]:
        g = float(lengths[i])
        if g <= GAP_SECONDS or g <= GAP_SHARE * left:
            break
        chosen.append(int(i))
        left -= g
    return [(float(starts[i]), float(t[i + 1])) for i in sorted(chosen)]
