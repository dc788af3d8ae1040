"""Rule candidates from attack samples: sources when few, fingerprints when many."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from ddos_shield.detect.fingerprint import RAMP, build, reference_until
from ddos_shield.records import Attack, AttackType, Category, Match, PacketFlag, Range, as_network
from tests.traffic import packets, spoofed_v4

VICTIM = "203.0.113.10"


def attack(*cats: Category, target: str = VICTIM + "/32", started: float = 0.0) -> Attack:
    return Attack(
        1, as_network(target), "default", tuple(AttackType.UDP_FLOOD for _ in cats), cats, started, 10000.0, 1.0,
        10000.0, 1.0, started, limit_pps=5000.0,
    )  # fmt: skip


def legit() -> np.ndarray:
    return packets(50, src="198.51.100.10", dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x18, length=200)


KW = {"max_sources": 8, "source_share": 0.9, "min_samples": 20}


def test_too_few_samples_waits() -> None:
    w = packets(5, src="198.51.100.66", dst=VICTIM, proto=17, category=Category.UDP)
    assert build(attack(Category.UDP), w, **KW) is None


@pytest.mark.parametrize("n_sources", [1, 3, 8])
def test_few_sources_become_source_rules(n_sources: int) -> None:
    srcs = [f"198.51.100.{66 + i}" for i in range(n_sources)]
    w = np.concatenate([packets(400, src=srcs, dst=VICTIM, proto=17, category=Category.UDP), legit()])
    cands = build(attack(Category.UDP), w, **KW)
    assert cands is not None
    assert sorted(str(c.match.src) for c in cands) == sorted(f"{s}/32" for s in srcs)
    assert all(c.kind == "source" and c.match.is_source_only() for c in cands)


def test_a_legitimate_client_in_the_window_is_not_a_source() -> None:
    # 1000 attack samples from one source, 15 SYNs of a client in the same category
    w = np.concatenate(
        [
            packets(1000, src="198.51.100.66", dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=2, length=54),
            packets(15, src="198.51.100.10", dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=2, length=74),
        ]
    )
    cands = build(attack(Category.TCP_SYN), w, **KW)
    assert cands is not None and [str(c.match.src) for c in cands] == ["198.51.100.66/32"]


def test_spoofed_syn_fingerprint_excludes_real_handshakes() -> None:
    w = np.concatenate(
        [
            packets(
                2000,
                src=spoofed_v4(2000),
                dst=VICTIM,
                proto=6,
                category=Category.TCP_SYN,
                tcp_flags=2,
                length=54,
                ttl=64,
                sport=1024,
            ),
            packets(
                5, src="198.51.100.10", dst=VICTIM, proto=6, category=Category.TCP_SYN, tcp_flags=2, length=74, ttl=64
            ),
        ]
    )
    (c,) = build(attack(Category.TCP_SYN), w, **KW) or []
    assert c.kind == "fingerprint"
    assert c.match.tcp_flags == (0xFF, 0x02)  # exactly the flood's flags
    assert c.match.length == Range(54, 54)
    assert c.match.src is not None and c.match.src.subnet_of(ipaddress.ip_network("198.18.0.0/15"))  # type: ignore[arg-type]
    assert c.match.dst == ipaddress.ip_network(VICTIM + "/32")
    assert c.attack_share > 0.99


def test_open_fields_are_left_out_and_previewed_wider() -> None:
    """For Flowspec, which has no TTL: the fingerprint leaves the TTL open, and its
    collateral share is that of the wider rule (a client with another TTL is hit)."""
    flood = packets(2000, src=spoofed_v4(2000), dst=VICTIM, proto=17, category=Category.UDP, dport=9, length=60, ttl=61)
    client = packets(20, src="198.18.200.1", dst=VICTIM, proto=17, category=Category.UDP, dport=9, length=60, ttl=64)
    client["ts"] = -10.0  # before the attack: the target's normal traffic
    w = np.concatenate([flood, client])
    (narrow,) = build(attack(Category.UDP), w, **KW) or []
    (wide,) = build(attack(Category.UDP), w, open_fields=("ttl",), **KW) or []
    assert narrow.match.ttl == Range(61, 61) and narrow.collateral_share == 0.0
    assert wide.match.ttl is None and wide.match == Match(**{**narrow.match.__dict__, "ttl": None})
    assert wide.collateral_share == 1.0  # the client's earlier packets match the wider rule


def test_fragments_get_no_port_fields() -> None:
    w = packets(500, src=spoofed_v4(500), dst=VICTIM, proto=17, category=Category.FRAG, length=1000)
    w["flags"] = int(PacketFlag.FRAG | PacketFlag.FRAG_LATER)
    w["sport"] = 0
    (c,) = build(attack(Category.FRAG), w, **KW) or []
    assert not c.match.needs_ports()
    assert c.match.proto == 17


def test_two_categories_two_fingerprints_and_collateral() -> None:
    w = np.concatenate(
        [
            packets(500, src=spoofed_v4(500, 1), dst=VICTIM, proto=17, category=Category.UDP, dport=53, length=90),
            packets(500, src=spoofed_v4(500, 2), dst=VICTIM, proto=1, category=Category.ICMP, length=98),
            legit(),
        ]
    )
    cands = build(attack(Category.UDP, Category.ICMP), w, **KW) or []
    assert sorted(c.match.proto for c in cands) == [1, 17]
    assert all(c.collateral_share == 0.0 for c in cands)


def test_allowlisted_sources_take_no_part() -> None:
    w = packets(500, src="198.51.100.66", dst=VICTIM, proto=17, category=Category.UDP)
    assert build(attack(Category.UDP), w, allowlist=[as_network("198.51.100.0/24")], **KW) == []


def test_flow_records_leave_ttl_and_length_open() -> None:
    w = packets(500, src=spoofed_v4(500), dst=VICTIM, proto=17, category=Category.UDP, dport=53, length=90, ttl=0)
    w["flags"] = int(PacketFlag.TTL_UNKNOWN | PacketFlag.LEN_MEAN)
    (c,) = build(attack(Category.UDP), w, **KW) or []
    assert c.match.ttl is None and c.match.length is None
    assert c.match.dport == Range(53, 53)


def test_v6_spoofed_prefix_is_not_taken_from_a_client_sharing_the_first_bits() -> None:
    # the client (2001:db8:100::10) shares 2001::/16 with the spoofed range 2001:2::/48
    import ipaddress as ip

    rng = np.random.default_rng(3)
    spoofed = [str(ip.IPv6Address(int(ip.IPv6Address("2001:2::")) + int(x))) for x in rng.integers(0, 1 << 16, 2000)]
    w = np.concatenate(
        [
            packets(
                3,
                src="2001:db8:100::10",
                dst="2001:db8:113::10",
                proto=6,
                category=Category.TCP_SYN,
                tcp_flags=2,
                length=94,
            ),
            packets(
                2000, src=spoofed, dst="2001:db8:113::10", proto=6, category=Category.TCP_SYN, tcp_flags=2, length=74
            ),
        ]
    )
    (c,) = build(attack(Category.TCP_SYN, target="2001:db8:113::/64"), w, **KW) or []
    assert c.match.src is not None and c.match.src.subnet_of(ip.ip_network("2001:2::/48"))  # type: ignore[arg-type]
    assert c.match.length == Range(74, 74)


# ---- the narrowest set: >= 99 % of the attack, <= 0.1 % of the target's normal traffic ----


def _normal_traffic(ts: float) -> np.ndarray:
    """What the victim receives before the attack: web clients and DNS answers."""
    parts = [
        packets(300, src=[f"198.51.100.{i}" for i in range(1, 30)], dst=VICTIM, proto=6, category=Category.TCP,
                tcp_flags=0x10, sport=50000, dport=443, length=1500, ttl=57, ts=ts),
        packets(30, src=[f"198.51.100.{i}" for i in range(1, 30)], dst=VICTIM, proto=6, category=Category.TCP_SYN,
                tcp_flags=0x02, dport=443, length=74, ttl=57, ts=ts),
        packets(100, src="198.51.100.53", dst=VICTIM, proto=17, category=Category.UDP, sport=53, dport=33000,
                length=180, ttl=60, ts=ts),
    ]  # fmt: skip
    return np.concatenate(parts)


def test_reflection_with_a_tail_of_rsts_gets_two_rules_covering_it() -> None:
    w = np.concatenate(
        [
            _normal_traffic(-1.5),
            packets(870, src=spoofed_v4(870, 4), dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x12,
                    sport=443, length=58, ttl=120, ts=0.5),
            packets(130, src=spoofed_v4(130, 5), dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x04,
                    sport=443, length=54, ttl=120, ts=0.5),
        ]
    )  # fmt: skip
    cands = build(attack(Category.TCP), w, **KW) or []
    assert sorted(c.match.tcp_flags for c in cands) == [(0xFF, 0x04), (0xFF, 0x12)]  # type: ignore[type-var]
    assert all(c.set_share >= 0.99 and c.collateral_share <= 0.001 for c in cands)
    assert all(c.match.sport == Range(443, 443) and c.match.ttl == Range(120, 120) for c in cands)


def test_dns_amplification_spares_the_targets_own_dns_answers() -> None:
    rng = np.random.default_rng(7)
    amp = packets(
        2000, src=spoofed_v4(2000, 6), dst=VICTIM, proto=17, category=Category.UDP, sport=53, dport=80, ttl=50, ts=0.5
    )
    amp["length"] = rng.integers(1200, 1515, len(amp))
    w = np.concatenate([_normal_traffic(-1.5), amp])
    (c,) = build(attack(Category.UDP), w, **KW) or []
    assert c.match.sport == Range(53, 53) and c.match.dport == Range(80, 80)
    assert c.match.length is not None and c.match.length.lo >= 1200
    assert c.attack_share >= 0.99 and c.collateral_share == 0.0
    # without the length and port fields, the rule would drop the target's own DNS answers
    wide = Match(proto=17, dst=c.match.dst, sport=Range(53, 53))
    assert wide.matches(_normal_traffic(0.0)).sum() == 100


def test_fields_that_cost_coverage_together_are_given_up() -> None:
    # 0.4 % of the packets are longer, 0.4 % others carry another TTL, 0.4 % others another
    # port: each field alone holds 99.6 %, all three 98.8 % -- below ATTACK_COVER -- so one goes
    n = 1000
    b = packets(
        n,
        src=spoofed_v4(n, 8),
        dst=VICTIM,
        proto=17,
        category=Category.UDP,
        sport=1234,
        dport=9,
        length=100,
        ttl=64,
        ts=0.5,
    )
    b["length"][:4] = 900
    b["ttl"][4:8] = 200
    b["dport"][8:12] = 7
    (c,) = build(attack(Category.UDP), b, **KW) or []
    assert [c.match.length, c.match.ttl, c.match.dport].count(None) == 1
    assert c.attack_share == pytest.approx(0.992)


def test_many_sources_each_small_are_one_source_set() -> None:
    srcs = [f"198.51.100.{66 + i}" for i in range(4)]
    w = packets(400, src=srcs, dst=VICTIM, proto=17, category=Category.UDP)
    cands = build(attack(Category.UDP), w, **KW) or []
    assert len(cands) == 4 and all(c.attack_share == 0.25 and c.set_share == 1.0 for c in cands)


# ---- many samples: heavy sources pre-filtered with a count-min pass (detect/sketch.py) ----------


@pytest.mark.parametrize("prefilter", [True, False])
def test_heavy_sources_among_many_samples_with_and_without_the_prefilter(
    prefilter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddos_shield.detect import fingerprint as fp

    monkeypatch.setattr(fp, "HEAVY_PREFILTER_ROWS", 4096 if prefilter else 10**9)
    heavy = packets(38_000, src=["198.51.100.66", "198.51.100.67"], dst=VICTIM, proto=17, category=Category.UDP)
    spoofed = packets(2000, src=spoofed_v4(2000), dst=VICTIM, proto=17, category=Category.UDP)
    cands = build(attack(Category.UDP), np.concatenate([heavy, spoofed]), **KW)
    assert cands is not None and sorted(str(c.match.src) for c in cands) == ["198.51.100.66/32", "198.51.100.67/32"]
    flood = packets(40_000, src=spoofed_v4(40_000), dst=VICTIM, proto=17, category=Category.UDP)
    cands = build(attack(Category.UDP), flood, **KW)
    assert cands is not None and [c.kind for c in cands] == ["fingerprint"]


def test_clients_heard_before_the_attack_shape_no_rule() -> None:
    # an ACK flood at port 80 while the target's web clients keep sending ACKs to 443 (5 %)
    clients = [f"198.51.100.{i}" for i in range(100, 140)]
    w = np.concatenate(
        [
            packets(200, src=clients, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x10, dport=443, length=54, ttl=57, ts=-1.5),
            packets(100, src=clients, dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x10, dport=443, length=54, ttl=57, ts=0.5),
            packets(2000, src=spoofed_v4(2000, 9), dst=VICTIM, proto=6, category=Category.TCP, tcp_flags=0x10, dport=80, length=54, ttl=50, ts=0.5),
        ]
    )  # fmt: skip
    (c,) = build(attack(Category.TCP), w, **KW) or []
    assert c.match.dport == Range(80, 80) and c.match.tcp_flags == (0xFF, 0x10)
    assert c.match.src is not None and c.match.src.subnet_of(ipaddress.ip_network("198.18.0.0/15"))  # type: ignore[arg-type]
    assert c.collateral_share == 0.0


def sflow_like(n: int, *, src: str | list[str], t0: float, t1: float, every: int, **kw: object) -> np.ndarray:
    """``n`` samples of one in ``every`` packets, their times spread over [t0, t1)."""
    b = packets(n, src=src, dst=VICTIM, **kw)  # type: ignore[arg-type]
    b["ts"] = np.linspace(t0, t1, n, endpoint=False)
    b["packets"] = every
    b["sample_rate"] = every
    return b


def test_a_late_detection_does_not_take_the_attacks_first_packets_as_normal_traffic() -> None:
    # A spoofed UDP flood at 20 kpps from t=0, seen through flow samples (1 in 100) that
    # arrive in bursts: the attack is declared only at t=2.5.  The target's normal
    # traffic: DNS answers from its resolver (UDP, 20/s) and web clients (TCP) all along.
    flood = sflow_like(600, src=spoofed_v4(600, 4), t0=0.0, t1=3.0, every=100, proto=17, category=Category.UDP,
                       dport=80, length=60)  # fmt: skip
    dns = sflow_like(60, src="198.51.100.53", t0=-3.0, t1=3.0, every=1, proto=17, category=Category.UDP, sport=53,
                     dport=33000, length=300)  # fmt: skip
    web = sflow_like(120, src="198.51.100.80", t0=-3.0, t1=3.0, every=1, proto=6, category=Category.TCP, dport=443)
    w = np.concatenate([dns, web, flood])
    w = w[np.argsort(w["ts"])]
    late = attack(Category.UDP, started=2.5)
    # the reference in UDP ends before the flood began, not RAMP before it was seen
    udp_before = w[(w["category"] == Category.UDP) & (w["ts"] < 2.4)]
    assert -1.5 < reference_until(udp_before, late, 2.4) <= 0.0 - RAMP  # and the resolver's answers before it stay
    (c,) = build(late, w, **KW) or []
    assert c.kind == "fingerprint" and c.match.proto == 17 and c.match.dport == Range(80, 80)
    assert c.match.src is not None and c.match.src.subnet_of(ipaddress.ip_network("198.18.0.0/15"))  # type: ignore[arg-type]
    assert c.collateral_share == 0.0  # was 0.996: the flood's first 2 s judged as normal traffic
    # with normal traffic alone before it, the reference reaches up to RAMP before the start
    assert reference_until(udp_before[udp_before["ts"] < 0], late, 2.4) == 2.4 - RAMP
