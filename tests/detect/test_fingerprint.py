"""Rule candidates from attack samples: sources when few, fingerprints when many."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from ddos_shield.detect.fingerprint import build
from ddos_shield.records import Attack, AttackType, Category, PacketFlag, Range, as_network
from tests.traffic import packets, spoofed_v4

VICTIM = "203.0.113.10"


def attack(*cats: Category, target: str = VICTIM + "/32") -> Attack:
    return Attack(
        1, as_network(target), "default", tuple(AttackType.UDP_FLOOD for _ in cats), cats, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0
    )


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
    assert c.match.tcp_flags == (0x12, 0x02)
    assert c.match.length == Range(54, 54)
    assert c.match.src is not None and c.match.src.subnet_of(ipaddress.ip_network("198.18.0.0/15"))  # type: ignore[arg-type]
    assert c.match.dst == ipaddress.ip_network(VICTIM + "/32")
    assert c.attack_share > 0.99


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
