"""Alerts on attack start, update and end and on each mitigation.

* :mod:`~ddos_shield.alerts.message` -- :class:`AlertBuilder`: events -> alerts with
  everything an on-call engineer needs, throttled per attack (pure, no I/O);
* :mod:`~ddos_shield.alerts.sender` -- one thread, queue and retry loop per receiver;
* :mod:`~ddos_shield.alerts.webhook` -- JSON webhooks signed with HMAC-SHA256;
* :mod:`~ddos_shield.alerts.syslog` -- RFC 5424 over UDP or TCP, plain or CEF;
* :mod:`~ddos_shield.alerts.email` -- SMTP.

:class:`AlertDispatcher` is an :class:`~ddos_shield.events.EventSink` subscriber: on
the engine's thread it only queues the event; its own thread builds the alerts and
hands each to every receiver's worker::

    alerts = open_alerts(config)        # None when no receiver is configured
    events.subscribe(alerts)
    ...
    alerts.close()                      # delivers what is queued (bounded wait)
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ddos_shield.alerts.email import EmailSender
from ddos_shield.alerts.message import Alert, AlertBuilder
from ddos_shield.alerts.sender import Sender, SenderWorker
from ddos_shield.alerts.syslog import SyslogSender
from ddos_shield.alerts.webhook import WebhookSender
from ddos_shield.config import Config

__all__ = ["Alert", "AlertBuilder", "AlertDispatcher", "open_alerts", "senders_for"]

log = logging.getLogger(__name__)


def senders_for(config: Config) -> list[Sender]:
    a = config.alerts
    out: list[Sender] = [WebhookSender(w) for w in a.webhooks]
    out += [SyslogSender(s) for s in a.syslog]
    out += [EmailSender(e) for e in a.email]
    return out


class AlertDispatcher:
    """See the module docstring."""

    def __init__(self, config: Config, senders: list[Sender]) -> None:
        self.builder = AlertBuilder(config)
        self._config = config
        self._source: Callable[[], Config] | None = None
        self.workers = [SenderWorker(s, config.alerts.queue_size) for s in senders]
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10000)
        self.dropped = 0
        self._pending = 0
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._cv:
            try:
                self._q.put_nowait(event)
                self._pending += 1
            except queue.Full:
                self.dropped += 1

    def follow(self, source: Callable[[], Config]) -> None:
        """Read the configuration in force from ``source`` (the engine's, which a reload
        swaps) before each event, so that a reload takes effect here too."""
        self._source = source

    def _reconfigure(self, config: Config) -> None:
        """On the dispatcher's thread: a new dashboard link, throttle and thresholds at
        once; changed receivers are replaced (the old ones get a moment to deliver)."""
        old = self._config.alerts
        self._config = config
        self.builder.reconfigure(config)
        new = config.alerts
        if (old.webhooks, old.syslog, old.email, old.queue_size) != (
            new.webhooks,
            new.syslog,
            new.email,
            new.queue_size,
        ):
            retired, self.workers = self.workers, [SenderWorker(s, new.queue_size) for s in senders_for(config)]
            for w in retired:
                w.close(timeout=2.0)
            log.info("alerts: receivers now %s", [w.name for w in self.workers])

    def _run(self) -> None:
        while True:
            ev = self._q.get()
            if ev is None:
                return
            try:
                if self._source is not None and (cfg := self._source()) is not self._config:
                    self._reconfigure(cfg)
                alert = self.builder.build(ev)
                if alert is not None:
                    for w in self.workers:
                        w.put(alert)
            except Exception:  # a malformed event must not end the thread
                log.exception("alerts: cannot build an alert from %r", ev.get("event"))
            finally:
                with self._cv:
                    self._pending -= 1
                    self._cv.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event queued so far is alerted on (delivered or given up)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._pending == 0, timeout):
                return False
        return all(w.drain(timeout) for w in self.workers)

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread.join(timeout)
        for w in self.workers:
            w.close(timeout)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per receiver: sent, failed, retried, dropped; and ``throttled`` overall."""
        out = {w.name: dict(w.counts) for w in list(self.workers)}
        out["all"] = {"throttled": self.builder.throttled, "dropped": self.dropped}
        return out


def open_alerts(config: Config) -> AlertDispatcher | None:
    senders = senders_for(config)
    return AlertDispatcher(config, senders) if senders else None
