"""The one enforcement interface every backend implements.

A backend enforces :class:`~ddos_shield.records.Rule` objects: ``apply`` installs a rule
(or, for a rule whose ``rule_id`` it already holds, updates it in place -- that is how
the engine refreshes expiry), ``withdraw`` removes one, ``list`` reads back what is
really enforced (so the engine can adopt it after a restart) and ``stats`` returns hit
counters.  A backend also holds the allow-list (sources it must never drop) and the
kill switch.

Backends enforce expiry themselves: a rule past ``expires_at`` stops matching even if
nobody withdraws it.

Rule ids: the engine allocates one id space for all its backends and hands each rule
to ``apply`` with its ``rule_id`` already set; a backend takes an id it does not hold
yet as the new rule's id (and never hands that id out itself afterwards), and
``list`` returns rules under those ids, so the engine can reconcile them with its
record after a restart.  ``rule_id == 0`` still means "allocate one yourself".

Example::

    >>> from ddos_shield.mitigate.memory import MemoryBackend
    >>> from ddos_shield.records import Action, Match, Rule, as_network
    >>> b = MemoryBackend()
    >>> r = b.apply(Rule(Match(src=as_network("198.18.0.1/32")), Action.DROP, expires_at=2e9))
    >>> [x.rule_id for x in b.list()] == [r.rule_id]
    True
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from ddos_shield.records import IPNetwork, Rule, RuleStats


class Backend(abc.ABC):
    """An enforcement point (see the module docstring)."""

    #: Short name used in events, logs and configuration.
    name: str = ""

    @abc.abstractmethod
    def apply(self, rule: Rule) -> Rule:
        """Enforce ``rule``; returns it with ``rule_id`` set.  A ``rule_id`` this
        backend already holds updates that rule (match, action, expiry) in place."""

    def apply_many(self, rules: Sequence[Rule]) -> list[Rule]:
        """:meth:`apply` each rule, in order (backends that can change many rules in one
        kernel transaction override this).  A refused rule raises, as :meth:`apply`
        does; the rules before it stay applied."""
        return [self.apply(r) for r in rules]

    @abc.abstractmethod
    def withdraw(self, rule_id: int) -> None:
        """Stop enforcing a rule.  Unknown ids are ignored (withdrawal is idempotent)."""

    @abc.abstractmethod
    def list(self) -> list[Rule]:
        """Every rule this backend enforces now, read back from the enforcement point."""

    @abc.abstractmethod
    def stats(self) -> dict[int, RuleStats]:
        """Hit counters by rule id."""

    @abc.abstractmethod
    def set_allowlist(self, sources: Sequence[IPNetwork]) -> None:
        """Replace the allow-list: these sources are never dropped nor rate-limited."""

    @abc.abstractmethod
    def set_bypass(self, on: bool) -> None:
        """The operator's kill switch: when on, nothing is dropped."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release user-space resources; enforcement stays in place."""

    def shutdown(self) -> None:
        """Take the backend out of service: withdraw every rule it enforces, then close
        it (a reload that turns it off).  Backends that can do it at once override this."""
        for r in self.list():
            self.withdraw(r.rule_id)
        self.close()
