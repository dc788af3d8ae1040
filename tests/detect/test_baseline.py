"""Baselines from hand-made rate batches: learning, seasonality, robustness, limits, state.

The real-traffic tier (a legitimate surge in the lab) is in tests/test_baseline_lab.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ddos_shield.config import Baseline as Settings
from ddos_shield.detect.baseline import FORMAT_VERSION, STEP_SECONDS, Baselines, entry_exit
from ddos_shield.records import Category, RateBatch, addr_bytes, as_network, empty_rates

UDP, PPS, BPS = int(Category.UDP), 0, 1
VICTIM = "203.0.113.10"
T0 = 1_700_000_000.0 - (1_700_000_000.0 % 86400)  # a midnight (UTC)


def batch(values: dict[str, float]) -> RateBatch:
    """One row per destination, UDP packets per second (and 500 bits a packet)."""
    r = empty_rates(len(values))
    for i, (dst, pps) in enumerate(values.items()):
        r["dst"][i] = list(addr_bytes(dst))
        r["pps"][i, UDP] = pps
        r["bps"][i, UDP] = pps * 500
    return r


def feed(
    b: Baselines,
    start: float,
    seconds: float,
    rate: Callable[[float], float],
    *,
    dt: float = 0.1,
    dst: str = VICTIM,
    frozen: Callable[[float], bool] = lambda t: False,
) -> float:
    n = round(seconds / dt)
    for i in range(n):
        now = start + (i + 1) * dt
        b.learn(batch({dst: rate(now)}), now, frozen=[as_network(f"{dst}/32")] if frozen(now) else [])
    return start + n * dt


def noisy(mean: float, sd: float, seed: int = 1) -> Callable[[float], float]:
    rng = np.random.default_rng(seed)
    return lambda t: max(0.0, float(rng.normal(mean, sd)))


def level_spread(b: Baselines, now: float, dst: str = VICTIM) -> tuple[bool, float, float]:
    learned, level, spread = b.lookup(batch({dst: 0.0})["dst"], now)
    return bool(learned[0]), float(level[0, UDP, PPS]), float(spread[0, UDP, PPS])


SETTINGS = Settings(learning_seconds=30, adapt_seconds=600)


# ---- learning ---------------------------------------------------------------------------


def test_learns_level_and_spread_and_waits_for_the_learning_period() -> None:
    b = Baselines(SETTINGS)
    t = feed(b, T0, 20, noisy(1000, 200))
    assert level_spread(b, t)[0] is False  # still learning: static thresholds apply
    t = feed(b, t, 40, noisy(1000, 200, seed=2))
    learned, level, spread = level_spread(b, t)
    assert learned
    assert level == pytest.approx(1000, rel=0.05)
    assert spread == pytest.approx(200, rel=0.15)  # root mean square deviation: the standard deviation
    # bits are learned alongside packets
    _, lv, _ = b.lookup(batch({VICTIM: 0})["dst"], t)
    assert lv[0, UDP, BPS] == pytest.approx(500 * level, rel=0.01)
    assert b.summary(t) == {"destinations": 1, "learned": 1, "learning": 0, "daily_profile": 0}


def test_a_destination_missing_from_a_batch_had_no_traffic() -> None:
    b = Baselines(SETTINGS)
    # present every other tick at 2000 pps: half the time silent, a level of 1000
    t = T0
    for i in range(600):
        t += 0.1
        b.learn(batch({VICTIM: 2000.0} if i % 2 else {"203.0.113.99": 5.0}), t)
    _, level, spread = level_spread(b, t)
    assert level == pytest.approx(1000, rel=0.05)
    assert spread == pytest.approx(1000, rel=0.1)


def test_unknown_destination_is_not_learned() -> None:
    b = Baselines(SETTINGS)
    feed(b, T0, 60, noisy(1000, 100))
    assert level_spread(b, T0 + 60, dst="203.0.113.77") == (False, 0.0, 0.0)


# ---- robustness ----------------------------------------------------------------------------


def _clean_and_attacked(attack_pps: float, frozen: bool) -> tuple[Baselines, Baselines, float]:
    """Five minutes of learning, with 20 s of attack from the 100th second."""
    settings = Settings(learning_seconds=300, adapt_seconds=3600)
    clean, attacked = Baselines(settings), Baselines(settings)
    normal = noisy(1000, 200)
    normal2 = noisy(1000, 200)

    def during(t: float) -> bool:
        return T0 + 100 <= t < T0 + 120

    def with_attack(t: float) -> float:
        base = normal2(t)
        return attack_pps if during(t) else base

    end = feed(clean, T0, 310, normal)
    feed(attacked, T0, 310, with_attack, frozen=during if frozen else (lambda t: False))
    return clean, attacked, end


def test_an_attack_detected_during_learning_is_not_learned() -> None:
    clean, attacked, t = _clean_and_attacked(50_000, frozen=True)
    assert level_spread(clean, t)[0]
    assert not level_spread(attacked, t)[0]  # the frozen time does not count as learning
    assert attacked.learned[0] == pytest.approx(clean.learned[0] - 20, abs=0.2)
    lc, sc = clean.level[0, UDP, PPS], clean.spread[0, UDP, PPS]
    la, sa = attacked.level[0, UDP, PPS], attacked.spread[0, UDP, PPS]
    assert la == pytest.approx(lc, rel=0.02) and sa == pytest.approx(sc, rel=0.1)


def test_a_flood_below_every_threshold_during_learning_moves_the_baseline_little() -> None:
    # 20 s of 8x the normal rate, not detected (the static thresholds are higher): the
    # clipping keeps it from becoming normal, where a plain mean would raise the level by half
    clean, attacked, t = _clean_and_attacked(8000, frozen=False)
    _, lc, _ = level_spread(clean, t)
    ok, la, sa = level_spread(attacked, t)
    assert ok
    assert la < 1.1 * lc
    plain_mean = (290 * lc + 20 * 8000) / 310
    assert plain_mean > 1.4 * lc
    # the same flood after learning is still far over the entry limit
    entry, _ = entry_exit(np.array(la), np.array(sa), 6.0, np.array(1000.0), 0.5)
    assert 2 * float(entry) < 8000


# ---- seasonality -------------------------------------------------------------------------------


def test_daily_profile_knows_the_morning_peak_after_a_day() -> None:
    """1000 pps all day, 5000 pps from 09:00 to 10:00 UTC: after a day, the hour before
    and during the peak carry its level; the night keeps the low one."""
    b = Baselines(Settings(learning_seconds=3600, adapt_seconds=3600))
    rng = np.random.default_rng(3)

    def day(t: float) -> float:
        hour = int(t // 3600) % 24
        return float(rng.normal(5000 if hour == 9 else 1000, 100))

    # first day: no profile yet, the current level (chasing) only
    t = feed(b, T0, 9 * 3600 - 120, day, dt=60.0)
    _, level, _ = level_spread(b, t)
    assert level < 1500
    t = feed(b, t, 2 * 86400 - (t - T0) - 120, day, dt=60.0)  # to 23:58 on day two
    assert b.summary(t)["daily_profile"] == 1
    eight_fifty = T0 + 2 * 86400 + 8 * 3600 + 50 * 60
    _, level, _ = level_spread(b, eight_fifty)
    assert level == pytest.approx(5000, rel=0.05)  # the next hour's peak is known ahead
    three_am = T0 + 2 * 86400 + 3 * 3600
    _, night, _ = level_spread(b, three_am)
    assert night == pytest.approx(1000, rel=0.1)


# ---- limits ---------------------------------------------------------------------------------------


def test_entry_and_exit_limits() -> None:
    level = np.array([1000.0, 10.0, 50_000.0, 1000.0])
    spread = np.array([100.0, 2.0, 100.0, 100.0])
    floor = np.array([500.0, 1000.0, 500.0, 0.0])
    entry, exit_ = entry_exit(level, spread, 6.0, floor, 0.5)
    # busy host: its own baseline; small host: the floor; steady stream: at least 5% of
    # the level as spread; floor 0: not judged
    assert entry.tolist() == [1600.0, 1000.0, 50_000 + 6 * 2500, np.inf]
    assert exit_.tolist() == [1300.0, 500.0, 50_000 + 3 * 2500, np.inf]


# ---- memory bound ---------------------------------------------------------------------------------


def test_destinations_are_capped_and_learned_ones_kept() -> None:
    b = Baselines(Settings(learning_seconds=5, adapt_seconds=60, max_destinations=3))
    t = feed(b, T0, 10, lambda t: 100.0, dst="203.0.113.1")  # learned
    t = feed(b, t, 1, lambda t: 100.0, dst="203.0.113.2")  # learning
    t = feed(b, t, 1, lambda t: 100.0, dst="203.0.113.3")
    t = feed(b, t, 1, lambda t: 100.0, dst="203.0.113.4")  # evicts .2, the oldest still learning
    keys = {str(as_network(f"{x}/32")) for x in ("203.0.113.1", "203.0.113.3", "203.0.113.4")}
    from ddos_shield.records import bytes_addr

    assert len(b) == 3
    assert {f"{bytes_addr(k)}/32" for k in b.keys[: len(b)]} == keys
    assert level_spread(b, t, dst="203.0.113.1")[0]


# ---- state ------------------------------------------------------------------------------------------


def test_state_round_trip_and_version_refusal() -> None:
    b = Baselines(SETTINGS)
    t = feed(b, T0, 40, noisy(1000, 200))
    back = Baselines.from_state(SETTINGS, b.state())
    assert level_spread(back, t) == level_spread(b, t)
    assert back.summary(t) == b.summary(t)
    old = b.state()
    old["format_version"] = np.array(FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match="format version 2"):
        Baselines.from_state(SETTINGS, old)
    bad = b.state()
    bad["level"] = bad["level"][:, :3]
    with pytest.raises(ValueError, match="'level'"):
        Baselines.from_state(SETTINGS, bad)


def test_frozen_targets_hosts_and_prefixes() -> None:
    b = Baselines(SETTINGS)
    dsts = {"203.0.113.10": 100.0, "203.0.113.20": 100.0, "198.51.100.7": 100.0, "2001:db8:113::": 100.0}
    t = T0
    for _ in range(100):
        t += 0.1
        b.learn(batch(dsts), t)
    before = b.learned[: len(b)].copy()
    # a host attack, a carpet over a /24, an IPv6 /64 target
    frozen = [as_network("198.51.100.7/32"), as_network("203.0.113.0/24"), as_network("2001:db8:113::/64")]
    for _ in range(100):
        t += 0.1
        b.learn(batch(dsts), t, frozen=frozen)
    # 10 s frozen: nothing learned but the rest of the step begun before (under 5 s)
    assert (b.learned[: len(b)] - before < STEP_SECONDS).all()


@pytest.mark.parametrize("collide", [False, True])
def test_destinations_are_found_by_their_slots(collide: bool) -> None:
    # IPv4 and IPv6 keys, present and absent; with two keys folding alike, the exact search
    rng = np.random.default_rng(8)
    addrs = [f"203.0.113.{i}" for i in range(60)] + [f"2001:db8:{i:x}::" for i in range(40)]
    b = Baselines(SETTINGS)
    dst = np.frombuffer(b"".join(addr_bytes(a) for a in addrs[::2]), np.uint8).reshape(-1, 16)
    b._add(dst, T0, since=T0)
    slot = {bytes(b.keys[s]): s for s in range(len(dst))}
    if collide:
        b._fold_ok = False
    queries = np.frombuffer(b"".join(addr_bytes(addrs[i]) for i in rng.integers(0, len(addrs), 300)), np.uint8)
    queries = queries.reshape(-1, 16)
    assert b._find(queries).tolist() == [slot.get(bytes(q), -1) for q in queries]
