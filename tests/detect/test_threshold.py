"""Thresholds: the most specific group wins; pps, bps and new-flow limits; learned limits
replace static ones after learning; targets under attack are held to exit limits."""

from __future__ import annotations

import numpy as np
import pytest

from ddos_shield.config import parse
from ddos_shield.detect.baseline import Baselines
from ddos_shield.detect.threshold import BASELINE_TICKS, ThresholdDetector
from ddos_shield.errors import ConfigError
from ddos_shield.records import Category, RateBatch, addr_bytes, as_network, empty_rates

UDP = Category.UDP

GROUPS = """
protected = ["203.0.113.0/24", "198.51.100.0/24", "2001:db8:113::/48"]
[[groups]]
name = "net"
prefixes = ["203.0.113.0/24", "2001:db8:113::/48"]
[groups.thresholds]
udp = { pps = 1000 }
[[groups]]
name = "web"
prefixes = ["203.0.113.0/28", "2001:db8:113:1::/64"]
[groups.thresholds]
udp = { pps = 5000 }
[[groups]]
name = "host"
prefixes = ["203.0.113.10/32"]
[groups.thresholds]
udp = { pps = 100000, flows = 2000 }
[[groups]]
name = "default"
[groups.thresholds]
udp = { pps = 3000, bps = 8000000 }
"""


def rates(rows: list[tuple[str, float]], *, bps: float = 0.0, flows: float = 0.0) -> RateBatch:
    r = empty_rates(len(rows))
    for i, (dst, pps) in enumerate(rows):
        r["dst"][i] = list(addr_bytes(dst))
        r["pps"][i, UDP] = pps
        r["bps"][i, UDP] = bps
        r["flows"][i, UDP] = flows
    return r


MOST_SPECIFIC = [
    # (destination, UDP pps, expected group if over, else None)
    # the /32 inside the /28 inside the /24
    ("203.0.113.10", 90_000, None),
    ("203.0.113.10", 110_000, "host"),
    # the /28 inside the /24
    ("203.0.113.5", 4000, None),
    ("203.0.113.5", 6000, "web"),
    # the /24 only
    ("203.0.113.100", 1500, "net"),
    # IPv6: the /64 inside the /48, and the /48 only
    ("2001:db8:113:1::", 4000, None),
    ("2001:db8:113:2::", 4000, "net"),
    # no group: default
    ("198.51.100.7", 2000, None),
    ("198.51.100.7", 4000, "default"),
]


@pytest.mark.parametrize(("dst", "pps", "group"), MOST_SPECIFIC)
def test_most_specific_group_wins(dst: str, pps: float, group: str | None) -> None:
    det = ThresholdDetector(parse(GROUPS))
    obs = det.observe(rates([(dst, pps)]), now=1.0)
    assert [o.group for o in obs] == ([group] if group else [])


def test_bits_and_new_flows_have_their_own_limits() -> None:
    det = ThresholdDetector(parse(GROUPS))
    [o] = det.observe(rates([("198.51.100.7", 100)], bps=9e6), now=1.0)
    assert o.categories == (UDP,) and o.bps == 9e6
    # 3,000 new UDP flows a second at the host, far under its packet limit
    [o] = det.observe(rates([("203.0.113.10", 3000)], flows=3000), now=1.0)
    assert o.group == "host" and o.flows == 3000
    assert det.observe(rates([("203.0.113.10", 3000)], flows=1500), now=1.0) == []


def test_flow_limits_only_where_flows_are_measured() -> None:
    with pytest.raises(ConfigError, match=r"groups\[0\].thresholds: .*tcp.flows: new flows are measured only"):
        parse('protected = ["203.0.113.0/24"]\n[[groups]]\nname = "a"\n[groups.thresholds]\ntcp = { flows = 5 }\n')


def test_targets_under_attack_are_held_to_the_exit_limit() -> None:
    det = ThresholdDetector(parse(GROUPS))
    r = rates([("198.51.100.7", 2000)])  # under 3,000, over half of it
    assert det.observe(r, now=1.0) == []
    [o] = det.observe(r, now=1.0, active={as_network("198.51.100.7/32")})
    assert o.group == "default"
    assert det.observe(rates([("198.51.100.7", 1400)]), now=1.0, active={as_network("198.51.100.7/32")}) == []


# ---- learned limits ----------------------------------------------------------------------

BASELINE = """
protected = ["203.0.113.0/24"]
[baseline]
learning_seconds = 30
adapt_seconds = 600
[[groups]]
name = "default"
[groups.thresholds]
udp = { pps = 20000 }
[groups.baseline]
sensitivity = 6
[groups.baseline.floor]
udp = { pps = 500 }
[[groups]]
name = "static"
prefixes = ["203.0.113.128/25"]
[groups.thresholds]
udp = { pps = 20000 }
[groups.baseline]
sensitivity = 0
"""
BUSY, SMALL, FIXED = "203.0.113.10", "203.0.113.20", "203.0.113.200"


def learned_detector() -> ThresholdDetector:
    """A busy host at 30,000 +- 3,000 pps, a small one at 20 +- 5, and one in a static group."""
    cfg = parse(BASELINE)
    b = Baselines(cfg.baseline)
    rng = np.random.default_rng(5)
    t = 1_700_000_000.0
    for _ in range(400):
        t += 0.1
        r = rates([(BUSY, rng.normal(30_000, 3000)), (SMALL, max(0, rng.normal(20, 5))), (FIXED, 10)])
        b.learn(r, t)
    return ThresholdDetector(cfg, b)


JUDGED = [
    # (destination, UDP pps, over?, basis)
    # busy host: its normal peak is over the static 20,000 but within its baseline
    (BUSY, 40_000, False, None),
    (BUSY, 60_000, True, "baseline"),
    # small host: protected far under the static threshold, and not under the floor
    (SMALL, 400, False, None),
    (SMALL, 2000, True, "baseline"),
    # a group with sensitivity 0 keeps its static thresholds
    (FIXED, 2000, False, None),
    (FIXED, 25_000, True, "static"),
    # a destination never seen: static
    ("203.0.113.30", 25_000, True, "static"),
]


@pytest.mark.parametrize(("dst", "pps", "over", "basis"), JUDGED)
def test_learned_limits(dst: str, pps: float, over: bool, basis: str | None) -> None:
    det = learned_detector()
    obs = [det.observe(rates([(dst, pps)]), now=1_700_000_041.0 + 0.1 * i) for i in range(BASELINE_TICKS)]
    assert [o.basis for o in obs[-1]] == ([basis] if over else [])
    if basis == "baseline":  # a learned limit needs a few ticks in a row; a static one, one
        assert obs[0] == []


def test_a_lone_burst_over_a_learned_limit_is_not_an_attack() -> None:
    det = learned_detector()
    t = 1_700_000_041.0
    for i in range(10):  # over, over, under, ...
        pps = 2000 if i % 3 != 2 else 20
        assert det.observe(rates([(SMALL, pps)]), now=t + 0.1 * i) == []


@pytest.mark.parametrize("attacked", [(), (BUSY, SMALL)])
def test_rows_are_judged_together_as_each_alone(attacked: tuple[str, ...]) -> None:
    # learned, static and unknown destinations, some under attack (exit limits), in one batch
    rows = [(BUSY, 45_000), (SMALL, 2000), (FIXED, 25_000), ("203.0.113.30", 25_000), ("203.0.113.40", 100)]
    active = {as_network(f"{a}/32") for a in attacked}
    together, alone = learned_detector(), {dst: learned_detector() for dst, _ in rows}
    for i in range(BASELINE_TICKS + 1):
        now = 1_700_000_041.0 + 0.1 * i
        got = together.observe(rates(rows), now=now, active=active)
        want = [o for dst, pps in rows for o in alone[dst].observe(rates([(dst, pps)]), now=now, active=active)]
        assert got == want
    assert {str(o.target) for o in got} == {f"{d}/32" for d in (SMALL, FIXED, "203.0.113.30", *attacked)}
