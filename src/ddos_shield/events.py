"""Events: every decision the shield takes, one JSON object per line.

Names and fields (later capabilities add names, never change these):

===================  =================================================================
``ready``            the data plane is attached and the loop runs (``dataplane``, ``interfaces``)
``attack_start``     a destination went over its group's limits
``attack_update``    an attack goes on (about once a second, or when its types change)
``attack_end``       the attack stayed below its exit limits for ``end_after_seconds`` (longer for pulses)
``mitigation_applied``  a rule is in force (``rule`` holds it, with ``mitigation_id``)
``mitigation_removed``  a rule was withdrawn (``reason``, final ``hits``)
``mitigation_skipped``  an attack is left unmitigated (``reason``)
``mitigation_failed``   the backend refused a rule (``reason``)
``rules_adopted``    rules found in the kernel at start and taken over (``rules``)
``baseline_loaded``  learned baselines read back at start (``path``, ``destinations``, ``learned``)
``baseline_refused`` the baselines file could not be read (``reason``); it is kept as ``kept_as``
``mitigation_pending``  a drop waits for an operator's approval (critical asset; ``rule``)
``mitigation_approved`` an operator approved a pending drop (``actor``)
``mitigation_refused``  a rule the protected-asset lists or validation forbid (``reason``)
``mitigations_reconciled``  at start: record vs backends (``kept``, ``reapplied``, ``orphaned``, ``expired``, ``adopted`` ids)
``store_failed``     the history database could not be opened (``reason``): the shield runs on without it
``stopped``          the loop ended (``detached``)
``config_reloaded``  a new configuration is in force (``actor``, ``source``: posted or file, ``saved``)
``config_refused``   a reload was refused, the running configuration stays (``actor``, ``errors``)
``api_failed``       the API could not start (``reason``); the shield protects on without it
``backend_rebuilt``  a reload changed a backend's settings (``backend``, ``enabled``; ``reapplied``,
                     ``removed``, ``orphaned`` mitigation ids)
===================  =================================================================

Attack events carry ``ts`` (Unix seconds), ``attack_id``, ``target`` (CIDR),
``group``, ``categories`` (the traffic categories over their limits: ``udp``, ``tcp_syn``, ...),
``attack_types`` (from :class:`~ddos_shield.records.AttackType`: every type
:mod:`~ddos_shield.detect.classify` has named while the attack lasted), ``pps``
and ``bps``, their peaks ``peak_pps`` and ``peak_bps``, and ``basis`` (``"static"``
thresholds or the learned ``"baseline"``); mitigation events also carry ``rule``.  Events that record an action
carry ``actor``: ``"shield"`` for the automatic path, ``"token:<name>"`` for the API,
``"cli:<user>"`` for the local command line, ``"signal:SIGHUP"`` for a reload by signal.

The sink is also the shield's internal bus: the store, the alerts and the live
views :meth:`~EventSink.subscribe` to it instead of reaching into the engine.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from ddos_shield.records import CATEGORY_NAMES, Attack, Rule

log = logging.getLogger(__name__)

Subscriber = Callable[[dict[str, Any]], None]


def attack_fields(attack: Attack) -> dict[str, Any]:
    return {
        "attack_id": attack.attack_id,
        "target": str(attack.target),
        "group": attack.group,
        "attack_types": [t.value for t in attack.types],
        "categories": [CATEGORY_NAMES[c] for c in attack.categories],  # the counters over their limits
        "pps": round(attack.pps, 1),
        "bps": round(attack.bps, 1),
        "peak_pps": round(attack.peak_pps, 1),
        "peak_bps": round(attack.peak_bps, 1),
        "started": round(attack.started, 3),
        "basis": attack.basis,
    }


def rule_fields(rule: Rule, attack: Attack | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"rule": rule.to_json(), "attack_id": rule.attack_id}
    if attack is not None:
        out.update(attack_fields(attack))
    return out


class EventSink:
    """Writes events as JSON lines and keeps the most recent ones for the live view.

    >>> import io
    >>> buf = io.StringIO()
    >>> EventSink(buf).emit("ready", 1.5, interfaces=["out0"])["event"]
    'ready'
    >>> buf.getvalue()
    '{"event": "ready", "ts": 1.5, "interfaces": ["out0"]}\\n'
    """

    def __init__(self, stream: IO[str], keep: int = 200) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(event)`` after every emitted event, on the emitting thread (keep it
        quick: queue the work).  Returns a function that unsubscribes.  An exception
        in a subscriber is logged and never reaches the engine."""
        with self._lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    @classmethod
    def open(cls, target: str) -> EventSink:
        if target == "-":
            return cls(sys.stdout)
        return cls(open(target, "a", buffering=1))

    def emit(self, event: str, ts: float, **fields: Any) -> dict[str, Any]:
        obj: dict[str, Any] = {"event": event, "ts": round(ts, 6), **fields}
        line = json.dumps(obj)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
            self.recent.append(obj)
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(obj)
            except Exception:  # a broken consumer must not stop the control loop
                log.exception("event subscriber %r failed on %s", fn, event)
        return obj

    def close(self) -> None:
        if self._stream not in (sys.stdout, sys.stderr):
            self._stream.close()
