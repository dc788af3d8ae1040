"""The shield's own record of its mitigations, kept on disk across restarts.

One :class:`Entry` per mitigation the engine holds (in force, pending approval, or
decided in dry-run), keyed by mitigation id, which is also the rule id every backend
enforces it under (the engine allocates ids for all backends, so they never collide).
After a restart the engine compares this record with what the backends read back
(:meth:`~ddos_shield.mitigate.base.Backend.list`) and reconciles the two.

The file is small versioned JSON (``{"version": 1, "next_id": N, "mitigations": [...]}``),
written whole to a temporary file, flushed to disk and renamed over the old one, so a
crash at any moment leaves either the old record or the new one.  A format of a later
version is refused rather than misread; malformed entries are counted and skipped.

Writing the whole record costs milliseconds to hundreds of them (10,000 mitigations), so
the engine writes it once a tick; what changes in between goes first to a journal beside
it (``mitigations.json.journal``: one JSON line per change, ``{"put": entry}`` or
``{"pop": id}``), written before the change reaches a backend.  A shield killed between
enforcing a rule and the next snapshot therefore finds the rule in its record at the
restart instead of withdrawing it as an orphan (and one killed while withdrawing finds it
gone, not to be put back).  The journal is written without fsync: it has to survive the
process, not the machine -- the kernel's rules do not survive a power loss either, and
a BGP speaker's routes go with its session.  Loading replays it over the snapshot; a
torn last line is counted as malformed and skipped; a snapshot removes it.

>>> import tempfile, pathlib
>>> from ddos_shield.records import Action, Match, Rule, as_network
>>> p = pathlib.Path(tempfile.mkdtemp()) / "mitigations.json"
>>> led = Ledger(p)
>>> e = led.add(Entry(Rule(Match(src=as_network("198.18.0.1/32")), Action.DROP, 2e9, rule_id=led.new_id()),
...                   backend="xdp", state="active", actor="cli:alice", reason="test", origin="manual"))
>>> led.save(); [x.rule.rule_id for x in Ledger.load(p).entries.values()]
[1]
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ddos_shield.errors import ShieldError
from ddos_shield.records import Rule

log = logging.getLogger(__name__)

#: version of the file format (not of the release); bump with a migration step in :meth:`Ledger.load`
FORMAT_VERSION = 1
FILE_NAME = "mitigations.json"
JOURNAL_SUFFIX = ".journal"

State = Literal["active", "pending", "dry_run"]
Origin = Literal["auto", "manual"]
STATES: tuple[State, ...] = ("active", "pending", "dry_run")
ORIGINS: tuple[Origin, ...] = ("auto", "manual")


def journal_of(path: Path) -> Path:
    """The journal beside the record ``path``."""
    return path.with_name(path.name + JOURNAL_SUFFIX)


def remove_record(path: Path) -> list[Path]:
    """Delete a record (its snapshot and journal); the files removed."""
    gone = [p for p in (path, journal_of(path)) if p.exists()]
    for p in gone:
        p.unlink()
    return gone


@dataclass
class Entry:
    """One mitigation.  ``rule.rule_id`` is its mitigation id; ``rule.reason`` says what
    the rule is, ``reason`` why it was taken (the operator's words or the policy's)."""

    rule: Rule
    backend: str
    state: State
    actor: str
    reason: str
    origin: Origin
    #: escalation-ladder step that produced it ("manual" for an operator's rule)
    step: str = ""
    #: pending entries: the interim rule (same match) that approval replaces, 0 if none
    replaces: int = 0
    #: verification after enforcing: traffic at the target before and after, and whether it held
    verify: dict[str, Any] = field(default_factory=dict)
    applied_at: float = 0.0

    @property
    def mitigation_id(self) -> int:
        return self.rule.rule_id

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": {**self.rule.to_json(), "created_at": round(self.rule.created_at, 3)},
            "backend": self.backend,
            "state": self.state,
            "actor": self.actor,
            "reason": self.reason,
            "origin": self.origin,
            "step": self.step,
            "replaces": self.replaces,
            "verify": self.verify,
            "applied_at": round(self.applied_at, 3),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        state, origin = data.get("state"), data.get("origin")
        if state not in STATES:
            raise ValueError(f"state: expected one of {STATES}, got {state!r}")
        if origin not in ORIGINS:
            raise ValueError(f"origin: expected one of {ORIGINS}, got {origin!r}")
        rule = Rule.from_json(data["rule"])
        if rule.rule_id <= 0:
            raise ValueError(f"rule.mitigation_id: expected a positive id, got {rule.rule_id}")
        return cls(
            rule=rule,
            backend=str(data["backend"]),
            state=state,
            actor=str(data.get("actor", "")),
            reason=str(data.get("reason", "")),
            origin=origin,
            step=str(data.get("step", "")),
            replaces=int(data.get("replaces", 0)),
            verify=dict(data.get("verify") or {}),
            applied_at=float(data.get("applied_at", 0.0)),
        )


class Ledger:
    """See the module docstring.  Not thread-safe: the engine holds its lock."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.journal_path = journal_of(path) if path is not None else None
        self.entries: dict[int, Entry] = {}
        self.next_id = 1
        #: entries of the file or lines of the journal that could not be read (counted, skipped)
        self.malformed = 0

    @property
    def on_disk(self) -> bool:
        """Whether a record (a snapshot or a journal) was written before."""
        return any(p is not None and p.exists() for p in (self.path, self.journal_path))

    @classmethod
    def load(cls, path: Path | None) -> Ledger:
        led = cls(path)
        if path is None:
            return led
        if not path.exists():
            led._replay()
            return led
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ShieldError(f"{path}: cannot read the mitigation record: {e}") from e
        version = data.get("version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise ShieldError(f"{path}: mitigation record format {version!r}, this shield reads {FORMAT_VERSION}")
        led.next_id = max(1, int(data.get("next_id", 1)))
        for i, raw in enumerate(data.get("mitigations", [])):
            try:
                entry = Entry.from_json(raw)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                led.malformed += 1
                log.warning("%s: mitigations[%d] skipped: %s", path, i, err)
                continue
            led.entries[entry.mitigation_id] = entry
            led.next_id = max(led.next_id, entry.mitigation_id + 1)
        led._replay()
        return led

    def _replay(self) -> None:
        """Apply the journal's changes, if any, in order, over what the snapshot holds."""
        journal = self.journal_path
        if journal is None or not journal.exists():
            return
        try:
            lines = journal.read_text().splitlines()
        except OSError as e:
            raise ShieldError(f"{journal}: cannot read the mitigation journal: {e.strerror or e}") from e
        for i, line in enumerate(lines, 1):
            try:
                op = json.loads(line)
                if "put" in op:
                    entry = Entry.from_json(op["put"])
                    self.entries[entry.mitigation_id] = entry
                    self.next_id = max(self.next_id, entry.mitigation_id + 1)
                else:
                    self.entries.pop(int(op["pop"]), None)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                self.malformed += 1  # a torn last line after a crash, or damage
                log.warning("%s:%d: skipped: %s", journal, i, err)

    def new_id(self) -> int:
        rid = self.next_id
        self.next_id += 1
        return rid

    def reserve(self, ids: list[int]) -> None:
        """Never hand out these ids (found in a backend) again."""
        if ids:
            self.next_id = max(self.next_id, max(ids) + 1)

    def add(self, entry: Entry) -> Entry:
        """Record ``entry`` (new, or changed: it replaces the one of its id), journaled."""
        self.entries[entry.mitigation_id] = entry
        self.reserve([entry.mitigation_id])
        self._log({"put": entry.to_json()})
        return entry

    def get(self, mitigation_id: int) -> Entry:
        """Raises KeyError for an unknown id."""
        try:
            return self.entries[mitigation_id]
        except KeyError:
            raise KeyError(f"no mitigation {mitigation_id}") from None

    def pop(self, mitigation_id: int) -> Entry | None:
        entry = self.entries.pop(mitigation_id, None)
        if entry is not None:
            self._log({"pop": mitigation_id})
        return entry

    def _log(self, op: dict[str, Any]) -> None:
        """Append one change to the journal before the caller enforces it: a single
        O_APPEND write, in the kernel's hands when this returns (no fsync: see the module
        docstring), and no file left open between changes."""
        if self.journal_path is None:
            return
        line = (json.dumps(op, separators=(",", ":")) + "\n").encode()
        try:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as e:
            raise ShieldError(f"{self.journal_path}: cannot write the mitigation journal: {e.strerror or e}") from e

    def refresh(self, rule: Rule) -> None:
        e = self.entries.get(rule.rule_id)
        if e is not None:
            e.rule = replace(e.rule, expires_at=rule.expires_at)

    def save(self) -> None:
        """Write the record atomically (no-op without a path)."""
        if self.path is None:
            return
        data = {
            "version": FORMAT_VERSION,
            "next_id": self.next_id,
            "mitigations": [e.to_json() for e in sorted(self.entries.values(), key=lambda e: e.mitigation_id)],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                # dumps, not dump: only the one-shot encoder is the C one (5x faster on a big record)
                f.write(json.dumps(data, separators=(",", ":")))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            # the snapshot holds every change journaled so far
            if self.journal_path is not None:
                self.journal_path.unlink(missing_ok=True)
        except OSError as e:
            raise ShieldError(f"{self.path}: cannot write the mitigation record: {e.strerror or e}") from e
