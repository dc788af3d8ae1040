"""The history's writer thread: events in through a queue, rows out in batches.

:class:`StoreWriter` is an :class:`~ddos_shield.events.EventSink` subscriber.  The
engine's thread only puts the event on a bounded queue (never waits on the disk:
when the queue is full the event is counted in ``dropped`` and lost); the writer
thread folds whatever has queued into one transaction, takes each attack's sampled
packets from the :class:`~ddos_shield.store.packets.PacketTap` while the attack
lasts, and applies the retention limits periodically.

::

    history = History(path)
    writer = StoreWriter(history, Retention(days=30), tap=tap)
    unsubscribe = events.subscribe(writer)
    ...
    writer.close()          # flushes what is queued, then stops
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ddos_shield.config import Config
from ddos_shield.records import as_network
from ddos_shield.store.history import History, Packet, Retention
from ddos_shield.store.packets import PacketTap

log = logging.getLogger(__name__)

#: seconds of packets before an attack's start that go into its capture (the onset)
ONSET_SECONDS = 2.0


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class StoreWriter:
    """See the module docstring."""

    def __init__(
        self,
        history: History,
        retention: Retention | None = None,
        *,
        tap: PacketTap | None = None,
        packets_per_attack: int = 2000,
        queue_size: int = 100000,
        retention_interval: float = 3600.0,
        batch_seconds: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history = history
        self.retention = retention or Retention()
        self.tap = tap
        self.packets_per_attack = packets_per_attack
        self.retention_interval = retention_interval
        self.batch_seconds = batch_seconds
        self._clock = clock
        self._q: queue.Queue[dict[str, Any] | _Flush | None] = queue.Queue(maxsize=queue_size)
        self.written = 0
        self.dropped = 0  # events lost to a full queue
        self.failed = 0  # batches the database refused
        # attack id -> (target, packets taken so far, newest packet time taken)
        self._capturing: dict[int, tuple[str, int, float]] = {}
        self._source: Callable[[], Config] | None = None
        self._seen: Config | None = None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    # ---- the engine's side: never blocks ------------------------------------------------

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self._q.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    # ---- control ------------------------------------------------------------------

    def follow(self, source: Callable[[], Config]) -> None:
        """Take the retention limits and the capture size from the configuration in
        force (``source``: the engine's, which a reload swaps) as soon as it changes.
        The database path and the queue are fixed at start."""
        self._source = source

    def _reconfigure(self, config: Config) -> None:
        s = config.store
        self.retention = Retention(days=s.retention_days, max_attacks=s.max_attacks, max_audit_rows=s.max_audit_rows)
        self.retention_interval = s.retention_interval_seconds
        self.packets_per_attack = s.pcap_packets_per_attack

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        f = _Flush()
        try:
            self._q.put(f, timeout=timeout)
        except queue.Full:
            return False
        return f.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread and close the database."""
        if self._thread.is_alive():
            try:
                self._q.put(None, timeout=timeout)
            except queue.Full:
                log.error("store writer: queue still full after %.0f s, closing with events unwritten", timeout)
            self._thread.join(timeout)
        self.history.close()

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "dropped": self.dropped, "failed": self.failed, "queued": self._q.qsize()}

    # ---- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        next_retention = self._clock()
        stopping = False
        while not stopping:
            items: list[dict[str, Any] | _Flush | None] = []
            # idle or not: each round takes the packets of attacks under way and checks retention
            with contextlib.suppress(queue.Empty):
                items.append(self._q.get(timeout=0.5))
            deadline = time.monotonic() + self.batch_seconds
            while items and len(items) < 5000:
                try:
                    items.append(self._q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            events = [i for i in items if isinstance(i, dict)]
            stopping = any(i is None for i in items)
            self._write(events)
            now = self._clock()
            if self._source is not None and (cfg := self._source()) is not self._seen:
                self._seen = cfg
                self._reconfigure(cfg)
                next_retention = now  # new limits apply at once
            if now >= next_retention:
                self._retain(now)
                next_retention = now + self.retention_interval
            for i in items:
                if isinstance(i, _Flush):
                    i.done.set()

    def _write(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            kind = ev.get("event")
            if kind == "attack_start" and self.tap is not None and self.packets_per_attack > 0:
                started = float(ev.get("started", ev.get("ts", 0.0)))
                self._capturing[int(ev["attack_id"])] = (str(ev["target"]), 0, started - ONSET_SECONDS)
        packets = self._take_packets()
        for ev in events:
            if ev.get("event") == "attack_end":
                self._capturing.pop(int(ev.get("attack_id", 0)), None)
            elif ev.get("event") in ("ready", "stopped"):
                self._capturing.clear()
        if not events and not packets:
            return
        try:
            self.history.record(events, packets)
            self.written += len(events)
        except Exception:  # a full disk or a locked file must not kill the thread
            self.failed += 1
            log.exception("store writer: %d events not written", len(events))

    def _take_packets(self) -> dict[int, list[Packet]]:
        out: dict[int, list[Packet]] = {}
        if self.tap is None:
            return out
        wants = {
            aid: (as_network(target), since, self.packets_per_attack - taken)
            for aid, (target, taken, since) in self._capturing.items()
            if taken < self.packets_per_attack
        }
        for aid, pkts in self.tap.take_many(wants).items():
            if pkts:
                target, taken, _ = self._capturing[aid]
                out[aid] = pkts
                self._capturing[aid] = (target, taken + len(pkts), max(p.ts for p in pkts))
        return out

    def _retain(self, now: float) -> None:
        try:
            deleted = self.history.apply_retention(self.retention, now)
        except Exception:
            log.exception("store writer: retention failed")
            return
        if any(deleted.values()):
            log.info("history retention deleted %s", deleted)
