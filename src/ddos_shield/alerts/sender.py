"""One thread and one bounded queue per receiver, with retries and backoff.

A sender (:class:`Sender`) delivers one alert or raises :class:`Retryable` (try again
after a pause that doubles each time, up to its ``attempts``) or :class:`Permanent`
(give up now).  :class:`SenderWorker` runs it on its own thread, so a receiver that
is slow or down delays nobody else; a full queue drops the newest alerts (counted).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Protocol

from ddos_shield.alerts.message import Alert

log = logging.getLogger(__name__)


class Retryable(Exception):
    """A failure worth another try (network error, HTTP 5xx or 429)."""


class Permanent(Exception):
    """A failure another try will not fix (HTTP 4xx, refused recipients)."""


class Sender(Protocol):
    name: str
    attempts: int
    backoff: float

    def send(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


class SenderWorker:
    """See the module docstring."""

    def __init__(self, sender: Sender, queue_size: int = 1000) -> None:
        self.sender = sender
        self.name = sender.name
        self._q: queue.Queue[Alert | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self.counts = {"sent": 0, "failed": 0, "dropped": 0, "retried": 0}
        self._idle = threading.Condition()
        self._busy = 0
        self._thread = threading.Thread(target=self._run, name=f"alerts-{sender.name}", daemon=True)
        self._thread.start()

    def put(self, alert: Alert) -> None:
        with self._idle:
            try:
                self._q.put_nowait(alert)
                self._busy += 1
            except queue.Full:
                self.counts["dropped"] += 1

    def drain(self, timeout: float) -> bool:
        """Wait until every queued alert is delivered or given up."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.drain(timeout)
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread.join(timeout)
        self.sender.close()

    def _run(self) -> None:
        while True:
            alert = self._q.get()
            if alert is None:
                return
            try:
                self._deliver(alert)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _deliver(self, alert: Alert) -> None:
        delay = self.sender.backoff
        for attempt in range(1, self.sender.attempts + 1):
            try:
                self.sender.send(alert)
                self.counts["sent"] += 1
                return
            except Permanent as e:
                log.error("alert %s to %s refused: %s", alert.kind, self.name, e)
                break
            except Retryable as e:
                if attempt == self.sender.attempts or self._stop.is_set():
                    log.error("alert %s to %s failed after %d tries: %s", alert.kind, self.name, attempt, e)
                    break
                self.counts["retried"] += 1
                log.warning("alert %s to %s: %s; retrying in %.1f s", alert.kind, self.name, e, delay)
                if self._stop.wait(delay):
                    break
                delay *= 2
            except Exception:  # a bug in a sender must not end its thread
                log.exception("alert %s to %s", alert.kind, self.name)
                break
        self.counts["failed"] += 1
