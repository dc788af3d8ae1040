"""The notify backend: tells other systems about every action; it enforces nothing.

For systems the shield does not drive itself (a ticketing system, a provider's
scrubbing-center API, a chat channel, a router script of your own), it runs a
configured script with the action as JSON on standard input and/or POSTs the same JSON
to webhooks, on every rule applied, withdrawn or expired and on the kill switch.
Hooks are for **notifying**, never the main path of mitigation: what must be enforced
is enforced by the data plane or BGP, and a hook that fails, hangs or is slow delays
nothing (each receiver has its own thread and bounded queue, from
:mod:`ddos_shield.alerts.sender`; a script run is killed at ``script_timeout_seconds``).

The JSON (one object, UTF-8)::

    {"version": 1, "event": "apply" | "withdraw" | "expire" | "bypass", "ts": <unix seconds>,
     "rule": {<the rule as in events: mitigation_id, action, match, expires_at, ...>},   (rule events)
     "bypass": true | false}                                                             (bypass)

``apply`` is sent for a new rule and for a change of its match, action or rate, not
for a refresh of its expiry.  :meth:`NotifyBackend.list` returns the rules notified
and still held (not withdrawn, not expired); :meth:`~NotifyBackend.stats` returns zeros.

Example::

    >>> from ddos_shield.config import Notify
    >>> b = NotifyBackend(Notify(script=["logger", "-t", "ddos-shield"]))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ddos_shield.alerts.message import Alert
from ddos_shield.alerts.sender import Permanent, Sender, SenderWorker
from ddos_shield.alerts.webhook import WebhookSender
from ddos_shield.config import Config, Notify
from ddos_shield.errors import ConfigError
from ddos_shield.mitigate.base import Backend
from ddos_shield.records import IPNetwork, Rule, RuleStats

log = logging.getLogger(__name__)

#: Version of the JSON the hooks receive.
FORMAT_VERSION = 1
#: How often held rules are checked for expiry.
EXPIRY_CHECK_SECONDS = 0.5


class ScriptSender:
    """Runs a program once per action, the JSON on its standard input, bounded in time.

    The program runs in its own process group, killed whole at the timeout, so a hook
    that forks cannot outlive it.  A failure is not retried (a script that failed once
    usually fails again; it is counted and logged with its stderr).
    """

    attempts = 1
    backoff = 1.0

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self.name = f"script:{os.path.basename(self.argv[0])}"

    def send(self, alert: Alert) -> None:
        body = json.dumps(alert.payload, separators=(",", ":"), default=str).encode()
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            raise Permanent(f"{self.argv[0]}: {e.strerror}") from e
        try:
            _, err = proc.communicate(body, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise Permanent(f"{self.argv[0]}: killed after {self.timeout:g} s") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-300:]
            raise Permanent(f"{self.argv[0]} exited {proc.returncode}: {tail}")

    def close(self) -> None:
        pass


class NotifyBackend(Backend):
    """See the module docstring."""

    name = "notify"

    def __init__(
        self,
        settings: Notify,
        *,
        senders: Sequence[Sender] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        if senders is None:
            senders = [WebhookSender(w) for w in settings.webhooks]
            if settings.script:
                senders.append(ScriptSender(settings.script, settings.script_timeout_seconds))
        self.workers = [SenderWorker(s, settings.queue_size) for s in senders]
        self._clock = clock
        self._held: dict[int, Rule] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._expire_loop, name="notify-expiry", daemon=True)
        self._timer.start()

    @classmethod
    def from_config(cls, config: Config) -> NotifyBackend:
        if config.notify is None:
            raise ConfigError("the notify backend needs a [notify] section")
        return cls(config.notify)

    # ---- delivery ------------------------------------------------------------------

    def _send(self, event: str, rule: Rule | None = None, **extra: Any) -> None:
        payload: dict[str, Any] = {"version": FORMAT_VERSION, "event": event, "ts": round(self._clock(), 3)}
        if rule is not None:
            payload["rule"] = {**rule.to_json(), "created_at": rule.created_at}
        payload.update(extra)
        alert = Alert(kind=f"mitigation_{event}", severity="info", summary=event, payload=payload)
        for w in self.workers:
            w.put(alert)

    def _expire_loop(self) -> None:
        while not self._stop.wait(EXPIRY_CHECK_SECONDS):
            self.expire()

    def expire(self) -> None:
        """Notify and forget the held rules whose expiry has passed."""
        now = self._clock()
        with self._lock:
            gone = [r for r in self._held.values() if r.expires_at <= now]
            for r in gone:
                del self._held[r.rule_id]
        for r in gone:
            self._send("expire", r)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per receiver: sent, failed, dropped (queue full), retried."""
        return {w.name: dict(w.counts) for w in self.workers}

    def drain(self, timeout: float) -> bool:
        """Wait until every queued notification is delivered or given up."""
        deadline = time.monotonic() + timeout
        return all(w.drain(max(0.0, deadline - time.monotonic())) for w in self.workers)

    # ---- the interface ---------------------------------------------------------------

    def apply(self, rule: Rule) -> Rule:
        with self._lock:
            if rule.rule_id == 0:
                rule = rule.with_id(next(self._ids))
            old = self._held.get(rule.rule_id)
            self._held[rule.rule_id] = rule
        changed = old is None or (old.match, old.action, old.rate_pps, old.per_source) != (
            rule.match,
            rule.action,
            rule.rate_pps,
            rule.per_source,
        )
        if changed:  # a refresh of the expiry is not news
            self._send("apply", rule)
        return rule

    def withdraw(self, rule_id: int) -> None:
        with self._lock:
            rule = self._held.pop(rule_id, None)
        if rule is not None:
            self._send("withdraw", rule)

    def list(self) -> list[Rule]:
        now = self._clock()
        with self._lock:
            return [r for r in self._held.values() if r.expires_at > now]

    def stats(self) -> dict[int, RuleStats]:
        """Zeros: the notify backend enforces nothing, so nothing is hit."""
        return {r.rule_id: RuleStats(r.rule_id, 0, 0, 0) for r in self.list()}

    def set_allowlist(self, sources: Sequence[IPNetwork]) -> None:
        """Nothing to do: nothing is dropped here."""

    def set_bypass(self, on: bool) -> None:
        """The kill switch is news for the systems told of the rules."""
        self._send("bypass", bypass=on)

    def close(self) -> None:
        """Stop; what is queued is delivered first (a bounded wait)."""
        self._stop.set()
        self._timer.join(timeout=5)
        for w in self.workers:
            w.close(timeout=max(5.0, self.settings.script_timeout_seconds))


def open_backend(config: Config) -> NotifyBackend:
    """The registry's entry point (:mod:`ddos_shield.mitigate.registry`)."""
    return NotifyBackend.from_config(config)
