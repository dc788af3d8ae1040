"""The escalation ladder, preview and verification, with hand-made traffic through the
user-space replay data plane (its in-memory backend drops and rate-limits as the
kernel does); the kernel path is in tests/test_policy_lab.py."""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import pytest

from ddos_shield.config import parse
from ddos_shield.dataplane.replay import ReplayDataPlane
from ddos_shield.detect.lifecycle import AttackChange
from ddos_shield.mitigate.memory import MemoryBackend
from ddos_shield.policy import Apply, Policy, Verified, Withdraw, per_source_passes
from ddos_shield.records import Action, Attack, AttackType, Category, Match, addr_bytes, as_network, empty_rates
from tests.engine.test_engine import CLIENT, CONFIG, VICTIM, Harness
from tests.traffic import packets, spoofed_v4

ATTACKER = "198.51.100.66"


def ladder(steps: str, **group: Any) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in group.items())
    return CONFIG.replace(
        "end_after_seconds = 1.0\n", f"end_after_seconds = 1.0\nsettle_seconds = 1.0\nladder = {steps}\n{extra}"
    )


def syn_flood(now: float) -> np.ndarray:  # 4,000 pps from one source; the limit is 2,000
    return packets(400, src=ATTACKER, dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=0x02, ts=now)


def steps_applied(h: Harness) -> list[tuple[str, str]]:
    return [(e["rule"]["action"], e["reason"].split(":")[0]) for e in h.events("mitigation_applied")]


def test_a_rate_limit_that_suffices_is_not_escalated() -> None:
    h = Harness(ladder('["rate_limit", "drop"]', rate_limit_pps=1000))
    h.run(4.0, [syn_flood])
    assert steps_applied(h) == [("rate_limit", "rate_limit")]
    (v,) = h.events("mitigation_verified")
    assert v["ok"] and v["step"] == "rate_limit" and v["after_pps"] <= 1100 and v["before_pps"] >= 3500
    (m,) = h.engine.mitigations()
    assert m["verify"]["ok"] and m["step"] == "rate_limit"


def test_a_rate_limit_that_does_not_suffice_is_followed_by_the_drop() -> None:
    h = Harness(ladder('["rate_limit", "drop"]', rate_limit_pps=3000))
    h.run(4.0, [syn_flood])
    assert steps_applied(h) == [("rate_limit", "rate_limit"), ("drop", "drop")]
    verified = h.events("mitigation_verified")
    assert [(v["step"], v["ok"]) for v in verified] == [("rate_limit", False), ("drop", True)]
    assert verified[1]["after_pps"] == 0
    assert [r.action.name for r in h.dp.backend.list()] == ["DROP"]
    # once the attack is over, every step's rules go
    h.run(4.0, [])
    assert h.dp.backend.list() == [] and h.engine.mitigations() == []


def test_observe_first_then_act() -> None:
    h = Harness(ladder('["observe", "drop"]'))
    h.run(0.9, [syn_flood])
    assert h.events("mitigation_applied") == []
    assert h.events("mitigation_skipped")[0]["reason"] == "ladder step observe: alert only"
    h.run(1.0, [syn_flood])
    assert steps_applied(h) == [("drop", "drop")]


def test_a_rule_that_takes_legitimate_traffic_with_it_is_rolled_back() -> None:
    # the one "attacking" source also carries 1,000 pps of established TCP to the target
    def its_other_traffic(now: float) -> np.ndarray:
        return packets(100, src=ATTACKER, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, ts=now)

    h = Harness(ladder('["drop", "flowspec"]'))
    h.run(3.0, [syn_flood, its_other_traffic])
    (v,) = h.events("mitigation_verified")
    assert not v["ok"] and "other traffic fell" in v["reason"]
    assert h.dp.backend.list() == []
    # no BGP backend: the next step is skipped, and the ladder ends there
    reasons = [e["reason"] for e in h.events("mitigation_skipped")]
    assert "ladder step flowspec: no bgp backend configured" in reasons


def test_drop_sources_blocks_the_heaviest_sources_of_a_spread_flood() -> None:
    srcs = [f"198.18.0.{i}" for i in range(1, 11)]  # ten sources: too many for "a few sources" (max 4)
    flood = lambda now: packets(800, src=srcs, dst=VICTIM, proto=17, category=Category.UDP, ts=now)  # noqa: E731
    h = Harness(ladder('["drop_sources"]').replace("[shield]", "[mitigation]\nmax_sources_per_attack = 16\n[shield]"))
    h.run(2.0, [flood])
    got = sorted(e["rule"]["match"]["src"] for e in h.events("mitigation_applied"))
    assert got == sorted(f"{s}/32" for s in srcs)


def test_rules_per_target_are_limited() -> None:
    srcs = [f"198.18.0.{i}" for i in range(1, 11)]
    flood = lambda now: packets(800, src=srcs, dst=VICTIM, proto=17, category=Category.UDP, ts=now)  # noqa: E731
    h = Harness(
        ladder('["drop_sources"]').replace(
            "[shield]", "[mitigation]\nmax_sources_per_attack = 16\nmax_rules_per_target = 4\n[shield]"
        )
    )
    h.run(1.0, [flood])
    assert len(h.events("mitigation_applied")) == 4
    assert len(h.events("mitigation_refused")) == 6
    assert "rule limit" in h.events("mitigation_refused")[0]["reason"]


def test_preview_refuses_a_fingerprint_that_would_hit_legitimate_traffic() -> None:
    # fragments and legitimate UDP alike: same sources, lengths and TTLs
    srcs = spoofed_v4(2000)

    def frags(now: float) -> np.ndarray:
        b = packets(400, src=srcs, dst=VICTIM, proto=17, category=Category.FRAG, length=600, ts=now)
        return b

    def udp(now: float) -> np.ndarray:
        return packets(100, src=srcs, dst=VICTIM, proto=17, category=Category.UDP, length=600, ts=now)

    h = Harness(
        ladder('["drop"]')
        .replace("udp = { pps = 5000 }", "udp = { pps = 5000 }\nfrag = { pps = 2000 }")
        .replace("[shield]", "[mitigation]\nmax_collateral_share = 0.01\n[shield]")
    )
    h.run(1.0, [frags, udp])
    refused = h.events("mitigation_refused")
    assert refused and refused[0]["reason"].startswith("preview: would also match")
    assert refused[0]["rule"]["collateral_share"] > 0.5
    assert h.events("mitigation_applied") == []


# ---- upstream steps: a BGP backend stands beside the local one ----------------------
# The in-memory backend under the name "bgp" takes the upstream rules (the real BGP
# speaker is tested in tests/mitigate/test_bgp.py); it enforces nothing, so the local
# traffic never falls and every upstream step fails its verification.


def bgp() -> MemoryBackend:
    b = MemoryBackend(clock=lambda: 0.0)  # the harness's clock starts at 1000: expiry is the engine's job here
    b.name = "bgp"
    return b


UPSTREAM = '["flowspec", "blackhole"]'


def spoofed_udp(now: float) -> np.ndarray:
    return packets(1000, src=spoofed_v4(3000), dst=VICTIM, proto=17, category=Category.UDP, dport=9, ts=now)


def test_upstream_steps_go_to_the_bgp_backend_and_blackhole_comes_last() -> None:
    up = bgp()
    h = Harness(ladder(UPSTREAM, allow_blackhole="true"), backends=[up])
    h.run(1.0, [spoofed_udp])
    (fs,) = h.events("mitigation_applied")
    assert (
        fs["backend"] == "bgp" and fs["rule"]["match"]["dst"] == f"{VICTIM}/32" and fs["rule"]["match"]["proto"] == 17
    )
    assert h.dp.backend.list() == []  # nothing local
    h.run(0.6, [spoofed_udp])  # the flowspec rule failed its verification: rolled back
    applied = h.events("mitigation_applied")
    assert [(e["backend"], e["rule"]["match"]) for e in applied[1:]] == [("bgp", {"dst": f"{VICTIM}/32"})]
    assert [r.match.fields() for r in up.list()] == [["dst"]]  # the flowspec rule was rolled back
    h.run(4.0, [])
    assert up.list() == [] and h.engine.mitigations() == []


def test_never_block_and_critical_targets_get_nothing_upstream() -> None:
    for extra in (f'never_block = ["{VICTIM}/32"]', f'critical = ["{VICTIM}/32"]'):
        up = bgp()
        h = Harness(
            ladder(UPSTREAM, allow_blackhole="true").replace("protected =", f"{extra}\nprotected ="), backends=[up]
        )
        h.run(2.5, [spoofed_udp])
        assert h.events("mitigation_applied") == [] and up.list() == []
        refused = h.events("mitigation_refused")
        assert len(refused) == 2
        assert all(("never-block" in e["reason"]) or ("critical" in e["reason"]) for e in refused)


def test_an_operator_rule_upstream_is_checked_against_the_allow_list() -> None:
    h = Harness(CONFIG.replace("protected =", 'allowlist = ["198.51.100.0/28"]\nprotected ='), backends=[bgp()])
    with pytest.raises(ValueError, match="upstream filters cannot spare it"):
        h.engine.add_mitigation(
            Match(src=as_network("198.51.100.0/24"), dst=as_network(f"{VICTIM}/32")),
            Action.DROP,
            60.0,
            backend="bgp",
            actor="cli:alice",
            reason="try",
        )
    r = h.engine.add_mitigation(
        Match(src=as_network("198.18.0.0/15"), dst=as_network(f"{VICTIM}/32")),
        Action.DROP,
        60.0,
        backend="bgp",
        actor="cli:alice",
        reason="spoofed range",
    )
    assert [m["backend"] for m in h.engine.mitigations()] == ["bgp"] and r.rule_id > 0


def test_a_busy_host_judged_by_its_baseline_is_not_escalated_for_its_normal_traffic() -> None:
    """4,800 UDP/s is this host's normal, near the static 5,000: learned, its limit is
    ~6,240. A 5,000/s flood rate-limited to 1,000 leaves 5,800 through: over the static
    threshold, under the learned one, so the rate limit suffices."""
    cfg = ladder('["rate_limit", "drop"]', rate_limit_pps=1000) + "\n[baseline]\nlearning_seconds = 5\n"
    h = Harness(cfg)
    clients = [f"198.51.100.{i}" for i in range(100, 200)]

    def normal(now: float) -> np.ndarray:
        return packets(480, src=clients, dst=VICTIM, proto=17, category=Category.UDP, sport=53, dport=5353, ts=now)

    def flood(now: float) -> np.ndarray:
        return packets(500, src=ATTACKER, dst=VICTIM, proto=17, category=Category.UDP, dport=80, ts=now)

    h.run(8.0, [normal])
    assert h.events("attack_start") == []
    h.run(4.0, [normal, flood])
    (start,) = h.events("attack_start")
    assert start["basis"] == "baseline"
    assert steps_applied(h) == [("rate_limit", "rate_limit")]
    (v,) = h.events("mitigation_verified")
    assert v["ok"] and 5000 < v["after_pps"] < v["threshold_pps"]


# ---- verification on its own: the Policy with hand-made records ---------------------

ATTACK = Attack(
    attack_id=9,
    target=as_network(f"{VICTIM}/32"),
    group="default",
    types=(AttackType.SYN_FLOOD,),
    categories=(Category.TCP_SYN,),
    started=100.0,
    pps=4000.0,
    bps=0.0,
    peak_pps=4000.0,
    peak_bps=0.0,
    last_seen=100.0,
)


def rates(syn: float, other: float, dropped: float) -> np.ndarray:
    r = empty_rates(1)
    r["dst"][0] = list(addr_bytes(VICTIM))
    r["pps"][0, Category.TCP_SYN] = syn
    r["pps"][0, Category.TCP] = other
    r["dropped_pps"][0] = dropped
    return r


VERIFY = [
    # (after the rate limit: SYN received, other received, dropped) -> (ok, rolled back, next step taken)
    # 6,000 pps of SYN got through before; the threshold is 2,000, verify_min_reduction one half
    # below the threshold: holds
    ((6000, 500, 4500), True, False, False),
    # halved but still above: kept, and the drop is added
    ((6000, 500, 3500), True, False, True),
    # barely dented: rolled back, the drop instead
    ((6000, 500, 600), False, True, True),
    # the attack held but the target's other traffic went with it: rolled back
    ((6000, 500, 6000 + 400), False, True, True),
]


@pytest.mark.parametrize(("after", "ok", "rolled_back", "climbed"), VERIFY)
def test_verification_decides_from_the_rates_at_the_target(
    after: tuple[float, float, float], ok: bool, rolled_back: bool, climbed: bool
) -> None:
    cfg = parse(ladder('["rate_limit", "drop"]', rate_limit_pps=1000))
    p = Policy(cfg, local="xdp")
    window = syn_flood(100.0)
    cmds = p.step([AttackChange("start", ATTACK)], [ATTACK], window, 100.1, rates(6000, 500, 0))
    (first,) = [c for c in cmds if isinstance(c, Apply)]
    assert first.step == "rate_limit" and first.backend == "xdp"
    p.confirm(first.rule.with_id(1), "xdp")
    cmds = p.step([], [ATTACK], window, 101.2, rates(*after))
    (v,) = [c for c in cmds if isinstance(c, Verified)]
    assert (v.ok, v.step, v.rule_ids) == (ok, "rate_limit", (1,))
    assert v.figures["before_pps"] == 6000 and v.figures["threshold_pps"] == 2000
    # (a drop of the same match replaces the rate limit either way; a roll-back says "verify")
    withdrawn = [c.rule.rule_id for c in cmds if isinstance(c, Withdraw) and c.reason.startswith("verify")]
    assert (withdrawn == [1]) == rolled_back
    assert any(isinstance(c, Apply) and c.step == "drop" for c in cmds) == climbed


# ---- SYN proxy: a step for SYN floods at a TCP service, on the nftables data plane ----


def nft_harness(steps: str) -> Harness:
    box: list[Harness] = []  # the data plane's backend expires rules on the harness's clock
    dp = ReplayDataPlane(clock=lambda: box[0].now if box else 1000.0)
    dp.backend.name = "nftables"  # the in-memory backend standing in for the nftables data plane
    box.append(Harness(ladder(steps), dataplane=dp))
    return box[0]


def test_a_syn_flood_gets_the_syn_proxy_for_its_service_and_the_ladder_stops_there() -> None:
    h = nft_harness('["syn_proxy", "drop"]')
    h.run(3.0, [syn_flood])
    (applied,) = h.events("mitigation_applied")
    assert applied["rule"]["action"] == "syn_proxy" and applied["step"] == "syn_proxy"
    assert applied["rule"]["match"] == {"proto": 6, "dst": f"{VICTIM}/32", "dport": {"min": 80, "max": 80}}
    (v,) = h.events("mitigation_verified")
    assert v["ok"] and v["step"] == "syn_proxy"
    h.run(4.0, [])
    assert h.engine.mitigations() == []


def test_syn_proxy_is_skipped_for_other_floods_and_without_nftables() -> None:
    h = nft_harness('["syn_proxy", "drop"]')
    flood = lambda now: packets(1000, src=spoofed_v4(500), dst=VICTIM, proto=17, category=Category.UDP, ts=now)  # noqa: E731
    h.run(1.0, [flood])
    assert "ladder step syn_proxy: not a SYN flood" in [e["reason"] for e in h.events("mitigation_skipped")]
    assert [e["step"] for e in h.events("mitigation_applied")] == ["drop"]
    h = Harness(ladder('["syn_proxy", "drop"]'))  # the XDP-like local backend cannot proxy
    h.run(1.0, [syn_flood])
    assert "ladder step syn_proxy: no nftables backend configured" in [
        e["reason"] for e in h.events("mitigation_skipped")
    ]
    assert [e["step"] for e in h.events("mitigation_applied")] == ["drop"]


def test_no_step_is_judged_while_the_kill_switch_passes_everything() -> None:
    cfg = parse(ladder('["rate_limit", "drop"]', rate_limit_pps=1000))
    p = Policy(cfg, local="xdp")
    window = syn_flood(100.0)
    cmds = p.step([AttackChange("start", ATTACK)], [ATTACK], window, 100.1, rates(6000, 500, 0))
    (first,) = [c for c in cmds if isinstance(c, Apply)]
    p.confirm(first.rule.with_id(1), "xdp")
    # bypass on: nothing dropped, the rule kept and nothing climbed however long it lasts
    for now in (101.2, 102.5, 104.0):
        cmds = p.step([], [ATTACK], window, now, rates(6000, 500, 0), kill_switch=True)
        assert not [c for c in cmds if isinstance(c, Verified | Withdraw | Apply)]
    # bypass off: the step settles again from then, and is judged on what it drops
    assert not [c for c in p.step([], [ATTACK], window, 104.5, rates(6000, 500, 4500)) if isinstance(c, Verified)]
    (v,) = [c for c in p.step([], [ATTACK], window, 105.2, rates(6000, 500, 4500)) if isinstance(c, Verified)]
    assert v.ok and v.rule_ids == (1,)


# ---- a vector that joins a running attack gets rules of its own ----------------------


def spoofed_syn(now: float) -> np.ndarray:  # 4,000 pps from many sources: a fingerprint, not sources
    return packets(400, src=spoofed_v4(2000), dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=0x02, ts=now)


def test_a_udp_flood_joining_a_syn_flood_gets_a_rule_of_its_own() -> None:
    h = Harness(ladder('["drop"]'))
    h.run(2.0, [spoofed_syn])
    (first,) = h.events("mitigation_applied")
    assert first["rule"]["match"]["proto"] == 6
    h.run(3.0, [spoofed_syn, spoofed_udp])  # 10,000 pps of UDP joins (limit 5,000)
    applied = h.events("mitigation_applied")
    assert [(e["step"], e["rule"]["match"]["proto"]) for e in applied] == [("drop", 6), ("drop", 17)]
    assert "new vector udp_flood joined the attack" in applied[1]["reason"]
    assert applied[1]["rule"]["match"]["dport"] == {"min": 9, "max": 9}
    assert sorted(r.match.proto or 0 for r in h.dp.backend.list()) == [6, 17]
    h.run(4.0, [])
    assert h.dp.backend.list() == [] and h.engine.mitigations() == []


def test_no_rule_is_added_while_the_rules_in_force_cover_the_attack() -> None:
    h = Harness(ladder('["drop"]'))
    h.run(5.0, [spoofed_syn])
    assert len(h.events("mitigation_applied")) == 1


UDP_ATTACK = Attack(
    attack_id=11,
    target=as_network(f"{VICTIM}/32"),
    group="default",
    types=(AttackType.UDP_FLOOD,),
    categories=(Category.UDP,),
    started=100.0,
    pps=10000.0,
    bps=0.0,
    peak_pps=10000.0,
    peak_bps=0.0,
    last_seen=100.0,
)


def udp_rates(pps: float) -> np.ndarray:  # the port 9 flood (10,000 pps) is dropped
    r = empty_rates(1)
    r["dst"][0] = list(addr_bytes(VICTIM))
    r["pps"][0, Category.UDP] = pps
    r["dropped_pps"][0] = min(pps, 10000)
    return r


def test_a_second_vector_in_the_same_category_is_found_by_the_coverage_of_the_rules() -> None:
    """A UDP flood to port 9 joined by NTP answers: the category is the same, but the rule
    in force matches a third of the attack's samples; what it misses gets a rule when it
    is above the UDP limit (5,000 pps) on its own, once per settle period at most."""
    p = Policy(parse(ladder('["drop"]')), local="xdp")
    srcs = spoofed_v4(3000)

    def flood(t: float) -> np.ndarray:
        return packets(1000, src=srcs, dst=VICTIM, proto=17, category=Category.UDP, dport=9, ts=t)

    def ntp(t: float) -> np.ndarray:
        return packets(2000, src=srcs, dst=VICTIM, proto=17, category=Category.UDP, sport=123, length=468, ts=t)

    cmds = p.step([AttackChange("start", UDP_ATTACK)], [UDP_ATTACK], flood(100.0), 100.1, udp_rates(10000))
    (first,) = [c for c in cmds if isinstance(c, Apply)]
    p.confirm(first.rule.with_id(1), "xdp")
    both = np.concatenate([flood(100.5), ntp(100.5)])
    cmds = p.step([], [UDP_ATTACK], both, 100.6, udp_rates(30000))  # within the settle period of the step
    assert not [c for c in cmds if isinstance(c, Apply)]
    # what the rule misses comes to 4,000 pps: below the limit, the target's own clients may be it
    cmds = p.step([], [UDP_ATTACK], both, 101.2, udp_rates(6000))
    assert not [c for c in cmds if isinstance(c, Apply)]
    cmds = p.step([], [UDP_ATTACK], both, 102.3, udp_rates(30000))
    (second,) = [c for c in cmds if isinstance(c, Apply)]
    assert second.step == "drop" and second.rule.match.sport is not None and second.rule.match.sport.lo == 123
    assert "matched only 33% of its udp_flood samples" in second.rule.reason
    p.confirm(second.rule.with_id(2), "xdp")
    for now in (102.6, 103.5, 104.5):  # both covered now: nothing more
        assert not [c for c in p.step([], [UDP_ATTACK], both, now, udp_rates(30000)) if isinstance(c, Apply)]


# ---- per-source rate limits ------------------------------------------------------------
# Twenty sources at 500 pps each (10,000 pps, the UDP limit is 5,000) and twenty clients
# of the same service at 20 pps each, every packet alike but for its source: too many
# sources for source rules (max 8 here), so the rate limit is on the fingerprint.

HEAVY = [f"198.18.1.{i}" for i in range(1, 21)]
CLIENTS = [f"198.51.100.{i}" for i in range(100, 120)]


def few_heavy(now: float) -> np.ndarray:
    return packets(1000, src=HEAVY, dst=VICTIM, proto=17, category=Category.UDP, dport=53, ts=now)


def clients(now: float) -> np.ndarray:
    return packets(40, src=CLIENTS, dst=VICTIM, proto=17, category=Category.UDP, dport=53, ts=now)


def per_source_config(steps: str = '["rate_limit"]', mode: str = "auto", extra: str = "") -> str:
    return (
        ladder(steps, rate_limit_pps=1000, rate_limit_per_source=f'"{mode}"')
        .replace("protected =", f"{extra}\nprotected =")
        .replace("[shield]", "[mitigation]\nmax_sources_per_attack = 8\n[shield]")
    )


def passed_after(h: Harness, seconds: float = 1.0) -> dict[str, int]:
    """Packets per source the rules in force let through of ``seconds`` more of both."""
    got: dict[str, int] = {}
    for i in range(round(seconds / 0.1)):
        batch = np.concatenate([few_heavy(h.now + 0.1 * i), clients(h.now + 0.1 * i)])
        kept = batch[~h.dp.backend.offer(batch)]
        for s in kept["src"]:
            key = str(ipaddress.ip_address(bytes(s[12:])))
            got[key] = got.get(key, 0) + 1
    return got


def test_a_flood_from_few_sources_is_limited_per_source_and_the_clients_keep_their_service() -> None:
    h = Harness(per_source_config())
    h.run(3.0, [few_heavy, clients])
    (applied,) = h.events("mitigation_applied")
    rule = applied["rule"]
    assert (rule["action"], rule["rate_pps"], rule["per_source"]) == ("rate_limit", 100, True)
    assert "per source, 100 pps each" in rule["reason"]
    (v,) = h.events("mitigation_verified")
    assert v["ok"] and v["after_pps"] <= 5000
    got = passed_after(h)
    assert all(got.get(c) == 20 for c in CLIENTS), got  # every client packet of the second
    assert all(got.get(s, 0) <= 100 + 10 for s in HEAVY), got  # each heavy source at its rate
    # the live view says so
    from rich.console import Console

    from ddos_shield.cli.live import render

    console = Console(width=200, record=True)
    console.print(render(h.engine.snapshot(), now=h.now))
    assert "rate_limit 100/s per source" in console.export_text()


def test_the_same_flood_under_an_aggregate_limit_starves_the_clients() -> None:
    h = Harness(per_source_config(mode="never"))
    h.run(3.0, [few_heavy, clients])
    (applied,) = h.events("mitigation_applied")
    assert (applied["rule"]["rate_pps"], applied["rule"].get("per_source", False)) == (1000, False)
    got = passed_after(h)
    assert sum(got.get(c, 0) for c in CLIENTS) < 0.5 * 20 * len(CLIENTS)


def test_a_spoofed_flood_gets_the_aggregate_limit() -> None:
    """Thousands of sources: a limit per source would let all of it through."""
    h = Harness(per_source_config())
    h.run(2.0, [spoofed_udp])
    (applied,) = h.events("mitigation_applied")
    assert (applied["rule"]["rate_pps"], applied["rule"].get("per_source", False)) == (1000, False)
    h2 = Harness(per_source_config(mode="always"))
    h2.run(2.0, [spoofed_udp])
    (forced,) = h2.events("mitigation_applied")
    assert (forced["rule"]["rate_pps"], forced["rule"]["per_source"]) == (100, True)


def test_a_critical_asset_is_limited_per_source_while_its_drop_waits() -> None:
    h = Harness(per_source_config('["drop"]', extra=f'critical = ["{VICTIM}/32"]'))
    h.run(3.0, [few_heavy, clients])
    (pending,) = [m for m in h.engine.mitigations() if m["state"] == "pending"]
    (active,) = [m for m in h.engine.mitigations() if m["state"] == "active"]
    assert pending["action"] == "drop"
    assert (active["action"], active["rate_pps"], active["per_source"]) == ("rate_limit", 100, True)
    got = passed_after(h)
    assert all(got.get(c) == 20 for c in CLIENTS), got


# what a per-source limit of 100 pps lets through of a 10,000 pps attack, from its samples
PASSES_ROWS = [
    # few sources, each seen many times: each held to the rate
    ([("198.18.0.1", 50), ("198.18.0.2", 50)], 200.0),
    # a heavy source and a light one (1 % of the samples: 100 pps, at the limit), either family
    ([("198.18.0.1", 99), ("2001:2::1", 1)], 200.0),
    # sources seen once carry 20 % of the samples: their number is unknown
    ([("198.18.0.1", 80)] + [(f"2001:2::{i}", 1) for i in range(1, 21)], None),
    # a spoofed flood: a new source in every sample
    ([(f"198.18.0.{i}", 1) for i in range(1, 101)], None),
]


@pytest.mark.parametrize(("rows", "want"), PASSES_ROWS)
def test_per_source_passes(rows: list[tuple[str, int]], want: float | None) -> None:
    batch = np.concatenate([packets(n, src=s, dst=VICTIM, proto=17, category=Category.UDP) for s, n in rows])
    got = per_source_passes(batch, 10000.0, float(batch["packets"].sum()), 100.0)
    assert got == (pytest.approx(want) if want is not None else None)


# ---- connection floods and slow attacks: rules on the sources the detector named ------------


class Conns:
    """Real-looking connections from ``src``: each tick ``per_tick`` new ones (a SYN, then
    two ACKed data packets), every one on its own source port."""

    def __init__(self, src: str, per_tick: int) -> None:
        self.src, self.per_tick, self.port = src, per_tick, 20000

    def __call__(self, now: float) -> np.ndarray:
        parts = []
        for _ in range(self.per_tick):
            self.port += 1
            syn = packets(1, src=self.src, dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=0x02, ts=now)
            data = packets(2, src=self.src, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, ts=now)
            syn["sport"] = data["sport"] = self.port
            parts += [syn, data]
        return np.concatenate(parts)


#: one connection a tick: a client at its own pace
client_conns = Conns(CLIENT, 1)


def connection_config(steps: str, extra: str = "", top: str = "") -> str:
    """A ladder, ``extra`` sections after the config, ``top`` keys before its first section."""
    return ladder(steps).replace("protected =", f"{top}\nprotected =") + extra


def offered(h: Harness, makers: list[Any], seconds: float = 1.0) -> dict[str, tuple[int, int]]:
    """Per source, (SYNs, other packets) the rules in force let through of ``seconds`` more."""
    got: dict[str, tuple[int, int]] = {}
    for _ in range(round(seconds / 0.1)):
        h.now += 0.1
        batch = np.concatenate([m(h.now) for m in makers])
        kept = batch[~h.dp.backend.offer(batch)]
        for s, f in zip(kept["src"], kept["tcp_flags"], strict=True):
            key = str(ipaddress.ip_address(bytes(s[12:])))
            syn, other = got.get(key, (0, 0))
            got[key] = (syn + 1, other) if f == 0x02 else (syn, other + 1)
    return got


def test_a_connection_flood_gets_a_syn_rate_limit_on_its_source_and_the_client_is_untouched() -> None:
    h = Harness(connection_config('["rate_limit", "drop"]'))
    h.run(3.0, [Conns(ATTACKER, 30), client_conns])  # 300 new connections a second, the limit is 200
    (e,) = h.events("mitigation_applied")
    assert e["rule"]["match"] == {
        "src": f"{ATTACKER}/32",
        "dst": f"{VICTIM}/32",
        "proto": 6,
        "tcp_flags": {"mask": 0x12, "value": 0x02},
    }
    assert (e["rule"]["action"], e["rule"]["rate_pps"]) == ("rate_limit", 20)
    assert "connection_flood" in e["reason"] and "limited to 20/s" in e["reason"]
    assert not [s for s in h.events("mitigation_skipped") if "not mitigated" in s["reason"]]
    # the source's SYNs are held to 20 a second (and a burst of a tenth of a second); the
    # rest of its packets and the client's pass
    got = offered(h, [Conns(ATTACKER, 30), client_conns])
    assert got[ATTACKER][0] <= 25 and got[ATTACKER][1] == 30 * 2 * 10 and got[CLIENT] == (10, 20)
    # no rate verdict on a connection flood: the step is kept while the attack lasts, not escalated
    h.run(3.0, [Conns(ATTACKER, 30), client_conns])
    assert steps_applied(h) == [("rate_limit", "rate_limit")] and h.events("mitigation_verified") == []


def test_a_connection_flood_under_drop_loses_its_source_and_the_rule_goes_after_it() -> None:
    h = Harness(connection_config('["drop"]'))
    h.run(3.0, [Conns(ATTACKER, 30), client_conns])
    (e,) = h.events("mitigation_applied")
    assert e["rule"]["match"] == {"src": f"{ATTACKER}/32", "dst": f"{VICTIM}/32"} and e["rule"]["action"] == "drop"
    got = offered(h, [Conns(ATTACKER, 30), client_conns])
    assert ATTACKER not in got and got[CLIENT] == (10, 20)
    # a second source named later gets its own rule at the same step
    h.run(3.0, [Conns(ATTACKER, 30), Conns("198.51.100.67", 30), client_conns])
    srcs = [x["rule"]["match"]["src"] for x in h.events("mitigation_applied")]
    assert srcs == [f"{ATTACKER}/32", "198.51.100.67/32"]
    assert "named after the step was taken" in h.events("mitigation_applied")[1]["reason"]


def test_observe_reports_a_connection_flood_and_the_ladder_goes_on_after_settling() -> None:
    h = Harness(connection_config('["observe", "drop"]'))
    h.run(1.5, [Conns(ATTACKER, 30)])
    assert h.events("mitigation_applied") == []
    assert any("observe" in s["reason"] for s in h.events("mitigation_skipped"))
    h.run(1.5, [Conns(ATTACKER, 30)])
    assert steps_applied(h) == [("drop", "drop")]


def test_an_observe_group_only_reports_a_connection_flood() -> None:
    h = Harness(connection_config('["observe"]'))
    h.run(4.0, [Conns(ATTACKER, 30)])
    assert h.events("mitigation_applied") == [] and h.events("mitigation_skipped")


def slowloris(now: float) -> np.ndarray:
    """120 connections held open, each sending a packet every 2 s (opened at the start)."""
    if round(now * 10) % 20:
        return np.zeros(0, dtype=packets(0, src=ATTACKER, dst=VICTIM, proto=6, category=Category.TCP).dtype)
    b = packets(120, src=ATTACKER, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, ts=now)
    b["sport"] = 30000 + np.arange(120)
    return b


def test_a_slow_attack_is_reported_at_rate_limit_and_its_source_dropped_from_the_drop_step() -> None:
    cfg = "\n[classification]\nslow_min_hold_seconds = 3.0\nconnection_window_seconds = 10.0\n"
    h = Harness(connection_config('["rate_limit"]', cfg))
    h.run(8.0, [slowloris])
    assert h.events("mitigation_applied") == []
    assert any("rate limit cannot stop a slow attack" in s["reason"] for s in h.events("mitigation_skipped"))

    h = Harness(connection_config('["rate_limit", "drop"]', cfg))
    h.run(8.0, [slowloris])
    (e,) = h.events("mitigation_applied")
    assert e["rule"]["match"] == {"src": f"{ATTACKER}/32", "dst": f"{VICTIM}/32"} and "slow_attack" in e["reason"]


def test_connection_flood_sources_respect_the_allow_list_critical_assets_and_dry_run() -> None:
    h = Harness(connection_config('["drop"]', top=f'allowlist = ["{ATTACKER}/32"]'))
    h.run(3.0, [Conns(ATTACKER, 30)])
    assert h.events("mitigation_applied") == []
    assert any("allow-listed" in s["reason"] for s in h.events("mitigation_skipped"))

    # a critical asset: the source rate-limited now, its drop filed for an operator
    h = Harness(connection_config('["drop"]', top=f'critical = ["{VICTIM}/32"]'))
    h.run(3.0, [Conns(ATTACKER, 30)])
    (e,) = h.events("mitigation_applied")
    assert (e["rule"]["action"], e["rule"]["rate_pps"]) == ("rate_limit", 20)
    assert e["rule"]["match"]["src"] == f"{ATTACKER}/32" and e["rule"]["match"]["tcp_flags"]["value"] == 2
    (p,) = h.events("mitigation_pending")
    assert p["rule"]["action"] == "drop" and p["rule"]["match"] == {"src": f"{ATTACKER}/32", "dst": f"{VICTIM}/32"}

    # the never-block list: no drop to the target; the source's new connections limited instead
    h = Harness(connection_config('["drop"]', top=f'never_block = ["{VICTIM}/32"]'))
    h.run(3.0, [Conns(ATTACKER, 30)])
    assert "never-block" in h.events("mitigation_refused")[0]["reason"]
    assert [(e["rule"]["action"], e["rule"]["rate_pps"]) for e in h.events("mitigation_applied")] == [
        ("rate_limit", 20)
    ]

    # dry run: decided and reported, enforced nowhere (the replay data plane's backend
    # is the in-memory record a dry run keeps)
    h = Harness(connection_config('["drop"]').replace("[shield]\n", "[shield]\ndry_run = true\n"))
    h.run(3.0, [Conns(ATTACKER, 30)])
    assert [e["state"] for e in h.events("mitigation_applied")] == ["dry_run"]


def test_connection_flood_sources_are_held_to_the_rule_limits() -> None:
    h = Harness(connection_config('["drop"]', "\n[mitigation]\nmax_rules_per_target = 1\n"))
    h.run(3.0, [Conns(ATTACKER, 30), Conns("198.51.100.67", 30)])
    assert [e["rule"]["match"]["src"] for e in h.events("mitigation_applied")] == [f"{ATTACKER}/32"]
    (r,) = h.events("mitigation_refused")
    assert r["rule"]["match"]["src"] == "198.51.100.67/32" and "rule limit reached" in r["reason"]
    h.run(2.0, [Conns(ATTACKER, 30), Conns("198.51.100.67", 30)])
    assert len(h.events("mitigation_refused")) == 1  # refused once, not again every second
