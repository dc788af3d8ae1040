"""The service's narrow view of a running shield.

The API reads and steers the shield only through :class:`ShieldView`: the engine's
public methods (``snapshot``, ``traffic``, ``mitigations``, the manual-control calls,
``reload``), the event bus, the attack log that follows it, and the store's history.  Nothing here reaches
into the engine's internals, so the engine can change inside without the API noticing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ddos_shield import config as configmod
from ddos_shield.api.attacks import AttackLog
from ddos_shield.config import Config
from ddos_shield.engine import RELOADABLE_BACKENDS
from ddos_shield.errors import ConfigError, ShieldError
from ddos_shield.events import EventSink
from ddos_shield.records import Action, Match, Rule
from ddos_shield.store.history import History

#: settings the running shield took at start and cannot change in place: a reload that
#: changes one is refused (restart the shield for it), so nobody believes a change took
#: effect when it did not
RESTART_ONLY = (
    "shield.interfaces",
    "shield.dataplane",
    "shield.xdp_mode",
    "shield.pin_dir",
    "shield.state_dir",
    "shield.dry_run",
    "shield.interval_ms",
    "shield.ipv6_prefix_len",
    "shield.detach_on_stop",
    # the enforcement backends are built at start, except BGP's: a reload rebuilds it
    # (Engine.reload), so "bgp" may come or go in mitigation.backends and [bgp] may change
    "mitigation.backends",
    "events",
    "sources",
    "api",
    # the history database is opened once; its retention and capture size follow a reload
    "store.enabled",
    "store.backend",
    "store.path",
    "store.dsn",
    "store.queue_size",
)


#: seconds a status request waits for a tick to release the engine before it answers
#: with the previous snapshot
QUICK_WAIT = 0.01


class EngineLike(Protocol):
    """What the view needs of the engine (its public surface)."""

    config: Config

    def snapshot(self) -> dict[str, Any]: ...
    def try_snapshot(self, timeout: float) -> dict[str, Any] | None: ...
    def traffic(self, top: int = 10) -> dict[str, Any]: ...
    def reload(self, config: Config, *, actor: str = ...) -> None: ...
    def mitigations(self) -> list[dict[str, Any]]: ...
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
    ) -> Rule: ...
    def approve(self, mitigation_id: int, *, actor: str) -> Rule: ...
    def withdraw_mitigation(self, mitigation_id: int, *, actor: str, reason: str) -> None: ...


class ReloadRefused(ValueError):
    """A configuration that is invalid or needs a restart; ``errors`` are
    ``file:line: field: problem`` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def restart_needed(old: Config, new: Config) -> list[str]:
    """The :data:`RESTART_ONLY` settings that differ between two configurations."""
    out = []
    for f in RESTART_ONLY:
        a, b = _get(old, f), _get(new, f)
        if f == "mitigation.backends":
            a, b = ([k for k in x if k not in RELOADABLE_BACKENDS] for x in (a, b))
        if a != b:
            out.append(f)
    return out


class ShieldView:
    """See the module docstring.  ``config_path`` is the file ``reload`` re-reads."""

    def __init__(
        self,
        engine: EngineLike,
        events: EventSink,
        *,
        config_path: str | None = None,
        history: History | None = None,
    ) -> None:
        self._engine = engine
        #: the store's history (attacks, mitigations, audit log, captures), when kept
        self.history = history
        self._events = events
        self.config_path = config_path
        self.started = time.time()
        self.attacks = AttackLog()
        self._quick: tuple[dict[str, Any], float] | None = None
        self._quick_lock = threading.Lock()
        self.quick_snapshot()  # so that a quick reader never finds none
        self._unsubscribe = events.subscribe(self.attacks)

    def close(self) -> None:
        self._unsubscribe()

    # ---- reading ------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._engine.config

    def snapshot(self) -> dict[str, Any]:
        return self._engine.snapshot()

    def quick_snapshot(self, wait: float = QUICK_WAIT) -> tuple[dict[str, Any], float]:
        """A snapshot and the time it was taken, within about ``wait`` seconds: when a
        tick holds the engine longer (a flood makes ticks long), the last one taken."""
        snap = self._engine.try_snapshot(wait)
        with self._quick_lock:
            if snap is not None:
                self._quick = (snap, time.time())
            elif self._quick is None:
                self._quick = (self._engine.snapshot(), time.time())
            return self._quick

    def traffic(self, top: int) -> dict[str, Any]:
        return self._engine.traffic(top)

    def mitigations(self) -> list[dict[str, Any]]:
        return self._engine.mitigations()

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        return list(self._events.recent)[-limit:]

    def subscribe(self, fn: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        return self._events.subscribe(fn)

    def emit(self, event: str, **fields: Any) -> None:
        self._events.emit(event, time.time(), **fields)

    # ---- steering (the engine's manual control) ------------------------------------

    def add_mitigation(
        self,
        match: Match,
        action: Action,
        ttl: float,
        *,
        rate_pps: int,
        backend: str | None,
        actor: str,
        reason: str,
        per_source: bool = False,
    ) -> Rule:
        return self._engine.add_mitigation(
            match, action, ttl, rate_pps=rate_pps, per_source=per_source, backend=backend, actor=actor, reason=reason
        )

    def approve(self, mitigation_id: int, *, actor: str) -> Rule:
        return self._engine.approve(mitigation_id, actor=actor)

    def withdraw(self, mitigation_id: int, *, actor: str, reason: str) -> None:
        self._engine.withdraw_mitigation(mitigation_id, actor=actor, reason=reason)

    # ---- configuration ---------------------------------------------------------------

    def validate(self, text: str, name: str = "<posted>") -> Config:
        """Parse and validate whole; :class:`ReloadRefused` with every problem otherwise."""
        try:
            new = configmod.parse(text, name)
        except ConfigError as e:
            raise ReloadRefused(str(e).splitlines()) from e
        changed = restart_needed(self.config, new)
        if changed:
            raise ReloadRefused(
                [f"{name}: {f}: differs from the running shield's and takes effect only at a restart" for f in changed]
            )
        return new

    def reload(self, text: str | None, *, actor: str, save: bool = True) -> dict[str, Any]:
        """Swap in a new configuration at once: ``text`` (posted), or the file again when
        None.  The running configuration stays on any error; the outcome is an event."""
        source = "posted" if text is not None else "file"
        try:
            if text is None:
                if not self.config_path:
                    raise ReloadRefused(["the shield was started without a configuration file to reload"])
                try:
                    text = Path(self.config_path).read_text()
                except OSError as e:
                    raise ReloadRefused([f"{self.config_path}: cannot read: {e.strerror}"]) from e
                new = self.validate(text, self.config_path)
            else:
                new = self.validate(text)
        except ReloadRefused as e:
            self.emit("config_refused", actor=actor, source=source, errors=e.errors)
            raise
        try:
            self._engine.reload(new, actor=actor)
        except ShieldError as e:  # a backend the new settings need could not be opened
            self.emit("config_refused", actor=actor, source=source, errors=[str(e)])
            raise ReloadRefused([str(e)]) from e
        saved = None
        if source == "posted" and save and self.config_path:
            _replace_file(Path(self.config_path), text)
            saved = self.config_path
        self.emit("config_reloaded", actor=actor, source=source, saved=saved)
        return {"reloaded": True, "source": source, "saved": saved}


def _replace_file(path: Path, text: str) -> None:
    """Write the new configuration beside the old and rename it over, keeping the
    file's mode: a crash midway leaves the old file whole."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    with contextlib.suppress(OSError):
        tmp.chmod(path.stat().st_mode & 0o7777)
    tmp.replace(path)
