"""Protected assets: the three lists and what each forbids.  No I/O, no clock.

* **allow-list** (*source* prefixes): never dropped nor rate-limited.  The kernel checks
  it first, so a local rule whose source prefix merely *covers* an allowed source is
  harmless; a rule aimed only at allowed sources is pointless and refused.  Upstream
  (BGP) filters know nothing of the allow-list, so there any overlap is refused.
* **never-block list** (*destination* prefixes): no drop rule, blackhole or Flowspec
  rule may cover them.  A rule whose destination is wider is narrowed to the pieces
  of its prefix outside the list (when they are few); one whose destination lies
  inside, or that has no destination and goes upstream, is refused.  A local drop of
  attacking *sources* (no destination field) is not a rule on a destination and stays
  allowed: it spares a never-block host the attackers' traffic as well.
* **critical assets** (*destination* prefixes): never dropped automatically.  The
  policy rate-limits instead and files the drop as pending until an operator approves.

>>> from ddos_shield.records import Action, Match, Rule, as_network
>>> nb = [as_network("203.0.113.53/32")]
>>> r = Rule(Match(proto=17, dst=as_network("203.0.113.52/31")), Action.DROP, 0.0)
>>> [str(x.match.dst) for x in narrow(r, nb, upstream=False)]
['203.0.113.52/32']
"""

from __future__ import annotations

from dataclasses import replace

from ddos_shield.records import Action, IPNetwork, Match, Rule

#: a rule is narrowed into at most this many pieces; wider, it is refused
MAX_PIECES = 8


class Refused(ValueError):
    """A rule the protected-asset lists forbid; the message says which list and prefix."""


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _inside(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]


def check_allowlist(match: Match, allow: list[IPNetwork], *, upstream: bool) -> None:
    """Raise :class:`Refused` when ``match`` would aim at allow-listed sources."""
    if match.src is None:
        return
    for net in allow:
        if _inside(match.src, net):
            raise Refused(f"source {match.src} is on the allow-list ({net}): never dropped nor rate-limited")
        if upstream and _overlaps(match.src, net):
            raise Refused(f"source {match.src} covers allow-listed {net}, and upstream filters cannot spare it")


def narrow(rule: Rule, never_block: list[IPNetwork], *, upstream: bool) -> list[Rule]:
    """``rule`` itself, or the rules that cover its destination minus the never-block
    prefixes; raises :class:`Refused` when nothing sensible is left.  Rate limits and
    observe rules on local backends are not blocks and pass unchanged."""
    if not never_block or (rule.action != Action.DROP and not upstream):
        return [rule]
    dst = rule.match.dst
    if dst is None:
        if upstream:
            raise Refused("an upstream rule without a destination would cover the never-block list")
        return [rule]
    hit = [nb for nb in never_block if _overlaps(dst, nb)]
    if not hit:
        return [rule]
    for nb in hit:
        if _inside(dst, nb):
            raise Refused(f"destination {dst} is on the never-block list ({nb})")
    pieces = [dst]
    for nb in hit:
        nxt: list[IPNetwork] = []
        for p in pieces:
            if _inside(nb, p):
                nxt += list(p.address_exclude(nb))  # type: ignore[arg-type]
            elif not _overlaps(p, nb):
                nxt.append(p)
        pieces = nxt
    if not pieces or len(pieces) > MAX_PIECES:
        names = ", ".join(str(n) for n in hit)
        raise Refused(f"destination {dst} covers never-block {names}; narrowing it would take {len(pieces)} rules")
    return [replace(rule, match=replace(rule.match, dst=p)) for p in sorted(pieces)]


def is_critical(target: IPNetwork | None, critical: list[IPNetwork]) -> bool:
    """Whether traffic to ``target`` (None: any destination) may reach a critical asset."""
    if target is None:
        return bool(critical)
    return any(_overlaps(target, c) for c in critical)
