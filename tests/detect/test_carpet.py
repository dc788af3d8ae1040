"""Carpet bombing on hand-made rate batches: the spread over a prefix, never a host twice."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import numpy as np
import pytest

from ddos_shield.config import parse
from ddos_shield.detect import fingerprint
from ddos_shield.detect.carpet import CarpetDetector
from ddos_shield.detect.classify import Classifier
from ddos_shield.detect.lifecycle import AttackTracker
from ddos_shield.detect.threshold import ThresholdDetector
from ddos_shield.policy import Apply, Policy
from ddos_shield.records import (
    Action,
    AttackType,
    Category,
    RateBatch,
    addr_bytes,
    as_network,
    empty_rates,
    empty_traffic,
)
from tests.traffic import packets, spoofed_v4

CONFIG = """
protected = ["203.0.113.0/24", "198.51.100.0/24", "2001:db8:100::/48"]
[[groups]]
name = "default"
[groups.thresholds]
udp = { pps = 20000 }
[groups.carpet]
min_destinations = 8
[groups.carpet.thresholds]
udp = { pps = 40000 }
syn = { pps = 20000 }
"""


def rates(dsts: list[str], pps: float | list[float], cat: Category = Category.UDP, size: int = 100) -> RateBatch:
    r = empty_rates(len(dsts))
    r["dst"] = [list(addr_bytes(d)) for d in dsts]
    r["pps"][:, cat] = pps
    r["bps"][:, cat] = np.asarray(pps) * size * 8
    return r


def spread(n: int, each: float, net: str = "203.0.113", cat: Category = Category.UDP) -> RateBatch:
    return rates([f"{net}.{i}" for i in range(1, n + 1)], each, cat)


def observe(batch: RateBatch, config: str = CONFIG, hosts=()):  # type: ignore[no-untyped-def]
    return CarpetDetector(parse(config)).observe(batch, now=5.0, hosts=hosts)


# ---- what is a carpet --------------------------------------------------------------------------


def test_thin_spread_over_a_24_is_one_prefix_attack() -> None:
    obs = observe(spread(200, 300.0))  # 60 kpps in all, 300 pps per address
    assert [(str(o.target), o.categories, o.extra_types) for o in obs] == [
        ("203.0.113.0/24", (Category.UDP,), (AttackType.CARPET_BOMBING,))
    ]
    assert obs[0].pps == pytest.approx(60000) and obs[0].group == "default" and obs[0].now == 5.0
    assert obs[0].limit_pps == 40000  # the prefix's limit, the evidence alerts show
    # the per-destination detector sees nothing at all
    assert ThresholdDetector(parse(CONFIG)).observe(spread(200, 300.0), now=5.0) == []


@pytest.mark.parametrize(
    ("batch", "why"),
    [
        (spread(200, 150.0), "sum under the prefix limit"),
        (spread(6, 8000.0), "fewer destinations than min_destinations"),
        (np.concatenate([spread(100, 300.0), spread(100, 300.0, net="198.51.100")]), "split over two /24s"),
    ],
)
def test_not_a_carpet(batch: RateBatch, why: str) -> None:
    assert observe(batch) == [], why


def test_one_busy_host_is_not_a_spread() -> None:
    batch = rates([f"203.0.113.{i}" for i in range(1, 11)], [19000.0] + [3000.0] * 9)  # 46 k, 41 % on one host
    assert observe(batch) != []
    assert observe(batch, CONFIG.replace("min_destinations = 8", "min_destinations = 8\nmax_host_share = 0.25")) == []


def test_each_category_against_its_own_limit() -> None:
    batch = np.concatenate([spread(100, 500.0), spread(100, 50.0, cat=Category.TCP_SYN)])
    assert [o.categories for o in observe(batch)] == [(Category.UDP,)]
    batch = np.concatenate([spread(100, 500.0), spread(100, 250.0, cat=Category.TCP_SYN)])
    (o,) = observe(batch)
    assert o.categories == (Category.TCP_SYN, Category.UDP) and o.pps == pytest.approx(75000)


def test_rows_outside_the_protected_prefixes_are_ignored() -> None:
    assert observe(spread(200, 300.0, net="192.0.2")) == []


def test_disabled_group_is_not_summed() -> None:
    off = CONFIG.replace("min_destinations = 8", "min_destinations = 8\nenabled = false")
    assert observe(spread(200, 300.0), off) == []


# ---- hosts are host attacks, the carpet is the spread --------------------------------------------


def test_a_host_over_its_own_limit_is_left_out_of_the_sum() -> None:
    batch = rates([f"203.0.113.{i}" for i in range(1, 101)], [30000.0] + [200.0] * 99)
    hosts = [(o.target, o.categories) for o in ThresholdDetector(parse(CONFIG)).observe(batch, now=5.0)]
    assert [str(t) for t, _ in hosts] == ["203.0.113.1/32"]
    # 30 k + 19.8 k passes 40 k, but the 30 k are the host attack's: no carpet
    assert observe(batch, hosts=hosts) == []
    # the spread grows: a carpet on its own, the host still left out of it
    batch["pps"][1:, Category.UDP] = 500.0
    (o,) = observe(batch, hosts=hosts)
    assert o.pps == pytest.approx(99 * 500.0)
    assert observe(batch)[0].pps == pytest.approx(30000 + 99 * 500.0)  # what it would double-count


def test_a_host_is_left_out_only_in_its_own_categories() -> None:
    batch = np.concatenate([spread(100, 500.0)])
    hosts = [(as_network("203.0.113.1/32"), (Category.TCP_SYN,))]
    (o,) = observe(batch, hosts=hosts)
    assert o.pps == pytest.approx(50000)


def test_an_open_carpet_passed_as_a_host_is_not_left_out() -> None:
    (o,) = observe(spread(200, 300.0), hosts=[(as_network("203.0.113.0/24"), (Category.UDP,))])
    assert o.pps == pytest.approx(60000)


# ---- prefix lengths --------------------------------------------------------------------------


def test_ipv6_64s_are_summed_per_56() -> None:
    dsts = [f"2001:db8:100:{i:x}::" for i in range(0x10, 0x30)]  # 32 /64s in 2001:db8:100::/56
    (o,) = observe(rates(dsts, 2000.0))
    assert str(o.target) == "2001:db8:100::/56" and o.pps == pytest.approx(64000)


def test_configured_lengths_and_a_narrower_group() -> None:
    cfg = (
        CONFIG
        + """
[[groups]]
name = "plant"
prefixes = ["203.0.113.64/28"]
[groups.carpet]
min_destinations = 4
[groups.carpet.thresholds]
udp = { pps = 1000 }
"""
    )
    outside = [f"203.0.113.{i}" for i in [*range(1, 64), *range(80, 201)]]
    batch = np.concatenate([rates(outside, 300.0), rates([f"203.0.113.{i}" for i in range(64, 80)], 100.0)])
    got = sorted((str(o.target), o.group, round(o.pps)) for o in observe(batch, cfg))
    # the /28 is its own group: summed on its own, never inside the default group's /24
    assert got == [("203.0.113.0/24", "default", 300 * 184), ("203.0.113.64/28", "plant", 1600)]
    wide = CONFIG.replace("min_destinations = 8", "min_destinations = 8\nipv4_prefix_len = 23")
    both = np.concatenate([spread(100, 250.0), spread(100, 250.0, net="203.0.112")])
    assert observe(both, wide.replace('"203.0.113.0/24"', '"203.0.112.0/23"')) != []
    assert str(observe(both, wide.replace('"203.0.113.0/24"', '"203.0.112.0/23"'))[0].target) == "203.0.112.0/23"


def test_a_prefix_no_wider_than_what_is_protected() -> None:
    small = CONFIG.replace('"203.0.113.0/24"', '"203.0.113.0/26"')
    (o,) = observe(rates([f"203.0.113.{i}" for i in range(1, 61)], 1000.0), small)
    assert str(o.target) == "203.0.113.0/26"


def test_config_errors_name_the_field() -> None:
    from ddos_shield.errors import ConfigError

    with pytest.raises(ConfigError, match=r"groups\[0\]\.carpet\.ipv4_prefix_len"):
        parse(CONFIG.replace("min_destinations = 8", "ipv4_prefix_len = 40"))


# ---- through the lifecycle, the fingerprint and the policy ----------------------------------------


def test_carpet_attack_is_tracked_and_mitigated_on_the_prefix() -> None:
    cfg = parse(CONFIG)
    tracker = AttackTracker(cfg)
    changes = tracker.update(observe(spread(200, 300.0)), now=5.0)
    (start,) = changes
    attack = start.attack
    assert start.kind == "start" and str(attack.target) == "203.0.113.0/24"
    # the observation's extra type reaches the attack through the classifier, as a hint (the engine's path)
    (obs,) = observe(spread(200, 300.0))
    types = Classifier().update(attack, empty_traffic(), 5.0, categories=obs.categories, hints=obs.extra_types)
    assert types == (AttackType.UDP_FLOOD, AttackType.CARPET_BOMBING)

    # spoofed UDP to every address of the /24, plus a client's TCP to one of them
    rng = np.random.default_rng(0)
    dsts = [str(ipaddress.ip_address("203.0.113.0") + int(i)) for i in rng.integers(1, 255, 600)]
    atk = np.concatenate(
        [packets(1, src=s, dst=d, proto=17, category=Category.UDP, dport=53, length=90, ts=5.5)
         for s, d in zip(spoofed_v4(600), dsts, strict=True)]
    )  # fmt: skip
    legit = packets(50, src="198.51.100.10", dst="203.0.113.7", proto=6, category=Category.TCP, tcp_flags=0x18, ts=5.5)
    window = np.concatenate([atk, legit])
    (cand,) = fingerprint.build(attack, window, max_sources=8, source_share=0.9, min_samples=20) or []
    assert cand.kind == "fingerprint" and cand.match.dst == as_network("203.0.113.0/24")
    assert cand.match.proto == 17 and cand.attack_share >= 0.99 and cand.collateral_share == 0.0

    cmds = Policy(cfg).step(changes, [attack], window, now=6.0)
    (apply,) = cmds
    assert isinstance(apply, Apply) and apply.rule.action == Action.DROP
    assert apply.rule.match.dst == as_network("203.0.113.0/24")


def test_the_layout_follows_the_destinations_tick_after_tick() -> None:
    det = CarpetDetector(parse(CONFIG))
    a, b = spread(200, 300.0), spread(200, 300.0, net="198.51.100")
    assert [str(o.target) for o in det.observe(a, now=1.0)] == ["203.0.113.0/24"]
    assert [str(o.target) for o in det.observe(a, now=1.1)] == ["203.0.113.0/24"]  # the same rows again
    assert [str(o.target) for o in det.observe(b, now=1.2)] == ["198.51.100.0/24"]  # as many rows, others
    a["pps"][:, Category.UDP] = 100.0  # same destinations, new rates
    assert det.observe(a, now=1.3) == []


def test_a_carpet_is_verified_against_the_prefix_limits() -> None:
    cfg = parse(CONFIG)
    group = cfg.group_for_name("default")
    (start,) = AttackTracker(cfg).update(observe(spread(200, 300.0)), now=5.0)
    carpet = replace(start.attack, types=(AttackType.UDP_FLOOD, AttackType.CARPET_BOMBING))
    host = replace(start.attack, target=as_network("203.0.113.10/32"), types=(AttackType.UDP_FLOOD,))
    assert Policy(cfg)._limit(carpet, group) == 40000  # [groups.carpet.thresholds] udp
    assert Policy(cfg)._limit(host, group) == 20000  # [groups.thresholds] udp
