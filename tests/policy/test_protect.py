"""Protected-asset lists: what each forbids, narrowing around the never-block list."""

from __future__ import annotations

import pytest

from ddos_shield.policy.protect import Refused, check_allowlist, is_critical, narrow
from ddos_shield.records import Action, Match, Rule, as_network

ALLOW = [as_network("198.51.100.10/32"), as_network("2001:db8:100::10/128")]
NEVER = [as_network("203.0.113.53/32"), as_network("2001:db8:113::53/128")]


def rule(action: Action = Action.DROP, **kw: str | int) -> Rule:
    m = Match(**{k: as_network(v) if k in ("src", "dst") else v for k, v in kw.items()})  # type: ignore[arg-type]
    return Rule(m, action, 0.0, rate_pps=10 if action == Action.RATE_LIMIT else 0)


ALLOWLIST = [
    # (source, upstream, refused)
    # aimed only at allowed sources
    ("198.51.100.10/32", False, True),
    ("2001:db8:100::10/128", True, True),
    # covering an allowed source: the kernel spares it locally, upstream cannot
    ("198.51.100.0/24", False, False),
    ("198.51.100.0/24", True, True),
    # elsewhere, other family
    ("198.18.0.0/15", True, False),
    ("2001:2::/48", False, False),
]


@pytest.mark.parametrize(("src", "upstream", "refused"), ALLOWLIST)
def test_allowlist(src: str, upstream: bool, refused: bool) -> None:
    if refused:
        with pytest.raises(Refused, match="allow"):
            check_allowlist(Match(src=as_network(src)), ALLOW, upstream=upstream)
    else:
        check_allowlist(Match(src=as_network(src)), ALLOW, upstream=upstream)


NARROW = [
    # (rule, upstream, destinations after narrowing, or None when refused)
    # inside the list: refused
    (rule(dst="203.0.113.53/32"), False, None),
    (rule(dst="2001:db8:113::53/128"), True, None),
    # covering it: the rest of the prefix
    (rule(dst="203.0.113.52/30"), False, ["203.0.113.52/32", "203.0.113.54/31"]),
    # too wide to narrow into few rules
    (rule(dst="203.0.0.0/16"), False, None),
    # elsewhere: unchanged
    (rule(dst="203.0.113.10/32"), True, ["203.0.113.10/32"]),
    # rate limits and source drops stay local and pass
    (rule(Action.RATE_LIMIT, dst="203.0.113.53/32"), False, ["203.0.113.53/32"]),
    (rule(src="198.18.0.0/15"), False, [None]),
    # upstream without a destination would cover everything
    (rule(src="198.18.0.0/15"), True, None),
    # upstream rate limits (Flowspec traffic-rate) still may not cover the list
    (rule(Action.RATE_LIMIT, dst="203.0.113.53/32"), True, None),
]


@pytest.mark.parametrize(("r", "upstream", "want"), NARROW)
def test_never_block(r: Rule, upstream: bool, want: list[str | None] | None) -> None:
    if want is None:
        with pytest.raises(Refused, match="never-block"):
            narrow(r, NEVER, upstream=upstream)
        return
    got = narrow(r, NEVER, upstream=upstream)
    assert [str(x.match.dst) if x.match.dst else None for x in got] == want
    assert all(x.action == r.action for x in got)


def test_critical() -> None:
    crit = [as_network("203.0.113.64/28")]
    assert is_critical(as_network("203.0.113.70/32"), crit)
    assert is_critical(as_network("203.0.113.0/24"), crit)  # a prefix attack that includes it
    assert not is_critical(as_network("203.0.113.10/32"), crit)
    assert not is_critical(as_network("2001:db8:113::/64"), crit)
